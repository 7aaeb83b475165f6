//! The door itself: serves HTTP/1 on a [`Listener`], judges each request
//! ([`crate::allow`]), refuses with 403 or forwards to the Docker socket,
//! one upstream connection per request, and streams the answer back.
//!
//! A refused request costs one log line and a small answer: its body is
//! never read. An answer streams as Docker writes it (`/events` never
//! ends); when the client goes away, its upstream connection is closed.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::allow::{self, Refusal};
use crate::endpoint::Listener;

/// How long Docker's socket may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's head (and an idle
/// keep-alive connection may wait for its next request).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 512;
/// The pause after a failed `accept` (out of file descriptors, say), so
/// that a flood makes the door wait rather than spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// The host name Docker is asked as (it ignores it, HTTP/1.1 requires one).
const UPSTREAM_HOST: &str = "docker";

/// What the door answers with: its own small JSON, or Docker's stream.
pub type DoorBody = Either<Full<Bytes>, Upstream>;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The socket is missing, refuses, or does not accept in time.
    #[error("cannot connect to Docker at {path}: {source}")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// What connecting said.
        source: std::io::Error,
    },
    /// Docker accepted but the HTTP exchange failed.
    #[error("Docker at {path} did not answer: {source}")]
    Exchange {
        /// The socket's path.
        path: PathBuf,
        /// What hyper said.
        source: hyper::Error,
    },
    /// The request could not be rebuilt for Docker.
    #[error("cannot build the request for Docker: {0}")]
    Request(#[from] hyper::http::Error),
}

/// The door: the Docker socket it holds and what it has done so far.
#[derive(Debug)]
pub struct Door {
    docker: PathBuf,
    refused: AtomicU64,
    forwarded: AtomicU64,
    upstreams: Arc<AtomicUsize>,
}

impl Door {
    /// A door to the Docker socket at `docker`.
    pub fn new(docker: impl Into<PathBuf>) -> Self {
        Self {
            docker: docker.into(),
            refused: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            upstreams: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The Docker socket's path.
    pub fn docker(&self) -> &Path {
        &self.docker
    }

    /// Requests refused so far (each one logged).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Requests Docker answered so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Connections to Docker open now (an `/events` stream holds one).
    pub fn upstreams_open(&self) -> usize {
        self.upstreams.load(Ordering::Relaxed)
    }

    /// Answers one request from `client`: 403, 502, or Docker's answer.
    pub async fn answer<B>(&self, req: Request<B>, client: &str) -> Response<DoorBody> {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        if let Err(why) = allow::check(&method, &path, wants_upgrade(req.headers())) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            warn!(%method, %path, client, reason = %why, "refused");
            return refusal(&method, &path, why);
        }
        match self.forward(req).await {
            Ok(resp) => {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                debug!(%method, %path, client, status = resp.status().as_u16(), "forwarded");
                resp.map(Either::Right)
            }
            Err(e) => {
                warn!(%method, %path, client, error = %e, "Docker not reachable");
                json(StatusCode::BAD_GATEWAY, &format!("docker-door: {e}"))
            }
        }
    }

    /// Sends `req` (its method, path, query and end-to-end headers; never a
    /// body) to Docker on a connection of its own and returns the answer,
    /// its body still streaming.
    async fn forward<B>(&self, req: Request<B>) -> Result<Response<Upstream>, ForwardError> {
        let connect_error = |source| ForwardError::Connect { path: self.docker.clone(), source };
        let exchange_error = |source| ForwardError::Exchange { path: self.docker.clone(), source };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.docker))
            .await
            .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(exchange_error)?;
        let guard = Held::new(
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "connection to Docker ended");
                }
            })
            .abort_handle(),
            self.upstreams.clone(),
        );
        let resp = sender.send_request(upstream_request(req)?).await.map_err(exchange_error)?;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Upstream { body, _held: guard }))
    }
}

/// Serves `door` on `listener` until `shutdown`; then stops accepting and
/// closes every connection (an `/events` stream never ends by itself).
pub async fn serve(listener: Listener, door: Arc<Door>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                let door = door.clone();
                connections.spawn(async move {
                    stream.serve(door, client).await;
                    drop(slot);
                });
            }
            Err(e) => {
                warn!(error = %e, "cannot accept a connection; pausing");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
    info!("docker-door stopped");
}

/// An accepted connection of either kind.
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(UnixStream),
}

impl Accepted {
    async fn serve(self, door: Arc<Door>, client: String) {
        match self {
            Accepted::Tcp(s) => serve_connection(s, door, client).await,
            Accepted::Unix(s) => serve_connection(s, door, client).await,
        }
    }
}

/// The next connection and who made it, for the log.
async fn accept(listener: &Listener) -> std::io::Result<(Accepted, String)> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, addr)| (Accepted::Tcp(s), addr.to_string())),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| {
            let client = unix_client(&s);
            (Accepted::Unix(s), client)
        }),
    }
}

/// A Unix socket's peer, as the kernel knows it: `unix:pid=…,uid=…`.
fn unix_client(stream: &UnixStream) -> String {
    match stream.peer_cred() {
        Ok(cred) => match cred.pid() {
            Some(pid) => format!("unix:pid={pid},uid={}", cred.uid()),
            None => format!("unix:uid={}", cred.uid()),
        },
        Err(_) => "unix".to_owned(),
    }
}

/// Serves HTTP/1 requests on one connection until it closes.
async fn serve_connection<S>(stream: S, door: Arc<Door>, client: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client: Arc<str> = client.into();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (door, client) = (door.clone(), client.clone());
        async move { Ok::<_, Infallible>(door.answer(req, &client).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        debug!(error = %e, "client connection ended");
    }
}

/// The request Docker gets: method, path and query as they came, the
/// end-to-end headers, `Host: docker`, and no body.
fn upstream_request<B>(req: Request<B>) -> Result<Request<Empty<Bytes>>, hyper::http::Error> {
    let (mut parts, _unread_body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::HOST, HeaderValue::from_static(UPSTREAM_HOST));
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut upstream = Request::builder().method(parts.method).uri(target).body(Empty::new())?;
    *upstream.headers_mut() = parts.headers;
    Ok(upstream)
}

/// Headers that belong to one connection, not to the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop headers (and those `Connection` names), `Upgrade` too.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()).chain([&header::UPGRADE]) {
        headers.remove(name);
    }
}

/// Whether a request asks to switch protocols (Docker's hijacked streams).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade || headers.contains_key(header::UPGRADE)
}

/// The 403 a refused request gets: Docker's error shape, which clients show.
fn refusal(method: &Method, path: &str, why: Refusal) -> Response<DoorBody> {
    let what = match why {
        Refusal::Upgrade => format!("{method} {path} with an HTTP upgrade"),
        Refusal::Method | Refusal::Path => format!("{method} {path}"),
    };
    json(
        StatusCode::FORBIDDEN,
        &format!("docker-door: {what} is not allowed: registrator only reads containers, networks and events"),
    )
}

/// A JSON answer `{"message": …}` with `status`.
fn json(status: StatusCode, message: &str) -> Response<DoorBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Docker's answer body, streamed as it comes, holding its connection:
/// dropping it (the client went away, or the answer ended) closes that.
#[derive(Debug)]
pub struct Upstream {
    body: Incoming,
    _held: Held,
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One open connection to Docker, counted while it lives; aborted on drop.
#[derive(Debug)]
struct Held {
    task: AbortHandle,
    open: Arc<AtomicUsize>,
}

impl Held {
    fn new(task: AbortHandle, open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self { task, open }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "tcp"),
            ("x-private", "1"),
            ("api-version", "1.41"),
            ("content-type", "application/json"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["api-version", "content-type"]);
    }

    #[test]
    fn upgrade_wishes_are_seen_in_either_header() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
            }
            wants_upgrade(&h)
        };
        assert!(with(&[("connection", "Upgrade"), ("upgrade", "tcp")]));
        assert!(with(&[("connection", "keep-alive, upgrade")]));
        assert!(with(&[("upgrade", "websocket")]));
        assert!(!with(&[("connection", "keep-alive")]));
        assert!(!with(&[]));
    }

    #[test]
    fn the_upstream_request_keeps_path_and_query_and_drops_the_rest() {
        let req = Request::builder()
            .method(Method::GET)
            .uri("http://127.0.0.1:2375/v1.41/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D")
            .header("host", "127.0.0.1:2375")
            .header("content-length", "3")
            .header("connection", "close")
            .header("user-agent", "bollard")
            .body(());
        let Ok(req) = req else { panic!("request") };
        let Ok(up) = upstream_request(req) else { panic!("upstream request") };
        assert_eq!(up.uri().to_string(), "/v1.41/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D");
        assert_eq!(up.headers().get("host").map(HeaderValue::as_bytes), Some(&b"docker"[..]));
        assert_eq!(up.headers().get("user-agent").map(HeaderValue::as_bytes), Some(&b"bollard"[..]));
        assert!(up.headers().get("content-length").is_none());
        assert!(up.headers().get("connection").is_none());
    }

    #[test]
    fn a_refusal_says_what_was_refused_in_dockers_error_shape() {
        let resp = refusal(&Method::POST, "/v1.41/containers/create", Refusal::Method);
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let Either::Left(body) = resp.into_body() else { panic!("own body") };
        let text = futures_text(body);
        assert_eq!(
            text,
            r#"{"message":"docker-door: POST /v1.41/containers/create is not allowed: registrator only reads containers, networks and events"}"#
        );
    }

    /// The whole text of a [`Full`] body.
    fn futures_text(body: Full<Bytes>) -> String {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread().build();
        let Ok(rt) = rt else { panic!("runtime") };
        let bytes = rt.block_on(body.collect()).map(|c| c.to_bytes()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
