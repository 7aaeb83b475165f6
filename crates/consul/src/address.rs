//! Where Consul is, parsed from the forms users already write.

use std::path::PathBuf;

use url::Url;

use crate::client::Error;

/// Everything needed to reach one Consul agent.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:8500/`.
    pub base: Option<Url>,
    /// ACL token sent as `X-Consul-Token`. Never logged.
    pub token: Option<String>,
    /// PEM file of the CA that signed Consul's certificate.
    pub ca_cert: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Unix socket the HTTP API listens on (`consul-unix://`), instead of TCP.
    pub unix_socket: Option<PathBuf>,
}

/// The local agent's address, Consul's default.
static LOCAL_AGENT: std::sync::LazyLock<Url> = std::sync::LazyLock::new(|| {
    #[allow(clippy::expect_used, reason = "a constant URL; the tests parse it")]
    Url::parse("http://127.0.0.1:8500/").expect("a constant URL parses")
});

impl Settings {
    /// The API base URL, defaulting to the local agent.
    pub fn base_url(&self) -> Url {
        self.base.clone().unwrap_or_else(|| LOCAL_AGENT.clone())
    }
}

/// Parses a Consul address in any of the forms the classic tools accept:
///
/// - `consul://host:port` and `consul-tls://host:port` (Registrator's URIs),
/// - `http://host:port`, `https://host:port` and bare `host:port`
///   (`CONSUL_HTTP_ADDR`),
/// - `consul-unix:///path/to/socket` and `unix:///path/to/socket`.
pub fn parse(addr: &str) -> Result<Endpoint, Error> {
    let bad = |reason: &str| Error::Address { addr: addr.to_owned(), reason: reason.to_owned() };
    let addr_trimmed = addr.trim();
    if addr_trimmed.is_empty() {
        return Err(bad("empty address"));
    }
    let (scheme, rest) = match addr_trimmed.split_once("://") {
        Some(("consul" | "http", rest)) => ("http", rest),
        Some(("consul-tls" | "https", rest)) => ("https", rest),
        Some(("consul-unix" | "unix", path)) => {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(bad("expected an absolute socket path, as in consul-unix:///run/consul/http.sock"));
            }
            // The host name only fills the Host header; the socket is what is dialled.
            let url = Url::parse("http://consul/").map_err(|e| bad(&e.to_string()))?;
            return Ok(Endpoint { url, unix_socket: Some(PathBuf::from(path)) });
        }
        Some((other, _)) => return Err(bad(&format!("unknown scheme {other:?}"))),
        None => ("http", addr_trimmed),
    };
    // As in Go Registrator: a path is ignored, and no address at all
    // (`consul://`) is the local agent's default.
    let rest = rest.split('/').next().unwrap_or_default();
    let rest = if rest.is_empty() { "127.0.0.1:8500" } else { rest };
    let mut url = Url::parse(&format!("{scheme}://{rest}/")).map_err(|e| bad(&e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("missing host"));
    }
    if url.port().is_none() {
        url.set_port(Some(8500)).map_err(|()| bad("cannot set port"))?;
    }
    Ok(Endpoint { url, unix_socket: None })
}

/// A parsed Consul address: the base URL of the API and, for
/// `consul-unix://`, the socket every request goes through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub url: Url,
    pub unix_socket: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrator_uris_map_to_http_and_https() {
        assert_eq!(parse("consul://consul:8500").unwrap().url.as_str(), "http://consul:8500/");
        assert_eq!(parse("consul-tls://c.example:8501").unwrap().url.as_str(), "https://c.example:8501/");
        let unix = parse("consul-unix:///var/run/consul.sock").unwrap();
        assert_eq!(unix.unix_socket.as_deref(), Some(std::path::Path::new("/var/run/consul.sock")));
    }

    #[test]
    fn go_registrator_forms_without_an_address_or_with_a_path_work_as_there() {
        assert_eq!(parse("consul://").unwrap().url.as_str(), "http://127.0.0.1:8500/");
        assert_eq!(parse("consul://host:8500/ignored/path").unwrap().url.as_str(), "http://host:8500/");
    }

    #[test]
    fn consul_http_addr_forms_are_accepted() {
        assert_eq!(parse("127.0.0.1:8500").unwrap().url.as_str(), "http://127.0.0.1:8500/");
        assert_eq!(parse("https://[::1]:8501/").unwrap().url.as_str(), "https://[::1]:8501/");
        assert_eq!(parse("http://consul").unwrap().url.as_str(), "http://consul:8500/");
        assert_eq!(parse("unix:///run/c.sock").unwrap().unix_socket.unwrap().to_str(), Some("/run/c.sock"));
    }

    #[test]
    fn empty_paths_and_tokens_are_none_as_in_consuls_cli() {
        let args = ConsulArgs {
            consul: "consul://consul:8500".into(),
            token: Some(String::new()),
            token_file: Some(String::new()),
            ca_cert: Some(String::new()),
            client_cert: Some(String::new()),
            client_key: Some(String::new()),
        };
        let s = args.settings().unwrap();
        assert_eq!((s.token, s.ca_cert, s.client_cert, s.client_key), (None, None, None, None));
        let given = ConsulArgs { ca_cert: Some("/ca.pem".into()), ..args };
        assert_eq!(given.settings().unwrap().ca_cert, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn unsupported_or_malformed_addresses_are_refused_with_the_reason() {
        let err = parse("consul-unix://relative.sock").unwrap_err().to_string();
        assert!(err.contains("absolute socket path"), "{err}");
        assert!(parse("ftp://x:1").unwrap_err().to_string().contains("unknown scheme"));
        assert!(parse("").is_err());
        assert!(parse("consul://host:notaport").is_err());
    }
}

/// The command-line flags and environment variables every service of the
/// workspace reads to reach Consul, with the names Consul's own CLI uses.
#[derive(Clone, Debug, clap::Args)]
pub struct ConsulArgs {
    /// Consul agent: consul://host:port, consul-tls://host:port, consul-unix:///socket, http(s)://host:port or host:port.
    #[arg(env = "CONSUL_HTTP_ADDR", value_name = "CONSUL_URI", default_value = "consul://127.0.0.1:8500")]
    pub consul: String,
    /// ACL token for Consul.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the ACL token (used when --token is not set).
    #[arg(long, env = "CONSUL_HTTP_TOKEN_FILE")]
    pub token_file: Option<String>,
    /// CA certificate (PEM) to verify Consul's TLS certificate.
    #[arg(long, env = "CONSUL_CACERT")]
    pub ca_cert: Option<String>,
    /// Client certificate (PEM) for mutual TLS with Consul.
    #[arg(long, env = "CONSUL_CLIENT_CERT")]
    pub client_cert: Option<String>,
    /// Client key (PEM) for mutual TLS with Consul.
    #[arg(long, env = "CONSUL_CLIENT_KEY")]
    pub client_key: Option<String>,
}

/// A path given as an empty string is none, as in Consul's own CLI (so a
/// compose file can pass `CONSUL_CACERT: ${CONSUL_CACERT:-}` through).
fn path(given: &Option<String>) -> Option<PathBuf> {
    given.as_deref().filter(|p| !p.is_empty()).map(PathBuf::from)
}

impl ConsulArgs {
    /// The settings these flags describe; reads the token file if one is named.
    pub fn settings(&self) -> Result<Settings, Error> {
        let token = match (self.token.as_ref().filter(|t| !t.is_empty()), path(&self.token_file)) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|source| Error::File { what: "token file", path: path.display().to_string(), source })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let endpoint = parse(&self.consul)?;
        Ok(Settings {
            base: Some(endpoint.url),
            unix_socket: endpoint.unix_socket,
            token,
            ca_cert: path(&self.ca_cert),
            client_cert: path(&self.client_cert),
            client_key: path(&self.client_key),
        })
    }
}
