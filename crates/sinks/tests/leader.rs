//! Sinks led by leases: two "nodes" over one topic log and one store, each with the same sink.
//! Exactly one forwards it, the other reports it on standby, and when the forwarding node goes
//! (closed, or its lease lost) the other takes over from the saved cursor.
//!
//! The PostgreSQL test uses real advisory leases and cursors in a database of its own (skipped
//! without a server, except under `CI=true`); the others use an in-memory lease service whose
//! leases the test can revoke or make unreachable.

use async_trait::async_trait;
use bytes::Bytes;
use ferrocore_core::clock::SystemClock;
use ferrocore_core::sink::{Message, Sink, SinkReport, SinkState, SinkStatus};
use ferrocore_core::topics::StoredMessage;
use ferrocore_model::Timestamp;
use ferrocore_sinks::destination::{Destination, Failed, Source, Target};
use ferrocore_sinks::forward::Settings;
use ferrocore_sinks::leader::{Lease, Leases, LedSinks, PgLeases};
use ferrocore_sinks::log::LogSink;
use ferrocore_sinks::spec::SinkSpec;
use ferrocore_store::SinkStore;
use ferrocore_store::postgres::PostgresStore;
use ferrocore_store::postgres::testing::TestDatabase;
use ferrocore_store::sqlite::SqliteStore;
use ferrocore_topiclog::{LogConfig, TopicLog};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "projects/p/topics/telemetry";
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// A destination that records the offsets it confirmed: one per node, to see who forwarded what.
#[derive(Default)]
struct Recorder(Mutex<Vec<u64>>);

impl Recorder {
    fn offsets(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}

struct Rec(Arc<Recorder>);

#[async_trait]
impl Destination for Rec {
    async fn open(&self, _url: &url::Url, _source: &Source<'_>) -> Result<Box<dyn Target>, String> {
        Ok(Box::new(RecTarget(self.0.clone())))
    }
}

struct RecTarget(Arc<Recorder>);

#[async_trait]
impl Target for RecTarget {
    async fn deliver(&mut self, _source: &Source<'_>, batch: &[StoredMessage]) -> Result<(), Failed> {
        self.0.0.lock().unwrap().extend(batch.iter().map(|m| m.offset));
        Ok(())
    }
}

fn fast() -> Settings {
    Settings {
        poll_wait: Duration::from_millis(100),
        discover_every: Duration::from_millis(50),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        ..Settings::default()
    }
}

/// One node: its own recorder and its led sinks, over the shared log and a store.
struct Node {
    rec: Arc<Recorder>,
    sinks: LedSinks,
}

impl Node {
    async fn start(log: &Arc<LogSink>, store: Arc<dyn SinkStore>, leases: Arc<dyn Leases>) -> Node {
        let rec = Arc::new(Recorder::default());
        // The same entry on every node: same name, so the same lease and the same cursors.
        let spec = SinkSpec::custom("rec", TOPIC, "http://127.0.0.1:9/{topic}", Arc::new(Rec(rec.clone()))).unwrap();
        let sinks =
            LedSinks::start(vec![spec], log.clone(), store, Arc::new(SystemClock), fast(), leases, CHECK_EVERY).await;
        Node { rec, sinks }
    }

    async fn status(&self) -> SinkStatus {
        let mut all = self.sinks.statuses().await;
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    async fn state(&self) -> SinkState {
        self.status().await.state
    }
}

async fn publish(log: &LogSink, range: std::ops::Range<u32>) {
    let messages = range
        .map(|i| Message { time: Timestamp::now(), attributes: vec![], data: Bytes::from(format!("m{i}")) })
        .collect();
    log.publish(TOPIC, messages).await.unwrap();
}

/// Polls `cond` until it holds, for at most `within`; answers how long it took.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < within, "timed out after {within:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn open_log(dir: &std::path::Path) -> (TopicLog, Arc<LogSink>) {
    let log = TopicLog::open(LogConfig::new(dir.join("topics"))).await.unwrap();
    let sink = Arc::new(LogSink::new(log.clone()));
    (log, sink)
}

#[tokio::test]
async fn one_node_forwards_a_sink_and_the_other_takes_over_from_its_cursor_on_postgres() {
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (log, sink) = open_log(dir.path()).await;
    // A pool per node, as two processes would have.
    let store_a = Arc::new(PostgresStore::open(&db.url()).await.unwrap());
    let store_b = Arc::new(PostgresStore::open(&db.url()).await.unwrap());
    let leases = || Arc::new(PgLeases::new(db.url(), "ferrocore-sink/test")) as Arc<dyn Leases>;

    let a = Node::start(&sink, store_a.clone(), leases()).await;
    let b = Node::start(&sink, store_b.clone(), leases()).await;
    assert_eq!(a.state().await, SinkState::Ok, "the first node took the lease");
    let standby = b.status().await;
    assert_eq!(standby.state, SinkState::Standby);
    assert_eq!((standby.name.as_str(), standby.topics.as_str()), ("rec", TOPIC));
    assert_eq!((standby.forwarded_messages, standby.cursor.len()), (0, 0));

    publish(&sink, 0..10).await;
    until("the leader forwarded", Duration::from_secs(10), || async { a.rec.offsets().len() >= 10 }).await;
    assert_eq!(a.rec.offsets(), (0..10).collect::<Vec<u64>>());
    // A few lease checks later, still one forwarder.
    tokio::time::sleep(CHECK_EVERY * 3).await;
    assert_eq!(b.state().await, SinkState::Standby);
    assert!(b.rec.offsets().is_empty(), "the standby node forwarded nothing");

    // The leader goes; what is appended meanwhile is forwarded by the other, from the saved cursor.
    a.sinks.close().await;
    assert_eq!(a.state().await, SinkState::Stopped);
    publish(&sink, 10..20).await;
    let took =
        until("the other node took over", Duration::from_secs(10), || async { b.rec.offsets().len() >= 10 }).await;
    assert!(took < CHECK_EVERY * 10, "takeover took {took:?}");
    assert_eq!(b.rec.offsets(), (10..20).collect::<Vec<u64>>(), "resumed at the leader's cursor, nothing twice");
    let s = b.status().await;
    assert_eq!((s.state, s.cursor.clone()), (SinkState::Ok, vec![(TOPIC.to_owned(), 20)]));
    // The cursor is the store's, under the sink's plain name.
    until("the cursor was saved", Duration::from_secs(5), || async {
        let (_, cursors) = store_a.open_sink("rec", Timestamp::now()).await.unwrap();
        cursors.iter().map(|c| (c.topic.clone(), c.next_offset)).collect::<Vec<_>>() == vec![(TOPIC.to_owned(), 20)]
    })
    .await;

    b.sinks.close().await;
    log.close().await;
    store_a.close().await;
    store_b.close().await;
}

/// Leases in memory; the test can end a holder's lease behind its back (its session ended, as
/// the database does when the holder is cut off) or make the service unreachable.
#[derive(Default)]
struct FakeLeases {
    holders: Mutex<HashMap<String, u64>>,
    issued: Mutex<u64>,
    down: Mutex<bool>,
}

impl FakeLeases {
    fn revoke_all(&self) {
        self.holders.lock().unwrap().clear();
    }

    fn set_down(&self, down: bool) {
        *self.down.lock().unwrap() = down;
    }
}

struct Handle(Arc<FakeLeases>);

#[async_trait]
impl Leases for Handle {
    async fn try_acquire(&self, name: &str) -> Result<Option<Box<dyn Lease>>, String> {
        if *self.0.down.lock().unwrap() {
            return Err("connection refused".into());
        }
        let mut holders = self.0.holders.lock().unwrap();
        if holders.contains_key(name) {
            return Ok(None);
        }
        let mut issued = self.0.issued.lock().unwrap();
        *issued += 1;
        holders.insert(name.to_owned(), *issued);
        Ok(Some(Box::new(FakeLease { leases: self.0.clone(), name: name.to_owned(), id: *issued })))
    }
}

struct FakeLease {
    leases: Arc<FakeLeases>,
    name: String,
    id: u64,
}

#[async_trait]
impl Lease for FakeLease {
    async fn alive(&mut self) -> bool {
        !*self.leases.down.lock().unwrap() && self.leases.holders.lock().unwrap().get(&self.name) == Some(&self.id)
    }

    async fn release(self: Box<Self>) {}
}

impl Drop for FakeLease {
    /// Like a closed connection: the lease is free once its holder lets go of it.
    fn drop(&mut self) {
        let mut holders = self.leases.holders.lock().unwrap();
        if holders.get(&self.name) == Some(&self.id) {
            holders.remove(&self.name);
        }
    }
}

#[tokio::test]
async fn a_node_that_loses_its_lease_stops_forwarding_and_one_node_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (log, sink) = open_log(dir.path()).await;
    let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
    let fake = Arc::new(FakeLeases::default());
    let a = Node::start(&sink, store.clone(), Arc::new(Handle(fake.clone()))).await;
    let b = Node::start(&sink, store.clone(), Arc::new(Handle(fake.clone()))).await;
    assert_eq!((a.state().await, b.state().await), (SinkState::Ok, SinkState::Standby));
    publish(&sink, 0..5).await;
    until("the leader forwarded", Duration::from_secs(10), || async { a.rec.offsets().len() >= 5 }).await;

    // The leader's lease ends behind its back: within a check it stops, and one node (either) leads.
    fake.revoke_all();
    until("the leader noticed", Duration::from_secs(5), || async { a.state().await == SinkState::Standby }).await;
    until("one node leads again", Duration::from_secs(5), || async {
        let states = [a.state().await, b.state().await];
        states.iter().filter(|s| **s == SinkState::Ok).count() == 1
            && states.iter().filter(|s| **s == SinkState::Standby).count() == 1
    })
    .await;
    publish(&sink, 5..15).await;
    until("everything was forwarded", Duration::from_secs(10), || async {
        let mut all: Vec<u64> = a.rec.offsets().into_iter().chain(b.rec.offsets()).collect();
        all.sort_unstable();
        all.dedup();
        all == (0..15).collect::<Vec<u64>>()
    })
    .await;

    a.sinks.close().await;
    b.sinks.close().await;
    assert_eq!((a.state().await, b.state().await), (SinkState::Stopped, SinkState::Stopped));
    assert!(fake.holders.lock().unwrap().is_empty(), "closing gave the lease up");
    log.close().await;
    store.close().await;
}

#[tokio::test]
async fn an_unreachable_lease_service_keeps_the_sink_on_standby_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (log, sink) = open_log(dir.path()).await;
    let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
    let fake = Arc::new(FakeLeases::default());
    fake.set_down(true);
    let a = Node::start(&sink, store.clone(), Arc::new(Handle(fake.clone()))).await;
    assert_eq!(a.state().await, SinkState::Standby, "start does not wait for the lease service");
    fake.set_down(false);
    until("leading once the lease is taken", Duration::from_secs(5), || async { a.state().await == SinkState::Ok })
        .await;
    publish(&sink, 0..3).await;
    until("forwarded", Duration::from_secs(5), || async { a.rec.offsets().len() >= 3 }).await;

    // Losing the service while leading stops forwarding: the node can no longer know it is alone.
    fake.set_down(true);
    until("stopped forwarding", Duration::from_secs(5), || async { a.state().await == SinkState::Standby }).await;
    publish(&sink, 3..6).await;
    tokio::time::sleep(CHECK_EVERY * 2).await;
    assert_eq!(a.rec.offsets(), vec![0, 1, 2], "nothing forwarded without the lease");

    // Back: resumes from the saved cursor.
    fake.set_down(false);
    until("resumed", Duration::from_secs(5), || async { a.rec.offsets().len() >= 6 }).await;
    assert_eq!(a.rec.offsets(), (0..6).collect::<Vec<u64>>());
    a.sinks.close().await;
    log.close().await;
    store.close().await;
}
