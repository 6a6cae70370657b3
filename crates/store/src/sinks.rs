//! What the external sinks keep: when each sink was first seen, and per topic the offset it
//! forwards next. Saved in batches over all sinks, never once per message.

use crate::Result;
use async_trait::async_trait;
use ferrocore_model::Timestamp;

/// One sink's position in one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkCursor {
    pub sink: String,
    pub topic: String,
    /// The offset of the first message not yet confirmed by the destination.
    pub next_offset: u64,
}

#[async_trait]
pub trait SinkStore: Send + Sync + 'static {
    /// Registers `sink` on its first start at `now` and returns when it was first registered
    /// (`now` for a new sink), with its saved cursors sorted by topic.
    async fn open_sink(&self, sink: &str, now: Timestamp) -> Result<(Timestamp, Vec<SinkCursor>)>;
    /// Writes several cursors (of any sinks) in one transaction, each replacing the saved one.
    async fn save_sink_cursors(&self, cursors: &[SinkCursor]) -> Result<()>;
}
