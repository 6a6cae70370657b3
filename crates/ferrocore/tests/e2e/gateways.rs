//! Gateways end to end: a gateway connects with its own JWT, attaches the devices its auth method
//! lets it, speaks for them over MQTT (telemetry, state, config, commands) and over HTTP
//! (`gatewayInfo`), and hears about what goes wrong on `/devices/{gateway}/errors`.

use crate::device::*;
use crate::harness::*;
use crate::wait::eventually;
use ferrocore_mqtt_codec::{ConnectReturnCode as Rc, Packet, QoS, SubAckCode};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const PROJECT: &str = "gw-proj";

/// A registry routing telemetry to `telemetry` (subfolder `alerts` to `alerts`, `probe` to
/// `probes`) and states to `state`. Returns its path.
pub(crate) async fn registry(s: &TestServer) -> String {
    let parent = format!("projects/{PROJECT}/locations/us-central1");
    let (st, body) = s
        .post(
            &format!("{parent}/registries"),
            json!({
                "id": "plant",
                "eventNotificationConfigs": [
                    {"subfolderMatches": "alerts", "pubsubTopicName": format!("projects/{PROJECT}/topics/alerts")},
                    {"subfolderMatches": "probe", "pubsubTopicName": format!("projects/{PROJECT}/topics/probes")},
                    {"pubsubTopicName": format!("projects/{PROJECT}/topics/telemetry")}
                ],
                "stateNotificationConfig": {"pubsubTopicName": format!("projects/{PROJECT}/topics/state")}
            }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    format!("{parent}/registries/plant")
}

/// A gateway with the ES256 fixture key and this auth method.
pub(crate) async fn gateway(s: &TestServer, reg: &str, id: &str, method: &str) -> Value {
    s.device(reg, id, json!({"gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": method}})).await
}

/// A non-gateway device with the RSA fixture key, so that its JWT is not the gateway's.
pub(crate) async fn leaf(s: &TestServer, reg: &str, id: &str) -> Value {
    s.device(reg, id, json!({"credentials": [{"publicKey": {"format": "RSA_PEM", "key": fixture("rsa_public.pem")}}]}))
        .await
}

/// The RS256 token of a leaf device.
fn leaf_token() -> String {
    jwt(&fixture("rsa_private.pem"), PROJECT, now(), now() + 3600)
}

pub(crate) async fn bind(s: &TestServer, reg: &str, gateway: &str, device: &str) {
    let (st, body) =
        s.post(&format!("{reg}:bindDeviceToGateway"), json!({"gatewayId": gateway, "deviceId": device})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
}

/// The gateway connected, and subscribed to its errors topic.
pub(crate) async fn connect_gateway(s: &TestServer, reg: &str, id: &str) -> MqttClient {
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(c.connect(&format!("{reg}/devices/{id}"), Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    let errors = format!("/devices/{id}/errors");
    // The sample subscribes with QoS 0; anything asked is granted as 0.
    assert_eq!(c.subscribe(&[(&errors, QoS::AtLeastOnce)]).await, [SubAckCode::Granted(QoS::AtMostOnce)]);
    c
}

/// The next packet is an error on `gateway`'s errors topic, of this type; returns it.
pub(crate) async fn next_error(c: &mut MqttClient, gateway: &str, error_type: &str) -> Value {
    match c.recv().await {
        Packet::Publish(p) => {
            assert_eq!(p.topic, format!("/devices/{gateway}/errors"));
            assert_eq!(p.qos, QoS::AtMostOnce);
            let v: Value = serde_json::from_slice(&p.payload).expect("errors are JSON");
            assert_eq!(v["error_type"], error_type, "{v}");
            assert!(v["description"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
            v
        }
        other => panic!("expected {error_type} on the errors topic, got {other:?}"),
    }
}

/// The gateway's own QoS 1 message is acknowledged next: no PUBACK for a refused message came
/// before it (PUBACKs go out in order). It goes to a topic of its own.
async fn no_puback_pending(c: &mut MqttClient, gateway: &str) {
    c.publish_acked(&format!("/devices/{gateway}/events/probe"), b"gateway still here").await;
}

/// Attaches and expects the PUBACK.
pub(crate) async fn attach(c: &mut MqttClient, device: &str, payload: &[u8]) {
    c.publish_acked(&format!("/devices/{device}/attach"), payload).await;
}

/// Attaches, expects a GATEWAY_ATTACHMENT_ERROR and no PUBACK; returns the error.
async fn attach_refused(c: &mut MqttClient, gateway: &str, device: &str, payload: &[u8]) -> Value {
    let topic = format!("/devices/{device}/attach");
    let id = c.publish(&topic, QoS::AtLeastOnce, payload).await;
    let e = next_error(c, gateway, "GATEWAY_ATTACHMENT_ERROR").await;
    assert_eq!(e["device_id"], device, "{e}");
    assert_eq!(e["mqtt_message_info"], json!({"message_type": "PUBLISH", "topic": topic, "packet_id": id}));
    no_puback_pending(c, gateway).await;
    e
}

async fn messages(s: &TestServer, topic: &str) -> Vec<Value> {
    let (st, body) = s.get(&format!("projects/{PROJECT}/topics/{topic}/messages?from=earliest&maxMessages=1000")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body["messages"].as_array().cloned().unwrap_or_default()
}

/// The attributes IoT Core put on a device's messages, whoever relayed them: no gateway id.
fn attributes_of(device: &Value, subfolder: Option<&str>) -> Value {
    let mut a = json!({
        "deviceId": device["id"],
        "deviceNumId": device["numId"],
        "deviceRegistryId": "plant",
        "deviceRegistryLocation": "us-central1",
        "projectId": PROJECT,
    });
    if let Some(s) = subfolder {
        a["subFolder"] = json!(s);
    }
    a
}

#[tokio::test]
async fn an_association_only_gateway_speaks_for_its_bound_device() {
    let s = TestServer::start().await;
    let reg = registry(&s).await;
    gateway(&s, &reg, "hub", "ASSOCIATION_ONLY").await;
    let dev = leaf(&s, &reg, "lamp").await;
    leaf(&s, &reg, "stranger").await;
    bind(&s, &reg, "hub", "lamp").await;
    let mut c = connect_gateway(&s, &reg, "hub").await;

    // Refusals keep the connection open: unknown device (the sample's own trigger), unbound one.
    let e = attach_refused(&mut c, "hub", "invalid_device_id", b"").await;
    assert!(e["description"].as_str().unwrap().contains("does not exist"), "{e}");
    let e = attach_refused(&mut c, "hub", "no", b"").await;
    assert!(e["description"].as_str().unwrap().contains("not a valid device ID"), "{e}");
    attach_refused(&mut c, "hub", "ghost", b"{}").await;
    let e = attach_refused(&mut c, "hub", "stranger", b"{}").await;
    assert!(e["description"].as_str().unwrap().contains("not bound"), "{e}");
    attach_refused(&mut c, "hub", "lamp", b"not json").await;

    // The sample's payload; any device JWT is ignored by ASSOCIATION_ONLY.
    attach(&mut c, "lamp", br#"{"authorization" : ""}"#).await;
    attach(&mut c, "lamp", br#"{"authorization": "whatever"}"#).await;

    // Telemetry and state land as the device's, exactly as if it had sent them itself.
    c.publish_acked("/devices/lamp/events", b"on").await;
    c.publish_acked("/devices/lamp/events/alerts", b"hot").await;
    c.publish("/devices/lamp/events", QoS::AtMostOnce, b"qos0").await;
    c.publish_acked("/devices/lamp/state", b"lamp state").await;
    c.publish_acked("/devices/hub/state", b"gateway state").await;
    let telemetry = messages(&s, "telemetry").await;
    assert_eq!(telemetry.len(), 2, "{telemetry:?}");
    assert_eq!(telemetry[0]["data"], b64(b"on"));
    assert_eq!(telemetry[0]["attributes"], attributes_of(&dev, None));
    assert_eq!(telemetry[1]["data"], b64(b"qos0"));
    let alerts = messages(&s, "alerts").await;
    assert_eq!(alerts[0]["attributes"], attributes_of(&dev, Some("alerts")));
    let states = messages(&s, "state").await;
    assert_eq!(states[0]["attributes"], attributes_of(&dev, None));
    assert_eq!(states[1]["attributes"]["deviceId"], "hub");
    let (_, lamp_states) = s.get(&format!("{reg}/devices/lamp/states")).await;
    assert_eq!(lamp_states["deviceStates"][0]["binaryData"], b64(b"lamp state"));

    // The device's config, at once and on every update; the gateway's PUBACK acknowledges it.
    let lamp = format!("{reg}/devices/lamp");
    assert_eq!(
        c.subscribe(&[("/devices/lamp/config", QoS::AtLeastOnce), ("/devices/lamp/commands/#", QoS::AtLeastOnce)])
            .await,
        [SubAckCode::Granted(QoS::AtLeastOnce), SubAckCode::Granted(QoS::AtLeastOnce)]
    );
    let Packet::Publish(p) = c.recv().await else { panic!("expected the device's config") };
    assert_eq!((p.topic.as_str(), p.payload.is_empty()), ("/devices/lamp/config", true));
    c.send(Packet::PubAck(p.packet_id.unwrap())).await;
    let (st, _) = s.post(&format!("{lamp}:modifyCloudToDeviceConfig"), json!({"binaryData": b64(b"dim")})).await;
    assert_eq!(st, StatusCode::OK);
    let Packet::Publish(p) = c.recv().await else { panic!("expected the new config") };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("/devices/lamp/config", &b"dim"[..]));
    c.send(Packet::PubAck(p.packet_id.unwrap())).await;
    eventually("the device's config acknowledged", async || {
        let (_, v) = s.get(&format!("{lamp}/configVersions")).await;
        v["deviceConfigs"][0]["deviceAckTime"].is_string().then_some(())
    })
    .await;

    // A command to the device reaches the gateway, and waits for its PUBACK.
    let (base, lamp2) = (s.base.clone(), lamp.clone());
    let send = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/v1/{lamp2}:sendCommandToDevice"))
            .bearer_auth(TOKEN)
            .json(&json!({"binaryData": b64(b"blink"), "subfolder": "led"}))
            .send()
            .await
            .unwrap()
            .status()
    });
    let Packet::Publish(p) = c.recv().await else { panic!("expected the command") };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("/devices/lamp/commands/led", &b"blink"[..]));
    c.send(Packet::PubAck(p.packet_id.unwrap())).await;
    assert_eq!(send.await.unwrap(), StatusCode::OK);

    // The device shows the gateway it was last reached through.
    let (_, d) = s.get(&lamp).await;
    assert_eq!(d["gatewayConfig"]["lastAccessedGatewayId"], "hub", "{d}");
    assert!(d["gatewayConfig"]["lastAccessedGatewayTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{d}");
    assert!(d["lastEventTime"].is_string() && d["lastStateTime"].is_string(), "{d}");

    // Detach: the device's topics are closed to the gateway again.
    c.publish_acked("/devices/lamp/detach", b"{}").await;
    let id = c.publish("/devices/lamp/state", QoS::AtLeastOnce, b"after detach").await;
    let e = next_error(&mut c, "hub", "GATEWAY_DEVICE_NOT_FOUND").await;
    assert_eq!(
        e,
        json!({"error_type": "GATEWAY_DEVICE_NOT_FOUND", "device_id": "lamp",
            "description": "The specified device with ID 'lamp' is not attached to the gateway.",
            "mqtt_message_info": {"message_type": "PUBLISH", "topic": "/devices/lamp/state", "packet_id": id}})
    );
    let (st, body) = s.post(&format!("{lamp}:sendCommandToDevice"), json!({"binaryData": b64(b"x")})).await;
    expect_error(st, &body, 400, "FAILED_PRECONDITION");
    no_puback_pending(&mut c, "hub").await;
    s.stop().await;
}

#[tokio::test]
async fn each_auth_method_accepts_and_refuses_as_it_should() {
    let s = TestServer::start().await;
    let reg = registry(&s).await;
    for (gw, method) in [
        ("gw-token", "DEVICE_AUTH_TOKEN_ONLY"),
        ("gw-both", "ASSOCIATION_AND_DEVICE_AUTH_TOKEN"),
        ("gw-none", "GATEWAY_AUTH_METHOD_UNSPECIFIED"),
    ] {
        gateway(&s, &reg, gw, method).await;
    }
    for d in ["free", "bound"] {
        leaf(&s, &reg, d).await;
    }
    for gw in ["gw-both", "gw-none", "gw-token"] {
        bind(&s, &reg, gw, "bound").await;
    }
    let with = |token: &str| format!(r#"{{"authorization": "{token}"}}"#).into_bytes();
    let gateway_token = es256_token(PROJECT); // valid, but not the device's key
    let t = now();
    let other_audience = jwt(&fixture("rsa_private.pem"), "other-project", t, t + 3600);
    let expired = jwt(&fixture("rsa_private.pem"), PROJECT, t - 7200, t - 3600);

    // DEVICE_AUTH_TOKEN_ONLY: the device's own valid JWT, checked like a CONNECT password; no
    // binding needed.
    let mut c = connect_gateway(&s, &reg, "gw-token").await;
    for bad in [b"{}".to_vec(), with(""), with(&gateway_token), with(&other_audience), with(&expired), with("x.y")] {
        attach_refused(&mut c, "gw-token", "free", &bad).await;
    }
    attach(&mut c, "free", &with(&leaf_token())).await;
    attach(&mut c, "bound", &with(&leaf_token())).await;
    c.publish_acked("/devices/free/events", b"from an unbound device").await;

    // ASSOCIATION_AND_DEVICE_AUTH_TOKEN: both.
    let mut c = connect_gateway(&s, &reg, "gw-both").await;
    attach_refused(&mut c, "gw-both", "free", &with(&leaf_token())).await;
    attach_refused(&mut c, "gw-both", "bound", b"{}").await;
    attach_refused(&mut c, "gw-both", "bound", &with(&gateway_token)).await;
    attach(&mut c, "bound", &with(&leaf_token())).await;

    // GATEWAY_AUTH_METHOD_UNSPECIFIED: no device at all.
    let mut c = connect_gateway(&s, &reg, "gw-none").await;
    let e = attach_refused(&mut c, "gw-none", "bound", &with(&leaf_token())).await;
    assert!(e["description"].as_str().unwrap().contains("GATEWAY_AUTH_METHOD_UNSPECIFIED"), "{e}");
    // Changing the method applies to the next attach, without reconnecting.
    let (st, _) = s
        .patch(
            &format!("{reg}/devices/gw-none?updateMask=gatewayConfig.gatewayAuthMethod"),
            json!({"gatewayConfig": {"gatewayAuthMethod": "ASSOCIATION_ONLY"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    attach(&mut c, "bound", b"").await;
    // A gateway cannot attach a gateway, nor itself.
    attach_refused(&mut c, "gw-none", "gw-token", b"").await;
    attach_refused(&mut c, "gw-none", "gw-none", b"").await;

    // A device that is not a gateway may not attach anything: its connection is closed.
    let mut d = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(d.connect(&format!("{reg}/devices/free"), Some(&leaf_token()), 60).await, Rc::Accepted);
    d.publish("/devices/bound/attach", QoS::AtLeastOnce, b"{}").await;
    assert!(d.closed_within(Duration::from_secs(2)).await, "attach from a non-gateway closes");
    s.stop().await;
}

#[tokio::test]
async fn mistakes_are_reported_on_the_errors_topic_and_the_gateway_stays() {
    let s = TestServer::start().await;
    let reg = registry(&s).await;
    gateway(&s, &reg, "hub", "ASSOCIATION_ONLY").await;
    leaf(&s, &reg, "valve").await;
    leaf(&s, &reg, "idle").await;
    bind(&s, &reg, "hub", "valve").await;
    bind(&s, &reg, "hub", "idle").await;
    let mut c = connect_gateway(&s, &reg, "hub").await;
    attach(&mut c, "valve", b"{}").await;

    // GATEWAY_DEVICE_NOT_FOUND: publishing, subscribing or detaching for a device not attached.
    let id = c.publish("/devices/idle/events", QoS::AtLeastOnce, b"x").await;
    let e = next_error(&mut c, "hub", "GATEWAY_DEVICE_NOT_FOUND").await;
    assert_eq!(e["mqtt_message_info"]["packet_id"], json!(id));
    assert_eq!(c.subscribe(&[("/devices/idle/config", QoS::AtLeastOnce)]).await, [SubAckCode::Failure]);
    let e = next_error(&mut c, "hub", "GATEWAY_DEVICE_NOT_FOUND").await;
    assert_eq!(e["mqtt_message_info"]["message_type"], "SUBSCRIBE");
    c.publish("/devices/idle/detach", QoS::AtLeastOnce, b"{}").await;
    next_error(&mut c, "hub", "GATEWAY_DEVICE_NOT_FOUND").await;

    // GATEWAY_INVALID_MQTT_TOPIC: topics outside the layout.
    for topic in ["/devices/valve/bogus", "/not/a/device/topic", "/devices/valve/events//x"] {
        c.publish(topic, QoS::AtLeastOnce, b"x").await;
        let e = next_error(&mut c, "hub", "GATEWAY_INVALID_MQTT_TOPIC").await;
        assert_eq!(e["mqtt_message_info"]["topic"], topic);
    }
    assert_eq!(c.subscribe(&[("/devices/valve/commands/led", QoS::AtMostOnce)]).await, [SubAckCode::Failure]);
    next_error(&mut c, "hub", "GATEWAY_INVALID_MQTT_TOPIC").await;

    // GATEWAY_WRONG_MESSAGE_TYPE: publishing where devices subscribe, and the other way round.
    c.publish("/devices/valve/config", QoS::AtMostOnce, b"x").await;
    next_error(&mut c, "hub", "GATEWAY_WRONG_MESSAGE_TYPE").await;
    c.publish("/devices/hub/errors", QoS::AtMostOnce, b"x").await;
    next_error(&mut c, "hub", "GATEWAY_WRONG_MESSAGE_TYPE").await;
    assert_eq!(c.subscribe(&[("/devices/valve/events", QoS::AtMostOnce)]).await, [SubAckCode::Failure]);
    next_error(&mut c, "hub", "GATEWAY_WRONG_MESSAGE_TYPE").await;

    // GATEWAY_UNEXPECTED_PACKET_ID: a PUBACK for nothing the server sent.
    c.send(Packet::PubAck(4242)).await;
    let e = next_error(&mut c, "hub", "GATEWAY_UNEXPECTED_PACKET_ID").await;
    assert_eq!(e["mqtt_message_info"], json!({"message_type": "PUBACK", "packet_id": 4242}));

    // GATEWAY_DETACHMENT_DEVICE_ERROR: a message the device may not send (a second state within
    // a second) detaches it, without a PUBACK; the error is recorded on the device.
    c.publish_acked("/devices/valve/state", b"open").await;
    c.publish("/devices/valve/state", QoS::AtLeastOnce, b"closed").await;
    let e = next_error(&mut c, "hub", "GATEWAY_DETACHMENT_DEVICE_ERROR").await;
    assert_eq!(e["device_id"], "valve");
    c.publish("/devices/valve/events", QoS::AtLeastOnce, b"gone").await;
    next_error(&mut c, "hub", "GATEWAY_DEVICE_NOT_FOUND").await;
    no_puback_pending(&mut c, "hub").await;
    let (_, d) = s.get(&format!("{reg}/devices/valve")).await;
    assert_eq!(d["lastErrorStatus"]["code"], 8, "{d}");

    // Without the errors subscription, the same mistakes go unreported and still do not close.
    c.send(Packet::Unsubscribe(ferrocore_mqtt_codec::Unsubscribe {
        packet_id: 77,
        filters: vec!["/devices/hub/errors".into()],
    }))
    .await;
    assert_eq!(c.recv().await, Packet::UnsubAck(77));
    c.publish("/devices/idle/events", QoS::AtMostOnce, b"x").await;
    no_puback_pending(&mut c, "hub").await;
    s.stop().await;
}

#[tokio::test]
async fn unbinding_blocking_deleting_or_a_direct_connection_detach_a_device() {
    let s = TestServer::start().await;
    let reg = registry(&s).await;
    gateway(&s, &reg, "hub", "ASSOCIATION_ONLY").await;
    for d in ["a", "b", "c", "d"] {
        leaf(&s, &reg, &format!("dev-{d}")).await;
        bind(&s, &reg, "hub", &format!("dev-{d}")).await;
    }
    let mut c = connect_gateway(&s, &reg, "hub").await;
    for d in ["a", "b", "c", "d"] {
        attach(&mut c, &format!("dev-{d}"), b"{}").await;
    }
    let (st, _) =
        s.post(&format!("{reg}:unbindDeviceFromGateway"), json!({"gatewayId": "hub", "deviceId": "dev-a"})).await;
    assert_eq!(st, StatusCode::OK);
    let e = next_error(&mut c, "hub", "GATEWAY_DETACHMENT_DEVICE_ERROR").await;
    assert_eq!(e["device_id"], "dev-a");
    assert!(e["description"].as_str().unwrap().contains("unbound"), "{e}");

    let (st, _) = s.patch(&format!("{reg}/devices/dev-b?updateMask=blocked"), json!({"blocked": true})).await;
    assert_eq!(st, StatusCode::OK);
    let e = next_error(&mut c, "hub", "GATEWAY_DETACHMENT_DEVICE_ERROR").await;
    assert_eq!(e["device_id"], "dev-b");
    assert!(e["description"].as_str().unwrap().contains("blocked"), "{e}");
    attach_refused(&mut c, "hub", "dev-b", b"{}").await;

    let (st, _) = s.delete(&format!("{reg}/devices/dev-c")).await;
    assert_eq!(st, StatusCode::OK);
    let e = next_error(&mut c, "hub", "GATEWAY_DETACHMENT_DEVICE_ERROR").await;
    assert_eq!(e["device_id"], "dev-c");

    // The newest wins: the device connecting on its own takes it from the gateway...
    assert_eq!(c.subscribe(&[("/devices/dev-d/commands/#", QoS::AtMostOnce)]).await.len(), 1);
    let mut direct = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(direct.connect(&format!("{reg}/devices/dev-d"), Some(&leaf_token()), 60).await, Rc::Accepted);
    let e = next_error(&mut c, "hub", "GATEWAY_DETACHMENT_DEVICE_ERROR").await;
    assert_eq!(e["device_id"], "dev-d");
    let dev_d = format!("{reg}/devices/dev-d");
    let (st, body) = s.post(&format!("{dev_d}:sendCommandToDevice"), json!({"binaryData": b64(b"x")})).await;
    expect_error(st, &body, 400, "FAILED_PRECONDITION"); // the direct connection did not subscribe
    // ...and attaching it again takes it back, closing the direct connection.
    attach(&mut c, "dev-d", b"{}").await;
    assert!(direct.closed_within(Duration::from_secs(2)).await, "the older presence goes");
    assert_eq!(
        c.subscribe(&[("/devices/dev-d/commands/#", QoS::AtMostOnce)]).await,
        [SubAckCode::Granted(QoS::AtMostOnce)]
    );
    let (st, _) = s.post(&format!("{dev_d}:sendCommandToDevice"), json!({"binaryData": b64(b"qos0")})).await;
    assert_eq!(st, StatusCode::OK);
    let Packet::Publish(p) = c.recv().await else { panic!("expected the command") };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("/devices/dev-d/commands", &b"qos0"[..]));

    // The gateway's disconnect detaches everything it carried.
    c.send(Packet::Disconnect).await;
    assert!(c.closed_within(Duration::from_secs(2)).await);
    eventually("dev-d no longer reachable", async || {
        let (st, _) = s.post(&format!("{dev_d}:sendCommandToDevice"), json!({"binaryData": b64(b"x")})).await;
        (st == StatusCode::BAD_REQUEST).then_some(())
    })
    .await;

    // Blocking the gateway disconnects it, and with it its devices.
    let mut c = connect_gateway(&s, &reg, "hub").await;
    attach(&mut c, "dev-d", b"{}").await;
    assert_eq!(c.subscribe(&[("/devices/dev-d/commands/#", QoS::AtMostOnce)]).await.len(), 1);
    let (st, _) = s.patch(&format!("{reg}/devices/hub?updateMask=blocked"), json!({"blocked": true})).await;
    assert_eq!(st, StatusCode::OK);
    assert!(c.closed_within(Duration::from_secs(2)).await, "a blocked gateway is disconnected");
    eventually("dev-d unreachable with its gateway blocked", async || {
        let (st, _) = s.post(&format!("{dev_d}:sendCommandToDevice"), json!({"binaryData": b64(b"x")})).await;
        (st == StatusCode::BAD_REQUEST).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn a_gateway_attaches_at_most_a_thousand_devices_at_once() {
    // The 100 packets per second of one connection would make this take ten seconds.
    let s = TestServer::start_configured(|_| None, |c| c.mqtt.max_messages_per_second = 100_000).await;
    let reg = registry(&s).await;
    gateway(&s, &reg, "hub", "DEVICE_AUTH_TOKEN_ONLY").await;
    let ids: Vec<String> = (0..=1000).map(|i| format!("node-{i:04}")).collect();
    // Created a few at a time: the test server's store takes them one transaction each.
    for chunk in ids.chunks(50) {
        let creates = chunk.iter().map(|id| leaf(&s, &reg, id));
        futures_join_all(creates).await;
    }
    let mut c = connect_gateway(&s, &reg, "hub").await;
    let payload = format!(r#"{{"authorization": "{}"}}"#, leaf_token());
    let mut sent = Vec::new();
    for id in &ids {
        sent.push(c.publish(&format!("/devices/{id}/attach"), QoS::AtLeastOnce, payload.as_bytes()).await.unwrap());
    }
    let (mut acked, mut errors) = (0, Vec::new());
    while acked + errors.len() < ids.len() {
        let Some(packet) = c.recv_within(Duration::from_secs(60)).await else {
            let (_, d) = s.get(&format!("{reg}/devices/hub")).await;
            panic!("closed after {acked} PUBACKs and {errors:?}: {d}");
        };
        match packet {
            Packet::PubAck(_) => acked += 1,
            Packet::Publish(p) => errors.push(serde_json::from_slice::<Value>(&p.payload).unwrap()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(acked, 1000);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["error_type"], "GATEWAY_ATTACHMENT_ERROR");
    assert_eq!(errors[0]["device_id"], "node-1000");
    // Detaching one makes room.
    c.publish_acked("/devices/node-0000/detach", b"{}").await;
    c.publish_acked("/devices/node-1000/attach", payload.as_bytes()).await;
    c.publish_acked("/devices/node-1000/events", b"the thousand and first").await;
    s.stop().await;
}

/// Awaits all the futures, concurrently on this task.
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|v| v.expect("every future completed")).collect()
}

async fn http(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    jwt: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = s.client.request(method, format!("{}/v1/{path}", s.base)).bearer_auth(jwt);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let st = resp.status();
    (st, resp.json().await.unwrap())
}

#[tokio::test]
async fn http_gateway_info_both_ways() {
    use reqwest::Method;
    let s = TestServer::start().await;
    let reg = registry(&s).await;
    gateway(&s, &reg, "hub", "ASSOCIATION_ONLY").await;
    gateway(&s, &reg, "gw-token", "DEVICE_AUTH_TOKEN_ONLY").await;
    gateway(&s, &reg, "gw-none", "GATEWAY_AUTH_METHOD_UNSPECIFIED").await;
    let meter = leaf(&s, &reg, "meter").await;
    leaf(&s, &reg, "loner").await;
    for gw in ["hub", "gw-token", "gw-none"] {
        bind(&s, &reg, gw, "meter").await;
    }
    let (gw_jwt, dev_jwt) = (es256_token(PROJECT), leaf_token());
    let (gw_path, meter_path) = (format!("{reg}/devices/hub"), format!("{reg}/devices/meter"));
    let (st, _) =
        s.post(&format!("{meter_path}:modifyCloudToDeviceConfig"), json!({"binaryData": b64(b"meter cfg")})).await;
    assert_eq!(st, StatusCode::OK);

    // delegatedDeviceId: the gateway's path and JWT, for a bound device.
    let delegated = json!({"delegatedDeviceId": "meter"});
    let (st, body) = http(
        &s,
        Method::POST,
        &format!("{gw_path}:publishEvent"),
        &gw_jwt,
        Some(json!({"binaryData": b64(b"kwh=5"), "gatewayInfo": delegated})),
    )
    .await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, _) = http(
        &s,
        Method::POST,
        &format!("{gw_path}:setState"),
        &gw_jwt,
        Some(json!({"state": {"binaryData": b64(b"ok")}, "gateway_info": {"delegated_device_id": "meter"}})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, cfg) =
        http(&s, Method::GET, &format!("{gw_path}/config?gatewayInfo.delegatedDeviceId=meter"), &gw_jwt, None).await;
    assert_eq!((st, cfg), (StatusCode::OK, json!({"version": "2", "binaryData": b64(b"meter cfg")})));

    // gatewayId: the device's path and JWT, through a gateway it is bound to.
    let (st, _) = http(
        &s,
        Method::POST,
        &format!("{meter_path}:publishEvent"),
        &dev_jwt,
        Some(json!({"binaryData": b64(b"kwh=6"), "subFolder": "alerts", "gatewayInfo": {"gatewayId": "gw-token"}})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, cfg) =
        http(&s, Method::GET, &format!("{meter_path}/config?gateway_info.gateway_id=hub"), &dev_jwt, None).await;
    assert_eq!((st, cfg["version"].clone()), (StatusCode::OK, json!("2")));

    let telemetry = messages(&s, "telemetry").await;
    assert_eq!(telemetry[0]["data"], b64(b"kwh=5"));
    assert_eq!(telemetry[0]["attributes"], attributes_of(&meter, None));
    let alerts = messages(&s, "alerts").await;
    assert_eq!(alerts[0]["attributes"], attributes_of(&meter, Some("alerts")));
    let (_, states) = s.get(&format!("{meter_path}/states")).await;
    assert_eq!(states["deviceStates"][0]["binaryData"], b64(b"ok"));
    let (_, d) = s.get(&meter_path).await;
    assert_eq!(d["gatewayConfig"]["lastAccessedGatewayId"], "hub", "the last access was the getConfig through hub");

    // Refusals: 403 for what the rules forbid, with nothing routed.
    let refusals = [
        // Not bound.
        (format!("{gw_path}:publishEvent"), gw_jwt.clone(), json!({"delegatedDeviceId": "loner"})),
        (format!("{reg}/devices/loner:publishEvent"), dev_jwt.clone(), json!({"gatewayId": "hub"})),
        // No device token over HTTP for a method that needs one.
        (format!("{reg}/devices/gw-token:publishEvent"), gw_jwt.clone(), json!({"delegatedDeviceId": "meter"})),
        // No device may use this gateway.
        (format!("{meter_path}:publishEvent"), dev_jwt.clone(), json!({"gatewayId": "gw-none"})),
        (format!("{reg}/devices/gw-none:publishEvent"), gw_jwt.clone(), json!({"delegatedDeviceId": "meter"})),
        // A device that is not a gateway cannot act for another; a device is no gateway.
        (format!("{meter_path}:publishEvent"), dev_jwt.clone(), json!({"delegatedDeviceId": "loner"})),
        (format!("{meter_path}:publishEvent"), dev_jwt.clone(), json!({"gatewayId": "loner"})),
        (format!("{meter_path}:publishEvent"), dev_jwt.clone(), json!({"gatewayId": "ghost"})),
    ];
    for (path, token, info) in refusals {
        let (st, body) =
            http(&s, Method::POST, &path, &token, Some(json!({"binaryData": b64(b"no"), "gatewayInfo": info}))).await;
        expect_error(st, &body, 403, "PERMISSION_DENIED");
    }
    // The JWT must still be the path's: the device's token does not open the gateway's path.
    let (st, body) = http(
        &s,
        Method::POST,
        &format!("{gw_path}:publishEvent"),
        &dev_jwt,
        Some(json!({"binaryData": b64(b"no"), "gatewayInfo": delegated})),
    )
    .await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    let (st, body) = http(
        &s,
        Method::POST,
        &format!("{gw_path}:publishEvent"),
        &gw_jwt,
        Some(json!({"binaryData": b64(b"no"), "gatewayInfo": {"gatewayId": "hub", "delegatedDeviceId": "meter"}})),
    )
    .await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert_eq!(messages(&s, "telemetry").await.len(), 1, "nothing refused was routed");
    s.stop().await;
}

#[tokio::test]
async fn the_simulator_acts_as_a_gateway_for_its_devices() {
    use crate::cli_verbs::Cli;
    let s = TestServer::start().await;
    let reg = registry(&s).await;
    gateway(&s, &reg, "hub", "ASSOCIATION_ONLY").await;
    for d in ["bulb-1", "bulb-2"] {
        leaf(&s, &reg, d).await;
        bind(&s, &reg, "hub", d).await;
    }
    leaf(&s, &reg, "unbound").await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&s, dir.path());
    let key = format!("{FIXTURES}/ec_private.pem");
    let hub = format!("{reg}/devices/hub");
    let args = ["device", "simulate", "--device", &hub, "--key", &key, "--gateway-for", "bulb-1,bulb-2,unbound"];
    let mut sim = cli.spawn(&[&args[..], &["--rate", "20"]].concat());
    sim.err("Attached bulb-1.").await;
    sim.err("Attached bulb-2.").await;
    sim.err("Gateway error GATEWAY_ATTACHMENT_ERROR for unbound: ").await;
    sim.out("config for bulb-2: (empty)").await;
    let (st, _) = s
        .post(&format!("{reg}/devices/bulb-1:sendCommandToDevice"), json!({"binaryData": b64(b"hi"), "subfolder": "x"}))
        .await;
    assert_eq!(st, StatusCode::OK);
    sim.out("command [x] for bulb-1: hi").await;
    eventually("telemetry for both devices", async || {
        let ids: Vec<Value> =
            messages(&s, "telemetry").await.iter().map(|m| m["attributes"]["deviceId"].clone()).collect();
        (ids.contains(&json!("bulb-1")) && ids.contains(&json!("bulb-2"))).then_some(())
    })
    .await;
    sim.interrupt();
    assert!(sim.finish().await.success());
    // Through --device-key, the attach carries the device's own JWT. (A second apart: the new
    // run reports the gateway's state at once, and the server takes one a second.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, _) = s
        .patch(
            &format!("{hub}?updateMask=gatewayConfig.gatewayAuthMethod"),
            json!({"gatewayConfig": {"gatewayAuthMethod": "DEVICE_AUTH_TOKEN_ONLY"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let rsa = format!("{FIXTURES}/rsa_private.pem");
    let out = cli
        .run(
            &[
                &args[..6],
                &[
                    "--gateway-for",
                    "unbound",
                    "--device-key",
                    &rsa,
                    "--count",
                    "3",
                    "--rate",
                    "50",
                    "--duration",
                    "20s",
                ],
            ]
            .concat(),
        )
        .await
        .success();
    assert!(out.stderr.contains("Attached unbound."), "{}", out.stderr);
    assert!(out.stderr.contains("Sent 3 events (3 acknowledged)"), "{}", out.stderr);
    s.stop().await;
}
