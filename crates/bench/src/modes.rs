//! Zero loss under change, on the whole compose stack: under steady load
//! through HAProxy, the demo service is scaled 1 → 10 → 1 with
//! `docker compose up --scale` while a second service appears and goes,
//! once per cycle. The same run is made three ways, each on a stack of its
//! own built from the same images (so the same HAProxy build):
//!
//! - `runtime`: haproxy-sync's default (runtime API for instances,
//!   master-worker reload for structure);
//! - `reload`: a master-worker reload for every change (`--apply reload`);
//! - `sf`: the replaced stack's way: no master process; every change
//!   re-renders the file and runs `haproxy -D -f … -sf <old pid>`, as
//!   Consul Template's `command` did.
//!
//! Two loads run side by side: a closed loop of a few connections (as many
//! requests as the machine answers) and an open loop at a fixed rate, the
//! same in every run so the three can be compared request for request.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use e2e::{Answer, Stack};
use serde::{Deserialize, Serialize};
use testkit::stable_port;

use crate::docker::docker;
use crate::load::{Load, Outcome};

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Cycles of: scale 1 → 10, a new service appears, scale 10 → 1, it goes.
    #[arg(long, default_value_t = 10)]
    pub cycles: usize,
    /// Connections of the closed-loop load.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Requests per second of the fixed-rate load.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Run {
    pub mode: String,
    /// The closed-loop load.
    pub max: Outcome,
    pub connections: usize,
    /// The fixed-rate load.
    pub fixed: Outcome,
    pub rate: u32,
    pub reloads: f64,
    pub runtime_applies: f64,
    pub seconds: f64,
    /// Seconds since the loads started, and what happened.
    pub events: Vec<(f64, String)>,
}

const MODES: [&str; 3] = ["runtime", "reload", "sf"];
const TEMPLATE: &str = include_str!("../../../haproxy/haproxy.cfg.hbs");

pub async fn run(opts: &Opts, out: &Path) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for mode in MODES {
        let run = one(mode, opts, out).await?;
        eprintln!(
            "[apply-modes] {mode:>7}: closed loop {} requests, {} failed; {} req/s {} requests, {} failed \
             (p99 {:.1} ms); {} reloads, {} runtime applies",
            run.max.requests,
            run.max.failed,
            run.rate,
            run.fixed.requests,
            run.fixed.failed,
            run.fixed.latency_p99_ms,
            run.reloads,
            run.runtime_applies
        );
        runs.push(run);
    }
    Ok(runs)
}

/// The compose file laid over the stack's for `mode`: haproxy-sync's
/// metrics on a loopback port, and the mode's way of applying.
fn override_file(mode: &str, metrics: u16, out: &Path) -> anyhow::Result<std::path::PathBuf> {
    let out = out.canonicalize()?;
    let mut haproxy = serde_json::json!({ "ports": [format!("127.0.0.1:{metrics}:9090")] });
    match mode {
        "runtime" => {}
        "reload" => haproxy["command"] = serde_json::json!(["consul://consul:8500", "--apply", "reload"]),
        _ => {
            // No master process: each change starts a new HAProxy that takes
            // over from the old one. ($$ is a $ once compose has read it.)
            let classic = TEMPLATE.replace("    master-worker\n", "").replace(" expose-fd listeners", "");
            let template = out.join("classic.hbs");
            std::fs::write(&template, classic)?;
            let (cfg, pid) = ("/var/lib/haproxy-sync/haproxy.cfg", "/var/run/haproxy-sync/haproxy.pid");
            let command =
                format!("p=; {{ read p < {pid}; }} 2>/dev/null; exec haproxy -D -f {cfg} -p {pid} $${{p:+-sf $$p}}");
            haproxy["entrypoint"] = serde_json::json!(["tini", "--", "haproxy-sync"]);
            haproxy["command"] = serde_json::json!([
                "consul://consul:8500",
                "--apply",
                "reload",
                "--template",
                "/etc/haproxy-sync/classic.hbs",
                "--command",
                command
            ]);
            // The image has no shell and `--command` runs one: the host's
            // dash is lent to it (it needs only the image's glibc).
            haproxy["volumes"] = serde_json::json!([
                format!("{}:/etc/haproxy-sync/classic.hbs:ro", template.display()),
                format!("{}:/usr/bin/sh:ro", host_shell()?.display()),
            ]);
        }
    }
    // JSON is YAML: compose reads it as such.
    let path = out.join(format!("apply-{mode}.compose.yml"));
    std::fs::write(&path, serde_json::to_string_pretty(&serde_json::json!({ "services": { "haproxy": haproxy } }))?)?;
    Ok(path)
}

/// A POSIX shell of the host that loads only glibc (Debian's dash), for a
/// container whose image has none.
fn host_shell() -> anyhow::Result<std::path::PathBuf> {
    ["/usr/bin/dash", "/bin/dash"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("no dash on this host (apt-get install dash)"))
}

/// A container beside the stack, removed when dropped.
struct Beside(String);

impl Drop for Beside {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

async fn one(mode: &'static str, opts: &Opts, out: &Path) -> anyhow::Result<Run> {
    let metrics = stable_port();
    let stack = Stack::new(&format!("modes-{mode}")).with_override(override_file(mode, metrics, out)?);
    tokio::task::block_in_place(|| stack.up(1));
    let t0 = std::time::Instant::now();
    while !matches!(stack.get("/hello").await, Answer::Host(_)) {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("{mode}: /hello not routed 30 s after the stack was up\n{}", stack.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metric = |sample: &'static str| crate::haproxy::metric(metrics, sample);
    let reloads0 = metric("haproxy_sync_applies_total{kind=\"reload\"}").await;
    let runtime0 = metric("haproxy_sync_applies_total{kind=\"runtime\"}").await;

    let url = format!("http://127.0.0.1:{}/hello", stack.http_port);
    let max = Load::closed(&url, opts.connections);
    let fixed = Load::rate(&url, opts.rate);
    let mut events = Vec::new();
    let scale = |n: usize| {
        tokio::task::block_in_place(|| {
            stack.compose(&["up", "-d", "--no-recreate", "--scale", &format!("hello={n}"), "hello"]);
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    for cycle in 0..opts.cycles {
        events.push((max.elapsed(), "scale 1→10".to_owned()));
        scale(10);
        tokio::time::sleep(Duration::from_millis(500)).await;

        events.push((max.elapsed(), "new service".to_owned()));
        let other = Beside(format!("{}-other-{cycle}", stack.project));
        let service = format!("SERVICE_NAME=other{cycle}");
        let network = stack.network();
        let hello = e2e::image("hello");
        #[rustfmt::skip]
        let args = ["run", "-d", "--name", &other.0, "--network", &network, "-e", &service,
            "-e", "SERVICE_TAGS=rest", "-e", "SERVICE_LB_CHECK_PATH=/health", "-e", "DRAIN_SECONDS=1",
            &hello];
        tokio::task::block_in_place(|| docker(&args)).context("start the new service")?;
        tokio::time::sleep(Duration::from_millis(500)).await;

        events.push((max.elapsed(), "scale 10→1".to_owned()));
        scale(1);
        tokio::time::sleep(Duration::from_millis(300)).await;

        events.push((max.elapsed(), "service gone".to_owned()));
        tokio::task::block_in_place(|| docker(&["stop", "-t", "5", &other.0])).context("stop the new service")?;
        drop(other);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seconds = max.elapsed();
    let (max, fixed) = (max.stop().await, fixed.stop().await);
    Ok(Run {
        mode: mode.to_owned(),
        max,
        connections: opts.connections,
        fixed,
        rate: opts.rate,
        reloads: metric("haproxy_sync_applies_total{kind=\"reload\"}").await - reloads0,
        runtime_applies: metric("haproxy_sync_applies_total{kind=\"runtime\"}").await - runtime0,
        seconds,
        events,
    })
}
