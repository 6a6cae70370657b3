//! Thin public wrappers over the on-disk format and the segment readers, for the fuzz targets in
//! `fuzz/` at the repository root. Not part of the API: hidden from the docs and free to change.
//!
//! Each function calls the crate's own code (`format`, `segment`) and only translates its
//! crate-private types; the checks live in the fuzz target.

use crate::format::{self, FramePrefix, HeaderError, SegmentHeader};
use crate::segment::{self, ReadCursor, ReadStop};
use crate::{NewRecord, Record};
use bytes::Bytes;
use std::fs::File;
use std::io;
use std::path::Path;

/// Bytes before the first frame of a segment file.
pub const HEADER_LEN: u64 = format::HEADER_LEN;
/// Bytes of a frame before its body (length, CRC).
pub const FRAME_PREFIX_LEN: usize = format::FRAME_PREFIX_LEN;

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    Valid { base_offset: u64, created_nanos: i64 },
    Invalid,
    UnsupportedVersion(u16),
}

/// Decodes the first 32 bytes of a segment file.
pub fn decode_header(bytes: &[u8]) -> Header {
    match SegmentHeader::decode(bytes) {
        Ok(h) => Header::Valid { base_offset: h.base_offset, created_nanos: h.created_nanos },
        Err(HeaderError::Invalid) => Header::Invalid,
        Err(HeaderError::UnsupportedVersion(v)) => Header::UnsupportedVersion(v),
    }
}

/// A segment file's bytes as the writer would leave them: header, then `records` framed with
/// offsets from `base_offset`.
pub fn encode_segment(base_offset: u64, created_nanos: i64, records: &[NewRecord]) -> Vec<u8> {
    let mut buf = SegmentHeader { base_offset, created_nanos }.encode().to_vec();
    for (i, rec) in records.iter().enumerate() {
        format::encode_frame(&mut buf, base_offset.wrapping_add(i as u64), rec);
    }
    buf
}

/// The frame of `rec` at `offset`, prefix included.
pub fn encode_frame(offset: u64, rec: &NewRecord) -> Vec<u8> {
    let mut buf = Vec::with_capacity(format::frame_len(rec));
    format::encode_frame(&mut buf, offset, rec);
    buf
}

/// Whether `body` matches the 8-byte frame prefix in front of it (length and CRC).
pub fn frame_matches(prefix: &[u8; FRAME_PREFIX_LEN], body: &[u8]) -> bool {
    FramePrefix::parse(prefix).matches(body)
}

/// Decodes a frame body whose CRC matched.
pub fn decode_body(body: &[u8]) -> Option<Record> {
    format::decode_body(Bytes::copy_from_slice(body))
}

/// What the verifying scan (run on the last segment at open) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Offset after the last good record.
    pub end: u64,
    /// Bytes up to the end of the last good record, header included.
    pub valid_len: u64,
    pub records: u64,
    pub first_ts: Option<i64>,
    pub max_ts: Option<i64>,
}

/// Scans the segment file at `path` as open does, for a segment named `base` of `len` bytes.
pub fn scan_file(path: &Path, base: u64, len: u64) -> io::Result<Scan> {
    let scan = segment::scan(&File::open(path)?, base, len)?;
    Ok(Scan {
        end: scan.end,
        valid_len: scan.valid_len,
        records: scan.records,
        first_ts: scan.first_ts,
        max_ts: scan.max_ts,
    })
}

/// Why [`read_file`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Full,
    End,
    Corrupt,
}

/// Reads records as a consumer's read does: from file position `start` (a frame boundary) to
/// `end_pos`, skipping offsets below `next`, up to `max_records` records or `max_bytes`.
pub fn read_file(
    path: &Path,
    start: u64,
    end_pos: u64,
    next: u64,
    max_records: usize,
    max_bytes: usize,
) -> io::Result<(Vec<Record>, Stop)> {
    let mut cursor = ReadCursor { next, records: Vec::new(), bytes: 0, max_records, max_bytes };
    let stop = match segment::read_records(path, start, end_pos, &mut cursor)? {
        ReadStop::Full => Stop::Full,
        ReadStop::End => Stop::End,
        ReadStop::Corrupt => Stop::Corrupt,
    };
    Ok((cursor.records, stop))
}

/// The offset of the first intact record with a timestamp of at least `time`, as seeking by time
/// finds it.
pub fn first_at_or_after(path: &Path, base: u64, end_pos: u64, time: i64) -> io::Result<Option<u64>> {
    segment::first_at_or_after(path, base, end_pos, time)
}
