//! HAProxy itself: checking a configuration, running the master process
//! (kept by [`ops::supervise`]), and asking its two sockets, the master CLI
//! and the runtime API ([`ask`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use ops::Backoff;
use ops::supervise::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("cannot run {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("HAProxy refused the configuration:\n{0}")]
    Invalid(String),
    #[error("master CLI at {socket}: {source}")]
    MasterCli { socket: String, source: std::io::Error },
    #[error("reload failed:\n{0}")]
    Reload(String),
    #[error("runtime API at {socket}: {source}")]
    Runtime { socket: String, source: std::io::Error },
    #[error("runtime API refused: {0}")]
    RuntimeRefused(String),
}

/// Where HAProxy is and the files it is run with.
#[derive(Clone, Debug)]
pub struct Haproxy {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub master_socket: PathBuf,
    /// Variables HAProxy's configuration reads (`"${STATS_PASSWORD}"`), given
    /// to both `haproxy -c` and the running HAProxy, never written to a file.
    pub env: Vec<(String, String)>,
}

impl Haproxy {
    /// Runs `haproxy -c` on `path`; HAProxy's own message on failure.
    pub async fn check(&self, path: &Path) -> Result<(), HaproxyError> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg("-q")
            .arg("-f")
            .arg(path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| HaproxyError::Spawn { bin: self.bin.display().to_string(), source })?;
        if out.status.success() {
            Ok(())
        } else {
            let mut msg = String::from_utf8_lossy(&out.stderr).into_owned();
            msg.push_str(&String::from_utf8_lossy(&out.stdout));
            Err(HaproxyError::Invalid(msg.trim().to_owned()))
        }
    }

    /// Starts HAProxy in master-worker mode, in the foreground, with its
    /// master CLI on `master_socket`.
    pub fn spawn(&self) -> Result<Child, HaproxyError> {
        let _ = std::fs::remove_file(&self.master_socket);
        Command::new(&self.bin)
            .arg("-W")
            .arg("-S")
            .arg(format!("{},mode,600", self.master_socket.display()))
            .arg("-f")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| HaproxyError::Spawn { bin: self.bin.display().to_string(), source })
    }

    /// Sends one command to the master CLI and returns its answer.
    pub async fn master(&self, command: &str) -> Result<String, HaproxyError> {
        ask(&self.master_socket, command, Duration::from_secs(10))
            .await
            .map_err(|source| HaproxyError::MasterCli { socket: self.master_socket.display().to_string(), source })
    }

    /// Runs runtime API commands on the worker, through `socket`, in one
    /// session; any answer that is not an acknowledgement is an error.
    pub async fn runtime(&self, socket: &Path, commands: &[String]) -> Result<(), HaproxyError> {
        if commands.is_empty() {
            return Ok(());
        }
        let answer = ask(socket, &commands.join(";"), Duration::from_secs(5))
            .await
            .map_err(|source| HaproxyError::Runtime { socket: socket.display().to_string(), source })?;
        refusals(&answer).map_err(HaproxyError::RuntimeRefused)
    }

    /// Reloads through the master CLI and waits until the master answers
    /// again with a worker of the new generation.
    pub async fn reload(&self) -> Result<(), HaproxyError> {
        let before = self.worker_reloads().await.ok();
        let answer = self.master("reload").await?;
        // HAProxy >= 2.7 answers synchronously: "Success=1" or "Success=0".
        if answer.contains("Success=0") {
            return Err(HaproxyError::Reload(answer));
        }
        // 2.6 closes the connection while the master re-executes: wait for
        // it to come back with a newer worker.
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
        for _ in 0..200 {
            match self.worker_reloads().await {
                Ok(now) if before.is_none_or(|b| now > b) || answer.contains("Success=1") => return Ok(()),
                _ => backoff.wait().await,
            }
        }
        Err(HaproxyError::Reload("the master did not come back with a new worker".into()))
    }

    /// The master's reload counter, from `show proc`.
    pub async fn worker_reloads(&self) -> Result<u64, HaproxyError> {
        let answer = self.master("show proc").await?;
        // "#<PID> <type> <reloads> <uptime> <version>"; the master's line carries the count.
        answer
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("master"))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| HaproxyError::Reload(format!("unexpected `show proc` answer: {answer}")))
    }
}

/// The PIDs of the workers in a master CLI `show proc` answer (current and
/// old), the same in 2.6 and 3.0: a line per process, "<pid> <type>
/// <reloads> <uptime> <version>", under "# workers".
pub fn workers(show_proc: &str) -> Vec<u32> {
    show_proc
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let pid = f.next()?.parse().ok()?;
            (f.next()? == "worker").then_some(pid)
        })
        .collect()
}

/// Sends `line` to one of HAProxy's sockets (master CLI or runtime API) and
/// returns the whole answer: HAProxy runs the command once input ends and
/// closes the session after answering. At most `limit` for all of it.
pub async fn ask(socket: &Path, line: &str, limit: Duration) -> std::io::Result<String> {
    let io = async {
        let mut stream = UnixStream::connect(socket).await?;
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        stream.shutdown().await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    };
    tokio::time::timeout(limit, io).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer in {}", humantime::format_duration(limit)),
        ))
    })
}

/// [`ask`] with a payload (`set ssl cert <path> <<`): the command ending in
/// `<<`, the payload's lines, and the empty line that ends the payload (so
/// the payload must hold none).
pub async fn ask_with_payload(socket: &Path, line: &str, payload: &str, limit: Duration) -> std::io::Result<String> {
    if payload.lines().any(|l| l.trim().is_empty()) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a payload cannot hold an empty line"));
    }
    // `ask` adds the final newline: the payload's last line, then an empty one.
    ask(socket, &format!("{line} <<\n{}\n", payload.trim_end_matches('\n')), limit).await
}

/// The environment variable that tells HAProxy's configuration where the
/// HTTP frontend listens when its socket is held for it ([`HeldListener`]):
/// `fd@<n>`. The default template binds `"${HAPROXY_SYNC_HTTP_LISTENER-<bind>:<port>}"`,
/// so without it HAProxy binds the address itself, as before.
pub const HTTP_LISTENER_ENV: &str = "HAPROXY_SYNC_HTTP_LISTENER";

/// [`HTTP_LISTENER_ENV`] for the HTTPS frontend (with `--certs`).
pub const HTTPS_LISTENER_ENV: &str = "HAPROXY_SYNC_HTTPS_LISTENER";

/// A listening TCP socket opened by the process that runs HAProxy and kept
/// open for as long as it runs, inherited by HAProxy (`bind fd@<n>`), its
/// workers, `haproxy -c` and, under haproxy-keeper, haproxy-sync: HAProxy's
/// master closes the sockets its workers bind and exits with its last
/// worker, so without it the port refuses connections from a worker's death
/// until HAProxy listens again. Held here, the kernel goes on accepting
/// connections into its backlog meanwhile; the next worker serves them.
#[derive(Debug)]
pub struct HeldListener {
    fd: std::os::fd::OwnedFd,
    /// The variable that names it to HAProxy's configuration.
    var: &'static str,
}

impl HeldListener {
    /// Binds `bind:port` (`bind` empty: every IPv4 address, as HAProxy's
    /// `bind :port`) and listens, without close-on-exec so that children
    /// inherit it; `SO_REUSEPORT` as HAProxy's own listeners, so an HAProxy
    /// left running by a previous process still shares the port.
    pub fn bind(bind: &str, port: u16) -> std::io::Result<Self> {
        Self::bind_for(HTTP_LISTENER_ENV, bind, port)
    }

    /// [`HeldListener::bind`], named to the configuration by `var`.
    pub fn bind_for(var: &'static str, bind: &str, port: u16) -> std::io::Result<Self> {
        use nix::sys::socket::{self, Backlog, SockFlag};
        let fd = reuseport_socket(bind, port, SockFlag::empty())?;
        // HAProxy does not listen() on an inherited socket: this backlog is its.
        socket::listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))?;
        Ok(Self { fd, var })
    }

    /// The variable HAProxy's configuration reads: `(HTTP_LISTENER_ENV, "fd@<n>")`.
    pub fn env(&self) -> (String, String) {
        (self.var.to_owned(), format!("fd@{}", std::os::fd::AsRawFd::as_raw_fd(&self.fd)))
    }
}

/// A TCP socket bound to `bind:port` (`bind` empty: every IPv4 address, as
/// HAProxy's `bind :port`) with `SO_REUSEADDR` and `SO_REUSEPORT`, as
/// HAProxy's own listeners have.
fn reuseport_socket(bind: &str, port: u16, flags: nix::sys::socket::SockFlag) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{self, AddressFamily, SockType, SockaddrStorage, sockopt};
    let ip: std::net::IpAddr = match bind.trim_start_matches('[').trim_end_matches(']') {
        "" => std::net::Ipv4Addr::UNSPECIFIED.into(),
        ip => ip.parse().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{bind:?} is not an IP address"))
        })?,
    };
    let family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, SockType::Stream, flags, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    let addr = SockaddrStorage::from(std::net::SocketAddr::new(ip, port));
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(fd)
}

/// Whether HAProxy, run here, could listen on `bind:port`: a port free or
/// held by HAProxy itself (its listeners share with `SO_REUSEPORT`) can be
/// bound; one another program holds (haproxy-sync's own `/metrics`, say),
/// or a privileged one HAProxy may not take, cannot, and would make the
/// reload fail for every service.
pub fn can_bind(bind: &str, port: u16) -> std::io::Result<()> {
    reuseport_socket(bind, port, nix::sys::socket::SockFlag::SOCK_CLOEXEC).map(drop)
}

/// Whether a template binds its HTTP frontend to a [`HeldListener`] (names
/// [`HTTP_LISTENER_ENV`]): only then is one held, as a template that binds
/// the port itself could not while another socket has it.
pub fn template_uses_held_listener(template: &str) -> bool {
    template.contains(HTTP_LISTENER_ENV)
}

/// Whether a template binds its HTTPS frontend to a [`HeldListener`] (names [`HTTPS_LISTENER_ENV`]).
pub fn template_uses_held_https_listener(template: &str) -> bool {
    template.contains(HTTPS_LISTENER_ENV)
}

/// Keeps HAProxy running until `shutdown`: started again (at once after a
/// run of 10 s or more, else with backoff) if it exits, and on shutdown
/// asked to finish its connections (SIGUSR1, a soft stop) for at most
/// `grace` before it is killed. `ready` is true from just before each start
/// (a change written from then on is reloaded, retried until the new master
/// answers, never lost in between) until HAProxy exits.
pub async fn supervise(
    haproxy: Haproxy,
    grace: Duration,
    ready: tokio::sync::watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let policy = Policy {
        name: "HAProxy",
        // Nothing listens until it is back: after a long run, at once; the
        // backoff is for one that keeps failing.
        healthy_after: Duration::from_secs(10),
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
        stop_signal: Signal::SIGUSR1,
        grace,
    };
    let start = || haproxy.spawn().map_err(std::io::Error::other);
    ops::supervise::supervise(policy, start, |up| _ = ready.send(up), shutdown).await;
}

/// Follows an HAProxy someone else runs: `ready` is true while its master
/// CLI answers, polled every 250 ms, until `shutdown`.
pub async fn follow(haproxy: Haproxy, ready: tokio::sync::watch::Sender<bool>, shutdown: CancellationToken) {
    loop {
        let up = haproxy.master("show proc").await.is_ok();
        ready.send_if_modified(|was| {
            let changed = *was != up;
            *was = up;
            changed
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Reads the runtime API's answer to a batch of `set server` commands: the
/// lines that are not an acknowledgement, joined, or `Ok` when there are
/// none. `set server ... addr` acknowledges a change with "IP changed from
/// ..." (and "port changed from ..."), and an address already in force with
/// "no need to change the addr[, port]" up to HAProxy 2.8 or "nothing
/// changed" from 2.9 on; `state` and `weight` answer nothing when they
/// succeed.
pub fn refusals(answer: &str) -> Result<(), String> {
    let refused: Vec<&str> = answer
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.contains("changed from")
                && !l.starts_with("no need to change")
                && !l.eq_ignore_ascii_case("nothing changed")
        })
        .collect();
    if refused.is_empty() { Ok(()) } else { Err(refused.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::{HTTP_LISTENER_ENV, HeldListener, refusals, template_uses_held_listener};

    #[test]
    fn show_proc_answers_of_each_version_give_their_workers() {
        // Captured from HAProxy 2.6.12 (Debian 12) and 3.0.11 (the image).
        let v26 = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n25805           master          0 [failed: 0]   0d00h00m10s     2.6.12-1+deb12u4\n# workers\n25808           worker          0               0d00h00m10s     2.6.12-1+deb12u4\n# programs\n\n";
        let v30 = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n13446           master          0 [failed: 0]   0d00h00m02s     3.0.11-1+deb13u4\n# workers\n13448           worker          0               0d00h00m02s     3.0.11-1+deb13u4\n# programs\n\n";
        assert_eq!(super::workers(v26), [25808]);
        assert_eq!(super::workers(v30), [13448]);
        // Just after a reload, the old worker still finishing (2.6, then 3.0).
        let reloaded = [
            "#<PID>          <type>          <reloads>       <uptime>        <version>      \n2917            master          3 [failed: 0]   0d00h05m16s     2.6.12-1+deb12u4\n# workers\n30059           worker          0               0d00h00m00s     2.6.12-1+deb12u4\n# old workers\n4663            worker          1               0d00h04m49s     2.6.12-1+deb12u4\n# programs\n\n",
            "#<PID>          <type>          <reloads>       <uptime>        <version>      \n13853           master          2 [failed: 0]   0d00h02m52s     3.0.11-1+deb13u4\n# workers\n30150           worker          0               0d00h00m00s     3.0.11-1+deb13u4\n# old workers\n14082           worker          1               0d00h02m48s     3.0.11-1+deb13u4\n# programs\n\n",
        ];
        assert_eq!(super::workers(reloaded[0]), [30059, 4663]);
        assert_eq!(super::workers(reloaded[1]), [30150, 14082]);
        assert!(super::workers("").is_empty());
    }

    #[test]
    fn the_default_template_binds_the_held_listener_or_else_the_address() {
        let template = crate::render::DEFAULT_TEMPLATE;
        assert!(template_uses_held_listener(template));
        let line = template.lines().find(|l| l.contains(HTTP_LISTENER_ENV) && l.trim_start().starts_with("bind"));
        let line = line.expect("the http frontend's bind line");
        let mut hb = handlebars::Handlebars::new();
        hb.register_escape_fn(handlebars::no_escape);
        for (bind, want) in [
            ("", r#"bind "${HAPROXY_SYNC_HTTP_LISTENER-:80}""#),
            ("10.0.0.1", r#"bind "${HAPROXY_SYNC_HTTP_LISTENER-10.0.0.1:80}""#),
        ] {
            let text = hb.render_template(line, &serde_json::json!({ "bind": bind, "http_port": 80 })).unwrap();
            assert_eq!(text.trim(), want);
        }
        // The HTTPS frontend's, likewise.
        assert!(super::template_uses_held_https_listener(template));
        let line = template.lines().find(|l| l.contains(super::HTTPS_LISTENER_ENV)).expect("the https bind line");
        let data = serde_json::json!({ "bind": "", "https": { "port": 443, "crt_list": "/c/l" } });
        let text = hb.render_template(line, &data).unwrap();
        assert_eq!(text.trim(), r#"bind "${HAPROXY_SYNC_HTTPS_LISTENER-:443}" ssl crt-list /c/l alpn h2,http/1.1"#);
    }

    #[test]
    fn a_held_listener_takes_connections_and_is_inherited() {
        let held = HeldListener::bind("127.0.0.1", 0).unwrap();
        let (name, value) = held.env();
        assert_eq!(name, HTTP_LISTENER_ENV);
        let fd: i32 = value.strip_prefix("fd@").unwrap().parse().unwrap();
        let port = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn>(fd).unwrap().port();
        // Nobody accepts: the kernel completes the handshake into the backlog.
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // Not closed on exec: a child has it at the same number.
        let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let flags = flags.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim().to_owned();
        assert_eq!(u32::from_str_radix(&flags, 8).unwrap() & 0o2000000, 0, "O_CLOEXEC is set: {flags}");
        assert!(HeldListener::bind("localhost", 80).is_err(), "a host name is not held");
        assert!(!template_uses_held_listener("frontend http\n    bind :80\n"));
    }

    #[test]
    fn every_acknowledgement_of_each_version_is_accepted_and_anything_else_refused() {
        // HAProxy 2.6 (the tests' host), changed and unchanged.
        assert_eq!(
            refusals(
                "IP changed from '127.0.0.1' to '10.0.0.2', port changed from '80' to '81' by 'stats socket command'\n"
            ),
            Ok(())
        );
        assert_eq!(refusals("IP changed from '127.0.0.1' to '10.0.0.2' by 'stats socket command'\n"), Ok(()));
        assert_eq!(refusals("no need to change the addr, port\n"), Ok(()));
        assert_eq!(refusals("no need to change the addr\n"), Ok(()));
        // HAProxy 3.0 (the image), an address already in force.
        assert_eq!(refusals("nothing changed\n"), Ok(()));
        assert_eq!(refusals("Nothing changed\n\n"), Ok(()));
        // state and weight answer nothing.
        assert_eq!(refusals("\n\n"), Ok(()));
        assert_eq!(refusals(""), Ok(()));
        // Refusals, in any mix.
        assert_eq!(refusals("No such server.\n"), Err("No such server.".into()));
        assert_eq!(
            refusals("nothing changed\nInvalid addr\nIP changed from 'a' to 'b' by 'x'\nRequire 'backend/server'.\n"),
            Err("Invalid addr; Require 'backend/server'.".into())
        );
        assert_eq!(refusals("Permission denied\n"), Err("Permission denied".into()));
    }
}
