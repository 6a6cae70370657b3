//! The RabbitMQ destination against the real broker at 127.0.0.1:5672 (guest/guest): delivery
//! through a named and through the default exchange, a missing exchange, and unreachable brokers.

mod buses;

use buses::{Topic, deliver, messages, open, unique};
use ferrocore_sinks::destination::Destination;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADDR: &str = "127.0.0.1:5672";

fn configure(url: &str) -> Arc<dyn Destination> {
    ferrocore_sinks::amqp::configure(&url::Url::parse(url).expect("url")).expect("configure")
}

async fn test_channel() -> (Connection, Channel) {
    let connection = Connection::connect(&format!("amqp://guest:guest@{ADDR}/%2f"), ConnectionProperties::default())
        .await
        .expect("test client connects");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// A queue only this test uses, bound to `exchange` with `routing_key` unless that is the default.
/// Exclusive and auto-delete, so the broker removes both when the test's connection closes, even
/// after a failed assertion.
async fn declare(channel: &Channel, exchange: &str, queue: &str, routing_key: &str) {
    if !exchange.is_empty() {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
    }
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    channel.queue_declare(queue.into(), exclusive, FieldTable::default()).await.expect("queue");
    if !exchange.is_empty() {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }
}

async fn consume(channel: &Channel, queue: &str, count: usize) -> Vec<lapin::message::Delivery> {
    let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut consumer = channel
        .basic_consume(queue.into(), "ferrocore-test".into(), options, FieldTable::default())
        .await
        .expect("consume");
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(Ok(delivery))) => got.push(delivery),
            other => panic!("queue ran dry after {} of {count} messages: {:?}", got.len(), other.map(|o| o.is_some())),
        }
    }
    got
}

async fn clean_up(channel: &Channel, exchange: &str, queue: &str) {
    channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await.expect("delete queue");
    if !exchange.is_empty() {
        channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await.expect("delete exchange");
    }
}

#[tokio::test]
async fn delivers_a_batch_in_order_with_headers_and_properties() {
    if !buses::reachable("RabbitMQ", ADDR).await {
        return;
    }
    let suffix = unique();
    let (exchange, queue, key) =
        (format!("ferrocore-test-{suffix}"), format!("ferrocore-test-{suffix}"), format!("t.{suffix}"));
    let (_connection, channel) = test_channel().await;
    declare(&channel, &exchange, &queue, &key).await;

    let url = format!("amqp://guest:guest@{ADDR}/%2f?exchange={exchange}&routing_key={key}");
    let topic = Topic::new(&suffix);
    let dest = configure(&url);
    let batch = messages(70, 500);
    let mut target = open(&*dest, &url, &topic).await.expect("open");
    let started = Instant::now();
    deliver(&mut *target, &topic, &batch).await.expect("deliver");
    eprintln!("500 messages confirmed in {:?}", started.elapsed());

    let got = consume(&channel, &queue, 500).await;
    for (sent, got) in batch.iter().zip(&got) {
        assert_eq!(got.data, sent.data.as_ref(), "body of offset {}", sent.offset);
        assert_eq!(got.exchange.as_str(), exchange);
        assert_eq!(got.routing_key.as_str(), key);
        let p = &got.properties;
        assert_eq!(p.delivery_mode(), &Some(2), "persistent");
        let id = format!("{}:{}", topic.name, sent.offset);
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some(id.as_str()));
        assert_eq!(p.timestamp(), &Some(sent.time.unix_seconds() as u64));
        let headers = p.headers().as_ref().expect("headers").inner();
        let expected = buses::expected_attributes(&topic, sent);
        for (k, v) in &expected {
            assert_eq!(headers.get(k.as_str()), Some(&AMQPValue::LongString(v.as_str().into())), "header {k}");
        }
        assert_eq!(headers.len(), expected.len(), "no other headers");
    }
    clean_up(&channel, &exchange, &queue).await;
}

#[tokio::test]
async fn the_default_exchange_routes_by_queue_name() {
    if !buses::reachable("RabbitMQ", ADDR).await {
        return;
    }
    let suffix = unique();
    let queue = format!("ferrocore-test-{suffix}");
    let (_connection, channel) = test_channel().await;
    declare(&channel, "", &queue, "").await;
    // An empty path is the default vhost too.
    let url = format!("amqp://guest:guest@{ADDR}?routing_key={queue}");
    let topic = Topic::new(&suffix);
    let dest = configure(&url);
    let mut target = open(&*dest, &url, &topic).await.expect("open");
    let batch = messages(0, 20);
    deliver(&mut *target, &topic, &batch).await.expect("deliver");
    let got = consume(&channel, &queue, 20).await;
    let offsets: Vec<String> = got
        .iter()
        .map(|d| match d.properties.headers().as_ref().and_then(|h| h.inner().get("ferrocoreOffset")) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("ferrocoreOffset: {other:?}"),
        })
        .collect();
    assert_eq!(offsets, (0..20).map(|o| o.to_string()).collect::<Vec<_>>());
    clean_up(&channel, "", &queue).await;
}

#[tokio::test]
async fn a_missing_exchange_fails_open_and_deliver_with_a_plain_reason() {
    if !buses::reachable("RabbitMQ", ADDR).await {
        return;
    }
    let suffix = unique();
    let (exchange, queue) = (format!("ferrocore-test-{suffix}"), format!("ferrocore-test-{suffix}"));
    let url = format!("amqp://guest:guest@{ADDR}/?exchange={exchange}&routing_key=k");
    let topic = Topic::new(&suffix);
    let dest = configure(&url);
    let refused = open(&*dest, &url, &topic).await.err().expect("no such exchange yet");
    eprintln!("open: {refused}");
    assert!(refused.contains(&format!("exchange {exchange:?} does not exist")), "{refused}");

    let (_connection, channel) = test_channel().await;
    declare(&channel, &exchange, &queue, "k").await;
    let mut target = open(&*dest, &url, &topic).await.expect("open once the exchange exists");
    deliver(&mut *target, &topic, &messages(0, 5)).await.expect("deliver");

    // Deleted under a running target: the broker closes the channel with 404 NOT_FOUND.
    channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await.expect("delete");
    let failed = deliver(&mut *target, &topic, &messages(5, 50)).await.expect_err("exchange gone");
    eprintln!("deliver: {}", failed.error);
    assert_eq!((failed.delivered, failed.permanent), (0, false));
    assert!(failed.error.contains(&format!("exchange {exchange:?} does not exist")), "{}", failed.error);

    // Other targets on the shared connection are unaffected, and a new one opens once it is back.
    declare(&channel, &exchange, &queue, "k").await;
    let mut target = open(&*dest, &url, &topic).await.expect("reopen");
    deliver(&mut *target, &topic, &messages(5, 50)).await.expect("deliver after reopen");
    assert_eq!(consume(&channel, &queue, 55).await.len(), 55);
    clean_up(&channel, &exchange, &queue).await;
}

#[tokio::test]
async fn an_unreachable_or_refusing_broker_fails_open_promptly() {
    let topic = Topic::new(&unique());
    let port = buses::free_port();
    let url = format!("amqp://guest:s3cret@127.0.0.1:{port}/?routing_key=q");
    let dest = configure(&url);
    let started = Instant::now();
    let down = open(&*dest, &url, &topic).await.err().expect("nothing listens there");
    eprintln!("down: {down}");
    assert!(started.elapsed() < Duration::from_secs(12), "bounded");
    assert!(down.contains(&format!("127.0.0.1:{port}")), "{down}");
    assert!(!down.contains("s3cret"), "{down}");

    if !buses::reachable("RabbitMQ", ADDR).await {
        return;
    }
    let wrong = format!("amqp://guest:wr0ng@{ADDR}/?routing_key=q");
    let refused = open(&*dest, &wrong, &topic).await.err().expect("a wrong password is refused");
    eprintln!("wrong password: {refused}");
    assert!(!refused.contains("wr0ng"), "{refused}");
    let no_vhost = format!("amqp://guest:guest@{ADDR}/no-such-vhost-{}?routing_key=q", unique());
    let refused = open(&*dest, &no_vhost, &topic).await.err().expect("an unknown vhost is refused");
    eprintln!("unknown vhost: {refused}");
    assert!(refused.contains("no-such-vhost"), "{refused}");
}

#[tokio::test]
async fn targets_beyond_a_connections_channel_limit_get_another_connection() {
    if !buses::reachable("RabbitMQ", ADDR).await {
        return;
    }
    let suffix = unique();
    let queue = format!("ferrocore-test-{suffix}");
    let (_connection, channel) = test_channel().await;
    declare(&channel, "", &queue, "").await;
    // `channel_max=2` makes the broker's limit of 2047 channels per connection small enough to hit.
    let url = format!("amqp://guest:guest@{ADDR}/?routing_key={queue}&channel_max=2");
    let dest = configure(&url);
    let topics: Vec<Topic> = (0..5).map(|i| Topic::new(&format!("{suffix}-{i}"))).collect();
    let mut targets = Vec::new();
    for topic in &topics {
        targets.push(open(&*dest, &url, topic).await.expect("open"));
    }
    for (topic, target) in topics.iter().zip(&mut targets) {
        deliver(&mut **target, topic, &messages(0, 10)).await.expect("deliver");
    }
    assert_eq!(consume(&channel, &queue, 50).await.len(), 50);
    clean_up(&channel, "", &queue).await;
}
