use haproxy_sync::config::Args;

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    if args.probe {
        ops::admin::probe_and_exit(args.metrics_addr).await;
    }
    ops::init_tracing(args.log_format);
    let shutdown = ops::shutdown_token();
    if let Err(e) = haproxy_sync::run(args, shutdown).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
