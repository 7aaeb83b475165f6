//! demo-service: a small HTTP service to scale and route to.
//!
//! `GET /` answers `{"hostname", "time", "language"}` so that requests
//! through the load balancer show which instance answered; `GET /health`
//! answers 200 for health checks. [`app`] is the router, [`serve`] runs it
//! on a listener until a shutdown future resolves, then drains: it keeps
//! answering for a drain delay while load balancers take it out (health
//! turns 503), then stops accepting and finishes what is in flight.
//! [`echo`] is a TCP service beside it (`--echo-listen`): a greeting with
//! the hostname, then an echo.
#![forbid(unsafe_code)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The answer to `GET /`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub hostname: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub language: String,
}

/// The service's routes; unknown paths answer 404.
pub fn app() -> Router {
    app_draining(Arc::default())
}

/// [`app`], whose `/health` answers 503 once `draining` is set.
pub fn app_draining(draining: Arc<AtomicBool>) -> Router {
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    Router::new()
        .route(
            "/",
            get(move || {
                let hostname = hostname.clone();
                async move {
                    let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
                    Json(Hello { hostname, time, language: "Rust".into() })
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let draining = draining.load(Ordering::Relaxed);
                async move { if draining { (StatusCode::SERVICE_UNAVAILABLE, "draining") } else { (StatusCode::OK, "ok") } }
            }),
        )
}

/// How [`serve`] stops once asked to.
#[derive(Debug, Clone, Copy)]
pub struct Stopping {
    /// Time to go on serving (health answering 503) so that load balancers
    /// stop sending requests before the listener closes.
    pub drain: Duration,
    /// Longest time in-flight requests get once the listener is closed.
    pub grace: Duration,
}

/// Serves [`app`] on `listener` until `shutdown` resolves; then serves on
/// for `stopping.drain` with `/health` failing, stops accepting, lets
/// in-flight requests finish for at most `stopping.grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: Stopping,
) -> std::io::Result<()> {
    let Stopping { drain, grace } = stopping;
    let draining = Arc::new(AtomicBool::new(false));
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let flag = draining.clone();
    let server = axum::serve(listener, app_draining(draining)).with_graceful_shutdown(async move {
        shutdown.await;
        flag.store(true, Ordering::Relaxed);
        if !drain.is_zero() {
            tracing::info!(drain_ms = ops::millis(drain), "draining: still serving while load balancers let go");
            tokio::time::sleep(drain).await;
        }
        let _ = stopping_tx.send(());
    });
    let server = std::pin::pin!(server.into_future());
    tokio::select! {
        res = server => res,
        _ = async { let _ = stopping_rx.await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_ms = ops::millis(grace), "grace period over; dropping remaining connections");
            Ok(())
        }
    }
}

/// Serves TCP on `listener`: each connection is greeted with the hostname
/// and a newline, then what it sends is echoed back, until it closes.
pub async fn echo(listener: TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let greeting = format!("{}\n", gethostname::gethostname().to_string_lossy());
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let greeting = greeting.clone();
        tokio::spawn(async move {
            if conn.write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> (StatusCode, Vec<u8>) {
        let resp = app().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, body.to_vec())
    }

    #[tokio::test]
    async fn root_answers_hostname_time_and_language() {
        let (status, body) = get("/").await;
        assert_eq!(status, StatusCode::OK);
        let hello: Hello = serde_json::from_slice(&body).unwrap();
        assert_eq!(hello.language, "Rust");
        assert_eq!(hello.hostname, gethostname::gethostname().to_string_lossy());
        let t = humantime::parse_rfc3339(&hello.time).expect("time is RFC 3339");
        assert!(SystemTime::now().duration_since(t).unwrap() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn health_is_ok_and_unknown_paths_are_404() {
        assert_eq!(get("/health").await.0, StatusCode::OK);
        assert_eq!(get("/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stopping = Stopping { drain: Duration::ZERO, grace: Duration::from_secs(5) };
        let server = tokio::spawn(serve(
            listener,
            async {
                let _ = rx.await;
            },
            stopping,
        ));
        // An open keep-alive connection must not hold the server up.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::AsyncWriteExt;
        idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server).await.expect("server stops").unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    }

    #[tokio::test]
    async fn during_the_drain_delay_it_serves_on_but_fails_health() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stopping = Stopping { drain: Duration::from_millis(500), grace: Duration::from_secs(5) };
        let server = tokio::spawn(serve(
            listener,
            async {
                let _ = rx.await;
            },
            stopping,
        ));
        let status = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut resp = String::new();
            conn.read_to_string(&mut resp).await.unwrap();
            resp.split(' ').nth(1).unwrap().to_owned()
        };
        assert_eq!(status("/health").await, "200");
        tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(status("/health").await, "503");
        assert_eq!(status("/").await, "200", "still serving while draining");
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("server stops after the drain")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
