//! The stack across three real Docker hosts on this machine (`scripts/hosts`):
//! a Consul server on each, `hello` on hosts 2 and 3 registered by each
//! host's registrator at the host's address, and two load balancers (hosts 1
//! and 2), each reading its own host's agent, all from `compose/cluster.yml`
//! as a user would run it on each host: with ACLs on (default deny, the
//! README's policies) and TLS between registrator or haproxy-sync and their
//! agents.
//!
//! The hosts take a minute to make, so the scenarios share them and run one
//! after another, each leaving the cluster as it found it. Each is reported
//! on its own and a failing one does not stop the others; the hosts are
//! removed at the end whatever happened (`harness = false`: this file is its
//! own test runner). Arguments filter scenarios by name, as with libtest.

#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::{Duration, Instant};

use e2e::Answer;
use e2e::hosts::{Cluster, TimedLoad, wait_for_host};

type Scenario = for<'a> fn(&'a Cluster) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("routes_across_hosts_and_every_load_balancer_agrees", |c| Box::pin(routes_across_hosts(c))),
    ("scale_down_on_one_host_under_load_fails_nothing", |c| Box::pin(scale_down_under_load(c))),
    ("a_restarted_registrator_touches_only_its_hosts_services", |c| Box::pin(registrator_restart(c))),
    ("the_consul_leader_killed_under_load_fails_nothing", |c| Box::pin(leader_killed(c))),
    ("a_host_cut_off_leaves_the_rotation_and_comes_back", |c| Box::pin(host_cut_off(c))),
    ("a_host_that_leaves_leaves_nothing_behind", |c| Box::pin(host_leaves(c))),
    ("registrator_warns_about_another_hosts_agent_and_a_wrong_ip", |c| Box::pin(guard_rails(c))),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let chosen: Vec<&(&str, Scenario)> = SCENARIOS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &chosen {
            println!("{name}: test");
        }
        return;
    }
    if chosen.is_empty() {
        println!("no scenario matches {filters:?}");
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // ACLs on (default deny) and TLS between registrator or haproxy-sync and
    // their agents, as a production cluster would run.
    let cluster = rt.block_on(Cluster::up("mh", "10.89.1", true));
    let mut failed = Vec::new();
    for (name, scenario) in &chosen {
        println!("scenario {name} ...");
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(scenario(&cluster))));
        match outcome {
            Ok(()) => println!("scenario {name} ... ok ({:.1} s)", started.elapsed().as_secs_f64()),
            Err(_) => {
                println!("scenario {name} ... FAILED");
                failed.push(*name);
                for host in cluster.hosts.all() {
                    eprintln!("--- host {} ({}) ---\n{}", host.index, host.ip, host.logs());
                }
                // Whatever the scenario broke, the next starts from a whole cluster.
                rt.block_on(cluster.heal());
            }
        }
    }
    drop(cluster);
    println!("{} scenarios, {} failed {failed:?}", chosen.len(), failed.len());
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

fn failures(answers: &[(Instant, Answer)]) -> Vec<&Answer> {
    answers.iter().map(|(_, a)| a).filter(|a| !matches!(a, Answer::Host(_))).collect()
}

fn per_host(answers: &[(Instant, Answer)]) -> BTreeMap<&str, usize> {
    let mut by = BTreeMap::new();
    for (_, a) in answers {
        if let Answer::Host(h) = a {
            *by.entry(h.as_str()).or_default() += 1;
        }
    }
    by
}

async fn routes_across_hosts(c: &Cluster) {
    let (two, three) = (c.hellos(2), c.hellos(3));
    assert_eq!((two.len(), three.len()), (1, 1), "one hello per host to start with");
    // Both load balancers, each on its own host's agent, route both hosts' instances.
    c.converged().await;
    let registrator = c.host(2).container_of("registrator");
    let out = c.host(2).docker(&["logs", &registrator]);
    let logs = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if c.acl.is_some() {
        // ... having reached their agents over TLS.
        assert!(logs.contains("consul=https://consul:8501/"), "registrator not on HTTPS:\n{logs}");
        // Default deny: without a token, every agent refuses a registration.
        for i in 1..=3 {
            let url = format!("http://{}:8500/v1/agent/service/register", c.host(i).ip);
            let body = r#"{"Name": "hello", "Tags": ["rest"], "Address": "127.0.0.1", "Port": 1}"#;
            let status = c.http.put(url).body(body).send().await.expect("Consul answers").status();
            assert_eq!(status, 403, "host {i}'s agent took a registration without a token");
        }
        // registrator reads Docker through docker-door, which holds the socket alone.
        let door = c.host(2).container_of("docker-door");
        let out = c.host(2).docker(&["logs", &door]);
        assert!(out.status.success(), "docker-door runs on host 2");
        let mounts = c.host(2).docker(&["inspect", "-f", "{{json .Mounts}}", &registrator]);
        let mounts = String::from_utf8_lossy(&mounts.stdout).into_owned();
        assert!(!mounts.contains("docker.sock\""), "registrator holds a Docker socket: {mounts}");
    }
    assert!(!logs.contains('\u{1b}'), "colour codes in a log that is no terminal:\n{logs}");
    // A new instance on host 3 reaches both within a second of each other.
    c.compose(3, &["up", "-d", "--no-recreate", "--scale", "hello=2"]);
    let new = c.hellos(3).difference(&three).next().cloned().expect("a new hello on host 3");
    let (a, b) = tokio::join!(
        wait_for_host(&c.lbs[0], &new, Duration::from_secs(20)),
        wait_for_host(&c.lbs[1], &new, Duration::from_secs(20))
    );
    println!("  new instance on host 3 answering: through host 1 after {a:?}, through host 2 after {b:?}");
    assert!(a.abs_diff(b) <= Duration::from_secs(1), "the load balancers disagree for {:?}", a.abs_diff(b));
    c.converged().await;
}

async fn scale_down_under_load(c: &Cluster) {
    if c.hellos(3).len() < 2 {
        c.compose(3, &["up", "-d", "--no-recreate", "--scale", "hello=2"]);
        c.converged().await;
    }
    let load = [TimedLoad::start(&c.lbs[0], 2), TimedLoad::start(&c.lbs[1], 2)];
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.compose(3, &["up", "-d", "--no-recreate", "--scale", "hello=1"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, l) in load.into_iter().enumerate() {
        let answers = l.stop().await;
        println!("  load balancer {}: {} answers {:?}", i + 1, answers.len(), per_host(&answers));
        assert!(failures(&answers).is_empty(), "failed: {:?}", failures(&answers));
    }
    c.converged().await;
}

/// `(service ID, ModifyIndex)` of every `hello` instance in the catalog.
async fn hello_indexes(c: &Cluster) -> BTreeMap<String, u64> {
    let list = c.consul(1, "/v1/catalog/service/hello").await.expect("catalog");
    list.as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            (s["ServiceID"].as_str().unwrap_or_default().to_owned(), s["ModifyIndex"].as_u64().unwrap_or_default())
        })
        .collect()
}

async fn registrator_restart(c: &Cluster) {
    let before = hello_indexes(c).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let registrator = c.host(2).container_of("registrator");
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs().to_string();
    c.host(2).docker(&["restart", "-t", "5", &registrator]);
    // Up again and done with its first resync, which must change nothing.
    let start = Instant::now();
    loop {
        let logs = c.host(2).docker(&["logs", "--since", &since, &registrator]);
        if String::from_utf8_lossy(&logs.stdout).contains("resynced")
            || String::from_utf8_lossy(&logs.stderr).contains("resynced")
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "registrator did not resync after its restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = hello_indexes(c).await;
    assert_eq!(before, after, "a registrator restart re-registered or removed services");
}

async fn leader_killed(c: &Cluster) {
    c.tolerates_a_failure().await;
    let leader = c.leader(1).await;
    let leader_ip = leader.split(':').next().unwrap_or_default().to_owned();
    let killed =
        c.hosts.all().iter().find(|h| h.ip.to_string() == leader_ip).expect("the leader is one of the hosts").index;
    let consul = c.host(killed).container_of("consul");
    let load = [TimedLoad::start(&c.lbs[0], 2), TimedLoad::start(&c.lbs[1], 2)];
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.host(killed).docker(&["kill", &consul]);
    let killed_at = Instant::now();
    let survivor = if killed == 1 { 2 } else { 1 };
    let new_leader = loop {
        let l = c.leader(survivor).await;
        if !l.is_empty() && l != leader {
            break l;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(30), "no new leader 30 s after the leader was killed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("  leader {leader} killed; {new_leader} elected after {:?}", killed_at.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, l) in load.into_iter().enumerate() {
        let answers = l.stop().await;
        println!("  load balancer {}: {} answers {:?}", i + 1, answers.len(), per_host(&answers));
        assert!(failures(&answers).is_empty(), "failed while the leader was lost: {:?}", failures(&answers));
    }
    c.host(killed).docker(&["start", &consul]);
    // Back in the cluster, and whatever of its host left the catalog registered again.
    let start = Instant::now();
    while c
        .consul(killed, "/v1/status/leader")
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
        .is_empty()
    {
        assert!(start.elapsed() < Duration::from_secs(60), "the restarted server did not rejoin");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.converged().await;
}

async fn host_cut_off(c: &Cluster) {
    let gone = c.hellos(3);
    let load = TimedLoad::start(&c.lbs[0], 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.hosts.cut(3);
    let cut_at = Instant::now();
    // Consul's failure detection confirms after HAProxy's checks.
    let start = Instant::now();
    loop {
        let checks = c.consul(1, "/v1/health/node/mh3").await.unwrap_or_default();
        let serf = checks.as_array().and_then(|a| a.iter().find(|c| c["CheckID"] == "serfHealth").cloned());
        if serf.is_none_or(|s| s["Status"] != "passing") {
            println!("  Consul: node mh3 not passing after {:?}", cut_at.elapsed());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "Consul did not notice the lost host");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(cut_at.elapsed())).await;
    let answers = load.stop().await;
    let last_from_gone = answers
        .iter()
        .filter(|(at, a)| *at > cut_at && matches!(a, Answer::Host(h) if gone.contains(h)))
        .map(|(at, _)| at.duration_since(cut_at))
        .max()
        .unwrap_or_default();
    let failed_answers: Vec<_> = answers
        .iter()
        .filter(|(at, a)| *at > cut_at && !matches!(a, Answer::Host(_)))
        .map(|(at, a)| (at.duration_since(cut_at), a))
        .collect();
    let failed = failed_answers.len();
    println!("  failed: {failed_answers:?}");
    println!(
        "  host 3 cut off: its last answer {last_from_gone:?} after the cut; {failed} of {} requests failed",
        answers.len()
    );
    assert!(last_from_gone <= Duration::from_secs(3), "host 3 still answered {last_from_gone:?} after it was cut off");
    assert!(failed <= 4, "{failed} requests failed; at most the 4 in flight may");
    // Back: once Consul sees its node again, its instances are routed again.
    c.hosts.mend(3);
    let start = Instant::now();
    loop {
        let checks = c.consul(1, "/v1/health/node/mh3").await.unwrap_or_default();
        let serf = checks.as_array().and_then(|a| a.iter().find(|c| c["CheckID"] == "serfHealth").cloned());
        if serf.is_some_and(|s| s["Status"] == "passing") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "Consul did not see host 3 come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen_at = Instant::now();
    let host = gone.iter().next().expect("a hello on host 3").clone();
    let back = wait_for_host(&c.lbs[0], &host, Duration::from_secs(30)).await;
    println!("  host 3 back: node passing {:?} after the mend, routed {:?} after that", start.elapsed(), back);
    assert!(seen_at.elapsed() < Duration::from_secs(30));
    c.converged().await;
}

async fn host_leaves(c: &Cluster) {
    c.tolerates_a_failure().await;
    let stays = c.hellos(2);
    let load = TimedLoad::start(&c.lbs[0], 2);
    // Everything on host 3 stops: its services, registrator, its Consul server.
    c.compose(3, &["down", "-t", "5"]);
    let start = Instant::now();
    loop {
        let nodes = c.consul(1, "/v1/catalog/nodes").await.unwrap_or_default();
        let services = c.consul(1, "/v1/catalog/service/hello").await.unwrap_or_default();
        let mh3_node = nodes.as_array().into_iter().flatten().any(|n| n["Node"] == "mh3");
        let mh3_services = services.as_array().into_iter().flatten().filter(|s| s["Node"] == "mh3").count();
        if !mh3_node && mh3_services == 0 {
            println!("  host 3 gone from Consul's catalog {:?} after compose down returned", start.elapsed());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "host 3 still in the catalog: node {mh3_node}, {mh3_services} services"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for lb in &c.lbs {
        e2e::hosts::wait_for_set(lb, &stays, Duration::from_secs(10)).await;
    }
    let answers = load.stop().await;
    println!("  {} answers {:?}", answers.len(), per_host(&answers));
    assert!(failures(&answers).is_empty(), "failed while host 3 left: {:?}", failures(&answers));
    // Back, as it was.
    c.compose(3, &["up", "-d", "--wait"]);
    let start = Instant::now();
    while c.leader(3).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "host 3's server did not rejoin");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.converged().await;
}

async fn guard_rails(c: &Cluster) {
    // On host 3, a registrator pointed at host 1's server, and given host 2's address.
    let h3 = c.host(3);
    let sock = h3.docker_host.trim_start_matches("unix://").to_owned();
    let token = format!("CONSUL_HTTP_TOKEN={}", c.acl.as_ref().map(|t| t.registrator.as_str()).unwrap_or_default());
    let out = h3.docker(&[
        "run",
        "-d",
        "--network",
        "host",
        "-v",
        &format!("{sock}:/var/run/docker.sock:ro"),
        "-e",
        &token,
        "-e",
        "REGISTRATOR_OWNER=misplaced",
        "-e",
        "SERVICE_IGNORE=true",
        &e2e::image("registrator"),
        "--metrics-addr=",
        &format!("-ip={}", c.host(2).ip),
        "--tags=misplaced",
        &format!("consul://{}:8500", c.host(1).ip),
    ]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let start = Instant::now();
    let logs = loop {
        let out = h3.docker(&["logs", &id]);
        let logs = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if logs.contains("registrator starting") || start.elapsed() > Duration::from_secs(20) {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    h3.docker(&["rm", "-f", &id]);
    // What it registered on host 1's agent goes, so the cluster is as before.
    let services = c.consul(1, "/v1/agent/services").await.expect("agent services");
    for id in services.as_object().into_iter().flat_map(|o| o.keys()).filter(|id| id.starts_with("misplaced:")) {
        c.consul_put(1, &format!("/v1/agent/service/deregister/{id}"), &serde_json::Value::Null)
            .await
            .expect("deregistered");
    }
    assert!(
        logs.contains("node \"mh1\"") && logs.contains("a Consul server), not on this Docker host"),
        "no warning about another host's agent:\n{logs}"
    );
    assert!(
        logs.contains(&format!("-ip {} is not an address of this host (found: ", c.host(2).ip))
            && logs.contains(&c.host(3).ip.to_string()),
        "no warning about -ip:\n{logs}"
    );
}
