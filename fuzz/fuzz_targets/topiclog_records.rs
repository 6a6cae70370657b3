//! Fuzz target: the topic log's segment files as open and reads find them after a crash or disk
//! damage (`ferrocore_topiclog::fuzzing`: header decode, the verifying scan of open, record reads,
//! seeking by time, frame body decode).
//!
//! Input layout: `mode: u8 | next: u8 | rest`.
//!
//! * `mode & 1 == 0`: `rest` is the whole segment file, as found on disk.
//! * `mode & 1 == 1`: `rest` describes records, which are framed into a valid segment (so the
//!   fuzzer gets past the CRCs); then, unless `mode & 2`, the last bytes of `rest` damage it:
//!   a cut length and a few byte flips. Undamaged, every record must read back as written.
//!
//! Checks beyond "no panic": the scan keeps a prefix of whole frames with consecutive offsets;
//! a read of the scanned bytes returns exactly the scanned records from `next` on, and stops as
//! corrupt only at a frame whose body cannot be decoded; each record read re-encodes to the very
//! bytes it was read from; seeking by time agrees with the records.

#![no_main]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use bytes::Bytes;
use ferrocore_topiclog::NewRecord;
use ferrocore_topiclog::fuzzing::{self, FRAME_PREFIX_LEN, HEADER_LEN, Header, Stop};
use libfuzzer_sys::fuzz_target;

/// One scratch file per fuzzing process, for the readers under test, which take a path. It is
/// unlinked at once and reached through `/proc/self/fd`, so nothing is left behind when the
/// fuzzer is stopped. In memory where possible: rewriting a file on a disk file system costs
/// milliseconds (ext4 flushes a truncated and rewritten file on close), a hundred times the run.
static SCRATCH: LazyLock<(File, PathBuf)> = LazyLock::new(|| {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let path = dir.join(format!("ferrocore-fuzz-topiclog-{}.log", std::process::id()));
    let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).expect("scratch file");
    std::fs::remove_file(&path).expect("unlinking the scratch file");
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    (file, by_fd)
});

/// Bytes → records: `ts: i8 | attribute count: u8 % 4 | (key len: u8 % 8, key, value len, value)* |
/// payload len: u8 | payload`, repeated while input lasts.
fn records(mut data: &[u8]) -> Vec<NewRecord> {
    fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
        let n = n.min(data.len());
        let (head, tail) = data.split_at(n);
        *data = tail;
        head
    }
    fn byte(data: &mut &[u8]) -> u8 {
        take(data, 1).first().copied().unwrap_or(0)
    }
    let mut out = Vec::new();
    while !data.is_empty() && out.len() < 64 {
        let timestamp_nanos = i64::from(byte(&mut data) as i8) * 1_000_000_007;
        let count = byte(&mut data) % 4;
        let mut attributes = Vec::new();
        for _ in 0..count {
            let k = byte(&mut data) as usize % 8;
            let key = String::from_utf8_lossy(take(&mut data, k)).into_owned();
            let v = byte(&mut data) as usize % 8;
            let value = String::from_utf8_lossy(take(&mut data, v)).into_owned();
            attributes.push((key, value));
        }
        let p = byte(&mut data) as usize;
        let payload = Bytes::copy_from_slice(take(&mut data, p));
        out.push(NewRecord { timestamp_nanos, attributes, payload });
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, next], rest)) = data.split_first_chunk::<2>() else { return };
    let mut built = None;
    let file: Vec<u8> = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        // The last up to 9 bytes damage the file, unless mode says to keep it whole.
        let (desc, damage) = if mode & 2 != 0 { (rest, &[][..]) } else { rest.split_at(rest.len().saturating_sub(9)) };
        let recs = records(desc);
        let base = u64::from(mode >> 2);
        let mut file = fuzzing::encode_segment(base, 1_700_000_000_000_000_000, &recs);
        if let Some((&cut, flips)) = damage.split_first() {
            let keep = file.len().saturating_sub(usize::from(cut) % 64);
            file.truncate(keep);
            for pair in flips.chunks_exact(2) {
                let len = file.len();
                if len > 0 {
                    let at = (usize::from(pair[0]) * 7919) % len;
                    file[at] ^= pair[1];
                }
            }
        } else {
            built = Some((base, recs));
        }
        file
    };

    let base = match fuzzing::decode_header(&file) {
        Header::Valid { base_offset, .. } => base_offset,
        // Open refuses a newer format; a torn header is rewritten from the file name, which we
        // play with base 0.
        Header::UnsupportedVersion(_) => return,
        Header::Invalid => 0,
    };
    if let Some((built_base, _)) = &built {
        assert_eq!(base, *built_base, "a written header did not decode");
    }
    let (scratch, path) = &*SCRATCH;
    scratch.set_len(0).expect("truncating the scratch segment");
    scratch.write_all_at(&file, 0).expect("writing the scratch segment");
    let len = (file.len() as u64).max(HEADER_LEN);

    let scan = fuzzing::scan_file(path, base, len).expect("scan");
    assert!(scan.valid_len >= HEADER_LEN && scan.valid_len <= len);
    assert_eq!(scan.end, base + scan.records);
    assert_eq!(scan.first_ts.is_some(), scan.records > 0);

    // Where each scanned frame starts and ends, walked here independently of the crate.
    let mut frames = Vec::new();
    let mut pos = HEADER_LEN as usize;
    while frames.len() < scan.records as usize {
        let prefix: &[u8; FRAME_PREFIX_LEN] = file[pos..pos + FRAME_PREFIX_LEN].try_into().unwrap();
        let body_len = u32::from_le_bytes(prefix[..4].try_into().unwrap()) as usize;
        let end = pos + FRAME_PREFIX_LEN + body_len;
        assert!(fuzzing::frame_matches(prefix, &file[pos + FRAME_PREFIX_LEN..end]), "scan kept a bad frame");
        frames.push((pos, end));
        pos = end;
    }
    assert_eq!(pos as u64, scan.valid_len, "scan's valid length is not the end of its last frame");

    let next = base + u64::from(next % 8);
    let (read, stop) =
        fuzzing::read_file(path, HEADER_LEN, scan.valid_len, next, usize::MAX, usize::MAX).expect("read");
    let skipped = next.saturating_sub(base).min(scan.records) as usize;
    for (i, record) in read.iter().enumerate() {
        let (start, end) = frames[skipped + i];
        assert_eq!(record.offset, base + (skipped + i) as u64);
        let new = NewRecord {
            timestamp_nanos: record.timestamp_nanos,
            attributes: record.attributes.clone(),
            payload: record.payload.clone(),
        };
        assert_eq!(
            fuzzing::encode_frame(record.offset, &new),
            file[start..end],
            "a record does not re-encode to its bytes"
        );
    }
    match stop {
        Stop::End => assert_eq!(read.len(), scan.records as usize - skipped, "a read lost scanned records"),
        Stop::Corrupt => {
            // Only a frame whose CRC matches but whose body does not decode may stop a read of
            // scanned bytes (a writer bug or a CRC collision; see fuzz/README.md).
            let (start, end) = frames[skipped + read.len()];
            assert!(fuzzing::decode_body(&file[start + FRAME_PREFIX_LEN..end]).is_none());
        }
        Stop::Full => panic!("an unlimited read reported itself full"),
    }

    if let Some((_, recs)) = built {
        assert_eq!(scan.records as usize, recs.len(), "a whole segment lost records at open");
        assert_eq!(stop, Stop::End);
        for (record, written) in read.iter().zip(&recs[skipped..]) {
            assert_eq!(record.timestamp_nanos, written.timestamp_nanos);
            assert_eq!(record.attributes, written.attributes);
            assert_eq!(record.payload, written.payload);
        }
    }

    // Seeking by time: the first record (in offset order) at or after the time.
    if stop == Stop::End && skipped == 0 {
        let time = scan.first_ts.unwrap_or(0).wrapping_add(i64::from(mode) * 1_000_000_007 - 128_000_000_896);
        let found = fuzzing::first_at_or_after(path, base, scan.valid_len, time).expect("seek");
        let expected = read.iter().find(|r| r.timestamp_nanos >= time).map(|r| r.offset);
        assert_eq!(found, expected, "seeking by time disagrees with the records");
    }
});
