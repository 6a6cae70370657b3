//! A PostgreSQL database of a test's own on the local server, dropped when the test ends (also
//! when it fails), so tests run in parallel without seeing each other's data. Used by this
//! crate's tests and the server's end-to-end tests; not part of the server.
//!
//! The server is 127.0.0.1:5432 with trust authentication, as `$PGUSER`, else `postgres`.
//! Without a reachable server [`TestDatabase::create`] answers `None` (the test prints why and
//! skips), except under `CI=true`, where it panics: CI must run what needs PostgreSQL.

use sqlx::{Connection, PgConnection};
use std::time::Duration;

const SERVER: &str = "127.0.0.1:5432";

fn server_url(database: &str) -> String {
    let user = std::env::var("PGUSER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "postgres".to_owned());
    format!("postgres://{user}@{SERVER}/{database}")
}

/// A database of the test's own, dropped with this value.
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// `None` when the test is to be skipped: no server, and not under CI.
    pub async fn create() -> Option<Self> {
        let connect = PgConnection::connect(&server_url("postgres"));
        let mut admin = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return unreachable(&e.to_string()),
            Err(_) => return unreachable("no answer within 5 s"),
        };
        let name = format!("ferrocore_test_{:016x}", rand::random::<u64>());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
        admin.close().await.ok();
        Some(Self { name })
    }

    /// The URL `--store` takes for this database.
    pub fn url(&self) -> String {
        server_url(&self.name)
    }
}

fn unreachable(why: &str) -> Option<TestDatabase> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "PostgreSQL is not reachable at {SERVER} ({why}); under CI=true these tests must run: \
             start it with scripts/services.sh"
        );
    }
    eprintln!("skipped: PostgreSQL is not reachable at {SERVER} ({why})");
    None
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // This may run while the test's runtime unwinds a panic: a thread with a runtime of its own
        // drops the database. FORCE ends the connections a failed test left open.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&server_url("postgres")).await.map_err(|e| e.to_string())?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                admin.close().await.ok();
                Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) | Err(e) = dropped.map_err(|_| "the dropping thread panicked".to_owned()) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
