//! Where the door listens: a TCP address or a Unix socket, bound for
//! serving ([`Listener`]) and dialled by `--probe`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// `--listen`: `host:port` (an IP address), or `unix:///path/to.sock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket's path.
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix://") {
            return match path {
                p if p.starts_with('/') => Ok(Listen::Unix(PathBuf::from(p))),
                _ => Err(format!("{s:?}: a Unix socket is unix:// and an absolute path, like unix:///run/door.sock")),
            };
        }
        s.parse()
            .map(Listen::Tcp)
            .map_err(|e| format!("{s:?} is not an address like 0.0.0.0:2375 or unix:///path: {e}"))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// A bound listener of either kind.
#[derive(Debug)]
pub enum Listener {
    /// Listening on TCP.
    Tcp(TcpListener),
    /// Listening on a Unix socket.
    Unix(UnixListener),
}

impl Listener {
    /// Binds `listen`. A Unix socket left at the path by an earlier run is
    /// removed first; any other file there is an error.
    pub async fn bind(listen: &Listen) -> std::io::Result<Self> {
        match listen {
            Listen::Tcp(addr) => TcpListener::bind(addr).await.map(Listener::Tcp),
            Listen::Unix(path) => {
                remove_stale_socket(path)?;
                UnixListener::bind(path).map(Listener::Unix)
            }
        }
    }

    /// Where it listens, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_else(|e| format!("tcp ({e})")),
            Listener::Unix(l) => match l.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf)) {
                Some(path) => format!("unix://{}", path.display()),
                None => "unix socket".to_owned(),
            },
        }
    }
}

/// Removes a Unix socket at `path` (a previous run's); leaves anything else.
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

/// A connection to `listen` from this host: an unspecified address (`0.0.0.0`,
/// `::`) is dialled on loopback.
pub enum Dialled {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

/// Dials `listen` from this host, as `--probe` does.
pub async fn dial(listen: &Listen) -> std::io::Result<Dialled> {
    match listen {
        Listen::Tcp(addr) => TcpStream::connect(ops::admin::on_this_host(*addr)).await.map(Dialled::Tcp),
        Listen::Unix(path) => UnixStream::connect(path).await.map(Dialled::Unix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!("0.0.0.0:2375".parse(), Ok(Listen::Tcp(SocketAddr::from(([0, 0, 0, 0], 2375)))));
        assert_eq!("[::1]:2375".parse::<Listen>().map(|l| l.to_string()), Ok("[::1]:2375".to_owned()));
        assert_eq!("unix:///run/door.sock".parse(), Ok(Listen::Unix(PathBuf::from("/run/door.sock"))));
        assert_eq!(
            "unix:///run/door.sock".parse::<Listen>().map(|l| l.to_string()),
            Ok("unix:///run/door.sock".into())
        );
        assert!("unix://run/door.sock".parse::<Listen>().is_err());
        assert!("docker:2375".parse::<Listen>().is_err());
        assert!("".parse::<Listen>().is_err());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_file_is_left_alone() {
        let dir = std::env::temp_dir().join(format!("docker-door-endpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let sock = dir.join("door.sock");
        let listen = Listen::Unix(sock.clone());
        let first = Listener::bind(&listen).await;
        assert!(first.is_ok(), "{first:?}");
        drop(first);
        // The socket file stays after its listener is gone: binding again works.
        let again = Listener::bind(&listen).await;
        assert!(again.is_ok(), "{again:?}");
        assert_eq!(again.map(|l| l.describe()).unwrap_or_default(), format!("unix://{}", sock.display()));
        let file = dir.join("plain");
        std::fs::write(&file, "keep me").unwrap_or_default();
        assert!(Listener::bind(&Listen::Unix(file.clone())).await.is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), "keep me");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
