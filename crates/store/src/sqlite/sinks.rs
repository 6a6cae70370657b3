//! [`SinkStore`] on SQLite.

use super::{SqliteStore, backend};
use crate::Result;
use crate::sinks::{SinkCursor, SinkStore};
use async_trait::async_trait;
use ferrocore_model::Timestamp;
use sqlx::Row;

#[async_trait]
impl SinkStore for SqliteStore {
    async fn open_sink(&self, sink: &str, now: Timestamp) -> Result<(Timestamp, Vec<SinkCursor>)> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT OR IGNORE INTO sinks (name, created_at) VALUES (?, ?)")
            .bind(sink.to_owned())
            .bind(now.nanos())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let created: i64 = sqlx::query_scalar("SELECT created_at FROM sinks WHERE name = ?")
            .bind(sink.to_owned())
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let rows = sqlx::query("SELECT topic, next_offset FROM sink_cursors WHERE sink = ? ORDER BY topic")
            .bind(sink.to_owned())
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
        let mut tx = self.begin().await?;
        for c in cursors {
            sqlx::query(
                "INSERT INTO sink_cursors (sink, topic, next_offset) VALUES (?, ?, ?) \
                 ON CONFLICT (sink, topic) DO UPDATE SET next_offset = excluded.next_offset",
            )
            .bind(c.sink.clone())
            .bind(c.topic.clone())
            .bind(i64::try_from(c.next_offset).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}
