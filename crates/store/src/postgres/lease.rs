//! Cluster-wide leases on PostgreSQL: "at most one node does X" without a consensus protocol of
//! our own.
//!
//! A lease is a session-level advisory lock (`pg_try_advisory_lock`) taken on a connection of its
//! own, outside the store's pool. A session lock belongs to the connection that took it, so:
//! - when the holder dies (even `kill -9`), its socket closes, PostgreSQL ends the session and the
//!   lock is free for another node at once;
//! - when the holder loses the database (network cut, server restart), the session is gone or
//!   unreachable; [`AdvisoryLease::alive`] then answers `false` and the holder must stop acting on
//!   the lease. The server side finds a silently vanished client by TCP keepalive, which the lease
//!   connection sets short (about 11 s), so the lock does not stay taken by a ghost for the OS
//!   default of two hours.
//!
//! Pooled connections would not do: the pool could hand the locked session to unrelated work or
//! close it behind the holder's back. Advisory locks are per database, so nodes must share the
//! same database (they do: the same `--store`), and a PgBouncer in transaction mode in front of
//! PostgreSQL would break them (session mode is fine).

use crate::StoreError;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use std::time::Duration;

/// How long opening the lease's connection, or taking the lock, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`AdvisoryLease::alive`] waits for the server's answer.
const ALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long [`AdvisoryLease::release`] tries to unlock and say goodbye before just dropping.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Shown in `pg_stat_activity`, so an operator can tell lease sessions from the pool's.
const APPLICATION_NAME: &str = "ferrocore-lease";

/// Session settings that make the server notice a vanished holder within seconds (idle 5 s, then
/// 3 probes 2 s apart), and keep a server-wide idle timeout from ending the lease. Each is tried
/// alone and a refusal ignored: older servers lack some, Unix sockets ignore the TCP ones.
const SESSION_SETTINGS: [&str; 4] = [
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 3",
    "SET idle_session_timeout = 0",
];

/// A held lease: an advisory lock on a dedicated connection. Dropping it closes the connection,
/// which frees the lock; [`AdvisoryLease::release`] does the same politely.
pub struct AdvisoryLease {
    conn: PgConnection,
    key: i64,
}

impl std::fmt::Debug for AdvisoryLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdvisoryLease").field("key", &self.key).finish_non_exhaustive()
    }
}

/// The advisory lock key of a lease name: the first 8 bytes of its SHA-256, so any name maps to a
/// stable key and distinct names practically never collide.
pub fn lease_key(name: &str) -> i64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

impl AdvisoryLease {
    /// Takes the lease `name` on the database at `url` if no session holds it: `Ok(None)` when
    /// another session does, `Err` when the database cannot be reached. Never waits for the lock.
    /// Error texts never carry the URL (it may hold a password).
    pub async fn try_acquire(url: &str, name: &str) -> Result<Option<AdvisoryLease>, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?
            .application_name(APPLICATION_NAME)
            // The lease runs one statement every few seconds; no statement cache needed.
            .statement_cache_capacity(0)
            .disable_statement_logging();
        let key = lease_key(name);
        let acquire = async {
            let mut conn = options
                .connect()
                .await
                .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL for a lease: {e}")))?;
            for setting in SESSION_SETTINGS {
                if let Err(e) = sqlx::raw_sql(setting).execute(&mut conn).await {
                    tracing::debug!(%setting, error = %e, "lease connection setting refused; going on without it");
                }
            }
            let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| StoreError::Backend(format!("taking an advisory lock: {e}")))?;
            if !held {
                // Another session holds it; this connection has no other use.
                conn.close().await.ok();
                return Ok(None);
            }
            Ok(Some(AdvisoryLease { conn, key }))
        };
        // A timed-out attempt drops its connection, and with it any lock it took meanwhile.
        tokio::time::timeout(CONNECT_TIMEOUT, acquire)
            .await
            .unwrap_or_else(|_| Err(StoreError::Backend("PostgreSQL did not answer a lease request within 5 s".into())))
    }

    /// Whether the lease is still held: its session answers within 3 s. `false` on any error or
    /// timeout, after which the holder must act as if another node may hold it.
    pub async fn alive(&mut self) -> bool {
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut self.conn);
        matches!(tokio::time::timeout(ALIVE_TIMEOUT, ping).await, Ok(Ok(1)))
    }

    /// Frees the lock and closes the connection; failures are ignored (closing, or failing to,
    /// ends the session, and the lock with it).
    pub async fn release(mut self) {
        let key = self.key;
        let goodbye = async move {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut self.conn).await;
            let _ = self.conn.close().await;
        };
        let _ = tokio::time::timeout(RELEASE_TIMEOUT, goodbye).await;
    }
}
