use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use consul::Backoff;
use prometheus_client::registry::Registry;
use registrator::config::Args;
use registrator::docker::Engine;
use registrator::{Options, Registrar, Rules};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[tokio::main]
async fn main() {
    let args = Args::from_env();
    if args.probe {
        ops::admin::probe_and_exit(args.metrics_addr).await;
    }
    ops::init_tracing(args.log_format);
    if let Err(e) = run(args).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let settings = args.consul.settings().context("consul settings")?;
    let consul = consul::Client::new(&settings)?;
    let engine = Engine::connect().context("docker connection")?;

    let shutdown = ops::shutdown_token();

    // Docker must answer before anything can be registered; wait for it.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let host = loop {
        match engine.host_name().await {
            Ok(host) => break host,
            Err(e) => {
                warn!(error = %e, "docker not reachable yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = backoff.wait() => {}
                }
            }
        }
    };
    wait_for_consul(&consul, args.retry_attempts, Duration::from_millis(args.retry_interval), &shutdown).await?;
    let own_networks = own_networks(&engine).await;
    let rules = Rules {
        owner: args.owner.clone().unwrap_or(host),
        host_ip: args.ip,
        internal: args.internal,
        network: args.network.clone(),
        own_networks,
        extra_tags: args.tags.iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect(),
        register_all: args.all,
        ip_from_label: args.use_ip_from_label.clone(),
    };
    info!(consul = %consul.base(), owner = %rules.owner, networks = ?rules.own_networks, "registrator starting");
    let registrar = Arc::new(Registrar::new(consul, engine, rules).with_deregister(args.deregister));
    if let Some(addr) = args.metrics_addr.0 {
        let mut registry = Registry::with_prefix("registrator");
        registrar.metrics().register(&mut registry);
        let health = {
            let registrar = registrar.clone();
            Arc::new(move || registrar.health()) as ops::admin::HealthCheck
        };
        ops::admin::serve(addr, Arc::new(registry), health, shutdown.clone())
            .await
            .with_context(|| format!("serving /metrics on {addr}"))?;
    }
    let every = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
    let opts = Options { resync_every: every(args.resync), verify_every: every(args.verify) };
    registrator::run(registrar, opts, shutdown).await;
    info!("registrator stopped");
    Ok(())
}

/// Waits until Consul answers (`attempts` < 0: forever), as Go
/// Registrator's `-retry-attempts` and `-retry-interval` do.
async fn wait_for_consul(
    consul: &consul::Client,
    attempts: i64,
    interval: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut tried = 0i64;
    loop {
        match consul.leader().await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_forbidden() => anyhow::bail!("Consul refused the token: {e}"),
            Err(e) => {
                tried += 1;
                if attempts >= 0 && tried > attempts {
                    anyhow::bail!("Consul not reachable after {tried} attempts: {e}");
                }
                warn!(error = %e, attempt = tried, "Consul not reachable yet; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for Consul"),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The networks of registrator's own container, when it runs in one: the
/// addresses other containers have there are the ones peers can reach.
async fn own_networks(engine: &Engine) -> Vec<String> {
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    match engine.inspect(&hostname).await {
        Ok(Some(me)) => me.networks.into_keys().collect(),
        _ => Vec::new(),
    }
}
