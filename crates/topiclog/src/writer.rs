//! Group commit: one writer task per topic turns many concurrent appends into one write and one
//! fsync.
//!
//! Appenders queue requests on the topic's channel and wait on a oneshot. The writer takes the
//! first request, drains whatever else is already queued (up to [`MAX_BATCH_BYTES`]), encodes the
//! lot into one buffer, and hands it to the blocking pool for a single positioned write plus
//! `sync_data`. While that fsync runs, new requests pile up in the channel and form the next
//! batch, so the batch size grows by itself with load and the fsync rate stays near
//! `1 / fsync latency` however many appenders there are; a short minimum interval between
//! commits caps it lower still (see [`COMMIT_INTERVAL`]). Only after the fsync does the batch
//! become visible to readers and are the appenders answered: an acknowledged offset is durable.
//!
//! A segment roll inside a batch costs one extra write+fsync for the old file and one directory
//! fsync for the new file's name. If any I/O fails, the batch is rolled back (files truncated to
//! their committed size, new segments removed) and its appenders get an error; the offsets are
//! reused, which is safe because nobody ever saw them. If even the rollback fails the topic stops
//! accepting appends until the log is reopened and recovery decides what is on disk.

use crate::format::{self, HEADER_LEN, SegmentHeader};
use crate::segment::{self, index_due};
use crate::topic::Topic;
use crate::{LogError, NewRecord};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

/// Upper bound of one batch; past this, the queued rest waits for the next round. Large enough
/// to reach disk bandwidth, small enough that one batch does not hold the blocking thread long.
pub(crate) const MAX_BATCH_BYTES: usize = 8 << 20;

/// Minimum time between the starts of two commits of one topic. Without it the fsync rate
/// follows the fsync latency, not the load: on these machines fsync takes 0.2-0.5 ms, so a busy
/// topic would fsync 2,000-5,000 times a second with small batches. With it a topic does at most
/// 500 commits per second whatever the load, each collecting everything that arrived meanwhile
/// (at 50k appends/s, about 100 per fsync). The price is at most this much extra latency for an
/// append that arrives right after a commit started; one that finds the topic idle goes at once.
/// Same idea as PostgreSQL's `commit_delay`, but only paid when commits are back to back.
const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

/// One `append` call waiting for durability.
pub(crate) struct AppendRequest {
    pub records: Vec<NewRecord>,
    /// Encoded size, for batch sizing.
    pub frame_bytes: usize,
    /// Answered with the first offset of the request's contiguous range.
    pub reply: oneshot::Sender<Result<u64, LogError>>,
    /// Queue budget taken by the appender, given back when the request is dropped after the
    /// reply: this is what bounds memory held by queued and in-flight appends.
    pub _permit: OwnedSemaphorePermit,
}

/// The segment being written, with the writer's own file handle.
pub(crate) struct ActiveSegment {
    pub base: u64,
    pub path: PathBuf,
    pub file: File,
    /// Durable bytes, header included.
    pub size: u64,
    pub created_nanos: i64,
    pub last_indexed: Option<u64>,
}

/// Everything the writer owns; moved into the blocking pool for each batch and back.
pub(crate) struct WriterState {
    pub root: PathBuf,
    /// The topic's name, which says how to create its directories.
    pub name: String,
    pub dir: PathBuf,
    pub active: Option<ActiveSegment>,
    pub next_offset: u64,
    pub segment_bytes: u64,
    pub roll_after_nanos: i64,
    pub syncs: Arc<AtomicU64>,
    poisoned: Option<String>,
    buf: Vec<u8>,
    created: Vec<PathBuf>,
}

/// A durable batch, to publish to readers.
#[derive(Debug)]
pub(crate) struct Commit {
    /// First offset of each request, in batch order.
    pub firsts: Vec<u64>,
    pub next_offset: u64,
    /// Every segment the batch touched, oldest first.
    pub segments: Vec<SegmentDelta>,
}

#[derive(Debug)]
pub(crate) struct SegmentDelta {
    pub base: u64,
    pub path: PathBuf,
    /// New committed size.
    pub size: u64,
    pub index: Vec<(u64, u64)>,
    pub max_ts: Option<i64>,
    /// Set when the batch wrote the segment's first record.
    pub first_ts: Option<i64>,
}

/// What to restore if a batch fails.
struct Checkpoint {
    active: Option<(u64, PathBuf, u64, i64, Option<u64>)>,
    next_offset: u64,
}

impl WriterState {
    pub(crate) fn new(
        root: PathBuf,
        topic: &Topic,
        active: Option<ActiveSegment>,
        next_offset: u64,
        segment_bytes: u64,
        roll_after_nanos: i64,
        syncs: Arc<AtomicU64>,
    ) -> WriterState {
        WriterState {
            root,
            name: topic.name.clone(),
            dir: topic.dir.clone(),
            active,
            next_offset,
            segment_bytes,
            roll_after_nanos,
            syncs,
            poisoned: None,
            buf: Vec::new(),
            created: Vec::new(),
        }
    }

    /// Writes and fsyncs `batch`, or leaves the files as they were and reports why not.
    pub(crate) fn commit(&mut self, batch: &[AppendRequest], now_nanos: i64) -> Result<Commit, LogError> {
        if let Some(why) = &self.poisoned {
            return Err(LogError::Io(why.clone()));
        }
        let checkpoint = Checkpoint {
            active: self.active.as_ref().map(|a| (a.base, a.path.clone(), a.size, a.created_nanos, a.last_indexed)),
            next_offset: self.next_offset,
        };
        self.created.clear();
        match self.write(batch, now_nanos) {
            Ok(commit) => Ok(commit),
            Err(err) => {
                let err = LogError::io(format!("appending to {}", self.dir.display()), err);
                if let Err(rollback) = self.rollback(checkpoint) {
                    let why = format!("{}; rolling back failed too: {rollback}", err.detail());
                    tracing::error!(dir = %self.dir.display(), error = %why, "topic writer stopped until reopen");
                    self.poisoned = Some(why);
                }
                Err(err)
            }
        }
    }

    fn write(&mut self, batch: &[AppendRequest], now_nanos: i64) -> io::Result<Commit> {
        let mut commit = Commit { firsts: Vec::with_capacity(batch.len()), next_offset: 0, segments: Vec::new() };
        self.buf.clear();
        if let Some(a) = &self.active {
            commit.segments.push(delta(a));
        }
        for req in batch {
            commit.firsts.push(self.next_offset);
            for rec in &req.records {
                let len = format::frame_len(rec) as u64;
                let roll = match &self.active {
                    None => true,
                    Some(a) => {
                        let filled = a.size + self.buf.len() as u64;
                        // Never roll an empty segment: every segment holds at least one record,
                        // even one larger than segment_bytes.
                        filled > HEADER_LEN
                            && (filled + len > self.segment_bytes
                                || now_nanos.saturating_sub(a.created_nanos) >= self.roll_after_nanos)
                    }
                };
                if roll {
                    self.flush(&mut commit)?;
                    self.roll(now_nanos)?;
                    commit.segments.push(delta(self.active.as_ref().expect("just rolled")));
                }
                let a = self.active.as_mut().expect("rolled above when missing");
                let pos = a.size + self.buf.len() as u64;
                let d = commit.segments.last_mut().expect("delta of the active segment");
                if index_due(a.last_indexed, pos) {
                    a.last_indexed = Some(pos);
                    d.index.push((self.next_offset, pos));
                }
                d.max_ts = Some(d.max_ts.map_or(rec.timestamp_nanos, |m| m.max(rec.timestamp_nanos)));
                if pos == HEADER_LEN {
                    d.first_ts = Some(rec.timestamp_nanos);
                }
                format::encode_frame(&mut self.buf, self.next_offset, rec);
                self.next_offset += 1;
            }
        }
        self.flush(&mut commit)?;
        commit.next_offset = self.next_offset;
        // Large one-off batches should not pin their buffer for the topic's lifetime.
        if self.buf.capacity() > MAX_BATCH_BYTES * 2 {
            self.buf = Vec::new();
        }
        Ok(commit)
    }

    /// Writes the buffered frames to the active segment in one call and makes them durable.
    fn flush(&mut self, commit: &mut Commit) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let a = self.active.as_mut().expect("frames are only buffered for an active segment");
        a.file.write_all_at(&self.buf, a.size)?;
        a.file.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        a.size += self.buf.len() as u64;
        self.buf.clear();
        if let Some(d) = commit.segments.last_mut() {
            d.size = a.size;
        }
        Ok(())
    }

    /// Starts a segment at the next offset. Its header goes into the buffer, so it shares the
    /// batch's write and fsync; only the new directory entry needs its own fsync.
    fn roll(&mut self, now_nanos: i64) -> io::Result<()> {
        if self.active.is_none() {
            let dir = crate::name::create_topic_dir(&self.root, &self.name, &self.syncs)?;
            debug_assert_eq!(dir, self.dir);
        }
        let base = self.next_offset;
        let path = self.dir.join(segment::file_name(base));
        // Truncate: a file with this name can only be debris of a failed earlier attempt.
        // Readable by the server's user alone, like everything in the data directory.
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(&path)?;
        self.created.push(path.clone());
        sync_dir(&self.dir)?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.buf.extend_from_slice(&SegmentHeader { base_offset: base, created_nanos: now_nanos }.encode());
        self.active = Some(ActiveSegment { base, path, file, size: 0, created_nanos: now_nanos, last_indexed: None });
        Ok(())
    }

    fn rollback(&mut self, checkpoint: Checkpoint) -> io::Result<()> {
        self.buf.clear();
        self.active = None;
        self.next_offset = checkpoint.next_offset;
        for path in std::mem::take(&mut self.created) {
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        if let Some((base, path, size, created_nanos, last_indexed)) = checkpoint.active {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            file.set_len(size)?;
            file.sync_all()?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.active = Some(ActiveSegment { base, path, file, size, created_nanos, last_indexed });
        }
        if self.dir.exists() {
            sync_dir(&self.dir)?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn delta(a: &ActiveSegment) -> SegmentDelta {
    SegmentDelta { base: a.base, path: a.path.clone(), size: a.size, index: Vec::new(), max_ts: None, first_ts: None }
}

/// fsync of a directory: makes created, renamed and removed names in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn now_nanos() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

/// The writer task of one topic. Ends when every sender is gone, or on shutdown after answering
/// everything already queued.
pub(crate) async fn run(
    topic: Arc<Topic>,
    mut rx: mpsc::UnboundedReceiver<AppendRequest>,
    mut state: WriterState,
    mut shutdown: watch::Receiver<bool>,
    counters: Arc<crate::Counters>,
) {
    let mut closing = false;
    let mut last_commit = std::time::Instant::now();
    loop {
        let first = tokio::select! {
            biased;
            msg = rx.recv() => match msg {
                Some(req) => req,
                None => break,
            },
            _ = shutdown.wait_for(|&stop| stop), if !closing => {
                // Refuse new sends but keep draining: queued appends still get written.
                closing = true;
                rx.close();
                continue;
            }
        };
        let pace_until = (!closing).then(|| last_commit + COMMIT_INTERVAL);
        // The pacing wait and the drain happen on the blocking thread too: Tokio's timer rounds
        // up to whole milliseconds (a 2 ms wait takes 3-4), and draining after the wait lets
        // everything that arrived during it join the batch.
        let joined = tokio::task::spawn_blocking(move || {
            if let Some(until) = pace_until {
                std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
            }
            let started = std::time::Instant::now();
            let mut bytes = first.frame_bytes;
            let mut batch = vec![first];
            while bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(req) => {
                        bytes += req.frame_bytes;
                        batch.push(req);
                    }
                    Err(_) => break,
                }
            }
            let result = state.commit(&batch, now_nanos());
            (state, rx, batch, result, started)
        })
        .await;
        let (returned, returned_rx, batch, result, started) = match joined {
            Ok(v) => v,
            Err(err) => {
                // The batch's repliers and the queue were dropped with it, so every waiting
                // appender sees an error and later ones find the topic stopped.
                tracing::error!(topic = %topic.name, error = %err, "topic writer panicked; topic stopped until reopen");
                return;
            }
        };
        rx = returned_rx;
        last_commit = started;
        state = returned;
        match result {
            Ok(commit) => {
                let records: usize = batch.iter().map(|r| r.records.len()).sum();
                let bytes: usize = batch.iter().map(|r| r.frame_bytes).sum();
                counters.appended_records.fetch_add(records as u64, Ordering::Relaxed);
                counters.appended_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                counters.commits.fetch_add(1, Ordering::Relaxed);
                topic.apply(&commit);
                for (req, first) in batch.into_iter().zip(commit.firsts) {
                    let _ = req.reply.send(Ok(first));
                }
            }
            Err(err) => {
                tracing::error!(topic = %topic.name, error = %err.detail(), "append batch failed");
                for req in batch {
                    let _ = req.reply.send(Err(err.clone()));
                }
            }
        }
    }
}
