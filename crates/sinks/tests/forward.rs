//! The forwarder against the real topic log and SQLite store, with a destination that records what
//! it confirmed and fails when told to: order, partial confirms, back-off and recovery, restarts,
//! where new sinks and new topics start, skipped messages, retention holds and the size cap.

use async_trait::async_trait;
use bytes::Bytes;
use ferrocore_core::clock::SystemClock;
use ferrocore_core::sink::{Message, Sink, SinkReport, SinkState};
use ferrocore_core::topics::StoredMessage;
use ferrocore_model::Timestamp;
use ferrocore_sinks::destination::{Destination, Failed, Source, Target};
use ferrocore_sinks::forward::{Forwarders, Settings};
use ferrocore_sinks::log::LogSink;
use ferrocore_sinks::spec::SinkSpec;
use ferrocore_store::sqlite::SqliteStore;
use ferrocore_topiclog::{LogConfig, TopicLog};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the destination does with the next delivery.
#[derive(Debug, Clone)]
enum Next {
    /// Confirm everything.
    Take,
    /// Confirm this many, then fail (transient).
    FailAfter(usize),
    /// Confirm this many, then refuse the next message for good.
    Refuse(usize),
    /// Refuse to open.
    Down,
}

#[derive(Default)]
struct Recorder {
    /// (topic, offset, payload) in the order confirmed.
    got: Mutex<Vec<(String, u64, Bytes)>>,
    script: Mutex<VecDeque<Next>>,
    opens: Mutex<usize>,
}

impl Recorder {
    fn next(&self) -> Next {
        self.script.lock().unwrap().pop_front().unwrap_or(Next::Take)
    }

    fn got(&self) -> Vec<(String, u64, Bytes)> {
        self.got.lock().unwrap().clone()
    }

    fn offsets(&self, topic: &str) -> Vec<u64> {
        self.got().into_iter().filter(|g| g.0 == topic).map(|g| g.1).collect()
    }
}

struct Rec(Arc<Recorder>);

#[async_trait]
impl Destination for Rec {
    async fn open(&self, _url: &url::Url, _source: &Source<'_>) -> Result<Box<dyn Target>, String> {
        *self.0.opens.lock().unwrap() += 1;
        let mut script = self.0.script.lock().unwrap();
        if matches!(script.front(), Some(Next::Down)) {
            script.pop_front();
            return Err("connection refused".into());
        }
        Ok(Box::new(RecTarget(self.0.clone())))
    }
}

struct RecTarget(Arc<Recorder>);

#[async_trait]
impl Target for RecTarget {
    async fn deliver(&mut self, source: &Source<'_>, batch: &[StoredMessage]) -> Result<(), Failed> {
        let next = self.0.next();
        let take = match next {
            Next::Take | Next::Down => batch.len(),
            Next::FailAfter(n) | Next::Refuse(n) => n.min(batch.len()),
        };
        let mut got = self.0.got.lock().unwrap();
        for m in &batch[..take] {
            got.push((source.name.to_owned(), m.offset, m.data.clone()));
        }
        match next {
            Next::FailAfter(n) if n < batch.len() => Err(Failed::after(n, "broker said no")),
            Next::Refuse(n) if n < batch.len() => Err(Failed::permanent(n, "message too large")),
            _ => Ok(()),
        }
    }
}

const T1: &str = "projects/p1/topics/telemetry";
const T2: &str = "projects/p1/topics/state";
const OTHER: &str = "projects/p2/topics/telemetry";

fn fast() -> Settings {
    Settings {
        poll_wait: Duration::from_millis(100),
        discover_every: Duration::from_millis(50),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        batch_messages: 7,
        ..Settings::default()
    }
}

struct Rig {
    log: TopicLog,
    sink: Arc<LogSink>,
    store: Arc<SqliteStore>,
    rec: Arc<Recorder>,
}

impl Rig {
    async fn open(dir: &Path, config: impl FnOnce(LogConfig) -> LogConfig) -> Rig {
        let log = TopicLog::open(config(LogConfig::new(dir.join("topics")))).await.unwrap();
        let store = Arc::new(SqliteStore::open(&dir.join("db")).await.unwrap());
        Rig { sink: Arc::new(LogSink::new(log.clone())), log, store, rec: Arc::new(Recorder::default()) }
    }

    async fn start(&self, topics: &str) -> Forwarders {
        let spec =
            SinkSpec::custom("rec", topics, "http://127.0.0.1:9/{project}/{topic}", Arc::new(Rec(self.rec.clone())))
                .unwrap();
        Forwarders::start(vec![spec], self.sink.clone(), self.store.clone(), Arc::new(SystemClock), fast())
            .await
            .unwrap()
    }

    async fn publish(&self, topic: &str, range: std::ops::Range<u32>) {
        let messages = range
            .map(|i| Message { time: Timestamp::now(), attributes: vec![], data: Bytes::from(format!("m{i}")) })
            .collect();
        self.sink.publish(topic, messages).await.unwrap();
    }

    async fn close(self, f: Forwarders) {
        f.close().await;
        self.log.close().await;
        self.store.close().await;
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn forwards_in_order_from_when_the_sink_was_added_and_new_topics_from_their_start() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::open(dir.path(), |c| c).await;
    // Published before the sink existed: not replayed.
    rig.publish(T1, 0..5).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let f = rig.start("projects/p1/topics/*").await;
    rig.publish(T1, 5..40).await;
    // A topic that appears later, and one the pattern does not take.
    rig.publish(T2, 0..3).await;
    rig.publish(OTHER, 0..3).await;
    until("all arrived", || rig.rec.got().len() == 38).await;
    assert_eq!(rig.rec.offsets(T1), (5..40).collect::<Vec<u64>>());
    assert_eq!(rig.rec.offsets(T2), vec![0, 1, 2]);
    assert!(rig.rec.offsets(OTHER).is_empty());
    assert_eq!(rig.rec.got()[0].2, Bytes::from("m5"));

    let status = f.statuses().await;
    assert_eq!(status.len(), 1);
    let s = &status[0];
    assert_eq!((s.name.as_str(), s.topics.as_str(), s.state), ("rec", "projects/p1/topics/*", SinkState::Ok));
    assert_eq!(s.cursor, vec![(T2.to_owned(), 3), (T1.to_owned(), 40)]);
    assert_eq!((s.lag_messages, s.forwarded_messages, s.lost_messages), (0, 38, 0));
    assert_eq!(s.lag_seconds, 0.0);
    rig.close(f).await;
}

#[tokio::test]
async fn failures_are_retried_from_what_was_confirmed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::open(dir.path(), |c| c).await;
    let f = rig.start(T1).await;
    rig.rec.script.lock().unwrap().extend([Next::FailAfter(3), Next::Down, Next::FailAfter(0), Next::Down, Next::Down]);
    rig.publish(T1, 0..30).await;
    until("all arrived", || rig.rec.got().len() >= 30).await;
    // Exactly once here: partial confirms are never re-sent.
    assert_eq!(rig.rec.offsets(T1), (0..30).collect::<Vec<u64>>());
    assert!(*rig.rec.opens.lock().unwrap() >= 5, "a failed target is reopened");
    let s = f.statuses().await.remove(0);
    assert_eq!(s.state, SinkState::Ok, "recovered");
    assert_eq!(s.last_error.as_deref(), Some("projects/p1/topics/telemetry: connection refused"));

    // A destination that keeps failing: the sink reports retrying, with lag.
    rig.rec.script.lock().unwrap().extend(std::iter::repeat_n(Next::FailAfter(0), 100_000));
    rig.publish(T1, 30..35).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = f.statuses().await.remove(0);
        if s.state == SinkState::Retrying && s.lag_messages == 5 {
            break s;
        }
        assert!(Instant::now() < deadline, "never reported retrying: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(s.lag_seconds >= 0.0);
    rig.rec.script.lock().unwrap().clear();
    until("the rest arrived", || rig.rec.got().len() == 35).await;
    rig.close(f).await;
}

#[tokio::test]
async fn a_restart_resumes_at_the_saved_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::open(dir.path(), |c| c).await;
    let f = rig.start("projects/*/topics/*").await;
    rig.publish(T1, 0..20).await;
    until("all arrived", || rig.rec.got().len() == 20).await;
    rig.close(f).await;

    let rig = Rig::open(dir.path(), |c| c).await;
    rig.publish(T1, 20..25).await;
    rig.publish(OTHER, 0..2).await;
    let f = rig.start("projects/*/topics/*").await;
    until("the rest arrived", || rig.rec.got().len() == 7).await;
    assert_eq!(rig.rec.offsets(T1), vec![20, 21, 22, 23, 24], "nothing re-sent, nothing missed");
    assert_eq!(rig.rec.offsets(OTHER), vec![0, 1], "published after the sink was first added");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.rec.got().len(), 7);
    rig.close(f).await;
}

#[tokio::test]
async fn a_replaced_log_is_followed_back_to_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::open(dir.path(), |c| c).await;
    let f = rig.start(T1).await;
    rig.publish(T1, 0..20).await;
    until("all arrived", || rig.rec.got().len() == 20).await;
    rig.close(f).await;

    // The topic log is gone (restored from elsewhere, say); the store with the cursor is not.
    std::fs::remove_dir_all(dir.path().join("topics")).unwrap();
    let rig = Rig::open(dir.path(), |c| c).await;
    rig.publish(T1, 0..3).await;
    let f = rig.start(T1).await;
    until("the new log's messages arrived", || rig.rec.got().len() == 3).await;
    assert_eq!(rig.rec.offsets(T1), vec![0, 1, 2]);
    rig.close(f).await;
}

#[tokio::test]
async fn a_message_the_destination_never_takes_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::open(dir.path(), |c| c).await;
    let f = rig.start(T1).await;
    rig.rec.script.lock().unwrap().push_back(Next::Refuse(2));
    rig.publish(T1, 0..6).await;
    until("the rest arrived", || rig.rec.got().len() == 5).await;
    assert_eq!(rig.rec.offsets(T1), vec![0, 1, 3, 4, 5]);
    let s = f.statuses().await.remove(0);
    assert_eq!((s.rejected_messages, s.forwarded_messages, s.cursor[0].1), (1, 5, 6));
    rig.close(f).await;
}

#[tokio::test]
async fn retention_keeps_what_a_stalled_sink_has_not_sent_up_to_the_size_cap() {
    let dir = tempfile::tempdir().unwrap();
    // Records age out after 300 ms, but the sink's hold keeps them.
    let rig = Rig::open(dir.path(), |c| LogConfig {
        retention_max_age: Duration::from_millis(300),
        segment_bytes: 400,
        retention_max_bytes: 100_000,
        ..c
    })
    .await;
    let f = rig.start(T1).await;
    rig.rec.script.lock().unwrap().extend(std::iter::repeat_n(Next::Down, 1_000_000));
    rig.publish(T1, 0..40).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    rig.log.enforce_retention().await.unwrap();
    assert_eq!(rig.log.topics()[0].earliest_offset, 0, "held");
    rig.rec.script.lock().unwrap().clear();
    until("all arrived", || rig.rec.got().len() == 40).await;
    // Once forwarded, age retention may take them.
    tokio::time::sleep(Duration::from_millis(400)).await;
    rig.publish(T1, 40..41).await;
    until("the last arrived", || rig.rec.got().len() == 41).await;
    rig.log.enforce_retention().await.unwrap();
    assert!(rig.log.topics()[0].earliest_offset > 0);
    rig.close(f).await;

    // Under a size cap the oldest go even when unsent, and the loss is counted.
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::open(dir.path(), |c| LogConfig { segment_bytes: 400, retention_max_bytes: 1200, ..c }).await;
    let f = rig.start(T1).await;
    rig.publish(T1, 0..1).await;
    until("the first arrived", || rig.rec.got().len() == 1).await;
    rig.rec.script.lock().unwrap().extend(std::iter::repeat_n(Next::FailAfter(0), 1_000_000));
    rig.publish(T1, 1..60).await;
    rig.log.enforce_retention().await.unwrap();
    let earliest = rig.log.topics()[0].earliest_offset;
    assert!(earliest > 0);
    rig.rec.script.lock().unwrap().clear();
    until("the last arrived", || rig.rec.offsets(T1).last() == Some(&59)).await;
    // What the failing batch held in memory still goes; what only the log held is lost, counted.
    let got = rig.rec.offsets(T1);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, once: {got:?}");
    assert!((earliest..60).all(|o| got.contains(&o)), "everything kept arrived: {got:?}");
    let s = f.statuses().await.remove(0);
    assert_eq!(s.lost_messages, 60 - got.len() as u64, "{got:?}");
    assert!(s.lost_messages > 0);
    rig.close(f).await;
}

/// A topic source whose reads are scripted by starting offset, to replay what the real log does
/// only in a race: a read that overlapped retention hands back records older than the earliest
/// offset it reports.
struct ScriptedSource {
    /// Read from offset → (offsets returned, next offset, earliest offset reported).
    reads: Vec<(u64, std::ops::Range<u64>, u64, u64)>,
    end: u64,
    earliest: u64,
}

struct NoHold;

impl ferrocore_core::topics::RetentionHold for NoHold {
    fn advance(&self, _offset: u64) {}
}

#[async_trait]
impl ferrocore_core::topics::TopicSource for ScriptedSource {
    async fn read(
        &self,
        _topic: &str,
        from: ferrocore_core::topics::ReadFrom,
        _max_messages: usize,
        _max_bytes: usize,
        wait: Option<Duration>,
    ) -> Result<ferrocore_core::topics::ReadBatch, ferrocore_core::topics::ReadError> {
        let ferrocore_core::topics::ReadFrom::Offset(from) = from else { panic!("the forwarder reads by offset") };
        let message = |offset| StoredMessage {
            offset,
            time: Timestamp(0),
            attributes: vec![],
            data: Bytes::from(format!("m{offset}")),
        };
        match self.reads.iter().find(|r| r.0 == from) {
            Some((_, offsets, next, earliest)) => Ok(ferrocore_core::topics::ReadBatch {
                messages: offsets.clone().map(message).collect(),
                next_offset: *next,
                earliest_offset: *earliest,
            }),
            None => {
                assert_eq!(from, self.end, "a read from an offset the script does not know");
                tokio::time::sleep(wait.unwrap_or_default().min(Duration::from_millis(20))).await;
                Ok(ferrocore_core::topics::ReadBatch {
                    messages: vec![],
                    next_offset: from,
                    earliest_offset: self.earliest,
                })
            }
        }
    }

    async fn offset_at(&self, _topic: &str, _time: Timestamp) -> Result<u64, ferrocore_core::topics::ReadError> {
        Ok(0)
    }

    fn extent(&self, topic: &str) -> Option<ferrocore_core::topics::TopicExtent> {
        Some(ferrocore_core::topics::TopicExtent {
            name: topic.to_owned(),
            earliest_offset: self.earliest,
            next_offset: self.end,
            bytes: 0,
        })
    }

    fn extents(&self) -> Vec<ferrocore_core::topics::TopicExtent> {
        self.extent(T1).into_iter().collect()
    }

    fn hold(&self, _topic: &str, _offset: u64) -> Box<dyn ferrocore_core::topics::RetentionHold> {
        Box::new(NoHold)
    }
}

#[tokio::test]
async fn records_a_read_returns_below_its_earliest_offset_are_forwarded_not_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
    let source = Arc::new(ScriptedSource {
        reads: vec![
            (0, 0..7, 7, 0),
            // Retention removed 7..34 while this read was under way: it still returns 7..12,
            // and reports the new earliest offset.
            (7, 7..12, 12, 34),
            (12, 34..41, 41, 34),
            (41, 41..60, 60, 34),
        ],
        end: 60,
        earliest: 34,
    });
    let rec = Arc::new(Recorder::default());
    let spec = SinkSpec::custom("rec", T1, "http://127.0.0.1:9/{project}/{topic}", Arc::new(Rec(rec.clone()))).unwrap();
    let f = Forwarders::start(vec![spec], source, store, Arc::new(SystemClock), fast()).await.unwrap();
    until("the last arrived", || rec.offsets(T1).last() == Some(&59)).await;
    let expected: Vec<u64> = (0..12).chain(34..60).collect();
    assert_eq!(rec.offsets(T1), expected, "what each read returned, in order, once");
    let s = f.statuses().await.remove(0);
    assert_eq!((s.lost_messages, s.forwarded_messages, s.cursor[0].1), (22, 38, 60), "only 12..34 were lost");
    f.close().await;
}

/// The log as a node of a cluster sees it: reads are current, but the extent it lists lags
/// behind what other nodes appended (here, frozen at 5 messages).
struct LaggingExtent(Arc<LogSink>);

#[async_trait]
impl ferrocore_core::topics::TopicSource for LaggingExtent {
    async fn read(
        &self,
        topic: &str,
        from: ferrocore_core::topics::ReadFrom,
        max_messages: usize,
        max_bytes: usize,
        wait: Option<Duration>,
    ) -> Result<ferrocore_core::topics::ReadBatch, ferrocore_core::topics::ReadError> {
        self.0.read(topic, from, max_messages, max_bytes, wait).await
    }

    async fn offset_at(&self, topic: &str, time: Timestamp) -> Result<u64, ferrocore_core::topics::ReadError> {
        self.0.offset_at(topic, time).await
    }

    async fn next_offset(&self, topic: &str) -> Result<u64, ferrocore_core::topics::ReadError> {
        ferrocore_core::topics::TopicSource::next_offset(&*self.0, topic).await
    }

    fn extent(&self, topic: &str) -> Option<ferrocore_core::topics::TopicExtent> {
        self.0.extent(topic).map(|mut e| {
            e.next_offset = e.next_offset.min(5);
            e
        })
    }

    fn extents(&self) -> Vec<ferrocore_core::topics::TopicExtent> {
        self.0.extents().into_iter().filter_map(|e| self.extent(&e.name)).collect()
    }

    fn hold(&self, topic: &str, offset: u64) -> Box<dyn ferrocore_core::topics::RetentionHold> {
        self.0.hold(topic, offset)
    }
}

#[tokio::test]
async fn a_lagging_extent_does_not_make_a_caught_up_sink_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::open(dir.path(), |c| c).await;
    rig.publish(T1, 0..5).await;
    let spec = SinkSpec::custom("rec", T1, "http://127.0.0.1:9/x", Arc::new(Rec(rig.rec.clone()))).unwrap();
    let source = Arc::new(LaggingExtent(rig.sink.clone()));
    let f = Forwarders::start(vec![spec], source, rig.store.clone(), Arc::new(SystemClock), fast()).await.unwrap();
    rig.publish(T1, 5..20).await;
    until("all arrived", || rig.rec.got().len() >= 15).await;
    // Several empty polls later (100 ms each), the sink has sent each message once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(rig.rec.offsets(T1), (5..20).collect::<Vec<u64>>());
    rig.close(f).await;
}
