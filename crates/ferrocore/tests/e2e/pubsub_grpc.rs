//! The Pub/Sub API over gRPC end to end: device telemetry over MQTT/TLS reaches a StreamingPull
//! subscriber with IoT Core's attributes; leases, nacks and in-stream acks; protocol-1 keep-alives;
//! streams end with UNAVAILABLE at shutdown; who may call.

use crate::device::*;
use crate::harness::*;
use ferrocore_mqtt_codec::ConnectReturnCode as Rc;
use ferrocore_proto::pubsub::publisher_client::PublisherClient;
use ferrocore_proto::pubsub::subscriber_client::SubscriberClient;
use ferrocore_proto::pubsub::{self as ps};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const PROJECT: &str = "ps-proj";

type Sub = SubscriberClient<InterceptedService<Channel, AddToken>>;
type Pub = PublisherClient<InterceptedService<Channel, AddToken>>;

async fn channel(s: &TestServer) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc)).unwrap().connect().await.unwrap()
}

fn token(t: Option<&str>) -> AddToken {
    AddToken::bearer(t)
}

async fn clients(s: &TestServer) -> (Pub, Sub) {
    let ch = channel(s).await;
    (
        PublisherClient::with_interceptor(ch.clone(), token(Some(TOKEN))),
        SubscriberClient::with_interceptor(ch, token(Some(TOKEN))),
    )
}

fn topic(id: &str) -> String {
    format!("projects/{PROJECT}/topics/{id}")
}

fn subscription(id: &str) -> String {
    format!("projects/{PROJECT}/subscriptions/{id}")
}

async fn create_subscription(sub: &mut Sub, name: &str, topic: &str, ack_deadline: i32) {
    sub.create_subscription(ps::Subscription {
        name: name.into(),
        topic: topic.into(),
        ack_deadline_seconds: ack_deadline,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Opens a StreamingPull stream; the sender half stays with the caller.
async fn open_stream(
    sub: &mut Sub,
    first: ps::StreamingPullRequest,
) -> (mpsc::Sender<ps::StreamingPullRequest>, tonic::Streaming<ps::StreamingPullResponse>) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let stream =
        sub.streaming_pull(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    (tx, stream)
}

/// Reads responses until `n` messages arrived (or panics after `within`).
async fn receive(
    stream: &mut tonic::Streaming<ps::StreamingPullResponse>,
    n: usize,
    within: Duration,
) -> Vec<ps::ReceivedMessage> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        let next = tokio::time::timeout_at(deadline, stream.message()).await;
        let resp = next.unwrap_or_else(|_| panic!("only {} of {n} messages arrived", got.len())).unwrap().unwrap();
        got.extend(resp.received_messages);
    }
    got
}

#[tokio::test]
async fn device_telemetry_and_state_reach_streaming_subscribers_with_iot_core_attributes() {
    let s = TestServer::start().await;
    let parent = format!("projects/{PROJECT}/locations/us-central1");
    let (st, body) = s
        .post(
            &format!("{parent}/registries"),
            json!({
                "id": "fleet",
                "eventNotificationConfigs": [{"pubsubTopicName": topic("telemetry")}],
                "stateNotificationConfig": {"pubsubTopicName": topic("state")}
            }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let reg = format!("{parent}/registries/fleet");
    s.device(&reg, "sensor-1", json!({})).await;

    // The registry's topics exist at once: a back end subscribes before any device speaks.
    let (mut publisher, mut sub) = clients(&s).await;
    let t = publisher.get_topic(ps::GetTopicRequest { topic: topic("telemetry") }).await.unwrap().into_inner();
    assert_eq!(t.name, topic("telemetry"));
    let dup = publisher.create_topic(ps::Topic { name: topic("telemetry"), ..Default::default() }).await.unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    create_subscription(&mut sub, &subscription("backend"), &topic("telemetry"), 0).await;
    create_subscription(&mut sub, &subscription("states"), &topic("state"), 0).await;

    let mut device = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(device.connect(&format!("{reg}/devices/sensor-1"), Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    let sent: Vec<Vec<u8>> = (0..50).map(|i| format!("reading-{i}").into_bytes()).collect();
    for p in &sent[..49] {
        device.publish_acked("/devices/sensor-1/events", p).await;
    }
    device.publish_acked("/devices/sensor-1/events/alerts/high", &sent[49]).await;
    device.publish_acked("/devices/sensor-1/state", b"on").await;

    let (_tx, mut stream) = open_stream(
        &mut sub,
        ps::StreamingPullRequest {
            subscription: subscription("backend"),
            stream_ack_deadline_seconds: 60,
            max_outstanding_messages: 1000,
            ..Default::default()
        },
    )
    .await;
    let got = receive(&mut stream, 50, Duration::from_secs(10)).await;
    let data: Vec<Vec<u8>> = got.iter().map(|m| m.message.as_ref().unwrap().data.to_vec()).collect();
    assert_eq!(data, sent, "every PUBACKed message, in publish order");
    let first = got[0].message.as_ref().unwrap();
    let attrs: &HashMap<String, String> = &first.attributes;
    assert_eq!(attrs["deviceId"], "sensor-1");
    assert_eq!(attrs["deviceRegistryId"], "fleet");
    assert_eq!(attrs["deviceRegistryLocation"], "us-central1");
    assert_eq!(attrs["projectId"], PROJECT);
    assert!(attrs["deviceNumId"].parse::<u64>().is_ok());
    assert!(!attrs.contains_key("subFolder"));
    assert_eq!(got[49].message.as_ref().unwrap().attributes["subFolder"], "alerts/high");
    assert!(first.publish_time.is_some());
    let ids: std::collections::HashSet<&str> =
        got.iter().map(|m| m.message.as_ref().unwrap().message_id.as_str()).collect();
    assert_eq!(ids.len(), 50, "message ids are unique");

    let state = sub
        .pull(ps::PullRequest { subscription: subscription("states"), max_messages: 10, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.received_messages.len(), 1);
    assert_eq!(state.received_messages[0].message.as_ref().unwrap().data.as_ref(), b"on");
}

#[tokio::test]
async fn nacks_in_stream_acks_and_flow_control() {
    let s = TestServer::start().await;
    let (mut publisher, mut sub) = clients(&s).await;
    publisher.create_topic(ps::Topic { name: topic("work"), ..Default::default() }).await.unwrap();
    create_subscription(&mut sub, &subscription("workers"), &topic("work"), 10).await;
    let messages = (0..10)
        .map(|i| ps::PubsubMessage { data: format!("job-{i}").into_bytes().into(), ..Default::default() })
        .collect();
    let ids = publisher
        .publish(ps::PublishRequest { topic: topic("work"), messages })
        .await
        .unwrap()
        .into_inner()
        .message_ids;
    assert_eq!(ids.len(), 10);

    // A window of 4: four arrive, nothing more until some are acked.
    let (tx, mut stream) = open_stream(
        &mut sub,
        ps::StreamingPullRequest {
            subscription: subscription("workers"),
            stream_ack_deadline_seconds: 30,
            max_outstanding_messages: 4,
            ..Default::default()
        },
    )
    .await;
    let first = receive(&mut stream, 4, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 4);
    assert!(tokio::time::timeout(Duration::from_millis(500), stream.message()).await.is_err(), "the window is full");
    // Ack two inside the stream and nack one: two new ones plus the nacked one come (window 4).
    tx.send(ps::StreamingPullRequest {
        ack_ids: vec![first[0].ack_id.clone(), first[1].ack_id.clone()],
        modify_deadline_ack_ids: vec![first[2].ack_id.clone()],
        modify_deadline_seconds: vec![0],
        ..Default::default()
    })
    .await
    .unwrap();
    let next = receive(&mut stream, 3, Duration::from_secs(5)).await;
    let nacked_id = &first[2].message.as_ref().unwrap().message_id;
    let again =
        next.iter().find(|m| &m.message.as_ref().unwrap().message_id == nacked_id).expect("nacked message comes again");
    assert_ne!(again.ack_id, first[2].ack_id, "a redelivery has a new ack id");

    // Malformed ack ids are refused; stale ones are ignored.
    let bad = sub
        .acknowledge(ps::AcknowledgeRequest {
            subscription: subscription("workers"),
            ack_ids: vec!["not-an-ack-id".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    sub.acknowledge(ps::AcknowledgeRequest {
        subscription: subscription("workers"),
        ack_ids: vec![first[2].ack_id.clone()],
    })
    .await
    .unwrap();
    let out_of_range = sub
        .modify_ack_deadline(ps::ModifyAckDeadlineRequest {
            subscription: subscription("workers"),
            ack_ids: vec![again.ack_id.clone()],
            ack_deadline_seconds: 601,
        })
        .await
        .unwrap_err();
    assert_eq!(out_of_range.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn protocol_one_keep_alives_are_answered_and_shutdown_ends_streams_with_unavailable() {
    let s = TestServer::start().await;
    let (mut publisher, mut sub) = clients(&s).await;
    publisher.create_topic(ps::Topic { name: topic("quiet"), ..Default::default() }).await.unwrap();
    create_subscription(&mut sub, &subscription("quiet-sub"), &topic("quiet"), 0).await;
    let (tx, mut stream) = open_stream(
        &mut sub,
        ps::StreamingPullRequest {
            subscription: subscription("quiet-sub"),
            stream_ack_deadline_seconds: 60,
            protocol_version: 1,
            ..Default::default()
        },
    )
    .await;
    tx.send(ps::StreamingPullRequest::default()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("a keep-alive is answered within 15 s")
        .unwrap()
        .unwrap();
    assert!(answer.received_messages.is_empty(), "the answer to a keep-alive is empty");

    let stopping = tokio::spawn(s.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream ends at shutdown");
    assert_eq!(end, Some(tonic::Code::Unavailable), "clients retry UNAVAILABLE, and only such codes");
    drop((tx, stream, sub, publisher));
    tokio::time::timeout(Duration::from_secs(15), stopping).await.expect("the server stops").unwrap();
}

#[tokio::test]
async fn pubsub_needs_the_admin_token() {
    let s = TestServer::start().await;
    let ch = channel(&s).await;
    for t in [None, Some("wrong-token-0123456789"), Some(es256_token(PROJECT).as_str())] {
        let mut anon = PublisherClient::with_interceptor(ch.clone(), token(t));
        let err = anon
            .list_topics(ps::ListTopicsRequest { project: format!("projects/{PROJECT}"), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{t:?}");
    }
    let (mut publisher, _) = clients(&s).await;
    let bad = publisher
        .create_topic(ps::Topic { name: "projects/p/topics/goog-x".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let missing = publisher
        .publish(ps::PublishRequest {
            topic: topic("nowhere"),
            messages: vec![ps::PubsubMessage { data: b"x".to_vec().into(), ..Default::default() }],
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn an_empty_pull_answers_before_the_clients_deadline() {
    let s = TestServer::start().await;
    let (mut publisher, mut sub) = clients(&s).await;
    publisher.create_topic(ps::Topic { name: topic("empty"), ..Default::default() }).await.unwrap();
    create_subscription(&mut sub, &subscription("empty-sub"), &topic("empty"), 0).await;
    let mut request = tonic::Request::new(ps::PullRequest {
        subscription: subscription("empty-sub"),
        max_messages: 10,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let answer = sub.pull(request).await.expect("an empty answer, not an expired deadline").into_inner();
    assert!(answer.received_messages.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(500), "it waited for a message first");
}
