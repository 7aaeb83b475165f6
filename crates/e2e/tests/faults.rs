//! Faults on the whole compose stack, one after another, under steady load
//! through HAProxy. After each, the stack must converge within a stated
//! bound: the `hello` services in Consul are exactly the running `hello`
//! containers (none missing, none stale, no duplicates) and HAProxy routes
//! to exactly those. Each fault prints its time to converge and the
//! requests that failed during it (`cargo test -- --nocapture` shows them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::{Answer, Load, LoadReport, Stack};

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

/// Two clients sending requests through HAProxy back to back.
struct Steady(Load, Load);

impl Steady {
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

/// Runs `sh -c script` in the stack's `service` container.
fn exec(stack: &Stack, service: &str, script: &str) {
    stack.compose(&["exec", "-T", service, "sh", "-c", script]);
}

/// SIGKILL to every process of the container named `comm` (read from /proc: the images have no pkill).
fn kill_script(comm: &str) -> String {
    format!(
        r#"for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = "{comm}" ] && kill -9 "${{p#/proc/}}"; done; true"#
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_converges_after_every_fault_and_restarts_fail_no_request() {
    let stack = Stack::new("faults");
    tokio::task::block_in_place(|| stack.up(2));
    let consul = consul::Client::new(&consul::Settings {
        base: Some(format!("http://127.0.0.1:{}/", stack.consul_port).parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    converge(&stack, &consul, "start", Duration::from_secs(30)).await;

    // registrator killed with SIGKILL in the middle of a burst of starts;
    // Docker's restart policy brings it back and it resyncs.
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
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::block_in_place(|| exec(&stack, "registrator", &kill_script("registrator")));
    assert!(burst.wait_with_output().await.unwrap().status.success());
    let took = converge(&stack, &consul, "registrator SIGKILL", Duration::from_secs(20)).await;
    let seen = load.stop().await;
    report("registrator SIGKILL mid-burst", took, &seen);
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);

    // haproxy-sync killed with SIGKILL: HAProxy serves on, haproxy-keeper
    // restarts haproxy-sync, and a scale-down after is followed.
    let load = Steady::start(&stack);
    tokio::task::block_in_place(|| exec(&stack, "haproxy", &kill_script("haproxy-sync")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    scale(&stack, 3);
    let took = converge(&stack, &consul, "haproxy-sync SIGKILL", Duration::from_secs(20)).await;
    let seen = load.stop().await;
    report("haproxy-sync SIGKILL", took, &seen);
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);

    // One HAProxy worker killed with SIGKILL: its master notices (and, as
    // HAProxy does by default, stops the rest); haproxy-keeper starts
    // HAProxy again on the last configuration if it went.
    let load = Steady::start(&stack);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let worker = r#"for p in /proc/[0-9]*; do
        [ "$(cat $p/comm 2>/dev/null)" = haproxy ] || continue
        parent=$(sed -n 's/^PPid:[[:space:]]*//p' $p/status)
        [ "$(cat /proc/$parent/comm 2>/dev/null)" = haproxy ] && kill -9 "${p#/proc/}"
    done; true"#;
    tokio::task::block_in_place(|| exec(&stack, "haproxy", worker));
    let took = converge(&stack, &consul, "HAProxy worker SIGKILL", Duration::from_secs(20)).await;
    let seen = load.stop().await;
    report("HAProxy worker SIGKILL", took, &seen);
    assert!(seen.ok > 0);

    // Every HAProxy process killed (master and workers): haproxy-keeper
    // starts HAProxy again on the last configuration. Requests fail while
    // nothing listens; the count is reported, convergence asserted.
    let load = Steady::start(&stack);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| exec(&stack, "haproxy", &kill_script("haproxy")));
    let took = converge(&stack, &consul, "HAProxy SIGKILL", Duration::from_secs(20)).await;
    let seen = load.stop().await;
    report("HAProxy master and workers SIGKILL", took, &seen);
    assert!(seen.ok > 0);

    // Consul stopped for 30 s while containers start and stop, registrator
    // restarted meanwhile (so it starts before Consul is reachable); Consul
    // comes back empty (dev mode keeps nothing).
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

    // Churn: 200 containers of `hello` started and stopped beside the
    // compose-managed ones, at most 24 alive at once; a quarter killed with
    // SIGKILL, some renamed while running, some with a Docker health check
    // that flips every 2 s.
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
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (name, network) = (format!("{}-churn-{i}", stack.project), stack.network());
        let label = format!("portolan-churn={}", stack.project);
        tasks.spawn_blocking(move || {
            let _permit = permit;
            let mut args: Vec<String> =
                ["run", "-d", "--name", &name, "--network", &network, "--label", &label].map(str::to_owned).to_vec();
            for env in ["SERVICE_NAME=hello", "SERVICE_TAGS=rest", "SERVICE_LB_CHECK_PATH=/health", "DRAIN_SECONDS=1"] {
                args.extend(["-e".to_owned(), env.to_owned()]);
            }
            if i % 4 == 3 {
                // Healthy for two seconds, unhealthy for two, and so on.
                args.extend(
                    ["--health-cmd", "[ $(( $(date +%s) / 2 % 2 )) -eq 0 ]", "--health-interval", "500ms"]
                        .map(str::to_owned),
                );
                args.extend(["--health-retries", "1"].map(str::to_owned));
            }
            args.push("portolan/hello:latest".to_owned());
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
