//! The contract every telemetry destination meets.
//!
//! The core routes device telemetry and state to topics (`projects/P/topics/T`) and hands them to
//! a [`Sink`]: the embedded topic log by default, external buses later. A sink accepts a batch for
//! one topic and answers once it holds it durably (accepted), refuses it for good (rejected), or
//! asks the caller to slow down (back-pressure). QoS 1 telemetry is acknowledged to the device only
//! after its sink accepted it.

use async_trait::async_trait;
use bytes::Bytes;
use ferrocore_model::Timestamp;

/// One message for a topic: the device's payload and the attributes IoT Core attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub time: Timestamp,
    pub attributes: Vec<(String, String)>,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The sink will never take this batch (an unknown or invalid topic, say).
    #[error("the destination refused the messages: {0}")]
    Rejected(String),
    /// The sink is full; retry later.
    #[error("the destination is busy; retry later")]
    BackPressure,
    /// The sink cannot take messages now; the text is for logs.
    #[error("the destination is unavailable")]
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkHealth {
    Healthy,
    Degraded(String),
}

/// Resolves once a submitted batch is durable (or failed).
pub type Ticket = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send>>;

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers `messages` to `topic` in order; Ok means they are durable.
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), SinkError>;

    /// Queues `messages` behind everything submitted before to `topic` and returns a ticket for
    /// their durability, so a caller can keep several batches in flight and still keep order.
    /// Sinks that cannot split the two steps deliver here and hand back a resolved ticket.
    async fn submit(&self, topic: &str, messages: Vec<Message>) -> Result<Ticket, SinkError> {
        let result = self.publish(topic, messages).await;
        Ok(Box::pin(std::future::ready(result)))
    }

    fn health(&self) -> SinkHealth;
}

/// Keeps messages in memory: for embedding and tests, where durability is not wanted.
#[derive(Debug, Default)]
pub struct MemorySink {
    topics: std::sync::Mutex<std::collections::HashMap<String, Vec<Message>>>,
}

impl MemorySink {
    pub fn messages(&self, topic: &str) -> Vec<Message> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).get(topic).cloned().unwrap_or_default()
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), SinkError> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).entry(topic.to_owned()).or_default().extend(messages);
        Ok(())
    }

    fn health(&self) -> SinkHealth {
        SinkHealth::Healthy
    }
}

/// How one external sink is doing: what `GET /v1/sinks` and `ferrocore sinks list` show.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkStatus {
    pub name: String,
    /// The topic name or pattern the sink takes.
    pub topics: String,
    /// The destination URL with passwords and tokens redacted.
    pub url: String,
    pub state: SinkState,
    /// The most recent failure, with the topic it happened on; kept after a recovery.
    pub last_error: Option<String>,
    /// Per topic, the offset of the first message not yet confirmed by the destination.
    pub cursor: Vec<(String, u64)>,
    /// Messages in the log not yet confirmed, over all topics.
    pub lag_messages: u64,
    /// Age of the oldest message not yet confirmed; 0 when caught up.
    pub lag_seconds: f64,
    pub forwarded_messages: u64,
    /// Messages the log's size cap removed before they were forwarded.
    pub lost_messages: u64,
    /// Messages the destination can never take (too large for it), skipped.
    pub rejected_messages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkState {
    /// Forwarding, or caught up.
    Ok,
    /// The destination is failing; the sink retries with back-off.
    Retrying,
    /// The server is shutting down.
    Stopped,
    /// Another node of the cluster forwards this sink; this one takes over if that node goes.
    Standby,
}

impl SinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Ok => "ok",
            SinkState::Retrying => "retrying",
            SinkState::Stopped => "stopped",
            SinkState::Standby => "standby",
        }
    }
}

/// Reports the external sinks' states.
#[async_trait]
pub trait SinkReport: Send + Sync + 'static {
    async fn statuses(&self) -> Vec<SinkStatus>;
}
