//! Protocol-1 keep-alives on StreamingPull, with the generated tonic client against the real
//! server (in this process, port-0 listeners, anonymous Pub/Sub access).
//!
//! Google's newer clients (Go v2, Java, .NET, Ruby, the official Rust crate) open the stream with
//! `protocol_version = 1`, send an empty request every 30 s and expect an empty
//! StreamingPullResponse back within ~15 s; without one they restart the stream, and deliveries
//! stall meanwhile. The server must answer each empty request at once, and keep delivering.

use ferrocore_proto::pubsub as ps;
use ferrocore_proto::pubsub::publisher_client::PublisherClient;
use ferrocore_proto::pubsub::subscriber_client::SubscriberClient;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

mod support;

use support::Server;

const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// Waits for the next response on the stream, at most `within`.
async fn next(
    inbound: &mut tonic::Streaming<ps::StreamingPullResponse>,
    within: Duration,
) -> Option<ps::StreamingPullResponse> {
    match tokio::time::timeout(within, inbound.message()).await {
        Ok(Ok(Some(r))) => Some(r),
        Ok(Ok(None)) => panic!("the server ended the stream"),
        Ok(Err(e)) => panic!("the stream failed: {e}"),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_one_keepalive_is_answered_and_delivery_goes_on() {
    let server = Server::start("keepalive-test-admin-token-0123").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .expect("the gRPC listener accepts");
    let mut publisher = PublisherClient::new(channel.clone());
    let mut subscriber = SubscriberClient::new(channel.clone());
    let topic = "projects/keepalive/topics/telemetry".to_owned();
    let subscription = "projects/keepalive/subscriptions/backend".to_owned();
    publisher.create_topic(ps::Topic { name: topic.clone(), ..Default::default() }).await.unwrap();
    subscriber
        .create_subscription(ps::Subscription {
            name: subscription.clone(),
            topic: topic.clone(),
            ack_deadline_seconds: 10,
            ..Default::default()
        })
        .await
        .unwrap();

    let (tx, rx) = mpsc::channel(8);
    tx.send(ps::StreamingPullRequest {
        subscription: subscription.clone(),
        stream_ack_deadline_seconds: 60,
        max_outstanding_messages: 1000,
        protocol_version: 1,
        client_id: "keepalive-test".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut inbound = subscriber.streaming_pull(ReceiverStream::new(rx)).await.unwrap().into_inner();

    // A keep-alive on an idle stream: an empty response comes back.
    let sent = std::time::Instant::now();
    tx.send(ps::StreamingPullRequest::default()).await.unwrap();
    let answer = next(&mut inbound, ANSWER_WITHIN).await.expect("an empty response within 15 s");
    assert!(answer.received_messages.is_empty(), "{answer:?}");
    assert!(sent.elapsed() < ANSWER_WITHIN);

    // Messages published afterwards arrive on the same stream.
    let data: Vec<Vec<u8>> = (0..3).map(|i| format!("after keep-alive {i}").into_bytes()).collect();
    publisher
        .publish(ps::PublishRequest {
            topic: topic.clone(),
            messages: data.iter().map(|d| ps::PubsubMessage { data: d.clone().into(), ..Default::default() }).collect(),
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < data.len() {
        let r = next(&mut inbound, Duration::from_secs(10)).await.expect("the messages arrive");
        got.extend(r.received_messages);
    }
    let mut received: Vec<Vec<u8>> = got.iter().map(|m| m.message.as_ref().unwrap().data.to_vec()).collect();
    received.sort();
    assert_eq!(received, data);
    subscriber
        .acknowledge(ps::AcknowledgeRequest {
            subscription: subscription.clone(),
            ack_ids: got.iter().map(|m| m.ack_id.clone()).collect(),
        })
        .await
        .unwrap();

    // And a second keep-alive is answered as the first was.
    tx.send(ps::StreamingPullRequest::default()).await.unwrap();
    let answer = next(&mut inbound, ANSWER_WITHIN).await.expect("a second empty response");
    assert!(answer.received_messages.is_empty(), "{answer:?}");

    drop(tx);
    drop(inbound);
    server.stop().await;
}
