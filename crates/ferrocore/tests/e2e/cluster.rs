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
use serde_json::json;
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
            c.cluster = Some(ClusterSettings { url, node_id, prefix });
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

/// Two nodes on one database and one fresh subject prefix, each having heard the other.
async fn two_nodes(db: &TestDatabase) -> (TestServer, TestServer) {
    let prefix = fresh_prefix();
    let a = node(db, NATS, &prefix, "node-a", |_| {}).await;
    let b = node(db, NATS, &prefix, "node-b", |_| {}).await;
    // Each must have heard the other's heartbeat before it offers it anything.
    lists_nodes(&a, 2).await;
    lists_nodes(&b, 2).await;
    (a, b)
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
    let (a, b) = two_nodes(&db).await;
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
    let (a, b) = two_nodes(&db).await;

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

/// A NATS server of the test's own, on a port of its own, so it can be stopped and started.
struct OwnNats {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnNats {
    fn start(port: u16) -> Option<Self> {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "nats-server is not installed (CI=true)");
            eprintln!("skipping: nats-server is not installed");
            return None;
        };
        let child = std::process::Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
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
    let Some(mut nats) = OwnNats::start(port) else { return };
    nats.wait_up().await;
    let nats_at = format!("127.0.0.1:{port}");
    let a = node(&db, &nats_at, "outage", "node-a", |_| {}).await;
    let b = node(&db, &nats_at, "outage", "node-b", |_| {}).await;
    lists_nodes(&b, 2).await;
    let registry = a.registry(PROJECT, "reg").await;
    a.device(&registry, "dev-1", json!({})).await;
    let command = format!("{registry}/devices/dev-1:sendCommandToDevice");
    let mut on_a = device_on(&a, "dev-1").await;

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

    let Some(nats) = OwnNats::start(port) else { return };
    nats.wait_up().await;
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
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferrocore"))
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--http", "127.0.0.1:0", "--grpc", "off", "--mqtts", "off", "--mqtt", "127.0.0.1:0"])
            .args(["--store", &db.url(), "--cluster", &format!("nats://{NATS}"), "--node-id", "node-a"])
            .args(["--cluster-prefix", prefix, "--command-timeout-seconds", "1"])
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
    let (a, b) = two_nodes(&db).await;
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
async fn each_node_keeps_its_own_sink_positions() {
    let Some(db) = TestDatabase::create().await else { return };
    if !nats_up().await {
        return;
    }
    // The same --sink on every node, as one configuration deployed everywhere would give.
    let spec = ferrocore_sinks::spec::SinkSpec::parse("projects/p/topics/*=http://127.0.0.1:9/hook").unwrap();
    let prefix = fresh_prefix();
    let with_sink = {
        let spec = spec.clone();
        move |c: &mut ferrocore::server::Config| c.sinks = vec![spec]
    };
    let (a, b) = (
        node(&db, NATS, &prefix, "node-a", with_sink.clone()).await,
        node(&db, NATS, &prefix, "node-b", with_sink).await,
    );
    async fn sink_name(s: &TestServer) -> String {
        s.get("sinks").await.1["sinks"][0]["name"].as_str().unwrap().to_owned()
    }
    let (on_a, on_b) = (sink_name(&a).await, sink_name(&b).await);
    assert_eq!(on_a, format!("node-a.{}", spec.name));
    assert_eq!(on_b, format!("node-b.{}", spec.name));
    a.stop().await;
    b.stop().await;
}
