//! The embedded default backend: one SQLite file in the data directory.
//!
//! Writes go through a single connection (SQLite has one writer anyway, and serialising them here
//! avoids lock-upgrade failures); reads use a small pool beside it, which WAL mode lets run while a
//! write is in progress. `synchronous=FULL` makes every acknowledged write survive a crash.

mod device_logs;
mod iam;
pub mod migrate;
mod points;
mod pubsub;
mod readers;
mod sinks;

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
    Device, DeviceActivity, DeviceConfig, DeviceId, DeviceName, DeviceRef, DeviceState, LocationName, NumId, Registry,
    RegistryId, RegistryName, Timestamp,
};
use rand::Rng;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, Transaction};
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

pub struct SqliteStore {
    writer: SqlitePool,
    readers: readers::Readers,
    points: points::PointReads,
    /// The device reads of connects, on connections of their own with a small page cache.
    logins: points::PointReads,
}

/// Page cache of each login-read connection, KiB. A connect reads one device row: the cache keeps
/// the B-tree's interior pages (all of them up to ~100,000 devices) and the rows come from the
/// kernel's page cache. With SQLite's default of 2 MiB per connection, the connects of a large
/// fleet fill every such connection's cache with rows read once: ~0.2 KB per idle connection at
/// 19,000 (docs/benchmarks.md). API reads keep the default cache on the other point connections.
const LOGIN_CACHE_KIB: u32 = 256;

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn point(e: points::PointError) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The four device reads: full device or login fields, by id or by numeric id.
static DEVICE_BY_ID: LazyLock<String> = LazyLock::new(|| device_by_id(DEVICE_SELECT, '?'));
static DEVICE_BY_NUM: LazyLock<String> = LazyLock::new(|| device_by_num(DEVICE_SELECT, '?'));
static LOGIN_BY_ID: LazyLock<String> = LazyLock::new(|| device_by_id(LOGIN_SELECT, '?'));
static LOGIN_BY_NUM: LazyLock<String> = LazyLock::new(|| device_by_num(LOGIN_SELECT, '?'));

impl SqliteStore {
    /// A read connection (see [`readers`]).
    async fn reader(&self) -> Result<readers::Reader<'_>> {
        self.readers.get().await.map_err(backend)
    }

    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(backend)?;
        migrate::run(&writer).await?;
        let readers = readers::Readers::open(&options.read_only(true), 4).await.map_err(backend)?;
        let points = points::PointReads::open(path, None).map_err(point)?;
        let logins = points::PointReads::open(path, Some(LOGIN_CACHE_KIB)).map_err(point)?;
        Ok(Self { writer, readers, points, logins })
    }

    /// Flushes and closes both pools.
    pub async fn close(&self) {
        self.points.close();
        self.logins.close();
        self.readers.close().await;
        self.writer.close().await;
    }

    /// One device's row by one of two statements (by id, by numeric id: see `rows::device_by_id`;
    /// two plain statements rather than one with a CASE, so each is answered from an index). On
    /// this thread: every device connect makes such a read.
    fn device_row<T>(
        &self,
        reads: &points::PointReads,
        name: &DeviceName,
        (by_id, by_num): (&str, &str),
        decode: impl Fn(&rusqlite::Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let reg = &name.registry;
        let key = (reg.parent.project.as_str(), reg.parent.location.as_str(), reg.registry.as_str());
        reads
            .read(|c| {
                let (id, number);
                let (mut statement, device): (_, &dyn rusqlite::ToSql) = match &name.device {
                    DeviceRef::Id(d) => {
                        id = d.as_str();
                        (c.prepare_cached(by_id)?, &id)
                    }
                    DeviceRef::Num(n) => {
                        number = num(*n);
                        (c.prepare_cached(by_num)?, &number)
                    }
                };
                let mut rows = statement.query((key.0, key.1, key.2, device))?;
                Ok(rows.next()?.map(&decode))
            })
            .map_err(point)?
            .transpose()
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer.begin().await.map_err(backend)
    }
}

async fn registry_pk(tx: &mut Transaction<'static, Sqlite>, name: &RegistryName) -> Result<Option<i64>> {
    sqlx::query("SELECT pk FROM registries WHERE project = ? AND location = ? AND id = ?")
        .bind(name.parent.project.as_str().to_owned())
        .bind(name.parent.location.as_str().to_owned())
        .bind(name.registry.as_str().to_owned())
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)
        .map(|r| r.map(|r| r.get(0)))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_registry(&self, r: &Registry) -> Result<()> {
        let mut tx = self.begin().await?;
        if registry_pk(&mut tx, &r.name).await?.is_some() {
            return Err(StoreError::AlreadyExists);
        }
        sqlx::query(
            "INSERT INTO registries (project, location, id, event_configs, state_topic, mqtt_state, http_state, \
             log_level, credentials) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(r.name.parent.project.as_str().to_owned())
        .bind(r.name.parent.location.as_str().to_owned())
        .bind(r.name.registry.as_str().to_owned())
        .bind(to_json(&r.event_notification_configs)?)
        .bind(r.state_notification_config.as_ref().map(|s| s.pubsub_topic_name.clone()))
        .bind(r.mqtt_state.number())
        .bind(r.http_state.number())
        .bind(r.log_level.number())
        .bind(to_json(&r.credentials)?)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        pubsub::create_registry_topics(&mut tx, r).await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_registry(&self, name: &RegistryName) -> Result<Option<Registry>> {
        let p = &name.parent;
        let key = (p.project.as_str(), p.location.as_str(), name.registry.as_str());
        self.points
            .read(|c| {
                let mut statement =
                    c.prepare_cached("SELECT * FROM registries WHERE project = ?1 AND location = ?2 AND id = ?3")?;
                let mut rows = statement.query(key)?;
                Ok(rows.next()?.map(|r| registry_from_row(p, r)))
            })
            .map_err(point)?
            .transpose()
    }

    async fn list_registries(
        &self,
        parent: &LocationName,
        after: Option<&RegistryId>,
        limit: u32,
    ) -> Result<Vec<Registry>> {
        let rows =
            sqlx::query("SELECT * FROM registries WHERE project = ? AND location = ? AND id > ? ORDER BY id LIMIT ?")
                .bind(parent.project.as_str().to_owned())
                .bind(parent.location.as_str().to_owned())
                .bind(after.map(|a| a.as_str().to_owned()).unwrap_or_default())
                .bind(i64::from(limit))
                .fetch_all(&mut *self.reader().await?)
                .await
                .map_err(backend)?;
        rows.iter().map(|r| registry_from_row(parent, r)).collect()
    }

    async fn update_registry(&self, r: &Registry) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE registries SET event_configs = ?, state_topic = ?, mqtt_state = ?, http_state = ?, \
             log_level = ?, credentials = ? WHERE project = ? AND location = ? AND id = ?",
        )
        .bind(to_json(&r.event_notification_configs)?)
        .bind(r.state_notification_config.as_ref().map(|s| s.pubsub_topic_name.clone()))
        .bind(r.mqtt_state.number())
        .bind(r.http_state.number())
        .bind(r.log_level.number())
        .bind(to_json(&r.credentials)?)
        .bind(r.name.parent.project.as_str().to_owned())
        .bind(r.name.parent.location.as_str().to_owned())
        .bind(r.name.registry.as_str().to_owned())
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
        let Some(pk) = registry_pk(&mut tx, name).await? else {
            return Ok(RegistryDelete::NotFound);
        };
        let has_devices = sqlx::query("SELECT 1 FROM devices WHERE registry_pk = ? LIMIT 1")
            .bind(pk)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .is_some();
        if has_devices {
            return Ok(RegistryDelete::NotEmpty);
        }
        sqlx::query("DELETE FROM registries WHERE pk = ?").bind(pk).execute(&mut *tx).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(RegistryDelete::Deleted)
    }

    async fn create_device(&self, d: NewDevice) -> Result<Device> {
        let mut tx = self.begin().await?;
        let pk = registry_pk(&mut tx, &d.registry).await?.ok_or(StoreError::NotFound)?;
        let taken = sqlx::query("SELECT 1 FROM devices WHERE registry_pk = ? AND id = ?")
            .bind(pk)
            .bind(d.id.as_str().to_owned())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .is_some();
        if taken {
            return Err(StoreError::AlreadyExists);
        }
        // Numeric ids are random 16-digit numbers, like IoT Core's, so they reveal nothing about
        // the number of devices; the writer lock makes the uniqueness check race-free.
        let num_id = loop {
            let candidate: i64 = rand::rng().random_range(1_000_000_000_000_000..9_000_000_000_000_000);
            let exists = sqlx::query("SELECT 1 FROM devices WHERE num_id = ?")
                .bind(candidate)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?
                .is_some();
            if !exists {
                break candidate;
            }
        };
        sqlx::query(
            "INSERT INTO devices (num_id, registry_pk, id, credentials, blocked, log_level, metadata, gateway_type, \
             gateway_auth_method, config_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
        )
        .bind(num_id)
        .bind(pk)
        .bind(d.id.as_str().to_owned())
        .bind(to_json(&d.credentials)?)
        .bind(d.blocked)
        .bind(d.log_level.number())
        .bind(to_json(&d.metadata)?)
        .bind(d.gateway_type.number())
        .bind(d.gateway_auth_method.number())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query("INSERT INTO device_configs (num_id, version, cloud_update_time, data) VALUES (?, 1, ?, ?)")
            .bind(num_id)
            .bind(d.created.0)
            .bind(d.config_data.clone())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(d.into_device(NumId(num_id as u64)))
    }

    async fn get_device(&self, name: &DeviceName) -> Result<Option<Device>> {
        self.device_row(&self.points, name, (&DEVICE_BY_ID, &DEVICE_BY_NUM), |row| device_from_row(&name.registry, row))
    }

    async fn get_device_login(&self, name: &DeviceName) -> Result<Option<DeviceLogin>> {
        // The device row alone: no config or state join, and only the credentials parsed.
        self.device_row(&self.logins, name, (&LOGIN_BY_ID, &LOGIN_BY_NUM), |row| login_from_row(row))
    }

    async fn list_devices(&self, q: &DeviceQuery) -> Result<Vec<Device>> {
        let reg = &q.registry;
        let filter_ids = !(q.device_ids.is_empty() && q.num_ids.is_empty());
        let ids: Vec<&str> = q.device_ids.iter().map(DeviceId::as_str).collect();
        let nums: Vec<i64> = q.num_ids.iter().map(|n| num(*n)).collect();
        let (kind, other) = match q.gateway {
            GatewayFilter::All => (0, 0),
            GatewayFilter::GatewaysOnly => (1, 0),
            GatewayFilter::NonGatewaysOnly => (2, 0),
            GatewayFilter::BoundTo(g) => (3, num(g)),
            GatewayFilter::GatewaysOf(d) => (4, num(d)),
        };
        let (inclusive, lower, upper) = crate::rows::id_range(q.after.as_ref(), q.id_prefix.as_deref());
        let lower_op = if inclusive { ">=" } else { ">" };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEVICE_SELECT} JOIN registries r ON r.pk = d.registry_pk \
             WHERE r.project = ?1 AND r.location = ?2 AND r.id = ?3 AND d.id {lower_op} ?4 AND d.id < ?11 \
             AND (NOT ?5 OR d.id IN (SELECT value FROM json_each(?6)) OR d.num_id IN (SELECT value FROM json_each(?7))) \
             AND CASE ?8 \
                 WHEN 1 THEN d.gateway_type = 1 \
                 WHEN 2 THEN d.gateway_type <> 1 \
                 WHEN 3 THEN d.num_id IN (SELECT device_num_id FROM gateway_bindings WHERE gateway_num_id = ?9) \
                 WHEN 4 THEN d.num_id IN (SELECT gateway_num_id FROM gateway_bindings WHERE device_num_id = ?9) \
                 ELSE 1 END \
             ORDER BY d.id LIMIT ?10"
        )))
        .bind(reg.parent.project.as_str().to_owned())
        .bind(reg.parent.location.as_str().to_owned())
        .bind(reg.registry.as_str().to_owned())
        .bind(lower)
        .bind(filter_ids)
        .bind(to_json(&ids)?)
        .bind(to_json(&nums)?)
        .bind(kind)
        .bind(other)
        .bind(i64::from(q.limit))
        .bind(upper)
        .fetch_all(&mut *self.reader().await?)
        .await
        .map_err(backend)?;
        rows.iter().map(|r| device_from_row(reg, r)).collect()
    }

    async fn update_device(&self, num_id: NumId, u: &DeviceUpdate) -> Result<()> {
        let done = sqlx::query(
            "UPDATE devices SET credentials = ?, blocked = ?, log_level = ?, metadata = ?, gateway_auth_method = ? \
             WHERE num_id = ?",
        )
        .bind(to_json(&u.credentials)?)
        .bind(u.blocked)
        .bind(u.log_level.number())
        .bind(to_json(&u.metadata)?)
        .bind(u.gateway_auth_method.number())
        .bind(num(num_id))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn delete_device(&self, num_id: NumId) -> Result<()> {
        let done = sqlx::query("DELETE FROM devices WHERE num_id = ?")
            .bind(num(num_id))
            .execute(&self.writer)
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
        let current: i64 = sqlx::query("SELECT config_version FROM devices WHERE num_id = ?")
            .bind(num(num_id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?
            .get(0);
        if expected.is_some_and(|e| e != current) {
            return Ok(ConfigUpdate::VersionMismatch { current });
        }
        let version = current + 1;
        sqlx::query("UPDATE devices SET config_version = ? WHERE num_id = ?")
            .bind(version)
            .bind(num(num_id))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("INSERT INTO device_configs (num_id, version, cloud_update_time, data) VALUES (?, ?, ?, ?)")
            .bind(num(num_id))
            .bind(version)
            .bind(now.0)
            .bind(data.to_vec())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM device_configs WHERE num_id = ? AND version <= ?")
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
            "SELECT version, cloud_update_time, device_ack_time, data FROM device_configs WHERE num_id = ? \
             ORDER BY version DESC LIMIT ?",
        )
        .bind(num(num_id))
        .bind(limit as i64)
        .fetch_all(&mut *self.reader().await?)
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
        sqlx::query("UPDATE device_configs SET device_ack_time = ? WHERE num_id = ? AND version = ?")
            .bind(at.0)
            .bind(num(num_id))
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(
            "UPDATE devices SET last_config_ack_time = MAX(COALESCE(last_config_ack_time, 0), ?) WHERE num_id = ?",
        )
        .bind(at.0)
        .bind(num(num_id))
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
        for (n, s) in states {
            sqlx::query(
                "INSERT INTO device_states (num_id, update_time, data) \
                 SELECT num_id, ?, ? FROM devices WHERE num_id = ? \
                 ON CONFLICT (num_id, update_time) DO UPDATE SET data = excluded.data",
            )
            .bind(s.update_time.0)
            .bind(s.binary_data.clone())
            .bind(num(*n))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            sqlx::query(
                "DELETE FROM device_states WHERE num_id = ?1 AND update_time NOT IN \
                 (SELECT update_time FROM device_states WHERE num_id = ?1 ORDER BY update_time DESC LIMIT ?2)",
            )
            .bind(num(*n))
            .bind(HISTORY_KEPT as i64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn list_states(&self, num_id: NumId, limit: usize) -> Result<Vec<DeviceState>> {
        let rows = sqlx::query(
            "SELECT update_time, data FROM device_states WHERE num_id = ? ORDER BY update_time DESC LIMIT ?",
        )
        .bind(num(num_id))
        .bind(limit as i64)
        .fetch_all(&mut *self.reader().await?)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(|r| DeviceState { update_time: Timestamp(r.get(0)), binary_data: r.get(1) }).collect())
    }

    async fn record_activity(&self, batch: &[(NumId, DeviceActivity)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (n, a) in batch {
            // MAX keeps the later of stored and batched values; NULL means "no news" here.
            sqlx::query(
                "UPDATE devices SET \
                 last_heartbeat_time = MAX(COALESCE(last_heartbeat_time, ?1), COALESCE(?1, last_heartbeat_time)), \
                 last_event_time = MAX(COALESCE(last_event_time, ?2), COALESCE(?2, last_event_time)), \
                 last_state_time = MAX(COALESCE(last_state_time, ?3), COALESCE(?3, last_state_time)), \
                 last_config_ack_time = MAX(COALESCE(last_config_ack_time, ?4), COALESCE(?4, last_config_ack_time)), \
                 last_config_send_time = MAX(COALESCE(last_config_send_time, ?5), COALESCE(?5, last_config_send_time)), \
                 last_error_status = CASE WHEN ?6 IS NOT NULL AND ?6 > COALESCE(last_error_time, -1) THEN ?7 \
                                          ELSE last_error_status END, \
                 last_error_time = MAX(COALESCE(last_error_time, ?6), COALESCE(?6, last_error_time)), \
                 last_accessed_gateway_id = CASE WHEN ?9 IS NOT NULL AND ?9 >= COALESCE(last_accessed_gateway_time, -1) \
                                                 THEN ?10 ELSE last_accessed_gateway_id END, \
                 last_accessed_gateway_time = \
                     MAX(COALESCE(last_accessed_gateway_time, ?9), COALESCE(?9, last_accessed_gateway_time)) \
                 WHERE num_id = ?8",
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
            .bind(a.gateway_access.as_ref().map(|g| g.gateway_id.as_str().to_owned()).unwrap_or_default())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            for ack in &a.config_acks {
                sqlx::query(
                    "UPDATE device_configs SET device_ack_time = MAX(COALESCE(device_ack_time, ?1), ?1) \
                     WHERE num_id = ?2 AND version = ?3",
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
        let exists = sqlx::query("SELECT 1 FROM gateway_bindings WHERE gateway_num_id = ? AND device_num_id = ?")
            .bind(num(gateway))
            .bind(num(device))
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .is_some();
        if exists {
            return Ok(BindOutcome::AlreadyBound);
        }
        let count = |sql: &'static str, id: NumId| sqlx::query(sql).bind(num(id));
        let on_gateway: i64 = count("SELECT COUNT(*) FROM gateway_bindings WHERE gateway_num_id = ?", gateway)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?
            .get(0);
        if on_gateway >= MAX_DEVICES_PER_GATEWAY {
            return Ok(BindOutcome::GatewayFull);
        }
        let of_device: i64 = count("SELECT COUNT(*) FROM gateway_bindings WHERE device_num_id = ?", device)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?
            .get(0);
        if of_device >= MAX_GATEWAYS_PER_DEVICE {
            return Ok(BindOutcome::DeviceFull);
        }
        sqlx::query("INSERT INTO gateway_bindings (gateway_num_id, device_num_id) VALUES (?, ?)")
            .bind(num(gateway))
            .bind(num(device))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(BindOutcome::Bound)
    }

    async fn unbind(&self, gateway: NumId, device: NumId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM gateway_bindings WHERE gateway_num_id = ? AND device_num_id = ?")
            .bind(num(gateway))
            .bind(num(device))
            .execute(&self.writer)
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
