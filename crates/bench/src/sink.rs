//! Sinks: Ferrocore forwarding device telemetry to an external system (`ferrocore serve --sink`),
//! against what that system takes on its own.
//!
//! * `sink-ceiling`: the destination's own ceiling. The client crate Ferrocore's sink uses
//!   (async-nats, lapin, redis, reqwest, google-cloud-pubsub) publishes 100-byte messages to one
//!   destination for `--duration` seconds, as fast as the destination confirms them, with the
//!   pipelining Ferrocore's destination uses, in batches of 4096 as its forwarder reads them: AMQP
//!   and Pub/Sub publish the batch and then await its confirmations, NATS keeps up to 1024 PubAcks
//!   outstanding within it; Redis sends a pipeline of 4096 `XADD`s; the webhook POSTs one message
//!   at a time on a kept-alive connection to the receiver built in here. With
//!   `--metadata ferrocore` every message also carries what Ferrocore adds to a forwarded device
//!   message (IoT Core's attributes, `ferrocoreTopic`, `ferrocoreOffset`, NATS's `Nats-Msg-Id`,
//!   AMQP's `message_id` and `timestamp`, the push JSON for the webhook), so the two can be
//!   compared like for like.
//! * `sink-forward`: Ferrocore (started with `--sink` to the same destination) forwarding device
//!   telemetry. Devices publish QoS 1 over MQTT (the `telemetry` scenario's fleet), full speed or
//!   at `--rate`; meanwhile the destination's own count (JetStream stream messages, the depth of
//!   a durable queue bound to the exchange, `XLEN`, the receiver's POSTs, a pulling subscriber) and
//!   `GET /v1/sinks` are sampled every `--sample` seconds. Reported: the PUBACKed rate and PUBACK
//!   latency, the rate at the destination over the same window, lag (messages and seconds), time
//!   to drain after publishing, server CPU per forwarded message. Without `--dest` it is the same
//!   fleet and load without a sink, for the PUBACK latency baseline. With `--direct` (and a
//!   server without a sink) the bench itself publishes to the destination during the same device
//!   load, with the ceiling's client and Ferrocore's metadata: the destination's ceiling on a
//!   machine as busy as when Ferrocore forwards.
//!   With `--outage S` the destination is unavailable for the first S seconds of publishing (a
//!   webhook receiver answering 503; an exchange, Pub/Sub topic or JetStream stream that does not
//!   exist yet; or a server started only then with `--outage-server CMD`), devices then stop, the
//!   destination comes back, and the catch-up is timed: from the first message delivered after
//!   the outage to lag 0, with the server's CPU per forwarded message while it forwards alone.
//! * `sink-admin setup|teardown|count`: makes a destination fresh (stream, exchange with a bound
//!   queue, key, topic with a subscription), removes it, or prints its count.
//!
//! Destinations are given as Ferrocore's sink URLs (docs/sinks.md), loopback hosts only:
//! `nats://127.0.0.1:4222/SUBJECT?stream=NAME`, `amqp://guest:guest@127.0.0.1:5672/%2f?exchange=E&routing_key=K`
//! (the bench binds queue `E.bench` to E with K), `redis://127.0.0.1:6379?stream=KEY`,
//! `http://127.0.0.1:PORT/PATH` (the receiver listens there) and
//! `pubsub://127.0.0.1:PORT/projects/P/topics/T` (subscription `T-bench`).

use crate::fleet::Fleet;
use crate::report::{Report, latency_row, thousands};
use crate::stats::{self, Histogram, Window};
use crate::telemetry::{PublishSpec, connect_all, publish_loop, totals};
use crate::util::Progress;
use crate::{Broker, Ctx};
use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream;
use base64::Engine as _;
use bytes::Bytes;
use ferrocore_mqtt_codec::QoS;
use ferrocore_proto::pubsub as ps;
use serde::Serialize;
use serde_json::json;
use std::net::SocketAddr;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Messages per window, as Ferrocore's Pub/Sub destination batches its requests; also the unit
/// the webhook's one-at-a-time POSTs are timed in.
const WINDOW: usize = 1000;
/// Messages per batch, as Ferrocore's forwarder reads them (its `batch_messages`): published, then
/// confirmed, before the next batch.
const BATCH: usize = 4096;
/// PubAcks NATS's destination keeps outstanding within a batch: past this many, each publish
/// first awaits the oldest ack.
const NATS_OUTSTANDING: usize = 1024;
/// Messages the warm-up device publishes before the measured window, so that the sink has found
/// the topic and opened its connection when the clock starts.
const WARMUP: u64 = 100;
/// The queue the bench binds to an AMQP destination's exchange, and the subscription it makes on
/// a Pub/Sub topic: NAME + this.
const AMQP_QUEUE_SUFFIX: &str = ".bench";
const PUBSUB_SUBSCRIPTION_SUFFIX: &str = "-bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metadata {
    /// The payload alone (AMQP: persistent, no headers; webhook: the raw bytes).
    None,
    /// What Ferrocore sends with a device message: IoT Core's attributes plus ferrocoreTopic and
    /// ferrocoreOffset, as headers, fields, attributes or push JSON.
    Ferrocore,
}

// ---------------------------------------------------------------------------------------------
// Destinations

/// One destination, from a sink URL.
#[derive(Clone, Debug)]
pub enum Dest {
    Nats { server: String, subject: String, stream: String },
    Amqp { uri: String, server: String, exchange: String, routing_key: String, queue: String },
    Redis { client_url: String, server: String, stream: String },
    Webhook { url: reqwest::Url, addr: SocketAddr },
    Pubsub { endpoint: String, topic: String, subscription: String },
}

fn loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Dest {
    pub fn parse(text: &str) -> Result<Dest> {
        let url = url::Url::parse(text).with_context(|| format!("'{text}' is not a URL"))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        if !loopback(&host) {
            bail!("{text}: only loopback destinations (127.0.0.0/8, ::1, localhost) are accepted");
        }
        let param = |k: &str| url.query_pairs().find(|(key, _)| key == k).map(|(_, v)| v.into_owned());
        let path = url.path().trim_start_matches('/').to_owned();
        Ok(match url.scheme() {
            "nats" => {
                if path.is_empty() {
                    bail!("{text}: the subject is the path (nats://HOST:PORT/SUBJECT?stream=NAME)");
                }
                let stream = param("stream")
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| anyhow!("{text}: the bench counts a JetStream stream: add ?stream=NAME"))?;
                Dest::Nats {
                    server: format!("{host}:{}", url.port().unwrap_or(4222)),
                    subject: percent_decode(&path),
                    stream,
                }
            }
            "amqp" => {
                let exchange = param("exchange")
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| anyhow!("{text}: the bench binds a queue to an exchange: add ?exchange=E"))?;
                let routing_key =
                    param("routing_key").ok_or_else(|| anyhow!("{text}: add &routing_key=K (as Ferrocore needs)"))?;
                let mut conn = url.clone();
                conn.set_query(None);
                Dest::Amqp {
                    uri: conn.to_string(),
                    server: format!("{host}:{}", url.port().unwrap_or(5672)),
                    queue: format!("{exchange}{AMQP_QUEUE_SUFFIX}"),
                    exchange,
                    routing_key,
                }
            }
            "redis" => {
                let stream =
                    param("stream").filter(|s| !s.is_empty()).ok_or_else(|| anyhow!("{text}: add ?stream=KEY"))?;
                let mut conn = url.clone();
                conn.set_query(None);
                Dest::Redis {
                    client_url: conn.to_string(),
                    server: format!("{host}:{}", url.port().unwrap_or(6379)),
                    stream,
                }
            }
            "http" => {
                let ip = if host == "localhost" { "127.0.0.1".to_owned() } else { host.clone() };
                let ip: std::net::IpAddr = ip.trim_start_matches('[').trim_end_matches(']').parse()?;
                let port = url.port().unwrap_or(80);
                Dest::Webhook { addr: SocketAddr::new(ip, port), url }
            }
            "pubsub" => {
                let port = url.port().ok_or_else(|| anyhow!("{text}: the emulator's port is needed"))?;
                let parts: Vec<&str> = path.split('/').collect();
                let ["projects", project, "topics", topic] = parts.as_slice() else {
                    bail!("{text}: the path must be projects/P/topics/T");
                };
                Dest::Pubsub {
                    endpoint: format!("http://{host}:{port}"),
                    subscription: format!("projects/{project}/subscriptions/{topic}{PUBSUB_SUBSCRIPTION_SUFFIX}"),
                    topic: path.clone(),
                }
            }
            s => bail!("{text}: unknown destination scheme {s} (nats, amqp, redis, http, pubsub)"),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Dest::Nats { .. } => "nats",
            Dest::Amqp { .. } => "amqp",
            Dest::Redis { .. } => "redis",
            Dest::Webhook { .. } => "webhook",
            Dest::Pubsub { .. } => "pubsub",
        }
    }

    /// Where the destination server listens (for `--outage-server`).
    fn server_addr(&self) -> Option<String> {
        match self {
            Dest::Nats { server, .. } | Dest::Amqp { server, .. } | Dest::Redis { server, .. } => Some(server.clone()),
            Dest::Pubsub { endpoint, .. } => Some(endpoint.trim_start_matches("http://").to_owned()),
            Dest::Webhook { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Dest::Nats { server, subject, stream } => {
                format!("NATS JetStream at {server}, subject {subject}, stream {stream}")
            }
            Dest::Amqp { server, exchange, routing_key, queue, .. } => {
                format!("RabbitMQ at {server}, exchange {exchange}, key {routing_key} → queue {queue}")
            }
            Dest::Redis { server, stream, .. } => format!("Redis at {server}, stream {stream}"),
            Dest::Webhook { url, .. } => format!("webhook {url}"),
            Dest::Pubsub { endpoint, topic, .. } => format!("Pub/Sub at {endpoint}, {topic}"),
        }
    }
}

async fn nats_js(server: &str) -> Result<jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .name("ferrocore-bench")
        .connection_timeout(Duration::from_secs(5))
        .connect(format!("nats://{server}"))
        .await
        .with_context(|| format!("cannot connect to NATS at {server}"))?;
    Ok(jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(NATS_OUTSTANDING + 24)
        .build(client))
}

async fn amqp_connect(uri: &str) -> Result<lapin::Connection> {
    let url = url::Url::parse(uri)?;
    let mut parsed = lapin::uri::AMQPUri::from_str(uri).map_err(|e| anyhow!("AMQP URL: {e}"))?;
    // lapin takes the host from `Url::domain`, which is empty for IP addresses.
    parsed.authority.host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let vhost = percent_decode(url.path().trim_start_matches('/'));
    parsed.vhost = if vhost.is_empty() { "/".into() } else { vhost };
    let properties = lapin::ConnectionProperties::default().with_connection_name("ferrocore-bench".into());
    tokio::time::timeout(Duration::from_secs(10), lapin::Connection::connect_uri(parsed, properties))
        .await
        .map_err(|_| anyhow!("connecting to RabbitMQ timed out"))?
        .context("cannot connect to RabbitMQ")
}

async fn redis_connect(client_url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(client_url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client.get_multiplexed_async_connection_with_config(&config).await.context("cannot connect to Redis")
}

fn pubsub_target(endpoint: &str) -> Result<crate::grpc::Target> {
    crate::grpc::Target::new(endpoint, None, None, "localhost")
}

/// Makes the destination exist and be empty: a new stream, an exchange with a fresh bound queue,
/// no key, a new topic and subscription.
pub async fn setup(dest: &Dest) -> Result<()> {
    teardown(dest).await.ok();
    match dest {
        Dest::Nats { server, subject, stream } => {
            let js = nats_js(server).await?;
            let config = jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![subject.clone()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            };
            js.create_stream(config).await.map_err(|e| anyhow!("creating stream {stream}: {e}"))?;
        }
        Dest::Amqp { uri, exchange, routing_key, queue, .. } => {
            use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
            use lapin::types::FieldTable;
            let conn = amqp_connect(uri).await?;
            let ch = conn.create_channel().await?;
            let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
            ch.exchange_declare(exchange.as_str().into(), lapin::ExchangeKind::Direct, durable, FieldTable::default())
                .await
                .with_context(|| format!("declaring exchange {exchange}"))?;
            let q = QueueDeclareOptions { durable: true, ..Default::default() };
            ch.queue_declare(queue.as_str().into(), q, FieldTable::default())
                .await
                .with_context(|| format!("declaring queue {queue}"))?;
            ch.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding queue {queue} to {exchange}"))?;
            let _ = conn.close(200, "bye".into()).await;
        }
        Dest::Redis { .. } => {}
        Dest::Webhook { .. } => {}
        Dest::Pubsub { endpoint, topic, subscription } => {
            let target = pubsub_target(endpoint)?;
            let channel = target.channel().await?;
            target
                .publisher(channel.clone())
                .create_topic(ps::Topic { name: topic.clone(), ..Default::default() })
                .await
                .map_err(|e| anyhow!("CreateTopic {topic}: {e}"))?;
            target
                .subscriber(channel)
                .create_subscription(ps::Subscription {
                    name: subscription.clone(),
                    topic: topic.clone(),
                    ack_deadline_seconds: 60,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("CreateSubscription {subscription}: {e}"))?;
        }
    }
    Ok(())
}

/// Removes what [`setup`] made (and what was forwarded to it). Missing parts are not an error.
pub async fn teardown(dest: &Dest) -> Result<()> {
    match dest {
        Dest::Nats { server, stream, .. } => {
            let js = nats_js(server).await?;
            let _ = js.delete_stream(stream).await;
        }
        Dest::Amqp { uri, exchange, queue, .. } => {
            use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
            let conn = amqp_connect(uri).await?;
            // A failed delete closes the channel: one per call.
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
            }
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
            }
            let _ = conn.close(200, "bye".into()).await;
        }
        Dest::Redis { client_url, stream, .. } => {
            let mut con = redis_connect(client_url).await?;
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(stream).query_async(&mut con).await;
        }
        Dest::Webhook { .. } => {}
        Dest::Pubsub { endpoint, topic, subscription } => {
            let target = pubsub_target(endpoint)?;
            let channel = target.channel().await?;
            let _ = target
                .subscriber(channel.clone())
                .delete_subscription(ps::DeleteSubscriptionRequest { subscription: subscription.clone() })
                .await;
            let _ = target.publisher(channel).delete_topic(ps::DeleteTopicRequest { topic: topic.clone() }).await;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The webhook receiver

/// A minimal push endpoint: counts POSTs and answers 204, or 503 while `failing`.
#[derive(Default)]
pub struct Receiver {
    pub received: AtomicU64,
    pub refused: AtomicU64,
    pub bytes: AtomicU64,
    pub failing: AtomicBool,
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Arc<Receiver>>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    if r.failing.load(Ordering::Relaxed) {
        r.refused.fetch_add(1, Ordering::Relaxed);
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    r.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    r.received.fetch_add(1, Ordering::Relaxed);
    axum::http::StatusCode::NO_CONTENT
}

/// Serves the receiver on `addr` until the process ends.
pub async fn start_receiver(addr: SocketAddr, failing: bool) -> Result<Arc<Receiver>> {
    let r = Arc::new(Receiver { failing: AtomicBool::new(failing), ..Receiver::default() });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("the webhook receiver cannot bind {addr}"))?;
    let app = axum::Router::new().fallback(receive).with_state(r.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("webhook receiver failed: {e}");
        }
    });
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Counting at the destination

/// Reads how many messages the destination holds (or its consumer has received).
pub enum Counter {
    Nats {
        js: jetstream::Context,
        stream: String,
    },
    /// The depth of the queue bound to the exchange (a passive declare), nobody consuming.
    Amqp {
        _conn: lapin::Connection,
        channel: lapin::Channel,
        queue: String,
    },
    Redis {
        con: redis::aio::MultiplexedConnection,
        key: String,
    },
    Webhook(Arc<Receiver>),
    /// Unary Pull loops that acknowledge what they get.
    Pubsub {
        count: Arc<AtomicU64>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
}

impl Counter {
    pub async fn open(dest: &Dest, receiver: Option<Arc<Receiver>>) -> Result<Counter> {
        Ok(match dest {
            Dest::Nats { server, stream, .. } => Counter::Nats { js: nats_js(server).await?, stream: stream.clone() },
            Dest::Amqp { uri, queue, .. } => {
                let conn = amqp_connect(uri).await?;
                let channel = conn.create_channel().await?;
                Counter::Amqp { _conn: conn, channel, queue: queue.clone() }
            }
            Dest::Redis { client_url, stream, .. } => {
                Counter::Redis { con: redis_connect(client_url).await?, key: stream.clone() }
            }
            Dest::Webhook { .. } => Counter::Webhook(receiver.ok_or_else(|| anyhow!("no webhook receiver running"))?),
            Dest::Pubsub { endpoint, subscription, .. } => {
                let target = pubsub_target(endpoint)?;
                let count = Arc::new(AtomicU64::new(0));
                let mut tasks = Vec::new();
                for _ in 0..4 {
                    let mut sub = target.subscriber(target.channel().await?);
                    let (subscription, count) = (subscription.clone(), count.clone());
                    tasks.push(tokio::spawn(async move {
                        loop {
                            #[allow(deprecated)]
                            let request = ps::PullRequest {
                                subscription: subscription.clone(),
                                max_messages: 1000,
                                ..Default::default()
                            };
                            match sub.pull(request).await {
                                Ok(r) => {
                                    let ids: Vec<String> =
                                        r.into_inner().received_messages.into_iter().map(|m| m.ack_id).collect();
                                    if ids.is_empty() {
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                        continue;
                                    }
                                    let n = ids.len() as u64;
                                    let ack =
                                        ps::AcknowledgeRequest { subscription: subscription.clone(), ack_ids: ids };
                                    if sub.acknowledge(ack).await.is_ok() {
                                        count.fetch_add(n, Ordering::Relaxed);
                                    }
                                }
                                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                            }
                        }
                    }));
                }
                Counter::Pubsub { count, tasks }
            }
        })
    }

    pub async fn count(&mut self) -> Result<u64> {
        Ok(match self {
            Counter::Nats { js, stream } => {
                let s = js.get_stream(stream.as_str()).await.map_err(|e| anyhow!("stream info of {stream}: {e}"))?;
                s.cached_info().state.messages
            }
            Counter::Amqp { channel, queue, .. } => {
                let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
                let q =
                    channel.queue_declare(queue.as_str().into(), passive, lapin::types::FieldTable::default()).await?;
                u64::from(q.message_count())
            }
            Counter::Pubsub { count, .. } => count.load(Ordering::Relaxed),
            Counter::Redis { con, key } => redis::cmd("XLEN").arg(key.as_str()).query_async(con).await?,
            Counter::Webhook(r) => r.received.load(Ordering::Relaxed),
        })
    }

    /// Counts until at least `expected` or `quiet` without change (consumers lag behind).
    pub async fn settle(&mut self, expected: u64, quiet: Duration) -> Result<u64> {
        let mut last = (self.count().await?, Instant::now());
        while last.0 < expected && last.1.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = self.count().await?;
            if n != last.0 {
                last = (n, Instant::now());
            }
        }
        Ok(last.0)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        if let Counter::Pubsub { tasks, .. } = self {
            tasks.iter().for_each(|t| t.abort());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing directly: the ceiling

/// What the ceiling's messages look like.
struct Messages {
    run_id: u64,
    payload: usize,
    metadata: Metadata,
    registry: String,
    topic: String,
}

impl Messages {
    fn new(run_id: u64, payload: usize, metadata: Metadata) -> Messages {
        let registry = format!("bench-sink-{run_id:x}");
        Messages { run_id, payload, metadata, topic: format!("projects/bench/topics/{registry}"), registry }
    }

    fn payload(&self, seq: u64) -> Bytes {
        let mut p = vec![b'x'; self.payload];
        if self.payload >= 16 {
            p[..8].copy_from_slice(&self.run_id.to_le_bytes());
            p[12..16].copy_from_slice(&(seq as u32).to_le_bytes());
        }
        Bytes::from(p)
    }

    /// Ferrocore's attributes for a device message at offset `seq`: IoT Core's five, then
    /// `ferrocoreTopic` and `ferrocoreOffset` (crates/sinks/src/destination.rs).
    fn attributes(&self, seq: u64) -> Vec<(&'static str, String)> {
        if self.metadata == Metadata::None {
            return Vec::new();
        }
        vec![
            ("deviceId", format!("d{:07}", seq % 50)),
            ("deviceNumId", format!("{}", 2_811_495_301_740_000u64 + seq % 50)),
            ("deviceRegistryId", self.registry.clone()),
            ("deviceRegistryLocation", "us-central1".to_owned()),
            ("projectId", "bench".to_owned()),
            ("ferrocoreTopic", self.topic.clone()),
            ("ferrocoreOffset", seq.to_string()),
        ]
    }

    /// The webhook body: the raw payload, or Pub/Sub's push JSON as Ferrocore sends it.
    fn push_body(&self, seq: u64) -> (Vec<u8>, &'static str) {
        if self.metadata == Metadata::None {
            return (self.payload(seq).to_vec(), "application/octet-stream");
        }
        let attributes: serde_json::Map<String, serde_json::Value> =
            self.attributes(seq).into_iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
        let time = "2026-11-30T12:00:00.123456789Z";
        let body = json!({
            "message": {
                "data": base64::engine::general_purpose::STANDARD.encode(self.payload(seq)),
                "attributes": attributes,
                "messageId": seq.to_string(),
                "message_id": seq.to_string(),
                "publishTime": time,
                "publish_time": time,
            },
            "subscription": "projects/bench/subscriptions/ferrocore-sink",
        });
        (serde_json::to_vec(&body).unwrap_or_default(), "application/json")
    }
}

/// A connected publisher for one destination.
enum Publisher {
    Nats { js: jetstream::Context, subject: async_nats::Subject },
    Amqp { _conn: lapin::Connection, ch: lapin::Channel, exchange: String, routing_key: String },
    Redis { con: redis::aio::MultiplexedConnection, stream: String },
    Webhook { client: reqwest::Client, url: reqwest::Url },
    Pubsub { publisher: google_cloud_pubsub::client::Publisher },
}

impl Publisher {
    async fn open(dest: &Dest) -> Result<Publisher> {
        Ok(match dest {
            Dest::Nats { server, subject, .. } => {
                Publisher::Nats { js: nats_js(server).await?, subject: async_nats::Subject::from(subject.as_str()) }
            }
            Dest::Amqp { uri, exchange, routing_key, .. } => {
                let conn = amqp_connect(uri).await?;
                let ch = conn.create_channel().await?;
                ch.confirm_select(lapin::options::ConfirmSelectOptions::default()).await?;
                Publisher::Amqp { _conn: conn, ch, exchange: exchange.clone(), routing_key: routing_key.clone() }
            }
            Dest::Redis { client_url, stream, .. } => {
                Publisher::Redis { con: redis_connect(client_url).await?, stream: stream.clone() }
            }
            Dest::Webhook { url, .. } => Publisher::Webhook {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?,
                url: url.clone(),
            },
            Dest::Pubsub { endpoint, topic, .. } => {
                use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
                let client = google_cloud_pubsub::client::BasePublisher::builder()
                    .with_endpoint(endpoint)
                    .with_credentials(Anonymous::new().build())
                    .build()
                    .await
                    .map_err(|e| anyhow!("the Pub/Sub client: {e}"))?;
                // As crates/sinks/src/pubsub.rs sets it up.
                let publisher = client
                    .publisher(topic.clone())
                    .set_message_count_threshold(WINDOW as u32)
                    .set_byte_threshold(9_000_000)
                    .set_delay_threshold(Duration::from_millis(1))
                    .build();
                Publisher::Pubsub { publisher }
            }
        })
    }

    /// Sends messages `first..first + n` and waits until every one is confirmed.
    async fn window(&mut self, m: &Messages, first: u64, n: u64) -> Result<()> {
        match self {
            Publisher::Nats { js, subject } => {
                let mut acks: std::collections::VecDeque<jetstream::context::PublishAckFuture> =
                    std::collections::VecDeque::with_capacity(NATS_OUTSTANDING);
                for seq in first..first + n {
                    if acks.len() == NATS_OUTSTANDING
                        && let Some(ack) = acks.pop_front()
                    {
                        ack.await.map_err(|e| anyhow!("NATS PubAck: {e}"))?;
                    }
                    let ack = if m.metadata == Metadata::None {
                        js.publish(subject.clone(), m.payload(seq)).await
                    } else {
                        let mut headers = async_nats::HeaderMap::new();
                        for (k, v) in m.attributes(seq) {
                            headers.insert(k, v);
                        }
                        headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("{}:{seq}", m.topic));
                        js.publish_with_headers(subject.clone(), headers, m.payload(seq)).await
                    };
                    acks.push_back(ack.map_err(|e| anyhow!("NATS publish: {e}"))?);
                }
                for ack in acks {
                    ack.await.map_err(|e| anyhow!("NATS PubAck: {e}"))?;
                }
            }
            Publisher::Amqp { ch, exchange, routing_key, .. } => {
                use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
                let mut confirms = Vec::with_capacity(n as usize);
                for seq in first..first + n {
                    let mut properties = lapin::BasicProperties::default().with_delivery_mode(2);
                    if m.metadata == Metadata::Ferrocore {
                        let mut headers = FieldTable::default();
                        for (k, v) in m.attributes(seq) {
                            headers.insert(ShortString::from(k), AMQPValue::LongString(LongString::from(v)));
                        }
                        properties = properties
                            .with_headers(headers)
                            .with_timestamp(1_796_000_000)
                            .with_message_id(ShortString::from(format!("{}:{seq}", m.topic)));
                    }
                    let confirm = ch
                        .basic_publish(
                            exchange.as_str().into(),
                            routing_key.as_str().into(),
                            lapin::options::BasicPublishOptions::default(),
                            &m.payload(seq),
                            properties,
                        )
                        .await?;
                    confirms.push(confirm);
                }
                for c in confirms {
                    match c.await? {
                        lapin::Confirmation::Ack(_) => {}
                        other => bail!("RabbitMQ did not ack: {other:?}"),
                    }
                }
            }
            Publisher::Redis { con, stream } => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for seq in first..first + n {
                    let mut cmd = redis::cmd("XADD");
                    cmd.arg(stream.as_str()).arg("*").arg("data").arg(m.payload(seq).as_ref());
                    for (k, v) in m.attributes(seq) {
                        cmd.arg(k).arg(v);
                    }
                    pipe.add_command(cmd);
                }
                let replies: Vec<redis::RedisResult<redis::Value>> = pipe.query_async(con).await?;
                if let Some(Err(e)) = replies.iter().find(|r| r.is_err()) {
                    bail!("XADD refused: {e}");
                }
                if replies.len() as u64 != n {
                    bail!("Redis answered {} of {n} XADDs", replies.len());
                }
            }
            Publisher::Webhook { client, url } => {
                for seq in first..first + n {
                    let (body, content_type) = m.push_body(seq);
                    let r = client
                        .post(url.clone())
                        .header(reqwest::header::CONTENT_TYPE, content_type)
                        .body(body)
                        .send()
                        .await?;
                    let status = r.status();
                    let _ = r.bytes().await;
                    if !status.is_success() {
                        bail!("the webhook answered {status}");
                    }
                }
            }
            Publisher::Pubsub { publisher } => {
                let pending: Vec<_> = (first..first + n)
                    .map(|seq| {
                        let msg = google_cloud_pubsub::model::Message::new()
                            .set_data(m.payload(seq))
                            .set_attributes(m.attributes(seq));
                        publisher.publish(msg)
                    })
                    .collect();
                for p in pending {
                    p.await.map_err(|e| anyhow!("Pub/Sub publish: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug, Serialize)]
pub struct CeilingArgs {
    /// The destination, as a sink URL (see the module docs).
    #[arg(long)]
    pub dest: String,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Messages published before their confirmations are awaited, as Ferrocore's batches (4096;
    /// NATS keeps at most 1024 PubAcks outstanding within one; the webhook is one at a time
    /// whatever this says).
    #[arg(long, default_value_t = BATCH)]
    pub window: usize,
    /// What travels with each message besides the payload.
    #[arg(long, value_enum, default_value_t = Metadata::None)]
    pub metadata: Metadata,
    /// The destination's process id (nats-server, beam.smp, redis-server, the emulator's java):
    /// its CPU time per message.
    #[arg(long)]
    pub dest_pid: Option<u32>,
    /// Use the destination as it is (no fresh stream, queue, key or topic first).
    #[arg(long)]
    pub no_setup: bool,
    /// Leave what was published at the destination.
    #[arg(long)]
    pub keep: bool,
}

fn progress_every(ctx_progress: f64) -> Duration {
    Duration::from_secs_f64(ctx_progress.max(0.0))
}

/// `sink-ceiling`: the destination on its own.
pub async fn ceiling(args: CeilingArgs, progress: f64) -> Result<Report> {
    let dest = Dest::parse(&args.dest)?;
    let receiver = match &dest {
        Dest::Webhook { addr, .. } => Some(start_receiver(*addr, false).await?),
        _ => None,
    };
    if !args.no_setup {
        setup(&dest).await.with_context(|| format!("setting up {}", dest.describe()))?;
    }
    let mut counter = Counter::open(&dest, receiver.clone()).await?;
    let count0 = counter.count().await?;
    let mut publisher = Publisher::open(&dest).await?;
    let run_id = crate::run_id();
    let messages = Messages::new(run_id, args.payload, args.metadata);
    let window = if dest.kind() == "webhook" { 1 } else { args.window.max(1) };

    let confirmed = Arc::new(AtomicU64::new(0));
    let bench = Window::start(None);
    let dest_cpu = Window::start(args.dest_pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let progress = Progress::start("confirmed", confirmed.clone(), None, progress_every(progress));
    let mut hist = Histogram::new();
    let mut seq = 0u64;
    let mut error = None;
    // The webhook's "window" is a single POST; time batches of 1000 all the same, for the table.
    let timed = if window == 1 { WINDOW as u64 } else { window as u64 };
    let mut batch_started = Instant::now();
    while Instant::now() < deadline {
        if let Err(e) = publisher.window(&messages, seq, window as u64).await {
            error = Some(format!("{e:#}"));
            break;
        }
        seq += window as u64;
        confirmed.store(seq, Ordering::Relaxed);
        if seq.is_multiple_of(timed) {
            hist.record(batch_started.elapsed());
            batch_started = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(progress);
    let cpu = bench.finish();
    let dcpu = dest_cpu.finish();
    let at_dest = counter.settle(count0 + seq, Duration::from_secs(10)).await? - count0;
    drop(counter);
    if !args.keep {
        teardown(&dest).await.ok();
    }

    let rate = seq as f64 / seconds;
    let latency = hist.summary();
    let mut r = Report::new("sink-ceiling", serde_json::to_value(&args)?);
    r.row("destination", dest.describe());
    r.row("client", client_name(&dest));
    r.row("payload / metadata", format!("{} B / {:?}", args.payload, args.metadata));
    r.row(
        "pipelining",
        if window == 1 {
            "one at a time".to_owned()
        } else {
            format!("batches of {window}, confirmed before the next")
        },
    );
    r.row("confirmed", thousands(seq as f64));
    r.row("msg/s (confirmed)", thousands(rate));
    r.row(format!("per {timed} messages"), latency_row(&latency));
    r.row("found at the destination", format!("{} of {}", thousands(at_dest as f64), thousands(seq as f64)));
    r.row("client CPU per message", format!("{:.2} µs", cpu.bench_cpu_seconds * 1e6 / seq.max(1) as f64));
    if let Some(d) = dcpu.server_us_per(seq) {
        r.row("destination CPU per message", format!("{d:.2} µs"));
    }
    if let Some(e) = &error {
        r.row("error", e.clone());
    }
    r.set("kind", dest.kind());
    r.set("destination", dest.describe());
    r.set("confirmed", seq);
    r.set("seconds", seconds);
    r.set("msgs_per_second", rate);
    r.set("batch_latency", &latency);
    r.set("found_at_destination", at_dest);
    r.set("client_cpu_us_per_message", cpu.bench_cpu_seconds * 1e6 / seq.max(1) as f64);
    r.set("destination_cpu_us_per_message", dcpu.server_us_per(seq));
    r.set("destination_cpu_seconds", dcpu.server_cpu_seconds);
    r.set("error", error);
    Ok(r)
}

fn client_name(dest: &Dest) -> &'static str {
    match dest {
        Dest::Nats { .. } => "async-nats 0.51 (JetStream publish, PubAck futures)",
        Dest::Amqp { .. } => "lapin 4.12 (publisher confirms, persistent)",
        Dest::Redis { .. } => "redis 1.8 (multiplexed connection, pipelined XADD)",
        Dest::Webhook { .. } => "reqwest 0.13 (keep-alive, sequential POST) → built-in receiver",
        Dest::Pubsub { .. } => "google-cloud-pubsub 1.7 Publisher (1000 / 9 MB / 1 ms batches)",
    }
}

// ---------------------------------------------------------------------------------------------
// Ferrocore forwarding

#[derive(clap::Args, Debug, Serialize)]
pub struct ForwardArgs {
    /// The sink's destination, as the server's --sink URL names it (for the webhook: the bench
    /// serves the receiver at that address). None: no sink, the PUBACK baseline.
    #[arg(long)]
    pub dest: Option<String>,
    /// Publishing devices (one MQTT connection each).
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Target messages per second over all devices; 0: as fast as PUBACKs come back.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds of publishing (ignored with --outage, which sets it).
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Unacknowledged QoS 1 messages allowed per device.
    #[arg(long, default_value_t = 32)]
    pub inflight: usize,
    /// Seconds between samples of the destination and of GET /v1/sinks.
    #[arg(long, default_value_t = 1.0)]
    pub sample: f64,
    /// Seconds the destination is unavailable while devices publish; then devices stop, the
    /// destination comes back, and the catch-up is measured. 0: no outage.
    #[arg(long, default_value_t = 0.0)]
    pub outage: f64,
    /// A command (run with `sh -c`) starting the destination's server when the outage ends; the
    /// bench waits for its port and stops it at the end.
    #[arg(long)]
    pub outage_server: Option<String>,
    /// Seconds to wait for lag 0 after publishing (or after the outage).
    #[arg(long, default_value_t = 300.0)]
    pub drain_timeout: f64,
    /// The destination's process id: its CPU time per forwarded message.
    #[arg(long)]
    pub dest_pid: Option<u32>,
    /// Leave the destination as it is at the end (default: remove stream, queue, key, topic).
    #[arg(long)]
    pub keep: bool,
    /// Connects in progress at once while devices come up.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Publish to --dest from the bench itself (as sink-ceiling does) while the devices publish to
    /// a server without a sink: the destination's ceiling under the same device load.
    #[arg(long, requires = "dest", conflicts_with = "outage")]
    pub direct: bool,
    /// With --direct: what travels with each message.
    #[arg(long, value_enum, default_value_t = Metadata::Ferrocore)]
    pub metadata: Metadata,
}

/// `GET /v1/sinks`, summed over the sinks.
#[derive(Serialize, Clone, Debug, Default)]
pub struct SinkTotals {
    pub forwarded: u64,
    pub lag_messages: u64,
    pub lag_seconds: f64,
    pub lost: u64,
    pub rejected: u64,
    pub state: String,
    pub last_error: Option<String>,
    pub sinks: usize,
}

struct SinksApi {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl SinksApi {
    async fn get(&self) -> Result<SinkTotals> {
        let r = self.http.get(&self.url).bearer_auth(&self.token).send().await?;
        if !r.status().is_success() {
            bail!("GET /v1/sinks: HTTP {}", r.status());
        }
        let v: serde_json::Value = r.json().await?;
        let num = |s: &serde_json::Value, k: &str| s[k].as_str().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        let mut t = SinkTotals { state: "ok".into(), ..Default::default() };
        for s in v["sinks"].as_array().into_iter().flatten() {
            t.sinks += 1;
            t.forwarded += num(s, "forwardedMessages");
            t.lag_messages += num(s, "lagMessages");
            t.lost += num(s, "lostMessages");
            t.rejected += num(s, "rejectedMessages");
            t.lag_seconds = t.lag_seconds.max(s["lagSeconds"].as_f64().unwrap_or(0.0));
            if let Some(state) = s["state"].as_str()
                && state != "ok"
            {
                t.state = state.to_owned();
            }
            if let Some(e) = s["lastError"].as_str() {
                t.last_error = Some(e.to_owned());
            }
        }
        Ok(t)
    }
}

/// One reading, every `--sample` seconds.
#[derive(Serialize, Clone, Debug)]
struct Sample {
    /// Seconds since devices started publishing.
    t: f64,
    acked: u64,
    /// Messages at the destination (since the measured window started), when it is up.
    dest: Option<u64>,
    forwarded: Option<u64>,
    lag_messages: Option<u64>,
    lag_seconds: Option<f64>,
    state: Option<String>,
    server_cpu_seconds: Option<f64>,
}

/// A server started for the end of an outage; stopped when dropped.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_port(addr: &str, within: Duration) -> Result<()> {
    let end = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("nothing listens on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the destination is counted only after a catch-up instead of during it: a Pub/Sub
/// subscriber pulling from the emulator takes CPU from the publishes being timed.
fn defer_count(dest: &Dest) -> bool {
    matches!(dest, Dest::Pubsub { .. })
}

/// `sink-forward`: Ferrocore's sink under device load.
pub async fn forward(ctx: &Ctx, args: ForwardArgs) -> Result<Report> {
    if ctx.broker != Broker::Ferrocore {
        bail!("sink-forward needs --broker ferrocore");
    }
    let api = ctx.api("sink-forward")?;
    let dest = args.dest.as_deref().map(Dest::parse).transpose()?;
    let outage = args.outage > 0.0 && dest.is_some();
    // Whether Ferrocore forwards (else: no destination, or the bench publishes to it directly).
    let via_sink = dest.is_some() && !args.direct;
    let sinks = SinksApi {
        http: reqwest::Client::new(),
        url: format!("{}/v1/sinks", ctx.api_base.trim_end_matches('/')),
        token: api.token().unwrap_or_default().to_owned(),
    };
    if via_sink && sinks.get().await?.sinks == 0 {
        bail!("the server has no sink (start it with --sink 'projects/*/topics/*=URL')");
    }
    let receiver = match &dest {
        Some(Dest::Webhook { addr, .. }) => Some(start_receiver(*addr, outage).await?),
        _ => None,
    };
    let counter: Arc<Mutex<Option<Counter>>> = Arc::new(Mutex::new(None));
    if let (Some(d), false) = (&dest, outage) {
        if args.direct {
            setup(d).await.with_context(|| format!("setting up {}", d.describe()))?;
        }
        *counter.lock().await = Some(Counter::open(d, receiver.clone()).await?);
    }

    let n = args.devices;
    let fleet = Fleet::prepare(ctx, n + 1, "sink").await?;
    let mut clients = connect_all(ctx, &fleet, 0, n + 1, args.connect_concurrency, "connect devices").await?;
    let warm_client = clients.pop().ok_or_else(|| anyhow!("no device connected"))?;
    let never = Arc::new(AtomicBool::new(false));

    // Warm-up: one device publishes a little, and the sink must have found the topic (and,
    // without an outage, delivered it) before the clock starts.
    let warm_spec = PublishSpec {
        run_id: ctx.run_id,
        payload: args.payload,
        qos: QoS::AtLeastOnce,
        window: 32,
        interval: None,
        max_messages: WARMUP,
        deadline: Instant::now() + Duration::from_secs(30),
    };
    let warm = publish_loop(
        warm_client,
        n as u32,
        fleet.devices[n].events_topic.clone(),
        warm_spec,
        never.clone(),
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    if via_sink {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let s = sinks.get().await?;
            let ready = if outage { s.lag_messages >= warm.acked } else { s.forwarded >= warm.acked };
            if ready {
                break;
            }
            if Instant::now() > until {
                eprintln!("warning: after 30 s the sink reports {s:?}; measuring anyway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The measured window.
    let status0 = if via_sink { Some(sinks.get().await?) } else { None };
    let count0 = match counter.lock().await.as_mut() {
        Some(c) if via_sink => c.settle(warm.acked, Duration::from_secs(5)).await?,
        Some(c) => c.count().await?,
        None => 0,
    };
    let publish_seconds = if outage { args.outage } else { args.duration };
    let acked_total = Arc::new(AtomicU64::new(0));
    let window = ctx.cpu_window();
    let dest_window = Window::start(args.dest_pid);
    let started = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::<Sample>::new()));
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (counter, samples, stop, acked) =
            (counter.clone(), samples.clone(), sampler_stop.clone(), acked_total.clone());
        let sinks = SinksApi { http: sinks.http.clone(), url: sinks.url.clone(), token: sinks.token.clone() };
        let (has_dest, pid, every) = (via_sink, ctx.server_pid, Duration::from_secs_f64(args.sample.max(0.1)));
        let print_every = ctx.progress;
        tokio::spawn(async move {
            let mut next = started;
            let mut last_print = started;
            while !stop.load(Ordering::Relaxed) {
                next += every;
                tokio::time::sleep_until(next).await;
                let t = started.elapsed().as_secs_f64();
                let status = if has_dest { sinks.get().await.ok() } else { None };
                let dest_count = match counter.lock().await.as_mut() {
                    Some(c) => c.count().await.ok().map(|x| x.saturating_sub(count0)),
                    None => None,
                };
                let s = Sample {
                    t,
                    acked: acked.load(Ordering::Relaxed),
                    dest: dest_count,
                    forwarded: status.as_ref().map(|s| s.forwarded),
                    lag_messages: status.as_ref().map(|s| s.lag_messages),
                    lag_seconds: status.as_ref().map(|s| s.lag_seconds),
                    state: status.as_ref().map(|s| s.state.clone()),
                    server_cpu_seconds: pid.and_then(stats::sample).map(|p| p.cpu_seconds),
                };
                if !print_every.is_zero() && last_print.elapsed() >= print_every {
                    last_print = Instant::now();
                    eprintln!(
                        "[sink] {:>6.1} s  acked {}  at destination {}  lag {} msgs / {:.1} s  {}",
                        s.t,
                        thousands(s.acked as f64),
                        s.dest.map_or("-".into(), |d| thousands(d as f64)),
                        s.lag_messages.map_or("-".into(), |d| thousands(d as f64)),
                        s.lag_seconds.unwrap_or(0.0),
                        s.state.as_deref().unwrap_or("")
                    );
                }
                samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            }
        })
    };

    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(n as f64 / args.rate));
    let spec = PublishSpec {
        run_id: ctx.run_id,
        payload: args.payload,
        qos: QoS::AtLeastOnce,
        window: args.inflight.max(1),
        interval,
        max_messages: u64::from(u32::MAX),
        deadline: started + Duration::from_secs_f64(publish_seconds),
    };
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let topic = fleet.devices[i].events_topic.clone();
        tasks.push(tokio::spawn(publish_loop(
            client,
            i as u32,
            topic,
            spec.clone(),
            never.clone(),
            acked_total.clone(),
        )));
    }
    // --direct: the bench's own publisher, over the same window.
    let direct_confirmed = Arc::new(AtomicU64::new(0));
    let direct = match (&dest, args.direct) {
        (Some(d), true) => {
            let mut publisher = Publisher::open(d).await?;
            let messages = Messages::new(ctx.run_id, args.payload, args.metadata);
            let window = if d.kind() == "webhook" { 1 } else { BATCH as u64 };
            let (confirmed, deadline) = (direct_confirmed.clone(), spec.deadline);
            Some(tokio::spawn(async move {
                let mut seq = 0;
                while Instant::now() < deadline {
                    publisher.window(&messages, seq, window).await?;
                    seq += window;
                    confirmed.store(seq, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }))
        }
        _ => None,
    };
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await?);
    }
    let direct_error = match direct {
        Some(task) => task.await?.err().map(|e| format!("{e:#}")),
        None => None,
    };
    let publish_elapsed = started.elapsed().as_secs_f64();
    let cpu = window.finish();
    let direct_confirmed = direct_confirmed.load(Ordering::Relaxed);
    let status_end = if via_sink { Some(sinks.get().await?) } else { None };
    let count_end = match counter.lock().await.as_mut() {
        Some(c) => Some(c.count().await?.saturating_sub(count0)),
        None => None,
    };
    let t = totals(&runs);

    // After the window: the outage ends (catch-up), or the sink drains what is left.
    let mut _spawned = None;
    let mut recovery = None;
    let mut drain_seconds = None;
    let mut catchup = json!(null);
    if let (Some(d), true) = (&dest, via_sink) {
        let t_end = Instant::now();
        if outage {
            if let Some(cmd) = &args.outage_server {
                let child = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("exec {cmd}"))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .with_context(|| format!("cannot start {cmd}"))?;
                _spawned = Some(Spawned(child));
                if let Some(addr) = d.server_addr() {
                    wait_port(&addr, Duration::from_secs(30)).await?;
                }
            }
            setup(d).await.with_context(|| format!("bringing {} back", d.describe()))?;
            // The emulator's pulls would compete with the sink's publishes for the same JVM: its
            // subscription keeps what arrives, and is counted once the sink has caught up.
            if !defer_count(d) {
                *counter.lock().await = Some(Counter::open(d, receiver.clone()).await?);
            }
            if let Some(r) = &receiver {
                r.failing.store(false, Ordering::Relaxed);
            }
            recovery = Some(Instant::now());
        }
        let back = recovery.unwrap_or(t_end);
        let status_back = sinks.get().await?;
        let cpu_at = || ctx.server_pid.and_then(stats::sample).map(|p| p.cpu_seconds);
        let dest_cpu_at = || args.dest_pid.and_then(stats::sample).map(|p| p.cpu_seconds);
        let mut first: Option<(Instant, SinkTotals, Option<f64>, Option<f64>)> = None;
        let mut zero: Option<(Instant, SinkTotals, Option<f64>, Option<f64>)> = None;
        let give_up = back + Duration::from_secs_f64(args.drain_timeout);
        while Instant::now() < give_up {
            let s = sinks.get().await?;
            if first.is_none() && s.forwarded > status_back.forwarded {
                first = Some((Instant::now(), s.clone(), cpu_at(), dest_cpu_at()));
            }
            if s.lag_messages == 0 && s.forwarded >= status_back.forwarded + status_back.lag_messages {
                zero = Some((Instant::now(), s, cpu_at(), dest_cpu_at()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drain_seconds = zero.as_ref().map(|z| z.0.duration_since(t_end).as_secs_f64());
        if outage {
            let backlog = status_back.lag_messages;
            catchup = match (&first, &zero) {
                (Some(f), Some(z)) => {
                    let secs = z.0.duration_since(f.0).as_secs_f64().max(1e-3);
                    let moved = z.1.forwarded - f.1.forwarded;
                    let cpu = match (f.2, z.2) {
                        (Some(a), Some(b)) => Some((b - a) * 1e6 / moved.max(1) as f64),
                        _ => None,
                    };
                    let dcpu = match (f.3, z.3) {
                        (Some(a), Some(b)) => Some((b - a) * 1e6 / moved.max(1) as f64),
                        _ => None,
                    };
                    json!({
                        "backlog_messages": backlog,
                        "backlog_seconds": status_back.lag_seconds,
                        "first_delivery_after_seconds": f.0.duration_since(back).as_secs_f64(),
                        "catchup_seconds": secs,
                        "lag_zero_after_seconds": z.0.duration_since(back).as_secs_f64(),
                        "catchup_msgs_per_second": moved as f64 / secs,
                        "backlog_per_second_from_recovery": backlog as f64 / z.0.duration_since(back).as_secs_f64().max(1e-3),
                        "server_cpu_us_per_forwarded": cpu,
                        "destination_cpu_us_per_forwarded": dcpu,
                    })
                }
                _ => json!({"backlog_messages": backlog, "error": "did not catch up within --drain-timeout"}),
            };
        }
    }
    sampler_stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let dcpu = dest_window.finish();
    let status_final = if via_sink { Some(sinks.get().await?) } else { None };
    // Everything PUBACKed in the window is expected at the destination (and the warm-up's, when
    // the destination was empty before it, i.e. after an outage); with --direct, what the bench
    // published itself.
    let expected = if args.direct { direct_confirmed } else { t.acked + if outage { warm.acked } else { 0 } };
    // What reached the destination, once the sink drained (else still arriving: not checked).
    let drained = !via_sink || drain_seconds.is_some();
    if let Some(d) = &dest
        && outage
        && drained
        && defer_count(d)
    {
        *counter.lock().await = Some(Counter::open(d, receiver.clone()).await?);
    }
    let final_count = match counter.lock().await.as_mut() {
        Some(c) if drained => Some(c.settle(count0 + expected, Duration::from_secs(15)).await?.saturating_sub(count0)),
        _ => None,
    };
    *counter.lock().await = None;
    if let Some(d) = &dest
        && !args.keep
    {
        teardown(d).await.ok();
    }
    drop(_spawned);

    // Figures over the publishing window.
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    let publish_rate = t.acked as f64 / publish_elapsed;
    let dest_rate = count_end.map(|c| c as f64 / publish_elapsed);
    let forwarded_window = match (&status0, &status_end) {
        (Some(a), Some(b)) => Some(b.forwarded - a.forwarded),
        _ => None,
    };
    let forward_rate = forwarded_window.map(|f| f as f64 / publish_elapsed);
    let in_window = |s: &&Sample| s.t <= publish_elapsed + 0.01;
    let max_lag_messages = samples.iter().filter(in_window).filter_map(|s| s.lag_messages).max();
    let max_lag_seconds = samples
        .iter()
        .filter(in_window)
        .filter_map(|s| s.lag_seconds)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    // Lag in steady state: the second half of the window.
    let half: Vec<&Sample> =
        samples.iter().filter(|s| s.t >= publish_elapsed / 2.0 && s.t <= publish_elapsed).collect();
    let lag_trend = match (half.first(), half.last()) {
        (Some(a), Some(b)) if b.t > a.t => match (a.lag_messages, b.lag_messages) {
            (Some(x), Some(y)) => Some((y as f64 - x as f64) / (b.t - a.t)),
            _ => None,
        },
        _ => None,
    };
    let cpu_per_forwarded = forwarded_window.and_then(|f| cpu.server_us_per(f));

    let mut r = Report::new("sink-forward", serde_json::to_value(&args)?);
    r.row(
        "destination",
        match (&dest, args.direct) {
            (None, _) => "none (no sink: baseline)".into(),
            (Some(d), false) => format!("{} (Ferrocore's sink)", d.describe()),
            (Some(d), true) => format!("{} (the bench publishes directly; no sink)", d.describe()),
        },
    );
    r.row("devices / payload / QoS", format!("{n} / {} B / 1", args.payload));
    r.row(
        "device rate",
        if args.rate > 0.0 { format!("{} msg/s target", thousands(args.rate)) } else { "full speed".into() },
    );
    if outage {
        r.row("outage", format!("{:.0} s while devices publish, then devices stop", args.outage));
    }
    r.row("PUBACKed", format!("{} in {:.1} s", thousands(t.acked as f64), publish_elapsed));
    r.row("device msg/s (PUBACKed)", thousands(publish_rate));
    r.row("publish → PUBACK", latency_row(&t.latency));
    if args.direct {
        r.row(
            "direct msg/s at the destination (same window)",
            format!(
                "{} confirmed ({}/s; counted there: {})",
                thousands(direct_confirmed as f64),
                thousands(direct_confirmed as f64 / publish_elapsed),
                count_end.map_or("-".into(), |c| thousands(c as f64))
            ),
        );
        if let Some(e) = &direct_error {
            r.row("direct publisher error", e.clone());
        }
    }
    if !outage && via_sink {
        r.row(
            "msg/s at the destination (same window)",
            format!(
                "{} (sink counter: {})",
                dest_rate.map_or("-".into(), thousands),
                forward_rate.map_or("-".into(), thousands)
            ),
        );
        r.row(
            "lag during the window (max)",
            format!(
                "{} msgs, {:.1} s",
                max_lag_messages.map_or("-".into(), |x| thousands(x as f64)),
                max_lag_seconds.unwrap_or(0.0)
            ),
        );
        r.row(
            "lag at the end of publishing",
            format!(
                "{} msgs, {:.1} s",
                status_end.as_ref().map_or("-".into(), |s| thousands(s.lag_messages as f64)),
                status_end.as_ref().map_or(0.0, |s| s.lag_seconds)
            ),
        );
        if let Some(g) = lag_trend {
            r.row("lag growth, 2nd half of the window", format!("{} msgs/s", thousands(g)));
        }
        r.row(
            "drained (lag 0) after publishing",
            drain_seconds.map_or("no (timed out)".into(), |s| format!("{s:.1} s")),
        );
        r.row(
            "server CPU per forwarded message",
            cpu_per_forwarded.map_or("n/a".into(), |u| format!("{u:.2} µs (ingest and forwarding together)")),
        );
    }
    if outage {
        r.row(
            "backlog when the destination came back",
            format!(
                "{} msgs ({:.0} s)",
                thousands(catchup["backlog_messages"].as_f64().unwrap_or(0.0)),
                catchup["backlog_seconds"].as_f64().unwrap_or(0.0)
            ),
        );
        if catchup["catchup_seconds"].is_number() {
            r.row(
                "first delivery after it came back",
                format!(
                    "{:.1} s (the forwarder's back-off)",
                    catchup["first_delivery_after_seconds"].as_f64().unwrap_or(0.0)
                ),
            );
            r.row(
                "catch-up",
                format!(
                    "{} msg/s, lag 0 after {:.1} s",
                    thousands(catchup["catchup_msgs_per_second"].as_f64().unwrap_or(0.0)),
                    catchup["catchup_seconds"].as_f64().unwrap_or(0.0)
                ),
            );
            if let Some(u) = catchup["server_cpu_us_per_forwarded"].as_f64() {
                r.row("server CPU per forwarded message (catch-up, no ingest)", format!("{u:.2} µs"));
            }
        } else {
            r.row("catch-up", "did not reach lag 0 within --drain-timeout");
        }
    }
    r.row("server CPU per PUBACKed message", cpu.server_us_per(t.acked).map_or("n/a".into(), |u| format!("{u:.2} µs")));
    if let (Some(d), Some(f)) = (dcpu.server_cpu_seconds, status_final.as_ref())
        && f.forwarded > 0
    {
        r.row("destination CPU per forwarded message", format!("{:.2} µs", d * 1e6 / f.forwarded as f64));
    }
    if !drained {
        r.row("at the destination in the end", "not checked: the sink had not drained within --drain-timeout");
    }
    if let Some(c) = final_count {
        r.row(
            "at the destination in the end",
            format!(
                "{} of {} PUBACKed{}",
                thousands(c as f64),
                thousands(expected as f64),
                if c > expected { format!(" ({} extra: re-sent)", c - expected) } else { String::new() }
            ),
        );
    }
    if let Some(s) = &status_final {
        r.row(
            "sink state",
            format!(
                "{}; lost {} rejected {}{}",
                s.state,
                s.lost,
                s.rejected,
                s.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
            ),
        );
    }
    r.row(
        "device errors",
        format!("{}{}", t.errors.count, t.errors.samples.first().map(|s| format!(" (e.g. {s})")).unwrap_or_default()),
    );

    r.set("kind", dest.as_ref().map(Dest::kind));
    r.set("destination", dest.as_ref().map(Dest::describe));
    r.set("direct", args.direct);
    r.set("direct_confirmed", args.direct.then_some(direct_confirmed));
    r.set("direct_msgs_per_second", args.direct.then(|| direct_confirmed as f64 / publish_elapsed));
    r.set("direct_error", direct_error);
    r.set("outage", outage);
    r.set("acked", t.acked);
    r.set("seconds", publish_elapsed);
    r.set("msgs_per_second", publish_rate);
    r.set("latency", &t.latency);
    r.set("destination_msgs_per_second", dest_rate);
    r.set("destination_count_window", count_end);
    r.set("forwarded_window", forwarded_window);
    r.set("forwarded_msgs_per_second", forward_rate);
    r.set("max_lag_messages", max_lag_messages);
    r.set("max_lag_seconds", max_lag_seconds);
    r.set("lag_at_end", &status_end);
    r.set("lag_growth_per_second_second_half", lag_trend);
    r.set("drain_seconds", drain_seconds);
    r.set("cpu", &cpu);
    r.set("server_cpu_us_per_message", cpu.server_us_per(t.acked));
    r.set("server_cpu_us_per_forwarded", cpu_per_forwarded);
    r.set("destination_cpu_seconds", dcpu.server_cpu_seconds);
    r.set("catchup", catchup);
    r.set("expected_at_destination", expected);
    r.set("final_destination_count", final_count);
    r.set("missing_at_destination", final_count.map(|c| expected.saturating_sub(c)));
    r.set("sink_final", &status_final);
    r.set("errors", t.errors.json());
    r.set("samples", &samples);
    r.set("provision_seconds", fleet.provision_seconds);
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Admin

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AdminAction {
    /// Make the destination fresh: stream, exchange + bound queue, empty key, topic + subscription.
    Setup,
    /// Remove what setup made.
    Teardown,
    /// Print how many messages the destination holds (NATS, Redis).
    Count,
}

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    #[arg(value_enum)]
    pub action: AdminAction,
    /// The destination, as a sink URL.
    #[arg(long)]
    pub dest: String,
}

pub async fn admin(args: AdminArgs) -> Result<()> {
    let dest = Dest::parse(&args.dest)?;
    match args.action {
        AdminAction::Setup => setup(&dest).await?,
        AdminAction::Teardown => teardown(&dest).await?,
        AdminAction::Count => {
            let mut c = Counter::open(&dest, None).await?;
            println!("{}", c.count().await?);
        }
    }
    eprintln!("{:?}: {}", args.action, dest.describe());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sink_urls_it_measures() {
        let d = Dest::parse("nats://127.0.0.1:4222/bench.x?stream=BX").unwrap();
        assert!(matches!(d, Dest::Nats { ref subject, ref stream, .. } if subject == "bench.x" && stream == "BX"));
        let d = Dest::parse("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=e1&routing_key=k").unwrap();
        assert!(matches!(d, Dest::Amqp { ref queue, ref uri, .. } if queue == "e1.bench" && !uri.contains('?')));
        let d = Dest::parse("redis://127.0.0.1:6379?stream=s").unwrap();
        assert!(matches!(d, Dest::Redis { ref client_url, .. } if client_url == "redis://127.0.0.1:6379"));
        let d = Dest::parse("http://127.0.0.1:9999/push").unwrap();
        assert!(matches!(d, Dest::Webhook { addr, .. } if addr.port() == 9999));
        let d = Dest::parse("pubsub://127.0.0.1:8085/projects/p/topics/t").unwrap();
        assert!(
            matches!(d, Dest::Pubsub { ref subscription, ref endpoint, .. } if subscription == "projects/p/subscriptions/t-bench" && endpoint == "http://127.0.0.1:8085")
        );
        assert!(Dest::parse("nats://10.0.0.1:4222/x?stream=s").is_err());
        assert!(Dest::parse("nats://127.0.0.1:4222/x").is_err());
    }

    #[test]
    fn ferrocore_metadata_is_what_a_device_message_carries() {
        let m = Messages::new(1, 100, Metadata::Ferrocore);
        let names: Vec<&str> = m.attributes(5).iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "deviceId",
                "deviceNumId",
                "deviceRegistryId",
                "deviceRegistryLocation",
                "projectId",
                "ferrocoreTopic",
                "ferrocoreOffset"
            ]
        );
        assert_eq!(m.payload(5).len(), 100);
        let (body, ct) = m.push_body(5);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["message"]["attributes"]["ferrocoreOffset"], "5");
        assert!(Messages::new(1, 100, Metadata::None).attributes(5).is_empty());
    }
}
