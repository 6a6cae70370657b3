//! The documented limits of Cloud IoT Core and the checks that enforce them.

use crate::ids::printable;
use crate::{EventNotificationConfig, Invalid};
use std::collections::BTreeMap;

pub const MAX_DEVICE_CREDENTIALS: usize = 3;
pub const MAX_REGISTRY_CREDENTIALS: usize = 10;
pub const MAX_EVENT_NOTIFICATION_CONFIGS: usize = 10;
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
pub const MAX_STATE_BYTES: usize = 64 * 1024;
pub const MAX_TELEMETRY_BYTES: usize = 256 * 1024;
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
pub const MAX_SUBFOLDER_BYTES: usize = 256;
pub const MAX_METADATA_PAIRS: usize = 500;
/// Metadata keys must be *less than* this many bytes (the reference: "less than 128 bytes").
pub const MAX_METADATA_KEY_BYTES: usize = 128;
pub const MAX_METADATA_VALUE_BYTES: usize = 32 * 1024;
pub const MAX_METADATA_TOTAL_BYTES: usize = 256 * 1024;
/// Config versions and states kept per device.
pub const HISTORY_KEPT: usize = 10;
pub const MAX_PAGE_SIZE: u32 = 500;
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Devices one `deviceIds` / `deviceNumIds` filter may name.
pub const MAX_LIST_FILTER_IDS: usize = 10_000;

/// Metadata: at most 500 pairs; keys `[a-zA-Z][a-zA-Z0-9-_.+~%]*` of less than 128 bytes; values of at
/// most 32 KiB; everything together under 256 KiB.
pub fn check_metadata(field: &str, metadata: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(Invalid::new(
            field,
            format!("A device may have at most {MAX_METADATA_PAIRS} metadata pairs; {} were given.", metadata.len()),
        ));
    }
    let mut total = 0usize;
    for (k, v) in metadata {
        let mut chars = k.chars();
        let key_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || "-_.+~%".contains(c));
        if !key_ok || k.len() >= MAX_METADATA_KEY_BYTES {
            return Err(Invalid::new(
                field,
                format!(
                    "Invalid metadata key '{}': keys must match [a-zA-Z][a-zA-Z0-9-_.+~%]* and be less than {MAX_METADATA_KEY_BYTES} bytes.",
                    printable(k)
                ),
            ));
        }
        if v.len() > MAX_METADATA_VALUE_BYTES {
            return Err(Invalid::new(
                field,
                format!("The metadata value for key '{}' exceeds {MAX_METADATA_VALUE_BYTES} bytes.", printable(k)),
            ));
        }
        total += k.len() + v.len();
    }
    if total >= MAX_METADATA_TOTAL_BYTES {
        return Err(Invalid::new(
            field,
            format!("The metadata keys and values together must be smaller than {MAX_METADATA_TOTAL_BYTES} bytes."),
        ));
    }
    Ok(())
}

/// `projects/{project}/topics/{topic}` with Pub/Sub's topic grammar: the one
/// [`TopicName`](crate::pubsub::TopicName) defines, so that a registry cannot name a topic that
/// the topic log or the Pub/Sub API would refuse.
pub fn check_topic_name(field: &str, name: &str) -> Result<(), Invalid> {
    crate::pubsub::TopicName::parse(field, name).map(|_| ())
}

/// A telemetry or command subfolder: at most 256 bytes, without MQTT wildcards or NUL.
pub fn check_subfolder(field: &str, s: &str) -> Result<(), Invalid> {
    if s.len() > MAX_SUBFOLDER_BYTES {
        return Err(Invalid::new(field, format!("The subfolder must be at most {MAX_SUBFOLDER_BYTES} bytes.")));
    }
    if s.contains(['+', '#', '\0']) {
        return Err(Invalid::new(field, "The subfolder must not contain '+', '#' or NUL characters."));
    }
    Ok(())
}

pub fn check_event_notification_configs(field: &str, configs: &[EventNotificationConfig]) -> Result<(), Invalid> {
    if configs.len() > MAX_EVENT_NOTIFICATION_CONFIGS {
        return Err(Invalid::new(
            field,
            format!("A registry may have at most {MAX_EVENT_NOTIFICATION_CONFIGS} event notification configs."),
        ));
    }
    for (i, c) in configs.iter().enumerate() {
        check_topic_name(&format!("{field}[{i}].pubsub_topic_name"), &c.pubsub_topic_name)?;
        check_subfolder(&format!("{field}[{i}].subfolder_matches"), &c.subfolder_matches)?;
        if c.subfolder_matches.starts_with('/') {
            return Err(Invalid::new(
                format!("{field}[{i}].subfolder_matches"),
                "The subfolder must not start with '/'.",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_limits() {
        let mut m = BTreeMap::new();
        m.insert("k".into(), "v".into());
        assert!(check_metadata("metadata", &m).is_ok());
        m.insert("1bad".into(), "v".into());
        assert!(check_metadata("metadata", &m).is_err());
        let mut m = BTreeMap::new();
        m.insert("big".into(), "x".repeat(MAX_METADATA_VALUE_BYTES + 1));
        assert!(check_metadata("metadata", &m).is_err());
        let m: BTreeMap<_, _> = (0..501).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_metadata("metadata", &m).is_err());
        let m: BTreeMap<_, _> = (0..9).map(|i| (format!("k{i}"), "x".repeat(30 * 1024))).collect();
        assert!(check_metadata("metadata", &m).is_err());
    }

    /// The reference: keys "less than 128 bytes".
    #[test]
    fn metadata_keys_are_less_than_128_bytes() {
        let key = |n: usize| BTreeMap::from([(format!("k{}", "x".repeat(n - 1)), String::new())]);
        assert!(check_metadata("metadata", &key(127)).is_ok());
        let err = check_metadata("metadata", &key(128)).unwrap_err();
        assert!(err.message.contains("less than 128 bytes"), "{}", err.message);
    }

    #[test]
    fn topic_names() {
        assert!(check_topic_name("t", "projects/p/topics/telemetry").is_ok());
        let longest = format!("projects/p/topics/a{}bc", "~+%".repeat(84));
        assert!(check_topic_name("t", &longest).is_ok(), "255 characters, any of them '~+%'");
        for bad in [
            "topics/t",
            "projects/p/topics/",
            "projects/p/topics/ab",
            "projects/p/topics/goog-x",
            "projects/p/topics/t/x",
            "projects/p q/topics/abc",
            &format!("projects/p/topics/a{}", "b".repeat(255)),
            &format!("projects/{}/topics/abc", "p".repeat(256)),
        ] {
            let err = check_topic_name("config.topic", bad).expect_err(bad);
            assert_eq!(err.field, "config.topic", "{bad}");
            assert!(err.message.starts_with("Invalid topic name '"), "{bad}: {}", err.message);
        }
    }
}
