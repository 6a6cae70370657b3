//! Device activity logs end to end: real devices over MQTT and TLS (and the HTTP bridge) at the
//! registry's or their own `logLevel`, read back with `GET .../registries/R/logs` in Cloud
//! Logging's shape; and `lastErrorTime` / `lastErrorStatus` after a refused message.

use crate::device::*;
use crate::harness::*;
use crate::wait::eventually;
use ferrocore_mqtt_codec::{ConnectReturnCode as Rc, Packet, QoS};
use ferrocore_proto::iot;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PROJECT: &str = "logs-proj";

/// A registry with a telemetry topic at `level`; returns its path.
async fn registry(s: &TestServer, id: &str, level: &str) -> String {
    s.registry_with(PROJECT, id, json!({ "logLevel": level })).await
}

/// Every entry of the registry matching `query` (e.g. `deviceId=d`), following the page tokens.
async fn entries(s: &TestServer, reg: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (st, body) = s.get(&format!("{reg}/logs?{query}&pageSize=1000&pageToken={token}")).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let page = body["entries"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
        token = body["nextPageToken"].as_str().expect("a page with entries has a token").to_owned();
    }
}

fn event_types(entries: &[Value]) -> Vec<String> {
    entries.iter().map(|e| e["jsonPayload"]["eventType"].as_str().unwrap_or("?").to_owned()).collect()
}

/// Waits until the device's log holds an entry of `event_type`; returns the device's entries.
async fn logged(s: &TestServer, reg: &str, device: &str, event_type: &str) -> Vec<Value> {
    eventually(&format!("{event_type} of {device} in the log"), async || {
        let e = entries(s, reg, &format!("deviceId={device}")).await;
        event_types(&e).iter().any(|t| t == event_type).then_some(e)
    })
    .await
}

async fn connect(s: &TestServer, reg: &str, id: &str) -> MqttClient {
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(c.connect(&format!("{reg}/devices/{id}"), Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    c
}

/// Connects, publishes one telemetry message (acknowledged) and disconnects cleanly.
async fn connect_publish_disconnect(s: &TestServer, reg: &str, id: &str) {
    let mut c = connect(s, reg, id).await;
    c.publish_acked(&format!("/devices/{id}/events"), b"hello").await;
    c.send(Packet::Disconnect).await;
    assert!(c.closed_within(std::time::Duration::from_secs(5)).await);
}

#[tokio::test]
async fn info_logs_connections_in_cloud_loggings_shape_but_not_publishes() {
    let s = TestServer::start().await;
    let reg = registry(&s, "info-reg", "INFO").await;
    let dev = s.device(&reg, "dev-info", json!({})).await;
    connect_publish_disconnect(&s, &reg, "dev-info").await;

    let all = logged(&s, &reg, "dev-info", "DISCONNECT").await;
    assert_eq!(event_types(&all), ["CONNECT", "DISCONNECT"], "publishes are DEBUG: {all:#?}");
    let connect = &all[0];
    assert_eq!(connect["logName"], format!("projects/{PROJECT}/logs/cloudiot.googleapis.com%2Fdevice_activity"));
    assert_eq!(connect["resource"]["type"], "cloudiot_device");
    assert_eq!(
        connect["resource"]["labels"],
        json!({"device_num_id": dev["numId"], "device_registry_id": "info-reg", "location": "us-central1",
               "project_id": PROJECT})
    );
    assert_eq!(connect["labels"]["device_id"], "dev-info");
    assert_eq!(connect["severity"], "INFO");
    for field in ["timestamp", "receiveTimestamp", "insertId"] {
        assert!(connect[field].as_str().is_some_and(|v| !v.is_empty()), "{field}: {connect}");
    }
    let p = &connect["jsonPayload"];
    assert_eq!(p["eventType"], "CONNECT");
    assert_eq!(p["protocol"], "MQTT");
    assert_eq!(p["clientIp"], "127.0.0.1");
    assert_eq!(p["serviceName"], "cloudiot.googleapis.com");
    assert_eq!(p["deviceId"], "dev-info");
    assert_eq!(p["status"]["code"], 0);
    let disconnect = &all[1]["jsonPayload"];
    assert_eq!(disconnect["disconnectType"], "CLIENT", "{disconnect}");
    assert_eq!(disconnect["status"]["code"], 0);
    assert_ne!(all[0]["insertId"], all[1]["insertId"]);
    assert!(all[0]["timestamp"].as_str() <= all[1]["timestamp"].as_str(), "oldest first");
    s.stop().await;
}

#[tokio::test]
async fn debug_logs_everything_none_nothing_and_the_device_level_wins() {
    let s = TestServer::start().await;
    let quiet = registry(&s, "quiet-reg", "NONE").await;
    s.device(&quiet, "dev-inherits", json!({})).await;
    s.device(&quiet, "dev-debug", json!({"logLevel": "DEBUG"})).await;
    let loud = registry(&s, "loud-reg", "DEBUG").await;
    s.device(&loud, "dev-silenced", json!({"logLevel": "NONE"})).await;
    s.device(&loud, "dev-loud", json!({})).await;

    // What these do is never logged; the entries the others log after them prove it was flushed.
    connect_publish_disconnect(&s, &quiet, "dev-inherits").await;
    connect_publish_disconnect(&s, &loud, "dev-silenced").await;

    let mut c = connect(&s, &quiet, "dev-debug").await;
    c.publish_acked("/devices/dev-debug/events/sub", b"one").await;
    c.subscribe(&[("/devices/dev-debug/config", QoS::AtLeastOnce)]).await;
    match c.recv().await {
        Packet::Publish(p) => {
            assert_eq!(p.topic, "/devices/dev-debug/config");
            c.send(Packet::PubAck(p.packet_id.expect("QoS 1"))).await;
        }
        other => panic!("expected the config, got {other:?}"),
    }
    let all = logged(&s, &quiet, "dev-debug", "CONFIG").await;
    let publish = all.iter().find(|e| e["jsonPayload"]["eventType"] == "PUBLISH").expect("DEBUG logs publishes");
    assert_eq!(publish["severity"], "DEBUG");
    assert_eq!(publish["jsonPayload"]["mqttTopic"], "/devices/dev-debug/events/sub");
    assert_eq!(publish["jsonPayload"]["publishFromDeviceTopicType"], "EVENT");
    let subscribe = all.iter().find(|e| e["jsonPayload"]["eventType"] == "SUBSCRIBE").expect("subscribe logged");
    assert_eq!(subscribe["jsonPayload"]["mqttTopic"], "/devices/dev-debug/config");
    // The acknowledgement comes after the config went out.
    let acked = eventually("the config acknowledgement in the log", async || {
        let e = entries(&s, &quiet, "deviceId=dev-debug&eventType=CONFIG").await;
        (e.len() == 2).then_some(e)
    })
    .await;
    assert_eq!(acked[0]["jsonPayload"]["delivery"], "SENT");
    assert_eq!(acked[1]["jsonPayload"]["delivery"], "ACKNOWLEDGED");
    assert_eq!(acked[1]["jsonPayload"]["configVersion"], "1");

    connect_publish_disconnect(&s, &loud, "dev-loud").await;
    let loud_entries = logged(&s, &loud, "dev-loud", "DISCONNECT").await;
    assert_eq!(event_types(&loud_entries), ["CONNECT", "PUBLISH", "DISCONNECT"]);

    assert!(entries(&s, &quiet, "deviceId=dev-inherits").await.is_empty(), "NONE on the registry logs nothing");
    assert!(entries(&s, &loud, "deviceId=dev-silenced").await.is_empty(), "NONE on the device overrides DEBUG");

    // A level changed while the device is known applies to its next messages.
    let (st, body) =
        s.patch(&format!("{loud}/devices/dev-silenced?updateMask=logLevel"), json!({"logLevel": "INFO"})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    connect_publish_disconnect(&s, &loud, "dev-silenced").await;
    let now_info = logged(&s, &loud, "dev-silenced", "DISCONNECT").await;
    assert_eq!(event_types(&now_info), ["CONNECT", "DISCONNECT"]);
    s.stop().await;
}

#[tokio::test]
async fn pages_filters_and_bad_requests() {
    let s = TestServer::start().await;
    let reg = registry(&s, "paged-reg", "DEBUG").await;
    s.device(&reg, "dev-paged", json!({})).await;
    s.device(&reg, "dev-other", json!({})).await;
    let mut c = connect(&s, &reg, "dev-paged").await;
    for i in 0..5 {
        c.publish_acked("/devices/dev-paged/events", format!("m{i}").as_bytes()).await;
    }
    c.send(Packet::Disconnect).await;
    assert!(c.closed_within(std::time::Duration::from_secs(5)).await);
    connect_publish_disconnect(&s, &reg, "dev-other").await;
    let all = logged(&s, &reg, "dev-other", "DISCONNECT").await;
    assert_eq!(event_types(&all), ["CONNECT", "PUBLISH", "DISCONNECT"]);
    let paged = entries(&s, &reg, "deviceId=dev-paged").await;
    assert_eq!(event_types(&paged), ["CONNECT", "PUBLISH", "PUBLISH", "PUBLISH", "PUBLISH", "PUBLISH", "DISCONNECT"]);

    // Pages of two walk the same entries in the same order.
    let mut walked = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let (st, body) = s.get(&format!("{reg}/logs?deviceId=dev-paged&pageSize=2&pageToken={token}")).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let page = body["entries"].as_array().cloned().unwrap_or_default();
        assert!(page.len() <= 2);
        if page.is_empty() {
            assert!(body.get("nextPageToken").is_none(), "an empty page ends the list: {body}");
            break;
        }
        walked.extend(page);
        token = body["nextPageToken"].as_str().unwrap().to_owned();
    }
    let ids = |v: &[Value]| v.iter().map(|e| e["insertId"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&walked), ids(&paged));

    let everything = entries(&s, &reg, "").await;
    assert_eq!(everything.len(), paged.len() + 3, "both devices");
    let publishes = entries(&s, &reg, "eventType=PUBLISH").await;
    assert_eq!(publishes.len(), 6);
    let info = entries(&s, &reg, "minSeverity=INFO").await;
    assert_eq!(event_types(&info), ["CONNECT", "DISCONNECT", "CONNECT", "DISCONNECT"]);
    assert!(entries(&s, &reg, "startTime=2200-01-01T00:00:00Z").await.is_empty());
    let first = paged[0]["timestamp"].as_str().unwrap();
    assert_eq!(entries(&s, &reg, &format!("deviceId=dev-paged&startTime={first}")).await.len(), paged.len());

    for bad in ["pageToken=not-a-token", "pageToken=ZGV2aWNlczpkZXYtMQ", "minSeverity=LOUD", "startTime=yesterday"] {
        let (st, body) = s.get(&format!("{reg}/logs?{bad}")).await;
        expect_error(st, &body, 400, "INVALID_ARGUMENT");
    }
    let (st, body) = s.get(&format!("projects/{PROJECT}/locations/us-central1/registries/ghost/logs")).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.call_as(None, reqwest::Method::GET, &format!("{reg}/logs"), None).await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    s.stop().await;
}

#[tokio::test]
async fn a_refused_message_sets_last_error_and_is_logged_at_error() {
    let s = TestServer::start().await;
    let reg = registry(&s, "errors-reg", "ERROR").await;
    let dev = s.device(&reg, "dev-err", json!({})).await;
    let (st, body) = s.get(&format!("{reg}/devices/dev-err")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body.get("lastErrorTime").is_none(), "no error yet: {body}");

    // Oversize telemetry: over 256 KiB, under the MQTT packet cap, so the core refuses it.
    let mut c = connect(&s, &reg, "dev-err").await;
    c.publish("/devices/dev-err/events", QoS::AtLeastOnce, &vec![b'x'; 256 * 1024 + 100]).await;
    assert!(c.closed_within(std::time::Duration::from_secs(5)).await, "the connection is closed");
    let device = eventually("lastErrorStatus after the oversize publish", async || {
        let (_, d) = s.get(&format!("{reg}/devices/dev-err")).await;
        d.get("lastErrorTime").is_some().then_some(d)
    })
    .await;
    assert_eq!(device["lastErrorStatus"]["code"], 3, "{device}");
    assert!(device["lastErrorStatus"]["message"].as_str().unwrap().contains("limit"), "{device}");

    // The same over gRPC.
    let mut g = s.grpc_client(Some(TOKEN)).await;
    let got = g
        .get_device(iot::GetDeviceRequest { name: format!("{reg}/devices/dev-err"), field_mask: None })
        .await
        .unwrap()
        .into_inner();
    assert!(got.last_error_time.is_some());
    assert_eq!(got.last_error_status.map(|st| st.code), Some(3));

    // At ERROR only the failures are logged: the refused publish and the disconnect it caused.
    let all = logged(&s, &reg, "dev-err", "DISCONNECT").await;
    assert_eq!(event_types(&all), ["PUBLISH", "DISCONNECT"], "{all:#?}");
    assert!(all.iter().all(|e| e["severity"] == "ERROR"));
    assert_eq!(all[0]["jsonPayload"]["status"]["code"], 3);
    assert_eq!(all[1]["jsonPayload"]["disconnectType"], "SERVER");

    // The HTTP bridge: a second state within a second is refused and recorded too.
    let token = es256_token(PROJECT);
    let state = |n: u8| json!({"state": {"binaryData": b64(&[n])}});
    let path = format!("{}/v1/{reg}/devices/dev-err:setState", s.base);
    let first = s.client.post(&path).bearer_auth(&token).json(&state(1)).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = s.client.post(&path).bearer_auth(&token).json(&state(2)).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let device = eventually("lastErrorStatus after the refused state", async || {
        let (_, d) = s.get(&format!("{reg}/devices/dev-err")).await;
        (d["lastErrorStatus"]["code"] == 8).then_some(d)
    })
    .await;
    assert!(device["lastErrorStatus"]["message"].as_str().unwrap().contains("once per second"), "{device}");
    let refused = eventually("the refused HTTP state in the log", async || {
        let e = entries(&s, &reg, "deviceId=dev-err&eventType=PUBLISH").await;
        e.into_iter().find(|e| e["jsonPayload"]["protocol"] == "HTTP")
    })
    .await;
    assert_eq!(refused["severity"], "ERROR");
    assert_eq!(refused["jsonPayload"]["publishFromDeviceTopicType"], "STATE");
    assert_eq!(refused["jsonPayload"]["status"]["code"], 8);
    assert_eq!(refused["jsonPayload"]["clientIp"], "127.0.0.1");
    let _ = dev;
    s.stop().await;
}

/// `ferrocore logs read`: JSON lines, text lines, filters, `--follow`, and errors as one line.
#[tokio::test]
async fn the_cli_reads_and_follows_the_logs() {
    use crate::cli_verbs::Cli;
    let s = TestServer::start().await;
    let reg = registry(&s, "cli-reg", "INFO").await;
    s.device(&reg, "dev-cli", json!({})).await;
    connect_publish_disconnect(&s, &reg, "dev-cli").await;
    logged(&s, &reg, "dev-cli", "DISCONNECT").await;

    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&s, dir.path());
    let base = ["logs", "read", "--project", PROJECT, "--registry", "cli-reg"];
    let out = cli.run(&[&base[..], &["--format", "json"]].concat()).await.success();
    let lines: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(event_types(&lines), ["CONNECT", "DISCONNECT"], "{}", out.stdout);

    let out = cli.run(&[&base[..], &["--device", "dev-cli", "--event-type", "CONNECT"]].concat()).await.success();
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(out.stdout.contains(" INFO  dev-cli CONNECT OK"), "{}", out.stdout);
    let out = cli.run(&[&base[..], &["--limit", "1", "--format", "json"]].concat()).await.success();
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);

    let out = cli.run(&[&base[..], &["--min-severity", "LOUD"]].concat()).await.failure();
    assert!(out.error().contains("INVALID_ARGUMENT"), "{}", out.stderr);

    let mut follow = cli.spawn(&[&base[..], &["--follow"]].concat());
    follow.expect(false, "DISCONNECT", 1).await;
    connect_publish_disconnect(&s, &reg, "dev-cli").await;
    follow.expect(false, "DISCONNECT", 2).await;
    assert_eq!(follow.stdout.count("dev-cli CONNECT OK"), 2);
    drop(follow);
    s.stop().await;
}

/// A gateway's attach, its messages for the device and its detach are logged on the device, with
/// the gateway's id; what goes wrong for the gateway is logged on the gateway. Over HTTP, a
/// device's publish is logged with `protocol: "HTTP"`.
#[tokio::test]
async fn gateways_and_the_http_bridge_are_logged() {
    let s = TestServer::start().await;
    let reg = registry(&s, "gw-reg", "DEBUG").await;
    s.device(
        &reg,
        "gw-1",
        json!({"gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"}}),
    )
    .await;
    s.device(&reg, "dev-behind", json!({})).await;
    let (st, body) =
        s.post(&format!("{reg}:bindDeviceToGateway"), json!({"gatewayId": "gw-1", "deviceId": "dev-behind"})).await;
    assert_eq!(st, StatusCode::OK, "{body}");

    let mut gw = connect(&s, &reg, "gw-1").await;
    gw.publish_acked("/devices/dev-behind/attach", b"{}").await;
    gw.publish_acked("/devices/dev-behind/events", b"for the device").await;
    gw.publish_acked("/devices/dev-behind/detach", b"{}").await;
    // Not attached any more: an error for the gateway, no PUBACK.
    gw.publish("/devices/dev-behind/events", QoS::AtLeastOnce, b"too late").await;

    let behind = logged(&s, &reg, "dev-behind", "DETACH_FROM_GATEWAY").await;
    assert_eq!(event_types(&behind), ["ATTACH_TO_GATEWAY", "PUBLISH", "DETACH_FROM_GATEWAY"]);
    assert!(behind.iter().all(|e| e["jsonPayload"]["gateway"]["id"] == "gw-1"), "{behind:#?}");
    assert_eq!(behind[1]["jsonPayload"]["mqttTopic"], "/devices/dev-behind/events");
    let errors = eventually("the gateway's error in its log", async || {
        let e = entries(&s, &reg, "deviceId=gw-1&minSeverity=ERROR").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(errors[0]["jsonPayload"]["gatewayErrorType"], "GATEWAY_DEVICE_NOT_FOUND");
    assert_eq!(errors[0]["jsonPayload"]["targetDeviceId"], "dev-behind");
    assert_eq!(errors[0]["jsonPayload"]["status"]["code"], 5);

    // Attached again, then the gateway goes: the device is detached with it.
    gw.publish_acked("/devices/dev-behind/attach", b"{}").await;
    gw.send(Packet::Disconnect).await;
    let detaches = eventually("the detach that came with the gateway's disconnect", async || {
        let e = entries(&s, &reg, "deviceId=dev-behind&eventType=DETACH_FROM_GATEWAY").await;
        (e.len() == 2).then_some(e)
    })
    .await;
    assert_eq!(detaches[1]["jsonPayload"]["reason"], "The gateway disconnected.");

    let (st, _) = s
        .call_as(
            Some(&format!("Bearer {}", es256_token(PROJECT))),
            reqwest::Method::POST,
            &format!("{reg}/devices/dev-behind:publishEvent"),
            Some(json!({"binaryData": b64(b"over http"), "subFolder": "sub"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let http = eventually("the HTTP publish in the log", async || {
        let e = entries(&s, &reg, "deviceId=dev-behind&eventType=PUBLISH").await;
        e.into_iter().find(|e| e["jsonPayload"]["protocol"] == "HTTP")
    })
    .await;
    assert_eq!(http["severity"], "DEBUG");
    assert_eq!(http["jsonPayload"]["publishFromDeviceTopicFolder"], "sub");
    assert_eq!(http["jsonPayload"]["clientIp"], "127.0.0.1");
    s.stop().await;
}

/// `--log-topic`: every stored entry is also a message on the topic, its data the LogEntry.
#[tokio::test]
async fn entries_are_routed_to_the_log_topic() {
    let topic = format!("projects/{PROJECT}/topics/device-logs");
    let routed = topic.clone();
    let s = TestServer::start_configured(|_| None, move |c| c.device_logs.topic = Some(routed)).await;
    let reg = registry(&s, "routed-reg", "INFO").await;
    s.device(&reg, "dev-routed", json!({})).await;
    connect_publish_disconnect(&s, &reg, "dev-routed").await;
    let stored = logged(&s, &reg, "dev-routed", "DISCONNECT").await;

    let messages = eventually("the entries on the log topic", async || {
        let (st, body) = s.get(&format!("{topic}/messages?from=earliest&maxMessages=100")).await;
        let m = body["messages"].as_array().cloned().unwrap_or_default();
        (st == StatusCode::OK && m.len() >= 2).then_some(m)
    })
    .await;
    let routed: Vec<Value> = messages
        .iter()
        .map(|m| {
            use base64::Engine;
            let data = base64::engine::general_purpose::STANDARD.decode(m["data"].as_str().unwrap()).unwrap();
            serde_json::from_slice(&data).unwrap()
        })
        .collect();
    assert_eq!(routed, stored, "the same LogEntries as the API serves");
    assert_eq!(messages[0]["attributes"]["deviceId"], "dev-routed");
    assert_eq!(messages[0]["attributes"]["eventType"], "CONNECT");
    assert_eq!(messages[0]["attributes"]["severity"], "INFO");
    s.stop().await;
}
