//! One subscription's delivery state: which fetched messages are ready, leased to a stream until
//! a deadline, or waiting out a retry back-off; which offsets are acknowledged; and per-stream
//! flow control. Pure and synchronous: the tasks in `sub` drive it under a mutex, and the tests
//! below drive it with made-up instants.
//!
//! Only messages not yet acknowledged are held, at most [`MAX_HELD_MESSAGES`] and
//! [`MAX_HELD_BYTES`]; the topic log holds the rest, and the fetcher reads more as acks make room.

use crate::ackid::AckId;
use crate::ackset::AckSet;
use crate::filter::Filter;
use ferrocore_core::topics::{ReadBatch, StoredMessage};
use ferrocore_model::pubsub::{Subscription, SubscriptionCursor};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Bounds on what one subscription holds in memory.
pub(crate) const MAX_HELD_MESSAGES: usize = 20_000;
pub(crate) const MAX_HELD_BYTES: usize = 64 << 20;
/// Payload and attributes one `take` hands out at most (when the first message is smaller).
const MAX_RESPONSE_BYTES: i64 = 3 << 20;
/// How far `take` looks past messages it may not deliver yet (keys held by another stream).
const MAX_SCAN: usize = 10_000;

/// The attribute that carries a published message's ordering key in the log. Pub/Sub reserves
/// attribute keys starting with `goog`, so no client can publish one.
pub const ORDERING_KEY_ATTRIBUTE: &str = "goog-ordering-key";

/// Streams are numbered per subscription; unary Pull shares number 0 and has no flow control.
pub(crate) type StreamId = u64;
pub(crate) const PULL: StreamId = 0;

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub ack_id: String,
    pub message: Arc<StoredMessage>,
    /// Set when the subscription has a dead-letter policy, as Pub/Sub does.
    pub delivery_attempt: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Ready,
    Leased {
        deadline: Instant,
        generation: u32,
        stream: StreamId,
    },
    /// Back-off after a nack or an expired lease (retry policy).
    Waiting {
        until: Instant,
    },
    /// Being moved to the dead-letter topic.
    DeadLettering,
}

#[derive(Debug)]
struct Entry {
    message: Arc<StoredMessage>,
    size: usize,
    /// The ordering key deliveries of this message respect, when the subscription orders.
    key: Option<Arc<str>>,
    attempts: u32,
    hold: Hold,
}

/// A stream's flow-control window and what it holds.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    max_messages: i64,
    max_bytes: i64,
    messages: i64,
    bytes: i64,
}

#[derive(Debug)]
struct KeyHolder {
    stream: StreamId,
    leased: u32,
}

#[derive(Debug)]
pub(crate) struct State {
    pub settings: Arc<Subscription>,
    filter: Option<Filter>,
    acks: AckSet,
    /// The next offset the fetcher reads.
    pub read_next: u64,
    /// Bumped by seek: a fetch that started before is discarded.
    pub epoch_of_reads: u64,
    entries: BTreeMap<u64, Entry>,
    ready: BTreeSet<u64>,
    timers: BTreeSet<(Instant, u64)>,
    windows: HashMap<StreamId, Window>,
    keys: HashMap<Arc<str>, KeyHolder>,
    held_bytes: usize,
    next_generation: u32,
    /// The cursor changed since it was last saved.
    pub dirty: bool,
    pub deleted: bool,
    /// Another node serves the subscription now (a cluster's owner moved): this copy stops, and
    /// its streams end with UNAVAILABLE so their clients reconnect through the owner.
    pub moved: bool,
}

/// What an operation changed that the tasks around the state must hear about.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wake {
    /// Messages became deliverable (or windows opened).
    pub consumers: bool,
    /// The earliest timer moved earlier.
    pub timers: bool,
    /// Room to hold more messages appeared.
    pub fetcher: bool,
}

impl Wake {
    pub fn or(self, o: Wake) -> Wake {
        Wake {
            consumers: self.consumers || o.consumers,
            timers: self.timers || o.timers,
            fetcher: self.fetcher || o.fetcher,
        }
    }
}

/// What `take` returns.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    pub deliveries: Vec<Delivery>,
    /// Messages past their dead-letter policy's attempts: publish them to the dead-letter topic,
    /// then acknowledge them (or `requeue` them if that fails).
    pub dead_letters: Vec<(u64, Arc<StoredMessage>)>,
    pub wake: Wake,
}

fn message_size(m: &StoredMessage) -> usize {
    m.data.len() + m.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + 64
}

/// The key an ordering subscription keeps in order: the published ordering key, or for device
/// telemetry without one, the device (so each device's messages arrive in publish order).
fn ordering_key(m: &StoredMessage) -> Option<Arc<str>> {
    let find = |k: &str| m.attributes.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    if let Some(k) = find(ORDERING_KEY_ATTRIBUTE).filter(|k| !k.is_empty()) {
        return Some(Arc::from(k));
    }
    find("deviceNumId").map(|id| Arc::from(format!("device:{id}")))
}

impl State {
    pub fn new(settings: Arc<Subscription>, cursor: &SubscriptionCursor) -> State {
        let filter = compile_filter(&settings);
        let acks = AckSet::from_cursor(cursor);
        State {
            read_next: acks.floor(),
            acks,
            settings,
            filter,
            epoch_of_reads: 0,
            entries: BTreeMap::new(),
            ready: BTreeSet::new(),
            timers: BTreeSet::new(),
            windows: HashMap::new(),
            keys: HashMap::new(),
            held_bytes: 0,
            next_generation: 1,
            dirty: false,
            deleted: false,
            moved: false,
        }
    }

    pub fn cursor(&self) -> SubscriptionCursor {
        self.acks.to_cursor()
    }

    /// New settings (UpdateSubscription). A changed filter applies to messages fetched from now on.
    pub fn set_settings(&mut self, settings: Arc<Subscription>) {
        self.filter = compile_filter(&settings);
        self.settings = settings;
    }

    /// Whether the fetcher may read more now.
    pub fn has_room(&self) -> bool {
        !self.deleted
            && !self.settings.detached
            && self.entries.len() < MAX_HELD_MESSAGES
            && self.held_bytes < MAX_HELD_BYTES
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.entries.len()
    }

    /// Takes in what the fetcher read from `read_next`. Messages the filter refuses are
    /// acknowledged at once, as Pub/Sub does.
    pub fn add_fetched(&mut self, batch: ReadBatch, epoch_of_reads: u64) -> Wake {
        if epoch_of_reads != self.epoch_of_reads {
            return Wake::default();
        }
        if batch.earliest_offset > self.acks.floor() {
            // Retention removed what was below: nothing there can be delivered any more.
            self.acks.raise_floor(batch.earliest_offset);
            self.dirty = true;
        }
        let ordered = self.settings.enable_message_ordering;
        let mut added = false;
        for m in batch.messages {
            let offset = m.offset;
            if self.acks.contains(offset) || self.entries.contains_key(&offset) {
                continue;
            }
            if let Some(f) = &self.filter
                && !f.matches_pairs(&m.attributes)
            {
                self.acks.insert(offset);
                self.dirty = true;
                continue;
            }
            let size = message_size(&m);
            let key = if ordered { ordering_key(&m) } else { None };
            self.held_bytes += size;
            self.entries.insert(offset, Entry { message: Arc::new(m), size, key, attempts: 0, hold: Hold::Ready });
            self.ready.insert(offset);
            added = true;
        }
        self.read_next = self.read_next.max(batch.next_offset);
        Wake { consumers: added, ..Wake::default() }
    }

    pub fn open_stream(&mut self, id: StreamId, max_messages: i64, max_bytes: i64) {
        self.windows.insert(id, Window { max_messages, max_bytes, messages: 0, bytes: 0 });
    }

    /// Forgets a stream's window. Its leases run to their deadlines, as Pub/Sub's do.
    pub fn close_stream(&mut self, id: StreamId) {
        self.windows.remove(&id);
    }

    /// Leases up to `max` ready messages to `stream` for `lease`, within the stream's window.
    pub fn take(&mut self, stream: StreamId, max: usize, lease: Duration, now: Instant, epoch: u32) -> Taken {
        let mut taken = Taken::default();
        let window = self.windows.get(&stream).copied().unwrap_or_default();
        let room_messages =
            if window.max_messages > 0 { (window.max_messages - window.messages).max(0) as usize } else { usize::MAX };
        let window_bytes = if window.max_bytes > 0 { window.max_bytes - window.bytes } else { i64::MAX };
        // One answer stays under the 4 MiB a gRPC client accepts by default (Google's clients keep
        // that default in emulator mode); a single larger message still goes alone.
        let mut room_bytes = window_bytes.min(MAX_RESPONSE_BYTES);
        let max = max.min(room_messages);
        if max == 0 || window_bytes <= 0 {
            return taken;
        }
        let head_before = self.timers.first().map(|t| t.0);
        let dead_letter_after =
            self.settings.dead_letter_policy.as_ref().map(|p| p.max_delivery_attempts.max(1) as u32);
        let deadline = now + lease;
        let mut chosen = Vec::new();
        for (scanned, &offset) in self.ready.iter().enumerate() {
            if chosen.len() >= max || scanned >= MAX_SCAN {
                break;
            }
            let Some(entry) = self.entries.get(&offset) else { continue };
            if let Some(k) = &entry.key
                && self.keys.get(k).is_some_and(|h| h.stream != stream)
            {
                continue;
            }
            // At least one message per take, even one larger than the byte window.
            if !chosen.is_empty() && (entry.size as i64) > room_bytes {
                break;
            }
            room_bytes -= entry.size as i64;
            chosen.push(offset);
        }
        for offset in chosen {
            self.ready.remove(&offset);
            let generation = self.next_generation;
            self.next_generation = self.next_generation.wrapping_add(1).max(1);
            let Some(entry) = self.entries.get_mut(&offset) else { continue };
            entry.attempts += 1;
            if let Some(limit) = dead_letter_after
                && entry.attempts > limit
            {
                entry.hold = Hold::DeadLettering;
                taken.dead_letters.push((offset, entry.message.clone()));
                continue;
            }
            entry.hold = Hold::Leased { deadline, generation, stream };
            self.timers.insert((deadline, offset));
            if let Some(w) = self.windows.get_mut(&stream) {
                w.messages += 1;
                w.bytes += entry.size as i64;
            }
            if let Some(k) = &entry.key {
                self.keys.entry(k.clone()).or_insert(KeyHolder { stream, leased: 0 }).leased += 1;
            }
            taken.deliveries.push(Delivery {
                ack_id: AckId { epoch, offset, generation }.encode(),
                message: entry.message.clone(),
                delivery_attempt: dead_letter_after.map(|_| entry.attempts.min(i32::MAX as u32) as i32),
            });
        }
        taken.wake.timers = self.timers.first().map(|t| t.0) != head_before;
        taken
    }

    /// Ends whatever lease or wait `offset` is under, returning its stream's window and key.
    fn release(&mut self, offset: u64) {
        let Some(entry) = self.entries.get_mut(&offset) else { return };
        match entry.hold {
            Hold::Leased { deadline, stream, .. } => {
                self.timers.remove(&(deadline, offset));
                if let Some(w) = self.windows.get_mut(&stream) {
                    w.messages -= 1;
                    w.bytes -= entry.size as i64;
                }
                if let Some(k) = &entry.key
                    && let Some(h) = self.keys.get_mut(k)
                {
                    h.leased = h.leased.saturating_sub(1);
                    if h.leased == 0 {
                        self.keys.remove(k);
                    }
                }
            }
            Hold::Waiting { until } => {
                self.timers.remove(&(until, offset));
            }
            Hold::Ready => {
                self.ready.remove(&offset);
            }
            Hold::DeadLettering => {}
        }
        entry.hold = Hold::Ready;
    }

    /// Acknowledges `offset`. An offset not held is recorded too when it lies between what was
    /// read and `end` (the topic's next offset): acks that arrive after a restart, before the
    /// fetcher read that far again.
    pub fn ack(&mut self, offset: u64, end: u64) -> Wake {
        if self.entries.contains_key(&offset) {
            self.release(offset);
            if let Some(e) = self.entries.remove(&offset) {
                self.held_bytes -= e.size;
            }
            self.acks.insert(offset);
            self.dirty = true;
            return Wake { consumers: true, fetcher: true, timers: false };
        }
        if offset >= self.read_next && offset < end && !self.acks.contains(offset) {
            self.acks.insert(offset);
            self.dirty = true;
        }
        Wake::default()
    }

    /// Applies ModifyAckDeadline to the delivery `id` names; stale or unknown ids change nothing.
    pub fn modify_deadline(&mut self, id: AckId, seconds: u32, now: Instant, epoch: u32) -> Wake {
        let Some(entry) = self.entries.get_mut(&id.offset) else { return Wake::default() };
        let Hold::Leased { deadline, generation, stream } = entry.hold else { return Wake::default() };
        if generation != id.generation || epoch != id.epoch {
            return Wake::default();
        }
        if seconds == 0 {
            return self.requeue(id.offset, now, true);
        }
        let new_deadline = now + Duration::from_secs(u64::from(seconds));
        let head_before = self.timers.first().map(|t| t.0);
        self.timers.remove(&(deadline, id.offset));
        self.timers.insert((new_deadline, id.offset));
        entry.hold = Hold::Leased { deadline: new_deadline, generation, stream };
        Wake { timers: self.timers.first().map(|t| t.0) != head_before, ..Wake::default() }
    }

    /// Makes `offset` deliverable again: at once, or after the retry policy's back-off. With
    /// ordering, the later messages of its key that are out on lease come back with it, so the
    /// key's order holds on redelivery.
    pub fn requeue(&mut self, offset: u64, now: Instant, backoff: bool) -> Wake {
        let Some(entry) = self.entries.get(&offset) else { return Wake::default() };
        let key = entry.key.clone();
        let attempts = entry.attempts;
        self.release(offset);
        let mut wake = Wake { consumers: true, ..Wake::default() };
        let delay = self
            .settings
            .retry_policy
            .as_ref()
            .filter(|_| backoff && key.is_none())
            .map(|p| backoff_delay(p.minimum_backoff_seconds, p.maximum_backoff_seconds, attempts));
        match delay {
            Some(d) if !d.is_zero() => {
                let until = now + d;
                let head_before = self.timers.first().map(|t| t.0);
                self.timers.insert((until, offset));
                if let Some(e) = self.entries.get_mut(&offset) {
                    e.hold = Hold::Waiting { until };
                }
                wake = Wake { timers: head_before.is_none_or(|h| until < h), ..Wake::default() };
            }
            _ => {
                self.ready.insert(offset);
            }
        }
        if let Some(k) = key {
            let later: Vec<u64> = self
                .entries
                .range(offset + 1..)
                .filter(|(_, e)| e.key.as_ref() == Some(&k) && matches!(e.hold, Hold::Leased { .. }))
                .map(|(&o, _)| o)
                .collect();
            for o in later {
                self.release(o);
                self.ready.insert(o);
            }
        }
        wake
    }

    /// Ends expired leases and back-offs up to `now`.
    pub fn expire(&mut self, now: Instant) -> Wake {
        let mut wake = Wake::default();
        while let Some(&(at, offset)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, offset));
            let Some(hold) = self.entries.get(&offset).map(|e| e.hold) else { continue };
            match hold {
                Hold::Leased { deadline, .. } if deadline == at => {
                    // Put the timer back so `release` finds it, then requeue as for a nack.
                    self.timers.insert((at, offset));
                    wake = wake.or(self.requeue(offset, now, true));
                }
                Hold::Waiting { until } if until == at => {
                    if let Some(e) = self.entries.get_mut(&offset) {
                        e.hold = Hold::Ready;
                    }
                    self.ready.insert(offset);
                    wake.consumers = true;
                }
                _ => {}
            }
        }
        wake
    }

    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|t| t.0)
    }

    /// Seek: everything before `offset` is acknowledged, everything from it on is not. Leases
    /// end; deliveries already out may be acknowledged still (their offsets are recorded).
    pub fn seek(&mut self, offset: u64) -> Wake {
        self.epoch_of_reads += 1;
        self.entries.clear();
        self.ready.clear();
        self.timers.clear();
        self.keys.clear();
        for w in self.windows.values_mut() {
            w.messages = 0;
            w.bytes = 0;
        }
        self.held_bytes = 0;
        self.acks = AckSet::from_cursor(&SubscriptionCursor { floor: offset, acked: Vec::new() });
        self.read_next = offset;
        self.dirty = true;
        Wake { consumers: true, timers: true, fetcher: true }
    }

    /// Whether `stream` could be handed something now.
    pub fn has_deliverable(&self, stream: StreamId) -> bool {
        if self.ready.is_empty() {
            return false;
        }
        match self.windows.get(&stream) {
            Some(w) => {
                (w.max_messages <= 0 || w.messages < w.max_messages) && (w.max_bytes <= 0 || w.bytes < w.max_bytes)
            }
            None => true,
        }
    }
}

fn compile_filter(settings: &Subscription) -> Option<Filter> {
    if settings.filter.trim().is_empty() {
        return None;
    }
    match Filter::parse(&settings.filter) {
        Ok(f) => Some(f),
        Err(e) => {
            // Filters are checked when set; one that no longer parses delivers everything rather
            // than silently acknowledging everything.
            tracing::error!(subscription = %settings.name, error = %e, "stored filter does not parse; not filtering");
            None
        }
    }
}

/// Exponential back-off between the retry policy's bounds.
fn backoff_delay(min_seconds: i64, max_seconds: i64, attempts: u32) -> Duration {
    let min = min_seconds.clamp(0, 600) as u64;
    let max = (max_seconds.clamp(0, 600) as u64).max(min);
    let shift = attempts.saturating_sub(1).min(16);
    Duration::from_secs(min.saturating_mul(1 << shift).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferrocore_model::Timestamp;
    use ferrocore_model::pubsub::{DeadLetterPolicy, RetryPolicy, SubscriptionName, TopicName};

    fn settings() -> Subscription {
        Subscription {
            name: SubscriptionName::parse("n", "projects/p/subscriptions/sub").unwrap(),
            topic: Some(TopicName::parse("t", "projects/p/topics/top").unwrap()),
            ack_deadline_seconds: 10,
            retain_acked_messages: false,
            message_retention_seconds: 604_800,
            labels: Default::default(),
            enable_message_ordering: false,
            expiration_ttl_seconds: None,
            filter: String::new(),
            dead_letter_policy: None,
            retry_policy: None,
            detached: false,
            created: Timestamp(0),
        }
    }

    fn batch(from: u64, to: u64, attrs: impl Fn(u64) -> Vec<(String, String)>) -> ReadBatch {
        ReadBatch {
            messages: (from..to)
                .map(|o| StoredMessage {
                    offset: o,
                    time: Timestamp(o as i64),
                    attributes: attrs(o),
                    data: Bytes::from(vec![1; 10]),
                })
                .collect(),
            next_offset: to,
            earliest_offset: 0,
        }
    }

    fn offsets(t: &Taken) -> Vec<u64> {
        t.deliveries.iter().map(|d| d.message.offset).collect()
    }

    const EPOCH: u32 = 9;
    const LEASE: Duration = Duration::from_secs(10);

    #[test]
    fn deliver_ack_and_redeliver_after_the_deadline() {
        let mut s = State::new(Arc::new(settings()), &SubscriptionCursor::default());
        s.add_fetched(batch(0, 5, |_| vec![]), 0);
        let now = Instant::now();
        s.open_stream(1, 3, 0);
        let t = s.take(1, 100, LEASE, now, EPOCH);
        assert_eq!(offsets(&t), vec![0, 1, 2], "the window holds three");
        assert!(!s.has_deliverable(1));
        for d in &t.deliveries[..2] {
            let id = AckId::parse(&d.ack_id).unwrap();
            s.ack(id.offset, 5);
        }
        assert_eq!(s.cursor().floor, 2);
        let later = now + Duration::from_secs(1);
        assert_eq!(offsets(&s.take(1, 100, LEASE, later, EPOCH)), vec![3, 4]);
        // Offset 2 was never acked: it comes back after its deadline, with a new ack id.
        s.expire(now + LEASE);
        let again = s.take(1, 100, LEASE, now + LEASE, EPOCH);
        assert_eq!(offsets(&again), vec![2]);
        assert_ne!(again.deliveries[0].ack_id, t.deliveries[2].ack_id);
    }

    #[test]
    fn nack_redelivers_at_once_and_stale_ids_do_nothing() {
        let mut s = State::new(Arc::new(settings()), &SubscriptionCursor::default());
        s.add_fetched(batch(0, 2, |_| vec![]), 0);
        let now = Instant::now();
        let first = s.take(PULL, 1, LEASE, now, EPOCH);
        let id = AckId::parse(&first.deliveries[0].ack_id).unwrap();
        s.modify_deadline(id, 0, now, EPOCH);
        let second = s.take(PULL, 1, LEASE, now, EPOCH);
        assert_eq!(offsets(&second), vec![0]);
        // The first delivery's ack id is stale: nacking it again leaves the new lease alone.
        s.modify_deadline(id, 0, now, EPOCH);
        assert_eq!(offsets(&s.take(PULL, 5, LEASE, now, EPOCH)), vec![1]);
        // Extending the current lease keeps it past the old deadline.
        let id2 = AckId::parse(&second.deliveries[0].ack_id).unwrap();
        s.modify_deadline(id2, 60, now, EPOCH);
        s.expire(now + Duration::from_secs(30));
        assert!(!s.ready.contains(&0));
        assert!(s.ready.contains(&1), "offset 1's 10 s lease ran out");
    }

    #[test]
    fn filters_ack_what_they_refuse() {
        let mut sub = settings();
        sub.filter = "attributes.deviceId = \"a\"".into();
        let mut s = State::new(Arc::new(sub), &SubscriptionCursor::default());
        s.add_fetched(batch(0, 4, |o| vec![("deviceId".into(), if o % 2 == 0 { "a".into() } else { "b".into() })]), 0);
        let t = s.take(PULL, 10, LEASE, Instant::now(), EPOCH);
        assert_eq!(offsets(&t), vec![0, 2]);
        for d in &t.deliveries {
            s.ack(d.message.offset, 4);
        }
        assert_eq!(s.cursor(), SubscriptionCursor { floor: 4, acked: vec![] });
    }

    #[test]
    fn ordering_pins_a_key_to_one_stream_and_redelivers_in_order() {
        let mut sub = settings();
        sub.enable_message_ordering = true;
        let mut s = State::new(Arc::new(sub), &SubscriptionCursor::default());
        s.add_fetched(batch(0, 6, |o| vec![("deviceNumId".into(), (o % 2).to_string())]), 0);
        let now = Instant::now();
        s.open_stream(1, 0, 0);
        s.open_stream(2, 0, 0);
        let a = s.take(1, 2, LEASE, now, EPOCH);
        assert_eq!(offsets(&a), vec![0, 1]);
        let b = s.take(2, 10, LEASE, now, EPOCH);
        assert!(b.deliveries.is_empty(), "both keys are held by stream 1");
        let c = s.take(1, 10, LEASE, now, EPOCH);
        assert_eq!(offsets(&c), vec![2, 3, 4, 5]);
        // Nacking offset 2 (key 0) brings back 4 too, in order; key 1 stays out.
        let id = AckId::parse(&c.deliveries[0].ack_id).unwrap();
        s.modify_deadline(id, 0, now, EPOCH);
        assert_eq!(s.ready.iter().copied().collect::<Vec<_>>(), vec![2, 4]);
        // Once key 0's earlier lease (offset 0) is acked, the key is free for any stream.
        s.ack(0, 6);
        assert_eq!(offsets(&s.take(2, 10, LEASE, now, EPOCH)), vec![2, 4]);
    }

    #[test]
    fn dead_letters_after_the_policy_attempts() {
        let mut sub = settings();
        sub.dead_letter_policy = Some(DeadLetterPolicy {
            dead_letter_topic: TopicName::parse("t", "projects/p/topics/dead").unwrap(),
            max_delivery_attempts: 2,
        });
        let mut s = State::new(Arc::new(sub), &SubscriptionCursor::default());
        s.add_fetched(batch(0, 1, |_| vec![]), 0);
        let now = Instant::now();
        for attempt in 1..=2 {
            let t = s.take(PULL, 1, LEASE, now, EPOCH);
            assert_eq!(t.deliveries[0].delivery_attempt, Some(attempt));
            s.modify_deadline(AckId::parse(&t.deliveries[0].ack_id).unwrap(), 0, now, EPOCH);
        }
        let t = s.take(PULL, 1, LEASE, now, EPOCH);
        assert!(t.deliveries.is_empty());
        assert_eq!(t.dead_letters.len(), 1);
        s.ack(0, 1);
        assert_eq!(s.cursor().floor, 1);
    }

    #[test]
    fn retry_policy_backs_off() {
        let mut sub = settings();
        sub.retry_policy = Some(RetryPolicy { minimum_backoff_seconds: 2, maximum_backoff_seconds: 5 });
        let mut s = State::new(Arc::new(sub), &SubscriptionCursor::default());
        s.add_fetched(batch(0, 1, |_| vec![]), 0);
        let now = Instant::now();
        let t = s.take(PULL, 1, LEASE, now, EPOCH);
        s.modify_deadline(AckId::parse(&t.deliveries[0].ack_id).unwrap(), 0, now, EPOCH);
        assert!(s.take(PULL, 1, LEASE, now, EPOCH).deliveries.is_empty());
        s.expire(now + Duration::from_secs(2));
        assert_eq!(offsets(&s.take(PULL, 1, LEASE, now, EPOCH)), vec![0]);
        assert_eq!(backoff_delay(2, 5, 1), Duration::from_secs(2));
        assert_eq!(backoff_delay(2, 5, 3), Duration::from_secs(5));
    }

    #[test]
    fn one_take_stays_under_the_client_receive_limit() {
        let mut s = State::new(Arc::new(settings()), &SubscriptionCursor::default());
        let big = ReadBatch {
            messages: (0..4)
                .map(|o| StoredMessage {
                    offset: o,
                    time: Timestamp(0),
                    attributes: vec![],
                    data: Bytes::from(vec![0; 2 << 20]),
                })
                .collect(),
            next_offset: 4,
            earliest_offset: 0,
        };
        s.add_fetched(big, 0);
        let now = Instant::now();
        assert_eq!(offsets(&s.take(PULL, 10, LEASE, now, EPOCH)), vec![0], "2 MiB + 2 MiB would pass 3 MiB");
        assert_eq!(offsets(&s.take(PULL, 10, LEASE, now, EPOCH)), vec![1]);
    }

    #[test]
    fn seek_and_late_acks() {
        let mut s = State::new(Arc::new(settings()), &SubscriptionCursor { floor: 10, acked: vec![] });
        // After a restart, an ack for a message not read again yet is still recorded.
        s.ack(12, 20);
        s.ack(99, 20);
        assert_eq!(s.cursor().acked, vec![(12, 13)]);
        s.add_fetched(batch(10, 14, |_| vec![]), 0);
        assert_eq!(offsets(&s.take(PULL, 10, LEASE, Instant::now(), EPOCH)), vec![10, 11, 13]);
        s.seek(3);
        assert_eq!(s.cursor(), SubscriptionCursor { floor: 3, acked: vec![] });
        // A fetch begun before the seek is discarded.
        s.add_fetched(batch(14, 16, |_| vec![]), 0);
        assert_eq!(s.held(), 0);
        s.add_fetched(batch(3, 5, |_| vec![]), s.epoch_of_reads);
        assert_eq!(s.held(), 2);
    }
}
