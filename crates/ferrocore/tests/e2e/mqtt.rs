//! The MQTT bridge end to end: real TLS, real JWTs, the topics Cloud IoT Core firmware uses.

use crate::device::*;
use crate::harness::*;
use crate::wait::eventually;
use ferrocore_mqtt_codec::{ConnectReturnCode as Rc, Packet, QoS, SubAckCode};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const PROJECT: &str = "mqtt-proj";

/// A registry with a default telemetry topic, an `alerts` subfolder topic and a state topic, and
/// one ES256 device in it. Returns (registry path, client id).
async fn setup(s: &TestServer, device: &str) -> (String, String) {
    let parent = format!("projects/{PROJECT}/locations/us-central1");
    let (st, _) = s
        .post(
            &format!("{parent}/registries"),
            json!({
                "id": "fleet",
                "eventNotificationConfigs": [
                    {"subfolderMatches": "alerts", "pubsubTopicName": format!("projects/{PROJECT}/topics/alerts")},
                    {"pubsubTopicName": format!("projects/{PROJECT}/topics/telemetry")}
                ],
                "stateNotificationConfig": {"pubsubTopicName": format!("projects/{PROJECT}/topics/state")}
            }),
        )
        .await;
    assert!(st == StatusCode::OK || st == StatusCode::CONFLICT);
    let reg = format!("{parent}/registries/fleet");
    s.device(&reg, device, json!({})).await;
    (reg.clone(), format!("{reg}/devices/{device}"))
}

async fn connected(s: &TestServer, client_id: &str) -> MqttClient {
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(c.connect(client_id, Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    c
}

async fn messages(s: &TestServer, topic: &str) -> Vec<Value> {
    let (st, body) = s.get(&format!("projects/{PROJECT}/topics/{topic}/messages?from=earliest&maxMessages=1000")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body["messages"].as_array().cloned().unwrap_or_default()
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[tokio::test]
async fn telemetry_and_state_reach_their_topics_with_iot_core_attributes() {
    let s = TestServer::start().await;
    let (reg, id) = setup(&s, "sensor-1").await;
    let mut c = connected(&s, &id).await;
    c.publish_acked("/devices/sensor-1/events", b"t=21").await;
    c.publish_acked("/devices/sensor-1/events/alerts", b"fire").await;
    c.publish_acked("/devices/sensor-1/events/other/sub", b"routed to default").await;
    c.publish("/devices/sensor-1/events", QoS::AtMostOnce, b"qos0").await;
    c.publish_acked("/devices/sensor-1/state", b"on").await;

    let telemetry = messages(&s, "telemetry").await;
    let payloads: Vec<&str> = telemetry.iter().map(|m| m["data"].as_str().unwrap()).collect();
    assert_eq!(payloads[..2], [b64(b"t=21"), b64(b"routed to default")]);
    let a = &telemetry[0]["attributes"];
    assert_eq!(a["deviceId"], "sensor-1");
    assert_eq!(a["deviceRegistryId"], "fleet");
    assert_eq!(a["deviceRegistryLocation"], "us-central1");
    assert_eq!(a["projectId"], PROJECT);
    assert!(a["deviceNumId"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(a.get("subFolder").is_none(), "no subfolder attribute without a subfolder");
    assert_eq!(telemetry[1]["attributes"]["subFolder"], "other/sub");
    let alerts = messages(&s, "alerts").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["data"], b64(b"fire"));
    assert_eq!(alerts[0]["attributes"]["subFolder"], "alerts");
    let states = messages(&s, "state").await;
    assert_eq!(states[0]["data"], b64(b"on"));

    let (_, list) = s.get(&format!("{reg}/devices/sensor-1/states")).await;
    assert_eq!(list["deviceStates"][0]["binaryData"], b64(b"on"));
    // The QoS 0 message arrives too, once the connection has handled it.
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Packet::PingResp);
    assert_eq!(messages(&s, "telemetry").await.len(), 3);
    let (_, dev) = s.get(&format!("{reg}/devices/sensor-1")).await;
    for field in ["lastEventTime", "lastStateTime", "lastHeartbeatTime"] {
        assert!(dev[field].as_str().is_some_and(|t| t.ends_with('Z')), "{field}: {dev}");
    }
    assert_eq!(dev["state"]["binaryData"], b64(b"on"));
    s.stop().await;
}

#[tokio::test]
async fn config_arrives_on_subscribe_and_on_every_update_and_acks_are_recorded() {
    // Config updates are limited to one per second per device: the test moves the server's clock.
    let clock = std::sync::Arc::new(ferrocore_core::clock::ManualClock::new(ferrocore_model::Timestamp::now()));
    let server_clock = ferrocore::server::ServerClock(clock.clone());
    let s = TestServer::start_configured(|_| None, |c| c.clock = server_clock).await;
    let (reg, id) = setup(&s, "cfg-dev").await;
    let dev = format!("{reg}/devices/cfg-dev");
    let (st, _) = s.post(&format!("{dev}:modifyCloudToDeviceConfig"), json!({"binaryData": b64(b"v2")})).await;
    assert_eq!(st, StatusCode::OK);
    let mut c = connected(&s, &id).await;
    // QoS 2 is granted as 1.
    assert_eq!(
        c.subscribe(&[("/devices/cfg-dev/config", QoS::ExactlyOnce)]).await,
        [SubAckCode::Granted(QoS::AtLeastOnce)]
    );
    let Packet::Publish(p) = c.recv().await else { panic!("expected the current config") };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("/devices/cfg-dev/config", &b"v2"[..]));
    c.send(Packet::PubAck(p.packet_id.unwrap())).await;

    clock.advance(Duration::from_secs(1));
    let (st, _) = s.post(&format!("{dev}:modifyCloudToDeviceConfig"), json!({"binaryData": b64(b"v3")})).await;
    assert_eq!(st, StatusCode::OK);
    let Packet::Publish(p) = c.recv().await else { panic!("expected the new config") };
    assert_eq!(&p.payload[..], b"v3");
    c.send(Packet::PubAck(p.packet_id.unwrap())).await;
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Packet::PingResp);

    let (_, versions) = s.get(&format!("{dev}/configVersions")).await;
    let v = &versions["deviceConfigs"];
    assert_eq!(v[0]["version"], "3");
    assert!(v[0]["deviceAckTime"].as_str().is_some(), "{versions}");
    assert!(v[1]["deviceAckTime"].as_str().is_some(), "{versions}");
    assert!(v[2].get("deviceAckTime").is_none(), "version 1 was never sent: {versions}");
    // The PUBACK is handled after the PINGRESP went out; wait for its effect.
    eventually("lastConfigAckTime and lastConfigSendTime on the device", async || {
        let (_, d) = s.get(&dev).await;
        (d["lastConfigAckTime"].is_string() && d["lastConfigSendTime"].is_string()).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn commands_reach_subscribed_devices_and_wait_for_the_puback() {
    let s = TestServer::start().await;
    let (reg, id) = setup(&s, "cmd-dev").await;
    let dev = format!("{reg}/devices/cmd-dev");
    let mut c = connected(&s, &id).await;
    let (st, body) = s.post(&format!("{dev}:sendCommandToDevice"), json!({"binaryData": b64(b"x")})).await;
    assert!(expect_error(st, &body, 400, "FAILED_PRECONDITION").contains("is not subscribed to the commands topic"));
    assert_eq!(
        c.subscribe(&[("/devices/cmd-dev/commands/#", QoS::AtLeastOnce)]).await,
        [SubAckCode::Granted(QoS::AtLeastOnce)]
    );

    let base = s.base.clone();
    let send = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/v1/{dev}:sendCommandToDevice"))
            .bearer_auth(TOKEN)
            .json(&json!({"binaryData": b64(b"reboot"), "subfolder": "power/main"}))
            .send()
            .await
            .unwrap()
            .status()
    });
    let Packet::Publish(p) = c.recv().await else { panic!("expected a command") };
    assert_eq!(p.topic, "/devices/cmd-dev/commands/power/main");
    assert_eq!(&p.payload[..], b"reboot");
    assert!(!send.is_finished(), "the API waits for the device's PUBACK");
    c.send(Packet::PubAck(p.packet_id.unwrap())).await;
    assert_eq!(send.await.unwrap(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn every_refusal_gets_its_connack_and_a_good_device_still_connects() {
    let s = TestServer::start().await;
    let (reg, id) = setup(&s, "good").await;
    s.device(&reg, "blocked-dev", json!({"blocked": true})).await;
    s.device(
        &reg,
        "rsa-dev",
        json!({"credentials": [{"publicKey": {"format": "RSA_X509_PEM", "key": fixture("rsa_cert.pem")}}]}),
    )
    .await;
    let ec = fixture("ec_private.pem");
    let t = now();
    let cases: Vec<(String, Option<String>, Rc)> = vec![
        ("not-a-device-path".into(), Some(es256_token(PROJECT)), Rc::IdentifierRejected),
        (id.clone(), None, Rc::BadUsernameOrPassword),
        // A malformed token is refused like any other: the code says nothing about the device.
        (id.clone(), Some("not.a.jwt".into()), Rc::NotAuthorized),
        (id.clone(), Some(jwt(&ec, "other-project", t, t + 3600)), Rc::NotAuthorized),
        (id.clone(), Some(jwt(&ec, PROJECT, t - 7200, t - 3600)), Rc::NotAuthorized),
        (id.clone(), Some(jwt(&ec, PROJECT, t + 3600, t + 7200)), Rc::NotAuthorized),
        (id.clone(), Some(jwt(&ec, PROJECT, t, t + 48 * 3600)), Rc::NotAuthorized),
        (id.clone(), Some(jwt(&fixture("rsa_private.pem"), PROJECT, t, t + 3600)), Rc::NotAuthorized),
        (format!("{reg}/devices/ghost"), Some(es256_token(PROJECT)), Rc::NotAuthorized),
        (format!("{reg}/devices/blocked-dev"), Some(es256_token(PROJECT)), Rc::NotAuthorized),
    ];
    for (client_id, password, want) in cases {
        let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
        assert_eq!(c.connect(&client_id, password.as_deref(), 60).await, want, "{client_id} {password:?}");
        assert!(c.closed_within(Duration::from_secs(2)).await, "refused connections are closed");
    }
    // RS256 with an X.509 credential works.
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    let rs = jwt(&fixture("rsa_private.pem"), PROJECT, t, t + 3600);
    assert_eq!(c.connect(&format!("{reg}/devices/rsa-dev"), Some(&rs), 60).await, Rc::Accepted);

    // MQTT 3.1 (protocol level 3) gets CONNACK 1.
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    let mut v31 = vec![0x10, 0x00];
    let body = [&[0x00, 0x06][..], b"MQIsdp", &[3, 0x02, 0, 60, 0, 1], b"x"].concat();
    v31[1] = body.len() as u8;
    v31.extend(body);
    c.send_raw(&v31).await;
    assert_eq!(
        c.recv().await,
        Packet::ConnAck(ferrocore_mqtt_codec::ConnAck {
            session_present: false,
            code: Rc::UnacceptableProtocolVersion
        })
    );

    // MQTT disabled on the registry.
    let (st, _) = s
        .patch(&format!("{reg}?updateMask=mqtt_config"), json!({"mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"}}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(c.connect(&id, Some(&es256_token(PROJECT)), 60).await, Rc::NotAuthorized);
    let (st, _) = s
        .patch(&format!("{reg}?updateMask=mqtt_config"), json!({"mqttConfig": {"mqttEnabledState": "MQTT_ENABLED"}}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let mut c = connected(&s, &id).await;
    c.publish_acked("/devices/good/events", b"after all that").await;

    // Silence after the TCP connect: closed at the CONNECT deadline.
    let mut idle = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert!(idle.closed_within(Duration::from_secs(5)).await, "CONNECT deadline");
    s.stop().await;
}

#[tokio::test]
async fn protocol_violations_close_the_connection_and_are_recorded() {
    let s = TestServer::start().await;
    let (reg, id) = setup(&s, "rude").await;
    s.device(&reg, "other", json!({})).await;

    let mut c = connected(&s, &id).await;
    assert_eq!(
        c.subscribe(&[
            ("/devices/other/config", QoS::AtLeastOnce),
            ("#", QoS::AtMostOnce),
            ("/devices/rude/commands/x", QoS::AtMostOnce)
        ])
        .await,
        [SubAckCode::Failure, SubAckCode::Failure, SubAckCode::Failure]
    );
    c.publish("/devices/rude/events", QoS::ExactlyOnce, b"qos2").await;
    assert!(c.closed_within(Duration::from_secs(2)).await, "QoS 2 publish closes the connection");

    let mut c = connected(&s, &id).await;
    c.publish("/devices/other/events", QoS::AtLeastOnce, b"spoof").await;
    assert!(c.closed_within(Duration::from_secs(2)).await, "publishing for another device closes");
    let mut c = connected(&s, &id).await;
    c.publish("/random/topic", QoS::AtMostOnce, b"x").await;
    assert!(c.closed_within(Duration::from_secs(2)).await);
    let mut c = connected(&s, &id).await;
    c.send_raw(&[0xf0, 0x00]).await; // packet type 15 is reserved
    assert!(c.closed_within(Duration::from_secs(2)).await, "a malformed packet closes");

    eventually("the last error recorded on the device", async || {
        let (_, d) = s.get(&format!("{reg}/devices/rude")).await;
        (d["lastErrorStatus"]["message"].is_string() && d["lastErrorTime"].is_string()).then_some(())
    })
    .await;
    assert!(messages(&s, "telemetry").await.is_empty(), "nothing was routed");
    s.stop().await;
}

#[tokio::test]
async fn one_connection_per_device_and_blocking_disconnects() {
    let s = TestServer::start().await;
    let (reg, id) = setup(&s, "twin").await;
    let mut first = connected(&s, &id).await;
    let mut second = connected(&s, &id).await;
    assert!(first.closed_within(Duration::from_secs(2)).await, "the newer connection takes over");
    second.publish_acked("/devices/twin/events", b"still here").await;

    let (st, _) = s.patch(&format!("{reg}/devices/twin?updateMask=blocked"), json!({"blocked": true})).await;
    assert_eq!(st, StatusCode::OK);
    assert!(second.closed_within(Duration::from_secs(2)).await, "blocking disconnects");
    let mut again = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(again.connect(&id, Some(&es256_token(PROJECT)), 60).await, Rc::NotAuthorized);

    // Deleting a connected device disconnects it too.
    s.device(&reg, "doomed", json!({})).await;
    let mut doomed = connected(&s, &format!("{reg}/devices/doomed")).await;
    let (st, _) = s.delete(&format!("{reg}/devices/doomed")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(doomed.closed_within(Duration::from_secs(2)).await, "deleting disconnects");
    s.stop().await;
}

#[tokio::test]
async fn no_matching_topic_closes_the_connection() {
    let s = TestServer::start().await;
    let parent = format!("projects/{PROJECT}/locations/us-central1");
    let (st, _) = s.post(&format!("{parent}/registries"), json!({"id": "no-topics"})).await;
    assert_eq!(st, StatusCode::OK);
    let reg = format!("{parent}/registries/no-topics");
    s.device(&reg, "lonely", json!({})).await;
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(c.connect(&format!("{reg}/devices/lonely"), Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    // State needs no telemetry topic.
    c.publish_acked("/devices/lonely/state", b"ok").await;
    c.publish("/devices/lonely/events", QoS::AtLeastOnce, b"nowhere").await;
    assert!(c.closed_within(Duration::from_secs(2)).await);
    eventually("FAILED_PRECONDITION recorded on the device", async || {
        let (_, d) = s.get(&format!("{reg}/devices/lonely")).await;
        (d["lastErrorStatus"]["code"] == 9).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn the_token_expiry_cuts_the_connection() {
    // The server's clock stands still at T, so the test decides when a token expires instead of
    // waiting for it in real time.
    let t = now();
    let clock =
        std::sync::Arc::new(ferrocore_core::clock::ManualClock::new(ferrocore_model::Timestamp::from_unix_seconds(t)));
    let server_clock = ferrocore::server::ServerClock(clock.clone());
    let s = TestServer::start_configured(|_| None, move |c| c.clock = server_clock).await;
    let (reg, id) = setup(&s, "expiring").await;
    // Expired exactly 600 s before T: still within the 10-minute skew, with no time left. The
    // connection is accepted, then cut at once.
    let token = jwt(&fixture("ec_private.pem"), PROJECT, t - 1200, t - 600);
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(c.connect(&id, Some(&token), 60).await, Rc::Accepted);
    assert!(c.closed_within(Duration::from_secs(2)).await, "cut when the token expires");
    eventually("the token expiry recorded on the device", async || {
        let (_, d) = s.get(&format!("{reg}/devices/expiring")).await;
        d["lastErrorStatus"]["message"].as_str().is_some_and(|m| m.contains("token expired")).then_some(())
    })
    .await;
    // One second later by the server's clock the same token is refused outright.
    clock.advance(Duration::from_secs(1));
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(c.connect(&id, Some(&token), 60).await, Rc::NotAuthorized);
    s.stop().await;
}

#[tokio::test]
async fn plain_mqtt_and_keep_alive() {
    let s = TestServer::start().await;
    let (_, id) = setup(&s, "plain-dev").await;
    let mut c = MqttClient::plain(s.mqtt).await;
    assert_eq!(c.connect(&id, Some(&es256_token(PROJECT)), 1).await, Rc::Accepted);
    c.publish_acked("/devices/plain-dev/events", b"over tcp").await;
    // Keep-alive 1 s: silence for 1.5 s closes the connection.
    assert!(c.closed_within(Duration::from_secs(4)).await, "keep-alive enforced");
    s.stop().await;
}

#[tokio::test]
async fn payload_and_rate_limits_hold() {
    let s = TestServer::start().await;
    let (reg, id) = setup(&s, "noisy").await;
    let mut c = connected(&s, &id).await;
    c.publish_acked("/devices/noisy/events", &vec![7u8; 256 * 1024]).await;
    c.publish("/devices/noisy/events", QoS::AtLeastOnce, &vec![7u8; 256 * 1024 + 1]).await;
    assert!(c.closed_within(Duration::from_secs(2)).await, "telemetry over 256 KiB closes the connection");

    let mut c = connected(&s, &id).await;
    c.publish("/devices/noisy/state", QoS::AtLeastOnce, &vec![1u8; 64 * 1024 + 1]).await;
    assert!(c.closed_within(Duration::from_secs(2)).await, "state over 64 KiB closes");

    let mut c = connected(&s, &id).await;
    c.publish_acked("/devices/noisy/state", b"one").await;
    c.publish("/devices/noisy/state", QoS::AtLeastOnce, b"two").await;
    assert!(c.closed_within(Duration::from_secs(2)).await, "a second state within a second closes");

    // 100 messages per second per connection; the 101st in the same second closes it.
    let mut c = connected(&s, &id).await;
    for i in 0..101u32 {
        c.publish("/devices/noisy/events", QoS::AtMostOnce, &i.to_be_bytes()).await;
    }
    assert!(c.closed_within(Duration::from_secs(2)).await, "the rate limit closes the connection");
    eventually("RESOURCE_EXHAUSTED recorded on the device", async || {
        let (_, d) = s.get(&format!("{reg}/devices/noisy")).await;
        (d["lastErrorStatus"]["code"] == 8).then_some(())
    })
    .await;
    let n = messages(&s, "telemetry").await.len();
    assert!((1..=101).contains(&n), "{n}");
    let (_, states) = s.get(&format!("{reg}/devices/noisy/states")).await;
    assert_eq!(states["deviceStates"].as_array().unwrap().len(), 1, "only the acknowledged state is kept");
    s.stop().await;
}

#[tokio::test]
async fn pipelined_qos1_publishes_are_acknowledged_in_order_and_kept_in_order() {
    let s = TestServer::start().await;
    let (_, id) = setup(&s, "burst").await;
    let mut c = connected(&s, &id).await;
    let mut ids = vec![];
    // Everything is sent before any PUBACK is read: the server keeps them in flight together.
    for i in 0..90u32 {
        ids.push(c.publish("/devices/burst/events", QoS::AtLeastOnce, format!("m{i}").as_bytes()).await.unwrap());
    }
    ids.push(c.publish("/devices/burst/state", QoS::AtLeastOnce, b"after the burst").await.unwrap());
    let mut acked = vec![];
    for _ in 0..91 {
        match c.recv().await {
            Packet::PubAck(id) => acked.push(id),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    assert_eq!(acked, ids, "PUBACKs come in the order of the PUBLISHes, state included");
    let stored: Vec<String> =
        messages(&s, "telemetry").await.iter().map(|m| m["data"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = (0..90).map(|i| b64(format!("m{i}").as_bytes())).collect();
    assert_eq!(stored, expected, "stored in the order sent");
    s.stop().await;
}

#[tokio::test]
async fn packets_sent_together_with_connect_are_served_at_once() {
    use bytes::{Bytes, BytesMut};
    use ferrocore_mqtt_codec::{Connect, Publish, encode};
    let s = TestServer::start().await;
    let (_, id) = setup(&s, "eager").await;
    let mut c = MqttClient::plain(s.mqtt).await;
    let mut buf = BytesMut::new();
    let token = es256_token(PROJECT);
    encode(
        &Packet::Connect(Connect {
            protocol_level: 4,
            clean_session: true,
            keep_alive: 60,
            client_id: id.clone(),
            will: None,
            username: Some("unused".into()),
            password: Some(Bytes::copy_from_slice(token.as_bytes())),
        }),
        &mut buf,
    );
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "/devices/eager/events".into(),
        packet_id: Some(7),
        payload: Bytes::from_static(b"early"),
    };
    encode(&Packet::Publish(publish), &mut buf);
    c.send_raw(&buf).await;
    assert!(matches!(c.recv().await, Packet::ConnAck(_)));
    assert_eq!(c.recv_within(Duration::from_secs(2)).await, Some(Packet::PubAck(7)), "served without more input");
    s.stop().await;
}

#[tokio::test]
async fn a_command_the_device_never_acknowledges_ends_in_deadline_exceeded() {
    let s = TestServer::start().await;
    let (reg, id) = setup(&s, "silent").await;
    let mut c = connected(&s, &id).await;
    assert_eq!(
        c.subscribe(&[("/devices/silent/commands/#", QoS::AtLeastOnce)]).await,
        [SubAckCode::Granted(QoS::AtLeastOnce)]
    );
    // The test server waits 1 s for the PUBACK (IoT Core: 60 s); this device never sends it.
    let (st, body) =
        s.post(&format!("{reg}/devices/silent:sendCommandToDevice"), json!({"binaryData": b64(b"hello?")})).await;
    expect_error(st, &body, 504, "DEADLINE_EXCEEDED");
    let Packet::Publish(p) = c.recv().await else { panic!("the command was delivered") };
    assert_eq!(&p.payload[..], b"hello?");
    s.stop().await;
}

/// The value of an unlabelled gauge on `/metrics` (loopback needs no token).
async fn gauge(s: &TestServer, name: &str) -> i64 {
    let text = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("{name} in {text}"));
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

/// A quiet device over plain MQTT is parked (its session leaves its task), one over TLS is not;
/// both still take a command and its QoS 1 acknowledgement reaches the API, the parked one by
/// being woken.
#[tokio::test]
async fn quiet_plain_devices_park_tls_ones_do_not_and_both_are_served() {
    let s = TestServer::start().await;
    let (reg, plain_id) = setup(&s, "quiet-plain").await;
    let (_, tls_id) = setup(&s, "quiet-tls").await;
    let mut plain = MqttClient::plain(s.mqtt).await;
    assert_eq!(plain.connect(&plain_id, Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    let mut tls = connected(&s, &tls_id).await;
    for (c, dev) in [(&mut plain, "quiet-plain"), (&mut tls, "quiet-tls")] {
        let filter = format!("/devices/{dev}/commands/#");
        assert_eq!(c.subscribe(&[(&filter, QoS::AtLeastOnce)]).await, [SubAckCode::Granted(QoS::AtLeastOnce)]);
    }
    // The first park comes 0.1 s after the device's last packet.
    eventually("the plain device parked", async || {
        (gauge(&s, "ferrocore_mqtt_parked_connections").await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gauge(&s, "ferrocore_mqtt_parked_connections").await, 1, "only the plain device parks");

    for (c, dev) in [(&mut plain, "quiet-plain"), (&mut tls, "quiet-tls")] {
        let base = s.base.clone();
        let name = format!("{reg}/devices/{dev}");
        let send = tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/{name}:sendCommandToDevice"))
                .bearer_auth(TOKEN)
                .json(&json!({"binaryData": b64(b"wake")}))
                .send()
                .await
                .unwrap()
                .status()
        });
        let Packet::Publish(p) = c.recv().await else { panic!("expected the command for {dev}") };
        assert_eq!((p.topic.as_str(), &p.payload[..]), (format!("/devices/{dev}/commands").as_str(), &b"wake"[..]));
        c.send(Packet::PubAck(p.packet_id.unwrap())).await;
        assert_eq!(send.await.unwrap(), StatusCode::OK, "{dev}");
    }
    plain.publish_acked("/devices/quiet-plain/events", b"after a park").await;
    s.stop().await;
}
