//! demo-service: a small HTTP service to scale and route to.
//!
//! `GET /` answers `{"hostname", "time", "language"}` so that requests
//! through the load balancer show which instance answered; `GET /health`
//! answers 200 for health checks. [`app`] is the router, [`serve`] runs it
//! on a listener until a shutdown future resolves, then drains.
#![forbid(unsafe_code)]

use std::future::Future;
use std::time::{Duration, SystemTime};

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
        .route("/health", get(|| async { "ok" }))
}

/// Serves [`app`] on `listener` until `shutdown` resolves; then stops
/// accepting, lets in-flight requests finish for at most `grace`, and returns.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static, grace: Duration) -> std::io::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app()).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    let server = std::pin::pin!(server.into_future());
    tokio::select! {
        res = server => res,
        _ = async { let _ = stopping_rx.await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "grace period over; dropping remaining connections");
            Ok(())
        }
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
        let server = tokio::spawn(serve(listener, async { let _ = rx.await; }, Duration::from_secs(5)));
        // An open keep-alive connection must not hold the server up.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::AsyncWriteExt;
        idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server).await.expect("server stops").unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    }
}
