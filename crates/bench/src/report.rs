//! The footprint scenario and `bench/REPORT.md`, written from the JSON
//! results of the other scenarios, with plots beside it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use testkit::stable_port;

use crate::stats::rss_mib;

#[derive(Debug, Default, Serialize)]
pub struct Footprint {
    pub demo_service_rss_mib: f64,
    /// Image name and size in MB, where the image exists locally.
    pub images: Vec<(String, f64)>,
    /// How long each image takes to start and answer its health check.
    pub startup: Vec<crate::startup::Startup>,
}

/// How many times each image is started for [`Footprint::startup`].
const STARTS: usize = 5;

/// Idle memory of the demo service, the sizes of the stack's images and
/// how fast each starts.
pub async fn footprint(bin_dir: &Path) -> anyhow::Result<Footprint> {
    let port = stable_port();
    let mut demo = Command::new(bin_dir.join("demo-service"))
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = reqwest::get(format!("http://127.0.0.1:{port}/")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let demo_service_rss_mib = rss_mib(demo.id()).unwrap_or_default();
    let _ = demo.kill();
    let _ = demo.wait();
    let mut images = Vec::new();
    for image in ["registrator", "haproxy", "hello"].map(e2e::image) {
        let out = Command::new("docker").args(["image", "inspect", "-f", "{{.Size}}", &image]).output()?;
        if let Ok(bytes) = String::from_utf8_lossy(&out.stdout).trim().parse::<f64>() {
            images.push((image, bytes / 1e6));
        }
    }
    eprintln!("[footprint] demo-service RSS {demo_service_rss_mib:.1} MiB; images {images:?}");
    let startup = crate::startup::run(STARTS).await?;
    Ok(Footprint { demo_service_rss_mib, images, startup })
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_default()
}

/// One plot row per entry of `entries`: its size, then the figures `keys`.
fn growth_rows(entries: &Value, size: fn(&Value) -> f64, keys: &[&str]) -> Vec<(f64, Vec<f64>)> {
    entries.as_array().into_iter().flatten().map(|e| (size(e), keys.iter().map(|k| num(e, k)).collect())).collect()
}

fn read(out: &Path, name: &str) -> Value {
    std::fs::read_to_string(out.join(format!("{name}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The largest of a list of numbers.
fn slowest(v: &Value) -> Value {
    v.as_array().into_iter().flatten().filter_map(Value::as_f64).fold(f64::NAN, f64::max).into()
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or_else(|| "–".to_owned(), |x| if x >= 100.0 { format!("{x:.0} ms") } else { format!("{x:.1} ms") })
}

fn pcts(v: &Value) -> String {
    format!(
        "p50 {}, p90 {}, p99 {}, max {} (n={})",
        ms(&v["p50_ms"]),
        ms(&v["p90_ms"]),
        ms(&v["p99_ms"]),
        ms(&v["max_ms"]),
        v["n"]
    )
}

/// A histogram panel titled with the figure that matters: "name: p50 …, p99 … (n=…)".
fn histogram<'a>(name: &str, v: &'a Value) -> crate::plot::Histogram<'a> {
    let title = match v["n"].as_u64().unwrap_or(0) {
        0 => format!("{name}: no samples"),
        n => format!("{name}: p50 {}, p99 {} (n={n})", ms(&v["p50_ms"]), ms(&v["p99_ms"])),
    };
    crate::plot::Histogram { title, summary: v }
}

/// A growth panel's title: `name`, then figure `i` at the largest size.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "rounded non-negative figures for a title")]
fn at_largest(name: &str, rows: &[(f64, Vec<f64>)], i: usize, unit: &str, what: &str) -> String {
    let Some((size, figures)) = rows.iter().max_by(|a, b| a.0.total_cmp(&b.0)) else {
        return format!("{name}: no runs");
    };
    let v = figures.get(i).copied().unwrap_or_default();
    let v = if v >= 100.0 { crate::plot::thousands(v.round() as u64) } else { format!("{v:.1}") };
    format!("{name}: {v} {unit} at {} {what}", crate::plot::thousands(*size as u64))
}

/// A growth panel's title: `name`, then figure `i` over every size, "5" or "6 to 7".
fn over_all(name: &str, rows: &[(f64, Vec<f64>)], i: usize) -> String {
    let values = rows.iter().filter_map(|r| r.1.get(i).copied());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        format!("{name}: no runs")
    } else if lo == hi {
        format!("{name}: {lo} at every size")
    } else {
        format!("{name}: {lo} to {hi}")
    }
}

fn list(v: &Value) -> String {
    let items: Vec<String> = v.as_array().into_iter().flatten().map(Value::to_string).collect();
    if items.is_empty() { "–".into() } else { items.join(", ") }
}

fn across_hosts(md: &mut String, h: &Value, dir: &Path) -> anyhow::Result<()> {
    writeln!(md, "## Across hosts (`portolan-bench hosts`)\n")?;
    writeln!(
        md,
        "Docker hosts made by `scripts/hosts` (each a network namespace with its own address and Docker engine, on one bridge as a LAN). \
         Three hosts run `compose/cluster.yml`: a Consul server on each, `hello` on hosts 2 and 3 registered by each host's registrator at the host's address, \
         load balancers on hosts 1 and 2, each reading its own host's agent. Two more make a Swarm running `compose/stack.yml`. \
         Load: closed-loop clients through host 1's load balancer (4 while a host is cut, 2 per load balancer while the leader is killed, 1 while Swarm scales). \
         Start times are the engine's `start` events; an instance counts as answering at the first request it answers through the load balancer (polled every 5 ms).\n"
    )?;
    writeln!(md, "| Figure | Measured | Target |\n|---|---|---|")?;
    writeln!(
        md,
        "| container started on host 3 (`docker run -p :80`) → answering through the load balancer on host 1 | {} | p50 ≤ 100 ms, p99 ≤ 250 ms |",
        pcts(&h["start_to_routed"])
    )?;
    writeln!(
        md,
        "| host 3 cut off → its last answer through the load balancer (0: none after the cut) | {} | ≤ 2 s |",
        pcts(&h["cut_to_last_answer"])
    )?;
    writeln!(
        md,
        "| requests failed when host 3 was cut off (of all sent in each run); each client has one request in flight, and one HAProxy had sent to host 3 waits until the client gives up (5 s) | {} (of {}) | at most those in flight (4 clients) |",
        list(&h["cut_failed"]),
        list(&h["cut_requests"])
    )?;
    writeln!(
        md,
        "| host 3 cut off → Consul's node check not passing | {} | after HAProxy's checks |",
        pcts(&h["cut_to_consul_not_passing"])
    )?;
    writeln!(
        md,
        "| host 3 plugged back → Consul's node check passing | {} | (Consul's gossip) |",
        pcts(&h["mend_to_consul_passing"])
    )?;
    writeln!(
        md,
        "| Consul's node check passing → host 3's instance answering again | {} | ≤ 2 s |",
        pcts(&h["passing_to_routed"])
    )?;
    writeln!(
        md,
        "| Consul leader killed: requests failed (of all sent) | {} (of {}) | 0 |",
        list(&h["leader_failed"]),
        list(&h["leader_requests"])
    )?;
    writeln!(md, "| Consul leader killed → a new leader | {} | |", pcts(&h["leader_to_new_leader"]))?;
    writeln!(
        md,
        "| Swarm: `docker service scale` 1 → 4, each new task's `start` → answering | {} | p99 ≤ 500 ms (Traefik polls Swarm every 15 s) |",
        pcts(&h["swarm_start_to_routed"])
    )?;
    writeln!(
        md,
        "| Swarm: requests failed while scaling 1 → 4 → 1 (of all sent) | {} (of {}) | 0 |\n",
        h["swarm_failed"], h["swarm_requests"]
    )?;
    crate::plot::latency_histogram(
        "Across hosts: container start → answering through the load balancer",
        &[
            histogram("start on host 3 → routed on host 1", &h["start_to_routed"]),
            histogram("Swarm task start → routed", &h["swarm_start_to_routed"]),
        ],
        &dir.join("hosts-latency.png"),
    )?;
    writeln!(md, "![across hosts: latency histograms](hosts-latency.png)\n")?;
    Ok(())
}

/// The section of `portolan-bench kill`: failed requests with the template's retries and with those before.
fn killed(md: &mut String, runs: &Value) -> anyhow::Result<()> {
    let runs: Vec<crate::kill::Run> = serde_json::from_value(runs.clone())?;
    writeln!(md, "## Instances SIGKILLed under load (`portolan-bench kill`)\n")?;
    if let Some(r) = runs.first() {
        writeln!(
            md,
            "The whole compose stack with {} containers of the demo image beside it. Under a closed-loop GET load of {} \
             connections through HAProxy, {} instances are SIGKILLed one after another, the oldest first, one every {} ms \
             (`docker kill -s KILL`: no draining), each replaced by a new one at once. The same run twice, each on a stack \
             of its own from the same images (the same HAProxy): with the default template, and with its retry lines as \
             they were before (`haproxy-sync --template`). HAProxy's counters for the backend (its stats page) show what \
             the kills did: a response error is a request an instance died with, a retry a request sent again, a \
             redispatch one sent to a server chosen anew.\n",
            r.instances, r.connections, r.kills, r.every_ms
        )?;
    }
    writeln!(
        md,
        "| Retries | Requests | Failed | p99 | max | HAProxy: retries / redispatches | connection / response errors |\n|---|---|---|---|---|---|---|"
    )?;
    for r in &runs {
        let what = if r.template == "before" { "before (the release's)" } else { "the default template" };
        writeln!(
            md,
            "| {what}: `{}` | {} | **{}** | {:.1} ms | {:.0} ms | {} / {} | {} / {} |",
            r.retry_lines.iter().filter(|l| !l.starts_with("default-server")).cloned().collect::<Vec<_>>().join("`, `"),
            r.load.requests,
            r.load.failed,
            r.load.latency_p99_ms,
            r.load.latency_max_ms,
            r.retries,
            r.redispatches,
            r.connection_errors,
            r.response_errors
        )?;
    }
    writeln!(md, "\nTarget: 0 failed GETs with the default template.\n")?;
    for r in runs.iter().filter(|r| r.load.failed > 0) {
        let first: Vec<String> = r.load.failures.iter().take(5).map(|f| format!("`{f}`")).collect();
        writeln!(md, "First failures, {}: {}\n", r.template, first.join(", "))?;
    }
    Ok(())
}

/// The section of `portolan-bench worker`: HAProxy's worker SIGKILLed, with the held listener and without.
fn worker_killed(md: &mut String, runs: &Value) -> anyhow::Result<()> {
    let runs: Vec<crate::worker::Run> = serde_json::from_value(runs.clone())?;
    writeln!(md, "## HAProxy's worker SIGKILLed under load (`portolan-bench worker`)\n")?;
    if let Some(r) = runs.first() {
        writeln!(
            md,
            "The whole compose stack. Under a closed-loop GET load of {} connections (so at most {} requests in flight), \
             HAProxy's worker in the haproxy container is SIGKILLed {} times, each once the one before was replaced. \
             HAProxy's master exits with its last worker and haproxy-keeper starts HAProxy again. The same run twice, \
             each on a stack of its own from the same images: with the default template, whose HTTP frontend binds the \
             listening socket haproxy-keeper holds (`fd@`), so connections wait in the kernel's queue for the next \
             worker; and with HAProxy binding the port itself, as before.\n",
            r.connections, r.connections, r.kills
        )?;
    }
    writeln!(
        md,
        "| HTTP listener | Kills | Requests | Failed | In flight at each kill (at most) | max latency | kill → new worker (p50, max) |\n|---|---|---|---|---|---|---|"
    )?;
    for r in &runs {
        let what = if r.listener == "held" { "held by haproxy-keeper (default)" } else { "bound by HAProxy (before)" };
        let mut replaced = r.replaced_ms.clone();
        replaced.sort_by(f64::total_cmp);
        let p50 = replaced.get(replaced.len() / 2).copied().unwrap_or_default();
        let max = replaced.last().copied().unwrap_or_default();
        writeln!(
            md,
            "| {what} | {} | {} | **{}** | {} | {:.0} ms | {p50:.0} ms, {max:.0} ms |",
            r.kills, r.load.requests, r.load.failed, r.connections, r.load.latency_max_ms
        )?;
    }
    writeln!(
        md,
        "\nTarget: failed ≤ the requests in flight on the worker (here at most {} per kill).\n",
        runs.first().map_or(0, |r| r.connections)
    )?;
    Ok(())
}

/// The section of `portolan-bench tls`: HTTPS against plain HTTP, and certificates renewed under load.
fn tls(md: &mut String, results: &Value) -> anyhow::Result<()> {
    let r: crate::tls::Results = serde_json::from_value(results.clone())?;
    writeln!(md, "## TLS (`portolan-bench tls`)\n")?;
    writeln!(
        md,
        "The whole compose stack with 2 demo instances and a certificate made by a test CA in its certificate \
         directory. Requests per second through HAProxy for {} s each, {} closed-loop connections, one kind after \
         another on the same stack: plain HTTP and HTTPS, with keep-alive and with a new connection (so, for HTTPS, \
         a full handshake) per request.\n",
        r.seconds, r.connections
    )?;
    writeln!(
        md,
        "| Connections | HTTP requests/s | HTTPS requests/s | HTTPS / HTTP | HTTP p50 / p99 | HTTPS p50 / p99 | failed |\n|---|---|---|---|---|---|---|"
    )?;
    for keep_alive in [true, false] {
        let find = |scheme: &str| r.throughput.iter().find(|t| t.scheme == scheme && t.keep_alive == keep_alive);
        if let (Some(http), Some(https)) = (find("http"), find("https")) {
            writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {} / {} |",
                if keep_alive { "keep-alive" } else { "one per request" },
                http.requests_per_second,
                https.requests_per_second,
                https.requests_per_second / http.requests_per_second.max(1e-9),
                http.load.latency_p50_ms,
                http.load.latency_p99_ms,
                https.load.latency_p50_ms,
                https.load.latency_p99_ms,
                http.load.failed,
                https.load.failed
            )?;
        }
    }
    writeln!(
        md,
        "\nThen {} renewals of that certificate, one after another, each a new file renamed over the old one \
         (as a secret update does), under an HTTPS load of 2 connections, a new connection per request. Served: \
         the first new handshake showing the new certificate.\n",
        r.renewals
    )?;
    writeln!(md, "| Figure | Measured | Target |\n|---|---|---|")?;
    writeln!(
        md,
        "| certificate renewed → served | p50 {:.0} ms, max {:.0} ms (n={}) | ≤ 100 ms |",
        r.renewed_to_served.p50_ms, r.renewed_to_served.max_ms, r.renewed_to_served.n
    )?;
    writeln!(md, "| reloads over the renewals | {} | 0 |", r.reloads)?;
    writeln!(
        md,
        "| failed HTTPS requests over the renewals | {} of {} | 0 |\n",
        r.renewal_load.failed, r.renewal_load.requests
    )?;
    Ok(())
}

/// Writes `report` (Markdown) and its plots into `dir`, from the results in `out`.
pub fn write(out: &Path, dir: &Path, command: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let (reg, hs, modes, foot) =
        (read(out, "registrator"), read(out, "haproxy-sync"), read(out, "apply-modes"), read(out, "footprint"));
    let stack = read(out, "stack");
    let mut md = String::new();
    writeln!(md, "# Benchmark report\n")?;
    writeln!(md, "Written by `{command}` on {}.\n", sh("date -u '+%Y-%m-%d %H:%M UTC'"))?;
    writeln!(md, "## Machine\n")?;
    writeln!(md, "- {}", sh("uname -srm"))?;
    writeln!(
        md,
        "- {} CPUs ({}), {}",
        sh("nproc"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs"),
        sh("grep MemTotal /proc/meminfo | xargs")
    )?;
    writeln!(md, "- {}", sh("docker version --format 'Docker {{.Server.Version}}'"))?;
    writeln!(md, "- {}", sh("haproxy -v | head -1"))?;
    writeln!(md, "- {}\n", sh("consul version | head -1"))?;
    writeln!(
        md,
        "Reproduce with `scripts/bench` (every scenario at these sizes), or one scenario with `scripts/bench <registrator|haproxy-sync|apply-modes|stack|kill|worker|tls|hosts|footprint>` and then `scripts/bench report`. Raw results: `bench/out/*.json`.\n"
    )?;
    writeln!(
        md,
        "Everything runs on this one machine: Consul dev agents and HAProxy on loopback, containers on Docker networks of the run's own, load from the benchmark process itself; across hosts, Docker hosts made on this machine as network namespaces with engines of their own.\n",
    )?;
    if let Some(seconds) = read(out, "run")["scenarios_seconds"].as_f64() {
        writeln!(
            md,
            "Every scenario, one after another, took {:.1} minutes (building and preparing come before).\n",
            seconds / 60.0
        )?;
    }

    if !stack.is_null() {
        writeln!(md, "## The whole stack (`portolan-bench stack`)\n")?;
        writeln!(
            md,
            "The compose stack (its images, Consul in a container) as project `portolan-bench`; containers of the demo image started and stopped one at a time while the benchmark sends requests to HAProxy's published port.\n"
        )?;
        writeln!(md, "| Figure | Measured |\n|---|---|")?;
        writeln!(md, "| Docker `start` event → instance in Consul | {} |", pcts(&stack["start_to_consul"]))?;
        writeln!(
            md,
            "| Docker `start` event → instance answering through HAProxy | {} |",
            pcts(&stack["start_to_haproxy"])
        )?;
        writeln!(
            md,
            "| `docker stop`: `kill` event → last request HAProxy routed to it | {} |",
            pcts(&stack["kill_to_last_routed"])
        )?;
        writeln!(md, "| failed requests during all of it | {} |\n", stack["failed_requests"])?;
        crate::plot::latency_histogram(
            &format!("Whole stack, one container at a time: {} failed requests", stack["failed_requests"]),
            &[
                histogram("Docker start → through HAProxy", &stack["start_to_haproxy"]),
                histogram("kill → last request routed to it", &stack["kill_to_last_routed"]),
            ],
            &dir.join("stack-latency.png"),
        )?;
        writeln!(md, "![whole-stack latency histograms](stack-latency.png)\n")?;
    }
    let kill = read(out, "kill");
    if kill.is_array() {
        killed(&mut md, &kill)?;
    }
    let worker = read(out, "worker");
    if worker.is_array() {
        worker_killed(&mut md, &worker)?;
    }
    let tls_results = read(out, "tls");
    if tls_results.is_object() {
        tls(&mut md, &tls_results)?;
    }
    let hosts = read(out, "hosts");
    if !hosts.is_null() {
        across_hosts(&mut md, &hosts, dir)?;
    }
    if !reg.is_null() {
        writeln!(md, "## registrator (`portolan-bench registrator`)\n")?;
        writeln!(md, "| Figure | Measured | Target |\n|---|---|---|")?;
        writeln!(
            md,
            "| Docker `start` event → in Consul's health API | {} | p50 ≤ 10 ms, p99 ≤ 50 ms |",
            pcts(&reg["start_to_consul"])
        )?;
        for r in reg["resyncs"].as_array().into_iter().flatten() {
            writeln!(
                md,
                "| {} running containers: registrator started against an empty Consul → all in Consul | {} (resync itself {}), RSS {:.1} MiB | ≤ 2 s at 200 |",
                r["running"],
                ms(&r["cold_resync_ms"]),
                ms(&r["resync_internal_ms"]),
                r["rss_mib"].as_f64().unwrap_or_default()
            )?;
        }
        writeln!(
            md,
            "| {} killed at once → Consul matches | {} (Docker took {} to carry out the kills) | ≤ 1 s |",
            reg["killed"],
            ms(&reg["kill_converge_ms"]),
            ms(&reg["kill_requests_ms"])
        )?;
        writeln!(md, "| each `kill` event → service gone from Consul | {} | |", pcts(&reg["kill_to_gone"]))?;
        let refused = &reg["refused"];
        writeln!(
            md,
            "| a container Consul refuses (script check, watched {:.0} s): registration requests for it | {} in its first minute, {} a minute after; {} log line(s) | ≤ 2 a minute after the first |",
            refused["watched_s"].as_f64().unwrap_or_default(),
            refused["attempts_first_minute"],
            refused["attempts_per_minute_after"].as_f64().map_or("–".to_owned(), |v| format!("{v:.1}")),
            refused["log_lines"]
        )?;
        writeln!(
            md,
            "| Docker `start` → in Consul for other containers meanwhile | {} | no effect (compare the first row) |",
            pcts(&refused["start_to_consul_beside"])
        )?;
        writeln!(
            md,
            "| idle RSS | {:.1} MiB empty, {:.1} MiB loaded | ≤ 15 MB |\n",
            reg["rss_idle_empty_mib"].as_f64().unwrap_or_default(),
            reg["rss_idle_loaded_mib"].as_f64().unwrap_or_default()
        )?;
        let rows = growth_rows(&reg["resyncs"], |r| num(r, "running"), &["cold_resync_ms", "rss_mib"]);
        let panels = [
            crate::plot::GrowthPanel {
                title: at_largest("start → all in Consul", &rows, 0, "ms", "containers"),
                y_desc: "registrator start → all in Consul (ms)",
                series: "measured, against an empty Consul",
            },
            crate::plot::GrowthPanel {
                title: at_largest("registrator RSS", &rows, 1, "MiB", "containers"),
                y_desc: "resident memory (MiB)",
                series: "measured, after the resync",
            },
        ];
        crate::plot::growth(
            "registrator with running containers",
            &rows,
            &panels,
            "running containers",
            &dir.join("registrator-growth.png"),
        )?;
        writeln!(
            md,
            "Growth with running containers (grey: linear growth from the smallest size):\n\n![registrator growth](registrator-growth.png)\n"
        )?;
    }
    if !hs.is_null() {
        writeln!(md, "## haproxy-sync (`portolan-bench haproxy-sync`)\n")?;
        writeln!(md, "Quiescence: `{}`.\n", hs["quiescence"].as_str().unwrap_or_default())?;
        writeln!(md, "| Figure | Measured | Target |\n|---|---|---|")?;
        writeln!(
            md,
            "| Consul registration → new instance answering through HAProxy | {} | p50 ≤ 50 ms, p99 ≤ 200 ms |",
            pcts(&hs["change_to_serving"])
        )?;
        writeln!(
            md,
            "| scale 1→10→1 ×{} under steady load | {} requests, {} failed, {} reloads, {} runtime applies | 0 failed, no reload |",
            hs["cycles"],
            hs["requests"],
            hs["failed_requests"],
            hs["reloads_during_scaling"],
            hs["runtime_applies_during_scaling"]
        )?;
        writeln!(
            md,
            "| a lost host: Consul marks its node's `serfHealth` critical → its instances out of HAProxy | {} | ≤ 1 s |",
            pcts(&hs["node_loss_to_out"])
        )?;
        writeln!(
            md,
            "| idle RSS, one service | {:.1} MiB | |\n",
            hs["rss_idle_small_mib"].as_f64().unwrap_or_default()
        )?;
        writeln!(
            md,
            "Large catalogs, against a Consul agent at its default limits (200 connections per client), through a \
             proxy that counts haproxy-sync's connections and requests. \"One change\" is one more instance registered in one \
             service (a change the service list does not locate, so found by a sweep of the nodes), {} samples: the median, \
             and the slowest; \"applied\" is from the end of the quiescence window to HAProxy having it. Churn: 100 \
             instances of services across the catalog registered, then deregistered, 16 at a time, and the requests \
             haproxy-sync made to Consul meanwhile and 3 s after. Memory is measured once nothing has changed for 15 s.\n",
            hs["large"].get(0).and_then(|l| l["one_change_samples_ms"].as_array()).map_or(0, Vec::len)
        )?;
        writeln!(
            md,
            "| Services × instances | HAProxy checks | First apply (file) | Serving | One change applied, median / slowest | One change from registration, median / slowest | RSS | CPU | Connections to Consul, most at once | Requests in 10 s idle | Requests per change | Churn: changes / requests | Consul errors | Reloads |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )?;
        for l in hs["large"].as_array().into_iter().flatten() {
            let per_change: Vec<f64> =
                l["requests_per_change"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
            let (lo, hi) = per_change.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            writeln!(
                md,
                "| {} × {} | {} | {} | {} | {} / {} | {} / {} | {:.1} MiB | {:.2} s | {} | {} | {} | {} / {} | {} | {} |",
                l["services"],
                l["instances_per_service"],
                if l["active_checks"].as_bool().unwrap_or(true) { "every server, 1 s" } else { "none" },
                ms(&l["first_apply_ms"]),
                ms(&l["first_serving_ms"]),
                ms(&l["one_change_apply_ms"]),
                ms(&slowest(&l["one_change_apply_samples_ms"])),
                ms(&l["one_change_ms"]),
                ms(&l["one_change_max_ms"]),
                l["rss_mib"].as_f64().unwrap_or_default(),
                l["cpu_seconds"].as_f64().unwrap_or_default(),
                l["max_connections"],
                l["idle_requests"],
                if lo == hi { format!("{hi}") } else { format!("{lo}–{hi}") },
                l["churn_changes"],
                l["churn_requests"],
                l["consul_errors"],
                l["reloads"]
            )?;
        }
        writeln!(
            md,
            "\nTargets: connections to Consul ≤ 8 at any size; no request while nothing changes (besides the two blocking \
             queries, which return only on a change or at their 60 s timeout); requests per change independent of the \
             catalog's size; at 1,000 × 10 first apply serving ≤ 1.5 s, one change applied ≤ 10 ms, RSS ≤ 40 MiB; at \
             10,000 × 3 ≤ 15 s, ≤ 50 ms, ≤ 150 MiB. CPU is haproxy-sync's own, from its start to the end of the measurements. \
             Every server of these catalogs points at one backend on this machine: with the default template, HAProxy checks each of them every second \
             (10,000 checks/s at 1,000 × 10, all on these 2 cores) and reserves a file descriptor for each, more than this machine's hard limit of \
             20,000 allows at 10,000 × 3. The growth series is therefore rendered with the default template minus its active checks \
             (`check`, `option httpchk`); everything else, the runtime API included, is the same.\n"
        )?;
        crate::plot::latency_histogram(
            "Each alone: a change through registrator, a change through haproxy-sync",
            &[
                histogram("registrator: Docker start → in Consul", &reg["start_to_consul"]),
                histogram("haproxy-sync: Consul → HAProxy serving", &hs["change_to_serving"]),
            ],
            &dir.join("latency.png"),
        )?;
        writeln!(md, "![latency histograms](latency.png)\n")?;
        let unchecked: Value = hs["large"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["active_checks"] == false)
            .map(|l| {
                let mut l = l.clone();
                let most = l["requests_per_change"].as_array().into_iter().flatten().filter_map(Value::as_f64);
                l["most_requests_per_change"] = most.fold(0.0, f64::max).into();
                l
            })
            .collect();
        let rows = growth_rows(
            &unchecked,
            |l| num(l, "services") * num(l, "instances_per_service"),
            &["first_apply_ms", "one_change_apply_ms", "rss_mib", "max_connections", "most_requests_per_change"],
        );
        let panel = |title, y_desc, series| crate::plot::GrowthPanel { title, y_desc, series };
        let panels = [
            panel(
                at_largest("first full apply", &rows, 0, "ms", "instances"),
                "first apply, config file written (ms)",
                "measured",
            ),
            panel(
                at_largest("one change applied", &rows, 1, "ms", "instances"),
                "one instance change applied (ms)",
                "median of the samples",
            ),
            panel(
                at_largest("haproxy-sync RSS", &rows, 2, "MiB", "instances"),
                "resident memory (MiB)",
                "measured, idle",
            ),
            panel(
                over_all("connections to Consul, most at once", &rows, 3),
                "connections at once",
                "most at once, whole run",
            ),
            panel(over_all("requests to Consul per change", &rows, 4), "requests per change", "most for one change"),
        ];
        crate::plot::growth(
            "haproxy-sync with catalog size (no active checks)",
            &rows,
            &panels,
            "instances in Consul (services × instances each)",
            &dir.join("growth.png"),
        )?;
        writeln!(
            md,
            "Growth with catalog size, no active checks (grey: linear growth from the smallest size):\n\n![growth with catalog size](growth.png)\n"
        )?;
    }
    if modes.is_array() {
        writeln!(md, "## Zero loss under change: three ways to apply (`portolan-bench apply-modes`)\n")?;
        let runs: Vec<crate::modes::Run> = serde_json::from_value(modes)?;
        if let Some(r) = runs.first() {
            writeln!(
                md,
                "The whole compose stack; `hello` scaled 1 → 10 → 1 with `docker compose up --scale` and a second \
                 service started and stopped, {} times, under two loads through HAProxy at once: a closed loop of {} \
                 connections (as many requests as the machine answers) and a fixed {} requests/s. Each way runs on \
                 a stack of its own from the same images, so the same HAProxy build.\n",
                r.events.iter().filter(|(_, what)| what == "new service").count(),
                r.connections,
                r.rate
            )?;
        }
        writeln!(
            md,
            "| Apply | Closed loop: requests (req/s) | failed | Fixed rate: requests | failed | p99 | max | Reloads | Runtime applies |\n|---|---|---|---|---|---|---|---|---|"
        )?;
        for r in &runs {
            writeln!(
                md,
                "| {} | {} ({:.0}) | **{}** | {} | **{}** | {:.1} ms | {:.0} ms | {} | {} |",
                r.mode,
                r.max.requests,
                r.max.requests as f64 / r.seconds.max(1e-9),
                r.max.failed,
                r.fixed.requests,
                r.fixed.failed,
                r.fixed.latency_p99_ms,
                r.fixed.latency_max_ms,
                r.reloads,
                r.runtime_applies
            )?;
        }
        writeln!(
            md,
            "\n`runtime`: haproxy-sync's default (runtime API for instances, master-worker reload for structure); \
             `reload`: `--apply reload`, a master-worker reload for every change; `sf`: the replaced stack's way, \
             re-render the file and run `haproxy -D -f … -sf <old pid>` for every change. p99 and max are the \
             fixed-rate requests' latencies.\n"
        )?;
        for r in runs.iter().filter(|r| r.max.failed + r.fixed.failed > 0) {
            let first: Vec<&String> = r.max.failures.iter().chain(&r.fixed.failures).take(5).collect();
            writeln!(
                md,
                "First failures, `{}`: {}\n",
                r.mode,
                first.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
            )?;
        }
        crate::plot::apply_modes(&runs, &dir.join("apply-modes.png"))?;
        writeln!(md, "![requests/s during changes](apply-modes.png)\n")?;
    }
    if !foot.is_null() {
        writeln!(md, "## Footprint\n")?;
        writeln!(md, "demo-service idle RSS: {:.1} MiB.\n", foot["demo_service_rss_mib"].as_f64().unwrap_or_default())?;
        writeln!(
            md,
            "The images (`FROM scratch`: the program, the libraries it loads, CA certificates, tini, a user), and how long each takes from `docker run` to answering its health check (`/health`, as `--probe` and the compose healthchecks ask; registrator and haproxy-sync with a Consul container beside them):\n"
        )?;
        writeln!(md, "| Image | Size | `docker run` → healthy | Target |\n|---|---|---|---|")?;
        let startup = foot["startup"].as_array().cloned().unwrap_or_default();
        for i in foot["images"].as_array().into_iter().flatten() {
            let image = i[0].as_str().unwrap_or_default();
            let target = if image.contains("/haproxy:") { "≤ 60 MB, ≤ 1 s" } else { "≤ 20 MB, ≤ 1 s" };
            let started = startup
                .iter()
                .find(|s| s["image"] == image)
                .map(|s| {
                    format!(
                        "p50 {}, max {} (n={})",
                        ms(&s["run_to_healthy"]["p50_ms"]),
                        ms(&s["run_to_healthy"]["max_ms"]),
                        s["run_to_healthy"]["n"]
                    )
                })
                .unwrap_or_else(|| "not measured".to_owned());
            writeln!(md, "| `{image}` | {:.1} MB | {started} | {target} |", i[1].as_f64().unwrap_or_default())?;
        }
        writeln!(md)?;
    }
    std::fs::write(dir.join("REPORT.md"), md)?;
    eprintln!("wrote {}", dir.join("REPORT.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::load::Outcome;
    use crate::stats::Summary;

    fn summary(n: u32, from: f64, spread: f64) -> Value {
        let samples: Vec<Duration> = (0..n)
            .map(|i| Duration::from_secs_f64((from + spread * f64::from(i * 7 % n) / f64::from(n)) / 1e3))
            .collect();
        serde_json::to_value(Summary::of(&samples)).unwrap()
    }

    /// The report and every plot, from small made-up results (kept in
    /// `$PLOTS_DIR` if set, to look at them).
    #[test]
    fn writes_the_report_and_its_plots() {
        let keep = std::env::var_os("PLOTS_DIR").map(std::path::PathBuf::from);
        let base = std::env::temp_dir().join(format!("portolan-report-{}", std::process::id()));
        let (out, dir) = (base.join("out"), keep.unwrap_or_else(|| base.join("report")));
        std::fs::create_dir_all(&out).unwrap();
        let large = |services: u32, instances: u32, apply: f64, change: f64, rss: f64, conns: u32, per: [u32; 2]| {
            json!({"services": services, "instances_per_service": instances, "active_checks": false,
                "first_apply_ms": apply, "one_change_apply_ms": change, "rss_mib": rss,
                "max_connections": conns, "requests_per_change": per})
        };
        let results = [
            (
                "registrator",
                json!({"start_to_consul": summary(50, 5.5, 10.0), "killed": 50,
                    "resyncs": [{"running": 50, "cold_resync_ms": 99.0, "rss_mib": 9.4},
                                {"running": 200, "cold_resync_ms": 399.0, "rss_mib": 10.0}]}),
            ),
            (
                "haproxy-sync",
                json!({"change_to_serving": summary(50, 30.0, 12.0), "quiescence": "25ms:250ms",
                    "large": [large(100, 10, 90.0, 0.5, 12.0, 4, [6, 6]), large(1000, 10, 660.0, 3.8, 26.9, 4, [6, 6]),
                              large(10000, 3, 4448.0, 42.2, 95.6, 5, [6, 7])]}),
            ),
            (
                "stack",
                json!({"start_to_consul": summary(50, 8.0, 5.0), "start_to_haproxy": summary(50, 35.0, 72.0),
                    "kill_to_last_routed": summary(50, 25.0, 120.0), "failed_requests": 0}),
            ),
            (
                "hosts",
                json!({"start_to_routed": summary(30, 53.0, 47.0), "swarm_start_to_routed": summary(15, 55.0, 195.0)}),
            ),
        ];
        for (name, value) in results {
            std::fs::write(out.join(format!("{name}.json")), value.to_string()).unwrap();
        }
        let outcome = |ok: u64, fail_at: usize| {
            let series: Vec<(u64, u64)> =
                (0..300).map(|i| (ok + (i as u64 * 7919) % ok, u64::from(i == fail_at))).collect();
            Outcome {
                requests: series.iter().map(|(ok, err)| ok + err).sum(),
                failed: series.iter().map(|(_, err)| err).sum(),
                series,
                ..Outcome::default()
            }
        };
        let events: Vec<(f64, String)> = (0..4)
            .flat_map(|c| {
                let t = 1.0 + f64::from(c) * 7.0;
                [(t, "scale 1→10"), (t + 2.0, "new service"), (t + 3.5, "scale 10→1"), (t + 4.5, "service gone")]
            })
            .map(|(t, what)| (t, what.to_owned()))
            .collect();
        let runs: Vec<crate::modes::Run> = [("runtime", usize::MAX), ("reload", usize::MAX), ("sf", 123)]
            .into_iter()
            .map(|(mode, fail_at)| crate::modes::Run {
                mode: mode.into(),
                max: outcome(300, usize::MAX),
                connections: 8,
                fixed: outcome(20, fail_at),
                rate: 200,
                reloads: 8.0,
                runtime_applies: 16.0,
                seconds: 30.0,
                events: events.clone(),
            })
            .collect();
        std::fs::write(out.join("apply-modes.json"), serde_json::to_string(&runs).unwrap()).unwrap();
        let kills: Vec<crate::kill::Run> = [("before", 7), ("retries", usize::MAX)]
            .into_iter()
            .map(|(template, fail_at)| crate::kill::Run {
                template: template.into(),
                retry_lines: vec!["retries 3".into(), "retry-on conn-failure".into()],
                instances: 8,
                kills: 24,
                every_ms: 1000,
                connections: 8,
                load: outcome(300, fail_at),
                seconds: 30.0,
                retries: 9,
                redispatches: 9,
                connection_errors: 6,
                response_errors: 3,
            })
            .collect();
        std::fs::write(out.join("kill.json"), serde_json::to_string(&kills).unwrap()).unwrap();

        write(&out, &dir, "test").unwrap();
        let report = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
        assert!(report.contains("| before (the release's): `retries 3`, `retry-on conn-failure` | "), "{report}");
        assert!(report.contains("First failures, before") && !report.contains("First failures, retries"), "{report}");
        for png in [
            "stack-latency.png",
            "hosts-latency.png",
            "registrator-growth.png",
            "latency.png",
            "growth.png",
            "apply-modes.png",
        ] {
            assert!(report.contains(png), "{png} not in the report");
            let len = std::fs::metadata(dir.join(png)).map(|m| m.len()).unwrap_or(0);
            assert!(len > 10_000, "{png}: {len} bytes");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
