//! Instances killed under load, two ways on the same run: under a steady
//! closed-loop GET load through HAProxy on the whole compose stack,
//! containers of the demo image are SIGKILLed one after another (no
//! draining: `docker kill -s KILL`, as the faults suite's churn does) and
//! each is replaced by a new one at once, as `docker compose up --scale`
//! would. The same run is made with the default template's retries and
//! with the retry lines of the release before them, each on a stack of its
//! own from the same images (so the same HAProxy build), through
//! `haproxy-sync --template`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::Stack;
use serde::{Deserialize, Serialize};

use crate::docker::docker;
use crate::load::{Load, Outcome};

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Instances of the demo service running at any time.
    #[arg(long, default_value_t = 8)]
    pub instances: usize,
    /// Instances SIGKILLed (each replaced by a new one).
    #[arg(long, default_value_t = 24)]
    pub kills: usize,
    /// Milliseconds between two kills.
    #[arg(long, default_value_t = 1000)]
    pub every_ms: u64,
    /// Connections of the closed-loop GET load.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Run {
    /// `retries` (the default template) or `before` (its retry lines as they were).
    pub template: String,
    /// The template's retry directives.
    pub retry_lines: Vec<String>,
    pub instances: usize,
    pub kills: usize,
    pub every_ms: u64,
    pub connections: usize,
    pub load: Outcome,
    pub seconds: f64,
    /// HAProxy's counters for the backend over the run (its stats page):
    /// requests sent again, sent again to another server, failed
    /// connections, failed responses.
    pub retries: u64,
    pub redispatches: u64,
    pub connection_errors: u64,
    pub response_errors: u64,
}

/// Credentials of the stats page in the benchmark's stacks.
const STATS: (&str, &str) = ("bench", "bench");

const TEMPLATE: &str = include_str!("../../../haproxy/haproxy.cfg.hbs");

/// The retry line of the default template before `disable-l7-retry` came
/// (git history: `haproxy/haproxy.cfg.hbs` up to commit dce5bbf).
const RETRY_ON_BEFORE: &str = "    retry-on conn-failure empty-response response-timeout";

/// The default template with its retry lines as they were before: no
/// `disable-l7-retry`, the old `retry-on`.
fn template_before() -> anyhow::Result<String> {
    let mut lines: Vec<&str> = Vec::new();
    let (mut retry_on, mut disabled) = (0, 0);
    for line in TEMPLATE.lines() {
        if line.trim_start().starts_with("retry-on ") {
            retry_on += 1;
            lines.push(RETRY_ON_BEFORE);
        } else if line.trim_start().starts_with("http-request disable-l7-retry") {
            disabled += 1;
            // And its comment.
            if lines.last().is_some_and(|l| l.trim_start().starts_with('#')) {
                lines.pop();
            }
        } else {
            lines.push(line);
        }
    }
    if (retry_on, disabled) != (1, 1) {
        bail!(
            "the default template's retry lines moved ({retry_on} retry-on, {disabled} disable-l7-retry); update the benchmark"
        );
    }
    Ok(lines.join("\n") + "\n")
}

/// The lines of `template` that say what is retried.
fn retry_lines(template: &str) -> Vec<String> {
    let keys = ["retries ", "retry-on ", "option redispatch", "http-request disable-l7-retry", "default-server "];
    template.lines().map(str::trim).filter(|l| keys.iter().any(|k| l.starts_with(k))).map(str::to_owned).collect()
}

pub async fn run(opts: &Opts, out: &Path) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for (name, template) in [("before", template_before()?), ("retries", TEMPLATE.to_owned())] {
        let run = one(name, &template, opts, out).await?;
        eprintln!(
            "[kill] {name:>7}: {} kills, {} requests, {} failed (p99 {:.1} ms, max {:.0} ms); HAProxy: {} retries, \
             {} redispatches, {} connection errors, {} response errors",
            run.kills,
            run.load.requests,
            run.load.failed,
            run.load.latency_p99_ms,
            run.load.latency_max_ms,
            run.retries,
            run.redispatches,
            run.connection_errors,
            run.response_errors
        );
        for failure in run.load.failures.iter().take(5) {
            eprintln!("[kill] {name:>7}: {failure}");
        }
        runs.push(run);
    }
    Ok(runs)
}

/// The compose file laid over the stack's: haproxy-sync renders `template`.
pub(crate) fn override_file(name: &str, template: &str, out: &Path) -> anyhow::Result<PathBuf> {
    let out = out.canonicalize()?;
    let file = out.join(format!("kill-{name}.hbs"));
    std::fs::write(&file, template)?;
    let haproxy = serde_json::json!({
        "command": ["consul://consul:8500", "--template", "/etc/haproxy-sync/kill.hbs"],
        "volumes": [format!("{}:/etc/haproxy-sync/kill.hbs:ro", file.display())],
        "environment": { "STATS_USER": STATS.0, "STATS_PASSWORD": STATS.1 },
    });
    let path = out.join(format!("kill-{name}.compose.yml"));
    // JSON is YAML: compose reads it as such.
    std::fs::write(&path, serde_json::to_string_pretty(&serde_json::json!({ "services": { "haproxy": haproxy } }))?)?;
    Ok(path)
}

/// Starts one container of the demo image beside `stack`, registered as `hello`; its name.
fn start(stack: &Stack, n: usize) -> anyhow::Result<String> {
    let name = format!("{}-kill-{n}", stack.project);
    let network = stack.network();
    let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", &network].map(str::to_owned).to_vec();
    args.extend(e2e::hello_run_args());
    args.extend(["--label".to_owned(), "portolan-bench=kill".to_owned(), e2e::image("hello")]);
    tokio::task::block_in_place(|| docker(&args.iter().map(String::as_str).collect::<Vec<_>>()))?;
    Ok(name)
}

/// The `be_hello` backend's counters on HAProxy's stats page: retries,
/// redispatches, connection errors, response errors.
async fn counters(stack: &Stack) -> anyhow::Result<[u64; 4]> {
    let url = format!("http://127.0.0.1:{}/;csv", stack.stats_port);
    let csv = reqwest::Client::new().get(url).basic_auth(STATS.0, Some(STATS.1)).send().await?.text().await?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
    let row: Vec<&str> = lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"be_hello") && f.get(1) == Some(&"BACKEND"))
        .with_context(|| format!("no be_hello backend on the stats page:\n{csv}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let i = header.iter().position(|h| *h == name).with_context(|| format!("no {name} on the stats page"))?;
        Ok(row.get(i).and_then(|v| v.parse().ok()).unwrap_or(0))
    };
    Ok([field("wretr")?, field("wredis")?, field("econ")?, field("eresp")?])
}

async fn one(name: &str, template: &str, opts: &Opts, out: &Path) -> anyhow::Result<Run> {
    let stack = Stack::new(&format!("kill-{name}")).with_override(override_file(name, template, out)?);
    tokio::task::block_in_place(|| stack.up(0));
    let mut alive = VecDeque::new();
    for n in 0..opts.instances {
        alive.push_back(start(&stack, n)?);
    }
    // Every instance routed: as many hostnames answer as run.
    let t0 = Instant::now();
    loop {
        match stack.lb().hostnames("/hello", opts.instances * 4).await {
            Ok(seen) if seen.len() == opts.instances => break,
            _ if t0.elapsed() > Duration::from_secs(30) => {
                bail!("{name}: {} instances not all routed within 30 s\n{}", opts.instances, stack.logs())
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = counters(&stack).await?;
    let url = format!("http://127.0.0.1:{}/hello", stack.http_port);
    let load = Load::closed(&url, opts.connections);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let every = Duration::from_millis(opts.every_ms);
    for k in 0..opts.kills {
        let next = Instant::now() + every;
        let victim = alive.pop_front().context("no instance left to kill")?;
        tokio::task::block_in_place(|| docker(&["kill", "-s", "KILL", &victim]))?;
        alive.push_back(start(&stack, opts.instances + k)?);
        tokio::time::sleep_until(next.into()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seconds = load.elapsed();
    let load = load.stop().await;
    let after = counters(&stack).await?;
    let [retries, redispatches, connection_errors, response_errors] =
        std::array::from_fn(|i| after[i].saturating_sub(before[i]));
    Ok(Run {
        template: name.to_owned(),
        retry_lines: retry_lines(template),
        instances: opts.instances,
        kills: opts.kills,
        every_ms: opts.every_ms,
        connections: opts.connections,
        load,
        seconds,
        retries,
        redispatches,
        connection_errors,
        response_errors,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_template_before_has_the_old_retry_lines_and_nothing_else_changed() {
        let before = template_before().unwrap();
        assert!(before.contains(&format!("{RETRY_ON_BEFORE}\n")));
        assert!(!before.contains("http-request disable-l7-retry"));
        let (old, new) = (retry_lines(&before), retry_lines(TEMPLATE));
        assert_ne!(old, new);
        // Only the retry lines (and the comment of the rule) differ.
        let removed = TEMPLATE.lines().filter(|l| !before.lines().any(|b| b == *l)).count();
        assert_eq!(removed, 3, "{before}");
    }
}
