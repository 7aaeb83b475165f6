//! The stack's production profile, as the README runs it: `scripts/acl up`
//! (Consul's ACLs on, default deny, bootstrapped by the script, a token per
//! program handed over as a compose secret). Consul refuses what comes
//! without a token, each program's token what its policy does not grant,
//! and the stack routes and scales as without ACLs; a second `scripts/acl
//! up` keeps the same bootstrap and tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::Stack;
use testkit::eventually;

const LIMIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A directory removed however the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `scripts/acl ARGS` for `stack`, with the images as built.
fn acl(stack: &Stack, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo().join("scripts/acl"))
        .args(args)
        .envs(stack.env())
        .env("PORTOLAN_NO_BUILD", "1")
        .output()
        .expect("bash scripts/acl");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "scripts/acl {args:?}: {}\n{said}", out.status);
    said
}

fn token(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.token"))).unwrap().trim().to_owned()
}

#[tokio::test]
async fn the_acl_profile_refuses_what_has_no_token_and_routes() {
    let secrets = TempDir(std::env::temp_dir().join(format!("portolan-acl-secrets-{}", std::process::id())));
    let stack = Stack::new("acl")
        .with_override(repo().join("compose/acl.yml"))
        .with_env("ACL_SECRETS_DIR", &secrets.0.display().to_string());
    let said = acl(&stack, &["up", "--scale", "hello=2"]);
    assert!(said.contains("ACLs bootstrapped"), "{said}");
    let management = token(&secrets.0, "management");
    assert_eq!(management.len(), 36, "a UUID");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secrets.0).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the secrets directory is the owner's alone");

    let consul = format!("http://127.0.0.1:{}", stack.consul_port);
    let http = reqwest::Client::new();
    let ask = |method: &str, path: &str, token: Option<&str>, body: Option<&str>| {
        let mut req = http.request(method.parse().unwrap(), format!("{consul}{path}"));
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(b) = body {
            req = req.body(b.to_owned());
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let evil = r#"{"Name": "hello", "Tags": ["rest"], "Address": "127.0.0.1", "Port": 1}"#;
    // Without a token: refused to register, to list tokens, to write KV; the catalog shows nothing.
    assert_eq!(ask("PUT", "/v1/agent/service/register", None, Some(evil)).await, 403);
    assert_eq!(ask("GET", "/v1/acl/tokens", None, None).await, 403);
    assert_eq!(ask("PUT", "/v1/kv/portolan/owned", None, Some("x")).await, 403);
    let listed = http.get(format!("{consul}/v1/catalog/services")).send().await.unwrap().text().await.unwrap();
    assert!(!listed.contains("hello"), "an anonymous request sees the services: {listed}");
    // Each program's token: only what its policy grants.
    let (registrator, haproxy_sync) = (token(&secrets.0, "registrator"), token(&secrets.0, "haproxy-sync"));
    assert_eq!(ask("PUT", "/v1/agent/service/register", Some(&haproxy_sync), Some(evil)).await, 403);
    assert_eq!(ask("GET", "/v1/acl/tokens", Some(&registrator), None).await, 403);
    assert_eq!(ask("PUT", "/v1/kv/portolan/owned", Some(&registrator), Some("x")).await, 403);
    assert_eq!(ask("GET", "/v1/health/service/hello", Some(&haproxy_sync), None).await, 200);
    assert_eq!(ask("GET", "/v1/acl/tokens", Some(&management), None).await, 200);

    // The stack routes, to both instances.
    let want = stack.hello_hostnames();
    assert_eq!(want.len(), 2);
    eventually("/hello answered by both instances", LIMIT, || async {
        let seen = stack.hostnames(12).await?;
        if seen == want { Ok(()) } else { Err(format!("{seen:?}, want {want:?}")) }
    })
    .await;

    // Again, as after a reboot: the same bootstrap and tokens, still routing.
    let said = acl(&stack, &["up"]);
    assert!(!said.contains("bootstrapped") && !said.contains("made"), "{said}");
    assert_eq!(token(&secrets.0, "management"), management);
    assert_eq!(token(&secrets.0, "registrator"), registrator);
    eventually("/hello still answered", LIMIT, || async { stack.hostnames(4).await.map(drop) }).await;
}
