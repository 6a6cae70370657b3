//! What the webhook and Pub/Sub destination tests share: telemetry as the topic log keeps it
//! (IoT Core's attributes, plus an internal `goog-` one that must not travel) and the metadata a
//! receiver should see for it.

#![allow(dead_code)]

use bytes::Bytes;
use ferrocore_core::topics::StoredMessage;
use ferrocore_model::Timestamp;
use ferrocore_sinks::destination::Source;
use std::collections::BTreeMap;

pub const SOURCE_NAME: &str = "projects/iot-project/topics/telemetry-events";

pub fn source() -> Source<'static> {
    Source { sink: "webhook-test", name: SOURCE_NAME, project: "iot-project", topic: "telemetry-events" }
}

/// 2023-11-14T22:13:20Z plus `offset` nanoseconds.
pub fn time_of(offset: u64) -> Timestamp {
    Timestamp(1_700_000_000_000_000_000 + offset as i64)
}

/// Binary on purpose: the destinations must carry bytes, not text.
pub fn payload(offset: u64) -> Vec<u8> {
    let mut p = format!("{{\"temperature\":{offset}}}").into_bytes();
    p.extend_from_slice(&[0x00, 0xff, (offset % 256) as u8]);
    p
}

pub fn telemetry(offset: u64) -> StoredMessage {
    StoredMessage {
        offset,
        time: time_of(offset),
        attributes: vec![
            ("deviceId".into(), format!("device-{}", offset % 5)),
            ("deviceNumId".into(), format!("{}", 2_800_000_000_000_000u64 + offset % 5)),
            ("deviceRegistryId".into(), "registry-1".into()),
            ("deviceRegistryLocation".into(), "europe-west1".into()),
            ("projectId".into(), "iot-project".into()),
            ("goog-internal".into(), "must not travel".into()),
            ("subFolder".into(), if offset.is_multiple_of(2) { "a/b".into() } else { String::new() }),
        ],
        data: Bytes::from(payload(offset)),
    }
}

pub fn batch(offsets: std::ops::Range<u64>) -> Vec<StoredMessage> {
    offsets.map(telemetry).collect()
}

/// The attributes a receiver must see for `telemetry(offset)`.
pub fn expected_attributes(offset: u64) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> =
        telemetry(offset).attributes.into_iter().filter(|(k, _)| !k.starts_with("goog-")).collect();
    a.insert("ferrocoreTopic".into(), SOURCE_NAME.into());
    a.insert("ferrocoreOffset".into(), offset.to_string());
    a
}

/// A JSON object of strings, as a map.
pub fn string_map(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("<not a string>").to_owned())).collect())
        .unwrap_or_default()
}
