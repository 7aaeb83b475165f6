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
