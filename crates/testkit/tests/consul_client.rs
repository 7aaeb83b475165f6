//! The shared Consul client against a real agent, over its less common
//! transports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use consul::{ConsulArgs, Registration};
use testkit::{TestConsul, stable_port, unique_name};

#[tokio::test]
async fn consul_unix_addresses_reach_the_agent_through_its_socket() {
    let socket = std::env::temp_dir().join(format!("{}.sock", unique_name("consul-")));
    let hcl = format!("addresses {{ http = \"127.0.0.1 unix://{}\" }}", socket.display());
    let consul = TestConsul::start_with(&["-hcl", &hcl]).await;

    let args = ConsulArgs {
        consul: format!("consul-unix://{}", socket.display()),
        token: None,
        token_file: None,
        ca_cert: None,
        client_cert: None,
        client_key: None,
    };
    let client = consul::Client::new(&args.settings().unwrap()).unwrap();
    let reg = Registration { id: "via-unix".into(), name: "unixy".into(), port: 80, ..Registration::default() };
    client.register(&reg).await.unwrap();
    // Seen over TCP too: it is the same agent.
    let services = consul.client().agent_services().await.unwrap();
    assert_eq!(services["via-unix"].service, "unixy");
    drop(consul);
    let _ = std::fs::remove_file(socket);
}

/// Makes a CA, a server certificate and a client certificate with `consul tls`, in `dir`.
fn certificates(dir: &std::path::Path) {
    for args in [&["ca", "create"][..], &["cert", "create", "-server"], &["cert", "create", "-client"]] {
        let out = std::process::Command::new("consul").arg("tls").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "consul tls {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test]
async fn consul_tls_addresses_verify_the_agent_and_present_a_client_certificate() {
    let dir = std::env::temp_dir().join(unique_name("consul-tls-"));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let file = |name: &str| dir.join(name).display().to_string();
    // The agent must be told its port: one below the ephemeral range.
    let https = stable_port();
    // The agent asks every HTTPS client for a certificate its CA signed.
    let hcl = format!(
        r#"ports {{ https = {https} }} verify_incoming = true ca_file = "{}" cert_file = "{}" key_file = "{}""#,
        file("consul-agent-ca.pem"),
        file("dc1-server-consul-0.pem"),
        file("dc1-server-consul-0-key.pem"),
    );
    let consul = TestConsul::start_with(&["-hcl", &hcl]).await;
    let args = |ca: Option<&str>, cert: Option<(&str, &str)>| ConsulArgs {
        consul: format!("consul-tls://127.0.0.1:{https}"),
        token: None,
        token_file: None,
        ca_cert: ca.map(file),
        client_cert: cert.map(|c| file(c.0)),
        client_key: cert.map(|c| file(c.1)),
    };

    let client = consul::Client::new(
        &args(Some("consul-agent-ca.pem"), Some(("dc1-client-consul-0.pem", "dc1-client-consul-0-key.pem")))
            .settings()
            .unwrap(),
    )
    .unwrap();
    let reg = Registration { id: "via-tls".into(), name: "secure".into(), port: 443, ..Registration::default() };
    client.register(&reg).await.unwrap();
    assert_eq!(consul.client().agent_services().await.unwrap()["via-tls"].service, "secure");

    // No client certificate: the agent refuses the handshake.
    let anonymous = consul::Client::new(&args(Some("consul-agent-ca.pem"), None).settings().unwrap()).unwrap();
    let err = anonymous.agent_services().await.unwrap_err();
    assert!(matches!(err, consul::Error::Transport { .. }), "{err:?}");
    // Without the CA, the agent's certificate is not trusted.
    let trusting = consul::Client::new(
        &args(None, Some(("dc1-client-consul-0.pem", "dc1-client-consul-0-key.pem"))).settings().unwrap(),
    )
    .unwrap();
    let err = trusting.agent_services().await.unwrap_err();
    assert!(matches!(err, consul::Error::Transport { .. }), "{err:?}");
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
    // A missing certificate file is named in the error.
    let missing = ConsulArgs { ca_cert: Some(dir.join("nope.pem").display().to_string()), ..args(None, None) };
    let err = consul::Client::new(&missing.settings().unwrap()).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    drop(consul);
    let _ = std::fs::remove_dir_all(dir);
}
