//! docker-door: a read-only door to the Docker socket.
//!
//! A read-only bind mount of `/var/run/docker.sock` restricts nothing: any
//! client of the socket can create and run containers, i.e. be root on the
//! host. The door holds the socket instead and is all registrator is given:
//! it forwards exactly the reads registrator makes (`GET` and `HEAD`, see
//! [`allow`]) and answers everything else 403 with Docker's error shape and
//! one log line.
//!
//! # Layout
//!
//! - [`allow`]: which requests pass, a pure judgement.
//! - [`proxy`]: [`Door`], serving, forwarding and streaming.
//! - [`endpoint`]: where the door listens (TCP or a Unix socket).
//! - [`config`]: the command line; [`run`] and [`probe`] are the binary.
#![forbid(unsafe_code)]

pub mod allow;
pub mod config;
pub mod endpoint;
pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

pub use config::Args;
pub use endpoint::{Listen, Listener};
pub use proxy::{Door, serve};

/// How long `--probe` waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the door cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address cannot be bound.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: Listen,
        /// What binding said.
        source: std::io::Error,
    },
}

/// Runs the door as `args` say until `shutdown`.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = Listener::bind(&args.listen).await.map_err(|source| Error::Bind { listen: args.listen, source })?;
    tracing::info!(
        listen = %listener.describe(),
        docker = %args.docker.display(),
        "docker-door serving the reads registrator makes; refusing everything else"
    );
    if !args.docker.exists() {
        tracing::warn!(docker = %args.docker.display(), "no Docker socket there (yet): answering 502 until there is");
    }
    serve(listener, Arc::new(Door::new(args.docker)), shutdown).await;
    Ok(())
}

/// `--probe`: whether `GET /_ping` through the door at `listen` (dialled on
/// this host) answers 200 within a few seconds, i.e. the door serves and
/// Docker answers behind it.
pub async fn probe(listen: &Listen) -> bool {
    matches!(tokio::time::timeout(PROBE_TIMEOUT, ping(listen)).await, Ok(Ok(StatusCode::OK)))
}

/// The status of `GET /_ping` through the door at `listen`.
async fn ping(listen: &Listen) -> Result<StatusCode, Box<dyn std::error::Error + Send + Sync>> {
    match endpoint::dial(listen).await? {
        endpoint::Dialled::Tcp(s) => ping_on(s).await,
        endpoint::Dialled::Unix(s) => ping_on(s).await,
    }
}

/// The status of `GET /_ping` on one connection.
async fn ping_on<S>(stream: S) -> Result<StatusCode, Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = Request::get("/_ping").header(hyper::header::HOST, "docker-door").body(Empty::<Bytes>::new())?;
    let status = sender.send_request(req).await?.status();
    conn.abort();
    Ok(status)
}
