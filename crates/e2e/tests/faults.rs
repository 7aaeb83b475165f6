//! Faults on the whole compose stack under steady load through HAProxy, one
//! test each on a stack of its own (torn down however the test ends), so one
//! that fails hides none of the others. After each fault, the stack must
//! converge within a stated bound: the `hello` services in Consul are
//! exactly the running `hello` containers (none missing, none stale, no
//! duplicates) and HAProxy routes to exactly those. Each fault prints its
//! time to converge and the requests that failed during it
//! (`cargo test -- --nocapture` shows them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::{Answer, Load, LoadReport, Proc, Stack};

/// Every running `hello` container, by full ID.
fn running(stack: &Stack) -> BTreeSet<String> {
    let out = stack.compose(&["ps", "-q", "hello"]);
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// Why the stack has not converged, if it has not.
async fn diverges(stack: &Stack, consul: &consul::Client) -> Option<String> {
    let want = tokio::task::block_in_place(|| running(stack));
    let entries = match consul.health_service("hello", 0, Duration::ZERO).await {
        Ok(e) => e.value,
        Err(e) => return Some(format!("Consul: {e}")),
    };
    let mut registered: BTreeMap<String, usize> = BTreeMap::new();
    for e in &entries {
        *registered.entry(e.service.meta.get("registrator_container").cloned().unwrap_or_default()).or_default() += 1;
    }
    if registered.values().any(|n| *n > 1) {
        return Some(format!("duplicates in Consul: {registered:?}"));
    }
    let in_consul: BTreeSet<String> = registered.into_keys().collect();
    if in_consul != want {
        return Some(format!("Consul has {in_consul:?}, running are {want:?}"));
    }
    let want_hosts: BTreeSet<String> = want.iter().map(|id| id.chars().take(12).collect()).collect();
    let mut routed = BTreeSet::new();
    for _ in 0..want.len() * 6 + 4 {
        match stack.get("/hello").await {
            Answer::Host(h) => {
                routed.insert(h);
            }
            other => return Some(format!("request failed: {other:?}")),
        }
    }
    (routed != want_hosts).then(|| format!("HAProxy routes to {routed:?}, running are {want_hosts:?}"))
}

/// Waits until the stack converges; the time it took, or a panic past `bound`.
async fn converge(stack: &Stack, consul: &consul::Client, fault: &str, bound: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        match diverges(stack, consul).await {
            None => return t0.elapsed(),
            Some(why) if t0.elapsed() > bound => {
                panic!("{fault}: not converged {bound:?} after it ended: {why}\n{}", stack.logs())
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A stack named `faults-<name>` with `hello` scaled to `hello`, converged,
/// and a client of its Consul agent.
async fn converged_stack(name: &str, hello: usize) -> (Stack, consul::Client) {
    let stack = Stack::new(&format!("faults-{name}"));
    tokio::task::block_in_place(|| stack.up(hello));
    let consul = consul::Client::new(&consul::Settings {
        base: Some(format!("http://127.0.0.1:{}/", stack.consul_port).parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    converge(&stack, &consul, &format!("{name}: start"), Duration::from_secs(30)).await;
    (stack, consul)
}

/// The churn takes the Docker engine to itself (exclusive), every other
/// fault shares it (two at a time, as the test harness runs them): each
/// fault's figures and its bound are about that fault, not about 200
/// containers starting beside it. Not poisoned by a test that fails.
static ENGINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Two clients sending requests through HAProxy back to back.
struct Steady(Load, Load);

impl Steady {
    /// Requests in flight at any time, at most.
    const CLIENTS: usize = 2;

    fn start(stack: &Stack) -> Steady {
        Steady(stack.load("/hello"), stack.load("/hello"))
    }

    async fn stop(self) -> LoadReport {
        let (mut a, b) = (self.0.stop().await, self.1.stop().await);
        a.ok += b.ok;
        a.failed.extend(b.failed);
        a
    }
}

/// An image with a shell (the stack's own images hold none): the churn's
/// containers with a shell health check run the demo service in it.
const TOOLS: &str = "debian:trixie-slim";

/// SIGKILL, at once, to the processes of `service` that `pick` chooses
/// (given all of them); asserts there was one, naming `what`.
fn kill(stack: &Stack, service: &str, what: &str, pick: impl Fn(&Proc, &[Proc]) -> bool) {
    let all = tokio::task::block_in_place(|| stack.processes(service));
    let pids: Vec<String> = all.iter().filter(|p| pick(p, &all)).map(|p| p.pid.to_string()).collect();
    assert!(!pids.is_empty(), "no {what} process in {service}: {all:?}");
    // One may have exited since (an old HAProxy worker finishing, or one
    // that goes with its master): at least one must be killed.
    let killed = pids
        .iter()
        .filter(|pid| std::process::Command::new("kill").args(["-9", pid]).status().is_ok_and(|s| s.success()))
        .count();
    assert!(killed > 0, "kill -9 {pids:?} ({what}): none was there any more");
}

/// SIGKILL to every process of `service` named `comm`.
fn kill_named(stack: &Stack, service: &str, comm: &str) {
    kill(stack, service, comm, |p, _| p.comm == comm);
}

fn report(fault: &str, took: Duration, load: &LoadReport) {
    eprintln!(
        "[fault] {fault}: converged {:.1} s after it ended; {} requests failed of {}",
        took.as_secs_f64(),
        load.failed.len(),
        load.ok + load.failed.len()
    );
}

fn scale(stack: &Stack, n: usize) {
    tokio::task::block_in_place(|| {
        stack.compose(&["up", "-d", "--no-recreate", "--scale", &format!("hello={n}"), "hello"]);
    });
}

/// registrator killed with SIGKILL in the middle of a burst of starts
/// (2 → 5 `hello`); Docker's restart policy brings it back and it resyncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrator_killed_mid_burst_converges_and_fails_no_request() {
    let _engine = ENGINE.read().await;
    let (stack, consul) = converged_stack("registrator", 2).await;
    let load = Steady::start(&stack);
    let burst = tokio::process::Command::from(stack.compose_command(&[
        "up",
        "-d",
        "--no-recreate",
        "--scale",
        "hello=5",
        "hello",
    ]))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    // A test that fails stops the burst before the stack goes.
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    kill_named(&stack, "registrator", "registrator");
    assert!(burst.wait_with_output().await.unwrap().status.success());
    let took = converge(&stack, &consul, "registrator SIGKILL", Duration::from_secs(20)).await;
    let seen = load.stop().await;
    report("registrator SIGKILL mid-burst", took, &seen);
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);
}

/// haproxy-sync killed with SIGKILL: HAProxy serves on, haproxy-keeper
/// restarts haproxy-sync, and a scale-down after (5 → 3 `hello`) is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_sync_killed_converges_and_fails_no_request() {
    let _engine = ENGINE.read().await;
    let (stack, consul) = converged_stack("haproxy-sync", 5).await;
    let load = Steady::start(&stack);
    kill_named(&stack, "haproxy", "haproxy-sync");
    tokio::time::sleep(Duration::from_millis(500)).await;
    scale(&stack, 3);
    let took = converge(&stack, &consul, "haproxy-sync SIGKILL", Duration::from_secs(20)).await;
    let seen = load.stop().await;
    report("haproxy-sync SIGKILL", took, &seen);
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);
}

/// One HAProxy worker killed with SIGKILL: its master exits with its last
/// worker and haproxy-keeper starts HAProxy again on the last
/// configuration, but the keeper holds the HTTP listener (HAProxy binds
/// `fd@`), so the port takes connections throughout: only the requests in
/// flight on the worker may fail, at most one per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_haproxy_worker_killed_converges() {
    let _engine = ENGINE.read().await;
    let (stack, consul) = converged_stack("worker", 3).await;
    let load = Steady::start(&stack);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A process named haproxy whose parent (the master) is named haproxy.
    kill(&stack, "haproxy", "HAProxy worker", Proc::is_haproxy_worker);
    let took = converge(&stack, &consul, "HAProxy worker SIGKILL", Duration::from_secs(20)).await;
    let seen = load.stop().await;
    report("HAProxy worker SIGKILL", took, &seen);
    assert!(seen.ok > 0);
    assert!(
        seen.failed.len() <= Steady::CLIENTS,
        "more than the {} in flight failed: {:?}",
        Steady::CLIENTS,
        seen.failed
    );
}

/// Every HAProxy process killed (master and workers): haproxy-keeper starts
/// HAProxy again on the last configuration. Requests fail while nothing
/// listens; the count is reported, convergence asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_master_and_workers_killed_converge() {
    let _engine = ENGINE.read().await;
    let (stack, consul) = converged_stack("haproxy", 3).await;
    let load = Steady::start(&stack);
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_named(&stack, "haproxy", "haproxy");
    let took = converge(&stack, &consul, "HAProxy SIGKILL", Duration::from_secs(20)).await;
    let seen = load.stop().await;
    report("HAProxy master and workers SIGKILL", took, &seen);
    assert!(seen.ok > 0);
}

/// Consul stopped for 30 s while containers start and stop (3 → 5 → 2
/// `hello`), registrator restarted meanwhile (so it starts before Consul is
/// reachable); Consul comes back empty (dev mode keeps nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_away_30_s_and_back_empty_converges() {
    let _engine = ENGINE.read().await;
    let (stack, consul) = converged_stack("consul", 3).await;
    let load = Steady::start(&stack);
    tokio::task::block_in_place(|| stack.compose(&["stop", "-t", "1", "consul"]));
    let down = Instant::now();
    scale(&stack, 5);
    tokio::task::block_in_place(|| stack.compose(&["restart", "-t", "2", "registrator"]));
    scale(&stack, 2);
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    tokio::task::block_in_place(|| stack.compose(&["start", "consul"]));
    let took = converge(&stack, &consul, "Consul 30 s away, back empty", Duration::from_secs(30)).await;
    let seen = load.stop().await;
    report("Consul stopped 30 s, restarted empty", took, &seen);
    assert!(seen.ok > 0);
}

/// Churn: 200 containers of `hello` started and stopped beside the
/// compose-managed ones (2), at most 24 alive at once; a quarter killed
/// with SIGKILL, some renamed while running, some with a Docker health
/// check that flips every 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_churn_of_200_containers_converges() {
    let _engine = ENGINE.write().await;
    let (stack, consul) = converged_stack("churn", 2).await;
    // Declared after the stack, so dropped before it: the churn's
    // containers are gone before the stack's network goes.
    let _sweep = Sweep(format!("label=portolan-churn={}", stack.project));
    let load = Steady::start(&stack);
    let t0 = Instant::now();
    churn(&stack, 200, 24).await;
    let churn_took = t0.elapsed();
    let took = converge(&stack, &consul, "churn", Duration::from_secs(30)).await;
    let seen = load.stop().await;
    eprintln!("[fault] churn: 200 containers started and stopped in {:.1} s", churn_took.as_secs_f64());
    report("churn of 200 containers", took, &seen);
    assert!(seen.ok > 0);
}

/// Starts and stops `n` containers of the demo image registered as `hello`, `parallel` at a time.
async fn churn(stack: &Stack, n: usize, parallel: usize) {
    // The image the stack's own `hello` runs, whatever its tag.
    let image = tokio::task::block_in_place(|| {
        let out = stack.compose(&["ps", "-q", "hello"]);
        let id = String::from_utf8_lossy(&out.stdout).lines().next().expect("the stack runs hello").to_owned();
        let out = std::process::Command::new("docker").args(["inspect", "-f", "{{.Image}}", &id]).output().unwrap();
        assert!(out.status.success(), "docker inspect {id}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    let demo_service = workspace_binary("demo-service");
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (name, network) = (format!("{}-churn-{i}", stack.project), stack.network());
        let label = format!("portolan-churn={}", stack.project);
        let (image, demo_service) = (image.clone(), demo_service.clone());
        tasks.spawn_blocking(move || {
            let _permit = permit;
            let mut args: Vec<String> =
                ["run", "-d", "--name", &name, "--network", &network, "--label", &label].map(str::to_owned).to_vec();
            args.extend(e2e::hello_run_args());
            if i % 4 == 3 {
                // Healthy for two seconds, unhealthy for two, and so on: a
                // shell check, so the demo service runs from this build in
                // an image with a shell (its own has none).
                args.extend(
                    ["--health-cmd", "[ $(( $(date +%s) / 2 % 2 )) -eq 0 ]", "--health-interval", "500ms"]
                        .map(str::to_owned),
                );
                args.extend(["--health-retries", "1", "-e", "LISTEN=0.0.0.0:80"].map(str::to_owned));
                args.extend(["-v".to_owned(), format!("{}:/usr/local/bin/demo-service:ro", demo_service.display())]);
                args.extend([TOOLS, "demo-service"].map(str::to_owned));
            } else {
                args.push(image);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let ok = docker(&args);
            std::thread::sleep(Duration::from_millis(300 + (i as u64 * 137) % 1200));
            let mut current = name.clone();
            if ok && i % 8 == 2 {
                current = format!("{name}-renamed");
                docker(&["rename", &name, &current]);
                std::thread::sleep(Duration::from_millis(500));
            }
            if i % 4 == 0 {
                docker(&["kill", "-s", "KILL", &current]);
            } else {
                docker(&["stop", "-t", "5", &current]);
            }
            docker(&["rm", "-f", &current]);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Removes the containers matching a filter when dropped (a failed test leaves none behind).
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        let out = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &self.0]).output();
        let ids = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        for id in ids.split_whitespace() {
            docker(&["rm", "-f", id]);
        }
    }
}

/// Runs the Docker CLI; whether it succeeded.
fn docker(args: &[&str]) -> bool {
    std::process::Command::new("docker").args(args).output().is_ok_and(|o| o.status.success())
}

/// A binary of this workspace's debug build (`scripts/test` builds them all
/// before the tests run).
fn workspace_binary(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("debug").join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` first (scripts/test does)", path.display());
    path.canonicalize().unwrap()
}
