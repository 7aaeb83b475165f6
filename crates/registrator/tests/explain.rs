//! "I started my container, why is it not routed?": the registrator binary
//! against the real engine and a real Consul agent, asked on its admin
//! address (`/containers.json`, `/containers/<key>`) and with `registrator
//! explain`, for a container it registered, one Consul refuses (script
//! checks are off on the agent), one that asks to be ignored, one without
//! `SERVICE_NAME`, and one stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use registrator::report::{ContainerReport, Report, Status};
use registrator::service::{CONTAINER_META, NO_SERVICE_NAME};
use testkit::{TestConsul, eventually, stable_port};

mod common;
use common::*;

/// `-ip`: a loopback address, so nothing leaves this machine.
const IP: &str = "127.0.0.2";

/// Runs `registrator explain <args>` (the built binary), without `METRICS_ADDR`
/// unless `env` sets it: exit code, stdout, stderr.
fn explain(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_registrator"))
        .arg("explain")
        .args(args)
        .env_remove("METRICS_ADDR")
        .envs(env.iter().copied())
        .output()
        .expect("the registrator binary");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

async fn report(admin: u16) -> Result<Report, String> {
    let resp = reqwest::get(format!("http://127.0.0.1:{admin}/containers.json")).await.map_err(|e| e.to_string())?;
    resp.json().await.map_err(|e| e.to_string())
}

fn named<'a>(report: &'a Report, name: &str) -> Result<&'a ContainerReport, String> {
    report.containers.iter().find(|c| c.name == name).ok_or_else(|| format!("no {name} in {report:?}"))
}

#[tokio::test]
async fn the_admin_address_and_explain_say_what_became_of_each_container() {
    let consul = TestConsul::start().await;
    let mut scene = Scene::new();
    let (good, bad) = (scene.service("good"), scene.service("bad"));
    let good_id = scene.run_on_bridge("good", &["-e", &format!("SERVICE_NAME={good}"), "-p", "80"]);
    let bad_name = format!("SERVICE_NAME={bad}");
    scene.run_on_bridge("bad", &["-e", &bad_name, "-e", "SERVICE_CHECK_SCRIPT=/bin/true", "-p", "80"]);
    scene.run_on_bridge("ignored", &["-e", "SERVICE_NAME=x", "-e", "SERVICE_IGNORE=true", "-p", "80"]);
    scene.run_on_bridge("unnamed", &["-p", "80"]);
    let reg =
        Process::launch(&format!("consul://{}", consul.http), &format!("{}-host", scene.tag), &["-ip", IP], None, &[]);
    let name = |n: &str| format!("{}-{n}", scene.tag);

    // /containers.json: each container, and what became of it.
    let r = eventually("the report shows the registration and the refusal", LIMIT, || async {
        let r = report(reg.admin).await?;
        let (g, b) = (named(&r, &name("good"))?, named(&r, &name("bad"))?);
        let ok = g.services.first().is_some_and(|s| s.status == Status::Registered)
            && b.services.first().is_some_and(|s| s.status == Status::Refused);
        if ok { Ok(r) } else { Err(format!("{g:?} {b:?}")) }
    })
    .await;
    let g = named(&r, &name("good")).unwrap();
    assert_eq!((g.id.as_str(), g.running, g.image.as_str()), (good_id.as_str(), true, IMAGE));
    let s = &g.services[0];
    let port = scene.host_port("good", "80/tcp");
    assert_eq!((s.name.as_str(), s.address.as_str(), s.port), (good.as_str(), IP, port));
    assert!(g.reasons.is_empty(), "{g:?}");
    let b = named(&r, &name("bad")).unwrap();
    let why = b.services[0].reason.as_deref().unwrap_or_default();
    assert!(why.contains("Consul refused it") && why.contains("Scripts are disabled"), "{why}");
    let i = named(&r, &name("ignored")).unwrap();
    assert!(i.services.is_empty());
    assert_eq!(i.reasons, ["SERVICE_IGNORE=\"true\": the container asks not to be registered"]);
    assert_eq!(named(&r, &name("unnamed")).unwrap().reasons, [NO_SERVICE_NAME]);

    // The value haproxy-sync links to, the registrator_container Meta, names the container.
    let held = services_named(&consul, &good).await;
    let meta = held[0].meta.get(CONTAINER_META).cloned().unwrap_or_default();
    assert_eq!(meta, good_id);
    let one = reqwest::get(format!("http://127.0.0.1:{}/containers/{meta}", reg.admin)).await.unwrap();
    assert_eq!(one.status(), 200);
    let text = one.text().await.unwrap();
    assert!(text.starts_with(&format!("{} (", name("good"))) && text.contains("registered in Consul"), "{text}");
    let page = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/containers", reg.admin))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.text().await.unwrap().contains(&name("ignored")));

    // registrator explain: the same, from the binary, by name, ID prefix or with METRICS_ADDR.
    let admin = format!("127.0.0.1:{}", reg.admin);
    let (code, out, err) = explain(&[&name("good"), "--metrics-addr", &admin], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("registered in Consul: service {good} at {IP}:{port}")), "{out}");
    let (code, out, _) = explain(&[&good_id[..12], &format!("-metrics-addr={admin}")], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("registered in Consul"), "{out}");
    let anywhere = format!("0.0.0.0:{}", reg.admin);
    let (code, out, _) = explain(&[&format!("/{}", name("bad"))], &[("METRICS_ADDR", anywhere.as_str())]);
    assert_eq!(code, 0);
    assert!(out.contains("refused by Consul") && out.contains("Scripts are disabled"), "{out}");
    let (code, out, _) = explain(&[&name("ignored"), "--metrics-addr", &admin], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing registered, because:\n  - SERVICE_IGNORE=\"true\""), "{out}");
    let (code, out, _) = explain(&[&name("unnamed"), "--metrics-addr", &admin], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(NO_SERVICE_NAME), "{out}");

    // Unknown, or nobody there: exit 1, saying so.
    let (code, out, err) = explain(&[&name("nope"), "--metrics-addr", &admin], &[]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("knows no container") && err.contains(&name("good")), "{err}");
    let nobody = format!("127.0.0.1:{}", stable_port());
    let (code, _, err) = explain(&[&name("good"), "--metrics-addr", &nobody], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("does not answer"), "{err}");

    // Stopped: deregistered, and said so.
    docker(&["stop", "-t", "1", &name("good")]);
    wait_count(&consul, &good, 0).await;
    let out = eventually("explain says it was stopped", LIMIT, || async {
        let (code, out, err) = explain(&[&name("good"), "--metrics-addr", &admin], &[]);
        if code == 0 && out.contains("the container was stopped (signal") {
            Ok(out)
        } else {
            Err(format!("{out}{err}"))
        }
    })
    .await;
    assert!(out.contains("not running") && out.contains("any services it had left Consul"), "{out}");
    reg.stop();
}
