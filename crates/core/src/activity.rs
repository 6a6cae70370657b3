//! Batched device activity: the output-only timestamps that device traffic moves.
//!
//! Bridges record activity here in memory; a background task flushes it to the store in one
//! transaction per interval, so a busy fleet never costs a database write per message. Reads overlay
//! what is pending, so the API never shows a value older than what the server has seen.

use ferrocore_model::{Device, DeviceActivity, NumId};
use ferrocore_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct ActivityBuffer {
    store: Arc<dyn Store>,
    pending: Mutex<HashMap<NumId, DeviceActivity>>,
    /// The batch being written: still overlaid on reads until the store has it, so a read never
    /// shows an older value than one already shown.
    in_flight: Mutex<HashMap<NumId, DeviceActivity>>,
    /// One flush at a time.
    flushing: tokio::sync::Mutex<()>,
}

impl ActivityBuffer {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            pending: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<NumId, DeviceActivity>> {
        // A panic while holding this lock cannot leave the map half-updated (merge is infallible).
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes activity for a device; it reaches the store at the next flush.
    pub fn record(&self, device: NumId, activity: &DeviceActivity) {
        self.pending().entry(device).or_default().merge(activity);
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<NumId, DeviceActivity>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds not-yet-stored activity into a device read from the store.
    pub fn overlay(&self, device: &mut Device) {
        if let Some(a) = self.in_flight().get(&device.num_id) {
            device.activity.merge(a);
        }
        if let Some(a) = self.pending().get(&device.num_id) {
            device.activity.merge(a);
        }
    }

    /// Writes everything pending in one transaction. On failure the batch is put back, merged with
    /// whatever arrived meanwhile, so nothing is lost.
    pub async fn flush(&self) {
        let _one_at_a_time = self.flushing.lock().await;
        let batch: Vec<(NumId, DeviceActivity)> = {
            let taken = std::mem::take(&mut *self.pending());
            let mut in_flight = self.in_flight();
            in_flight.clone_from(&taken);
            taken.into_iter().collect()
        };
        if batch.is_empty() {
            return;
        }
        let result = self.store.record_activity(&batch).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, devices = batch.len(), "device activity flush failed; will retry");
            let mut pending = self.pending();
            for (n, mut a) in batch {
                if let Some(newer) = pending.get(&n) {
                    a.merge(newer);
                }
                pending.insert(n, a);
            }
        }
        // Only now do reads stop overlaying the batch: the store (or `pending`) has it.
        self.in_flight().clear();
    }

    /// Flushes every `interval` until the returned task is aborted.
    pub fn spawn_flusher(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.flush().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
