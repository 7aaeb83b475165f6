//! haproxy-keeper's parts: keeping a haproxy-sync process running beside
//! HAProxy. See [`crate::keep`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use consul::Backoff;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::haproxy::Haproxy;

/// Runs `bin args... --external` until `shutdown`, restarting it with
/// backoff whenever it exits; on shutdown, SIGTERM and up to 10 s to exit.
pub async fn keep_sync(bin: PathBuf, args: Vec<String>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut child = match tokio::process::Command::new(&bin)
            .args(&args)
            .arg("--external")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                error!(bin = %bin.display(), error = %e, "cannot start haproxy-sync");
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => continue }
            }
        };
        info!(pid = child.id(), "haproxy-sync started");
        let started = tokio::time::Instant::now();
        tokio::select! {
            status = child.wait() => {
                warn!(?status, "haproxy-sync exited; HAProxy goes on serving; restarting it");
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => {} }
            }
            _ = shutdown.cancelled() => {
                if let Some(pid) = child.id() {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
                if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                return;
            }
        }
    }
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
