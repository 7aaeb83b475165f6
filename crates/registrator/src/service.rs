//! The rules that turn one container into the Consul services it asks for.
//! Pure: no I/O, so every rule is a unit test.
//!
//! A container asks to be registered with `SERVICE_NAME` (environment or
//! label; labels win), or by existing at all when registering every
//! container (`--all`). Each exposed port becomes one service; per-port keys
//! `SERVICE_<port>_<KEY>` override `SERVICE_<KEY>`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use consul::{Check, Registration};

use crate::container::{Container, Port};
use crate::tags::ForceTags;

/// Meta keys registrator sets on every service it registers: how it knows
/// what it owns after a restart.
pub const OWNER_META: &str = "registrator_owner";
pub const CONTAINER_META: &str = "registrator_container";

/// How services are derived; fixed for the life of the process.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Identifies this Docker host: prefix of service IDs and owner mark.
    pub owner: String,
    /// The host's address given with `-ip`: published ports are registered
    /// there, whatever else the container is attached to.
    pub host_ip: Option<IpAddr>,
    /// The host's address found at start when `-ip` is not given (the
    /// gateway of registrator's network, or its Consul agent's address): a
    /// published port that nothing else reaches is registered there.
    pub host_address: Option<IpAddr>,
    /// Always register container addresses and exposed ports (`-internal`).
    pub internal: bool,
    /// Network whose address to register (`--network`); `SERVICE_NETWORK` wins.
    pub network: Option<String>,
    /// Networks registrator's own container is attached to (none on the host network).
    pub own_networks: Vec<String>,
    /// Tags added to every service (`-tags`), maybe a template.
    pub force_tags: Option<Arc<ForceTags>>,
    /// Register every container with ports, not just those with `SERVICE_NAME`.
    pub register_all: bool,
    /// Label holding the IP address to register (`-useIpFromLabel`).
    pub ip_from_label: Option<String>,
}

/// The services a container asks for, why any it asked for was refused,
/// what was changed on the way (a name made DNS-safe), and what it does not
/// ask for and why (`skipped`: the container's own choice or registrator's
/// rules, nothing to warn of, but what `/containers` tells a user).
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    pub services: Vec<Registration>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub skipped: Vec<String>,
}

const KNOWN_KEYS: &[&str] = &["NAME", "TAGS", "ID", "IGNORE", "NETWORK"];
const MAX_META_VALUE: usize = 512;
const MAX_META: usize = 64;
const MAX_NAME: usize = 63;
const MAX_TAG: usize = 256;

/// The default bridge: its addresses are reachable only from the same host
/// and network, never from a load balancer elsewhere.
const DEFAULT_BRIDGE: &str = "bridge";

/// The services `c` asks for under `rules`. A container that is not running
/// asks for none. Whatever is not registered is said, in `problems` (refused)
/// or `skipped` (not asked for).
pub fn desired(c: &Container, rules: &Rules) -> Desired {
    let mut out = Desired::default();
    if !c.running {
        out.skipped.push(not_running(c));
        return out;
    }
    let keys = Keys::of(c);
    if keys.global("SERVICE_NAME").is_none() && !keys.any_port_name() && !rules.register_all {
        out.skipped.push(NO_SERVICE_NAME.into());
        return out;
    }
    if let Some(value) = keys.global("SERVICE_IGNORE").filter(|v| truthy(Some(v))) {
        out.skipped.push(format!("SERVICE_IGNORE={value:?}: the container asks not to be registered"));
        return out;
    }
    if c.ports.is_empty() {
        out.problems.push("no exposed ports: nothing to register (EXPOSE a port or publish one)".into());
        return out;
    }
    let force_tags = match rules.force_tags.as_deref().map(|t| t.render(c)).transpose() {
        Ok(tags) => tags.unwrap_or_default(),
        Err(why) => {
            out.problems.push(why);
            return out;
        }
    };
    // Ports nothing can reach are refused; the others that ask for a service
    // are the group whose size decides `<name>-<port>` names.
    let mut reachable = Vec::new();
    for &port in &c.ports {
        let named = keys.port(port, "NAME").is_some() || keys.global("SERVICE_NAME").is_some() || rules.register_all;
        if truthy(keys.get(port, "IGNORE")) {
            out.skipped.push(format!(
                "port {}: SERVICE_{}_IGNORE is set: this port asks not to be registered",
                port.number, port.number
            ));
            continue;
        }
        if !named {
            out.skipped.push(format!(
                "port {}: neither SERVICE_{}_NAME nor SERVICE_NAME names it: only named ports are registered",
                port.number, port.number
            ));
            continue;
        }
        match address(c, rules, &keys, port) {
            Ok(addr) => reachable.push((port, addr)),
            Err(why) => out.problems.push(format!("port {}: {why}", port.number)),
        }
    }
    let many = reachable.len() > 1;
    for (port, addr) in reachable {
        match service(c, rules, &keys, port, addr, many, &force_tags) {
            Ok(Some((reg, warning))) => {
                out.services.push(reg);
                out.warnings.extend(warning);
            }
            Ok(None) => out.skipped.push(format!("port {}: no service name for it", port.number)),
            Err(why) => out.problems.push(format!("port {}: {why}", port.number)),
        }
    }
    out
}

/// Why a container without `SERVICE_NAME` is not registered.
pub const NO_SERVICE_NAME: &str = "no SERVICE_NAME (environment or label): registrator registers only containers that set one (or every container with ports when started with -all)";

/// Why a container that is not running asks for nothing.
fn not_running(c: &Container) -> String {
    match c.status.as_str() {
        "" | "running" => "the container is not running: only running containers are registered".into(),
        status => format!("the container is not running ({status}): only running containers are registered"),
    }
}

type Warning = Option<String>;

fn service(
    c: &Container,
    rules: &Rules,
    keys: &Keys,
    port: Port,
    (ip, svc_port): (IpAddr, u16),
    many: bool,
    force_tags: &[String],
) -> Result<Option<(Registration, Warning)>, String> {
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
    let warning = (name != raw_name.trim())
        .then(|| format!("port {}: service name {raw_name:?} registered as {name:?} (DNS-safe)", port.number));

    let udp = if port.udp { ":udp" } else { "" };
    let id = match keys.get(port, "ID") {
        Some(id) if keys.port(port, "ID").is_none() && many => format!("{id}-{}", port.number),
        Some(id) => id.to_owned(),
        None => format!("{}:{}:{}{udp}", rules.owner, c.name, port.number),
    };
    let id = clean_id(&id)?;

    let mut tags: Vec<String> = keys.get(port, "TAGS").map(split_tags).unwrap_or_default();
    tags.extend(force_tags.iter().cloned());
    if port.udp {
        tags.push("udp".into());
    }
    dedup_in_order(&mut tags);

    // Consul allows 64 Meta pairs of at most 128-byte keys and 512-byte values.
    let mut meta = BTreeMap::new();
    for (key, value) in keys.meta(port).into_iter().take(MAX_META - 2) {
        let Some(key) = meta_key(&key) else { continue };
        let mut value: String = value.chars().filter(|ch| !ch.is_control()).collect();
        truncate_bytes(&mut value, MAX_META_VALUE);
        meta.insert(key, value);
    }
    meta.insert(OWNER_META.into(), rules.owner.clone());
    meta.insert(CONTAINER_META.into(), c.id.clone());

    let mut checks: Vec<Check> = check(keys, port, ip, svc_port, &id)?.into_iter().collect();
    checks.extend(docker_health(c, &id));
    let reg = Registration { id, name, tags, address: ip.to_string(), port: svc_port, meta, checks };
    Ok(Some((reg, warning)))
}

/// Chooses the address and port to register, by the documented rule (the
/// README's "Which address is registered"):
/// 1. the IP in the `-useIpFromLabel` label (a CIDR suffix is dropped), with
///    the published host port (the exposed one with `-internal` or when not
///    published);
/// 2. the network named by `SERVICE_<port>_NETWORK`, `SERVICE_NETWORK` or
///    `--network`: the container's address there and exposed port;
/// 3. `-internal`: the container's own address (on a network registrator
///    shares, else its first) and exposed port;
/// 4. a user-defined network registrator shares (not the default bridge),
///    unless `-ip` is given and the port is published: the address there;
/// 5. a published port: the host's address (`-ip`, else the binding's own
///    address, else the one found at start) and the host port;
/// 6. `--net=host`: the host's address and the exposed port, which is the host's;
/// 7. registrator on the host network: the container's address (reachable
///    from this host);
/// 8. else nothing reaches it: refused, saying what was found.
fn address(c: &Container, rules: &Rules, keys: &Keys, port: Port) -> Result<(IpAddr, u16), String> {
    let published = c.published.get(&port).and_then(|b| b.first());
    if let Some(label) = &rules.ip_from_label {
        if let Some(raw) = c.labels.get(label) {
            let text = raw.trim().rsplit_once('/').map_or(raw.trim(), |(ip, _)| ip);
            let ip = text.parse().map_err(|_| format!("label {label}={raw:?} is not an IP address"))?;
            let p = published.filter(|_| !rules.internal).map_or(port.number, |b| b.port);
            return Ok((ip, p));
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
    if c.network_mode == "none" {
        return Err(no_address(c));
    }
    let host = rules.host_ip.or(rules.host_address);
    let shared = c
        .networks
        .iter()
        .filter(|(n, _)| *n != DEFAULT_BRIDGE && rules.own_networks.iter().any(|o| o == *n))
        .find_map(|(_, a)| a.ip());
    let any_network = c.networks.values().find_map(|a| a.ip());
    if rules.internal {
        if c.host_network {
            return host.map(|ip| (ip, port.number)).ok_or_else(no_host_address);
        }
        return shared.or(any_network).map(|ip| (ip, port.number)).ok_or_else(|| no_address(c));
    }
    if let Some(ip) = shared.filter(|_| rules.host_ip.is_none() || published.is_none()) {
        return Ok((ip, port.number));
    }
    if let Some(b) = published {
        let ip = rules.host_ip.or(b.ip.filter(|ip| !ip.is_unspecified())).or(rules.host_address);
        return ip.map(|ip| (ip, b.port)).ok_or_else(no_host_address);
    }
    if c.host_network {
        return host.map(|ip| (ip, port.number)).ok_or_else(no_host_address);
    }
    if rules.own_networks.is_empty() {
        return any_network.map(|ip| (ip, port.number)).ok_or_else(|| no_address(c));
    }
    Err(format!(
        "unreachable: not published, and the container's networks {:?} are not registrator's {:?}{}; publish the port (-p), attach the container to one of registrator's networks, or set SERVICE_NETWORK",
        c.networks.keys().collect::<Vec<_>>(),
        rules.own_networks,
        if c.networks.contains_key(DEFAULT_BRIDGE) {
            " (the default bridge's addresses are reachable from nowhere else)"
        } else {
            ""
        },
    ))
}

/// Why a container has no address to register, by its network mode.
fn no_address(c: &Container) -> String {
    match (c.network_mode.as_str(), &c.network_container) {
        ("none", _) => "network mode \"none\": the container has no network, so nothing can reach it".into(),
        (_, Some(other)) => format!(
            "it runs in the network namespace of container {} (--net=container:), which has no address",
            other.chars().take(12).collect::<String>()
        ),
        _ => "the container has no address on any network".into(),
    }
}

fn no_host_address() -> String {
    "the host's address is not known: set -ip".into()
}

/// The check `SERVICE_CHECK_*` asks for, as Go Registrator builds it: the
/// first of HTTP, HTTPS, CMD, SCRIPT, TTL, TCP and gRPC that is set, aimed
/// at the registered address; its ID is `service:<service-id>`, Consul's own
/// for a service's only check, so heartbeats and `consul` commands find it.
fn check(keys: &Keys, port: Port, ip: IpAddr, svc_port: u16, service_id: &str) -> Result<Option<Check>, String> {
    let get = |k: &str| keys.get(port, &format!("CHECK_{k}"));
    let target = SocketAddr::new(ip, svc_port);
    let mut check = Check { check_id: Some(format!("service:{service_id}")), ..Check::default() };
    let method = |key: &str| -> Result<Option<String>, String> {
        match get(key) {
            None => Ok(None),
            Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Ok(Some(m.to_owned())),
            Some(m) => Err(format!("CHECK_{key} {m:?} is not an HTTP method like GET or HEAD")),
        }
    };
    if let Some(path) = get("HTTP") {
        check.http = Some(format!("http://{target}{}", url_path(path)?));
        check.method = method("HTTP_METHOD")?;
    } else if let Some(path) = get("HTTPS") {
        check.http = Some(format!("https://{target}{}", url_path(path)?));
        check.method = method("HTTPS_METHOD")?;
    } else if let Some(cmd) = get("CMD").or(get("SCRIPT")) {
        // An argument vector, split as a shell would and never run by a
        // shell; $SERVICE_IP and $SERVICE_PORT are the registered address.
        let args = shell_words::split(cmd).map_err(|e| format!("CHECK_CMD {cmd:?}: {e}"))?;
        let (ip, port) = (ip.to_string(), svc_port.to_string());
        check.args = args.iter().map(|a| a.replace("$SERVICE_IP", &ip).replace("$SERVICE_PORT", &port)).collect();
        if check.args.is_empty() {
            return Err("CHECK_CMD is empty".into());
        }
    } else if let Some(ttl) = get("TTL") {
        check.ttl = Some(duration(ttl, "CHECK_TTL")?);
    } else if truthy(get("TCP")) {
        check.tcp = Some(target.to_string());
    } else if truthy(get("GRPC")) {
        check.grpc = Some(target.to_string());
        check.grpc_use_tls = truthy(get("GRPC_USE_TLS"));
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
    let mut tags = Vec::new();
    let mut tag = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if chars.peek() == Some(&',') => {
                chars.next();
                tag.push(',');
            }
            ',' => tags.push(std::mem::take(&mut tag)),
            ch if ch.is_control() => {}
            ch => tag.push(ch),
        }
    }
    tags.push(tag);
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

/// Cuts `s` to at most `max` bytes, at a character boundary.
fn truncate_bytes(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
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

/// A duration as Go's `time.ParseDuration` (which Consul uses) reads it:
/// one or more numbers, each with a unit (`10s`, `1m30s`, `1.5h`, `500ms`).
fn duration(value: &str, key: &str) -> Result<String, String> {
    let v = value.trim();
    let bad = || format!("SERVICE_{key}={value:?} is not a duration like 10s, 1m30s or 500ms");
    let mut rest = v;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(bad)?;
        let (num, tail) = rest.split_at(digits);
        if num.is_empty() || num.parse::<f64>().is_err() {
            return Err(bad());
        }
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .filter(|u| tail.starts_with(*u))
            .max_by_key(|u| u.len())
            .ok_or_else(bad)?;
        rest = &tail[unit.len()..];
    }
    Ok(v.to_owned())
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
/// What follows `SERVICE_` is case-insensitive, as in Go Registrator
/// (`SERVICE_80_check_http` is `SERVICE_80_CHECK_HTTP`).
struct Keys<'a> {
    /// `SERVICE_<KEY>` → value, KEY upper-cased.
    global: BTreeMap<String, &'a str>,
    /// port → KEY → value, from `SERVICE_<port>_<KEY>`.
    per_port: BTreeMap<u16, BTreeMap<String, &'a str>>,
}

impl<'a> Keys<'a> {
    fn of(c: &'a Container) -> Self {
        let mut global = BTreeMap::new();
        let mut per_port: BTreeMap<u16, BTreeMap<String, &'a str>> = BTreeMap::new();
        // Labels come last, so they win.
        for (key, value) in c.settings() {
            let Some(rest) = key.strip_prefix("SERVICE_") else { continue };
            let rest = rest.to_ascii_uppercase();
            match rest.split_once('_') {
                Some((num, k)) if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) => {
                    if let Ok(n) = num.parse::<u16>() {
                        per_port.entry(n).or_default().insert(k.to_owned(), value);
                    }
                }
                _ => {
                    global.insert(rest, value);
                }
            }
        }
        Self { global, per_port }
    }

    /// `SERVICE_<key>`, set and not blank.
    fn global(&self, key: &str) -> Option<&'a str> {
        let key = key.strip_prefix("SERVICE_").unwrap_or(key);
        self.global.get(key).copied().filter(|v| !v.trim().is_empty())
    }

    fn port(&self, port: Port, key: &str) -> Option<&'a str> {
        self.per_port.get(&port.number)?.get(key).copied().filter(|v| !v.trim().is_empty())
    }

    /// A per-port key, else the global one.
    fn get(&self, port: Port, key: &str) -> Option<&'a str> {
        self.port(port, key).or_else(|| self.global(key))
    }

    fn any_port_name(&self) -> bool {
        self.per_port.values().any(|keys| keys.contains_key("NAME"))
    }

    /// Keys that are neither known settings nor checks become Meta; per-port
    /// ones override global ones for their port.
    fn meta(&self, port: Port) -> BTreeMap<String, &'a str> {
        let is_meta = |k: &str| !KNOWN_KEYS.contains(&k) && !k.starts_with("CHECK_");
        let own = self.per_port.get(&port.number).into_iter().flatten();
        self.global.iter().chain(own).filter(|(k, _)| is_meta(k)).map(|(k, v)| (k.clone(), *v)).collect()
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
                NetworkAddress { ipv4: Some("172.20.0.5".parse().unwrap()), ipv6: None, gateway: None },
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
    fn what_is_not_asked_for_says_why() {
        let skipped = |c: &Container, r: &Rules| {
            let d = desired(c, r);
            assert!(d.services.is_empty() && d.problems.is_empty(), "{d:?}");
            d.skipped
        };
        let mut c = container(&[("SERVICE_NAME", "hello")], &["80/tcp"]);
        c.running = false;
        assert_eq!(skipped(&c, &rules()), ["the container is not running: only running containers are registered"]);
        c.status = "paused".into();
        assert_eq!(
            skipped(&c, &rules()),
            ["the container is not running (paused): only running containers are registered"]
        );
        assert_eq!(skipped(&container(&[], &["80/tcp"]), &rules()), [NO_SERVICE_NAME]);
        assert_eq!(skipped(&container(&[("SERVICE_TAGS", "x")], &[]), &rules()), [NO_SERVICE_NAME]);
        let ignored = container(&[("SERVICE_NAME", "hello"), ("SERVICE_IGNORE", "yes")], &["80/tcp"]);
        assert_eq!(skipped(&ignored, &rules()), ["SERVICE_IGNORE=\"yes\": the container asks not to be registered"]);
        let not_ignored = container(&[("SERVICE_NAME", "hello"), ("SERVICE_IGNORE", "false")], &["80/tcp"]);
        assert_eq!(desired(&not_ignored, &rules()).services.len(), 1, "only a true value ignores");
        // Per port: ignored, or not named while another port is.
        let c = container(
            &[("SERVICE_80_NAME", "web"), ("SERVICE_8080_IGNORE", "true")],
            &["80/tcp", "443/tcp", "8080/tcp"],
        );
        let d = desired(&c, &rules());
        assert_eq!(d.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["web"]);
        assert_eq!(
            d.skipped,
            [
                "port 443: neither SERVICE_443_NAME nor SERVICE_NAME names it: only named ports are registered",
                "port 8080: SERVICE_8080_IGNORE is set: this port asks not to be registered",
            ]
        );
        assert!(desired(&container(&[("SERVICE_NAME", "h")], &["80/tcp"]), &rules()).skipped.is_empty());
    }

    #[test]
    fn a_container_without_a_network_says_which_mode_it_is_in() {
        let problem = |c: &Container, r: &Rules| desired(c, r).problems.join(" ");
        let mut none = container(&[("SERVICE_NAME", "h")], &["80/tcp"]);
        none.network_mode = "none".into();
        none.networks = [("none".to_owned(), NetworkAddress::default())].into();
        for r in [rules(), Rules { own_networks: vec![], ..rules() }, Rules { internal: true, ..rules() }] {
            let why = problem(&none, &r);
            assert_eq!(why, "port 80: network mode \"none\": the container has no network, so nothing can reach it");
        }
        let mut pod = container(&[("SERVICE_NAME", "h")], &["80/tcp"]);
        pod.network_mode = "container:0123456789abcdef".into();
        pod.network_container = Some("0123456789abcdef".into());
        pod.networks.clear();
        let why = problem(&pod, &Rules { own_networks: vec![], ..rules() });
        assert!(why.contains("network namespace of container 0123456789ab (--net=container:)"), "{why}");
        let mut bare = container(&[("SERVICE_NAME", "h")], &["80/tcp"]);
        bare.networks.clear();
        let why = problem(&bare, &Rules { internal: true, ..rules() });
        assert_eq!(why, "port 80: the container has no address on any network");
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
        c.networks.insert(
            "proj_default".into(),
            NetworkAddress { ipv4: None, ipv6: Some("fd00::5".parse().unwrap()), gateway: None },
        );
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

    fn net(ip: &str) -> NetworkAddress {
        NetworkAddress { ipv4: Some(ip.parse().unwrap()), ipv6: None, gateway: None }
    }

    /// A container on `networks`, asking for `h` on 80, published at 32768 when `published`.
    fn placed(networks: &[(&str, &str)], published: bool) -> Container {
        let mut c = container(&[("SERVICE_NAME", "h")], &["80/tcp"]);
        c.networks = networks.iter().map(|(n, ip)| ((*n).to_owned(), net(ip))).collect();
        if published {
            c.published.insert(Port { number: 80, udp: false }, vec![HostBinding { ip: None, port: 32768 }]);
        }
        c
    }

    fn registered(c: &Container, r: &Rules) -> Result<(String, u16), Vec<String>> {
        let d = desired(c, r);
        match &d.services[..] {
            [s] => Ok((s.address.clone(), s.port)),
            _ => Err(d.problems),
        }
    }

    /// The README's "Which address is registered", row by row.
    #[test]
    fn which_address_is_registered() {
        let gw: IpAddr = "172.18.0.1".parse().unwrap();
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let compose = Rules { own_networks: vec!["proj_default".into()], host_address: Some(gw), ..rules() };
        let with_ip = Rules { host_ip: Some(ip), host_address: None, ..compose.clone() };
        let on_bridge = Rules { own_networks: vec!["bridge".into()], host_ip: Some(ip), ..rules() };
        let on_host = Rules { own_networks: vec![], host_address: Some("10.0.0.7".parse().unwrap()), ..rules() };
        let internal = Rules { internal: true, ..compose.clone() };
        let a = |s: &str, p: u16| Ok((s.to_owned(), p));

        // A network registrator shares: the container's address, exposed port.
        assert_eq!(registered(&placed(&[("proj_default", "172.18.0.5")], false), &compose), a("172.18.0.5", 80));
        assert_eq!(registered(&placed(&[("proj_default", "172.18.0.5")], true), &compose), a("172.18.0.5", 80));
        // ... unless -ip asks for the host's address and the port is published.
        assert_eq!(registered(&placed(&[("proj_default", "172.18.0.5")], true), &with_ip), a("192.0.2.10", 32768));
        // Default bridge or another network, published: host address, host port.
        assert_eq!(registered(&placed(&[("bridge", "172.17.0.2")], true), &compose), a("172.18.0.1", 32768));
        assert_eq!(registered(&placed(&[("other", "172.30.0.2")], true), &compose), a("172.18.0.1", 32768));
        assert_eq!(registered(&placed(&[("bridge", "172.17.0.2")], true), &with_ip), a("192.0.2.10", 32768));
        // Registrator itself on the default bridge with -ip (one per host): -ip wins.
        assert_eq!(registered(&placed(&[("bridge", "172.17.0.2")], true), &on_bridge), a("192.0.2.10", 32768));
        // Registrator on the host network: the agent's address for published ports.
        assert_eq!(registered(&placed(&[("bridge", "172.17.0.2")], true), &on_host), a("10.0.0.7", 32768));
        // ... and the container's own address otherwise (reachable from this host).
        assert_eq!(registered(&placed(&[("bridge", "172.17.0.2")], false), &on_host), a("172.17.0.2", 80));
        // --net=host: the host's address and the exposed port, which is the host's.
        let mut host = placed(&[], false);
        host.host_network = true;
        assert_eq!(registered(&host, &compose), a("172.18.0.1", 80));
        assert_eq!(registered(&host, &with_ip), a("192.0.2.10", 80));
        assert_eq!(registered(&host, &internal), a("172.18.0.1", 80));
        // A binding to one address: that address.
        let mut one = placed(&[("bridge", "172.17.0.2")], false);
        one.published.insert(
            Port { number: 80, udp: false },
            vec![HostBinding { ip: Some("127.0.0.1".parse().unwrap()), port: 8080 }],
        );
        assert_eq!(registered(&one, &compose), a("127.0.0.1", 8080));
        // -internal: the container's own address and exposed port, published or not.
        assert_eq!(registered(&placed(&[("bridge", "172.17.0.2")], true), &internal), a("172.17.0.2", 80));
        // Not published and on no network registrator shares: refused, saying what was found.
        let why = registered(&placed(&[("bridge", "172.17.0.2")], false), &compose).unwrap_err().join(" ");
        assert!(
            why.contains("not published") && why.contains("[\"bridge\"]") && why.contains("[\"proj_default\"]"),
            "{why}"
        );
        assert!(why.contains("default bridge"), "{why}");
        let why = registered(&placed(&[("bridge", "172.17.0.2")], false), &on_bridge).unwrap_err().join(" ");
        assert!(why.contains("not published"), "the default bridge is never a shared network: {why}");
        // No host address known: a published port cannot be registered, and says so.
        let unknown = Rules { host_address: None, ..compose };
        let why = registered(&placed(&[("bridge", "172.17.0.2")], true), &unknown).unwrap_err().join(" ");
        assert!(why.contains("set -ip"), "{why}");
    }

    #[test]
    fn ip_from_label_takes_the_label_drops_a_cidr_suffix_and_keeps_the_published_port() {
        let mut c = placed(&[("bridge", "172.17.0.2")], true);
        c.labels.insert("ip".into(), "10.0.0.9/24".into());
        let r = Rules { ip_from_label: Some("ip".into()), ..rules() };
        assert_eq!(registered(&c, &r), Ok(("10.0.0.9".to_owned(), 32768)));
        assert_eq!(registered(&c, &Rules { internal: true, ..r.clone() }), Ok(("10.0.0.9".to_owned(), 80)));
        c.labels.insert("ip".into(), "not-an-ip".into());
        assert!(registered(&c, &r).unwrap_err()[0].contains("is not an IP address"));
    }

    #[test]
    fn only_ports_that_are_registered_count_for_port_suffixed_names() {
        // Exposes 80 and 443, publishes only 443, on a network registrator does not share.
        let mut c = container(&[("SERVICE_NAME", "nginx")], &["80/tcp", "443/tcp"]);
        c.networks = [("bridge".to_owned(), net("172.17.0.2"))].into();
        c.published.insert(Port { number: 443, udp: false }, vec![HostBinding { ip: None, port: 4443 }]);
        let r = Rules {
            own_networks: vec!["proj_default".into()],
            host_ip: Some("192.0.2.10".parse().unwrap()),
            ..rules()
        };
        let d = desired(&c, &r);
        let got: Vec<_> = d.services.iter().map(|s| (s.name.as_str(), s.port)).collect();
        assert_eq!(got, [("nginx", 4443)]);
        assert!(d.problems[0].starts_with("port 80:"), "{:?}", d.problems);
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
    fn checks_follow_go_registrators_options() {
        let check = |settings: &[(&str, &str)]| {
            let mut all = vec![("SERVICE_NAME", "h")];
            all.extend_from_slice(settings);
            let d = desired(&container(&all, &["80/tcp"]), &rules());
            assert_eq!(d.problems, Vec::<String>::new());
            d.services[0].checks[0].clone()
        };
        let c = check(&[
            ("SERVICE_80_CHECK_HTTP", "/health"),
            ("SERVICE_80_CHECK_HTTP_METHOD", "HEAD"),
            ("SERVICE_80_CHECK_INTERVAL", "15s"),
            ("SERVICE_80_CHECK_TIMEOUT", "1s"),
        ]);
        assert_eq!((c.http.as_deref(), c.method.as_deref()), (Some("http://172.20.0.5:80/health"), Some("HEAD")));
        assert_eq!((c.interval.as_deref(), c.timeout.as_deref()), (Some("15s"), Some("1s")));
        assert_eq!(c.check_id.as_deref(), Some("service:dockerhost:proj-hello-1:80"), "Consul's own ID for it");
        let c = check(&[("SERVICE_CHECK_HTTPS", "/x"), ("SERVICE_CHECK_HTTPS_METHOD", "POST")]);
        assert_eq!((c.http.as_deref(), c.method.as_deref()), (Some("https://172.20.0.5:80/x"), Some("POST")));
        let c = check(&[
            ("SERVICE_CHECK_GRPC", "true"),
            ("SERVICE_CHECK_GRPC_USE_TLS", "true"),
            ("SERVICE_CHECK_TLS_SKIP_VERIFY", "true"),
        ]);
        assert_eq!((c.grpc.as_deref(), c.grpc_use_tls, c.tls_skip_verify), (Some("172.20.0.5:80"), true, true));
        let c = check(&[("SERVICE_CHECK_SCRIPT", "nc $SERVICE_IP $SERVICE_PORT")]);
        assert_eq!(c.args, ["nc", "172.20.0.5", "80"]);
        let c = check(&[("SERVICE_CHECK_TTL", "30s")]);
        assert_eq!((c.ttl.as_deref(), c.interval.as_deref()), (Some("30s"), None));
        let c = check(&[
            ("SERVICE_CHECK_TCP", "true"),
            ("SERVICE_CHECK_INTERVAL", "1m30s"),
            ("SERVICE_CHECK_DEREGISTER_AFTER", "10m"),
            ("SERVICE_CHECK_INITIAL_STATUS", "passing"),
        ]);
        assert_eq!((c.tcp.as_deref(), c.interval.as_deref()), (Some("172.20.0.5:80"), Some("1m30s")));
        assert_eq!(
            (c.deregister_critical_service_after.as_deref(), c.status.as_deref()),
            (Some("10m"), Some("passing"))
        );
        // Go Registrator's order when several are set: HTTP, HTTPS, CMD, SCRIPT, TTL, TCP, gRPC.
        let c = check(&[("SERVICE_CHECK_TCP", "true"), ("SERVICE_CHECK_TTL", "5s")]);
        assert!(c.ttl.is_some() && c.tcp.is_none());
        // Keys are case-insensitive after SERVICE_, as there.
        let c = check(&[("SERVICE_80_check_http", "/lower")]);
        assert_eq!(c.http.as_deref(), Some("http://172.20.0.5:80/lower"));
    }

    #[test]
    fn durations_are_read_as_go_reads_them() {
        for ok in ["10s", "1m30s", "1.5h", "500ms", "2h45m10s", "100us", "0s"] {
            assert!(duration(ok, "X").is_ok(), "{ok}");
        }
        for bad in ["", "soon", "10", "s", "1m30", "-", "10 s", "1x"] {
            assert!(duration(bad, "X").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_name_made_dns_safe_is_a_warning_not_a_refusal() {
        let d = desired(&container(&[("SERVICE_NAME", "hello/v1")], &["80/tcp"]), &rules());
        assert_eq!(d.services[0].name, "hello-v1");
        assert!(d.warnings[0].contains("\"hello/v1\" registered as \"hello-v1\""), "{:?}", d.warnings);
    }

    #[test]
    fn service_network_selects_the_address_and_a_missing_network_is_a_problem() {
        let mut c = container(&[("SERVICE_NAME", "h"), ("SERVICE_NETWORK", "backend")], &["80/tcp"]);
        assert!(desired(&c, &rules()).problems[0].contains("not attached to network \"backend\""));
        c.networks.insert(
            "backend".into(),
            NetworkAddress { ipv4: Some("10.9.0.2".parse().unwrap()), ipv6: None, gateway: None },
        );
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
