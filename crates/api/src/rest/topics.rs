//! Reading telemetry topics through the core's [`TopicSource`] (the embedded topic log):
//! Ferrocore's own REST extension, for back ends that used to pull from Pub/Sub.
//!
//! * `GET /v1/projects/P/topics/T/extent` tells which offsets the log holds for the topic, and
//!   how many bytes (all zero for a topic never written).
//! * `GET /v1/projects/P/topics/T/messages?offset=N|from=earliest|latest&maxMessages=M&waitSeconds=S`
//!   returns up to M messages from offset N (or the oldest kept, or only new ones), waiting up to S
//!   seconds (at most 60) for the first when none is there. `nextOffset` is where to continue.
//!
//! Both need the admin token. (`GET /v1/projects/P/topics` is Pub/Sub's ListTopics: see
//! [`crate::pubsub::rest`].)

use super::{Query, json_response};
use axum::response::Response;
use base64::Engine;
use ferrocore_core::topics::{ReadError, ReadFrom, TopicSource};
use ferrocore_core::{Code, Error};
use ferrocore_model::pubsub::TopicName;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// At most this many messages per read, and this much payload.
const MAX_MESSAGES: usize = 1000;
const MAX_READ_BYTES: usize = 8 << 20;
const MAX_WAIT_SECONDS: u64 = 60;

/// A parsed topic-log path.
pub(crate) enum TopicsRoute {
    Extent { topic: String },
    Messages { topic: String },
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

pub(crate) async fn serve(source: &dyn TopicSource, route: TopicsRoute, q: &Query) -> Result<Response, Error> {
    match route {
        TopicsRoute::Extent { topic } => {
            q.check(&[])?;
            let name = TopicName::parse("topic", &topic)?;
            // A topic nothing was written to yet is empty rather than unknown: a reader may start
            // at its nextOffset 0.
            let (earliest, next, bytes) =
                source.extent(name.as_str()).map_or((0, 0, 0), |e| (e.earliest_offset, e.next_offset, e.bytes));
            Ok(json_response(&ExtentJson {
                name: name.to_string(),
                earliest_offset: earliest.to_string(),
                next_offset: next.to_string(),
                bytes: bytes.to_string(),
            }))
        }
        TopicsRoute::Messages { topic } => {
            q.check(&["offset", "from", "maxMessages", "waitSeconds"])?;
            let from = match (q.one("offset"), q.one("from")) {
                (Some(o), None) => ReadFrom::Offset(
                    o.parse().map_err(|_| Error::invalid("offset", "The offset must be a non-negative integer."))?,
                ),
                (None, None) | (None, Some("earliest")) => ReadFrom::Earliest,
                (None, Some("latest")) => ReadFrom::Latest,
                (None, Some(_)) => return Err(Error::invalid("from", "'from' must be 'earliest' or 'latest'.")),
                (Some(_), Some(_)) => {
                    return Err(Error::invalid("offset", "Give either 'offset' or 'from', not both."));
                }
            };
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
            let engine = base64::engine::general_purpose::STANDARD;
            Ok(json_response(&MessagesJson {
                messages: read
                    .messages
                    .into_iter()
                    .map(|m| MessageJson {
                        offset: m.offset.to_string(),
                        publish_time: m.time.to_string(),
                        attributes: m.attributes.into_iter().collect(),
                        data: engine.encode(&m.data),
                    })
                    .collect(),
                next_offset: read.next_offset.to_string(),
                earliest_offset: read.earliest_offset.to_string(),
            }))
        }
    }
}
