//! Command line and environment, in Registrator's vocabulary.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

/// Registers running Docker containers as Consul services and keeps the two
/// equal: at start, on every Docker event, after reconnects and on a timer.
///
/// A container is registered when it carries SERVICE_NAME (environment or
/// label). Every flag also works Go-style with one dash (-internal, -resync=5).
#[derive(Debug, Parser)]
#[command(name = "registrator", version)]
pub struct Args {
    /// Consul agent: consul://host:port, consul-tls://host:port or host:port.
    #[arg(env = "CONSUL_HTTP_ADDR", value_name = "URI", default_value = "consul://127.0.0.1:8500")]
    pub consul: String,
    /// ACL token for Consul.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the ACL token (used when --token is not set).
    #[arg(long, env = "CONSUL_HTTP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify Consul's TLS certificate.
    #[arg(long, env = "CONSUL_CACERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with Consul.
    #[arg(long, env = "CONSUL_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS with Consul.
    #[arg(long, env = "CONSUL_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Always register the container's own address and exposed port, never a published host port.
    #[arg(long)]
    pub internal: bool,
    /// Host address to register for published ports.
    #[arg(long, value_name = "IP")]
    pub ip: Option<IpAddr>,
    /// Tags added to every service (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Seconds between full resyncs with Docker and Consul (0: only at start and on reconnect).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub resync: u64,
    /// Register every container with ports, not only those with SERVICE_NAME.
    #[arg(long)]
    pub all: bool,
    /// Only register containers with SERVICE_NAME: the default, accepted for compatibility.
    #[arg(long, conflicts_with = "all")]
    pub explicit: bool,
    /// Register the IP address found in this container label.
    #[arg(long = "useIpFromLabel", value_name = "LABEL")]
    pub use_ip_from_label: Option<String>,
    /// Register addresses on this Docker network (SERVICE_NETWORK on a container wins).
    #[arg(long, env = "REGISTRATOR_NETWORK")]
    pub network: Option<String>,
    /// Owner mark and service-ID prefix; default: the Docker engine's host name.
    #[arg(long, env = "REGISTRATOR_OWNER")]
    pub owner: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "LOG_FORMAT")]
    pub log_format: ops::LogFormat,
}

impl Args {
    /// Parses the process arguments, Go-style single-dash flags included.
    pub fn from_env() -> Self {
        use clap::CommandFactory;
        let args = ops::go_style_args(&Self::command(), std::env::args());
        Self::parse_from(args)
    }

    pub fn consul_settings(&self) -> anyhow::Result<consul::Settings> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        Ok(consul::Settings {
            base: Some(consul::address::parse(&self.consul)?),
            token,
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_invocation_parses() {
        let cmd = <Args as clap::CommandFactory>::command();
        let argv = ["registrator", "-internal", "-resync=5", "-tags=a,b", "consul://consul:8500"].map(String::from);
        let args = Args::parse_from(ops::go_style_args(&cmd, argv));
        assert!(args.internal);
        assert_eq!(args.resync, 5);
        assert_eq!(args.tags, ["a", "b"]);
        assert_eq!(args.consul_settings().unwrap().base_url().as_str(), "http://consul:8500/");
    }
}
