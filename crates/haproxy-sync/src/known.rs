//! What haproxy-sync knows of Consul, and how each answer changes it. Pure:
//! no I/O and no clock, so every rule is a unit test; `watch.rs` asks
//! Consul and feeds the answers in.
//!
//! Three kinds of answer arrive, each read at a Raft index:
//!
//! - the catalog's service list (a blocking query): which services are
//!   routed, and *that* some service changed, though not which;
//! - every check that is not passing (a blocking query): node checks
//!   (`serfHealth`, maintenance) and service checks, so health is known for
//!   every instance without asking per service;
//! - service reads: one service's instances with their checks
//!   (`/v1/health/service/:name`), or a sweep of every node's services
//!   (`/v1/catalog/node/:node`), which finds the services that changed when
//!   the service list cannot say which.
//!
//! A service's data is only ever replaced by data read at a later index, so
//! answers may arrive in any order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use consul::{EntryCheck, HealthStatus, NodeServices, ServiceEntry};

use crate::model::{Check, Instance};

/// One instance as read from Consul.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub node: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// The Raft index of the instance's last change.
    pub modify_index: u64,
    /// The index of the read it came from.
    pub seen_at: u64,
    /// The worst of its own and its node's checks, read with it or just
    /// after it.
    pub checks: HealthStatus,
    /// Those of them that are not passing.
    pub failing: Vec<Check>,
}

impl Held {
    /// An instance from `/v1/health/service/:name`, read at `index`.
    pub fn from_entry(index: u64, e: &ServiceEntry) -> Self {
        Held {
            node: e.node.node.clone(),
            id: e.service.id.clone(),
            address: e.address().to_owned(),
            port: e.service.port,
            tags: e.service.tags.clone(),
            meta: e.service.meta.clone(),
            modify_index: e.service.modify_index,
            seen_at: index,
            checks: e.status(),
            failing: e.checks.iter().filter(|c| c.status != HealthStatus::Passing).map(Check::from_entry).collect(),
        }
    }

    fn key(&self) -> (&str, &str, u64) {
        (&self.node, &self.id, self.modify_index)
    }
}

/// One service's instances, in the order they are published, and the index
/// they were read at (the oldest of the reads they came from).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Service {
    read_at: u64,
    instances: Vec<Held>,
}

impl Service {
    fn new(read_at: u64, mut instances: Vec<Held>) -> Self {
        instances.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| a.node.cmp(&b.node)));
        Service { read_at, instances }
    }
}

/// The checks that are not passing, as of `index` (0: not read yet).
#[derive(Debug, Default)]
struct Unhealthy {
    index: u64,
    /// The node-level checks of each node listed.
    nodes: HashMap<String, Vec<Check>>,
    /// The checks of each service instance listed, by node and ID.
    instances: HashMap<String, HashMap<String, Vec<Check>>>,
}

impl Unhealthy {
    fn new(index: u64, checks: &[EntryCheck]) -> Self {
        let mut u = Unhealthy { index, ..Unhealthy::default() };
        for c in checks.iter().filter(|c| c.status != HealthStatus::Passing) {
            let list = if c.service_id.is_empty() {
                u.nodes.entry(c.node.clone()).or_default()
            } else {
                u.instances.entry(c.node.clone()).or_default().entry(c.service_id.clone()).or_default()
            };
            list.push(Check::from_entry(c));
        }
        u
    }

    /// The worst status of an instance's checks and its node's, and those
    /// that are not passing.
    fn of(&self, node: &str, id: &str) -> (HealthStatus, Vec<Check>) {
        let of_node = self.nodes.get(node).into_iter().flatten();
        let own = self.instances.get(node).and_then(|i| i.get(id)).into_iter().flatten();
        let failing: Vec<Check> = of_node.chain(own).cloned().collect();
        (failing.iter().map(|c| c.status).max().unwrap_or(HealthStatus::Passing), failing)
    }
}

/// Every node's services, read node by node: each node's service list,
/// then its checks that are not passing.
#[derive(Debug, Default)]
pub struct Sweep {
    /// The lowest index any node's list was read at.
    pub index: u64,
    /// Every node the catalog listed.
    pub nodes: BTreeSet<String>,
    /// Nodes whose lists could not be read: what is known of them is kept.
    pub failed: BTreeSet<String>,
    /// Instances of every service found, by service name.
    pub services: HashMap<String, Vec<Held>>,
}

impl Sweep {
    /// Adds one node's service list, read at `index`, and its checks that
    /// are not passing, read after it.
    pub fn add_node(&mut self, index: u64, node: &NodeServices, unhealthy: &[EntryCheck]) {
        self.index = if self.index == 0 { index } else { self.index.min(index) };
        let health = Unhealthy::new(index, unhealthy);
        let (name, address) = (&node.node.node, &node.node.address);
        for s in node.services.values() {
            let (checks, failing) = health.of(name, &s.id);
            self.services.entry(s.service.clone()).or_default().push(Held {
                node: name.clone(),
                id: s.id.clone(),
                address: if s.address.is_empty() { address.clone() } else { s.address.clone() },
                port: s.port,
                tags: s.tags.clone(),
                meta: s.meta.clone(),
                modify_index: s.modify_index,
                seen_at: index,
                checks,
                failing,
            });
        }
    }
}

/// Everything known, and what must be read next.
#[derive(Debug)]
pub struct Known {
    tag: String,
    /// Routed services and their tags, from the service list; `None` until it answers.
    names: Option<BTreeMap<String, Vec<String>>>,
    /// The services listed without the tag, and their tags.
    others: Arc<BTreeMap<String, Vec<String>>>,
    /// `others` changed since the last [`Known::catalog`].
    others_dirty: bool,
    unhealthy: Unhealthy,
    services: BTreeMap<String, Service>,
    /// Services whose data must be read (a located change, or a retry).
    fetch: BTreeSet<String>,
    /// A sweep is needed: the service list moved since the last one started.
    sweep: bool,
    /// Each service's instances as last published, so an unchanged service
    /// keeps its `Arc` (and its cached routing result downstream).
    published: BTreeMap<String, Arc<Vec<Instance>>>,
    /// Services whose data changed since the last [`Known::catalog`].
    dirty: BTreeSet<String>,
    /// The health view changed since: every status is looked at again.
    health_dirty: bool,
}

impl Known {
    pub fn new(tag: &str) -> Self {
        Known {
            tag: tag.to_owned(),
            names: None,
            others: Arc::default(),
            others_dirty: false,
            unhealthy: Unhealthy::default(),
            services: BTreeMap::new(),
            fetch: BTreeSet::new(),
            sweep: false,
            published: BTreeMap::new(),
            dirty: BTreeSet::new(),
            health_dirty: false,
        }
    }

    /// The service list answered: services that became routed, or whose
    /// tags changed, are read; those no longer routed are forgotten. Any
    /// answer may also hide a change the list does not show (an instance
    /// added to a service, an address changed), so a sweep follows; the
    /// first answer is read by that sweep alone.
    pub fn on_names(&mut self, all: &BTreeMap<String, Vec<String>>) {
        let (routed, others): (BTreeMap<String, Vec<String>>, BTreeMap<String, Vec<String>>) =
            all.iter().map(|(n, t)| (n.clone(), t.clone())).partition(|(_, tags)| tags.contains(&self.tag));
        if *self.others != others {
            self.others = Arc::new(others);
            self.others_dirty = true;
        }
        if let Some(old) = self.names.take() {
            for (name, tags) in &routed {
                if old.get(name) != Some(tags) {
                    self.fetch.insert(name.clone());
                }
            }
        }
        self.services.retain(|name, _| routed.contains_key(name));
        self.fetch.retain(|name| routed.contains_key(name));
        let gone: Vec<String> = self.published.keys().filter(|n| !routed.contains_key(*n)).cloned().collect();
        self.dirty.extend(gone);
        self.names = Some(routed);
        self.sweep = true;
    }

    /// Consul's indexes went backwards (an agent or cluster whose state was
    /// reset, such as a restarted dev agent): every index known is from the
    /// old state, so no read is newer or older than another any more. What
    /// is known stays until read again.
    pub fn on_reset(&mut self) {
        for service in self.services.values_mut() {
            service.read_at = 0;
            for inst in &mut service.instances {
                inst.seen_at = 0;
            }
        }
        self.unhealthy.index = 0;
        self.sweep = true;
    }

    /// The checks that are not passing, read at `index`. Passing ones in the
    /// answer (an agent that ignored the filter) are dropped here.
    pub fn on_unhealthy(&mut self, index: u64, checks: &[EntryCheck]) {
        self.unhealthy = Unhealthy::new(index, checks);
        self.health_dirty = true;
    }

    /// One service's instances with their checks, read at `index`.
    pub fn on_service(&mut self, name: &str, index: u64, entries: &[ServiceEntry]) {
        self.fetch.remove(name);
        if !self.is_routed(name) {
            return;
        }
        if self.services.get(name).is_some_and(|s| s.read_at > index) {
            return;
        }
        let instances = entries.iter().map(|e| Held::from_entry(index, e)).collect();
        self.services.insert(name.to_owned(), Service::new(index, instances));
        self.dirty.insert(name.to_owned());
    }

    /// A service could not be read: it keeps what is known and is read again.
    pub fn on_service_failed(&mut self, name: &str) {
        if self.is_routed(name) {
            self.fetch.insert(name.to_owned());
        }
    }

    /// Starts a sweep: returns whether one is due, and clears the need.
    pub fn take_sweep(&mut self) -> bool {
        std::mem::take(&mut self.sweep)
    }

    /// A sweep could not be completed: another is due.
    pub fn on_sweep_failed(&mut self) {
        self.sweep = true;
    }

    /// Every node's services, read by a sweep: a routed service whose
    /// instances differ from what is known takes the sweep's, unless it was
    /// read later or a read of it is on its way. Instances on nodes the
    /// sweep could not read stay; those on nodes gone from the catalog go.
    pub fn on_sweep(&mut self, mut sweep: Sweep) {
        let Some(names) = &self.names else { return };
        for name in names.keys() {
            let known = self.services.get(name);
            if known.is_some_and(|s| s.read_at > sweep.index) || self.fetch.contains(name) {
                continue;
            }
            let mut found = sweep.services.remove(name).unwrap_or_default();
            if let Some(known) = known {
                found.extend(known.instances.iter().filter(|i| sweep.failed.contains(&i.node)).cloned());
            }
            let mut new_keys: Vec<_> = found.iter().map(Held::key).collect();
            new_keys.sort_unstable();
            let mut old_keys: Vec<_> = known.map(|s| s.instances.iter().map(Held::key).collect()).unwrap_or_default();
            old_keys.sort_unstable();
            if known.is_none() || new_keys != old_keys {
                self.services.insert(name.clone(), Service::new(sweep.index, found));
                self.dirty.insert(name.clone());
            }
        }
    }

    /// Services to read now, at most `n`, leaving out those in `busy`.
    pub fn to_fetch(&self, busy: &BTreeSet<String>, n: usize) -> Vec<String> {
        self.fetch.iter().filter(|n| !busy.contains(*n)).take(n).cloned().collect()
    }

    /// Whether a read of some service is still wanted.
    pub fn fetch_pending(&self) -> bool {
        !self.fetch.is_empty()
    }

    /// Whether the service list has answered.
    pub fn has_names(&self) -> bool {
        self.names.is_some()
    }

    fn is_routed(&self, name: &str) -> bool {
        self.names.as_ref().is_some_and(|n| n.contains_key(name))
    }

    /// The health of one instance: from the health view when it was read
    /// at or after the instance (so it has seen the instance's checks),
    /// else from the checks read with the instance.
    fn status(&self, inst: &Held) -> (HealthStatus, Vec<Check>) {
        let view = &self.unhealthy;
        if view.index > 0 && view.index >= inst.seen_at {
            view.of(&inst.node, &inst.id)
        } else {
            (inst.checks, inst.failing.clone())
        }
    }

    /// The services Consul lists without the tag, with their tags.
    pub fn others(&self) -> Arc<BTreeMap<String, Vec<String>>> {
        self.others.clone()
    }

    /// Whether [`Known::catalog`] may differ from the last one.
    pub fn changed(&self) -> bool {
        self.health_dirty || self.others_dirty || !self.dirty.is_empty()
    }

    /// The routed services with what is known of them. A service not read
    /// yet is left out (so it is not routed), without holding the others
    /// back; an unchanged service keeps its `Arc`.
    pub fn catalog(&mut self) -> BTreeMap<String, Arc<Vec<Instance>>> {
        self.others_dirty = false;
        let dirty: Vec<String> = if std::mem::take(&mut self.health_dirty) {
            self.dirty.clear();
            self.services.keys().chain(self.published.keys()).cloned().collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        for name in dirty {
            let Some(service) = self.services.get(&name) else {
                self.published.remove(&name);
                continue;
            };
            let old = self.published.get(&name);
            let same = old.is_some_and(|old| {
                old.len() == service.instances.len()
                    && old.iter().zip(&service.instances).all(|(o, i)| {
                        let (status, failing) = self.status(i);
                        o.id == i.id
                            && o.node == i.node
                            && o.address == i.address
                            && o.port == i.port
                            && o.status == status
                            && o.failing == failing
                            && o.tags == i.tags
                            && o.meta == i.meta
                    })
            });
            if !same {
                let instances = service
                    .instances
                    .iter()
                    .map(|i| {
                        let (status, failing) = self.status(i);
                        Instance {
                            id: i.id.clone(),
                            node: i.node.clone(),
                            address: i.address.clone(),
                            port: i.port,
                            status,
                            failing,
                            tags: i.tags.clone(),
                            meta: i.meta.clone(),
                        }
                    })
                    .collect();
                self.published.insert(name, Arc::new(instances));
            }
        }
        self.published.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter().map(|(n, t)| (n.to_string(), t.iter().map(|s| s.to_string()).collect())).collect()
    }

    /// Known after a first service list, then one that routes `list`.
    fn routed(list: &[(&str, &[&str])]) -> Known {
        let mut k = Known::new("rest");
        k.on_names(&names(&[]));
        k.on_names(&names(list));
        k
    }

    fn entry(
        node: &str,
        id: &str,
        name: &str,
        addr: &str,
        index: u64,
        checks: &[(&str, HealthStatus)],
    ) -> ServiceEntry {
        serde_json::from_value(serde_json::json!({
            "Node": {"Node": node, "Address": "10.9.9.9"},
            "Service": {"ID": id, "Service": name, "Tags": ["rest"], "Address": addr, "Port": 80, "ModifyIndex": index},
            "Checks": checks.iter().map(|(c, s)| serde_json::json!({
                "Node": node, "CheckID": c, "Status": s, "ServiceID": if c.starts_with("service:") { id } else { "" }
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn check(node: &str, check: &str, service: &str, status: HealthStatus) -> EntryCheck {
        EntryCheck {
            node: node.into(),
            check_id: check.into(),
            status,
            service_id: service.into(),
            output: String::new(),
        }
    }

    fn node(name: &str, services: &[(&str, &str, &str, u64)]) -> NodeServices {
        serde_json::from_value(serde_json::json!({
            "Node": {"Node": name, "Address": "10.1.1.1"},
            "Services": services.iter().map(|(id, svc, addr, idx)| (id.to_string(), serde_json::json!({
                "ID": id, "Service": svc, "Tags": ["rest"], "Address": addr, "Port": 80, "ModifyIndex": idx
            }))).collect::<serde_json::Map<_, _>>(),
        }))
        .unwrap()
    }

    fn sweep(index: u64, nodes: &[(NodeServices, Vec<EntryCheck>)]) -> Sweep {
        let mut sweep = Sweep::default();
        for (n, checks) in nodes {
            sweep.nodes.insert(n.node.node.clone());
            sweep.add_node(index, n, checks);
        }
        sweep
    }

    fn statuses(k: &mut Known, name: &str) -> Vec<(String, HealthStatus)> {
        k.catalog().get(name).map(|i| i.iter().map(|i| (i.id.clone(), i.status)).collect()).unwrap_or_default()
    }

    use HealthStatus::{Critical, Passing, Warning};

    #[test]
    fn the_first_list_is_read_by_a_sweep_and_later_changes_are_located() {
        let mut k = Known::new("rest");
        k.on_names(&names(&[("consul", &[]), ("hello", &["rest"]), ("db", &["x"])]));
        assert!(!k.fetch_pending(), "the first answer is read by the sweep, not service by service");
        assert!(k.take_sweep() && !k.take_sweep());
        k.on_sweep(sweep(10, &[(node("n1", &[("a", "hello", "10.0.0.1", 9), ("d", "db", "", 9)]), vec![])]));
        assert_eq!(k.catalog().keys().collect::<Vec<_>>(), ["hello"]);
        // The same list again locates nothing, but a sweep still follows.
        k.on_names(&names(&[("consul", &[]), ("hello", &["rest"]), ("db", &["x"])]));
        assert!(!k.fetch_pending() && k.take_sweep());
        // A new routed service, and tags changed: read at once.
        k.on_names(&names(&[("hello", &["rest", "v2"]), ("api", &["rest"])]));
        assert_eq!(k.to_fetch(&BTreeSet::new(), 10), vec!["api", "hello"]);
        k.on_service("api", 12, &[entry("n1", "p", "api", "10.0.0.3", 11, &[])]);
        k.on_service("hello", 12, &[entry("n1", "a", "hello", "10.0.0.1", 11, &[])]);
        assert!(!k.fetch_pending());
        // No longer routed: forgotten.
        k.on_names(&names(&[("hello", &["v2"]), ("api", &["rest"])]));
        assert_eq!(k.catalog().keys().collect::<Vec<_>>(), ["api"]);
    }

    #[test]
    fn a_service_not_read_yet_does_not_hold_the_others_back() {
        let mut k = routed(&[("a", &["rest"]), ("b", &["rest"])]);
        k.on_service("a", 10, &[entry("n1", "a1", "a", "10.0.0.1", 9, &[])]);
        k.on_service_failed("b");
        assert_eq!(k.catalog().keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(k.to_fetch(&BTreeSet::new(), 10), vec!["b"]);
        assert!(k.to_fetch(&["b".to_owned()].into(), 10).is_empty(), "a read in flight is not started twice");
    }

    #[test]
    fn older_reads_never_replace_newer_ones() {
        let mut k = routed(&[("a", &["rest"])]);
        k.on_service("a", 20, &[entry("n1", "new", "a", "10.0.0.2", 19, &[])]);
        k.on_service("a", 15, &[entry("n1", "old", "a", "10.0.0.1", 14, &[])]);
        assert_eq!(statuses(&mut k, "a"), [("new".to_owned(), Passing)]);
        k.on_sweep(sweep(18, &[(node("n1", &[("old", "a", "10.0.0.1", 14)]), vec![])]));
        assert_eq!(statuses(&mut k, "a"), [("new".to_owned(), Passing)]);
    }

    #[test]
    fn node_checks_and_maintenance_unroute_every_instance_on_the_node() {
        let mut k = routed(&[("a", &["rest"])]);
        k.on_service(
            "a",
            10,
            &[entry("n1", "a1", "a", "10.0.0.1", 9, &[]), entry("n2", "a2", "a", "10.0.0.2", 9, &[])],
        );
        k.on_unhealthy(11, &[check("n2", "serfHealth", "", Critical)]);
        assert_eq!(statuses(&mut k, "a"), [("a1".to_owned(), Passing), ("a2".to_owned(), Critical)]);
        // The node comes back; the other goes into maintenance, and one
        // service instance into its own.
        k.on_unhealthy(
            12,
            &[
                check("n1", "_node_maintenance", "", Critical),
                check("n2", "_service_maintenance:a2", "a2", Critical),
                check("n2", "other", "", Passing),
            ],
        );
        assert_eq!(statuses(&mut k, "a"), [("a1".to_owned(), Critical), ("a2".to_owned(), Critical)]);
        k.on_unhealthy(13, &[check("n2", "service:a2", "a2", Warning)]);
        assert_eq!(statuses(&mut k, "a"), [("a1".to_owned(), Passing), ("a2".to_owned(), Warning)]);
    }

    #[test]
    fn checks_read_with_a_service_count_until_the_health_view_is_as_new() {
        let mut k = routed(&[("a", &["rest"])]);
        k.on_unhealthy(5, &[]);
        // Registered at 9 with a critical check; the view (at 5) has not seen it.
        k.on_service("a", 10, &[entry("n1", "a1", "a", "10.0.0.1", 9, &[("service:a1", Critical)])]);
        assert_eq!(statuses(&mut k, "a"), [("a1".to_owned(), Critical)]);
        // Its node fails, as read with it.
        k.on_service("a", 11, &[entry("n1", "a1", "a", "10.0.0.1", 9, &[("serfHealth", Critical)])]);
        assert_eq!(statuses(&mut k, "a"), [("a1".to_owned(), Critical)]);
        // The view catches up: everything passes.
        k.on_unhealthy(12, &[]);
        assert_eq!(statuses(&mut k, "a"), [("a1".to_owned(), Passing)]);
    }

    #[test]
    fn a_sweep_takes_the_services_that_changed_with_their_health() {
        let mut k = routed(&[("a", &["rest"]), ("b", &["rest"]), ("c", &["rest"])]);
        for s in ["a", "b", "c"] {
            k.on_service(s, 10, &[entry("n1", &format!("{s}1"), s, "10.0.0.1", 5, &[])]);
        }
        let b_before = k.catalog()["b"].clone();
        k.on_unhealthy(8, &[]);
        k.on_sweep(sweep(
            30,
            &[(
                node(
                    "n1",
                    &[
                        ("a1", "a", "", 5),
                        ("a2", "a", "10.0.0.7", 25), // added, its check failing
                        ("b1", "b", "10.0.0.1", 5),  // unchanged
                        ("c2", "c", "10.0.0.8", 25), // c1 removed, c2 added
                    ],
                ),
                vec![check("n1", "service:a2", "a2", Critical)],
            )],
        ));
        assert_eq!(statuses(&mut k, "a"), [("a1".to_owned(), Passing), ("a2".to_owned(), Critical)]);
        assert_eq!(k.catalog()["a"][0].address, "10.1.1.1", "an instance without an address has its node's");
        assert_eq!(statuses(&mut k, "c"), [("c2".to_owned(), Passing)]);
        assert!(Arc::ptr_eq(&b_before, &k.catalog()["b"]), "an unchanged service is untouched");
        assert!(!k.fetch_pending(), "a sweep needs no further reads");
    }

    #[test]
    fn a_sweep_keeps_instances_of_nodes_it_could_not_read_and_drops_those_of_nodes_gone() {
        let mut k = routed(&[("a", &["rest"])]);
        k.on_service(
            "a",
            10,
            &[
                entry("n1", "a1", "a", "10.0.0.1", 5, &[]),
                entry("n2", "a2", "a", "10.0.0.2", 5, &[]),
                entry("n3", "a3", "a", "10.0.0.3", 5, &[]),
            ],
        );
        let mut s = sweep(30, &[(node("n1", &[("a1", "a", "10.0.0.1", 5)]), vec![])]);
        s.nodes.insert("n2".into()); // listed, not read; n3 was reaped
        s.failed.insert("n2".into());
        k.on_sweep(s);
        assert_eq!(statuses(&mut k, "a").into_iter().map(|(id, _)| id).collect::<Vec<_>>(), ["a1", "a2"]);
    }

    #[test]
    fn a_sweep_leaves_services_being_read_to_their_read() {
        let mut k = routed(&[("a", &["rest"])]);
        k.on_sweep(sweep(30, &[(node("n1", &[("a1", "a", "10.0.0.1", 5)]), vec![])]));
        assert!(k.catalog().is_empty());
        k.on_service("a", 31, &[entry("n1", "a1", "a", "10.0.0.1", 5, &[])]);
        assert_eq!(statuses(&mut k, "a"), [("a1".to_owned(), Passing)]);
    }

    #[test]
    fn unchanged_services_keep_their_arc() {
        let mut k = routed(&[("a", &["rest"]), ("b", &["rest"])]);
        k.on_service("a", 10, &[entry("n1", "a1", "a", "10.0.0.1", 5, &[])]);
        k.on_service("b", 10, &[entry("n1", "b1", "b", "10.0.0.1", 5, &[])]);
        let first = k.catalog();
        k.on_service("b", 12, &[entry("n1", "b2", "b", "10.0.0.2", 11, &[])]);
        k.on_unhealthy(13, &[]);
        let second = k.catalog();
        assert!(Arc::ptr_eq(&first["a"], &second["a"]));
        assert!(!Arc::ptr_eq(&first["b"], &second["b"]));
    }

    #[test]
    fn after_consul_resets_its_indexes_new_reads_replace_what_is_known() {
        let mut k = routed(&[("a", &["rest"])]);
        k.on_service("a", 500, &[entry("n1", "a1", "a", "10.0.0.1", 400, &[])]);
        k.on_unhealthy(450, &[]);
        // A restarted agent starts over at low indexes.
        k.on_reset();
        assert!(k.take_sweep());
        k.on_sweep(sweep(12, &[(node("n1", &[("a1", "a", "10.0.0.1", 9), ("a2", "a", "10.0.0.2", 11)]), vec![])]));
        assert_eq!(statuses(&mut k, "a"), [("a1".to_owned(), Passing), ("a2".to_owned(), Passing)]);
    }
}
