//! What registrator needs to know of one container, independent of Docker's
//! API types, so the service rules can be tested without an engine.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// A container as seen at one inspect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    /// The image as the container was created from it (`Config.Image`).
    pub image: String,
    /// The image's ID (`Image` in `docker inspect`).
    pub image_id: String,
    /// `Config.Hostname`.
    pub hostname: String,
    pub running: bool,
    /// Docker's word for its state (`running`, `paused`, `restarting`,
    /// `exited`, ...), as `docker ps` shows it; empty when unknown.
    pub status: String,
    /// The exit code of its last run, once it stopped.
    pub exit_code: Option<i64>,
    /// `SERVICE_*` settings: environment first, labels override.
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Exposed container ports, e.g. `80/tcp`.
    pub ports: Vec<Port>,
    /// Host bindings of published ports, by container port.
    pub published: BTreeMap<Port, Vec<HostBinding>>,
    /// Address on each network the container is attached to, by name.
    pub networks: BTreeMap<String, NetworkAddress>,
    /// Runs in the host's network namespace (`--net=host`): its ports are the host's.
    pub host_network: bool,
    /// Docker's network mode (`default`, `bridge`, `host`, `container:<id>`, a network).
    pub network_mode: String,
    /// The container's own `STOPSIGNAL`, when it has one.
    pub stop_signal: Option<String>,
    /// Seconds Docker waits after the stop signal before it kills, when set.
    pub stop_timeout: Option<u64>,
    /// Shares the network namespace of this container (`--net=container:<id>`,
    /// a pod); its networks and published ports are that container's.
    pub network_container: Option<String>,
    /// Docker's health status where the image or compose defines a healthcheck.
    pub health: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub number: u16,
    pub udp: bool,
}

impl Port {
    /// Parses Docker's `80/tcp` form. `None` for anything else.
    pub fn parse(s: &str) -> Option<Port> {
        let (number, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let number: u16 = number.parse().ok().filter(|n| *n > 0)?;
        match proto {
            "tcp" => Some(Port { number, udp: false }),
            "udp" => Some(Port { number, udp: true }),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBinding {
    pub ip: Option<IpAddr>,
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkAddress {
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
    /// The network's gateway: the Docker host's address on that network.
    pub gateway: Option<IpAddr>,
}

impl NetworkAddress {
    pub fn ip(&self) -> Option<IpAddr> {
        self.ipv4.or(self.ipv6)
    }
}

impl Container {
    /// Every setting, environment first, then labels: read in order, a
    /// label wins over an environment variable of the same name.
    pub fn settings(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env.iter().chain(self.labels.iter()).map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Splits Docker's `KEY=value` environment list; entries without `=` are skipped.
pub fn parse_env<'a>(env: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, String> {
    env.into_iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_docker_notation_and_refuse_garbage() {
        assert_eq!(Port::parse("80/tcp"), Some(Port { number: 80, udp: false }));
        assert_eq!(Port::parse("53/udp"), Some(Port { number: 53, udp: true }));
        assert_eq!(Port::parse("8080"), Some(Port { number: 8080, udp: false }));
        for bad in ["0/tcp", "70000/tcp", "http/tcp", "80/sctp", ""] {
            assert_eq!(Port::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn labels_override_environment() {
        let c = Container {
            env: parse_env(&["SERVICE_NAME=env".to_owned(), "PATH=/bin".to_owned(), "BROKEN".to_owned()]),
            labels: [("SERVICE_NAME".to_owned(), "label".to_owned())].into(),
            ..Container::default()
        };
        let last: BTreeMap<&str, &str> = c.settings().collect();
        assert_eq!(last.get("SERVICE_NAME"), Some(&"label"));
    }
}
