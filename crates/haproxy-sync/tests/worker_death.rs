//! A real HAProxy worker SIGKILLed under load, HAProxy kept by
//! `haproxy::supervise` as haproxy-sync and haproxy-keeper keep it: its
//! master exits with its last worker and is started again; with the HTTP
//! listener held for it (`fd@`), the port never refuses a connection, so
//! only the requests in flight on the worker fail. The same kill with
//! HAProxy binding the port itself is reported beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use haproxy_sync::haproxy::{self, Haproxy, HeldListener};
use tokio_util::sync::CancellationToken;

/// Clients sending requests back to back, one connection each.
const CLIENTS: usize = 2;

/// (failed, answered) for `CLIENTS` clients around a SIGKILL of the worker.
async fn kill_worker_under_load(hold: bool) -> (usize, usize) {
    let dir = std::env::temp_dir().join(testkit::unique_name("haproxy-sync-worker-death-"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = testkit::stable_port();
    let config = dir.join("haproxy.cfg");
    // The bind line of the default template; a frontend that answers itself.
    std::fs::write(
        &config,
        format!(
            "global\n    master-worker\n    log stdout format raw local0 notice\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n\
             frontend http\n    bind \"${{{}-127.0.0.1:{port}}}\"\n    \
             http-request return status 200 content-type text/plain string ok\n",
            haproxy::HTTP_LISTENER_ENV
        ),
    )
    .unwrap();
    let held = hold.then(|| HeldListener::bind("127.0.0.1", port).unwrap());
    let hap = Haproxy {
        bin: "haproxy".into(),
        config,
        master_socket: dir.join("master.sock"),
        env: held.iter().map(HeldListener::env).collect(),
    };
    hap.check(&hap.config).await.unwrap();
    let shutdown = CancellationToken::new();
    let (ready, _) = tokio::sync::watch::channel(false);
    let kept = tokio::spawn(haproxy::supervise(hap.clone(), Duration::from_secs(1), ready, shutdown.clone()));
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(5)).build().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let worker = testkit::eventually("HAProxy serves", Duration::from_secs(10), || async {
        let ok = http.get(&url).send().await.is_ok_and(|r| r.status().is_success());
        let workers = hap.master("show proc").await.map(|a| haproxy::workers(&a)).unwrap_or_default();
        match (ok, workers.as_slice()) {
            (true, [one]) => Ok(*one),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let (stop, failed, answered) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, stop, failed, answered) =
            (http.clone(), url.clone(), stop.clone(), failed.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => answered.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(worker).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    // Back with a new worker (supervise's backoff: HAProxy ran under 10 s).
    testkit::eventually("a new worker", Duration::from_secs(10), || async {
        match hap.master("show proc").await.map(|a| haproxy::workers(&a)) {
            Ok(w) if !w.is_empty() && !w.contains(&worker) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    shutdown.cancel();
    kept.await.unwrap();
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
    (failed.load(Ordering::Relaxed), answered.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_fails_only_the_requests_in_flight_when_the_listener_is_held() {
    let (failed, answered) = kill_worker_under_load(true).await;
    eprintln!("[worker SIGKILL] listener held: {failed} failed of {}, {CLIENTS} in flight", failed + answered);
    assert!(answered > 0);
    assert!(failed <= CLIENTS, "{failed} requests failed; at most the {CLIENTS} in flight may");
    let (failed, answered) = kill_worker_under_load(false).await;
    eprintln!("[worker SIGKILL] HAProxy binds the port itself: {failed} failed of {}", failed + answered);
}
