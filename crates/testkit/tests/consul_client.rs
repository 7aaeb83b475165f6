//! The shared Consul client against a real agent, over its less common
//! transports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use consul::{ConsulArgs, Registration};
use testkit::{TestConsul, free_port};

#[tokio::test]
async fn consul_unix_addresses_reach_the_agent_through_its_socket() {
    let socket = std::env::temp_dir().join(format!("consul-{}.sock", free_port()));
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
