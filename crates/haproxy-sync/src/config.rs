//! Command line and environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Keeps HAProxy's configuration equal to Consul's healthy instances: every
/// service tagged `rest` is served at /<name>, prefix stripped, round robin.
/// Each change is checked with `haproxy -c` before HAProxy reloads it.
#[derive(Debug, Parser)]
#[command(name = "haproxy-sync", version)]
pub struct Args {
    #[command(flatten)]
    pub consul: consul::ConsulArgs,
    /// Handlebars template of the HAProxy configuration (default: the built-in haproxy/haproxy.cfg.hbs).
    #[arg(long, env = "HAPROXY_SYNC_TEMPLATE")]
    pub template: Option<PathBuf>,
    /// The configuration file to write.
    #[arg(long, env = "HAPROXY_SYNC_CONFIG", default_value = "/var/lib/haproxy-sync/haproxy.cfg")]
    pub config: PathBuf,
    /// The HAProxy binary.
    #[arg(long, env = "HAPROXY_BIN", default_value = "haproxy")]
    pub haproxy: PathBuf,
    /// HAProxy's master CLI socket (reloads go through it).
    #[arg(long, default_value = "/var/run/haproxy-sync/master.sock")]
    pub master_socket: PathBuf,
    /// HAProxy's runtime API socket.
    #[arg(long, default_value = "/var/run/haproxy-sync/admin.sock")]
    pub runtime_socket: PathBuf,
    /// registrator's admin address as a browser reaches it (e.g.
    /// `http://localhost:9091`, or `http://{node}:9091` with a registrator
    /// on each host, `{node}` being the instance's Consul node): the routes
    /// page links each instance to what registrator says of its container.
    #[arg(long, env = "HAPROXY_SYNC_REGISTRATOR_URL", value_name = "URL")]
    pub registrator_url: Option<String>,
    /// Services carrying this tag are routed.
    #[arg(long, env = "HAPROXY_SYNC_TAG", default_value = "rest")]
    pub tag: String,
    /// Quiescence MIN:MAX: apply once Consul was quiet for MIN, at the latest MAX after the first change.
    #[arg(long, default_value = "25ms:250ms", value_parser = parse_wait)]
    pub wait: (Duration, Duration),
    /// Address HAProxy's frontends bind to (empty: all).
    #[arg(long, default_value = "")]
    pub bind: String,
    /// Port of the routing frontend.
    #[arg(long, env = "HTTP_PORT", default_value_t = 80)]
    pub http_port: u16,
    /// Port of the HTTPS frontend (served only with --certs).
    #[arg(long, env = "HTTPS_PORT", default_value_t = 443)]
    pub https_port: u16,
    /// Directory of TLS certificates, one `<name>.pem` each (certificate,
    /// chain and unencrypted key in one file); TLS is on when it is set.
    /// `default.pem` is served to clients without SNI (else a self-signed
    /// one). Changes are applied without a reload.
    #[arg(long, env = "HAPROXY_SYNC_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Also serve the certificates under this Consul KV prefix, one key
    /// `PREFIX/<name>.pem` each (a file of --certs with the same name wins).
    #[arg(long, env = "HAPROXY_SYNC_CERTS_KV", value_name = "PREFIX", requires = "certs")]
    pub certs_kv: Option<String>,
    /// Port of the stats page (served only when STATS_USER and STATS_PASSWORD are set).
    #[arg(long, env = "STATS_PORT", default_value_t = 1936)]
    pub stats_port: u16,
    /// User name for the stats page.
    #[arg(long, env = "STATS_USER")]
    pub stats_user: Option<String>,
    /// Password for the stats page (given to HAProxy through its environment, never written to a file).
    #[arg(long, env = "STATS_PASSWORD", hide_env_values = true)]
    pub stats_password: Option<String>,
    /// File holding the stats password (a Docker or Kubernetes secret), used when --stats-password is not set.
    #[arg(long, env = "STATS_PASSWORD_FILE", value_name = "FILE")]
    pub stats_password_file: Option<PathBuf>,
    /// How long old HAProxy workers may finish their connections after a reload.
    #[arg(long, default_value = "30s")]
    pub hard_stop_after: String,
    /// Seconds HAProxy gets to finish its connections when haproxy-sync stops.
    #[arg(long, default_value_t = 10)]
    pub grace: u64,
    /// Do not run HAProxy: drive the one whose master CLI and runtime API
    /// listen on --master-socket and --runtime-socket (started by
    /// haproxy-keeper, or by you).
    #[arg(long)]
    pub external: bool,
    /// Run this shell command after each structural change is written,
    /// instead of reloading through the master CLI (for an HAProxy run
    /// elsewhere, as Consul Template's `command`). haproxy-sync then runs no
    /// HAProxy and takes it as running; needs `sh`, which the image lacks.
    #[arg(long, env = "HAPROXY_SYNC_COMMAND", value_name = "CMD")]
    pub command: Option<String>,
    /// Render once from Consul's current state, apply, and exit.
    #[arg(long)]
    pub once: bool,
    /// Print configurations to stdout instead of writing them and running HAProxy.
    #[arg(long)]
    pub dry_run: bool,
    /// How instance changes reach HAProxy: `runtime` (the runtime API when
    /// only instances changed, else a reload) or `reload` (always reload).
    #[arg(long, value_enum, default_value = "runtime")]
    pub apply: ApplyMode,
    /// Service that gets the requests no route matches (default: a 404).
    #[arg(long, env = "HAPROXY_SYNC_DEFAULT_SERVICE", value_name = "NAME")]
    pub default_service: Option<String>,
    /// JSON access logs, a line per request, on HAProxy's standard output.
    #[arg(long, env = "HAPROXY_SYNC_ACCESS_LOG")]
    pub access_log: bool,
    /// Server slots each backend has at least: instances up to this many
    /// come and go through the runtime API, without a reload.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub min_slots: usize,
    #[command(flatten)]
    pub admin: ops::admin::AdminArgs,
}

impl Args {
    /// Stats credentials, when a user and a password (or a password file) are set.
    pub fn stats_credentials(&self) -> anyhow::Result<Option<(String, String)>> {
        let password = match (&self.stats_password, &self.stats_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading the stats password file {}: {e}", path.display()))?;
                Some(text.trim_end_matches(['\n', '\r']).to_owned())
            }
            (None, None) => None,
        };
        Ok(match (&self.stats_user, password) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => Some((u.clone(), p)),
            _ => None,
        })
    }
}

/// `haproxy-sync explain NAME`: prints what the haproxy-sync running on
/// this host says of one service (its route, its instances, or why not).
#[derive(Debug, Parser)]
#[command(name = "haproxy-sync explain")]
pub struct Explain {
    /// The service, as Consul names it.
    pub service: String,
    /// The admin address of the running haproxy-sync (an unspecified
    /// address means this host's loopback).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: std::net::SocketAddr,
}

impl Explain {
    /// The `explain` arguments, when the command line starts with `explain`.
    pub fn from_args(argv: &[String]) -> Option<Explain> {
        (argv.get(1).map(String::as_str) == Some("explain")).then(|| {
            Explain::parse_from(std::iter::once("haproxy-sync explain".to_owned()).chain(argv[2..].iter().cloned()))
        })
    }
}

/// How changes reach a running HAProxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ApplyMode {
    /// The runtime API for instance changes; a reload for structural ones.
    #[default]
    Runtime,
    /// A reload for every change.
    Reload,
}

/// Parses `MIN:MAX` (or a single `MIN`, with MAX = 4 × MIN), e.g. `25ms:250ms`.
pub fn parse_wait(s: &str) -> Result<(Duration, Duration), String> {
    let parse = |v: &str| humantime::parse_duration(v.trim()).map_err(|e| format!("{v:?}: {e}"));
    let (min, max) = match s.split_once(':') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let min = parse(s)?;
            (min, min * 4)
        }
    };
    if max < min {
        return Err(format!("wait MAX {max:?} is below MIN {min:?}"));
    }
    Ok((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_password_can_come_from_a_secret_file() {
        let file = std::env::temp_dir().join(format!("stats-secret-{}", std::process::id()));
        std::fs::write(&file, "from-a-secret\n").unwrap();
        let parse = |extra: &[&str]| {
            let mut argv = vec!["haproxy-sync", "consul://c:8500", "--stats-user", "ops"];
            argv.extend_from_slice(extra);
            Args::parse_from(argv)
        };
        let args = parse(&["--stats-password-file", file.to_str().unwrap()]);
        assert_eq!(args.stats_credentials().unwrap(), Some(("ops".into(), "from-a-secret".into())));
        // The password itself wins over the file.
        let args = parse(&["--stats-password", "direct", "--stats-password-file", file.to_str().unwrap()]);
        assert_eq!(args.stats_credentials().unwrap().unwrap().1, "direct");
        // No password, no page; an unreadable file is an error that names it.
        assert_eq!(parse(&[]).stats_credentials().unwrap(), None);
        let err = parse(&["--stats-password-file", "/nonexistent/secret"]).stats_credentials().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/secret"), "{err}");
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn explain_is_a_command_of_its_own_and_an_address_is_still_a_consul_address() {
        let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let e = Explain::from_args(&argv(&["haproxy-sync", "explain", "hello", "--metrics-addr", "127.0.0.1:9999"]));
        let e = e.unwrap();
        assert_eq!((e.service.as_str(), e.metrics_addr.port()), ("hello", 9999));
        assert!(Explain::from_args(&argv(&["haproxy-sync", "consul://consul:8500"])).is_none());
        assert!(Explain::from_args(&argv(&["haproxy-sync"])).is_none());
    }

    #[test]
    fn wait_parses_like_consul_template() {
        assert_eq!(parse_wait("25ms:250ms").unwrap(), (Duration::from_millis(25), Duration::from_millis(250)));
        assert_eq!(parse_wait("1s").unwrap(), (Duration::from_secs(1), Duration::from_secs(4)));
        assert!(parse_wait("2s:1s").is_err());
        assert!(parse_wait("soon").is_err());
    }
}
