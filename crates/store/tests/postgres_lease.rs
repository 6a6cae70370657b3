//! Advisory leases against the real PostgreSQL: one holder per name, freed when the holder's
//! connection goes (dropped, released, or ended by the server), independent names independent.
//!
//! Each test uses a database of its own (advisory locks are per database, so tests running at
//! once never see each other's leases). Without a reachable server the tests are skipped, except
//! under `CI=true`, where they fail.

use ferrocore_store::postgres::lease::{AdvisoryLease, lease_key};
use ferrocore_store::postgres::testing::TestDatabase;
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};

macro_rules! test_db {
    () => {
        match TestDatabase::create().await {
            Some(db) => db,
            None => return,
        }
    };
}

/// Tries to take `name` until it succeeds, for at most `within`.
async fn acquire_within(url: &str, name: &str, within: Duration) -> AdvisoryLease {
    let deadline = Instant::now() + within;
    loop {
        if let Some(lease) = AdvisoryLease::try_acquire(url, name).await.unwrap() {
            return lease;
        }
        assert!(Instant::now() < deadline, "lease {name} still held after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_holder_per_name_until_its_connection_goes() {
    let db = test_db!();
    let url = db.url();
    let mut first = AdvisoryLease::try_acquire(&url, "ferrocore-sink/test/a").await.unwrap().expect("free lease");
    assert!(first.alive().await);
    assert!(AdvisoryLease::try_acquire(&url, "ferrocore-sink/test/a").await.unwrap().is_none(), "held elsewhere");
    // Another name is another lock.
    let other = AdvisoryLease::try_acquire(&url, "ferrocore-sink/test/b").await.unwrap().expect("independent name");

    // The holder vanishes without a word (as in a crash): its connection closes, the lock is free.
    drop(first);
    let second = acquire_within(&url, "ferrocore-sink/test/a", Duration::from_secs(5)).await;
    assert!(AdvisoryLease::try_acquire(&url, "ferrocore-sink/test/a").await.unwrap().is_none());

    // Released politely: free at once.
    second.release().await;
    let third = AdvisoryLease::try_acquire(&url, "ferrocore-sink/test/a").await.unwrap().expect("released");
    assert!(AdvisoryLease::try_acquire(&url, "ferrocore-sink/test/b").await.unwrap().is_none(), "b still held");
    third.release().await;
    other.release().await;
}

#[tokio::test]
async fn a_lease_whose_session_the_server_ended_is_not_alive_and_is_free() {
    let db = test_db!();
    let url = db.url();
    let mut lease = AdvisoryLease::try_acquire(&url, "lease").await.unwrap().expect("free lease");
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let key = lease_key("lease");
    // A bigint advisory key is stored as (classid = high 32 bits, objid = low 32 bits, objsubid = 1).
    let holder: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid::bigint = $1 AND objid::bigint = $2",
    )
    .bind((key as u64 >> 32) as i64)
    .bind((key as u64 & 0xffff_ffff) as i64)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(holder.len(), 1, "the lock is visible in pg_locks under the name's key");
    let ended: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(holder[0]).fetch_one(&mut admin).await.unwrap();
    assert!(ended);
    assert!(!lease.alive().await, "a lease on an ended session is not alive");
    let again = acquire_within(&url, "lease", Duration::from_secs(5)).await;
    again.release().await;
    lease.release().await;
    admin.close().await.ok();
}

#[tokio::test]
async fn an_unreachable_database_is_an_error_that_does_not_show_the_password() {
    // Nothing listens on port 9 (discard): refused at once.
    let err = AdvisoryLease::try_acquire("postgres://u:s3cret-pw@127.0.0.1:9/db", "x").await.unwrap_err();
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    assert!(AdvisoryLease::try_acquire("not a url", "x").await.is_err());
}
