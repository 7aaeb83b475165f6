//! TLS through HAProxy on the whole compose stack: requests per second over
//! HTTPS against plain HTTP on the same run (keep-alive, and a new
//! connection per request, where HTTPS pays a handshake each time); and a
//! certificate renewed under an HTTPS load: from the file written to a new
//! handshake showing it, the reloads it cost, the requests that failed.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::Stack;
use serde::{Deserialize, Serialize};

use crate::load::{Load, Outcome};
use crate::stats::Summary;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Connections of the closed-loop load.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Certificates renewed, one after another.
    #[arg(long, default_value_t = 10)]
    pub renewals: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Throughput {
    /// `http` or `https`.
    pub scheme: String,
    /// A connection kept for many requests, or a new one per request.
    pub keep_alive: bool,
    pub requests_per_second: f64,
    pub load: Outcome,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub connections: usize,
    pub seconds: u64,
    pub throughput: Vec<Throughput>,
    /// Certificate file written → a new handshake shows it.
    pub renewed_to_served: Summary,
    pub renewals: usize,
    /// haproxy-sync's reloads over the renewals.
    pub reloads: u64,
    /// The HTTPS load during the renewals (a new connection per request).
    pub renewal_load: Outcome,
}

const NAME: &str = "bench.test";

struct Tls {
    ca: testkit::TestCa,
    port: u16,
}

impl Tls {
    /// An HTTPS client trusting the test CA, finding NAME on loopback;
    /// `keep_alive: false`, a new connection (and handshake) per request.
    fn client(&self, keep_alive: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).expect("the CA"))
            .resolve(NAME, ([127, 0, 0, 1], self.port).into())
            .tls_info(true)
            .timeout(Duration::from_secs(5));
        if !keep_alive {
            b = b.pool_max_idle_per_host(0);
        }
        b.build().expect("an HTTPS client")
    }

    /// The leaf certificate a new client's handshake is shown (a client of
    /// its own: one resuming a session is not shown it again).
    async fn served(&self) -> anyhow::Result<Vec<u8>> {
        let resp = self.client(false).get(format!("https://{NAME}:{}/hello", self.port)).send().await?;
        let info = resp.extensions().get::<reqwest::tls::TlsInfo>().cloned();
        info.and_then(|i| i.peer_certificate().map(<[u8]>::to_vec)).context("no certificate")
    }
}

/// Writes a certificate as a secret update does: a new file renamed over.
fn put(stack: &Stack, pem: &str) -> anyhow::Result<()> {
    let tmp = stack.certs_dir.join(format!(".{NAME}.pem.tmp"));
    std::fs::write(&tmp, pem)?;
    std::fs::rename(tmp, stack.certs_dir.join(format!("{NAME}.pem")))?;
    Ok(())
}

pub async fn run(opts: &Opts) -> anyhow::Result<Results> {
    let stack = Stack::new("tls");
    tokio::task::block_in_place(|| stack.up(2));
    let t0 = Instant::now();
    while stack.lb().hostnames("/hello", 8).await.map(|h| h.len()).unwrap_or(0) != 2 {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the 2 instances not routed within 30 s\n{}", stack.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tls = Tls { ca: testkit::TestCa::new(), port: stack.https_port };
    let (pem, first) = tls.ca.issue(NAME);
    put(&stack, &pem)?;
    let t0 = Instant::now();
    while tls.served().await.ok().as_ref() != Some(&first) {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("the certificate not served within 10 s\n{}", stack.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut throughput = Vec::new();
    for keep_alive in [true, false] {
        for scheme in ["http", "https"] {
            let url = match scheme {
                "http" => format!("http://127.0.0.1:{}/hello", stack.http_port),
                _ => format!("https://{NAME}:{}/hello", stack.https_port),
            };
            let load = Load::closed_with(&url, opts.connections, || {
                if scheme == "https" {
                    tls.client(keep_alive)
                } else {
                    let b = reqwest::Client::builder().timeout(Duration::from_secs(5));
                    let b = if keep_alive { b } else { b.pool_max_idle_per_host(0) };
                    b.build().expect("an HTTP client")
                }
            });
            tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
            let seconds = load.elapsed();
            let load = load.stop().await;
            let rps = load.requests as f64 / seconds;
            eprintln!(
                "[tls] {scheme:>5}, {}: {rps:.0} requests/s, {} failed, p50 {:.2} ms, p99 {:.2} ms",
                if keep_alive { "keep-alive" } else { "a connection per request" },
                load.failed,
                load.latency_p50_ms,
                load.latency_p99_ms
            );
            throughput.push(Throughput { scheme: scheme.to_owned(), keep_alive, requests_per_second: rps, load });
        }
    }

    let before = stack.haproxy_sync_reloads().await;
    let url = format!("https://{NAME}:{}/hello", stack.https_port);
    let load = Load::closed_with(&url, 2, || tls.client(false));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut took = Vec::new();
    for _ in 0..opts.renewals {
        let (pem, next) = tls.ca.issue(NAME);
        let written = Instant::now();
        put(&stack, &pem)?;
        loop {
            if tls.served().await.ok().as_ref() == Some(&next) {
                took.push(written.elapsed());
                break;
            }
            if written.elapsed() > Duration::from_secs(10) {
                bail!("a renewed certificate not served within 10 s\n{}", stack.logs());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let renewal_load = load.stop().await;
    let reloads = stack.haproxy_sync_reloads().await.saturating_sub(before);
    let renewed_to_served = Summary::of(&took);
    eprintln!(
        "[tls] renewed → served: p50 {:.0} ms, max {:.0} ms (n={}); {reloads} reloads; {} failed of {} HTTPS requests",
        renewed_to_served.p50_ms,
        renewed_to_served.max_ms,
        took.len(),
        renewal_load.failed,
        renewal_load.requests
    );
    Ok(Results {
        connections: opts.connections,
        seconds: opts.seconds,
        throughput,
        renewed_to_served,
        renewals: opts.renewals,
        reloads,
        renewal_load,
    })
}
