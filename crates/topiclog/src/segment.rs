//! One segment file: its name, what the topic remembers about it, and the two ways of reading it
//! (a verifying scan, and record reads from a known-good position).
//!
//! Segments are immutable once the writer moves on; the active one only grows. Readers open their
//! own file handle and never read past the committed size the topic hands them, so they cannot
//! see a record before it is durable, and they never wait for the writer.

use crate::Record;
use crate::format::{self, FRAME_PREFIX_LEN, FramePrefix, HEADER_LEN};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A sparse index entry is added once this many bytes follow the previous one: a read starts at
/// most this far before its record, and a full 64 MiB segment needs only 512 entries.
pub(crate) const INDEX_INTERVAL_BYTES: u64 = 128 * 1024;

/// Buffer for sequential reads; large enough to amortise syscalls, small enough per reader.
const READ_BUFFER_BYTES: usize = 64 * 1024;

pub(crate) fn file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// The base offset encoded in a segment file name, or `None` for any other file.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What the topic knows about one segment; guarded by the topic's state lock.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub path: PathBuf,
    /// Committed bytes, header included. Readers stop here.
    pub size: u64,
    /// Newest record timestamp, once known (`None` for an empty or not yet scanned segment).
    pub max_ts: Option<i64>,
    /// Timestamp of the first record, once known: what seeking by time searches segments by.
    /// The writer knows it for the segments it creates; for segments found at open it is read on
    /// first use, and stays `None` while the segment is empty or its first record is damaged.
    pub first_ts: Option<i64>,
    /// Whether `index` and `max_ts` are complete. Sealed segments found at open are scanned lazily,
    /// on their first read or retention check, so that open does not read the whole log.
    pub scanned: bool,
    pub index: SparseIndex,
    /// Where the last few commits into this segment ended, as (offset of the next record, file
    /// position), oldest first; kept for the active segment only. A consumer following the tail
    /// asks for the offset right after its previous read, which is almost always one of these,
    /// so its read starts at that record instead of at the sparse index entry up to
    /// [`INDEX_INTERVAL_BYTES`] before it, skipping nothing.
    pub recent_ends: VecDeque<(u64, u64)>,
}

/// Commit ends remembered per active segment: at the writer's 500 commits per second at most,
/// the last 64 ms or more, for 1 KiB.
pub(crate) const RECENT_ENDS: usize = 64;

impl Segment {
    /// Where to start reading to find `offset`: the closest known record boundary at or before it
    /// (a recent commit's end, else the last indexed record).
    pub(crate) fn position_for(&self, offset: u64) -> u64 {
        let i = self.index.entries.partition_point(|&(o, _)| o <= offset);
        let indexed = if i == 0 { HEADER_LEN } else { self.index.entries[i - 1].1 };
        let r = self.recent_ends.partition_point(|&(o, _)| o <= offset);
        // Offsets grow with positions, so the later of two boundaries at or before `offset` is
        // the one with the higher position.
        if r == 0 { indexed } else { indexed.max(self.recent_ends[r - 1].1) }
    }

    /// Notes that a commit ended this segment's durable part at `pos`, where record `next` goes.
    pub(crate) fn note_commit_end(&mut self, next: u64, pos: u64) {
        if self.recent_ends.back().is_some_and(|&(o, _)| o >= next) {
            return;
        }
        if self.recent_ends.len() == RECENT_ENDS {
            self.recent_ends.pop_front();
        }
        self.recent_ends.push_back((next, pos));
    }
}

/// Offset → file position, one entry per [`INDEX_INTERVAL_BYTES`].
#[derive(Debug, Default, Clone)]
pub(crate) struct SparseIndex {
    pub entries: Vec<(u64, u64)>,
}

impl SparseIndex {
    /// Notes the record `offset` that starts at `pos`; keeps it if it is far enough from the last.
    pub(crate) fn observe(&mut self, offset: u64, pos: u64) -> Option<(u64, u64)> {
        index_due(self.entries.last().map(|&(_, p)| p), pos).then(|| {
            self.entries.push((offset, pos));
            (offset, pos)
        })
    }

    pub(crate) fn last_position(&self) -> Option<u64> {
        self.entries.last().map(|&(_, p)| p)
    }
}

/// Whether a record at `pos` deserves an index entry, given the position of the last entry.
pub(crate) fn index_due(last_indexed: Option<u64>, pos: u64) -> bool {
    last_indexed.is_none_or(|last| pos >= last + INDEX_INTERVAL_BYTES)
}

/// What a verifying scan found.
#[derive(Debug)]
pub(crate) struct ScanResult {
    /// Offset after the last good record (`base` if there is none).
    pub end: u64,
    /// Bytes up to the end of the last good record.
    pub valid_len: u64,
    pub index: SparseIndex,
    pub max_ts: Option<i64>,
    pub first_ts: Option<i64>,
    pub records: u64,
}

/// Reads frames from `HEADER_LEN` until `file_len`, checking each CRC and that offsets count up
/// from `base` one by one. Stops quietly at the first frame that fails: everything before it is
/// good, and for the last segment everything after it is a torn tail.
pub(crate) fn scan(file: &File, base: u64, file_len: u64) -> io::Result<ScanResult> {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    reader.seek(SeekFrom::Start(HEADER_LEN))?;
    let mut result = ScanResult {
        end: base,
        valid_len: HEADER_LEN,
        index: SparseIndex::default(),
        max_ts: None,
        first_ts: None,
        records: 0,
    };
    let mut body = Vec::new();
    while result.valid_len + FRAME_PREFIX_LEN as u64 <= file_len {
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        reader.read_exact(&mut prefix)?;
        let prefix = FramePrefix::parse(&prefix);
        // A torn or garbage length may point past the end; checking first also keeps the
        // allocation below bounded by the file size.
        if result.valid_len + prefix.frame_len() > file_len {
            break;
        }
        body.resize(prefix.body_len as usize, 0);
        reader.read_exact(&mut body)?;
        if !prefix.matches(&body) {
            break;
        }
        let Some((offset, ts)) = format::body_offset_and_time(&body) else { break };
        if offset != result.end {
            break;
        }
        result.index.observe(offset, result.valid_len);
        result.max_ts = Some(result.max_ts.map_or(ts, |m| m.max(ts)));
        result.first_ts.get_or_insert(ts);
        result.end += 1;
        result.records += 1;
        result.valid_len += prefix.frame_len();
    }
    Ok(result)
}

/// Record frames of one segment in file order, each checked by CRC and by its offset following
/// the one before, yielding offset and timestamp. Ends at `end_pos` or at the first frame that
/// fails, as reads do.
struct Frames {
    reader: BufReader<File>,
    pos: u64,
    end_pos: u64,
    next: u64,
    body: Vec<u8>,
}

impl Frames {
    fn open(path: &Path, base: u64, end_pos: u64) -> io::Result<Frames> {
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, File::open(path)?);
        reader.seek(SeekFrom::Start(HEADER_LEN))?;
        Ok(Frames { reader, pos: HEADER_LEN, end_pos, next: base, body: Vec::new() })
    }

    /// The next good record's offset and timestamp; `None` at the end or at damage.
    fn next_record(&mut self) -> io::Result<Option<(u64, i64)>> {
        if self.pos + FRAME_PREFIX_LEN as u64 > self.end_pos {
            return Ok(None);
        }
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        self.reader.read_exact(&mut prefix)?;
        let prefix = FramePrefix::parse(&prefix);
        if self.pos + prefix.frame_len() > self.end_pos {
            return Ok(None);
        }
        self.body.resize(prefix.body_len as usize, 0);
        self.reader.read_exact(&mut self.body)?;
        if !prefix.matches(&self.body) {
            return Ok(None);
        }
        match format::body_offset_and_time(&self.body) {
            Some((offset, ts)) if offset == self.next => {
                self.pos += prefix.frame_len();
                self.next += 1;
                Ok(Some((offset, ts)))
            }
            _ => Ok(None),
        }
    }
}

/// The timestamp of the first record of the segment at `path` (base offset `base`, `end_pos`
/// bytes long); `None` if it has no intact first record.
pub(crate) fn first_timestamp(path: &Path, base: u64, end_pos: u64) -> io::Result<Option<i64>> {
    Ok(Frames::open(path, base, end_pos)?.next_record()?.map(|(_, ts)| ts))
}

/// The offset of the first record, in offset order, whose timestamp is at least `time`; `None` if
/// no intact record up to `end_pos` has one. Reads the segment from its start: timestamps are
/// only roughly ordered, so no index can say where such a record begins.
pub(crate) fn first_at_or_after(path: &Path, base: u64, end_pos: u64, time: i64) -> io::Result<Option<u64>> {
    let mut frames = Frames::open(path, base, end_pos)?;
    while let Some((offset, ts)) = frames.next_record()? {
        if ts >= time {
            return Ok(Some(offset));
        }
    }
    Ok(None)
}

/// Why [`read_records`] returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadStop {
    /// `max_records` or `max_bytes` reached.
    Full,
    /// Reached the committed end of the segment.
    End,
    /// A frame failed its CRC or did not decode: storage damage past what open recovered.
    Corrupt,
}

/// Limits and results of one read, shared across the segments it spans.
pub(crate) struct ReadCursor {
    /// Next offset wanted; records below it are skipped.
    pub next: u64,
    pub records: Vec<Record>,
    pub bytes: usize,
    pub max_records: usize,
    pub max_bytes: usize,
}

impl ReadCursor {
    fn is_full(&self) -> bool {
        self.records.len() >= self.max_records
    }
}

/// Reads records from `path` starting at file position `start` (a frame boundary) until
/// `end_pos`, the committed size. At least one record is returned if any is available, even if it
/// alone exceeds `max_bytes`, so that a large record cannot stall a consumer.
pub(crate) fn read_records(path: &Path, start: u64, end_pos: u64, cursor: &mut ReadCursor) -> io::Result<ReadStop> {
    let file = File::open(path)?;
    // A consumer at the tail reads a few new records: a buffer of what there is to read rather
    // than 64 KiB spares the allocator a large block (and its consolidation on free) per read.
    let wanted = usize::try_from(end_pos.saturating_sub(start)).unwrap_or(usize::MAX);
    let mut reader = BufReader::with_capacity(wanted.clamp(FRAME_PREFIX_LEN, READ_BUFFER_BYTES), file);
    reader.seek(SeekFrom::Start(start))?;
    let mut pos = start;
    while pos + FRAME_PREFIX_LEN as u64 <= end_pos {
        if cursor.is_full() {
            return Ok(ReadStop::Full);
        }
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        reader.read_exact(&mut prefix)?;
        let prefix = FramePrefix::parse(&prefix);
        if pos + prefix.frame_len() > end_pos || (prefix.body_len as usize) < format::BODY_FIXED_LEN {
            return Ok(ReadStop::Corrupt);
        }
        // Peek at the offset first: records before the wanted one are skipped without reading
        // (or checking) their bodies.
        let mut head = [0u8; 8];
        reader.read_exact(&mut head)?;
        let offset = u64::from_le_bytes(head);
        if offset < cursor.next {
            reader.seek_relative(i64::from(prefix.body_len) - 8)?;
            pos += prefix.frame_len();
            continue;
        }
        let mut body = vec![0u8; prefix.body_len as usize];
        body[..8].copy_from_slice(&head);
        reader.read_exact(&mut body[8..])?;
        if !prefix.matches(&body) {
            return Ok(ReadStop::Corrupt);
        }
        let Some(record) = format::decode_body(Bytes::from(body)) else { return Ok(ReadStop::Corrupt) };
        let size = format::record_size(record.payload.len(), &record.attributes);
        if !cursor.records.is_empty() && cursor.bytes.saturating_add(size) > cursor.max_bytes {
            return Ok(ReadStop::Full);
        }
        cursor.bytes = cursor.bytes.saturating_add(size);
        cursor.next = record.offset + 1;
        cursor.records.push(record);
        pos += prefix.frame_len();
    }
    Ok(if cursor.is_full() { ReadStop::Full } else { ReadStop::End })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(file_name(0), "00000000000000000000.log");
        assert_eq!(file_name(u64::MAX), "18446744073709551615.log");
        assert_eq!(parse_file_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        for other in ["42.log", "00000000000000000042.tmp", "0000000000000000004x.log", "99999999999999999999.log"] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn index_is_sparse() {
        let mut idx = SparseIndex::default();
        assert!(idx.observe(0, HEADER_LEN).is_some());
        assert!(idx.observe(1, HEADER_LEN + 100).is_none());
        assert!(idx.observe(2, HEADER_LEN + INDEX_INTERVAL_BYTES).is_some());
        let mut seg = Segment {
            base: 0,
            path: PathBuf::new(),
            size: 0,
            max_ts: None,
            first_ts: None,
            scanned: true,
            index: idx,
            recent_ends: VecDeque::new(),
        };
        assert_eq!(seg.position_for(0), HEADER_LEN);
        assert_eq!(seg.position_for(1), HEADER_LEN);
        assert_eq!(seg.position_for(5), HEADER_LEN + INDEX_INTERVAL_BYTES);
        // Commit ends after the last index entry start reads closer to the wanted record.
        let after = HEADER_LEN + INDEX_INTERVAL_BYTES;
        seg.note_commit_end(7, after + 500);
        seg.note_commit_end(9, after + 900);
        seg.note_commit_end(9, after + 900);
        assert_eq!(seg.recent_ends.len(), 2, "one entry per commit end");
        assert_eq!(seg.position_for(6), after, "before the first remembered end: the index");
        assert_eq!(seg.position_for(7), after + 500);
        assert_eq!(seg.position_for(8), after + 500);
        assert_eq!(seg.position_for(12), after + 900);
        assert_eq!(seg.position_for(1), HEADER_LEN);
        for i in 0..RECENT_ENDS as u64 * 2 {
            seg.note_commit_end(10 + i, after + 1000 + i);
        }
        assert_eq!(seg.recent_ends.len(), RECENT_ENDS, "bounded");
        assert_eq!(seg.position_for(9), after, "forgotten ends fall back to the index");
    }
}
