//! The Docker engine, seen through bollard: inspect, list and events,
//! converted to [`Container`] at this edge.

use std::collections::{BTreeMap, HashMap};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerInspectResponse, EventMessage};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::Stream;

use crate::container::{Container, HostBinding, NetworkAddress, Port, parse_env};

/// A connection to one Docker engine.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// Connects as the Docker CLI does: `DOCKER_HOST`, else the local socket.
    /// Requests are unversioned, so any engine since API 1.24 answers.
    pub fn connect() -> Result<Self, DockerError> {
        Ok(Self { docker: Docker::connect_with_defaults()? })
    }

    /// The engine's host name: the default owner of what we register.
    pub async fn host_name(&self) -> Result<String, DockerError> {
        Ok(self.docker.info().await?.name.unwrap_or_default())
    }

    /// IDs of the running containers.
    pub async fn running(&self) -> Result<Vec<String>, DockerError> {
        let opts = ListContainersOptions { all: false, ..Default::default() };
        let list = self.docker.list_containers(Some(opts)).await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// One container, or `None` when it no longer exists.
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>, DockerError> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => Ok(Some(convert(c))),
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Container events from now (or from `since`, a Unix time in seconds).
    pub fn events(&self, since: Option<i64>) -> impl Stream<Item = Result<EventMessage, DockerError>> + use<> {
        let filters = HashMap::from([("type".to_owned(), vec!["container".to_owned()])]);
        let opts = EventsOptions { since: since.map(|s| s.to_string()), until: None, filters: Some(filters) };
        self.docker.events(Some(opts))
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

    let networks = settings
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ep)| {
            let ipv4 = ep.ip_address.and_then(|ip| ip.parse().ok());
            let ipv6 = ep.global_ipv6_address.and_then(|ip| ip.parse().ok());
            (name, NetworkAddress { ipv4, ipv6 })
        })
        .collect();

    Container {
        id: c.id.unwrap_or_default(),
        name: c.name.unwrap_or_default().trim_start_matches('/').to_owned(),
        image: config.image.unwrap_or_default(),
        running: state.running.unwrap_or(false) && !state.restarting.unwrap_or(false) && !state.paused.unwrap_or(false),
        env: parse_env(config.env.unwrap_or_default().iter()),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        ports,
        published,
        networks,
        health: state.health.and_then(|h| h.status).map(|s| s.to_string()),
    }
}
