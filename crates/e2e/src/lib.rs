//! Drives the compose stack (`compose/docker-compose.yml`) as a user would:
//! `docker compose up`, `--scale`, requests through HAProxy, DNS queries to
//! Consul. Each [`Stack`] is a compose project of its own on free host ports,
//! torn down when dropped, so it never touches a stack the user runs.
#![forbid(unsafe_code)]
// Test support: a step of the stack that fails fails the test, with a message.
#![allow(clippy::expect_used)]

pub mod hosts;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use testkit::stable_port;

/// One compose project of the stack.
pub struct Stack {
    pub project: String,
    pub http_port: u16,
    pub https_port: u16,
    pub stats_port: u16,
    pub consul_port: u16,
    pub dns_port: u16,
    /// haproxy-sync's admin port (`/routes`, `/metrics`), on loopback.
    pub admin_port: u16,
    /// registrator's admin port (`/containers`, `/metrics`), on loopback.
    pub registrator_admin_port: u16,
    /// The stack's TLS certificate directory (`CERTS_DIR`), its own.
    pub certs_dir: PathBuf,
    /// Compose files laid over the stack's own (`-f`, in order).
    overrides: Vec<PathBuf>,
    /// More environment for compose (`with_env`).
    extra_env: Vec<(String, String)>,
    http: reqwest::Client,
}

/// One process of a container, as the host sees it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
}

impl Proc {
    /// An HAProxy worker: named haproxy, its parent (the master) too.
    pub fn is_haproxy_worker(&self, all: &[Proc]) -> bool {
        self.comm == "haproxy" && all.iter().any(|parent| parent.pid == self.ppid && parent.comm == "haproxy")
    }
}

/// The outcome of one request through HAProxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx from an instance: its hostname.
    Host(String),
    /// Any other status.
    Status(u16),
    /// No HTTP answer at all (refused, reset, timeout).
    Failed(String),
}

/// The image this checkout builds for `name` (`hello`, `registrator`,
/// `haproxy`): `portolan/<name>:<the workspace's version>`, the tag the
/// compose files give it.
pub fn image(name: &str) -> String {
    format!("portolan/{name}:{}", env!("CARGO_PKG_VERSION"))
}

/// `docker run` arguments that make a container of [`image`]`("hello")`
/// what the compose stack's `hello` is: registered as `hello`, tagged
/// `rest`, checked at `/health`, draining for a second when stopped.
pub fn hello_run_args() -> Vec<String> {
    let mut args = Vec::new();
    for env in ["SERVICE_NAME=hello", "SERVICE_TAGS=rest", "SERVICE_LB_CHECK_PATH=/health", "DRAIN_SECONDS=1"] {
        args.extend(["-e".to_owned(), env.to_owned()]);
    }
    args
}

/// The Consul image the compose files run: `CONSUL_IMAGE` from the
/// environment, else from `compose/.env` (where `scripts/base-images`
/// names a local build), else the compose files' default.
pub fn consul_image() -> String {
    if let Some(image) = std::env::var("CONSUL_IMAGE").ok().filter(|i| !i.is_empty()) {
        return image;
    }
    let env_file = std::fs::read_to_string(compose_file().with_file_name(".env")).unwrap_or_default();
    env_file
        .lines()
        .find_map(|l| l.strip_prefix("CONSUL_IMAGE="))
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| "hashicorp/consul:1.20".to_owned())
}

fn compose_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../compose/docker-compose.yml")
}

impl Stack {
    /// A stack named `portolan-<name>-<pid>` with free host ports (not yet up).
    pub fn new(name: &str) -> Self {
        // Of this process alone: what a failed run left behind (Docker
        // may keep a network whose endpoint it failed to remove) is
        // never in the way.
        let project = format!("portolan-{name}-{}", std::process::id());
        let certs_dir = std::env::temp_dir().join(format!("{project}-certs"));
        let _ = std::fs::create_dir_all(&certs_dir);
        Self {
            project,
            certs_dir,
            // Outside the ephemeral range: a service the faults suite stops
            // and starts again finds its port still free.
            http_port: stable_port(),
            https_port: stable_port(),
            stats_port: stable_port(),
            consul_port: stable_port(),
            dns_port: stable_port(),
            admin_port: stable_port(),
            registrator_admin_port: stable_port(),
            overrides: Vec::new(),
            extra_env: Vec::new(),
            http: client(),
        }
    }

    /// Lays the compose file `path` over the stack's own, as `docker compose -f … -f path`.
    pub fn with_override(mut self, path: PathBuf) -> Self {
        self.overrides.push(path);
        self
    }

    /// Sets `name` to `value` in compose's environment (the stack's files read it).
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.extra_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The environment compose runs with for this stack: the project's
    /// name, its ports, its certificates, and what `with_env` added.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("COMPOSE_PROJECT_NAME", self.project.clone()),
            ("HTTP_PORT", self.http_port.to_string()),
            ("HTTPS_PORT", self.https_port.to_string()),
            ("CERTS_DIR", self.certs_dir.display().to_string()),
            ("STATS_PORT", self.stats_port.to_string()),
            ("CONSUL_PORT", self.consul_port.to_string()),
            ("CONSUL_DNS_PORT", self.dns_port.to_string()),
            ("ADMIN_PORT", self.admin_port.to_string()),
            ("REGISTRATOR_ADMIN_PORT", self.registrator_admin_port.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// The project's network, where its containers and any started beside them meet.
    pub fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    /// Runs `docker compose <args>` for this project; panics with its output on failure.
    pub fn compose(&self, args: &[&str]) -> Output {
        let out = self.compose_command(args).output().expect("run docker compose");
        assert!(
            out.status.success(),
            "docker compose {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The `docker compose <args>` command for this project, not yet run.
    pub fn compose_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("compose").arg("-p").arg(&self.project).arg("-f").arg(compose_file());
        for file in &self.overrides {
            cmd.arg("-f").arg(file);
        }
        cmd.args(args);
        cmd.envs(self.env());
        cmd
    }

    /// `docker compose up -d --wait` with `hello` scaled to `n`.
    pub fn up(&self, hello: usize) {
        self.compose(&["up", "-d", "--wait", "--scale", &format!("hello={hello}")]);
    }

    /// The hostnames (container IDs, shortened) of the running `hello` instances.
    pub fn hello_hostnames(&self) -> BTreeSet<String> {
        let out = self.compose(&["ps", "-q", "hello"]);
        String::from_utf8_lossy(&out.stdout).lines().map(|id| id.chars().take(12).collect()).collect()
    }

    /// HAProxy's address.
    pub fn lb(&self) -> Lb {
        Lb { http: self.http.clone(), base: format!("http://127.0.0.1:{}", self.http_port) }
    }

    /// One `GET <path>` through HAProxy.
    pub async fn get(&self, path: &str) -> Answer {
        self.lb().get(path).await
    }

    /// Sends requests to `path` one after another until the returned load is stopped.
    pub fn load(&self, path: &str) -> Load {
        self.lb().load(path)
    }

    /// The distinct hostnames answering `n` requests to `/hello`, or the first failure.
    pub async fn hostnames(&self, n: usize) -> Result<BTreeSet<String>, String> {
        self.lb().hostnames("/hello", n).await
    }

    /// The SRV records Consul's DNS gives for `name`, as `(port, target)`.
    pub fn srv(&self, name: &str) -> Vec<(u16, String)> {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &self.dns_port.to_string(), "+short", "+time=2", "+tries=1"])
            .arg(format!("{name}.service.consul"))
            .arg("SRV")
            .output()
            .expect("run dig (scripts/install-deps installs it)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                // priority weight port target
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.len() == 4).then(|| Some((f[2].parse().ok()?, f[3].to_string()))).flatten()
            })
            .collect()
    }

    /// The ID of `service`'s (first) container.
    pub fn container(&self, service: &str) -> String {
        let out = self.compose(&["ps", "-q", service]);
        String::from_utf8_lossy(&out.stdout).lines().next().expect("the service runs").to_owned()
    }

    /// The address of `service`'s (first) container on the project's network.
    pub fn container_ip(&self, service: &str) -> String {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"])
            .arg(self.container(service))
            .output()
            .expect("run docker inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The processes of `service`'s container (`docker top`: host PIDs, so
    /// they are signalled from the host; the images have no shell or `kill`
    /// of their own).
    pub fn processes(&self, service: &str) -> Vec<Proc> {
        let id = self.container(service);
        let out = Command::new("docker").args(["top", &id, "-eo", "pid,ppid,comm"]).output().expect("run docker top");
        assert!(out.status.success(), "docker top {service}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(Proc { pid: f.next()?.parse().ok()?, ppid: f.next()?.parse().ok()?, comm: f.next()?.to_owned() })
            })
            .collect()
    }

    /// The PIDs of HAProxy's workers in the haproxy container.
    pub fn haproxy_workers(&self) -> Vec<u32> {
        let all = self.processes("haproxy");
        all.iter().filter(|p| p.is_haproxy_worker(&all)).map(|p| p.pid).collect()
    }

    /// haproxy-sync's reloads so far (its /metrics in the haproxy
    /// container; HAProxy's start counts as one, so the count is there once
    /// it serves).
    pub async fn haproxy_sync_reloads(&self) -> u64 {
        let url = format!("http://{}:9090/metrics", self.container_ip("haproxy"));
        let text = self.http.get(&url).send().await.expect("haproxy-sync's /metrics").text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("haproxy_sync_applies_total{kind=\"reload\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no reload count at {url}:\n{text}"))
    }

    /// The logs of every service, for failure messages.
    pub fn logs(&self) -> String {
        self.compose_command(&["logs", "--no-color", "--tail", "60"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

/// Requests sent by [`Stack::load`], running until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<LoadReport>,
}

/// What a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    /// Answers per instance (hostname).
    pub by_host: std::collections::BTreeMap<String, usize>,
    pub failed: Vec<Answer>,
}

impl Load {
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task")
    }
}

/// A load balancer to send requests to.
#[derive(Clone, Debug)]
pub struct Lb {
    http: reqwest::Client,
    base: String,
}

impl Lb {
    /// The load balancer at `addr` (`host:port`), asked as curl would: one connection per request.
    pub fn at(addr: &str) -> Self {
        Self { http: client(), base: format!("http://{addr}") }
    }

    /// One `GET <path>`.
    pub async fn get(&self, path: &str) -> Answer {
        get(&self.http, &self.base, path).await
    }

    /// Sends requests to `path` one after another until the returned load is stopped.
    pub fn load(&self, path: &str) -> Load {
        let (lb, path) = (self.clone(), path.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = LoadReport::default();
            while !flag.load(Ordering::Relaxed) {
                match lb.get(&path).await {
                    Answer::Host(h) => {
                        report.ok += 1;
                        *report.by_host.entry(h).or_default() += 1;
                    }
                    failure => report.failed.push(failure),
                }
            }
            report
        });
        Load { stop, task }
    }

    /// The distinct hostnames answering `n` requests to `path`, or the first failure.
    pub async fn hostnames(&self, path: &str, n: usize) -> Result<BTreeSet<String>, String> {
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            match self.get(path).await {
                Answer::Host(h) => {
                    seen.insert(h);
                }
                other => return Err(format!("{other:?}")),
            }
        }
        Ok(seen)
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        // One connection per request, as curl makes.
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> Answer {
    let url = format!("{base}{path}");
    match http.get(url).send().await {
        Err(e) => Answer::Failed(e.to_string()),
        Ok(resp) if !resp.status().is_success() => Answer::Status(resp.status().as_u16()),
        Ok(resp) => match resp.json::<serde_json::Value>().await {
            Ok(body) => Answer::Host(body["hostname"].as_str().unwrap_or_default().to_string()),
            Err(e) => Answer::Failed(e.to_string()),
        },
    }
}

impl Stack {
    /// Removes every container and the network of the project, and any
    /// container started beside it on its network: `docker compose down -v
    /// --remove-orphans`, with what that leaves (a container compose does
    /// not know keeps the network) removed before and after.
    fn tear_down(&self) {
        let network = self.network();
        let label = format!("label=com.docker.compose.project={}", self.project);
        let strays = |filter: &str| -> Vec<String> {
            let mut ids = docker_lines(&["ps", "-aq", "--filter", filter]);
            let ours = docker_lines(&["ps", "-aq", "--filter", &label]);
            ids.retain(|id| !ours.contains(id));
            ids
        };
        // Containers on the network that compose did not start: the network
        // cannot go while they are attached.
        let beside = strays(&format!("network={network}"));
        if !beside.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(beside.iter().map(String::as_str));
            let _ = docker_out(&args);
        }
        match self.compose_command(&["down", "-v", "--remove-orphans", "-t", "5"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "docker compose down for {}: {}\n{}",
                self.project,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("docker compose down for {}: {e}", self.project),
        }
        // Whatever is still there: the project's containers, any on its
        // network, the network.
        let mut left = docker_lines(&["ps", "-aq", "--filter", &label]);
        left.extend(docker_lines(&["ps", "-aq", "--filter", &format!("network={network}")]));
        left.sort();
        left.dedup();
        if !left.is_empty() {
            eprintln!("{}: removing {} container(s) compose left", self.project, left.len());
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(left.iter().map(String::as_str));
            let _ = docker_out(&args);
        }
        if docker_out(&["network", "inspect", &network]).is_some_and(|o| o.status.success()) {
            let removed = docker_out(&["network", "rm", &network]).is_some_and(|o| o.status.success());
            eprintln!("{}: network {network} left by compose; removed: {removed}", self.project);
        }
    }
}

/// `docker <args>`, run to the end (None if the CLI could not run).
fn docker_out(args: &[&str]) -> Option<Output> {
    Command::new("docker").args(args).output().ok()
}

/// The lines `docker <args>` prints (none if it failed).
fn docker_lines(args: &[&str]) -> Vec<String> {
    docker_out(args)
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
        .unwrap_or_default()
}

/// Everything of the stack goes, however the test ends: a panic unwinds
/// through here as a return does.
/// A container started beside a stack, removed however the test ends.
pub struct Seed(pub String);

impl Drop for Seed {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

impl Stack {
    /// Runs the demo image as `<project>-<name>` (its host name too) on the
    /// stack's network with the environment `env`, as a user's `docker run`
    /// beside the stack would.
    pub fn run_beside(&self, name: &str, env: &[&str]) -> Seed {
        let name = format!("{}-{name}", self.project);
        let mut args: Vec<String> =
            ["run", "-d", "--name", &name, "-h", &name, "--network", &self.network()].map(str::to_owned).to_vec();
        for e in env {
            args.extend(["-e".to_owned(), (*e).to_owned()]);
        }
        args.push(image("hello"));
        let out = Command::new("docker").args(&args).output().expect("docker run");
        assert!(out.status.success(), "docker run {name}: {}", String::from_utf8_lossy(&out.stderr));
        Seed(name)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- logs of {} ---\n{}", self.project, self.logs());
        }
        self.tear_down();
        let _ = std::fs::remove_dir_all(&self.certs_dir);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The compose files tag the images with the workspace's version, so a
    /// release bump that forgets them fails here.
    #[test]
    fn the_compose_files_run_the_images_of_this_version() {
        for file in ["docker-compose.yml", "cluster.yml", "stack.yml"] {
            let text = std::fs::read_to_string(compose_file().with_file_name(file)).unwrap();
            for name in ["registrator", "haproxy", "hello"] {
                let line = format!("image: portolan/{name}:${{PORTOLAN_VERSION:-{}}}", env!("CARGO_PKG_VERSION"));
                assert!(text.contains(&line), "{file} lacks {line:?}");
            }
            assert!(text.contains("image: ${CONSUL_IMAGE:-hashicorp/consul:1.20}"), "{file}: the Consul image");
            assert!(!text.contains(":latest"), "{file} names a :latest image");
        }
    }
}
