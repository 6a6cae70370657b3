//! [`SinkStore`] on PostgreSQL.

use super::{PostgresStore, backend};
use crate::Result;
use crate::sinks::{SinkCursor, SinkStore};
use async_trait::async_trait;
use ferrocore_model::Timestamp;
use sqlx::Row;

#[async_trait]
impl SinkStore for PostgresStore {
    async fn open_sink(&self, sink: &str, now: Timestamp) -> Result<(Timestamp, Vec<SinkCursor>)> {
        let mut tx = self.begin().await?;
        // Insert-if-absent, then read: a concurrent first registration makes the insert wait for
        // it and do nothing, and the read (a later statement) sees the winner's time.
        sqlx::query("INSERT INTO sinks (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(sink)
            .bind(now.nanos())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let created: i64 = sqlx::query_scalar("SELECT created_at FROM sinks WHERE name = $1")
            .bind(sink)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let rows = sqlx::query("SELECT topic, next_offset FROM sink_cursors WHERE sink = $1 ORDER BY topic")
            .bind(sink)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let cursors = rows
            .iter()
            .map(|r| SinkCursor {
                sink: sink.to_owned(),
                topic: r.get("topic"),
                next_offset: r.get::<i64, _>("next_offset").max(0) as u64,
            })
            .collect();
        Ok((Timestamp(created), cursors))
    }

    async fn save_sink_cursors(&self, cursors: &[SinkCursor]) -> Result<()> {
        if cursors.is_empty() {
            return Ok(());
        }
        // In key order (a stable sort: the last of a key still wins), so concurrent batches lock
        // their rows in the same order.
        let mut sorted: Vec<&SinkCursor> = cursors.iter().collect();
        sorted.sort_by(|a, b| (&a.sink, &a.topic).cmp(&(&b.sink, &b.topic)));
        let mut tx = self.begin().await?;
        for c in sorted {
            sqlx::query(
                "INSERT INTO sink_cursors (sink, topic, next_offset) VALUES ($1, $2, $3) \
                 ON CONFLICT (sink, topic) DO UPDATE SET next_offset = excluded.next_offset",
            )
            .bind(c.sink.as_str())
            .bind(c.topic.as_str())
            .bind(i64::try_from(c.next_offset).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}
