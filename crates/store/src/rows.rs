//! What both SQL backends share: the tables have the same names and columns in SQLite and in
//! PostgreSQL, so a row becomes a domain value the same way in each, and the statements that are
//! plain SQL in both are built once. The backends keep what differs: locking, conflict handling,
//! and the few column types PostgreSQL narrows (read here through [`Columns`], which asks each
//! driver for the Rust type both map to).

use crate::device_logs::{DeviceLogEntry, DeviceLogQuery, LogSeverity};
use crate::iam::{ApiTokenRecord, ServiceAccountKeyRecord, ServiceAccountRecord};
use crate::{DeviceLogin, Result, StoreError};
use ferrocore_model::pubsub::{Subscription, SubscriptionCursor, Topic, TopicName, TopicOrigin};
use ferrocore_model::{
    Device, DeviceActivity, DeviceConfig, DeviceId, DeviceState, GatewayAuthMethod, GatewayConfig, GatewayType,
    HttpState, LocationName, LogLevel, MqttState, NumId, Registry, RegistryId, RegistryName, StateNotificationConfig,
    Status, Timestamp,
};
use sqlx::{Database, Encode, QueryBuilder, Row, Type};

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("stored JSON is unreadable: {e}"))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(json_err)
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(json_err)
}

pub(crate) fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

/// The range of ids a device list reads, as one lower and one upper bound on the (registry, id)
/// index: `(inclusive, lower, upper)` for `id > lower` (or `>=` when `inclusive`) and
/// `id < upper`. A prefix `p` is the range `[p, p with its last byte plus one)` (ids are ASCII,
/// compared bytewise: SQLite's BINARY, PostgreSQL's "C" collation); the keyset's `after` is
/// folded into the lower bound, so a search far into a registry costs one index seek. Both
/// bounds are always given because a bound behind an `OR` would not be used for the index.
pub(crate) fn id_range(after: Option<&DeviceId>, prefix: Option<&str>) -> (bool, String, String) {
    // Every id's bytes are below 0x7f, so this is above every id.
    const ABOVE_ALL: &str = "\u{7f}";
    let Some(p) = prefix else {
        return (false, after.map(|a| a.as_str().to_owned()).unwrap_or_default(), ABOVE_ALL.to_owned());
    };
    let mut end = p.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let upper = String::from_utf8(end).unwrap_or_else(|_| ABOVE_ALL.to_owned());
    match after {
        Some(a) if a.as_str() >= p => (false, a.as_str().to_owned(), upper),
        _ => (true, p.to_owned(), upper),
    }
}

pub(crate) fn num(n: NumId) -> i64 {
    // Numeric ids are generated below 2^63, so this cast never wraps.
    n.0 as i64
}

/// A row's columns as the decoders below read them. Small integer columns (enum numbers) are
/// `integer` in PostgreSQL and `INTEGER` in SQLite: both read as `i32`.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> String;
    fn opt_text(&self, column: &str) -> Option<String>;
    fn int(&self, column: &str) -> i32;
    fn big(&self, column: &str) -> i64;
    fn opt_big(&self, column: &str) -> Option<i64>;
    fn flag(&self, column: &str) -> bool;
    fn bytes(&self, column: &str) -> Vec<u8>;
    fn opt_bytes(&self, column: &str) -> Option<Vec<u8>>;
}

/// `Columns` through `$get`, each row type's typed getter.
macro_rules! columns {
    ($get:ident: $($row:ty),+) => {$(
        impl Columns for $row {
            fn text(&self, column: &str) -> String { self.$get(column) }
            fn opt_text(&self, column: &str) -> Option<String> { self.$get(column) }
            fn int(&self, column: &str) -> i32 { self.$get(column) }
            fn big(&self, column: &str) -> i64 { self.$get(column) }
            fn opt_big(&self, column: &str) -> Option<i64> { self.$get(column) }
            fn flag(&self, column: &str) -> bool { self.$get(column) }
            fn bytes(&self, column: &str) -> Vec<u8> { self.$get(column) }
            fn opt_bytes(&self, column: &str) -> Option<Vec<u8>> { self.$get(column) }
        }
    )+};
}

columns!(get: sqlx::sqlite::SqliteRow, sqlx::postgres::PgRow);

/// SQLite rows read on the caller's thread (`sqlite::points`). As with sqlx's `Row::get`, a
/// column missing from the schema or of another type is a bug in this crate, not bad input.
trait Checked {
    fn checked<T: rusqlite::types::FromSql>(&self, column: &str) -> T;
}

impl Checked for rusqlite::Row<'_> {
    fn checked<T: rusqlite::types::FromSql>(&self, column: &str) -> T {
        self.get(column).unwrap_or_else(|e| panic!("column {column} does not match the schema: {e}"))
    }
}

columns!(checked: rusqlite::Row<'_>);

pub(crate) fn registry_from_row(parent: &LocationName, row: &impl Columns) -> Result<Registry> {
    let id = row.text("id");
    Ok(Registry {
        name: RegistryName {
            parent: parent.clone(),
            registry: RegistryId::parse_field("id", &id).map_err(|e| StoreError::Backend(e.message))?,
        },
        event_notification_configs: from_json(&row.text("event_configs"))?,
        state_notification_config: row
            .opt_text("state_topic")
            .map(|t| StateNotificationConfig { pubsub_topic_name: t }),
        mqtt_state: MqttState::from_number(row.int("mqtt_state")).unwrap_or_default(),
        http_state: HttpState::from_number(row.int("http_state")).unwrap_or_default(),
        log_level: LogLevel::from_number(row.int("log_level")).unwrap_or_default(),
        credentials: from_json(&row.text("credentials"))?,
    })
}

/// [`DeviceLogin`]'s columns, from the devices table (as `d`) alone.
pub(crate) const LOGIN_SELECT: &str =
    "SELECT d.num_id, d.id, d.credentials, d.blocked, d.gateway_type, d.log_level FROM devices d ";

/// One device of a registry by id, after [`DEVICE_SELECT`] or [`LOGIN_SELECT`]: the registry's
/// project, location and id are parameters 1 to 3, the device's id parameter 4, in the
/// backend's placeholder style (`$` for PostgreSQL, `?` for SQLite). Answered from the
/// (registry_pk, id) index whatever the registry's size.
pub(crate) fn device_by_id(select: &str, p: char) -> String {
    format!(
        "{select}WHERE d.registry_pk = \
         (SELECT pk FROM registries WHERE project = {p}1 AND location = {p}2 AND id = {p}3) AND d.id = {p}4"
    )
}

/// As [`device_by_id`], by numeric id (the primary key) as parameter 4.
pub(crate) fn device_by_num(select: &str, p: char) -> String {
    format!(
        "{select}WHERE d.num_id = {p}4 AND d.registry_pk = \
         (SELECT pk FROM registries WHERE project = {p}1 AND location = {p}2 AND id = {p}3)"
    )
}

/// A row of [`LOGIN_SELECT`].
pub(crate) fn login_from_row(row: &impl Columns) -> Result<DeviceLogin> {
    let id = row.text("id");
    Ok(DeviceLogin {
        id: DeviceId::parse_field("id", &id).map_err(|e| StoreError::Backend(e.message))?,
        num_id: NumId(row.big("num_id") as u64),
        credentials: from_json(&row.text("credentials"))?,
        blocked: row.flag("blocked"),
        gateway_type: GatewayType::from_number(row.int("gateway_type")).unwrap_or_default(),
        log_level: LogLevel::from_number(row.int("log_level")).unwrap_or_default(),
    })
}

/// Columns every device read selects: the device, its current config and its latest state.
pub(crate) const DEVICE_SELECT: &str = "SELECT d.*, c.cloud_update_time AS c_update, c.device_ack_time AS c_ack, \
     c.data AS c_data, s.update_time AS s_time, s.data AS s_data \
     FROM devices d \
     LEFT JOIN device_configs c ON c.num_id = d.num_id AND c.version = d.config_version \
     LEFT JOIN device_states s ON s.num_id = d.num_id \
         AND s.update_time = (SELECT MAX(update_time) FROM device_states WHERE num_id = d.num_id) ";

/// A row of [`DEVICE_SELECT`].
pub(crate) fn device_from_row(registry: &RegistryName, row: &impl Columns) -> Result<Device> {
    let id = row.text("id");
    let status = row.opt_text("last_error_status");
    Ok(Device {
        registry: registry.clone(),
        id: DeviceId::parse_field("id", &id).map_err(|e| StoreError::Backend(e.message))?,
        num_id: NumId(row.big("num_id") as u64),
        credentials: from_json(&row.text("credentials"))?,
        blocked: row.flag("blocked"),
        activity: DeviceActivity {
            last_heartbeat_time: ts(row.opt_big("last_heartbeat_time")),
            last_event_time: ts(row.opt_big("last_event_time")),
            last_state_time: ts(row.opt_big("last_state_time")),
            last_config_ack_time: ts(row.opt_big("last_config_ack_time")),
            last_config_send_time: ts(row.opt_big("last_config_send_time")),
            last_error_time: ts(row.opt_big("last_error_time")),
            last_error_status: status.as_deref().map(from_json::<Status>).transpose()?,
            config_acks: Vec::new(),
            gateway_access: None,
        },
        config: DeviceConfig {
            version: row.big("config_version"),
            cloud_update_time: ts(row.opt_big("c_update")),
            device_ack_time: ts(row.opt_big("c_ack")),
            binary_data: row.opt_bytes("c_data").unwrap_or_default(),
        },
        state: row.opt_big("s_time").map(|t| DeviceState {
            update_time: Timestamp(t),
            binary_data: row.opt_bytes("s_data").unwrap_or_default(),
        }),
        log_level: LogLevel::from_number(row.int("log_level")).unwrap_or_default(),
        metadata: from_json(&row.text("metadata"))?,
        gateway_config: GatewayConfig {
            gateway_type: GatewayType::from_number(row.int("gateway_type")).unwrap_or_default(),
            gateway_auth_method: GatewayAuthMethod::from_number(row.int("gateway_auth_method")).unwrap_or_default(),
            last_accessed_gateway_id: row.text("last_accessed_gateway_id"),
            last_accessed_gateway_time: ts(row.opt_big("last_accessed_gateway_time")),
        },
    })
}

pub(crate) fn origin_number(o: TopicOrigin) -> i32 {
    match o {
        TopicOrigin::Created => 0,
        TopicOrigin::Registry => 1,
    }
}

pub(crate) fn topic_from_row(row: &impl Columns) -> Result<Topic> {
    let name = row.text("name");
    Ok(Topic {
        name: TopicName::parse("name", &name).map_err(|e| StoreError::Backend(format!("stored topic: {e}")))?,
        labels: from_json(&row.text("labels"))?,
        message_retention_seconds: row.opt_big("retention_seconds"),
        origin: if row.int("origin") == 1 { TopicOrigin::Registry } else { TopicOrigin::Created },
    })
}

pub(crate) fn subscription_from_row(row: &impl Columns) -> Result<(Subscription, SubscriptionCursor)> {
    let mut sub: Subscription = from_json(&row.text("settings"))?;
    // The column is authoritative: deleting the topic clears it without rewriting the settings.
    sub.topic = row
        .opt_text("topic")
        .map(|t| TopicName::parse("topic", &t).map_err(|e| StoreError::Backend(format!("stored topic: {e}"))))
        .transpose()?;
    let cursor = SubscriptionCursor { floor: row.big("floor") as u64, acked: from_json(&row.text("acked"))? };
    Ok((sub, cursor))
}

pub(crate) fn token_from_row(row: &impl Columns) -> Result<ApiTokenRecord> {
    Ok(ApiTokenRecord {
        id: row.text("id"),
        hash: row
            .bytes("hash")
            .try_into()
            .map_err(|h: Vec<u8>| StoreError::Backend(format!("stored token hash has {} bytes, not 32", h.len())))?,
        principal: row.text("principal"),
        role: row.text("role"),
        project: row.text("project"),
        registry: row.opt_text("registry"),
        create_time: Timestamp(row.big("create_time")),
    })
}

pub(crate) fn account_from_row(row: &impl Columns) -> Result<ServiceAccountRecord> {
    Ok(ServiceAccountRecord {
        email: row.text("email"),
        project: row.text("project"),
        account_id: row.text("account_id"),
        unique_id: row.text("unique_id"),
        display_name: row.text("display_name"),
        roles: from_json(&row.text("roles"))?,
        registry: row.opt_text("registry"),
        create_time: Timestamp(row.big("create_time")),
    })
}

pub(crate) fn key_from_row(row: &impl Columns) -> ServiceAccountKeyRecord {
    ServiceAccountKeyRecord {
        email: row.text("email"),
        key_id: row.text("key_id"),
        public_key_der: row.bytes("public_key_der"),
        create_time: Timestamp(row.big("create_time")),
    }
}

/// A row of [`list_device_logs`]'s query, in `registry`.
pub(crate) fn device_log_from_row(registry: &RegistryName, row: &impl Columns) -> Result<DeviceLogEntry> {
    let id = row.text("device_id");
    let severity = row.int("severity");
    Ok(DeviceLogEntry {
        seq: row.big("seq").max(0) as u64,
        time: Timestamp(row.big("time")),
        received: Timestamp(row.big("received")),
        registry: registry.clone(),
        device_id: DeviceId::parse_field("device_id", &id).map_err(|e| StoreError::Backend(e.message))?,
        device_num_id: NumId(row.big("device_num_id").max(0) as u64),
        severity: LogSeverity::from_number(i64::from(severity))
            .ok_or_else(|| StoreError::Backend(format!("unknown stored log severity {severity}")))?,
        event_type: row.text("event_type"),
        payload: row.text("payload"),
    })
}

/// One multi-row INSERT of device log entries (at most 500: 10 parameters a row stays under
/// both databases' limits), returning their sequence numbers.
pub(crate) fn append_device_logs<DB>(chunk: &[DeviceLogEntry], now: Timestamp) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::new(
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
    q
}

/// A registry's log entries matching `query`, oldest first ([`device_log_from_row`] reads them).
pub(crate) fn list_device_logs<DB>(query: &DeviceLogQuery) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
{
    let r = &query.registry;
    let mut q = QueryBuilder::new(
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
    q
}

#[cfg(test)]
mod id_range_tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse_field("id", s).unwrap()
    }

    #[test]
    fn prefixes_and_keysets_become_one_range() {
        assert_eq!(id_range(None, None), (false, String::new(), "\u{7f}".into()));
        assert_eq!(id_range(Some(&id("dev-b")), None), (false, "dev-b".into(), "\u{7f}".into()));
        assert_eq!(id_range(None, Some("dev")), (true, "dev".into(), "dew".into()));
        assert_eq!(id_range(Some(&id("abc")), Some("dev")), (true, "dev".into(), "dew".into()));
        assert_eq!(id_range(Some(&id("dev-a")), Some("dev")), (false, "dev-a".into(), "dew".into()));
        assert_eq!(id_range(None, Some("a~")), (true, "a~".into(), "a\u{7f}".into()));
    }
}
