//! Across hosts (`scripts/hosts`: network namespaces with an engine each):
//! the three-host cluster of `compose/cluster.yml` (a Consul server per
//! host, `hello` on hosts 2 and 3, load balancers on hosts 1 and 2) and a
//! two-node Swarm running `compose/stack.yml`.
//!
//! - a container started on host 3 → answering through host 1's load balancer;
//! - host 3 cut off under load → its last answer, failed requests; plugged
//!   back → Consul's node passing → routed again;
//! - the Consul leader killed under load → failed requests, election time;
//! - Swarm: `docker service scale` 1 → 4 → new tasks answering.
//!
//! Start times are the engines' own `start` events (`docker events`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::Answer;
use e2e::hosts::{Cluster, Host, Swarm, TimedLoad, wait_for_host};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;

use crate::stats::Summary;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Containers started on host 3, one at a time.
    #[arg(long, default_value_t = 30)]
    pub starts: usize,
    /// Times host 3 is cut off and plugged back.
    #[arg(long, default_value_t = 3)]
    pub cuts: usize,
    /// Times the Consul leader is killed.
    #[arg(long, default_value_t = 3)]
    pub leader_kills: usize,
    /// Times the Swarm service is scaled 1 → 4 → 1.
    #[arg(long, default_value_t = 5)]
    pub swarm_scales: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub start_to_routed: Summary,
    pub cut_to_last_answer: Summary,
    pub cut_failed: Vec<usize>,
    pub cut_requests: Vec<usize>,
    pub cut_to_consul_not_passing: Summary,
    pub mend_to_consul_passing: Summary,
    pub passing_to_routed: Summary,
    pub leader_failed: Vec<usize>,
    pub leader_requests: Vec<usize>,
    pub leader_to_new_leader: Summary,
    pub swarm_start_to_routed: Summary,
    pub swarm_failed: usize,
    pub swarm_requests: usize,
    /// Failed requests while Swarm scaled, by kind.
    pub swarm_failures: std::collections::BTreeMap<String, usize>,
}

/// `start` events of one engine: container ID → when.
#[derive(Clone, Default)]
struct Starts(Arc<Mutex<HashMap<String, SystemTime>>>);

impl Starts {
    fn follow(host: &Host) -> Self {
        let starts = Self::default();
        let mut child = tokio::process::Command::new("docker")
            .env("DOCKER_HOST", &host.docker_host)
            .args([
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=start",
                "--format",
                "{{.TimeNano}} {{.ID}}",
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("docker events");
        let stdout = child.stdout.take().expect("stdout");
        let map = starts.0.clone();
        tokio::spawn(async move {
            let _child = child;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((nanos, id)) = line.split_once(' ') {
                    if let Ok(n) = nanos.parse::<u64>() {
                        map.lock().unwrap().insert(id.to_owned(), UNIX_EPOCH + Duration::from_nanos(n));
                    }
                }
            }
        });
        starts
    }

    async fn of(&self, id_prefix: &str) -> SystemTime {
        let start = Instant::now();
        loop {
            if let Some(t) = self.0.lock().unwrap().iter().find(|(id, _)| id.starts_with(id_prefix)).map(|(_, t)| *t) {
                return t;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no start event for {id_prefix}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

pub async fn run(opts: &Opts) -> anyhow::Result<Results> {
    let mut r = Results::default();
    if opts.starts + opts.cuts + opts.leader_kills > 0 {
        let c = Cluster::up("bh", "10.89.3", false).await;
        starts_to_routed(&c, opts.starts, &mut r).await;
        for i in 0..opts.cuts {
            eprintln!("cut {}/{}", i + 1, opts.cuts);
            cut(&c, &mut r).await;
        }
        let mut elections = Vec::new();
        for i in 0..opts.leader_kills {
            eprintln!("leader kill {}/{}", i + 1, opts.leader_kills);
            elections.push(leader_killed(&c, &mut r).await);
        }
        r.leader_to_new_leader = Summary::of(&elections);
    }
    let swarm = Swarm::up("bs", "10.89.4", 2).await;
    swarm_scales(&swarm, opts.swarm_scales, &mut r).await;
    Ok(r)
}

async fn starts_to_routed(c: &Cluster, n: usize, r: &mut Results) {
    let three = c.host(3);
    let starts = Starts::follow(three);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut samples = Vec::new();
    for i in 0..n {
        let mut args: Vec<String> = ["run", "-d", "-p", ":80"].map(str::to_owned).to_vec();
        args.extend(e2e::hello_run_args());
        args.push(e2e::image("hello"));
        let out = three.docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let id: String = String::from_utf8_lossy(&out.stdout).trim().chars().take(12).collect();
        let started = starts.of(&id).await;
        wait_for_host(&c.lbs[0], &id, Duration::from_secs(30)).await;
        let took = since(started);
        eprintln!("start {}/{n}: {took:?}", i + 1);
        samples.push(took);
        three.docker(&["stop", "-t", "5", &id]);
        three.docker(&["rm", &id]);
    }
    r.start_to_routed = Summary::of(&samples);
    c.converged().await;
}

fn serf_passing(checks: &serde_json::Value) -> Option<bool> {
    let serf = checks.as_array()?.iter().find(|c| c["CheckID"] == "serfHealth")?;
    Some(serf["Status"] == "passing")
}

async fn cut(c: &Cluster, r: &mut Results) {
    let gone = c.hellos(3);
    let load = TimedLoad::start(&c.lbs[0], 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.hosts.cut(3);
    let cut_at = Instant::now();
    let mut noticed = None;
    while cut_at.elapsed() < Duration::from_secs(30) {
        let checks = c.consul(1, "/v1/health/node/bh3").await.unwrap_or_default();
        if serf_passing(&checks) != Some(true) {
            noticed = Some(cut_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(cut_at.elapsed())).await;
    let answers = load.stop().await;
    let after: Vec<_> = answers.iter().filter(|(at, _)| *at > cut_at).collect();
    let last = after
        .iter()
        .filter(|(_, a)| matches!(a, Answer::Host(h) if gone.contains(h)))
        .map(|(at, _)| at.duration_since(cut_at))
        .max()
        .unwrap_or_default();
    r.cut_failed.push(after.iter().filter(|(_, a)| !matches!(a, Answer::Host(_))).count());
    r.cut_requests.push(answers.len());
    push(&mut r.cut_to_last_answer, last);
    if let Some(n) = noticed {
        push(&mut r.cut_to_consul_not_passing, n);
    }
    c.hosts.mend(3);
    let mended = Instant::now();
    loop {
        let checks = c.consul(1, "/v1/health/node/bh3").await.unwrap_or_default();
        if serf_passing(&checks) == Some(true) {
            break;
        }
        assert!(mended.elapsed() < Duration::from_secs(120), "host 3 not back in Consul");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    push(&mut r.mend_to_consul_passing, mended.elapsed());
    let host = gone.iter().next().expect("a hello on host 3");
    push(&mut r.passing_to_routed, wait_for_host(&c.lbs[0], host, Duration::from_secs(60)).await);
    c.converged().await;
}

/// Appends a sample to a summary.
fn push(s: &mut Summary, d: Duration) {
    let mut all: Vec<Duration> = s.samples_ms.iter().map(|ms| Duration::from_secs_f64(ms / 1e3)).collect();
    all.push(d);
    *s = Summary::of(&all);
}

async fn leader_killed(c: &Cluster, r: &mut Results) -> Duration {
    c.tolerates_a_failure().await;
    let leader = c.leader(1).await;
    let ip = leader.split(':').next().unwrap_or_default().to_owned();
    let killed = c.hosts.all().iter().find(|h| h.ip.to_string() == ip).expect("leader is a host").index;
    let consul = c.host(killed).container_of("consul");
    let load = [TimedLoad::start(&c.lbs[0], 2), TimedLoad::start(&c.lbs[1], 2)];
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.host(killed).docker(&["kill", &consul]);
    let at = Instant::now();
    let survivor = if killed == 1 { 2 } else { 1 };
    let elected = loop {
        let l = c.leader(survivor).await;
        if !l.is_empty() && l != leader {
            break at.elapsed();
        }
        assert!(at.elapsed() < Duration::from_secs(60), "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut failed, mut total) = (0, 0);
    for l in load {
        let answers = l.stop().await;
        failed += answers.iter().filter(|(_, a)| !matches!(a, Answer::Host(_))).count();
        total += answers.len();
    }
    r.leader_failed.push(failed);
    r.leader_requests.push(total);
    c.host(killed).docker(&["start", &consul]);
    let back = Instant::now();
    while c.leader(killed).await.is_empty() {
        assert!(back.elapsed() < Duration::from_secs(60), "restarted server not back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.converged().await;
    elected
}

async fn swarm_scales(s: &Swarm, n: usize, r: &mut Results) {
    let starts: Vec<Starts> = s.hosts.all().iter().map(Starts::follow).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let load = s.lb.load("/hello");
    let mut samples = Vec::new();
    for i in 0..n {
        let before = s.tasks();
        s.scale(4);
        let t0 = Instant::now();
        // Each task is followed from the moment it runs: Swarm starts them
        // seconds apart.
        let mut waits = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 3 {
            for (id, host) in s.tasks() {
                if before.contains_key(&id) || !seen.insert(id.clone()) {
                    continue;
                }
                let (starts, lb) = (starts[host - 1].clone(), s.lb.clone());
                waits.push(tokio::spawn(async move {
                    let started = starts.of(&id).await;
                    wait_for_host(&lb, &id, Duration::from_secs(30)).await;
                    since(started)
                }));
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "tasks not started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took: Vec<Duration> =
            futures_util::future::join_all(waits).await.into_iter().map(|r| r.expect("waiter")).collect();
        eprintln!("swarm scale {}/{n}: {took:?}", i + 1);
        samples.extend(took);
        s.scale(1);
        let t0 = Instant::now();
        while s.tasks().len() > 1 {
            assert!(t0.elapsed() < Duration::from_secs(60), "not scaled down");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let report = load.stop().await;
    r.swarm_failed = report.failed.len();
    for f in &report.failed {
        *r.swarm_failures.entry(format!("{f:?}").chars().take(120).collect()).or_default() += 1;
    }
    r.swarm_requests = report.ok + report.failed.len();
    r.swarm_start_to_routed = Summary::of(&samples);
}
