//! Least privilege in the compose stack. Docker: registrator reaches the
//! engine only through docker-door, which lets its reads through and
//! refuses everything else. The network: a client in a network namespace of
//! its own, wired to the host by a veth pair as another machine on the LAN
//! would be, reaches the load balancer's ports and nothing else; the host
//! itself reaches every port on its loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::Duration;

use e2e::Stack;
use testkit::eventually;

/// A client on the "LAN": a network namespace whose only link is a veth
/// pair to the host, the host's end at `host_ip`. Removed however the test ends.
struct LanClient {
    ns: String,
    host_if: String,
    host_ip: String,
}

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

impl LanClient {
    fn new() -> LanClient {
        let id = std::process::id();
        let (ns, host_if, peer) = (format!("portolan-lan-{id}"), format!("lanh{id}"), format!("lanc{id}"));
        // A /30 of its own, outside Docker's and the many-host tests' ranges.
        let net = format!("10.214.{}.{}", (id / 64) % 256, (id % 64) * 4);
        let base: Vec<u32> = net.split('.').map(|p| p.parse().unwrap()).collect();
        let at = |n: u32| format!("{}.{}.{}.{}", base[0], base[1], base[2], base[3] + n);
        let client = LanClient { ns: ns.clone(), host_if: host_if.clone(), host_ip: at(1) };
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{}/30", at(1)), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{}/30", at(2)), "dev", &peer]);
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        client
    }

    /// `args` run inside the client's namespace.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.ns]).args(args).output().expect("ip netns exec")
    }

    /// Whether an HTTP(S) request from the client to the host's `port` gets any answer.
    fn http(&self, scheme: &str, port: u16) -> Result<String, String> {
        let url = format!("{scheme}://{}:{port}/", self.host_ip);
        let out = self.run(&["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", &url]);
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() { Ok(code) } else { Err(format!("curl exit {:?}", out.status.code())) }
    }

    /// Whether a DNS query from the client to the host's `port` (UDP or TCP) is answered.
    fn dns(&self, port: u16, tcp: bool) -> bool {
        let (server, port) = (format!("@{}", self.host_ip), port.to_string());
        let mut args = vec!["dig", &server, "-p", &port, "+time=1", "+tries=1", "consul.service.consul"];
        if tcp {
            args.push("+tcp");
        }
        let out = self.run(&args);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("status: NOERROR")
    }
}

impl Drop for LanClient {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}

/// `curl` through docker-door's socket: the status of `METHOD path`.
fn through_door(socket: &str, method: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--unix-socket", socket])
        .args(["-X", method, "-H", "Content-Type: application/json", "-d", "{\"Image\": \"x\"}"])
        .arg(format!("http://docker{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn docker_is_read_through_the_door_and_the_lan_reaches_the_load_balancer_alone() {
    let stack = Stack::new("exposure");
    stack.up(1);
    // Registration works with the door alone: /hello is routed.
    eventually("/hello answers", Duration::from_secs(60), || async { stack.hostnames(2).await.map(drop) }).await;

    // registrator has no Docker socket of its own; the door's is in a volume.
    let mounts = Command::new("docker")
        .args(["inspect", "-f", "{{json .Mounts}}", &stack.container("registrator")])
        .output()
        .unwrap();
    let mounts: serde_json::Value = serde_json::from_slice(&mounts.stdout).unwrap();
    for m in mounts.as_array().unwrap() {
        assert_ne!(m["Source"], "/var/run/docker.sock", "registrator holds the Docker socket: {m}");
    }
    let volume = format!("{}_docker-door", stack.project);
    let out = Command::new("docker").args(["volume", "inspect", "-f", "{{.Mountpoint}}", &volume]).output().unwrap();
    let socket = format!("{}/docker.sock", String::from_utf8_lossy(&out.stdout).trim());
    // Reads pass; writes, exec, deletion and logs are refused.
    let hello = stack.container("hello");
    assert_eq!(through_door(&socket, "GET", "/containers/json"), "200");
    assert_eq!(through_door(&socket, "GET", &format!("/v1.41/containers/{hello}/json")), "200");
    for (method, path) in [
        ("POST", "/containers/create".to_owned()),
        ("POST", format!("/containers/{hello}/exec")),
        ("POST", format!("/containers/{hello}/stop")),
        ("DELETE", format!("/containers/{hello}?force=true")),
        ("GET", format!("/containers/{hello}/logs?stdout=1")),
    ] {
        assert_eq!(through_door(&socket, method, &path), "403", "{method} {path} through the door");
    }
    assert_eq!(stack.hello_hostnames().len(), 1, "hello still runs");
    let logs = stack.compose(&["logs", "--no-color", "docker-door"]);
    let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert!(logs.contains("/containers/create") && logs.contains("refused"), "each refusal is logged:\n{logs}");
    let lan = LanClient::new();

    // The load balancer answers the LAN, over HTTP and HTTPS.
    let hello = eventually("the LAN reaches /hello", Duration::from_secs(10), || async {
        let url = format!("http://{}:{}/hello", lan.host_ip, stack.http_port);
        let out = lan.run(&["curl", "-s", "--max-time", "3", &url]);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.contains("\"language\"") { Ok(body) } else { Err(format!("{out:?}")) }
    })
    .await;
    assert!(hello.contains("Rust"), "{hello}");
    assert_eq!(lan.http("https", stack.https_port), Ok("404".to_owned()), "HTTPS: the root has no route");

    // Nothing else does: Consul's API and UI, its DNS, the stats page, the admin pages.
    let private = [
        ("Consul's HTTP API", stack.consul_port),
        ("the stats page", stack.stats_port),
        ("haproxy-sync's routes page", stack.admin_port),
        ("registrator's containers page", stack.registrator_admin_port),
    ];
    for (what, port) in private {
        let seen = lan.http("http", port);
        assert!(seen.is_err(), "{what} (port {port}) answers the LAN: {seen:?}");
    }
    assert!(!lan.dns(stack.dns_port, false), "Consul's DNS (UDP) answers the LAN");
    assert!(!lan.dns(stack.dns_port, true), "Consul's DNS (TCP) answers the LAN");

    // The host itself reaches each of them on its loopback.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    for (what, port, path) in [
        ("Consul's HTTP API", stack.consul_port, "/v1/status/leader"),
        ("the stats page", stack.stats_port, "/"),
        ("haproxy-sync's routes page", stack.admin_port, "/routes"),
        ("registrator's containers page", stack.registrator_admin_port, "/containers"),
    ] {
        let resp = client.get(format!("http://127.0.0.1:{port}{path}")).send().await;
        let status = resp.map(|r| r.status().as_u16()).map_err(|e| e.to_string());
        // The stats page asks for its credentials: an answer all the same.
        assert!(matches!(status, Ok(200 | 401)), "{what} on loopback: {status:?}");
    }
    let dig = Command::new("dig")
        .args(["@127.0.0.1", "-p", &stack.dns_port.to_string(), "+time=2", "+tries=2", "consul.service.consul"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&dig.stdout).contains("status: NOERROR"), "Consul's DNS on loopback: {dig:?}");

    // Docker says the same: only the load balancer's ports are bound beyond loopback.
    for service in ["consul", "registrator", "haproxy"] {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{json .HostConfig.PortBindings}}", &stack.container(service)])
            .output()
            .unwrap();
        let bindings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for (port, binds) in bindings.as_object().unwrap() {
            let lb = service == "haproxy" && (port == "80/tcp" || port == "443/tcp");
            for b in binds.as_array().unwrap() {
                let host_ip = b["HostIp"].as_str().unwrap_or_default();
                assert!(lb || host_ip == "127.0.0.1", "{service} {port} is published on {host_ip:?}");
            }
        }
    }
}
