//! Redis Streams destination:
//! `redis://[:PASSWORD@|USER:PASSWORD@]HOST:PORT[/DB]?stream=KEY[&maxlen=N]`, or `rediss://` for
//! TLS (the system's root certificates).
//!
//! Every message becomes one entry of the stream KEY, added with `XADD KEY [MAXLEN ~ N] * …`: the
//! field `data` holds the payload bytes unchanged, then each attribute of
//! [`attributes`](crate::destination::attributes) (IoT Core's `deviceId`, … then `ferrocoreTopic`
//! and `ferrocoreOffset`) follows as a field of its own. With `maxlen`, Redis trims the stream to
//! about N entries as it goes.
//!
//! A batch is one pipeline, one round trip: Redis answers every XADD in order, and the entries
//! before the first error reply are the confirmed prefix. When the pipeline as a whole fails (the
//! connection broke), nothing counts as confirmed and the batch is sent again: entries Redis had
//! already added then appear twice, which at-least-once delivery permits (`ferrocoreOffset` tells
//! them apart).

use crate::destination::{Destination, Failed, Source, Target, attributes, query_param};
use async_trait::async_trait;
use ferrocore_core::topics::StoredMessage;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

const DEFAULT_PORT: u16 = 6379;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole batch's pipeline answers within this, or the batch is failed and retried.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Query parameters Ferrocore reads itself; the rest (only `protocol`) go to the Redis client.
const OWN_PARAMETERS: [&str; 2] = ["stream", "maxlen"];

/// Checks a `redis://` sink URL without network I/O and builds the destination.
pub fn configure(url: &url::Url) -> Result<Arc<dyn Destination>, String> {
    Settings::parse(url)?;
    Ok(Arc::new(RedisStreams { shared: Arc::new(Shared::default()) }))
}

/// What a `redis://` URL says.
struct Settings {
    /// The URL for the Redis client: Ferrocore's parameters stripped. It may hold a password, so it
    /// is never shown; it also identifies the connection to share.
    client_url: url::Url,
    /// `HOST:PORT[/DB]`, safe to show.
    server: String,
    stream: String,
    maxlen: Option<u64>,
}

impl Settings {
    fn parse(url: &url::Url) -> Result<Settings, String> {
        if url.scheme() != "redis" && url.scheme() != "rediss" {
            return Err(format!("redis sink URL must start with redis:// or rediss://, not {}://", url.scheme()));
        }
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h,
            _ => return Err("redis sink URL needs a host (redis://HOST:PORT?stream=KEY)".into()),
        };
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(format!("redis sink URL path must be a database number, not {db:?}"));
        }
        let mut server = format!("{host}:{}", url.port().unwrap_or(DEFAULT_PORT));
        if !db.is_empty() {
            server = format!("{server}/{db}");
        }
        for (key, _) in url.query_pairs() {
            if !OWN_PARAMETERS.contains(&&*key) && key != "protocol" {
                return Err(format!(
                    "redis sink URL has an unknown parameter {key:?} (it takes stream, maxlen and protocol)"
                ));
            }
        }
        let stream = match query_param(url, "stream") {
            Some(s) if !s.is_empty() => s,
            _ => return Err("redis sink URL needs the stream key as ?stream=KEY".into()),
        };
        let maxlen = match query_param(url, "maxlen") {
            None => None,
            Some(n) => match n.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(format!("redis sink maxlen must be a positive integer, not {n:?}")),
            },
        };
        if url.fragment().is_some() {
            return Err("redis sink URL must not have a #fragment".into());
        }
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
        // Parsing here, without connecting, reports what the client would refuse at start. Its
        // messages never quote the URL.
        redis::Client::open(client_url.clone()).map_err(|e| format!("redis sink URL: {e}"))?;
        Ok(Settings { client_url, server, stream, maxlen })
    }
}

struct RedisStreams {
    shared: Arc<Shared>,
}

/// One multiplexed connection per client URL (server, database, credentials), shared by every
/// topic's target; a connection that failed is dropped so the next `open` connects afresh.
#[derive(Default)]
struct Shared {
    connections: Mutex<HashMap<String, (u64, MultiplexedConnection)>>,
    next_id: AtomicU64,
}

impl Shared {
    async fn connection(&self, settings: &Settings) -> Result<(u64, MultiplexedConnection), String> {
        let key = settings.client_url.as_str();
        let mut connections = self.connections.lock().await;
        if let Some((id, c)) = connections.get(key) {
            return Ok((*id, c.clone()));
        }
        let client = redis::Client::open(settings.client_url.clone())
            .map_err(|e| format!("redis sink URL for {}: {e}", settings.server))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("cannot connect to Redis at {}: {e}", settings.server)),
            Err(_) => return Err(format!("cannot connect to Redis at {}: timed out", settings.server)),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        connections.insert(key.to_string(), (id, connection.clone()));
        Ok((id, connection))
    }

    /// Forgets a connection that failed, unless another target already replaced it.
    async fn evict(&self, key: &str, id: u64) {
        let mut connections = self.connections.lock().await;
        if connections.get(key).is_some_and(|(current, _)| *current == id) {
            connections.remove(key);
        }
    }
}

#[async_trait]
impl Destination for RedisStreams {
    async fn open(&self, url: &url::Url, _source: &Source<'_>) -> Result<Box<dyn Target>, String> {
        let settings = Settings::parse(url)?;
        let (connection_id, connection) = self.shared.connection(&settings).await?;
        Ok(Box::new(StreamTarget { shared: self.shared.clone(), connection_id, connection, settings }))
    }
}

struct StreamTarget {
    shared: Arc<Shared>,
    connection_id: u64,
    connection: MultiplexedConnection,
    settings: Settings,
}

#[async_trait]
impl Target for StreamTarget {
    async fn deliver(&mut self, source: &Source<'_>, batch: &[StoredMessage]) -> Result<(), Failed> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::Pipeline::with_capacity(batch.len());
        // Each XADD gets its own reply, errors included, so a failed entry ends the confirmed
        // prefix instead of hiding the ones before it.
        pipe.ignore_errors();
        for message in batch {
            pipe.add_command(xadd(&self.settings, source, message));
        }
        let replies: Vec<redis::RedisResult<redis::Value>> = match pipe.query_async(&mut self.connection).await {
            Ok(replies) => replies,
            Err(e) => {
                self.shared.evict(self.settings.client_url.as_str(), self.connection_id).await;
                return Err(Failed::transient(format!(
                    "XADD to {} on Redis at {} failed: {e}",
                    self.settings.stream, self.settings.server
                )));
            }
        };
        for (i, reply) in replies.iter().enumerate() {
            if let Err(e) = reply {
                return Err(Failed::after(
                    i,
                    format!("Redis at {} refused XADD to {}: {e}", self.settings.server, self.settings.stream),
                ));
            }
        }
        if replies.len() < batch.len() {
            return Err(Failed::after(
                replies.len(),
                format!("Redis at {} answered {} of {} XADDs", self.settings.server, replies.len(), batch.len()),
            ));
        }
        Ok(())
    }
}

/// `XADD KEY [MAXLEN ~ N] * data PAYLOAD name value …`, built with one allocation for its
/// arguments and one for their bytes (this runs once per forwarded message).
fn xadd(settings: &Settings, source: &Source<'_>, message: &StoredMessage) -> redis::Cmd {
    let mut offset_text = itoa::Buffer::new();
    let offset = offset_text.format(message.offset);
    let (mut args, mut bytes) = (10, settings.stream.len() + 32 + message.data.len());
    for (name, value) in attributes(source, message, offset) {
        args += 2;
        bytes += name.len() + value.len();
    }
    let mut cmd = redis::Cmd::with_capacity(args, bytes);
    cmd.arg("XADD").arg(&settings.stream);
    if let Some(n) = settings.maxlen {
        // `~` lets Redis trim whole macro nodes, which is much cheaper than an exact MAXLEN.
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*").arg("data").arg(message.data.as_ref());
    for (name, value) in attributes(source, message, offset) {
        // The payload owns the `data` field.
        if name != "data" {
            cmd.arg(name).arg(value);
        }
    }
    cmd
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
    fn accepts_good_urls_and_strips_own_parameters() {
        let s = parse("redis://127.0.0.1:6379?stream=telemetry").unwrap();
        assert_eq!((s.server.as_str(), s.stream.as_str(), s.maxlen), ("127.0.0.1:6379", "telemetry", None));
        assert_eq!(s.client_url.as_str(), "redis://127.0.0.1:6379");
        let s = parse("redis://:pw@h/3?stream=t%2Fp&maxlen=1000&protocol=resp3").unwrap();
        assert_eq!((s.server.as_str(), s.stream.as_str(), s.maxlen), ("h:6379/3", "t/p", Some(1000)));
        assert_eq!(s.client_url.as_str(), "redis://:pw@h/3?protocol=resp3");
        assert!(parse("redis://user:pw@h:1/?stream=k").is_ok());
        let s = parse("rediss://:pw@redis.example:6380?stream=k").unwrap();
        assert_eq!(
            (s.server.as_str(), s.client_url.as_str()),
            ("redis.example:6380", "rediss://:pw@redis.example:6380")
        );
        assert!(configure(&url::Url::parse("redis://h:1?stream=k").unwrap()).is_ok());
    }

    #[test]
    fn refuses_bad_urls_with_a_reason() {
        let err = |s: &str| parse(s).err().unwrap();
        assert!(err("redis://h:6379").contains("?stream=KEY"));
        assert!(err("redis://h:6379?stream=").contains("?stream=KEY"));
        assert!(err("redis://h?stream=k&maxlen=0").contains("positive integer"));
        assert!(err("redis://h?stream=k&maxlen=-3").contains("positive integer"));
        assert!(err("redis://h?stream=k&maxlen=lots").contains("positive integer"));
        assert!(err("redis://h/db?stream=k").contains("database number"));
        assert!(err("redis://h?stream=k&maxln=3").contains("unknown parameter"));
        assert!(err("http://h?stream=k").contains("redis://"));
        assert!(err("rediss://h?stream=k#insecure").contains("fragment"));
        assert!(err("redis://h?stream=k&protocol=9").contains("protocol version"));
    }

    #[test]
    fn errors_never_show_the_password() {
        for s in ["redis://u:s3cret@h/x?stream=k", "redis://:s3cret@h?stream=k&maxlen=0", "redis://u:s3cret@h"] {
            assert!(!parse(s).err().unwrap().contains("s3cret"));
        }
    }

    #[test]
    fn xadd_puts_the_payload_first_and_it_wins_over_a_data_attribute() {
        let settings = parse("redis://h?stream=k&maxlen=5").unwrap();
        let m = StoredMessage {
            offset: 9,
            time: Timestamp(0),
            attributes: vec![("deviceId".into(), "d".into()), ("data".into(), "evil".into())],
            data: Bytes::from_static(b"\x00payload"),
        };
        let src = Source { sink: "test-sink", name: "projects/p/topics/t", project: "p", topic: "t" };
        let cmd = xadd(&settings, &src, &m);
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => b"<not simple>".to_vec(),
            })
            .collect();
        let expected: Vec<&[u8]> = vec![
            b"XADD",
            b"k",
            b"MAXLEN",
            b"~",
            b"5",
            b"*",
            b"data",
            b"\x00payload",
            b"deviceId",
            b"d",
            b"ferrocoreTopic",
            b"projects/p/topics/t",
            b"ferrocoreOffset",
            b"9",
        ];
        assert_eq!(args, expected.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
    }
}
