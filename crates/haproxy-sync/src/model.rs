//! From Consul's services to the data the HAProxy template renders. Pure:
//! every routing rule is a unit test, and everything that reaches the
//! template is sanitised here, so nothing a container puts in its name,
//! tags or Meta can add a directive to HAProxy's configuration.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use consul::HealthStatus;
use serde::Serialize;

/// What Consul says about the routed services: the watcher's output. Each
/// service's instances are shared, so a catalog is cheap to copy and a
/// service that did not change is recognised by pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub services: BTreeMap<String, Arc<Vec<Instance>>>,
}

/// The routing rules' result for each service, reused while its instances
/// are the same (`Arc::ptr_eq`): with a thousand services, one change
/// recomputes one.
#[derive(Debug, Default)]
pub struct Cache {
    entries: HashMap<String, CacheEntry>,
}

/// The instances a result was computed from, and the result.
type CacheEntry = (Arc<Vec<Instance>>, Result<Arc<Service>, String>);

/// One instance of a service, as Consul's health endpoint reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub status: HealthStatus,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
}

/// Meta keys (on any instance of a service) that shape its route.
pub mod keys {
    /// Path prefix to serve the service at; default `/<name>`.
    pub const PATH: &str = "lb_path";
    /// `false` keeps the prefix on requests; default `true` (stripped).
    pub const STRIP: &str = "lb_strip";
    /// Host name the route also requires (the `Host` header, port ignored).
    pub const HOST: &str = "lb_host";
    /// HAProxy balance algorithm; default `roundrobin`.
    pub const BALANCE: &str = "lb_balance";
    /// Path of the HTTP health check; default `/`.
    pub const CHECK_PATH: &str = "lb_check_path";
    /// Per-instance weight, 0 to 256; default 100.
    pub const WEIGHT: &str = "lb_weight";
}

const BALANCES: &[&str] = &["roundrobin", "static-rr", "leastconn", "first", "source", "random"];

/// The data handed to the template. Its fields are documented in the README.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Config {
    pub services: Vec<Arc<Service>>,
    /// Address the frontends bind to; empty for all.
    pub bind: String,
    pub http_port: u16,
    pub stats: Stats,
    pub runtime_socket: String,
    pub hard_stop_after: String,
    pub template: String,
    /// Backend for requests no route matches: `no_route` (a 404), or that
    /// of the `--default-service`.
    pub default_backend: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stats {
    pub enabled: bool,
    pub port: u16,
}

/// A routed service: one HAProxy backend.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Service {
    /// The service name, restricted to `[A-Za-z0-9._-]`.
    pub name: String,
    /// HAProxy backend identifier, unique: `be_<name>`.
    pub backend: String,
    /// Path prefix, e.g. `/hello`; `path_prefix` is it with a trailing `/`.
    pub path: String,
    pub path_prefix: String,
    /// `path` with regex metacharacters escaped, for `replace-path`.
    pub path_regex: String,
    pub strip: bool,
    pub host: Option<String>,
    pub balance: String,
    pub check_path: String,
    pub servers: Vec<Server>,
}

impl Service {
    /// This service with other servers (its own are not copied).
    pub fn with_servers(&self, servers: Vec<Server>) -> Service {
        Service {
            name: self.name.clone(),
            backend: self.backend.clone(),
            path: self.path.clone(),
            path_prefix: self.path_prefix.clone(),
            path_regex: self.path_regex.clone(),
            strip: self.strip,
            host: self.host.clone(),
            balance: self.balance.clone(),
            check_path: self.check_path.clone(),
            servers,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Server {
    /// HAProxy server identifier, unique in its backend.
    pub name: String,
    /// `ip:port`, IPv6 in brackets.
    pub address: String,
    pub weight: u16,
    /// `false` for a free slot (written `disabled`).
    pub enabled: bool,
}

/// A service left out of the configuration, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub service: String,
    pub reason: String,
}

/// Which instances a service routes to: passing and warning ones (as
/// Consul's DNS does), never critical ones or those in maintenance.
pub fn routable(status: HealthStatus) -> bool {
    matches!(status, HealthStatus::Passing | HealthStatus::Warning)
}

/// Builds the routed services, longest path first so that more specific
/// prefixes win. Services whose settings cannot be made safe are skipped
/// with a reason; the others are unaffected.
pub fn services(catalog: &Catalog) -> (Vec<Arc<Service>>, Vec<Skipped>) {
    services_cached(catalog, &mut Cache::default())
}

/// [`services`], reusing `cache` for services whose instances did not change.
pub fn services_cached(catalog: &Catalog, cache: &mut Cache) -> (Vec<Arc<Service>>, Vec<Skipped>) {
    let mut routed: Vec<(&str, Arc<Service>)> = Vec::with_capacity(catalog.services.len());
    let mut skipped = Vec::new();
    cache.entries.retain(|name, _| catalog.services.contains_key(name));
    for (raw_name, instances) in &catalog.services {
        let result = match cache.entries.get(raw_name) {
            Some((seen, result)) if Arc::ptr_eq(seen, instances) => result.clone(),
            _ => {
                let result = service(raw_name, instances).map(Arc::new);
                cache.entries.insert(raw_name.clone(), (instances.clone(), result.clone()));
                result
            }
        };
        match result {
            Ok(svc) => routed.push((raw_name, svc)),
            Err(reason) => skipped.push(Skipped { service: raw_name.clone(), reason }),
        }
    }
    // A backend or route already taken (in catalog order) leaves the later
    // service out. Sets, not pairwise comparisons: a thousand services must
    // not cost a million.
    let mut backends: HashMap<&str, &str> = HashMap::with_capacity(routed.len());
    let mut routes: HashMap<(&str, Option<&str>), &str> = HashMap::with_capacity(routed.len());
    let mut collides = vec![None; routed.len()];
    for (i, (_, svc)) in routed.iter().enumerate() {
        let route = (svc.path.as_str(), svc.host.as_deref());
        if let Some(other) = backends.get(svc.backend.as_str()).or_else(|| routes.get(&route)) {
            collides[i] = Some(other.to_string());
        } else {
            backends.insert(&svc.backend, &svc.name);
            routes.insert(route, &svc.name);
        }
    }
    let mut out = Vec::with_capacity(routed.len());
    for ((raw_name, svc), other) in routed.iter().zip(collides) {
        match other {
            Some(other) => skipped.push(Skipped {
                service: (*raw_name).to_owned(),
                reason: format!("its route collides with service {other:?}"),
            }),
            None => out.push(svc.clone()),
        }
    }
    out.sort_by(|a, b| {
        b.path
            .len()
            .cmp(&a.path.len())
            .then_with(|| a.host.is_none().cmp(&b.host.is_none()))
            .then_with(|| a.name.cmp(&b.name))
    });
    (out, skipped)
}

fn service(raw_name: &str, instances: &[Instance]) -> Result<Service, String> {
    let name = identifier(raw_name);
    if name.is_empty() {
        return Err("name has no usable characters".into());
    }
    // Settings come from the first instance (by ID) that has each key.
    let mut sorted: Vec<&Instance> = instances.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let setting = |key: &str| sorted.iter().find_map(|i| i.meta.get(key)).map(|v| v.trim());

    let path = match setting(keys::PATH) {
        Some(p) => url_path(p).ok_or_else(|| format!("{} {p:?} is not a plain URL path", keys::PATH))?,
        None => format!("/{name}"),
    };
    let path = if path.len() > 1 { path.trim_end_matches('/').to_owned() } else { path };
    let path_prefix = if path == "/" { path.clone() } else { format!("{path}/") };
    let strip =
        !matches!(setting(keys::STRIP).map(str::to_ascii_lowercase).as_deref(), Some("false" | "0" | "no" | "off"));
    let host = match setting(keys::HOST) {
        Some(h) if !h.is_empty() => {
            Some(host_name(h).ok_or_else(|| format!("{} {h:?} is not a host name", keys::HOST))?)
        }
        _ => None,
    };
    let balance = match setting(keys::BALANCE) {
        Some(b) if BALANCES.contains(&b) => b.to_owned(),
        Some(b) => return Err(format!("{} {b:?} is not one of {BALANCES:?}", keys::BALANCE)),
        None => "roundrobin".to_owned(),
    };
    let check_path = match setting(keys::CHECK_PATH) {
        Some(p) => url_path(p).ok_or_else(|| format!("{} {p:?} is not a plain URL path", keys::CHECK_PATH))?,
        None => "/".to_owned(),
    };

    let mut servers: Vec<Server> = Vec::new();
    for inst in sorted.iter().filter(|i| routable(i.status)) {
        let Ok(ip) = inst.address.parse::<IpAddr>() else { continue };
        if inst.port == 0 {
            continue;
        }
        let weight =
            inst.meta.get(keys::WEIGHT).and_then(|w| w.trim().parse::<u16>().ok()).filter(|w| *w <= 256).unwrap_or(100);
        let mut server_name = identifier(&inst.id);
        if server_name.is_empty() || servers.iter().any(|s| s.name == server_name) {
            server_name = format!("{server_name}_{}", servers.len());
        }
        servers.push(Server {
            name: server_name,
            address: SocketAddr::new(ip, inst.port).to_string(),
            weight,
            enabled: true,
        });
    }

    Ok(Service {
        backend: format!("be_{name}"),
        path_regex: regex_escape(&path),
        name,
        path,
        path_prefix,
        strip,
        host,
        balance,
        check_path,
        servers,
    })
}

/// Keeps `[A-Za-z0-9._-]` and turns every other character into `_`;
/// at most 100 characters.
pub fn identifier(raw: &str) -> String {
    raw.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(100)
        .collect::<String>()
        .trim_matches('_')
        .to_owned()
}

/// A URL path made only of unreserved characters and `/`, starting with `/`.
fn url_path(p: &str) -> Option<String> {
    let ok = p.starts_with('/')
        && p.len() <= 200
        && !p.contains("//")
        && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '.' | '_' | '~'));
    ok.then(|| p.to_owned())
}

fn host_name(h: &str) -> Option<String> {
    let h = h.to_ascii_lowercase();
    let ok = h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    ok.then_some(h)
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '.' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, addr: &str, status: HealthStatus, meta: &[(&str, &str)]) -> Instance {
        Instance {
            id: id.into(),
            address: addr.into(),
            port: 80,
            status,
            tags: vec!["rest".into()],
            meta: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn catalog(entries: &[(&str, Vec<Instance>)]) -> Catalog {
        Catalog { services: entries.iter().map(|(n, i)| (n.to_string(), Arc::new(i.clone()))).collect() }
    }

    #[test]
    fn a_service_is_served_at_its_name_with_the_prefix_stripped() {
        let (s, skipped) = services(&catalog(&[("hello", vec![inst("a", "10.0.0.2", HealthStatus::Passing, &[])])]));
        assert!(skipped.is_empty());
        let s = &s[0];
        assert_eq!((s.path.as_str(), s.path_prefix.as_str(), s.backend.as_str()), ("/hello", "/hello/", "be_hello"));
        assert!(s.strip);
        assert_eq!(s.balance, "roundrobin");
        assert_eq!(s.servers[0].address, "10.0.0.2:80");
    }

    #[test]
    fn only_passing_and_warning_instances_are_routed() {
        let (s, _) = services(&catalog(&[(
            "hello",
            vec![
                inst("a", "10.0.0.2", HealthStatus::Passing, &[]),
                inst("b", "10.0.0.3", HealthStatus::Warning, &[]),
                inst("c", "10.0.0.4", HealthStatus::Critical, &[]),
            ],
        )]));
        let addrs: Vec<_> = s[0].servers.iter().map(|s| s.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.2:80", "10.0.0.3:80"]);
    }

    #[test]
    fn meta_keys_shape_the_route() {
        let meta = [
            (keys::PATH, "/api/v1/"),
            (keys::STRIP, "false"),
            (keys::HOST, "API.example.com"),
            (keys::BALANCE, "leastconn"),
            (keys::CHECK_PATH, "/health"),
            (keys::WEIGHT, "7"),
        ];
        let (s, _) = services(&catalog(&[("api", vec![inst("a", "fd00::2", HealthStatus::Passing, &meta)])]));
        let s = &s[0];
        assert_eq!((s.path.as_str(), s.strip, s.host.as_deref()), ("/api/v1", false, Some("api.example.com")));
        assert_eq!((s.balance.as_str(), s.check_path.as_str()), ("leastconn", "/health"));
        assert_eq!((s.servers[0].address.as_str(), s.servers[0].weight), ("[fd00::2]:80", 7));
    }

    #[test]
    fn hostile_settings_skip_only_that_service() {
        for (key, value) in [
            (keys::PATH, "/x\n    server evil 1.2.3.4:80"),
            (keys::BALANCE, "roundrobin # x"),
            (keys::HOST, "a b"),
            (keys::CHECK_PATH, "/ok\"x"),
        ] {
            let (s, skipped) = services(&catalog(&[
                ("bad", vec![inst("a", "10.0.0.2", HealthStatus::Passing, &[(key, value)])]),
                ("good", vec![inst("b", "10.0.0.3", HealthStatus::Passing, &[])]),
            ]));
            assert_eq!(s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["good"], "{key}={value:?}");
            assert_eq!(skipped[0].service, "bad");
        }
    }

    #[test]
    fn names_and_ids_become_safe_identifiers() {
        let (s, _) = services(&catalog(&[(
            "he llo\n#x",
            vec![inst("id with \"quotes\"\nserver x", "10.0.0.2", HealthStatus::Passing, &[])],
        )]));
        assert_eq!(s[0].name, "he_llo__x");
        assert!(s[0].servers[0].name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
    }

    #[test]
    fn longer_prefixes_are_matched_first_and_collisions_are_skipped() {
        let (s, skipped) = services(&catalog(&[
            ("a", vec![inst("1", "10.0.0.2", HealthStatus::Passing, &[(keys::PATH, "/x")])]),
            ("b", vec![inst("2", "10.0.0.3", HealthStatus::Passing, &[(keys::PATH, "/x/y")])]),
            ("c", vec![inst("3", "10.0.0.4", HealthStatus::Passing, &[(keys::PATH, "/x")])]),
        ]));
        assert_eq!(s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(skipped[0].service, "c");
    }

    #[test]
    fn unusable_addresses_are_not_routed() {
        let (s, _) = services(&catalog(&[("h", vec![inst("a", "not-an-ip", HealthStatus::Passing, &[])])]));
        assert!(s[0].servers.is_empty());
    }

    #[test]
    fn the_cache_recomputes_only_services_whose_instances_changed() {
        let mut cache = Cache::default();
        let mut cat = catalog(&[
            ("a", vec![inst("a1", "10.0.0.1", HealthStatus::Passing, &[])]),
            ("b", vec![inst("b1", "10.0.0.2", HealthStatus::Passing, &[])]),
        ]);
        let (first, _) = services_cached(&cat, &mut cache);
        assert_eq!(first, services(&cat).0);
        // b changes (a new Arc); a keeps its Arc and its cached result.
        cat.services.insert("b".into(), Arc::new(vec![inst("b1", "10.0.0.9", HealthStatus::Passing, &[])]));
        let (second, _) = services_cached(&cat, &mut cache);
        assert_eq!(second, services(&cat).0);
        let b = second.iter().find(|s| s.name == "b").unwrap();
        assert_eq!(b.servers[0].address, "10.0.0.9:80");
        // A service that left is forgotten.
        cat.services.remove("a");
        let (third, _) = services_cached(&cat, &mut cache);
        assert_eq!(third.len(), 1);
        assert_eq!(cache.entries.len(), 1);
    }
}
