//! Device activity log entries on PostgreSQL: one transaction per appended batch, keyset reads by
//! sequence number within a registry, pruning by age and row cap.
//!
//! Sequence numbers come from an identity column. Appends take one transaction-scoped advisory
//! lock, so batches are numbered and committed one after the other: a reader paging by sequence
//! number never sees a number that a batch still in flight could fall below.

use super::{PostgresStore, backend};
use crate::Result;
use crate::device_logs::{DeviceLogEntry, DeviceLogQuery};
use ferrocore_model::Timestamp;
use sqlx::{Postgres, Row};

/// The advisory lock key appends hold ("ferrlogs").
const APPEND_LOCK: i64 = 0x6665_7272_6c6f_6773;

impl PostgresStore {
    pub(super) async fn append_logs(&self, entries: &[DeviceLogEntry], now: Timestamp) -> Result<Vec<u64>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut seqs = Vec::with_capacity(entries.len());
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(APPEND_LOCK).execute(&mut *tx).await.map_err(backend)?;
        // Several rows per statement; PostgreSQL allows 65,535 parameters, 10 a row.
        for chunk in entries.chunks(500) {
            let mut q = crate::rows::append_device_logs::<Postgres>(chunk, now);
            let rows = q.build().fetch_all(&mut *tx).await.map_err(backend)?;
            // The identity numbers the rows of a statement in the order of its VALUES, whatever
            // order RETURNING lists them in, and the lock keeps other appends out.
            let mut chunk_seqs: Vec<u64> = rows.iter().map(|r| r.get::<i64, _>(0).max(0) as u64).collect();
            chunk_seqs.sort_unstable();
            seqs.extend(chunk_seqs);
        }
        tx.commit().await.map_err(backend)?;
        Ok(seqs)
    }

    pub(super) async fn list_logs(&self, query: &DeviceLogQuery) -> Result<Vec<DeviceLogEntry>> {
        let mut q = crate::rows::list_device_logs::<Postgres>(query);
        let rows = q.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(|row| crate::rows::device_log_from_row(&query.registry, row)).collect()
    }

    pub(super) async fn prune_logs(&self, before: Timestamp, keep: u64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let old = sqlx::query("DELETE FROM device_logs WHERE time < $1")
            .bind(before.nanos())
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        // Everything from the (keep+1)-th highest number down goes: counted rather than taken as
        // max - keep, since an identity leaves gaps where an append rolled back.
        let over = sqlx::query(
            "DELETE FROM device_logs WHERE seq <= (SELECT seq FROM device_logs ORDER BY seq DESC OFFSET $1 LIMIT 1)",
        )
        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        tx.commit().await.map_err(backend)?;
        Ok(old + over)
    }
}
