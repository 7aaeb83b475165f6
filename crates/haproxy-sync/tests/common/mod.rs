//! What the haproxy-sync tests share: haproxy-sync run in-process, its
//! /metrics, and registrations.
#![allow(dead_code, reason = "each test file uses a part")]
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use consul::Registration;
use haproxy_sync::config::Args;
use testkit::TestConsul;
use tokio_util::sync::CancellationToken;

/// haproxy-sync running in this process with `args`, its files in `dir`.
pub struct Running {
    pub dir: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn start(args: Args, dir: PathBuf) -> Running {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(haproxy_sync::run(args, shutdown.clone()));
        Running { dir, shutdown, task }
    }

    /// Stops haproxy-sync (and its HAProxy), asserting it ended cleanly, and removes its files.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        (&mut self.task).await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // HAProxy outlives haproxy-sync by design; a test that failed must
        // not leave one running (its directory's name is this test's own).
        if std::thread::panicking() {
            let _ = std::process::Command::new("pkill").arg("-f").arg(self.dir.display().to_string()).status();
        }
    }
}

/// haproxy-sync's command line for a test: Consul at `consul`, its files in
/// `dir`, HAProxy's HTTP frontend on loopback's `http`, quick to apply and
/// to stop, then `extra` flags (one of those above given again replaces it).
pub fn argv(consul: &TestConsul, dir: &std::path::Path, http: u16, extra: &[(&str, String)]) -> Vec<String> {
    let path = |name: &str| dir.join(name).display().to_string();
    let mut argv = vec!["haproxy-sync".to_owned(), consul.url()];
    let base = [
        ("--config", path("haproxy.cfg")),
        ("--master-socket", path("master.sock")),
        ("--runtime-socket", path("admin.sock")),
        ("--bind", "127.0.0.1".to_owned()),
        ("--http-port", http.to_string()),
        ("--stats-port", testkit::stable_port().to_string()),
        ("--wait", "10ms:100ms".to_owned()),
        ("--grace", "1".to_owned()),
        ("--metrics-addr", String::new()),
    ];
    let base = base.iter().filter(|(flag, _)| !extra.iter().any(|(f, _)| f == flag));
    for (flag, value) in base.chain(extra) {
        argv.extend([(*flag).to_owned(), value.clone()]);
    }
    argv
}

/// One sample of the /metrics served on `admin` (0 when absent).
pub async fn metric(admin: u16, sample: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Registers an instance of `name` on loopback's `port`, tagged `rest`, with `meta`.
pub async fn register(consul: &TestConsul, id: &str, name: &str, port: u16, meta: &[(&str, &str)]) {
    consul
        .client()
        .register(&Registration {
            id: id.into(),
            name: name.into(),
            tags: vec!["rest".into()],
            address: "127.0.0.1".into(),
            port,
            meta: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Registration::default()
        })
        .await
        .unwrap();
}
