//! The routes page and `haproxy-sync explain` against a real Consul agent
//! and a real HAProxy: every service Consul lists, the route it got with
//! HAProxy's live server states, and the reason for each one not routed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use clap::Parser;
use consul::{Check, Registration};
use haproxy_sync::config::Args;
use haproxy_sync::routes::{Report, Status};
mod common;

use common::Running;
use testkit::{TestConsul, eventually, stable_port, unique_name};

const LIMIT: Duration = Duration::from_secs(15);

/// An HTTP server on loopback that answers 200 to everything.
async fn backend() -> u16 {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

async fn register(consul: &TestConsul, reg: Registration) {
    consul.client().register(&reg).await.unwrap();
}

fn reg(id: &str, name: &str, tags: &[&str], port: u16, meta: &[(&str, &str)]) -> Registration {
    Registration {
        id: id.into(),
        name: name.into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        address: "127.0.0.1".into(),
        port,
        meta: meta.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..Registration::default()
    }
}

async fn report(admin: u16) -> Result<Report, String> {
    let resp = reqwest::get(format!("http://127.0.0.1:{admin}/routes.json")).await.map_err(|e| e.to_string())?;
    resp.json().await.map_err(|e| e.to_string())
}

// Threads of its own: the explain command is waited for while haproxy-sync serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_page_and_explain_say_what_is_routed_and_why_the_rest_is_not() {
    let consul = TestConsul::start().await;
    let good = backend().await;
    register(&consul, reg("web-1", "web", &["rest"], good, &[("registrator_container", "c0ffee")])).await;
    // A check that fails with something to say (a change of status carries
    // its output to the catalog at once; an output alone waits for Consul's
    // check_update_interval).
    let mut sick = reg("web-2", "web", &["rest"], backend().await, &[]);
    sick.checks = vec![Check { ttl: Some("1h".into()), status: Some("passing".into()), ..Check::default() }];
    register(&consul, sick).await;
    consul.client().update_ttl("service:web-2", "critical", "answers 500").await.unwrap();
    register(&consul, reg("odd-1", "odd", &["rest"], good, &[("lb_balance", "fastest")])).await;
    register(&consul, reg("twin-1", "zz-twin", &["rest"], good, &[("lb_path", "/web")])).await;
    register(&consul, reg("plain-1", "plain", &["other"], good, &[])).await;

    let (http, admin) = (stable_port(), stable_port());
    let dir = std::env::temp_dir().join(unique_name("haproxy-sync-routes-"));
    std::fs::create_dir_all(&dir).unwrap();
    let argv = common::argv(
        &consul,
        &dir,
        http,
        &[("--metrics-addr", format!("127.0.0.1:{admin}")), ("--registrator-url", "http://localhost:9091".to_owned())],
    );
    let run = Running::start(Args::parse_from(argv), dir);

    // HAProxy's own view: the good instance's server UP once its check passed.
    let r = eventually("web-1 UP in HAProxy, web-2 failing", LIMIT, || async {
        let r = report(admin).await?;
        let web = r.services.iter().find(|s| s.name == "web").ok_or("no web")?;
        let up = web.instances.iter().any(|i| i.id == "web-1" && i.haproxy.as_deref() == Some("UP"));
        let sick = web.instances.iter().any(|i| i.id == "web-2" && !i.routed);
        if up && sick { Ok(r) } else { Err(format!("{web:?}")) }
    })
    .await;
    let s = |name: &str| r.services.iter().find(|s| s.name == name).unwrap().clone();
    let web = s("web");
    assert_eq!(web.status, Status::Routed);
    assert_eq!(web.route.as_ref().unwrap().path.as_deref(), Some("/web"));
    let web1 = web.instances.iter().find(|i| i.id == "web-1").unwrap();
    assert_eq!(web1.registrator.as_deref(), Some("http://localhost:9091/containers/c0ffee"));
    let web2 = web.instances.iter().find(|i| i.id == "web-2").unwrap();
    assert!(!web2.routed && web2.haproxy.is_none());
    assert_eq!(web2.reason.as_deref(), Some("its check service:web-2 is critical: answers 500"), "{web2:?}");
    assert_eq!(s("odd").status, Status::NotRouted);
    assert!(s("odd").reasons[0].contains("lb_balance \"fastest\""), "{:?}", s("odd"));
    assert_eq!(s("zz-twin").reasons, ["its path /web is taken by service \"web\""]);
    assert_eq!(s("plain").status, Status::NotTagged);
    assert_eq!(s("plain").reasons, ["it is not tagged \"rest\" (its tags: other)"]);
    assert_eq!(s("consul").status, Status::NotTagged, "Consul's own service is listed too");
    assert!(r.haproxy.error.is_none() && r.haproxy.live_error.is_none(), "{:?}", r.haproxy);
    assert!(r.haproxy.last_apply.is_some());

    // The page follows Consul: the sick instance passes, the odd setting is fixed.
    consul.client().update_ttl("service:web-2", "passing", "").await.unwrap();
    register(&consul, reg("odd-1", "odd", &["rest"], good, &[("lb_balance", "leastconn")])).await;
    eventually("the page follows", LIMIT, || async {
        let r = report(admin).await?;
        let web2 =
            r.services.iter().find(|s| s.name == "web").and_then(|s| s.instances.iter().find(|i| i.id == "web-2"));
        let odd = r.services.iter().find(|s| s.name == "odd").map(|s| s.status);
        match (web2.map(|i| i.routed), odd) {
            (Some(true), Some(Status::Routed)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // curl gets text; the explain command prints one service.
    let text = reqwest::get(format!("http://127.0.0.1:{admin}/routes")).await.unwrap().text().await.unwrap();
    assert!(text.contains("zz-twin: not routed\n  why: its path /web is taken by service \"web\"\n"), "{text}");
    let explain = |name: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_haproxy-sync"))
            .args(["explain", name, "--metrics-addr", &format!("0.0.0.0:{admin}")])
            .output()
            .unwrap()
    };
    let out = explain("plain");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(said, "plain: not tagged\n  why: it is not tagged \"rest\" (its tags: other)\n");
    let out = explain("nosuch");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        said.starts_with("Consul lists no service \"nosuch\"\nservices Consul lists: consul, odd, plain, web, zz-twin"),
        "{said}"
    );
    // Nothing listening: a clear error, not a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_haproxy-sync"))
        .args(["explain", "web", "--metrics-addr", &format!("127.0.0.1:{}", stable_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("haproxy-sync does not answer at"), "{out:?}");
    run.stop().await;
}
