//! Property test over the name normaliser and the tag splitter: whatever a
//! container asks for, the result is a name Consul and DNS accept (or a
//! clear refusal) and tags with no control characters, within their caps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use registrator::service::{normalize_name, split_tags};

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn names_are_dns_labels_or_refused_with_a_reason(raw in prop_oneof!["\\PC{0,80}", any::<String>(), "[ -~]{0,20000}"]) {
        match normalize_name(&raw) {
            Ok(name) => {
                prop_assert!(!name.is_empty() && name.len() <= 63, "{name:?}");
                prop_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{name:?}");
                prop_assert!(!name.starts_with('-') && !name.ends_with('-') && !name.contains("--"), "{name:?}");
                // What it keeps is the letters and digits asked for, in order.
                let asked: String = raw.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
                prop_assert!(asked.starts_with(&name.replace('-', "")), "{raw:?} → {name:?}");
            }
            Err(why) => {
                prop_assert!(!raw.chars().any(|c| c.is_ascii_alphanumeric()), "{raw:?} refused: {why}");
                prop_assert!(why.contains("no letters or digits"), "{why}");
            }
        }
    }

    #[test]
    fn tags_carry_no_control_characters_and_stay_capped(raw in prop_oneof!["\\PC{0,80}", any::<String>(), "[ -~,\\\\]{0,3000}"]) {
        for tag in split_tags(&raw) {
            prop_assert!(!tag.is_empty() && tag.chars().count() <= 256, "{tag:?}");
            prop_assert!(!tag.chars().any(char::is_control), "{tag:?}");
            prop_assert_eq!(tag.trim(), tag.as_str());
        }
    }
}

/// Strings that try hard to break out of where they are written.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a\n    bind :1".to_owned()),
        Just("x/y z#\"'`$(id)".to_owned()),
        Just("a".repeat(10_000)),
        Just("ünïcødé/東京".to_owned()),
        Just("-1".to_owned()),
        Just("99999".to_owned()),
        Just("true".to_owned()),
        "\\PC{0,40}",
        any::<String>(),
    ]
}

fn setting_key() -> impl Strategy<Value = String> {
    const KEYS: [&str; 15] = [
        "NAME",
        "TAGS",
        "ID",
        "IGNORE",
        "NETWORK",
        "CHECK_HTTP",
        "CHECK_TCP",
        "CHECK_CMD",
        "CHECK_TTL",
        "CHECK_INTERVAL",
        "CHECK_TIMEOUT",
        "CHECK_SCRIPT",
        "VERSION",
        "lb_path",
        "lb_weight",
    ];
    (prop::sample::select(&KEYS[..]), prop_oneof![Just(""), Just("80_"), Just("8080_"), Just("x_"), Just("70000_")])
        .prop_map(|(key, port)| format!("SERVICE_{port}{key}"))
}

fn container() -> impl Strategy<Value = registrator::container::Container> {
    use registrator::container::{Container, NetworkAddress, Port};
    let env = prop::collection::btree_map(setting_key(), hostile(), 0..8);
    (env, any::<bool>()).prop_map(|(mut env, named)| {
        if named {
            env.entry("SERVICE_NAME".into()).or_insert_with(|| "hello".into());
        }
        Container {
            id: "c0ffee".into(),
            name: "proj-hello-1".into(),
            running: true,
            env,
            ports: vec![Port { number: 80, udp: false }, Port { number: 8080, udp: false }],
            networks: [(
                "proj_default".to_owned(),
                NetworkAddress { ipv4: "172.20.0.5".parse().ok(), ipv6: None, gateway: None },
            )]
            .into(),
            ..Container::default()
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever a container's settings, what it asks for is registered in a
    /// form Consul accepts, or refused with a reason; nothing is dropped silently.
    #[test]
    fn hostile_settings_register_valid_services_or_say_why(c in container()) {
        let rules = registrator::Rules {
            owner: "dockerhost".into(),
            own_networks: vec!["proj_default".into()],
            ..registrator::Rules::default()
        };
        let d = registrator::service::desired(&c, &rules);
        for s in &d.services {
            prop_assert!(normalize_name(&s.name).as_deref() == Ok(s.name.as_str()), "{s:?}");
            prop_assert!(!s.id.is_empty() && s.id.chars().count() <= 512 && !s.id.chars().any(char::is_control), "{s:?}");
            prop_assert!(s.port == 80 || s.port == 8080, "{s:?}");
            for tag in &s.tags {
                prop_assert!(!tag.is_empty() && tag.chars().count() <= 256 && !tag.chars().any(char::is_control), "{s:?}");
            }
            for (k, v) in &s.meta {
                let key_ok = !k.is_empty() && k.len() <= 128
                    && k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
                prop_assert!(key_ok, "meta key {k:?}");
                prop_assert!(v.chars().count() <= 512, "meta {k:?} is {} characters", v.chars().count());
            }
        }
        // Asked for by name, but registered on neither port: a reason is given
        // (or the container asked to be ignored).
        // (An empty SERVICE_NAME is not asking, as in Registrator.)
        let asked = c.env.get("SERVICE_NAME").is_some_and(|n| !n.is_empty());
        let ignored = c.env.iter().any(|(k, _)| k.ends_with("IGNORE"));
        if asked && d.services.len() < 2 && !ignored {
            prop_assert!(!d.problems.is_empty(), "{:?} → {:?}", c.env, d);
        }
    }
}
