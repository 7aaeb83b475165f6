//! The routes page: every service Consul knows, the route each got, its
//! instances with Consul's health and HAProxy's live state, and for
//! everything not routed the reason in plain words.
//!
//! [`report`] is pure: it is computed from the same catalog, routing
//! results and slot layout the configuration is made of, when it is
//! planned, so the page never tells another story than HAProxy's file. The
//! [`Board`] holds the latest one with what the last apply did; [`router`]
//! serves it as HTML (a browser), text (`curl`, `haproxy-sync explain`) and
//! JSON, each time with HAProxy's live server states (`show stat`) added.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::model::{self, Catalog, Check, Skipped};

/// What the routes page shows; served as JSON as it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The tag that makes a service routed.
    pub tag: String,
    /// What haproxy-sync did with the last configuration.
    pub haproxy: Apply,
    /// Every service Consul lists, by name.
    pub services: Vec<ServiceReport>,
}

/// The last apply, and whether HAProxy's live states could be read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Apply {
    /// When this report was computed (RFC 3339).
    pub planned_at: String,
    /// What the last apply did (`runtime`, `reload`, …), and when.
    pub last_apply: Option<String>,
    /// Why the last apply failed; the configuration before it stays in force.
    pub error: Option<String>,
    /// Why HAProxy's live server states are not shown, when they are not.
    pub live_error: Option<String>,
}

/// Where a service stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In HAProxy's configuration with at least one instance to take requests.
    Routed,
    /// In HAProxy's configuration, but no instance can take requests: 503.
    NoInstance,
    /// Tagged, but left out of the configuration (see `reasons`).
    NotRouted,
    /// Not tagged with the routing tag.
    NotTagged,
}

impl Status {
    fn words(self) -> &'static str {
        match self {
            Status::Routed => "routed",
            Status::NoInstance => "routed, no instance",
            Status::NotRouted => "not routed",
            Status::NotTagged => "not tagged",
        }
    }
}

/// One service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub name: String,
    pub status: Status,
    /// Why it is not routed, or why no instance takes requests.
    pub reasons: Vec<String>,
    /// Settings refused; their defaults apply and the service stays routed.
    pub warnings: Vec<String>,
    /// The route it got, when it is routed.
    pub route: Option<Route>,
    /// Its tags (for a service not tagged; instances carry their own).
    pub tags: Vec<String>,
    pub instances: Vec<InstanceReport>,
}

/// The route a service got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// `http` or `tcp`.
    pub mode: String,
    /// The path prefix (HTTP).
    pub path: Option<String>,
    /// The `Host` the route also requires (HTTP).
    pub host: Option<String>,
    /// The port HAProxy listens on for it (TCP).
    pub port: Option<u16>,
    /// Whether the path prefix is taken off requests.
    pub strip: bool,
    pub balance: String,
    pub check_path: String,
    /// HAProxy's backend.
    pub backend: String,
    /// Cookie pinning a client to an instance.
    pub sticky: Option<String>,
    pub rate_limit: Option<u32>,
    pub maxconn: Option<u32>,
    pub https_redirect: bool,
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: String,
    pub node: String,
    pub address: String,
    pub port: u16,
    /// Consul's health: the worst of its checks and its node's.
    pub health: consul::HealthStatus,
    /// Its checks and its node's that are not passing.
    pub failing: Vec<Check>,
    /// Whether it has a server in HAProxy's backend.
    pub routed: bool,
    /// Why it has none.
    pub reason: Option<String>,
    /// Its server slot in the backend.
    pub server: Option<String>,
    pub weight: Option<u16>,
    /// HAProxy's live state of its server (`UP`, `DOWN`, `DRAIN`, `MAINT`,
    /// …), when HAProxy answered.
    pub haproxy: Option<String>,
    /// The container that registered it (registrator's Meta).
    pub container: Option<String>,
    /// What registrator says of that container, when `--registrator-url`
    /// is set (its `{node}` replaced by the instance's Consul node).
    pub registrator: Option<String>,
}

/// Computes the report of `catalog`: `routed` are the services in the
/// configuration (laid out on slots), `skipped` those left out and why.
pub fn report(
    catalog: &Catalog,
    routed: &[Arc<model::Service>],
    skipped: &[Skipped],
    tag: &str,
    registrator_url: Option<&str>,
) -> Report {
    let by_name: HashMap<&str, &model::Service> = routed.iter().map(|s| (s.name.as_str(), &**s)).collect();
    let mut services = Vec::with_capacity(catalog.services.len() + catalog.others.len());
    for (raw, instances) in &catalog.services {
        let id = model::identifier(raw);
        let reasons: Vec<String> = skipped
            .iter()
            .filter(|s| s.service == *raw || (s.service == id && !by_name.contains_key(id.as_str())))
            .map(|s| s.reason.clone())
            .collect();
        let svc = if reasons.is_empty() { by_name.get(id.as_str()).copied() } else { None };
        let mut listed: Vec<&model::Instance> = instances.iter().collect();
        listed.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| a.node.cmp(&b.node)));
        let instances: Vec<InstanceReport> =
            listed.into_iter().map(|i| instance(i, svc, reasons.is_empty(), registrator_url)).collect();
        let mut reasons = reasons;
        let status = match svc {
            None => {
                if reasons.is_empty() {
                    reasons.push("it is not in HAProxy's configuration yet".to_owned());
                }
                Status::NotRouted
            }
            Some(_) if instances.iter().any(|i| i.routed) => Status::Routed,
            Some(s) => {
                let at = match s.tcp_port {
                    Some(port) => format!("port {port}"),
                    None => s.path.clone(),
                };
                reasons.push(if instances.is_empty() {
                    format!("it has no instance: {at} answers 503")
                } else {
                    format!("no instance can take requests (each one's reason is below): {at} answers 503")
                });
                Status::NoInstance
            }
        };
        services.push(ServiceReport {
            name: raw.clone(),
            status,
            reasons,
            warnings: svc.map(|s| s.warnings.clone()).unwrap_or_default(),
            route: svc.map(route),
            tags: Vec::new(),
            instances,
        });
    }
    for (name, tags) in catalog.others.iter() {
        let listed =
            if tags.is_empty() { "it has no tags".to_owned() } else { format!("its tags: {}", tags.join(", ")) };
        services.push(ServiceReport {
            name: name.clone(),
            status: Status::NotTagged,
            reasons: vec![format!("it is not tagged {tag:?} ({listed})")],
            warnings: Vec::new(),
            route: None,
            tags: tags.clone(),
            instances: Vec::new(),
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Report { tag: tag.to_owned(), haproxy: Apply::default(), services }
}

fn route(s: &model::Service) -> Route {
    let http = s.tcp_port.is_none();
    Route {
        mode: if http { "http" } else { "tcp" }.to_owned(),
        path: http.then(|| s.path.clone()),
        host: s.host.clone(),
        port: s.tcp_port,
        strip: http && s.strip,
        balance: s.balance.clone(),
        check_path: s.check_path.clone(),
        backend: s.backend.clone(),
        sticky: s.sticky.clone(),
        rate_limit: s.rate_limit,
        maxconn: s.maxconn,
        https_redirect: s.https_redirect,
    }
}

/// One instance: its server in `svc`'s backend (found by address), or why
/// it has none. `service_ok`: the service itself is not left out.
fn instance(
    i: &model::Instance,
    svc: Option<&model::Service>,
    service_ok: bool,
    registrator_url: Option<&str>,
) -> InstanceReport {
    let address = i.address.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, i.port).to_string());
    let server = svc.and_then(|s| s.servers.iter().find(|srv| srv.enabled && Some(&srv.address) == address.as_ref()));
    let reason = match (model::unrouted_instance(i), server, service_ok) {
        (Some(why), _, _) => Some(why),
        (None, _, false) => Some("its service is not routed".to_owned()),
        (None, None, true) => Some("it is not in HAProxy's configuration yet".to_owned()),
        (None, Some(_), true) => None,
    };
    let container = i.meta.get("registrator_container").cloned();
    InstanceReport {
        id: i.id.clone(),
        node: i.node.clone(),
        address: i.address.clone(),
        port: i.port,
        health: i.status,
        failing: i.failing.clone(),
        routed: reason.is_none(),
        reason,
        server: server.map(|s| s.name.clone()),
        weight: server.map(|s| s.weight),
        haproxy: None,
        registrator: registrator_url.zip(container.as_deref()).map(|(url, c)| {
            let base = url.replace("{node}", &url_segment(&i.node));
            format!("{}/containers/{}", base.trim_end_matches('/'), url_segment(c))
        }),
        container,
    }
}

/// `raw` as one URL path segment: anything but `[A-Za-z0-9._-]` percent-encoded.
fn url_segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the latest plan was made of, and what the applies did, shared
/// between the apply loop and the admin endpoint. A plan only stores its
/// inputs (shared, so cheap to keep); the report is computed when asked.
#[derive(Clone, Default)]
pub struct Board {
    inner: Arc<Mutex<Latest>>,
    /// HAProxy's runtime API, for live server states (none with `--command`).
    runtime_socket: Option<PathBuf>,
    tag: String,
    registrator_url: Option<String>,
}

#[derive(Default)]
struct Latest {
    catalog: Catalog,
    routed: Vec<Arc<model::Service>>,
    skipped: Vec<Skipped>,
    apply: Apply,
}

impl Board {
    /// A board for services carrying `tag`, linking instances to
    /// registrator at `registrator_url`.
    pub fn new(runtime_socket: Option<PathBuf>, tag: &str, registrator_url: Option<String>) -> Board {
        Board { inner: Arc::default(), runtime_socket, tag: tag.to_owned(), registrator_url }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A newly planned configuration: `catalog` gave the services `routed`
    /// (laid out on slots) and left out `skipped`.
    pub fn planned(&self, catalog: &Catalog, routed: &[Arc<model::Service>], skipped: Vec<Skipped>) {
        let mut latest = self.lock();
        latest.catalog = catalog.clone();
        latest.routed = routed.to_vec();
        latest.skipped = skipped;
        latest.apply.planned_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    }

    /// What an apply did (`Ok`: how, `None` when there was nothing to do;
    /// `Err`: why it failed).
    pub fn applied(&self, outcome: Result<Option<&str>, String>) {
        let mut latest = self.lock();
        let current = &mut latest.apply;
        match outcome {
            Ok(None) => current.error = None,
            Ok(Some(how)) => {
                let at = humantime::format_rfc3339_seconds(SystemTime::now());
                current.last_apply = Some(format!("{how} at {at}"));
                current.error = None;
            }
            Err(why) => current.error = Some(why),
        }
    }

    /// The report with HAProxy's live server states.
    pub async fn current(&self) -> Report {
        let mut report = {
            let latest = self.lock();
            let url = self.registrator_url.as_deref();
            let mut report = report(&latest.catalog, &latest.routed, &latest.skipped, &self.tag, url);
            report.haproxy = latest.apply.clone();
            report
        };
        let Some(socket) = &self.runtime_socket else {
            report.haproxy.live_error = Some("HAProxy is reloaded by --command: no runtime API to ask".to_owned());
            return report;
        };
        match crate::haproxy::ask(socket, "show stat -1 4 -1", Duration::from_secs(1)).await {
            Ok(csv) => {
                let states = server_states(&csv);
                for s in &mut report.services {
                    let Some(backend) = s.route.as_ref().map(|r| r.backend.clone()) else { continue };
                    for i in &mut s.instances {
                        i.haproxy =
                            i.server.as_ref().and_then(|srv| states.get(&(backend.clone(), srv.clone()))).cloned();
                    }
                }
            }
            Err(e) => report.haproxy.live_error = Some(format!("HAProxy's runtime API did not answer: {e}")),
        }
        report
    }
}

/// Each server's status from `show stat` (CSV, header first), by backend
/// and server name.
pub fn server_states(csv: &str) -> HashMap<(String, String), String> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else { return HashMap::new() };
    let columns: Vec<&str> = header.trim_start_matches('#').trim().split(',').collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(status)) = (col("pxname"), col("svname"), col("status")) else {
        return HashMap::new();
    };
    lines
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let get = |i: usize| f.get(i).map(|s| (*s).to_owned());
            Some(((get(px)?, get(sv)?), get(status)?))
        })
        .filter(|((_, sv), _)| sv != "BACKEND" && sv != "FRONTEND")
        .collect()
}

/// The report as text: one service (`only`) or all of them, as `curl` and
/// `haproxy-sync explain` print it.
pub fn text(report: &Report, only: Option<&str>) -> String {
    let mut out = String::new();
    for s in report.services.iter().filter(|s| only.is_none_or(|n| n == s.name)) {
        let _ = writeln!(out, "{}: {}", s.name, s.status.words());
        if let Some(r) = &s.route {
            let _ = writeln!(out, "  route: {}, backend {}", route_words(r), r.backend);
        }
        for why in &s.reasons {
            let _ = writeln!(out, "  why: {why}");
        }
        for w in &s.warnings {
            let _ = writeln!(out, "  setting refused: {w}");
        }
        for i in &s.instances {
            let mut line =
                format!("  instance {} on {} at {}:{}: {}", i.id, i.node, i.address, i.port, i.health.as_str());
            match (&i.server, &i.reason) {
                (Some(server), None) => {
                    let _ = write!(line, ", server {server}");
                    if let Some(w) = i.weight {
                        let _ = write!(line, " weight {w}");
                    }
                    if let Some(state) = &i.haproxy {
                        let _ = write!(line, ", HAProxy: {state}");
                    }
                }
                (_, Some(why)) => {
                    let _ = write!(line, ", not routed: {why}");
                }
                (None, None) => {}
            }
            let _ = writeln!(out, "{line}");
            if let Some(link) = &i.registrator {
                let _ = writeln!(out, "    container: {link}");
            }
        }
    }
    if out.is_empty() {
        match only {
            Some(name) => {
                let _ = writeln!(out, "Consul lists no service {name:?}");
            }
            None => out.push_str("Consul lists no services\n"),
        }
    }
    let h = &report.haproxy;
    if let Some(e) = &h.error {
        let _ = writeln!(out, "last apply failed (the configuration before it stays): {e}");
    }
    if let Some(e) = &h.live_error {
        let _ = writeln!(out, "live states not shown: {e}");
    }
    out
}

/// The page's template, compiled once (in and tested: an error is a bug,
/// answered as a 500).
static PAGE: std::sync::LazyLock<Result<handlebars::Handlebars<'static>, String>> = std::sync::LazyLock::new(|| {
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_template_string("page", include_str!("routes.html.hbs")).map_err(|e| e.to_string())?;
    Ok(hb)
});

/// The report as an HTML page (`fragment`: only its `<main>`, what the
/// page's script fetches to update itself). Every value is HTML-escaped.
pub fn html(report: &Report, fragment: bool) -> Result<String, String> {
    let hb = PAGE.as_ref().map_err(Clone::clone)?;
    let counts = |st: Status| report.services.iter().filter(|s| s.status == st).count();
    let data = serde_json::json!({
        "fragment": fragment,
        "report": report,
        "total": report.services.len(),
        "routed": counts(Status::Routed),
        "no_instance": counts(Status::NoInstance),
        "not_routed": counts(Status::NotRouted),
        "not_tagged": counts(Status::NotTagged),
        "services": report.services.iter().map(|s| serde_json::json!({
            "s": s,
            "status_words": s.status.words(),
            "route_words": s.route.as_ref().map(route_words),
            "instances": s.instances.iter().map(|i| serde_json::json!({
                "i": i,
                // A container ID as `docker ps` shows it.
                "container": i.container.as_deref().map(|c| c.chars().take(12).collect::<String>()),
                "health": i.health.as_str(),
                "failing": i.failing.iter().map(|c| format!("{} {}{}", c.id, c.status.as_str(),
                    if c.output.is_empty() { String::new() } else { format!(": {}", c.output) })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    hb.render("page", &data).map_err(|e| e.to_string())
}

fn route_words(r: &Route) -> String {
    let mut words = match (&r.path, r.port) {
        (_, Some(port)) => format!("TCP port {port}"),
        (Some(path), None) => path.clone(),
        (None, None) => String::new(),
    };
    if let Some(host) = &r.host {
        let _ = write!(words, " on host {host}");
    }
    if r.mode == "http" {
        let _ = write!(words, ", prefix {}", if r.strip { "stripped" } else { "kept" });
    }
    let _ = write!(words, ", {}", r.balance);
    if let Some(c) = &r.sticky {
        let _ = write!(words, ", sticky ({c})");
    }
    if let Some(n) = r.rate_limit {
        let _ = write!(words, ", {n} req/s per client");
    }
    if let Some(n) = r.maxconn {
        let _ = write!(words, ", {n} connections per instance");
    }
    if r.https_redirect {
        words.push_str(", HTTP → HTTPS");
    }
    words
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    service: Option<String>,
    #[serde(default)]
    fragment: bool,
}

/// `GET /routes` (HTML for a browser, text otherwise; `?service=NAME` for
/// one) and `GET /routes.json`.
pub fn router(board: Board) -> Router {
    Router::new()
        .route(
            "/routes",
            get(|State(board): State<Board>, Query(q): Query<PageQuery>, headers: HeaderMap| async move {
                let mut report = board.current().await;
                if let Some(name) = &q.service {
                    report.services.retain(|s| &s.name == name);
                }
                let browser = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|accept| accept.contains("text/html"));
                if browser || q.fragment {
                    page(html(&report, q.fragment), "text/html; charset=utf-8")
                } else {
                    page(Ok(text(&report, q.service.as_deref())), "text/plain; charset=utf-8")
                }
            }),
        )
        .route(
            "/routes.json",
            get(|State(board): State<Board>, Query(q): Query<PageQuery>| async move {
                let mut report = board.current().await;
                if let Some(name) = &q.service {
                    report.services.retain(|s| &s.name == name);
                }
                axum::Json(report)
            }),
        )
        .with_state(board)
}

fn page(body: Result<String, String>, content_type: &'static str) -> Response {
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("the routes page failed: {e}\n")).into_response(),
    }
}

/// `haproxy-sync explain NAME`: asks the haproxy-sync running at `admin`
/// (its `--metrics-addr`; an unspecified address means loopback) and prints
/// what it says of service `name`. `Ok(false)` when Consul lists no such
/// service.
pub async fn explain(admin: SocketAddr, name: &str) -> anyhow::Result<(String, bool)> {
    let url = format!("http://{}/routes.json", ops::admin::on_this_host(admin));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let report: Report = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| anyhow::anyhow!("haproxy-sync does not answer at {url} (is it running? --metrics-addr): {e}"))?
        .json()
        .await?;
    let known = report.services.iter().any(|s| s.name == name);
    let mut out = text(&report, Some(name));
    if !known {
        let names: Vec<&str> = report.services.iter().map(|s| s.name.as_str()).collect();
        let _ = writeln!(
            out,
            "services Consul lists: {}",
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        );
    }
    Ok((out, known))
}

#[cfg(test)]
mod tests {
    use consul::HealthStatus;

    use super::*;
    use crate::model::{Cache, Instance};
    use crate::slots::Slots;

    fn inst(id: &str, addr: &str, status: HealthStatus, meta: &[(&str, &str)]) -> Instance {
        Instance {
            id: id.into(),
            node: "node-1".into(),
            address: addr.into(),
            port: 8080,
            status,
            tags: vec!["rest".into()],
            meta: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Instance::default()
        }
    }

    fn failing(mut i: Instance, id: &str, of_node: bool, output: &str) -> Instance {
        i.failing.push(Check { id: id.into(), status: HealthStatus::Critical, of_node, output: output.into() });
        i
    }

    /// The report of `catalog` as the apply loop computes it.
    fn report_of(catalog: &Catalog) -> Report {
        let (services, skipped, _) = model::services_cached(catalog, &mut Cache::default());
        let (_, laid_out) = Slots::default().layout(&services, 4);
        report(catalog, &laid_out, &skipped, "rest", Some("http://localhost:9091/"))
    }

    fn catalog() -> Catalog {
        let list = |v: Vec<Instance>| Arc::new(v);
        Catalog {
            services: [
                (
                    "web",
                    list(vec![
                        inst("web-1", "10.0.0.1", HealthStatus::Passing, &[("registrator_container", "abc 123")]),
                        failing(
                            inst("web-2", "10.0.0.2", HealthStatus::Critical, &[]),
                            "service:web-2",
                            false,
                            "HTTP GET http://10.0.0.2:8080/: 500",
                        ),
                        failing(inst("web-3", "10.0.0.3", HealthStatus::Critical, &[]), "serfHealth", true, ""),
                        inst("web-4", "web.local", HealthStatus::Passing, &[]),
                    ]),
                ),
                ("bad", list(vec![inst("bad-1", "10.0.0.5", HealthStatus::Passing, &[("lb_balance", "fastest")])])),
                ("zz-twin", list(vec![inst("tw-1", "10.0.0.6", HealthStatus::Passing, &[("lb_path", "/web")])])),
                (
                    "down",
                    list(vec![failing(
                        inst("down-1", "10.0.0.7", HealthStatus::Critical, &[]),
                        "_node_maintenance",
                        true,
                        "",
                    )]),
                ),
                ("loose", list(vec![inst("l-1", "10.0.0.8", HealthStatus::Passing, &[("lb_sticky", "maybe")])])),
            ]
            .into_iter()
            .map(|(n, i)| (n.to_owned(), i))
            .collect(),
            others: Arc::new([("consul".to_owned(), vec![]), ("db".to_owned(), vec!["primary".to_owned()])].into()),
        }
    }

    #[test]
    fn every_service_gets_its_route_or_the_reason_it_has_none() {
        let r = report_of(&catalog());
        let s = |name: &str| r.services.iter().find(|s| s.name == name).unwrap();
        let names: Vec<&str> = r.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["bad", "consul", "db", "down", "loose", "web", "zz-twin"], "every service, by name");

        let web = s("web");
        assert_eq!(web.status, Status::Routed);
        assert_eq!(web.route.as_ref().unwrap().path.as_deref(), Some("/web"));
        let why: Vec<Option<&str>> = web.instances.iter().map(|i| i.reason.as_deref()).collect();
        assert_eq!(why[0], None);
        assert!(web.instances[0].routed && web.instances[0].server.is_some());
        assert_eq!(
            web.instances[0].registrator.as_deref(),
            Some("http://localhost:9091/containers/abc%20123"),
            "linked to registrator, the container's name made a path segment"
        );
        let c = catalog();
        let (services, skipped, _) = model::services_cached(&c, &mut Cache::default());
        let per_node = report(&c, &services, &skipped, "rest", Some("http://{node}:9091"));
        let web = per_node.services.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.instances[0].registrator.as_deref(), Some("http://node-1:9091/containers/abc%20123"));
        assert_eq!(why[1], Some("its check service:web-2 is critical: HTTP GET http://10.0.0.2:8080/: 500"));
        assert_eq!(why[2], Some("its node node-1 is unhealthy: check serfHealth is critical"));
        assert_eq!(why[3], Some("its address \"web.local\" is not an IP address"));

        assert_eq!(s("bad").status, Status::NotRouted);
        assert!(s("bad").reasons[0].contains("lb_balance \"fastest\" is not one of"), "{:?}", s("bad").reasons);
        assert_eq!(s("bad").instances[0].reason.as_deref(), Some("its service is not routed"));
        assert_eq!(s("zz-twin").reasons, ["its path /web is taken by service \"web\""]);
        assert_eq!(s("db").status, Status::NotTagged);
        assert_eq!(s("db").reasons, ["it is not tagged \"rest\" (its tags: primary)"]);
        assert_eq!(s("consul").reasons, ["it is not tagged \"rest\" (it has no tags)"]);
        let down = s("down");
        assert_eq!(down.status, Status::NoInstance);
        assert_eq!(down.reasons, ["no instance can take requests (each one's reason is below): /down answers 503"]);
        assert_eq!(down.instances[0].reason.as_deref(), Some("its node node-1 is in maintenance"));
        let loose = s("loose");
        assert_eq!(loose.status, Status::Routed);
        assert!(loose.warnings[0].contains("lb_sticky \"maybe\" is not true or false"), "{:?}", loose.warnings);
    }

    #[test]
    fn the_text_says_the_same_as_the_page() {
        let r = report_of(&catalog());
        let all = text(&r, None);
        for needle in [
            "web: routed\n  route: /web, prefix stripped, roundrobin, backend be_web\n",
            "bad: not routed\n  why: lb_balance \"fastest\"",
            "zz-twin: not routed\n  why: its path /web is taken by service \"web\"\n",
            "db: not tagged\n  why: it is not tagged \"rest\" (its tags: primary)\n",
            "down: routed, no instance\n",
            "not routed: its node node-1 is in maintenance",
            "setting refused: lb_sticky \"maybe\"",
            "    container: http://localhost:9091/containers/abc%20123\n",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
        }
        let one = text(&r, Some("db"));
        assert!(one.starts_with("db: not tagged\n") && !one.contains("web"), "{one}");
        assert_eq!(text(&r, Some("nope")), "Consul lists no service \"nope\"\n");
    }

    #[test]
    fn the_page_escapes_what_services_put_in_their_names_tags_and_checks() {
        let mut c = catalog();
        c.others = Arc::new([("<script>alert(1)</script>".to_owned(), vec!["\"><img src=x>".to_owned()])].into());
        let hostile = failing(inst("x\"<u>", "10.0.0.9", HealthStatus::Critical, &[]), "c", false, "<i>out</i>");
        c.services.insert("evil".into(), Arc::new(vec![hostile]));
        let page = html(&report_of(&c), false).unwrap();
        assert!(page.starts_with("<!doctype html>") && page.contains("<script>\n  // Refetches"), "a whole page");
        for raw in ["<script>alert", "<img src=x>", "<u>", "<i>out"] {
            assert!(!page.contains(raw), "{raw:?} reached the page unescaped");
        }
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("id=\"service-bad\"") && page.contains("lb_balance &quot;fastest&quot;"));
        let fragment = html(&report_of(&c), true).unwrap();
        assert!(!fragment.contains("<html") && !fragment.contains("<main>") && fragment.contains("<h1>Routes</h1>"));
    }

    #[test]
    fn live_states_come_from_show_stat() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
                   be_web,s1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,100\n\
                   be_web,s2,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,100\n\
                   be_web,BACKEND,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,200\n";
        let states = server_states(csv);
        assert_eq!(states.len(), 2);
        assert_eq!(states[&("be_web".to_owned(), "s1".to_owned())], "UP");
        assert_eq!(states[&("be_web".to_owned(), "s2".to_owned())], "MAINT");
        assert!(server_states("").is_empty() && server_states("Unknown command\n").is_empty());
    }

    #[tokio::test]
    async fn served_as_html_to_browsers_text_to_curl_and_json() {
        let board = Board::new(None, "rest", None);
        let c = catalog();
        let (services, skipped, _) = model::services_cached(&c, &mut Cache::default());
        let (_, laid_out) = Slots::default().layout(&services, 4);
        board.planned(&c, &laid_out, skipped);
        board.applied(Err("HAProxy refused the new configuration: bad".into()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(board)).await });
        let get = |path: &'static str, accept: &'static str| async move {
            let resp = reqwest::Client::new()
                .get(format!("http://{addr}{path}"))
                .header("accept", accept)
                .send()
                .await
                .unwrap();
            let kind = resp.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
            (kind, resp.text().await.unwrap())
        };
        let (kind, body) = get("/routes", "text/html,application/xhtml+xml").await;
        assert!(kind.starts_with("text/html") && body.contains("id=\"service-zz-twin\""), "{kind}");
        assert!(body.contains("The last apply failed"), "the failed apply is on the page");
        let (kind, body) = get("/routes", "*/*").await;
        assert!(kind.starts_with("text/plain") && body.contains("zz-twin: not routed"), "{kind}: {body}");
        assert!(body.contains("live states not shown: HAProxy is reloaded by --command"), "{body}");
        let (_, body) = get("/routes?service=db", "*/*").await;
        assert!(body.starts_with("db: not tagged") && !body.contains("web:"), "{body}");
        let (kind, body) = get("/routes.json", "*/*").await;
        assert!(kind.starts_with("application/json"));
        let back: Report = serde_json::from_str(&body).unwrap();
        assert_eq!(back.services.len(), 7);
        assert_eq!(back.haproxy.error.as_deref(), Some("HAProxy refused the new configuration: bad"));
    }
}
