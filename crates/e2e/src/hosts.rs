//! Several Docker hosts on this machine (`scripts/hosts`): each a network
//! namespace with its own address and Docker engine, the project's images
//! loaded. [`Hosts`] makes them and always removes them, on success, failure
//! or panic; [`Host`] runs `docker` and the many-host compose file
//! (`compose/cluster.yml`) on one of them.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The images every host gets.
pub const IMAGES: &[&str] =
    &["portolan/registrator:latest", "portolan/haproxy:latest", "portolan/hello:latest", CONSUL_IMAGE];

/// The Consul image the compose files default to.
pub const CONSUL_IMAGE: &str = "hashicorp/consul:1.20";

/// A set of hosts, removed when dropped.
pub struct Hosts {
    set: String,
    lan: String,
    hosts: Vec<Host>,
}

/// One host of a [`Hosts`].
#[derive(Clone, Debug)]
pub struct Host {
    set: String,
    /// 1-based.
    pub index: usize,
    /// Its address on the LAN.
    pub ip: Ipv4Addr,
    /// `unix://…/docker.sock` of its engine.
    pub docker_host: String,
}

impl Hosts {
    /// `n` hosts of the set `set` (a short name: network interfaces carry
    /// it) on `lan` (the first three octets of its /24), with the images
    /// loaded. Whatever an earlier run of the same set left is removed first.
    pub fn up(set: &str, lan: &str, n: usize) -> Self {
        let mut hosts = Self { set: set.into(), lan: lan.into(), hosts: Vec::new() };
        hosts.script(&["down"]);
        let mut args = vec!["up".to_string(), n.to_string()];
        args.extend(IMAGES.iter().map(|s| s.to_string()));
        hosts.script(&args.iter().map(String::as_str).collect::<Vec<_>>());
        hosts.hosts = (1..=n)
            .map(|index| Host {
                set: set.into(),
                index,
                ip: format!("{lan}.{}", 10 + index).parse().expect("host address"),
                docker_host: format!("unix:///tmp/portolan-hosts/{set}/{set}{index}/docker.sock"),
            })
            .collect();
        hosts
    }

    /// Host `i` (1-based).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    pub fn all(&self) -> &[Host] {
        &self.hosts
    }

    /// Makes host 1 a Swarm manager and the others its workers.
    pub fn swarm(&self) {
        self.script(&["swarm"]);
    }

    /// Cuts host `i` off the LAN (its cable pulled: packets to and from it are lost).
    pub fn cut(&self, i: usize) {
        self.script(&["cut", &i.to_string()]);
    }

    /// Plugs host `i` back in.
    pub fn mend(&self, i: usize) {
        self.script(&["mend", &i.to_string()]);
    }

    fn script(&self, args: &[&str]) {
        let out = Command::new("bash")
            .arg(root().join("scripts/hosts"))
            .args(args)
            .env("PORTOLAN_HOSTS", &self.set)
            .env("PORTOLAN_LAN", &self.lan)
            .output()
            .expect("run scripts/hosts");
        assert!(
            out.status.success(),
            "scripts/hosts {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for host in &self.hosts {
                eprintln!("--- host {} ({}) ---\n{}", host.index, host.ip, host.logs());
            }
        }
        let _ = Command::new("bash")
            .arg(root().join("scripts/hosts"))
            .arg("down")
            .env("PORTOLAN_HOSTS", &self.set)
            .env("PORTOLAN_LAN", &self.lan)
            .status();
    }
}

/// What `compose/cluster.yml` needs on one host.
#[derive(Clone, Debug, Default)]
pub struct Roles {
    /// Compose profiles: `server`, `agent`, `apps`, `lb`, `demo`.
    pub profiles: Vec<&'static str>,
    /// The servers' addresses.
    pub servers: Vec<Ipv4Addr>,
    /// Further variables.
    pub env: Vec<(String, String)>,
}

impl Host {
    /// The Consul node name of this host in tests.
    pub fn node(&self) -> String {
        format!("{}{}", self.set, self.index)
    }

    /// `docker <args>` against this host's engine.
    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.docker_host).args(args);
        cmd
    }

    /// Runs `docker <args>` on this host; panics with its output on failure.
    pub fn docker(&self, args: &[&str]) -> Output {
        checked(self.docker_command(args), args)
    }

    /// `docker compose -f compose/cluster.yml <args>` with this host's variables.
    pub fn compose_command(&self, roles: &Roles, args: &[&str]) -> Command {
        let mut cmd = self.docker_command(&["compose", "-f"]);
        cmd.arg(root().join("compose/cluster.yml"));
        for p in &roles.profiles {
            cmd.args(["--profile", p]);
        }
        cmd.args(args);
        let join = roles.servers.iter().map(|ip| format!("\"{ip}\"")).collect::<Vec<_>>().join(",");
        cmd.env("HOST_IP", self.ip.to_string())
            .env("NODE_NAME", self.node())
            .env("CONSUL_RETRY_JOIN", format!("[{join}]"))
            .env("CONSUL_SERVERS", roles.servers.len().max(1).to_string());
        for (k, v) in &roles.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `docker compose` on this host; panics with its output on failure.
    pub fn compose(&self, roles: &Roles, args: &[&str]) -> Output {
        checked(self.compose_command(roles, args), args)
    }

    /// `consul <args>` in this host's Consul container.
    pub fn consul(&self, args: &[&str]) -> Output {
        let id = self.container_of("consul");
        let mut all = vec!["exec", id.as_str(), "consul"];
        all.extend_from_slice(args);
        self.docker(&all)
    }

    /// The ID of the running container whose name contains `name`.
    pub fn container_of(&self, name: &str) -> String {
        let out = self.docker(&["ps", "-q", "--filter", &format!("name={name}")]);
        let ids = String::from_utf8_lossy(&out.stdout);
        ids.lines().next().unwrap_or_else(|| panic!("no container {name} on host {}", self.index)).to_string()
    }

    /// The last lines of every container's log, for failure messages.
    pub fn logs(&self) -> String {
        let Ok(out) = self.docker_command(&["ps", "-a", "--format", "{{.Names}}"]).output() else {
            return String::new();
        };
        let mut all = String::new();
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            if let Ok(log) = self.docker_command(&["logs", "--tail", "30", name]).output() {
                all.push_str(&format!(
                    "[{name}]\n{}{}\n",
                    String::from_utf8_lossy(&log.stdout),
                    String::from_utf8_lossy(&log.stderr)
                ));
            }
        }
        all
    }
}

fn checked(mut cmd: Command, args: &[&str]) -> Output {
    let out = cmd.output().expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
