//! The embedded topic log behind both seams of the core: as a [`Sink`], each topic
//! `projects/P/topics/T` is a durable, ordered log in the data directory, appended with group
//! commit; as a [`TopicSource`], the same topics are read by offset, from either end, or from a
//! time. One `LogSink` serves both, so readers see exactly what the sink made durable.

use async_trait::async_trait;
use ferrocore_core::sink::{Message, Sink, SinkError, SinkHealth, Ticket};
use ferrocore_core::topics::{ReadBatch, ReadError, ReadFrom, RetentionHold, StoredMessage, TopicExtent, TopicSource};
use ferrocore_model::Timestamp;
use ferrocore_topiclog::{LogError, NewRecord, Record, TopicInfo, TopicLog};
use std::time::Duration;

pub struct LogSink {
    log: TopicLog,
}

impl LogSink {
    pub fn new(log: TopicLog) -> Self {
        Self { log }
    }

    pub fn log(&self) -> &TopicLog {
        &self.log
    }
}

fn sink_error(topic: &str, e: LogError) -> SinkError {
    match e {
        LogError::InvalidTopic(_) | LogError::RecordTooLarge { .. } => SinkError::Rejected(e.to_string()),
        e => {
            tracing::error!(detail = %e.detail(), %topic, "topic log append failed");
            SinkError::Unavailable(e.to_string())
        }
    }
}

/// A bad name is the caller's to fix; anything else is the log's trouble, whose detail (paths,
/// OS errors) goes to the server's log and not to the reader.
fn read_error(topic: &str, e: LogError) -> ReadError {
    match e {
        LogError::InvalidTopic(_) => ReadError::InvalidTopic(e.to_string()),
        e => {
            tracing::error!(detail = %e.detail(), %topic, "topic log read failed");
            ReadError::Unavailable(e.to_string())
        }
    }
}

fn stored(r: Record) -> StoredMessage {
    StoredMessage { offset: r.offset, time: Timestamp(r.timestamp_nanos), attributes: r.attributes, data: r.payload }
}

fn extent(t: TopicInfo) -> TopicExtent {
    TopicExtent { name: t.name, earliest_offset: t.earliest_offset, next_offset: t.next_offset, bytes: t.bytes }
}

#[async_trait]
impl Sink for LogSink {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), SinkError> {
        self.submit(topic, messages).await?.await
    }

    async fn submit(&self, topic: &str, messages: Vec<Message>) -> Result<Ticket, SinkError> {
        let records = messages
            .into_iter()
            .map(|m| NewRecord { timestamp_nanos: m.time.nanos(), attributes: m.attributes, payload: m.data })
            .collect();
        let ticket = self.log.enqueue(topic, records).await.map_err(|e| sink_error(topic, e))?;
        let topic = topic.to_owned();
        Ok(Box::pin(async move { ticket.durable().await.map(|_| ()).map_err(|e| sink_error(&topic, e)) }))
    }

    fn health(&self) -> SinkHealth {
        SinkHealth::Healthy
    }
}

#[async_trait]
impl TopicSource for LogSink {
    async fn append(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<u64>, ReadError> {
        let records = messages
            .into_iter()
            .map(|m| NewRecord { timestamp_nanos: m.time.nanos(), attributes: m.attributes, payload: m.data })
            .collect();
        self.log.append(topic, records).await.map_err(|e| read_error(topic, e))
    }

    async fn read(
        &self,
        topic: &str,
        from: ReadFrom,
        max_messages: usize,
        max_bytes: usize,
        wait: Option<Duration>,
    ) -> Result<ReadBatch, ReadError> {
        let from = match from {
            ReadFrom::Offset(o) => ferrocore_topiclog::ReadFrom::Offset(o),
            ReadFrom::Earliest => ferrocore_topiclog::ReadFrom::Earliest,
            ReadFrom::Latest => ferrocore_topiclog::ReadFrom::Latest,
        };
        let read = self.log.read(topic, from, max_messages, max_bytes, wait).await.map_err(|e| read_error(topic, e))?;
        Ok(ReadBatch {
            messages: read.records.into_iter().map(stored).collect(),
            next_offset: read.next_offset,
            earliest_offset: read.earliest_offset,
        })
    }

    async fn offset_at(&self, topic: &str, time: Timestamp) -> Result<u64, ReadError> {
        self.log.offset_at_time(topic, time.nanos()).await.map_err(|e| read_error(topic, e))
    }

    /// A topic the log knows but that never committed a message (its first append still queued,
    /// or failed) holds nothing yet.
    fn extent(&self, topic: &str) -> Option<TopicExtent> {
        self.log.topic_info(topic).filter(|t| t.next_offset > 0).map(extent)
    }

    fn extents(&self) -> Vec<TopicExtent> {
        self.log.topics().into_iter().filter(|t| t.next_offset > 0).map(extent).collect()
    }

    fn hold(&self, topic: &str, offset: u64) -> Box<dyn RetentionHold> {
        Box::new(Held(self.log.hold(topic, offset)))
    }
}

struct Held(ferrocore_topiclog::RetentionHold);

impl RetentionHold for Held {
    fn advance(&self, offset: u64) {
        self.0.advance(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferrocore_topiclog::LogConfig;

    /// In the future, so that the log's background retention leaves the messages alone.
    const T0: i64 = 4_000_000_000_000_000_000;
    const TOPIC: &str = "projects/p/topics/telemetry";

    fn message(i: i64) -> Message {
        Message {
            time: Timestamp(T0 + i),
            attributes: vec![("i".into(), i.to_string())],
            data: Bytes::from(format!("m{i}")),
        }
    }

    #[tokio::test]
    async fn reads_what_it_sank_through_the_read_seam() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = TopicLog::open(LogConfig::new(dir.path())).await.expect("open");
        let sink = LogSink::new(log.clone());
        let source: &dyn TopicSource = &sink;

        assert_eq!(source.extent(TOPIC), None);
        assert!(source.extents().is_empty());
        let empty = source.read(TOPIC, ReadFrom::Earliest, 10, usize::MAX, None).await.expect("read");
        assert_eq!(empty, ReadBatch::default());
        assert_eq!(source.offset_at(TOPIC, Timestamp(T0)).await, Ok(0));

        sink.publish(TOPIC, (0..5).map(message).collect()).await.expect("publish");
        let batch = source.read(TOPIC, ReadFrom::Offset(1), 2, usize::MAX, None).await.expect("read");
        assert_eq!(batch.next_offset, 3);
        assert_eq!(batch.earliest_offset, 0);
        assert_eq!(
            batch.messages,
            vec![
                StoredMessage {
                    offset: 1,
                    time: Timestamp(T0 + 1),
                    attributes: vec![("i".into(), "1".into())],
                    data: Bytes::from("m1")
                },
                StoredMessage {
                    offset: 2,
                    time: Timestamp(T0 + 2),
                    attributes: vec![("i".into(), "2".into())],
                    data: Bytes::from("m2")
                },
            ]
        );
        let latest = source.read(TOPIC, ReadFrom::Latest, 10, usize::MAX, None).await.expect("read");
        assert_eq!((latest.messages.len(), latest.next_offset), (0, 5));
        assert_eq!(source.read(TOPIC, ReadFrom::Earliest, 10, usize::MAX, None).await.expect("read").messages.len(), 5);

        assert_eq!(source.offset_at(TOPIC, Timestamp(T0 + 3)).await, Ok(3));
        assert_eq!(source.offset_at(TOPIC, Timestamp(T0 + 99)).await, Ok(5));
        let want = TopicExtent { name: TOPIC.into(), earliest_offset: 0, next_offset: 5, bytes: log.topics()[0].bytes };
        assert_eq!(source.extent(TOPIC), Some(want.clone()));
        assert_eq!(source.extents(), vec![want]);

        let long_wait = source.read(TOPIC, ReadFrom::Latest, 10, usize::MAX, Some(Duration::from_millis(20))).await;
        assert_eq!(long_wait.expect("read").messages.len(), 0, "nothing new arrived");
        log.close().await;
    }

    #[tokio::test]
    async fn errors_are_split_into_the_callers_and_the_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = TopicLog::open(LogConfig::new(dir.path())).await.expect("open");
        let sink = LogSink::new(log.clone());
        let source: &dyn TopicSource = &sink;
        match source.read("projects/p/topics/ab", ReadFrom::Earliest, 1, 1, None).await {
            Err(ReadError::InvalidTopic(msg)) => {
                assert!(msg.starts_with("Invalid topic name 'projects/p/topics/ab'"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(source.offset_at("nope", Timestamp(0)).await, Err(ReadError::InvalidTopic(_))));
        log.close().await;
        let err = source.read(TOPIC, ReadFrom::Earliest, 1, 1, None).await.expect_err("closed");
        assert_eq!(err, ReadError::Unavailable(LogError::Closed.to_string()));
        assert!(matches!(source.offset_at(TOPIC, Timestamp(T0)).await, Err(ReadError::Unavailable(_))));
    }
}
