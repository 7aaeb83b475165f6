//! The Docker engine, seen through bollard: inspect, list and events,
//! converted to [`Container`] at this edge.

use std::collections::{BTreeMap, HashMap};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerInspectResponse, EventMessage};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::Stream;

use crate::container::{Container, HostBinding, NetworkAddress, Port, parse_env};

/// Where the Docker socket is looked for without `DOCKER_HOST`: Docker's
/// default, then Go Registrator's (`-v /var/run/docker.sock:/tmp/docker.sock`).
pub const SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/tmp/docker.sock"];

/// A connection to one Docker engine.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// Connects as the Docker CLI does: `DOCKER_HOST`, else the local
    /// socket, which is looked for where Docker puts it and where Go
    /// Registrator's documentation mounts it ([`SOCKETS`]). Fails while no
    /// socket is there.
    pub fn connect() -> Result<Self, DockerError> {
        if std::env::var("DOCKER_HOST").is_ok_and(|h| !h.trim().is_empty()) {
            return Ok(Self { docker: Docker::connect_with_defaults()? });
        }
        let path = SOCKETS.iter().find(|p| std::path::Path::new(p).exists()).unwrap_or(&SOCKETS[0]);
        Ok(Self { docker: Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)? })
    }

    /// The engine's host name: the default owner of what we register.
    pub async fn host_name(&self) -> Result<String, DockerError> {
        Ok(self.docker.info().await?.name.unwrap_or_default())
    }

    /// The engine's address in a Swarm, when it is a node of one.
    pub async fn swarm_address(&self) -> Result<Option<std::net::IpAddr>, DockerError> {
        let swarm = self.docker.info().await?.swarm;
        Ok(swarm
            .and_then(|s| s.node_addr)
            .and_then(|a| a.parse().ok())
            .filter(|a: &std::net::IpAddr| !a.is_unspecified()))
    }

    /// The addresses of the running containers, on every network.
    pub async fn container_addresses(&self) -> Result<Vec<std::net::IpAddr>, DockerError> {
        let list = self.docker.list_containers(Some(ListContainersOptions::default())).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| c.network_settings?.networks)
            .flat_map(|nets| nets.into_values())
            .filter_map(|ep| ep.ip_address?.parse().ok())
            .collect())
    }

    /// IDs of the running containers.
    pub async fn running(&self) -> Result<Vec<String>, DockerError> {
        let opts = ListContainersOptions { all: false, ..Default::default() };
        let list = self.docker.list_containers(Some(opts)).await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// One container, or `None` when it no longer exists. A container in
    /// another's network namespace (`--net=container:<id>`) gets that one's
    /// networks and published ports (and its ports, when it has none of its
    /// own), where its services are reached.
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>, DockerError> {
        let Some(mut c) = self.inspect_one(id).await? else { return Ok(None) };
        if let Some(owner) = c.network_container.clone() {
            if let Some(net) = self.inspect_one(&owner).await? {
                c.networks = net.networks;
                c.published = net.published;
                c.host_network = net.host_network;
                // Docker refuses --expose in another's namespace: the ports
                // are that one's, unless the image exposes its own.
                if c.ports.is_empty() {
                    c.ports = net.ports;
                }
            }
        }
        Ok(Some(c))
    }

    async fn inspect_one(&self, id: &str) -> Result<Option<Container>, DockerError> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => Ok(Some(convert(c))),
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Container events, and network (dis)connections of containers, from
    /// now (or from `since`, a Unix time in seconds).
    pub fn events(&self, since: Option<i64>) -> impl Stream<Item = Result<EventMessage, DockerError>> + use<> {
        let filters = HashMap::from([("type".to_owned(), vec!["container".to_owned(), "network".to_owned()])]);
        let opts = EventsOptions { since: since.map(|s| s.to_string()), until: None, filters: Some(filters) };
        self.docker.events(Some(opts))
    }
}

/// Resolves the Consul agent's host name for registrator: when it names
/// several addresses (in a Swarm, a global Consul service's tasks), the ones
/// of containers on this engine, i.e. this node's agent; otherwise all, as
/// the system resolver answers. `only_here` (`--local-agent`): this engine's
/// containers or nothing, so registrator waits for its own node's agent
/// rather than register on another's. Asked at every new connection, so an
/// agent task replaced at a new address is found again.
#[derive(Clone, Debug)]
pub struct OwnNodeFirst {
    pub engine: Engine,
    pub only_here: bool,
}

impl reqwest::dns::Resolve for OwnNodeFirst {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let all: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if all.len() < 2 && !this.only_here {
                return Ok(Box::new(all.into_iter()) as reqwest::dns::Addrs);
            }
            let here = this.engine.container_addresses().await?;
            let mine: Vec<_> = all.iter().filter(|a| here.contains(&a.ip())).copied().collect();
            match (mine.is_empty(), this.only_here) {
                (false, _) => Ok(Box::new(mine.into_iter()) as reqwest::dns::Addrs),
                (true, false) => Ok(Box::new(all.into_iter()) as reqwest::dns::Addrs),
                (true, true) => Err(format!(
                    "none of the addresses {} resolves to ({}) is a container on this Docker engine (--local-agent)",
                    name.as_str(),
                    all.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ")
                )
                .into()),
            }
        })
    }
}

fn convert(c: ContainerInspectResponse) -> Container {
    let config = c.config.unwrap_or_default();
    let settings = c.network_settings.unwrap_or_default();
    let state = c.state.unwrap_or_default();

    let mut ports: Vec<Port> = config.exposed_ports.unwrap_or_default().iter().filter_map(|p| Port::parse(p)).collect();
    let mut published = BTreeMap::new();
    for (key, bindings) in settings.ports.unwrap_or_default() {
        let Some(port) = Port::parse(&key) else { continue };
        ports.push(port);
        let bindings: Vec<HostBinding> = bindings
            .unwrap_or_default()
            .into_iter()
            .filter_map(|b| {
                let port = b.host_port?.parse().ok()?;
                let ip = b.host_ip.and_then(|ip| ip.parse().ok());
                Some(HostBinding { ip, port })
            })
            .collect();
        if !bindings.is_empty() {
            published.insert(port, bindings);
        }
    }
    ports.sort();
    ports.dedup();

    let mode = c.host_config.and_then(|h| h.network_mode).unwrap_or_default();
    let host_network = mode == "host";
    let network_container = mode.strip_prefix("container:").map(str::to_owned);
    let networks = settings
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ep)| {
            let ipv4 = ep.ip_address.and_then(|ip| ip.parse().ok());
            let ipv6 = ep.global_ipv6_address.and_then(|ip| ip.parse().ok());
            let gateway = ep.gateway.and_then(|ip| ip.parse().ok());
            (name, NetworkAddress { ipv4, ipv6, gateway })
        })
        .collect();

    Container {
        id: c.id.unwrap_or_default(),
        name: c.name.unwrap_or_default().trim_start_matches('/').to_owned(),
        image: config.image.unwrap_or_default(),
        image_id: c.image.unwrap_or_default(),
        hostname: config.hostname.unwrap_or_default(),
        exit_code: state.exit_code,
        running: state.running.unwrap_or(false) && !state.restarting.unwrap_or(false) && !state.paused.unwrap_or(false),
        status: state.status.map(|s| s.to_string()).unwrap_or_default(),
        env: parse_env(config.env.unwrap_or_default().iter()),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        ports,
        published,
        networks,
        host_network,
        network_container,
        stop_signal: config.stop_signal.clone().filter(|s| !s.is_empty()),
        stop_timeout: config.stop_timeout.and_then(|t| u64::try_from(t).ok()),
        network_mode: mode,
        health: state.health.and_then(|h| h.status).map(|s| s.to_string()),
    }
}
