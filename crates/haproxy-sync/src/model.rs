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
    /// The services Consul lists without the routing tag, with their tags
    /// (shown on the routes page, never routed).
    pub others: Arc<BTreeMap<String, Vec<String>>>,
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// The Consul node it is registered on.
    pub node: String,
    pub address: String,
    pub port: u16,
    /// The worst of its own checks and its node's.
    pub status: HealthStatus,
    /// Those checks that are not passing, to say why it is not routed.
    pub failing: Vec<Check>,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
}

/// A check that is not passing: the instance's own, or its node's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Check {
    pub id: String,
    pub status: HealthStatus,
    /// A check of the node (`serfHealth`, `_node_maintenance`), not of the service.
    pub of_node: bool,
    /// What the check last said, at most 200 characters.
    pub output: String,
}

impl Check {
    /// A check from Consul's answer.
    pub fn from_entry(c: &consul::EntryCheck) -> Check {
        let output: String = c.output.trim().chars().take(200).collect();
        Check { id: c.check_id.clone(), status: c.status, of_node: c.service_id.is_empty(), output }
    }
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
    /// `http` (default) or `tcp`: a TCP service is routed by port, not path.
    pub const MODE: &str = "lb_mode";
    /// The port HAProxy listens on for a `tcp` service.
    pub const PORT: &str = "lb_port";
    /// `true` pins each client to one instance with a cookie.
    pub const STICKY: &str = "lb_sticky";
    /// Requests per second one client address may make; beyond: 429.
    pub const RATE_LIMIT: &str = "lb_rate_limit";
    /// Concurrent connections each instance gets; the rest wait in a queue.
    pub const MAXCONN: &str = "lb_maxconn";
    /// `true` answers plain HTTP with a redirect to HTTPS (when TLS is on).
    pub const HTTPS_REDIRECT: &str = "lb_https_redirect";
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
    /// JSON access logs on HAProxy's standard output.
    pub access_log: bool,
    /// The HTTPS frontend, when TLS is on (`--certs`).
    pub https: Option<Https>,
}

/// TLS termination: the port and the crt-list HAProxy reads its
/// certificates from (kept by haproxy-sync, see `tls.rs`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Https {
    pub port: u16,
    pub crt_list: String,
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
    /// For a TCP service, the port its frontend listens on (it has no route).
    pub tcp_port: Option<u16>,
    /// For a sticky service, the name of the cookie that pins a client.
    pub sticky: Option<String>,
    /// Requests per second one client address may make.
    pub rate_limit: Option<u32>,
    /// Concurrent connections each instance gets.
    pub maxconn: Option<u32>,
    pub https_redirect: bool,
    pub servers: Vec<Server>,
    /// Settings refused, each falling back to its default.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Service {
    /// This service with other servers (its own are not copied).
    pub fn with_servers(&self, servers: Vec<Server>) -> Service {
        Service {
            tcp_port: self.tcp_port,
            sticky: self.sticky.clone(),
            rate_limit: self.rate_limit,
            maxconn: self.maxconn,
            https_redirect: self.https_redirect,
            warnings: self.warnings.clone(),
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

/// Why an instance gets no server in its service's backend, in plain
/// words; `None` when it gets one. The rule [`services`] applies.
pub fn unrouted_instance(inst: &Instance) -> Option<String> {
    if !routable(inst.status) {
        let worst = inst.failing.iter().filter(|c| !routable(c.status)).max_by_key(|c| (c.of_node, c.status));
        let said = |c: &Check| if c.output.is_empty() { String::new() } else { format!(": {}", c.output) };
        return Some(match worst {
            Some(c) if c.id == "_node_maintenance" => format!("its node {} is in maintenance", inst.node),
            Some(c) if c.id.starts_with("_service_maintenance") => "it is in maintenance".to_owned(),
            Some(c) if c.of_node => {
                format!("its node {} is unhealthy: check {} is {}{}", inst.node, c.id, c.status.as_str(), said(c))
            }
            Some(c) => format!("its check {} is {}{}", c.id, c.status.as_str(), said(c)),
            None => format!("its health is {}", inst.status.as_str()),
        });
    }
    if inst.address.parse::<IpAddr>().is_err() {
        return Some(format!("its address {:?} is not an IP address", inst.address));
    }
    if inst.port == 0 {
        return Some("it has no port".to_owned());
    }
    None
}

/// Builds the routed services, longest path first so that more specific
/// prefixes win. Services whose settings cannot be made safe are skipped
/// with a reason; the others are unaffected.
pub fn services(catalog: &Catalog) -> (Vec<Arc<Service>>, Vec<Skipped>) {
    let (services, skipped, _) = services_cached(catalog, &mut Cache::default());
    (services, skipped)
}

/// [`services`], reusing `cache` for services whose instances did not change.
/// Also returns the settings refused in the services computed afresh (each
/// fell back to its default), to be told once rather than at every change.
pub fn services_cached(catalog: &Catalog, cache: &mut Cache) -> (Vec<Arc<Service>>, Vec<Skipped>, Vec<Skipped>) {
    let mut routed: Vec<(&str, Arc<Service>)> = Vec::with_capacity(catalog.services.len());
    let mut skipped = Vec::new();
    let mut warnings = Vec::new();
    cache.entries.retain(|name, _| catalog.services.contains_key(name));
    for (raw_name, instances) in &catalog.services {
        let result = match cache.entries.get(raw_name) {
            Some((seen, result)) if Arc::ptr_eq(seen, instances) => result.clone(),
            _ => {
                let result = service(raw_name, instances).map(Arc::new);
                if let Ok(svc) = &result {
                    warnings
                        .extend(svc.warnings.iter().map(|w| Skipped { service: raw_name.clone(), reason: w.clone() }));
                }
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
    let mut ports: HashMap<u16, &str> = HashMap::new();
    let mut collides = vec![None; routed.len()];
    for (i, (_, svc)) in routed.iter().enumerate() {
        let route = (svc.path.as_str(), svc.host.as_deref());
        let taken = match svc.tcp_port {
            Some(port) => ports.get(&port),
            None => routes.get(&route),
        };
        if let Some(other) = backends.get(svc.backend.as_str()) {
            collides[i] = Some(format!(
                "its backend name {} is taken by service {other:?} (the names differ only in characters HAProxy cannot use)",
                svc.backend
            ));
        } else if let Some(other) = taken {
            collides[i] = Some(match (svc.tcp_port, &svc.host) {
                (Some(port), _) => format!("{} {port} is taken by service {other:?}", keys::PORT),
                (None, Some(host)) => format!("its path {} on host {host} is taken by service {other:?}", svc.path),
                (None, None) => format!("its path {} is taken by service {other:?}", svc.path),
            });
        } else {
            backends.insert(&svc.backend, &svc.name);
            match svc.tcp_port {
                Some(port) => _ = ports.insert(port, &svc.name),
                None => _ = routes.insert(route, &svc.name),
            }
        }
    }
    let mut out = Vec::with_capacity(routed.len());
    for ((raw_name, svc), collision) in routed.iter().zip(collides) {
        match collision {
            Some(reason) => skipped.push(Skipped { service: (*raw_name).to_owned(), reason }),
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
    (out, skipped, warnings)
}

/// Takes out the TCP services whose port is one of `reserved` (the ports of
/// HAProxy's own frontends): two frontends on one port would share it.
pub fn reserve_ports(services: Vec<Arc<Service>>, reserved: &[u16]) -> (Vec<Arc<Service>>, Vec<Skipped>) {
    let (kept, taken): (Vec<_>, Vec<_>) =
        services.into_iter().partition(|s| s.tcp_port.is_none_or(|p| !reserved.contains(&p)));
    let skipped = taken
        .into_iter()
        .map(|s| Skipped {
            service: s.name.clone(),
            reason: format!("{} {} is a port HAProxy already listens on", keys::PORT, s.tcp_port.unwrap_or_default()),
        })
        .collect();
    (kept, skipped)
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
    // A TCP service is routed by its port: without a usable one, not at all.
    let tcp_port = match setting(keys::MODE).map(str::to_ascii_lowercase).as_deref() {
        None | Some("" | "http") => None,
        Some("tcp") => match setting(keys::PORT).map(str::parse::<u16>) {
            Some(Ok(port)) if port > 0 => Some(port),
            Some(_) => return Err(format!("{} {:?} is not a port", keys::PORT, setting(keys::PORT).unwrap_or(""))),
            None => return Err(format!("{}=tcp needs {}", keys::MODE, keys::PORT)),
        },
        Some(other) => return Err(format!("{} {other:?} is not http or tcp", keys::MODE)),
    };
    // Optional settings: a refused value warns and the default applies.
    let mut warnings = Vec::new();
    let mut flag = |key: &str| match setting(key).map(str::to_ascii_lowercase).as_deref() {
        None | Some("" | "false" | "0" | "no" | "off") => false,
        Some("true" | "1" | "yes" | "on") => true,
        Some(other) => {
            warnings.push(format!("{key} {other:?} is not true or false; it is off"));
            false
        }
    };
    let sticky = flag(keys::STICKY);
    let https_redirect = flag(keys::HTTPS_REDIRECT);
    let mut positive = |key: &str| match setting(key) {
        None | Some("") => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=1_000_000).contains(&n) => Some(n),
            _ => {
                warnings.push(format!("{key} {v:?} is not a number from 1 to 1000000; there is no limit"));
                None
            }
        },
    };
    let rate_limit = positive(keys::RATE_LIMIT);
    let maxconn = positive(keys::MAXCONN);
    if tcp_port.is_some() {
        for (key, set) in
            [(keys::STICKY, sticky), (keys::RATE_LIMIT, rate_limit.is_some()), (keys::HTTPS_REDIRECT, https_redirect)]
        {
            if set {
                warnings.push(format!("{key} applies to HTTP services only; ignored for this TCP service"));
            }
        }
    }
    let http = tcp_port.is_none();
    let sticky = (http && sticky).then(|| format!("lb_{name}"));

    let mut servers: Vec<Server> = Vec::new();
    for inst in sorted.iter().filter(|i| unrouted_instance(i).is_none()) {
        let Ok(ip) = inst.address.parse::<IpAddr>() else { continue };
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
        tcp_port,
        sticky,
        rate_limit: rate_limit.filter(|_| http),
        maxconn,
        https_redirect: http && https_redirect,
        servers,
        warnings,
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
            ..Default::default()
        }
    }

    fn catalog(entries: &[(&str, Vec<Instance>)]) -> Catalog {
        Catalog {
            services: entries.iter().map(|(n, i)| (n.to_string(), Arc::new(i.clone()))).collect(),
            ..Default::default()
        }
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
    fn a_tcp_service_is_routed_by_its_port_and_ports_are_not_shared() {
        let tcp = |port: &'static str| vec![(keys::MODE, "TCP"), (keys::PORT, port)];
        let (s, skipped, _) = services_cached(
            &catalog(&[
                ("a", vec![inst("1", "10.0.0.2", HealthStatus::Passing, &tcp("6379"))]),
                ("b", vec![inst("2", "10.0.0.3", HealthStatus::Passing, &tcp("6379"))]),
                ("c", vec![inst("3", "10.0.0.4", HealthStatus::Passing, &tcp("80"))]),
                ("d", vec![inst("4", "10.0.0.5", HealthStatus::Passing, &[(keys::MODE, "tcp")])]),
                ("e", vec![inst("5", "10.0.0.6", HealthStatus::Passing, &tcp("99999"))]),
                ("f", vec![inst("6", "10.0.0.7", HealthStatus::Passing, &[(keys::MODE, "udp")])]),
                // An HTTP service with the same path as a TCP one: no clash.
                ("g", vec![inst("7", "10.0.0.8", HealthStatus::Passing, &[(keys::PATH, "/a")])]),
            ]),
            &mut Cache::default(),
        );
        let routed: Vec<_> = s.iter().map(|s| (s.name.as_str(), s.tcp_port)).collect();
        assert_eq!(routed, [("a", Some(6379)), ("c", Some(80)), ("g", None)]);
        let reasons: BTreeMap<_, _> = skipped.iter().map(|s| (s.service.as_str(), s.reason.as_str())).collect();
        assert!(reasons["b"].contains("is taken by service \"a\""), "{reasons:?}");
        assert!(reasons["d"].contains("needs lb_port"), "{reasons:?}");
        assert!(reasons["e"].contains("\"99999\" is not a port"), "{reasons:?}");
        assert!(reasons["f"].contains("not http or tcp"), "{reasons:?}");
        // HAProxy's own ports are not for services.
        let (kept, taken) = reserve_ports(s, &[80, 1936]);
        assert_eq!(kept.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "g"]);
        assert_eq!(taken[0].service, "c");
    }

    #[test]
    fn optional_settings_fall_back_with_a_warning_and_the_service_stays_routed() {
        let good = [(keys::STICKY, "yes"), (keys::RATE_LIMIT, "20"), (keys::MAXCONN, "8"), (keys::HTTPS_REDIRECT, "1")];
        let bad =
            [(keys::STICKY, "maybe"), (keys::RATE_LIMIT, "0"), (keys::MAXCONN, "lots"), (keys::HTTPS_REDIRECT, "x")];
        let (s, skipped, warnings) = services_cached(
            &catalog(&[
                ("good", vec![inst("1", "10.0.0.2", HealthStatus::Passing, &good)]),
                ("bad", vec![inst("2", "10.0.0.3", HealthStatus::Passing, &bad)]),
            ]),
            &mut Cache::default(),
        );
        assert!(skipped.is_empty());
        let by_name = |n: &str| s.iter().find(|s| s.name == n).unwrap().clone();
        let (good, bad) = (by_name("good"), by_name("bad"));
        assert_eq!(good.sticky.as_deref(), Some("lb_good"));
        assert_eq!((good.rate_limit, good.maxconn, good.https_redirect), (Some(20), Some(8), true));
        assert_eq!((bad.sticky.as_deref(), bad.rate_limit, bad.maxconn, bad.https_redirect), (None, None, None, false));
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(warnings.iter().all(|w| w.service == "bad"));
        assert!(warnings.iter().any(|w| w.reason.contains("lb_maxconn \"lots\"")), "{warnings:?}");
        // HTTP-only settings on a TCP service: ignored, with a warning each.
        let tcp = [(keys::MODE, "tcp"), (keys::PORT, "7000"), (keys::STICKY, "true"), (keys::MAXCONN, "3")];
        let (s, _, warnings) = services_cached(
            &catalog(&[("t", vec![inst("1", "10.0.0.2", HealthStatus::Passing, &tcp)])]),
            &mut Cache::default(),
        );
        assert_eq!((s[0].sticky.as_deref(), s[0].maxconn), (None, Some(3)));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn warnings_are_told_when_a_service_is_computed_not_at_every_change() {
        let mut cache = Cache::default();
        let bad = vec![inst("1", "10.0.0.2", HealthStatus::Passing, &[(keys::RATE_LIMIT, "x")])];
        let mut cat = catalog(&[("bad", bad), ("other", vec![inst("2", "10.0.0.3", HealthStatus::Passing, &[])])]);
        assert_eq!(services_cached(&cat, &mut cache).2.len(), 1);
        cat.services.insert("other".into(), Arc::new(vec![inst("3", "10.0.0.4", HealthStatus::Passing, &[])]));
        assert!(services_cached(&cat, &mut cache).2.is_empty(), "bad did not change");
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
        let (first, _, _) = services_cached(&cat, &mut cache);
        assert_eq!(first, services(&cat).0);
        // b changes (a new Arc); a keeps its Arc and its cached result.
        cat.services.insert("b".into(), Arc::new(vec![inst("b1", "10.0.0.9", HealthStatus::Passing, &[])]));
        let (second, _, _) = services_cached(&cat, &mut cache);
        assert_eq!(second, services(&cat).0);
        let b = second.iter().find(|s| s.name == "b").unwrap();
        assert_eq!(b.servers[0].address, "10.0.0.9:80");
        // A service that left is forgotten.
        cat.services.remove("a");
        let (third, _, _) = services_cached(&cat, &mut cache);
        assert_eq!(third.len(), 1);
        assert_eq!(cache.entries.len(), 1);
    }
}
