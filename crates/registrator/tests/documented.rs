//! Go Registrator's user documentation (`docs/user/services.md`, `run.md`,
//! `backends.md`), example by example, against the real engine and a real
//! Consul agent, with the registrator binary as a user runs it: on the
//! host, so the host's address for published ports is its agent's
//! (127.0.0.1 here) unless `-ip` says otherwise. Where this registrator
//! differs on purpose, the README's "Differences from Go Registrator" says
//! why, and the test shows the difference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use consul::AgentService;
use testkit::{CountingProxy, TestConsul, eventually};

mod common;
use common::*;

/// `-ip` for the tests that set it: a loopback address, so checks aimed at
/// it stay on this machine.
const IP: &str = "127.0.0.2";

/// The services the agent holds for `scene`'s containers (registrator sees
/// every container on the engine, other tests' too).
async fn of_scene(consul: &TestConsul, scene: &Scene) -> Vec<AgentService> {
    let all = consul.client().agent_services().await.expect("agent services");
    let ours = |s: &AgentService| {
        s.id.contains(&format!(":{}-", scene.tag)) || s.service.starts_with(&format!("{}-", scene.tag))
    };
    let mut v: Vec<_> = all.into_values().filter(ours).collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

async fn wait_scene(consul: &TestConsul, scene: &Scene, n: usize) -> Vec<AgentService> {
    eventually(&format!("{n} service(s) of the scene"), LIMIT, || async {
        let v = of_scene(consul, scene).await;
        if v.len() == n { Ok(v) } else { Err(format!("{v:?}")) }
    })
    .await
}

/// Registrator on the host, with `flags`, against `consul`.
fn registrator(consul: &TestConsul, scene: &Scene, flags: &[&str]) -> Process {
    Process::launch(&format!("consul://{}", consul.http), &format!("{}-host", scene.tag), flags, None, &[])
}

/// A check of the agent's, as `/v1/agent/checks` shows it.
async fn checks_of(consul: &TestConsul, service_id: &str) -> Vec<serde_json::Value> {
    let url = format!("http://{}/v1/agent/checks", consul.http);
    let all: serde_json::Map<String, serde_json::Value> = reqwest::get(url).await.unwrap().json().await.unwrap();
    let mut v: Vec<_> = all.into_values().filter(|c| c["ServiceID"] == service_id).collect();
    v.sort_by_key(|c| c["CheckID"].as_str().unwrap_or_default().to_owned());
    v
}

/// Starts container `name` on the default bridge with `env` and `more` arguments.
fn start(scene: &mut Scene, name: &str, env: &[(&str, &str)], more: &[&str]) -> String {
    let env: Vec<String> = env.iter().flat_map(|(k, v)| ["-e".to_owned(), format!("{k}={v}")]).collect();
    let mut all: Vec<&str> = env.iter().map(String::as_str).collect();
    all.extend_from_slice(more);
    scene.run_on_bridge(name, &all)
}

/// One case of [`backends_md_every_check_option_reaches_consul`]: container
/// name, its `SERVICE_CHECK_*` settings, the check type Consul reports.
type CheckCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn services_md_single_service_with_attributes() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("db");
    let attrs = [("SERVICE_NAME", name.as_str()), ("SERVICE_TAGS", "master,backups"), ("SERVICE_REGION", "us2")];
    start(&mut scene, "redis", &attrs, &["--expose", "6379", "-p", "6379"]);
    let reg = registrator(&consul, &scene, &["-ip", IP]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!(s.service, name);
    assert_eq!(s.id, format!("{}-host:{}-redis:6379", scene.tag, scene.tag));
    assert_eq!((s.address.as_str(), s.port), (IP, scene.host_port("redis", "6379/tcp")));
    assert_eq!(s.tags, ["master", "backups"]);
    assert_eq!(s.meta.get("region").map(String::as_str), Some("us2"));
    reg.stop();
}

#[tokio::test]
async fn services_md_tags_with_an_escaped_comma() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("t");
    start(&mut scene, "t", &[("SERVICE_NAME", &name), ("SERVICE_TAGS", r"/(;\,:-_)/")], &["-p", "80"]);
    let reg = registrator(&consul, &scene, &[]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!(s.tags, ["/(;,:-_)/"]);
    // No -ip: the host's address is the agent's.
    assert_eq!((s.address.as_str(), s.port), ("127.0.0.1", scene.host_port("t", "80/tcp")));
    reg.stop();
}

#[tokio::test]
async fn services_md_several_ports_are_named_by_port() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("nginx");
    start(&mut scene, "nginx", &[("SERVICE_NAME", &name)], &["-p", "443", "-p", "80"]);
    let reg = registrator(&consul, &scene, &["-ip", IP]);
    let found = wait_scene(&consul, &scene, 2).await;
    let got: Vec<_> = found.iter().map(|s| (s.service.clone(), s.id.clone(), s.port)).collect();
    let id = |p: u16| format!("{}-host:{}-nginx:{p}", scene.tag, scene.tag);
    assert_eq!(
        got,
        [
            (format!("{name}-443"), id(443), scene.host_port("nginx", "443/tcp")),
            (format!("{name}-80"), id(80), scene.host_port("nginx", "80/tcp")),
        ]
    );
    reg.stop();
}

#[tokio::test]
async fn services_md_per_port_names_ids_and_attributes() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let (https, http, id) = (scene.service("https"), scene.service("http"), format!("https.{}", scene.tag));
    start(
        &mut scene,
        "nginx",
        &[
            ("SERVICE_443_NAME", &https),
            ("SERVICE_443_ID", &id),
            ("SERVICE_443_SNI", "enabled"),
            ("SERVICE_80_NAME", &http),
            ("SERVICE_TAGS", "www"),
        ],
        &["-p", "443", "-p", "80"],
    );
    let reg = registrator(&consul, &scene, &["-ip", IP]);
    let found = wait_scene(&consul, &scene, 2).await;
    let s443 = found.iter().find(|s| s.service == https).expect("https");
    let s80 = found.iter().find(|s| s.service == http).expect("http");
    assert_eq!(s443.id, id, "SERVICE_443_ID is the whole ID");
    assert_eq!(s443.meta.get("sni").map(String::as_str), Some("enabled"));
    assert_eq!(s80.meta.get("sni"), None, "per-port attributes stay on their port");
    assert_eq!((s443.tags.clone(), s80.tags.clone()), (vec!["www".to_owned()], vec!["www".to_owned()]));
    assert_eq!(s80.id, format!("{}-host:{}-nginx:80", scene.tag, scene.tag));
    reg.stop();
}

#[tokio::test]
async fn services_md_labels_work_as_the_environment_does() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("db");
    let (n, t) = (format!("SERVICE_NAME={name}"), "SERVICE_TAGS=master,backups".to_owned());
    scene.run_on_bridge("redis", &["-l", &n, "-l", &t, "-l", "SERVICE_REGION=us2", "--expose", "6379", "-p", "6379"]);
    let reg = registrator(&consul, &scene, &["-ip", IP]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!((s.service.as_str(), s.tags.clone()), (name.as_str(), vec!["master".to_owned(), "backups".to_owned()]));
    assert_eq!(s.meta.get("region").map(String::as_str), Some("us2"));
    reg.stop();
}

#[tokio::test]
async fn services_md_defaults_register_every_published_container_with_all() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    scene.run_on_bridge("plain", &["-p", "6379"]);
    // The default here is -explicit (a deliberate difference): nothing.
    let explicit = registrator(&consul, &scene, &["-explicit"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(of_scene(&consul, &scene).await.is_empty());
    explicit.stop();
    // -all: Go Registrator's default; the name is the image's.
    let all = registrator(&consul, &scene, &["-all", "-ip", IP]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!((s.service.as_str(), s.port), ("debian", scene.host_port("plain", "6379/tcp")));
    all.stop();
}

#[tokio::test]
async fn services_md_ignore_a_container_or_one_port() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("web");
    start(&mut scene, "ignored", &[("SERVICE_NAME", &name), ("SERVICE_IGNORE", "true")], &["-p", "80"]);
    start(&mut scene, "one", &[("SERVICE_NAME", &name), ("SERVICE_80_IGNORE", "true")], &["-p", "80", "-p", "443"]);
    let reg = registrator(&consul, &scene, &["-ip", IP]);
    let found = wait_scene(&consul, &scene, 1).await;
    assert_eq!(found[0].id, format!("{}-host:{}-one:443", scene.tag, scene.tag));
    assert_eq!(found[0].service, name, "one port left: no port suffix");
    reg.stop();
}

#[tokio::test]
async fn services_md_host_networking_registers_the_hosts_address_and_port() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("hostnet");
    start(&mut scene, "h", &[("SERVICE_NAME", &name)], &["--net=host", "--expose", "18081"]);
    let reg = registrator(&consul, &scene, &[]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!((s.address.as_str(), s.port), ("127.0.0.1", 18081));
    reg.stop();
}

/// README "Which address is registered": a port neither published nor on a
/// network registrator shares, with registrator on the host network.
#[tokio::test]
async fn address_an_unpublished_port_seen_from_the_host_is_the_containers_own() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("own");
    start(&mut scene, "o", &[("SERVICE_NAME", &name)], &["--expose", "80"]);
    let reg = registrator(&consul, &scene, &[]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!((s.address.clone(), s.port), (container_ip(&format!("{}-o", scene.tag), "bridge"), 80));
    reg.stop();
}

/// README "Which address is registered": `SERVICE_NETWORK` picks the network.
#[tokio::test]
async fn address_service_network_picks_the_named_network() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("net");
    let container = format!("{}-n", scene.tag);
    let network = scene.network.clone();
    start(&mut scene, "n", &[("SERVICE_NAME", &name), ("SERVICE_NETWORK", &network)], &["-p", "80"]);
    docker(&["network", "connect", &network, &container]);
    let reg = registrator(&consul, &scene, &["-ip", IP]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!((s.address.clone(), s.port), (container_ip(&container, &network), 80));
    reg.stop();
}

#[tokio::test]
async fn a_container_in_anothers_network_namespace_is_reached_through_that_ones_ports() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("pod");
    scene.run_on_bridge("net", &["-p", "80"]);
    let owner = format!("container:{}-net", scene.tag);
    start(&mut scene, "app", &[("SERVICE_NAME", &name)], &["--net", &owner]);
    let reg = registrator(&consul, &scene, &["-ip", IP]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!(s.id, format!("{}-host:{}-app:80", scene.tag, scene.tag));
    assert_eq!((s.address.as_str(), s.port), (IP, scene.host_port("net", "80/tcp")));
    reg.stop();
}

#[tokio::test]
async fn services_md_internal_registers_the_container_address_and_exposed_port() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("int");
    start(&mut scene, "i", &[("SERVICE_NAME", &name)], &["--expose", "8080", "-p", "8080"]);
    let reg = registrator(&consul, &scene, &["-internal", "-ip", IP]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!((s.address.clone(), s.port), (container_ip(&format!("{}-i", scene.tag), "bridge"), 8080));
    reg.stop();
}

#[tokio::test]
async fn run_md_udp_ports_get_a_udp_tag_and_id_suffix() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("dns");
    start(&mut scene, "u", &[("SERVICE_NAME", &name)], &["-p", "5353/udp"]);
    let reg = registrator(&consul, &scene, &["-ip", IP]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!(s.id, format!("{}-host:{}-u:5353:udp", scene.tag, scene.tag));
    assert_eq!(s.tags, ["udp"]);
    assert_eq!(s.port, scene.host_port("u", "5353/udp"));
    reg.stop();
}

#[tokio::test]
async fn run_md_tags_as_a_list_and_as_a_template_over_the_container() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("tagged");
    start(
        &mut scene,
        "t",
        &[("SERVICE_NAME", &name), ("SERVICE_TAGS", "own"), ("TEAM", "blue")],
        &["-h", "myhost", "-l", "com.example.tier=web", "-p", "80"],
    );
    let template = r#"{{.Config.Hostname}},{{mIndex "com.example.tier" .Config.Labels}},{{splitIndex 1 "=" (matchFirstElement "^TEAM=" .Config.Env)}},fixed"#;
    let reg = registrator(&consul, &scene, &["-ip", IP, "-tags", template]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!(s.tags, ["own", "myhost", "web", "blue", "fixed"]);
    reg.stop();
    // A template that does not parse stops registrator at start, saying why.
    let bad = registrator(&consul, &scene, &["-tags", "{{.Config.Hostname"]);
    let log = eventually("refused at start", LIMIT, || async {
        let log = bad.log();
        if log.contains("does not parse") { Ok(log) } else { Err(log) }
    })
    .await;
    assert!(log.contains("-tags template"), "{log}");
    bad.stop();
}

#[tokio::test]
async fn run_md_use_ip_from_label_takes_the_address_from_the_label() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("labelled");
    start(&mut scene, "l", &[("SERVICE_NAME", &name)], &["-l", "net.example.ip=127.0.0.3/24", "-p", "80"]);
    let reg = registrator(&consul, &scene, &["-useIpFromLabel", "net.example.ip"]);
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!((s.address.as_str(), s.port), ("127.0.0.3", scene.host_port("l", "80/tcp")));
    reg.stop();
}

#[tokio::test]
async fn run_md_ttl_flags_are_accepted_and_said_to_change_nothing() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("ttl");
    start(&mut scene, "t", &[("SERVICE_NAME", &name)], &["-p", "80"]);
    let reg = registrator(&consul, &scene, &["-ttl", "30", "-ttl-refresh", "10", "-retry-attempts", "3"]);
    wait_scene(&consul, &scene, 1).await;
    assert_eq!(reg.lines("WARN", "-ttl and -ttl-refresh have no effect"), 1);
    reg.stop();
}

#[tokio::test]
async fn backends_md_every_check_option_reaches_consul() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let cases: [CheckCase; 6] = [
        (
            "http",
            &[
                ("SERVICE_80_CHECK_HTTP", "/health/endpoint/path"),
                ("SERVICE_80_CHECK_INTERVAL", "15s"),
                ("SERVICE_80_CHECK_TIMEOUT", "1s"),
                ("SERVICE_80_CHECK_HTTP_METHOD", "HEAD"),
            ],
            "http",
        ),
        ("https", &[("SERVICE_CHECK_HTTPS", "/x"), ("SERVICE_CHECK_HTTPS_METHOD", "POST")], "http"),
        ("tcp", &[("SERVICE_CHECK_TCP", "true"), ("SERVICE_CHECK_INTERVAL", "1m30s")], "tcp"),
        ("ttl", &[("SERVICE_CHECK_TTL", "30s"), ("SERVICE_CHECK_INITIAL_STATUS", "passing")], "ttl"),
        (
            "grpc",
            &[
                ("SERVICE_CHECK_GRPC", "true"),
                ("SERVICE_CHECK_GRPC_USE_TLS", "true"),
                ("SERVICE_CHECK_TLS_SKIP_VERIFY", "true"),
            ],
            "grpc",
        ),
        ("dereg", &[("SERVICE_CHECK_TCP", "true"), ("SERVICE_CHECK_DEREGISTER_AFTER", "10m")], "tcp"),
    ];
    for (name, settings, _) in &cases {
        let svc = scene.service(name);
        let mut pairs = vec![("SERVICE_NAME", svc.as_str())];
        pairs.extend_from_slice(settings);
        start(&mut scene, name, &pairs, &["-p", "80"]);
    }
    let reg = registrator(&consul, &scene, &["-ip", IP]);
    wait_scene(&consul, &scene, cases.len()).await;
    for (name, _, kind) in &cases {
        let id = format!("{}-host:{}-{name}:80", scene.tag, scene.tag);
        let checks = checks_of(&consul, &id).await;
        assert_eq!(checks.len(), 1, "{name}: {checks:?}");
        assert_eq!(checks[0]["Type"], *kind, "{name}: {checks:?}");
        assert_eq!(checks[0]["CheckID"], format!("service:{id}"), "{name}: Consul's own ID for a service's check");
    }
    // The TTL check starts passing, as asked.
    let ttl = checks_of(&consul, &format!("{}-host:{}-ttl:80", scene.tag, scene.tag)).await;
    assert_eq!(ttl[0]["Status"], "passing");
    // The HTTP check uses the method and URL asked for (Consul's output
    // names both, as Go's HTTP client does: `Head "http://..."`).
    let port = scene.host_port("http", "80/tcp");
    let want = format!("head \"http://{IP}:{port}/health/endpoint/path\"");
    let id = format!("{}-host:{}-http:80", scene.tag, scene.tag);
    eventually("the HTTP check ran with HEAD", Duration::from_secs(20), || async {
        let c = checks_of(&consul, &id).await;
        let out = c[0]["Output"].as_str().unwrap_or_default().to_ascii_lowercase();
        if out.contains(&want) { Ok(()) } else { Err(out) }
    })
    .await;
    reg.stop();
}

#[tokio::test]
async fn backends_md_script_checks_with_service_ip_and_port() {
    let consul = TestConsul::start_with(&["-enable-script-checks"]).await;
    let mut scene = Scene::new();
    let svc = scene.service("script");
    start(
        &mut scene,
        "s",
        &[("SERVICE_NAME", &svc), ("SERVICE_CHECK_SCRIPT", "/bin/echo $SERVICE_IP:$SERVICE_PORT")],
        &["-p", "80"],
    );
    let reg = registrator(&consul, &scene, &["-ip", IP]);
    wait_scene(&consul, &scene, 1).await;
    let id = format!("{}-host:{}-s:80", scene.tag, scene.tag);
    let want = format!("{IP}:{}", scene.host_port("s", "80/tcp"));
    eventually("the script ran with the registered address", Duration::from_secs(20), || async {
        let c = checks_of(&consul, &id).await;
        let out = c.first().and_then(|c| c["Output"].as_str()).unwrap_or_default().to_owned();
        if out.contains(&want) { Ok(()) } else { Err(out) }
    })
    .await;
    reg.stop();
}

/// Consul refuses one container's registration (script checks are off on
/// the agent): it is retried on its own, with backoff, logged once; the
/// others are registered as usual; `/health` and `/metrics` say so.
#[tokio::test]
async fn a_registration_consul_refuses_is_retried_calmly_and_others_are_served() {
    let consul = TestConsul::start().await;
    let proxy = CountingProxy::start(consul.http).await;
    let mut scene = Scene::new();
    let (bad, good) = (scene.service("bad"), scene.service("good"));
    start(&mut scene, "bad", &[("SERVICE_NAME", &bad), ("SERVICE_CHECK_SCRIPT", "/bin/true")], &["-p", "80"]);
    let reg =
        Process::launch(&format!("consul://{}", proxy.addr), &format!("{}-host", scene.tag), &["-ip", IP], None, &[]);
    let bad_id = format!("\"ID\":\"{}-host:{}-bad:80\"", scene.tag, scene.tag);
    eventually("the refusal is counted", LIMIT, || async {
        let m = reg.metrics().await;
        if m.contains("registrator_refused_services 1") { Ok(()) } else { Err(m) }
    })
    .await;
    // Another container meanwhile: registered at once.
    start(&mut scene, "good", &[("SERVICE_NAME", &good)], &["-p", "80"]);
    let started = std::time::Instant::now();
    wait_scene(&consul, &scene, 1).await;
    assert!(started.elapsed() < Duration::from_secs(2), "the good one waited {:?}", started.elapsed());

    tokio::time::sleep(Duration::from_secs(20)).await;
    let attempts = proxy.count(&bad_id);
    // Backoff 1, 2, 4, 8, 16 s (each in [half, full]): at most 6 in ~21 s.
    assert!((2..=6).contains(&attempts), "{attempts} attempts to register the refused service in ~21 s");
    assert_eq!(reg.lines("WARN", "refuses the registration"), 1, "{}", reg.log());
    let (status, body) = reg.health().await.unwrap();
    assert_eq!(status, 200, "one refused service is not an unhealthy registrator");
    assert!(body.contains("Scripts are disabled"), "{body}");
    let metrics = reg.metrics().await;
    assert!(metrics.contains("registrator_consul_refusals_total 1"), "{metrics}");
    reg.stop();
}

/// The agent away for a minute: registrator waits with growing pauses, says
/// so once, and catches up when it is back (empty, as a restarted dev agent).
#[tokio::test]
async fn an_agent_down_for_a_minute_is_waited_for_calmly() {
    let mut consul = TestConsul::start().await;
    let proxy = CountingProxy::start(consul.http).await;
    let mut scene = Scene::new();
    let name = scene.service("calm");
    start(&mut scene, "a", &[("SERVICE_NAME", &name)], &["-p", "80"]);
    let reg =
        Process::launch(&format!("consul://{}", proxy.addr), &format!("{}-host", scene.tag), &["-ip", IP], None, &[]);
    wait_scene(&consul, &scene, 1).await;

    consul.stop();
    let before = proxy.connections();
    let log_before = reg.log().lines().count();
    start(&mut scene, "b", &[("SERVICE_NAME", &name)], &["-p", "80"]); // comes while the agent is away
    tokio::time::sleep(Duration::from_secs(60)).await;
    let tries = proxy.connections() - before;
    let lines = reg
        .log()
        .lines()
        .skip(log_before)
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .count();
    assert!(tries <= 25, "{tries} connections to an agent down for a minute (waits grow to 5 s)");
    assert!(lines <= 2, "{lines} warnings while the agent was down:\n{}", reg.log());
    let (status, why) = reg.health().await.unwrap();
    assert_eq!(status, 503);
    assert!(why.contains("unreachable"), "{why}");

    consul.restart().await;
    let back = std::time::Instant::now();
    eventually("both registered again", Duration::from_secs(10), || async {
        let v = of_scene(&consul, &scene).await;
        if v.len() == 2 { Ok(()) } else { Err(format!("{v:?}")) }
    })
    .await;
    eprintln!(
        "[calm] agent down 60 s: {tries} connection attempts, {lines} warnings; caught up {:.1} s after it was back",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(reg.lines("INFO", "Consul agent reachable again"), 1);
    reg.stop();
}

/// The command in Go Registrator's run.md, as written (its socket path
/// included), with this project's image.
#[tokio::test]
async fn run_md_the_documented_run_command() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let name = scene.service("doc");
    start(&mut scene, "svc", &[("SERVICE_NAME", &name)], &["-p", "80"]);
    let registrator = format!("{}-registrator", scene.tag);
    let uri = format!("consul://localhost:{}", consul.http.port());
    docker(&[
        "run",
        "-d",
        &format!("--name={registrator}"),
        "--net=host",
        "--volume=/var/run/docker.sock:/tmp/docker.sock",
        &format!("portolan/registrator:{}", env!("CARGO_PKG_VERSION")),
        &uri,
    ]);
    scene.containers.push(registrator.clone());
    let s = &wait_scene(&consul, &scene, 1).await[0];
    assert_eq!((s.address.as_str(), s.port), ("127.0.0.1", scene.host_port("svc", "80/tcp")));
    let engine = docker(&["info", "-f", "{{.Name}}"]);
    assert_eq!(s.id, format!("{engine}:{}-svc:80", scene.tag), "IDs as Go Registrator's: host:container:port");
}
