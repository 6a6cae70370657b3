//! What the NATS, Redis and RabbitMQ destination tests share: finding the service (or skipping
//! when it is absent, except on CI), unique names per test, sample messages, and short-lived
//! server processes for the outage tests.
#![allow(dead_code)] // each test binary uses its own part

use bytes::Bytes;
use ferrocore_core::topics::StoredMessage;
use ferrocore_model::Timestamp;
use ferrocore_sinks::destination::{Destination, Failed, Source, Target};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::process::{Child, Command};

/// Whether `service` answers at `addr`; when it does not, says so on stderr and the test returns
/// early, except on CI (`CI=true`), where a missing service is a failure.
pub async fn reachable(service: &str, addr: &str) -> bool {
    let ok =
        matches!(tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)));
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{service} is not reachable at {addr} (CI=true requires it)");
        }
        eprintln!("skipping: {service} is not reachable at {addr}");
    }
    ok
}

/// A name part no other test or run uses.
pub fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}{}", nanos & 0xffff_ffff_ffff, std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Owns the strings a [`Source`] borrows.
pub struct Topic {
    pub name: String,
    pub project: String,
    pub topic: String,
}

impl Topic {
    pub fn new(suffix: &str) -> Topic {
        let project = "ferrocore-test".to_string();
        let topic = format!("telemetry-{suffix}");
        Topic { name: format!("projects/{project}/topics/{topic}"), project, topic }
    }

    pub fn source(&self) -> Source<'_> {
        Source { sink: "bus-test", name: &self.name, project: &self.project, topic: &self.topic }
    }
}

/// `count` messages from offset `first`, with the attributes the MQTT bridge sets.
pub fn messages(first: u64, count: usize) -> Vec<StoredMessage> {
    (first..first + count as u64)
        .map(|offset| StoredMessage {
            offset,
            time: Timestamp::from_unix_seconds(1_700_000_000 + offset as i64),
            attributes: vec![
                ("deviceId".into(), format!("dev-{}", offset % 7)),
                ("deviceNumId".into(), format!("{}", 2_800_000_000_000_000u64 + offset % 7)),
                ("deviceRegistryId".into(), "reg".into()),
                ("deviceRegistryLocation".into(), "europe-west1".into()),
                ("projectId".into(), "ferrocore-test".into()),
                ("subFolder".into(), format!("sensors/{}", offset % 3)),
                // The log's internal attributes never leave Ferrocore.
                ("goog-internal".into(), "x".into()),
            ],
            data: Bytes::from(format!("payload {offset} \u{0}\u{ff}").into_bytes()),
        })
        .collect()
}

/// The attributes a forwarded copy of `m` must carry, in order.
pub fn expected_attributes(topic: &Topic, m: &StoredMessage) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        m.attributes.iter().filter(|(k, _)| !k.starts_with("goog-")).cloned().collect();
    out.push(("ferrocoreTopic".into(), topic.name.clone()));
    out.push(("ferrocoreOffset".into(), m.offset.to_string()));
    out
}

/// `open`, bounded so a broken destination fails the test instead of hanging it.
pub async fn open(dest: &dyn Destination, url: &str, topic: &Topic) -> Result<Box<dyn Target>, String> {
    let url = url::Url::parse(url).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(15), dest.open(&url, &topic.source())).await {
        Ok(r) => r,
        Err(_) => Err("open did not return within 15 s".into()),
    }
}

/// `deliver`, bounded likewise.
pub async fn deliver(target: &mut dyn Target, topic: &Topic, batch: &[StoredMessage]) -> Result<(), Failed> {
    match tokio::time::timeout(Duration::from_secs(15), target.deliver(&topic.source(), batch)).await {
        Ok(r) => r,
        Err(_) => Err(Failed::transient("deliver did not return within 15 s")),
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

/// Starts `program args…` (killed when dropped) and waits until it accepts connections on `port`.
pub async fn start_server(program: &str, args: &[&str], port: u16) -> Child {
    let child = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{program} did not listen on {port} within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// Kills a server started by [`start_server`] and waits until it is gone.
pub async fn stop_server(mut child: Child) {
    child.kill().await.expect("kill server");
}

/// Whether a server program exists, for tests that start their own; like [`reachable`], its
/// absence skips the test except on CI.
pub fn program_exists(path: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{path} is not installed (CI=true requires it)");
    }
    eprintln!("skipping: {path} is not installed");
    false
}
