//! HTTP calls to one Consul agent.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use crate::address::Settings;
use crate::types::{AgentService, EntryCheck, Node, NodeServices, Registration, ServiceEntry};

/// Everything that can go wrong talking to Consul. No variant carries the
/// ACL token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Consul address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("cannot read {what} {path}: {source}")]
    File { what: &'static str, path: String, source: std::io::Error },
    #[error("TLS setup for Consul failed: {0}")]
    Tls(String),
    #[error("Consul request {method} {path} failed: {source}")]
    Transport { method: Method, path: String, source: reqwest::Error },
    #[error("Consul answered {status} to {method} {path}: {body}")]
    Status { method: Method, path: String, status: StatusCode, body: String },
    #[error("cannot decode Consul's answer to {path}: {source}")]
    Decode { path: String, source: reqwest::Error },
}

impl Error {
    /// Whether Consul refused the request for lack of permission (ACLs).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Error::Status { status, .. } if *status == StatusCode::FORBIDDEN)
    }

    /// Whether Consul answered and refused this very request, so that
    /// sending it again unchanged would be refused again; not when it did
    /// not answer, or answered that it is overloaded or unavailable.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Status { status, .. } if !matches!(
            *status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        ))
    }
}

/// A value and the `X-Consul-Index` it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
}

/// How long a blocking query may wait for news at Consul.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
const PLAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A cheap-to-clone handle on one Consul agent.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Self, Error> {
        Self::build(settings, reqwest::Client::builder())
    }

    /// A client that finds the agent's addresses with `resolver`, asked at
    /// every new connection (so an agent that moved is found again).
    pub fn with_resolver<R: reqwest::dns::Resolve + 'static>(
        settings: &Settings,
        resolver: std::sync::Arc<R>,
    ) -> Result<Self, Error> {
        Self::build(settings, reqwest::Client::builder().dns_resolver(resolver))
    }

    fn build(settings: &Settings, builder: reqwest::ClientBuilder) -> Result<Self, Error> {
        let mut builder =
            builder.connect_timeout(Duration::from_secs(3)).pool_idle_timeout(Duration::from_secs(30)).use_rustls_tls();
        if let Some(ca) = &settings.ca_cert {
            let pem = read(ca, "CA certificate")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Tls(e.to_string()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert, "client certificate")?;
                pem.push(b'\n');
                pem.extend(read(key, "client key")?);
                let id = reqwest::Identity::from_pem(&pem).map_err(|e| Error::Tls(e.to_string()))?;
                builder = builder.identity(id);
            }
            (None, None) => {}
            _ => {
                return Err(Error::Tls(
                    "a client certificate needs both CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY".into(),
                ));
            }
        }
        if let Some(socket) = &settings.unix_socket {
            builder = builder.unix_socket(socket.as_path());
        }
        let http = builder.build().map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Self { http, base: settings.base_url(), token: settings.token.clone().filter(|t| !t.is_empty()) })
    }

    /// The agent's base URL, for logs.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The cluster leader's address; an empty string while there is none.
    pub async fn leader(&self) -> Result<String, Error> {
        self.json(self.request(Method::GET, "v1/status/leader")).await
    }

    /// The name of the node the agent runs on.
    pub async fn node_name(&self) -> Result<String, Error> {
        Ok(self.agent_self().await?.config.node_name)
    }

    /// The address the agent gossips on (`Member.Addr`): its host's address
    /// as the rest of the cluster sees it.
    pub async fn agent_address(&self) -> Result<Option<std::net::IpAddr>, Error> {
        Ok(self.agent_self().await?.member.and_then(|m| m.addr.parse().ok()))
    }

    /// The agent as it describes itself: node, address, server or client.
    pub async fn agent_info(&self) -> Result<AgentInfo, Error> {
        let me = self.agent_self().await?;
        Ok(AgentInfo {
            node: me.config.node_name,
            address: me.member.and_then(|m| m.addr.parse().ok()),
            server: me.config.server,
        })
    }

    async fn agent_self(&self) -> Result<AgentSelf, Error> {
        self.json(self.request(Method::GET, "v1/agent/self")).await
    }

    /// Services registered with this agent, by ID.
    pub async fn agent_services(&self) -> Result<HashMap<String, AgentService>, Error> {
        self.json(self.request(Method::GET, "v1/agent/services")).await
    }

    pub async fn register(&self, reg: &Registration) -> Result<(), Error> {
        self.ok(self.request(Method::PUT, "v1/agent/service/register").json(reg)).await
    }

    pub async fn deregister(&self, id: &str) -> Result<(), Error> {
        let path = format!("v1/agent/service/deregister/{}", encode(id));
        self.ok(self.request(Method::PUT, &path)).await
    }

    /// Sets the status of a TTL check (`passing`, `warning` or `critical`).
    pub async fn update_ttl(&self, check_id: &str, status: &str, output: &str) -> Result<(), Error> {
        let path = format!("v1/agent/check/update/{}", encode(check_id));
        let body = serde_json::json!({ "Status": status, "Output": output });
        self.ok(self.request(Method::PUT, &path).json(&body)).await
    }

    /// Service names and their tags, as a blocking query from `index`.
    pub async fn catalog_services(
        &self,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<BTreeMap<String, Vec<String>>>, Error> {
        self.blocking("v1/catalog/services".to_owned(), &[], index, wait).await
    }

    /// The instances of one service with their checks, as a blocking query.
    pub async fn health_service(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<ServiceEntry>>, Error> {
        self.blocking(format!("v1/health/service/{}", encode(name)), &[], index, wait).await
    }

    /// Every check that is not passing, cluster-wide (node checks such as
    /// `serfHealth` and maintenance included), as a blocking query. The
    /// filter is applied by Consul 1.4 and later; older agents ignore it and
    /// answer every check, which callers must tolerate.
    pub async fn unhealthy_checks(&self, index: u64, wait: Duration) -> Result<Indexed<Vec<EntryCheck>>, Error> {
        self.blocking("v1/health/state/any".to_owned(), &[("filter", "Status != \"passing\"")], index, wait).await
    }

    /// The checks of `node` and its services that are not passing (see
    /// [`Client::unhealthy_checks`] for the filter).
    pub async fn node_unhealthy_checks(&self, node: &str) -> Result<Indexed<Vec<EntryCheck>>, Error> {
        let path = format!("v1/health/node/{}", encode(node));
        self.blocking(path, &[("filter", "Status != \"passing\"")], 0, Duration::ZERO).await
    }

    /// The catalog's nodes.
    pub async fn catalog_nodes(&self) -> Result<Indexed<Vec<Node>>, Error> {
        self.blocking("v1/catalog/nodes".to_owned(), &[], 0, Duration::ZERO).await
    }

    /// The services registered on `node`; `None` when the catalog has no
    /// such node (any more).
    pub async fn node_services(&self, node: &str) -> Result<Indexed<Option<NodeServices>>, Error> {
        self.node_services_since(node, 0, Duration::ZERO).await
    }

    /// [`Client::node_services`] as a blocking query: answers once the
    /// node's entry changes past `index`, or after `wait`.
    pub async fn node_services_since(
        &self,
        node: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Option<NodeServices>>, Error> {
        self.blocking(format!("v1/catalog/node/{}", encode(node)), &[], index, wait).await
    }

    /// Every key under `prefix` and its value, as a blocking query from
    /// `index` (an empty list when there is none: Consul answers 404).
    pub async fn kv_list(&self, prefix: &str, index: u64, wait: Duration) -> Result<Indexed<Vec<KvPair>>, Error> {
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(rename = "Key")]
            key: String,
            #[serde(rename = "Value")]
            value: Option<String>,
        }
        let path = format!("v1/kv/{}", prefix.split('/').map(encode).collect::<Vec<_>>().join("/"));
        let mut req = self.request(Method::GET, &path).query(&[("recurse", "true")]);
        if index > 0 {
            let wait_ms = wait.as_millis().max(1);
            req = req
                .query(&[("index", index.to_string()), ("wait", format!("{wait_ms}ms"))])
                .timeout(wait + wait / 16 + Duration::from_secs(5));
        }
        let req = req.build().map_err(|source| Error::Transport { method: Method::GET, path: path.clone(), source })?;
        let resp = self.http.execute(req).await.map_err(|source| Error::Transport {
            method: Method::GET,
            path: path.clone(),
            source,
        })?;
        let index = index_of(&resp);
        let status = resp.status();
        let raw: Vec<Raw> = if status == reqwest::StatusCode::NOT_FOUND {
            // No key under the prefix (yet): an answer, with its index.
            Vec::new()
        } else if status.is_success() {
            resp.json().await.map_err(|source| Error::Decode { path, source })?
        } else {
            let body: String = resp.text().await.unwrap_or_default().chars().take(512).collect();
            return Err(Error::Status { method: Method::GET, path, status, body: body.trim().to_owned() });
        };
        use base64::Engine;
        let value = raw
            .into_iter()
            .map(|r| KvPair {
                value: r
                    .value
                    .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                    .unwrap_or_default(),
                key: r.key,
            })
            .collect();
        Ok(Indexed { index, value })
    }

    /// Sets `key` to `value` (tests and tools).
    pub async fn kv_put(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        let path = format!("v1/kv/{}", key.split('/').map(encode).collect::<Vec<_>>().join("/"));
        self.ok(self.request(Method::PUT, &path).body(value.to_vec())).await
    }

    /// Deletes `key` (tests and tools).
    pub async fn kv_delete(&self, key: &str) -> Result<(), Error> {
        let path = format!("v1/kv/{}", key.split('/').map(encode).collect::<Vec<_>>().join("/"));
        self.ok(self.request(Method::DELETE, &path)).await
    }

    async fn blocking<T: DeserializeOwned>(
        &self,
        path: String,
        query: &[(&str, &str)],
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<T>, Error> {
        let mut req = self.request(Method::GET, &path).query(query);
        if index > 0 {
            // Consul adds up to wait/16 of jitter; leave room for it.
            let wait_ms = wait.as_millis().max(1);
            req = req
                .query(&[("index", index.to_string()), ("wait", format!("{wait_ms}ms"))])
                .timeout(wait + wait / 16 + Duration::from_secs(5));
        }
        let (resp, path) = self.send(req).await?;
        let index = index_of(&resp);
        let value = resp.json().await.map_err(|source| Error::Decode { path, source })?;
        Ok(Indexed { index, value })
    }

    #[allow(clippy::expect_used, reason = "an http(s) base joined with a relative path always makes a URL")]
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let url = self.base.join(path).expect("API paths are relative URLs");
        let mut req = self.http.request(method, url).timeout(PLAIN_TIMEOUT);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        req
    }

    /// Sends a request; a non-2xx answer is an error carrying Consul's text.
    async fn send(&self, req: RequestBuilder) -> Result<(reqwest::Response, String), Error> {
        let req =
            req.build().map_err(|source| Error::Transport { method: Method::GET, path: String::new(), source })?;
        let (method, path) = (req.method().clone(), req.url().path().to_owned());
        let resp = match self.http.execute(req).await {
            Ok(resp) => resp,
            Err(source) => return Err(Error::Transport { method, path, source }),
        };
        let status = resp.status();
        if status.is_success() {
            return Ok((resp, path));
        }
        let body: String = resp.text().await.unwrap_or_default().chars().take(512).collect();
        Err(Error::Status { method, path, status, body: body.trim().to_owned() })
    }

    async fn ok(&self, req: RequestBuilder) -> Result<(), Error> {
        self.send(req).await.map(drop)
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, Error> {
        let (resp, path) = self.send(req).await?;
        resp.json().await.map_err(|source| Error::Decode { path, source })
    }
}

/// One key of Consul's KV store and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvPair {
    pub key: String,
    pub value: Vec<u8>,
}

/// The `X-Consul-Index` of an answer (0 when absent).
fn index_of(resp: &reqwest::Response) -> u64 {
    resp.headers().get("X-Consul-Index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn read(path: &std::path::Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::File { what, path: path.display().to_string(), source })
}

#[derive(serde::Deserialize)]
struct AgentSelf {
    #[serde(rename = "Config")]
    config: SelfConfig,
    #[serde(rename = "Member")]
    member: Option<SelfMember>,
}

#[derive(serde::Deserialize)]
struct SelfConfig {
    #[serde(rename = "NodeName")]
    node_name: String,
    #[serde(rename = "Server", default)]
    server: bool,
}

/// What [`Client::agent_info`] answers.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub node: String,
    /// The address it gossips on.
    pub address: Option<std::net::IpAddr>,
    /// A Consul server (which is also its host's agent), not a client agent.
    pub server: bool,
}

#[derive(serde::Deserialize)]
struct SelfMember {
    #[serde(rename = "Addr", default)]
    addr: String,
}

/// Percent-encodes one path segment (service IDs may hold `:` or `/`).
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>().replace('+', "%20")
}
