//! The same changes under the same steady load, applied three ways on the
//! same HAProxy build: haproxy-sync's default (runtime API, master-worker
//! reload for structure), a master-worker reload for every change, and the
//! replaced stack's way (re-render the file, `haproxy -f … -sf <old pids>`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use testkit::TestConsul;

use crate::haproxy::{Sync, backend, register};

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Cycles of: scale 1 → 10, a new service appears, scale 10 → 1, it goes.
    #[arg(long, default_value_t = 10)]
    pub cycles: usize,
    /// Concurrent connections of the steady load.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Run {
    pub mode: String,
    pub requests: u64,
    pub failed: u64,
    pub failures: Vec<String>,
    pub reloads: f64,
    pub runtime_applies: f64,
    pub seconds: f64,
    /// Per 100 ms since the load started: answered, failed.
    pub series: Vec<(u64, u64)>,
    /// Seconds since the load started, and what happened.
    pub events: Vec<(f64, String)>,
}

const MODES: [&str; 3] = ["runtime", "reload", "sf"];

pub async fn run(opts: &Opts, bin: &Path, out: &Path) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for mode in MODES {
        let run = one(mode, opts, bin, out).await?;
        eprintln!(
            "[apply-modes] {mode:>7}: {} requests, {} failed, {} reloads, {} runtime applies",
            run.requests, run.failed, run.reloads, run.runtime_applies
        );
        runs.push(run);
    }
    Ok(runs)
}

async fn one(mode: &'static str, opts: &Opts, bin: &Path, out: &Path) -> anyhow::Result<Run> {
    let consul = TestConsul::start().await;
    let client = consul.client();
    let base = backend().await?;
    register(&client, "bench-0", "bench", base.port).await?;
    let template = include_str!("../../../haproxy/haproxy.cfg.hbs");
    let sync = Sync::start_with(bin, &consul, out, &format!("apply-{mode}.log"), |dir| match mode {
        "runtime" => vec![],
        "reload" => vec!["--apply".into(), "reload".into()],
        _ => {
            // No master process: each change starts a new HAProxy that
            // takes over from the old ones, as Consul Template's command did.
            let classic = template.replace("    master-worker\n", "").replace(" expose-fd listeners", "");
            let path = dir.join("classic.hbs");
            std::fs::write(&path, classic).expect("write template");
            let (cfg, pid) = (dir.join("haproxy.cfg"), dir.join("haproxy.pid"));
            let command = format!(
                "p=$(cat {pid} 2>/dev/null); exec haproxy -D -f {cfg} -p {pid} ${{p:+-sf $p}}",
                pid = pid.display(),
                cfg = cfg.display()
            );
            let mut args = vec!["--apply".into(), "reload".into(), "--template".into()];
            args.extend([path.display().to_string(), "--command".into(), command]);
            args
        }
    })?;
    sync.wait_routes("/bench", Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reloads0 = sync.metric("haproxy_sync_applies_total{kind=\"reload\"}").await;
    let runtime0 = sync.metric("haproxy_sync_applies_total{kind=\"runtime\"}").await;

    let url = format!("http://127.0.0.1:{}/bench", sync.http);
    let load = Series::start(&url, opts.connections);
    let events: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
    let note = |what: String| events.lock().unwrap().push((load.t0.elapsed().as_secs_f64(), what));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for cycle in 0..opts.cycles {
        note("scale 1→10".into());
        let mut extra = Vec::new();
        for i in 1..10 {
            let b = backend().await?;
            let id = format!("scale-{cycle}-{i}");
            register(&client, &id, "bench", b.port).await?;
            extra.push((id, b));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        note("new service".into());
        let other = backend().await?;
        register(&client, &format!("other-{cycle}"), &format!("other{cycle}"), other.port).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        note("scale 10→1".into());
        for (id, b) in extra {
            client.deregister(&id).await?;
            b.stop_after(Duration::from_secs(1));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        note("service gone".into());
        client.deregister(&format!("other-{cycle}")).await?;
        other.stop_after(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (series, failures) = load.stop().await;
    let requests = series.iter().map(|(ok, err)| ok + err).sum();
    let events = events.lock().unwrap().clone();
    let run = Run {
        mode: mode.to_owned(),
        requests,
        failed: failures.len() as u64,
        failures: failures.into_iter().take(20).collect(),
        reloads: sync.metric("haproxy_sync_applies_total{kind=\"reload\"}").await - reloads0,
        runtime_applies: sync.metric("haproxy_sync_applies_total{kind=\"runtime\"}").await - runtime0,
        seconds: series.len() as f64 / 10.0,
        series,
        events,
    };
    Ok(run)
}

/// Steady load recording answers and failures per 100 ms.
struct Series {
    t0: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
    buckets: Arc<Mutex<Vec<(u64, u64)>>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Series {
    fn start(url: &str, n: usize) -> Series {
        let t0 = Instant::now();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let buckets: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let tasks = (0..n)
            .map(|_| {
                let (url, stop, buckets) = (url.to_owned(), stop.clone(), buckets.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
                    let mut failures = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let ok = match http.get(&url).send().await {
                            Ok(r) if r.status().is_success() => r.bytes().await.map_err(|e| format!("body: {e}")),
                            Ok(r) => Err(format!("status {}", r.status())),
                            Err(e) => Err(e.to_string()),
                        };
                        let slot = (t0.elapsed().as_millis() / 100) as usize;
                        let mut b = buckets.lock().unwrap();
                        if b.len() <= slot {
                            b.resize(slot + 1, (0, 0));
                        }
                        match ok {
                            Ok(_) => b[slot].0 += 1,
                            Err(e) => {
                                b[slot].1 += 1;
                                failures.push(format!("{:.1}s {e}", t0.elapsed().as_secs_f64()));
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        Series { t0, stop, buckets, tasks }
    }

    async fn stop(self) -> (Vec<(u64, u64)>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.unwrap_or_default());
        }
        let series = self.buckets.lock().unwrap().clone();
        (series, failures)
    }
}
