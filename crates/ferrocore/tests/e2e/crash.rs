//! Acknowledged writes survive `kill -9` of the real binary.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const TOKEN: &str = "crash-test-token-0123456789";

/// Kills the server when dropped, so a failing test leaves no process behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running server and the addresses it announced (`http=... mqtt=...`).
struct Spawned {
    server: Server,
    line: String,
}

impl Spawned {
    fn addr(&self, key: &str) -> String {
        self.line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.line))
            .to_owned()
    }

    fn rest(&self) -> String {
        format!("http://{}/v1", self.addr("http"))
    }
}

/// An authenticated GET, as JSON.
async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap()
}

/// Starts the binary on port-0 listeners (REST and plain MQTT only), with no fixed port anywhere.
fn spawn(data_dir: &std::path::Path) -> Spawned {
    start(Command::new(env!("CARGO_BIN_EXE_ferrocore")), data_dir, &[])
}

/// Runs `command` with `serve` on port-0 listeners and `extra` flags appended (the command is the
/// binary, or a launcher given the binary as its first argument), until it announces them.
fn start(mut command: Command, data_dir: &std::path::Path, extra: &[&str]) -> Spawned {
    let mut child = command
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--http", "127.0.0.1:0", "--grpc", "off", "--mqtts", "off", "--mqtt", "127.0.0.1:0"])
        .args(extra)
        .env("FERROCORE_ADMIN_TOKEN", TOKEN)
        .env("FERROCORE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ferrocore");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    Spawned { server, line }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let first = spawn(dir.path());
    let base = first.rest();
    let client = reqwest::Client::new();
    let reg = "projects/crash/locations/us-central1/registries/reg";
    let post = |path: String, body: Value| client.post(format!("{base}/{path}")).bearer_auth(TOKEN).json(&body).send();

    let r = post("projects/crash/locations/us-central1/registries".into(), json!({"id": "reg"})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Writes in flight from several tasks; each one acknowledged must be found after the crash.
    let mut tasks = vec![];
    for t in 0..4 {
        let client = client.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = vec![];
            for i in 0..25 {
                let id = format!("dev-{t}-{i}");
                let resp = client
                    .post(format!("{base}/{reg}/devices"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"id": id, "metadata": {"i": i.to_string()}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let resp = client
                    .post(format!("{base}/{reg}/devices/{id}:modifyCloudToDeviceConfig"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"versionToUpdate": "1", "binaryData": "Y3Jhc2g="}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                acked.push(id);
            }
            acked
        }));
    }
    let mut acked = vec![];
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    // No graceful shutdown: SIGKILL right after the last acknowledgement.
    drop(first.server);

    let second = spawn(dir.path());
    let base = second.rest();
    for id in &acked {
        let v = get_json(&client, &format!("{base}/{reg}/devices/{id}?fieldMask=config,metadata")).await;
        assert_eq!(v["config"]["version"], "2", "{id}: {v}");
        assert_eq!(v["config"]["binaryData"], "Y3Jhc2g=", "{id}");
    }
    assert_eq!(acked.len(), 100);
}

/// QoS 1 telemetry: every PUBACKed message is in the topic log after a kill -9 of the server.
#[tokio::test]
async fn every_acknowledged_telemetry_message_survives_kill_9() {
    use crate::device::{MqttClient, es256_token};
    use ferrocore_mqtt_codec::{ConnectReturnCode, Packet, QoS};
    let dir = tempfile::tempdir().unwrap();
    let first = spawn(dir.path());
    let (base, mqtt) = (first.rest(), first.addr("mqtt").parse::<std::net::SocketAddr>().unwrap());
    let client = reqwest::Client::new();
    let parent = "projects/qos/locations/l";
    let r = client
        .post(format!("{base}/{parent}/registries"))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "reg", "eventNotificationConfigs": [{"pubsubTopicName": "projects/qos/topics/telemetry"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let key = crate::harness::fixture("ec_public.pem");
    let mut tasks = vec![];
    // PUBACKs received so far, over all devices: the kill comes once there are some.
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for d in 0..4 {
        let r = client
            .post(format!("{base}/{parent}/registries/reg/devices"))
            .bearer_auth(TOKEN)
            .json(
                &json!({"id": format!("dev-{d}"), "credentials": [{"publicKey": {"format": "ES256_PEM", "key": key}}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = MqttClient::plain(mqtt).await;
            let id = format!("{parent}/registries/reg/devices/dev-{d}");
            assert_eq!(c.connect(&id, Some(&es256_token("qos")), 60).await, ConnectReturnCode::Accepted);
            let mut acked = vec![];
            // Keep publishing until the server dies; record what it acknowledged.
            for i in 0..90u32 {
                let payload = format!("{d}-{i}");
                let Some(pid) =
                    c.publish(&format!("/devices/dev-{d}/events"), QoS::AtLeastOnce, payload.as_bytes()).await
                else {
                    break;
                };
                match c.recv_within(std::time::Duration::from_secs(5)).await {
                    Some(Packet::PubAck(got)) if got == pid => {
                        acked.push(payload);
                        acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            acked
        }));
    }
    // Let some messages through, then kill the server mid-stream (4 devices publish 90 each).
    crate::wait::eventually("40 PUBACKs before the kill", async || {
        (acks.load(std::sync::atomic::Ordering::Relaxed) >= 40).then_some(())
    })
    .await;
    drop(first.server);
    let mut acked = vec![];
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(!acked.is_empty(), "some messages were acknowledged before the kill");

    let second = spawn(dir.path());
    let base = second.rest();
    let url = format!("{base}/projects/qos/topics/telemetry/messages?from=earliest&maxMessages=1000");
    let v = get_json(&client, &url).await;
    use base64::Engine;
    let stored: std::collections::HashSet<String> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(m["data"].as_str().unwrap()).unwrap())
                .unwrap()
        })
        .collect();
    for p in &acked {
        assert!(
            stored.contains(p),
            "acknowledged message {p} was lost ({} acked, {} stored)",
            acked.len(),
            stored.len()
        );
    }
}

/// `THP_enabled` of a running server started with transparent huge pages allowed (a Python
/// launcher clears the process's THP-disable flag, which a test process may have set, then
/// execs the server), once it announced its listeners; None where the kernel does not report it.
fn thp_enabled_of_server(extra: &[&str]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let launcher = "import ctypes, os, sys\n\
                    assert ctypes.CDLL(None, use_errno=True).prctl(41, 0, 0, 0, 0) == 0\n\
                    os.execv(sys.argv[1], sys.argv[1:])";
    let mut launch = Command::new("python3");
    launch.args(["-c", launcher, env!("CARGO_BIN_EXE_ferrocore")]);
    let spawned = start(launch, dir.path(), extra);
    assert!(spawned.line.contains("http="), "the server did not start: {:?}", spawned.line);
    let server = &spawned.server;
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id())).ok()?;
    status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(|v| v.trim().to_owned())
}

/// An idle fleet's memory would become resident 2 MiB at a time: the server turns transparent
/// huge pages off for itself unless told to keep them (docs/operations.md).
#[test]
fn the_server_runs_without_transparent_huge_pages_unless_told_to_keep_them() {
    if !cfg!(target_os = "linux") {
        println!("skipped: transparent huge pages are a Linux setting");
        return;
    }
    let Some(default) = thp_enabled_of_server(&[]) else {
        println!("skipped: this kernel does not report THP_enabled in /proc/PID/status");
        return;
    };
    assert_eq!(default, "0", "transparent huge pages left on by default");
    let kept = thp_enabled_of_server(&["--transparent-huge-pages"]).unwrap();
    assert_eq!(kept, "1", "--transparent-huge-pages did not keep them");
}
