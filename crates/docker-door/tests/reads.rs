//! The reads registrator makes, through a door in front of the host's real
//! Docker engine: bollard gets what it asks for, `/events` streams as
//! events happen, a client that leaves lets go of Docker, and a door whose
//! Docker is away answers 502 and serves again once it is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{EventsOptions, InspectNetworkOptions, ListContainersOptions, ListNetworksOptions};
use futures_util::StreamExt;
use testkit::{eventually, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::*;

#[tokio::test]
async fn bollard_reads_containers_networks_and_the_engine_through_the_door() {
    let door = TestDoor::start().await;
    let mut scene = Scene::default();
    let name = unique_name("door-read-");
    let id = scene.run(&name, &["--label", "door-test=read"]);
    let docker = door.bollard();

    docker.ping().await.expect("ping");
    let version = docker.version().await.expect("version");
    assert!(version.api_version.is_some(), "{version:?}");
    let info = docker.info().await.expect("info");
    assert!(info.name.is_some_and(|n| !n.is_empty()));

    let list = docker.list_containers(Some(ListContainersOptions::default())).await.expect("list");
    assert!(list.iter().any(|c| c.id.as_deref() == Some(id.as_str())), "{id} not in {list:?}");
    let all = docker.list_containers(Some(ListContainersOptions { all: true, ..Default::default() })).await;
    assert!(all.expect("list all").len() >= list.len());

    let by_id = docker.inspect_container(&id, None).await.expect("inspect by ID");
    assert_eq!(by_id.name.as_deref(), Some(format!("/{name}").as_str()));
    assert_eq!(by_id.state.and_then(|s| s.running), Some(true));
    let by_name = docker.inspect_container(&name, None).await.expect("inspect by name");
    assert_eq!(by_name.id.as_deref(), Some(id.as_str()));
    // Docker's own 404 comes through as Docker said it.
    let missing = docker.inspect_container(&unique_name("door-none-"), None).await;
    assert!(
        matches!(missing, Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })),
        "{missing:?}"
    );

    let networks = docker.list_networks(Some(ListNetworksOptions::default())).await.expect("networks");
    assert!(networks.iter().any(|n| n.name.as_deref() == Some("bridge")), "{networks:?}");
    let bridge = docker.inspect_network("bridge", None::<InspectNetworkOptions>).await.expect("inspect bridge");
    assert_eq!(bridge.name.as_deref(), Some("bridge"));
    assert!(bridge.containers.unwrap_or_default().contains_key(&id), "the container is on the bridge");

    assert_eq!(door.door.refused(), 0);
    assert!(door.door.forwarded() >= 9, "{}", door.door.forwarded());
}

#[tokio::test]
async fn events_stream_through_the_door_as_they_happen() {
    let door = TestDoor::start().await;
    let mut scene = Scene::default();
    let label = unique_name("door-events-");
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        ("label".to_owned(), vec![format!("door-test={label}")]),
    ]);
    let docker = door.bollard();
    let events = docker.events(Some(EventsOptions { since: None, until: None, filters: Some(filters) }));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follow = tokio::spawn(events.for_each(move |event| {
        let _ = tx.send(event);
        async {}
    }));
    // The stream is open (Docker answered its head) before the container starts.
    eventually("the events stream open", LIMIT, || async {
        if door.door.upstreams_open() == 1 { Ok(()) } else { Err(door.door.upstreams_open().to_string()) }
    })
    .await;

    let id = scene.run(&label, &["--label", &format!("door-test={label}")]);
    let mut seen = Vec::new();
    let started = tokio::time::timeout(LIMIT, async {
        while let Some(event) = rx.recv().await {
            let event = event.expect("event");
            let action = event.action.clone().unwrap_or_default();
            let actor = event.actor.and_then(|a| a.id).unwrap_or_default();
            seen.push(format!("{action} {actor}"));
            if action == "start" && actor == id {
                return true;
            }
        }
        false
    })
    .await;
    follow.abort();
    assert_eq!(started, Ok(true), "no start event for {id}; saw {seen:?}");
    assert_eq!(door.door.refused(), 0);
}

#[tokio::test]
async fn a_client_that_leaves_an_event_stream_lets_go_of_docker() {
    let door = TestDoor::start().await;
    let mut conn = tokio::net::TcpStream::connect(door.addr).await.unwrap();
    conn.write_all(b"GET /v1.41/events HTTP/1.1\r\nHost: door\r\n\r\n").await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(LIMIT, conn.read(&mut head)).await.expect("head in time").unwrap();
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "streamed, not buffered: {head}");
    assert_eq!(door.door.upstreams_open(), 1);

    // No event needs to happen for the door to notice.
    drop(conn);
    eventually("the upstream connection closed", LIMIT, || async {
        match door.door.upstreams_open() {
            0 => Ok(()),
            n => Err(format!("{n} open")),
        }
    })
    .await;
}

#[tokio::test]
async fn docker_away_is_a_502_and_the_door_serves_again_once_it_is_back() {
    let dir = std::env::temp_dir().join(unique_name("docker-door-away-"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("docker.sock");
    let door = TestDoor::start_at(&socket).await;

    let away = raw(door.addr, "GET", "/_ping", &[], "").await;
    assert_eq!(away.status, 502, "{away:?}");
    let message = away.message();
    assert!(message.starts_with("docker-door: cannot connect to Docker at "), "{message}");
    assert!(message.contains(&socket.display().to_string()), "{message}");
    // Many failed requests later, it still serves.
    for _ in 0..50 {
        assert_eq!(raw(door.addr, "GET", "/info", &[], "").await.status, 502);
    }

    // Docker comes back at that path.
    std::os::unix::fs::symlink(DOCKER, &socket).unwrap();
    let back = raw(door.addr, "GET", "/_ping", &[], "").await;
    assert_eq!((back.status, back.body.as_str()), (200, "OK"), "{back:?}");
    door.bollard().info().await.expect("info once Docker is back");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn probe_exits_0_only_when_ping_through_the_door_answers() {
    let probe = |listen: String| async move {
        let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_docker-door"))
            .args(["--probe", "--listen", &listen])
            .status()
            .await
            .unwrap();
        status.code()
    };
    let good = TestDoor::start().await;
    assert_eq!(probe(good.addr.to_string()).await, Some(0));
    // The door answers, but Docker behind it does not.
    let blind = TestDoor::start_at(std::env::temp_dir().join(unique_name("no-docker-"))).await;
    assert_eq!(probe(blind.addr.to_string()).await, Some(1));
    // Nothing listens.
    let gone = good.addr;
    drop(good);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(probe(gone.to_string()).await, Some(1));
}

#[tokio::test]
async fn the_binary_serves_on_a_unix_socket_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(unique_name("docker-door-unix-"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("door.sock");
    let listen = format!("unix://{}", socket.display());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_docker-door"))
        .args(["--listen", &listen, "--log-format", "json"])
        .env("DOCKER_SOCKET", DOCKER)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("the door's socket", LIMIT, || async {
        if socket.exists() { Ok(()) } else { Err("not yet".to_owned()) }
    })
    .await;

    let docker = bollard::Docker::connect_with_unix(&listen, 10, bollard::API_DEFAULT_VERSION).unwrap();
    docker.ping().await.expect("ping through the unix door");
    let refused =
        docker.create_container(None::<bollard::query_parameters::CreateContainerOptions>, Default::default());
    let refused = refused.await;
    let Err(bollard::errors::Error::DockerResponseServerError { status_code, message }) = refused else {
        panic!("create went through: {refused:?}")
    };
    assert_eq!(status_code, 403);
    assert!(message.starts_with("docker-door: POST /containers/create"), "{message}");
    let probe = tokio::process::Command::new(env!("CARGO_BIN_EXE_docker-door"))
        .args(["--probe", "--listen", &listen])
        .status()
        .await
        .unwrap();
    assert!(probe.success());

    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(LIMIT, child.wait()).await.expect("stops on SIGTERM").unwrap();
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).await.unwrap();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("\"message\":\"refused\"")).collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(
        refusals[0].contains("\"level\":\"WARN\"") && refusals[0].contains("\"path\":\"/containers/create\""),
        "{log}"
    );
    assert!(refusals[0].contains("\"client\":\"unix:"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
