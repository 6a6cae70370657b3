//! The Pub/Sub destination against Google's Pub/Sub emulator (the oracle of
//! shared/spec/pubsub-v1.md §5), started once for this file on a free port and killed at the end,
//! also when an assertion fails. Topics and subscriptions are made, and messages read back, over
//! the emulator's REST API.
//!
//! * 500 messages in two batches arrive with their payload and attributes (IoT Core's, plus
//!   `ferrocoreTopic`/`ferrocoreOffset`, without the log's `goog-` ones);
//! * a message over 10 MB is reported as permanent after the messages before it were confirmed;
//! * a missing Pub/Sub topic fails the delivery, promptly, with a text that says so.
//!
//! Without the emulator (or Java) the test prints `skipping: …` and passes, except under CI=true.

mod hooks;

use base64::Engine as _;
use ferrocore_sinks::pubsub;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use url::Url;

/// Where the Debian package google-cloud-cli-pubsub-emulator puts the launcher (a shell script that
/// execs Java); `PUBSUB_EMULATOR_LAUNCHER` overrides it, as for the Python compatibility tests.
const LAUNCHER: &str = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";
const PROJECT: &str = "ferrocore-sink-test";

/// The emulator process; killed when dropped, so a failing test does not leave it running.
struct Emulator {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    /// Starts the emulator, or says why it cannot (the caller skips or fails).
    async fn start() -> Result<Emulator, String> {
        let launcher = std::env::var("PUBSUB_EMULATOR_LAUNCHER").unwrap_or_else(|_| LAUNCHER.to_owned());
        if !Path::new(&launcher).is_file() {
            return Err(format!("Google's Pub/Sub emulator is not installed (no {launcher})"));
        }
        let java = std::env::var_os("JAVA_HOME").is_some()
            || std::env::var_os("PATH")
                .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("java").is_file()));
        if !java {
            return Err("Google's Pub/Sub emulator needs Java, and there is no java on PATH nor JAVA_HOME".into());
        }
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let child = Command::new(&launcher)
            .args(["--host=127.0.0.1", &format!("--port={port}")])
            .env_remove("PUBSUB_EMULATOR_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {launcher}: {e}"))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
        let mut emulator = Emulator { child, port, http };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = emulator.child.try_wait() {
                panic!("the Pub/Sub emulator exited with {status}");
            }
            let ready = emulator.http.get(emulator.rest("projects/ready-check/topics")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(emulator);
            }
            assert!(tokio::time::Instant::now() < deadline, "the Pub/Sub emulator did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn rest(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/v1/{path}", self.port)
    }

    fn sink_url(&self, topic: &str) -> Url {
        Url::parse(&format!("pubsub://127.0.0.1:{}/projects/{PROJECT}/topics/{topic}", self.port)).unwrap()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: serde_json::Value) -> serde_json::Value {
        let mut request = self.http.request(method, self.rest(path));
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// A topic and a subscription on it, both named `id`.
    async fn topic_with_subscription(&self, id: &str) {
        let topic = format!("projects/{PROJECT}/topics/{id}");
        self.call(reqwest::Method::PUT, &topic, json!({})).await;
        self.call(reqwest::Method::PUT, &format!("projects/{PROJECT}/subscriptions/{id}"), json!({ "topic": topic }))
            .await;
    }

    /// Pulls (and acknowledges) until `want` distinct offsets arrived: offset → (data, attributes).
    /// Pub/Sub does not keep order without ordering keys, so messages are keyed by their offset.
    async fn pull(&self, subscription: &str, want: usize) -> BTreeMap<u64, (Vec<u8>, BTreeMap<String, String>)> {
        let path = format!("projects/{PROJECT}/subscriptions/{subscription}");
        let mut got = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while got.len() < want {
            assert!(tokio::time::Instant::now() < deadline, "only {} of {want} messages arrived", got.len());
            let r = self
                .call(
                    reqwest::Method::POST,
                    &format!("{path}:pull"),
                    json!({ "maxMessages": 1000, "returnImmediately": true }),
                )
                .await;
            let received = r["receivedMessages"].as_array().cloned().unwrap_or_default();
            if received.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let mut ack_ids = Vec::new();
            for m in &received {
                ack_ids.push(m["ackId"].clone());
                let attributes = hooks::string_map(&m["message"]["attributes"]);
                let data = base64::engine::general_purpose::STANDARD
                    .decode(m["message"]["data"].as_str().unwrap_or_default())
                    .unwrap();
                let offset = attributes["ferrocoreOffset"].parse().unwrap();
                got.insert(offset, (data, attributes));
            }
            self.call(reqwest::Method::POST, &format!("{path}:acknowledge"), json!({ "ackIds": ack_ids })).await;
        }
        got
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_the_emulator_and_reports_what_it_cannot() {
    let emulator = match Emulator::start().await {
        Ok(e) => e,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{why}"),
        Err(why) => {
            println!("skipping: {why}");
            return;
        }
    };
    let source = hooks::source();
    // Everything below is bounded: a hang is a failure, not a stuck test.
    let bound = Duration::from_secs(20);

    // 500 messages in two batches, through one destination.
    emulator.topic_with_subscription("telemetry").await;
    let url = emulator.sink_url("telemetry");
    let destination = pubsub::configure(&url).unwrap();
    let mut target = tokio::time::timeout(bound, destination.open(&url, &source)).await.unwrap().unwrap();
    tokio::time::timeout(bound, target.deliver(&source, &hooks::batch(0..300))).await.unwrap().unwrap();
    let mut target = tokio::time::timeout(bound, destination.open(&url, &source)).await.unwrap().unwrap();
    tokio::time::timeout(bound, target.deliver(&source, &hooks::batch(300..500))).await.unwrap().unwrap();
    let got = emulator.pull("telemetry", 500).await;
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), (0..500).collect::<Vec<u64>>());
    for (offset, (data, attributes)) in &got {
        assert_eq!(data, &hooks::payload(*offset), "payload of {offset}");
        assert_eq!(attributes, &hooks::expected_attributes(*offset), "attributes of {offset}");
    }

    // Over 10 MB: what precedes it is confirmed, then it is reported as never deliverable.
    let mut batch = hooks::batch(500..503);
    batch[1].data = bytes::Bytes::from(vec![b'x'; 10_000_001]);
    let failed = tokio::time::timeout(bound, target.deliver(&source, &batch)).await.unwrap().unwrap_err();
    assert_eq!((failed.delivered, failed.permanent), (1, true), "{failed:?}");
    assert!(failed.error.contains("10 MB"), "{failed:?}");
    println!("too large: {}", failed.error);
    // The forwarder skips it and goes on with the rest.
    tokio::time::timeout(bound, target.deliver(&source, &batch[2..])).await.unwrap().unwrap();
    let got = emulator.pull("telemetry", 2).await;
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![500, 502]);

    // A topic that does not exist in Pub/Sub: opening works (nothing is checked or created), the
    // delivery fails at once with a text that names the problem, and again on the next try.
    let missing = emulator.sink_url("not-created");
    let destination = pubsub::configure(&missing).unwrap();
    for _ in 0..2 {
        let mut target = tokio::time::timeout(bound, destination.open(&missing, &source)).await.unwrap().unwrap();
        let failed = tokio::time::timeout(bound, target.deliver(&source, &hooks::batch(0..3)))
            .await
            .expect("a missing topic does not hang the delivery")
            .unwrap_err();
        assert_eq!((failed.delivered, failed.permanent), (0, false), "{failed:?}");
        assert!(
            failed.error.contains("does not exist")
                && failed.error.contains(&format!("projects/{PROJECT}/topics/not-created")),
            "{failed:?}"
        );
        println!("missing topic: {}", failed.error);
    }
    let topics = emulator.call(reqwest::Method::GET, &format!("projects/{PROJECT}/topics"), json!(null)).await;
    assert!(!topics.to_string().contains("not-created"), "Ferrocore never creates the topic: {topics}");
}

#[test]
fn configure_checks_the_url_without_the_network() {
    let err = |s: &str| pubsub::configure(&Url::parse(s).unwrap()).err().expect("configure fails");
    assert!(pubsub::configure(&Url::parse("pubsub:///projects/gp/topics/telemetry").unwrap()).is_ok());
    assert!(pubsub::configure(&Url::parse("pubsub://127.0.0.1:1/projects/gp/topics/telemetry").unwrap()).is_ok());
    assert!(err("pubsub:///projects/gp/topics/t").contains("Invalid topic name"), "id too short");
    assert!(err("pubsub:///projects/gp/topics/goog-x").contains("Invalid topic name"));
    assert!(err("pubsub:///topics/telemetry").contains("Invalid topic name"));
    assert!(err("pubsub://emulator/projects/gp/topics/telemetry").contains("port"));
}
