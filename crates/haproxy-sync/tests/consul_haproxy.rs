//! haproxy-sync against a real Consul agent and a real HAProxy, with
//! backends on loopback that echo which instance answered and what path
//! reached it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::http::Uri;
use clap::Parser;
use consul::{Check, Registration};
use haproxy_sync::config::Args;
mod common;

use common::{Running, register};
use testkit::{TestConsul, eventually, stable_port, unique_name};

const LIMIT: Duration = Duration::from_secs(10);

/// A backend answering `<port> <path>` to every request.
async fn backend() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new().fallback(move |uri: Uri| async move { format!("{port} {}", uri.path()) });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

struct Lb {
    http: u16,
    stats: u16,
    admin: u16,
    run: Running,
}

impl Lb {
    async fn start(consul: &TestConsul, extra: &[&str]) -> Lb {
        Lb::start_at(&consul.url(), extra).await
    }

    /// With Consul at `url` (a proxy in front of it, say).
    async fn start_at(url: &str, extra: &[&str]) -> Lb {
        // HAProxy binds the first two and haproxy-sync the admin endpoint
        // from its arguments: ports below the ephemeral range.
        let (http, stats, admin) = (stable_port(), stable_port(), stable_port());
        let dir = std::env::temp_dir().join(unique_name("haproxy-sync-test-"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut argv: Vec<String> = [
            "haproxy-sync",
            url,
            "--config",
            &dir.join("haproxy.cfg").display().to_string(),
            "--master-socket",
            &dir.join("master.sock").display().to_string(),
            "--runtime-socket",
            &dir.join("admin.sock").display().to_string(),
            "--bind",
            "127.0.0.1",
            "--http-port",
            &http.to_string(),
            "--stats-port",
            &stats.to_string(),
            "--stats-user",
            "admin",
            "--stats-password",
            "s3cret",
            "--wait",
            "10ms:100ms",
            "--grace",
            "1",
            "--metrics-addr",
            &format!("127.0.0.1:{admin}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = Args::parse_from(argv);
        let lb = Lb { http, stats, admin, run: Running::start(args, dir) };
        // An answer, not a connection: haproxy-sync holds the HTTP port
        // (HeldListener) before HAProxy serves it or the stats port.
        let probe = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
        eventually("HAProxy answers", LIMIT, || async {
            probe.get(format!("http://127.0.0.1:{http}/")).send().await.map(drop).map_err(|e| e.to_string())
        })
        .await;
        lb
    }

    async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let resp = reqwest::get(format!("http://127.0.0.1:{}{path}", self.http)).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    }

    /// The backend ports that answer `path` over `n` requests.
    async fn ports(&self, path: &str, n: usize) -> BTreeSet<u16> {
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            if let Ok((200, body)) = self.get(path).await {
                seen.insert(body.split(' ').next().unwrap().parse().unwrap());
            }
        }
        seen
    }

    async fn wait_ports(&self, path: &str, want: &[u16]) {
        let want: BTreeSet<u16> = want.iter().copied().collect();
        eventually(&format!("{path} answered by {want:?}"), LIMIT, || async {
            let seen = self.ports(path, want.len() * 4 + 2).await;
            if seen == want { Ok(()) } else { Err(format!("{seen:?}")) }
        })
        .await;
    }

    /// One sample of haproxy-sync's /metrics (0 when absent).
    async fn metric(&self, sample: &str) -> f64 {
        common::metric(self.admin, sample).await
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.run.dir.join("haproxy.cfg")).unwrap()
    }

    async fn stop(self) {
        self.run.stop().await;
    }
}

#[tokio::test]
async fn routes_by_prefix_strips_it_and_balances_round_robin() {
    let consul = TestConsul::start().await;
    let (a, b, c) = (backend().await, backend().await, backend().await);
    register(&consul, "h-a", "hello", a, &[]).await;
    register(&consul, "h-b", "hello", b, &[]).await;
    register(&consul, "h2", "hello2", c, &[]).await;
    let lb = Lb::start(&consul, &[]).await;

    lb.wait_ports("/hello", &[a, b]).await;
    // Round robin: consecutive requests alternate.
    let (_, first) = lb.get("/hello").await.unwrap();
    let (_, second) = lb.get("/hello").await.unwrap();
    assert_ne!(first.split(' ').next(), second.split(' ').next());
    // The prefix is stripped; /hello2 is its own service; /hellox is nobody's.
    assert!(lb.get("/hello/x/y?q=1").await.unwrap().1.ends_with(" /x/y"));
    assert!(lb.get("/hello").await.unwrap().1.ends_with(" /"));
    assert_eq!(lb.get("/hello2/z").await.unwrap().1, format!("{c} /z"));
    assert_eq!(lb.get("/hellox").await.unwrap().0, 404);
    assert_eq!(lb.get("/").await.unwrap().0, 404);
    lb.stop().await;
}

#[tokio::test]
async fn unmatched_requests_go_to_the_default_service_when_one_is_named() {
    let consul = TestConsul::start().await;
    let (a, b) = (backend().await, backend().await);
    register(&consul, "h-a", "hello", a, &[]).await;
    register(&consul, "w", "web", b, &[]).await;
    let lb = Lb::start(&consul, &["--default-service", "web"]).await;
    lb.wait_ports("/hello", &[a]).await;
    assert_eq!(lb.get("/somewhere/else").await.unwrap(), (200, format!("{b} /somewhere/else")));
    lb.stop().await;
}

#[tokio::test]
async fn follows_scaling_and_health() {
    let consul = TestConsul::start().await;
    let (a, b, c) = (backend().await, backend().await, backend().await);
    register(&consul, "h-a", "hello", a, &[]).await;
    let lb = Lb::start(&consul, &[]).await;
    lb.wait_ports("/hello", &[a]).await;

    // Scaling goes through the runtime API: no reload.
    let reloads = lb.metric("haproxy_sync_applies_total{kind=\"reload\"}").await;
    register(&consul, "h-b", "hello", b, &[]).await;
    register(&consul, "h-c", "hello", c, &[]).await;
    lb.wait_ports("/hello", &[a, b, c]).await;

    consul.client().deregister("h-a").await.unwrap();
    lb.wait_ports("/hello", &[b, c]).await;
    // (Routing changes before the apply is counted: the file is written after.)
    eventually("two runtime applies counted", LIMIT, || async {
        let n = lb.metric("haproxy_sync_applies_total{kind=\"runtime\"}").await;
        if n >= 2.0 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    assert_eq!(lb.metric("haproxy_sync_applies_total{kind=\"reload\"}").await, reloads);
    assert_eq!(lb.metric("haproxy_sync_servers{backend=\"be_hello\"}").await, 2.0);
    // The file follows, so a restart of HAProxy keeps the change.
    let config = lb.config();
    assert!(config.contains(&format!("127.0.0.1:{b} check")) && !config.contains(&format!("127.0.0.1:{a} check")));

    // An instance whose Consul check is critical gets no traffic.
    let critical = Registration {
        id: "h-c".into(),
        name: "hello".into(),
        tags: vec!["rest".into()],
        address: "127.0.0.1".into(),
        port: c,
        checks: vec![Check { ttl: Some("1h".into()), status: Some("critical".into()), ..Check::default() }],
        ..Registration::default()
    };
    consul.client().register(&critical).await.unwrap();
    lb.wait_ports("/hello", &[b]).await;
    lb.stop().await;
}

#[tokio::test]
async fn stats_page_needs_the_credentials() {
    let consul = TestConsul::start().await;
    let lb = Lb::start(&consul, &[]).await;
    let url = format!("http://127.0.0.1:{}/", lb.stats);
    // A connection per request: HAProxy may close one after a 401, and a
    // reused connection would race that close.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    assert_eq!(http.get(&url).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(http.get(&url).basic_auth("admin", Some("wrong")).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(http.get(&url).basic_auth("admin", Some("s3cret")).send().await.unwrap().status().as_u16(), 200);
    assert!(!lb.config().contains("s3cret"), "the password must not be written to the configuration file");
    lb.stop().await;
}

#[tokio::test]
async fn a_config_haproxy_refuses_is_never_loaded_and_routing_goes_on() {
    let consul = TestConsul::start().await;
    let a = backend().await;
    register(&consul, "h-a", "hello", a, &[]).await;
    // A template that writes a bogus directive when a service named "breaker" exists.
    let template = std::env::temp_dir().join(format!("breaking-{a}.hbs"));
    let source = haproxy_sync::render::DEFAULT_TEMPLATE.replace(
        "    default_backend {{default_backend}}",
        "{{#each services}}{{#if (eq name \"breaker\")}}    this-is-not-a-directive\n{{/if}}{{/each}}    default_backend {{default_backend}}",
    );
    std::fs::write(&template, source).unwrap();
    let lb = Lb::start(&consul, &["--template", &template.display().to_string()]).await;
    lb.wait_ports("/hello", &[a]).await;
    let good = lb.config();

    let b = backend().await;
    register(&consul, "brk", "breaker", b, &[]).await;
    register(&consul, "h-b", "hello", b, &[]).await;
    // HAProxy keeps the configuration in force: /hello never gains b.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(lb.ports("/hello", 10).await, BTreeSet::from([a]));
    assert_eq!(lb.config(), good);
    assert!(lb.run.dir.join("haproxy.cfg.rejected").exists());

    // Once the offending service goes, the next change applies.
    consul.client().deregister("brk").await.unwrap();
    lb.wait_ports("/hello", &[a, b]).await;
    lb.stop().await;
    let _ = std::fs::remove_file(template);
}

#[tokio::test]
async fn hostile_metadata_cannot_inject_directives() {
    let consul = TestConsul::start().await;
    let (a, b) = (backend().await, backend().await);
    register(&consul, "h-a", "hello", a, &[]).await;
    register(
        &consul,
        "evil",
        "evil",
        b,
        &[("lb_path", "/x\n    server injected 127.0.0.1:1"), ("lb_weight", "1\nbind :1")],
    )
    .await;
    register(&consul, "evil\n    bind :2", "evil name\"#", b, &[]).await;
    let lb = Lb::start(&consul, &[]).await;
    lb.wait_ports("/hello", &[a]).await;
    let config = lb.config();
    assert!(!config.contains("injected") && !config.contains("bind :1") && !config.contains("bind :2"), "{config}");
    lb.stop().await;
}

/// haproxy-keeper with its haproxy-sync, as separate processes.
struct Keeper {
    child: std::process::Child,
    dir: PathBuf,
    http: u16,
}

impl Keeper {
    fn start(consul: &TestConsul) -> Keeper {
        let http = stable_port();
        let dir = std::env::temp_dir().join(unique_name("haproxy-keeper-test-"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_haproxy-keeper"))
            .arg(consul.url())
            .args(["--config", &dir.join("haproxy.cfg").display().to_string()])
            .args(["--master-socket", &dir.join("master.sock").display().to_string()])
            .args(["--runtime-socket", &dir.join("admin.sock").display().to_string()])
            .args(["--bind", "127.0.0.1", "--http-port", &http.to_string(), "--stats-port", &stable_port().to_string()])
            .args(["--wait", "10ms:100ms", "--grace", "1", "--metrics-addr", ""])
            .env("HAPROXY_SYNC_BIN", env!("CARGO_BIN_EXE_haproxy-sync"))
            .spawn()
            .unwrap();
        Keeper { child, dir, http }
    }

    /// PIDs of the haproxy-sync processes this keeper runs.
    fn sync_pids(&self) -> Vec<String> {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("haproxy-sync .*{}.*--external", self.dir.display())])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid")),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::process::Command::new("pkill").arg("-f").arg(self.dir.display().to_string()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn haproxy_serves_on_while_haproxy_sync_is_killed_and_comes_back() {
    let consul = TestConsul::start().await;
    let (a, b) = (backend().await, backend().await);
    register(&consul, "h-a", "hello", a, &[]).await;
    let keeper = Keeper::start(&consul);
    let url = format!("http://127.0.0.1:{}/hello", keeper.http);
    eventually("routed through the keeper's HAProxy", LIMIT, || async {
        let body = reqwest::get(&url).await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
        if body.starts_with(&a.to_string()) { Ok(()) } else { Err(body) }
    })
    .await;

    // Steady requests while haproxy-sync is killed with SIGKILL.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (url, stop) = (url.clone(), stop.clone());
        async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match reqwest::get(&url).await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }
    });
    let victims = keeper.sync_pids();
    assert_eq!(victims.len(), 1, "{victims:?}");
    std::process::Command::new("kill").args(["-9", &victims[0]]).status().unwrap();
    // It comes back by itself and follows Consul again.
    eventually("haproxy-sync restarted", LIMIT, || async {
        let now = keeper.sync_pids();
        if now.len() == 1 && now != victims { Ok(()) } else { Err(format!("{now:?}")) }
    })
    .await;
    register(&consul, "h-b", "hello", b, &[]).await;
    eventually("the restarted haproxy-sync routes the new instance", LIMIT, || async {
        let body = reqwest::get(&url).await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
        if body.starts_with(&b.to_string()) { Ok(()) } else { Err(body) }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "failed requests while haproxy-sync was down: {failed:?}");
    assert!(ok > 10, "{ok} requests");
}

#[tokio::test]
async fn with_acls_on_a_token_routes_and_a_missing_or_revoked_one_unroutes_nothing() {
    const MASTER: &str = "5b0e2c1a-acl-master-secret";
    let consul = TestConsul::start_with_acls(MASTER).await;
    // A token that may read every service and node, as the README asks for.
    let rules = r#"service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }"#;
    let (secret, accessor) = consul.acl_token(MASTER, rules).await;
    let secret = secret.as_str();
    let admin = consul.client_with(Some(MASTER));
    let port = backend().await;
    admin
        .register(&Registration {
            id: "web-1".into(),
            name: "web".into(),
            tags: vec!["rest".into()],
            address: "127.0.0.1".into(),
            port,
            ..Registration::default()
        })
        .await
        .unwrap();

    let with = Lb::start(&consul, &["--token", secret]).await;
    with.wait_ports("/web", &[port]).await;
    let health = |lb: &Lb| reqwest::get(format!("http://127.0.0.1:{}/health", lb.admin));
    assert_eq!(health(&with).await.unwrap().status(), 200);

    // Without a token the catalog reads empty: never applied as the truth.
    let without = Lb::start(&consul, &[]).await;
    let why = eventually("health reports the refusal", LIMIT, || async {
        let resp = health(&without).await.map_err(|e| e.to_string())?;
        if resp.status() == 503 { Ok(resp.text().await.unwrap()) } else { Err(resp.status().to_string()) }
    })
    .await;
    assert!(why.contains("Consul"), "{why}");
    assert!(without.metric("haproxy_sync_consul_errors_total").await >= 1.0);
    assert_eq!(without.get("/web").await.unwrap().0, 404);

    // The token revoked under a running haproxy-sync: it keeps routing.
    consul.revoke_token(MASTER, &accessor).await;
    // A catalog change ends the blocking query in flight; the next one is refused.
    let bump = Registration { id: "bump".into(), name: "bump".into(), port: 1, ..Registration::default() };
    admin.register(&bump).await.unwrap();
    eventually("health reports the revoked token", LIMIT, || async {
        let status = health(&with).await.map_err(|e| e.to_string())?.status();
        if status == 503 { Ok(()) } else { Err(status.to_string()) }
    })
    .await;
    assert_eq!(with.ports("/web", 4).await, BTreeSet::from([port]));
    assert!(with.config().contains("web"));
    without.stop().await;
    with.stop().await;
}

/// `consul maint` as an operator runs it, against the agent at `http`.
fn consul_maint(http: std::net::SocketAddr, args: &[&str]) {
    let status = std::process::Command::new("consul")
        .arg("maint")
        .args(args)
        .arg(format!("-http-addr=http://{http}"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "consul maint {args:?}");
}

/// The status of a node's `serfHealth` check, as Consul reports it.
async fn serf_health(consul: &TestConsul, node: &str) -> String {
    let checks: serde_json::Value =
        reqwest::get(format!("{}/v1/health/node/{node}", consul.url())).await.unwrap().json().await.unwrap();
    checks
        .as_array()
        .and_then(|a| a.iter().find(|c| c["CheckID"] == "serfHealth"))
        .and_then(|c| c["Status"].as_str())
        .unwrap_or("absent")
        .to_owned()
}

#[tokio::test]
async fn instances_on_a_node_that_failed_or_is_in_maintenance_are_not_routed() {
    let consul = TestConsul::start().await;
    let mut other = consul.join_client().await;
    eventually("the second node is in the catalog", LIMIT, || async {
        if serf_health(&consul, &other.node).await == "passing" { Ok(()) } else { Err("not yet".to_owned()) }
    })
    .await;
    let (a, b) = (backend().await, backend().await);
    register(&consul, "h-a", "hello", a, &[]).await;
    // The other node's instance has a check of its own that passes, and
    // keeps passing in the catalog when its agent dies.
    let reg = Registration {
        id: "h-b".into(),
        name: "hello".into(),
        tags: vec!["rest".into()],
        address: "127.0.0.1".into(),
        port: b,
        checks: vec![Check { ttl: Some("1h".into()), status: Some("passing".into()), ..Check::default() }],
        ..Registration::default()
    };
    other.client().register(&reg).await.unwrap();
    let lb = Lb::start(&consul, &[]).await;
    lb.wait_ports("/hello", &[a, b]).await;

    // Node maintenance, then a single instance's.
    consul_maint(consul.http, &["-enable", "-reason", "test"]);
    lb.wait_ports("/hello", &[b]).await;
    consul_maint(consul.http, &["-disable"]);
    lb.wait_ports("/hello", &[a, b]).await;
    consul_maint(other.http, &["-enable", "-service", "h-b"]);
    lb.wait_ports("/hello", &[a]).await;
    consul_maint(other.http, &["-disable", "-service", "h-b"]);
    lb.wait_ports("/hello", &[a, b]).await;

    // The other host is lost: Consul's failure detection marks its node
    // critical while the instance's own check still reads passing; its
    // backend still answers, so HAProxy's own checks would keep it.
    other.stop();
    let node = other.node.clone();
    let critical = eventually("Consul marks the lost node critical", Duration::from_secs(60), || async {
        if serf_health(&consul, &node).await == "critical" {
            Ok(std::time::Instant::now())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    let service_check: serde_json::Value =
        reqwest::get(format!("{}/v1/health/checks/hello", consul.url())).await.unwrap().json().await.unwrap();
    assert!(
        service_check.as_array().unwrap().iter().any(|c| c["ServiceID"] == "h-b" && c["Status"] == "passing"),
        "the instance's own check still passes: {service_check}"
    );
    lb.wait_ports("/hello", &[a]).await;
    eprintln!("serfHealth critical → out of HAProxy: {:?}", critical.elapsed());
    lb.stop().await;
}

/// The default template without HAProxy's active checks (a thousand
/// servers on one loopback backend would check it a thousand times a second).
fn unchecked_template(dir: &std::path::Path) -> PathBuf {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../haproxy/haproxy.cfg.hbs")).unwrap();
    let unchecked = template.replace(" check weight", " weight").replace("    option httpchk GET {{check_path}}\n", "");
    assert_ne!(unchecked, template, "the default template's checks moved");
    let path = dir.join("unchecked.hbs");
    std::fs::write(&path, unchecked).unwrap();
    path
}

#[tokio::test]
async fn a_thousand_services_route_through_a_consul_with_default_limits_on_few_connections() {
    const SERVICES: usize = 1000;
    let consul = TestConsul::start().await;
    let (a, b) = (backend().await, backend().await);
    let mut registering = tokio::task::JoinSet::new();
    for i in 0..SERVICES {
        let client = consul.client();
        registering.spawn(async move {
            let reg = Registration {
                id: format!("s{i}-1"),
                name: format!("s{i}"),
                tags: vec!["rest".into()],
                address: "127.0.0.1".into(),
                port: a,
                ..Registration::default()
            };
            client.register(&reg).await
        });
        if registering.len() >= 16 {
            registering.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(r) = registering.join_next().await {
        r.unwrap().unwrap();
    }
    let proxy = testkit::CountingProxy::start(consul.http).await;
    let dir = std::env::temp_dir().join(unique_name("haproxy-sync-smoke-"));
    std::fs::create_dir_all(&dir).unwrap();
    let template = unchecked_template(&dir).display().to_string();
    let lb = Lb::start_at(&format!("http://{}", proxy.addr), &["--template", &template]).await;
    for path in ["/s0", "/s500", "/s999"] {
        eventually(&format!("{path} routed"), Duration::from_secs(30), || async {
            match lb.get(path).await {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    // Everything is routed by the first configuration: HAProxy started
    // with it, and nothing was reloaded after.
    assert_eq!(lb.metric("haproxy_sync_applies_total{kind=\"reload\"}").await, 0.0);
    assert_eq!(lb.config().lines().filter(|l| l.starts_with("backend be_s")).count(), SERVICES);

    // One instance more in one service: found and applied without a reload,
    // with a handful of requests to Consul, not one per service.
    let before = proxy.requests();
    register(&consul, "s500-2", "s500", b, &[]).await;
    lb.wait_ports("/s500", &[a, b]).await;
    let spent = proxy.requests() - before;
    assert!(spent < 20, "{spent} requests to Consul for one changed instance");
    assert_eq!(lb.metric("haproxy_sync_applies_total{kind=\"reload\"}").await, 0.0);

    let open = proxy.max_open();
    assert!(open <= 8, "{open} connections to Consul at once");
    assert_eq!(lb.metric("haproxy_sync_consul_errors_total").await, 0.0, "Consul refused nothing");
    eprintln!("{SERVICES} services: at most {open} connections to Consul; one instance change cost {spent} requests");
    lb.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn consul_away_costs_a_few_requests_and_one_log_line_per_query_then_it_follows_again() {
    let mut consul = TestConsul::start().await;
    let (a, b) = (backend().await, backend().await);
    register(&consul, "h-a", "hello", a, &[]).await;
    let proxy = testkit::CountingProxy::start(consul.http).await;
    let http = stable_port();
    let dir = std::env::temp_dir().join(unique_name("haproxy-sync-outage-"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("haproxy-sync.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_haproxy-sync"))
        .arg(format!("http://{}", proxy.addr))
        .args(["--config", &dir.join("haproxy.cfg").display().to_string()])
        .args(["--master-socket", &dir.join("master.sock").display().to_string()])
        .args(["--runtime-socket", &dir.join("admin.sock").display().to_string()])
        .args(["--bind", "127.0.0.1", "--http-port", &http.to_string(), "--stats-port", &stable_port().to_string()])
        .args(["--wait", "10ms:100ms", "--grace", "1", "--metrics-addr", "", "--log-format", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{http}/hello");
    let answers = |port: u16| {
        let url = url.clone();
        async move {
            let body = reqwest::get(&url).await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
            if body.starts_with(&port.to_string()) { Ok(()) } else { Err(body) }
        }
    };
    eventually("routed", LIMIT, || answers(a)).await;
    // Indexes well above those the restarted (empty) agent will answer with,
    // as after a long life: its state is new, not older.
    for i in 0..30 {
        register(&consul, &format!("bump-{i}"), "bump", a, &[]).await;
        consul.client().deregister(&format!("bump-{i}")).await.unwrap();
    }

    // Consul away for 20 s: the two queries, and the sweep the last
    // changes asked for, back off (100 ms doubling to 5 s, jittered down to
    // half: at most 7 tries to reach 5 s, then one every 2.5 s at most), the
    // routes stay, and each query says so once.
    consul.stop();
    let before = proxy.connections();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let attempts = proxy.connections() - before;
    assert!(attempts <= 3 * (7 + 8), "{attempts} connection attempts to an absent Consul in 20 s");
    answers(a).await.unwrap();

    // Back (empty, as a restarted dev agent), then filled again: followed.
    consul.restart().await;
    register(&consul, "h-b", "hello", b, &[]).await;
    eventually("the new instance routed after Consul's return", Duration::from_secs(30), || answers(b)).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let _ = std::process::Command::new("pkill").arg("-f").arg(dir.display().to_string()).status();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let warnings: Vec<String> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .filter_map(|l| l["message"].as_str().filter(|m| m.contains("Consul")).map(str::to_owned))
        .collect();
    assert!(
        (2..=5).contains(&warnings.len()),
        "one warning per failing query (service list, checks, maybe a read), not one per attempt: {warnings:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("Consul away 20 s: {attempts} connection attempts, warnings: {warnings:?}");
}

#[tokio::test]
async fn a_runtime_change_the_file_cannot_follow_is_taken_back() {
    let consul = TestConsul::start().await;
    let (a, b) = (backend().await, backend().await);
    register(&consul, "h-a", "hello", a, &[]).await;
    // A template whose file HAProxy refuses once b's instance is in it: the
    // runtime API takes b, `haproxy -c` refuses the file that says so.
    let dir = std::env::temp_dir().join(unique_name("haproxy-sync-undo-"));
    std::fs::create_dir_all(&dir).unwrap();
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../haproxy/haproxy.cfg.hbs")).unwrap();
    let line = template.lines().find(|l| l.starts_with("    server {{name}} {{address}}")).expect("a server line");
    let poisoned = template
        .replace(line, &format!("{line}\n{{{{#if (eq address \"127.0.0.1:{b}\")}}}}    not-a-directive\n{{{{/if}}}}"));
    let path = dir.join("poisoned.hbs");
    std::fs::write(&path, poisoned).unwrap();
    let lb = Lb::start(&consul, &["--template", &path.display().to_string()]).await;
    lb.wait_ports("/hello", &[a]).await;

    register(&consul, "h-b", "hello", b, &[]).await;
    let rejected = lb.run.dir.join("haproxy.cfg.rejected");
    eventually("the file with b refused", LIMIT, || async {
        if rejected.exists() { Ok(()) } else { Err("no .rejected yet".to_owned()) }
    })
    .await;
    assert!(std::fs::read_to_string(&rejected).unwrap().contains(&format!("127.0.0.1:{b}")));
    // HAProxy runs what the file says: a alone.
    lb.wait_ports("/hello", &[a]).await;
    assert!(!lb.config().contains(&format!("127.0.0.1:{b}")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lb.ports("/hello", 20).await, [a].into_iter().collect());
    lb.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP backend that answers each connection with `<port>\n` and then
/// echoes what it reads.
async fn tcp_backend() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                if conn.write_all(format!("{port}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Connects to HAProxy's `port`, says `hello`, and returns which backend
/// answered and whether the echo came back.
async fn tcp_ask(port: u16) -> Result<u16, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(2), conn.read_line(&mut line))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let from: u16 = line.trim().parse().map_err(|_| format!("greeting {line:?}"))?;
    conn.get_mut().write_all(b"hello\n").await.map_err(|e| e.to_string())?;
    line.clear();
    conn.read_line(&mut line).await.map_err(|e| e.to_string())?;
    if line == "hello\n" { Ok(from) } else { Err(format!("echo {line:?}")) }
}

#[tokio::test]
async fn a_tcp_service_is_served_on_its_port_and_scales_without_a_reload() {
    let consul = TestConsul::start().await;
    let (a, b) = (tcp_backend().await, tcp_backend().await);
    let port = stable_port().to_string();
    let tcp: &[(&str, &str)] = &[("lb_mode", "tcp"), ("lb_port", &port)];
    register(&consul, "kv-a", "kv", a, tcp).await;
    // Another TCP service asking for the same port is left out, and one
    // asking for HAProxy's own HTTP port too; the first keeps its port.
    let lb = Lb::start(&consul, &[]).await;
    let http = lb.http.to_string();
    register(&consul, "kv2", "kv2", b, tcp).await;
    register(&consul, "kv3", "kv3", b, &[("lb_mode", "tcp"), ("lb_port", &http)]).await;
    let port: u16 = port.parse().unwrap();
    let seen = |n: usize| async move {
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            if let Ok(from) = tcp_ask(port).await {
                seen.insert(from);
            }
        }
        seen
    };
    eventually("the TCP service answers on its port", LIMIT, || async {
        let s = seen(4).await;
        if s == BTreeSet::from([a]) { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    // The HTTP frontend still routes: no path route was made for kv.
    assert_eq!(lb.get("/kv").await.unwrap().0, 404);
    assert_eq!(lb.get("/kv3").await.unwrap().0, 404);

    let reloads = lb.metric("haproxy_sync_applies_total{kind=\"reload\"}").await;
    register(&consul, "kv-b", "kv", b, tcp).await;
    eventually("both instances answer", LIMIT, || async {
        let s = seen(6).await;
        if s == BTreeSet::from([a, b]) { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    assert_eq!(lb.metric("haproxy_sync_applies_total{kind=\"reload\"}").await, reloads, "scaled at runtime");
    let config = lb.config();
    assert!(config.contains(&format!("frontend tcp_kv\n    mode tcp\n    bind 127.0.0.1:{port}\n")), "{config}");
    assert!(!config.contains("frontend tcp_kv2") && !config.contains("frontend tcp_kv3"), "{config}");

    // A port another program holds (haproxy-sync's own /metrics here) is
    // left out too: HAProxy could not listen there, and the reload would
    // fail for every service. Changes to the others still go through.
    let admin = lb.admin.to_string();
    register(&consul, "kv4", "kv4", b, &[("lb_mode", "tcp"), ("lb_port", &admin)]).await;
    let c = backend().await;
    register(&consul, "later", "later", c, &[]).await;
    lb.wait_ports("/later", &[c]).await;
    assert!(!lb.config().contains("frontend tcp_kv4"));
    assert!(tcp_ask(port).await.is_ok_and(|p| p == a || p == b), "the TCP service still answers");
    lb.stop().await;
}

/// `GET path` with `cookie`; the answering backend's port and the cookie set, if any.
async fn get_with_cookie(http: u16, path: &str, cookie: Option<&str>) -> (u16, Option<String>) {
    let mut req = reqwest::Client::new().get(format!("http://127.0.0.1:{http}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp.headers().get("set-cookie").map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    let body = resp.text().await.unwrap();
    (body.split(' ').next().unwrap().parse().unwrap(), set)
}

#[tokio::test]
async fn sticky_clients_stay_with_their_instance_while_others_come_and_go() {
    let consul = TestConsul::start().await;
    let (a, b, c) = (backend().await, backend().await, backend().await);
    let sticky: &[(&str, &str)] = &[("lb_sticky", "true")];
    register(&consul, "s-a", "shop", a, sticky).await;
    register(&consul, "s-b", "shop", b, sticky).await;
    let lb = Lb::start(&consul, &[]).await;
    lb.wait_ports("/shop", &[a, b]).await;

    // Two clients, pinned by the cookie HAProxy sets.
    let (first, cookie1) = get_with_cookie(lb.http, "/shop", None).await;
    let (second, cookie2) = get_with_cookie(lb.http, "/shop", None).await;
    assert_ne!(first, second, "round robin until pinned");
    let (cookie1, cookie2) = (cookie1.expect("a cookie"), cookie2.expect("a cookie"));
    assert!(cookie1.starts_with("lb_shop="), "{cookie1}");
    let reloads = lb.metric("haproxy_sync_applies_total{kind=\"reload\"}").await;

    // A third instance joins: both clients stay where they are.
    register(&consul, "s-c", "shop", c, sticky).await;
    lb.wait_ports("/shop", &[a, b, c]).await;
    for _ in 0..10 {
        assert_eq!(get_with_cookie(lb.http, "/shop", Some(&cookie1)).await.0, first);
        assert_eq!(get_with_cookie(lb.http, "/shop", Some(&cookie2)).await.0, second);
    }

    // The first client's instance leaves: that client moves (and is pinned
    // anew), the other stays.
    consul.client().deregister(if first == a { "s-a" } else { "s-b" }).await.unwrap();
    let remaining: Vec<u16> = [a, b, c].into_iter().filter(|p| *p != first).collect();
    lb.wait_ports("/shop", &remaining).await;
    let (moved, new_cookie) = get_with_cookie(lb.http, "/shop", Some(&cookie1)).await;
    assert_ne!(moved, first);
    let new_cookie = new_cookie.expect("pinned anew");
    for _ in 0..10 {
        assert_eq!(get_with_cookie(lb.http, "/shop", Some(&new_cookie)).await.0, moved);
        assert_eq!(get_with_cookie(lb.http, "/shop", Some(&cookie2)).await.0, second);
    }
    assert_eq!(lb.metric("haproxy_sync_applies_total{kind=\"reload\"}").await, reloads, "all at runtime");
    lb.stop().await;
}

#[tokio::test]
async fn weights_split_traffic_between_two_versions() {
    let consul = TestConsul::start().await;
    let (stable, canary) = (backend().await, backend().await);
    register(&consul, "v1", "shop", stable, &[("lb_weight", "90")]).await;
    register(&consul, "v2", "shop", canary, &[("lb_weight", "10")]).await;
    let lb = Lb::start(&consul, &[]).await;
    lb.wait_ports("/shop", &[stable, canary]).await;
    let mut to_canary = 0;
    for _ in 0..200 {
        let (_, body) = lb.get("/shop").await.unwrap();
        if body.starts_with(&canary.to_string()) {
            to_canary += 1;
        }
    }
    // Weighted round robin: 10% of 200, give or take a cycle.
    assert!((15..=25).contains(&to_canary), "{to_canary} of 200 to the canary");
    lb.stop().await;
}

/// A backend that answers after `delay`, counting the most requests it
/// held at once (health checks, to `/`, answer at once, uncounted).
async fn slow_backend(delay: Duration) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let m = most.clone();
    let app = Router::new().fallback(move |uri: Uri| {
        let (now, most) = (now.clone(), m.clone());
        async move {
            // HAProxy's health checks (`GET /`) are not counted.
            if uri.path() != "/" {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                now.fetch_sub(1, Ordering::SeqCst);
            }
            format!("{port} {}", uri.path())
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, most)
}

#[tokio::test]
async fn a_client_beyond_the_rate_gets_429_and_requests_beyond_maxconn_wait_their_turn() {
    use std::sync::atomic::Ordering;
    let consul = TestConsul::start().await;
    let a = backend().await;
    let (slow, most) = slow_backend(Duration::from_millis(200)).await;
    register(&consul, "r", "limited", a, &[("lb_rate_limit", "5")]).await;
    register(&consul, "q", "queued", slow, &[("lb_maxconn", "1")]).await;
    register(&consul, "bad", "lenient", a, &[("lb_rate_limit", "lots")]).await;
    let lb = Lb::start(&consul, &[]).await;
    lb.wait_ports("/limited", &[a]).await;
    lb.wait_ports("/queued", &[slow]).await;
    // The rate counts the last second and part of the one before (where
    // the waits above sent their requests): start afresh.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // 20 requests at once from one address: 5 pass in this second.
    let statuses = futures_join(20, || async { lb.get("/limited").await.unwrap().0 }).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, 20, "{statuses:?}");
    assert!((5..=6).contains(&ok), "{ok} passed: {statuses:?}");
    // A refused value is no limit (with a warning), not an unrouted service.
    let statuses = futures_join(20, || async { lb.get("/lenient").await.unwrap().0 }).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // Four slow requests at once to an instance capped at one connection:
    // all answered, one at a time.
    most.store(0, Ordering::SeqCst);
    let statuses = futures_join(4, || async { lb.get("/queued/slow").await.unwrap().0 }).await;
    assert_eq!(statuses, [200; 4]);
    assert_eq!(most.load(Ordering::SeqCst), 1, "the instance never held two");
    lb.stop().await;
}

/// Runs `n` copies of `f` at once; their results in order.
async fn futures_join<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    futures_util::future::join_all((0..n).map(|_| f())).await
}
