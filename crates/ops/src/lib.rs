//! What every binary of the workspace shares to be operable.
//!
//! # Layout
//!
//! - [`LogFormat`] and [`init_tracing`]: human or JSON logs, filtered by `RUST_LOG`.
//! - [`shutdown_signal`] and [`shutdown_token`]: SIGTERM or SIGINT.
//! - [`go_style_args`]: accepts Go-style `-flag` spellings of long flags.
//! - [`admin`]: the `/metrics` and `/health` endpoint.
#![forbid(unsafe_code)]

pub mod admin;

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

/// Resolves when the process is asked to stop (SIGTERM or SIGINT).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
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
