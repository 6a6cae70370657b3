//! Ferrocore's use cases, shared by every adapter (REST and gRPC admin APIs, device bridges).
//!
//! Adapters parse their wire input into the typed requests here, call [`Core`], and render its
//! [`Error`] in their protocol. The core validates everything a client sends, talks to the
//! [`Store`](ferrocore_store::Store), and keeps the in-memory state that must not hit the database per
//! message: batched device [`activity`] and device [`presence`].
//!
//! * [`registries`] and [`devices`]: the Device Manager use cases.
//! * [`bridge`]: what devices do: authenticate, publish telemetry and state, take configs.
//! * [`gateways`]: which devices a gateway may attach or speak for, under its auth method.
//! * [`sink`]: the contract of telemetry destinations.
//! * [`topics`]: the read side of telemetry topics.
//! * [`paging`]: opaque keyset page tokens.
//! * [`device_log`]: device activity logs at each device's `logLevel`, batched into the store.
//! * [`rate`]: the per-device rate limits (config updates, states), in memory.
//! * [`clock`]: the injected clock.
//! * [`peers`]: the other nodes of a cluster, when there are some.

pub mod activity;
pub mod bridge;
pub mod clock;
pub mod device_log;
pub mod devices;
pub mod error;
pub mod gateways;
pub mod mailbox;
pub mod paging;
pub mod peers;
pub mod presence;
pub mod rate;
pub mod registries;
#[cfg(test)]
mod rules_tests;
pub mod sink;
mod states;
#[cfg(test)]
mod testing;
pub mod topics;

pub use error::{Code, Error, Result};

use activity::ActivityBuffer;
use clock::Clock;
use ferrocore_model::{Registry, RegistryName};
use ferrocore_store::Store;
use presence::Presence;
use sink::Sink;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// The use cases, cheap to clone and share between adapters.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    activity: Arc<ActivityBuffer>,
    device_log: Arc<device_log::DeviceLog>,
    presence: Presence,
    sink: Arc<dyn Sink>,
    /// Registries by name, for per-message routing; registry writes invalidate entries.
    registries: RwLock<RegistryCache>,
    states: states::StateWriter,
    /// Reported states: one per second per device.
    state_rate: rate::PerDeviceRate,
    /// modifyCloudToDeviceConfig: one per second per device.
    config_rate: rate::PerDeviceRate,
    settings: Settings,
    metrics: Arc<ferrocore_metrics::Metrics>,
    /// The other nodes, once the server joined a cluster.
    peers: OnceLock<Arc<dyn peers::Peers>>,
}

/// The registry cache. Every invalidation bumps `generation`; a registry read from the store is
/// cached only if no invalidation happened while it was being read, so a read racing an update
/// cannot put the old registry back.
#[derive(Default)]
struct RegistryCache {
    generation: u64,
    /// Keyed by a shared name, which authenticated devices hold instead of copies of their own.
    entries: HashMap<Arc<RegistryName>, Arc<Registry>>,
}

/// Tunables of the use cases.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long sendCommandToDevice waits for a QoS 1 acknowledgement before DEADLINE_EXCEEDED
    /// (IoT Core's backend deadline was 60 s).
    pub command_ack_timeout: std::time::Duration,
    /// Refuse, at connect, a device whose X.509 certificate credential is outside its notBefore /
    /// notAfter (`--enforce-certificate-validity`). Off by default: IoT Core enforced only the
    /// credential's `expirationTime`, and fleets run on self-signed certificates long expired.
    pub enforce_certificate_validity: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self { command_ack_timeout: std::time::Duration::from_secs(60), enforce_certificate_validity: false }
    }
}

impl Core {
    /// Builds the core; must run inside a tokio runtime (it starts the state writer).
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, sink: Arc<dyn Sink>) -> Self {
        Self::with_settings(store, clock, sink, Settings::default())
    }

    /// As [`Core::new`], with non-default settings.
    pub fn with_settings(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn Sink>,
        settings: Settings,
    ) -> Self {
        Self::with_metrics(store, clock, sink, settings, Arc::default())
    }

    /// As [`Core::with_settings`], recording into `metrics` (the server's, which it exports).
    pub fn with_metrics(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn Sink>,
        settings: Settings,
        metrics: Arc<ferrocore_metrics::Metrics>,
    ) -> Self {
        let activity = Arc::new(ActivityBuffer::new(store.clone()).with_metrics(metrics.clone()));
        let device_log = Arc::new(device_log::DeviceLog::new(store.clone(), device_log::BUFFER_CAPACITY));
        let states = states::StateWriter::spawn(store.clone());
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                activity,
                device_log,
                presence: Presence::default(),
                sink,
                registries: RwLock::new(RegistryCache::default()),
                states,
                state_rate: rate::PerDeviceRate::per_second(),
                config_rate: rate::PerDeviceRate::per_second(),
                settings,
                metrics,
                peers: OnceLock::new(),
            }),
        }
    }

    /// Makes this core a node of a cluster: presence changes, configs, commands and registry
    /// changes reach the other nodes through `peers` from now on. Set once, at start.
    pub fn join_peers(&self, peers: Arc<dyn peers::Peers>) {
        let _ = self.inner.peers.set(peers);
    }

    pub(crate) fn peers(&self) -> Option<&Arc<dyn peers::Peers>> {
        self.inner.peers.get()
    }

    /// A device connected to this node (the MQTT bridge calls this once presence holds it): in a
    /// cluster, other nodes end their session of it, as one connection per device is the rule.
    pub fn connected_here(&self, device: ferrocore_model::NumId) {
        if let Some(p) = self.peers()
            && let Some(since) = self.inner.presence.since(device)
        {
            p.connected(device, since);
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn activity(&self) -> &Arc<ActivityBuffer> {
        &self.inner.activity
    }

    pub fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    /// Where the adapters record what they do (see `ferrocore_metrics`).
    pub fn metrics(&self) -> &Arc<ferrocore_metrics::Metrics> {
        &self.inner.metrics
    }

    fn now(&self) -> ferrocore_model::Timestamp {
        self.inner.clock.now()
    }
}
