//! Batched device activity: the output-only timestamps that device traffic moves, config
//! acknowledgements, and the last gateway that spoke for a device.
//!
//! Bridges record activity here in memory; a background task flushes it to the store in one
//! transaction per interval, so a busy fleet never costs a database write per message. Reads overlay
//! what is pending, so the API never shows a value older than what the server has seen.
//!
//! A flush is cancel-safe: the batch stays in `in_flight` until the store has it, so a flush that
//! fails or is dropped half-way leaves it for the next one.

use ferrocore_model::{ConfigAck, Device, DeviceActivity, DeviceConfig, NumId};
use ferrocore_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

type Batch = HashMap<NumId, DeviceActivity>;

pub struct ActivityBuffer {
    store: Arc<dyn Store>,
    pending: Mutex<Batch>,
    /// What the current (or an interrupted) flush is writing: still overlaid on reads, and written
    /// again by the next flush, until the store has confirmed it.
    in_flight: Mutex<Batch>,
    /// One flush at a time; `in_flight` only changes under it.
    flushing: tokio::sync::Mutex<()>,
    metrics: Arc<ferrocore_metrics::Metrics>,
}

/// The background flusher; [`Flusher::stop`] ends it between two flushes, never during one.
pub struct Flusher {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Flusher {
    /// Stops the periodic flushes and waits for the one under way, if any, to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn lock(m: &Mutex<Batch>) -> MutexGuard<'_, Batch> {
    // A panic while holding these locks cannot leave a map half-updated (merge is infallible).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ActivityBuffer {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            pending: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            flushing: tokio::sync::Mutex::new(()),
            metrics: Arc::default(),
        }
    }

    /// Records flush sizes and failures into `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<ferrocore_metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    #[cfg(test)]
    fn pending(&self) -> MutexGuard<'_, Batch> {
        lock(&self.pending)
    }

    /// Notes activity for a device; it reaches the store at the next flush.
    pub fn record(&self, device: NumId, activity: &DeviceActivity) {
        lock(&self.pending).entry(device).or_default().merge(activity);
    }

    /// The not-yet-stored activity of a device. Both maps are locked in the order `flush` takes
    /// them, so a batch moving from one to the other is never missed.
    fn unstored(&self, device: NumId) -> Option<DeviceActivity> {
        let in_flight = lock(&self.in_flight);
        let pending = lock(&self.pending);
        match (in_flight.get(&device), pending.get(&device)) {
            (None, None) => None,
            (a, b) => {
                let mut merged = a.cloned().unwrap_or_default();
                if let Some(b) = b {
                    merged.merge(b);
                }
                Some(merged)
            }
        }
    }

    /// Folds not-yet-stored activity into a device read from the store.
    pub fn overlay(&self, device: &mut Device) {
        if let Some(a) = self.unstored(device.num_id) {
            device.activity.merge(&a);
            mark_acks(std::slice::from_mut(&mut device.config), &a.config_acks);
            device.activity.config_acks.clear();
            if let Some(access) = device.activity.gateway_access.take() {
                device.gateway_config.note_access(&access);
            }
        }
    }

    /// Folds not-yet-stored acknowledgements into a device's config versions read from the store.
    pub fn overlay_configs(&self, device: NumId, configs: &mut [DeviceConfig]) {
        if let Some(a) = self.unstored(device) {
            mark_acks(configs, &a.config_acks);
        }
    }

    /// Writes everything pending in one transaction. If the write fails, or this future is dropped
    /// before it completes, the batch stays in flight and the next flush writes it again, merged
    /// with whatever arrived meanwhile, so nothing is lost.
    pub async fn flush(&self) {
        let _one_at_a_time = self.flushing.lock().await;
        let batch: Vec<(NumId, DeviceActivity)> = {
            let mut in_flight = lock(&self.in_flight);
            let taken = std::mem::take(&mut *lock(&self.pending));
            for (n, a) in taken {
                in_flight.entry(n).or_default().merge(&a);
            }
            in_flight.iter().map(|(n, a)| (*n, a.clone())).collect()
        };
        if batch.is_empty() {
            return;
        }
        self.metrics.activity.flush_devices.observe(batch.len() as u64);
        match self.store.record_activity(&batch).await {
            // Only now do reads stop overlaying the batch: the store has it. The map is replaced,
            // not cleared: a connect storm's batch would otherwise keep its capacity for good.
            Ok(()) => {
                // Freed once the lock is released.
                let _stored = std::mem::take(&mut *lock(&self.in_flight));
            }
            Err(e) => {
                self.metrics.activity.flush_failures.inc();
                tracing::warn!(error = %e, devices = batch.len(), "device activity flush failed; will retry")
            }
        }
    }

    /// Flushes every `interval` until [`Flusher::stop`].
    pub fn spawn_flusher(self: &Arc<Self>, interval: Duration) -> Flusher {
        let this = self.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    // The flush runs outside the select, so stopping never cuts one short.
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                this.flush().await;
            }
        });
        Flusher { stop, task }
    }
}

fn mark_acks(configs: &mut [DeviceConfig], acks: &[ConfigAck]) {
    for c in configs {
        if let Some(ack) = acks.iter().find(|a| a.version == c.version) {
            c.device_ack_time = c.device_ack_time.max(Some(ack.time));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;
    use ferrocore_model::{DeviceName, Timestamp};
    use ferrocore_store::sqlite::SqliteStore;

    #[tokio::test]
    async fn reads_see_pending_activity_and_one_flush_persists_it() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let core = crate::Core::new(
            store.clone(),
            Arc::new(crate::clock::SystemClock),
            Arc::new(crate::sink::MemorySink::default()),
        );
        let parent = ferrocore_model::LocationName::parse_field("p", "projects/p/locations/l").unwrap();
        let reg = core
            .create_registry(&parent, crate::registries::RegistryInput { id: "reg".into(), ..Default::default() })
            .await
            .unwrap();
        let dev = core
            .create_device(&reg.name, crate::devices::DeviceInput { id: "dev".into(), ..Default::default() })
            .await
            .unwrap();
        let name = DeviceName::parse_field("n", &format!("{}/devices/dev", reg.name)).unwrap();
        let t = Timestamp::from_unix_seconds(1_800_000_000);
        for i in 0..1000 {
            let a = DeviceActivity { last_event_time: Some(Timestamp(t.0 + i)), ..Default::default() };
            core.activity().record(dev.num_id, &a);
        }
        let seen = core.get_device(&name).await.unwrap();
        assert_eq!(seen.activity.last_event_time, Some(Timestamp(t.0 + 999)), "reads overlay pending activity");
        let stored = store.get_device(&name).await.unwrap().unwrap();
        assert_eq!(stored.activity.last_event_time, None, "nothing written per message");

        core.activity().flush().await;
        let stored = store.get_device(&name).await.unwrap().unwrap();
        assert_eq!(stored.activity.last_event_time, Some(Timestamp(t.0 + 999)), "one flush writes the latest");
        assert!(core.activity().pending().is_empty());
    }

    /// A connect storm records activity for thousands of devices at once; once flushed, neither
    /// map keeps the room it took (an idle fleet would otherwise pay for the storm for good).
    #[tokio::test]
    async fn a_flushed_storm_leaves_no_capacity_behind() {
        let f = Fixture::new(Default::default()).await;
        let beat = DeviceActivity {
            last_heartbeat_time: Some(Timestamp::from_unix_seconds(1_800_000_000)),
            ..Default::default()
        };
        for n in 0..5_000 {
            f.core.activity().record(NumId(1_000_000 + n), &beat);
        }
        f.core.activity().record(f.device.num_id, &beat);
        assert!(f.core.activity().pending().capacity() >= 5_001);
        f.core.activity().flush().await;
        let stored = f.sqlite.get_device(&f.name()).await.unwrap().unwrap();
        assert!(stored.activity.last_heartbeat_time.is_some(), "the batch reached the store");
        assert_eq!(f.core.activity().pending().capacity(), 0);
        assert_eq!(lock(&f.core.activity().in_flight).capacity(), 0);
    }

    /// Finding 9 of issue 10: shutdown aborted the flusher mid-write, and the batch it had moved
    /// out of `pending` was gone: the next flush overwrote `in_flight` with an empty batch.
    #[tokio::test]
    async fn a_flush_cut_short_loses_nothing() {
        let f = Fixture::new(Default::default()).await;
        let t = Timestamp::from_unix_seconds(1_800_000_000);
        let beat = DeviceActivity { last_heartbeat_time: Some(t), ..Default::default() };
        f.core.activity().record(f.device.num_id, &beat);

        f.store.record_activity.arm();
        let activity = f.core.activity().clone();
        let cut = tokio::spawn(async move { activity.flush().await });
        f.store.record_activity.held().await;
        cut.abort();
        assert!(cut.await.unwrap_err().is_cancelled());
        f.store.record_activity.open();

        let seen = f.core.get_device(&f.name()).await.unwrap();
        assert_eq!(seen.activity.last_heartbeat_time, Some(t), "still overlaid after the cut");
        let later = DeviceActivity { last_event_time: Some(t), ..Default::default() };
        f.core.activity().record(f.device.num_id, &later);
        f.core.activity().flush().await;
        let stored = f.sqlite.get_device(&f.name()).await.unwrap().unwrap();
        assert_eq!(stored.activity.last_heartbeat_time, Some(t), "the interrupted batch reached the store");
        assert_eq!(stored.activity.last_event_time, Some(t), "and so did what came after");
    }

    /// Stopping the flusher while it writes lets the write finish.
    #[tokio::test]
    async fn stopping_the_flusher_waits_for_the_flush_under_way() {
        let f = Fixture::new(Default::default()).await;
        let t = Timestamp::from_unix_seconds(1_800_000_000);
        f.core.activity().record(f.device.num_id, &DeviceActivity { last_state_time: Some(t), ..Default::default() });
        f.store.record_activity.arm();
        let flusher = f.core.activity().spawn_flusher(Duration::from_millis(10));
        f.store.record_activity.held().await;
        let stopping = tokio::spawn(flusher.stop());
        tokio::task::yield_now().await;
        assert!(!stopping.is_finished(), "stop waits for the write");
        f.store.record_activity.open();
        tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("stopped").unwrap();
        let stored = f.sqlite.get_device(&f.name()).await.unwrap().unwrap();
        assert_eq!(stored.activity.last_state_time, Some(t));
    }
}
