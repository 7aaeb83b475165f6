//! Server slots: each backend gets a fixed number of `server` lines, so that
//! instances coming and going change only what the HAProxy runtime API can
//! change without a reload (address, port, weight, state).
//!
//! An instance keeps its slot for as long as it lives; a new one takes a free
//! slot; a slot whose instance left is drained (no new requests, in-flight
//! ones finish) and written `disabled` to the file. Only a backend that needs
//! more slots than it has changes the configuration's structure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::model::{Server, Service};

/// Where a free slot points: nowhere reachable, and disabled.
pub const PLACEHOLDER: &str = "127.0.0.1:1";

/// What one slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The instance's server identifier (from its Consul ID).
    pub instance: String,
    pub address: String,
    pub weight: u16,
}

/// The slot layout of every backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slots {
    backends: BTreeMap<String, Arc<Vec<Option<Slot>>>>,
    /// Per backend: the service last laid out, what it became, and its
    /// skeleton. A service handed in again unchanged (the same `Arc`) is not
    /// laid out again: with a thousand services, one change costs one.
    memo: HashMap<String, Laid>,
    /// The skeletons of the services laid out, in their order.
    skeleton: Vec<Arc<Service>>,
    /// Backends whose clients are pinned to a server by a cookie.
    sticky: BTreeSet<String>,
}

/// One service laid out: (as handed in, on its slots, its skeleton).
type Laid = (Arc<Service>, Arc<Service>, Arc<Service>);

impl Slots {
    /// Lays `services` out into slots, keeping every instance that stays in
    /// the slot it had in `self`. A backend gets at least `min` slots, and
    /// grows to the next power of two when its instances outnumber them.
    /// Returns the new layout and `services` with their servers replaced by
    /// slots (`s1`, `s2`, ...; free ones disabled).
    pub fn layout(&self, services: &[Arc<Service>], min: usize) -> (Slots, Vec<Arc<Service>>) {
        let mut next = Slots::default();
        let mut slotted = Vec::with_capacity(services.len());
        for svc in services {
            if svc.sticky.is_some() {
                next.sticky.insert(svc.backend.clone());
            }
            let memo = self.memo.get(&svc.backend).filter(|(input, _, _)| Arc::ptr_eq(input, svc));
            if let (Some(laid), Some(slots)) = (memo, self.backends.get(&svc.backend)) {
                slotted.push(laid.1.clone());
                next.skeleton.push(laid.2.clone());
                next.backends.insert(svc.backend.clone(), slots.clone());
                next.memo.insert(svc.backend.clone(), laid.clone());
                continue;
            }
            let wanted: BTreeMap<&str, &Server> = svc.servers.iter().map(|s| (s.name.as_str(), s)).collect();
            let mut slots: Vec<Option<Slot>> = match self.backends.get(&svc.backend) {
                Some(old) if old.len() >= wanted.len() => old
                    .iter()
                    .map(|slot| slot.as_ref().filter(|s| wanted.contains_key(s.instance.as_str())).cloned())
                    .collect(),
                Some(old) => {
                    // Growing: keep the old slots where they were, add more.
                    let mut grown: Vec<Option<Slot>> = old
                        .iter()
                        .map(|slot| slot.as_ref().filter(|s| wanted.contains_key(s.instance.as_str())).cloned())
                        .collect();
                    grown.resize(capacity(wanted.len(), min), None);
                    grown
                }
                None => vec![None; capacity(wanted.len(), min)],
            };
            // Instances that stay: refresh address and weight in place.
            for slot in slots.iter_mut().flatten() {
                let server = wanted[slot.instance.as_str()];
                slot.address.clone_from(&server.address);
                slot.weight = server.weight;
            }
            // New instances: the first free slots.
            for server in &svc.servers {
                if slots.iter().flatten().any(|s| s.instance == server.name) {
                    continue;
                }
                let slot = Some(Slot {
                    instance: server.name.clone(),
                    address: server.address.clone(),
                    weight: server.weight,
                });
                // The capacity covers every instance; were it short, the
                // backend grows (a reload) rather than drop one.
                match slots.iter_mut().find(|s| s.is_none()) {
                    Some(free) => *free = slot,
                    None => slots.push(slot),
                }
            }
            let laid = Arc::new(svc.with_servers(servers_of(&slots)));
            let skeleton = Arc::new(skeleton_of(&laid));
            slotted.push(laid.clone());
            next.skeleton.push(skeleton.clone());
            next.backends.insert(svc.backend.clone(), Arc::new(slots));
            next.memo.insert(svc.backend.clone(), (svc.clone(), laid, skeleton));
        }
        (next, slotted)
    }

    /// The services of the last layout as [`skeleton_of`] each, in order:
    /// equal skeletons mean a change the runtime API can make.
    pub fn skeleton(&self) -> &[Arc<Service>] {
        &self.skeleton
    }

    /// The runtime API commands that take HAProxy from the layout `self` to
    /// `next`, for backends present in both with the same number of slots.
    /// `None` when a backend was added, removed or resized (a reload's job).
    pub fn commands_to(&self, next: &Slots) -> Option<Vec<String>> {
        if self.backends.len() != next.backends.len() {
            return None;
        }
        let mut cmds = Vec::new();
        for (backend, new) in &next.backends {
            let old = self.backends.get(backend)?;
            if old.len() != new.len() {
                return None;
            }
            if Arc::ptr_eq(old, new) || old == new {
                continue;
            }
            for (i, (before, after)) in old.iter().zip(new.iter()).enumerate() {
                if before == after {
                    continue;
                }
                let server = format!("{backend}/{}", slot_name(i));
                match (before, after) {
                    (None, None) => {}
                    // A sticky client would follow its cookie to a draining
                    // server: in maintenance, it moves to another at once.
                    // Requests in flight finish either way.
                    (Some(_), None) if next.sticky.contains(backend) => {
                        cmds.push(format!("set server {server} state maint"))
                    }
                    (Some(_), None) => cmds.push(format!("set server {server} state drain")),
                    (before, Some(now)) => {
                        let (host, port) = split_address(&now.address);
                        let same_instance = before.as_ref().is_some_and(|b| b.instance == now.instance);
                        if !same_instance || before.as_ref().is_some_and(|b| b.address != now.address) {
                            cmds.push(format!("set server {server} addr {host} port {port}"));
                        }
                        if !same_instance || before.as_ref().is_some_and(|b| b.weight != now.weight) {
                            cmds.push(format!("set server {server} weight {}", now.weight));
                        }
                        if !same_instance {
                            // Consul already vouches for it: route now, and
                            // let HAProxy's own checks take it out if wrong.
                            cmds.push(format!("set server {server} state ready"));
                            cmds.push(format!("set server {server} health up"));
                        }
                    }
                }
            }
        }
        Some(cmds)
    }

    /// Active instances per backend.
    pub fn active(&self) -> impl Iterator<Item = (&str, usize)> {
        self.backends.iter().map(|(b, slots)| (b.as_str(), slots.iter().flatten().count()))
    }
}

/// `svc` with every slot free: the configuration's structure, which a
/// runtime change must leave as it is.
pub fn skeleton_of(svc: &Service) -> Service {
    svc.with_servers(svc.servers.iter().map(|s| Server { name: s.name.clone(), ..free_server(0) }).collect())
}

fn capacity(n: usize, min: usize) -> usize {
    n.max(1).next_power_of_two().max(min)
}

fn slot_name(i: usize) -> String {
    format!("s{}", i + 1)
}

fn free_server(i: usize) -> Server {
    Server { name: slot_name(i), address: PLACEHOLDER.into(), weight: 1, enabled: false }
}

fn servers_of(slots: &[Option<Slot>]) -> Vec<Server> {
    slots
        .iter()
        .enumerate()
        .map(|(i, slot)| match slot {
            Some(s) => Server { name: slot_name(i), address: s.address.clone(), weight: s.weight, enabled: true },
            None => free_server(i),
        })
        .collect()
}

/// `1.2.3.4:80` → (`1.2.3.4`, `80`); `[fd00::1]:80` → (`fd00::1`, `80`).
fn split_address(address: &str) -> (&str, &str) {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "0"));
    (host.trim_start_matches('[').trim_end_matches(']'), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(backend: &str, servers: &[(&str, &str)]) -> Arc<Service> {
        Arc::new(Service {
            name: backend.trim_start_matches("be_").into(),
            backend: backend.into(),
            path: "/x".into(),
            path_prefix: "/x/".into(),
            path_regex: "/x".into(),
            strip: true,
            host: None,
            balance: "roundrobin".into(),
            check_path: "/".into(),
            tcp_port: None,
            sticky: None,
            rate_limit: None,
            maxconn: None,
            https_redirect: false,
            warnings: Vec::new(),
            servers: servers
                .iter()
                .map(|(n, a)| Server { name: (*n).into(), address: (*a).into(), weight: 100, enabled: true })
                .collect(),
        })
    }

    #[test]
    fn instances_keep_their_slots_and_new_ones_take_free_slots() {
        let (one, out) = Slots::default().layout(&[svc("be_h", &[("a", "10.0.0.1:80"), ("b", "10.0.0.2:80")])], 4);
        let names: Vec<_> = out[0].servers.iter().map(|s| (s.name.as_str(), s.enabled)).collect();
        assert_eq!(names, [("s1", true), ("s2", true), ("s3", false), ("s4", false)]);

        // a leaves, c arrives: b stays in s2, c takes s1 (free again).
        let (two, out) = one.layout(&[svc("be_h", &[("b", "10.0.0.2:80"), ("c", "10.0.0.3:80")])], 4);
        assert_eq!(out[0].servers[0].address, "10.0.0.3:80");
        assert_eq!(out[0].servers[1].address, "10.0.0.2:80");
        let cmds = one.commands_to(&two).unwrap();
        assert_eq!(
            cmds,
            [
                "set server be_h/s1 addr 10.0.0.3 port 80",
                "set server be_h/s1 weight 100",
                "set server be_h/s1 state ready",
                "set server be_h/s1 health up",
            ]
        );
        // c leaves: drained, not cut.
        let (three, _) = two.layout(&[svc("be_h", &[("b", "10.0.0.2:80")])], 4);
        assert_eq!(two.commands_to(&three).unwrap(), ["set server be_h/s1 state drain"]);
        // Nothing changed, nothing to do.
        assert_eq!(three.commands_to(&three.clone()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn structure_changes_need_a_reload() {
        let (one, _) = Slots::default().layout(&[svc("be_h", &[("a", "10.0.0.1:80")])], 2);
        let many: Vec<(String, String)> = (0..3).map(|i| (format!("i{i}"), format!("10.0.0.{i}:80"))).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let (grown, out) = one.layout(&[svc("be_h", &many)], 2);
        assert_eq!(out[0].servers.len(), 4, "grows to the next power of two");
        assert_eq!(one.commands_to(&grown), None);
        let (other, _) = one.layout(&[svc("be_h", &[("a", "10.0.0.1:80")]), svc("be_new", &[])], 2);
        assert_eq!(one.commands_to(&other), None, "a new backend");
    }

    #[test]
    fn skeleton_hides_everything_the_runtime_api_can_change() {
        let (sa, a) = Slots::default().layout(&[svc("be_h", &[("a", "10.0.0.1:80")])], 2);
        let (sb, b) = Slots::default().layout(&[svc("be_h", &[("z", "[fd00::9]:8080")])], 2);
        assert_ne!(a, b);
        assert_eq!(sa.skeleton(), sb.skeleton());
        assert_eq!(split_address("[fd00::9]:8080"), ("fd00::9", "8080"));
    }

    #[test]
    fn a_service_handed_in_unchanged_is_not_laid_out_again() {
        let (same, changed) = (svc("be_a", &[("a", "10.0.0.1:80")]), svc("be_b", &[("b", "10.0.0.2:80")]));
        let (one, first) = Slots::default().layout(&[same.clone(), changed], 2);
        let (two, second) = one.layout(&[same, svc("be_b", &[("b", "10.0.0.3:80")])], 2);
        assert!(Arc::ptr_eq(&first[0], &second[0]), "unchanged: the same laid-out service");
        assert!(Arc::ptr_eq(&one.skeleton()[0], &two.skeleton()[0]));
        assert_eq!(second[1].servers[0].address, "10.0.0.3:80");
        assert_eq!(one.commands_to(&two).unwrap(), ["set server be_b/s1 addr 10.0.0.3 port 80"]);
    }
}
