//! Per-device rate limits kept in memory: the reference's "1 per second per device" for config
//! updates (modifyCloudToDeviceConfig) and for reported states.
//!
//! A [`PerDeviceRate`] remembers, per device, when its last accepted update was; a new one within
//! the interval is refused. Nothing touches the database, and time comes from the core's injected
//! clock, so tests move it instead of sleeping.
//!
//! Memory stays bounded by the devices active within the last interval: an entry older than the
//! interval can no longer refuse anything, so the map is swept of them whenever it has doubled
//! since the last sweep (and at least every [`SWEEP_EVERY`]). The cost is amortised O(1) per call.

use ferrocore_model::{NumId, Timestamp};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Below this many entries the map is never swept for its size (only for its age).
const MIN_SWEEP_LEN: usize = 1024;
/// Longest time between two sweeps while the map holds entries.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// At most one accepted update per device per `interval`, counted from the last accepted one.
#[derive(Debug)]
pub struct PerDeviceRate {
    interval_nanos: i64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last: HashMap<NumId, Timestamp>,
    /// Entries left by the last sweep; the next one comes when the map has doubled.
    swept_len: usize,
    swept_at: Option<Timestamp>,
}

/// What [`PerDeviceRate::acquire`] replaced, so that a refused write can give the slot back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    device: NumId,
    taken_at: Timestamp,
    previous: Option<Timestamp>,
}

impl PerDeviceRate {
    pub fn new(interval: Duration) -> Self {
        let interval_nanos = i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX);
        Self { interval_nanos, inner: Mutex::new(Inner::default()) }
    }

    /// The reference's limit: one per second.
    pub fn per_second() -> Self {
        Self::new(Duration::from_secs(1))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the device's slot at `now` if its last accepted update is at least one interval old;
    /// None when the update must be refused.
    pub fn acquire(&self, device: NumId, now: Timestamp) -> Option<Slot> {
        let mut inner = self.inner();
        let previous = inner.last.get(&device).copied();
        if previous.is_some_and(|prev| now.0.saturating_sub(prev.0) < self.interval_nanos) {
            return None;
        }
        inner.last.insert(device, now);
        self.maybe_sweep(&mut inner, now);
        Some(Slot { device, taken_at: now, previous })
    }

    /// True (and the slot taken) when the device may update at `now`.
    pub fn allow(&self, device: NumId, now: Timestamp) -> bool {
        self.acquire(device, now).is_some()
    }

    /// Gives back a slot whose update did not happen (refused by the store), unless a later
    /// update took it since.
    pub fn release(&self, slot: Slot) {
        let mut inner = self.inner();
        if inner.last.get(&slot.device) != Some(&slot.taken_at) {
            return;
        }
        match slot.previous {
            Some(prev) => inner.last.insert(slot.device, prev),
            None => inner.last.remove(&slot.device),
        };
    }

    /// Devices currently remembered.
    pub fn len(&self) -> usize {
        self.inner().last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn maybe_sweep(&self, inner: &mut Inner, now: Timestamp) {
        let grown = inner.last.len() >= MIN_SWEEP_LEN.max(inner.swept_len.saturating_mul(2));
        let every = i64::try_from(SWEEP_EVERY.as_nanos()).unwrap_or(i64::MAX);
        let stale = inner.swept_at.is_none_or(|at| now.0.saturating_sub(at.0) >= every);
        if !grown && !stale {
            return;
        }
        let interval = self.interval_nanos;
        inner.last.retain(|_, t| now.0.saturating_sub(t.0) < interval);
        inner.swept_len = inner.last.len();
        inner.swept_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn one_per_second_counted_from_the_last_accepted_one() {
        let clock = ManualClock::new(Timestamp(1_000_000_000_000));
        let rate = PerDeviceRate::per_second();
        assert!(rate.allow(NumId(1), clock.now()));
        assert!(!rate.allow(NumId(1), clock.now()), "a second one at once");
        assert!(rate.allow(NumId(2), clock.now()), "other devices have their own slot");
        clock.advance(Duration::from_millis(999));
        assert!(!rate.allow(NumId(1), clock.now()), "999 ms later");
        clock.advance(Duration::from_millis(1));
        assert!(rate.allow(NumId(1), clock.now()), "one second later");
        assert!(!rate.allow(NumId(1), clock.now()));
    }

    #[test]
    fn a_released_slot_can_be_taken_again() {
        let clock = ManualClock::new(Timestamp(5_000_000_000));
        let rate = PerDeviceRate::per_second();
        let slot = rate.acquire(NumId(1), clock.now()).unwrap();
        rate.release(slot);
        assert!(rate.is_empty());
        let first = rate.acquire(NumId(1), clock.now()).unwrap();
        clock.advance(SECOND);
        let second = rate.acquire(NumId(1), clock.now()).unwrap();
        rate.release(first);
        assert!(!rate.allow(NumId(1), clock.now()), "a stale release leaves the newer slot");
        rate.release(second);
        assert!(rate.allow(NumId(1), clock.now()), "back to the first one's time, a second ago");
    }

    #[test]
    fn memory_is_bounded_by_the_devices_of_the_last_interval() {
        let clock = ManualClock::new(Timestamp(1_000_000_000));
        let rate = PerDeviceRate::per_second();
        for round in 0..20u64 {
            for d in 0..1000u64 {
                assert!(rate.allow(NumId(round * 1000 + d), clock.now()));
            }
            clock.advance(SECOND);
        }
        assert!(rate.len() <= 2 * MIN_SWEEP_LEN, "swept as it grew: {}", rate.len());
        clock.advance(SWEEP_EVERY);
        assert!(rate.allow(NumId(u64::MAX), clock.now()));
        assert_eq!(rate.len(), 1, "an idle minute sweeps everything old");
    }

    #[test]
    fn time_going_backwards_does_not_panic() {
        let rate = PerDeviceRate::per_second();
        assert!(rate.allow(NumId(1), Timestamp(i64::MAX)));
        assert!(!rate.allow(NumId(1), Timestamp(i64::MIN)));
        assert!(rate.allow(NumId(2), Timestamp(i64::MIN)));
    }
}
