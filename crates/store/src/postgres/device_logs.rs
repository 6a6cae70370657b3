//! Device activity log entries on PostgreSQL: one transaction per appended batch, keyset reads by
//! sequence number within a registry, pruning by age and row cap.
//!
//! Sequence numbers come from an identity column. Appends take one transaction-scoped advisory
//! lock, so batches are numbered and committed one after the other: a reader paging by sequence
//! number never sees a number that a batch still in flight could fall below.

use super::{PostgresStore, backend, num};
use crate::device_logs::{DeviceLogEntry, DeviceLogQuery, LogSeverity};
use crate::{Result, StoreError};
use ferrocore_model::{DeviceId, NumId, RegistryName, Timestamp};
use sqlx::{Postgres, QueryBuilder, Row};

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
            let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO device_logs (time, received, project, location, registry, device_id, device_num_id, \
                 severity, event_type, payload) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.time.nanos())
                    .push_bind(now.nanos())
                    .push_bind(e.registry.parent.project.as_str().to_owned())
                    .push_bind(e.registry.parent.location.as_str().to_owned())
                    .push_bind(e.registry.registry.as_str().to_owned())
                    .push_bind(e.device_id.as_str().to_owned())
                    .push_bind(num(e.device_num_id))
                    .push_bind(e.severity.number())
                    .push_bind(e.event_type.clone())
                    .push_bind(e.payload.clone());
            });
            q.push(" RETURNING seq");
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
        let r = &query.registry;
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT seq, time, received, device_id, device_num_id, severity, event_type, payload FROM device_logs \
             WHERE project = ",
        );
        q.push_bind(r.parent.project.as_str().to_owned())
            .push(" AND location = ")
            .push_bind(r.parent.location.as_str().to_owned())
            .push(" AND registry = ")
            .push_bind(r.registry.as_str().to_owned())
            .push(" AND seq > ")
            .push_bind(i64::try_from(query.after.unwrap_or(0)).unwrap_or(i64::MAX));
        if let Some(d) = &query.device_id {
            q.push(" AND device_id = ").push_bind(d.as_str().to_owned());
        }
        if let Some(s) = query.min_severity {
            q.push(" AND severity >= ").push_bind(s.number());
        }
        if let Some(t) = &query.event_type {
            q.push(" AND event_type = ").push_bind(t.clone());
        }
        if let Some(t) = query.start_time {
            q.push(" AND time >= ").push_bind(t.nanos());
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(i64::from(query.limit));
        let rows = q.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter()
            .map(|row| {
                let id: String = row.get("device_id");
                let severity: i32 = row.get("severity");
                Ok(DeviceLogEntry {
                    seq: row.get::<i64, _>("seq").max(0) as u64,
                    time: Timestamp(row.get("time")),
                    received: Timestamp(row.get("received")),
                    registry: RegistryName::clone(r),
                    device_id: DeviceId::parse_field("device_id", &id).map_err(|e| StoreError::Backend(e.message))?,
                    device_num_id: NumId(row.get::<i64, _>("device_num_id").max(0) as u64),
                    severity: LogSeverity::from_number(i64::from(severity))
                        .ok_or_else(|| StoreError::Backend(format!("unknown stored log severity {severity}")))?,
                    event_type: row.get("event_type"),
                    payload: row.get("payload"),
                })
            })
            .collect()
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
