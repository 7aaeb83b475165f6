//! registrator itself, behind the door: the registrator binary (built by
//! this test with cargo, into this build's target directory) is given only
//! `DOCKER_HOST=tcp://` the door, and registers and deregisters a container
//! in a real Consul agent without the door refusing a single request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use testkit::{TestConsul, eventually, unique_name};

mod common;
use common::*;

/// The registrator binary of this build, built now if missing or stale:
/// Cargo gives a test the binaries of its own package only.
fn registrator_binary() -> PathBuf {
    // This test runs as <target>/<profile>/deps/registrator-<hash>.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("<target>/<profile>");
    let target = profile_dir.parent().expect("<target>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let built = Command::new(cargo)
        .args(["build", "--quiet", "-p", "registrator", "--bin", "registrator", "--profile", profile])
        .arg("--target-dir")
        .arg(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success(), "cargo build -p registrator: {built:?}");
    profile_dir.join("registrator")
}

#[tokio::test]
async fn registrator_registers_and_deregisters_through_the_door_without_a_refusal() {
    let binary = tokio::task::spawn_blocking(registrator_binary).await.unwrap();
    let consul = TestConsul::start().await;
    let door = TestDoor::start().await;
    let mut scene = Scene::default();
    let tag = unique_name("door-reg-");
    let network = format!("{tag}-net");
    scene.network(&network);

    let owner = format!("{tag}-host");
    let log = std::env::temp_dir().join(format!("{tag}.log"));
    let mut registrator = tokio::process::Command::new(&binary)
        .args(["--owner", &owner, "--metrics-addr=", "--log-format", "json"])
        .arg(format!("consul://{}", consul.http))
        .env("DOCKER_HOST", format!("tcp://{}", door.addr))
        .env("RUST_LOG", "info")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_ADDR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let service = format!("{tag}-web");
    let container = format!("{tag}-a");
    scene.run(&container, &["--network", &network, "-e", &format!("SERVICE_NAME={service}")]);
    let ip = docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        &container,
    ]);
    let registered = eventually(&format!("{service} registered"), LIMIT, || async {
        let all = consul.client().agent_services().await.map_err(|e| e.to_string())?;
        let found: Vec<_> = all.into_values().filter(|s| s.service == service).collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{other:?}; registrator log: {}", std::fs::read_to_string(&log).unwrap_or_default())),
        }
    })
    .await;
    assert_eq!((registered.address.as_str(), registered.port), (ip.as_str(), 80));
    assert_eq!(registered.id, format!("{owner}:{container}:80"));

    // The container goes: registrator hears it on /events, through the door.
    docker(&["rm", "-f", &container]);
    eventually(&format!("{service} deregistered"), LIMIT, || async {
        let all = consul.client().agent_services().await.map_err(|e| e.to_string())?;
        if all.values().any(|s| s.service == service) { Err("still registered".to_owned()) } else { Ok(()) }
    })
    .await;

    let _ = registrator.kill().await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(door.door.refused(), 0, "the door refused registrator; its log: {text}");
    assert!(door.door.forwarded() >= 3, "registrator did not go through the door: {}", door.door.forwarded());
    assert!(!text.contains("docker not reachable"), "{text}");
}
