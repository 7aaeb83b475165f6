use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use consul::Backoff;
use registrator::config::Args;
use registrator::docker::Engine;
use registrator::{Options, Registrar, Rules};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[tokio::main]
async fn main() {
    let args = Args::from_env();
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

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            ops::shutdown_signal().await;
            shutdown.cancel();
        }
    });

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
    let registrar = Arc::new(Registrar::new(consul, engine, rules));
    let resync_every = (args.resync > 0).then(|| Duration::from_secs(args.resync));
    registrator::run(registrar, Options { resync_every }, shutdown).await;
    info!("registrator stopped");
    Ok(())
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
