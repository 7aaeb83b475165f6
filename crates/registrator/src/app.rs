//! registrator's wiring: from its arguments to a running [`Registrar`]:
//! waits for Docker and Consul, finds its own networks and the host's
//! address, checks where its agent runs ([`crate::placement`]), serves
//! `/metrics`, `/health` and the report (`/containers`, [`crate::pages`]),
//! then runs the loop ([`crate::run`]) until shutdown.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ops::Backoff;
use prometheus_client::registry::Registry;

use crate::config::Args;
use crate::container::NetworkAddress;
use crate::docker::{Engine, OwnNodeFirst};
use crate::tags::ForceTags;
use crate::{Options, Registrar, Rules};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Runs registrator as `args` say until `shutdown`.
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = args.consul.settings().context("consul settings")?;

    // Docker must answer before anything can be registered; wait for it
    // (its socket may not be there yet), saying so once.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let (engine, host) = loop {
        let answer = match Engine::connect() {
            Ok(engine) => engine.host_name().await.map(|host| (engine, host)),
            Err(e) => Err(e),
        };
        match answer {
            Ok(found) => {
                if backoff.attempts() > 0 {
                    info!("docker reachable");
                }
                break found;
            }
            Err(e) if backoff.attempts() == 0 => warn!(
                error = %e,
                sockets = ?crate::docker::SOCKETS,
                "docker not reachable yet (DOCKER_HOST, or a socket at one of these paths); retrying"
            ),
            Err(e) => tracing::debug!(error = %e, "docker still not reachable"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = backoff.wait() => {}
        }
    };
    let consul = consul::Client::with_resolver(
        &settings,
        Arc::new(OwnNodeFirst { engine: engine.clone(), only_here: args.local_agent }),
    )?;
    wait_for_consul(&consul, args.retry_attempts, Duration::from_millis(args.retry_interval), &shutdown).await?;
    if args.ttl.is_some() {
        warn!(
            "-ttl and -ttl-refresh have no effect with Consul (as in Go Registrator): Consul's checks say whether a service lives"
        );
    }
    let own_networks = own_networks(&engine).await;
    let host_address = match args.ip {
        Some(_) => None,
        None => host_address(&own_networks, &consul).await,
    };
    let agent = check_placement(&engine, &consul, &own_networks, args.ip).await;
    let rules = Rules {
        owner: args.owner.clone().unwrap_or(host),
        host_ip: args.ip,
        host_address,
        internal: args.internal,
        network: args.network.clone(),
        own_networks: own_networks.keys().cloned().collect(),
        force_tags: args.tags.as_deref().map(ForceTags::parse).transpose().map_err(anyhow::Error::msg)?.map(Arc::new),
        register_all: args.all,
        ip_from_label: args.use_ip_from_label.clone(),
    };
    info!(consul = %consul.base(), owner = %rules.owner, networks = ?rules.own_networks, "registrator starting");
    let agent = crate::HostAgent::new(consul, agent.map(|a| a.node));
    let registrar = Arc::new(Registrar::new(agent, engine, rules).with_deregister(args.deregister));
    let admin =
        args.admin.bind().await.with_context(|| format!("serving /metrics on {:?}", args.admin.metrics_addr))?;
    if let Some(listener) = admin {
        let mut registry = Registry::with_prefix("registrator");
        registrar.metrics().register(&mut registry);
        let health = {
            let registrar = registrar.clone();
            Arc::new(move || registrar.health()) as ops::admin::HealthCheck
        };
        let source = {
            let registrar = registrar.clone();
            Arc::new(move || {
                let registrar = registrar.clone();
                Box::pin(async move { registrar.report().await }) as futures_util::future::BoxFuture<'static, _>
            }) as crate::pages::Source
        };
        ops::admin::serve(listener, Arc::new(registry), health, crate::pages::router(source), shutdown.clone());
    }
    let every = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
    let opts = Options { resync_every: every(args.resync), verify_every: every(args.verify) };
    crate::run(registrar, opts, shutdown).await;
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
            Ok(_) => {
                if tried > 0 {
                    info!(attempts = tried + 1, "Consul reachable");
                }
                return Ok(());
            }
            Err(e) if e.is_forbidden() => anyhow::bail!("Consul refused the token: {e}"),
            Err(e) => {
                tried += 1;
                if attempts >= 0 && tried > attempts {
                    anyhow::bail!("Consul not reachable after {tried} attempts: {e}");
                }
                if tried == 1 {
                    warn!(error = %e, every_ms = ops::millis(interval), "Consul not reachable yet; retrying");
                } else {
                    tracing::debug!(error = %e, attempt = tried, "Consul still not reachable");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for Consul"),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The networks of registrator's own container, when it runs in one, with
/// its address there: the addresses other containers have on them are the
/// ones peers can reach.
async fn own_networks(engine: &Engine) -> BTreeMap<String, NetworkAddress> {
    for id in own_container_ids() {
        if let Ok(Some(me)) = engine.inspect(&id).await {
            return if me.host_network { BTreeMap::new() } else { me.networks };
        }
    }
    if std::path::Path::new("/.dockerenv").exists() {
        warn!("running in a container that Docker does not show: taken for the host network; set -ip");
    }
    BTreeMap::new()
}

/// Warns when the agent is not this host's or `-ip` not one of its
/// addresses ([`crate::placement`]); returns what the agent said of itself.
async fn check_placement(
    engine: &Engine,
    consul: &consul::Client,
    own: &BTreeMap<String, NetworkAddress>,
    ip_flag: Option<IpAddr>,
) -> Option<consul::AgentInfo> {
    use crate::placement::{Agent, Evidence, warnings};
    let info = match consul.agent_info().await {
        Ok(info) => info,
        Err(e) => {
            warn!(error = %e, "could not ask the Consul agent about itself; where it runs is not checked");
            return None;
        }
    };
    let url = consul.base();
    let dialed = match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let evidence = Evidence {
        ip_flag,
        interfaces: if own.is_empty() { interface_addresses() } else { Vec::new() },
        gateways: own.values().filter_map(|a| a.gateway).collect(),
        swarm_address: engine.swarm_address().await.ok().flatten(),
        containers: engine.container_addresses().await.unwrap_or_default(),
        dialed,
        agent: Agent { url: url.to_string(), node: info.node.clone(), address: info.address, server: info.server },
    };
    for w in warnings(&evidence) {
        warn!("{w}");
    }
    Some(info)
}

/// The addresses of this network namespace's interfaces.
fn interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            sa.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

/// Who this process's container may be: the IDs in the mounts Docker makes
/// for it (`/etc/hostname` and the like come from
/// `/var/lib/docker/containers/<id>/`), then its host name (the default
/// host name is the short ID; `-h` changes it).
fn own_container_ids() -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        for (at, _) in line.match_indices("/containers/") {
            let id: String = line[at + "/containers/".len()..].chars().take_while(char::is_ascii_hexdigit).collect();
            if id.len() == 64 && !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids.push(gethostname::gethostname().to_string_lossy().into_owned());
    ids
}

/// Where published ports are reached when `-ip` is not given: in a
/// container, the host's address on registrator's network (its gateway;
/// every published port answers there, and a load balancer on that network
/// reaches it); on the host network, the address the Consul agent gossips
/// on. Said once, here.
async fn host_address(own: &BTreeMap<String, NetworkAddress>, consul: &consul::Client) -> Option<IpAddr> {
    let gateway = own
        .iter()
        .filter(|(name, _)| *name != "bridge")
        .chain(own.iter().filter(|(name, _)| *name == "bridge"))
        .find_map(|(name, a)| a.gateway.map(|g| (name, g)));
    if let Some((network, ip)) = gateway {
        info!(%ip, %network, "published ports are registered at the host's address on registrator's network (set -ip to choose)");
        return Some(ip);
    }
    match consul.agent_address().await {
        Ok(Some(ip)) if !ip.is_unspecified() => {
            info!(%ip, "published ports are registered at the Consul agent's address (set -ip to choose)");
            Some(ip)
        }
        other => {
            warn!(answer = ?other.map_err(|e| e.to_string()), "the host's address is not known: containers that are only reachable through a published port are not registered; set -ip");
            None
        }
    }
}
