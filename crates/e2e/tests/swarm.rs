//! The stack on a two-node Docker Swarm (`compose/stack.yml`, deployed with
//! `docker stack deploy`): a service's tasks are registered by the
//! registrator of their own node, through that node's Consul agent, at their
//! overlay address, and `docker service scale` is followed under load
//! without a failed request.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::Answer;
use e2e::hosts::{Swarm, wait_for_set};

fn names(tasks: &BTreeMap<String, usize>) -> BTreeSet<String> {
    tasks.keys().cloned().collect()
}

async fn scaled_to(swarm: &Swarm, n: usize) -> BTreeMap<String, usize> {
    swarm.scale(n);
    let start = Instant::now();
    loop {
        let tasks = swarm.tasks();
        if tasks.len() == n {
            return tasks;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{n} tasks not running: {tasks:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn swarm_tasks_are_routed_by_their_overlay_address_and_scaling_fails_nothing() {
    let swarm = Swarm::up("sw", "10.89.2", 2).await;

    // Scaled under load: 1 → 4 → 1, every new task answering, no request failing.
    let load = swarm.lb.load("/hello");
    let start = Instant::now();
    let four = scaled_to(&swarm, 4).await;
    wait_for_set(&swarm.lb, &names(&four), Duration::from_secs(30)).await;
    println!("4 tasks routed {:?} after the scale: {four:?}", start.elapsed());
    assert!(four.values().any(|h| *h == 1) && four.values().any(|h| *h == 2), "tasks on both nodes: {four:?}");

    // Each task is registered through its own node's agent, at its overlay address.
    let by_node = swarm.consul(&["catalog", "nodes", "-service", "hello"]);
    for (i, id) in swarm.node_ids.iter().enumerate() {
        let registered = by_node.lines().filter(|l| l.contains(id.as_str())).count();
        let running = four.values().filter(|h| **h == i + 1).count();
        assert_eq!(registered, running, "node {}: {registered} registered, {running} running:\n{by_node}", i + 1);
    }
    let watch = swarm.consul(&["watch", "-type=service", "-service=hello"]);
    let json: serde_json::Value = serde_json::from_str(&watch).expect("consul watch answers JSON");
    let addrs: Vec<&str> =
        json.as_array().expect("a list").iter().filter_map(|e| e["Service"]["Address"].as_str()).collect();
    let mesh = Swarm::MESH.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
    assert_eq!(addrs.len(), 4, "{addrs:?}");
    assert!(addrs.iter().all(|a| a.starts_with(&mesh)), "not overlay addresses: {addrs:?}");

    let one = scaled_to(&swarm, 1).await;
    wait_for_set(&swarm.lb, &names(&one), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;
    println!("{} answers {:?}", report.ok, report.by_host);
    assert!(report.failed.is_empty(), "failed while scaling: {:?}", report.failed);
    assert!(report.by_host.len() >= 4, "not every task answered: {:?}", report.by_host);
    assert!(matches!(swarm.lb.get("/hello").await, Answer::Host(_)));
}
