//! The rules that turn one container into the Consul services it asks for.
//! Pure: no I/O, so every rule is a unit test.
//!
//! A container asks to be registered with `SERVICE_NAME` (environment or
//! label; labels win), or by existing at all when registering every
//! container (`--all`). Each exposed port becomes one service; per-port keys
//! `SERVICE_<port>_<KEY>` override `SERVICE_<KEY>`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use consul::{Check, Registration};

use crate::container::{Container, Port};

/// Meta keys registrator sets on every service it registers: how it knows
/// what it owns after a restart.
pub const OWNER_META: &str = "registrator_owner";
pub const CONTAINER_META: &str = "registrator_container";

/// How services are derived; fixed for the life of the process.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Identifies this Docker host: prefix of service IDs and owner mark.
    pub owner: String,
    /// The host's address, for published ports (`-ip`).
    pub host_ip: Option<IpAddr>,
    /// Always register container addresses and exposed ports (`-internal`).
    pub internal: bool,
    /// Network whose address to register (`--network`); `SERVICE_NETWORK` wins.
    pub network: Option<String>,
    /// Networks registrator's own container is attached to.
    pub own_networks: Vec<String>,
    /// Tags added to every service (`-tags`).
    pub extra_tags: Vec<String>,
    /// Register every container with ports, not just those with `SERVICE_NAME`.
    pub register_all: bool,
    /// Label holding the IP address to register (`-useIpFromLabel`).
    pub ip_from_label: Option<String>,
}

/// The services a container asks for, and why any it asked for was refused.
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    pub services: Vec<Registration>,
    pub problems: Vec<String>,
}

const KNOWN_KEYS: &[&str] = &["NAME", "TAGS", "ID", "IGNORE", "NETWORK"];
const MAX_META_VALUE: usize = 512;
const MAX_NAME: usize = 63;
const MAX_TAG: usize = 256;

/// The services `c` asks for under `rules`. A container that is not running
/// asks for none.
pub fn desired(c: &Container, rules: &Rules) -> Desired {
    let mut out = Desired::default();
    if !c.running {
        return out;
    }
    let keys = Keys::of(c);
    if keys.global("SERVICE_NAME").is_none() && !keys.any_port_name() && !rules.register_all {
        return out;
    }
    if truthy(keys.global("SERVICE_IGNORE")) {
        return out;
    }
    if c.ports.is_empty() {
        out.problems.push("no exposed ports: nothing to register (EXPOSE a port or publish one)".into());
        return out;
    }
    let many = c.ports.len() > 1;
    for &port in &c.ports {
        match service(c, rules, &keys, port, many) {
            Ok(Some(reg)) => out.services.push(reg),
            Ok(None) => {}
            Err(why) => out.problems.push(format!("port {}: {why}", port.number)),
        }
    }
    out
}

fn service(c: &Container, rules: &Rules, keys: &Keys, port: Port, many: bool) -> Result<Option<Registration>, String> {
    if truthy(keys.get(port, "IGNORE")) {
        return Ok(None);
    }
    let raw_name = match (keys.port(port, "NAME"), keys.global("SERVICE_NAME")) {
        (Some(name), _) => name.to_owned(),
        (None, Some(name)) if many => format!("{name}-{}", port.number),
        (None, Some(name)) => name.to_owned(),
        (None, None) if !rules.register_all => return Ok(None),
        (None, None) => {
            let base = image_base(&c.image);
            if many { format!("{base}-{}", port.number) } else { base.to_owned() }
        }
    };
    let name = normalize_name(&raw_name)?;

    let (ip, svc_port) = address(c, rules, keys, port)?;
    let udp = if port.udp { ":udp" } else { "" };
    let id = match keys.get(port, "ID") {
        Some(id) if keys.port(port, "ID").is_none() && many => format!("{id}-{}", port.number),
        Some(id) => id.to_owned(),
        None => format!("{}:{}:{}{udp}", rules.owner, c.name, port.number),
    };
    let id = clean_id(&id)?;

    let mut tags: Vec<String> = keys.get(port, "TAGS").map(split_tags).unwrap_or_default();
    tags.extend(rules.extra_tags.iter().cloned());
    if port.udp {
        tags.push("udp".into());
    }
    dedup_in_order(&mut tags);

    let mut meta = BTreeMap::new();
    for (key, value) in keys.meta(port) {
        let Some(key) = meta_key(&key) else { continue };
        let value: String = value.chars().filter(|ch| !ch.is_control()).take(MAX_META_VALUE).collect();
        meta.insert(key, value);
    }
    meta.insert(OWNER_META.into(), rules.owner.clone());
    meta.insert(CONTAINER_META.into(), c.id.clone());

    let mut checks: Vec<Check> = check(keys, port, ip, svc_port)?.into_iter().collect();
    checks.extend(docker_health(c, &id));
    Ok(Some(Registration { id, name, tags, address: ip.to_string(), port: svc_port, meta, checks }))
}

/// Chooses the address and port to register, by the documented rule:
/// 1. the IP in the `-useIpFromLabel` label;
/// 2. the network named by `SERVICE_<port>_NETWORK`, `SERVICE_NETWORK` or `--network`;
/// 3. with `-internal`, or on a network registrator's own container shares,
///    the container's address there (lexically first network) and exposed port;
/// 4. a published port: the host address (`-ip`, else the binding's) and host port;
/// 5. when registrator runs on networks of its own, nothing else is
///    reachable: refused with a reason;
/// 6. else the container's address on its lexically first network.
fn address(c: &Container, rules: &Rules, keys: &Keys, port: Port) -> Result<(IpAddr, u16), String> {
    if let Some(label) = &rules.ip_from_label {
        if let Some(ip) = c.labels.get(label) {
            let ip = ip.trim().parse().map_err(|_| format!("label {label}={ip:?} is not an IP address"))?;
            return Ok((ip, port.number));
        }
    }
    if let Some(net) = keys.get(port, "NETWORK").or(rules.network.as_deref()) {
        return match c.networks.get(net).and_then(|n| n.ip()) {
            Some(ip) => Ok((ip, port.number)),
            None => {
                Err(format!("not attached to network {net:?} (attached: {:?})", c.networks.keys().collect::<Vec<_>>()))
            }
        };
    }
    let on = |pred: &dyn Fn(&str) -> bool| c.networks.iter().filter(|(n, _)| pred(n)).find_map(|(_, a)| a.ip());
    if let Some(ip) = on(&|n| rules.own_networks.iter().any(|o| o == n)) {
        return Ok((ip, port.number));
    }
    if !rules.internal {
        if let Some(binding) = c.published.get(&port).and_then(|b| b.first()) {
            let ip = rules.host_ip.or(binding.ip.filter(|ip| !ip.is_unspecified()));
            if let Some(ip) = ip {
                return Ok((ip, binding.port));
            }
        }
    }
    if !rules.own_networks.is_empty() && !rules.internal {
        // Registrator runs on a network of its own: a container that shares
        // none of it and publishes nothing cannot be reached from there.
        return Err(format!(
            "unreachable: shares no network with registrator ({:?}) and publishes no port; attach it, publish the port or set SERVICE_NETWORK",
            rules.own_networks
        ));
    }
    if let Some(ip) = on(&|_| true) {
        return Ok((ip, port.number));
    }
    match rules.host_ip {
        Some(ip) => Ok((ip, port.number)),
        None => Err("no address: the container has no network address; set -ip for host networking".into()),
    }
}

fn check(keys: &Keys, port: Port, ip: IpAddr, svc_port: u16) -> Result<Option<Check>, String> {
    let get = |k: &str| keys.get(port, &format!("CHECK_{k}"));
    let target = SocketAddr::new(ip, svc_port);
    let mut check = Check::default();
    if let Some(path) = get("HTTP") {
        check.http = Some(format!("http://{target}{}", url_path(path)?));
    } else if let Some(path) = get("HTTPS") {
        check.http = Some(format!("https://{target}{}", url_path(path)?));
    } else if get("TCP").is_some_and(|v| truthy(Some(v))) {
        check.tcp = Some(target.to_string());
    } else if let Some(ttl) = get("TTL") {
        check.ttl = Some(duration(ttl, "CHECK_TTL")?);
    } else if let Some(cmd) = get("CMD").or(get("SCRIPT")) {
        // An argument vector, split as a shell would, never run by a shell.
        check.args = shell_words::split(cmd).map_err(|e| format!("CHECK_CMD {cmd:?}: {e}"))?;
        if check.args.is_empty() {
            return Err("CHECK_CMD is empty".into());
        }
    } else {
        return Ok(None);
    }
    if check.ttl.is_none() {
        check.interval = Some(duration(get("INTERVAL").unwrap_or("10s"), "CHECK_INTERVAL")?);
    }
    check.timeout = get("TIMEOUT").map(|t| duration(t, "CHECK_TIMEOUT")).transpose()?;
    check.deregister_critical_service_after =
        get("DEREGISTER_AFTER").map(|t| duration(t, "CHECK_DEREGISTER_AFTER")).transpose()?;
    check.status = match get("INITIAL_STATUS") {
        None => None,
        Some(s @ ("passing" | "warning" | "critical")) => Some(s.to_owned()),
        Some(other) => return Err(format!("CHECK_INITIAL_STATUS {other:?} is not passing, warning or critical")),
    };
    check.tls_skip_verify = truthy(get("TLS_SKIP_VERIFY"));
    Ok(Some(check))
}

/// Docker's own health verdict, where the container defines a healthcheck,
/// as a Consul check registrator keeps current: `healthy` is passing,
/// `starting` and `unhealthy` are critical, so no traffic reaches an
/// instance Docker does not call healthy.
fn docker_health(c: &Container, service_id: &str) -> Option<Check> {
    let (status, notes) = match c.health.as_deref()? {
        "healthy" => ("passing", "Docker reports the container healthy"),
        "starting" => ("critical", "Docker's healthcheck has not passed yet"),
        "unhealthy" => ("critical", "Docker reports the container unhealthy"),
        _ => return None,
    };
    Some(Check {
        check_id: Some(format!("{service_id}{DOCKER_HEALTH_SUFFIX}")),
        name: Some("Docker health".into()),
        notes: Some(notes.into()),
        // Registrator sets the status on every health event; the TTL only
        // marks the check critical if registrator stops for that long.
        ttl: Some(DOCKER_HEALTH_TTL.into()),
        status: Some(status.into()),
        ..Check::default()
    })
}

/// Whether a check ID is that of a Docker-health check.
pub fn is_docker_health(check_id: &str) -> bool {
    check_id.ends_with(DOCKER_HEALTH_SUFFIX)
}

const DOCKER_HEALTH_SUFFIX: &str = ":docker-health";

/// How long a Docker health verdict stands without registrator refreshing it.
pub const DOCKER_HEALTH_TTL: &str = "720h";

/// Turns a requested service name into one Consul and DNS accept: ASCII
/// letters, digits and dashes, lowercase, at most 63 characters. Any other
/// run of characters becomes one dash (`hello/v1` → `hello-v1`).
pub fn normalize_name(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    for ch in raw.trim().chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-');
    let out = out[..out.len().min(MAX_NAME)].trim_end_matches('-');
    if out.is_empty() {
        return Err(format!("service name {raw:?} has no letters or digits"));
    }
    Ok(out.to_owned())
}

/// Splits `SERVICE_TAGS`: commas separate, `\,` is a literal comma;
/// whitespace is trimmed, control characters dropped, empty tags skipped.
pub fn split_tags(raw: &str) -> Vec<String> {
    let mut tags = vec![String::new()];
    let mut chars = raw.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if chars.peek() == Some(&',') => {
                chars.next();
                tags.last_mut().expect("never empty").push(',');
            }
            ',' => tags.push(String::new()),
            ch if ch.is_control() => {}
            ch => tags.last_mut().expect("never empty").push(ch),
        }
    }
    // Trimmed again after the cap, which may end a tag on a space.
    tags.into_iter()
        .map(|t| t.trim().chars().take(MAX_TAG).collect::<String>().trim_end().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn clean_id(id: &str) -> Result<String, String> {
    let id: String = id.trim().chars().filter(|c| !c.is_control()).take(256).collect();
    if id.is_empty() { Err("empty SERVICE_ID".into()) } else { Ok(id) }
}

fn meta_key(key: &str) -> Option<String> {
    let key: String = key
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(128)
        .collect();
    // "consul"-prefixed keys are reserved by Consul, ours by registrator.
    (!key.is_empty() && !key.starts_with("consul") && !key.starts_with("registrator_")).then_some(key)
}

fn url_path(path: &str) -> Result<String, String> {
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("check path {path:?} holds whitespace or control characters"));
    }
    Ok(if path.starts_with('/') { path.to_owned() } else { format!("/{path}") })
}

fn duration(value: &str, key: &str) -> Result<String, String> {
    let v = value.trim();
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len()));
    let ok = !num.is_empty() && num.parse::<f64>().is_ok() && matches!(unit, "ms" | "s" | "m" | "h");
    if ok { Ok(v.to_owned()) } else { Err(format!("SERVICE_{key}={value:?} is not a duration like 10s or 500ms")) }
}

fn truthy(v: Option<&str>) -> bool {
    v.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn image_base(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

fn dedup_in_order(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|t| seen.insert(t.clone()));
}

/// A container's `SERVICE_*` settings, split into global and per-port keys.
struct Keys<'a> {
    global: BTreeMap<&'a str, &'a str>,
    /// (port, KEY) → value, from `SERVICE_<port>_<KEY>`.
    per_port: BTreeMap<(u16, &'a str), &'a str>,
}

impl<'a> Keys<'a> {
    fn of(c: &'a Container) -> Self {
        let mut global = BTreeMap::new();
        let mut per_port = BTreeMap::new();
        for (key, value) in c.service_settings() {
            let rest = &key["SERVICE_".len()..];
            match rest.split_once('_') {
                Some((num, k)) if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) => {
                    if let Ok(n) = num.parse::<u16>() {
                        per_port.insert((n, k), value);
                    }
                }
                _ => {
                    global.insert(key, value);
                }
            }
        }
        Self { global, per_port }
    }

    fn global(&self, key: &str) -> Option<&'a str> {
        self.global.get(key).copied().filter(|v| !v.trim().is_empty())
    }

    fn port(&self, port: Port, key: &str) -> Option<&'a str> {
        self.per_port.get(&(port.number, key)).copied().filter(|v| !v.trim().is_empty())
    }

    /// A per-port key, else the global one.
    fn get(&self, port: Port, key: &str) -> Option<&'a str> {
        self.port(port, key).or_else(|| self.global(&format!("SERVICE_{key}")))
    }

    fn any_port_name(&self) -> bool {
        self.per_port.keys().any(|(_, k)| *k == "NAME")
    }

    /// Keys that are neither known settings nor checks become Meta; per-port
    /// ones override global ones for their port.
    fn meta(&self, port: Port) -> BTreeMap<String, &'a str> {
        let is_meta = |k: &str| !KNOWN_KEYS.contains(&k) && !k.starts_with("CHECK_");
        let mut meta = BTreeMap::new();
        for (k, v) in &self.global {
            let k = &k["SERVICE_".len()..];
            if is_meta(k) {
                meta.insert(k.to_owned(), *v);
            }
        }
        for ((n, k), v) in &self.per_port {
            if *n == port.number && is_meta(k) {
                meta.insert((*k).to_owned(), *v);
            }
        }
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{HostBinding, NetworkAddress};

    fn container(settings: &[(&str, &str)], ports: &[&str]) -> Container {
        Container {
            id: "c0ffee".into(),
            name: "proj-hello-1".into(),
            image: "registry.example/team/hello:1.2".into(),
            running: true,
            env: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ports: ports.iter().map(|p| Port::parse(p).unwrap()).collect(),
            networks: [(
                "proj_default".to_owned(),
                NetworkAddress { ipv4: Some("172.20.0.5".parse().unwrap()), ipv6: None },
            )]
            .into(),
            ..Container::default()
        }
    }

    fn rules() -> Rules {
        Rules { owner: "dockerhost".into(), own_networks: vec!["proj_default".into()], ..Rules::default() }
    }

    #[test]
    fn service_name_registers_the_container_address_on_the_shared_network() {
        let d = desired(&container(&[("SERVICE_NAME", "hello"), ("SERVICE_TAGS", "rest, v1")], &["80/tcp"]), &rules());
        assert_eq!(d.problems, Vec::<String>::new());
        let s = &d.services[0];
        assert_eq!((s.name.as_str(), s.address.as_str(), s.port), ("hello", "172.20.0.5", 80));
        assert_eq!(s.id, "dockerhost:proj-hello-1:80");
        assert_eq!(s.tags, ["rest", "v1"]);
        assert_eq!(s.meta[OWNER_META], "dockerhost");
        assert_eq!(s.meta[CONTAINER_META], "c0ffee");
    }

    #[test]
    fn containers_without_service_name_are_left_alone_unless_all_are_registered() {
        let c = container(&[], &["80/tcp"]);
        assert!(desired(&c, &rules()).services.is_empty());
        let all = Rules { register_all: true, ..rules() };
        assert_eq!(desired(&c, &all).services[0].name, "hello");
    }

    #[test]
    fn stopped_or_ignored_containers_ask_for_nothing() {
        let mut c = container(&[("SERVICE_NAME", "hello")], &["80/tcp"]);
        c.running = false;
        assert!(desired(&c, &rules()).services.is_empty());
        let c = container(&[("SERVICE_NAME", "hello"), ("SERVICE_IGNORE", "true")], &["80/tcp"]);
        assert!(desired(&c, &rules()).services.is_empty());
    }

    #[test]
    fn each_port_is_a_service_and_per_port_keys_win() {
        let c = container(
            &[
                ("SERVICE_NAME", "web"),
                ("SERVICE_443_NAME", "web-tls"),
                ("SERVICE_53_TAGS", "dns"),
                ("SERVICE_8080_IGNORE", "1"),
            ],
            &["80/tcp", "443/tcp", "53/udp", "8080/tcp"],
        );
        let d = desired(&c, &rules());
        let got: Vec<_> = d.services.iter().map(|s| (s.name.as_str(), s.id.as_str(), s.tags.join(","))).collect();
        assert_eq!(
            got,
            [
                ("web-80", "dockerhost:proj-hello-1:80", String::new()),
                ("web-tls", "dockerhost:proj-hello-1:443", String::new()),
                ("web-53", "dockerhost:proj-hello-1:53:udp", "dns,udp".to_owned()),
            ]
        );
    }

    #[test]
    fn names_consul_or_dns_refuse_are_normalised() {
        assert_eq!(normalize_name("hello/v1").unwrap(), "hello-v1");
        assert_eq!(normalize_name("  My Service!! ").unwrap(), "my-service");
        assert_eq!(normalize_name("a\nb#c\"d").unwrap(), "a-b-c-d");
        assert_eq!(normalize_name(&"x".repeat(10_000)).unwrap().len(), 63);
        assert!(normalize_name("///").is_err());
        assert!(normalize_name("").is_err());
        assert!(normalize_name("ünïcødé").unwrap().chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn tags_split_on_commas_with_escapes_and_lose_control_characters() {
        assert_eq!(split_tags(r"a, b\,c ,,d"), ["a", "b,c", "d"]);
        assert_eq!(split_tags("x\ny,\u{7}"), ["xy"]);
        assert!(split_tags("").is_empty());
    }

    #[test]
    fn other_service_keys_become_meta_and_per_port_meta_wins() {
        let c = container(
            &[
                ("SERVICE_NAME", "h"),
                ("SERVICE_VERSION", "1"),
                ("SERVICE_80_VERSION", "2"),
                ("SERVICE_REGISTRATOR_OWNER", "evil"),
            ],
            &["80/tcp"],
        );
        let s = &desired(&c, &rules()).services[0];
        assert_eq!(s.meta["version"], "2");
        assert_eq!(s.meta[OWNER_META], "dockerhost");
    }

    #[test]
    fn http_check_aims_at_the_registered_address_and_ipv6_gets_brackets() {
        let mut c = container(
            &[("SERVICE_NAME", "h"), ("SERVICE_CHECK_HTTP", "/health"), ("SERVICE_CHECK_INTERVAL", "2s")],
            &["80/tcp"],
        );
        let s = &desired(&c, &rules()).services[0];
        assert_eq!(s.checks[0].http.as_deref(), Some("http://172.20.0.5:80/health"));
        assert_eq!(s.checks[0].interval.as_deref(), Some("2s"));
        c.networks.insert("proj_default".into(), NetworkAddress { ipv4: None, ipv6: Some("fd00::5".parse().unwrap()) });
        let s = &desired(&c, &rules()).services[0];
        assert_eq!(s.checks[0].http.as_deref(), Some("http://[fd00::5]:80/health"));
        assert_eq!(s.address, "fd00::5");
    }

    #[test]
    fn bad_check_values_refuse_that_port_with_a_reason() {
        let c = container(
            &[("SERVICE_NAME", "h"), ("SERVICE_CHECK_HTTP", "/x"), ("SERVICE_CHECK_INTERVAL", "soon")],
            &["80/tcp"],
        );
        let d = desired(&c, &rules());
        assert!(d.services.is_empty());
        assert!(d.problems[0].contains("CHECK_INTERVAL"), "{:?}", d.problems);
    }

    #[test]
    fn published_port_is_used_when_no_network_is_shared() {
        let mut c = container(&[("SERVICE_NAME", "h")], &["80/tcp"]);
        c.published.insert(Port { number: 80, udp: false }, vec![HostBinding { ip: None, port: 32768 }]);
        let r = Rules { own_networks: vec![], host_ip: Some("192.0.2.10".parse().unwrap()), ..rules() };
        let s = &desired(&c, &r).services[0];
        assert_eq!((s.address.as_str(), s.port), ("192.0.2.10", 32768));
        // -internal keeps the container's own address and port.
        let s = &desired(&c, &Rules { internal: true, ..r }).services[0];
        assert_eq!((s.address.as_str(), s.port), ("172.20.0.5", 80));
    }

    #[test]
    fn containers_registrator_cannot_reach_are_refused_with_the_reason() {
        let c = container(&[("SERVICE_NAME", "h")], &["80/tcp"]);
        let other = Rules { own_networks: vec!["other_default".into()], ..rules() };
        assert!(desired(&c, &other).problems[0].contains("unreachable"));
        let on_host = Rules { own_networks: vec![], ..rules() };
        assert_eq!(desired(&c, &on_host).services[0].address, "172.20.0.5");
    }

    #[test]
    fn service_network_selects_the_address_and_a_missing_network_is_a_problem() {
        let mut c = container(&[("SERVICE_NAME", "h"), ("SERVICE_NETWORK", "backend")], &["80/tcp"]);
        assert!(desired(&c, &rules()).problems[0].contains("not attached to network \"backend\""));
        c.networks.insert("backend".into(), NetworkAddress { ipv4: Some("10.9.0.2".parse().unwrap()), ipv6: None });
        assert_eq!(desired(&c, &rules()).services[0].address, "10.9.0.2");
    }

    #[test]
    fn docker_health_becomes_a_check_that_only_healthy_passes() {
        let mut c = container(&[("SERVICE_NAME", "h")], &["80/tcp"]);
        assert!(desired(&c, &rules()).services[0].checks.is_empty(), "no healthcheck, no check");
        for (docker, consul) in [("starting", "critical"), ("healthy", "passing"), ("unhealthy", "critical")] {
            c.health = Some(docker.into());
            let s = &desired(&c, &rules()).services[0];
            let check = &s.checks[0];
            assert_eq!(check.status.as_deref(), Some(consul), "{docker}");
            assert_eq!(check.check_id.as_deref(), Some("dockerhost:proj-hello-1:80:docker-health"));
            assert!(check.ttl.is_some());
        }
    }

    #[test]
    fn check_commands_are_argument_vectors_split_as_a_shell_would() {
        let c = container(
            &[("SERVICE_NAME", "h"), ("SERVICE_CHECK_CMD", r#"/bin/check --url "http://x/a b""#)],
            &["80/tcp"],
        );
        let s = &desired(&c, &rules()).services[0];
        assert_eq!(s.checks[0].args, ["/bin/check", "--url", "http://x/a b"]);
        let c = container(&[("SERVICE_NAME", "h"), ("SERVICE_CHECK_CMD", r#"/bin/check "unclosed"#)], &["80/tcp"]);
        assert!(desired(&c, &rules()).problems[0].contains("CHECK_CMD"));
    }

    #[test]
    fn hostile_tags_lose_control_characters_and_length() {
        let huge = "x".repeat(10_000);
        let raw = format!("a\nb, c\\,d ,,{huge}");
        let tags = split_tags(&raw);
        assert_eq!(tags[..2], ["ab", "c,d"]);
        assert_eq!(tags[2].len(), MAX_TAG);
    }
}
