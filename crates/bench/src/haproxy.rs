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
use testkit::{TestConsul, free_port};
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
    /// Sizes of the large catalogs, in services (comma-separated), rendered
    /// without HAProxy's active checks (see `checked`).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    pub sizes: Vec<usize>,
    /// Sizes rendered with the default template as shipped, active checks on
    /// every server (HAProxy reserves a descriptor per checked server, and
    /// checks every one each second).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub checked: Vec<usize>,
    /// Instances per service in the large catalogs.
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// Concurrent connections of the steady load.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
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
    pub rss_mib: f64,
    /// CPU time haproxy-sync used from its start to the end of the measurements.
    pub cpu_seconds: f64,
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
    pub rss_idle_small_mib: f64,
}

const WAIT: &str = "25ms:250ms";
/// Instance changes measured per large catalog.
const SAMPLES: usize = 9;
const CONSUL_LIMITS: &str = "limits { http_max_conns_per_client = 16384 }";

pub async fn run(opts: &Opts, bin: &Path, out: &Path) -> anyhow::Result<Results> {
    let mut results = Results { quiescence: WAIT.into(), cycles: opts.cycles, ..Results::default() };
    latency_and_scaling(opts, bin, out, &mut results).await?;
    for (&size, checks) in opts.checked.iter().map(|s| (s, true)).chain(opts.sizes.iter().map(|s| (s, false))) {
        results.large.push(large_catalog(size, opts.instances, checks, bin, out).await?);
    }
    Ok(results)
}

async fn latency_and_scaling(opts: &Opts, bin: &Path, out: &Path, results: &mut Results) -> anyhow::Result<()> {
    let consul = TestConsul::start().await;
    let client = consul.client();
    let base = backend().await?;
    register(&client, "bench-0", "bench", base.port).await?;
    let sync = Sync::start(bin, &consul, out, "haproxy-sync-small.log")?;
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
    // One blocking query per routed service: above Consul's default of 200
    // connections per client, as the README says.
    let consul = TestConsul::start_with(&["-hcl", CONSUL_LIMITS]).await;
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
    let sync = Sync::start_with(bin, &consul, out, &log, &extra)?;
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

    // One instance change: an 11th instance of one service, seen in HAProxy's runtime state.
    // After each change the file is rewritten and checked (`haproxy -c`,
    // about as long as the first apply): the next change waits for that.
    let spacing = Duration::from_millis(1500).max(Duration::from_secs_f64(results.first_apply_ms * 1.5 / 1e3));
    for k in 0..SAMPLES as u16 {
        let svc = format!("s{}", (services / 2 + k as usize) % services);
        let addr = format!("127.0.9.{}", k + 1);
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
    }
    let mut samples = results.one_change_samples_ms.clone();
    samples.sort_by(f64::total_cmp);
    results.one_change_ms = samples[samples.len() / 2];
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
    fn start(bin: &Path, consul: &TestConsul, out: &Path, log: &str) -> anyhow::Result<Sync> {
        Self::start_with(bin, consul, out, log, &[])
    }

    fn start_with(bin: &Path, consul: &TestConsul, out: &Path, log: &str, extra: &[String]) -> anyhow::Result<Sync> {
        let (http, admin) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("portolan-bench-{http}"));
        std::fs::create_dir_all(&dir)?;
        let (config, runtime) = (dir.join("haproxy.cfg"), dir.join("admin.sock"));
        let log = std::fs::File::create(out.join(log))?;
        let child = Command::new(bin)
            .arg(consul.url())
            .args(["--config", &config.display().to_string()])
            .args(["--master-socket", &dir.join("master.sock").display().to_string()])
            .args(["--runtime-socket", &runtime.display().to_string()])
            .args(["--bind", "127.0.0.1", "--http-port", &http.to_string(), "--stats-port", &free_port().to_string()])
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
