//! haproxy-keeper: runs HAProxy (master-worker) and haproxy-sync side by
//! side and keeps both running, so that a crash of haproxy-sync never takes
//! HAProxy down and a dead HAProxy comes back on the last configuration.
//!
//! It takes haproxy-sync's own arguments (it reads where the files and
//! sockets are from them) and runs `haproxy-sync <the same> --external`.
//! Run it under an init that reaps orphans (tini, `docker run --init`).

use haproxy_sync::config::Args;

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let args = <Args as clap::Parser>::parse_from(&argv);
    ops::init_tracing(args.admin.log_format);
    let sync_bin = std::env::var_os("HAPROXY_SYNC_BIN").map(Into::into).unwrap_or_else(|| {
        std::env::current_exe().map(|me| me.with_file_name("haproxy-sync")).unwrap_or_else(|_| "haproxy-sync".into())
    });
    let shutdown = ops::shutdown_token();
    if let Err(e) = haproxy_sync::keep(args, sync_bin, argv[1..].to_vec(), shutdown).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
