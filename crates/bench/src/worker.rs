//! HAProxy's worker SIGKILLed under load, two ways on the same run: with the
//! default template, whose HTTP frontend binds the listener haproxy-keeper
//! holds (`fd@`), and with a template that has HAProxy bind the port itself,
//! as before. Each on a stack of its own from the same images. A worker
//! dies; its master exits with its last worker and haproxy-keeper starts
//! HAProxy again; the question is how many requests fail meanwhile, against
//! how many were in flight (one per connection of the closed-loop load).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::Stack;
use serde::{Deserialize, Serialize};

use crate::load::{Load, Outcome};

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Workers SIGKILLed, one at a time, each once the one before was replaced.
    #[arg(long, default_value_t = 5)]
    pub kills: usize,
    /// Connections of the closed-loop GET load: at most this many requests in flight.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Instances of the demo service.
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Run {
    /// `held` (the listener haproxy-keeper holds) or `own` (HAProxy binds it).
    pub listener: String,
    pub kills: usize,
    pub connections: usize,
    pub load: Outcome,
    pub seconds: f64,
    /// Per kill: from the kill to a new worker running, ms.
    pub replaced_ms: Vec<f64>,
}

const TEMPLATE: &str = include_str!("../../../haproxy/haproxy.cfg.hbs");

/// The default template with HAProxy binding the HTTP port itself.
fn template_own_bind() -> anyhow::Result<String> {
    let held = TEMPLATE
        .lines()
        .find(|l| l.trim_start().starts_with("bind \"${HAPROXY_SYNC_HTTP_LISTENER-"))
        .context("the default template's HTTP bind line moved; update the benchmark")?;
    Ok(TEMPLATE.replace(held, "    bind {{bind}}:{{http_port}}"))
}

pub async fn run(opts: &Opts, out: &Path) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for (name, template) in [("own", template_own_bind()?), ("held", TEMPLATE.to_owned())] {
        let run = one(name, &template, opts, out).await?;
        eprintln!(
            "[worker] {name:>4}: {} worker kills, {} requests, {} failed ({} connections; max latency {:.0} ms); \
             replaced in {:?} ms",
            run.kills, run.load.requests, run.load.failed, run.connections, run.load.latency_max_ms, run.replaced_ms
        );
        for failure in run.load.failures.iter().take(3) {
            eprintln!("[worker] {name:>4}: {failure}");
        }
        runs.push(run);
    }
    Ok(runs)
}

async fn one(name: &str, template: &str, opts: &Opts, out: &Path) -> anyhow::Result<Run> {
    let stack = Stack::new(&format!("worker-{name}")).with_override(crate::kill::override_file(
        &format!("worker-{name}"),
        template,
        out,
    )?);
    tokio::task::block_in_place(|| stack.up(opts.instances));
    let t0 = Instant::now();
    loop {
        match stack.lb().hostnames("/hello", opts.instances * 4).await {
            Ok(seen) if seen.len() == opts.instances => break,
            _ if t0.elapsed() > Duration::from_secs(30) => bail!("{name}: not all routed in 30 s\n{}", stack.logs()),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    let url = format!("http://127.0.0.1:{}/hello", stack.http_port);
    let load = Load::closed(&url, opts.connections);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut replaced_ms = Vec::new();
    for _ in 0..opts.kills {
        let before = tokio::task::block_in_place(|| stack.haproxy_workers());
        let Some(victim) = before.first() else { bail!("{name}: no HAProxy worker") };
        let killed = Instant::now();
        std::process::Command::new("kill").args(["-9", &victim.to_string()]).status()?;
        loop {
            let now = tokio::task::block_in_place(|| stack.haproxy_workers());
            if now.iter().any(|p| !before.contains(p)) {
                replaced_ms.push(killed.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if killed.elapsed() > Duration::from_secs(20) {
                bail!("{name}: no new HAProxy worker 20 s after the kill\n{}", stack.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Serving again for a while before the next kill.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let seconds = load.elapsed();
    let load = load.stop().await;
    Ok(Run { listener: name.to_owned(), kills: opts.kills, connections: opts.connections, load, seconds, replaced_ms })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_own_bind_template_differs_in_the_bind_line_only() {
        let own = template_own_bind().unwrap();
        assert!(!own.contains("HAPROXY_SYNC_HTTP_LISTENER"));
        assert!(own.contains("    bind {{bind}}:{{http_port}}\n"));
        assert_eq!(own.lines().count(), TEMPLATE.lines().count());
    }
}
