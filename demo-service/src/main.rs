use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// A small HTTP service to scale and route to. `GET /` answers its hostname,
/// the time and its language; `GET /health` answers 200 (503 while it drains).
#[derive(Debug, Parser)]
#[command(name = "demo-service", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:80")]
    listen: SocketAddr,
    /// Seconds to go on serving after SIGTERM, with /health failing, while
    /// load balancers stop sending requests.
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 0.0)]
    drain: f64,
    /// Seconds in-flight requests get to finish once the listener is closed.
    #[arg(long, env = "GRACE_SECONDS", default_value_t = 10)]
    grace: u64,
    /// Also serve TCP on this address: each connection is greeted with the
    /// hostname and a newline, then what it sends is echoed back.
    #[arg(long, env = "ECHO_LISTEN")]
    echo_listen: Option<SocketAddr>,
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
    if let Some(addr) = args.echo_listen {
        let echo = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(listen = %addr, "TCP echo listening");
        tokio::spawn(demo_service::echo(echo));
    }
    let stopping = demo_service::Stopping {
        drain: Duration::try_from_secs_f64(args.drain).unwrap_or_default(),
        grace: Duration::from_secs(args.grace),
    };
    demo_service::serve(listener, ops::shutdown_signal(), stopping).await?;
    tracing::info!("demo-service stopped");
    Ok(())
}
