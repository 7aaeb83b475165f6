//! The compose stack end to end: up, scale, route, resolve, scale down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::{Answer, Stack};
use testkit::eventually;

#[tokio::test]
async fn scaled_instances_are_routed_and_resolvable() {
    let stack = Stack::new("e2e");
    let started = Instant::now();
    stack.up(3);
    eprintln!("stack up with 3 hello in {:?}", started.elapsed());

    let want = stack.hello_hostnames();
    assert_eq!(want.len(), 3, "compose runs 3 hello containers");
    let since = Instant::now();
    eventually("/hello answered by exactly the 3 instances", Duration::from_secs(60), || async {
        let seen = stack.hostnames(12).await?;
        if seen == want { Ok(()) } else { Err(format!("{seen:?}, want {want:?}")) }
    })
    .await;
    eprintln!("3 instances routed {:?} after compose returned", since.elapsed());

    // The demo answers as documented.
    let body: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/hello", stack.http_port)).await.unwrap().json().await.unwrap();
    assert_eq!(body["language"], "Rust");
    assert!(body["time"].as_str().is_some_and(|t| t.contains('T')), "{body}");
    // Unknown routes get a clear 404, not a hang.
    assert_eq!(stack.get("/nobody-here").await, Answer::Status(404));

    eventually("DNS lists the 3 instances", Duration::from_secs(10), || async {
        let srv = stack.srv("hello");
        if srv.len() == 3 && srv.iter().all(|(port, _)| *port == 80) { Ok(()) } else { Err(format!("{srv:?}")) }
    })
    .await;

    // Scale down under load: no request fails, and within a few seconds
    // only the remaining instance answers.
    let load = stack.load("/hello");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scaled = Instant::now();
    stack.compose(&["up", "-d", "--no-recreate", "--scale", "hello=1", "hello"]);
    let compose_took = scaled.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    eprintln!("during scale-down: {} requests answered, {} failed", report.ok, report.failed.len());
    assert!(report.failed.is_empty(), "failed requests during scale-down: {:?}", report.failed);
    assert!(report.ok > 0);
    let left = stack.hello_hostnames();
    assert_eq!(left.len(), 1);
    eventually("/hello answered by the one instance left", Duration::from_secs(5), || async {
        let seen = stack.hostnames(10).await?;
        if seen == left { Ok(()) } else { Err(format!("{seen:?}, want {left:?}")) }
    })
    .await;
    eprintln!("scaled to 1: compose took {compose_took:?}, one hostname after {:?}", scaled.elapsed());
    eventually("DNS lists the one instance", Duration::from_secs(10), || async {
        let srv = stack.srv("hello");
        if srv.len() == 1 { Ok(()) } else { Err(format!("{srv:?}")) }
    })
    .await;

    // The replaced stack's own example, run beside the stack with plain
    // `docker run` on the default bridge, its port published at random:
    // registered at the host's address and published port, and routed.
    let seed = Seed(format!("{}-hello1", stack.project));
    let ran = std::process::Command::new("docker")
        .args(["run", "-d", "--name", &seed.0, "-e", "SERVICE_NAME=hello1", "-e", "SERVICE_TAGS=rest"])
        .args(["-h", "hello1", "-p", ":80", &e2e::image("hello")])
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let since = Instant::now();
    eventually("/hello1 answered by the container started with docker run -p :80", Duration::from_secs(20), || async {
        match stack.get("/hello1").await {
            Answer::Host(h) if h == "hello1" => Ok(()),
            other => Err(format!("{other:?}\n{}", stack.logs())),
        }
    })
    .await;
    eprintln!("docker run -p :80 beside the stack routed at /hello1 {:?} after docker run returned", since.elapsed());
}

/// A container started beside the stack, removed however the test ends.
struct Seed(String);

impl Drop for Seed {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}
