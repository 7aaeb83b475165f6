//! What the registrator integration tests share: Docker objects a test
//! makes (and removes, failing or not), the registrator binary as a
//! process, and looks at Consul.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::process::Command;
use std::time::Duration;

use consul::{AgentService, HealthStatus};
use testkit::{TestConsul, eventually, stable_port, unique_name};

pub const IMAGE: &str = "debian:trixie-slim";
pub const LIMIT: Duration = Duration::from_secs(10);

/// Docker objects made by one test, removed when it ends.
pub struct Scene {
    pub tag: String,
    pub network: String,
    pub containers: Vec<String>,
}

impl Scene {
    pub fn new() -> Self {
        let tag = unique_name("rt");
        let network = format!("{tag}-net");
        docker(&["network", "create", &network]);
        Self { tag, network, containers: Vec::new() }
    }

    /// Starts a container; `args` go before the image (env, expose, ...).
    pub fn run(&mut self, name: &str, args: &[&str], cmd: &[&str]) -> String {
        let name = format!("{}-{name}", self.tag);
        let mut all = vec!["run", "-d", "--name", &name, "--network", &self.network];
        all.extend_from_slice(args);
        all.push(IMAGE);
        all.extend_from_slice(if cmd.is_empty() { &["sleep", "infinity"] } else { cmd });
        let id = docker(&all);
        self.containers.push(name);
        id
    }

    pub fn service(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }
}

impl Scene {
    /// Starts a container on the default bridge (not the scene's network).
    pub fn run_on_bridge(&mut self, name: &str, args: &[&str]) -> String {
        let name = format!("{}-{name}", self.tag);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        all.extend_from_slice(&[IMAGE, "sleep", "infinity"]);
        let id = docker(&all);
        self.containers.push(name);
        id
    }

    /// The host port Docker published `port` (e.g. `80/tcp`) of container `name` at.
    pub fn host_port(&self, name: &str, port: &str) -> u16 {
        let out = docker(&["port", &format!("{}-{name}", self.tag), port]);
        out.lines().next().and_then(|l| l.rsplit(':').next()).and_then(|p| p.trim().parse().ok()).expect("published")
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn container_ip(name: &str, network: &str) -> String {
    docker(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"), name])
}

/// The value of one sample in Prometheus text.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample}"))
}

pub async fn health_of(consul: &TestConsul, name: &str) -> Vec<HealthStatus> {
    let entries = consul.client().health_service(name, 0, Duration::ZERO).await.expect("health");
    entries.value.iter().map(|e| e.status()).collect()
}

pub async fn services_named(consul: &TestConsul, name: &str) -> Vec<AgentService> {
    let all = consul.client().agent_services().await.expect("agent services");
    let mut v: Vec<_> = all.into_values().filter(|s| s.service == name).collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

pub async fn wait_count(consul: &TestConsul, name: &str, n: usize) -> Vec<AgentService> {
    eventually(&format!("{n} instance(s) of {name}"), LIMIT, || async {
        let v = services_named(consul, name).await;
        if v.len() == n { Ok(v) } else { Err(format!("{v:?}")) }
    })
    .await
}

/// A registrator process (the built binary), its log in a file.
pub struct Process {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
    pub admin: u16,
}

impl Process {
    pub fn start(consul: &TestConsul, owner: &str, token: Option<&str>) -> Process {
        Self::start_with(consul, owner, token, &[])
    }

    pub fn start_with(consul: &TestConsul, owner: &str, token: Option<&str>, env: &[(&str, &str)]) -> Process {
        Self::launch(&format!("consul://{}", consul.http), owner, &[], token, env)
    }

    /// The binary with `flags`, against the agent at `consul_uri`.
    pub fn launch(consul_uri: &str, owner: &str, flags: &[&str], token: Option<&str>, env: &[(&str, &str)]) -> Process {
        // The binary binds its admin endpoint itself: a port below the ephemeral range.
        let admin = stable_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique_name(&format!("registrator-{owner}-"))));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_registrator"));
        cmd.args(["--owner", owner, "--metrics-addr", &format!("127.0.0.1:{admin}"), "--log-format", "json"])
            .args(flags)
            .arg(consul_uri)
            .env("RUST_LOG", "debug")
            .env_remove("CONSUL_HTTP_TOKEN")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(token) = token {
            cmd.env("CONSUL_HTTP_TOKEN", token);
        }
        Process { child: cmd.spawn().unwrap(), log, admin }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines at `level` (`WARN`, `ERROR`, ...) that contain `text`.
    pub fn lines(&self, level: &str, text: &str) -> usize {
        let level = format!("\"level\":\"{level}\"");
        self.log().lines().filter(|l| l.contains(&level) && l.contains(text)).count()
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        match reqwest::get(url).await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub async fn health(&self) -> Result<(u16, String), String> {
        let resp = reqwest::get(format!("http://127.0.0.1:{}/health", self.admin)).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    }

    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        log
    }
}
