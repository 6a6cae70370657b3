//! Device activity log entries on SQLite: one transaction per appended batch, keyset reads by
//! sequence number within a registry, pruning by age and row cap.

use super::{SqliteStore, backend};
use crate::Result;
use crate::device_logs::{DeviceLogEntry, DeviceLogQuery};
use ferrocore_model::Timestamp;
use sqlx::{Row, Sqlite};

impl SqliteStore {
    pub(super) async fn append_logs(&self, entries: &[DeviceLogEntry], now: Timestamp) -> Result<Vec<u64>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut seqs = Vec::with_capacity(entries.len());
        let mut tx = self.begin().await?;
        // Several rows per statement; SQLite allows 32,766 parameters, 10 a row.
        for chunk in entries.chunks(500) {
            let mut q = crate::rows::append_device_logs::<Sqlite>(chunk, now);
            let rows = q.build().fetch_all(&mut *tx).await.map_err(backend)?;
            // One writer, one transaction: the rows of a statement get increasing numbers in the
            // order of its VALUES, whatever order RETURNING lists them in.
            let mut chunk_seqs: Vec<u64> = rows.iter().map(|r| r.get::<i64, _>(0).max(0) as u64).collect();
            chunk_seqs.sort_unstable();
            seqs.extend(chunk_seqs);
        }
        tx.commit().await.map_err(backend)?;
        Ok(seqs)
    }

    pub(super) async fn list_logs(&self, query: &DeviceLogQuery) -> Result<Vec<DeviceLogEntry>> {
        let mut q = crate::rows::list_device_logs::<Sqlite>(query);
        let rows = q.build().fetch_all(&mut *self.reader().await?).await.map_err(backend)?;
        rows.iter().map(|row| crate::rows::device_log_from_row(&query.registry, row)).collect()
    }

    pub(super) async fn prune_logs(&self, before: Timestamp, keep: u64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let old = sqlx::query("DELETE FROM device_logs WHERE time < ?")
            .bind(before.nanos())
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        // Sequence numbers only grow, so the newest `keep` are those above max - keep.
        let over =
            sqlx::query("DELETE FROM device_logs WHERE seq <= (SELECT COALESCE(MAX(seq), 0) FROM device_logs) - ?")
                .bind(i64::try_from(keep).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected();
        tx.commit().await.map_err(backend)?;
        Ok(old + over)
    }
}
