//! Property test over the routing rules and the renderer: whatever names,
//! IDs, addresses, ports, tags and Meta Consul hands over (slashes, spaces,
//! newlines, `#`, quotes, unicode, control characters, 10 kB strings, empty
//! strings), the configuration rendered with the default template passes
//! `haproxy -c`, holds no directive the input brought in, and a well-formed
//! service beside the hostile ones is routed as usual.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use consul::HealthStatus;
use haproxy_sync::model::{self, Catalog, Config, Instance, Stats, keys};
use haproxy_sync::render::Renderer;
use proptest::prelude::*;

/// The first word of every line the default template can produce.
const KEYWORDS: &[&str] = &[
    "global",
    "master-worker",
    "stats",
    "hard-stop-after",
    "mworker-max-reloads",
    "log",
    "defaults",
    "mode",
    "option",
    "timeout",
    "retries",
    "retry-on",
    "default-server",
    "frontend",
    "bind",
    "acl",
    "use_backend",
    "default_backend",
    "backend",
    "http-request",
    "balance",
    "server",
    "unique-id-format",
    "log-format",
    "cookie",
    "stick-table",
];

/// Strings that try hard to break out of where they are written.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a\n    bind :1".to_owned()),
        Just("x\r\nserver evil 127.0.0.1:1".to_owned()),
        Just("# comment\"'`$(id)".to_owned()),
        Just("/api/../../etc\0".to_owned()),
        Just("a".repeat(10_000)),
        Just("ünïcødé/ß/東京".to_owned()),
        Just(" leading and trailing ".to_owned()),
        Just("1\nbind :2".to_owned()),
        // Values the new keys accept, so their directives are checked too.
        Just("tcp".to_owned()),
        Just("true".to_owned()),
        Just("7".to_owned()),
        Just("18090".to_owned()),
        "\\PC{0,40}",
        any::<String>(),
        "[ -~]{0,300}",
    ]
}

fn status() -> impl Strategy<Value = HealthStatus> {
    prop_oneof![
        Just(HealthStatus::Passing),
        Just(HealthStatus::Warning),
        Just(HealthStatus::Critical),
        Just(HealthStatus::Unknown),
    ]
}

fn instance() -> impl Strategy<Value = Instance> {
    let meta_key = prop_oneof![
        Just(keys::PATH.to_owned()),
        Just(keys::STRIP.to_owned()),
        Just(keys::HOST.to_owned()),
        Just(keys::BALANCE.to_owned()),
        Just(keys::CHECK_PATH.to_owned()),
        Just(keys::WEIGHT.to_owned()),
        Just(keys::MODE.to_owned()),
        Just(keys::PORT.to_owned()),
        Just(keys::STICKY.to_owned()),
        Just(keys::RATE_LIMIT.to_owned()),
        Just(keys::MAXCONN.to_owned()),
        Just(keys::HTTPS_REDIRECT.to_owned()),
        hostile(),
    ];
    let address = prop_oneof![Just("10.0.0.7".to_owned()), Just("fe80::1".to_owned()), hostile()];
    (hostile(), address, any::<u16>(), status(), prop::collection::vec(hostile(), 0..3)).prop_flat_map(
        move |(id, address, port, status, tags)| {
            prop::collection::btree_map(meta_key.clone(), hostile(), 0..4).prop_map(move |meta| Instance {
                id: id.clone(),
                address: address.clone(),
                port,
                status,
                tags: tags.clone(),
                meta,
                ..Default::default()
            })
        },
    )
}

fn good() -> Instance {
    Instance {
        id: "good-1".into(),
        address: "10.0.0.1".into(),
        port: 8080,
        status: HealthStatus::Passing,
        tags: vec!["rest".into()],
        meta: BTreeMap::new(),
        ..Default::default()
    }
}

fn render(catalog: &Catalog, dir: &std::path::Path) -> String {
    let (services, _skipped) = model::services(catalog);
    let config = Config {
        services,
        bind: "127.0.0.1".into(),
        http_port: 18080,
        stats: Stats { enabled: false, port: 18081 },
        runtime_socket: dir.join("admin.sock").display().to_string(),
        hard_stop_after: "5s".into(),
        template: "haproxy/haproxy.cfg.hbs".into(),
        default_backend: "no_route".into(),
        https: None,
        access_log: true,
    };
    Renderer::default_template().render(&config).unwrap()
}

fn haproxy_check(text: &str, dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("run haproxy (scripts/install-deps installs it)");
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_catalogs_render_configs_haproxy_accepts_without_injected_directives(
        services in prop::collection::btree_map(hostile(), prop::collection::vec(instance(), 1..4), 1..4)
    ) {
        let mut catalog = Catalog {
            services: services.into_iter().map(|(name, list)| (name, Arc::new(list))).collect(),
            ..Default::default()
        };
        catalog.services.insert("good".into(), Arc::new(vec![good()]));
        let dir = tempdir();
        let text = render(&catalog, &dir);

        for line in text.lines() {
            let line = line.trim();
            let first = line.split_whitespace().next().unwrap_or_default();
            prop_assert!(
                line.is_empty() || line.starts_with('#') || KEYWORDS.contains(&first),
                "unexpected line {line:?} in\n{text}"
            );
        }
        prop_assert!(text.contains("backend be_good\n"), "{text}");
        prop_assert!(text.contains("10.0.0.1:8080"), "{text}");
        let checked = haproxy_check(&text, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        prop_assert!(checked.is_ok(), "haproxy -c refused:\n{}\n{text}", checked.unwrap_err());
    }
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "haproxy-sync-hostile-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
