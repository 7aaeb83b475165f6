use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// A small HTTP service to scale and route to. `GET /` answers its hostname,
/// the time and its language; `GET /health` answers 200.
#[derive(Debug, Parser)]
#[command(name = "demo-service", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:80")]
    listen: SocketAddr,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "GRACE_SECONDS", default_value_t = 10)]
    grace: u64,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "LOG_FORMAT")]
    log_format: ops::LogFormat,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    ops::init_tracing(args.log_format);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, "demo-service listening");
    demo_service::serve(listener, ops::shutdown_signal(), Duration::from_secs(args.grace)).await?;
    tracing::info!("demo-service stopped");
    Ok(())
}
