//! [`Metered`]: any backend, with every operation's latency and failures recorded into
//! `ferrocore_metrics` (`ferrocore_store_operation_duration_seconds{operation}`), labelled with
//! the trait method's name. The backend itself knows nothing of metrics.

use crate::device_logs::{DeviceLogEntry, DeviceLogQuery};
use crate::iam::{ApiTokenRecord, IamStore, ServiceAccountKeyRecord, ServiceAccountRecord};
use crate::pubsub::{Page, PubsubStore};
use crate::sinks::{SinkCursor, SinkStore};
use crate::{
    BindOutcome, ConfigUpdate, DeviceLogin, DeviceQuery, DeviceUpdate, NewDevice, RegistryDelete, Result, Store,
};
use async_trait::async_trait;
use ferrocore_metrics::Metrics;
use ferrocore_model::pubsub::{IamPolicy, Subscription, SubscriptionCursor, SubscriptionName, Topic, TopicName};
use ferrocore_model::{
    Device, DeviceActivity, DeviceConfig, DeviceName, DeviceState, LocationName, NumId, Registry, RegistryId,
    RegistryName, Timestamp,
};
use std::sync::Arc;
use std::time::Instant;

/// A store that times each call of its backend.
pub struct Metered<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    /// The backend, for what is not in the traits (closing it).
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

macro_rules! metered {
    ($trait:ident { $(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* }) => {
        #[async_trait]
        impl<S: $trait> $trait for Metered<S> {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    let started = Instant::now();
                    let result = self.inner.$name($($arg),*).await;
                    self.metrics.store.record(stringify!($name), started.elapsed(), result.is_err());
                    result
                }
            )*
        }
    };
}

metered!(Store {
    fn create_registry(&self, registry: &Registry) -> Result<()>;
    fn get_registry(&self, name: &RegistryName) -> Result<Option<Registry>>;
    fn list_registries(&self, parent: &LocationName, after: Option<&RegistryId>, limit: u32) -> Result<Vec<Registry>>;
    fn update_registry(&self, registry: &Registry) -> Result<()>;
    fn delete_registry(&self, name: &RegistryName) -> Result<RegistryDelete>;
    fn create_device(&self, device: NewDevice) -> Result<Device>;
    fn get_device(&self, name: &DeviceName) -> Result<Option<Device>>;
    fn get_device_login(&self, name: &DeviceName) -> Result<Option<DeviceLogin>>;
    fn list_devices(&self, query: &DeviceQuery) -> Result<Vec<Device>>;
    fn update_device(&self, num_id: NumId, update: &DeviceUpdate) -> Result<()>;
    fn delete_device(&self, num_id: NumId) -> Result<()>;
    fn modify_config(&self, num_id: NumId, expected: Option<i64>, data: &[u8], now: Timestamp) -> Result<ConfigUpdate>;
    fn list_config_versions(&self, num_id: NumId, limit: usize) -> Result<Vec<DeviceConfig>>;
    fn ack_config(&self, num_id: NumId, version: i64, at: Timestamp) -> Result<()>;
    fn record_states(&self, states: &[(NumId, DeviceState)]) -> Result<()>;
    fn list_states(&self, num_id: NumId, limit: usize) -> Result<Vec<DeviceState>>;
    fn record_activity(&self, batch: &[(NumId, DeviceActivity)]) -> Result<()>;
    fn bind(&self, gateway: NumId, device: NumId) -> Result<BindOutcome>;
    fn unbind(&self, gateway: NumId, device: NumId) -> Result<bool>;
    fn append_device_logs(&self, entries: &[DeviceLogEntry], now: Timestamp) -> Result<Vec<u64>>;
    fn list_device_logs(&self, query: &DeviceLogQuery) -> Result<Vec<DeviceLogEntry>>;
    fn prune_device_logs(&self, before: Timestamp, keep: u64) -> Result<u64>;
});

metered!(PubsubStore {
    fn create_topic(&self, topic: &Topic) -> Result<()>;
    fn get_topic(&self, name: &TopicName) -> Result<Option<Topic>>;
    fn list_topics(&self, page: Page<'_, TopicName>) -> Result<Vec<Topic>>;
    fn update_topic(&self, topic: &Topic) -> Result<()>;
    fn delete_topic(&self, name: &TopicName) -> Result<bool>;
    fn create_subscription(&self, sub: &Subscription, cursor: &SubscriptionCursor) -> Result<()>;
    fn get_subscription(&self, name: &SubscriptionName) -> Result<Option<(Subscription, SubscriptionCursor)>>;
    fn list_subscriptions(&self, page: Page<'_, SubscriptionName>) -> Result<Vec<Subscription>>;
    fn list_topic_subscriptions(&self, topic: &TopicName, after: Option<&SubscriptionName>, limit: u32) -> Result<Vec<SubscriptionName>>;
    fn update_subscription(&self, sub: &Subscription) -> Result<()>;
    fn delete_subscription(&self, name: &SubscriptionName) -> Result<bool>;
    fn save_cursors(&self, cursors: &[(SubscriptionName, SubscriptionCursor)]) -> Result<()>;
    fn get_iam_policy(&self, resource: &str) -> Result<Option<IamPolicy>>;
    fn set_iam_policy(&self, resource: &str, policy: &IamPolicy) -> Result<()>;
    fn delete_iam_policy(&self, resource: &str) -> Result<()>;
});

metered!(SinkStore {
    fn open_sink(&self, sink: &str, now: Timestamp) -> Result<(Timestamp, Vec<SinkCursor>)>;
    fn save_sink_cursors(&self, cursors: &[SinkCursor]) -> Result<()>;
});

metered!(IamStore {
    fn create_api_token(&self, token: &ApiTokenRecord) -> Result<()>;
    fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>>;
    fn delete_api_token(&self, id: &str) -> Result<bool>;
    fn create_service_account(&self, account: &ServiceAccountRecord) -> Result<()>;
    fn list_service_accounts(&self) -> Result<Vec<ServiceAccountRecord>>;
    fn delete_service_account(&self, email: &str) -> Result<bool>;
    fn add_service_account_key(&self, key: &ServiceAccountKeyRecord) -> Result<()>;
    fn list_service_account_keys(&self) -> Result<Vec<ServiceAccountKeyRecord>>;
    fn delete_service_account_key(&self, email: &str, key_id: &str) -> Result<bool>;
    fn server_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>>;
});
