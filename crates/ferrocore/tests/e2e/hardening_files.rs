//! Issue 10, finding 12: the data directory and everything the server writes in it are the server
//! user's alone, an open data directory is closed at start, and the generated CA's key is gone
//! once the server certificate exists.

use crate::device::*;
use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Every path under `dir` (itself included) with the permission bits group or others have.
fn open_to_others(dir: &Path) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(p) = pending.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push((p.display().to_string(), mode));
        }
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    found
}

#[tokio::test]
async fn what_the_server_writes_is_private_and_an_open_data_dir_is_closed() {
    let s = TestServer::start_configured(
        |dir| {
            // A data directory made by hand, open to all.
            let data = dir.join("data");
            std::fs::create_dir(&data).unwrap();
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
            None
        },
        |c| c.admin_token = None,
    )
    .await;
    let data = s.data_dir();
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_owned();
    let auth = format!("Bearer {token}");
    // Something in every store: a registry and device (database), telemetry (topic log).
    let reg = "projects/files/locations/us-central1/registries/reg";
    let (st, body) = s
        .call_as(
            Some(&auth),
            reqwest::Method::POST,
            "projects/files/locations/us-central1/registries",
            Some(json!({"id": "reg", "eventNotificationConfigs": [{"pubsubTopicName": "projects/files/topics/telemetry"}]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let device = json!({"id": "dev-1", "credentials": [{"publicKey": {"format": "ES256_PEM", "key": fixture("ec_public.pem")}}]});
    let (st, body) = s.call_as(Some(&auth), reqwest::Method::POST, &format!("{reg}/devices"), Some(device)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(
        c.connect(&format!("{reg}/devices/dev-1"), Some(&es256_token("files")), 60).await,
        ferrocore_mqtt_codec::ConnectReturnCode::Accepted
    );
    c.publish_acked("/devices/dev-1/events", b"hello").await;

    for file in ["ferrocore.db", "ferrocore.db-wal", "ferrocore.db-shm", "admin-token", "tls/ca.pem", "tls/server.pem"]
    {
        assert!(data.join(file).exists(), "{file}");
    }
    assert!(!data.join("tls/ca-key.pem").exists(), "the CA's key is not kept");
    let open = open_to_others(&data);
    assert!(open.is_empty(), "open to group or others: {open:?}");
    s.stop().await;
}
