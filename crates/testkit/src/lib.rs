//! Real parts for tests: a Consul dev agent on loopback ports of its own,
//! ports for servers other processes run, unique names, and polling until a
//! condition holds, and a certificate authority for TLS tests ([`TestCa`]).
//!
//! No port here is picked by binding port 0 and closing the listener: the
//! kernel hands such a port to the next outgoing connection as readily as
//! to the server meant to take it. A server the test runs in-process binds
//! port 0 and keeps its listener; a port another process must be told comes
//! from [`stable_port`], below the ephemeral range.
//!
//! Tests need the `consul` and `haproxy` binaries on `PATH`
//! (`scripts/install-deps` installs both).
#![forbid(unsafe_code)]
// Test support: a part that cannot be set up fails the test, with a message.
#![allow(clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports this process handed out: never handed out twice (a Consul agent
/// given one port for two of its listeners does not start).
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether `port` was not handed out before in this process; marks it so.
fn fresh_port(port: u16) -> bool {
    HANDED_OUT.lock().map(|mut seen| seen.insert(port)).unwrap_or(true)
}

/// A name no other call gives, in this process or any other running now
/// (`<prefix><pid>-<nnnn>`, of one width, so none is the start of another
/// and a `pgrep -f` for one finds no other): for temporary files, Docker
/// objects, Consul nodes and policies a test makes.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{}-{n:04}", std::process::id())
}

/// A free port below the kernel's ephemeral range (where neither outgoing
/// connections nor Docker's randomly published ports are given one), for a
/// server in another process (a Consul agent, HAProxy, a published
/// container port) that must be told its port, and one a test stops and
/// starts again on the same port: nothing else can take it meanwhile. Free on TCP and UDP, on every address, when asked;
/// picked at random so parallel tests rarely try the same one.
pub fn stable_port() -> u16 {
    use std::net::UdpSocket;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.saturating_sub(1).max(10_001));
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
            ^ std::process::id().rotate_left(16);
    let span = u32::from(to - from);
    for i in 0..span {
        let port = from + u16::try_from((seed.wrapping_add(i.wrapping_mul(7919))) % span).unwrap_or(0);
        let free = TcpListener::bind(("0.0.0.0", port)).is_ok() && UdpSocket::bind(("0.0.0.0", port)).is_ok();
        if free && fresh_port(port) {
            return port;
        }
    }
    panic!("no free port in {from}..{to}")
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit`
/// with `what` and the last value seen.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() > limit => panic!("{what}: not true after {limit:?}; last: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A Consul agent in dev mode, on loopback ports of its own, stopped on drop.
pub struct TestConsul {
    child: Child,
    pub http: SocketAddr,
    pub dns: SocketAddr,
    /// The LAN gossip port, which other agents join.
    pub serf: u16,
    pub node: String,
    extra: Vec<String>,
    /// A client agent's data directory (a dev agent keeps none).
    data_dir: Option<std::path::PathBuf>,
}

impl TestConsul {
    /// Starts an agent and waits until it has a leader.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts an agent with extra command-line arguments.
    pub async fn start_with(extra: &[&str]) -> Self {
        let node = unique_name("test-");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, http, dns, serf) = spawn(&node, None, &extra);
        let consul = Self { child, http, dns, serf, node, extra, data_dir: None };
        consul.wait_ready().await;
        consul
    }

    /// Starts a second agent, a client (no server) on a node of its own,
    /// joined to this one's cluster: another host, as Consul sees it.
    pub async fn join_client(&self) -> Self {
        let node = unique_name("test-client-");
        let data_dir = std::env::temp_dir().join(&node);
        std::fs::create_dir_all(&data_dir).expect("client agent data dir");
        let extra: Vec<String> = [
            "-data-dir",
            &data_dir.display().to_string(),
            "-retry-join",
            &format!("127.0.0.1:{}", self.serf),
            "-retry-interval",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (child, http, dns, serf) = spawn_agent(&node, None, false, &extra);
        let consul = Self { child, http, dns, serf, node, extra, data_dir: Some(data_dir) };
        consul.wait_ready().await;
        consul
    }

    /// Starts an agent with ACLs on and denying by default; `master` may do anything.
    pub async fn start_with_acls(master: &str) -> Self {
        let acl = format!(
            r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{master}" agent = "{master}" }} }}"#
        );
        Self::start_with(&["-hcl", &acl]).await
    }

    /// With ACLs on: a policy of `rules` and a token holding it, made with
    /// `master`. Returns the token's secret and its accessor ID.
    pub async fn acl_token(&self, master: &str, rules: &str) -> (String, String) {
        let http = reqwest::Client::new();
        let name = unique_name("policy-");
        let put = |path: &str, body: serde_json::Value| {
            http.put(format!("{}/v1/acl/{path}", self.url())).header("X-Consul-Token", master).json(&body).send()
        };
        put("policy", serde_json::json!({ "Name": name, "Rules": rules }))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("create ACL policy");
        let token: serde_json::Value = put("token", serde_json::json!({ "Policies": [{ "Name": name }] }))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("create ACL token")
            .json()
            .await
            .expect("ACL token");
        let field = |k: &str| token[k].as_str().expect("token fields").to_owned();
        (field("SecretID"), field("AccessorID"))
    }

    /// With ACLs on: deletes the token with this accessor ID.
    pub async fn revoke_token(&self, master: &str, accessor: &str) {
        reqwest::Client::new()
            .delete(format!("{}/v1/acl/token/{accessor}", self.url()))
            .header("X-Consul-Token", master)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("delete ACL token");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn client(&self) -> consul::Client {
        self.client_with(None)
    }

    /// A client sending `token` (with ACLs on).
    pub fn client_with(&self, token: Option<&str>) -> consul::Client {
        let settings = consul::Settings {
            base: Some(consul::address::parse(&self.url()).expect("url").url),
            token: token.map(str::to_owned),
            ..Default::default()
        };
        consul::Client::new(&settings).expect("client")
    }

    /// Kills the agent with SIGKILL (a dev agent's state is lost; a client
    /// agent's node stops answering gossip, as a host cut off).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a fresh, empty agent on the same ports, as a restarted dev agent.
    pub async fn restart(&mut self) {
        self.stop();
        let (child, _, _, serf) = spawn(&self.node, Some((self.http, self.dns)), &self.extra);
        self.serf = serf;
        self.child = child;
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let client = self.client();
        eventually("consul has a leader", Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                match client.leader().await {
                    Ok(l) if !l.is_empty() => Ok(()),
                    Ok(_) => Err("no leader yet".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
    }
}

impl Drop for TestConsul {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

type Spawned = (Child, SocketAddr, SocketAddr, u16);

fn spawn(node: &str, ports: Option<(SocketAddr, SocketAddr)>, extra: &[String]) -> Spawned {
    spawn_agent(node, ports, true, extra)
}

fn spawn_agent(node: &str, ports: Option<(SocketAddr, SocketAddr)>, dev: bool, extra: &[String]) -> Spawned {
    let (http, dns) = ports.unwrap_or_else(|| {
        (SocketAddr::from(([127, 0, 0, 1], stable_port())), SocketAddr::from(([127, 0, 0, 1], stable_port())))
    });
    let serf = stable_port();
    let hcl = format!(
        "ports {{ http = {} dns = {} serf_lan = {} serf_wan = -1 server = {} grpc = -1 }}",
        http.port(),
        dns.port(),
        serf,
        stable_port()
    );
    let child = Command::new("consul")
        .args([
            "agent",
            if dev { "-dev" } else { "-server=false" },
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-node",
            node,
            "-log-level",
            "warn",
            "-hcl",
            &hcl,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start `consul` (run scripts/install-deps)");
    (child, http, dns, serf)
}

/// A TCP proxy on loopback in front of `upstream` that keeps every byte
/// clients sent, to count the requests a program makes (HTTP/1.1 request
/// lines, or any text in them). While the upstream does not answer, a
/// client's connection is accepted and closed at once, and counted.
pub struct CountingProxy {
    pub addr: SocketAddr,
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Connections open now, and the most open at once.
    open: std::sync::Arc<(std::sync::atomic::AtomicUsize, std::sync::atomic::AtomicUsize)>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(upstream: SocketAddr) -> CountingProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open =
            std::sync::Arc::new((std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0)));
        let task = tokio::spawn({
            let (sent, connections, open) = (sent.clone(), connections.clone(), open.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::Relaxed);
                    let now = open.0.fetch_add(1, Ordering::SeqCst) + 1;
                    open.1.fetch_max(now, Ordering::SeqCst);
                    let sent = sent.clone();
                    let open = open.clone();
                    tokio::spawn(async move {
                        let _closed = Closed(open);
                        let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                        // As a direct connection would: no Nagle delay on small writes.
                        let _ = (client.set_nodelay(true), server.set_nodelay(true));
                        let (mut client_rx, mut client_tx) = client.into_split();
                        let (mut server_rx, mut server_tx) = server.into_split();
                        let up = async {
                            let mut buf = vec![0u8; 16 * 1024];
                            while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                                sent.lock().expect("lock").extend_from_slice(&buf[..n]);
                                if server_tx.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = server_tx.shutdown().await;
                        };
                        let down = async {
                            let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                            let _ = client_tx.shutdown().await;
                        };
                        tokio::join!(up, down);
                    });
                }
            }
        });
        CountingProxy { addr, sent, connections, open, task }
    }

    /// The most connections that were open at once.
    pub fn max_open(&self) -> usize {
        self.open.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How often `text` occurs in what clients sent.
    pub fn count(&self, text: &str) -> usize {
        let sent = self.sent.lock().expect("lock");
        let needle = text.as_bytes();
        if needle.is_empty() || sent.len() < needle.len() {
            return 0;
        }
        sent.windows(needle.len()).filter(|w| *w == needle).count()
    }

    /// HTTP/1.1 requests sent so far.
    pub fn requests(&self) -> usize {
        self.count(" HTTP/1.1\r\n")
    }

    /// Connections accepted so far (each attempt, answered or not).
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Counts a proxied connection as closed when dropped.
struct Closed(std::sync::Arc<(std::sync::atomic::AtomicUsize, std::sync::atomic::AtomicUsize)>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A certificate authority made for a test, issuing TLS certificates as
/// HAProxy reads them.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

#[allow(clippy::unwrap_used, reason = "rcgen fails only on parameters fixed here; a test stops")]
impl TestCa {
    /// A new CA, with a key of its own.
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "portolan test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// A certificate for `name` (a new key each time) as one PEM file:
    /// leaf, chain and key; and the leaf in DER.
    pub fn issue(&self, name: &str) -> (String, Vec<u8>) {
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (format!("{}{}{}", leaf.pem(), self.cert.pem(), key.serialize_pem()), leaf.der().to_vec())
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
