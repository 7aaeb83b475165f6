//! Steady HTTP load, recorded per 100 ms: closed loop (a few connections
//! sending back to back, as fast as the machine allows) or open loop (a
//! fixed rate, each request on its own schedule whatever the previous ones
//! did). A failure is anything but a 2xx with its whole body: another
//! status, a refused or reset connection, a timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// A request gets this long before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a load saw.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub requests: u64,
    pub failed: u64,
    /// The first failures, with the second they happened at.
    pub failures: Vec<String>,
    /// Per 100 ms since the start: answered, failed.
    pub series: Vec<(u64, u64)>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

#[derive(Default)]
struct Record {
    series: Vec<(u64, u64)>,
    failures: Vec<String>,
    failed: u64,
    latencies: Vec<Duration>,
}

/// A running load; [`Load::stop`] ends it and says what it saw.
pub struct Load {
    pub t0: Instant,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `connections` clients, each sending its next request when the last is answered.
    pub fn closed(url: &str, connections: usize) -> Load {
        Load::closed_with(url, connections, client)
    }

    /// [`Load::closed`], each client made by `make` (HTTPS, a connection per request, …).
    pub fn closed_with(url: &str, connections: usize, make: impl Fn() -> reqwest::Client) -> Load {
        let mut load = Load::new();
        for _ in 0..connections {
            let (url, stop, record, t0) = (url.to_owned(), load.stop.clone(), load.record.clone(), load.t0);
            let http = make();
            load.tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    one(&http, &url, t0, &record).await;
                }
            }));
        }
        load
    }

    /// `per_second` requests a second, on schedule, however long each takes.
    pub fn rate(url: &str, per_second: u32) -> Load {
        let mut load = Load::new();
        let (url, stop, record, t0) = (url.to_owned(), load.stop.clone(), load.record.clone(), load.t0);
        load.tasks.push(tokio::spawn(async move {
            let http = client();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = tokio::task::JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (http, url, record) = (http.clone(), url.clone(), record.clone());
                inflight.spawn(async move { one(&http, &url, t0, &record).await });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        }));
        load
    }

    fn new() -> Load {
        Load { t0: Instant::now(), stop: Arc::default(), record: Arc::default(), tasks: Vec::new() }
    }

    /// Seconds since the load started.
    pub fn elapsed(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Stops sending, waits for the requests in flight, and sums up.
    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let record = std::mem::take(&mut *self.record.lock().unwrap());
        let latency = Summary::of(&record.latencies);
        Outcome {
            requests: record.series.iter().map(|(ok, err)| ok + err).sum(),
            failed: record.failed,
            failures: record.failures,
            series: record.series,
            latency_p50_ms: latency.p50_ms,
            latency_p99_ms: latency.p99_ms,
            latency_max_ms: latency.max_ms,
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(TIMEOUT).build().expect("http client")
}

/// An error and its causes, outermost first (reqwest keeps the telling part in a source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn one(http: &reqwest::Client, url: &str, t0: Instant, record: &Mutex<Record>) {
    let sent = Instant::now();
    let result = match http.get(url).send().await {
        Ok(r) if r.status().is_success() => r.bytes().await.map(drop).map_err(|e| format!("body: {e}")),
        Ok(r) => Err(format!("status {}", r.status())),
        Err(e) => Err(chain(&e)),
    };
    let took = sent.elapsed();
    let slot = (t0.elapsed().as_millis() / 100) as usize;
    let mut r = record.lock().unwrap();
    if r.series.len() <= slot {
        r.series.resize(slot + 1, (0, 0));
    }
    r.latencies.push(took);
    match result {
        Ok(()) => r.series[slot].0 += 1,
        Err(e) => {
            r.series[slot].1 += 1;
            r.failed += 1;
            if r.failures.len() < 20 {
                r.failures.push(format!("{:.1}s {e}", t0.elapsed().as_secs_f64()));
            }
        }
    }
}
