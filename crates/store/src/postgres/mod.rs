//! The PostgreSQL backend: the same tables and semantics as [`crate::sqlite`], for several
//! Ferrocore nodes sharing one database.
//!
//! SQLite has one writer, so its read-check-write sequences are atomic by construction; here many
//! connections write at once, and each such sequence takes the lock that makes it so:
//! - a conditional write on a device (`modify_config`'s version check and history trimming,
//!   `record_states`' trimming) locks the device row first (`SELECT ... FOR NO KEY UPDATE`: it
//!   conflicts with every other writer of the row, but not with foreign-key checks of inserts
//!   that merely reference it);
//! - `bind` locks both device rows, in numeric-id order, before it counts bindings, so the
//!   per-gateway and per-device limits hold whatever binds run at once;
//! - taken names are found by `INSERT ... ON CONFLICT DO NOTHING` and its row count, or by the
//!   unique violation (SQLSTATE 23505) it raises, never by a read before the write;
//! - a parent that must exist for the insert (a registry for a device, a topic for a subscription,
//!   an account for a key) is read `FOR KEY SHARE`, which a concurrent delete of it waits for;
//! - batches that lock several rows (activity, states, cursors, registry topics) do so in key
//!   order, so two batches never wait on each other in a cycle.
//!
//! Every write commits before it returns, with the server's default `synchronous_commit`.

mod device_logs;
mod iam;
pub mod lease;
mod migrate;
mod pubsub;
mod sinks;
#[doc(hidden)]
pub mod testing;

use crate::rows::{
    DEVICE_SELECT, LOGIN_SELECT, device_by_id, device_by_num, device_from_row, login_from_row, num, registry_from_row,
    to_json, ts,
};
use crate::{
    BindOutcome, ConfigUpdate, DeviceLogin, DeviceQuery, DeviceUpdate, GatewayFilter, MAX_DEVICES_PER_GATEWAY,
    MAX_GATEWAYS_PER_DEVICE, NewDevice, RegistryDelete, Result, Store, StoreError,
};
use async_trait::async_trait;
use ferrocore_model::limits::HISTORY_KEPT;
use ferrocore_model::{
    Device, DeviceActivity, DeviceConfig, DeviceName, DeviceRef, DeviceState, GatewayType, LocationName, NumId,
    Registry, RegistryId, RegistryName, Timestamp,
};
use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

/// Connections kept open to the server at most.
const MAX_CONNECTIONS: u32 = 16;
/// How long opening (or borrowing) a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PostgresStore {
    pool: PgPool,
}

/// A failed statement: a unique violation is a taken name, anything else is for the log.
fn backend(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(d) = &e
        && d.code().as_deref() == Some("23505")
    {
        return StoreError::AlreadyExists;
    }
    StoreError::Backend(e.to_string())
}

/// The four device reads: full device or login fields, by id or by numeric id.
static DEVICE_BY_ID: LazyLock<String> = LazyLock::new(|| device_by_id(DEVICE_SELECT, '$'));
static DEVICE_BY_NUM: LazyLock<String> = LazyLock::new(|| device_by_num(DEVICE_SELECT, '$'));
static LOGIN_BY_ID: LazyLock<String> = LazyLock::new(|| device_by_id(LOGIN_SELECT, '$'));
static LOGIN_BY_NUM: LazyLock<String> = LazyLock::new(|| device_by_num(LOGIN_SELECT, '$'));

impl PostgresStore {
    /// One device's row by one of two statements (by id, by numeric id: see
    /// `rows::device_by_id`; two plain statements rather than one with a CASE, so each is
    /// answered from an index).
    async fn device_row(
        &self,
        name: &DeviceName,
        (by_id, by_num): (&'static str, &'static str),
    ) -> Result<Option<sqlx::postgres::PgRow>> {
        let reg = &name.registry;
        let sql = if matches!(name.device, DeviceRef::Id(_)) { by_id } else { by_num };
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(reg.parent.project.as_str())
            .bind(reg.parent.location.as_str())
            .bind(reg.registry.as_str());
        let query = match &name.device {
            DeviceRef::Id(id) => query.bind(id.as_str()),
            DeviceRef::Num(n) => query.bind(num(*n)),
        };
        query.fetch_optional(&self.pool).await.map_err(backend)
    }

    /// Connects to the database at `url` (`postgres://user:password@host:port/db?sslmode=...`) and
    /// brings its schema up to date; a schema newer than this binary's is refused.
    pub async fn open(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("ferrocore");
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL: {e}")))?;
        if let Err(e) = migrate::run(&pool).await {
            pool.close().await;
            return Err(e);
        }
        Ok(Self { pool })
    }

    /// Closes every connection of the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(backend)
    }
}

type Tx = Transaction<'static, Postgres>;

/// The registry's key, locked against deletion until the transaction ends.
async fn registry_pk_shared(tx: &mut Tx, name: &RegistryName) -> Result<Option<i64>> {
    sqlx::query("SELECT pk FROM registries WHERE project = $1 AND location = $2 AND id = $3 FOR KEY SHARE")
        .bind(name.parent.project.as_str())
        .bind(name.parent.location.as_str())
        .bind(name.registry.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)
        .map(|r| r.map(|r| r.get(0)))
}

/// Locks a device row against every other writer until the transaction ends; `false` when the
/// device does not exist.
async fn lock_device(tx: &mut Tx, num_id: i64) -> Result<bool> {
    Ok(sqlx::query("SELECT 1 FROM devices WHERE num_id = $1 FOR NO KEY UPDATE")
        .bind(num_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?
        .is_some())
}

/// `batch` ordered by numeric id, entries of one device kept in their order: the order in which
/// a batch locks device rows, the same for every batch.
fn by_device<T>(batch: &[(NumId, T)]) -> Vec<&(NumId, T)> {
    let mut sorted: Vec<_> = batch.iter().collect();
    sorted.sort_by_key(|(n, _)| n.0);
    sorted
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_registry(&self, r: &Registry) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO registries (project, location, id, event_configs, state_topic, mqtt_state, http_state, \
             log_level, credentials) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (project, location, id) DO NOTHING",
        )
        .bind(r.name.parent.project.as_str())
        .bind(r.name.parent.location.as_str())
        .bind(r.name.registry.as_str())
        .bind(to_json(&r.event_notification_configs)?)
        .bind(r.state_notification_config.as_ref().map(|s| s.pubsub_topic_name.as_str()))
        .bind(r.mqtt_state.number())
        .bind(r.http_state.number())
        .bind(r.log_level.number())
        .bind(to_json(&r.credentials)?)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists);
        }
        pubsub::create_registry_topics(&mut tx, r).await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_registry(&self, name: &RegistryName) -> Result<Option<Registry>> {
        let row = sqlx::query("SELECT * FROM registries WHERE project = $1 AND location = $2 AND id = $3")
            .bind(name.parent.project.as_str())
            .bind(name.parent.location.as_str())
            .bind(name.registry.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| registry_from_row(&name.parent, &r)).transpose()
    }

    async fn list_registries(
        &self,
        parent: &LocationName,
        after: Option<&RegistryId>,
        limit: u32,
    ) -> Result<Vec<Registry>> {
        let rows = sqlx::query(
            "SELECT * FROM registries WHERE project = $1 AND location = $2 AND id > $3 ORDER BY id LIMIT $4",
        )
        .bind(parent.project.as_str())
        .bind(parent.location.as_str())
        .bind(after.map_or("", |a| a.as_str()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(|r| registry_from_row(parent, r)).collect()
    }

    async fn update_registry(&self, r: &Registry) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE registries SET event_configs = $1, state_topic = $2, mqtt_state = $3, http_state = $4, \
             log_level = $5, credentials = $6 WHERE project = $7 AND location = $8 AND id = $9",
        )
        .bind(to_json(&r.event_notification_configs)?)
        .bind(r.state_notification_config.as_ref().map(|s| s.pubsub_topic_name.as_str()))
        .bind(r.mqtt_state.number())
        .bind(r.http_state.number())
        .bind(r.log_level.number())
        .bind(to_json(&r.credentials)?)
        .bind(r.name.parent.project.as_str())
        .bind(r.name.parent.location.as_str())
        .bind(r.name.registry.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        pubsub::create_registry_topics(&mut tx, r).await?;
        tx.commit().await.map_err(backend)
    }

    async fn delete_registry(&self, name: &RegistryName) -> Result<RegistryDelete> {
        let mut tx = self.begin().await?;
        // FOR UPDATE waits for every transaction that is creating a device in the registry (they
        // hold it FOR KEY SHARE), so the emptiness check below sees their devices.
        let pk: Option<i64> =
            sqlx::query_scalar("SELECT pk FROM registries WHERE project = $1 AND location = $2 AND id = $3 FOR UPDATE")
                .bind(name.parent.project.as_str())
                .bind(name.parent.location.as_str())
                .bind(name.registry.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        let Some(pk) = pk else {
            return Ok(RegistryDelete::NotFound);
        };
        let has_devices = sqlx::query("SELECT 1 FROM devices WHERE registry_pk = $1 LIMIT 1")
            .bind(pk)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .is_some();
        if has_devices {
            return Ok(RegistryDelete::NotEmpty);
        }
        sqlx::query("DELETE FROM registries WHERE pk = $1").bind(pk).execute(&mut *tx).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(RegistryDelete::Deleted)
    }

    async fn create_device(&self, d: NewDevice) -> Result<Device> {
        let mut tx = self.begin().await?;
        let pk = registry_pk_shared(&mut tx, &d.registry).await?.ok_or(StoreError::NotFound)?;
        // Numeric ids are random 16-digit numbers, like IoT Core's, so they reveal nothing about
        // the number of devices. A taken number (ON CONFLICT on the key) draws another; a taken
        // id in the registry raises the unique violation that is AlreadyExists.
        let num_id = loop {
            let candidate: i64 = rand::rng().random_range(1_000_000_000_000_000..9_000_000_000_000_000);
            let done = sqlx::query(
                "INSERT INTO devices (num_id, registry_pk, id, credentials, blocked, log_level, metadata, \
                 gateway_type, gateway_auth_method, config_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1) \
                 ON CONFLICT (num_id) DO NOTHING",
            )
            .bind(candidate)
            .bind(pk)
            .bind(d.id.as_str())
            .bind(to_json(&d.credentials)?)
            .bind(d.blocked)
            .bind(d.log_level.number())
            .bind(to_json(&d.metadata)?)
            .bind(d.gateway_type.number())
            .bind(d.gateway_auth_method.number())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if done.rows_affected() == 1 {
                break candidate;
            }
        };
        sqlx::query("INSERT INTO device_configs (num_id, version, cloud_update_time, data) VALUES ($1, 1, $2, $3)")
            .bind(num_id)
            .bind(d.created.0)
            .bind(d.config_data.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(d.into_device(NumId(num_id as u64)))
    }

    async fn get_device(&self, name: &DeviceName) -> Result<Option<Device>> {
        let row = self.device_row(name, (&DEVICE_BY_ID, &DEVICE_BY_NUM)).await?;
        row.map(|r| device_from_row(&name.registry, &r)).transpose()
    }

    async fn get_device_login(&self, name: &DeviceName) -> Result<Option<DeviceLogin>> {
        // The device row alone: no config or state join, and only the credentials parsed.
        let row = self.device_row(name, (&LOGIN_BY_ID, &LOGIN_BY_NUM)).await?;
        row.map(|r| login_from_row(&r)).transpose()
    }

    async fn list_devices(&self, q: &DeviceQuery) -> Result<Vec<Device>> {
        let reg = &q.registry;
        let filter_ids = !(q.device_ids.is_empty() && q.num_ids.is_empty());
        let ids: Vec<String> = q.device_ids.iter().map(|d| d.as_str().to_owned()).collect();
        let nums: Vec<i64> = q.num_ids.iter().map(|n| num(*n)).collect();
        let (kind, other): (i32, i64) = match q.gateway {
            GatewayFilter::All => (0, 0),
            GatewayFilter::GatewaysOnly => (1, 0),
            GatewayFilter::NonGatewaysOnly => (2, 0),
            GatewayFilter::BoundTo(g) => (3, num(g)),
            GatewayFilter::GatewaysOf(d) => (4, num(d)),
        };
        let gateway = GatewayType::Gateway.number();
        let (inclusive, lower, upper) = crate::rows::id_range(q.after.as_ref(), q.id_prefix.as_deref());
        let lower_op = if inclusive { ">=" } else { ">" };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEVICE_SELECT} JOIN registries r ON r.pk = d.registry_pk \
             WHERE r.project = $1 AND r.location = $2 AND r.id = $3 AND d.id {lower_op} $4 AND d.id < $11 \
             AND (NOT $5 OR d.id = ANY($6) OR d.num_id = ANY($7)) \
             AND CASE $8 \
                 WHEN 1 THEN d.gateway_type = {gateway} \
                 WHEN 2 THEN d.gateway_type <> {gateway} \
                 WHEN 3 THEN d.num_id IN (SELECT device_num_id FROM gateway_bindings WHERE gateway_num_id = $9) \
                 WHEN 4 THEN d.num_id IN (SELECT gateway_num_id FROM gateway_bindings WHERE device_num_id = $9) \
                 ELSE TRUE END \
             ORDER BY d.id LIMIT $10"
        )))
        .bind(reg.parent.project.as_str())
        .bind(reg.parent.location.as_str())
        .bind(reg.registry.as_str())
        .bind(lower)
        .bind(filter_ids)
        .bind(ids)
        .bind(nums)
        .bind(kind)
        .bind(other)
        .bind(i64::from(q.limit))
        .bind(upper)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(|r| device_from_row(reg, r)).collect()
    }

    async fn update_device(&self, num_id: NumId, u: &DeviceUpdate) -> Result<()> {
        let done = sqlx::query(
            "UPDATE devices SET credentials = $1, blocked = $2, log_level = $3, metadata = $4, \
             gateway_auth_method = $5 WHERE num_id = $6",
        )
        .bind(to_json(&u.credentials)?)
        .bind(u.blocked)
        .bind(u.log_level.number())
        .bind(to_json(&u.metadata)?)
        .bind(u.gateway_auth_method.number())
        .bind(num(num_id))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn delete_device(&self, num_id: NumId) -> Result<()> {
        // Configs, states and bindings go with it (ON DELETE CASCADE), in the same statement.
        let done = sqlx::query("DELETE FROM devices WHERE num_id = $1")
            .bind(num(num_id))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn modify_config(
        &self,
        num_id: NumId,
        expected: Option<i64>,
        data: &[u8],
        now: Timestamp,
    ) -> Result<ConfigUpdate> {
        let mut tx = self.begin().await?;
        // The row lock makes the version check, the new version and the trimming one step:
        // concurrent calls with the same expected version apply once, the rest see it moved.
        let current: i64 = sqlx::query_scalar("SELECT config_version FROM devices WHERE num_id = $1 FOR NO KEY UPDATE")
            .bind(num(num_id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        if expected.is_some_and(|e| e != current) {
            return Ok(ConfigUpdate::VersionMismatch { current });
        }
        let version = current + 1;
        sqlx::query("UPDATE devices SET config_version = $1 WHERE num_id = $2")
            .bind(version)
            .bind(num(num_id))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("INSERT INTO device_configs (num_id, version, cloud_update_time, data) VALUES ($1, $2, $3, $4)")
            .bind(num(num_id))
            .bind(version)
            .bind(now.0)
            .bind(data)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM device_configs WHERE num_id = $1 AND version <= $2")
            .bind(num(num_id))
            .bind(version - HISTORY_KEPT as i64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(ConfigUpdate::Applied(DeviceConfig {
            version,
            cloud_update_time: Some(now),
            device_ack_time: None,
            binary_data: data.to_vec(),
        }))
    }

    async fn list_config_versions(&self, num_id: NumId, limit: usize) -> Result<Vec<DeviceConfig>> {
        let rows = sqlx::query(
            "SELECT version, cloud_update_time, device_ack_time, data FROM device_configs WHERE num_id = $1 \
             ORDER BY version DESC LIMIT $2",
        )
        .bind(num(num_id))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| DeviceConfig {
                version: r.get(0),
                cloud_update_time: ts(r.get(1)),
                device_ack_time: ts(r.get(2)),
                binary_data: r.get(3),
            })
            .collect())
    }

    async fn ack_config(&self, num_id: NumId, version: i64, at: Timestamp) -> Result<()> {
        let mut tx = self.begin().await?;
        // The device row first, then its config, as modify_config locks them.
        sqlx::query(
            "UPDATE devices SET last_config_ack_time = GREATEST(COALESCE(last_config_ack_time, 0), $1) \
             WHERE num_id = $2",
        )
        .bind(at.0)
        .bind(num(num_id))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query("UPDATE device_configs SET device_ack_time = $1 WHERE num_id = $2 AND version = $3")
            .bind(at.0)
            .bind(num(num_id))
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn record_states(&self, states: &[(NumId, DeviceState)]) -> Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (n, s) in by_device(states) {
            // The lock keeps the device from being deleted before the insert (which would fail the
            // whole batch on the foreign key) and makes the trimming exact when several batches
            // write one device.
            if !lock_device(&mut tx, num(*n)).await? {
                continue;
            }
            sqlx::query(
                "INSERT INTO device_states (num_id, update_time, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (num_id, update_time) DO UPDATE SET data = excluded.data",
            )
            .bind(num(*n))
            .bind(s.update_time.0)
            .bind(s.binary_data.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            sqlx::query(
                "DELETE FROM device_states WHERE num_id = $1 AND update_time < \
                 (SELECT update_time FROM device_states WHERE num_id = $1 ORDER BY update_time DESC \
                  OFFSET $2 LIMIT 1)",
            )
            .bind(num(*n))
            .bind(HISTORY_KEPT as i64 - 1)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn list_states(&self, num_id: NumId, limit: usize) -> Result<Vec<DeviceState>> {
        let rows = sqlx::query(
            "SELECT update_time, data FROM device_states WHERE num_id = $1 ORDER BY update_time DESC LIMIT $2",
        )
        .bind(num(num_id))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(|r| DeviceState { update_time: Timestamp(r.get(0)), binary_data: r.get(1) }).collect())
    }

    async fn record_activity(&self, batch: &[(NumId, DeviceActivity)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (n, a) in by_device(batch) {
            // GREATEST keeps the later of stored and batched values and ignores NULLs ("no news").
            sqlx::query(
                "UPDATE devices SET \
                 last_heartbeat_time = GREATEST(last_heartbeat_time, $1), \
                 last_event_time = GREATEST(last_event_time, $2), \
                 last_state_time = GREATEST(last_state_time, $3), \
                 last_config_ack_time = GREATEST(last_config_ack_time, $4), \
                 last_config_send_time = GREATEST(last_config_send_time, $5), \
                 last_error_status = CASE WHEN $6::BIGINT IS NOT NULL AND $6 > COALESCE(last_error_time, -1) \
                                          THEN $7 ELSE last_error_status END, \
                 last_error_time = GREATEST(last_error_time, $6), \
                 last_accessed_gateway_id = CASE WHEN $9::BIGINT IS NOT NULL \
                                                  AND $9 >= COALESCE(last_accessed_gateway_time, -1) \
                                                 THEN $10 ELSE last_accessed_gateway_id END, \
                 last_accessed_gateway_time = GREATEST(last_accessed_gateway_time, $9) \
                 WHERE num_id = $8",
            )
            .bind(a.last_heartbeat_time.map(|t| t.0))
            .bind(a.last_event_time.map(|t| t.0))
            .bind(a.last_state_time.map(|t| t.0))
            .bind(a.last_config_ack_time.map(|t| t.0))
            .bind(a.last_config_send_time.map(|t| t.0))
            .bind(a.last_error_time.map(|t| t.0))
            .bind(a.last_error_status.as_ref().map(to_json).transpose()?)
            .bind(num(*n))
            .bind(a.gateway_access.as_ref().map(|g| g.time.0))
            .bind(a.gateway_access.as_ref().map_or("", |g| g.gateway_id.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            for ack in &a.config_acks {
                sqlx::query(
                    "UPDATE device_configs SET device_ack_time = GREATEST(device_ack_time, $1) \
                     WHERE num_id = $2 AND version = $3",
                )
                .bind(ack.time.0)
                .bind(num(*n))
                .bind(ack.version)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)
    }

    async fn bind(&self, gateway: NumId, device: NumId) -> Result<BindOutcome> {
        let mut tx = self.begin().await?;
        // Both rows locked, lower numeric id first: binds sharing the gateway or the device run
        // one after the other, so the checks and counts below stay true until the insert commits.
        sqlx::query("SELECT 1 FROM devices WHERE num_id IN ($1, $2) ORDER BY num_id FOR NO KEY UPDATE")
            .bind(num(gateway))
            .bind(num(device))
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let exists = sqlx::query("SELECT 1 FROM gateway_bindings WHERE gateway_num_id = $1 AND device_num_id = $2")
            .bind(num(gateway))
            .bind(num(device))
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .is_some();
        if exists {
            return Ok(BindOutcome::AlreadyBound);
        }
        let count = |sql: &'static str, id: NumId| sqlx::query_scalar::<_, i64>(sql).bind(num(id));
        let on_gateway = count("SELECT COUNT(*) FROM gateway_bindings WHERE gateway_num_id = $1", gateway)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if on_gateway >= MAX_DEVICES_PER_GATEWAY {
            return Ok(BindOutcome::GatewayFull);
        }
        let of_device = count("SELECT COUNT(*) FROM gateway_bindings WHERE device_num_id = $1", device)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if of_device >= MAX_GATEWAYS_PER_DEVICE {
            return Ok(BindOutcome::DeviceFull);
        }
        sqlx::query("INSERT INTO gateway_bindings (gateway_num_id, device_num_id) VALUES ($1, $2)")
            .bind(num(gateway))
            .bind(num(device))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(BindOutcome::Bound)
    }

    async fn unbind(&self, gateway: NumId, device: NumId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM gateway_bindings WHERE gateway_num_id = $1 AND device_num_id = $2")
            .bind(num(gateway))
            .bind(num(device))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn append_device_logs(&self, entries: &[crate::DeviceLogEntry], now: Timestamp) -> Result<Vec<u64>> {
        self.append_logs(entries, now).await
    }

    async fn list_device_logs(&self, query: &crate::DeviceLogQuery) -> Result<Vec<crate::DeviceLogEntry>> {
        self.list_logs(query).await
    }

    async fn prune_device_logs(&self, before: Timestamp, keep: u64) -> Result<u64> {
        self.prune_logs(before, keep).await
    }
}
