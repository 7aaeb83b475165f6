//! What the docker-door integration tests share: a door served in-process
//! on a loopback port in front of the host's real Docker socket, raw HTTP
//! requests (sent byte for byte, so no client library tidies a path up),
//! and containers a test makes and removes, however it ends.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use docker_door::{Door, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The host's Docker socket.
pub const DOCKER: &str = "/var/run/docker.sock";
/// An image that exists here and runs without arguments (an HTTP server).
pub const IMAGE: &str = "portolan/hello:0.1.0";
pub const LIMIT: Duration = Duration::from_secs(15);

/// A door on `127.0.0.1:<port>`, stopped on drop.
pub struct TestDoor {
    pub addr: SocketAddr,
    pub door: Arc<Door>,
    shutdown: CancellationToken,
}

impl TestDoor {
    /// A door in front of the host's Docker socket.
    pub async fn start() -> Self {
        Self::start_at(DOCKER).await
    }

    /// A door in front of the socket at `docker` (which may not exist).
    pub async fn start_at(docker: impl AsRef<Path>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let door = Arc::new(Door::new(docker.as_ref()));
        let shutdown = CancellationToken::new();
        tokio::spawn(docker_door::serve(Listener::Tcp(listener), door.clone(), shutdown.clone()));
        Self { addr, door, shutdown }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// bollard, talking to the door.
    pub fn bollard(&self) -> bollard::Docker {
        bollard::Docker::connect_with_http(&self.url(), 10, bollard::API_DEFAULT_VERSION).unwrap()
    }
}

impl Drop for TestDoor {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One answer, as read off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The `message` of a JSON body (Docker's error shape).
    pub fn message(&self) -> String {
        let json: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        json["message"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends `method target` byte for byte (with `extra` header lines and
/// `body`) on a connection of its own and reads the answer to its end.
pub async fn raw(addr: SocketAddr, method: &str, target: &str, extra: &[&str], body: &str) -> Answer {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: door\r\nConnection: close\r\n");
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(LIMIT, conn.read_to_end(&mut bytes)).await.expect("answer in time").unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_owned(), body: body.to_owned() }
}

/// The docker CLI on the real socket; panics when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).env("DOCKER_HOST", format!("unix://{DOCKER}")).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Docker objects one test makes, removed when it ends, passing or not.
#[derive(Default)]
pub struct Scene {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    /// `door-test` label values: any container carrying one is removed too.
    pub labels: Vec<String>,
}

impl Scene {
    /// Starts `IMAGE` on the real socket as `name`, with `args` before the
    /// image; returns its full ID.
    pub fn run(&mut self, name: &str, args: &[&str]) -> String {
        self.containers.push(name.to_owned());
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        all.push(IMAGE);
        docker(&all)
    }

    /// Makes a user network `name`.
    pub fn network(&mut self, name: &str) {
        docker(&["network", "create", name]);
        self.networks.push(name.to_owned());
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for label in &self.labels {
            let filter = format!("label=door-test={label}");
            let out = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output();
            let ids = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            for id in ids.split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for n in &self.networks {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
    }
}
