//! The read connections: a fixed set of read-only SQLite connections, each behind its own lock.
//!
//! sqlx's pool costs every query two extra round trips to the connection's worker thread (a ping
//! when a connection is taken, another when it is given back, the latter from a task spawned per
//! query). A device get is one short indexed SELECT, so those round trips were most of its store
//! cost. Here a caller locks a free connection (or queues on one when all are busy) and runs its
//! statements on it directly. Reads are autocommit SELECTs, so a caller dropped mid-query leaves
//! nothing behind: the worker thread finishes or abandons the statement before it takes the next
//! command.

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

pub(super) struct Readers {
    /// `None` once closed.
    connections: Vec<Mutex<Option<SqliteConnection>>>,
    /// Where the next search for a free connection starts, so waiters spread over all of them.
    next: AtomicUsize,
}

pub(super) type Reader<'a> = MappedMutexGuard<'a, SqliteConnection>;

impl Readers {
    pub(super) async fn open(options: &SqliteConnectOptions, count: usize) -> Result<Self, sqlx::Error> {
        let mut connections = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            connections.push(Mutex::new(Some(options.connect().await?)));
        }
        Ok(Self { connections, next: AtomicUsize::new(0) })
    }

    /// A connection of the set: a free one if there is one, else the next in turn once it is free.
    pub(super) async fn get(&self) -> Result<Reader<'_>, sqlx::Error> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.connections.len();
        let guard = match (0..n).find_map(|k| self.connections[(start + k) % n].try_lock().ok()) {
            Some(free) => free,
            None => self.connections[start % n].lock().await,
        };
        MutexGuard::try_map(guard, Option::as_mut).map_err(|_| sqlx::Error::PoolClosed)
    }

    /// Closes every connection, once those in use are given back.
    pub(super) async fn close(&self) {
        for c in &self.connections {
            if let Some(conn) = c.lock().await.take() {
                // A failure here leaves nothing to clean up: the connection is gone either way.
                let _ = conn.close().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    async fn readers(count: usize) -> (tempfile::TempDir, Readers) {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new().filename(dir.path().join("db")).create_if_missing(true);
        let mut setup = options.connect().await.unwrap();
        sqlx::query("CREATE TABLE t (v INTEGER)").execute(&mut setup).await.unwrap();
        sqlx::query("INSERT INTO t VALUES (7)").execute(&mut setup).await.unwrap();
        setup.close().await.unwrap();
        let r = Readers::open(&options.read_only(true), count).await.unwrap();
        (dir, r)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_callers_than_connections_all_get_answers() {
        let (_dir, r) = readers(2).await;
        let r = std::sync::Arc::new(r);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let r = r.clone();
            tasks.spawn(async move {
                let mut conn = r.get().await.unwrap();
                let row = sqlx::query("SELECT v FROM t").fetch_one(&mut *conn).await.unwrap();
                row.get::<i64, _>(0)
            });
        }
        while let Some(v) = tasks.join_next().await {
            assert_eq!(v.unwrap(), 7);
        }
    }

    #[tokio::test]
    async fn a_read_dropped_half_way_leaves_the_connection_usable() {
        let (_dir, r) = readers(1).await;
        {
            let mut conn = r.get().await.unwrap();
            // Polled once (tokio's timeout polls its future before its clock), then abandoned
            // while the worker thread runs the statement.
            let read = sqlx::query("SELECT v FROM t, t AS u, t AS w").fetch_all(&mut *conn);
            let _ = tokio::time::timeout(std::time::Duration::ZERO, read).await;
        }
        let mut conn = r.get().await.unwrap();
        let row = sqlx::query("SELECT v + 1 FROM t").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(row.get::<i64, _>(0), 8);
    }

    #[tokio::test]
    async fn closed_readers_refuse_instead_of_hanging() {
        let (_dir, r) = readers(2).await;
        r.close().await;
        assert!(matches!(r.get().await, Err(sqlx::Error::PoolClosed)));
    }
}
