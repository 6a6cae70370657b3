//! `GET /metrics` end to end: a scripted load through real sockets (TLS MQTT devices, REST and
//! gRPC calls), then the exposition checked series by series against what was sent.

use crate::device::*;
use crate::harness::*;
use crate::wait::eventually;
use ferrocore_mqtt_codec::ConnectReturnCode as Rc;
use reqwest::StatusCode;
use serde_json::json;
use std::collections::{HashMap, HashSet};

const PROJECT: &str = "metrics-proj";
const DEVICES: usize = 3;
const MESSAGES: usize = 7;
const PAYLOAD: &[u8] = b"temperature=21.5";
const STATE: &[u8] = b"on";

/// The samples of an exposition, by series (`name{labels}` as written), after checking its shape:
/// every sample line is `series value`, every family declared once, before its samples.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut declared = HashSet::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let name = t.split(' ').next().unwrap();
            assert!(declared.insert(name.to_owned()), "{name} declared twice");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
            .unwrap_or(name);
        assert!(declared.contains(family), "{series} comes before its # TYPE line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(samples.insert(series.to_owned(), value).is_none(), "{series} twice");
    }
    samples
}

async fn scrape(s: &TestServer) -> (String, HashMap<String, f64>) {
    // From loopback: no token needed.
    let resp = s.client.get(format!("{}/metrics", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = resp.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or(&0.0)
}

#[tokio::test]
async fn scripted_load_moves_the_counters_by_exactly_what_was_sent() {
    let s = TestServer::start().await;
    let topic = format!("projects/{PROJECT}/topics/metered-telemetry");
    let reg = s
        .registry_with(PROJECT, "metered-fleet", json!({"eventNotificationConfigs": [{"pubsubTopicName": topic}]}))
        .await;
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("metered-device-{i}")).collect();
    for id in &ids {
        s.device(&reg, id, json!({})).await;
    }
    let (_, before) = scrape(&s).await;

    // A refused device: the token's audience is another project.
    let mut refused = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(
        refused.connect(&format!("{reg}/devices/{}", ids[0]), Some(&es256_token("another-project")), 60).await,
        Rc::NotAuthorized
    );
    let mut clients = Vec::new();
    for id in &ids {
        let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
        assert_eq!(c.connect(&format!("{reg}/devices/{id}"), Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
        for _ in 0..MESSAGES {
            c.publish_acked(&format!("/devices/{id}/events"), PAYLOAD).await;
        }
        c.publish_acked(&format!("/devices/{id}/state"), STATE).await;
        clients.push(c);
    }

    // While they are connected.
    let (_, during) = scrape(&s).await;
    let mqtts = "ferrocore_mqtt_connections{protocol=\"mqtts\"}";
    assert_eq!(get(&during, mqtts), get(&before, mqtts) + DEVICES as f64);
    assert_eq!(get(&during, "ferrocore_devices_connected"), DEVICES as f64);

    // REST: two reads that succeed, one 404; gRPC: one read and one NOT_FOUND.
    let (st, _) = s.get(&format!("{reg}/devices/{}", ids[0])).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.get(&format!("{reg}/devices/no-such-device")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.get(&format!("{reg}/devices")).await;
    assert_eq!(st, StatusCode::OK);
    let mut grpc = s.grpc_client(Some(TOKEN)).await;
    let name = format!("{reg}/devices/{}", ids[1]);
    grpc.get_device(ferrocore_proto::iot::GetDeviceRequest { name, field_mask: None }).await.unwrap();
    let missing = format!("{reg}/devices/no-such-device");
    let err = grpc.get_device(ferrocore_proto::iot::GetDeviceRequest { name: missing, field_mask: None }).await;
    assert_eq!(err.unwrap_err().code(), tonic::Code::NotFound);

    for c in &mut clients {
        c.send(ferrocore_mqtt_codec::Packet::Disconnect).await;
    }
    drop(clients);
    // Activity is flushed every 50 ms in tests; wait for a flush and the closed connections.
    let (text, after) = eventually("connections closed and activity flushed", async || {
        let (text, m) = scrape(&s).await;
        let flushed =
            get(&m, "ferrocore_activity_flush_devices_count") > get(&during, "ferrocore_activity_flush_devices_count");
        (get(&m, mqtts) == get(&before, mqtts) && flushed).then_some((text, m))
    })
    .await;
    let delta = |series: &str| get(&after, series) - get(&before, series);

    let sent = (DEVICES * MESSAGES) as f64;
    assert_eq!(delta("ferrocore_mqtt_connects_total{protocol=\"mqtts\"}"), DEVICES as f64);
    assert_eq!(delta("ferrocore_mqtt_connect_refusals_total{reason=\"not_authorized\"}"), 1.0);
    assert_eq!(delta("ferrocore_device_messages_received_total{bridge=\"mqtt\",kind=\"telemetry\"}"), sent);
    assert_eq!(
        delta("ferrocore_device_received_bytes_total{bridge=\"mqtt\",kind=\"telemetry\"}"),
        sent * PAYLOAD.len() as f64
    );
    assert_eq!(delta("ferrocore_device_messages_received_total{bridge=\"mqtt\",kind=\"state\"}"), DEVICES as f64);
    assert_eq!(
        delta("ferrocore_device_received_bytes_total{bridge=\"mqtt\",kind=\"state\"}"),
        (DEVICES * STATE.len()) as f64
    );
    assert_eq!(delta("ferrocore_device_messages_received_total{bridge=\"http\",kind=\"telemetry\"}"), 0.0);
    // Every QoS 1 message got its PUBACK, each one timed.
    let pubacks = sent + DEVICES as f64;
    assert_eq!(delta("ferrocore_mqtt_puback_latency_seconds_count"), pubacks);
    assert_eq!(delta("ferrocore_mqtt_puback_latency_seconds_bucket{le=\"+Inf\"}"), pubacks);
    assert!(delta("ferrocore_mqtt_puback_latency_seconds_sum") > 0.0);
    // Telemetry is what went to the log (no state topic is configured).
    assert_eq!(delta("ferrocore_topiclog_appended_records_total"), sent);
    let commits = delta("ferrocore_topiclog_commits_total");
    assert!((1.0..=sent).contains(&commits), "{commits} commits");
    assert!(delta("ferrocore_topiclog_fsyncs_total") >= commits);
    assert!(delta("ferrocore_topiclog_appended_bytes_total") > sent * PAYLOAD.len() as f64);

    let rest = |method: &str, code: &str| {
        delta(&format!("ferrocore_api_requests_total{{protocol=\"rest\",method=\"{method}\",code=\"{code}\"}}"))
    };
    assert_eq!(rest("DeviceManager.GetDevice", "200"), 1.0);
    assert_eq!(rest("DeviceManager.GetDevice", "404"), 1.0);
    assert_eq!(rest("DeviceManager.ListDevices", "200"), 1.0);
    assert_eq!(
        delta("ferrocore_api_request_duration_seconds_count{protocol=\"rest\",method=\"DeviceManager.GetDevice\"}"),
        2.0
    );
    let grpc = |code: &str| {
        delta(&format!(
            "ferrocore_api_requests_total{{protocol=\"grpc\",method=\"DeviceManager.GetDevice\",code=\"{code}\"}}"
        ))
    };
    assert_eq!(grpc("OK"), 1.0);
    assert_eq!(grpc("NOT_FOUND"), 1.0);
    assert_eq!(
        delta("ferrocore_api_request_duration_seconds_count{protocol=\"grpc\",method=\"DeviceManager.GetDevice\"}"),
        2.0
    );
    // The store is timed per operation: each REST and gRPC read looked the device up.
    assert!(delta("ferrocore_store_operation_duration_seconds_count{operation=\"get_device\"}") >= 4.0);
    assert!(delta("ferrocore_store_operation_duration_seconds_count{operation=\"record_activity\"}") >= 1.0);
    assert!(delta("ferrocore_activity_flush_devices_sum") >= 1.0);
    if std::path::Path::new("/proc/self/stat").exists() {
        assert!(get(&after, "process_resident_memory_bytes") > 0.0);
        assert!(get(&after, "process_open_fds") > 0.0);
    }

    // Nothing names a device, a registry or a topic.
    for secret in ["metered-device", "metered-fleet", "metered-telemetry", PROJECT, TOKEN] {
        assert!(!text.contains(secret), "the exposition names '{secret}'");
    }
    s.stop().await;
}

/// This host's address on its default route, if it has one (nothing is sent).
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.1:9").ok()?;
    Some(probe.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[tokio::test]
async fn the_token_is_needed_from_elsewhere_but_not_on_the_metrics_listener() {
    let dir = tempfile::tempdir().unwrap();
    let config = ferrocore::server::Config {
        data_dir: dir.path().join("data"),
        admin_token: Some(TOKEN.into()),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    let http = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = http.local_addr().unwrap().port();
    let listeners = ferrocore::server::Listeners { http, grpc: None, mqtts: None, mqtt: None };
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ferrocore::server::run(
        config,
        listeners,
        async move {
            let _ = stopped.await;
        },
        move |b| {
            let _ = bound_tx.send(b);
        },
    ));
    let bound = bound_rx.await.unwrap();
    let client = reqwest::Client::new();
    let metrics_addr = bound.metrics.expect("the --metrics listener is bound");
    assert!(bound.to_string().contains(&format!("metrics={metrics_addr}")));

    // The --metrics listener: no token, and /metrics only.
    let resp = client.get(format!("http://{metrics_addr}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("# TYPE ferrocore_mqtt_connections gauge"));
    let resp = client.get(format!("http://{metrics_addr}/v1/sinks")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // The --http listener from loopback: no token needed.
    let resp = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // From a non-loopback address: the admin token.
    match non_loopback_address() {
        Some(ip) => {
            let url = format!("http://{}/metrics", std::net::SocketAddr::new(ip, port));
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{url} without a token");
            let resp = client.get(&url).bearer_auth("wrong").send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            let resp = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(
                resp.text()
                    .await
                    .unwrap()
                    .contains("ferrocore_api_requests_total{protocol=\"rest\",method=\"Metrics\",code=\"401\"} 2")
            );
        }
        None => eprintln!("no non-loopback address on this host: the token check from elsewhere is not exercised"),
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Every metric name in `text` (`ferrocore_*` and `process_*` words), histogram suffixes removed.
fn metric_names(text: &str) -> HashSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ferrocore_") || w.starts_with("process_"))
        .map(|w| w.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum").to_owned())
        .collect()
}

#[tokio::test]
async fn docs_and_dashboard_name_exactly_the_exported_families() {
    let s = TestServer::start().await;
    let (text, _) = scrape(&s).await;
    s.stop().await;
    let exported: HashSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|t| t.split(' ').next().unwrap().to_owned())
        .collect();
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs");
    let documented = metric_names(&std::fs::read_to_string(format!("{docs}/metrics.md")).unwrap());
    let dashboard = metric_names(&std::fs::read_to_string(format!("{docs}/grafana-dashboard.json")).unwrap());
    // Sink series exist only with --sink.
    let sink_only = |n: &String| n.starts_with("ferrocore_sink_");
    for name in &exported {
        assert!(documented.contains(name), "{name} is exported but not in docs/metrics.md");
    }
    for name in documented.iter().chain(&dashboard) {
        assert!(exported.contains(name) || sink_only(name), "{name} is named in the docs or dashboard, not exported");
    }
    assert!(dashboard.len() >= 25, "the dashboard shows the main series: {dashboard:?}");
}
