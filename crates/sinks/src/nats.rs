//! NATS JetStream destination: `nats://[USER:PASSWORD@]HOST:PORT/SUBJECT[?stream=NAME]`.
//!
//! Every message is published to SUBJECT (the URL path, percent-decoded) and counts as delivered
//! once the stream that captures the subject answered with its PubAck. With `?stream=NAME` the
//! target makes sure a file-backed stream of that name exists (created with SUBJECT as its only
//! subject, or used as it is when it already exists); without it, some stream must capture the
//! subject already.
//!
//! Metadata travels as NATS headers: each attribute of
//! [`attributes`](crate::destination::attributes) (IoT Core's `deviceId`, … then `ferrocoreTopic`
//! and `ferrocoreOffset`), plus `Nats-Msg-Id: {topic}:{offset}` so that JetStream's duplicate
//! window drops what the forwarder re-sends after a failure. Attributes named `Nats-…` are left
//! out, since JetStream would act on them (rollup, expected sequence, TTL); one whose name or value
//! a NATS header cannot carry (a line break, say) makes its message undeliverable rather than
//! silently altered.
//!
//! Confirms are pipelined: up to a window of PubAcks is outstanding at any time, awaited in
//! publish order; the first one missing ends the batch there.

use crate::destination::{Destination, Failed, Source, Target, attributes, query_param};
use async_nats::jetstream::{self, context::PublishErrorKind, stream::StorageType};
use async_nats::{HeaderMap, HeaderName, HeaderValue, Subject};
use async_trait::async_trait;
use ferrocore_core::topics::StoredMessage;
use std::collections::{HashMap, VecDeque};
use std::error::Error as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

const DEFAULT_PORT: u16 = 4222;
/// Bounds the TCP and handshake part of `open`, so a black-holed server does not stall it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a PubAck (and a stream lookup) may take before the batch stops there.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishes in flight per target before their acks are awaited; also the context's permit count,
/// so a window never waits on permits held by its own unawaited acks.
const WINDOW: usize = 1024;

/// Checks a `nats://` sink URL without network I/O and builds the destination.
pub fn configure(url: &url::Url) -> Result<Arc<dyn Destination>, String> {
    Settings::parse(url)?;
    Ok(Arc::new(Nats { shared: Arc::new(Shared::default()) }))
}

/// What a `nats://` URL says. No `Debug`: it holds the password.
struct Settings {
    /// `host:port`, without credentials: safe to show.
    server: String,
    credentials: Option<(String, String)>,
    subject: String,
    stream: Option<String>,
}

impl Settings {
    fn parse(url: &url::Url) -> Result<Settings, String> {
        if url.scheme() != "nats" {
            return Err(format!("nats sink URL must start with nats://, not {}://", url.scheme()));
        }
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h,
            _ => return Err("nats sink URL needs a host (nats://HOST:PORT/SUBJECT)".into()),
        };
        let server = format!("{host}:{}", url.port().unwrap_or(DEFAULT_PORT));
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => {
                let user = percent_decode(user).map_err(|e| format!("nats sink URL user name {e}"))?;
                let password =
                    percent_decode(password.unwrap_or("")).map_err(|_| "nats sink URL password is not valid UTF-8")?;
                Some((user, password))
            }
        };
        let path = url.path().strip_prefix('/').unwrap_or(url.path());
        if path.is_empty() {
            return Err("nats sink URL needs a subject as its path (nats://HOST:PORT/SUBJECT)".into());
        }
        let subject = percent_decode(path).map_err(|e| format!("nats sink URL subject {e}"))?;
        check_subject(&subject)?;
        for (key, _) in url.query_pairs() {
            if key != "stream" {
                return Err(format!("nats sink URL has an unknown parameter {key:?} (it takes only stream)"));
            }
        }
        let stream = query_param(url, "stream");
        if let Some(name) = &stream {
            check_stream_name(name)?;
        }
        if url.fragment().is_some() {
            return Err("nats sink URL must not have a #fragment".into());
        }
        Ok(Settings { server, credentials, subject, stream })
    }

    /// Identifies the connection to share: server and credentials (never shown).
    fn connection_key(&self) -> String {
        match &self.credentials {
            Some((user, password)) => format!("{}\n{user}\n{password}", self.server),
            None => self.server.clone(),
        }
    }
}

/// A publish subject: dot-separated non-empty tokens, no wildcards, no whitespace.
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("nats sink subject {subject:?} must not contain spaces or control characters"));
    }
    if subject.contains(['*', '>']) {
        return Err(format!("nats sink subject {subject:?} must not contain wildcards (* or >)"));
    }
    if subject.split('.').any(str::is_empty) {
        return Err(format!("nats sink subject {subject:?} has an empty token (leading, trailing or doubled dot)"));
    }
    Ok(())
}

/// JetStream stream names also name directories on the server.
fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("nats sink URL has an empty stream= parameter".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')) {
        return Err(format!("nats stream name {name:?} must not contain spaces, '.', '*', '>', '/' or '\\'"));
    }
    if name.len() > 255 {
        return Err("nats stream name is longer than 255 bytes".into());
    }
    Ok(())
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

struct Nats {
    shared: Arc<Shared>,
}

/// One client per server and credentials, shared by every topic's target.
#[derive(Default)]
struct Shared {
    clients: Mutex<HashMap<String, (u64, async_nats::Client)>>,
    next_id: AtomicU64,
}

impl Shared {
    async fn client(&self, settings: &Settings) -> Result<(u64, async_nats::Client), String> {
        let key = settings.connection_key();
        let mut clients = self.clients.lock().await;
        if let Some((id, client)) = clients.get(&key) {
            // The client reconnects by itself, but while it is down a fresh connect gives `open`
            // a prompt error instead of a target whose acks all time out.
            if client.connection_state() == async_nats::connection::State::Connected {
                return Ok((*id, client.clone()));
            }
            clients.remove(&key);
        }
        let mut options = async_nats::ConnectOptions::new()
            .name("ferrocore")
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(ACK_TIMEOUT));
        if let Some((user, password)) = &settings.credentials {
            options = options.user_and_password(user.clone(), password.clone());
        }
        let connect = options.connect(format!("nats://{}", settings.server));
        let client = match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(format!("cannot connect to NATS at {}: {e}", settings.server)),
            Err(_) => return Err(format!("cannot connect to NATS at {}: timed out", settings.server)),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        clients.insert(key, (id, client.clone()));
        Ok((id, client))
    }

    /// Forgets a client whose connection is down, unless it was already replaced; a healthy one
    /// stays shared even when a publish failed for another reason (no stream, say).
    async fn evict_if_down(&self, key: &str, id: u64, client: &async_nats::Client) {
        if client.connection_state() == async_nats::connection::State::Connected {
            return;
        }
        let mut clients = self.clients.lock().await;
        if clients.get(key).is_some_and(|(current, _)| *current == id) {
            clients.remove(key);
        }
    }
}

#[async_trait]
impl Destination for Nats {
    async fn open(&self, url: &url::Url, _source: &Source<'_>) -> Result<Box<dyn Target>, String> {
        let settings = Settings::parse(url)?;
        let (client_id, client) = self.shared.client(&settings).await?;
        // A context per target: its ack permits and acker task are not shared with other topics.
        let js = jetstream::context::ContextBuilder::new().timeout(ACK_TIMEOUT).max_ack_inflight(WINDOW).build(client);
        if let Some(name) = &settings.stream {
            let config = jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![settings.subject.clone()],
                storage: StorageType::File,
                ..Default::default()
            };
            if let Err(e) = js.get_or_create_stream(config).await {
                self.shared.evict_if_down(&settings.connection_key(), client_id, &js.client()).await;
                return Err(format!("cannot get or create NATS JetStream stream {name} on {}: {e}", settings.server));
            }
        }
        Ok(Box::new(NatsTarget {
            shared: self.shared.clone(),
            key: settings.connection_key(),
            client_id,
            js,
            subject: Subject::from(settings.subject.as_str()),
            server: settings.server,
        }))
    }
}

struct NatsTarget {
    shared: Arc<Shared>,
    key: String,
    client_id: u64,
    js: jetstream::Context,
    subject: Subject,
    server: String,
}

#[async_trait]
impl Target for NatsTarget {
    async fn deliver(&mut self, source: &Source<'_>, batch: &[StoredMessage]) -> Result<(), Failed> {
        let result = self.publish(source, batch).await;
        if result.is_err() {
            self.shared.evict_if_down(&self.key, self.client_id, &self.js.client()).await;
        }
        result
    }
}

impl NatsTarget {
    /// Publishes `batch` keeping up to [`WINDOW`] PubAcks outstanding: before each publish past
    /// the window the oldest ack is awaited, so the server always has work queued and the stream
    /// never waits for a round trip between windows.
    async fn publish(&self, source: &Source<'_>, batch: &[StoredMessage]) -> Result<(), Failed> {
        let mut acks = VecDeque::with_capacity(WINDOW.min(batch.len()));
        // Index (in `batch`) of the oldest outstanding ack.
        let mut confirmed = 0;
        let mut stopped = None;
        for (i, message) in batch.iter().enumerate() {
            if acks.len() == WINDOW
                && let Some(ack) = acks.pop_front()
            {
                await_ack(ack, confirmed, self).await?;
                confirmed += 1;
            }
            let headers = match headers(source, message) {
                Ok(h) => h,
                Err(e) => {
                    stopped = Some(Failed::permanent(i, e));
                    break;
                }
            };
            match self.js.publish_with_headers(self.subject.clone(), headers, message.data.clone()).await {
                Ok(ack) => acks.push_back(ack),
                Err(e) => {
                    stopped = Some(self.failure(i, &e));
                    break;
                }
            }
        }
        // Acks come back in publish order; the first one missing ends the confirmed prefix.
        for ack in acks {
            await_ack(ack, confirmed, self).await?;
            confirmed += 1;
        }
        stopped.map_or(Ok(()), Err)
    }

    fn failure(&self, index: usize, e: &jetstream::context::PublishError) -> Failed {
        let code = e.source().and_then(|s| s.downcast_ref::<jetstream::Error>()).map(|s| s.error_code());
        match e.kind() {
            PublishErrorKind::StreamNotFound => Failed::after(
                index,
                format!(
                    "no JetStream stream captures subject {} on NATS at {} (create one, or add ?stream=NAME to the sink URL)",
                    self.subject, self.server
                ),
            ),
            PublishErrorKind::MaxPayloadExceeded => {
                Failed::permanent(index, format!("message is larger than NATS at {} accepts: {e}", self.server))
            }
            _ if code == Some(jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
                || code == Some(jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM) =>
            {
                Failed::permanent(index, format!("message is larger than the JetStream stream accepts: {e}"))
            }
            PublishErrorKind::TimedOut => Failed::after(
                index,
                format!("NATS at {} did not acknowledge a publish to {} in time", self.server, self.subject),
            ),
            _ => Failed::after(index, format!("publish to {} on NATS at {} failed: {e}", self.subject, self.server)),
        }
    }
}

async fn await_ack(ack: jetstream::context::PublishAckFuture, index: usize, target: &NatsTarget) -> Result<(), Failed> {
    ack.await.map(drop).map_err(|e| target.failure(index, &e))
}

/// The NATS headers of one message; an attribute that cannot be a header makes the message
/// undeliverable rather than silently altered.
fn headers(source: &Source<'_>, message: &StoredMessage) -> Result<HeaderMap, String> {
    let offset = message.offset.to_string();
    let mut headers = HeaderMap::new();
    for (key, value) in attributes(source, message, &offset) {
        // `Nats-*` headers steer JetStream (expected sequence, rollup, TTL, …): a publisher's
        // attribute must not be able to do that.
        if key.get(..5).is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-")) {
            continue;
        }
        let name = HeaderName::from_str(key)
            .ok()
            .filter(|_| !key.is_empty())
            .ok_or_else(|| format!("attribute name {key:?} cannot travel as a NATS header"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("attribute {key:?} has a line break, which a NATS header cannot carry"))?;
        headers.insert(name, value);
    }
    let id = HeaderValue::from_str(&format!("{}:{}", source.name, message.offset))
        .map_err(|_| "topic name cannot travel as a NATS header".to_string())?;
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    Ok(headers)
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
        let s = parse("nats://127.0.0.1:4222/telemetry.p.t").unwrap();
        assert_eq!((s.server.as_str(), s.subject.as_str()), ("127.0.0.1:4222", "telemetry.p.t"));
        assert!(s.credentials.is_none() && s.stream.is_none());
        let s = parse("nats://u%40x:p%3Aw@nats.example:4333/a.b?stream=TELEMETRY").unwrap();
        assert_eq!(s.server, "nats.example:4333");
        assert_eq!(s.credentials, Some(("u@x".into(), "p:w".into())));
        assert_eq!(s.stream.as_deref(), Some("TELEMETRY"));
        assert_eq!(parse("nats://h/x").unwrap().server, "h:4222");
        assert_eq!(parse("nats://h/a%2Db").unwrap().subject, "a-b");
        assert!(configure(&url::Url::parse("nats://h:1/x.y").unwrap()).is_ok());
    }

    #[test]
    fn refuses_bad_urls_with_a_reason() {
        let err = |s: &str| parse(s).err().unwrap();
        assert!(err("nats://h:4222").contains("needs a subject"), "{}", err("nats://h:4222"));
        assert!(err("nats://h:4222/").contains("needs a subject"));
        assert!(err("nats://h/a.*").contains("wildcards"));
        assert!(err("nats://h/a.>").contains("wildcards"));
        assert!(err("nats://h/a..b").contains("empty token"));
        assert!(err("nats://h/.a").contains("empty token"));
        assert!(err("nats://h/a.").contains("empty token"));
        assert!(err("nats://h/a%20b").contains("spaces"));
        assert!(err("nats://h/a?stream=x.y").contains("stream name"));
        assert!(err("nats://h/a?stream=").contains("empty stream"));
        assert!(err("nats://h/a?streem=x").contains("unknown parameter"));
        assert!(err("http://h/a").contains("nats://"));
        assert!(err("nats:///a").contains("host") || err("nats:///a").contains("subject"));
    }

    #[test]
    fn errors_never_show_the_password() {
        for s in ["nats://u:s3cret@h/a..b", "nats://u:s3cret@h/", "nats://u:s3cret@h/a?x=1"] {
            assert!(!parse(s).err().unwrap().contains("s3cret"));
        }
    }

    #[test]
    fn headers_carry_attributes_and_message_id() {
        let m = StoredMessage {
            offset: 42,
            time: Timestamp(0),
            attributes: vec![
                ("deviceId".into(), "d1".into()),
                ("Nats-Rollup".into(), "all".into()),
                ("goog-x".into(), "hidden".into()),
            ],
            data: Bytes::from_static(b"x"),
        };
        let src = Source { sink: "test-sink", name: "projects/p/topics/t", project: "p", topic: "t" };
        let h = headers(&src, &m).unwrap();
        assert_eq!(h.get("deviceId").map(|v| v.as_str()), Some("d1"));
        assert_eq!(h.get("ferrocoreTopic").map(|v| v.as_str()), Some("projects/p/topics/t"));
        assert_eq!(h.get("ferrocoreOffset").map(|v| v.as_str()), Some("42"));
        assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("projects/p/topics/t:42"));
        assert!(h.get("Nats-Rollup").is_none());
        assert!(h.get("goog-x").is_none());

        let bad = StoredMessage { attributes: vec![("subFolder".into(), "a\nb".into())], ..m.clone() };
        assert!(headers(&src, &bad).unwrap_err().contains("subFolder"));
        let bad = StoredMessage { attributes: vec![("sub folder".into(), "x".into())], ..m };
        assert!(headers(&src, &bad).unwrap_err().contains("sub folder"));
    }
}
