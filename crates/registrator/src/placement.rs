//! Where registrator stands, checked once at start: is its Consul agent this
//! Docker host's own, and is `-ip` an address of this host? Either mistake
//! is silent otherwise. Services registered through another host's agent (a
//! Consul server, say) belong to that agent's node, so when this host is
//! lost Consul still reports them healthy (Go Registrator's #59); and
//! published ports registered at another host's address answer nowhere.
//!
//! [`warnings`] is pure: it judges [`Evidence`] gathered by the caller.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// What registrator can find out about its host and its agent.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    /// `-ip`.
    pub ip_flag: Option<IpAddr>,
    /// Addresses of this host's interfaces, when registrator shares the
    /// host's network (empty in a container of its own network).
    pub interfaces: Vec<IpAddr>,
    /// Gateways of registrator's networks: this host's addresses on them.
    pub gateways: Vec<IpAddr>,
    /// The engine's address in a Swarm.
    pub swarm_address: Option<IpAddr>,
    /// Addresses of the containers running on this engine.
    pub containers: Vec<IpAddr>,
    /// The addresses registrator reaches its agent at.
    pub dialed: Vec<IpAddr>,
    /// The agent, as it describes itself.
    pub agent: Agent,
}

/// The agent as `/v1/agent/self` describes it.
#[derive(Clone, Debug, Default)]
pub struct Agent {
    pub url: String,
    pub node: String,
    /// The address it gossips on.
    pub address: Option<IpAddr>,
    pub server: bool,
}

/// One warning per mistake found, in plain words; none when all is well or
/// when the evidence cannot tell.
pub fn warnings(e: &Evidence) -> Vec<String> {
    let mut out = Vec::new();
    let here: BTreeSet<IpAddr> =
        e.containers.iter().chain(&e.interfaces).chain(&e.gateways).chain(&e.swarm_address).copied().collect();
    let dialed_here = e.dialed.iter().any(|a| a.is_loopback() || here.contains(a));
    let agent_here = dialed_here || e.agent.address.is_some_and(|a| here.contains(&a) || Some(a) == e.ip_flag);
    if !agent_here {
        out.push(format!(
            "the Consul agent at {} is node {:?} ({}{}), not on this Docker host: every service would be registered on that node, \
             so if this host were lost its services would stay registered and healthy. Point registrator at this host's own Consul agent",
            e.agent.url,
            e.agent.node,
            e.agent.address.map_or("address unknown".into(), |a| a.to_string()),
            if e.agent.server { ", a Consul server" } else { "" },
        ));
    }
    if let Some(ip) = e.ip_flag {
        // Addresses that are this host's for certain. A gateway is one too,
        // but a host has others that a container cannot see.
        let mut sure: BTreeSet<IpAddr> = e.interfaces.iter().chain(&e.swarm_address).copied().collect();
        if let Some(a) = e.agent.address.filter(|a| agent_here && !e.containers.contains(a)) {
            sure.insert(a);
        }
        if !sure.is_empty() && !sure.contains(&ip) && !e.gateways.contains(&ip) {
            let known: Vec<String> = sure.iter().filter(|a| !a.is_loopback()).map(IpAddr::to_string).collect();
            out.push(format!(
                "-ip {ip} is not an address of this host (found: {}): published ports would be registered where they do not answer",
                known.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn agent(addr: &str, server: bool) -> Agent {
        Agent { url: "http://consul:8500/".into(), node: "n".into(), address: Some(ip(addr)), server }
    }

    /// The single-host compose stack: the dev agent is a container beside registrator.
    #[test]
    fn the_compose_stacks_agent_is_this_hosts() {
        let e = Evidence {
            gateways: vec![ip("172.18.0.1")],
            containers: vec![ip("172.18.0.2"), ip("172.18.0.3")],
            dialed: vec![ip("172.18.0.2")],
            agent: agent("172.18.0.2", true),
            ..Evidence::default()
        };
        assert!(warnings(&e).is_empty(), "{:?}", warnings(&e));
        // -ip cannot be judged from inside a container with a container's agent
        let with_ip = Evidence { ip_flag: Some(ip("10.0.0.7")), ..e };
        assert!(warnings(&with_ip).is_empty(), "{:?}", warnings(&with_ip));
    }

    /// The many-host layout: the agent is a container advertising the host's address.
    #[test]
    fn a_wrong_ip_is_told_apart_from_the_agents_address() {
        let e = Evidence {
            ip_flag: Some(ip("10.0.0.12")),
            gateways: vec![ip("172.18.0.1")],
            containers: vec![ip("172.18.0.2")],
            dialed: vec![ip("172.18.0.2")],
            agent: agent("10.0.0.12", false),
            ..Evidence::default()
        };
        assert!(warnings(&e).is_empty(), "{:?}", warnings(&e));
        let wrong = Evidence { ip_flag: Some(ip("10.0.0.13")), ..e };
        let w = warnings(&wrong);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("-ip 10.0.0.13 is not an address of this host (found: 10.0.0.12)"), "{w:?}");
    }

    /// Go Registrator's #59: registrator pointed at a server on another host.
    #[test]
    fn an_agent_on_another_host_warns() {
        let e = Evidence {
            ip_flag: Some(ip("10.0.0.12")),
            gateways: vec![ip("172.18.0.1")],
            containers: vec![ip("172.18.0.2")],
            dialed: vec![ip("10.0.0.11")],
            agent: agent("10.0.0.11", true),
            ..Evidence::default()
        };
        let w = warnings(&e);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("node \"n\" (10.0.0.11, a Consul server), not on this Docker host"), "{w:?}");
        // the same server, when it is this host's own (registrator on the host network)
        let local =
            Evidence { interfaces: vec![ip("127.0.0.1"), ip("10.0.0.11")], ip_flag: Some(ip("10.0.0.11")), ..e };
        assert!(warnings(&local).is_empty(), "{:?}", warnings(&local));
    }

    #[test]
    fn on_the_host_network_interfaces_decide() {
        let e = Evidence {
            ip_flag: Some(ip("192.0.2.1")),
            interfaces: vec![ip("127.0.0.1"), ip("10.0.0.7"), ip("172.17.0.1")],
            dialed: vec![ip("127.0.0.1")],
            agent: agent("10.0.0.7", false),
            ..Evidence::default()
        };
        let w = warnings(&e);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("(found: 10.0.0.7, 172.17.0.1)"), "{w:?}");
        assert!(warnings(&Evidence { ip_flag: Some(ip("10.0.0.7")), ..e.clone() }).is_empty());
        // a Swarm node's address counts as the host's
        let swarm = Evidence { interfaces: vec![], swarm_address: Some(ip("10.0.0.7")), ..e };
        assert_eq!(warnings(&swarm).len(), 1);
    }
}
