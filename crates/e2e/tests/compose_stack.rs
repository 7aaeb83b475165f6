//! The compose stack end to end: up, scale, route, resolve, scale down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Answer, Seed, Stack};
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

/// The stack's access log and a TCP service: a request with an ID is
/// logged as one JSON line carrying it; containers asking for TCP routing
/// on a port are served there, each connection by one of them, and a new
/// one joins while a client keeps connecting.
#[tokio::test]
async fn access_logs_are_json_and_a_tcp_service_is_served_on_its_port() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stack = Stack::new("edge");
    stack.up(1);
    eventually("/hello answers", Duration::from_secs(60), || async { stack.hostnames(2).await.map(drop) }).await;

    // The access log: the request's ID, service, server and status.
    let id = testkit::unique_name("req-");
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/hello", stack.http_port))
        .header("x-request-id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let haproxy = stack.container("haproxy");
    let line = eventually("the request's access log line", Duration::from_secs(10), || async {
        let out = std::process::Command::new("docker").args(["logs", &haproxy]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find(|l| l.contains(&id)).map(str::to_owned).ok_or_else(|| "not logged yet".to_owned())
    })
    .await;
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(entry["request_id"], id.as_str(), "{line}");
    assert_eq!(entry["service"], "be_hello", "{line}");
    assert_eq!(entry["status"], 200, "{line}");
    assert_eq!(entry["path"], "/hello", "{line}");
    assert!(entry["server"].as_str().is_some_and(|s| s.starts_with('s')), "{line}");
    assert!(entry["t_total"].as_i64().is_some_and(|t| t >= 0), "{line}");

    // A TCP service: the demo's echo on port 7000, routed by port 7000.
    let echo = |name: &str| {
        let mut args: Vec<String> = ["run", "-d", "--name", name, "--network", &stack.network(), "--expose", "7000"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for env in [
            "ECHO_LISTEN=0.0.0.0:7000",
            "SERVICE_80_IGNORE=true",
            "SERVICE_7000_NAME=echo",
            "SERVICE_7000_TAGS=rest",
            "SERVICE_LB_MODE=tcp",
            "SERVICE_LB_PORT=7000",
        ] {
            args.extend(["-e".to_owned(), env.to_owned()]);
        }
        args.extend(["-h".to_owned(), name.to_owned(), e2e::image("hello")]);
        let out = std::process::Command::new("docker").args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Seed(name.to_owned())
    };
    let first = format!("{}-echo1", stack.project);
    let _one = echo(&first);
    let lb_ip = stack.container_ip("haproxy");
    let ask = move || {
        let lb_ip = lb_ip.clone();
        async move {
            let conn = tokio::net::TcpStream::connect((lb_ip.as_str(), 7000)).await.map_err(|e| e.to_string())?;
            let mut conn = BufReader::new(conn);
            let mut host = String::new();
            conn.read_line(&mut host).await.map_err(|e| e.to_string())?;
            conn.get_mut().write_all(b"ping\n").await.map_err(|e| e.to_string())?;
            let mut echo = String::new();
            conn.read_line(&mut echo).await.map_err(|e| e.to_string())?;
            if echo == "ping\n" { Ok(host.trim().to_owned()) } else { Err(format!("echo {echo:?} from {host:?}")) }
        }
    };
    eventually("the TCP service answers on port 7000", Duration::from_secs(20), || async {
        match ask().await {
            Ok(h) if h == first => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A second instance joins while a client keeps connecting: no failed
    // connection, and both answer.
    let second = format!("{}-echo2", stack.project);
    let load = tokio::spawn({
        let ask = ask.clone();
        async move {
            let (mut seen, mut failed) = (std::collections::BTreeMap::<String, u32>::new(), Vec::new());
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                match ask().await {
                    Ok(h) => *seen.entry(h).or_default() += 1,
                    Err(e) => failed.push(e),
                }
            }
            (seen, failed)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _two = echo(&second);
    let (seen, failed) = load.await.unwrap();
    eprintln!("TCP connections while a second instance joined: {seen:?}, failed {}", failed.len());
    assert!(failed.is_empty(), "{failed:?}");
    assert!(seen.contains_key(&first) && seen.contains_key(&second), "{seen:?}\n{}", stack.logs());
}

/// HTTPS on the stack's HAProxy (the image's version): a certificate put in
/// the certificates directory is served for its name by SNI, and one
/// renewed under an HTTPS load (a new connection and handshake per
/// request) is served without a reload and without a failed request; then
/// HAProxy's worker is SIGKILLed under that load, and only the requests in
/// flight on it may fail (the HTTPS listener is held across the restart).
#[tokio::test]
async fn https_serves_a_certificate_by_name_and_renews_it_without_a_reload_or_a_failed_request() {
    let stack = Stack::new("tls");
    stack.up(1);
    eventually("/hello answers", Duration::from_secs(60), || async { stack.hostnames(2).await.map(drop) }).await;
    let ca = testkit::TestCa::new();
    // A new connection and handshake for every request.
    let new_client = || {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .resolve("shop.test", ([127, 0, 0, 1], stack.https_port).into())
            .pool_max_idle_per_host(0)
            .tls_info(true)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let client = new_client();
    let url = format!("https://shop.test:{}/hello", stack.https_port);
    // The leaf certificate that answered a request, or what went wrong; a
    // client of its own, as a client resuming a TLS session is not shown
    // the certificate again.
    let served = || async {
        let resp = new_client().get(&url).send().await.map_err(|e| format!("{e:?}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let info = resp.extensions().get::<reqwest::tls::TlsInfo>().cloned();
        info.and_then(|i| i.peer_certificate().map(<[u8]>::to_vec)).ok_or_else(|| "no certificate".to_owned())
    };
    // Written as a secret update does: a new file renamed over.
    let put = |pem: &str| {
        let tmp = stack.certs_dir.join(".shop.test.pem.tmp");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(tmp, stack.certs_dir.join("shop.test.pem")).unwrap();
    };

    // Before any certificate: HAProxy's self-signed default, which the CA
    // does not vouch for.
    assert!(served().await.is_err(), "no certificate of the CA yet");
    let (pem, first) = ca.issue("shop.test");
    put(&pem);
    eventually("the certificate served for shop.test", Duration::from_secs(10), || async {
        let leaf = served().await?;
        if leaf == first { Ok(()) } else { Err("another certificate".to_owned()) }
    })
    .await;

    let before = stack.haproxy_sync_reloads().await;
    // Two clients, a new connection per request, until `stop`; each failure
    // with the time it happened.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            let (stop, failures, answered) = (stop.clone(), failures.clone(), answered.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send().await.map(|r| r.status()) {
                        Ok(s) if s.is_success() => _ = answered.fetch_add(1, Ordering::Relaxed),
                        other => failures.lock().unwrap().push((Instant::now(), format!("{other:?}"))),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (pem, renewed) = ca.issue("shop.test");
    let since = Instant::now();
    put(&pem);
    eventually("the renewed certificate served", Duration::from_secs(10), || async {
        let leaf = served().await?;
        if leaf == renewed { Ok(()) } else { Err("the old one still".to_owned()) }
    })
    .await;
    let took = since.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let renewed_reloads = stack.haproxy_sync_reloads().await;

    // HAProxy's worker SIGKILLed under the same load: haproxy-keeper holds
    // the HTTPS listener too, so only the requests in flight (one per
    // client) may fail.
    let worker = stack.haproxy_workers().first().expect("an HAProxy worker").to_string();
    let killed = Instant::now();
    assert!(std::process::Command::new("kill").args(["-9", &worker]).status().unwrap().success());
    eventually("HTTPS answers again after the worker's death", Duration::from_secs(20), || async {
        served().await.map(drop)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let (at_renewal, at_kill): (Vec<_>, Vec<_>) = failures.iter().partition(|(t, _)| *t < killed);
    eprintln!(
        "renewed certificate served {took:?} after it was written; {} HTTPS requests, {} failed over the renewal, \
         {} after the worker was killed",
        answered.load(Ordering::Relaxed),
        at_renewal.len(),
        at_kill.len()
    );
    assert!(at_renewal.is_empty(), "no request fails over the renewal: {at_renewal:?}");
    assert_eq!(renewed_reloads, before, "renewed without a reload");
    assert!(at_kill.len() <= 2, "only the 2 clients' requests in flight on the worker may fail: {at_kill:?}");
    assert!(answered.load(Ordering::Relaxed) > 0);
}
