//! The NATS JetStream destination against a real server: the shared one at 127.0.0.1:4222 for
//! delivery, de-duplication and stream handling, and a private `nats-server` process for outages.

mod buses;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use buses::{Topic, deliver, messages, open, unique};
use ferrocore_core::topics::StoredMessage;
use ferrocore_sinks::destination::Destination;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADDR: &str = "127.0.0.1:4222";
const NATS_SERVER: &str = "/usr/sbin/nats-server";

fn configure(url: &str) -> Arc<dyn Destination> {
    ferrocore_sinks::nats::configure(&url::Url::parse(url).expect("url")).expect("configure")
}

async fn jetstream_at(addr: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(addr).await.expect("test client connects"))
}

/// Reads `count` messages of `stream` from its start with a pull consumer.
async fn read_stream(js: &jetstream::Context, stream: &str, count: usize) -> Vec<async_nats::Message> {
    let stream = js.get_stream(stream).await.expect("stream exists");
    let consumer = stream
        .create_consumer(pull::Config { ack_policy: AckPolicy::None, ..Default::default() })
        .await
        .expect("create consumer");
    let mut got = Vec::with_capacity(count);
    let mut messages = consumer.messages().await.expect("consume");
    while got.len() < count {
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(Ok(m))) => got.push(m.message),
            other => panic!("stream ended after {} of {count} messages: {other:?}", got.len()),
        }
    }
    got
}

async fn stream_count(js: &jetstream::Context, stream: &str) -> u64 {
    let mut stream = js.get_stream(stream).await.expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}

fn check_copy(topic: &Topic, subject: &str, sent: &StoredMessage, got: &async_nats::Message) {
    assert_eq!(got.subject.as_str(), subject);
    assert_eq!(got.payload, sent.data, "body of offset {}", sent.offset);
    let headers = got.headers.as_ref().expect("headers");
    let expected = buses::expected_attributes(topic, sent);
    for (k, v) in &expected {
        assert_eq!(headers.get(k.as_str()).map(|h| h.as_str()), Some(v.as_str()), "header {k} of {}", sent.offset);
    }
    let id = format!("{}:{}", topic.name, sent.offset);
    assert_eq!(headers.get("Nats-Msg-Id").map(|h| h.as_str()), Some(id.as_str()));
    assert!(headers.get("goog-internal").is_none());
    assert_eq!(headers.iter().count(), expected.len() + 1, "no other headers");
}

#[tokio::test]
async fn delivers_a_batch_in_order_with_headers_and_deduplicates_resends() {
    if !buses::reachable("NATS", ADDR).await {
        return;
    }
    let suffix = unique();
    let (subject, stream) = (format!("ferrocore.test.{suffix}"), format!("FERROCORE_TEST_{suffix}"));
    let url = format!("nats://{ADDR}/{subject}?stream={stream}");
    let topic = Topic::new(&suffix);
    let dest = configure(&url);
    let batch = messages(1000, 3000);

    let mut target = open(&*dest, &url, &topic).await.expect("open creates the stream");
    let js = jetstream_at(ADDR).await;
    assert_eq!(stream_count(&js, &stream).await, 0, "open created the stream, empty");

    // More than the 1024 PubAcks the target keeps outstanding, so the window slides.
    let started = Instant::now();
    deliver(&mut *target, &topic, &batch).await.expect("deliver");
    eprintln!("3000 messages confirmed in {:?}", started.elapsed());
    assert_eq!(stream_count(&js, &stream).await, 3000);

    // Re-sending what was already confirmed (the forwarder does after a crash) is dropped by the
    // stream's duplicate window, on a new target as on the old one.
    deliver(&mut *target, &topic, &batch[..100]).await.expect("re-deliver");
    let mut reopened = open(&*dest, &url, &topic).await.expect("reopen uses the existing stream");
    deliver(&mut *reopened, &topic, &batch).await.expect("re-deliver after reopen");
    assert_eq!(stream_count(&js, &stream).await, 3000, "duplicates dropped");

    let got = read_stream(&js, &stream, 3000).await;
    for (sent, got) in batch.iter().zip(&got) {
        check_copy(&topic, &subject, sent, got);
    }
    js.delete_stream(&stream).await.expect("clean up");
}

#[tokio::test]
async fn a_subject_no_stream_captures_fails_and_stream_parameter_creates_one() {
    if !buses::reachable("NATS", ADDR).await {
        return;
    }
    let suffix = unique();
    let subject = format!("ferrocore.nostream.{suffix}");
    let topic = Topic::new(&suffix);
    let url = format!("nats://{ADDR}/{subject}");
    let dest = configure(&url);
    let mut target = open(&*dest, &url, &topic).await.expect("open needs no stream");
    let failed = deliver(&mut *target, &topic, &messages(0, 10)).await.expect_err("nothing captures the subject");
    assert_eq!(failed.delivered, 0);
    assert!(!failed.permanent);
    assert!(failed.error.contains("no JetStream stream captures subject"), "{}", failed.error);
    assert!(failed.error.contains(&subject), "{}", failed.error);

    let stream = format!("FERROCORE_TEST_{suffix}");
    let url = format!("{url}?stream={stream}");
    let mut target = open(&*dest, &url, &topic).await.expect("open creates the stream");
    deliver(&mut *target, &topic, &messages(0, 10)).await.expect("deliver once the stream exists");
    let js = jetstream_at(ADDR).await;
    let mut created = js.get_stream(&stream).await.expect("created");
    let info = created.info().await.expect("info");
    assert_eq!(info.config.subjects, vec![subject]);
    assert_eq!(info.config.storage, jetstream::stream::StorageType::File);
    assert_eq!(info.state.messages, 10);
    js.delete_stream(&stream).await.expect("clean up");
}

#[tokio::test]
async fn a_message_over_max_payload_is_permanent_after_the_confirmed_prefix() {
    if !buses::reachable("NATS", ADDR).await {
        return;
    }
    let suffix = unique();
    let (subject, stream) = (format!("ferrocore.big.{suffix}"), format!("FERROCORE_TEST_{suffix}"));
    let url = format!("nats://{ADDR}/{subject}?stream={stream}");
    let topic = Topic::new(&suffix);
    let dest = configure(&url);
    let mut target = open(&*dest, &url, &topic).await.expect("open");
    let max_payload = async_nats::connect(ADDR).await.expect("connect").server_info().max_payload;
    // Past the 1024 outstanding PubAcks, so the confirmed prefix spans a slid window.
    let mut batch = messages(0, 2000);
    batch[1500].data = bytes::Bytes::from(vec![b'x'; max_payload + 1]);

    let failed = deliver(&mut *target, &topic, &batch).await.expect_err("too large");
    assert_eq!((failed.delivered, failed.permanent), (1500, true), "{}", failed.error);
    let js = jetstream_at(ADDR).await;
    assert_eq!(stream_count(&js, &stream).await, 1500);
    // The forwarder skips it and goes on with the rest.
    deliver(&mut *target, &topic, &batch[1501..]).await.expect("the rest");
    assert_eq!(stream_count(&js, &stream).await, 1999);
    js.delete_stream(&stream).await.expect("clean up");
}

#[tokio::test]
async fn an_outage_fails_delivery_and_a_reopen_after_restart_succeeds() {
    if !buses::program_exists(NATS_SERVER) {
        return;
    }
    let port = buses::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let port_text = port.to_string();
    let dir_text = dir.path().to_string_lossy().into_owned();
    let args = ["-js", "-a", "127.0.0.1", "-p", &port_text, "-sd", &dir_text, "--user", "dev", "--pass", "s3cret"];
    let server = buses::start_server(NATS_SERVER, &args, port).await;

    let suffix = unique();
    let topic = Topic::new(&suffix);
    let url = format!("nats://dev:s3cret@127.0.0.1:{port}/ferrocore.outage?stream=OUTAGE");
    let dest = configure(&url);

    let wrong = format!("nats://dev:wr0ng@127.0.0.1:{port}/ferrocore.outage?stream=OUTAGE");
    let refused = open(&*dest, &wrong, &topic).await.err().expect("a wrong password is refused");
    assert!(!refused.contains("wr0ng") && !refused.contains("s3cret"), "{refused}");

    let mut target = open(&*dest, &url, &topic).await.expect("open");
    deliver(&mut *target, &topic, &messages(0, 100)).await.expect("deliver while up");

    buses::stop_server(server).await;
    let started = Instant::now();
    let failed = deliver(&mut *target, &topic, &messages(100, 100)).await.expect_err("the server is down");
    eprintln!("deliver failed after {:?}: {}", started.elapsed(), failed.error);
    assert_eq!(failed.delivered, 0);
    assert!(!failed.permanent);
    assert!(!failed.error.contains("s3cret"), "{}", failed.error);
    assert!(failed.error.contains(&format!("127.0.0.1:{port}")), "{}", failed.error);
    drop(target);
    let down = open(&*dest, &url, &topic).await.err().expect("open fails while the server is down");
    assert!(!down.contains("s3cret"), "{down}");

    let _server = buses::start_server(NATS_SERVER, &args, port).await;
    let mut target = open(&*dest, &url, &topic).await.expect("reopen after restart");
    deliver(&mut *target, &topic, &messages(100, 100)).await.expect("deliver after restart");
    let client = async_nats::ConnectOptions::with_user_and_password("dev".into(), "s3cret".into())
        .connect(format!("127.0.0.1:{port}"))
        .await
        .expect("test client connects");
    let mut stream = jetstream::new(client).get_stream("OUTAGE").await.expect("stream survived the restart");
    let info = stream.info().await.expect("info");
    // The failed publishes may have been flushed on reconnect; their ids de-duplicate them.
    assert_eq!(info.state.messages, 200);
}
