//! Seeking by time: `TopicLog::offset_at_time` over many small segments, live and after a
//! reopen (when first timestamps are read from disk), at and between record times, past either
//! end, on missing and empty topics, after retention, and with timestamps that step back.

use bytes::Bytes;
use ferrocore_topiclog::{LogConfig, LogError, NewRecord, ReadFrom, TopicLog};
use std::path::{Path, PathBuf};

const TOPIC: &str = "projects/p1/topics/telemetry";
/// Far from zero, and in the future (2096) so that the background retention task, which goes by
/// the real clock, never expires anything here.
const T0: i64 = 4_000_000_000_000_000_000;
const STEP: i64 = 1_000;

fn stamped(ts: i64, i: u64) -> NewRecord {
    NewRecord {
        timestamp_nanos: ts,
        attributes: Vec::new(),
        payload: Bytes::from(format!("{i:04}-{}", "x".repeat(36))),
    }
}

/// About three records a segment.
fn small_segments(dir: &Path) -> LogConfig {
    LogConfig { segment_bytes: 300, ..LogConfig::new(dir) }
}

/// `count` records stamped `T0 + i * STEP`, appended in batches of varying size.
async fn write_ordered(log: &TopicLog, count: u64) {
    let mut i = 0;
    while i < count {
        let n = (i % 3 + 1).min(count - i);
        let batch = (i..i + n).map(|j| stamped(T0 + j as i64 * STEP, j)).collect();
        log.append(TOPIC, batch).await.expect("append");
        i += n;
    }
}

fn segment_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("p1").join("telemetry"))
        .expect("topic dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

fn base_of(path: &Path) -> u64 {
    path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("segment name")
}

/// Every interesting time of a topic written by `write_ordered(count)` starting at `earliest`.
async fn check_ordered(log: &TopicLog, earliest: u64, count: u64) {
    let at = |t: i64| async move { log.offset_at_time(TOPIC, t).await.expect("seek") };
    assert_eq!(at(i64::MIN).await, earliest, "before everything");
    assert_eq!(at(0).await, earliest);
    assert_eq!(at(T0 - 1).await, earliest);
    for k in earliest..count {
        let ts = T0 + k as i64 * STEP;
        assert_eq!(at(ts).await, k, "exactly at record {k}");
        assert_eq!(at(ts - STEP / 2).await, k, "just before record {k}");
        assert_eq!(at(ts + 1).await, k + 1, "just after record {k}");
    }
    assert_eq!(at(T0 + count as i64 * STEP).await, count, "after everything: the next offset");
    assert_eq!(at(i64::MAX).await, count);
}

#[tokio::test]
async fn seeks_across_many_segments_live_and_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_segments(dir.path());
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    write_ordered(&log, 60).await;
    let files = segment_files(dir.path());
    assert!(files.len() >= 15, "tiny segments must roll often, got {}", files.len());
    check_ordered(&log, 0, 60).await;
    // The first record of every segment is an exact hit on a segment boundary.
    for f in &files {
        let base = base_of(f);
        assert_eq!(log.offset_at_time(TOPIC, T0 + base as i64 * STEP).await.expect("seek"), base);
    }
    log.close().await;

    // After a reopen the sealed segments' first timestamps are not known until read.
    let log = TopicLog::open(cfg.clone()).await.expect("reopen");
    check_ordered(&log, 0, 60).await;
    log.append(TOPIC, vec![stamped(T0 + 60 * STEP, 60)]).await.expect("append after reopen");
    check_ordered(&log, 0, 61).await;
    log.close().await;

    // Once more with a fresh reopen and a single probe first, so that the lazily read value is
    // the one the next searches use.
    let log = TopicLog::open(cfg).await.expect("reopen");
    assert_eq!(log.offset_at_time(TOPIC, T0 + 30 * STEP).await.expect("seek"), 30);
    check_ordered(&log, 0, 61).await;
    log.close().await;
}

#[tokio::test]
async fn missing_empty_and_invalid_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A topic directory without segments: the topic exists but holds nothing.
    std::fs::create_dir_all(dir.path().join("p1").join("empty-topic")).expect("dir");
    let log = TopicLog::open(LogConfig::new(dir.path())).await.expect("open");
    assert_eq!(log.offset_at_time("projects/p1/topics/nothing-here", T0).await, Ok(0));
    assert_eq!(log.offset_at_time("projects/p1/topics/empty-topic", i64::MIN).await, Ok(0));
    assert_eq!(log.offset_at_time("projects/p1/topics/empty-topic", T0).await, Ok(0));
    assert!(log.topics().iter().any(|t| t.name == "projects/p1/topics/empty-topic"));
    for bad in ["", "projects/p1/topics/ab", "projects/p1/topics/goog-x", "projects/p1/subscriptions/abc"] {
        let err = log.offset_at_time(bad, T0).await.expect_err("invalid");
        assert!(matches!(err, LogError::InvalidTopic(_)), "{bad}: {err:?}");
    }
    assert!(log.topic_info("projects/p1/topics/nothing-here").is_none(), "seeking creates nothing");

    // A topic whose only segment is its active one.
    log.append(TOPIC, vec![stamped(T0, 0), stamped(T0 + STEP, 1)]).await.expect("append");
    assert_eq!(log.offset_at_time(TOPIC, T0 - 1).await, Ok(0));
    assert_eq!(log.offset_at_time(TOPIC, T0 + 1).await, Ok(1));
    assert_eq!(log.offset_at_time(TOPIC, T0 + 2 * STEP).await, Ok(2));
    let info = log.topic_info(TOPIC).expect("known");
    assert_eq!((info.earliest_offset, info.next_offset), (0, 2));
    log.close().await;
    assert_eq!(log.offset_at_time(TOPIC, T0).await, Err(LogError::Closed));
}

#[tokio::test]
async fn after_retention_the_earliest_kept_offset_is_the_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig { retention_max_bytes: 1500, ..small_segments(dir.path()) };
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    write_ordered(&log, 60).await;
    log.enforce_retention().await.expect("retention");
    let earliest = log.topic_info(TOPIC).expect("known").earliest_offset;
    assert!(earliest > 30, "retention trimmed the start: earliest {earliest}");
    // Times of records that are gone answer with the first one kept.
    assert_eq!(log.offset_at_time(TOPIC, T0).await, Ok(earliest));
    assert_eq!(log.offset_at_time(TOPIC, T0 + (earliest as i64 - 1) * STEP).await, Ok(earliest));
    check_ordered(&log, earliest, 60).await;
    log.close().await;

    let log = TopicLog::open(cfg).await.expect("reopen");
    check_ordered(&log, earliest, 60).await;
    log.close().await;
}

/// Three segments of three records, the middle one's clock stepping back: stamped
/// `[100, 200, 300]`, `[400, 350, 500]`, `[600, 700, 800]` (times in `STEP`s after `T0`).
async fn check_stepping_back(log: &TopicLog) {
    let at = |steps: i64| async move { log.offset_at_time(TOPIC, T0 + steps * STEP).await.expect("seek") };
    // The record stamped 350 (offset 4) follows the one stamped 400 (offset 3); the answer is
    // the first in offset order at or after the time.
    assert_eq!(at(350).await, 3);
    assert_eq!(at(360).await, 3);
    assert_eq!(at(400).await, 3);
    assert_eq!(at(401).await, 5, "past 400, the next record at or after the time is 500");
    assert_eq!(at(500).await, 5);
    assert_eq!(at(501).await, 6, "nothing left in the chosen segment: the next one starts");
    assert_eq!(at(250).await, 2);
    assert_eq!(at(801).await, 9);
}

#[tokio::test]
async fn timestamps_that_step_back_are_searched_in_offset_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_segments(dir.path());
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    let times = [[100, 200, 300], [400, 350, 500], [600, 700, 800]];
    for (s, seg) in times.iter().enumerate() {
        let batch = seg.iter().enumerate().map(|(i, &steps)| stamped(T0 + steps * STEP, (s * 3 + i) as u64)).collect();
        log.append(TOPIC, batch).await.expect("append");
    }
    let files = segment_files(dir.path());
    assert_eq!(files.iter().map(|f| base_of(f)).collect::<Vec<_>>(), vec![0, 3, 6], "one segment per batch");
    check_stepping_back(&log).await;
    log.close().await;
    let log = TopicLog::open(cfg).await.expect("reopen");
    check_stepping_back(&log).await;
    log.close().await;
}

#[tokio::test]
async fn a_damaged_first_record_is_sought_past() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_segments(dir.path());
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    write_ordered(&log, 30).await;
    log.close().await;
    let files = segment_files(dir.path());
    let (victim, next) = (&files[3], base_of(&files[4]));
    let base = base_of(victim);
    // Flip a payload byte of the segment's first record (header 32 bytes, frame prefix 8, body
    // fields 20): its CRC no longer matches.
    let mut bytes = std::fs::read(victim).expect("read");
    bytes[32 + 8 + 20 + 2] ^= 0xFF;
    std::fs::write(victim, bytes).expect("write");

    let log = TopicLog::open(cfg).await.expect("reopen");
    // Reads skip the damaged segment, and a seek into it lands where reads resume.
    let r = log.read(TOPIC, ReadFrom::Offset(base), 1, usize::MAX, None).await.expect("read");
    assert_eq!(r.records[0].offset, next);
    assert_eq!(log.offset_at_time(TOPIC, T0 + base as i64 * STEP).await, Ok(next));
    assert_eq!(log.offset_at_time(TOPIC, T0 + (base as i64 + 1) * STEP).await, Ok(next));
    // The rest of the topic is unaffected.
    assert_eq!(log.offset_at_time(TOPIC, T0).await, Ok(0));
    assert_eq!(log.offset_at_time(TOPIC, T0 + (next as i64 + 1) * STEP).await, Ok(next + 1));
    assert_eq!(log.offset_at_time(TOPIC, T0 + 30 * STEP).await, Ok(30));
    log.close().await;
}
