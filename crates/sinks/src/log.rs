//! The embedded topic log as a sink: each topic `projects/P/topics/T` is a durable, ordered log
//! in the data directory, appended with group commit.

use async_trait::async_trait;
use ferrocore_core::sink::{Message, Sink, SinkError, SinkHealth};
use ferrocore_topiclog::{LogError, NewRecord, TopicLog};

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

#[async_trait]
impl Sink for LogSink {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), SinkError> {
        let records = messages
            .into_iter()
            .map(|m| NewRecord { timestamp_nanos: m.time.nanos(), attributes: m.attributes, payload: m.data })
            .collect();
        match self.log.append(topic, records).await {
            Ok(_) => Ok(()),
            Err(e @ (LogError::InvalidTopic(_) | LogError::RecordTooLarge { .. })) => {
                Err(SinkError::Rejected(e.to_string()))
            }
            Err(e) => {
                tracing::error!(detail = %e.detail(), %topic, "topic log append failed");
                Err(SinkError::Unavailable(e.to_string()))
            }
        }
    }

    fn health(&self) -> SinkHealth {
        SinkHealth::Healthy
    }
}
