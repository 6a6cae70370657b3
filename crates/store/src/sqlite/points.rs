//! Point reads on the calling thread: the device lookup every MQTT and HTTP connect makes, and the
//! registry lookup behind the registry cache.
//!
//! sqlx runs each SQLite connection on a worker thread of its own, so even on a connection held
//! for the caller ([`super::readers`]) a query is a command sent to that thread and rows sent
//! back: two thread wake-ups per read. For a connect storm those hand-offs cost more than the
//! read itself (an indexed SELECT of one row, a few microseconds). Here the statement runs
//! directly on the caller's thread, on a read-only connection taken from a small free list; a
//! caller that finds the list empty opens another, so no caller ever waits for one. WAL mode
//! lets these reads run beside the writer without locking.
//!
//! Only short, bounded reads belong here: they block the thread that calls them.

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Connections kept for reuse; more can be open while many threads read at once.
const KEPT: usize = 16;

/// How long a read waits on a lock (rare in WAL mode: recovery, a checkpoint's restart).
const BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// Statements kept prepared per connection.
const STATEMENTS: usize = 8;

pub(super) struct PointReads {
    path: PathBuf,
    /// Page cache per connection in KiB; None: SQLite's default (2 MiB).
    cache_kib: Option<u32>,
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

/// Why a point read failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum PointError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store is closed")]
    Closed,
}

impl PointReads {
    /// Opens one connection at once, so a database that cannot be read fails here.
    pub(super) fn open(path: &Path, cache_kib: Option<u32>) -> Result<Self, PointError> {
        let reads =
            Self { path: path.to_owned(), cache_kib, idle: Mutex::new(Vec::new()), closed: AtomicBool::new(false) };
        let first = reads.connect()?;
        reads.idle().push(first);
        Ok(reads)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connect(&self) -> Result<Connection, PointError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        if let Some(kib) = self.cache_kib {
            // SQLite takes a negative cache_size as KiB.
            conn.pragma_update(None, "cache_size", -i64::from(kib))?;
        }
        Ok(conn)
    }

    /// Runs `read` on a free connection, on this thread.
    pub(super) fn read<T>(&self, read: impl FnOnce(&Connection) -> Result<T, PointError>) -> Result<T, PointError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PointError::Closed);
        }
        let taken = self.idle().pop();
        let conn = match taken {
            Some(c) => c,
            None => self.connect()?,
        };
        let result = read(&conn);
        let mut idle = self.idle();
        if idle.len() < KEPT && !self.closed.load(Ordering::Acquire) {
            idle.push(conn);
        }
        result
    }

    /// Closes the kept connections; reads after this fail with [`PointError::Closed`].
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (7);").unwrap();
        (dir, path)
    }

    fn value(reads: &PointReads) -> Result<i64, PointError> {
        reads.read(|c| Ok(c.prepare_cached("SELECT v FROM t")?.query_row([], |r| r.get(0))?))
    }

    #[test]
    fn many_threads_read_at_once_and_connections_are_reused() {
        let (_dir, path) = database();
        let reads = PointReads::open(&path, None).unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..200 {
                        assert_eq!(value(&reads).unwrap(), 7);
                    }
                });
            }
        });
        let kept = reads.idle().len();
        assert!((1..=8).contains(&kept), "{kept} connections kept");
    }

    #[test]
    fn reads_see_writes_committed_by_another_connection() {
        let (_dir, path) = database();
        let reads = PointReads::open(&path, None).unwrap();
        assert_eq!(value(&reads).unwrap(), 7);
        Connection::open(&path).unwrap().execute("UPDATE t SET v = 9", []).unwrap();
        assert_eq!(value(&reads).unwrap(), 9);
    }

    #[test]
    fn the_connections_cannot_write() {
        let (_dir, path) = database();
        let reads = PointReads::open(&path, None).unwrap();
        let write = reads.read(|c| Ok(c.execute("UPDATE t SET v = 1", [])?));
        assert!(matches!(write, Err(PointError::Sqlite(_))), "{write:?}");
        assert_eq!(value(&reads).unwrap(), 7);
    }

    #[test]
    fn closed_reads_refuse() {
        let (_dir, path) = database();
        let reads = PointReads::open(&path, None).unwrap();
        reads.close();
        assert!(matches!(value(&reads), Err(PointError::Closed)));
    }

    #[test]
    fn a_cache_size_applies_to_every_connection() {
        let (_dir, path) = database();
        let cache =
            |reads: &PointReads| reads.read(|c| Ok(c.query_row("PRAGMA cache_size", [], |r| r.get::<_, i64>(0))?));
        let small = PointReads::open(&path, Some(256)).unwrap();
        let default = PointReads::open(&path, None).unwrap();
        assert_eq!(cache(&small).unwrap(), -256);
        // A second connection, opened while the first is taken, gets it too.
        assert_eq!(small.read(|_| cache(&small)).unwrap(), -256);
        assert_eq!(cache(&default).unwrap(), -2000);
    }

    #[test]
    fn a_missing_database_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        assert!(PointReads::open(&dir.path().join("absent"), None).is_err());
    }
}
