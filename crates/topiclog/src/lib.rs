//! Ferrocore's embedded topic log: the default destination of device telemetry and state.
//!
//! Each topic (`projects/P/topics/T`) is an append-only sequence of [`Record`]s numbered by
//! offset from 0, stored as segment files in the data directory, trimmed by age and size, and read
//! by back ends from an offset, from the start or from the tail with long-poll.
//!
//! A device's QoS 1 PUBLISH is acknowledged once its record is durable, so [`TopicLog::append`]
//! returns only after an fsync. To keep thousands of publishers from costing thousands of fsyncs,
//! appends are group-committed: concurrent appends to a topic share one write and one fsync.
//!
//! Map of the crate:
//! * [`config`]: [`LogConfig`], sizes and retention.
//! * [`error`]: [`LogError`]; its `Display` is safe to show clients, [`LogError::detail`] is for logs.
//! * `name`: topic name validation and its safe, reversible mapping to directories.
//! * `format`: the on-disk bytes (segment header, record frame, CRC-32C).
//! * `segment`: one segment file, its sparse index, verifying scans and record reads.
//! * `topic`: a topic's shared state, the read path, seeking by time and retention.
//! * `writer`: the per-topic group-commit writer.
//! * `recovery`: open-time discovery and torn-tail repair.
//!
//! Topic names follow [`ferrocore_model::pubsub::TopicName`], the grammar of every other part of
//! Ferrocore. Besides reads by offset, [`TopicLog::offset_at_time`] finds where a time starts, for
//! seeking a subscription.
//!
//! On disk: `{dir}/{project}/{topic}/{base_offset:020}.log`, the directory names percent-encoded
//! (only `[A-Za-z0-9_-]` and `%XX`), or, for a project or topic id whose encoding would not fit in
//! a file name, `+` and its SHA-256 with a `NAME` file holding the id (see `name`). Each segment is
//! a 32-byte header followed by CRC-framed records; the byte layout is documented in `format`. A
//! `LOCK` file in `{dir}` holds an advisory lock while a log has the directory open.

pub mod config;
pub mod error;
mod format;
#[doc(hidden)]
pub mod fuzzing;
mod name;
mod recovery;
mod segment;
mod topic;
mod writer;

pub use config::LogConfig;
pub use error::LogError;

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use topic::Topic;
use writer::{AppendRequest, WriterState};

/// A record to append. The log assigns its offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRecord {
    /// When the record was published (Unix epoch nanoseconds). Age retention compares it with
    /// the wall clock.
    pub timestamp_nanos: i64,
    pub attributes: Vec<(String, String)>,
    pub payload: Bytes,
}

/// Records queued by [`TopicLog::enqueue`]; [`AppendTicket::durable`] waits until they are.
pub struct AppendTicket {
    answer: Option<oneshot::Receiver<Result<u64, LogError>>>,
    count: u64,
    log: TopicLog,
}

impl AppendTicket {
    /// The records' offsets, once they are fsync'd.
    pub async fn durable(self) -> Result<Vec<u64>, LogError> {
        let Some(answer) = self.answer else { return Ok(Vec::new()) };
        let first = answer.await.map_err(|_| self.log.inner.stopped())??;
        Ok((first..first + self.count).collect())
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_nanos: i64,
    pub attributes: Vec<(String, String)>,
    pub payload: Bytes,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// This offset, or the earliest retained one if it is older.
    Offset(u64),
    /// The oldest retained record.
    Earliest,
    /// Only records appended after the call.
    Latest,
}

/// What a read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// In offset order; empty if nothing was available (and, with `wait`, nothing arrived in time).
    pub records: Vec<Record>,
    /// The offset to read from next.
    pub next_offset: u64,
    /// The oldest retained offset. If the requested offset fell below it, reading resumed here.
    pub earliest_offset: u64,
}

/// Counters the writers and retention keep (relaxed atomics, a few per batch).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub appended_records: AtomicU64,
    pub appended_bytes: AtomicU64,
    pub commits: AtomicU64,
    pub deleted_segments: AtomicU64,
    pub deleted_bytes: AtomicU64,
}

/// A topic's extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub earliest_offset: u64,
    pub next_offset: u64,
    /// Bytes on disk, headers and framing included.
    pub bytes: u64,
}

/// Memory that queued and in-flight appends may hold, over all topics. Appends beyond it wait
/// (back-pressure reaches the publishers); a single larger append takes the whole budget.
const QUEUE_BUDGET_BYTES: usize = 64 << 20;

/// The embedded topic log. Cheap to clone; all clones share one log.
#[derive(Clone)]
pub struct TopicLog {
    inner: Arc<Inner>,
}

struct Inner {
    config: LogConfig,
    topics: RwLock<HashMap<String, TopicEntry>>,
    /// Woken when a topic is created, for readers long-polling a topic that does not exist yet.
    created: Notify,
    /// Reads blocked waiting for records or for their topic, counted once they can no longer
    /// miss what they wait for (see [`TopicLog::waiting_readers`]).
    waiting_readers: AtomicUsize,
    queue: Arc<Semaphore>,
    syncs: Arc<AtomicU64>,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    closed: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The directory lock; released by `close` (or drop) so that the directory can be reopened.
    lock: Mutex<Option<std::fs::File>>,
    /// Retention holds by topic name, then by holder: age retention keeps every record at or
    /// after the lowest offset held (the size cap still applies).
    holds: Mutex<HashMap<String, HashMap<u64, u64>>>,
    next_hold: AtomicU64,
}

struct TopicEntry {
    topic: Arc<Topic>,
    /// Unbounded because the queue budget already bounds it by bytes.
    tx: mpsc::UnboundedSender<AppendRequest>,
}

impl TopicLog {
    /// Opens (or creates) the log in `config.dir`, recovering every topic: torn tails of the last
    /// segments are cut off. Starts one writer task per topic and the periodic retention task, so
    /// it must run inside a Tokio runtime.
    pub async fn open(config: LogConfig) -> Result<TopicLog, LogError> {
        config.validate()?;
        let syncs = Arc::new(AtomicU64::new(0));
        let (lock, loaded) = {
            let config = config.clone();
            let syncs = syncs.clone();
            tokio::task::spawn_blocking(move || recovery::load_all(&config, &syncs))
                .await
                .map_err(|e| LogError::Io(format!("recovery task failed: {e}")))??
        };
        let inner = Arc::new(Inner {
            config,
            topics: RwLock::new(HashMap::new()),
            created: Notify::new(),
            waiting_readers: AtomicUsize::new(0),
            queue: Arc::new(Semaphore::new(QUEUE_BUDGET_BYTES)),
            syncs,
            counters: Arc::default(),
            shutdown: watch::Sender::new(false),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            lock: Mutex::new(Some(lock)),
            holds: Mutex::new(HashMap::new()),
            next_hold: AtomicU64::new(0),
        });
        {
            let mut topics = inner.topics.write().unwrap_or_else(PoisonError::into_inner);
            for t in loaded {
                tracing::debug!(topic = %t.name, next_offset = t.next_offset, segments = t.segments.len(), "recovered topic");
                let topic = Arc::new(Topic::new(t.name.clone(), t.dir, t.segments, t.next_offset));
                let entry = inner.start_writer(topic, t.active, t.next_offset);
                topics.insert(t.name, entry);
            }
        }
        let retention = tokio::spawn(retention_loop(Arc::downgrade(&inner), inner.shutdown.subscribe()));
        inner.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(retention);
        Ok(TopicLog { inner })
    }

    /// Appends `records` to `topic` in order, creating the topic on first use. Returns their
    /// offsets (contiguous) once they are durable. Concurrent calls share one write and fsync.
    /// Waits while the append queue is full.
    pub async fn append(&self, topic: &str, records: Vec<NewRecord>) -> Result<Vec<u64>, LogError> {
        self.enqueue(topic, records).await?.durable().await
    }

    /// Queues records behind everything queued before on this topic, and returns a ticket that
    /// resolves once they are durable. Callers that pipeline (an MQTT connection with many QoS 1
    /// messages in flight) enqueue in order and wait for the tickets later; waiting here only
    /// happens when the shared queue budget is exhausted (back-pressure).
    pub async fn enqueue(&self, topic: &str, records: Vec<NewRecord>) -> Result<AppendTicket, LogError> {
        let limit = self.inner.config.max_record_bytes;
        let mut frame_bytes = 0usize;
        for rec in &records {
            let size = format::record_size(rec.payload.len(), &rec.attributes);
            if size > limit || rec.attributes.len() > format::MAX_ATTRIBUTES {
                return Err(LogError::RecordTooLarge { size, limit });
            }
            frame_bytes = frame_bytes.saturating_add(format::frame_len(rec));
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        if records.is_empty() {
            return Ok(AppendTicket { answer: None, count: 0, log: self.clone() });
        }
        let permits = frame_bytes.clamp(1, QUEUE_BUDGET_BYTES) as u32;
        let permit = self.inner.queue.clone().acquire_many_owned(permits).await.map_err(|_| LogError::Closed)?;
        let tx = self.inner.topic_sender(topic)?;
        let count = records.len() as u64;
        let (reply, answer) = oneshot::channel();
        tx.send(AppendRequest { records, frame_bytes, reply, _permit: permit }).map_err(|_| self.inner.stopped())?;
        Ok(AppendTicket { answer: Some(answer), count, log: self.clone() })
    }

    /// Reads up to `max_records` records and about `max_bytes` of payload and attributes (at
    /// least one record when any is available) from `from`. When none are available and `wait` is
    /// given, waits up to that long for new ones; a topic that does not exist yet reads as empty.
    pub async fn read(
        &self,
        topic: &str,
        from: ReadFrom,
        max_records: usize,
        max_bytes: usize,
        wait: Option<Duration>,
    ) -> Result<ReadResult, LogError> {
        self.inner.check_name(topic)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let mut shutdown = self.inner.shutdown.subscribe();
        let max_records = max_records.max(1);
        // Until the topic exists it is empty, and all three starting points mean offset 0.
        let mut missing_start = None;
        let topic = loop {
            let created = self.inner.created.notified();
            tokio::pin!(created);
            // Register before looking, so a creation between the look and the wait is not missed.
            created.as_mut().enable();
            if let Some(t) = self.inner.topic(topic) {
                break t;
            }
            let start = match from {
                ReadFrom::Offset(o) => o,
                ReadFrom::Earliest | ReadFrom::Latest => 0,
            };
            missing_start = Some(start);
            let empty = ReadResult { records: Vec::new(), next_offset: start, earliest_offset: 0 };
            let Some(deadline) = deadline else { return Ok(empty) };
            let _waiting = Waiting::start(&self.inner.waiting_readers);
            tokio::select! {
                _ = &mut created => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(empty),
                _ = shutdown.wait_for(|&s| s) => return Ok(empty),
            }
        };
        let mut start = match (missing_start, from) {
            (Some(start), _) | (None, ReadFrom::Offset(start)) => start,
            (None, ReadFrom::Earliest) => topic.lock().earliest(),
            (None, ReadFrom::Latest) => topic.lock().next_offset,
        };
        loop {
            // Subscribing before reading marks the current offset as seen: a commit after the
            // read is then guaranteed to wake the wait below.
            let mut committed = topic.committed.subscribe();
            let result = match topic.at_tail(start) {
                Some(empty) => empty,
                None => {
                    let t = topic.clone();
                    tokio::task::spawn_blocking(move || t.read_blocking(start, max_records, max_bytes))
                        .await
                        .map_err(|e| LogError::Io(format!("read task failed: {e}")))??
                }
            };
            let Some(deadline) = deadline else { return Ok(result) };
            if !result.records.is_empty() {
                return Ok(result);
            }
            let target = result.next_offset;
            let _waiting = Waiting::start(&self.inner.waiting_readers);
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, committed.wait_for(|&next| next > target)) => {
                    if !matches!(changed, Ok(Ok(_))) {
                        return Ok(result);
                    }
                }
                _ = shutdown.wait_for(|&s| s) => return Ok(result),
            }
            start = result.next_offset;
        }
    }

    /// The first retained offset of `topic` whose record was published (`timestamp_nanos`) at or
    /// after `time_nanos`; the topic's next offset when there is none, its earliest retained
    /// offset when `time_nanos` is older than everything kept, and 0 for a topic that does not
    /// exist yet.
    ///
    /// Publishers' clocks make timestamps only roughly ordered, so the answer is found in one
    /// segment, chosen by its first record's timestamp: the first record in offset order at or
    /// after the time within that segment. Reads one record per step of a binary search over the
    /// segments and then scans the chosen segment, never the whole topic.
    pub async fn offset_at_time(&self, topic: &str, time_nanos: i64) -> Result<u64, LogError> {
        self.inner.check_name(topic)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let Some(topic) = self.inner.topic(topic) else { return Ok(0) };
        tokio::task::spawn_blocking(move || topic.offset_at_time_blocking(time_nanos))
            .await
            .map_err(|e| LogError::Io(format!("seek task failed: {e}")))?
    }

    /// The extent of one topic, `None` if the log does not know it.
    pub fn topic_info(&self, topic: &str) -> Option<TopicInfo> {
        self.inner.topic(topic).map(|t| t.info())
    }

    /// Every known topic with its extent, sorted by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let topics = self.inner.topics.read().unwrap_or_else(PoisonError::into_inner);
        let mut infos: Vec<TopicInfo> = topics.values().map(|e| e.topic.info()).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    /// Keeps age retention from deleting `topic`'s records at or after `offset` while the returned
    /// hold lives (a reader that must not miss records, such as a sink's forwarder, holds its
    /// cursor). The topic need not exist yet. The size cap (`retention_max_bytes`) still deletes
    /// held records: a hold must not let one stalled reader fill the disk.
    pub fn hold(&self, topic: &str, offset: u64) -> RetentionHold {
        let id = self.inner.next_hold.fetch_add(1, Ordering::Relaxed);
        let mut holds = self.inner.holds.lock().unwrap_or_else(PoisonError::into_inner);
        holds.entry(topic.to_owned()).or_default().insert(id, offset);
        RetentionHold { inner: Arc::downgrade(&self.inner), topic: topic.to_owned(), id }
    }

    /// Applies retention to every topic now, against the wall clock. The task started by `open`
    /// also does this periodically.
    pub async fn enforce_retention(&self) -> Result<(), LogError> {
        self.enforce_retention_at(writer::now_nanos()).await
    }

    /// [`enforce_retention`](Self::enforce_retention) with an injected clock, for tests.
    #[doc(hidden)]
    pub async fn enforce_retention_at(&self, now_nanos: i64) -> Result<(), LogError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let topics: Vec<Arc<Topic>> = {
            let topics = self.inner.topics.read().unwrap_or_else(PoisonError::into_inner);
            topics.values().map(|e| e.topic.clone()).collect()
        };
        let max_age = self.inner.config.max_age_nanos();
        let max_bytes = self.inner.config.retention_max_bytes;
        let mut first_error = None;
        for topic in topics {
            let syncs = self.inner.syncs.clone();
            let t = topic.clone();
            let held = self.inner.held_from(&topic.name);
            let outcome = tokio::task::spawn_blocking(move || {
                t.enforce_retention_blocking(max_age, max_bytes, held, now_nanos, &syncs)
            })
            .await
            .map_err(|e| LogError::Io(format!("retention task failed: {e}")))
            .and_then(|r| r);
            if let Ok((segments, bytes)) = outcome {
                self.inner.counters.deleted_segments.fetch_add(segments as u64, Ordering::Relaxed);
                self.inner.counters.deleted_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            if let Err(err) = outcome {
                // One broken topic must not stop the others from being trimmed.
                tracing::error!(topic = %topic.name, error = %err.detail(), "retention failed");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops accepting appends and reads, lets every writer finish what is queued (those appends
    /// still succeed), wakes long-polling readers, stops the retention task and releases the
    /// directory lock. Call it before opening the same directory again.
    pub async fn close(&self) {
        {
            // Under the topics lock, so that no topic (and writer task) is created after this.
            let _topics = self.inner.topics.write().unwrap_or_else(PoisonError::into_inner);
            self.inner.closed.store(true, Ordering::Release);
        }
        self.inner.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            let _ = task.await;
        }
        // Every writer has finished, so nothing touches the files any more.
        drop(self.inner.lock.lock().unwrap_or_else(PoisonError::into_inner).take());
    }

    /// How many reads are waiting right now, for records past their topic's end or for their
    /// topic to be created. A read counts only once it is registered for the wake-up, so an
    /// append made after this number went up reaches it. For tests that must not append before a
    /// reader waits; not a stable API.
    #[doc(hidden)]
    pub fn waiting_readers(&self) -> usize {
        self.inner.waiting_readers.load(Ordering::Acquire)
    }

    /// How many fsyncs (files and directories) this log has issued: lets tests check that group
    /// commit batches.
    #[doc(hidden)]
    pub fn sync_count(&self) -> u64 {
        self.inner.syncs.load(Ordering::Relaxed)
    }

    /// What the log has done since it was opened, and what it holds now: for metrics.
    pub fn stats(&self) -> ferrocore_metrics::TopicLogValues {
        let c = &self.inner.counters;
        let topics = self.topics();
        ferrocore_metrics::TopicLogValues {
            appended_records: c.appended_records.load(Ordering::Relaxed),
            appended_bytes: c.appended_bytes.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            fsyncs: self.sync_count(),
            retention_deleted_segments: c.deleted_segments.load(Ordering::Relaxed),
            retention_deleted_bytes: c.deleted_bytes.load(Ordering::Relaxed),
            topics: topics.len() as u64,
            bytes: topics.iter().map(|t| t.bytes).sum(),
        }
    }
}

impl std::fmt::Debug for TopicLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicLog").field("dir", &self.inner.config.dir).finish_non_exhaustive()
    }
}

/// Returned by [`TopicLog::hold`]; releases the hold when dropped.
#[derive(Debug)]
pub struct RetentionHold {
    inner: Weak<Inner>,
    topic: String,
    id: u64,
}

impl RetentionHold {
    /// Moves the hold to `offset` (forwards, as the holder's cursor advances).
    pub fn advance(&self, offset: u64) {
        let Some(inner) = self.inner.upgrade() else { return };
        let mut holds = inner.holds.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = holds.get_mut(&self.topic).and_then(|h| h.get_mut(&self.id)) {
            *held = offset;
        }
    }
}

impl Drop for RetentionHold {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else { return };
        let mut holds = inner.holds.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = holds.get_mut(&self.topic) {
            h.remove(&self.id);
            if h.is_empty() {
                holds.remove(&self.topic);
            }
        }
    }
}

impl Inner {
    /// The lowest offset any hold keeps on `topic`.
    fn held_from(&self, topic: &str) -> Option<u64> {
        let holds = self.holds.lock().unwrap_or_else(PoisonError::into_inner);
        holds.get(topic).and_then(|h| h.values().copied().min())
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap_or_else(PoisonError::into_inner).get(name).map(|e| e.topic.clone())
    }

    /// Validates a name the log does not know yet; known ones were validated when they came.
    fn check_name(&self, name: &str) -> Result<(), LogError> {
        if !self.topics.read().unwrap_or_else(PoisonError::into_inner).contains_key(name) {
            name::parse(name)?;
        }
        Ok(())
    }

    /// The writer of a topic, creating the topic (in memory; its files come with the first batch)
    /// if it is new. Known topics are found by name alone; the name is parsed (and the
    /// topic created) only on first use, not for every append.
    fn topic_sender(&self, topic_name: &str) -> Result<mpsc::UnboundedSender<AppendRequest>, LogError> {
        if let Some(entry) = self.topics.read().unwrap_or_else(PoisonError::into_inner).get(topic_name) {
            return Ok(entry.tx.clone());
        }
        let parsed = name::parse(topic_name)?;
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        if let Some(entry) = topics.get(topic_name) {
            return Ok(entry.tx.clone());
        }
        let dir = name::topic_dir(&self.config.dir, &parsed);
        let topic = Arc::new(Topic::new(topic_name.to_owned(), dir, Default::default(), 0));
        let entry = self.start_writer(topic, None, 0);
        let tx = entry.tx.clone();
        topics.insert(topic_name.to_owned(), entry);
        drop(topics);
        self.created.notify_waiters();
        Ok(tx)
    }

    fn start_writer(&self, topic: Arc<Topic>, active: Option<writer::ActiveSegment>, next_offset: u64) -> TopicEntry {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = WriterState::new(
            self.config.dir.clone(),
            &topic,
            active,
            next_offset,
            self.config.segment_bytes,
            self.config.roll_after_nanos(),
            self.syncs.clone(),
        );
        let counters = self.counters.clone();
        let task = tokio::spawn(writer::run(topic.clone(), rx, state, self.shutdown.subscribe(), counters));
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(task);
        TopicEntry { topic, tx }
    }

    /// The error for an append whose writer went away: closed by us, or failed.
    fn stopped(&self) -> LogError {
        if self.closed.load(Ordering::Acquire) {
            LogError::Closed
        } else {
            LogError::Io("the topic writer stopped; reopen the log".to_owned())
        }
    }
}

/// How often the background task applies retention: often enough for size limits to bite within
/// a minute, rarely enough to cost nothing.
fn retention_period(config: &LogConfig) -> Duration {
    (config.retention_max_age / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Holds only a weak reference, so dropping every `TopicLog` without `close` still ends it.
async fn retention_loop(inner: Weak<Inner>, mut shutdown: watch::Receiver<bool>) {
    let Some(period) = inner.upgrade().map(|i| retention_period(&i.config)) else { return };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|&s| s) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let log = TopicLog { inner };
        // Errors are logged per topic inside; the next tick tries again.
        let _ = log.enforce_retention().await;
    }
}

/// Counts a read as waiting for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "projects/p/topics/queue";

    #[test]
    fn handles_are_shareable() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<TopicLog>();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_wait_while_the_queue_is_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = TopicLog::open(LogConfig::new(dir.path())).await.expect("open");
        // Stand in for 64 MiB of appends that are queued and not yet durable.
        let hog = log.inner.queue.clone().acquire_many_owned(QUEUE_BUDGET_BYTES as u32).await.expect("budget");
        let pending = tokio::spawn({
            let log = log.clone();
            async move {
                log.append(TOPIC, vec![NewRecord { payload: Bytes::from_static(b"x"), ..Default::default() }]).await
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!pending.is_finished(), "the append must wait for room in the queue");
        assert!(log.topics().is_empty(), "nothing was queued yet");
        drop(hog);
        assert_eq!(pending.await.expect("task").expect("append"), vec![0]);
        // The budget comes back once the writer has answered.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while log.inner.queue.available_permits() != QUEUE_BUDGET_BYTES {
            assert!(std::time::Instant::now() < deadline, "queue budget leaked");
            tokio::task::yield_now().await;
        }
        log.close().await;
    }

    #[tokio::test]
    async fn an_append_larger_than_the_queue_still_goes_through_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig { max_record_bytes: 1 << 20, ..LogConfig::new(dir.path()) };
        let log = TopicLog::open(config).await.expect("open");
        // 80 MiB in one append: more than the whole budget, which it takes in full.
        let records: Vec<NewRecord> =
            (0..80).map(|_| NewRecord { payload: Bytes::from(vec![7u8; 1 << 20]), ..Default::default() }).collect();
        let offsets = log.append(TOPIC, records).await.expect("append");
        assert_eq!(offsets, (0..80).collect::<Vec<_>>());
        log.close().await;
    }
}
