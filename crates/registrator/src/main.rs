use registrator::config::{Args, Command};

#[tokio::main]
async fn main() {
    let args = Args::from_env();
    if let Some(Command::Explain(explain)) = &args.command {
        match registrator::explain::explain(&explain.container, args.explain_addr(explain)).await {
            Ok(text) => {
                print!("{text}");
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("registrator explain: {e}");
                std::process::exit(1);
            }
        }
    }
    args.admin.start().await;
    if let Err(e) = registrator::app::run(args, ops::shutdown_token()).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
