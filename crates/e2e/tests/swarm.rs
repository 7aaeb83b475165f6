//! The stack on a two-node Docker Swarm (`compose/stack.yml`, deployed with
//! `docker stack deploy`): a service's tasks are registered by the
//! registrator of their own node, through that node's Consul agent, at their
//! overlay address, and `docker service scale` is followed under load
//! without a failed request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::hosts::{Host, Hosts};
use e2e::{Answer, Lb};

const STACK: &str = "portolan";
const MESH: &str = "10.210.0.0/16";

fn stack_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../compose/stack.yml")
}

fn node_id(host: &Host) -> String {
    let out = host.docker(&["info", "-f", "{{.Swarm.NodeID}}"]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Running `hello` tasks per host, by hostname (short container ID).
fn tasks(hosts: &Hosts) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for h in hosts.all() {
        let out = h.docker(&["ps", "-q", "--filter", &format!("label=com.docker.swarm.service.name={STACK}_hello")]);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            by.insert(id.chars().take(12).collect(), h.index);
        }
    }
    by
}

/// `consul <args>` in the Consul server's task (node 1).
fn consul(hosts: &Hosts, args: &[&str]) -> String {
    let id = hosts.host(1).container_of("consul-server");
    let mut all = vec!["exec", id.as_str(), "consul"];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&hosts.host(1).docker(&all).stdout).into_owned()
}

async fn wait_routed(lb: &Lb, want: &BTreeMap<String, usize>, within: Duration) {
    let start = Instant::now();
    loop {
        let seen = lb.hostnames("/hello", want.len() * 4).await;
        if seen.as_ref().is_ok_and(|s| s.iter().eq(want.keys())) {
            return;
        }
        assert!(start.elapsed() < within, "routed {seen:?}, tasks {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn swarm_tasks_are_routed_by_their_overlay_address_and_scaling_fails_nothing() {
    let hosts = Hosts::up("sw", "10.89.2", 2);
    hosts.swarm();
    let (one, two) = (hosts.host(1), hosts.host(2));
    let (id1, id2) = (node_id(one), node_id(two));
    one.docker(&["node", "update", "--label-add", "consul=server", "--label-add", "lb=true", &id1]);
    let mut deploy = one.docker_command(&["stack", "deploy", "--resolve-image", "never", "-c"]);
    deploy.arg(stack_file()).arg(STACK);
    // Each node's registrator mounts that node's engine socket.
    deploy.env("DOCKER_SOCKET", "/tmp/portolan-hosts/sw/nodes/{{.Node.ID}}.sock");
    let out = deploy.output().expect("docker stack deploy");
    assert!(out.status.success(), "stack deploy: {}", String::from_utf8_lossy(&out.stderr));

    let lb = Lb::at(&format!("{}:80", one.ip));
    let start = Instant::now();
    while tasks(&hosts).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(90), "no hello task started");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_routed(&lb, &tasks(&hosts), Duration::from_secs(90)).await;

    // Scaled under load: 1 → 4 → 1, every new task answering, no request failing.
    let load = lb.load("/hello");
    let scale = |n: usize| {
        one.docker(&["service", "scale", "--detach", &format!("{STACK}_hello={n}")]);
    };
    scale(4);
    let start = Instant::now();
    while tasks(&hosts).len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(60), "4 tasks not running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let four = tasks(&hosts);
    wait_routed(&lb, &four, Duration::from_secs(30)).await;
    println!("4 tasks routed {:?} after the scale: {four:?}", start.elapsed());
    assert!(four.values().any(|h| *h == 1) && four.values().any(|h| *h == 2), "tasks on both nodes: {four:?}");

    // Each task is registered through its own node's agent, at its overlay address.
    let by_node = consul(&hosts, &["catalog", "nodes", "-service", "hello"]);
    for (i, id) in [(1, &id1), (2, &id2)] {
        let registered = by_node.lines().filter(|l| l.contains(id.as_str())).count();
        let running = four.values().filter(|h| **h == i).count();
        assert_eq!(registered, running, "node {i}: {registered} registered, {running} running:\n{by_node}");
    }
    let prefix = MESH.split('.').take(2).collect::<Vec<_>>().join(".");
    let health = {
        let id = one.container_of("consul-server");
        let out = one.docker(&["exec", &id, "consul", "watch", "-type=service", "-service=hello"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json: serde_json::Value = serde_json::from_str(&health).expect("consul watch answers JSON");
    let addrs: Vec<&str> =
        json.as_array().expect("a list").iter().filter_map(|e| e["Service"]["Address"].as_str()).collect();
    assert_eq!(addrs.len(), 4, "{addrs:?}");
    assert!(addrs.iter().all(|a| a.starts_with(&format!("{prefix}."))), "not overlay addresses: {addrs:?}");

    scale(1);
    let start = Instant::now();
    while tasks(&hosts).len() > 1 {
        assert!(start.elapsed() < Duration::from_secs(60), "not scaled down to 1");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_routed(&lb, &tasks(&hosts), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;
    println!("{} answers {:?}", report.ok, report.by_host);
    assert!(report.failed.is_empty(), "failed while scaling: {:?}", report.failed);
    assert!(report.by_host.len() >= 4, "not every task answered: {:?}", report.by_host);
    assert!(matches!(lb.get("/hello").await, Answer::Host(_)));
}
