//! The contract between the forwarder (which reads each topic from its durable cursor) and one
//! kind of external system (which takes the messages and confirms them).
//!
//! A [`Destination`] is one configured sink's connection side: it checks its URL at start, without
//! touching the network, and opens a [`Target`] per topic (the URL template already resolved for
//! that topic). A target delivers batches in order and says how far the destination confirmed, so
//! the forwarder advances its cursor exactly over what is safe.

use async_trait::async_trait;
use ferrocore_core::topics::StoredMessage;
use std::fmt;

/// Why a batch stopped part way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// How many of the batch's first messages the destination confirmed before the failure.
    pub delivered: usize,
    /// For the operator (sink status and log); never contains a password or token.
    pub error: String,
    /// The destination will never take message `delivered` (too large for it, say): the forwarder
    /// counts and skips it. Otherwise the rest of the batch is retried after a back-off.
    pub permanent: bool,
}

impl Failed {
    /// Nothing of the batch was confirmed; retry it.
    pub fn transient(error: impl Into<String>) -> Failed {
        Failed { delivered: 0, error: error.into(), permanent: false }
    }

    pub fn after(delivered: usize, error: impl Into<String>) -> Failed {
        Failed { delivered, error: error.into(), permanent: false }
    }

    /// Message `delivered` can never be delivered.
    pub fn permanent(delivered: usize, error: impl Into<String>) -> Failed {
        Failed { delivered, error: error.into(), permanent: true }
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

/// The topic a batch comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source<'a> {
    /// The sink's name (`KIND-HASH`), for destinations that name their sender.
    pub sink: &'a str,
    /// `projects/P/topics/T`.
    pub name: &'a str,
    pub project: &'a str,
    pub topic: &'a str,
}

/// One kind of external system, configured by one `--sink` entry.
#[async_trait]
pub trait Destination: Send + Sync + 'static {
    /// Connects for one topic. `url` is the entry's URL with `{project}` and `{topic}` replaced.
    /// An error (broker down, topic missing) is retried by the forwarder with back-off.
    async fn open(&self, url: &url::Url, source: &Source<'_>) -> Result<Box<dyn Target>, String>;
}

/// Where one topic's messages go.
#[async_trait]
pub trait Target: Send + 'static {
    /// Delivers `batch` in order and returns once the destination confirmed every message (its
    /// publish ack, publisher confirm, reply or 2xx). Pipelines within the batch where the system
    /// allows it. After an `Err`, the forwarder drops the target and opens a new one.
    async fn deliver(&mut self, source: &Source<'_>, batch: &[StoredMessage]) -> Result<(), Failed>;
}

/// Attribute names Ferrocore adds to every forwarded message so consumers can de-duplicate.
pub const TOPIC_ATTRIBUTE: &str = "ferrocoreTopic";
pub const OFFSET_ATTRIBUTE: &str = "ferrocoreOffset";

/// What travels as the message's metadata: the stored attributes (IoT Core's `deviceId`,
/// `deviceNumId`, … as the bridge set them), without the log's internal `goog-` ones, then
/// `ferrocoreTopic` and `ferrocoreOffset`.
pub fn attributes<'a>(source: &'a Source<'_>, message: &'a StoredMessage, offset_text: &'a str) -> Attributes<'a> {
    Attributes {
        stored: message.attributes.iter(),
        extra: [(TOPIC_ATTRIBUTE, source.name), (OFFSET_ATTRIBUTE, offset_text)],
        next_extra: 0,
    }
}

/// Iterator returned by [`attributes`].
pub struct Attributes<'a> {
    stored: std::slice::Iter<'a, (String, String)>,
    extra: [(&'static str, &'a str); 2],
    next_extra: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        for (k, v) in self.stored.by_ref() {
            if !k.starts_with("goog-") {
                return Some((k, v));
            }
        }
        let e = self.extra.get(self.next_extra)?;
        self.next_extra += 1;
        Some(*e)
    }
}

/// The value of a query parameter that Ferrocore itself reads (`stream`, `exchange`, …).
pub fn query_param(url: &url::Url, key: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferrocore_model::Timestamp;

    #[test]
    fn attributes_add_topic_and_offset_and_hide_internal_ones() {
        let m = StoredMessage {
            offset: 7,
            time: Timestamp(0),
            attributes: vec![
                ("deviceId".into(), "d1".into()),
                ("goog-ordering-key".into(), "k".into()),
                ("subFolder".into(), "a/b".into()),
            ],
            data: Bytes::from_static(b"x"),
        };
        let src = Source { sink: "test-sink", name: "projects/p/topics/t", project: "p", topic: "t" };
        let got: Vec<_> = attributes(&src, &m, "7").collect();
        assert_eq!(
            got,
            vec![
                ("deviceId", "d1"),
                ("subFolder", "a/b"),
                ("ferrocoreTopic", "projects/p/topics/t"),
                ("ferrocoreOffset", "7")
            ]
        );
    }
}
