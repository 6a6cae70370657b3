//! Compatibility with Google's official Rust client, `google-cloud-pubsub` (1.7), against the real
//! server in this process (port-0 listeners, `pubsub_anonymous`, as a back end configured for an
//! emulator connects: h2c and anonymous credentials). Built only with the `google-client`
//! feature, which the default workspace build leaves off:
//!
//! ```sh
//! cargo test -p ferrocore-bench --features google-client --test google_client
//! ```
//!
//! * the official Publisher publishes (batched by the client), the official Subscriber
//!   (StreamingPull with protocol_version 1, unary acks and modacks) receives every message with
//!   its attributes, a nack brings a message back with the same id, and every ack takes: nothing
//!   is left once the ack deadline has passed;
//! * a stream left without traffic for more than 45 s (past one 30 s keep-alive) still delivers
//!   at once what is published afterwards. This one takes about a minute.

use ferrocore_proto::pubsub as ps;
use ferrocore_proto::pubsub::publisher_client::PublisherClient;
use ferrocore_proto::pubsub::subscriber_client::SubscriberClient;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_pubsub::client::{Publisher, Subscriber};
use google_cloud_pubsub::model::Message;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

mod support;

use support::Server;

impl Server {
    fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Creates a topic and a subscription on it (tonic: what is under test is the data path).
    async fn topic_and_subscription(&self, id: &str, ack_deadline: i32) -> (String, String) {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint()).unwrap().connect().await.unwrap();
        let topic = format!("projects/compat/topics/{id}");
        let subscription = format!("projects/compat/subscriptions/{id}");
        PublisherClient::new(channel.clone())
            .create_topic(ps::Topic { name: topic.clone(), ..Default::default() })
            .await
            .unwrap();
        SubscriberClient::new(channel)
            .create_subscription(ps::Subscription {
                name: subscription.clone(),
                topic: topic.clone(),
                ack_deadline_seconds: ack_deadline,
                ..Default::default()
            })
            .await
            .unwrap();
        (topic, subscription)
    }

    /// Messages a unary Pull finds right now.
    async fn left(&self, subscription: &str) -> usize {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint()).unwrap().connect().await.unwrap();
        #[allow(deprecated)]
        let r = SubscriberClient::new(channel)
            .pull(ps::PullRequest {
                subscription: subscription.to_owned(),
                return_immediately: true,
                max_messages: 1000,
            })
            .await
            .unwrap();
        r.into_inner().received_messages.len()
    }
}

async fn publisher(server: &Server, topic: &str) -> Publisher {
    Publisher::builder(topic)
        .with_endpoint(server.endpoint())
        .with_credentials(Anonymous::new().build())
        .build()
        .await
        .expect("the official Publisher builds")
}

async fn subscriber(server: &Server) -> Subscriber {
    Subscriber::builder()
        .with_endpoint(server.endpoint())
        .with_credentials(Anonymous::new().build())
        .build()
        .await
        .expect("the official Subscriber builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_publishes_receives_nacks_and_acks_every_message() {
    let server = Server::start("google-client-test-admin-token").await;
    let (topic, subscription) = server.topic_and_subscription("every-message", 10).await;
    const N: usize = 500;

    let publisher = publisher(&server, &topic).await;
    let futures: Vec<_> = (0..N)
        .map(|i| {
            publisher.publish(
                Message::new()
                    .set_data(format!("message {i}"))
                    .set_attributes([("n", i.to_string()), ("deviceId", format!("d{}", i % 7))]),
            )
        })
        .collect();
    let mut ids = BTreeMap::new();
    for (i, f) in futures.into_iter().enumerate() {
        let id = f.await.expect("publish succeeds");
        assert!(ids.insert(id, i).is_none(), "message ids are unique");
    }

    let client = subscriber(&server).await;
    // Leases of 10 s, so that an ack that did not take shows up again soon.
    let mut stream = client.subscribe(&subscription).set_max_lease_extension(Duration::from_secs(10)).build();
    let mut got: HashMap<usize, String> = HashMap::new();
    let mut nacked: Option<String> = None;
    let mut redelivered = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < N || !redelivered {
        let (m, h) = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out with {} of {N} messages", got.len()))
            .expect("the stream goes on")
            .expect("no stream error");
        let i: usize = m.attributes["n"].parse().unwrap();
        assert_eq!(m.data, format!("message {i}").as_bytes());
        assert_eq!(m.attributes["deviceId"], format!("d{}", i % 7));
        assert_eq!(ids.get(&m.message_id), Some(&i), "the message id is the one Publish returned");
        assert!(m.publish_time.is_some());
        // The first delivery of message 0 is refused once; it must come back, same id.
        if i == 0 && nacked.is_none() {
            nacked = Some(m.message_id.clone());
            h.nack();
            continue;
        }
        if nacked.as_deref() == Some(m.message_id.as_str()) {
            redelivered = true;
        }
        got.insert(i, m.message_id.clone());
        h.ack();
    }
    assert_eq!(got.len(), N);
    stream.shutdown_token().shutdown().await;
    drop(stream);

    // Past the 10 s lease: anything not acknowledged would be deliverable again.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(server.left(&subscription).await, 0, "every ack took");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_stream_quiet_for_50_seconds_still_delivers_at_once() {
    let server = Server::start("google-client-test-admin-token").await;
    let (topic, subscription) = server.topic_and_subscription("quiet-stream", 10).await;
    let publisher = publisher(&server, &topic).await;
    let client = subscriber(&server).await;
    let mut stream = client.subscribe(&subscription).build();

    publisher.publish(Message::new().set_data("before")).await.unwrap();
    let (m, h) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(m.data, "before".as_bytes());
    h.ack();

    // 50 s without traffic: the client sends its keep-alive at 30 s and the server answers it.
    let quiet = tokio::time::timeout(Duration::from_secs(50), stream.next()).await;
    assert!(quiet.is_err(), "nothing was published, yet the stream gave {quiet:?}");

    let sent = Instant::now();
    publisher.publish(Message::new().set_data("after")).await.unwrap();
    let (m, h) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("delivered within 5 s of publishing after the quiet period")
        .unwrap()
        .unwrap();
    assert_eq!(m.data, "after".as_bytes());
    h.ack();
    println!("delivered {:?} after publishing, following 50 s of silence", sent.elapsed());
    stream.shutdown_token().shutdown().await;
    drop(stream);
    server.stop().await;
}
