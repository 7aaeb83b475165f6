//! The command line, with environment fallbacks.

use std::path::PathBuf;

use clap::Parser;

use crate::endpoint::Listen;

/// A read-only door to the Docker socket: forwards the reads registrator
/// makes (GET and HEAD of /_ping, /version, /info, /events,
/// /containers/json, /containers/{id}/json, /networks, /networks/{id}) and
/// answers everything else 403, with one log line each.
#[derive(Clone, Debug, Parser)]
#[command(name = "docker-door", version)]
pub struct Args {
    /// Where the door listens: host:port, or unix:///path for a Unix socket.
    #[arg(long, env = "DOCKER_DOOR_LISTEN", default_value = "0.0.0.0:2375", value_name = "ADDR")]
    pub listen: Listen,
    /// The Docker socket the door holds.
    #[arg(long, env = "DOCKER_SOCKET", default_value = "/var/run/docker.sock", value_name = "PATH")]
    pub docker: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "LOG_FORMAT")]
    pub log_format: ops::LogFormat,
    /// Ask /_ping through the door running here (at --listen) and exit 0
    /// when it answers 200, 1 when not: a container healthcheck.
    #[arg(long)]
    pub probe: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags_parse() {
        let Ok(args) = Args::try_parse_from(["docker-door"]) else { panic!("defaults") };
        assert_eq!(args.listen.to_string(), "0.0.0.0:2375");
        assert_eq!(args.docker, PathBuf::from("/var/run/docker.sock"));
        assert!(!args.probe);
        let argv = ["docker-door", "--listen", "unix:///run/door/docker.sock", "--docker", "/tmp/d.sock", "--probe"];
        let Ok(args) = Args::try_parse_from(argv) else { panic!("flags") };
        assert_eq!(args.listen.to_string(), "unix:///run/door/docker.sock");
        assert_eq!(args.docker, PathBuf::from("/tmp/d.sock"));
        assert!(args.probe);
        assert!(Args::try_parse_from(["docker-door", "--listen", "nowhere"]).is_err());
    }
}
