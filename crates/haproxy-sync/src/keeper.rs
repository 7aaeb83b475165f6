//! haproxy-keeper's parts: keeping a haproxy-sync process running beside
//! HAProxy. See [`crate::keep`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use ops::Backoff;
use ops::supervise::Policy;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::haproxy::Haproxy;

/// Runs `bin args... --external` until `shutdown`, started again whenever it
/// exits (HAProxy goes on serving meanwhile): at once after a run of 30 s
/// or more, else with backoff; on shutdown, SIGTERM and up to 10 s to exit.
/// `env` is added to its environment (the held listener's variable).
pub async fn keep_sync(bin: PathBuf, args: Vec<String>, env: Vec<(String, String)>, shutdown: CancellationToken) {
    let policy = Policy {
        name: "haproxy-sync",
        healthy_after: Duration::from_secs(30),
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        stop_signal: Signal::SIGTERM,
        grace: Duration::from_secs(10),
    };
    let start = || {
        tokio::process::Command::new(&bin)
            .args(&args)
            .arg("--external")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    };
    ops::supervise::supervise(policy, start, |_| {}, shutdown).await;
}

/// Waits until the configuration file exists and HAProxy accepts it;
/// `false` if `shutdown` comes first.
pub async fn wait_for_config(haproxy: &Haproxy, shutdown: &CancellationToken) -> bool {
    let mut logged = false;
    loop {
        if haproxy.config.exists() {
            match haproxy.check(&haproxy.config).await {
                Ok(()) => return true,
                Err(e) if !logged => {
                    warn!(error = %e, "waiting for a configuration HAProxy accepts");
                    logged = true;
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
