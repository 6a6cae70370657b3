//! Issue 10, finding 7, over real sockets: the gRPC listener closes connections that never speak
//! HTTP/2 or stop answering pings, caps connections at accept, and cuts unary calls at the request
//! timeout while StreamingPull streams outlive it.

use crate::harness::*;
use ferrocore_proto::pubsub::publisher_client::PublisherClient;
use ferrocore_proto::pubsub::subscriber_client::SubscriberClient;
use ferrocore_proto::pubsub::{self as ps};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn start(limits: ferrocore::server::Limits) -> TestServer {
    TestServer::start_configured(|_| None, move |c| c.limits = limits).await
}

/// Reads (and drops) whatever the server sends until it closes the connection; false if it was
/// still open after `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_connection_without_the_http2_preface_is_closed() {
    let s =
        start(ferrocore::server::Limits { grpc_handshake_timeout: Duration::from_secs(1), ..Default::default() }).await;
    let mut silent = TcpStream::connect(s.grpc).await.unwrap();
    let mut partial = TcpStream::connect(s.grpc).await.unwrap();
    partial.write_all(&PREFACE[..10]).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await, "silent connection still open");
    assert!(closed_within(&mut partial, Duration::from_secs(5)).await, "half a preface, still open");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A real client, which sends the preface at once, is served.
    let mut client = s.grpc_client(Some(TOKEN)).await;
    let listed = client
        .list_device_registries(ferrocore_proto::iot::ListDeviceRegistriesRequest {
            parent: "projects/p/locations/l".into(),
            ..Default::default()
        })
        .await;
    assert!(listed.is_ok(), "{listed:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed() {
    let s = start(ferrocore::server::Limits {
        grpc_keepalive_interval: Duration::from_millis(300),
        grpc_keepalive_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    let mut tcp = TcpStream::connect(s.grpc).await.unwrap();
    // The preface and an empty SETTINGS frame: a client that then goes silent.
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    assert!(closed_within(&mut tcp, Duration::from_secs(5)).await, "a peer answering no ping is kept");
    s.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let cap = 4;
    let s = start(ferrocore::server::Limits {
        grpc_max_connections: cap,
        grpc_handshake_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(TcpStream::connect(s.grpc).await.unwrap());
    }
    let mut extra = TcpStream::connect(s.grpc).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await, "closed at accept");
    drop(held.pop());
    // The slot comes back once the server sees the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc)).unwrap();
        let attempt = timeout(Duration::from_secs(1), async {
            // A connection closed at accept fails here or on the call.
            let channel = endpoint.connect().await.ok()?;
            let mut client = ferrocore_proto::iot::device_manager_client::DeviceManagerClient::with_interceptor(
                channel,
                AddToken::bearer(Some(TOKEN)),
            );
            let request = ferrocore_proto::iot::ListDeviceRegistriesRequest {
                parent: "projects/p/locations/l".into(),
                ..Default::default()
            };
            client.list_device_registries(request).await.ok()
        })
        .await;
        if matches!(attempt, Ok(Some(_))) {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    s.stop().await;
}

#[tokio::test]
async fn unary_calls_are_cut_at_the_request_timeout_and_streams_are_not() {
    let limit = Duration::from_secs(1);
    let s = start(ferrocore::server::Limits { grpc_request_timeout: limit, ..Default::default() }).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc)).unwrap().connect().await.unwrap();
    let mut publisher = PublisherClient::with_interceptor(channel.clone(), AddToken::bearer(Some(TOKEN)));
    let mut subscriber = SubscriberClient::with_interceptor(channel, AddToken::bearer(Some(TOKEN)));
    let topic = "projects/hard/topics/slow".to_owned();
    let subscription = "projects/hard/subscriptions/waiting".to_owned();
    publisher.create_topic(ps::Topic { name: topic.clone(), ..Default::default() }).await.unwrap();
    subscriber
        .create_subscription(ps::Subscription {
            name: subscription.clone(),
            topic: topic.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    // A pull on an empty subscription waits longer than the limit for a message.
    let started = Instant::now();
    #[allow(deprecated)]
    let pulled = subscriber
        .pull(ps::PullRequest { subscription: subscription.clone(), max_messages: 1, return_immediately: false })
        .await;
    let err = pulled.expect_err("cut at the request timeout");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < limit + Duration::from_secs(2), "{:?}", started.elapsed());

    // A stream opened now is still delivering after several times the limit.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ps::StreamingPullRequest {
        subscription: subscription.clone(),
        stream_ack_deadline_seconds: 60,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = subscriber
        .streaming_pull(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Waiting is the point here: the stream must outlive the unary limit.
    tokio::time::sleep(limit * 3).await;
    publisher
        .publish(ps::PublishRequest {
            topic: topic.clone(),
            messages: vec![ps::PubsubMessage { data: b"late".to_vec().into(), ..Default::default() }],
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let next = tokio::time::timeout_at(deadline, stream.message()).await.expect("a message on the stream");
        let resp = next.expect("the stream is still open").expect("not ended");
        if let Some(m) = resp.received_messages.into_iter().next() {
            break m;
        }
    };
    assert_eq!(got.message.unwrap().data.as_ref(), b"late");
    drop(tx);
    s.stop().await;
}
