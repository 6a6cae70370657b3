//! Schema migrations, embedded in the binary and applied in order at open.

use crate::{Result, StoreError};
use sqlx::SqlitePool;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_initial.sql")),
    (2, include_str!("../../migrations/sqlite/0002_pubsub.sql")),
    (3, include_str!("../../migrations/sqlite/0003_sinks.sql")),
    (4, include_str!("../../migrations/sqlite/0004_device_logs.sql")),
    (5, include_str!("../../migrations/sqlite/0005_iam.sql")),
];

/// The schema version this binary brings a database to.
pub const LATEST: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

pub(super) async fn run(pool: &SqlitePool) -> Result<()> {
    let fail = |e: sqlx::Error| StoreError::Backend(format!("migration failed: {e}"));
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(fail)?;
    let applied: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(pool)
        .await
        .map_err(fail)?;
    if let Some((newest, _)) = MIGRATIONS.last()
        && applied > *newest
    {
        return Err(StoreError::Backend(format!(
            "the database schema (version {applied}) is newer than this binary understands (version {newest})"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        let mut tx = pool.begin().await.map_err(fail)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql)).execute(&mut *tx).await.map_err(fail)?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, strftime('%s', 'now'))")
            .bind(*version)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}
