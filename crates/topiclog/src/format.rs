//! The bytes on disk: segment headers and record frames.
//!
//! A segment file starts with a 32-byte header, then holds records back to back:
//!
//! ```text
//! header  magic "FCTOPLOG" | version u16 | reserved u16 | crc32c u32 | base_offset u64 | created_unix_nanos i64
//! frame   body_len u32 | crc32c u32 | body (body_len bytes)
//! body    offset u64 | timestamp_nanos i64 | attribute_count u32
//!         | (key_len u32 | key | value_len u32 | value) * attribute_count | payload (the rest)
//! ```
//!
//! Integers are little-endian. The frame CRC (CRC-32C) covers `body_len` and the whole body, so a
//! torn length, a torn body or a record from another position (wrong offset) is caught when the
//! tail is scanned at open. The header CRC covers every header byte but itself. The version lets a
//! later format refuse to be misread by this code instead of being "repaired" by it.

use crate::{NewRecord, Record};
use bytes::Bytes;

pub(crate) const HEADER_LEN: u64 = 32;
pub(crate) const FRAME_PREFIX_LEN: usize = 8;
/// Offset, timestamp and attribute count: the smallest possible body.
pub(crate) const BODY_FIXED_LEN: usize = 20;
/// Each attribute pays two length fields; capping the count keeps a record's body within `u32`.
pub(crate) const MAX_ATTRIBUTES: usize = u16::MAX as usize;
const MAGIC: [u8; 8] = *b"FCTOPLOG";
const FORMAT_VERSION: u16 = 1;

/// What the first 32 bytes of a segment say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub base_offset: u64,
    pub created_nanos: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Short, torn or not ours.
    Invalid,
    /// Written by a newer format this code must not touch.
    UnsupportedVersion(u16),
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut buf = [0u8; HEADER_LEN as usize];
        buf[0..8].copy_from_slice(&MAGIC);
        buf[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf[16..24].copy_from_slice(&self.base_offset.to_le_bytes());
        buf[24..32].copy_from_slice(&self.created_nanos.to_le_bytes());
        let crc = header_crc(&buf);
        buf[12..16].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let buf: &[u8; HEADER_LEN as usize] =
            buf.get(..HEADER_LEN as usize).and_then(|b| b.try_into().ok()).ok_or(HeaderError::Invalid)?;
        if buf[0..8] != MAGIC {
            return Err(HeaderError::Invalid);
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        if le_u32(&buf[12..16]) != header_crc(buf) {
            return Err(HeaderError::Invalid);
        }
        Ok(SegmentHeader { base_offset: le_u64(&buf[16..24]), created_nanos: le_u64(&buf[24..32]) as i64 })
    }
}

/// CRC-32C (Castagnoli, reflected, init and xor-out all ones: the iSCSI CRC) over `parts` in
/// order. `crc32c` uses the SSE 4.2 / ARMv8 instruction when the CPU has it (chosen at run time)
/// and a table otherwise; the value is the same either way, and the same the log always wrote.
fn crc32c(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, part| crc32c::crc32c_append(crc, part))
}

fn header_crc(buf: &[u8; HEADER_LEN as usize]) -> u32 {
    crc32c(&[&buf[0..12], &buf[16..32]])
}

/// The size `max_record_bytes` limits: payload plus attribute keys and values, which is what the
/// publisher controls; framing overhead is ours and not counted.
pub(crate) fn record_size(payload_len: usize, attributes: &[(String, String)]) -> usize {
    attributes.iter().fold(payload_len, |n, (k, v)| n.saturating_add(k.len()).saturating_add(v.len()))
}

/// Bytes `rec` takes on disk, prefix included.
pub(crate) fn frame_len(rec: &NewRecord) -> usize {
    FRAME_PREFIX_LEN + body_len(rec)
}

fn body_len(rec: &NewRecord) -> usize {
    BODY_FIXED_LEN + rec.attributes.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>() + rec.payload.len()
}

/// Appends the frame of `rec` at `offset` to `buf`. The caller has checked the size limits, which
/// keep the body length within `u32`.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, offset: u64, rec: &NewRecord) {
    let start = buf.len();
    let len = u32::try_from(body_len(rec)).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&rec.timestamp_nanos.to_le_bytes());
    buf.extend_from_slice(&(rec.attributes.len() as u32).to_le_bytes());
    for (k, v) in &rec.attributes {
        buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        buf.extend_from_slice(v.as_bytes());
    }
    buf.extend_from_slice(&rec.payload);
    let crc = frame_crc(&buf[start..start + 4], &buf[start + FRAME_PREFIX_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn frame_crc(len: &[u8], body: &[u8]) -> u32 {
    crc32c(&[len, body])
}

/// The two fields in front of every body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FramePrefix {
    pub body_len: u32,
    pub crc: u32,
}

impl FramePrefix {
    pub(crate) fn parse(buf: &[u8; FRAME_PREFIX_LEN]) -> FramePrefix {
        FramePrefix { body_len: le_u32(&buf[0..4]), crc: le_u32(&buf[4..8]) }
    }

    /// Bytes of the whole frame.
    pub(crate) fn frame_len(&self) -> u64 {
        FRAME_PREFIX_LEN as u64 + u64::from(self.body_len)
    }

    /// Whether `body` is what was written with this prefix.
    pub(crate) fn matches(&self, body: &[u8]) -> bool {
        body.len() == self.body_len as usize
            && body.len() >= BODY_FIXED_LEN
            && frame_crc(&self.body_len.to_le_bytes(), body) == self.crc
    }
}

/// The offset and timestamp of a body whose CRC matched; `None` if it is too short.
pub(crate) fn body_offset_and_time(body: &[u8]) -> Option<(u64, i64)> {
    (body.len() >= BODY_FIXED_LEN).then(|| (le_u64(&body[0..8]), le_u64(&body[8..16]) as i64))
}

/// Decodes a body whose CRC matched. `None` means the fields do not add up (a bug or a CRC
/// collision); callers treat it like corruption.
pub(crate) fn decode_body(body: Bytes) -> Option<Record> {
    let (offset, timestamp_nanos) = body_offset_and_time(&body)?;
    let count = le_u32(&body[16..20]) as usize;
    let mut pos = BODY_FIXED_LEN;
    let take = |pos: &mut usize| -> Option<String> {
        let len = le_u32(body.get(*pos..*pos + 4)?) as usize;
        let start = *pos + 4;
        let bytes = body.get(start..start.checked_add(len)?)?;
        *pos = start + len;
        String::from_utf8(bytes.to_vec()).ok()
    };
    // Never trust a count for pre-allocation beyond what the body could hold.
    let mut attributes = Vec::with_capacity(count.min(body.len() / 8));
    for _ in 0..count {
        let key = take(&mut pos)?;
        let value = take(&mut pos)?;
        attributes.push((key, value));
    }
    let payload = body.slice(pos..);
    Some(Record { offset, timestamp_nanos, attributes, payload })
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewRecord {
        NewRecord {
            timestamp_nanos: -42,
            attributes: vec![("deviceId".into(), "dev-1".into()), (String::new(), "ü".into())],
            payload: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader { base_offset: 77, created_nanos: 1_700_000_000_000_000_000 };
        let mut buf = h.encode();
        assert_eq!(SegmentHeader::decode(&buf), Ok(h));
        assert_eq!(SegmentHeader::decode(&buf[..31]), Err(HeaderError::Invalid));
        buf[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&buf), Err(HeaderError::Invalid));
        let mut future = h.encode();
        future[8] = 9;
        assert_eq!(SegmentHeader::decode(&future), Err(HeaderError::UnsupportedVersion(9)));
    }

    #[test]
    fn frame_round_trip() {
        let rec = sample();
        let mut buf = vec![0xAA]; // frames are appended, not written at position 0
        encode_frame(&mut buf, 9, &rec);
        assert_eq!(buf.len(), 1 + frame_len(&rec));
        let prefix = FramePrefix::parse(buf[1..9].try_into().expect("8 bytes"));
        assert_eq!(prefix.frame_len() as usize, frame_len(&rec));
        let body = &buf[9..];
        assert!(prefix.matches(body));
        let decoded = decode_body(Bytes::copy_from_slice(body)).expect("decodes");
        assert_eq!(
            decoded,
            Record {
                offset: 9,
                timestamp_nanos: -42,
                attributes: rec.attributes.clone(),
                payload: rec.payload.clone()
            }
        );
    }

    #[test]
    fn crc_catches_any_flipped_bit() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 3, &sample());
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[i] ^= 1 << bit;
                let prefix = FramePrefix::parse(damaged[..8].try_into().expect("8 bytes"));
                assert!(!prefix.matches(&damaged[8..]), "byte {i} bit {bit}");
            }
        }
    }

    /// The CRC is the one every existing segment was written with: the standard CRC-32C check
    /// value, and the table-driven `crc` crate's CRC_32_ISCSI (what the log used before) on
    /// inputs of every length around the hardware path's 8-byte steps, split anywhere.
    #[test]
    fn crc_is_the_castagnoli_crc_logs_were_written_with() {
        assert_eq!(crc32c(&[b"123456789"]), 0xE306_9283);
        let table = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in 0..data.len() {
            let want = table.checksum(&data[..len]);
            assert_eq!(crc32c(&[&data[..len]]), want, "length {len}");
            let split = len / 3;
            assert_eq!(crc32c(&[&data[..split], &data[split..len]]), want, "length {len} split at {split}");
        }
    }

    /// A frame and a header as this format has always written them (bytes fixed in the test,
    /// computed bit by bit outside this code): it still reads, so
    /// logs written before the CRC changed implementation open as they did.
    #[test]
    fn a_frame_written_before_still_matches() {
        let rec = NewRecord {
            timestamp_nanos: 1_700_000_000_000_000_000,
            attributes: vec![("deviceId".into(), "d1".into())],
            payload: Bytes::from_static(b"hi"),
        };
        let mut buf = Vec::new();
        encode_frame(&mut buf, 5, &rec);
        let golden: [u8; 8] = [0x28, 0, 0, 0, 0xf7, 0x93, 0x0d, 0x8a];
        assert_eq!(buf[..8], golden, "frame prefix (body length, CRC)");
        let prefix = FramePrefix::parse(&golden);
        assert!(prefix.matches(&buf[8..]));
        let header = SegmentHeader { base_offset: 5, created_nanos: 7 }.encode();
        assert_eq!(header[12..16], [0x37, 0xfb, 0xe0, 0x64], "header CRC");
        assert_eq!(SegmentHeader::decode(&header), Ok(SegmentHeader { base_offset: 5, created_nanos: 7 }));
    }

    #[test]
    fn size_counts_publisher_bytes_only() {
        assert_eq!(record_size(5, &sample().attributes), 5 + 8 + 5 + 2);
    }
}
