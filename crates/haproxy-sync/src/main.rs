use haproxy_sync::config::Args;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    ops::init_tracing(args.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            ops::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    if let Err(e) = haproxy_sync::run(args, shutdown).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
