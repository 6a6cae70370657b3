//! The embedded topic log as a sink: each topic `projects/P/topics/T` is a durable, ordered log
//! in the data directory, appended with group commit.

use async_trait::async_trait;
use ferrocore_core::sink::{Message, Sink, SinkError, SinkHealth, Ticket};
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

fn sink_error(topic: &str, e: LogError) -> SinkError {
    match e {
        LogError::InvalidTopic(_) | LogError::RecordTooLarge { .. } => SinkError::Rejected(e.to_string()),
        e => {
            tracing::error!(detail = %e.detail(), %topic, "topic log append failed");
            SinkError::Unavailable(e.to_string())
        }
    }
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
