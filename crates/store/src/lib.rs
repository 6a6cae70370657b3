//! Persistence behind one narrow trait, [`Store`], in domain types.
//!
//! The core never sees SQL or driver errors: every backend maps its failures to [`StoreError`], and
//! conditional outcomes (a config version that moved, a registry that still holds devices) are
//! domain values. [`conformance`] is the behaviour every backend must show; each backend's tests run
//! it. [`sqlite`] is the embedded default; [`postgres`] keeps the same tables in a PostgreSQL
//! database that several nodes can share. [`pubsub`] is what the Pub/Sub API keeps, beside it, and
//! [`sinks`] how far each external sink forwarded each topic. [`device_logs`] are the device
//! activity log entries the core appends in batches. [`iam`] holds API tokens and service
//! accounts. [`metered`] times any backend's operations; [`backend`] is all a server needs of one.
//! [`migrate_to_postgres`] copies a stopped installation's SQLite store into PostgreSQL.

pub mod backend;
pub mod conformance;
pub mod device_logs;
pub mod iam;
pub mod metered;
pub mod migrate_to_postgres;
pub mod postgres;
pub mod pubsub;
mod rows;
pub mod sinks;
pub mod sqlite;

pub use backend::Backend;
pub use device_logs::{DeviceLogEntry, DeviceLogQuery, LogSeverity};
pub use iam::IamStore;
pub use pubsub::PubsubStore;
pub use sinks::SinkStore;

use async_trait::async_trait;
use ferrocore_model::{
    Device, DeviceActivity, DeviceConfig, DeviceCredential, DeviceId, DeviceName, DeviceState, GatewayAuthMethod,
    GatewayType, LocationName, LogLevel, NumId, Registry, RegistryId, RegistryName, Timestamp,
};
use std::collections::BTreeMap;

/// The part of a device that checks its connects: who it is, its keys, and whether it may
/// connect at all.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceLogin {
    pub id: DeviceId,
    pub num_id: NumId,
    pub credentials: Vec<DeviceCredential>,
    pub blocked: bool,
    pub gateway_type: GatewayType,
    pub log_level: LogLevel,
}

impl From<Device> for DeviceLogin {
    fn from(d: Device) -> Self {
        Self {
            id: d.id,
            num_id: d.num_id,
            credentials: d.credentials,
            blocked: d.blocked,
            gateway_type: d.gateway_config.gateway_type,
            log_level: d.log_level,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the resource already exists")]
    AlreadyExists,
    #[error("the resource does not exist")]
    NotFound,
    /// The backend failed; the text is for the server log only.
    #[error("storage backend failure: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A device to create; the store assigns its numeric id and its first config version.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub registry: RegistryName,
    pub id: DeviceId,
    pub credentials: Vec<DeviceCredential>,
    pub blocked: bool,
    pub log_level: LogLevel,
    pub metadata: BTreeMap<String, String>,
    pub gateway_type: GatewayType,
    pub gateway_auth_method: GatewayAuthMethod,
    /// Data of config version 1.
    pub config_data: Vec<u8>,
    pub created: Timestamp,
}

impl NewDevice {
    /// The device as created: `num_id` assigned, config version 1, no activity or state yet.
    pub fn into_device(self, num_id: NumId) -> Device {
        Device {
            registry: self.registry,
            id: self.id,
            num_id,
            credentials: self.credentials,
            blocked: self.blocked,
            activity: DeviceActivity::default(),
            config: DeviceConfig {
                version: 1,
                cloud_update_time: Some(self.created),
                device_ack_time: None,
                binary_data: self.config_data,
            },
            state: None,
            log_level: self.log_level,
            metadata: self.metadata,
            gateway_config: ferrocore_model::GatewayConfig {
                gateway_type: self.gateway_type,
                gateway_auth_method: self.gateway_auth_method,
                ..Default::default()
            },
        }
    }
}

/// The mutable part of a device, written whole by [`Store::update_device`].
#[derive(Debug, Clone)]
pub struct DeviceUpdate {
    pub credentials: Vec<DeviceCredential>,
    pub blocked: bool,
    pub log_level: LogLevel,
    pub metadata: BTreeMap<String, String>,
    pub gateway_auth_method: GatewayAuthMethod,
}

/// Which devices a list returns, besides the registry and the page.
#[derive(Debug, Clone, Default)]
pub enum GatewayFilter {
    #[default]
    All,
    GatewaysOnly,
    NonGatewaysOnly,
    /// Devices bound to this gateway.
    BoundTo(NumId),
    /// Gateways this device is bound to.
    GatewaysOf(NumId),
}

#[derive(Debug, Clone)]
pub struct DeviceQuery {
    pub registry: RegistryName,
    /// When non-empty, only devices whose id or numeric id is named in either list.
    pub device_ids: Vec<DeviceId>,
    pub num_ids: Vec<NumId>,
    pub gateway: GatewayFilter,
    /// Keyset: return devices whose id sorts after this one.
    pub after: Option<DeviceId>,
    /// Only devices whose id starts with this (a range of the id index, so as cheap anywhere in
    /// the registry as a plain page). Characters ids may hold only, or it matches nothing.
    pub id_prefix: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigUpdate {
    Applied(DeviceConfig),
    /// `versionToUpdate` did not match; nothing was written.
    VersionMismatch {
        current: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryDelete {
    Deleted,
    NotFound,
    /// The registry still holds devices and was kept.
    NotEmpty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    Bound,
    /// The pair was already bound; nothing changed.
    AlreadyBound,
    /// The gateway already has the maximum number of bound devices.
    GatewayFull,
    /// The device is already bound to the maximum number of gateways.
    DeviceFull,
}

/// Limits the store enforces atomically with the write they guard.
pub const MAX_DEVICES_PER_GATEWAY: i64 = 10_000;
pub const MAX_GATEWAYS_PER_DEVICE: i64 = 10;

/// Every read returns what every acknowledged write left; every write is durable when it returns.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_registry(&self, registry: &Registry) -> Result<()>;
    async fn get_registry(&self, name: &RegistryName) -> Result<Option<Registry>>;
    /// Registries of `parent` ordered by id, after `after`, at most `limit`.
    async fn list_registries(
        &self,
        parent: &LocationName,
        after: Option<&RegistryId>,
        limit: u32,
    ) -> Result<Vec<Registry>>;
    /// Replaces every field but the name. `NotFound` if the registry is gone.
    async fn update_registry(&self, registry: &Registry) -> Result<()>;
    async fn delete_registry(&self, name: &RegistryName) -> Result<RegistryDelete>;

    /// `NotFound` when the registry does not exist, `AlreadyExists` for a taken id.
    async fn create_device(&self, device: NewDevice) -> Result<Device>;
    /// Resolves the device by string or numeric id within its registry.
    async fn get_device(&self, name: &DeviceName) -> Result<Option<Device>>;
    /// What authenticating the device needs, resolved as [`Store::get_device`] does. Every
    /// device connect makes this read, so a backend may answer it from the device row alone.
    async fn get_device_login(&self, name: &DeviceName) -> Result<Option<DeviceLogin>> {
        Ok(self.get_device(name).await?.map(DeviceLogin::from))
    }
    /// Devices ordered by id.
    async fn list_devices(&self, query: &DeviceQuery) -> Result<Vec<Device>>;
    async fn update_device(&self, num_id: NumId, update: &DeviceUpdate) -> Result<()>;
    /// Removes the device with its configs, states and bindings.
    async fn delete_device(&self, num_id: NumId) -> Result<()>;

    /// Writes a new config version if `expected` is None or equals the current version, and keeps
    /// the newest [`ferrocore_model::limits::HISTORY_KEPT`] versions.
    async fn modify_config(
        &self,
        num_id: NumId,
        expected: Option<i64>,
        data: &[u8],
        now: Timestamp,
    ) -> Result<ConfigUpdate>;
    /// Newest first.
    async fn list_config_versions(&self, num_id: NumId, limit: usize) -> Result<Vec<DeviceConfig>>;
    /// Records that the device acknowledged `version`.
    async fn ack_config(&self, num_id: NumId, version: i64, at: Timestamp) -> Result<()>;

    /// Appends states in one transaction, keeping the newest ten per device. Devices that are gone
    /// are skipped.
    async fn record_states(&self, states: &[(NumId, DeviceState)]) -> Result<()>;
    /// Newest first.
    async fn list_states(&self, num_id: NumId, limit: usize) -> Result<Vec<DeviceState>>;
    /// Folds batched activity into the devices in one transaction, config acknowledgements
    /// (`deviceAckTime` of each version) included; devices that are gone are skipped.
    async fn record_activity(&self, batch: &[(NumId, DeviceActivity)]) -> Result<()>;

    async fn bind(&self, gateway: NumId, device: NumId) -> Result<BindOutcome>;
    /// `false` when the pair was not bound.
    async fn unbind(&self, gateway: NumId, device: NumId) -> Result<bool>;

    /// Appends device activity log entries in one transaction, in order, each `received` at `now`
    /// and given the next sequence number (their own `seq` and `received` are ignored); returns
    /// the sequence numbers given, in the entries' order.
    async fn append_device_logs(&self, entries: &[DeviceLogEntry], now: Timestamp) -> Result<Vec<u64>>;
    /// A registry's entries matching the query, oldest (lowest sequence number) first.
    async fn list_device_logs(&self, query: &DeviceLogQuery) -> Result<Vec<DeviceLogEntry>>;
    /// Deletes the entries older than `before`, and the oldest beyond the newest `keep`; returns
    /// how many were deleted.
    async fn prune_device_logs(&self, before: Timestamp, keep: u64) -> Result<u64>;
}
