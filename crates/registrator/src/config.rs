//! Command line and environment, in Registrator's vocabulary.

use std::net::IpAddr;

use clap::Parser;

/// Registers running Docker containers as Consul services and keeps the two
/// equal: at start, on every Docker event, after reconnects and on a timer.
///
/// A container is registered when it carries SERVICE_NAME (environment or
/// label). Every flag also works Go-style with one dash (-internal, -resync=5).
/// `registrator explain CONTAINER` asks the registrator running here what it
/// did with a container, and why.
#[derive(Debug, Parser)]
#[command(name = "registrator", version)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub consul: consul::ConsulArgs,
    /// Always register the container's own address and exposed port, never a published host port.
    #[arg(long)]
    pub internal: bool,
    /// Host address to register for published ports.
    #[arg(long, value_name = "IP")]
    pub ip: Option<IpAddr>,
    /// Tags added to every service: comma-separated (\, for a comma), or a
    /// Go template over the container, e.g. '{{.Config.Hostname}},blue'.
    #[arg(long)]
    pub tags: Option<String>,
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
    /// Only talk to a Consul agent in a container on this Docker engine: of
    /// the addresses the agent's host name resolves to, this engine's
    /// containers' (a Swarm's global Consul service); wait while there is none.
    #[arg(long, env = "REGISTRATOR_LOCAL_AGENT")]
    pub local_agent: bool,
    /// Owner mark and service-ID prefix; default: the Docker engine's host name.
    #[arg(long, env = "REGISTRATOR_OWNER")]
    pub owner: Option<String>,
    /// When an exiting container is deregistered: always, or on-success (a
    /// crashed container stays registered, its checks failing, until removed).
    #[arg(long, value_enum, default_value = "always")]
    pub deregister: crate::Deregister,
    /// Remove services of containers that are gone. Always done for the
    /// services this registrator owns; accepted for compatibility.
    #[arg(long)]
    pub cleanup: bool,
    /// Attempts to reach Consul at start before giving up (-1: never give up).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    pub retry_attempts: i64,
    /// Milliseconds between those attempts.
    #[arg(long, default_value_t = 2000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_interval: u64,
    /// Go Registrator's TTL for backends that expire services; Consul does
    /// not use it (as in Go Registrator). Accepted and ignored.
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<u64>,
    /// Refresh interval for -ttl; accepted and ignored, as -ttl.
    #[arg(long = "ttl-refresh", value_name = "SECONDS", requires = "ttl")]
    pub ttl_refresh: Option<u64>,
    /// Seconds between checks that Consul still holds every registered
    /// service, e.g. after an agent restart (0: never).
    #[arg(long, default_value_t = 2, value_name = "SECONDS")]
    pub verify: u64,
    #[command(flatten)]
    pub admin: ops::admin::AdminArgs,
}

/// What else registrator can be asked to do than run.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Ask the registrator running here what it did with one container, and
    /// why: the services registered for it and their state in Consul, or why
    /// nothing is. Exits 0 with the answer, 1 when the container is unknown
    /// or registrator does not answer.
    Explain(ExplainArgs),
}

/// `registrator explain CONTAINER [--metrics-addr ADDR]`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The container: its name, its ID, or an ID prefix (at least 4 hex digits).
    pub container: String,
    /// The running registrator's admin address (its --metrics-addr); default:
    /// METRICS_ADDR, else 0.0.0.0:9090, asked on loopback.
    #[arg(long = "metrics-addr", value_name = "ADDR")]
    pub metrics_addr: Option<ops::admin::AdminAddr>,
}

impl Args {
    /// Parses the process arguments, Go-style single-dash flags included.
    pub fn from_env() -> Self {
        Self::parse_go_style(std::env::args())
    }

    /// Parses `argv` (program name first), Go-style single-dash flags included.
    pub fn parse_go_style(argv: impl IntoIterator<Item = String>) -> Self {
        use clap::CommandFactory;
        Self::parse_from(ops::go_style_args(&Self::command(), argv))
    }

    /// The admin address `registrator explain` asks: its own
    /// `--metrics-addr`, else registrator's (`METRICS_ADDR` or the default).
    pub fn explain_addr(&self, explain: &ExplainArgs) -> ops::admin::AdminAddr {
        explain.metrics_addr.unwrap_or(self.admin.metrics_addr)
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
        assert_eq!(args.tags.as_deref(), Some("a,b"));
        assert_eq!(args.consul.settings().unwrap().base_url().as_str(), "http://consul:8500/");
    }

    #[test]
    fn explain_parses_beside_go_registrators_command_line() {
        let parse = |argv: &[&str]| {
            let cmd = <Args as clap::CommandFactory>::command();
            Args::try_parse_from(ops::go_style_args(&cmd, argv.iter().map(|a| (*a).to_owned())))
        };
        let args = parse(&["registrator", "explain", "web"]).unwrap();
        let Some(Command::Explain(explain)) = &args.command else { panic!("{args:?}") };
        assert_eq!(explain.container, "web");
        assert_eq!(args.explain_addr(explain), args.admin.metrics_addr, "registrator's own address by default");
        for flag in ["--metrics-addr=127.0.0.1:9091", "-metrics-addr=127.0.0.1:9091"] {
            let args = parse(&["registrator", "explain", "/web", flag]).unwrap();
            let Some(Command::Explain(explain)) = &args.command else { panic!("{args:?}") };
            assert_eq!(explain.container, "/web");
            assert_eq!(args.explain_addr(explain).0, Some("127.0.0.1:9091".parse().unwrap()), "{flag}");
        }
        let args = parse(&["registrator", "-metrics-addr=127.0.0.1:9092", "explain", "3f2a"]).unwrap();
        let Some(Command::Explain(explain)) = &args.command else { panic!("{args:?}") };
        assert_eq!(args.explain_addr(explain).0, Some("127.0.0.1:9092".parse().unwrap()), "given before explain");
        assert!(parse(&["registrator", "explain"]).is_err(), "a container is needed");
        // Go Registrator's documented command line is still a run.
        let args = parse(&["registrator", "-internal", "-resync=5", "consul://consul:8500"]).unwrap();
        assert!(args.command.is_none() && args.internal);
        assert_eq!(args.consul.consul, "consul://consul:8500");
        let args = parse(&["registrator", "consul://localhost:8500"]).unwrap();
        assert!(args.command.is_none());
    }

    #[test]
    fn go_registrator_flags_that_change_nothing_with_consul_are_accepted() {
        let cmd = <Args as clap::CommandFactory>::command();
        let argv = ["registrator", "-ttl=30", "-ttl-refresh=10", "consul://consul:8500"].map(String::from);
        let args = Args::try_parse_from(ops::go_style_args(&cmd, argv)).unwrap();
        assert_eq!((args.ttl, args.ttl_refresh), (Some(30), Some(10)));
        let zero = ["registrator", "-retry-interval=0"].map(String::from);
        assert!(Args::try_parse_from(ops::go_style_args(&cmd, zero)).is_err(), "a zero interval would spin");
        let tags = ["registrator", r"-tags={{.Config.Hostname}},a\,b"].map(String::from);
        let args = Args::try_parse_from(ops::go_style_args(&cmd, tags)).unwrap();
        assert_eq!(args.tags.as_deref(), Some(r"{{.Config.Hostname}},a\,b"), "kept whole for the template");
    }
}
