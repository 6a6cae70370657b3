//! RabbitMQ (AMQP 0-9-1) destination:
//! `amqp[s]://USER:PASSWORD@HOST:PORT/VHOST?[exchange=E&]routing_key=K`.
//!
//! Every message is published to exchange E (the default exchange, which routes by queue name,
//! when absent) with routing key K, as a persistent message (delivery mode 2), not `mandatory`:
//! what no binding routes is the broker configuration's business, as with any publisher.
//!
//! Metadata travels as AMQP headers (each attribute of
//! [`attributes`](crate::destination::attributes) as a long string: IoT Core's `deviceId`, … then
//! `ferrocoreTopic` and `ferrocoreOffset`), plus the basic properties `message_id` =
//! `{topic}:{offset}` for consumers that de-duplicate and `timestamp` = the message's publish time
//! in seconds.
//!
//! Each target has its own channel in publisher-confirm mode on a connection shared per server,
//! vhost and credentials. A batch is published whole, then its confirms are awaited in order;
//! the first nack or error ends the confirmed prefix there.

use crate::destination::{Destination, Failed, Source, Target, attributes, query_param};
use async_trait::async_trait;
use ferrocore_core::topics::StoredMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout, timeout_at};

/// Bounds connecting (TCP, TLS, AMQP handshake) and opening a channel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A batch is published and confirmed within this, or it stops where it got to; a broker that
/// blocks publishers (memory or disk alarm) would otherwise hold the forwarder indefinitely.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Query parameters Ferrocore reads itself; lapin's own (`heartbeat`, …) go to the client.
const OWN_PARAMETERS: [&str; 2] = ["exchange", "routing_key"];
const CLIENT_PARAMETERS: [&str; 5] = ["frame_max", "channel_max", "heartbeat", "connection_timeout", "auth_mechanism"];
/// AMQP's persistent delivery mode: the broker writes the message to disk in durable queues.
const PERSISTENT: u8 = 2;

/// Checks an `amqp://` or `amqps://` sink URL without network I/O and builds the destination.
pub fn configure(url: &url::Url) -> Result<Arc<dyn Destination>, String> {
    Settings::parse(url)?;
    Ok(Arc::new(Amqp { shared: Arc::new(Shared::default()) }))
}

/// What an `amqp://` URL says.
struct Settings {
    /// Holds the password: never shown. Its text identifies the connection to share.
    uri: AMQPUri,
    /// `HOST:PORT` and vhost, safe to show.
    server: String,
    exchange: ShortString,
    routing_key: ShortString,
}

impl Settings {
    fn parse(url: &url::Url) -> Result<Settings, String> {
        if url.scheme() != "amqp" && url.scheme() != "amqps" {
            return Err(format!("amqp sink URL must start with amqp:// or amqps://, not {}://", url.scheme()));
        }
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => return Err("amqp sink URL needs a host (amqp://USER:PASSWORD@HOST:PORT/VHOST?…)".into()),
        };
        for (key, _) in url.query_pairs() {
            if !OWN_PARAMETERS.contains(&&*key) && !CLIENT_PARAMETERS.contains(&&*key) {
                return Err(format!(
                    "amqp sink URL has an unknown parameter {key:?} (it takes exchange, routing_key, {})",
                    CLIENT_PARAMETERS.join(", ")
                ));
            }
        }
        if url.fragment().is_some() {
            return Err("amqp sink URL must not have a #fragment".into());
        }
        let exchange = query_param(url, "exchange").unwrap_or_default();
        let exchange =
            ShortString::try_new(exchange).map_err(|_| "amqp sink exchange name is longer than 255 bytes")?;
        let routing_key = match query_param(url, "routing_key") {
            Some(k) => k,
            None => return Err("amqp sink URL needs ?routing_key=K (the queue name for the default exchange)".into()),
        };
        if routing_key.is_empty() && exchange.as_str().is_empty() {
            return Err("amqp sink URL needs a routing_key: the default exchange routes by queue name".into());
        }
        let routing_key =
            ShortString::try_new(routing_key).map_err(|_| "amqp sink routing_key is longer than 255 bytes")?;

        let mut client_url = url.clone();
        let passed: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !OWN_PARAMETERS.contains(&&**k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if passed.is_empty() {
            client_url.set_query(None);
        } else {
            client_url.query_pairs_mut().clear().extend_pairs(passed);
        }
        // lapin's parser decodes the user, password and lapin's parameters. Its messages quote
        // the URL only when it has no host, which was ruled out above; scrub the password anyway.
        let mut uri = AMQPUri::from_str(client_url.as_str()).map_err(|e| {
            let e = match url.password() {
                Some(p) if !p.is_empty() => e.replace(p, "***"),
                _ => e,
            };
            format!("amqp sink URL: {e}")
        })?;
        // It takes the host from `Url::domain`, which is empty for IP addresses.
        uri.authority.host = host;
        let path = url.path().strip_prefix('/').unwrap_or(url.path());
        uri.vhost = percent_decode(path).map_err(|e| format!("amqp sink vhost {e}"))?;
        if uri.vhost.is_empty() {
            uri.vhost = "/".into();
        }
        let server = format!("{}:{} (vhost {})", uri.authority.host, uri.authority.port, uri.vhost);
        Ok(Settings { uri, server, exchange, routing_key })
    }

    fn connection_key(&self) -> String {
        self.uri.to_string()
    }

    /// How the exchange is named in messages.
    fn exchange_name(&self) -> String {
        match self.exchange.as_str() {
            "" => "the default exchange".into(),
            e => format!("exchange {e:?}"),
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "is not valid UTF-8 once percent-decoded".to_string())
}

struct Amqp {
    shared: Arc<Shared>,
}

/// One connection per server, vhost and credentials, shared by every topic's target (each with
/// its own channel); a connection that failed is dropped so the next `open` connects afresh, and
/// one whose channels ran out (the broker's `channel_max`, 2047 by default) is left to the targets
/// it has while new ones go to a new connection.
#[derive(Default)]
struct Shared {
    connections: Mutex<HashMap<String, (u64, Arc<Connection>)>>,
    next_id: AtomicU64,
}

impl Shared {
    /// The current connection for `settings`, or a new one if there is none, it is closed, or it
    /// is the one numbered `full`.
    async fn connection(&self, settings: &Settings, full: Option<u64>) -> Result<(u64, Arc<Connection>), String> {
        let key = settings.connection_key();
        let mut connections = self.connections.lock().await;
        if let Some((id, connection)) = connections.get(&key) {
            if connection.status().connected() && full != Some(*id) {
                return Ok((*id, connection.clone()));
            }
            connections.remove(&key);
        }
        let properties = ConnectionProperties::default().with_connection_name("ferrocore".into());
        let connection = match timeout(CONNECT_TIMEOUT, Connection::connect_uri(settings.uri.clone(), properties)).await
        {
            Ok(Ok(c)) => Arc::new(c),
            Ok(Err(e)) => return Err(format!("cannot connect to RabbitMQ at {}: {e}", settings.server)),
            Err(_) => return Err(format!("cannot connect to RabbitMQ at {}: timed out", settings.server)),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        connections.insert(key, (id, connection.clone()));
        Ok((id, connection))
    }

    /// Forgets a connection that is no longer open, unless another target already replaced it.
    async fn evict_if_closed(&self, key: &str, id: u64, connection: &Connection) {
        if connection.status().connected() {
            return;
        }
        let mut connections = self.connections.lock().await;
        if connections.get(key).is_some_and(|(current, _)| *current == id) {
            connections.remove(key);
        }
    }
}

#[async_trait]
impl Destination for Amqp {
    async fn open(&self, url: &url::Url, _source: &Source<'_>) -> Result<Box<dyn Target>, String> {
        let settings = Settings::parse(url)?;
        let key = settings.connection_key();
        let mut full = None;
        loop {
            let (connection_id, connection) = self.shared.connection(&settings, full).await?;
            match timeout(CONNECT_TIMEOUT, channel(&connection, &settings)).await {
                Ok(Ok(channel)) => {
                    return Ok(Box::new(AmqpTarget {
                        shared: self.shared.clone(),
                        key,
                        connection_id,
                        connection,
                        channel,
                        settings,
                    }));
                }
                // Once: a fresh connection has all its channels free.
                Ok(Err(ChannelError::Full(_))) if full.is_none() => full = Some(connection_id),
                Ok(Err(ChannelError::Full(e) | ChannelError::Other(e))) => {
                    self.shared.evict_if_closed(&key, connection_id, &connection).await;
                    return Err(e);
                }
                Err(_) => return Err(format!("RabbitMQ at {} did not open a channel in time", settings.server)),
            }
        }
    }
}

enum ChannelError {
    /// The connection has no channel left.
    Full(String),
    Other(String),
}

/// A channel in confirm mode, after checking that the exchange exists so that a typo shows at
/// `open` rather than as failing batches.
async fn channel(connection: &Connection, settings: &Settings) -> Result<Channel, ChannelError> {
    let channel = connection.create_channel().await.map_err(|e| {
        let text = format!("cannot open a channel to RabbitMQ at {}: {e}", settings.server);
        match e.kind() {
            lapin::ErrorKind::ChannelsLimitReached => ChannelError::Full(text),
            _ => ChannelError::Other(text),
        }
    })?;
    if !settings.exchange.as_str().is_empty() {
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        channel
            .exchange_declare(settings.exchange.clone(), ExchangeKind::Direct, passive, FieldTable::default())
            .await
            .map_err(|e| ChannelError::Other(describe(settings, &e)))?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| ChannelError::Other(format!("RabbitMQ at {} refused publisher confirms: {e}", settings.server)))?;
    Ok(channel)
}

/// Names a missing exchange plainly: RabbitMQ reports it by closing the channel with 404.
fn describe(settings: &Settings, e: &lapin::Error) -> String {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind()
        && amqp.get_id() == 404
    {
        return format!(
            "{} does not exist on RabbitMQ at {} ({})",
            settings.exchange_name(),
            settings.server,
            amqp.get_message()
        );
    }
    format!("publish to {} on RabbitMQ at {} failed: {e}", settings.exchange_name(), settings.server)
}

struct AmqpTarget {
    shared: Arc<Shared>,
    key: String,
    connection_id: u64,
    /// Keeps the shared connection alive as long as the channel.
    connection: Arc<Connection>,
    channel: Channel,
    settings: Settings,
}

#[async_trait]
impl Target for AmqpTarget {
    async fn deliver(&mut self, source: &Source<'_>, batch: &[StoredMessage]) -> Result<(), Failed> {
        let result = self.publish(source, batch).await;
        if result.is_err() {
            self.shared.evict_if_closed(&self.key, self.connection_id, &self.connection).await;
        }
        result
    }
}

impl AmqpTarget {
    async fn publish(&self, source: &Source<'_>, batch: &[StoredMessage]) -> Result<(), Failed> {
        let deadline = Instant::now() + BATCH_TIMEOUT;
        let late = |i: usize| {
            Failed::after(i, format!("RabbitMQ at {} did not confirm the batch in time", self.settings.server))
        };
        let mut confirms = Vec::with_capacity(batch.len());
        let mut stopped = None;
        for (i, message) in batch.iter().enumerate() {
            let properties = match properties(source, message) {
                Ok(p) => p,
                Err(e) => {
                    stopped = Some(Failed::permanent(i, e));
                    break;
                }
            };
            let publish = self.channel.basic_publish(
                self.settings.exchange.clone(),
                self.settings.routing_key.clone(),
                BasicPublishOptions::default(),
                &message.data,
                properties,
            );
            match timeout_at(deadline, publish).await {
                Ok(Ok(confirm)) => confirms.push(confirm),
                Ok(Err(e)) => {
                    stopped = Some(Failed::after(i, describe(&self.settings, &e)));
                    break;
                }
                Err(_) => {
                    stopped = Some(late(i));
                    break;
                }
            }
        }
        // The broker confirms in publish order; the first confirm missing ends the prefix. When
        // the channel closed (a missing exchange, say), every pending confirm fails with the
        // reason, which is more telling than a publish refused on the closed channel.
        for (i, confirm) in confirms.into_iter().enumerate() {
            match timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(_))) => {}
                Ok(Ok(Confirmation::Nack(_))) => {
                    return Err(Failed::after(
                        i,
                        format!(
                            "RabbitMQ at {} refused (nacked) a message published to {}",
                            self.settings.server,
                            self.settings.exchange_name()
                        ),
                    ));
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    return Err(Failed::after(i, "the RabbitMQ channel is not in confirm mode"));
                }
                Ok(Err(e)) => return Err(Failed::after(i, describe(&self.settings, &e))),
                Err(_) => return Err(late(i)),
            }
        }
        stopped.map_or(Ok(()), Err)
    }
}

/// Persistent, with every attribute as a long-string header, `message_id` and `timestamp`.
fn properties(source: &Source<'_>, message: &StoredMessage) -> Result<BasicProperties, String> {
    let offset = message.offset.to_string();
    let mut headers = FieldTable::default();
    for (key, value) in attributes(source, message, &offset) {
        let name = ShortString::try_new(key)
            .map_err(|_| format!("attribute name {key:?} is longer than an AMQP header name can be (255 bytes)"))?;
        headers.insert(name, AMQPValue::LongString(LongString::from(value)));
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers)
        .with_timestamp(u64::try_from(message.time.unix_seconds()).unwrap_or(0));
    // A message id has at most 255 bytes; an extremely long topic name goes without one, its
    // `ferrocoreTopic` and `ferrocoreOffset` headers identify the message all the same.
    if let Ok(id) = ShortString::try_new(format!("{}:{}", source.name, message.offset)) {
        properties = properties.with_message_id(id);
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferrocore_model::Timestamp;

    fn parse(s: &str) -> Result<Settings, String> {
        Settings::parse(&url::Url::parse(s).map_err(|e| e.to_string())?)
    }

    #[test]
    fn accepts_good_urls() {
        let s = parse("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=telemetry&routing_key=p.t").unwrap();
        assert_eq!(s.uri.authority.host, "127.0.0.1");
        assert_eq!(s.uri.authority.port, 5672);
        assert_eq!(s.uri.vhost, "/");
        assert_eq!((s.exchange.as_str(), s.routing_key.as_str()), ("telemetry", "p.t"));
        assert_eq!(s.server, "127.0.0.1:5672 (vhost /)");

        let s = parse("amqps://u%40x:p%3Aw@mq.example/prod?routing_key=q&heartbeat=30").unwrap();
        assert_eq!(s.uri.scheme, lapin::uri::AMQPScheme::AMQPS);
        assert_eq!(s.uri.authority.port, 5671);
        assert_eq!(
            (s.uri.authority.userinfo.username.as_str(), s.uri.authority.userinfo.password.as_str()),
            ("u@x", "p:w")
        );
        assert_eq!(s.uri.vhost, "prod");
        assert_eq!(s.uri.query.heartbeat, Some(30));
        assert_eq!(s.exchange.as_str(), "");

        assert_eq!(parse("amqp://h?routing_key=q").unwrap().uri.vhost, "/");
        assert_eq!(parse("amqp://h/?routing_key=q").unwrap().uri.vhost, "/");
        assert_eq!(parse("amqp://h?exchange=fanout&routing_key=").unwrap().routing_key.as_str(), "");
        assert!(configure(&url::Url::parse("amqp://h?routing_key=q").unwrap()).is_ok());
    }

    #[test]
    fn refuses_bad_urls_with_a_reason() {
        let err = |s: &str| parse(s).err().unwrap();
        assert!(err("amqp://h/").contains("routing_key"));
        assert!(err("amqp://h/?exchange=x").contains("routing_key"));
        assert!(err("amqp://h/?routing_key=").contains("routing_key"));
        assert!(err(&format!("amqp://h/?routing_key={}", "k".repeat(256))).contains("255"));
        assert!(err(&format!("amqp://h/?routing_key=q&exchange={}", "e".repeat(256))).contains("255"));
        assert!(err("amqp://h/?routing_key=q&exchnage=x").contains("unknown parameter"));
        assert!(err("amqp://h/?routing_key=q&heartbeat=often").contains("amqp sink URL"));
        assert!(err("http://h/?routing_key=q").contains("amqp://"));
    }

    #[test]
    fn errors_never_show_the_password() {
        for s in ["amqp://u:s3cret@h/", "amqp://u:s3cret@h/?routing_key=q&heartbeat=s3cret", "amqp://u:s3cret@h/?x=1"] {
            assert!(!parse(s).err().unwrap().contains("s3cret"));
        }
    }

    #[test]
    fn properties_carry_headers_message_id_and_timestamp() {
        let m = StoredMessage {
            offset: 12,
            time: Timestamp::from_unix_seconds(1_700_000_000),
            attributes: vec![("deviceId".into(), "d1".into()), ("goog-x".into(), "hidden".into())],
            data: Bytes::from_static(b"x"),
        };
        let src = Source { sink: "test-sink", name: "projects/p/topics/t", project: "p", topic: "t" };
        let p = properties(&src, &m).unwrap();
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.timestamp(), &Some(1_700_000_000));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("projects/p/topics/t:12"));
        let headers = p.headers().as_ref().unwrap();
        let get = |k: &str| headers.inner().get(k).cloned();
        assert_eq!(get("deviceId"), Some(AMQPValue::LongString("d1".into())));
        assert_eq!(get("ferrocoreTopic"), Some(AMQPValue::LongString("projects/p/topics/t".into())));
        assert_eq!(get("ferrocoreOffset"), Some(AMQPValue::LongString("12".into())));
        assert_eq!(headers.inner().len(), 3);

        let long = StoredMessage { attributes: vec![("k".repeat(256), "v".into())], ..m };
        assert!(properties(&src, &long).unwrap_err().contains("255"));
    }
}
