//! Schema migrations, embedded in the binary and applied in order at open: all pending ones in one
//! transaction, under an advisory lock, so that several nodes starting at once apply each exactly
//! once and none sees a half-migrated schema.

use crate::{Result, StoreError};
use sqlx::PgPool;

const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../migrations/postgres/0001_initial.sql"))];

/// The advisory lock key migrations hold ("ferrmigr").
const MIGRATION_LOCK: i64 = 0x6665_7272_6d69_6772;

/// The newest schema version this binary knows.
fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

pub(super) async fn run(pool: &PgPool) -> Result<()> {
    let fail = |e: sqlx::Error| StoreError::Backend(format!("migration failed: {e}"));
    let mut tx = pool.begin().await.map_err(fail)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(fail)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(fail)?;
    let applied: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(&mut *tx)
        .await
        .map_err(fail)?;
    let newest = latest();
    if applied > newest {
        return Err(StoreError::Backend(format!(
            "the database schema is version {applied}, newer than this binary's {newest}; upgrade Ferrocore"
        )));
    }
    let pending: Vec<_> = MIGRATIONS.iter().filter(|(v, _)| *v > applied).collect();
    if pending.is_empty() {
        return Ok(());
    }
    for (version, sql) in &pending {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql)).execute(&mut *tx).await.map_err(fail)?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
        )
        .bind(*version)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)?;
    for (version, _) in pending {
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}
