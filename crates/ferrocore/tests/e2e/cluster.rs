//! Two nodes as one service (`--store postgres://… --cluster nats://…`): a device on node A is
//! reached through node B's API (commands with their acknowledgement, configs), connecting to B
//! takes it over from A, blocking or re-keying it on A ends its session on B, registry and
//! identity changes on one node reach the other's caches, and each lists the other.
//!
//! Each test has its own database ([`TestDatabase`]) and its own subject prefix on the machine's
//! NATS server (127.0.0.1:4222). Without PostgreSQL or NATS the tests skip with a printed reason,
//! except under `CI=true`, where they fail.

use crate::device::{MqttClient, es256_token};
use crate::harness::{TestServer, b64, expect_error, fixture};
use crate::wait;
use ferrocore::server::{ClusterSettings, StoreLocation};
use ferrocore_mqtt_codec::{ConnectReturnCode, Packet, QoS};
use ferrocore_store::postgres::testing::TestDatabase;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const NATS: &str = "127.0.0.1:4222";
const PROJECT: &str = "cluster-proj";

/// True when NATS answers; false (with the reason printed) when the test should skip. Under
/// CI=true a missing NATS fails the test instead.
async fn nats_up() -> bool {
    let reachable = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(NATS)).await;
    if matches!(reachable, Ok(Ok(_))) {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "NATS is not running at {NATS} (CI=true)");
    eprintln!("skipping: NATS is not running at {NATS}");
    false
}

/// A fresh subject prefix, so that tests sharing the NATS server never hear each other.
fn fresh_prefix() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

/// A node `id` on `db` in the cluster `prefix` of the NATS server at `nats` (host:port), with
/// `configure` applied last.
async fn node(
    db: &TestDatabase,
    nats: &str,
    prefix: &str,
    id: &str,
    configure: impl FnOnce(&mut ferrocore::server::Config) + Send + 'static,
) -> TestServer {
    let (store, url, node_id, prefix) = (db.url(), format!("nats://{nats}"), id.to_owned(), prefix.to_owned());
    TestServer::start_configured(
        |_| None,
        move |c| {
            c.store = StoreLocation::Postgres(store);
            c.cluster = Some(ClusterSettings { url, node_id, prefix, log_replicas: 1 });
            // What a failed test leaves in the machine's NATS goes away by itself.
            c.topic_log.max_age = Duration::from_secs(3600);
            configure(c);
        },
    )
    .await
}

/// Waits until `s` lists `n` nodes (itself included).
async fn lists_nodes(s: &TestServer, n: usize) {
    wait::eventually("the nodes listed", async || {
        let (st, body) = s.get("cluster").await;
        (st == StatusCode::OK && body["nodes"].as_array().is_some_and(|v| v.len() == n)).then_some(())
    })
    .await;
}

/// Two nodes on one database and one fresh subject prefix (returned, for [`remove_streams`]),
/// each having heard the other.
async fn two_nodes(db: &TestDatabase) -> (TestServer, TestServer, String) {
    let prefix = fresh_prefix();
    let a = node(db, NATS, &prefix, "node-a", |_| {}).await;
    let b = node(db, NATS, &prefix, "node-b", |_| {}).await;
    // Each must have heard the other's heartbeat before it offers it anything.
    lists_nodes(&a, 2).await;
    lists_nodes(&b, 2).await;
    (a, b, prefix)
}

/// One Pull of up to `max` messages through `node`, acknowledged through it; the messages.
async fn pull_and_ack(node: &TestServer, sub: &str, max: u32) -> Vec<Value> {
    let (st, pulled) = node.post(&format!("{sub}:pull"), json!({ "maxMessages": max })).await;
    assert_eq!(st, StatusCode::OK, "{pulled}");
    let received = pulled["receivedMessages"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = received.iter().map(|m| m["ackId"].as_str().unwrap()).collect();
    if !ids.is_empty() {
        let (st, body) = node.post(&format!("{sub}:acknowledge"), json!({ "ackIds": ids })).await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }
    received.into_iter().map(|m| m["message"].clone()).collect()
}

/// A message's base64 `data` as text.
fn text(data: &Value) -> String {
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data.as_str().unwrap());
    String::from_utf8(bytes.unwrap()).unwrap()
}

fn client_id(device: &str) -> String {
    format!("projects/{PROJECT}/locations/us-central1/registries/reg/devices/{device}")
}

/// A device connected to `node` over TLS and subscribed to its config and commands.
async fn device_on(node: &TestServer, id: &str) -> MqttClient {
    let mut c = MqttClient::tls(node.mqtts, &node.ca_pem()).await;
    assert_eq!(c.connect(&client_id(id), Some(&es256_token(PROJECT)), 60).await, ConnectReturnCode::Accepted);
    c.subscribe(&[(&format!("/devices/{id}/config"), QoS::AtLeastOnce)]).await;
    let Packet::Publish(first) = c.recv().await else { panic!("expected the current config") };
    c.send(Packet::PubAck(first.packet_id.unwrap())).await;
    c.subscribe(&[(&format!("/devices/{id}/commands/#"), QoS::AtLeastOnce)]).await;
    c
}

#[tokio::test]
async fn commands_configs_and_takeover_cross_nodes() {
    let Some(db) = TestDatabase::create().await else { return };
    if !nats_up().await {
        return;
    }
    let (a, b, _) = two_nodes(&db).await;
    let registry = a.registry(PROJECT, "reg").await;
    a.device(&registry, "dev-1", json!({})).await;
    let dev = format!("{registry}/devices/dev-1");
    let mut on_a = device_on(&a, "dev-1").await;

    // A command through node B reaches the device on node A; B answers once the device acked.
    let base = b.base.clone();
    let path = format!("{dev}:sendCommandToDevice");
    let send = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/v1/{path}"))
            .bearer_auth(crate::harness::TOKEN)
            .json(&json!({"binaryData": b64(b"reboot"), "subfolder": "ops"}))
            .send()
            .await
            .unwrap()
            .status()
    });
    let Packet::Publish(p) = on_a.recv().await else { panic!("expected the command") };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("/devices/dev-1/commands/ops", &b"reboot"[..]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!send.is_finished(), "node B waits for the device's PUBACK on node A");
    on_a.send(Packet::PubAck(p.packet_id.unwrap())).await;
    assert_eq!(send.await.unwrap(), StatusCode::OK);

    // A device that does not ack: DEADLINE_EXCEEDED, as on one node.
    let (st, body) = b.post(&format!("{dev}:sendCommandToDevice"), json!({"binaryData": b64(b"again")})).await;
    expect_error(st, &body, 504, "DEADLINE_EXCEEDED");
    let Packet::Publish(_) = on_a.recv().await else { panic!("the unacked command arrived") };

    // A device connected nowhere: FAILED_PRECONDITION, quickly (every node answers).
    b.device(&registry, "dev-2", json!({})).await;
    let started = Instant::now();
    let (st, body) =
        b.post(&format!("{registry}/devices/dev-2:sendCommandToDevice"), json!({"binaryData": b64(b"x")})).await;
    expect_error(st, &body, 400, "FAILED_PRECONDITION");
    assert!(started.elapsed() < Duration::from_secs(1), "answered in {:?}", started.elapsed());

    // A config written through node B is pushed by node A.
    let (st, body) = b.post(&format!("{dev}:modifyCloudToDeviceConfig"), json!({"binaryData": b64(b"fan=on")})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let Packet::Publish(p) = on_a.recv().await else { panic!("expected the config") };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("/devices/dev-1/config", &b"fan=on"[..]));
    on_a.send(Packet::PubAck(p.packet_id.unwrap())).await;

    // Connecting to node B takes the device over: node A closes its session.
    let mut on_b = device_on(&b, "dev-1").await;
    assert!(on_a.closed_within(Duration::from_secs(5)).await, "node A ends the older session");
    let (_, conn) = a.get(&format!("{dev}/connection")).await;
    assert_eq!(conn["connected"], false, "{conn}");
    let (_, conn) = b.get(&format!("{dev}/connection")).await;
    assert_eq!(conn["connected"], true, "{conn}");

    // Blocking it through node A disconnects it from node B.
    let (st, body) = a.patch(&format!("{dev}?updateMask=blocked"), json!({"blocked": true})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(on_b.closed_within(Duration::from_secs(5)).await, "node B ends the blocked device's session");

    // Re-keying a device on node B disconnects it from node A.
    a.device(&registry, "dev-3", json!({})).await;
    let mut dev3 = device_on(&a, "dev-3").await;
    let rekey = json!({"credentials": [{"publicKey": {"format": "RSA_X509_PEM", "key": fixture("rsa_cert.pem")}}]});
    let (st, body) = b.patch(&format!("{registry}/devices/dev-3?updateMask=credentials"), rekey).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(dev3.closed_within(Duration::from_secs(5)).await, "a re-keyed device's session ends on its node");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn caches_and_membership_follow_the_other_node() {
    let Some(db) = TestDatabase::create().await else { return };
    if !nats_up().await {
        return;
    }
    let (a, b, _) = two_nodes(&db).await;

    let (st, nodes) = a.get("cluster").await;
    assert_eq!(st, StatusCode::OK, "{nodes}");
    let ids: Vec<&str> = nodes["nodes"].as_array().unwrap().iter().map(|n| n["nodeId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["node-a", "node-b"]);
    assert_eq!(nodes["nodes"][1]["httpAddress"], b.base.trim_start_matches("http://"));
    // `ferrocore cluster status` shows the same nodes.
    let base = b.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferrocore"))
            .args(["cluster", "status", "--server", &base, "--token", crate::harness::TOKEN])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("node-")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(table.contains("NODE") && table.contains("LAST_HEARTBEAT"), "{table}");

    // A registry cached by node A (a device published through it) is disabled on node B: node A
    // drops its copy and ends the registry's MQTT sessions.
    let registry = a.registry(PROJECT, "reg").await;
    a.device(&registry, "dev-1", json!({})).await;
    let mut c = device_on(&a, "dev-1").await;
    c.publish_acked("/devices/dev-1/events", b"t=1").await;
    let (st, body) = b
        .patch(
            &format!("{registry}?updateMask=mqttConfig"),
            json!({"mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // Node B answered once node A applied the change: A's sessions end right away.
    assert!(c.closed_within(Duration::from_secs(2)).await, "node A ends sessions of a registry node B disabled");
    let mut again = MqttClient::tls(a.mqtts, &a.ca_pem()).await;
    assert_ne!(
        again.connect(&client_id("dev-1"), Some(&es256_token(PROJECT)), 60).await,
        ConnectReturnCode::Accepted,
        "node A refuses the disabled registry's devices"
    );

    // An API token made on node A works on node B at once, and revoking it on B ends it on A.
    let (st, made) = a
        .post(
            &format!("projects/{PROJECT}/tokens"),
            json!({"principal": "user:ops@example.com", "role": "roles/cloudiot.viewer"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{made}");
    let bearer = format!("Bearer {}", made["token"].as_str().unwrap());
    let list = format!("projects/{PROJECT}/locations/us-central1/registries");
    wait::eventually("node B to take the new token", async || {
        (b.call_as(Some(&bearer), Method::GET, &list, None).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let (st, body) = b.delete(&format!("projects/{PROJECT}/tokens/{}", made["id"].as_str().unwrap())).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    wait::eventually("node A to refuse the revoked token", async || {
        (a.call_as(Some(&bearer), Method::GET, &list, None).await.0 == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;

    // A node that stops leaves the list once its heartbeats stop.
    b.stop().await;
    let started = Instant::now();
    loop {
        let (_, nodes) = a.get("cluster").await;
        if nodes["nodes"].as_array().is_some_and(|n| n.len() == 1) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "node-b still listed: {nodes}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    a.stop().await;
}

#[tokio::test]
async fn a_server_that_runs_alone_says_so() {
    let s = TestServer::start().await;
    let (st, body) = s.get("cluster").await;
    expect_error(st, &body, 400, "FAILED_PRECONDITION");
    s.stop().await;
}

/// A NATS server of the test's own, on a port of its own, so it can be stopped and started; its
/// JetStream keeps its streams in `dir` across restarts.
struct OwnNats {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnNats {
    fn start(port: u16, dir: &std::path::Path) -> Option<Self> {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "nats-server is not installed (CI=true)");
            eprintln!("skipping: nats-server is not installed");
            return None;
        };
        let child = std::process::Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Some(Self { port, child: Some(child) })
    }

    async fn wait_up(&self) {
        let addr = format!("127.0.0.1:{}", self.port);
        wait::eventually("nats-server to listen", async || tokio::net::TcpStream::connect(&addr).await.ok().map(drop))
            .await;
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn without_nats_cross_node_commands_are_unavailable_and_come_back_with_it() {
    let Some(db) = TestDatabase::create().await else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nats_dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = OwnNats::start(port, nats_dir.path()) else { return };
    nats.wait_up().await;
    let nats_at = format!("127.0.0.1:{port}");
    let a = node(&db, &nats_at, "outage", "node-a", |_| {}).await;
    let b = node(&db, &nats_at, "outage", "node-b", |_| {}).await;
    lists_nodes(&b, 2).await;
    let registry = a.registry(PROJECT, "reg").await;
    a.device(&registry, "dev-1", json!({})).await;
    let command = format!("{registry}/devices/dev-1:sendCommandToDevice");
    let mut on_a = device_on(&a, "dev-1").await;
    a.device(&registry, "sensor", json!({})).await;
    let mut sensor = device_on(&b, "sensor").await;
    sensor.publish_acked("/devices/sensor/events", b"before").await;

    nats.stop();
    // The client notices the lost connection within a moment; from then on, UNAVAILABLE.
    wait::eventually("UNAVAILABLE without NATS", async || {
        let (st, _) = b.post(&command, json!({"binaryData": b64(b"x")})).await;
        (st == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    // The node itself keeps serving what it holds.
    let (st, body) = a.get(&format!("{registry}/devices/dev-1")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // Telemetry cannot be made durable: no PUBACK (the session ends, so the device resends).
    let id = sensor.publish("/devices/sensor/events", QoS::AtLeastOnce, b"during").await.unwrap();
    if let Some(Packet::PubAck(got)) = sensor.recv_within(Duration::from_secs(5)).await {
        assert_ne!(got, id, "a PUBACK for a message the log never took");
    }
    let topic = format!("projects/{PROJECT}/topics/events");
    let (st, body) = b.get(&format!("{topic}/messages?from=earliest")).await;
    expect_error(st, &body, 503, "UNAVAILABLE");

    let Some(nats) = OwnNats::start(port, nats_dir.path()) else { return };
    nats.wait_up().await;
    // Telemetry is taken again once the node is back on NATS, and what was durable is still there.
    let mut sensor = device_on(&b, "sensor").await;
    wait::eventually("telemetry acknowledged again", async || {
        let id = sensor.publish("/devices/sensor/events", QoS::AtLeastOnce, b"after").await?;
        match sensor.recv_within(Duration::from_secs(3)).await {
            Some(Packet::PubAck(got)) if got == id => Some(()),
            Some(_) => None,
            None => {
                sensor = device_on(&b, "sensor").await;
                None
            }
        }
    })
    .await;
    let (st, body) = b.get(&format!("{topic}/messages?from=earliest")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let data: Vec<&str> = body["messages"].as_array().unwrap().iter().map(|m| m["data"].as_str().unwrap()).collect();
    assert_eq!(data.first(), Some(&b64(b"before").as_str()), "{body}");
    assert_eq!(data.last(), Some(&b64(b"after").as_str()), "{body}");
    // Both nodes reconnect by themselves (each at its own pace); then B reaches the device again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "node B never reached the device again");
        let base = b.base.clone();
        let path = command.clone();
        let mut send = tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/{path}"))
                .bearer_auth(crate::harness::TOKEN)
                .json(&json!({"binaryData": b64(b"back")}))
                .send()
                .await
                .unwrap()
                .status()
        });
        tokio::select! {
            status = &mut send => {
                // Not through yet (UNAVAILABLE, or node A not back on the bus): try again.
                assert_ne!(status.unwrap(), StatusCode::OK, "OK without the device receiving it");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            packet = on_a.recv() => {
                let Packet::Publish(p) = packet else { panic!("expected the command") };
                assert_eq!(&p.payload[..], b"back");
                on_a.send(Packet::PubAck(p.packet_id.unwrap())).await;
                assert_eq!(send.await.unwrap(), StatusCode::OK);
                break;
            }
        }
    }
    a.stop().await;
    b.stop().await;
}

/// A node run as the real binary, so that it can be killed with SIGKILL.
struct ChildNode {
    child: std::process::Child,
    http: String,
    mqtt: std::net::SocketAddr,
}

impl ChildNode {
    fn spawn(db: &TestDatabase, prefix: &str, dir: &std::path::Path) -> Self {
        Self::spawn_with(db, prefix, dir, &[])
    }

    fn spawn_with(db: &TestDatabase, prefix: &str, dir: &std::path::Path, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferrocore"))
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--http", "127.0.0.1:0", "--grpc", "off", "--mqtts", "off", "--mqtt", "127.0.0.1:0"])
            .args(["--store", &db.url(), "--cluster", &format!("nats://{NATS}"), "--node-id", "node-a"])
            .args(["--cluster-prefix", prefix, "--command-timeout-seconds", "1"])
            .args(extra)
            .env("FERROCORE_ADMIN_TOKEN", crate::harness::TOKEN)
            .env("FERROCORE_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start ferrocore");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .to_owned()
        };
        Self { http: format!("http://{}", addr("http")), mqtt: addr("mqtt").parse().unwrap(), child }
    }

    /// SIGKILL: no shutdown, no goodbye on the bus.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device on plain MQTT, subscribed to its commands.
async fn plain_device(addr: std::net::SocketAddr, id: &str) -> MqttClient {
    let mut c = MqttClient::plain(addr).await;
    assert_eq!(c.connect(&client_id(id), Some(&es256_token(PROJECT)), 60).await, ConnectReturnCode::Accepted);
    c.subscribe(&[(&format!("/devices/{id}/commands/#"), QoS::AtLeastOnce)]).await;
    c
}

/// Sends a command through `base` while the device acknowledges whatever arrives; the status.
async fn command_through(base: &str, command: &str, device: Option<&mut MqttClient>) -> StatusCode {
    let send = reqwest::Client::new()
        .post(format!("{base}/v1/{command}"))
        .bearer_auth(crate::harness::TOKEN)
        .json(&json!({"binaryData": b64(b"cmd")}))
        .send();
    let Some(device) = device else { return send.await.unwrap().status() };
    let acking = async {
        loop {
            if let Packet::Publish(p) = device.recv().await {
                device.send(Packet::PubAck(p.packet_id.unwrap())).await;
            }
        }
    };
    tokio::select! {
        r = send => r.unwrap().status(),
        () = acking => unreachable!(),
    }
}

#[tokio::test]
async fn a_killed_node_fails_its_commands_fast_and_rejoins_when_restarted() {
    let Some(db) = TestDatabase::create().await else { return };
    if !nats_up().await {
        return;
    }
    let prefix = fresh_prefix();
    let dir = tempfile::tempdir().unwrap();
    let a = ChildNode::spawn(&db, &prefix, &dir.path().join("a"));
    let b = node(&db, NATS, &prefix, "node-b", |_| {}).await;
    lists_nodes(&b, 2).await;
    let registry = b.registry(PROJECT, "reg").await;
    b.device(&registry, "dev-1", json!({})).await;
    let command = format!("{registry}/devices/dev-1:sendCommandToDevice");
    let mut device = plain_device(a.mqtt, "dev-1").await;
    assert_eq!(command_through(&b.base, &command, Some(&mut device)).await, StatusCode::OK);

    // SIGKILL node A under its device: a command through B fails within seconds, never OK.
    a.kill();
    let started = Instant::now();
    let status = command_through(&b.base, &command, None).await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::GATEWAY_TIMEOUT,
        "a command to a device on a dead node: {status}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "answered in {:?}", started.elapsed());

    // The device comes back through node B and is reachable at once.
    let mut device = plain_device(b.mqtt, "dev-1").await;
    assert_eq!(command_through(&b.base, &command, Some(&mut device)).await, StatusCode::OK);

    // A restarted node A rejoins by itself and reaches the device on B.
    let a = ChildNode::spawn(&db, &prefix, &dir.path().join("a"));
    lists_nodes(&b, 2).await;
    wait::eventually("node A to hear node B", async || {
        let resp = reqwest::Client::new()
            .get(format!("{}/v1/cluster", a.http))
            .bearer_auth(crate::harness::TOKEN)
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = resp.json().await.ok()?;
        body["nodes"].as_array().is_some_and(|n| n.len() == 2).then_some(())
    })
    .await;
    assert_eq!(command_through(&a.http, &command, Some(&mut device)).await, StatusCode::OK);
    drop(a);
    b.stop().await;
}

#[tokio::test]
async fn unbinding_on_one_node_detaches_the_device_from_its_gateway_on_another() {
    use crate::gateways::{attach, bind, connect_gateway, gateway, leaf, next_error, registry};
    let Some(db) = TestDatabase::create().await else { return };
    if !nats_up().await {
        return;
    }
    let (a, b, _) = two_nodes(&db).await;
    let reg = registry(&a).await;
    gateway(&a, &reg, "hub", "ASSOCIATION_ONLY").await;
    leaf(&a, &reg, "dev-a").await;
    bind(&a, &reg, "hub", "dev-a").await;
    let mut hub = connect_gateway(&a, &reg, "hub").await;
    attach(&mut hub, "dev-a", b"{}").await;
    let (st, body) =
        b.post(&format!("{reg}:unbindDeviceFromGateway"), json!({"gatewayId": "hub", "deviceId": "dev-a"})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let e = next_error(&mut hub, "hub", "GATEWAY_DETACHMENT_DEVICE_ERROR").await;
    assert_eq!(e["device_id"], "dev-a");
    assert!(e["description"].as_str().unwrap().contains("unbound"), "{e}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn one_node_forwards_each_sink_and_another_takes_over_when_it_dies() {
    use crate::sinks::{Receiver, publish};
    let Some(db) = TestDatabase::create().await else { return };
    if !nats_up().await {
        return;
    }
    // The same --sink on every node, as one configuration deployed everywhere would give.
    let hook = Receiver::start().await;
    let entry = format!("projects/{PROJECT}/topics/*={}/hook", hook.url);
    let spec = ferrocore_sinks::spec::SinkSpec::parse(&entry).unwrap();
    let prefix = fresh_prefix();
    let dir = tempfile::tempdir().unwrap();
    // Node A starts first and takes the sink's lease.
    let a = ChildNode::spawn_with(&db, &prefix, &dir.path().join("a"), &["--sink", &entry]);
    let b = node(&db, NATS, &prefix, "node-b", move |c| c.sinks = vec![spec]).await;
    lists_nodes(&b, 2).await;
    let (_, sinks) = b.get("sinks").await;
    assert_eq!(sinks["sinks"][0]["state"], "standby", "{sinks}");
    let topic = format!("projects/{PROJECT}/topics/readings");
    assert_eq!(b.put(&topic, json!({})).await.0, StatusCode::OK);

    // Published through B, forwarded once, by A, from the shared log.
    let first: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    publish(&b, &topic, &first.iter().map(String::as_str).collect::<Vec<_>>()).await;
    hook.until_count(20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.got().len(), 20, "each message forwarded once, by one node");

    // A dies: B takes the lease over and forwards what comes next, from where A left off.
    a.kill();
    let second: Vec<String> = (20..40).map(|i| format!("m{i}")).collect();
    publish(&b, &topic, &second.iter().map(String::as_str).collect::<Vec<_>>()).await;
    wait::eventually("node B to forward the sink", async || {
        let (_, sinks) = b.get("sinks").await;
        (sinks["sinks"][0]["state"] == "ok").then_some(())
    })
    .await;
    hook.until_count(40).await;
    let got: Vec<String> = hook.got().iter().map(|(_, push)| text(&push["message"]["data"])).collect();
    let want: Vec<String> = first.into_iter().chain(second).collect();
    assert_eq!(got, want, "every message once, in order, across the takeover");
    b.stop().await;
    remove_streams(&prefix).await;
}

#[tokio::test]
async fn pubsub_changes_on_one_node_reach_subscriptions_loaded_on_another() {
    let Some(db) = TestDatabase::create().await else { return };
    if !nats_up().await {
        return;
    }
    let (a, b, prefix) = two_nodes(&db).await;
    let topic = format!("projects/{PROJECT}/topics/feed");
    let sub = format!("projects/{PROJECT}/subscriptions/feed-sub");
    assert_eq!(a.put(&topic, json!({})).await.0, StatusCode::OK);
    assert_eq!(a.put(&sub, json!({"topic": topic})).await.0, StatusCode::OK);
    let before = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let data = |t: &str| json!({"data": b64(t.as_bytes())});
    let (st, body) = b.post(&format!("{topic}:publish"), json!({"messages": [data("x"), data("y"), data("z")]})).await;
    assert_eq!(st, StatusCode::OK, "{body}");

    // Node B loads the subscription and acknowledges everything.
    let pull_all = async |n: &TestServer| -> Vec<String> {
        pull_and_ack(n, &sub, 10).await.iter().map(|m| text(&m["data"])).collect()
    };
    let mut got = Vec::new();
    wait::eventually("node B to deliver the three", async || {
        got.extend(pull_all(&b).await);
        (got.len() == 3).then_some(())
    })
    .await;

    // A seek through node A replays them through node B, where the subscription is loaded.
    let (st, body) = a.post(&format!("{sub}:seek"), json!({"time": before})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let mut again = Vec::new();
    wait::eventually("node B to redeliver after node A's seek", async || {
        again.extend(pull_all(&b).await);
        (again.len() >= 3).then_some(())
    })
    .await;
    assert_eq!(again, got);

    // Deleting the subscription on A ends it on B; deleting the topic on A stops B's publishes.
    assert_eq!(a.delete(&sub).await.0, StatusCode::OK);
    wait::eventually("node B to forget the subscription", async || {
        let (st, _) = b.post(&format!("{sub}:pull"), json!({"maxMessages": 1, "returnImmediately": true})).await;
        (st == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_eq!(a.delete(&topic).await.0, StatusCode::OK);
    wait::eventually("node B to forget the topic", async || {
        let (st, _) = b.post(&format!("{topic}:publish"), json!({"messages": [data("late")]})).await;
        (st == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
    remove_streams(&prefix).await;
}

#[tokio::test]
async fn subscribers_on_different_nodes_share_one_subscription() {
    let Some(db) = TestDatabase::create().await else { return };
    if !nats_up().await {
        return;
    }
    let (a, b, prefix) = two_nodes(&db).await;
    let topic = format!("projects/{PROJECT}/topics/work");
    assert_eq!(a.put(&topic, json!({})).await.0, StatusCode::OK);
    // Several subscriptions, so that some are owned by each node.
    let subs: Vec<String> = (0..4).map(|i| format!("projects/{PROJECT}/subscriptions/work-{i}")).collect();
    for sub in &subs {
        assert_eq!(a.put(sub, json!({"topic": topic})).await.0, StatusCode::OK);
    }
    let messages: Vec<Value> = (0..40).map(|i| json!({"data": b64(format!("job-{i}").as_bytes())})).collect();
    let (st, body) = a.post(&format!("{topic}:publish"), json!({ "messages": messages })).await;
    assert_eq!(st, StatusCode::OK, "{body}");

    for sub in &subs {
        // Two workers, one on each node, pull in turns and acknowledge what they got.
        let mut seen: Vec<String> = Vec::new();
        let started = Instant::now();
        while seen.len() < 40 {
            assert!(started.elapsed() < Duration::from_secs(20), "{sub}: only {} of 40", seen.len());
            for worker in [&a, &b] {
                seen.extend(pull_and_ack(worker, sub, 3).await.iter().map(|m| text(&m["data"])));
            }
        }
        let distinct: std::collections::HashSet<&String> = seen.iter().collect();
        assert_eq!((seen.len(), distinct.len()), (40, 40), "{sub}: each message to one worker, once");
    }
    a.stop().await;
    b.stop().await;
    remove_streams(&prefix).await;
}

/// Removes the topic log streams a test made under `prefix` on the machine's NATS.
async fn remove_streams(prefix: &str) {
    let removed = ferrocore_cluster::log::JetStreamLog::remove_all(&format!("nats://{NATS}"), prefix).await;
    assert!(removed.is_ok(), "removing the test's streams: {removed:?}");
}

/// The payloads of `topic` read through `node`'s REST topic read, with the device each came from.
async fn logged(node: &TestServer, topic: &str) -> Vec<(String, String)> {
    let (st, m) = node.get(&format!("{topic}/messages?from=earliest&maxMessages=1000")).await;
    assert_eq!(st, StatusCode::OK, "{m}");
    m["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["attributes"]["deviceId"].as_str().unwrap_or("").to_owned(), text(&m["data"])))
        .collect()
}

#[tokio::test]
async fn telemetry_of_every_node_lands_in_one_log_that_every_node_reads() {
    let Some(db) = TestDatabase::create().await else { return };
    if !nats_up().await {
        return;
    }
    let (a, b, prefix) = two_nodes(&db).await;
    let registry = a.registry(PROJECT, "reg").await;
    let topic = format!("projects/{PROJECT}/topics/events");
    // A Pub/Sub subscription made through node A before anything is published.
    let sub = format!("projects/{PROJECT}/subscriptions/everything");
    assert_eq!(a.put(&sub, json!({"topic": topic})).await.0, StatusCode::OK);
    a.device(&registry, "dev-a", json!({})).await;
    a.device(&registry, "dev-b", json!({})).await;
    let mut on_a = device_on(&a, "dev-a").await;
    let mut on_b = device_on(&b, "dev-b").await;
    for i in 0..30 {
        on_a.publish_acked("/devices/dev-a/events", format!("a-{i}").as_bytes()).await;
        on_b.publish_acked("/devices/dev-b/events", format!("b-{i}").as_bytes()).await;
    }

    // Both nodes read the same log: every PUBACKed message, each device's in its order.
    let on_a_read = logged(&a, &topic).await;
    assert_eq!(on_a_read.len(), 60, "{on_a_read:?}");
    assert_eq!(logged(&b, &topic).await, on_a_read);
    for dev in ["a", "b"] {
        let mine: Vec<&str> =
            on_a_read.iter().filter(|(d, _)| *d == format!("dev-{dev}")).map(|(_, p)| p.as_str()).collect();
        let want: Vec<String> = (0..30).map(|i| format!("{dev}-{i}")).collect();
        assert_eq!(mine, want);
    }
    wait::eventually("node B's extent to count every message", async || {
        let (_, e) = b.get(&format!("{topic}/extent")).await;
        (e["nextOffset"] == "60").then_some(())
    })
    .await;

    // The subscription made on A delivers, through B, what devices on both nodes published.
    let mut got = Vec::new();
    wait::eventually("every message pulled through node B", async || {
        let received = pull_and_ack(&b, &sub, 100).await;
        got.extend(received.iter().map(|m| m["attributes"]["deviceId"].as_str().unwrap().to_owned()));
        (got.len() >= 60).then_some(())
    })
    .await;
    assert_eq!(got.iter().filter(|d| *d == "dev-a").count(), 30);
    assert_eq!(got.iter().filter(|d| *d == "dev-b").count(), 30);

    // Pub/Sub's Publish on one node lands in the same log.
    let (st, body) = b.post(&format!("{topic}:publish"), json!({"messages": [{"data": b64(b"from-api")}]})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["messageIds"][0], "60");
    assert_eq!(logged(&a, &topic).await.last().unwrap().1, "from-api");
    a.stop().await;
    b.stop().await;
    remove_streams(&prefix).await;
}

#[tokio::test]
async fn a_node_killed_under_telemetry_loses_nothing_it_acknowledged() {
    let Some(db) = TestDatabase::create().await else { return };
    if !nats_up().await {
        return;
    }
    let prefix = fresh_prefix();
    let dir = tempfile::tempdir().unwrap();
    let a = ChildNode::spawn(&db, &prefix, &dir.path().join("a"));
    let b = node(&db, NATS, &prefix, "node-b", |_| {}).await;
    lists_nodes(&b, 2).await;
    let registry = b.registry(PROJECT, "reg").await;
    let topic = format!("projects/{PROJECT}/topics/events");
    for i in 0..8 {
        b.device(&registry, &format!("dev-{i}"), json!({})).await;
    }
    // Eight devices, four on each node, publish QoS 1, each at most ~80 messages a second (the
    // bridge disconnects a device past 100); each records what was acknowledged.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for i in 0..8 {
        let at = if i % 2 == 0 { a.mqtt } else { b.mqtt };
        let mut c = plain_device(at, &format!("dev-{i}")).await;
        let (acked, stop) = (acked.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            for n in 0u32.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let payload = format!("dev-{i}/{n}");
                let topic = format!("/devices/dev-{i}/events");
                let Some(id) = c.publish(&topic, QoS::AtLeastOnce, payload.as_bytes()).await else { return };
                loop {
                    match c.recv_within(Duration::from_secs(5)).await {
                        Some(Packet::PubAck(got)) if got == id => break,
                        Some(_) => continue,
                        None => return,
                    }
                }
                acked.lock().unwrap().push(payload);
                tokio::time::sleep(Duration::from_millis(12)).await;
            }
        }));
    }
    // Killed mid-stream, after a good number went through.
    let started = Instant::now();
    while acked.lock().unwrap().len() < 500 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} acknowledged in 60 s",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{} acknowledged in {:?}", acked.lock().unwrap().len(), started.elapsed());
    a.kill();
    // The devices on B keep publishing while A is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in publishers {
        let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
    }
    let acked = acked.lock().unwrap().clone();
    let logged: std::collections::HashSet<String> = {
        let mut all = std::collections::HashSet::new();
        let mut offset = 0u64;
        loop {
            let (st, m) = b.get(&format!("{topic}/messages?offset={offset}&maxMessages=1000")).await;
            assert_eq!(st, StatusCode::OK, "{m}");
            let msgs = m["messages"].as_array().unwrap().clone();
            if msgs.is_empty() {
                break;
            }
            all.extend(msgs.iter().map(|msg| text(&msg["data"])));
            offset = m["nextOffset"].as_str().unwrap().parse().unwrap();
        }
        all
    };
    let missing: Vec<&String> = acked.iter().filter(|p| !logged.contains(*p)).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged messages missing: {missing:?}", missing.len(), acked.len());
    let on_b = acked
        .iter()
        .filter(|p| p.trim_start_matches("dev-").split('/').next().unwrap().parse::<u32>().unwrap() % 2 == 1)
        .count();
    assert!(on_b > 0, "the devices on node B published too");
    eprintln!("{} messages acknowledged ({on_b} by node B), all in the log ({} logged)", acked.len(), logged.len());
    b.stop().await;
    remove_streams(&prefix).await;
}
