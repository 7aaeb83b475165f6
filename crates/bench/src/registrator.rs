//! registrator's figures: Docker `start` event → service in Consul, full
//! resync of many containers, convergence after a mass kill, memory.
//!
//! Runs the release `registrator` binary as a child process, against a
//! Consul dev agent on loopback and the local Docker engine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;
use testkit::TestConsul;

use crate::docker::Scene;
use crate::stats::{Summary, rss_mib};

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Containers started one by one for the start → Consul latency.
    #[arg(long, default_value_t = 50)]
    pub starts: usize,
    /// Containers running during the resync measurements (comma-separated,
    /// rising); the kills happen at the last size.
    #[arg(long, value_delimiter = ',', default_value = "200")]
    pub running: Vec<usize>,
    /// Containers killed at once.
    #[arg(long, default_value_t = 50)]
    pub kill: usize,
    /// Seconds a container Consul refuses is watched (its first minute, then the rest).
    #[arg(long, default_value_t = 150)]
    pub refused_secs: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    /// Docker `start` event → instance visible in Consul's health API.
    pub start_to_consul: Summary,
    /// One entry per number of running containers.
    pub resyncs: Vec<Resync>,
    pub killed: usize,
    /// Kills of `killed` containers sent together → Consul lists only the others.
    pub kill_converge_ms: f64,
    /// ... of which Docker took this long to carry out the kills.
    pub kill_requests_ms: f64,
    /// Per killed container: Docker's `kill` event → its service gone from Consul.
    pub kill_to_gone: Summary,
    pub rss_idle_empty_mib: f64,
    pub rss_idle_loaded_mib: f64,
    pub refused: Refused,
}

/// A container whose registration Consul refuses (a script check on an
/// agent that allows none), beside containers that come and go.
#[derive(Debug, Default, Serialize)]
pub struct Refused {
    pub watched_s: f64,
    /// Registration requests for it in its first minute (or all of them when watched less).
    pub attempts_first_minute: usize,
    /// ... and per minute after that (`None` when watched a minute or less).
    pub attempts_per_minute_after: Option<f64>,
    /// Log lines about it.
    pub log_lines: usize,
    /// Docker `start` → in Consul for other containers meanwhile.
    pub start_to_consul_beside: Summary,
}

/// registrator started against an empty Consul with `running` containers.
#[derive(Debug, Default, Serialize)]
pub struct Resync {
    pub running: usize,
    /// Start → all `running` services visible.
    pub cold_resync_ms: f64,
    /// registrator's own measure of that first full resync.
    pub resync_internal_ms: Option<f64>,
    /// RSS after the resync, idle.
    pub rss_mib: f64,
}

const LAT_SERVICE: &str = "bench-lat";
const REFUSED_SERVICE: &str = "bench-refused";
const MANY_SERVICE: &str = "bench-many";

pub async fn run(opts: &Opts, bin: &PathBuf, out: &std::path::Path) -> anyhow::Result<Results> {
    let largest = opts.running.iter().copied().max().unwrap_or(0);
    let mut results = Results { killed: opts.kill.min(largest), ..Results::default() };
    let mut consul = TestConsul::start().await;
    let scene = Scene::new(&format!("breg{}", std::process::id()))?;
    let log = out.join("registrator.log");
    let mut child = spawn(bin, &consul, &log)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    results.rss_idle_empty_mib = rss_mib(child.0.id()).unwrap_or_default();

    // 1. start event → visible in Consul, one container at a time.
    results.start_to_consul = Summary::of(&start_latencies(&scene, &consul, opts.starts).await?);
    eprintln!("[registrator] start → Consul: {}", results.start_to_consul);
    scene.remove_all();
    wait_for(&consul, LAT_SERVICE, 0, Duration::from_secs(30)).await?;

    // 1b. A container Consul refuses, watched through a proxy that counts
    // registrator's requests; others come meanwhile.
    child.kill();
    let proxy = testkit::CountingProxy::start(consul.http).await;
    let log_before = log_text(&log).lines().count();
    child = spawn_at(bin, &format!("consul://{}", proxy.addr), &log)?;
    let id = scene.start_one_with(REFUSED_SERVICE, &["SERVICE_CHECK_SCRIPT=/bin/true"]).await?;
    let name = crate::docker::docker(&["inspect", "-f", "{{.Name}}", &id])?;
    let needle = format!("\"ID\":\"bench:{}:80\"", name.trim_start_matches('/'));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let beside = start_latencies(&scene, &consul, opts.starts.div_ceil(2)).await?;
    let watch = Duration::from_secs(opts.refused_secs);
    let minute = Duration::from_secs(60).min(watch);
    tokio::time::sleep((t0 + minute).saturating_duration_since(Instant::now())).await;
    let first = proxy.count(&needle);
    tokio::time::sleep((t0 + watch).saturating_duration_since(Instant::now())).await;
    let after = proxy.count(&needle) - first;
    let lines = log_text(&log).lines().skip(log_before).filter(|l| l.contains("refuses the registration")).count();
    results.refused = Refused {
        watched_s: t0.elapsed().as_secs_f64(),
        attempts_first_minute: first,
        attempts_per_minute_after: (watch > minute).then(|| after as f64 * 60.0 / (watch - minute).as_secs_f64()),
        log_lines: lines,
        start_to_consul_beside: Summary::of(&beside),
    };
    eprintln!(
        "[registrator] refused container: {} attempts in its first minute, {:?} a minute after, {} log lines; others meanwhile start → Consul {}",
        first, results.refused.attempts_per_minute_after, lines, results.refused.start_to_consul_beside
    );
    scene.remove_all();
    wait_for(&consul, LAT_SERVICE, 0, Duration::from_secs(30)).await?;

    // 2. Many running containers; registrator restarted against an empty Consul.
    let mut ids = Vec::new();
    for &running in &opts.running {
        ids.extend(scene.start(MANY_SERVICE, running.saturating_sub(ids.len()), 4).await?);
        wait_for(&consul, MANY_SERVICE, ids.len(), Duration::from_secs(60)).await?;
        child.kill();
        consul.restart().await;
        let restarted = Instant::now();
        child = spawn(bin, &consul, &log)?;
        wait_for(&consul, MANY_SERVICE, ids.len(), Duration::from_secs(60)).await?;
        let cold_resync_ms = restarted.elapsed().as_secs_f64() * 1e3;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let resync = Resync {
            running: ids.len(),
            cold_resync_ms,
            resync_internal_ms: first_resync_ms(&log),
            rss_mib: rss_mib(child.0.id()).unwrap_or_default(),
        };
        eprintln!(
            "[registrator] {} containers: cold start → all in Consul {:.0} ms (resync itself {:?} ms), RSS {:.1} MiB",
            resync.running, resync.cold_resync_ms, resync.resync_internal_ms, resync.rss_mib
        );
        results.resyncs.push(resync);
    }

    // 3. Kill some at once.
    let killed = &ids[..results.killed];
    let dies: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let gone: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let events = tokio::spawn(record_events("kill", dies.clone()));
    let watch = tokio::spawn(record_presence(consul.client(), MANY_SERVICE, Times::default(), gone.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    scene.kill(killed).await?;
    results.kill_requests_ms = t0.elapsed().as_secs_f64() * 1e3;
    wait_for(&consul, MANY_SERVICE, ids.len() - results.killed, Duration::from_secs(30)).await?;
    results.kill_converge_ms = t0.elapsed().as_secs_f64() * 1e3;
    tokio::time::sleep(Duration::from_millis(200)).await;
    events.abort();
    watch.abort();
    let (kills, gone) = (dies.lock().unwrap().clone(), gone.lock().unwrap().clone());
    let lags: Vec<Duration> = killed
        .iter()
        .filter_map(|id| Some(gone.get(id)?.duration_since(*kills.get(id)?).unwrap_or_default()))
        .collect();
    results.kill_to_gone = Summary::of(&lags);
    eprintln!("[registrator] per container: kill event → gone from Consul: {}", results.kill_to_gone);
    eprintln!(
        "[registrator] kill {} at once (Docker answered all kills in {:.0} ms) → Consul matches in {:.0} ms",
        results.killed, results.kill_requests_ms, results.kill_converge_ms
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    results.rss_idle_loaded_mib = rss_mib(child.0.id()).unwrap_or_default();
    eprintln!(
        "[registrator] idle RSS: {:.1} MiB empty, {:.1} MiB with {} services",
        results.rss_idle_empty_mib,
        results.rss_idle_loaded_mib,
        ids.len() - results.killed
    );
    child.kill();
    drop(scene);
    Ok(results)
}

/// Starts `n` containers one at a time; for each, Docker's `start` event →
/// its instance in Consul's health API.
async fn start_latencies(scene: &Scene, consul: &TestConsul, n: usize) -> anyhow::Result<Vec<Duration>> {
    let starts: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let events = tokio::spawn(record_events("start", starts.clone()));
    let watch = tokio::spawn(record_presence(consul.client(), LAT_SERVICE, seen.clone(), Times::default()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for _ in 0..n {
        let id = scene.start_one(LAT_SERVICE).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (start, found) = (starts.lock().unwrap().get(&id).copied(), seen.lock().unwrap().get(&id).copied());
            if let (Some(start), Some(found)) = (start, found) {
                latencies.push(found.duration_since(start).unwrap_or_default());
                break;
            }
            if Instant::now() > deadline {
                bail!("container {id} not seen in Consul within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    events.abort();
    watch.abort();
    Ok(latencies)
}

fn log_text(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The registrator child process, killed on drop.
struct Registrator(Child);

impl Registrator {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Registrator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(bin: &PathBuf, consul: &TestConsul, log: &std::path::Path) -> anyhow::Result<Registrator> {
    spawn_at(bin, &format!("consul://{}", consul.http), log)
}

fn spawn_at(bin: &PathBuf, consul_uri: &str, log: &std::path::Path) -> anyhow::Result<Registrator> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = Command::new(bin)
        .args(["--owner", "bench", "--resync", "0", "--metrics-addr", "", "--log-format", "json"])
        .arg(consul_uri)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {} (scripts/bench builds it)", bin.display()))?;
    Ok(Registrator(child))
}

/// Records Docker's `action` events: container ID → event time.
async fn record_events(action: &str, starts: Arc<Mutex<HashMap<String, SystemTime>>>) {
    let Ok(engine) = registrator::docker::Engine::connect() else { return };
    let mut events = Box::pin(engine.events(None));
    while let Some(Ok(ev)) = events.next().await {
        if ev.action.as_deref() != Some(action) {
            continue;
        }
        let (Some(actor), Some(nanos)) = (ev.actor, ev.time_nano) else { continue };
        if let Some(id) = actor.id {
            starts
                .lock()
                .unwrap()
                .insert(id, UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or_default()));
        }
    }
}

/// Times of arrival and departure, by container ID.
type Times = Arc<Mutex<HashMap<String, SystemTime>>>;

/// Records when each container's instance of `service` first shows in
/// Consul's health API (what a load balancer reads), and when it leaves it.
async fn record_presence(client: consul::Client, service: &str, seen: Times, gone: Times) {
    let mut index = 0;
    let mut present: std::collections::HashSet<String> = Default::default();
    loop {
        let Ok(res) = client.health_service(service, index, Duration::from_secs(30)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let now = SystemTime::now();
        index = consul::blocking::next_index(index, res.index);
        let here: std::collections::HashSet<String> = res
            .value
            .iter()
            .filter_map(|e| e.service.meta.get(registrator::service::CONTAINER_META).cloned())
            .collect();
        {
            let mut seen = seen.lock().unwrap();
            for arrived in here.difference(&present) {
                seen.entry(arrived.clone()).or_insert(now);
            }
        }
        let mut gone = gone.lock().unwrap();
        for left in present.difference(&here) {
            gone.entry(left.clone()).or_insert(now);
        }
        present = here;
    }
}

async fn wait_for(consul: &TestConsul, service: &str, n: usize, limit: Duration) -> anyhow::Result<()> {
    let client = consul.client();
    let deadline = Instant::now() + limit;
    loop {
        let count = client.agent_services().await.map(|s| s.values().filter(|s| s.service == service).count());
        if count.as_ref().is_ok_and(|c| *c == n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{service}: {count:?} instances in Consul after {limit:?}, want {n}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The time of registrator's last full resync, from its JSON log.
fn first_resync_ms(log: &std::path::Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "resynced")
        .and_then(|v| v["elapsed_ms"].as_f64())
}
