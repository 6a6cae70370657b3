//! The reference's rules with Google's error codes (issue 12, point 4), each through REST and
//! gRPC: the config rate limit, metadata key length, deleting a gateway with bound devices, which
//! changes end live MQTT sessions (and which do not), `--enforce-certificate-validity`, and MQTT
//! subfolder rules.

use crate::device::*;
use crate::harness::*;
use ferrocore_core::clock::ManualClock;
use ferrocore_mqtt_codec::{ConnectReturnCode as Rc, Packet, QoS, SubAckCode};
use ferrocore_proto::iot;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const PROJECT: &str = "rules-proj";

/// The two admin APIs, served by the same service layer.
#[derive(Debug, Clone, Copy)]
enum Api {
    Rest,
    Grpc,
}

const APIS: [Api; 2] = [Api::Rest, Api::Grpc];

/// An API call's outcome: Ok, or the canonical status name (REST's body checked for Google's
/// error shape on the way).
type Outcome = Result<(), String>;

fn rest_outcome(status: StatusCode, body: &Value) -> Outcome {
    if status == StatusCode::OK {
        return Ok(());
    }
    let name = body["error"]["status"].as_str().unwrap_or_default().to_owned();
    let http = match name.as_str() {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" => 400,
        "RESOURCE_EXHAUSTED" => 429,
        "NOT_FOUND" => 404,
        other => panic!("unexpected error {other}: {body}"),
    };
    expect_error(status, body, http, &name);
    Err(name)
}

fn grpc_outcome<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Outcome {
    match r {
        Ok(_) => Ok(()),
        Err(status) => {
            assert!(!status.message().is_empty());
            Err(match status.code() {
                tonic::Code::InvalidArgument => "INVALID_ARGUMENT".into(),
                tonic::Code::FailedPrecondition => "FAILED_PRECONDITION".into(),
                tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED".into(),
                tonic::Code::NotFound => "NOT_FOUND".into(),
                other => panic!("unexpected gRPC status {other:?}: {}", status.message()),
            })
        }
    }
}

fn mask(paths: &str) -> Option<ferrocore_proto::FieldMask> {
    Some(ferrocore_proto::FieldMask { paths: paths.split(',').map(str::to_owned).collect() })
}

/// Creates a device (`body` in REST's JSON) in `reg`.
async fn create_device(s: &TestServer, api: Api, reg: &str, body: Value) -> Outcome {
    match api {
        Api::Rest => {
            let (st, b) = s.post(&format!("{reg}/devices"), body).await;
            rest_outcome(st, &b)
        }
        Api::Grpc => {
            let device: iot::Device = serde_json::from_value(body).unwrap();
            let req = iot::CreateDeviceRequest { parent: reg.to_owned(), device: Some(device) };
            grpc_outcome(s.grpc_client(Some(TOKEN)).await.create_device(req).await)
        }
    }
}

/// Patches the device `name` with `body` (REST's JSON) under `paths` (comma-separated).
async fn patch_device(s: &TestServer, api: Api, name: &str, body: Value, paths: &str) -> Outcome {
    match api {
        Api::Rest => {
            let (st, b) = s.patch(&format!("{name}?updateMask={paths}"), body).await;
            rest_outcome(st, &b)
        }
        Api::Grpc => {
            let mut device: iot::Device = serde_json::from_value(body).unwrap();
            device.name = name.to_owned();
            let req = iot::UpdateDeviceRequest { device: Some(device), update_mask: mask(paths) };
            grpc_outcome(s.grpc_client(Some(TOKEN)).await.update_device(req).await)
        }
    }
}

async fn delete_device(s: &TestServer, api: Api, name: &str) -> Outcome {
    match api {
        Api::Rest => {
            let (st, b) = s.delete(name).await;
            rest_outcome(st, &b)
        }
        Api::Grpc => {
            let req = iot::DeleteDeviceRequest { name: name.to_owned() };
            grpc_outcome(s.grpc_client(Some(TOKEN)).await.delete_device(req).await)
        }
    }
}

async fn patch_registry(s: &TestServer, api: Api, name: &str, body: Value, paths: &str) -> Outcome {
    match api {
        Api::Rest => {
            let (st, b) = s.patch(&format!("{name}?updateMask={paths}"), body).await;
            rest_outcome(st, &b)
        }
        Api::Grpc => {
            let mut registry: iot::DeviceRegistry = serde_json::from_value(body).unwrap();
            registry.name = name.to_owned();
            let req = iot::UpdateDeviceRegistryRequest { device_registry: Some(registry), update_mask: mask(paths) };
            grpc_outcome(s.grpc_client(Some(TOKEN)).await.update_device_registry(req).await)
        }
    }
}

async fn modify_config(s: &TestServer, api: Api, name: &str) -> Outcome {
    match api {
        Api::Rest => {
            let (st, b) = s.post(&format!("{name}:modifyCloudToDeviceConfig"), json!({"binaryData": "AAEC"})).await;
            rest_outcome(st, &b)
        }
        Api::Grpc => {
            let req = iot::ModifyCloudToDeviceConfigRequest {
                name: name.to_owned(),
                version_to_update: 0,
                binary_data: vec![0, 1, 2],
            };
            grpc_outcome(s.grpc_client(Some(TOKEN)).await.modify_cloud_to_device_config(req).await)
        }
    }
}

async fn bind(s: &TestServer, api: Api, reg: &str, gateway: &str, device: &str, bound: bool) -> Outcome {
    match (api, bound) {
        (Api::Rest, _) => {
            let verb = if bound { "bindDeviceToGateway" } else { "unbindDeviceFromGateway" };
            let (st, b) = s.post(&format!("{reg}:{verb}"), json!({"gatewayId": gateway, "deviceId": device})).await;
            rest_outcome(st, &b)
        }
        (Api::Grpc, true) => {
            let req = iot::BindDeviceToGatewayRequest {
                parent: reg.to_owned(),
                gateway_id: gateway.to_owned(),
                device_id: device.to_owned(),
            };
            grpc_outcome(s.grpc_client(Some(TOKEN)).await.bind_device_to_gateway(req).await)
        }
        (Api::Grpc, false) => {
            let req = iot::UnbindDeviceFromGatewayRequest {
                parent: reg.to_owned(),
                gateway_id: gateway.to_owned(),
                device_id: device.to_owned(),
            };
            grpc_outcome(s.grpc_client(Some(TOKEN)).await.unbind_device_from_gateway(req).await)
        }
    }
}

fn es256_key() -> Value {
    json!([{"publicKey": {"format": "ES256_PEM", "key": fixture("ec_public.pem")}}])
}

fn rsa_key() -> Value {
    json!([{"publicKey": {"format": "RSA_PEM", "key": fixture("rsa_public.pem")}}])
}

/// A device connected over MQTT and TLS with the ES256 fixture key.
async fn connected(s: &TestServer, name: &str) -> MqttClient {
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(c.connect(name, Some(&es256_token(PROJECT)), 60).await, Rc::Accepted, "{name}");
    c
}

/// The connection is still open: a PINGREQ is answered.
async fn still_open(c: &mut MqttClient, what: &str) {
    c.send(Packet::PingReq).await;
    match c.recv_within(Duration::from_secs(2)).await {
        Some(Packet::PingResp) => {}
        other => panic!("{what}: expected PINGRESP, got {other:?}"),
    }
}

const CLOSED_WITHIN: Duration = Duration::from_secs(2);

#[tokio::test]
async fn config_updates_are_limited_to_one_per_second_per_device_over_rest_and_grpc() {
    let clock = Arc::new(ManualClock::new(ferrocore_model::Timestamp::now()));
    let server_clock = ferrocore::server::ServerClock(clock.clone());
    let s = TestServer::start_configured(|_| None, |c| c.clock = server_clock).await;
    let reg = s.registry(PROJECT, "rate-reg").await;
    s.device(&reg, "dev-a", json!({})).await;
    s.device(&reg, "dev-b", json!({})).await;
    let (a, b) = (format!("{reg}/devices/dev-a"), format!("{reg}/devices/dev-b"));

    for (first, second) in [(Api::Rest, Api::Grpc), (Api::Grpc, Api::Rest)] {
        assert_eq!(modify_config(&s, first, &a).await, Ok(()), "{first:?}");
        // The clock stands still: however long the calls take, this is within the second.
        for api in [first, second] {
            assert_eq!(modify_config(&s, api, &a).await, Err("RESOURCE_EXHAUSTED".into()), "{api:?}");
        }
        assert_eq!(modify_config(&s, second, &b).await, Ok(()), "another device has its own limit");
        clock.advance(Duration::from_millis(999));
        assert_eq!(modify_config(&s, second, &a).await, Err("RESOURCE_EXHAUSTED".into()));
        clock.advance(Duration::from_millis(1));
        assert_eq!(modify_config(&s, second, &a).await, Ok(()), "a second after the last accepted one");
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(modify_config(&s, Api::Rest, &a).await, Ok(()));
    let (st, body) = s.post(&format!("{a}:modifyCloudToDeviceConfig"), json!({"binaryData": "AAEC"})).await;
    let message = expect_error(st, &body, 429, "RESOURCE_EXHAUSTED");
    assert!(message.contains("once per second"), "{message}");
    let (_, versions) = s.get(&format!("{a}/configVersions")).await;
    assert_eq!(versions["deviceConfigs"].as_array().unwrap().len(), 6, "1 + 5 accepted: {versions}");
    s.stop().await;
}

#[tokio::test]
async fn metadata_keys_must_be_less_than_128_bytes_over_rest_and_grpc() {
    let s = TestServer::start().await;
    let reg = s.registry(PROJECT, "meta-reg").await;
    let key = |n: usize| format!("k{}", "x".repeat(n - 1));
    for api in APIS {
        let id = format!("{api:?}-meta").to_lowercase();
        let ok = json!({"id": id, "metadata": {key(127): "v"}});
        assert_eq!(create_device(&s, api, &reg, ok).await, Ok(()), "{api:?}: 127 bytes");
        let refused = json!({"id": format!("{id}-2"), "metadata": {key(128): "v"}});
        assert_eq!(create_device(&s, api, &reg, refused).await, Err("INVALID_ARGUMENT".into()), "{api:?}");
        let name = format!("{reg}/devices/{id}");
        let patch = json!({"metadata": {key(128): "v"}});
        assert_eq!(patch_device(&s, api, &name, patch, "metadata").await, Err("INVALID_ARGUMENT".into()));
        let patch = json!({"metadata": {key(127): "w"}});
        assert_eq!(patch_device(&s, api, &name, patch, "metadata").await, Ok(()));
    }
    let (st, body) = s.post(&format!("{reg}/devices"), json!({"id": "rest-meta-3", "metadata": {key(128): ""}})).await;
    let message = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert!(message.contains("less than 128 bytes"), "{message}");
    s.stop().await;
}

#[tokio::test]
async fn a_gateway_with_bound_devices_is_deleted_only_once_they_are_unbound() {
    let s = TestServer::start().await;
    let reg = s.registry(PROJECT, "gw-reg").await;
    for api in APIS {
        let (gw, leaf) = (format!("{api:?}-gateway").to_lowercase(), format!("{api:?}-leaf").to_lowercase());
        s.device(
            &reg,
            &gw,
            json!({"gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"}}),
        )
        .await;
        s.device(&reg, &leaf, json!({})).await;
        assert_eq!(bind(&s, api, &reg, &gw, &leaf, true).await, Ok(()));
        let gw_name = format!("{reg}/devices/{gw}");
        assert_eq!(delete_device(&s, api, &gw_name).await, Err("FAILED_PRECONDITION".into()), "{api:?}");
        let (st, _) = s.get(&gw_name).await;
        assert_eq!(st, StatusCode::OK, "the gateway is still there");
        assert_eq!(bind(&s, api, &reg, &gw, &leaf, false).await, Ok(()));
        assert_eq!(delete_device(&s, api, &gw_name).await, Ok(()), "{api:?}: unbound, it goes");
        let (st, _) = s.get(&gw_name).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
    // The REST error is Google's shape and says what to do.
    s.device(&reg, "gw-3", json!({"gatewayConfig": {"gatewayType": "GATEWAY"}})).await;
    s.device(&reg, "leaf-3", json!({})).await;
    assert_eq!(bind(&s, Api::Rest, &reg, "gw-3", "leaf-3", true).await, Ok(()));
    let (st, body) = s.delete(&format!("{reg}/devices/gw-3")).await;
    let message = expect_error(st, &body, 400, "FAILED_PRECONDITION");
    assert!(message.contains("unbind"), "{message}");
    // A bound (non-gateway) device is deleted with its bindings, as before.
    assert_eq!(delete_device(&s, Api::Rest, &format!("{reg}/devices/leaf-3")).await, Ok(()));
    assert_eq!(delete_device(&s, Api::Rest, &format!("{reg}/devices/gw-3")).await, Ok(()));
    s.stop().await;
}

#[tokio::test]
async fn replacing_credentials_or_deleting_a_device_disconnects_it_over_rest_and_grpc() {
    let s = TestServer::start().await;
    let reg = s.registry(PROJECT, "creds-reg").await;
    for api in APIS {
        let id = format!("{api:?}-dev").to_lowercase();
        s.device(&reg, &id, json!({})).await;
        let name = format!("{reg}/devices/{id}");
        let mut c = connected(&s, &name).await;

        let same = json!({"credentials": es256_key(), "metadata": {"k": "v"}});
        assert_eq!(patch_device(&s, api, &name, same, "credentials,metadata").await, Ok(()));
        still_open(&mut c, "the same credentials again").await;

        let rotated = json!({"credentials": [rsa_key()[0].clone(), es256_key()[0].clone()]});
        assert_eq!(patch_device(&s, api, &name, rotated, "credentials").await, Ok(()));
        assert!(c.closed_within(CLOSED_WITHIN).await, "{api:?}: replaced credentials disconnect");

        // It comes back with what its credentials are now (its ES256 key is still one of them)...
        let mut c = connected(&s, &name).await;
        assert_eq!(delete_device(&s, api, &name).await, Ok(()));
        assert!(c.closed_within(CLOSED_WITHIN).await, "{api:?}: deleting disconnects");
        // ... and, deleted, it does not.
        let mut again = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
        assert_eq!(again.connect(&name, Some(&es256_token(PROJECT)), 60).await, Rc::NotAuthorized);
    }
    s.stop().await;
}

#[tokio::test]
async fn disabling_mqtt_disconnects_the_registry_and_a_ca_change_does_not_over_rest_and_grpc() {
    let s = TestServer::start().await;
    for api in APIS {
        let reg = s.registry(PROJECT, &format!("{api:?}-reg").to_lowercase()).await;
        s.device(&reg, "dev-1", json!({})).await;
        s.device(&reg, "dev-2", json!({})).await;
        let other_reg = s.registry(PROJECT, &format!("{api:?}-other").to_lowercase()).await;
        s.device(&other_reg, "dev-1", json!({})).await;
        let mut one = connected(&s, &format!("{reg}/devices/dev-1")).await;
        let mut two = connected(&s, &format!("{reg}/devices/dev-2")).await;
        let mut elsewhere = connected(&s, &format!("{other_reg}/devices/dev-1")).await;

        // The reference: devices "should be able to connect even if its registry credentials
        // are revoked, deleted, or modified".
        let ca = json!({"credentials": [{"publicKeyCertificate": {"format": "X509_CERTIFICATE_PEM", "certificate": fixture("ca_cert.pem")}}]});
        assert_eq!(patch_registry(&s, api, &reg, ca, "credentials").await, Ok(()));
        still_open(&mut one, "after a registry CA was added").await;
        assert_eq!(patch_registry(&s, api, &reg, json!({}), "credentials").await, Ok(()));
        still_open(&mut one, "after the registry CA was removed").await;
        let enabled = json!({"mqttConfig": {"mqttEnabledState": "MQTT_ENABLED"}});
        assert_eq!(patch_registry(&s, api, &reg, enabled, "mqtt_config").await, Ok(()));
        still_open(&mut two, "enabling an enabled bridge").await;

        let disabled = json!({"mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"}});
        assert_eq!(patch_registry(&s, api, &reg, disabled, "mqtt_config").await, Ok(()));
        assert!(one.closed_within(CLOSED_WITHIN).await, "{api:?}: MQTT disabled disconnects");
        assert!(two.closed_within(CLOSED_WITHIN).await, "{api:?}: every device of the registry");
        still_open(&mut elsewhere, "another registry's device").await;
        let mut again = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
        assert_eq!(
            again.connect(&format!("{reg}/devices/dev-1"), Some(&es256_token(PROJECT)), 60).await,
            Rc::NotAuthorized
        );
    }
    s.stop().await;
}

/// HTTP devices hold no session: disabling HTTP refuses their very next request.
#[tokio::test]
async fn disabling_http_refuses_the_next_request_over_rest_and_grpc() {
    let s = TestServer::start().await;
    for api in APIS {
        let reg = s.registry(PROJECT, &format!("{api:?}-http").to_lowercase()).await;
        s.device(&reg, "web", json!({})).await;
        let publish = || async {
            let resp = s
                .client
                .post(format!("{}/v1/{reg}/devices/web:publishEvent", s.base))
                .bearer_auth(es256_token(PROJECT))
                .json(&json!({"binaryData": "AAEC"}))
                .send()
                .await
                .unwrap();
            resp.status()
        };
        assert_eq!(publish().await, StatusCode::OK);
        let disabled = json!({"httpConfig": {"httpEnabledState": "HTTP_DISABLED"}});
        assert_eq!(patch_registry(&s, api, &reg, disabled, "http_config").await, Ok(()));
        assert_eq!(publish().await, StatusCode::UNAUTHORIZED, "{api:?}");
    }
    s.stop().await;
}

/// A re-keyed or deleted gateway's session closes, and the devices attached through it are
/// detached with it.
#[tokio::test]
async fn a_rekeyed_or_deleted_gateway_is_disconnected_and_its_devices_detached() {
    let s = TestServer::start().await;
    for api in APIS {
        let reg = s.registry(PROJECT, &format!("{api:?}-gwreg").to_lowercase()).await;
        s.device(
            &reg,
            "gateway",
            json!({"gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"}}),
        )
        .await;
        s.device(&reg, "leaf", json!({})).await;
        assert_eq!(bind(&s, api, &reg, "gateway", "leaf", true).await, Ok(()));
        let gw_name = format!("{reg}/devices/gateway");
        let leaf_name = format!("{reg}/devices/leaf");

        for change in ["rekey", "delete"] {
            let mut gw = connected(&s, &gw_name).await;
            gw.publish_acked("/devices/leaf/attach", b"{}").await;
            let granted = gw.subscribe(&[("/devices/leaf/commands/#", QoS::AtMostOnce)]).await;
            assert_eq!(granted, [SubAckCode::Granted(QoS::AtMostOnce)]);
            let (st, body) = s.post(&format!("{leaf_name}:sendCommandToDevice"), json!({"binaryData": "AQ=="})).await;
            assert_eq!(st, StatusCode::OK, "attached through the gateway: {body}");
            match gw.recv().await {
                Packet::Publish(p) => assert_eq!(p.topic, "/devices/leaf/commands"),
                other => panic!("{other:?}"),
            }

            if change == "rekey" {
                assert_eq!(
                    patch_device(&s, api, &gw_name, json!({"credentials": rsa_key()}), "credentials").await,
                    Ok(())
                );
            } else {
                assert_eq!(bind(&s, api, &reg, "gateway", "leaf", false).await, Ok(()));
                assert_eq!(delete_device(&s, api, &gw_name).await, Ok(()));
            }
            assert!(gw.closed_within(CLOSED_WITHIN).await, "{api:?}: a {change}d gateway is disconnected");
            let (st, body) = s.post(&format!("{leaf_name}:sendCommandToDevice"), json!({"binaryData": "AQ=="})).await;
            expect_error(st, &body, 400, "FAILED_PRECONDITION");
            if change == "rekey" {
                // Back to the key it connects with, for the next round.
                assert_eq!(
                    patch_device(&s, api, &gw_name, json!({"credentials": es256_key()}), "credentials").await,
                    Ok(())
                );
            }
        }
    }
    s.stop().await;
}

/// A self-signed ES256 certificate for the fixture key, valid between the two dates.
fn certificate(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> String {
    let key = rcgen::KeyPair::from_pem(&fixture("ec_private.pem")).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["unused".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    params.self_signed(&key).unwrap().pem()
}

/// Connects `name` over MQTT; returns the CONNACK code.
async fn connack(s: &TestServer, name: &str) -> Rc {
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    c.connect(name, Some(&es256_token(PROJECT)), 60).await
}

async fn http_publish(s: &TestServer, name: &str) -> StatusCode {
    let resp = s
        .client
        .post(format!("{}/v1/{name}:publishEvent", s.base))
        .bearer_auth(es256_token(PROJECT))
        .json(&json!({"binaryData": "AAEC"}))
        .send()
        .await
        .unwrap();
    resp.status()
}

#[tokio::test]
async fn certificate_validity_is_enforced_only_with_the_flag() {
    let expired = certificate((2000, 1, 1), (2001, 1, 1));
    let future = certificate((2090, 1, 1), (2099, 1, 1));
    let valid = certificate((2000, 1, 1), (2099, 1, 1));
    for enforce in [false, true] {
        let s = TestServer::start_configured(|_| None, |c| c.core.enforce_certificate_validity = enforce).await;
        let reg = s.registry(PROJECT, "x509-reg").await;
        for (id, pem) in [("expired", &expired), ("not-yet", &future), ("valid", &valid)] {
            let creds = json!([{"publicKey": {"format": "ES256_X509_PEM", "key": pem}}]);
            s.device(&reg, id, json!({"credentials": creds})).await;
            let name = format!("{reg}/devices/{id}");
            let admitted = !enforce || id == "valid";
            let (code, status) = (connack(&s, &name).await, http_publish(&s, &name).await);
            if admitted {
                assert_eq!((code, status), (Rc::Accepted, StatusCode::OK), "{id}, enforce={enforce}");
            } else {
                assert_eq!((code, status), (Rc::NotAuthorized, StatusCode::UNAUTHORIZED), "{id}, enforce={enforce}");
            }
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn mqtt_subfolders_follow_the_http_bridge_rules() {
    let s = TestServer::start().await;
    let reg = s.registry(PROJECT, "sub-reg").await;
    s.device(&reg, "direct", json!({})).await;
    let longest = "a".repeat(256);
    let too_long = "a".repeat(257);

    let name = format!("{reg}/devices/direct");
    let mut c = connected(&s, &name).await;
    c.publish_acked(&format!("/devices/direct/events/{longest}"), b"ok").await;
    c.publish(&format!("/devices/direct/events/{too_long}"), QoS::AtLeastOnce, b"no").await;
    assert!(c.closed_within(CLOSED_WITHIN).await, "a direct device is disconnected");
    let (_, device) = s.get(&name).await;
    assert_eq!(device["lastErrorStatus"]["code"], 3, "INVALID_ARGUMENT recorded: {device}");
    // The HTTP bridge refuses the same subfolder.
    let resp = s
        .client
        .post(format!("{}/v1/{name}:publishEvent", s.base))
        .bearer_auth(es256_token(PROJECT))
        .json(&json!({"binaryData": "AAEC", "subFolder": too_long}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Relayed by a gateway: an error on its errors topic; the gateway and the device stay.
    s.device(
        &reg,
        "gateway",
        json!({"gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"}}),
    )
    .await;
    s.device(&reg, "leaf", json!({})).await;
    assert_eq!(bind(&s, Api::Rest, &reg, "gateway", "leaf", true).await, Ok(()));
    let mut gw = connected(&s, &format!("{reg}/devices/gateway")).await;
    assert_eq!(
        gw.subscribe(&[("/devices/gateway/errors", QoS::AtMostOnce)]).await,
        [SubAckCode::Granted(QoS::AtMostOnce)]
    );
    gw.publish_acked("/devices/leaf/attach", b"{}").await;
    gw.publish(&format!("/devices/leaf/events/{too_long}"), QoS::AtLeastOnce, b"no").await;
    match gw.recv().await {
        Packet::Publish(p) => {
            assert_eq!(p.topic, "/devices/gateway/errors");
            let e: Value = serde_json::from_slice(&p.payload).unwrap();
            assert_eq!(e["error_type"], "GATEWAY_INVALID_MQTT_TOPIC", "{e}");
            assert_eq!(e["device_id"], "leaf", "{e}");
        }
        other => panic!("expected an error on the errors topic, got {other:?}"),
    }
    gw.publish_acked(&format!("/devices/leaf/events/{longest}"), b"still attached").await;
    s.stop().await;
}
