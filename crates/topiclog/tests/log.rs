//! Behaviour of the topic log through its public API: round trips, offsets, group commit,
//! long-poll, retention, recovery from damaged tails, limits and shutdown.

use bytes::Bytes;
use ferrocore_topiclog::{LogConfig, LogError, NewRecord, ReadFrom, Record, TopicLog};
use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOPIC: &str = "projects/p1/topics/telemetry";

fn rec(payload: impl Into<Vec<u8>>) -> NewRecord {
    NewRecord { timestamp_nanos: now_nanos(), attributes: Vec::new(), payload: Bytes::from(payload.into()) }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos() as i64
}

fn config(dir: &Path) -> LogConfig {
    LogConfig::new(dir)
}

async fn read_all(log: &TopicLog, topic: &str) -> Vec<Record> {
    let mut out = Vec::new();
    let mut from = ReadFrom::Earliest;
    loop {
        let r = log.read(topic, from, 1000, usize::MAX, None).await.expect("read");
        if r.records.is_empty() {
            return out;
        }
        out.extend(r.records);
        from = ReadFrom::Offset(r.next_offset);
    }
}

/// Returns once `n` reads are blocked waiting on `log`: registered for the wake-up, so whatever
/// the test appends next reaches them. Bounded, so a reader that never gets there fails the test
/// instead of hanging it.
async fn until_readers_wait(log: &TopicLog, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.waiting_readers() < n {
        assert!(Instant::now() < deadline, "{n} reader(s) should be waiting, {} are", log.waiting_readers());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Segment files of a topic, oldest first.
fn segment_files(root: &Path, project: &str, topic: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(project).join(topic))
        .expect("topic dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn round_trip_with_attributes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    let records = vec![
        NewRecord {
            timestamp_nanos: 1_700_000_000_123_456_789,
            attributes: vec![("deviceId".into(), "dev-1".into()), ("subFolder".into(), "a/b".into())],
            payload: Bytes::from_static(b"{\"t\":21.5}"),
        },
        NewRecord { timestamp_nanos: -5, attributes: vec![("k".into(), String::new())], payload: Bytes::new() },
        NewRecord { timestamp_nanos: 7, attributes: Vec::new(), payload: Bytes::from(vec![0u8; 70_000]) },
    ];
    assert_eq!(log.append(TOPIC, records.clone()).await.expect("append"), vec![0, 1, 2]);
    assert_eq!(log.append(TOPIC, vec![rec("x")]).await.expect("append"), vec![3]);
    assert_eq!(log.append(TOPIC, Vec::new()).await.expect("empty append"), Vec::<u64>::new());

    let r = log.read(TOPIC, ReadFrom::Earliest, 10, usize::MAX, None).await.expect("read");
    assert_eq!(r.next_offset, 4);
    assert_eq!(r.earliest_offset, 0);
    assert_eq!(r.records.len(), 4);
    for (i, (got, want)) in r.records.iter().zip(&records).enumerate() {
        assert_eq!(got.offset, i as u64);
        assert_eq!(got.timestamp_nanos, want.timestamp_nanos);
        assert_eq!(got.attributes, want.attributes);
        assert_eq!(got.payload, want.payload);
    }
    let r = log.read(TOPIC, ReadFrom::Offset(1), 1, usize::MAX, None).await.expect("read");
    assert_eq!(r.records.len(), 1);
    assert_eq!(r.records[0].offset, 1);
    assert_eq!(r.next_offset, 2);

    let info = log.topics();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].name, TOPIC);
    assert_eq!((info[0].earliest_offset, info[0].next_offset), (0, 4));
    assert!(info[0].bytes > 70_000);
    log.close().await;
}

#[tokio::test]
async fn read_limits_and_unknown_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    // Reading a topic that was never written is not an error: it is empty.
    let r = log.read(TOPIC, ReadFrom::Earliest, 10, 1000, None).await.expect("read");
    assert_eq!((r.records.len(), r.next_offset, r.earliest_offset), (0, 0, 0));
    assert!(log.topics().is_empty(), "reads do not create topics");

    let offsets = log.append(TOPIC, (0..10).map(|i| rec(vec![i as u8; 100])).collect()).await.expect("append");
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    let r = log.read(TOPIC, ReadFrom::Earliest, 3, usize::MAX, None).await.expect("read");
    assert_eq!(r.records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(r.next_offset, 3);
    let r = log.read(TOPIC, ReadFrom::Offset(3), 100, 250, None).await.expect("read");
    assert_eq!(r.records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![3, 4], "250 bytes hold two records");
    // A record larger than max_bytes still comes back alone, or the consumer would be stuck.
    let r = log.read(TOPIC, ReadFrom::Offset(5), 100, 10, None).await.expect("read");
    assert_eq!(r.records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![5]);
    // max_records 0 is treated as 1.
    let r = log.read(TOPIC, ReadFrom::Offset(6), 0, usize::MAX, None).await.expect("read");
    assert_eq!(r.records.len(), 1);
    // Past the end: nothing, and the cursor stays where it was asked to be.
    let r = log.read(TOPIC, ReadFrom::Offset(50), 10, usize::MAX, None).await.expect("read");
    assert!(r.records.is_empty());
    assert_eq!(r.next_offset, 50);
    let r = log.read(TOPIC, ReadFrom::Latest, 10, usize::MAX, None).await.expect("read");
    assert!(r.records.is_empty());
    assert_eq!(r.next_offset, 10);
    log.close().await;
}

#[tokio::test]
async fn offsets_stay_contiguous_across_segment_rolls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig { segment_bytes: 300, ..config(dir.path()) };
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    let mut expected = Vec::new();
    for batch in 0..20u64 {
        let records: Vec<NewRecord> =
            (0..(batch % 4 + 1)).map(|i| rec(format!("b{batch}-r{i}-{}", "x".repeat(40)))).collect();
        let offsets = log.append(TOPIC, records.clone()).await.expect("append");
        let first = expected.len() as u64;
        assert_eq!(offsets, (first..first + records.len() as u64).collect::<Vec<_>>());
        expected.extend(records);
    }
    // One record larger than a whole segment still gets its own segment.
    let big = rec(vec![b'B'; 1000]);
    assert_eq!(log.append(TOPIC, vec![big.clone()]).await.expect("append"), vec![expected.len() as u64]);
    expected.push(big);

    let files = segment_files(dir.path(), "p1", "telemetry");
    assert!(files.len() > 10, "tiny segments must roll often, got {}", files.len());
    let check = |got: Vec<Record>| {
        assert_eq!(got.len(), expected.len());
        for (i, (g, w)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g.offset, i as u64);
            assert_eq!(g.payload, w.payload);
        }
    };
    check(read_all(&log, TOPIC).await);
    // Reads starting in the middle of any segment.
    for start in 0..expected.len() as u64 {
        let r = log.read(TOPIC, ReadFrom::Offset(start), 5, usize::MAX, None).await.expect("read");
        assert_eq!(r.records[0].offset, start);
        assert!(r.records.windows(2).all(|w| w[1].offset == w[0].offset + 1));
    }
    log.close().await;

    let log = TopicLog::open(cfg).await.expect("reopen");
    check(read_all(&log, TOPIC).await);
    assert_eq!(log.append(TOPIC, vec![rec("after")]).await.expect("append"), vec![expected.len() as u64]);
    log.close().await;
}

/// Reads start at a recent commit's end when they can (a consumer at the tail), else at the sparse
/// index: from every offset of a segment several index intervals long, whether its commit end is
/// still remembered or long forgotten, and after a reopen, each read starts exactly there.
#[tokio::test]
async fn reads_from_any_offset_of_a_long_segment_with_many_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    let mut n = 0u64;
    // 400 commits of 1-3 records of 1 KiB: about 800 KiB, six index intervals, far more commits
    // than the log remembers the ends of.
    for batch in 0..400u64 {
        let records: Vec<NewRecord> =
            (0..batch % 3 + 1).map(|i| rec(format!("{batch}-{i}-{}", "y".repeat(1024)))).collect();
        let offsets = log.append(TOPIC, records.clone()).await.expect("append");
        assert_eq!(offsets[0], n);
        n += records.len() as u64;
        // A consumer following the tail reads what this commit added.
        let r = log.read(TOPIC, ReadFrom::Offset(offsets[0]), 10, usize::MAX, None).await.expect("read");
        assert_eq!(r.records.iter().map(|r| r.offset).collect::<Vec<_>>(), offsets);
        assert_eq!(
            r.records.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
            records.into_iter().map(|r| r.payload).collect::<Vec<_>>()
        );
    }
    assert_eq!(segment_files(dir.path(), "p1", "telemetry").len(), 1, "one segment");
    let check = |log: TopicLog| async move {
        for start in 0..n {
            let r = log.read(TOPIC, ReadFrom::Offset(start), 2, usize::MAX, None).await.expect("read");
            assert_eq!(r.records[0].offset, start, "read from {start}");
            assert!(r.records.windows(2).all(|w| w[1].offset == w[0].offset + 1));
        }
        log
    };
    let log = check(log).await;
    log.close().await;
    let log = TopicLog::open(cfg).await.expect("reopen");
    let r = log.read(TOPIC, ReadFrom::Offset(n), 10, usize::MAX, None).await.expect("read");
    assert!(r.records.is_empty());
    assert_eq!(log.append(TOPIC, vec![rec("after")]).await.expect("append"), vec![n]);
    let r = log.read(TOPIC, ReadFrom::Offset(n), 10, usize::MAX, None).await.expect("read");
    assert_eq!((r.records.len(), r.records[0].offset, &r.records[0].payload[..]), (1, n, &b"after"[..]));
    let log = check(log).await;
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_unique_gap_free_ordered_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(LogConfig { segment_bytes: 64 * 1024, ..config(dir.path()) }).await.expect("open");
    const TASKS: usize = 50;
    const PER_TASK: usize = 200;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for seq in 0..PER_TASK {
                // Some appends carry several records, which must stay contiguous.
                let n = if seq % 10 == 0 { 3 } else { 1 };
                let records = (0..n).map(|i| rec(format!("{task}:{seq}:{i}"))).collect();
                let got = log.append(TOPIC, records).await.expect("append");
                assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "one append's offsets are contiguous");
                offsets.extend(got);
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        let offsets = h.await.expect("task");
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "a task's appends are ordered");
        all.extend(offsets);
    }
    let total = TASKS * (PER_TASK + PER_TASK / 10 * 2);
    assert_eq!(all.len(), total);
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), total, "offsets are unique");
    assert_eq!(unique, (0..total as u64).collect(), "offsets have no gaps");

    // The log holds every task's records in that task's order.
    let records = read_all(&log, TOPIC).await;
    assert_eq!(records.len(), total);
    let mut last_seen = vec![None::<(usize, usize)>; TASKS];
    for r in &records {
        let text = std::str::from_utf8(&r.payload).expect("utf8");
        let mut parts = text.split(':').map(|p| p.parse::<usize>().expect("number"));
        let (task, seq, i) = (parts.next().expect("task"), parts.next().expect("seq"), parts.next().expect("i"));
        assert!(last_seen[task] < Some((seq, i)), "task {task} out of order at {text}");
        last_seen[task] = Some((seq, i));
    }
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    let before = log.sync_count();
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..100 {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            for seq in 0..100 {
                log.append(TOPIC, vec![rec(format!("{task}-{seq}"))]).await.expect("append");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let syncs = log.sync_count() - before;
    println!("10,000 appends from 100 tasks: {syncs} fsyncs in {:?}", started.elapsed());
    assert!(syncs < 1_000, "group commit should batch: {syncs} fsyncs for 10,000 appends");
    assert_eq!(log.topics()[0].next_offset, 10_000);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_with_wait_sees_only_new_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    log.append(TOPIC, vec![rec("old-0"), rec("old-1")]).await.expect("append");

    // Nothing new: times out empty, not earlier than asked.
    let started = Instant::now();
    let r = log.read(TOPIC, ReadFrom::Latest, 10, usize::MAX, Some(Duration::from_millis(200))).await.expect("read");
    assert!(r.records.is_empty());
    assert_eq!(r.next_offset, 2);
    assert!(started.elapsed() >= Duration::from_millis(190));

    // Something appended while waiting: returned as soon as it is durable.
    let reader = {
        let log = log.clone();
        tokio::spawn(
            async move { log.read(TOPIC, ReadFrom::Latest, 10, usize::MAX, Some(Duration::from_secs(10))).await },
        )
    };
    until_readers_wait(&log, 1).await;
    let started = Instant::now();
    log.append(TOPIC, vec![rec("new-2")]).await.expect("append");
    let r = reader.await.expect("task").expect("read");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.records.len(), 1);
    assert_eq!((r.records[0].offset, &r.records[0].payload[..]), (2, &b"new-2"[..]));
    assert_eq!(r.next_offset, 3);

    // Waiting at an explicit tail offset works the same way.
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            log.read(TOPIC, ReadFrom::Offset(3), 10, usize::MAX, Some(Duration::from_secs(10))).await
        })
    };
    until_readers_wait(&log, 1).await;
    log.append(TOPIC, vec![rec("new-3")]).await.expect("append");
    assert_eq!(reader.await.expect("task").expect("read").records[0].offset, 3);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_topic_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    let r = log.read(TOPIC, ReadFrom::Latest, 10, usize::MAX, Some(Duration::from_millis(100))).await.expect("read");
    assert!(r.records.is_empty());
    let reader = {
        let log = log.clone();
        tokio::spawn(
            async move { log.read(TOPIC, ReadFrom::Latest, 10, usize::MAX, Some(Duration::from_secs(10))).await },
        )
    };
    until_readers_wait(&log, 1).await;
    log.append(TOPIC, vec![rec("first")]).await.expect("append");
    let r = reader.await.expect("task").expect("read");
    assert_eq!(r.records.len(), 1);
    assert_eq!(r.records[0].offset, 0);
    log.close().await;
}

#[tokio::test]
async fn retention_by_bytes_keeps_the_newest_and_the_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig { segment_bytes: 1024, retention_max_bytes: 4096, ..config(dir.path()) };
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    for i in 0..200 {
        log.append(TOPIC, vec![rec(format!("{i:04}-{}", "y".repeat(96)))]).await.expect("append");
    }
    let before = log.topics()[0].clone();
    assert!(before.bytes > 16 * 1024);
    log.enforce_retention().await.expect("retention");
    let after = log.topics()[0].clone();
    assert!(after.bytes <= 4096, "trimmed to the limit: {}", after.bytes);
    assert!(after.bytes > 4096 - 1024 - 200, "no more than needed was deleted: {}", after.bytes);
    assert_eq!(after.next_offset, 200);
    assert!(after.earliest_offset > 150);

    // A reader below retention resumes at the earliest offset and is told so.
    let r = log.read(TOPIC, ReadFrom::Offset(0), 1, usize::MAX, None).await.expect("read");
    assert_eq!(r.earliest_offset, after.earliest_offset);
    assert_eq!(r.records[0].offset, after.earliest_offset);
    let kept = read_all(&log, TOPIC).await;
    assert_eq!(kept.len() as u64, 200 - after.earliest_offset);
    assert_eq!(kept.last().map(|r| r.offset), Some(199));
    assert_eq!(segment_files(dir.path(), "p1", "telemetry").len(), (after.bytes as usize).div_ceil(1024).max(1));

    // The active segment survives even when it alone exceeds the limit.
    let tight = LogConfig { segment_bytes: 1 << 20, retention_max_bytes: 10, ..cfg };
    log.close().await;
    let log = TopicLog::open(tight).await.expect("reopen");
    log.append(TOPIC, vec![rec("z".repeat(2000))]).await.expect("append");
    log.enforce_retention().await.expect("retention");
    let info = log.topics()[0].clone();
    assert_eq!(info.next_offset, 201);
    assert_eq!(segment_files(dir.path(), "p1", "telemetry").len(), 1, "everything but the active segment went");
    assert!(info.earliest_offset > after.earliest_offset && info.earliest_offset <= 200);
    assert_eq!(read_all(&log, TOPIC).await.len() as u64, 201 - info.earliest_offset);
    log.close().await;
}

const HOUR: i64 = 3_600_000_000_000;

/// 30 records three hours older than `base`, then 30 stamped `base`; about 4 records a segment.
/// `base` lies in the future so that the background task (real clock) never expires anything.
async fn write_aged(dir: &Path, base: i64) -> (TopicLog, LogConfig) {
    let cfg = LogConfig { segment_bytes: 500, retention_max_age: Duration::from_secs(3600), ..config(dir) };
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    let stamped = |ts: i64, i: usize| NewRecord {
        timestamp_nanos: ts,
        attributes: Vec::new(),
        payload: Bytes::from(vec![i as u8; 100]),
    };
    for i in 0..30 {
        log.append(TOPIC, vec![stamped(base - 3 * HOUR, i)]).await.expect("append");
    }
    for i in 30..60 {
        log.append(TOPIC, vec![stamped(base, i)]).await.expect("append");
    }
    (log, cfg)
}

#[tokio::test]
async fn retention_by_age_uses_the_newest_record_of_each_segment() {
    let base = now_nanos() + 100 * HOUR;
    // Half an hour after `base` the recent records are still younger than the limit.
    let later = base + HOUR / 2;

    // Live: the writer told the topic each segment's newest timestamp.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = write_aged(dir.path(), base).await;
    log.enforce_retention_at(later).await.expect("retention");
    let info = log.topics()[0].clone();
    assert!(info.earliest_offset <= 30, "no recent record may go: earliest {}", info.earliest_offset);
    assert!(info.earliest_offset >= 24, "old segments went: earliest {}", info.earliest_offset);
    let kept = read_all(&log, TOPIC).await;
    assert_eq!(kept.iter().filter(|r| r.timestamp_nanos == base).count(), 30);
    log.close().await;

    // After a reopen sealed segments are scanned lazily for their age, with the same outcome.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let (log, cfg) = write_aged(dir2.path(), base).await;
    log.close().await;
    let log = TopicLog::open(cfg).await.expect("reopen");
    assert_eq!(log.topics()[0].earliest_offset, 0);
    log.enforce_retention_at(later).await.expect("retention");
    assert_eq!(log.topics()[0].earliest_offset, info.earliest_offset);

    // Much later everything but the active segment expires.
    log.enforce_retention_at(base + 10 * HOUR).await.expect("retention");
    let info = log.topics()[0].clone();
    assert_eq!(segment_files(dir2.path(), "p1", "telemetry").len(), 1);
    assert!(info.earliest_offset > 50 && info.next_offset == 60);
    log.close().await;
}

#[tokio::test]
async fn holds_keep_records_from_age_retention_but_not_from_the_size_cap() {
    let base = now_nanos() + 100 * HOUR;
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = write_aged(dir.path(), base).await;
    // A hold placed before the topic's first record (a forwarder that has sent nothing yet)
    // keeps every record, however old.
    let hold = log.hold(TOPIC, 0);
    let other = log.hold(TOPIC, 40);
    log.enforce_retention_at(base + 10 * HOUR).await.expect("retention");
    assert_eq!(log.topics()[0].earliest_offset, 0, "the lowest hold wins");

    // As the holder advances, what it passed may expire, and nothing it has not.
    hold.advance(10);
    log.enforce_retention_at(base + 10 * HOUR).await.expect("retention");
    let earliest = log.topics()[0].earliest_offset;
    assert!(earliest > 0 && earliest <= 10, "expired up to the hold's segment: {earliest}");

    // Released holds hold nothing.
    drop(hold);
    drop(other);
    log.enforce_retention_at(base + 10 * HOUR).await.expect("retention");
    assert!(log.topics()[0].earliest_offset > 50);

    // The size cap deletes held records all the same.
    log.close().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(LogConfig { retention_max_bytes: 1500, segment_bytes: 500, ..config(dir.path()) })
        .await
        .expect("open");
    let _hold = log.hold(TOPIC, 0);
    for i in 0..40 {
        log.append(TOPIC, vec![rec(format!("{i:04}-{}", "y".repeat(96)))]).await.expect("append");
    }
    log.enforce_retention_at(base).await.expect("retention");
    let info = log.topics()[0].clone();
    assert!(info.bytes <= 1500 && info.earliest_offset > 0, "{info:?}");
    log.close().await;
}

#[tokio::test]
async fn background_retention_rolls_and_expires_quiet_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    // With a short max age the active segment is rolled by age on the next append, and the
    // background task (every max_age / 4) deletes what expired without anyone asking.
    let cfg = LogConfig { retention_max_age: Duration::from_millis(400), ..config(dir.path()) };
    let log = TopicLog::open(cfg).await.expect("open");
    log.append(TOPIC, vec![rec("a"), rec("b")]).await.expect("append");
    tokio::time::sleep(Duration::from_millis(500)).await;
    log.append(TOPIC, vec![rec("c")]).await.expect("append");
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.topics()[0].earliest_offset != 2 {
        assert!(Instant::now() < deadline, "background retention did not run: {:?}", log.topics());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read_all(&log, TOPIC).await.len(), 1);
    log.close().await;
}

async fn write_three_and_close(dir: &Path) -> PathBuf {
    let log = TopicLog::open(config(dir)).await.expect("open");
    for i in 0..3 {
        log.append(TOPIC, vec![rec(format!("record-{i}"))]).await.expect("append");
    }
    log.close().await;
    segment_files(dir, "p1", "telemetry").pop().expect("a segment")
}

async fn assert_recovered_three(dir: &Path, segment: &Path, expected_len: u64) {
    let log = TopicLog::open(config(dir)).await.expect("reopen");
    let records = read_all(&log, TOPIC).await;
    assert_eq!(records.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), vec!["record-0", "record-1", "record-2"]);
    assert_eq!(std::fs::metadata(segment).expect("segment").len(), expected_len, "tail truncated");
    assert_eq!(log.append(TOPIC, vec![rec("record-3")]).await.expect("append"), vec![3], "offsets continue");
    assert_eq!(read_all(&log, TOPIC).await.len(), 4);
    log.close().await;
}

#[tokio::test]
async fn recovery_truncates_a_garbage_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = write_three_and_close(dir.path()).await;
    let good_len = std::fs::metadata(&segment).expect("segment").len();
    let mut f = OpenOptions::new().append(true).open(&segment).expect("open segment");
    f.write_all(&[
        0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
    ])
    .expect("garbage");
    drop(f);
    assert_recovered_three(dir.path(), &segment, good_len).await;
}

#[tokio::test]
async fn recovery_truncates_a_record_cut_in_half() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = write_three_and_close(dir.path()).await;
    let good_len = std::fs::metadata(&segment).expect("segment").len();
    // Append a fourth record, then cut it mid-way as a crash during its write would.
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    log.append(TOPIC, vec![rec("record-3-will-be-torn")]).await.expect("append");
    log.close().await;
    let full_len = std::fs::metadata(&segment).expect("segment").len();
    OpenOptions::new().write(true).open(&segment).expect("open").set_len((good_len + full_len) / 2).expect("truncate");
    assert_recovered_three(dir.path(), &segment, good_len).await;
}

#[tokio::test]
async fn recovery_drops_a_record_with_a_bad_crc_and_everything_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = write_three_and_close(dir.path()).await;
    let good_len = std::fs::metadata(&segment).expect("segment").len();
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    log.append(TOPIC, vec![rec("record-3-bitrot"), rec("record-4-after")]).await.expect("append");
    log.close().await;
    // Flip one payload byte of record 3; record 4 is intact but cannot be trusted to follow.
    let mut bytes = std::fs::read(&segment).expect("read");
    let at = good_len as usize + 40;
    bytes[at] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("write");
    assert_recovered_three(dir.path(), &segment, good_len).await;
}

#[tokio::test]
async fn recovery_repairs_a_segment_created_just_before_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = write_three_and_close(dir.path()).await;
    // A roll created the next file, then the process died before its header reached the disk.
    let next = segment.with_file_name("00000000000000000003.log");
    std::fs::File::create(&next).expect("empty segment");
    let log = TopicLog::open(config(dir.path())).await.expect("reopen");
    assert_eq!(read_all(&log, TOPIC).await.len(), 3);
    assert_eq!(log.append(TOPIC, vec![rec("record-3")]).await.expect("append"), vec![3]);
    assert_eq!(read_all(&log, TOPIC).await.len(), 4);
    log.close().await;
    assert!(std::fs::metadata(&next).expect("segment").len() > 32);
}

#[tokio::test]
async fn damage_inside_a_sealed_segment_skips_to_the_next_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig { segment_bytes: 1024, ..config(dir.path()) };
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    for i in 0..40 {
        log.append(TOPIC, vec![rec(format!("{i:03}-{}", "s".repeat(100)))]).await.expect("append");
    }
    log.close().await;
    let files = segment_files(dir.path(), "p1", "telemetry");
    assert!(files.len() >= 4);
    // Rot one byte in the middle of the second segment; open only repairs the last one.
    let victim = &files[1];
    let mut bytes = std::fs::read(victim).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(victim, &bytes).expect("write");
    let second_base: u64 = victim.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("base");
    let third_base: u64 = files[2].file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("base");

    let log = TopicLog::open(cfg).await.expect("reopen");
    let records = read_all(&log, TOPIC).await;
    let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
    // Everything outside the damaged segment is there, in order; inside it, the records before
    // the damage are, and reading moves on to the next segment instead of failing forever.
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    for o in (0..second_base).chain(third_base..40) {
        assert!(offsets.contains(&o), "offset {o} missing: {offsets:?}");
    }
    assert!(offsets.contains(&second_base), "records before the damage are kept");
    assert!(offsets.len() < 40);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_consumer_sees_every_record_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(LogConfig { segment_bytes: 8 * 1024, ..config(dir.path()) }).await.expect("open");
    const TOTAL: u64 = 3000;
    let consumer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut from = ReadFrom::Earliest;
            while (got.len() as u64) < TOTAL {
                let r = log.read(TOPIC, from, 64, usize::MAX, Some(Duration::from_secs(10))).await.expect("read");
                assert!(!r.records.is_empty(), "long-poll timed out with {} of {TOTAL}", got.len());
                got.extend(r.records.iter().map(|r| r.offset));
                from = ReadFrom::Offset(r.next_offset);
            }
            got
        })
    };
    let mut producers = Vec::new();
    for p in 0..10 {
        let log = log.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..TOTAL / 10 {
                log.append(TOPIC, vec![rec(format!("{p}-{i}"))]).await.expect("append");
            }
        }));
    }
    for p in producers {
        p.await.expect("producer");
    }
    let got = tokio::time::timeout(Duration::from_secs(30), consumer).await.expect("consumer finished").expect("task");
    assert_eq!(got, (0..TOTAL).collect::<Vec<_>>());
    log.close().await;
}

#[tokio::test]
async fn reopen_preserves_every_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig { segment_bytes: 4096, ..config(dir.path()) };
    let names = ["projects/p1/topics/telemetry", "projects/p1/topics/state", "projects/other.org:p/topics/a.b~c+d%e"];
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    for (n, name) in names.iter().enumerate() {
        for i in 0..(50 * (n + 1)) {
            let r = NewRecord {
                timestamp_nanos: now_nanos() + i as i64,
                attributes: vec![("i".into(), i.to_string())],
                payload: Bytes::from(format!("{name}/{i}/{}", "p".repeat(i))),
            };
            log.append(name, vec![r]).await.expect("append");
        }
    }
    let infos = log.topics();
    let mut contents = Vec::new();
    for name in names {
        contents.push(read_all(&log, name).await);
    }
    log.close().await;
    // Stray files and directories in the log directory are ignored, not misread.
    std::fs::create_dir_all(dir.path().join("not-a-project").join("x")).expect("stray dir");
    std::fs::write(dir.path().join("p1").join("telemetry").join("notes.txt"), b"hi").expect("stray file");

    let log = TopicLog::open(cfg).await.expect("reopen");
    assert_eq!(log.topics(), infos);
    for (name, want) in names.iter().zip(contents) {
        assert_eq!(read_all(&log, name).await, want);
    }
    log.close().await;
}

#[tokio::test]
async fn reads_from_the_middle_of_large_segments_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig { segment_bytes: 2 << 20, ..config(dir.path()) };
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    // ~6 MiB: several segments, each with many sparse index entries.
    for chunk in 0..60 {
        let records = (0..100).map(|i| rec(format!("{:06}{}", chunk * 100 + i, "d".repeat(1000)))).collect();
        log.append(TOPIC, records).await.expect("append");
    }
    log.close().await;
    let log = TopicLog::open(cfg).await.expect("reopen");
    for start in [0u64, 1, 99, 1234, 2047, 2048, 3000, 4321, 5999] {
        let r = log.read(TOPIC, ReadFrom::Offset(start), 2, usize::MAX, None).await.expect("read");
        assert_eq!(r.records[0].offset, start);
        assert_eq!(&r.records[0].payload[..6], format!("{start:06}").as_bytes());
    }
    assert_eq!(read_all(&log, TOPIC).await.len(), 6000);
    log.close().await;
}

#[tokio::test]
async fn invalid_topics_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    for bad in [
        "",
        "telemetry",
        "projects/p/topics/ab",
        "projects/p/topics/../../etc",
        "projects/p/topics/a/b",
        "projects/p/subs/abc",
    ] {
        let err = log.append(bad, vec![rec("x")]).await.expect_err("append must fail");
        assert!(matches!(err, LogError::InvalidTopic(_)), "{bad}: {err:?}");
        let err = log.read(bad, ReadFrom::Earliest, 1, 1, None).await.expect_err("read must fail");
        assert!(matches!(err, LogError::InvalidTopic(_)), "{bad}: {err:?}");
    }
    assert!(log.topics().is_empty());
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|name| name != "LOCK")
        .collect();
    assert!(entries.is_empty(), "nothing was created on disk: {entries:?}");
    log.close().await;
}

#[tokio::test]
async fn record_size_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(LogConfig { max_record_bytes: 1000, ..config(dir.path()) }).await.expect("open");
    assert_eq!(log.append(TOPIC, vec![rec(vec![0; 1000])]).await.expect("at the limit"), vec![0]);
    let err = log.append(TOPIC, vec![rec(vec![0; 1001])]).await.expect_err("over");
    assert_eq!(err, LogError::RecordTooLarge { size: 1001, limit: 1000 });
    // Attributes count towards the limit; one bad record fails the whole append.
    let with_attrs = NewRecord { attributes: vec![("key".into(), "v".repeat(100))], ..rec(vec![0; 900]) };
    let err = log.append(TOPIC, vec![rec("fine"), with_attrs]).await.expect_err("over");
    assert_eq!(err, LogError::RecordTooLarge { size: 1003, limit: 1000 });
    assert_eq!(log.topics()[0].next_offset, 1, "nothing of the failed append was written");
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_drains_queued_appends_then_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    let mut pending = Vec::new();
    for i in 0..200 {
        let log = log.clone();
        pending.push(tokio::spawn(async move { log.append(TOPIC, vec![rec(format!("{i}"))]).await }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    log.close().await;
    let mut ok = 0;
    for p in pending {
        match p.await.expect("task") {
            Ok(_) => ok += 1,
            Err(LogError::Closed) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(log.append(TOPIC, vec![rec("late")]).await, Err(LogError::Closed)));
    assert!(matches!(log.read(TOPIC, ReadFrom::Earliest, 1, 1, None).await, Err(LogError::Closed)));
    log.close().await; // a second close is harmless

    // Every append that succeeded is on disk.
    let log = TopicLog::open(config(dir.path())).await.expect("reopen");
    assert_eq!(read_all(&log, TOPIC).await.len(), ok);
    log.close().await;
}

#[tokio::test]
async fn one_directory_one_open_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    log.append(TOPIC, vec![rec("a")]).await.expect("append");
    let err = TopicLog::open(config(dir.path())).await.expect_err("second open must fail");
    assert!(matches!(err, LogError::Io(_)), "{err:?}");
    assert!(err.detail().contains("locked"), "{}", err.detail());
    // Retention after close must not touch the directory either.
    log.close().await;
    assert_eq!(log.enforce_retention().await, Err(LogError::Closed));
    let log = TopicLog::open(config(dir.path())).await.expect("reopen after close");
    assert_eq!(read_all(&log, TOPIC).await.len(), 1);
    log.close().await;
}

#[tokio::test]
async fn errors_do_not_leak_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("file");
    let err = TopicLog::open(config(&file.join("log"))).await.expect_err("cannot open under a file");
    assert!(matches!(err, LogError::Io(_)));
    assert!(!err.to_string().contains("a-file"), "{err}");
    assert!(err.detail().contains("a-file"), "{}", err.detail());
    let err = TopicLog::open(LogConfig { segment_bytes: 0, ..config(dir.path()) }).await.expect_err("bad config");
    assert!(matches!(err, LogError::InvalidConfig(_)));
}

/// `cargo test --release -p ferrocore-topiclog -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, not a check"]
async fn throughput() {
    let dir = match std::env::var_os("TOPICLOG_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    let payload = Bytes::from(vec![b'x'; 100]);
    const TASKS: usize = 100;
    const PER_TASK: usize = 1000;
    let syncs_before = log.sync_count();
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let log = log.clone();
        let payload = payload.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                let r = NewRecord {
                    timestamp_nanos: now_nanos(),
                    attributes: vec![("deviceId".into(), "dev".into())],
                    payload: payload.clone(),
                };
                log.append(TOPIC, vec![r]).await.expect("append");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    let syncs = log.sync_count() - syncs_before;
    let n = (TASKS * PER_TASK) as f64;
    println!(
        "{TASKS} tasks x {PER_TASK} appends of 100 B: {:.0} appends/s, {:.0} fsyncs/s ({syncs} fsyncs, {:.1} appends per fsync, {secs:.2} s)",
        n / secs,
        syncs as f64 / secs,
        n / syncs as f64
    );
    let started = Instant::now();
    let all = read_all(&log, TOPIC).await;
    println!("read back {} records in {:.2} s", all.len(), started.elapsed().as_secs_f64());
    log.close().await;
}

/// Open loop: 1,000 publishers at 50 appends/s each (50k/s offered) for 3 s. Reports the fsync
/// rate at that load. `cargo test --release -p ferrocore-topiclog -- --ignored --nocapture open_loop`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, not a check"]
async fn open_loop_50k_per_second() {
    let dir = match std::env::var_os("TOPICLOG_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let log = TopicLog::open(config(dir.path())).await.expect("open");
    const PUBLISHERS: usize = 1000;
    const PER_PUBLISHER: usize = 150;
    let payload = Bytes::from(vec![b'x'; 100]);
    let syncs_before = log.sync_count();
    let started = Instant::now();
    let mut handles = Vec::new();
    for p in 0..PUBLISHERS {
        let log = log.clone();
        let payload = payload.clone();
        handles.push(tokio::spawn(async move {
            // Spread the publishers over the 20 ms period instead of firing all at once.
            tokio::time::sleep(Duration::from_micros((p * 20) as u64)).await;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut worst = Duration::ZERO;
            for _ in 0..PER_PUBLISHER {
                tick.tick().await;
                let t = Instant::now();
                log.append(
                    TOPIC,
                    vec![NewRecord { timestamp_nanos: now_nanos(), attributes: Vec::new(), payload: payload.clone() }],
                )
                .await
                .expect("append");
                worst = worst.max(t.elapsed());
            }
            worst
        }));
    }
    let mut worst = Duration::ZERO;
    for h in handles {
        worst = worst.max(h.await.expect("task"));
    }
    let secs = started.elapsed().as_secs_f64();
    let syncs = log.sync_count() - syncs_before;
    let n = (PUBLISHERS * PER_PUBLISHER) as f64;
    println!(
        "open loop, {PUBLISHERS} publishers x 50/s: {:.0} appends/s achieved, {:.0} fsyncs/s ({:.1} appends per fsync), worst append latency {worst:?}",
        n / secs,
        syncs as f64 / secs,
        n / syncs as f64
    );
    log.close().await;
}
