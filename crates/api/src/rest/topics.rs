//! Reading telemetry topics through the core's [`TopicSource`] (the embedded topic log):
//! Ferrocore's own REST extension, for back ends that used to pull from Pub/Sub.
//!
//! * `GET /v1/projects/P/topics/T/extent` tells which offsets the log holds for the topic, and
//!   how many bytes (all zero for a topic never written).
//! * `GET /v1/projects/P/topics/T/messages?offset=N|from=earliest|latest&maxMessages=M&waitSeconds=S`
//!   returns up to M messages from offset N (or the oldest kept, or only new ones), waiting up to S
//!   seconds (at most 60) for the first when none is there. `nextOffset` is where to continue.
//! * `GET /v1/projects/P/topics/T/stream?offset=N|from=earliest|latest[&deviceId=D]` follows the
//!   topic as server-sent events (`text/event-stream`): one `message` event per record, its `id`
//!   the offset and its data the record as `messages` returns it; a comment line every
//!   [`KEEPALIVE`] when nothing arrives. `deviceId` keeps one device's records. The stream ends
//!   when the client goes or the server stops; a client resumes from the last id plus one. The web
//!   console's live view reads it (with `fetch`, which unlike `EventSource` can send the token).
//!
//! Both need the admin token. (`GET /v1/projects/P/topics` is Pub/Sub's ListTopics: see
//! [`crate::pubsub::rest`].)

use super::{Query, json_response};
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use base64::Engine;
use ferrocore_core::topics::{ReadError, ReadFrom, TopicSource};
use ferrocore_core::{Code, Error};
use ferrocore_model::DeviceId;
use ferrocore_model::pubsub::TopicName;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// At most this many messages per read, and this much payload.
const MAX_MESSAGES: usize = 1000;
const MAX_READ_BYTES: usize = 8 << 20;
const MAX_WAIT_SECONDS: u64 = 60;
/// How long a stream stays silent before it sends a comment, so proxies and the listener's write
/// deadline see a live connection, and a client a dead one.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Records read per round of a stream.
const STREAM_BATCH: usize = 500;

/// A parsed topic-log path.
pub(crate) enum TopicsRoute {
    Extent { topic: String },
    Messages { topic: String },
    Stream { topic: String },
}

/// Recognises `projects/P/topics/T/extent` and `projects/P/topics/T/messages`.
pub(crate) fn parse(path: &str) -> Option<TopicsRoute> {
    let s: Vec<&str> = path.split('/').collect();
    match s.as_slice() {
        ["projects", p, "topics", t, "extent"] if !p.is_empty() && !t.is_empty() => {
            Some(TopicsRoute::Extent { topic: format!("projects/{p}/topics/{t}") })
        }
        ["projects", p, "topics", t, "messages"] if !p.is_empty() && !t.is_empty() => {
            Some(TopicsRoute::Messages { topic: format!("projects/{p}/topics/{t}") })
        }
        ["projects", p, "topics", t, "stream"] if !p.is_empty() && !t.is_empty() => {
            Some(TopicsRoute::Stream { topic: format!("projects/{p}/topics/{t}") })
        }
        _ => None,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtentJson {
    name: String,
    earliest_offset: String,
    next_offset: String,
    bytes: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageJson {
    offset: String,
    publish_time: String,
    attributes: BTreeMap<String, String>,
    data: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessagesJson {
    messages: Vec<MessageJson>,
    next_offset: String,
    earliest_offset: String,
}

/// The source logged the cause of an outage already; the client only learns to retry.
fn read_error(e: ReadError) -> Error {
    match e {
        ReadError::InvalidTopic(message) => Error::invalid("topic", message),
        ReadError::Unavailable(_) => Error::new(Code::Unavailable, "The topic log is unavailable; retry later."),
    }
}

fn read_from(q: &Query) -> Result<ReadFrom, Error> {
    Ok(match (q.one("offset"), q.one("from")) {
        (Some(o), None) => ReadFrom::Offset(
            o.parse().map_err(|_| Error::invalid("offset", "The offset must be a non-negative integer."))?,
        ),
        (None, None) | (None, Some("earliest")) => ReadFrom::Earliest,
        (None, Some("latest")) => ReadFrom::Latest,
        (None, Some(_)) => return Err(Error::invalid("from", "'from' must be 'earliest' or 'latest'.")),
        (Some(_), Some(_)) => {
            return Err(Error::invalid("offset", "Give either 'offset' or 'from', not both."));
        }
    })
}

fn message_json(m: ferrocore_core::topics::StoredMessage) -> MessageJson {
    MessageJson {
        offset: m.offset.to_string(),
        publish_time: m.time.to_string(),
        attributes: m.attributes.into_iter().collect(),
        data: base64::engine::general_purpose::STANDARD.encode(&m.data),
    }
}

pub(crate) async fn serve(
    source: Arc<dyn TopicSource>,
    route: TopicsRoute,
    q: &Query,
    stopping: watch::Receiver<bool>,
) -> Result<Response, Error> {
    match route {
        TopicsRoute::Stream { topic } => {
            q.check(&["offset", "from", "deviceId"])?;
            let name = TopicName::parse("topic", &topic)?;
            let from = read_from(q)?;
            let device = match q.one("deviceId") {
                None | Some("") => None,
                Some(d) => Some(DeviceId::parse_field("device_id", d)?.to_string()),
            };
            // Read once before answering, so that a log that cannot be read is an error status
            // rather than a stream that ends at once.
            let first =
                source.read(name.as_str(), from, STREAM_BATCH, MAX_READ_BYTES, None).await.map_err(read_error)?;
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(stream(source, name.to_string(), first, device, tx, stopping));
            let mut resp = Response::new(axum::body::Body::new(EventBody(rx)));
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        TopicsRoute::Extent { topic } => {
            q.check(&[])?;
            let name = TopicName::parse("topic", &topic)?;
            // A topic nothing was written to yet is empty rather than unknown: a reader may start
            // at its nextOffset 0.
            let (earliest, cached_next, bytes) =
                source.extent(name.as_str()).map_or((0, 0, 0), |e| (e.earliest_offset, e.next_offset, e.bytes));
            // The end is read from the log itself: a shared log's cached extent may lag behind
            // what other nodes appended.
            let next = source.next_offset(name.as_str()).await.map_err(read_error)?.max(cached_next);
            Ok(json_response(&ExtentJson {
                name: name.to_string(),
                earliest_offset: earliest.to_string(),
                next_offset: next.to_string(),
                bytes: bytes.to_string(),
            }))
        }
        TopicsRoute::Messages { topic } => {
            q.check(&["offset", "from", "maxMessages", "waitSeconds"])?;
            let from = read_from(q)?;
            let max = match q.int32("maxMessages")? {
                0 => 100,
                n if n < 0 => return Err(Error::invalid("max_messages", "maxMessages must not be negative.")),
                n => (n as usize).min(MAX_MESSAGES),
            };
            let wait = match q.int32("waitSeconds")? {
                0 => None,
                n if n < 0 => return Err(Error::invalid("wait_seconds", "waitSeconds must not be negative.")),
                n => Some(Duration::from_secs((n as u64).min(MAX_WAIT_SECONDS))),
            };
            let read = source.read(&topic, from, max, MAX_READ_BYTES, wait).await.map_err(read_error)?;
            Ok(json_response(&MessagesJson {
                messages: read.messages.into_iter().map(message_json).collect(),
                next_offset: read.next_offset.to_string(),
                earliest_offset: read.earliest_offset.to_string(),
            }))
        }
    }
}

/// Feeds one event stream until its client goes (the body, and with it `tx`'s receiver, is
/// dropped) or the server stops. A read error ends the stream; the client reconnects.
async fn stream(
    source: Arc<dyn TopicSource>,
    topic: String,
    mut batch: ferrocore_core::topics::ReadBatch,
    device: Option<String>,
    tx: mpsc::Sender<Bytes>,
    mut stopping: watch::Receiver<bool>,
) {
    // An opening comment lets the client know the stream is up before the first record.
    if tx.send(Bytes::from_static(b": ferrocore topic stream\n\n")).await.is_err() {
        return;
    }
    loop {
        let next = batch.next_offset;
        let mut events = String::new();
        for m in batch.messages {
            if device.as_deref().is_some_and(|d| !m.attributes.iter().any(|(k, v)| k == "deviceId" && v == d)) {
                continue;
            }
            let offset = m.offset;
            let json = serde_json::to_string(&message_json(m)).unwrap_or_default();
            let _ = write!(events, "event: message\nid: {offset}\ndata: {json}\n\n");
        }
        if events.is_empty() {
            events.push_str(": keep-alive\n\n");
        }
        if tx.send(Bytes::from(events)).await.is_err() {
            return;
        }
        let read = source.read(&topic, ReadFrom::Offset(next), STREAM_BATCH, MAX_READ_BYTES, Some(KEEPALIVE));
        batch = tokio::select! {
            r = read => match r {
                Ok(b) => b,
                Err(_) => return,
            },
            _ = tx.closed() => return,
            _ = stopping.wait_for(|s| *s) => return,
        };
    }
}

/// A response body fed by a channel: each item is one frame, the end of the channel the end of
/// the body.
struct EventBody(mpsc::Receiver<Bytes>);

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|item| item.map(|b| Ok(http_body::Frame::data(b))))
    }
}
