use registrator::config::Args;

#[tokio::main]
async fn main() {
    let args = Args::from_env();
    args.admin.start().await;
    if let Err(e) = registrator::app::run(args, ops::shutdown_token()).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
