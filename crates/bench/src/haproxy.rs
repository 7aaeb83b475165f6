//! haproxy-sync's figures: Consul change → HAProxy serving the new
//! instance; scaling under steady load (failed requests, reloads); a large
//! catalog (first apply, one instance change, memory).
//!
//! Runs the release `haproxy-sync` binary (with its own HAProxy child)
//! against a Consul dev agent, with backends on loopback that answer with
//! their port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use consul::Registration;
use futures_util::{StreamExt, stream};
use serde::Serialize;
use testkit::{TestConsul, stable_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::load::Load;
use crate::stats::{Summary, rss_mib};

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// New instances registered one by one for the latency figure.
    #[arg(long, default_value_t = 50)]
    pub changes: usize,
    /// Scale cycles 1 → 10 → 1 under load.
    #[arg(long, default_value_t = 10)]
    pub cycles: usize,
    /// Sizes of the large catalogs (comma-separated): services, or
    /// services`x`instances, rendered without HAProxy's active checks (see
    /// `checked`).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000x3")]
    pub sizes: Vec<Size>,
    /// Sizes rendered with the default template as shipped, active checks on
    /// every server (HAProxy reserves a descriptor per checked server, and
    /// checks every one each second).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub checked: Vec<usize>,
    /// Instances per service in the large catalogs, unless a size says.
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// Times a second Consul agent (another host) is killed, to measure its
    /// node's instances leaving HAProxy.
    #[arg(long, default_value_t = 5)]
    pub node_losses: usize,
    /// Concurrent connections of the steady load.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
}

/// A catalog size: services, and instances of each when not the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub services: usize,
    pub instances: Option<usize>,
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{s:?}: {e}"));
        match s.split_once('x') {
            Some((services, instances)) => Ok(Size { services: num(services)?, instances: Some(num(instances)?) }),
            None => Ok(Size { services: num(s)?, instances: None }),
        }
    }
}

/// A large catalog: services × instances registered, then haproxy-sync started.
#[derive(Debug, Default, Serialize)]
pub struct Large {
    pub services: usize,
    pub instances_per_service: usize,
    /// Rendered with HAProxy's active health checks (the default template).
    pub active_checks: bool,
    /// haproxy-sync started with the catalog in Consul → configuration written.
    pub first_apply_ms: f64,
    /// ... → HAProxy routing with it.
    pub first_serving_ms: f64,
    /// One more instance registered → HAProxy's runtime state has it (median of the samples).
    pub one_change_ms: f64,
    pub one_change_samples_ms: Vec<f64>,
    /// The apply itself (quiescence over → HAProxy has it), median of the same changes.
    pub one_change_apply_ms: f64,
    pub one_change_apply_samples_ms: Vec<f64>,
    /// The slowest of the samples (with so few, what stands for p99).
    pub one_change_max_ms: f64,
    /// Resident memory once nothing has changed for 15 s.
    pub rss_mib: f64,
    /// CPU time haproxy-sync used from its start to the end of the measurements.
    pub cpu_seconds: f64,
    /// The most connections haproxy-sync held to Consul at once, from start
    /// to the end of the churn.
    pub max_connections: usize,
    /// Requests to Consul in 10 s of nothing changing (blocking queries
    /// that return at their timeout included).
    pub idle_requests: usize,
    /// Requests to Consul per changed instance, each sample.
    pub requests_per_change: Vec<usize>,
    /// Churn: instances registered and deregistered, 16 at a time, the time
    /// it took, and the requests haproxy-sync made to Consul meanwhile (and 3 s after).
    pub churn_changes: usize,
    pub churn_seconds: f64,
    pub churn_requests: usize,
    /// Consul queries that failed (a 429 from Consul's connection limit included).
    pub consul_errors: f64,
    /// Reloads from the first configuration to the end (a catalog known at start needs none).
    pub reloads: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub quiescence: String,
    /// Registration in Consul → first answer from the new instance through HAProxy.
    pub change_to_serving: Summary,
    pub cycles: usize,
    pub requests: u64,
    pub failed_requests: u64,
    pub failures: Vec<String>,
    pub reloads_during_scaling: f64,
    pub runtime_applies_during_scaling: f64,
    pub scaling_seconds: f64,
    /// One entry per size of the large catalog.
    pub large: Vec<Large>,
    /// Consul marks a lost node's `serfHealth` critical → its instances out of HAProxy.
    pub node_loss_to_out: Summary,
    pub rss_idle_small_mib: f64,
}

const WAIT: &str = "25ms:250ms";
/// Instances registered and deregistered in the churn of a large catalog.
const CHURN: usize = 100;
/// Instance changes measured per large catalog.
const SAMPLES: usize = 15;

pub async fn run(opts: &Opts, bin: &Path, out: &Path) -> anyhow::Result<Results> {
    let mut results = Results { quiescence: WAIT.into(), cycles: opts.cycles, ..Results::default() };
    latency_and_scaling(opts, bin, out, &mut results).await?;
    results.node_loss_to_out = node_loss(opts.node_losses, bin, out).await?;
    let checked = opts.checked.iter().map(|&services| (Size { services, instances: None }, true));
    for (size, checks) in checked.chain(opts.sizes.iter().map(|&s| (s, false))) {
        let instances = size.instances.unwrap_or(opts.instances);
        results.large.push(large_catalog(size.services, instances, checks, bin, out).await?);
    }
    Ok(results)
}

/// A second agent, another host as Consul sees it, holds instances of a
/// service and is killed: from the moment Consul reports its node's
/// `serfHealth` critical until none of its instances is routed.
async fn node_loss(times: usize, bin: &Path, out: &Path) -> anyhow::Result<Summary> {
    let consul = TestConsul::start().await;
    let target = backend().await?;
    register(&consul.client(), "here", "lost", target.port).await?;
    let sync = Sync::start(bin, &consul.url(), out, "haproxy-sync-node-loss.log")?;
    let http = reqwest::Client::new();
    let mut samples = Vec::new();
    for round in 0..times {
        let mut other = consul.join_client().await;
        for i in 0..3u8 {
            let reg = Registration {
                id: format!("there-{round}-{i}"),
                name: "lost".into(),
                tags: vec!["rest".into()],
                address: format!("127.0.8.{}", i + 1),
                port: target.port,
                ..Registration::default()
            };
            other.client().register(&reg).await?;
        }
        let servers = || async {
            let state = runtime(&sync.runtime, "show servers state be_lost").await.unwrap_or_default();
            state.lines().filter(|l| l.contains("127.0.8.")).filter(|l| l.split(' ').nth(5) == Some("2")).count()
        };
        let t0 = Instant::now();
        while servers().await < 3 {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the other node's instances not routed within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        other.stop();
        let url = format!("{}/v1/health/node/{}", consul.url(), other.node);
        let t0 = Instant::now();
        let critical = loop {
            let checks: serde_json::Value = http.get(&url).send().await?.json().await?;
            if checks
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "critical")
            {
                break Instant::now();
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("Consul did not mark the lost node critical within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        while servers().await > 0 {
            if critical.elapsed() > Duration::from_secs(30) {
                bail!("the lost node's instances still routed 30 s after Consul marked it critical");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(critical.elapsed());
        // The dead node's registrations would stay until Consul reaps it.
        let _ = http
            .put(format!("{}/v1/catalog/deregister", consul.url()))
            .json(&serde_json::json!({ "Node": other.node }))
            .send()
            .await;
    }
    let summary = Summary::of(&samples);
    eprintln!("[haproxy-sync] lost node: serfHealth critical → out of HAProxy: {summary}");
    Ok(summary)
}

async fn latency_and_scaling(opts: &Opts, bin: &Path, out: &Path, results: &mut Results) -> anyhow::Result<()> {
    let consul = TestConsul::start().await;
    let client = consul.client();
    let base = backend().await?;
    register(&client, "bench-0", "bench", base.port).await?;
    let sync = Sync::start(bin, &consul.url(), out, "haproxy-sync-small.log")?;
    sync.wait_routes("/bench", Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    results.rss_idle_small_mib = rss_mib(sync.child.id()).unwrap_or_default();

    // 1. Registration → first answer from the new instance.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let url = format!("http://127.0.0.1:{}/bench", sync.http);
    let mut latencies = Vec::new();
    for i in 0..opts.changes {
        let new = backend().await?;
        let id = format!("bench-new-{i}");
        let t0 = Instant::now();
        register(&client, &id, "bench", new.port).await?;
        loop {
            if let Ok(resp) = http.get(&url).send().await {
                if resp.text().await.is_ok_and(|body| body == new.port.to_string()) {
                    latencies.push(t0.elapsed());
                    break;
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("instance {id} not served within 10 s");
            }
        }
        client.deregister(&id).await?;
        new.stop_after(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    results.change_to_serving = Summary::of(&latencies);
    eprintln!("[haproxy-sync] Consul change → serving (wait {WAIT}): {}", results.change_to_serving);

    // 2. Scale 1 → 10 → 1 under steady load; leaving instances are
    // deregistered first and stop a second later, as the stack does.
    let reloads_before = sync.metric("haproxy_sync_applies_total{kind=\"reload\"}").await;
    let runtime_before = sync.metric("haproxy_sync_applies_total{kind=\"runtime\"}").await;
    let load = Load::closed(&url, opts.connections);
    let t0 = Instant::now();
    for cycle in 0..opts.cycles {
        let mut extra = Vec::new();
        for i in 1..10 {
            let b = backend().await?;
            let id = format!("bench-scale-{cycle}-{i}");
            register(&client, &id, "bench", b.port).await?;
            extra.push((id, b));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (id, b) in extra {
            client.deregister(&id).await?;
            b.stop_after(Duration::from_secs(1));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    results.scaling_seconds = t0.elapsed().as_secs_f64();
    let outcome = load.stop().await;
    results.requests = outcome.requests;
    results.failed_requests = outcome.failed;
    results.failures = outcome.failures;
    results.reloads_during_scaling = sync.metric("haproxy_sync_applies_total{kind=\"reload\"}").await - reloads_before;
    results.runtime_applies_during_scaling =
        sync.metric("haproxy_sync_applies_total{kind=\"runtime\"}").await - runtime_before;
    eprintln!(
        "[haproxy-sync] {} cycles 1→10→1 under load: {} requests, {} failed, {} reloads, {} runtime applies",
        opts.cycles,
        results.requests,
        results.failed_requests,
        results.reloads_during_scaling,
        results.runtime_applies_during_scaling
    );
    Ok(())
}

/// The default template without active health checks: every server of a
/// large catalog points at one backend on this machine, whose checks (one a
/// second per server) would measure the machine rather than haproxy-sync.
fn unchecked_template(out: &Path) -> anyhow::Result<PathBuf> {
    let template = include_str!("../../../haproxy/haproxy.cfg.hbs");
    let unchecked = template.replace(" check weight", " weight").replace("    option httpchk GET {{check_path}}\n", "");
    let servers_checked = unchecked.lines().any(|l| l.trim_start().starts_with("server ") && l.contains(" check"));
    anyhow::ensure!(
        !servers_checked && unchecked != template,
        "the default template's checks moved; update the benchmark"
    );
    let path = out.canonicalize()?.join("unchecked.hbs");
    std::fs::write(&path, unchecked)?;
    Ok(path)
}

async fn large_catalog(
    services: usize,
    instances: usize,
    active_checks: bool,
    bin: &Path,
    out: &Path,
) -> anyhow::Result<Large> {
    let mut results = Large { services, instances_per_service: instances, active_checks, ..Large::default() };
    // Consul as it comes, at its default limits; haproxy-sync reaches it
    // through a proxy that counts connections and requests.
    let consul = TestConsul::start().await;
    let proxy = testkit::CountingProxy::start(consul.http).await;
    let client = consul.client();
    // Instances point at one backend that answers: checks have a peer.
    let target = backend().await?;
    let regs = (0..services).flat_map(|s| (0..instances).map(move |i| (format!("s{s}-{i}"), format!("s{s}"), i)));
    // Straight into the catalog, on a node of their own: the agent API
    // re-syncs its whole local state per registration and would take
    // minutes at 50,000.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/catalog/register", consul.url());
    let registered: Vec<anyhow::Result<()>> = stream::iter(regs)
        .map(|(id, name, i)| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let body = serde_json::json!({
                    "Node": "bench-node",
                    "Address": "127.0.0.1",
                    "Service": {
                        "ID": id,
                        "Service": name,
                        "Tags": ["rest"],
                        "Address": format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250),
                        "Port": target.port,
                    },
                });
                http.put(&url).json(&body).send().await?.error_for_status().context("catalog register")?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    registered.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    eprintln!("[haproxy-sync] {services} services × {instances} instances registered");

    let t0 = Instant::now();
    let log = format!("haproxy-sync-{services}{}.log", if active_checks { "-checked" } else { "" });
    let extra = if active_checks {
        Vec::new()
    } else {
        vec!["--template".to_owned(), unchecked_template(out)?.display().to_string()]
    };
    let sync = Sync::start_with(bin, &format!("http://{}", proxy.addr), out, &log, &extra)?;
    let last = format!("be_s{}", services - 1);
    loop {
        if std::fs::read_to_string(&sync.config).is_ok_and(|c| c.contains(&last)) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("no full configuration after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    results.first_apply_ms = t0.elapsed().as_secs_f64() * 1e3;
    sync.wait_routes(&format!("/s{}", services - 1), Duration::from_secs(120)).await?;
    results.first_serving_ms = t0.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "[haproxy-sync] large catalog: configuration written {:.0} ms, serving {:.0} ms after start",
        results.first_apply_ms, results.first_serving_ms
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = proxy.requests();
    tokio::time::sleep(Duration::from_secs(10)).await;
    results.idle_requests = proxy.requests() - before;

    // One instance change: an 11th instance of one service, seen in HAProxy's runtime state.
    // After each change the file is rewritten and checked (`haproxy -c`,
    // about as long as the first apply): the next change waits for that.
    let spacing = Duration::from_millis(1500).max(Duration::from_secs_f64(results.first_apply_ms * 1.5 / 1e3));
    for k in 0..u16::try_from(SAMPLES)? {
        let svc = format!("s{}", (services / 2 + k as usize) % services);
        let addr = format!("127.0.9.{}", k + 1);
        let before = proxy.requests();
        let t0 = Instant::now();
        let reg = Registration {
            id: format!("{svc}-extra"),
            name: svc.clone(),
            tags: vec!["rest".into()],
            address: addr.clone(),
            port: target.port,
            ..Registration::default()
        };
        client.register(&reg).await?;
        loop {
            let state = runtime(&sync.runtime, &format!("show servers state be_{svc}")).await.unwrap_or_default();
            if state.lines().any(|l| l.contains(&addr)) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("instance change not applied within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        results.one_change_samples_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(spacing).await;
        results.requests_per_change.push(proxy.requests() - before);
    }
    let mut samples = results.one_change_samples_ms.clone();
    samples.sort_by(f64::total_cmp);
    results.one_change_ms = samples[samples.len() / 2];
    results.one_change_max_ms = samples.last().copied().unwrap_or(f64::NAN);
    // haproxy-sync's own measure of those applies: quiescence over → HAProxy has it.
    let log = std::fs::read_to_string(out.join(&log)).unwrap_or_default();
    let mut applies: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "configuration applied" && v["applied"] == "Runtime")
        .filter_map(|v| v["effective_ms"].as_f64())
        .collect();
    applies = applies.split_off(applies.len().saturating_sub(SAMPLES));
    results.one_change_apply_samples_ms = applies.clone();
    applies.sort_by(f64::total_cmp);
    results.one_change_apply_ms = applies.get(applies.len() / 2).copied().unwrap_or(f64::NAN);
    // Churn: instances of many services registered, then deregistered, 16
    // at a time: what it costs Consul, and the connections held meanwhile.
    let churn: Vec<(String, String)> =
        (0..CHURN).map(|k| (format!("churn-{k}"), format!("s{}", (k * 7919) % services))).collect();
    let before = proxy.requests();
    let t0 = Instant::now();
    let registered: Vec<anyhow::Result<()>> = stream::iter(churn.iter())
        .map(|(id, name)| register(&client, id, name, target.port))
        .buffer_unordered(16)
        .collect()
        .await;
    registered.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let deregistered: Vec<Result<(), consul::Error>> =
        stream::iter(churn.iter()).map(|(id, _)| client.deregister(id)).buffer_unordered(16).collect().await;
    deregistered.into_iter().collect::<Result<Vec<()>, _>>()?;
    results.churn_seconds = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    results.churn_changes = 2 * CHURN;
    results.churn_requests = proxy.requests() - before;
    results.max_connections = proxy.max_open();
    results.consul_errors = sync.metric("haproxy_sync_consul_errors_total").await;
    results.reloads = sync.metric("haproxy_sync_applies_total{kind=\"reload\"}").await;
    // Memory at rest: once nothing has changed for 15 s (an allocator
    // hands freed memory back over seconds, not at once).
    tokio::time::sleep(Duration::from_secs(15)).await;
    results.rss_mib = rss_mib(sync.child.id()).unwrap_or_default();
    results.cpu_seconds = crate::stats::cpu_seconds(sync.child.id()).unwrap_or_default();
    eprintln!(
        "[haproxy-sync] one instance change → in HAProxy: median {:.1} ms ({:?}), of which the apply {:.1} ms ({:?}); RSS {:.1} MiB",
        results.one_change_ms,
        results.one_change_samples_ms,
        results.one_change_apply_ms,
        results.one_change_apply_samples_ms,
        results.rss_mib
    );
    eprintln!(
        "[haproxy-sync] Consul: at most {} connections; {} requests in 10 s idle; requests per change {:?}; churn of {} changes in {:.1} s: {} requests; {} errors; {} reloads",
        results.max_connections,
        results.idle_requests,
        results.requests_per_change,
        results.churn_changes,
        results.churn_seconds,
        results.churn_requests,
        results.consul_errors,
        results.reloads
    );
    Ok(results)
}

/// A haproxy-sync process with its HAProxy, on free loopback ports.
struct Sync {
    child: Child,
    dir: PathBuf,
    config: PathBuf,
    runtime: PathBuf,
    http: u16,
    admin: u16,
}

impl Sync {
    fn start(bin: &Path, consul: &str, out: &Path, log: &str) -> anyhow::Result<Sync> {
        Self::start_with(bin, consul, out, log, &[])
    }

    fn start_with(bin: &Path, consul: &str, out: &Path, log: &str, extra: &[String]) -> anyhow::Result<Sync> {
        let (http, admin) = (stable_port(), stable_port());
        let dir = std::env::temp_dir().join(format!("portolan-bench-{http}"));
        std::fs::create_dir_all(&dir)?;
        let (config, runtime) = (dir.join("haproxy.cfg"), dir.join("admin.sock"));
        let log = std::fs::File::create(out.join(log))?;
        let child = Command::new(bin)
            .arg(consul)
            .args(["--config", &config.display().to_string()])
            .args(["--master-socket", &dir.join("master.sock").display().to_string()])
            .args(["--runtime-socket", &runtime.display().to_string()])
            .args(["--bind", "127.0.0.1", "--http-port", &http.to_string(), "--stats-port", &stable_port().to_string()])
            .args(["--wait", WAIT, "--grace", "1", "--metrics-addr", &format!("127.0.0.1:{admin}")])
            .args(["--log-format", "json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} (scripts/bench builds it)", bin.display()))?;
        Ok(Sync { child, dir, config, runtime, http, admin })
    }

    async fn wait_routes(&self, path: &str, limit: Duration) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}{path}", self.http);
        let t0 = Instant::now();
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() != 404) {
                return Ok(());
            }
            if t0.elapsed() > limit {
                bail!("{path} not routed after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn metric(&self, sample: &str) -> f64 {
        metric(self.admin, sample).await
    }
}

/// One sample of the haproxy-sync whose /metrics is on loopback `port` (NaN if unreachable).
pub(crate) async fn metric(port: u16, sample: &str) -> f64 {
    let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else { return f64::NAN };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Drop for Sync {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = Command::new("pkill").arg("-f").arg(self.dir.display().to_string()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A backend on loopback answering its port to every request.
struct Backend {
    port: u16,
    /// Stops the backend after the delay sent (its drain).
    stop: tokio::sync::oneshot::Sender<Duration>,
}

impl Backend {
    fn stop_after(self, drain: Duration) {
        let _ = self.stop.send(drain);
    }
}

async fn backend() -> anyhow::Result<Backend> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = tokio::sync::oneshot::channel::<Duration>();
    let app = axum::Router::new().fallback(move || async move { port.to_string() });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                if let Ok(drain) = rx.await {
                    tokio::time::sleep(drain).await;
                }
            })
            .await;
    });
    Ok(Backend { port, stop: tx })
}

async fn register(client: &consul::Client, id: &str, name: &str, port: u16) -> anyhow::Result<()> {
    let reg = Registration {
        id: id.into(),
        name: name.into(),
        tags: vec!["rest".into()],
        address: "127.0.0.1".into(),
        port,
        ..Registration::default()
    };
    client.register(&reg).await.context("register")
}

/// One command on HAProxy's runtime API.
async fn runtime(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(format!("{command}\n").as_bytes()).await?;
    s.shutdown().await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    Ok(answer)
}
