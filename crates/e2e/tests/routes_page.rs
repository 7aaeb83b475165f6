//! "Why is my service not routed?", asked as a user would: the compose
//! stack, a container whose Meta value is refused, one without the `rest`
//! tag and one registrator is told to ignore, all started with `docker run`
//! beside it; then haproxy-sync's routes page opened in a real browser
//! (headless Chromium, from Debian's packages), registrator's containers
//! page, their JSON, and both explain commands.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::{Seed, Stack};
use serde_json::Value;
use testkit::eventually;

const LIMIT: Duration = Duration::from_secs(60);

/// The stack with the three containers beside it, once haproxy-sync's
/// report shows each of them.
struct Scene {
    stack: Stack,
    _seeds: Vec<Seed>,
    refused: String,
    untagged: String,
    ignored: String,
}

impl Scene {
    async fn start(name: &str) -> Scene {
        let stack = Stack::new(name);
        stack.up(1);
        eventually("/hello answers", LIMIT, || async { stack.hostnames(2).await.map(drop) }).await;
        let seeds = vec![
            stack.run_beside("refused", &["SERVICE_NAME=refused", "SERVICE_TAGS=rest", "SERVICE_LB_BALANCE=fastest"]),
            stack.run_beside("untagged", &["SERVICE_NAME=untagged"]),
            stack.run_beside("ignored", &["SERVICE_NAME=ignored", "SERVICE_TAGS=rest", "SERVICE_IGNORE=true"]),
        ];
        let scene = Scene {
            refused: seeds[0].0.clone(),
            untagged: seeds[1].0.clone(),
            ignored: seeds[2].0.clone(),
            _seeds: seeds,
            stack,
        };
        eventually("the routes report shows hello UP, refused and untagged", LIMIT, || async {
            let r = scene.routes().await?;
            let status = |name: &str| service(&r, name).map(|s| s["status"].as_str().unwrap_or_default().to_owned());
            let hello_up = service(&r, "hello")
                .is_some_and(|s| s["instances"].as_array().into_iter().flatten().any(|i| i["haproxy"] == "UP"));
            match (hello_up, status("refused").as_deref(), status("untagged").as_deref()) {
                (true, Some("not_routed"), Some("not_tagged")) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        // registrator has looked at the ignored container (it started last).
        eventually("registrator lists the ignored container", LIMIT, || async {
            let resp = reqwest::get(scene.registrator("/containers.json")).await.map_err(|e| e.to_string())?;
            let all: Value = resp.json().await.map_err(|e| e.to_string())?;
            let named = |c: &&Value| c["name"].as_str().is_some_and(|n| n.trim_start_matches('/') == scene.ignored);
            let seen = all["containers"].as_array().into_iter().flatten().find(named);
            match seen {
                Some(c) if c["reasons"].to_string().contains("SERVICE_IGNORE") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        scene
    }

    fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.stack.admin_port)
    }

    fn registrator(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.stack.registrator_admin_port)
    }

    async fn routes(&self) -> Result<Value, String> {
        let resp = reqwest::get(self.admin("/routes.json")).await.map_err(|e| e.to_string())?;
        resp.json().await.map_err(|e| e.to_string())
    }

    async fn containers(&self) -> Value {
        reqwest::get(self.registrator("/containers.json")).await.unwrap().json().await.unwrap()
    }
}

fn service<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["services"].as_array()?.iter().find(|s| s["name"] == name)
}

fn container<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["containers"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"].as_str().is_some_and(|n| n.trim_start_matches('/') == name)))
        .unwrap_or_else(|| panic!("registrator does not list {name}: {report}"))
}

/// Debian's headless Chromium.
fn chromium() -> Command {
    let bin = ["chromium-headless-shell", "chromium"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("chromium-headless-shell (scripts/install-deps installs it)");
    let mut cmd = Command::new(bin);
    // As root in a container or CI, Chromium's sandbox cannot start.
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1500"]);
    cmd
}

/// The page at `url` as the browser left it after `ms` of virtual time
/// (its script included), and a screenshot of it at `png`.
fn browse(url: &str, png: &Path, ms: u32) -> String {
    let budget = format!("--virtual-time-budget={ms}");
    let out = chromium().args([&budget, "--dump-dom", url]).output().unwrap();
    assert!(out.status.success(), "chromium --dump-dom: {}", String::from_utf8_lossy(&out.stderr));
    let shot = chromium().args([&budget, &format!("--screenshot={}", png.display()), url]).output().unwrap();
    assert!(shot.status.success(), "chromium --screenshot: {}", String::from_utf8_lossy(&shot.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where a screenshot goes: `ROUTES_SCREENSHOT_DIR` (to keep it), else a temporary file.
fn screenshot(name: &str) -> PathBuf {
    let dir = std::env::var_os("ROUTES_SCREENSHOT_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    dir.join(format!("{name}-{}.png", std::process::id()))
}

fn is_png_of_some_size(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", path.display());
    bytes.len()
}

#[tokio::test]
async fn the_routes_page_shows_every_service_and_every_reason_in_a_browser() {
    let scene = Scene::start("routes-page").await;
    let png = screenshot("routes");
    let dom = browse(&scene.admin("/routes"), &png, 3000);
    for needle in [
        "<h1>Routes</h1>",
        // The route the demo got, its instance live in HAProxy.
        "id=\"service-hello\"",
        "/hello, prefix stripped, roundrobin",
        "<span class=\"state UP\">UP</span>",
        // The refused Meta value, named.
        "id=\"service-refused\"",
        "Why: lb_balance \"fastest\" is not one of",
        // The service without the tag.
        "id=\"service-untagged\"",
        "Why: it is not tagged \"rest\"",
        // The load balancer itself, registered as rest.
        "id=\"service-rest\"",
    ] {
        assert!(dom.contains(needle), "{needle:?} not on the page the browser shows:\n{dom}");
    }
    // Its script fetched the page's content again and swapped it in, whole.
    assert!(dom.contains("<body data-fetched=\""), "the page did not update itself:\n{dom}");
    assert_eq!(dom.matches("<h1>Routes</h1>").count(), 1, "{dom}");
    let size = is_png_of_some_size(&png);
    assert!(size > 20_000, "a screenshot of a page with content, not a blank one ({size} bytes)");
    eprintln!("routes page screenshot: {} ({size} bytes)", png.display());

    // Each instance links to what registrator says of its container; that page opens too.
    let hello = service(&scene.routes().await.unwrap(), "hello").unwrap().clone();
    let link = hello["instances"][0]["registrator"].as_str().expect("a link to registrator").to_owned();
    let local = link.replace("localhost", "127.0.0.1");
    let png = screenshot("containers");
    let dom = browse(&local, &png, 1500);
    let hello_container = hello["instances"][0]["container"].as_str().unwrap().to_owned();
    assert!(dom.contains("hello"), "registrator's page of {hello_container}:\n{dom}");
    is_png_of_some_size(&png);
    // Registrator's page of every container names the ignored one, and why.
    let dom = browse(&scene.registrator("/containers"), &png, 1500);
    assert!(dom.contains(&scene.ignored) && dom.contains("SERVICE_IGNORE"), "{dom}");
}

#[tokio::test]
async fn the_routes_and_containers_json_and_the_explain_commands_give_every_reason() {
    let scene = Scene::start("routes-json").await;
    let r = scene.routes().await.unwrap();
    let refused = service(&r, "refused").unwrap();
    assert_eq!(refused["status"], "not_routed");
    let why = refused["reasons"][0].as_str().unwrap();
    assert!(why.starts_with("lb_balance \"fastest\" is not one of"), "{why}");
    assert_eq!(refused["instances"][0]["reason"], "its service is not routed");
    let untagged = service(&r, "untagged").unwrap();
    assert_eq!(untagged["status"], "not_tagged");
    assert!(untagged["reasons"][0].as_str().unwrap().starts_with("it is not tagged \"rest\""), "{untagged}");
    assert!(service(&r, "ignored").is_none(), "an ignored container is not in Consul: {r}");
    let hello = service(&r, "hello").unwrap();
    assert_eq!(hello["status"], "routed");
    assert_eq!(hello["route"]["path"], "/hello");
    assert_eq!(hello["instances"][0]["routed"], true);
    assert!(r["haproxy"]["error"].is_null() && r["haproxy"]["live_error"].is_null(), "{}", r["haproxy"]);

    // registrator: what it registered for each container, or why nothing.
    let c = scene.containers().await;
    let refused_c = container(&c, &scene.refused);
    assert_eq!(refused_c["services"][0]["name"], "refused", "{refused_c}");
    assert_eq!(refused_c["services"][0]["status"], "registered", "{refused_c}");
    let ignored_c = container(&c, &scene.ignored);
    assert!(ignored_c["services"].as_array().is_none_or(Vec::is_empty), "{ignored_c}");
    let reasons = ignored_c["reasons"].to_string();
    assert!(reasons.contains("SERVICE_IGNORE"), "{ignored_c}");
    let untagged_c = container(&c, &scene.untagged);
    assert_eq!(untagged_c["services"][0]["status"], "registered", "{untagged_c}");

    // The explain commands, run where the services run.
    let exec = |service: &str, args: &[&str]| {
        let mut all = vec!["exec", "-T", service];
        all.extend_from_slice(args);
        let out = scene.stack.compose_command(&all).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, said) = exec("haproxy", &["haproxy-sync", "explain", "refused"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.starts_with("refused: not routed\n  why: lb_balance \"fastest\" is not one of"), "{said}");
    let (code, said) = exec("haproxy", &["haproxy-sync", "explain", "nosuch"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("Consul lists no service \"nosuch\"") && said.contains("hello"), "{said}");
    let (code, said) = exec("registrator", &["registrator", "explain", &scene.ignored]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(&scene.ignored) && said.contains("SERVICE_IGNORE"), "{said}");
}
