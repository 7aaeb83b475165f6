//! What the door refuses, against the host's real Docker engine: writes,
//! reads that leak data, smuggled paths and upgrades all get a 403 in
//! Docker's error shape, and the engine is left exactly as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use testkit::unique_name;

mod common;
use common::*;

/// Sends each `(method, target, body)` to the door and checks the 403 and
/// its message; returns how many were sent.
async fn all_refused(door: &TestDoor, requests: &[(&str, String, &str)]) -> u64 {
    for (method, target, body) in requests {
        let answer = raw(door.addr, method, target, &[], body).await;
        assert_eq!(answer.status, 403, "{method} {target}: {answer:?}");
        if *method == "HEAD" {
            continue; // An answer to HEAD has no body.
        }
        let path = target.split('?').next().unwrap_or_default();
        assert_eq!(
            answer.message(),
            format!(
                "docker-door: {method} {path} is not allowed: registrator only reads containers, networks and events"
            ),
            "{method} {target}"
        );
        assert!(answer.head.to_ascii_lowercase().contains("content-type: application/json"), "{answer:?}");
    }
    u64::try_from(requests.len()).unwrap()
}

#[tokio::test]
async fn writes_and_reads_that_leak_data_are_refused_and_change_nothing() {
    let door = TestDoor::start().await;
    let mut scene = Scene::default();
    let name = unique_name("door-target-");
    let id = scene.run(&name, &[]);
    let target = |id: &str| {
        docker(&["inspect", "-f", "{{.State.Status}} {{.State.StartedAt}} {{.RestartCount}} {{len .ExecIDs}}", id])
    };
    let before = target(&id);
    assert!(before.starts_with("running ") && before.ends_with(" 0 0"), "{before}");
    // What a create that went through would leave: a container with this label.
    let label = unique_name("door-created-");
    // Should the door let one through, it is removed all the same.
    scene.labels.push(label.clone());
    scene.containers.push(format!("{name}-2"));
    let create = format!(r#"{{"Image":"{IMAGE}","Labels":{{"door-test":"{label}"}}}}"#);
    let exec = r#"{"Cmd":["true"],"AttachStdout":true}"#;
    let requests: Vec<(&str, String, &str)> = vec![
        ("POST", "/containers/create".into(), create.as_str()),
        ("POST", format!("/v1.41/containers/create?name={name}-2"), create.as_str()),
        ("POST", format!("/containers/{id}/exec"), exec),
        ("POST", format!("/v1.41/containers/{name}/exec"), exec),
        ("DELETE", format!("/containers/{id}?force=true"), ""),
        ("DELETE", format!("/v1.41/containers/{name}?force=1"), ""),
        ("POST", format!("/containers/{id}/stop"), ""),
        ("POST", format!("/containers/{id}/kill"), ""),
        ("POST", format!("/containers/{id}/pause"), ""),
        ("POST", format!("/containers/{id}/attach?stream=1&stdin=1"), ""),
        ("POST", "/exec/abc/start".into(), "{}"),
        ("GET", "/exec/abc/json".into(), ""),
        ("PUT", format!("/containers/{id}/archive?path=/"), "x"),
        ("GET", format!("/containers/{id}/logs?stdout=1&stderr=1"), ""),
        ("GET", format!("/v1.41/containers/{id}/archive?path=/"), ""),
        ("HEAD", format!("/containers/{id}/archive?path=/"), ""),
        ("GET", format!("/containers/{id}/export"), ""),
        ("GET", "/secrets".into(), ""),
        ("GET", "/configs".into(), ""),
        ("GET", "/images/json".into(), ""),
        ("POST", "/images/create?fromImage=busybox".into(), ""),
        ("POST", "/build".into(), ""),
        ("POST", "/networks/create".into(), r#"{"Name":"door-x"}"#),
        ("POST", "/volumes/create".into(), "{}"),
        ("GET", "/system/df".into(), ""),
        ("POST", "/_ping".into(), ""),
        ("OPTIONS", "/info".into(), ""),
    ];
    let sent = all_refused(&door, &requests).await;

    // Other tests and CI may run containers meanwhile: look only at ours.
    let created = docker(&["ps", "-a", "--filter", &format!("label=door-test={label}"), "--format", "{{.ID}}"]);
    assert_eq!(created, "", "a refused create made a container");
    let named = docker(&["ps", "-a", "--filter", &format!("name={name}-2"), "--format", "{{.ID}}"]);
    assert_eq!(named, "", "a refused create made a container");
    assert_eq!(target(&id), before, "a refused request changed the container");
    assert_eq!(door.door.refused(), sent);
    assert_eq!(door.door.forwarded(), 0);
    assert_eq!(door.door.upstreams_open(), 0);
}

#[tokio::test]
async fn an_id_cannot_smuggle_another_path() {
    let door = TestDoor::start().await;
    let requests: Vec<(&str, String, &str)> = vec![
        ("GET", "/containers/..%2F..%2Fimages%2Fjson/json".into(), ""),
        ("GET", "/v1.41/containers/abc/../../images/json".into(), ""),
        ("GET", "/containers/%2e%2e/%2e%2e/images/json".into(), ""),
        ("GET", "/v1.41/containers/%2E%2E%2Fsecrets/json".into(), ""),
        ("GET", "/containers/abc%2Flogs/json".into(), ""),
        ("GET", "/containers/../secrets/json".into(), ""),
        ("GET", "/networks/..".into(), ""),
        ("GET", "/networks/%2e%2e%2Fsecrets".into(), ""),
        ("GET", "/containers//json".into(), ""),
        ("GET", "//containers/json".into(), ""),
        ("GET", "/v1.41/v1.41/info".into(), ""),
        ("GET", "/containers/json/../../secrets".into(), ""),
    ];
    let sent = all_refused(&door, &requests).await;
    assert_eq!(door.door.refused(), sent);
    assert_eq!(door.door.forwarded(), 0);
}

#[tokio::test]
async fn upgrades_are_refused_even_on_an_allowed_path() {
    let door = TestDoor::start().await;
    for extra in [&["Connection: Upgrade", "Upgrade: tcp"][..], &["Upgrade: websocket"][..]] {
        let answer = raw(door.addr, "GET", "/events", extra, "").await;
        assert_eq!(answer.status, 403, "{extra:?}: {answer:?}");
        assert!(answer.message().contains("GET /events with an HTTP upgrade is not allowed"), "{answer:?}");
    }
    // The same path without one is forwarded.
    let answer = raw(door.addr, "GET", "/version", &[], "").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!((door.door.refused(), door.door.forwarded()), (2, 1));
}

#[tokio::test]
async fn a_flood_of_refused_requests_on_one_connection_is_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let door = TestDoor::start().await;
    let mut conn = tokio::net::TcpStream::connect(door.addr).await.unwrap();
    // 200 pipelined requests without bodies, then one the door forwards.
    let mut flood = String::new();
    for i in 0..200 {
        flood.push_str(&format!("DELETE /containers/c{i} HTTP/1.1\r\nHost: door\r\n\r\n"));
    }
    flood.push_str("GET /_ping HTTP/1.1\r\nHost: door\r\nConnection: close\r\n\r\n");
    conn.write_all(flood.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(LIMIT, conn.read_to_end(&mut bytes)).await.expect("answers in time").unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(text.matches("HTTP/1.1 403").count(), 200);
    assert!(text.ends_with("\r\n\r\nOK"), "the last answer is Docker's: {}", &text[text.len().saturating_sub(300)..]);
    assert_eq!((door.door.refused(), door.door.forwarded()), (200, 1));
}
