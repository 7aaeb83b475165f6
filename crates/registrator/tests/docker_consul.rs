//! registrator against the real Docker engine and a real Consul agent.
//! Containers are `debian:trixie-slim` (made by scripts/base-images)
//! running `sleep`, on a network of the test's own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use consul::{AgentService, Registration};
use registrator::docker::Engine;
use registrator::service::{CONTAINER_META, OWNER_META};
use registrator::{Options, Registrar, Rules};
use testkit::{TestConsul, eventually, free_port};
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "debian:trixie-slim";
const LIMIT: Duration = Duration::from_secs(10);

/// Docker objects made by one test, removed when it ends.
struct Scene {
    tag: String,
    network: String,
    containers: Vec<String>,
}

impl Scene {
    fn new() -> Self {
        let tag = format!("rt{}", free_port());
        let network = format!("{tag}-net");
        docker(&["network", "create", &network]);
        Self { tag, network, containers: Vec::new() }
    }

    /// Starts a container; `args` go before the image (env, expose, ...).
    fn run(&mut self, name: &str, args: &[&str], cmd: &[&str]) -> String {
        let name = format!("{}-{name}", self.tag);
        let mut all = vec!["run", "-d", "--name", &name, "--network", &self.network];
        all.extend_from_slice(args);
        all.push(IMAGE);
        all.extend_from_slice(if cmd.is_empty() { &["sleep", "infinity"] } else { cmd });
        let id = docker(&all);
        self.containers.push(name);
        id
    }

    fn service(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn container_ip(name: &str, network: &str) -> String {
    docker(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"), name])
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    owner: String,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

fn start_registrator(consul: &TestConsul, scene: &Scene, resync: Option<Duration>) -> Running {
    let owner = format!("{}-host", scene.tag);
    let rules = Rules { owner: owner.clone(), own_networks: vec![scene.network.clone()], ..Rules::default() };
    let registrar = Arc::new(Registrar::new(consul.client(), Engine::connect().expect("docker"), rules));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(registrator::run(registrar, Options { resync_every: resync }, shutdown.clone()));
    Running { shutdown, task, owner }
}

async fn services_named(consul: &TestConsul, name: &str) -> Vec<AgentService> {
    let all = consul.client().agent_services().await.expect("agent services");
    let mut v: Vec<_> = all.into_values().filter(|s| s.service == name).collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

async fn wait_count(consul: &TestConsul, name: &str, n: usize) -> Vec<AgentService> {
    eventually(&format!("{n} instance(s) of {name}"), LIMIT, || async {
        let v = services_named(consul, name).await;
        if v.len() == n { Ok(v) } else { Err(format!("{v:?}")) }
    })
    .await
}

#[tokio::test]
async fn registers_running_containers_at_start_with_their_network_address() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("web");
    let env = format!("SERVICE_NAME={name}");
    scene.run("a", &["-e", &env, "-e", "SERVICE_TAGS=rest,v1", "-e", "SERVICE_VERSION=3", "--expose", "8080"], &[]);
    scene.run("ignored", &["--expose", "80"], &[]);
    let reg = start_registrator(&consul, &scene, None);

    let found = wait_count(&consul, &name, 1).await;
    let s = &found[0];
    assert_eq!(s.address, container_ip(&format!("{}-a", scene.tag), &scene.network));
    assert_eq!(s.port, 8080);
    assert_eq!(s.tags, ["rest", "v1"]);
    assert_eq!(s.id, format!("{}:{}-a:8080", reg.owner, scene.tag));
    assert_eq!(s.meta.get("version").map(String::as_str), Some("3"));
    assert_eq!(s.meta.get(OWNER_META), Some(&reg.owner));
    // A container without SERVICE_NAME is not registered.
    let all = consul.client().agent_services().await.unwrap();
    assert!(all.values().all(|s| !s.id.contains("-ignored")), "{all:?}");
    reg.stop().await;
}

#[tokio::test]
async fn follows_starts_and_stops_and_normalises_names() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let reg = start_registrator(&consul, &scene, None);
    let raw = format!("{}/v1", scene.service("api"));
    let env = format!("SERVICE_NAME={raw}");
    scene.run("a", &["-e", &env, "--expose", "80"], &[]);
    scene.run("b", &["-e", &env, "--expose", "80"], &[]);
    let name = format!("{}-v1", scene.service("api"));
    wait_count(&consul, &name, 2).await;

    docker(&["stop", "-t", "1", &format!("{}-a", scene.tag)]);
    let left = wait_count(&consul, &name, 1).await;
    assert!(left[0].id.ends_with("-b:80"), "{left:?}");
    docker(&["start", &format!("{}-a", scene.tag)]);
    wait_count(&consul, &name, 2).await;
    docker(&["rm", "-f", &format!("{}-a", scene.tag), &format!("{}-b", scene.tag)]);
    wait_count(&consul, &name, 0).await;
    reg.stop().await;
}

#[tokio::test]
async fn deregisters_when_asked_to_stop_before_the_container_exits() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let reg = start_registrator(&consul, &scene, None);
    let name = scene.service("slow");
    let env = format!("SERVICE_NAME={name}");
    // Takes 3 s to exit after SIGTERM, as a server draining its requests.
    let cname = format!("{}-s", scene.tag);
    scene.run(
        "s",
        &["-e", &env, "--expose", "80"],
        &["sh", "-c", "trap 'sleep 3; exit 0' TERM; sleep infinity & wait; sleep 3"],
    );
    wait_count(&consul, &name, 1).await;

    let stopper = std::thread::spawn({
        let cname = cname.clone();
        move || docker(&["stop", "-t", "10", &cname])
    });
    wait_count(&consul, &name, 0).await;
    let state = docker(&["inspect", "-f", "{{.State.Running}}", &cname]);
    assert_eq!(state, "true", "deregistered only after the container exited");
    stopper.join().unwrap();
    reg.stop().await;
}

#[tokio::test]
async fn removes_stale_services_it_owns_and_keeps_everyone_elses() {
    let consul = TestConsul::start().await;
    let scene = Scene::new();
    let owner = format!("{}-host", scene.tag);
    let client = consul.client();
    let stale = |id: &str, owner: &str| Registration {
        id: id.into(),
        name: "ghost".into(),
        address: "10.255.0.1".into(),
        port: 80,
        meta: [(OWNER_META.to_owned(), owner.to_owned()), (CONTAINER_META.to_owned(), "gone".to_owned())].into(),
        ..Registration::default()
    };
    client.register(&stale("ours", &owner)).await.unwrap();
    client.register(&stale("theirs", "another-host")).await.unwrap();
    client
        .register(&Registration { id: "manual".into(), name: "ghost".into(), port: 1, ..Registration::default() })
        .await
        .unwrap();

    let reg = start_registrator(&consul, &scene, None);
    let left = wait_count(&consul, "ghost", 2).await;
    assert_eq!(left.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["manual", "theirs"]);
    reg.stop().await;
}

#[tokio::test]
async fn reregisters_everything_when_consul_comes_back_empty() {
    let mut consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("keep");
    let env = format!("SERVICE_NAME={name}");
    scene.run("a", &["-e", &env, "--expose", "80"], &[]);
    let reg = start_registrator(&consul, &scene, Some(Duration::from_secs(1)));
    wait_count(&consul, &name, 1).await;

    consul.restart().await;
    assert!(services_named(&consul, &name).await.is_empty(), "a restarted dev agent starts empty");
    wait_count(&consul, &name, 1).await;
    reg.stop().await;
}
