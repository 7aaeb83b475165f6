//! Requests whose instance fails them: the default template's retries,
//! against a real Consul agent and a real HAProxy. Each service has a good
//! instance and one that passes HAProxy's health checks but fails every
//! other request in one way (a reset, a close, half a response head, a
//! 503), as an instance killed mid-request does. An idempotent request
//! that meets it is answered by the good one; a POST is sent once and
//! never again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use haproxy_sync::config::Args;
mod common;

use common::Running;
use testkit::{TestConsul, eventually, stable_port, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);
const CHECK_PATH: &str = "/health";

/// How an instance treats every request but its health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers 200 with `good <method> <path>`.
    Good,
    /// Reads the request, then resets the connection (SO_LINGER 0): no answer.
    Reset,
    /// Reads the request, then closes the connection: no answer.
    Close,
    /// Writes the start of a response head, then closes the connection.
    HalfHead,
    /// Answers 503.
    Unavailable,
}

/// An instance on loopback; what it was sent (health checks aside).
struct Instance {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Instance {
    async fn start(mode: Mode) -> Instance {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, mode, log.clone()));
            }
        });
        Instance { port, seen }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests of `method` it was sent.
    fn count(&self, method: &str) -> usize {
        self.seen().iter().filter(|(m, _)| m == method).count()
    }

    fn saw(&self, method: &str, path: &str) -> bool {
        self.seen().iter().any(|(m, p)| m == method && p == path)
    }
}

/// One request on `conn` (HAProxy's health checks and requests alike), answered as `mode` says.
async fn serve(mut conn: TcpStream, mode: Mode, seen: Arc<Mutex<Vec<(String, String)>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or_default().to_owned(), words.next().unwrap_or_default().to_owned());
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .map_or(0, |(_, v)| v.trim().parse().unwrap_or(0));
    while buf.len() < head_end + length {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let answer = |status: &str, body: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    };
    if path == CHECK_PATH {
        let _ = conn.write_all(answer("200 OK", "ok").as_bytes()).await;
        return;
    }
    seen.lock().unwrap().push((method.clone(), path.clone()));
    match mode {
        Mode::Good => {
            let mut response = answer("200 OK", &format!("good {method} {path}"));
            if method == "HEAD" {
                // The head alone, with the length a GET's body would have.
                response.truncate(response.find("\r\n\r\n").unwrap() + 4);
            }
            let _ = conn.write_all(response.as_bytes()).await;
        }
        Mode::Reset => conn.set_zero_linger().unwrap(),
        Mode::Close => {}
        Mode::HalfHead => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Ty").await;
            let _ = conn.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Mode::Unavailable => {
            let _ = conn.write_all(answer("503 Service Unavailable", "unavailable").as_bytes()).await;
        }
    }
}

/// haproxy-sync running HAProxy, in this process.
struct Lb {
    http: u16,
    run: Running,
    client: reqwest::Client,
}

impl Lb {
    async fn start(consul: &TestConsul) -> Lb {
        let http = stable_port();
        let dir = std::env::temp_dir().join(unique_name("haproxy-sync-retries-"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut argv = common::argv(consul, &dir, http, &[]);
        // A template to try in place of the default one (the defaults of an
        // older release, say): RETRIES_TEMPLATE=FILE.
        if let Some(template) = std::env::var_os("RETRIES_TEMPLATE") {
            argv.extend(["--template".to_owned(), template.to_string_lossy().into_owned()]);
        }
        let run = Running::start(Args::parse_from(argv), dir);
        // A connection per request: each one meets HAProxy's choice afresh.
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(LIMIT).build().unwrap();
        let lb = Lb { http, run, client };
        eventually("HAProxy listens", LIMIT, || async {
            TcpStream::connect(("127.0.0.1", http)).await.map(drop).map_err(|e| e.to_string())
        })
        .await;
        lb
    }

    /// `method path` through HAProxy: the status and body, or why there is none.
    async fn send(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://127.0.0.1:{}{path}", self.http);
        let mut request = self.client.request(method.parse().unwrap(), url);
        if matches!(method, "POST" | "PUT") {
            request = request.body(format!("{method} body"));
        }
        let resp = request.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    }

    async fn stop(self) {
        self.run.stop().await;
    }
}

/// A routed service `name` with a good instance and one failing as `mode` says.
async fn service(consul: &TestConsul, name: &str, mode: Mode) -> (Instance, Instance) {
    let (good, bad) = (Instance::start(Mode::Good).await, Instance::start(mode).await);
    for (id, instance) in [("good", &good), ("bad", &bad)] {
        common::register(consul, &format!("{name}-{id}"), name, instance.port, &[("lb_check_path", CHECK_PATH)]).await;
    }
    (good, bad)
}

/// Sends `method` requests to `/<name>/<method>-<n>` until the failing
/// instance has been sent one: asserts every one was answered by the good
/// instance, that one included (the good instance saw its path too).
async fn idempotent_requests_go_to_the_good_instance(
    lb: &Lb,
    name: &str,
    good: &Instance,
    bad: &Instance,
    method: &str,
) {
    let before = bad.count(method);
    for n in 0.. {
        assert!(n < 100, "{method} /{name}: 100 requests and none reached the failing instance");
        let path = format!("/{name}/{method}-{n}");
        let answer = lb.send(method, &path).await;
        let stripped = format!("/{method}-{n}");
        let want = if method == "HEAD" { String::new() } else { format!("good {method} {stripped}") };
        assert_eq!(answer, Ok((200, want)), "{method} {path}");
        if bad.count(method) > before {
            assert!(bad.saw(method, &stripped), "the failing instance got another {method} than {path}");
            assert!(good.saw(method, &stripped), "{method} {path} was answered, but not by the good instance");
            return;
        }
        // The failing instance may be out (marked down) until its next check passes.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends POSTs to `/<name>/post-<n>` until the failing instance has been
/// sent one: that one fails (with `status`, HAProxy's or the instance's)
/// and no instance is sent it again; the others are answered by the good one.
async fn a_post_is_sent_once(lb: &Lb, name: &str, good: &Instance, bad: &Instance, status: u16) {
    for n in 0.. {
        assert!(n < 100, "POST /{name}: 100 requests and none reached the failing instance");
        let path = format!("/{name}/post-{n}");
        let stripped = format!("/post-{n}");
        let answer = lb.send("POST", &path).await;
        if bad.count("POST") == 0 {
            assert_eq!(answer, Ok((200, format!("good POST {stripped}"))), "POST {path}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(answer.map(|(status, _)| status), Ok(status), "POST {path}, which the failing instance got");
        // Whatever HAProxy might still do with it, it has done within a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let posts: Vec<(String, String)> = bad.seen().into_iter().filter(|(m, _)| m == "POST").collect();
        assert_eq!(posts, [("POST".to_owned(), stripped.clone())], "the failing instance was sent it again");
        assert!(!good.saw("POST", &stripped), "POST {path} was sent again, to the good instance");
        return;
    }
}

#[tokio::test]
async fn idempotent_requests_whose_instance_fails_them_are_answered_by_another_and_a_post_is_never_sent_twice() {
    let consul = TestConsul::start().await;
    let reset = service(&consul, "reset", Mode::Reset).await;
    let close = service(&consul, "close", Mode::Close).await;
    let half = service(&consul, "half", Mode::HalfHead).await;
    let unavailable = service(&consul, "unavailable", Mode::Unavailable).await;
    let post_reset = service(&consul, "postreset", Mode::Reset).await;
    let post_unavailable = service(&consul, "postunavailable", Mode::Unavailable).await;
    let lb = Lb::start(&consul).await;
    // Every service is in HAProxy's first configuration.
    eventually("the services routed", LIMIT, || async {
        let routed = lb.send("GET", "/postunavailable/ready").await;
        if matches!(routed, Ok((200, _))) { Ok(()) } else { Err(format!("{routed:?}")) }
    })
    .await;

    // Reset after the request was read: any idempotent method.
    for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] {
        idempotent_requests_go_to_the_good_instance(&lb, "reset", &reset.0, &reset.1, method).await;
    }
    // Closed without an answer, half a response head, a 503.
    idempotent_requests_go_to_the_good_instance(&lb, "close", &close.0, &close.1, "GET").await;
    idempotent_requests_go_to_the_good_instance(&lb, "half", &half.0, &half.1, "GET").await;
    idempotent_requests_go_to_the_good_instance(&lb, "unavailable", &unavailable.0, &unavailable.1, "GET").await;

    // A POST whose instance reset the connection fails (HAProxy's 502); one
    // answered 503 gets that 503. Neither is sent anywhere again.
    a_post_is_sent_once(&lb, "postreset", &post_reset.0, &post_reset.1, 502).await;
    a_post_is_sent_once(&lb, "postunavailable", &post_unavailable.0, &post_unavailable.1, 503).await;
    lb.stop().await;
}
