use haproxy_sync::config::Args;

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    if args.probe {
        let healthy = match args.metrics_addr.0 {
            Some(addr) => ops::admin::probe(addr).await,
            None => false,
        };
        std::process::exit(if healthy { 0 } else { 1 });
    }
    ops::init_tracing(args.log_format);
    let shutdown = ops::shutdown_token();
    if let Err(e) = haproxy_sync::run(args, shutdown).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
