//! Discovery latency on the whole compose stack: for containers of the demo
//! image started one at a time, Docker's `start` event → (a) the instance
//! in Consul, (b) the instance answering through HAProxy on the stack's
//! HTTP port; and on `docker stop`, the `kill` event → the last request
//! HAProxy routed to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use e2e::{Answer, Stack};
use futures_util::StreamExt;
use serde::Serialize;

use crate::stats::Summary;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Containers started (and stopped) one at a time.
    #[arg(long, default_value_t = 50)]
    pub starts: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub start_to_consul: Summary,
    pub start_to_haproxy: Summary,
    /// `kill` event → the last answer from that instance through HAProxy
    /// (0 when none came after the event).
    pub kill_to_last_routed: Summary,
    pub failed_requests: usize,
}

pub async fn run(opts: &Opts) -> anyhow::Result<Results> {
    let stack = Stack::new("bench");
    stack.up(1);
    let network = stack.network();
    let consul = consul::Client::new(&consul::Settings {
        base: Some(format!("http://127.0.0.1:{}/", stack.consul_port).parse()?),
        ..Default::default()
    })?;
    let events: Arc<Mutex<HashMap<(String, String), SystemTime>>> = Arc::default();
    let recorder = tokio::spawn(record(events.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let event = |action: &str, id: &str, limit: Duration| {
        let events = events.clone();
        let key = (action.to_owned(), id.to_owned());
        async move {
            let t0 = Instant::now();
            loop {
                if let Some(t) = events.lock().unwrap().get(&key) {
                    return Ok(*t);
                }
                if t0.elapsed() > limit {
                    bail!("no {} event for {}", key.0, key.1);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    let (mut to_consul, mut to_haproxy, mut to_last, mut failed) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for i in 0..opts.starts {
        let name = format!("{}-probe-{i}", stack.project);
        let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", &network].map(str::to_owned).to_vec();
        args.extend(e2e::hello_run_args());
        args.extend(["--label".to_owned(), "portolan-bench=stack".to_owned(), e2e::image("hello")]);
        let id = crate::docker::docker(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        let host: String = id.chars().take(12).collect();
        let (mut in_consul, mut in_haproxy) = (None, None);
        let t0 = Instant::now();
        while in_consul.is_none() || in_haproxy.is_none() {
            if in_consul.is_none() {
                let entries = consul.health_service("hello", 0, Duration::ZERO).await?;
                if entries.value.iter().any(|e| e.service.meta.get("registrator_container") == Some(&id)) {
                    in_consul = Some(SystemTime::now());
                }
            }
            match stack.get("/hello").await {
                Answer::Host(h) if h == host => {
                    in_haproxy.get_or_insert_with(SystemTime::now);
                }
                Answer::Host(_) => {}
                _ => failed += 1,
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("probe {i} not routed within 20 s");
            }
        }
        let started = event("start", &id, Duration::from_secs(5)).await?;
        to_consul.push(in_consul.unwrap().duration_since(started).unwrap_or_default());
        to_haproxy.push(in_haproxy.unwrap().duration_since(started).unwrap_or_default());

        // Stop it under requests; note the last answer it gives through HAProxy.
        let stop = tokio::task::spawn_blocking({
            let name = name.clone();
            move || crate::docker::docker(&["stop", "-t", "10", &name])
        });
        let mut last = None;
        let t1 = Instant::now();
        while t1.elapsed() < Duration::from_millis(2500) {
            match stack.get("/hello").await {
                Answer::Host(h) if h == host => last = Some(SystemTime::now()),
                Answer::Host(_) => {}
                _ => failed += 1,
            }
        }
        stop.await?.context("docker stop")?;
        let killed = event("kill", &id, Duration::from_secs(5)).await?;
        to_last.push(last.and_then(|l| l.duration_since(killed).ok()).unwrap_or_default());
        let _ = crate::docker::docker(&["rm", "-f", &name]);
    }
    recorder.abort();
    let results = Results {
        start_to_consul: Summary::of(&to_consul),
        start_to_haproxy: Summary::of(&to_haproxy),
        kill_to_last_routed: Summary::of(&to_last),
        failed_requests: failed,
    };
    eprintln!("[stack] start → Consul: {}", results.start_to_consul);
    eprintln!("[stack] start → answering through HAProxy: {}", results.start_to_haproxy);
    eprintln!("[stack] kill → last request routed to it: {}", results.kill_to_last_routed);
    eprintln!("[stack] failed requests: {}", results.failed_requests);
    Ok(results)
}

/// Records Docker's container events: (action, container ID) → time.
async fn record(events: Arc<Mutex<HashMap<(String, String), SystemTime>>>) {
    let Ok(engine) = registrator::docker::Engine::connect() else { return };
    let mut stream = Box::pin(engine.events(None));
    while let Some(Ok(ev)) = stream.next().await {
        let (Some(action), Some(actor), Some(nanos)) = (ev.action, ev.actor, ev.time_nano) else { continue };
        let Some(id) = actor.id else { continue };
        let action = action.split(':').next().unwrap_or_default().to_owned();
        events
            .lock()
            .unwrap()
            .entry((action, id))
            .or_insert(UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or_default()));
    }
}
