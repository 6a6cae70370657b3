//! The forwarders: each external sink reads every topic it takes from the topic log (the outbox)
//! at its own durable cursor and hands batches to its destination.
//!
//! Per (sink, topic) one task loops: read from the cursor (long-polling at the log's end), deliver
//! the batch, advance the cursor over what the destination confirmed, save it, repeat. So a
//! device's PUBACK still means "in the log", and a sink that is down, slow or refusing only delays
//! its own messages. Failures are retried with exponential back-off capped at
//! [`Settings::backoff_max`]; the sink reports itself as retrying meanwhile.
//!
//! * Cursors are saved by one writer for all sinks, each write a transaction over every cursor
//!   that moved since the last; a task waits for its cursor to be saved before it sends the next
//!   batch, so a crash re-sends at most the batch that was in flight.
//! * The next batch is read (on its own task) while the current one is delivered and saved, so
//!   the log's disk reads and decoding overlap the destination's round trips and the fsync.
//! * Each task holds the log's age retention at its cursor; the size cap still applies, and what
//!   it removed unforwarded is counted as lost and logged.
//! * A topic without a saved cursor starts at the first message published at or after the sink
//!   was first configured: adding a sink does not replay the past, and a topic that appears while
//!   the sink runs is forwarded from its first message.

use crate::destination::{Destination, Source, Target};
use crate::spec::SinkSpec;
use ferrocore_core::clock::Clock;
use ferrocore_core::sink::{SinkReport, SinkState, SinkStatus};
use ferrocore_core::topics::{ReadBatch, ReadError, ReadFrom, RetentionHold, StoredMessage, TopicSource};
use ferrocore_model::Timestamp;
use ferrocore_model::pubsub::TopicName;
use ferrocore_store::SinkStore;
use ferrocore_store::sinks::SinkCursor;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How the forwarders pace themselves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// At most this many messages per delivered batch.
    pub batch_messages: usize,
    /// And about this many payload bytes (at least one message).
    pub batch_bytes: usize,
    /// How long a read waits at the end of a topic before looking again.
    pub poll_wait: Duration,
    /// How often the log is scanned for topics that appeared.
    pub discover_every: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long shutdown waits for batches in flight.
    pub shutdown_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_messages: 4096,
            batch_bytes: 4 << 20,
            poll_wait: Duration::from_secs(1),
            discover_every: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Every configured sink, running. Dropping it does not stop the tasks: call [`Forwarders::close`].
#[derive(Clone)]
pub struct Forwarders {
    shared: Arc<Shared>,
}

struct Shared {
    source: Arc<dyn TopicSource>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    sinks: Vec<Arc<Sink>>,
    saver: mpsc::UnboundedSender<Save>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    saver_task: Mutex<Option<JoinHandle<()>>>,
}

struct Sink {
    spec: SinkSpec,
    created_at: Timestamp,
    topics: Mutex<BTreeMap<String, Arc<TopicProgress>>>,
}

/// One topic's progress in one sink, shared between its task and the status report.
#[derive(Default)]
struct TopicProgress {
    cursor: AtomicU64,
    forwarded: AtomicU64,
    lost: AtomicU64,
    rejected: AtomicU64,
    failing: AtomicBool,
    last_error: Mutex<Option<(Timestamp, String)>>,
}

/// A cursor to save, answered once it is durable; `None` asks only for the answer, which comes
/// after everything queued before it was written.
struct Save {
    cursor: Option<SinkCursor>,
    done: oneshot::Sender<()>,
}

impl Forwarders {
    /// Registers every sink in the store, places retention holds at the saved cursors and starts
    /// forwarding. Holds are in place when this returns, before retention can run against them.
    pub async fn start(
        specs: Vec<SinkSpec>,
        source: Arc<dyn TopicSource>,
        store: Arc<dyn SinkStore>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Result<Forwarders, ferrocore_store::StoreError> {
        let mut sinks = Vec::new();
        let mut saved = Vec::new();
        for spec in specs {
            let (created_at, cursors) = store.open_sink(&spec.name, clock.now()).await?;
            tracing::info!(sink = %spec.name, topics = %spec.pattern, url = %spec.redacted, "sink configured");
            sinks.push(Arc::new(Sink { spec, created_at, topics: Mutex::new(BTreeMap::new()) }));
            saved.push(cursors);
        }
        let (saver, rx) = mpsc::unbounded_channel();
        let saver_task = tokio::spawn(save_cursors(store, rx));
        let shared = Arc::new(Shared {
            source,
            clock,
            settings,
            sinks,
            saver,
            stop: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
            saver_task: Mutex::new(Some(saver_task)),
        });
        for (sink, cursors) in shared.sinks.iter().zip(saved) {
            for c in cursors {
                // A sink whose pattern changed keeps its name only if the entry is the same, so a
                // saved topic that no longer matches cannot occur; skip bad names all the same.
                let Ok(topic) = TopicName::parse("topic", &c.topic) else { continue };
                if sink.spec.pattern.matches(&topic) {
                    shared.launch(sink, topic, c.next_offset);
                }
            }
        }
        shared.discover().await;
        let discovery = tokio::spawn(discover_loop(Arc::downgrade(&shared)));
        shared.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(discovery);
        Ok(Forwarders { shared })
    }

    /// Stops every task: reads and back-offs end at once, batches in flight get
    /// [`Settings::shutdown_grace`] to be confirmed (and their cursors saved), then are dropped
    /// (and re-sent after the restart).
    pub async fn close(&self) {
        self.shared.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let deadline = tokio::time::Instant::now() + self.shared.settings.shutdown_grace;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        // Every task is gone: once what they queued is written, the saver has nothing left to do.
        let saver = self.shared.saver_task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(saver) = saver {
            let (done, flushed) = oneshot::channel();
            if self.shared.saver.send(Save { cursor: None, done }).is_ok() {
                let _ = flushed.await;
            }
            saver.abort();
        }
    }
}

impl Shared {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Starts forwarding `topic` to `sink` from `cursor`, unless that already runs.
    fn launch(self: &Arc<Self>, sink: &Arc<Sink>, topic: TopicName, cursor: u64) {
        if self.stopped() {
            return;
        }
        let progress = {
            let mut topics = sink.topics.lock().unwrap_or_else(PoisonError::into_inner);
            if topics.contains_key(topic.as_str()) {
                return;
            }
            let p = Arc::new(TopicProgress { cursor: AtomicU64::new(cursor), ..TopicProgress::default() });
            topics.insert(topic.as_str().to_owned(), p.clone());
            p
        };
        let hold = self.source.hold(topic.as_str(), cursor);
        let task = tokio::spawn(forward(self.clone(), sink.clone(), topic, progress, hold));
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(task);
    }

    /// Starts a task for every topic in the log that a sink takes and does not forward yet.
    async fn discover(self: &Arc<Self>) {
        let extents = self.source.extents();
        for sink in &self.sinks {
            for extent in &extents {
                let Ok(topic) = TopicName::parse("topic", &extent.name) else { continue };
                if !sink.spec.pattern.matches(&topic) {
                    continue;
                }
                if sink.topics.lock().unwrap_or_else(PoisonError::into_inner).contains_key(topic.as_str()) {
                    continue;
                }
                let start = match self.source.offset_at(topic.as_str(), sink.created_at).await {
                    Ok(offset) => offset,
                    Err(e) => {
                        tracing::warn!(sink = %sink.spec.name, topic = %topic, error = %e, "cannot find where to start forwarding; will try again");
                        continue;
                    }
                };
                self.launch(sink, topic, start);
            }
        }
    }

    /// Saves a cursor through the shared writer and waits until it is durable.
    async fn save(&self, sink: &Sink, topic: &TopicName, next_offset: u64) {
        let (done, saved) = oneshot::channel();
        let cursor = SinkCursor { sink: sink.spec.name.clone(), topic: topic.as_str().to_owned(), next_offset };
        if self.saver.send(Save { cursor: Some(cursor), done }).is_ok() {
            let _ = saved.await;
        }
    }

    /// Sleeps, or returns early (with `false`) when the forwarders stop.
    async fn pause(&self, d: Duration) -> bool {
        let mut stop = self.stop.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.wait_for(|s| *s) => false,
        }
    }
}

async fn discover_loop(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let every = s.settings.discover_every;
        if !s.pause(every).await {
            return;
        }
        s.discover().await;
    }
}

/// Writes cursors in batches: whatever queued while the previous transaction ran goes in the next.
async fn save_cursors(store: Arc<dyn SinkStore>, mut rx: mpsc::UnboundedReceiver<Save>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        // One (sink, topic) task waits for each save before the next, so a batch holds one cursor
        // per pair; should it hold more, the last queued is the newest.
        let mut latest: HashMap<(String, String), u64> = HashMap::new();
        for c in batch.iter().filter_map(|s| s.cursor.as_ref()) {
            latest.insert((c.sink.clone(), c.topic.clone()), c.next_offset);
        }
        let cursors: Vec<SinkCursor> =
            latest.into_iter().map(|((sink, topic), next_offset)| SinkCursor { sink, topic, next_offset }).collect();
        // A failed save is not retried here: the next one carries the same or a later cursor, and
        // until then a crash would only re-send.
        if let Err(e) = store.save_sink_cursors(&cursors).await {
            tracing::error!(error = %e, "saving sink cursors failed");
        }
        for s in batch.drain(..) {
            let _ = s.done.send(());
        }
    }
}

/// What a failure does to a topic's state and the log.
fn failing(shared: &Shared, sink: &Sink, topic: &TopicName, progress: &TopicProgress, error: &str) {
    let now = shared.clock.now();
    *progress.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, format!("{topic}: {error}")));
    if !progress.failing.swap(true, Ordering::AcqRel) {
        tracing::warn!(sink = %sink.spec.name, %topic, %error, "sink is failing; retrying with back-off");
    } else {
        tracing::debug!(sink = %sink.spec.name, %topic, %error, "sink still failing");
    }
}

fn recovered(sink: &Sink, topic: &TopicName, progress: &TopicProgress) {
    if progress.failing.swap(false, Ordering::AcqRel) {
        tracing::info!(sink = %sink.spec.name, %topic, "sink recovered");
    }
}

/// One (sink, topic): read, deliver, save, until stopped.
async fn forward(
    shared: Arc<Shared>,
    sink: Arc<Sink>,
    topic: TopicName,
    progress: Arc<TopicProgress>,
    hold: Box<dyn RetentionHold>,
) {
    let settings = shared.settings.clone();
    let source = Source { sink: &sink.spec.name, name: topic.as_str(), project: topic.project(), topic: topic.id() };
    let mut stop = shared.stop.subscribe();
    let mut cursor = progress.cursor.load(Ordering::Acquire);
    let mut saved = cursor;
    let mut target: Option<Box<dyn Target>> = None;
    let mut backoff = settings.backoff_min;
    // The next batch, read while the current one is delivered and its cursor saved.
    let mut ahead: Option<ReadAhead> = None;
    while !shared.stopped() {
        let read = match ahead.take().filter(|a| a.from == cursor) {
            Some(mut a) => tokio::select! {
                r = &mut a.task => r.unwrap_or_else(|e| Err(ReadError::Unavailable(format!("read task failed: {e}")))),
                _ = stop.wait_for(|s| *s) => break,
            },
            None => tokio::select! {
                r = shared.source.read(
                    topic.as_str(),
                    ReadFrom::Offset(cursor),
                    settings.batch_messages,
                    settings.batch_bytes,
                    Some(settings.poll_wait),
                ) => r,
                _ = stop.wait_for(|s| *s) => break,
            },
        };
        let batch = match read {
            Ok(b) => b,
            Err(e) => {
                failing(&shared, &sink, &topic, &progress, &format!("reading the topic log: {e}"));
                if !shared.pause(backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(settings.backoff_max);
                continue;
            }
        };
        // Measured against what the read returned, not its `earliest_offset`: retention may run
        // while a read is under way, so a batch can hold records older than the earliest it
        // reports (they are forwarded), and only a real gap counts as lost.
        let first = batch.messages.first().map_or(batch.next_offset, |m| m.offset);
        if first > cursor {
            let lost = first - cursor;
            progress.lost.fetch_add(lost, Ordering::Relaxed);
            tracing::error!(
                sink = %sink.spec.name, %topic, lost, from_offset = cursor,
                "the topic log's size cap removed messages this sink had not forwarded yet (raise --topic-retention-mb or fix the destination)"
            );
            cursor = first;
            progress.cursor.store(cursor, Ordering::Release);
        }
        // Asked of the log itself, not its cached extent: a shared log's cache may lag behind
        // what other nodes appended (and this sink already forwarded).
        if batch.messages.is_empty()
            && let Ok(log_end) = shared.source.next_offset(topic.as_str()).await
            && log_end < cursor
        {
            // The log holds less than the sink already forwarded: its directory was replaced
            // while the store was kept. What it holds now is news to the destination.
            tracing::warn!(
                sink = %sink.spec.name, %topic, cursor, log_end,
                "the topic log ends before this sink's cursor (was it replaced?); forwarding what it holds"
            );
            cursor = shared.source.extent(topic.as_str()).map_or(0, |e| e.earliest_offset.min(log_end));
            progress.cursor.store(cursor, Ordering::Release);
            shared.save(&sink, &topic, cursor).await;
            hold.advance(cursor);
            saved = cursor;
            continue;
        }
        if !batch.messages.is_empty() {
            ahead = Some(ReadAhead::start(&shared, &topic, batch.next_offset));
        }
        let mut pending: &[StoredMessage] = &batch.messages;
        while !pending.is_empty() {
            if shared.stopped() {
                break;
            }
            let t = match target.as_mut() {
                Some(t) => t,
                None => match open(&shared, &sink, &topic, &source).await {
                    Ok(t) => target.insert(t),
                    Err(e) => {
                        failing(&shared, &sink, &topic, &progress, &e);
                        if !shared.pause(backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(settings.backoff_max);
                        continue;
                    }
                },
            };
            let (done, failure) = match t.deliver(&source, pending).await {
                Ok(()) => (pending.len(), None),
                Err(f) => (f.delivered.min(pending.len()), Some(f)),
            };
            progress.forwarded.fetch_add(done as u64, Ordering::Relaxed);
            cursor = pending.get(done).map_or(batch.next_offset, |m| m.offset);
            pending = &pending[done..];
            match failure {
                None => {
                    backoff = settings.backoff_min;
                    recovered(&sink, &topic, &progress);
                }
                Some(f) if f.permanent && !pending.is_empty() => {
                    progress.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        sink = %sink.spec.name, %topic, offset = pending[0].offset, error = %f.error,
                        "the destination can never take this message; skipped"
                    );
                    pending = &pending[1..];
                    cursor = pending.first().map_or(batch.next_offset, |m| m.offset);
                }
                Some(f) => {
                    target = None;
                    failing(&shared, &sink, &topic, &progress, &f.error);
                }
            }
            progress.cursor.store(cursor, Ordering::Release);
            if cursor != saved {
                shared.save(&sink, &topic, cursor).await;
                hold.advance(cursor);
                saved = cursor;
            }
            if target.is_none() && !pending.is_empty() {
                if !shared.pause(backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(settings.backoff_max);
            }
        }
        if pending.is_empty() && batch.next_offset > cursor {
            // Everything read was handled (delivered or skipped).
            cursor = batch.next_offset;
        }
        if cursor != saved {
            progress.cursor.store(cursor, Ordering::Release);
            shared.save(&sink, &topic, cursor).await;
            hold.advance(cursor);
            saved = cursor;
        }
    }
}

/// A read of the next batch running on its own task, so the log's disk read and decoding overlap
/// the destination's round trips and the cursor's fsync. Aborted when dropped unused (a failure
/// moved the cursor elsewhere, or the forwarder stops).
struct ReadAhead {
    from: u64,
    task: JoinHandle<Result<ReadBatch, ReadError>>,
}

impl ReadAhead {
    fn start(shared: &Shared, topic: &TopicName, from: u64) -> ReadAhead {
        let source = shared.source.clone();
        let name = topic.as_str().to_owned();
        let (max, bytes, wait) =
            (shared.settings.batch_messages, shared.settings.batch_bytes, shared.settings.poll_wait);
        let task =
            tokio::spawn(async move { source.read(&name, ReadFrom::Offset(from), max, bytes, Some(wait)).await });
        ReadAhead { from, task }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open(shared: &Shared, sink: &Sink, topic: &TopicName, source: &Source<'_>) -> Result<Box<dyn Target>, String> {
    let url = sink.spec.url_for(topic)?;
    let destination: &Arc<dyn Destination> = &sink.spec.destination;
    let mut stop = shared.stop.subscribe();
    tokio::select! {
        t = destination.open(&url, source) => t,
        _ = stop.wait_for(|s| *s) => Err("the server is stopping".to_owned()),
    }
}

#[async_trait::async_trait]
impl SinkReport for Forwarders {
    async fn statuses(&self) -> Vec<SinkStatus> {
        let shared = &self.shared;
        let now = shared.clock.now();
        let mut out = Vec::with_capacity(shared.sinks.len());
        for sink in &shared.sinks {
            let topics: Vec<(String, Arc<TopicProgress>)> = sink
                .topics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut status = SinkStatus {
                name: sink.spec.name.clone(),
                topics: sink.spec.pattern.to_string(),
                url: sink.spec.redacted.clone(),
                state: SinkState::Ok,
                last_error: None,
                cursor: Vec::with_capacity(topics.len()),
                lag_messages: 0,
                lag_seconds: 0.0,
                forwarded_messages: 0,
                lost_messages: 0,
                rejected_messages: 0,
            };
            let mut newest_error: Option<(Timestamp, String)> = None;
            for (name, p) in topics {
                let cursor = p.cursor.load(Ordering::Acquire);
                status.cursor.push((name.clone(), cursor));
                status.forwarded_messages += p.forwarded.load(Ordering::Relaxed);
                status.lost_messages += p.lost.load(Ordering::Relaxed);
                status.rejected_messages += p.rejected.load(Ordering::Relaxed);
                if p.failing.load(Ordering::Acquire) {
                    status.state = SinkState::Retrying;
                }
                if let Some(e) = p.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
                    && newest_error.as_ref().is_none_or(|n| e.0 >= n.0)
                {
                    newest_error = Some(e);
                }
                let end = shared.source.extent(&name).map_or(0, |e| e.next_offset);
                if end > cursor {
                    status.lag_messages += end - cursor;
                    if let Ok(b) = shared.source.read(&name, ReadFrom::Offset(cursor), 1, 1, None).await
                        && let Some(m) = b.messages.first()
                    {
                        let age = (now.nanos().saturating_sub(m.time.nanos())).max(0) as f64 / 1e9;
                        status.lag_seconds = status.lag_seconds.max(age);
                    }
                }
            }
            status.last_error = newest_error.map(|e| e.1);
            if shared.stopped() {
                status.state = SinkState::Stopped;
            }
            out.push(status);
        }
        out
    }
}
