//! Test doubles for the core's unit tests: a store that can hold a call at a chosen point, so
//! races that real timing makes rare can be replayed step by step.

use async_trait::async_trait;
use ferrocore_model::{
    Device, DeviceActivity, DeviceConfig, DeviceName, DeviceState, LocationName, NumId, Registry, RegistryId,
    RegistryName, Timestamp,
};
use ferrocore_store::{BindOutcome, ConfigUpdate, DeviceQuery, DeviceUpdate, NewDevice, RegistryDelete, Result, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Notify, Semaphore};

/// Holds the next call that passes it, once armed, until opened.
pub(crate) struct Gate {
    armed: AtomicBool,
    entered: Notify,
    release: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self { armed: AtomicBool::new(false), entered: Notify::new(), release: Semaphore::new(0) }
    }
}

impl Gate {
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until a call is held at the gate.
    pub(crate) async fn held(&self) {
        self.entered.notified().await;
    }

    pub(crate) fn open(&self) {
        self.release.add_permits(1);
    }

    async fn pass(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.acquire().await.expect("never closed").forget();
        }
    }
}

/// A store that delegates to another, with gates on the calls the tests race.
pub(crate) struct GatedStore {
    inner: Arc<dyn Store>,
    /// Held after the registry was read, before it is returned.
    pub(crate) get_registry: Gate,
    /// Held before the batch is written.
    pub(crate) record_activity: Gate,
}

impl GatedStore {
    pub(crate) fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner, get_registry: Gate::default(), record_activity: Gate::default() }
    }
}

#[async_trait]
impl Store for GatedStore {
    async fn create_registry(&self, registry: &Registry) -> Result<()> {
        self.inner.create_registry(registry).await
    }
    async fn get_registry(&self, name: &RegistryName) -> Result<Option<Registry>> {
        let read = self.inner.get_registry(name).await;
        self.get_registry.pass().await;
        read
    }
    async fn list_registries(
        &self,
        parent: &LocationName,
        after: Option<&RegistryId>,
        limit: u32,
    ) -> Result<Vec<Registry>> {
        self.inner.list_registries(parent, after, limit).await
    }
    async fn update_registry(&self, registry: &Registry) -> Result<()> {
        self.inner.update_registry(registry).await
    }
    async fn delete_registry(&self, name: &RegistryName) -> Result<RegistryDelete> {
        self.inner.delete_registry(name).await
    }
    async fn create_device(&self, device: NewDevice) -> Result<Device> {
        self.inner.create_device(device).await
    }
    async fn get_device(&self, name: &DeviceName) -> Result<Option<Device>> {
        self.inner.get_device(name).await
    }
    async fn get_device_login(&self, name: &DeviceName) -> Result<Option<ferrocore_store::DeviceLogin>> {
        self.inner.get_device_login(name).await
    }
    async fn list_devices(&self, query: &DeviceQuery) -> Result<Vec<Device>> {
        self.inner.list_devices(query).await
    }
    async fn update_device(&self, num_id: NumId, update: &DeviceUpdate) -> Result<()> {
        self.inner.update_device(num_id, update).await
    }
    async fn delete_device(&self, num_id: NumId) -> Result<()> {
        self.inner.delete_device(num_id).await
    }
    async fn modify_config(
        &self,
        num_id: NumId,
        expected: Option<i64>,
        data: &[u8],
        now: Timestamp,
    ) -> Result<ConfigUpdate> {
        self.inner.modify_config(num_id, expected, data, now).await
    }
    async fn list_config_versions(&self, num_id: NumId, limit: usize) -> Result<Vec<DeviceConfig>> {
        self.inner.list_config_versions(num_id, limit).await
    }
    async fn ack_config(&self, num_id: NumId, version: i64, at: Timestamp) -> Result<()> {
        self.inner.ack_config(num_id, version, at).await
    }
    async fn record_states(&self, states: &[(NumId, DeviceState)]) -> Result<()> {
        self.inner.record_states(states).await
    }
    async fn list_states(&self, num_id: NumId, limit: usize) -> Result<Vec<DeviceState>> {
        self.inner.list_states(num_id, limit).await
    }
    async fn record_activity(&self, batch: &[(NumId, DeviceActivity)]) -> Result<()> {
        self.record_activity.pass().await;
        self.inner.record_activity(batch).await
    }
    async fn bind(&self, gateway: NumId, device: NumId) -> Result<BindOutcome> {
        self.inner.bind(gateway, device).await
    }
    async fn unbind(&self, gateway: NumId, device: NumId) -> Result<bool> {
        self.inner.unbind(gateway, device).await
    }
    async fn append_device_logs(
        &self,
        entries: &[ferrocore_store::DeviceLogEntry],
        now: Timestamp,
    ) -> Result<Vec<u64>> {
        self.inner.append_device_logs(entries, now).await
    }
    async fn list_device_logs(
        &self,
        query: &ferrocore_store::DeviceLogQuery,
    ) -> Result<Vec<ferrocore_store::DeviceLogEntry>> {
        self.inner.list_device_logs(query).await
    }
    async fn prune_device_logs(&self, before: Timestamp, keep: u64) -> Result<u64> {
        self.inner.prune_device_logs(before, keep).await
    }
}

/// A core over a fresh SQLite store (behind a [`GatedStore`]) with one registry `reg` and one
/// device `dev`.
pub(crate) struct Fixture {
    pub(crate) core: crate::Core,
    pub(crate) store: Arc<GatedStore>,
    pub(crate) sqlite: Arc<dyn Store>,
    pub(crate) device: Device,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) async fn new(settings: crate::Settings) -> Self {
        Self::with_clock(settings, Arc::new(crate::clock::SystemClock)).await
    }

    /// As [`Fixture::new`], on `clock` (a [`crate::clock::ManualClock`] for tests that move time).
    pub(crate) async fn with_clock(settings: crate::Settings, clock: Arc<dyn crate::clock::Clock>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sqlite: Arc<dyn Store> =
            Arc::new(ferrocore_store::sqlite::SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let store = Arc::new(GatedStore::new(sqlite.clone()));
        let core =
            crate::Core::with_settings(store.clone(), clock, Arc::new(crate::sink::MemorySink::default()), settings);
        let parent = LocationName::parse_field("p", "projects/p/locations/l").unwrap();
        let reg = core
            .create_registry(&parent, crate::registries::RegistryInput { id: "reg".into(), ..Default::default() })
            .await
            .unwrap();
        let device = core
            .create_device(&reg.name, crate::devices::DeviceInput { id: "dev".into(), ..Default::default() })
            .await
            .unwrap();
        Self { core, store, sqlite, device, _dir: dir }
    }

    pub(crate) fn name(&self) -> DeviceName {
        self.device.name()
    }

    /// The device as a bridge holds it once connected (the token is not checked here).
    pub(crate) fn authenticated(&self) -> crate::bridge::AuthenticatedDevice {
        let token = ferrocore_auth::jwt::VerifiedJwt {
            algorithm: ferrocore_auth::KeyAlgorithm::EcP256,
            issued_at: 0,
            expires_at: i64::MAX / 2,
        };
        crate::bridge::AuthenticatedDevice {
            registry: std::sync::Arc::new(self.device.registry.clone()),
            id: self.device.id.clone(),
            num_id: self.device.num_id,
            token,
            is_gateway: false,
        }
    }
}
