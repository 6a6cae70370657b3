//! Registries over REST: create, get, list with pages, patch by mask, delete.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn registry_lifecycle() {
    let s = TestServer::start().await;
    let parent = "projects/acme.com:fleet/locations/europe-west1";
    let (st, r) = s
        .post(
            &format!("{parent}/registries"),
            json!({
                "id": "home-sensors",
                "eventNotificationConfigs": [
                    {"subfolderMatches": "alerts", "pubsubTopicName": "projects/acme/topics/alerts"},
                    {"pubsubTopicName": "projects/acme/topics/telemetry"}
                ],
                "state_notification_config": {"pubsub_topic_name": "projects/acme/topics/state"},
                "httpConfig": {"httpEnabledState": "HTTP_DISABLED"},
                "logLevel": "INFO"
            }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["name"], format!("{parent}/registries/home-sensors"));
    assert_eq!(r["eventNotificationConfigs"][0]["subfolderMatches"], "alerts");
    assert_eq!(r["stateNotificationConfig"]["pubsubTopicName"], "projects/acme/topics/state");
    assert_eq!(r["mqttConfig"]["mqttEnabledState"], "MQTT_ENABLED", "unspecified means enabled");
    assert_eq!(r["httpConfig"]["httpEnabledState"], "HTTP_DISABLED");
    assert_eq!(r["logLevel"], "INFO");

    let name = format!("{parent}/registries/home-sensors");
    let (st, got) = s.get(&name).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got, r, "get returns what create returned");

    let (st, body) = s.post(&format!("{parent}/registries"), json!({"id": "home-sensors"})).await;
    let msg = expect_error(st, &body, 409, "ALREADY_EXISTS");
    assert!(msg.contains("resource=home-sensors"), "{msg}");

    // Patch only what the mask names; sub-field paths and camelCase are accepted.
    let (st, p) = s
        .patch(
            &format!("{name}?updateMask=mqttConfig.mqttEnabledState,log_level"),
            json!({"mqttConfig": {"mqttEnabledState": 2}, "logLevel": "DEBUG", "httpConfig": {"httpEnabledState": "HTTP_ENABLED"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["mqttConfig"]["mqttEnabledState"], "MQTT_DISABLED");
    assert_eq!(p["logLevel"], "DEBUG");
    assert_eq!(p["httpConfig"]["httpEnabledState"], "HTTP_DISABLED", "fields outside the mask are kept");
    let (st, p) = s
        .patch(&format!("{name}?updateMask=event_notification_configs"), json!({"eventNotificationConfigs": []}))
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert!(p.get("eventNotificationConfigs").is_none(), "{p}");
    assert_eq!(s.get(&name).await.1, p, "patch is persisted");

    let (st, body) = s.patch(&name, json!({"logLevel": "DEBUG"})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.patch(&format!("{name}?updateMask=id"), json!({"id": "other"})).await;
    let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert!(msg.contains("may only contain"), "{msg}");

    // A registry holding devices is kept.
    s.device(&name, "dev-1", json!({})).await;
    let (st, body) = s.delete(&name).await;
    expect_error(st, &body, 400, "FAILED_PRECONDITION");
    let (st, _) = s.delete(&format!("{name}/devices/dev-1")).await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = s.delete(&name).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, body) = s.get(&name).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.delete(&name).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn registry_list_pages_through_everything_once() {
    let s = TestServer::start().await;
    for i in [4, 0, 3, 1, 2] {
        s.registry("pager", &format!("reg-{i}")).await;
    }
    s.registry("other-project", "reg-x").await;
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let (st, page) =
            s.get(&format!("projects/pager/locations/us-central1/registries?pageSize=2&pageToken={token}")).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        let regs = page["deviceRegistries"].as_array().unwrap();
        assert!(regs.len() <= 2);
        seen.extend(regs.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page["nextPageToken"].as_str() {
            Some(t) => token = t.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["reg-0", "reg-1", "reg-2", "reg-3", "reg-4"]);
    let (st, body) = s.get("projects/pager/locations/us-central1/registries?pageToken=garbage").await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.get("projects/pager/locations/us-central1/registries?pageSize=-1").await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    s.stop().await;
}

#[tokio::test]
async fn registry_ca_certificates_are_parsed() {
    let s = TestServer::start().await;
    let (st, r) = s
        .post(
            "projects/p/locations/l/registries",
            json!({"id": "ca-reg", "credentials": [{"publicKeyCertificate": {"format": "X509_CERTIFICATE_PEM", "certificate": fixture("ca_cert.pem")}}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let details = &r["credentials"][0]["publicKeyCertificate"]["x509Details"];
    assert!(details["subject"].as_str().unwrap().contains("Ferrocore Test RSA CA"), "{details}");
    assert_eq!(details["publicKeyType"], "RSA");
    assert!(details["expiryTime"].as_str().unwrap().ends_with('Z'));

    for (cred, why) in [
        (json!({"publicKeyCertificate": {"format": "X509_CERTIFICATE_PEM", "certificate": "junk"}}), "junk"),
        (json!({"publicKeyCertificate": {"certificate": fixture("ca_cert.pem")}}), "unspecified format"),
    ] {
        let (st, body) =
            s.post("projects/p/locations/l/registries", json!({"id": "ca-bad", "credentials": [cred]})).await;
        let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
        assert!(
            body["error"]["details"][0]["fieldViolations"][0]["field"].as_str().unwrap().contains("credentials"),
            "{why}: {msg}"
        );
    }
    s.stop().await;
}
