//! A real crash: a child process appends from many tasks and prints every acknowledged offset,
//! is killed with SIGKILL mid-stream, and every printed offset must be readable after reopen.
//!
//! The child is this same test binary, re-run with `CHILD_ENV` set so that `crash_child` does the
//! appending instead of returning at once.

use bytes::Bytes;
use ferrocore_topiclog::{LogConfig, NewRecord, ReadFrom, TopicLog};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "FERROCORE_TOPICLOG_CRASH_CHILD_DIR";
const TOPIC: &str = "projects/crash/topics/telemetry";
/// Small segments, so that the kill also lands in the middle of segment rolls.
const SEGMENT_BYTES: u64 = 16 * 1024;

fn config(dir: &std::path::Path) -> LogConfig {
    LogConfig { segment_bytes: SEGMENT_BYTES, ..LogConfig::new(dir) }
}

/// Only does something inside the child process.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let log = TopicLog::open(config(dir.as_ref())).await.expect("open");
        let mut tasks = Vec::new();
        for task in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0u64.. {
                    // Mixed sizes and multi-record appends, to tear frames at varied places.
                    let n = 1 + (seq % 3) as usize;
                    let records = (0..n)
                        .map(|i| NewRecord {
                            timestamp_nanos: now_nanos(),
                            attributes: vec![("task".into(), task.to_string())],
                            payload: Bytes::from(format!("{task}/{seq}/{i}/{}", "z".repeat((seq as usize * 37) % 700))),
                        })
                        .collect();
                    let offsets = log.append(TOPIC, records).await.expect("append");
                    for (i, offset) in offsets.iter().enumerate() {
                        // println! flushes per line (stdout is line-buffered), so a printed line
                        // always describes an append that already returned.
                        println!("ACK {offset} {task}/{seq}/{i}/");
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked: HashMap<u64, String> = HashMap::new();
    // Three rounds: each restart recovers the previous kill's torn tail, then gets killed again.
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let started = Instant::now();
        let before = acked.len();
        let target = 2_000 + round * 1_500;
        while acked.len() - before < target {
            assert!(started.elapsed() < Duration::from_secs(60), "child too slow");
            let Some(line) = lines.next() else { panic!("child exited early") };
            if let Some((offset, prefix)) = parse_ack(&line.expect("line")) {
                assert!(acked.insert(offset, prefix).is_none(), "offset {offset} acknowledged twice");
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // Lines still in the pipe were printed, hence acknowledged, before the kill.
        for line in lines {
            if let Some((offset, prefix)) = parse_ack(&line.expect("line")) {
                assert!(acked.insert(offset, prefix).is_none(), "offset {offset} acknowledged twice");
            }
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let log = TopicLog::open(config(dir.path())).await.expect("reopen after crashes");
        let mut stored = HashMap::new();
        let mut expected_next = 0;
        let mut from = ReadFrom::Earliest;
        loop {
            let r = log.read(TOPIC, from, 10_000, usize::MAX, None).await.expect("read");
            if r.records.is_empty() {
                break;
            }
            for rec in r.records {
                assert_eq!(rec.offset, expected_next, "offsets stay contiguous across crashes");
                expected_next += 1;
                stored.insert(rec.offset, rec.payload);
            }
            from = ReadFrom::Offset(r.next_offset);
        }
        let max_acked = acked.keys().max().copied().expect("some acks");
        assert!(expected_next > max_acked, "log ends at {expected_next}, but {max_acked} was acknowledged");
        for (offset, prefix) in &acked {
            let payload = stored.get(offset).unwrap_or_else(|| panic!("acknowledged offset {offset} lost"));
            assert!(payload.starts_with(prefix.as_bytes()), "offset {offset} holds the wrong record");
        }
        println!("{} acknowledged records over 3 kills, all present; log holds {expected_next}", acked.len());
        // And the log still takes appends where it left off.
        let next = log
            .append(TOPIC, vec![NewRecord { timestamp_nanos: now_nanos(), ..NewRecord::default() }])
            .await
            .expect("append after recovery");
        assert_eq!(next, vec![expected_next]);
        log.close().await;
    });
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos() as i64
}

fn parse_ack(line: &str) -> Option<(u64, String)> {
    let rest = line.strip_prefix("ACK ")?;
    let (offset, prefix) = rest.split_once(' ')?;
    Some((offset.parse().ok()?, prefix.to_owned()))
}
