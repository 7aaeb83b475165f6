//! Several Docker hosts on this machine (`scripts/hosts`): each a network
//! namespace with its own address and Docker engine, the project's images
//! loaded. [`Hosts`] makes them and always removes them, on success, failure
//! or panic; [`Host`] runs `docker` and the many-host compose file
//! (`compose/cluster.yml`) on one of them; [`Cluster`] is the three-host
//! layout the tests and the benchmark share.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Answer, Lb};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The images every host gets.
pub fn images() -> Vec<String> {
    let mut images: Vec<String> = ["registrator", "haproxy", "hello"].map(crate::image).to_vec();
    images.push(crate::consul_image());
    images
}

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
        args.extend(images());
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
    /// Compose files laid over cluster.yml (`-f`, in order).
    pub files: Vec<PathBuf>,
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
        for file in &roles.files {
            cmd.arg("-f").arg(file);
        }
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

/// Three hosts, each a Consul server; `hello` on 2 and 3; load balancers on 1 and 2.
pub struct Cluster {
    pub hosts: Hosts,
    roles: Vec<Roles>,
    /// The load balancers of hosts 1 and 2.
    pub lbs: [Lb; 2],
    pub http: reqwest::Client,
    /// With ACLs and TLS on: the tokens.
    pub acl: Option<Tokens>,
}

/// The ACL tokens of a [`Cluster`] with ACLs on, as `scripts/acl
/// cluster-tokens` made them.
#[derive(Clone, Debug)]
pub struct Tokens {
    /// The management token (the tests' own requests to Consul).
    pub master: String,
    /// registrator's, with the README's policy.
    pub registrator: String,
    /// haproxy-sync's, with the README's policy.
    pub haproxy: String,
}

/// `scripts/acl ARGS`, as an operator runs it, with its tokens in `secrets`.
fn acl_script(args: &[&str], secrets: &std::path::Path) {
    let out = Command::new("bash")
        .arg(root().join("scripts/acl"))
        .args(args)
        .env("ACL_SECRETS_DIR", secrets)
        .output()
        .expect("bash scripts/acl");
    assert!(out.status.success(), "scripts/acl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// What `consul.d` holds for a secure cluster: the ACL configuration of
/// `scripts/acl cluster-config` (on, default deny, no token in it), a CA
/// and one server certificate (made with `consul tls`), HTTPS on 8501.
fn secure_config(dir: &std::path::Path, secrets: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("consul.d");
    for args in [&["tls", "ca", "create"][..], &["tls", "cert", "create", "-server", "-additional-dnsname", "consul"]] {
        let out =
            Command::new("consul").args(args).current_dir(dir).output().expect("run consul (scripts/install-deps)");
        assert!(out.status.success(), "consul {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    acl_script(&["cluster-config", &dir.display().to_string()], secrets);
    let tls = "ports { https = 8501 }\n\
               ca_file = \"/consul/config/consul-agent-ca.pem\"\n\
               cert_file = \"/consul/config/dc1-server-consul-0.pem\"\n\
               key_file = \"/consul/config/dc1-server-consul-0-key.pem\"\n";
    std::fs::write(dir.join("tls.hcl"), tls).expect("tls.hcl");
    // Read by Consul (root) and by haproxy-sync (user haproxy) in their containers.
    for entry in std::fs::read_dir(dir).expect("consul.d") {
        let path = entry.expect("entry").path();
        let _ = Command::new("chmod").arg("a+r").arg(&path).status();
    }
}

impl Cluster {
    /// Makes the hosts (set `set` on `lan`, as [`Hosts::up`]) and starts
    /// every role; returns once both load balancers route every `hello`.
    /// `secure`: ACLs on (default deny; registrator and haproxy-sync with
    /// the README's policies) and registrator and haproxy-sync reaching
    /// their agents over TLS, all through `CONSUL_CONFIG_DIR`.
    pub async fn up(set: &str, lan: &str, secure: bool) -> Self {
        let hosts = Hosts::up(set, lan, 3);
        let servers: Vec<_> = hosts.all().iter().map(|h| h.ip).collect();
        let mut common: Vec<(String, String)> = Vec::new();
        let mut files = Vec::new();
        let secrets = PathBuf::from(format!("/tmp/portolan-hosts/{set}/secrets"));
        if secure {
            let dir = PathBuf::from(format!("/tmp/portolan-hosts/{set}/consul.d"));
            secure_config(&dir, &secrets);
            common.extend([
                ("CONSUL_CONFIG_DIR".to_string(), dir.display().to_string()),
                ("CONSUL_URL".into(), "consul-tls://consul:8501".into()),
                ("CONSUL_CACERT".into(), "/consul/config/consul-agent-ca.pem".into()),
                ("ACL_SECRETS_DIR".into(), secrets.display().to_string()),
            ]);
            // The tokens reach registrator and haproxy-sync as compose secrets.
            files.push(root().join("compose/cluster-acl.yml"));
        }
        let roles: Vec<Roles> = hosts
            .all()
            .iter()
            .map(|h| {
                let mut profiles = vec!["server"];
                if h.index <= 2 {
                    profiles.push("lb");
                }
                if h.index >= 2 {
                    profiles.extend(["apps", "demo"]);
                }
                let mut env = vec![
                    ("CONSUL_HTTP_BIND".into(), h.ip.to_string()),
                    ("DOCKER_SOCKET".into(), h.docker_host.trim_start_matches("unix://").into()),
                ];
                env.extend(common.iter().cloned());
                Roles { profiles, servers: servers.clone(), env, files: files.clone() }
            })
            .collect();
        let lbs = [Lb::at(&format!("{}:80", hosts.host(1).ip)), Lb::at(&format!("{}:80", hosts.host(2).ip))];
        let mut cluster = Self { hosts, roles, lbs, http: reqwest::Client::new(), acl: None };
        if secure {
            // The servers first, then the tokens, as an operator would:
            // `scripts/acl cluster-tokens` against host 1's agent, every
            // agent given its agent token.
            std::thread::scope(|s| {
                for (h, r) in cluster.hosts.all().iter().zip(&cluster.roles) {
                    let servers_only = Roles { profiles: vec!["server"], files: Vec::new(), ..r.clone() };
                    s.spawn(move || h.compose(&servers_only, &["up", "-d", "--wait"]));
                }
            });
            let agents: Vec<String> = cluster.hosts.all().iter().map(|h| format!("http://{}:8500", h.ip)).collect();
            let mut args = vec!["cluster-tokens"];
            args.extend(agents.iter().map(String::as_str));
            acl_script(&args, &secrets);
            let read = |name: &str| {
                std::fs::read_to_string(secrets.join(format!("{name}.token"))).expect("a token file").trim().to_owned()
            };
            cluster.acl = Some(Tokens {
                master: read("management"),
                registrator: read("registrator"),
                haproxy: read("haproxy-sync"),
            });
        }
        std::thread::scope(|s| {
            for (h, r) in cluster.hosts.all().iter().zip(&cluster.roles) {
                s.spawn(move || h.compose(r, &["up", "-d", "--wait"]));
            }
        });
        cluster.converged().await;
        cluster
    }

    /// A PUT of JSON to the Consul API on host `i`.
    pub async fn consul_put(&self, i: usize, path: &str, body: &serde_json::Value) -> reqwest::Result<()> {
        let url = format!("http://{}:8500{path}", self.host(i).ip);
        let mut req = self.http.put(url).json(body).timeout(Duration::from_secs(5));
        if let Some(t) = &self.acl {
            req = req.header("X-Consul-Token", &t.master);
        }
        req.send().await?.error_for_status()?;
        Ok(())
    }

    pub fn host(&self, i: usize) -> &Host {
        self.hosts.host(i)
    }

    pub fn compose(&self, i: usize, args: &[&str]) {
        self.host(i).compose(&self.roles[i - 1], args);
    }

    /// `hello`'s running containers on host `i`, as the hostnames they answer with.
    pub fn hellos(&self, i: usize) -> BTreeSet<String> {
        let out = self.host(i).docker(&["ps", "-q", "--filter", "label=com.docker.compose.service=hello"]);
        String::from_utf8_lossy(&out.stdout).lines().map(|id| id.chars().take(12).collect()).collect()
    }

    pub fn all_hellos(&self) -> BTreeSet<String> {
        self.hellos(2).into_iter().chain(self.hellos(3)).collect()
    }

    /// Waits until both load balancers answer from exactly the running `hello`s.
    pub async fn converged(&self) {
        let want = self.all_hellos();
        for lb in &self.lbs {
            wait_for_set(lb, &want, Duration::from_secs(60)).await;
        }
    }

    /// A JSON answer of the Consul API on host `i`.
    pub async fn consul(&self, i: usize, path: &str) -> reqwest::Result<serde_json::Value> {
        let url = format!("http://{}:8500{path}", self.host(i).ip);
        let mut req = self.http.get(url).timeout(Duration::from_secs(5));
        if let Some(t) = &self.acl {
            req = req.header("X-Consul-Token", &t.master);
        }
        req.send().await?.error_for_status()?.json().await
    }

    /// Waits until the servers can lose one of them: three voters, all
    /// healthy (a server back from an outage votes again only once Consul's
    /// autopilot has seen it stable for a while).
    pub async fn tolerates_a_failure(&self) {
        let start = Instant::now();
        loop {
            let health = self.consul(1, "/v1/operator/autopilot/health").await.unwrap_or_default();
            let voters = health["Servers"].as_array().into_iter().flatten().filter(|s| s["Voter"] == true).count();
            if health["FailureTolerance"].as_u64().unwrap_or(0) >= 1 && health["Healthy"] == true && voters == 3 {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(90), "Consul's servers cannot lose one: {health}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The leader's address as host `i`'s agent sees it ("" while there is none).
    pub async fn leader(&self, i: usize) -> String {
        self.consul(i, "/v1/status/leader").await.ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    /// Puts the cluster back together after a failed scenario: every host
    /// plugged in, every container up, one `hello` per host.
    pub async fn heal(&self) {
        for h in self.hosts.all() {
            self.hosts.mend(h.index);
        }
        for i in 1..=3 {
            let _ = self.host(i).compose_command(&self.roles[i - 1], &["up", "-d", "--scale", "hello=1"]).output();
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
}

/// Polls `lb` until the set of hostnames answering equals `want`.
pub async fn wait_for_set(lb: &Lb, want: &BTreeSet<String>, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let seen = lb.hostnames("/hello", want.len() * 4).await;
        if seen.as_ref().ok() == Some(want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{lb:?} answers from {seen:?}, not {want:?}, after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `lb` until `host` answers; the time it took.
pub async fn wait_for_host(lb: &Lb, host: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Answer::Host(h) = lb.get("/hello").await {
            if h == host {
                return start.elapsed();
            }
        }
        assert!(start.elapsed() < within, "{host} not answering through {lb:?} after {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Requests from `clients` concurrent clients, each answer timestamped.
pub struct TimedLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    answers: Arc<Mutex<Vec<(Instant, Answer)>>>,
}

impl TimedLoad {
    pub fn start(lb: &Lb, clients: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (lb, stop, answers) = (lb.clone(), stop.clone(), answers.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let answer = lb.get("/hello").await;
                        answers.lock().expect("answers").push((Instant::now(), answer));
                    }
                })
            })
            .collect();
        Self { stop, tasks, answers }
    }

    pub async fn stop(self) -> Vec<(Instant, Answer)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load client");
        }
        std::mem::take(&mut *self.answers.lock().expect("answers"))
    }
}

/// `compose/stack.yml` deployed as stack `portolan` on a Swarm of `n` hosts:
/// node 1 a Consul server and the load balancer, the others client agents.
pub struct Swarm {
    pub hosts: Hosts,
    /// The load balancer on node 1.
    pub lb: Lb,
    /// Swarm node IDs, by host (index 0: host 1).
    pub node_ids: Vec<String>,
}

impl Swarm {
    pub const STACK: &str = "portolan";
    /// The overlay network's subnet (the stack file's default).
    pub const MESH: &str = "10.210.0.0/16";

    /// Makes the hosts, the Swarm and the stack; returns once the first
    /// `hello` task answers through the load balancer.
    pub async fn up(set: &str, lan: &str, n: usize) -> Self {
        let hosts = Hosts::up(set, lan, n);
        hosts.swarm();
        let node_ids: Vec<String> = hosts
            .all()
            .iter()
            .map(|h| String::from_utf8_lossy(&h.docker(&["info", "-f", "{{.Swarm.NodeID}}"]).stdout).trim().to_owned())
            .collect();
        let one = hosts.host(1);
        one.docker(&["node", "update", "--label-add", "consul=server", "--label-add", "lb=true", &node_ids[0]]);
        // No registry: the nodes use the images loaded into them.
        let mut deploy = one.docker_command(&["stack", "deploy", "--resolve-image", "never", "-c"]);
        deploy.arg(root().join("compose/stack.yml")).arg(Self::STACK);
        // Each node's registrator mounts that node's engine socket (scripts/hosts swarm).
        // `docker stack` reads no compose/.env: the Consul image is passed on.
        deploy.env("CONSUL_IMAGE", crate::consul_image());
        deploy.env("DOCKER_SOCKET", format!("/tmp/portolan-hosts/{set}/nodes/{{{{.Node.ID}}}}.sock"));
        checked(deploy, &["stack", "deploy"]);
        let lb = Lb::at(&format!("{}:80", one.ip));
        let swarm = Self { hosts, lb, node_ids };
        let start = Instant::now();
        while swarm.tasks().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(90), "no hello task started");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let want: BTreeSet<String> = swarm.tasks().into_keys().collect();
        wait_for_set(&swarm.lb, &want, Duration::from_secs(90)).await;
        swarm
    }

    /// Running `hello` tasks: hostname (short container ID) → host index.
    pub fn tasks(&self) -> std::collections::BTreeMap<String, usize> {
        let mut by = std::collections::BTreeMap::new();
        for h in self.hosts.all() {
            let filter = format!("label=com.docker.swarm.service.name={}_hello", Self::STACK);
            let out = h.docker(&["ps", "-q", "--filter", &filter]);
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                by.insert(id.chars().take(12).collect(), h.index);
            }
        }
        by
    }

    /// `docker service scale portolan_hello=n`, not waiting for it.
    pub fn scale(&self, n: usize) {
        self.hosts.host(1).docker(&["service", "scale", "--detach", &format!("{}_hello={n}", Self::STACK)]);
    }

    /// `consul <args>` in the Consul server's task (node 1).
    pub fn consul(&self, args: &[&str]) -> String {
        let one = self.hosts.host(1);
        let id = one.container_of("consul-server");
        let mut all = vec!["exec", id.as_str(), "consul"];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&one.docker(&all).stdout).into_owned()
    }
}
