//! registrator against the real Docker engine and a real Consul agent.
//! Containers are `debian:trixie-slim` (made by scripts/base-images)
//! running `sleep`, on a network of the test's own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use consul::{HealthStatus, Registration};
use registrator::docker::Engine;
use registrator::service::{CONTAINER_META, OWNER_META};
use registrator::{Deregister, Options, Registrar, Rules};
use testkit::{TestConsul, eventually};
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

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
    let opts = Options { resync_every: resync, verify_every: None };
    start_registrator_with(consul, scene, opts, Deregister::Always).0
}

fn start_registrator_with(
    consul: &TestConsul,
    scene: &Scene,
    opts: Options,
    deregister: Deregister,
) -> (Running, Arc<Registrar>) {
    let owner = format!("{}-host", scene.tag);
    let rules = Rules { owner: owner.clone(), own_networks: vec![scene.network.clone()], ..Rules::default() };
    let registrar = Registrar::new(
        registrator::HostAgent::new(consul.client(), Some(consul.node.clone())),
        Engine::connect().expect("docker"),
        rules,
    )
    .with_deregister(deregister);
    let registrar = Arc::new(registrar);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(registrator::run(registrar.clone(), opts, shutdown.clone()));
    (Running { shutdown, task, owner }, registrar)
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
    // No periodic resync: noticing the loss is the verify check's job.
    let opts = Options { resync_every: None, verify_every: Some(Duration::from_millis(300)) };
    let (reg, _) = start_registrator_with(&consul, &scene, opts, Deregister::Always);
    wait_count(&consul, &name, 1).await;

    consul.restart().await;
    assert!(services_named(&consul, &name).await.is_empty(), "a restarted dev agent starts empty");
    wait_count(&consul, &name, 1).await;
    reg.stop().await;
}

#[tokio::test]
async fn docker_health_decides_the_consul_check() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("doc");
    let env = format!("SERVICE_NAME={name}");
    let health = ["--health-cmd", "test -f /tmp/ok", "--health-interval", "500ms", "--health-retries", "1"];
    let mut args = vec!["-e", env.as_str(), "--expose", "80"];
    args.extend(health);
    let container = scene.run("a", &args, &[]);
    let reg = start_registrator(&consul, &scene, None);

    wait_count(&consul, &name, 1).await;
    let want = |status: HealthStatus| {
        let consul = &consul;
        let name = name.clone();
        async move {
            eventually(&format!("{name} is {status:?}"), LIMIT, || async {
                let seen = health_of(consul, &name).await;
                if seen == [status] { Ok(()) } else { Err(format!("{seen:?}")) }
            })
            .await
        }
    };
    // starting (then unhealthy) is critical
    want(HealthStatus::Critical).await;
    docker(&["exec", &container, "touch", "/tmp/ok"]);
    want(HealthStatus::Passing).await;
    docker(&["exec", &container, "rm", "/tmp/ok"]);
    want(HealthStatus::Critical).await;
    reg.stop().await;
}

#[tokio::test]
async fn on_success_keeps_a_crashed_container_registered_until_it_is_removed() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let (ok, crash) = (scene.service("ok"), scene.service("crash"));
    let opts = Options { resync_every: Some(Duration::from_millis(500)), verify_every: None };
    let (reg, registrar) = start_registrator_with(&consul, &scene, opts, Deregister::OnSuccess);
    let (env_ok, env_crash) = (format!("SERVICE_NAME={ok}"), format!("SERVICE_NAME={crash}"));
    scene.run("ok", &["-e", &env_ok, "--expose", "80"], &["sh", "-c", "sleep 2; exit 0"]);
    let crashed = scene.run("crash", &["-e", &env_crash, "--expose", "80"], &["sh", "-c", "sleep 2; exit 3"]);
    wait_count(&consul, &ok, 1).await;
    wait_count(&consul, &crash, 1).await;

    // After both exit (and a few resyncs), only the crashed one remains.
    wait_count(&consul, &ok, 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(services_named(&consul, &crash).await.len(), 1);
    docker(&["rm", &crashed]);
    wait_count(&consul, &crash, 0).await;

    // What happened is counted (once the round that did it is over).
    let mut registry = prometheus_client::registry::Registry::with_prefix("registrator");
    registrar.metrics().register(&mut registry);
    let text = eventually("both deregistrations counted", LIMIT, || async {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        if metric(&text, "registrator_deregistrations_total") == 2.0 { Ok(text) } else { Err(text) }
    })
    .await;
    // (Other tests' containers come and go on this engine too: events are
    // at least ours; registrations are exactly ours, the others being
    // unreachable from this test's network.)
    assert_eq!(metric(&text, "registrator_registrations_total"), 2.0, "{text}");
    assert!(metric(&text, "registrator_docker_events_total{action=\"die\"}") >= 2.0, "{text}");
    assert_eq!(metric(&text, "registrator_services"), 0.0, "{text}");
    reg.stop().await;
}

#[tokio::test]
async fn with_acls_on_the_token_registers_its_absence_is_reported_and_it_is_never_logged() {
    const TOKEN: &str = "7d1c0f4e-acl-test-secret";
    let consul = TestConsul::start_with_acls(TOKEN).await;
    let admin = consul.client_with(Some(TOKEN));
    let mut scene = Scene::new();
    let name = scene.service("acl");
    let env = format!("SERVICE_NAME={name}");
    scene.run("a", &["-e", &env, "--expose", "80"], &[]);

    // The policy the README asks for: write the services, read the nodes and the agent.
    let rules = r#"service_prefix "" { policy = "write" } node_prefix "" { policy = "read" } agent_prefix "" { policy = "read" }"#;
    let (token, _) = consul.acl_token(TOKEN, rules).await;
    let with = Process::start(&consul, &format!("{}-with", scene.tag), Some(&token));
    let without = Process::start(&consul, &format!("{}-without", scene.tag), None);
    eventually("registered with the token", LIMIT, || async {
        let all = admin.agent_services().await.map_err(|e| e.to_string())?;
        let ours: Vec<_> = all.values().filter(|s| s.service == name).map(|s| s.id.clone()).collect();
        if ours.iter().any(|id| id.contains("-with:")) { Ok(()) } else { Err(format!("{ours:?}")) }
    })
    .await;
    // Without it, registrator says why on /health (and keeps retrying).
    let (status, why) = eventually("health reports the refusal", LIMIT, || async {
        match without.health().await? {
            (503, why) => Ok((503, why)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(status, 503);
    assert!(why.contains("403"), "{why}");
    let all = admin.agent_services().await.unwrap();
    assert!(all.values().all(|s| !s.id.contains("-without:")), "{all:?}");

    let (with_log, without_log) = (with.stop(), without.stop());
    assert!(without_log.contains("ACL token is missing or lacks permission"), "{without_log}");
    assert!(with_log.contains("registered"), "{with_log}");
    // The policy covers everything it asks: its agent's self-description included.
    assert!(!with_log.contains("could not ask the Consul agent about itself"), "{with_log}");
    for log in [&with_log, &without_log] {
        assert!(!log.contains(&token) && !log.contains(TOKEN), "the token appears in the log:\n{log}");
    }
}

/// A proxy in front of the Docker socket that the test can cut (every
/// connection closed, new ones refused) and restore.
struct SocketProxy {
    path: std::path::PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SocketProxy {
    fn start(path: std::path::PathBuf) -> SocketProxy {
        let mut proxy = SocketProxy { path, task: None };
        proxy.restore();
        proxy
    }

    fn restore(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).unwrap();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut docker) = tokio::net::UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut docker).await;
                    }
                });
            }
        }));
    }

    /// Closes every connection (the JoinSet drops with the task) and stops listening.
    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test]
async fn a_cut_docker_event_stream_is_noticed_and_the_gap_resynced() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("cut");
    let env = format!("SERVICE_NAME={name}");
    let socket = std::env::temp_dir().join(format!("docker-proxy-{}.sock", scene.tag));
    let mut proxy = SocketProxy::start(socket.clone());
    let docker_host = format!("unix://{}", socket.display());
    let process = Process::start_with(&consul, &scene.tag, None, &[("DOCKER_HOST", &docker_host)]);
    scene.run("a", &["-e", &env, "--expose", "80"], &[]);
    wait_count(&consul, &name, 1).await;

    // While the stream is cut, one container goes and another comes.
    proxy.cut().await;
    docker(&["rm", "-f", &format!("{}-a", scene.tag)]);
    scene.run("b", &["-e", &env, "--expose", "80"], &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stale = services_named(&consul, &name).await;
    assert!(stale.iter().all(|s| s.id.contains("-a:")), "nothing can be seen while cut: {stale:?}");

    proxy.restore();
    let restored = std::time::Instant::now();
    let bound = Duration::from_secs(20);
    eventually("only b registered after the stream is back", bound, || async {
        let v = services_named(&consul, &name).await;
        if v.len() == 1 && v[0].id.contains("-b:") { Ok(()) } else { Err(format!("{v:?}")) }
    })
    .await;
    eprintln!(
        "[fault] Docker event stream cut 3 s: converged {:.1} s after it was restored",
        restored.elapsed().as_secs_f64()
    );
    let log = process.stop();
    assert!(log.contains("reconnecting"), "{log}");
    proxy.cut().await;
}

/// A service the catalog loses while the agent keeps it (the node reaped
/// while its host was away, and back) is registered again at once: the
/// registrator follows its node in the catalog. With no periodic verify or
/// resync, only that can bring it back in time (Consul's own anti-entropy
/// takes a minute or more).
#[tokio::test]
async fn a_service_the_catalog_lost_is_registered_again_at_once() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("kept");
    let env = format!("SERVICE_NAME={name}");
    scene.run("a", &["-e", &env, "--expose", "80"], &[]);
    let opts = Options { resync_every: None, verify_every: None };
    let (reg, registrar) = start_registrator_with(&consul, &scene, opts, Deregister::Always);
    let id = wait_count(&consul, &name, 1).await[0].id.clone();
    let registrations = || registrar.metrics().registrations.get();
    let in_catalog = || async {
        let node = consul.client().node_services(&consul.node).await.expect("catalog").value.expect("node");
        node.services.contains_key(&id)
    };
    eventually("in the catalog", Duration::from_secs(10), || async {
        if in_catalog().await { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;
    // The catalog forgets it; the agent does not.
    let body = serde_json::json!({ "Node": consul.node, "ServiceID": id });
    let url = format!("{}/v1/catalog/deregister", consul.url());
    reqwest::Client::new().put(url).json(&body).send().await.unwrap().error_for_status().unwrap();
    let lost_at = std::time::Instant::now();
    assert_eq!(registrations(), 1);
    // Registered again by registrator (Consul's own anti-entropy would bring
    // it back too, later, without a registration).
    eventually("registered again", Duration::from_secs(3), || async {
        if registrations() == 2 && in_catalog().await {
            Ok(())
        } else {
            Err(format!("{} registrations", registrations()))
        }
    })
    .await;
    println!("back in the catalog {:?} after it was lost", lost_at.elapsed());
    reg.stop().await;
}
