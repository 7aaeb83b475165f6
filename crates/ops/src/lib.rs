//! What the workspace's binaries share to be operable.
//!
//! # Layout
//!
//! - [`LogFormat`] and [`init_tracing`]: human or JSON logs, filtered by
//!   `RUST_LOG`, coloured only on a terminal.
//! - [`shutdown_signal`] and [`shutdown_token`]: SIGTERM or SIGINT.
//! - [`go_style_args`]: accepts Go-style `-flag` spellings of long flags.
//! - [`admin`]: the admin flags every service takes ([`admin::AdminArgs`]),
//!   the `/metrics` and `/health` endpoint, and `--probe`.
//! - [`metrics`]: helpers for the Prometheus metrics both services keep.
//! - [`backoff`]: [`Backoff`], the retry policy of every loop that retries.
//! - [`supervise`]: keeping a child process running.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backoff;
pub mod metrics;
pub mod supervise;

pub use backoff::Backoff;

use tracing_subscriber::EnvFilter;

/// How logs are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, fields included.
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: `docker logs` and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves when the process is asked to stop (SIGTERM or SIGINT). Where a
/// handler cannot be installed (said in the log), that signal keeps its
/// default action, which ends the process at once.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let wait = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot handle {name}; it stops the process without a graceful shutdown");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = wait(SignalKind::terminate(), "SIGTERM") => {}
        _ = wait(SignalKind::interrupt(), "SIGINT") => {}
    }
}

/// A duration in whole milliseconds, for log fields (saturating).
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A count as a gauge value (saturating).
pub fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A token cancelled when the process is asked to stop (SIGTERM or SIGINT).
/// Must be called inside a Tokio runtime.
pub fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}

/// Rewrites Go-style single-dash long flags (`-resync=5`, `-internal`) to
/// the double-dash form clap parses, for the long names `cmd` knows.
pub fn go_style_args(cmd: &clap::Command, args: impl IntoIterator<Item = String>) -> Vec<String> {
    let longs: Vec<&str> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let name = arg
                .strip_prefix('-')
                .filter(|rest| !rest.starts_with('-'))
                .map(|rest| rest.split('=').next().unwrap_or(rest));
            match name {
                Some(name) if i > 0 && name.len() > 1 && longs.contains(&name) => format!("-{arg}"),
                _ => arg,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_long_flags_become_double_dash() {
        let cmd =
            clap::Command::new("x").arg(clap::Arg::new("resync").long("resync")).arg(clap::Arg::new("v").short('v'));
        let args = ["x", "-resync=5", "-v", "--resync", "-unknown", "consul://c:8500"].map(String::from);
        assert_eq!(go_style_args(&cmd, args), ["x", "--resync=5", "-v", "--resync", "-unknown", "consul://c:8500"]);
    }
}
