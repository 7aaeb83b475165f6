//! Fixtures the unit tests share.

use crate::container::{Container, NetworkAddress, Port};

/// The network registrator and the fixtures' containers share.
pub const NET: &str = "proj_default";

/// A running container `id` asking for service `name` on port 80, on [`NET`].
pub fn container(id: &str, name: &str) -> Container {
    Container {
        id: id.into(),
        name: id.into(),
        image: "hello".into(),
        running: true,
        env: [("SERVICE_NAME".to_owned(), name.to_owned())].into(),
        ports: vec![Port { number: 80, udp: false }],
        networks: [(
            NET.to_owned(),
            NetworkAddress { ipv4: Some("172.20.0.5".parse().unwrap()), ipv6: None, gateway: None },
        )]
        .into(),
        ..Container::default()
    }
}
