//! The admin side registrator and haproxy-sync have: their flags ([`AdminArgs`]), the endpoint
//! it serves (`/metrics`, Prometheus text from a `prometheus_client`
//! registry, and `/health`), and `--probe`, which asks that endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Says whether the service works: `Ok` carries details shown under "ok"
/// (often none), `Err` why not, for `/health`.
pub type HealthCheck = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The admin routes: `GET /metrics` and `GET /health` (200 with any details,
/// or 503 with the reason).
pub fn router(registry: Arc<Registry>, health: HealthCheck) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut text = String::new();
                    match prometheus_client::encoding::text::encode(&mut text, &registry) {
                        Ok(()) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                            text,
                        )
                            .into_response(),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                    }
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let verdict = health();
                async move {
                    match verdict {
                        Ok(details) => (StatusCode::OK, format!("ok\n{details}")),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        )
}

/// The flags every service takes for logs, `/metrics` and `/health`
/// (`#[command(flatten)]` them into its arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct AdminArgs {
    /// Ask the /health of the service running on this host (at
    /// --metrics-addr) and exit 0 when healthy, 1 when not: a container healthcheck.
    #[arg(long)]
    pub probe: bool,
    /// Address of /metrics and /health (empty: not served).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: AdminAddr,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "LOG_FORMAT")]
    pub log_format: crate::LogFormat,
}

impl AdminArgs {
    /// What a service does first: with `--probe`, probe and exit; else
    /// start logging.
    pub async fn start(&self) {
        if self.probe {
            probe_and_exit(self.metrics_addr).await;
        }
        crate::init_tracing(self.log_format);
    }

    /// The listener for [`serve`], when an address is set.
    pub async fn bind(&self) -> std::io::Result<Option<tokio::net::TcpListener>> {
        match self.metrics_addr.0 {
            Some(addr) => tokio::net::TcpListener::bind(addr).await.map(Some),
            None => Ok(None),
        }
    }
}

/// Where the admin endpoint listens: `host:port`, or empty for nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

impl std::str::FromStr for AdminAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(AdminAddr(None));
        }
        s.parse().map(|a| AdminAddr(Some(a))).map_err(|e| format!("{s:?} is not an address like 0.0.0.0:9090: {e}"))
    }
}

/// Where to reach, on this host, a service listening on `addr`: an
/// unspecified address (`0.0.0.0:9090`, `[::]:9090`) is asked on loopback.
pub fn on_this_host(addr: SocketAddr) -> SocketAddr {
    let mut target = addr;
    if target.ip().is_unspecified() {
        let loopback: std::net::IpAddr =
            if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() };
        target.set_ip(loopback);
    }
    target
}

/// Asks the `/health` of a service running on this host at `addr` (an
/// unspecified address means loopback): for container healthchecks, which
/// run the service's own binary with `--probe`. `true` when it answers 200.
pub async fn probe(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = on_this_host(addr);
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(target).await?;
        conn.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), ask).await {
        Ok(Ok(answer)) => answer.split(|b| *b == b' ').nth(1) == Some(b"200"),
        _ => false,
    }
}

/// `--probe`: exits 0 when the service's `/health` at `addr` answers 200, else 1.
pub async fn probe_and_exit(addr: AdminAddr) -> ! {
    let healthy = match addr.0 {
        Some(addr) => probe(addr).await,
        None => false,
    };
    std::process::exit(if healthy { 0 } else { 1 })
}

/// Serves [`router`] and the service's own pages (`extra`) on `listener`
/// until `shutdown`.
pub fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: HealthCheck,
    extra: Router,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics and /health");
    }
    tokio::spawn(async move {
        let served = axum::serve(listener, router(registry, health).merge(extra))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "admin endpoint stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn admin_flags_parse_with_their_defaults_and_an_empty_address_turns_the_endpoint_off() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            admin: AdminArgs,
        }
        let cli = <Cli as clap::Parser>::parse_from(["x"]);
        assert_eq!(cli.admin.metrics_addr, AdminAddr(Some("0.0.0.0:9090".parse().unwrap())));
        assert!(!cli.admin.probe);
        let cli = <Cli as clap::Parser>::parse_from(["x", "--metrics-addr", "", "--probe", "--log-format", "json"]);
        assert_eq!(cli.admin.metrics_addr, AdminAddr(None));
        assert!(cli.admin.probe && cli.admin.log_format == crate::LogFormat::Json);
        assert!(<Cli as clap::Parser>::try_parse_from(["x", "--metrics-addr", "nowhere"]).is_err());
    }

    #[tokio::test]
    async fn serves_metrics_and_health_verdicts() {
        let mut registry = Registry::with_prefix("t");
        let counter = Counter::<u64>::default();
        registry.register("things", "Things seen", counter.clone());
        counter.inc_by(3);
        let ok = Arc::new(AtomicBool::new(true));
        let flag = ok.clone();
        let health: HealthCheck =
            Arc::new(
                move || if flag.load(Ordering::Relaxed) { Ok(String::new()) } else { Err("consul unreachable".into()) },
            );
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve(listener, Arc::new(registry), health, Router::new(), shutdown.clone());

        let metrics = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
        assert!(metrics.contains("t_things_total 3"), "{metrics}");
        let resp = reqwest::get(format!("http://{addr}/health")).await.unwrap();
        assert_eq!(resp.status(), 200);
        ok.store(false, Ordering::Relaxed);
        let resp = reqwest::get(format!("http://{addr}/health")).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.text().await.unwrap(), "consul unreachable\n");
        assert!(!probe(addr).await, "probe sees the 503");
        ok.store(true, Ordering::Relaxed);
        assert!(probe(addr).await, "probe sees the 200");
        shutdown.cancel();
        task.await.unwrap();
    }
}
