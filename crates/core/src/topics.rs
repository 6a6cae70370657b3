//! The read side of telemetry topics, the counterpart of [`crate::sink::Sink`], plus appends that
//! answer with offsets (Pub/Sub's Publish returns message ids).
//!
//! Whatever keeps topics durably (the embedded topic log today, a clustered log later) implements
//! [`TopicSource`]; the REST topic reads, the Pub/Sub API's subscriptions and the CLI's tail read
//! through it and never see the log's own types.

use async_trait::async_trait;
use bytes::Bytes;
use ferrocore_model::Timestamp;
use std::time::Duration;

/// A message as a topic keeps it, numbered by its offset in the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub offset: u64,
    pub time: Timestamp,
    pub attributes: Vec<(String, String)>,
    pub data: Bytes,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// This offset, or the earliest retained one if it is older.
    Offset(u64),
    /// The oldest retained message.
    Earliest,
    /// Only messages appended after the call.
    Latest,
}

/// What a read returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadBatch {
    /// In offset order; empty when nothing was available in time.
    pub messages: Vec<StoredMessage>,
    /// The offset to read from next.
    pub next_offset: u64,
    /// The oldest retained offset; a read that asked for less resumed here.
    pub earliest_offset: u64,
}

/// A topic's extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicExtent {
    pub name: String,
    pub earliest_offset: u64,
    pub next_offset: u64,
    /// Bytes kept, framing included.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The topic name is not valid; the text is fit for a client.
    #[error("{0}")]
    InvalidTopic(String),
    /// The source is closed or failing; the text is for logs.
    #[error("the topic source is unavailable")]
    Unavailable(String),
}

/// Returned by [`TopicSource::hold`]: while it lives, age retention keeps the topic's records from
/// the held offset on.
pub trait RetentionHold: Send + Sync + 'static {
    /// Moves the hold forwards, as its holder's cursor advances.
    fn advance(&self, offset: u64);
}

#[async_trait]
pub trait TopicSource: Send + Sync + 'static {
    /// Appends `messages` to `topic` in order and returns their offsets once they are durable:
    /// what the Pub/Sub API's Publish needs for its message ids.
    async fn append(&self, topic: &str, messages: Vec<crate::sink::Message>) -> Result<Vec<u64>, ReadError> {
        let _ = (topic, messages);
        Err(ReadError::Unavailable("this topic source does not take appends".into()))
    }

    /// Up to `max_messages` messages and about `max_bytes` (at least one when any is there) from
    /// `from`; when none is there and `wait` is given, waits that long for the first. A topic that
    /// does not exist yet reads as empty.
    async fn read(
        &self,
        topic: &str,
        from: ReadFrom,
        max_messages: usize,
        max_bytes: usize,
        wait: Option<Duration>,
    ) -> Result<ReadBatch, ReadError>;

    /// The first offset whose message was published at or after `time`; the topic's next offset
    /// when there is none.
    async fn offset_at(&self, topic: &str, time: Timestamp) -> Result<u64, ReadError>;

    /// The extent of one topic, `None` when it holds nothing yet. A shared log may answer from a
    /// cache that lags behind appends other nodes made; [`TopicSource::next_offset`] does not.
    fn extent(&self, topic: &str) -> Option<TopicExtent>;

    /// The topic's next offset as of this call (0 when it holds nothing yet): where a new
    /// subscription starts.
    async fn next_offset(&self, topic: &str) -> Result<u64, ReadError> {
        Ok(self.extent(topic).map_or(0, |e| e.next_offset))
    }

    /// Every topic that holds messages, sorted by name.
    fn extents(&self) -> Vec<TopicExtent>;

    /// Keeps `topic`'s records at and after `offset` from age retention until the hold is dropped
    /// (a size cap may still remove them). The topic need not exist yet.
    fn hold(&self, topic: &str, offset: u64) -> Box<dyn RetentionHold>;
}
