//! Devices over REST: every method of the devices resource, gateways and bindings.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn num_id(d: &Value) -> String {
    d["numId"].as_str().expect("numId is a JSON string").to_owned()
}

#[tokio::test]
async fn device_lifecycle() {
    let s = TestServer::start().await;
    let reg = s.registry("life", "reg").await;
    let (st, d) = s
        .post(
            &format!("{reg}/devices"),
            json!({
                "id": "thermo-1",
                "credentials": [
                    {"publicKey": {"format": "RSA_PEM", "key": fixture("rsa_public.pem")}, "expirationTime": "2031-01-01T00:00:00Z"},
                    {"public_key": {"format": 4, "key": fixture("ec_cert.pem")}}
                ],
                "metadata": {"room": "kitchen", "floor": "1"},
                "config": {"version": "0", "binaryData": "aW5pdA=="},
                "logLevel": "ERROR"
            }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{d}");
    let num = num_id(&d);
    assert!(num.len() >= 10 && num.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(d["name"], format!("{reg}/devices/{num}"), "names end in the numeric id");
    assert_eq!(d["id"], "thermo-1");
    assert_eq!(d["config"]["version"], "1");
    assert_eq!(d["config"]["binaryData"], "aW5pdA==");
    assert!(d["config"]["cloudUpdateTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(d["credentials"][0]["expirationTime"], "2031-01-01T00:00:00Z");
    assert_eq!(d["credentials"][1]["publicKey"]["format"], "ES256_X509_PEM");
    assert_eq!(d["metadata"]["room"], "kitchen");
    assert_eq!(d["logLevel"], "ERROR");

    let (st, by_id) = s.get(&format!("{reg}/devices/thermo-1")).await;
    assert_eq!(st, StatusCode::OK);
    let (_, by_num) = s.get(&format!("{reg}/devices/{num}")).await;
    assert_eq!(by_id, by_num, "numeric and string ids address the same device");
    assert_eq!(by_id, d);

    let (_, masked) = s.get(&format!("{reg}/devices/thermo-1?fieldMask=metadata,lastHeartbeatTime")).await;
    assert_eq!(masked, json!({"metadata": {"room": "kitchen", "floor": "1"}}), "only masked fields");
    let (_, masked) = s.get(&format!("{reg}/devices/thermo-1?field_mask=num_id,config.version")).await;
    assert_eq!(masked["numId"], num);
    assert_eq!(masked["config"]["version"], "1");
    assert!(masked.get("id").is_none());
    let (st, body) = s.get(&format!("{reg}/devices/thermo-1?fieldMask=bogus")).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");

    // Patch: each mutable field, replaced wholesale; the rest untouched.
    let (st, p) = s
        .patch(
            &format!("{reg}/devices/{num}?updateMask=blocked,metadata,gatewayConfig.gatewayAuthMethod,log_level"),
            json!({"blocked": true, "metadata": {"k": "v"}, "gatewayConfig": {"gatewayAuthMethod": "ASSOCIATION_ONLY"}, "logLevel": "DEBUG", "credentials": []}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["blocked"], true);
    assert_eq!(p["metadata"], json!({"k": "v"}));
    assert_eq!(p["gatewayConfig"]["gatewayAuthMethod"], "ASSOCIATION_ONLY");
    assert_eq!(p["logLevel"], "DEBUG");
    assert_eq!(p["credentials"].as_array().unwrap().len(), 2, "credentials not in the mask are kept");
    let (st, p) = s
        .patch(
            &format!("{reg}/devices/thermo-1?updateMask=credentials"),
            json!({"credentials": [{"publicKey": {"format": "ES256_PEM", "key": fixture("ec_public.pem")}}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["credentials"].as_array().unwrap().len(), 1);
    assert_eq!(s.get(&format!("{reg}/devices/thermo-1")).await.1, p, "patch is persisted");

    // The Java client's PATCH-over-POST.
    let resp = s
        .client
        .post(format!("{}/v1/{reg}/devices/thermo-1?updateMask=blocked", s.base))
        .bearer_auth(TOKEN)
        .header("X-HTTP-Method-Override", "PATCH")
        .json(&json!({"blocked": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("blocked").is_none(), "{body}");

    for mask in ["id", "num_id", "gateway_config.gateway_type", "config", "state", "name", "nope"] {
        let (st, body) = s.patch(&format!("{reg}/devices/thermo-1?updateMask={mask}"), json!({})).await;
        let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
        assert!(
            msg.contains("'blocked', 'credentials', 'gateway_config.gateway_auth_method', 'log_level', 'metadata'"),
            "{mask}: {msg}"
        );
    }
    let (st, body) = s.patch(&format!("{reg}/devices/thermo-1?updateMask=blocked"), json!({"id": "renamed"})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");

    let (st, body) = s.delete(&format!("{reg}/devices/{num}")).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, body) = s.get(&format!("{reg}/devices/thermo-1")).await;
    let msg = expect_error(st, &body, 404, "NOT_FOUND");
    assert!(msg.contains("thermo-1"), "{msg}");
    s.stop().await;
}

#[tokio::test]
async fn device_ids_are_unique_per_registry_and_num_ids_everywhere() {
    let s = TestServer::start().await;
    let a = s.registry("uniq", "reg-a").await;
    let b = s.registry("uniq", "reg-b").await;
    let da = s.device(&a, "same-id", json!({})).await;
    let db = s.device(&b, "same-id", json!({})).await;
    assert_ne!(num_id(&da), num_id(&db));
    let (st, body) = s.post(&format!("{a}/devices"), json!({"id": "same-id"})).await;
    let msg = expect_error(st, &body, 409, "ALREADY_EXISTS");
    assert_eq!(msg, "Resource already exists in the project (resource=same-id).");
    // A numeric id only resolves inside its own registry.
    let (st, body) = s.get(&format!("{b}/devices/{}", num_id(&da))).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) =
        s.post("projects/uniq/locations/us-central1/registries/missing/devices", json!({"id": "dev"})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn device_list_filters_masks_and_pages() {
    let s = TestServer::start().await;
    let reg = s.registry("list", "reg").await;
    let mut nums = std::collections::HashMap::new();
    for id in ["dev-d", "dev-a", "dev-c", "dev-b", "dev-e", "dev-f", "dev-g"] {
        nums.insert(id, num_id(&s.device(&reg, id, json!({"metadata": {"n": id}})).await));
    }
    let gw = s
        .device(
            &reg,
            "gw-1",
            json!({"gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"}}),
        )
        .await;

    let (st, page) = s.get(&format!("{reg}/devices")).await;
    assert_eq!(st, StatusCode::OK);
    let first = &page["devices"][0];
    assert_eq!(first["id"], "dev-a");
    assert!(first["numId"].is_string() && first["name"].is_string());
    assert!(first.get("metadata").is_none() && first.get("config").is_none(), "no mask: ids only: {first}");

    let (_, page) = s.get(&format!("{reg}/devices?fieldMask=metadata,config")).await;
    assert_eq!(page["devices"][0]["metadata"]["n"], "dev-a");
    assert_eq!(page["devices"][0]["config"]["version"], "1");

    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let (st, page) = s.get(&format!("{reg}/devices?pageSize=3&pageToken={token}")).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        seen.extend(page["devices"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match page["nextPageToken"].as_str() {
            Some(t) => token = t.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e", "dev-f", "dev-g", "gw-1"]);

    let ids = |page: &Value| -> Vec<String> {
        page["devices"]
            .as_array()
            .map(|a| a.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let (_, page) =
        s.get(&format!("{reg}/devices?deviceIds=dev-c&deviceIds=dev-a&deviceNumIds={}", nums["dev-g"])).await;
    assert_eq!(ids(&page), ["dev-a", "dev-c", "dev-g"]);
    let (_, page) = s.get(&format!("{reg}/devices?deviceIds=nobody")).await;
    assert_eq!(page, json!({}), "an id filter matching nothing lists nothing");
    let (_, page) = s.get(&format!("{reg}/devices?gatewayListOptions.gatewayType=GATEWAY")).await;
    assert_eq!(ids(&page), ["gw-1"]);
    let (_, page) = s.get(&format!("{reg}/devices?gatewayListOptions.gatewayType=2&pageSize=2")).await;
    assert_eq!(ids(&page), ["dev-a", "dev-b"]);

    // Bind by id and by numeric id, then list associations both ways.
    let parent_verb = |v: &str| format!("{reg}:{v}");
    let (st, body) =
        s.post(&parent_verb("bindDeviceToGateway"), json!({"gatewayId": "gw-1", "deviceId": "dev-b"})).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, _) = s
        .post(&parent_verb("bindDeviceToGateway"), json!({"gateway_id": num_id(&gw), "device_id": nums["dev-e"]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.post(&parent_verb("bindDeviceToGateway"), json!({"gatewayId": "gw-1", "deviceId": "dev-b"})).await;
    assert_eq!(st, StatusCode::OK, "binding a bound pair succeeds");
    let (_, page) = s.get(&format!("{reg}/devices?gatewayListOptions.associationsGatewayId=gw-1")).await;
    assert_eq!(ids(&page), ["dev-b", "dev-e"]);
    let (_, page) = s.get(&format!("{reg}/devices?gatewayListOptions.associationsDeviceId={}", nums["dev-b"])).await;
    assert_eq!(ids(&page), ["gw-1"]);
    let (st, body) = s
        .get(&format!(
            "{reg}/devices?gatewayListOptions.associationsGatewayId=gw-1&gatewayListOptions.gatewayType=GATEWAY"
        ))
        .await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");

    let (st, body) =
        s.post(&parent_verb("bindDeviceToGateway"), json!({"gatewayId": "dev-a", "deviceId": "dev-b"})).await;
    let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert!(msg.contains("not a gateway"), "{msg}");
    let (st, body) =
        s.post(&parent_verb("bindDeviceToGateway"), json!({"gatewayId": "gw-1", "deviceId": "gw-1"})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) =
        s.post(&parent_verb("bindDeviceToGateway"), json!({"gatewayId": "gw-1", "deviceId": "ghost"})).await;
    expect_error(st, &body, 404, "NOT_FOUND");

    let (st, _) =
        s.post(&parent_verb("unbindDeviceFromGateway"), json!({"gatewayId": "gw-1", "deviceId": "dev-b"})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) =
        s.post(&parent_verb("unbindDeviceFromGateway"), json!({"gatewayId": "gw-1", "deviceId": "dev-b"})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (_, page) = s.get(&format!("{reg}/devices?gatewayListOptions.associationsGatewayId=gw-1")).await;
    assert_eq!(ids(&page), ["dev-e"]);
    s.stop().await;
}

#[tokio::test]
async fn config_versions_compare_and_set() {
    // Config updates are limited to one per second per device: the test moves the server's clock.
    let clock = std::sync::Arc::new(ferrocore_core::clock::ManualClock::new(ferrocore_model::Timestamp::now()));
    let server_clock = ferrocore::server::ServerClock(clock.clone());
    let s = TestServer::start_configured(|_| None, |c| c.clock = server_clock).await;
    let next_second = || clock.advance(std::time::Duration::from_secs(1));
    let reg = s.registry("cfg", "reg").await;
    s.device(&reg, "dev", json!({})).await;
    let dev = format!("{reg}/devices/dev");

    let (st, c) = s
        .post(&format!("{dev}:modifyCloudToDeviceConfig"), json!({"versionToUpdate": "1", "binaryData": "djI="}))
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["version"], "2");
    assert!(c["cloudUpdateTime"].as_str().unwrap().ends_with('Z'));
    assert!(c.get("deviceAckTime").is_none());
    next_second();
    let (st, body) =
        s.post(&format!("{dev}:modifyCloudToDeviceConfig"), json!({"versionToUpdate": 1, "binaryData": "eA=="})).await;
    let msg = expect_error(st, &body, 400, "FAILED_PRECONDITION");
    assert!(msg.contains("(1)") && msg.contains("(2)"), "{msg}");
    // Unconditional, with URL-safe base64 as Google's samples send it, and snake_case.
    let (st, c) = s.post(&format!("{dev}:modifyCloudToDeviceConfig"), json!({"binary_data": "-_8"})).await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["binaryData"], "+/8=");
    for i in 0..10 {
        next_second();
        let (st, _) = s
            .post(
                &format!("{dev}:modifyCloudToDeviceConfig"),
                json!({"binaryData": "eA==", "versionToUpdate": (3 + i).to_string()}),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (_, list) = s.get(&format!("{dev}/configVersions")).await;
    let versions: Vec<&str> =
        list["deviceConfigs"].as_array().unwrap().iter().map(|c| c["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["13", "12", "11", "10", "9", "8", "7", "6", "5", "4"], "ten newest, newest first");
    let (_, list) = s.get(&format!("{dev}/configVersions?numVersions=2")).await;
    assert_eq!(list["deviceConfigs"].as_array().unwrap().len(), 2);
    let (_, d) = s.get(&format!("{dev}?fieldMask=config")).await;
    assert_eq!(d["config"]["version"], "13");

    let (st, body) = s.post(&format!("{dev}:modifyCloudToDeviceConfig"), json!({"binaryData": "123"})).await;
    let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert!(msg.contains("binaryData") && msg.contains("Base64"), "{msg}");
    let big = b64(&vec![b'x'; 64 * 1024 + 1]);
    let (st, body) = s.post(&format!("{dev}:modifyCloudToDeviceConfig"), json!({"binaryData": big})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let ok = b64(&vec![b'x'; 64 * 1024]);
    next_second();
    let (st, _) = s.post(&format!("{dev}:modifyCloudToDeviceConfig"), json!({"binaryData": ok})).await;
    assert_eq!(st, StatusCode::OK, "exactly 64 KiB is allowed");

    let (st, states) = s.get(&format!("{dev}/states?numStates=5")).await;
    assert_eq!((st, states), (StatusCode::OK, json!({})), "no state reported yet");
    let (st, body) = s.post(&format!("{reg}/devices"), json!({"id": "dev-2", "config": {"version": "3"}})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    s.stop().await;
}

#[tokio::test]
async fn commands_need_a_subscribed_device() {
    let s = TestServer::start().await;
    let reg = s.registry("cmd", "reg").await;
    s.device(&reg, "dev", json!({})).await;
    let (st, body) = s
        .post(
            &format!("{reg}/devices/dev:sendCommandToDevice"),
            json!({"binaryData": "b24=", "subfolder": "lights/kitchen"}),
        )
        .await;
    let msg = expect_error(st, &body, 400, "FAILED_PRECONDITION");
    assert!(msg.contains("is not subscribed to the commands topic"), "{msg}");
    let (st, body) = s
        .post(&format!("{reg}/devices/dev:sendCommandToDevice"), json!({"binaryData": "b24=", "subfolder": "a/#"}))
        .await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let big = b64(&vec![0u8; 256 * 1024 + 1]);
    let (st, body) = s.post(&format!("{reg}/devices/dev:sendCommandToDevice"), json!({"binaryData": big})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.post(&format!("{reg}/devices/ghost:sendCommandToDevice"), json!({"binaryData": "b24="})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn credentials_are_checked_against_format_and_registry_cas() {
    let s = TestServer::start().await;
    let plain = s.registry("creds", "plain").await;
    let key = |format: &str, file: &str| json!({"publicKey": {"format": format, "key": fixture(file)}});
    for (cred, why) in [
        (key("RSA_PEM", "ec_public.pem"), "EC key declared RSA"),
        (key("ES256_PEM", "rsa_public.pem"), "RSA key declared ES256"),
        (key("RSA_PEM", "rsa_cert.pem"), "certificate declared as a bare key"),
        (key("RSA_X509_PEM", "rsa_public.pem"), "bare key declared as a certificate"),
        (key("ES256_PEM", "ec_p384_public.pem"), "P-384"),
        (key("RSA_PEM", "rsa1024_public.pem"), "RSA-1024"),
        (key("RSA_PEM", "rsa_private.pem"), "a private key"),
        (json!({"publicKey": {"key": fixture("rsa_public.pem")}}), "unspecified format"),
        (
            json!({"publicKey": {"format": "RSA_PEM", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}}),
            "garbage",
        ),
    ] {
        let (st, body) = s.post(&format!("{plain}/devices"), json!({"id": "dev", "credentials": [cred]})).await;
        let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
        assert_eq!(
            body["error"]["details"][0]["fieldViolations"][0]["field"], "device.credentials[0].public_key",
            "{why}"
        );
        assert!(!msg.contains("Error") && !msg.contains("{"), "{why}: message leaks internals: {msg}");
    }
    let four = vec![key("ES256_PEM", "ec_public.pem"); 4];
    let (st, body) = s.post(&format!("{plain}/devices"), json!({"id": "dev", "credentials": four})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.post(&format!("{plain}/devices"), json!({"id": "dev", "credentials": [{"publicKey": {"format": "ES256_PEM", "key": fixture("ec_public.pem")}, "expirationTime": "soon"}]})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    // Without registry CAs, self-signed certificates are fine.
    s.device(&plain, "self-signed", json!({"credentials": [key("RSA_X509_PEM", "rsa_cert.pem")]})).await;

    let (st, r) = s
        .post(
            "projects/creds/locations/us-central1/registries",
            json!({"id": "with-ca", "credentials": [{"publicKeyCertificate": {"format": "X509_CERTIFICATE_PEM", "certificate": fixture("ca_cert.pem")}}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let ca_reg = "projects/creds/locations/us-central1/registries/with-ca";
    s.device(ca_reg, "signed", json!({"credentials": [key("ES256_X509_PEM", "device_signed_by_ca.pem")]})).await;
    for (cred, why) in [
        (key("ES256_X509_PEM", "ec_cert.pem"), "self-signed"),
        (key("ES256_X509_PEM", "device_signed_by_ec_ca.pem"), "signed by another CA"),
        (key("ES256_PEM", "ec_public.pem"), "bare key"),
        (key("RSA_X509_PEM", "ca_cert.pem"), "the CA itself"),
    ] {
        let (st, body) = s.post(&format!("{ca_reg}/devices"), json!({"id": "dev", "credentials": [cred]})).await;
        let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
        assert!(msg.to_lowercase().contains("ca") || msg.contains("certificate"), "{why}: {msg}");
    }
    // The same check applies when credentials are patched.
    let (st, body) = s
        .patch(
            &format!("{ca_reg}/devices/signed?updateMask=credentials"),
            json!({"credentials": [key("ES256_X509_PEM", "ec_cert.pem")]}),
        )
        .await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    s.stop().await;
}

/// States arrive from device bridges; here the test writes them through the store, as a bridge
/// will, and reads them back over REST.
#[tokio::test]
async fn states_list_newest_first_and_device_state_is_the_latest() {
    use ferrocore_store::Store;
    let s = TestServer::start().await;
    let reg = s.registry("states", "reg").await;
    let d = s.device(&reg, "dev", json!({})).await;
    let num = ferrocore_model::NumId(num_id(&d).parse().unwrap());
    let store = ferrocore_store::sqlite::SqliteStore::open(&s.database()).await.unwrap();
    let states: Vec<_> = (0..12i64)
        .map(|i| {
            (
                num,
                ferrocore_model::DeviceState {
                    update_time: ferrocore_model::Timestamp::from_unix_seconds(1_750_000_000 + i),
                    binary_data: format!("state-{i}").into_bytes(),
                },
            )
        })
        .collect();
    store.record_states(&states).await.unwrap();
    store.close().await;

    let (st, list) = s.get(&format!("{reg}/devices/dev/states")).await;
    assert_eq!(st, StatusCode::OK, "{list}");
    let got = list["deviceStates"].as_array().unwrap();
    assert_eq!(got.len(), 10, "ten kept");
    assert_eq!(got[0]["binaryData"], b64(b"state-11"));
    assert_eq!(got[0]["updateTime"], "2025-06-15T15:06:51Z");
    assert_eq!(got[9]["binaryData"], b64(b"state-2"));
    let (_, list) = s.get(&format!("{reg}/devices/dev/states?numStates=3")).await;
    assert_eq!(list["deviceStates"].as_array().unwrap().len(), 3);
    let (_, dev) = s.get(&format!("{reg}/devices/dev?fieldMask=state")).await;
    assert_eq!(dev["state"]["binaryData"], b64(b"state-11"));
    let (st, body) = s.get(&format!("{reg}/devices/dev/states?numStates=-1")).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    s.stop().await;
}
