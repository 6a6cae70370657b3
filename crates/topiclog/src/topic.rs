//! One topic's shared state and the blocking halves of reading and retention.
//!
//! The state (segment list, committed end) sits behind a plain mutex held only for bookkeeping,
//! never across I/O: readers copy what they need (path, start position, committed size) and read
//! their own file handle afterwards; the writer publishes a whole batch in one short critical
//! section after its fsync. The `committed` watch carries the next offset so that long-polling
//! readers wake exactly when a batch becomes durable.

use crate::format::HEADER_LEN;
use crate::segment::{self, ReadCursor, ReadStop, Segment};
use crate::writer::Commit;
use crate::{LogError, ReadResult, TopicInfo};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

pub(crate) struct Topic {
    pub name: String,
    pub dir: PathBuf,
    state: Mutex<TopicState>,
    /// The committed next offset, for long-poll wake-ups.
    pub committed: watch::Sender<u64>,
    /// Serialises retention runs (background and explicit), so that a run that returns has
    /// also seen the files of a concurrent one removed.
    retention: Mutex<()>,
}

pub(crate) struct TopicState {
    /// Oldest first; the last one is the active segment.
    pub segments: VecDeque<Segment>,
    /// Offset the next committed record gets.
    pub next_offset: u64,
    /// Committed bytes over all segments.
    pub bytes: u64,
}

impl TopicState {
    pub(crate) fn earliest(&self) -> u64 {
        self.segments.front().map_or(self.next_offset, |s| s.base)
    }

    /// The segment holding `offset`, which must lie in `earliest()..next_offset`.
    fn position(&self, offset: u64) -> usize {
        self.segments.partition_point(|s| s.base <= offset).saturating_sub(1)
    }

    fn by_base(&mut self, base: u64) -> Option<&mut Segment> {
        let i = self.segments.partition_point(|s| s.base < base);
        self.segments.get_mut(i).filter(|s| s.base == base)
    }
}

/// A segment as seeking by time sees it, copied out of the lock.
struct Probe {
    base: u64,
    path: PathBuf,
    /// Committed bytes when the search started; records appended later are not looked at.
    size: u64,
    first_ts: Option<i64>,
    /// The newest timestamp, when the segment has been scanned.
    max_ts: Option<i64>,
}

/// The first timestamp of a probed segment.
enum FirstTs {
    Known(i64),
    /// Retention deleted the segment after the search copied the list.
    Gone,
    /// No intact first record (damage, or the file vanished by other hands).
    Unreadable,
}

/// What one pass of the read loop does next, decided under the lock and done outside it.
enum Step {
    Done,
    Scan { base: u64, path: PathBuf },
    Read { base: u64, path: PathBuf, start: u64, end_pos: u64, next_base: Option<u64> },
}

impl Topic {
    pub(crate) fn new(name: String, dir: PathBuf, segments: VecDeque<Segment>, next_offset: u64) -> Topic {
        let bytes = segments.iter().map(|s| s.size).sum();
        Topic {
            name,
            dir,
            state: Mutex::new(TopicState { segments, next_offset, bytes }),
            committed: watch::Sender::new(next_offset),
            retention: Mutex::new(()),
        }
    }

    /// A panic elsewhere while holding the lock cannot leave the bookkeeping half-updated in a
    /// way that matters more than refusing service, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn info(&self) -> TopicInfo {
        let st = self.lock();
        TopicInfo {
            name: self.name.clone(),
            earliest_offset: st.earliest(),
            next_offset: st.next_offset,
            bytes: st.bytes,
        }
    }

    /// Makes a durable batch visible: segment sizes, index entries, new segments, then the offset.
    pub(crate) fn apply(&self, commit: &Commit) {
        let next = {
            let mut st = self.lock();
            for (i, delta) in commit.segments.iter().enumerate() {
                // The record after this segment's part of the batch: the next segment's first, or
                // the batch's next offset.
                let end = commit.segments.get(i + 1).map_or(commit.next_offset, |d| d.base);
                let grown = match st.by_base(delta.base) {
                    Some(seg) => {
                        let grown = delta.size - seg.size;
                        seg.size = delta.size;
                        seg.index.entries.extend_from_slice(&delta.index);
                        seg.max_ts = max_opt(seg.max_ts, delta.max_ts);
                        seg.first_ts = seg.first_ts.or(delta.first_ts);
                        seg.note_commit_end(end, delta.size);
                        grown
                    }
                    None => {
                        // Only the active segment is read at its tail: the others forget theirs.
                        for older in st.segments.iter_mut() {
                            older.recent_ends = VecDeque::new();
                        }
                        let mut seg = Segment {
                            base: delta.base,
                            path: delta.path.clone(),
                            size: delta.size,
                            max_ts: delta.max_ts,
                            first_ts: delta.first_ts,
                            scanned: true,
                            index: segment::SparseIndex { entries: delta.index.clone() },
                            recent_ends: VecDeque::new(),
                        };
                        seg.note_commit_end(end, delta.size);
                        st.segments.push_back(seg);
                        delta.size
                    }
                };
                st.bytes += grown;
            }
            st.next_offset = commit.next_offset;
            st.next_offset
        };
        self.committed.send_replace(next);
    }

    /// The empty result for a read at or past the committed end, without a trip to the blocking
    /// pool: the usual case for a consumer long-polling at the tail.
    pub(crate) fn at_tail(&self, start: u64) -> Option<ReadResult> {
        let st = self.lock();
        (start >= st.next_offset).then(|| ReadResult {
            records: Vec::new(),
            next_offset: start,
            earliest_offset: st.earliest(),
        })
    }

    /// Reads committed records from `start` (raised to the earliest retained offset if below it).
    pub(crate) fn read_blocking(
        &self,
        start: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadResult, LogError> {
        let mut cursor = ReadCursor { next: start, records: Vec::new(), bytes: 0, max_records, max_bytes };
        let mut earliest;
        loop {
            let step = {
                let st = self.lock();
                earliest = st.earliest();
                if cursor.next < earliest && cursor.records.is_empty() {
                    cursor.next = earliest;
                }
                if cursor.next < earliest || cursor.next >= st.next_offset {
                    // Either nothing more is committed, or retention overtook this read after it
                    // returned some records: hand those back and let the next read resume.
                    Step::Done
                } else {
                    let i = st.position(cursor.next);
                    let seg = &st.segments[i];
                    let next_base = st.segments.get(i + 1).map(|s| s.base);
                    if seg.scanned {
                        Step::Read {
                            base: seg.base,
                            path: seg.path.clone(),
                            start: seg.position_for(cursor.next),
                            end_pos: seg.size,
                            next_base,
                        }
                    } else {
                        Step::Scan { base: seg.base, path: seg.path.clone() }
                    }
                }
            };
            match step {
                Step::Done => break,
                Step::Scan { base, path } => self.scan_sealed(base, &path)?,
                Step::Read { base, path, start, end_pos, next_base } => {
                    let stop = match segment::read_records(&path, start, end_pos, &mut cursor) {
                        Ok(stop) => stop,
                        Err(err) if err.kind() == io::ErrorKind::NotFound && !self.has_segment(base) => {
                            // Retention removed it between the lock and the open: look again.
                            continue;
                        }
                        Err(err) if err.kind() == io::ErrorKind::NotFound && next_base.is_some() => {
                            // Still listed but gone from disk (deleted by hand?): move past it
                            // rather than failing every read at this offset forever.
                            let next = next_base.unwrap_or(cursor.next);
                            tracing::error!(topic = %self.name, path = %path.display(), resume = next,
                                "segment file disappeared; skipping it");
                            cursor.next = cursor.next.max(next);
                            continue;
                        }
                        Err(err) => {
                            if cursor.records.is_empty() {
                                return Err(LogError::io(format!("reading {}", path.display()), err));
                            }
                            break;
                        }
                    };
                    match (stop, next_base) {
                        (ReadStop::Full, _) => break,
                        (ReadStop::End, Some(next)) => cursor.next = cursor.next.max(next),
                        (ReadStop::End, None) => break,
                        (ReadStop::Corrupt, Some(next)) => {
                            // Damage inside a sealed segment (open only repairs the tail). Skip
                            // to the next segment so that consumers are not wedged forever.
                            tracing::error!(topic = %self.name, path = %path.display(), from = cursor.next, resume = next,
                                "corrupt record in a sealed segment; skipping the rest of it");
                            cursor.next = cursor.next.max(next);
                        }
                        (ReadStop::Corrupt, None) => {
                            if cursor.records.is_empty() {
                                return Err(LogError::Io(format!(
                                    "corrupt committed record in active segment {} near offset {}",
                                    path.display(),
                                    cursor.next
                                )));
                            }
                            break;
                        }
                    }
                }
            }
        }
        Ok(ReadResult { records: cursor.records, next_offset: cursor.next, earliest_offset: earliest })
    }

    /// The first offset whose record was published at or after `time`; the next offset when no
    /// retained record was.
    ///
    /// Timestamps are the publishers' clocks at append time: they rise with offsets, but may step
    /// back a little. So the segment is chosen by binary search over the timestamps of the
    /// segments' first records (read from disk once per segment found at open, then kept), and
    /// the answer is the first record of that segment, in offset order, at or after `time`, or
    /// the start of the next segment when it holds none. With ordered timestamps that is the
    /// first record at or after `time` in the whole topic; with a clock step back across a
    /// segment boundary an earlier segment may still hold a later record, which this does not
    /// look for. Pub/Sub's seek to a time needs exactly this: one position in the log, before
    /// which everything counts as published before the time. Costs `log2(segments)` first-record
    /// reads and one scan of a single segment.
    pub(crate) fn offset_at_time_blocking(&self, time: i64) -> Result<u64, LogError> {
        loop {
            let (probes, next_offset) = {
                let st = self.lock();
                let probes: Vec<Probe> = st
                    .segments
                    .iter()
                    .filter(|s| s.size > HEADER_LEN)
                    .map(|s| Probe {
                        base: s.base,
                        path: s.path.clone(),
                        size: s.size,
                        first_ts: s.first_ts,
                        max_ts: s.max_ts.filter(|_| s.scanned),
                    })
                    .collect();
                (probes, st.next_offset)
            };
            if let Some(offset) = self.search_time(&probes, next_offset, time)? {
                return Ok(offset);
            }
            // A segment went under retention meanwhile: search the list as it is now.
        }
    }

    /// One search over a copy of the segment list; `None` when it is out of date.
    fn search_time(&self, probes: &[Probe], next_offset: u64, time: i64) -> Result<Option<u64>, LogError> {
        let Some(first) = probes.first() else { return Ok(Some(next_offset)) };
        let earliest = first.base;
        // The first segment whose first record is at or after `time`.
        let (mut lo, mut hi) = (0, probes.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let first_ts = match self.first_ts(&probes[mid])? {
                FirstTs::Known(ts) => ts,
                FirstTs::Gone => return Ok(None),
                // Nothing to find at its start: treat it as older than any time, so that the
                // answer lands after it, as reads skip past it too.
                FirstTs::Unreadable => i64::MIN,
            };
            if first_ts < time {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok(Some(earliest));
        }
        let after = probes.get(lo).map_or(next_offset, |p| p.base);
        let p = &probes[lo - 1];
        if p.max_ts.is_some_and(|max| max < time) {
            return Ok(Some(after));
        }
        match segment::first_at_or_after(&p.path, p.base, p.size, time) {
            Ok(found) => Ok(Some(found.unwrap_or(after))),
            Err(err) if err.kind() == io::ErrorKind::NotFound && !self.has_segment(p.base) => Ok(None),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Some(after)),
            Err(err) => Err(LogError::io(format!("searching {}", p.path.display()), err)),
        }
    }

    /// The first timestamp of a probed segment, read from its file (and kept) when not known yet.
    fn first_ts(&self, p: &Probe) -> Result<FirstTs, LogError> {
        if let Some(ts) = p.first_ts {
            return Ok(FirstTs::Known(ts));
        }
        match segment::first_timestamp(&p.path, p.base, p.size) {
            Ok(Some(ts)) => {
                if let Some(seg) = self.lock().by_base(p.base) {
                    seg.first_ts = Some(ts);
                }
                Ok(FirstTs::Known(ts))
            }
            Ok(None) => {
                tracing::error!(topic = %self.name, path = %p.path.display(), "segment has no intact first record; seeking past it");
                Ok(FirstTs::Unreadable)
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                Ok(if self.has_segment(p.base) { FirstTs::Unreadable } else { FirstTs::Gone })
            }
            Err(err) => Err(LogError::io(format!("reading the first record of {}", p.path.display()), err)),
        }
    }

    fn has_segment(&self, base: u64) -> bool {
        self.lock().by_base(base).is_some()
    }

    /// Builds the index and newest timestamp of a sealed segment found at open. A missing file
    /// means retention got there first, which the caller's next pass notices.
    fn scan_sealed(&self, base: u64, path: &Path) -> Result<(), LogError> {
        let scanned = File::open(path).and_then(|f| {
            let len = f.metadata()?.len();
            segment::scan(&f, base, len).map(|r| (r, len))
        });
        let (result, len) = match scanned {
            Ok(v) => v,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let mut st = self.lock();
                if let Some(seg) = st.by_base(base) {
                    // Listed but gone: treat it as empty so reads move past it.
                    tracing::error!(topic = %self.name, path = %path.display(), "segment file disappeared");
                    seg.scanned = true;
                    seg.index = Default::default();
                    let old = std::mem::replace(&mut seg.size, 0);
                    st.bytes -= old;
                }
                return Ok(());
            }
            Err(err) => return Err(LogError::io(format!("scanning {}", path.display()), err)),
        };
        if result.valid_len < len {
            tracing::error!(topic = %self.name, path = %path.display(), valid = result.valid_len, len,
                "sealed segment has damaged records; reads stop before them");
        }
        let mut st = self.lock();
        // Another reader may have scanned it meanwhile; the first result stands.
        if let Some(seg) = st.by_base(base)
            && !seg.scanned
        {
            let old = seg.size;
            seg.size = result.valid_len;
            seg.index = result.index;
            seg.max_ts = result.max_ts;
            seg.first_ts = seg.first_ts.or(result.first_ts);
            seg.scanned = true;
            st.bytes = st.bytes - old + result.valid_len;
        }
        Ok(())
    }

    /// Deletes the oldest sealed segments while the topic is over `max_bytes` or their newest
    /// record is older than `max_age_nanos` at `now_nanos`. Returns how many were deleted, and
    /// their bytes.
    pub(crate) fn enforce_retention_blocking(
        &self,
        max_age_nanos: i64,
        max_bytes: u64,
        held_from: Option<u64>,
        now_nanos: i64,
        syncs: &AtomicU64,
    ) -> Result<(usize, u64), LogError> {
        let _one_at_a_time = self.retention.lock().unwrap_or_else(PoisonError::into_inner);
        let mut doomed = Vec::new();
        let mut doomed_bytes = 0;
        loop {
            let unscanned = {
                let mut st = self.lock();
                if st.segments.len() <= 1 {
                    break;
                }
                let front = &st.segments[0];
                // A held record is kept from age retention: the front segment ends where the
                // next one begins.
                let held = held_from.is_some_and(|h| h < st.segments[1].base);
                let expired = match (front.scanned, front.max_ts) {
                    _ if st.bytes > max_bytes => true,
                    _ if held => false,
                    (false, _) => false,
                    (true, Some(ts)) => now_nanos.saturating_sub(ts) > max_age_nanos,
                    // A sealed segment without records holds nothing worth keeping.
                    (true, None) => true,
                };
                if expired {
                    let seg = st.segments.pop_front().expect("checked len");
                    st.bytes -= seg.size;
                    doomed_bytes += seg.size;
                    doomed.push(seg.path);
                    continue;
                }
                if front.scanned {
                    break;
                }
                (front.base, front.path.clone())
            };
            self.scan_sealed(unscanned.0, &unscanned.1)?;
        }
        if doomed.is_empty() {
            return Ok((0, 0));
        }
        // The segments already left the list, so readers no longer find them; a reader that
        // opened one before keeps reading it (unlinked files stay readable on Unix).
        for path in &doomed {
            if let Err(err) = std::fs::remove_file(path)
                && err.kind() != io::ErrorKind::NotFound
            {
                return Err(LogError::io(format!("deleting {}", path.display()), err));
            }
        }
        // Not needed for correctness (a resurrected old segment is deleted again), but it keeps
        // a crash from bringing back gigabytes that were already counted as gone.
        crate::writer::sync_dir(&self.dir).map_err(|e| LogError::io(format!("syncing {}", self.dir.display()), e))?;
        syncs.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(topic = %self.name, deleted = doomed.len(), "retention deleted segments");
        Ok((doomed.len(), doomed_bytes))
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}
