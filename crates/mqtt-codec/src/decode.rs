//! Decoding: turns the bytes a connection has read so far into [`Packet`] values, one per call,
//! enforcing MQTT 3.1.1 strictly.
//!
//! The work happens in three steps, each refusing bad input as early as it can:
//! 1. the first byte (packet type and flags) is checked as soon as it arrives;
//! 2. once the remaining-length field is complete, the total size is compared with the caller's
//!    limit and with the fixed size some packet types have, so a client can never make the server
//!    wait for (and buffer) a body that would be refused anyway;
//! 3. once the whole packet is buffered, it is split off the buffer (no copy) and its fields are
//!    read; binary fields stay slices of that buffer.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, Packet, Publish, QoS, SubAck, SubAckCode, Subscribe, Unsubscribe, Will,
};
use crate::topic::is_valid_topic_name;

/// Largest value of the remaining-length field (four 7-bit groups).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

// Packet type numbers (high nibble of the first byte).
pub(crate) const CONNECT: u8 = 1;
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const PUBREC: u8 = 5;
pub(crate) const PUBREL: u8 = 6;
pub(crate) const PUBCOMP: u8 = 7;
pub(crate) const SUBSCRIBE: u8 = 8;
pub(crate) const SUBACK: u8 = 9;
pub(crate) const UNSUBSCRIBE: u8 = 10;
pub(crate) const UNSUBACK: u8 = 11;
pub(crate) const PINGREQ: u8 = 12;
pub(crate) const PINGRESP: u8 = 13;
pub(crate) const DISCONNECT: u8 = 14;

type Result<T> = std::result::Result<T, DecodeError>;

/// The log messages for the ways one field can be wrong, built at compile time by [`field!`].
struct Field {
    truncated: &'static str,
    bad_utf8: &'static str,
    nul: &'static str,
    zero: &'static str,
}

/// `field!("CONNECT client identifier")` yields the messages "CONNECT client identifier is
/// truncated", "... is not valid UTF-8" and so on, as `&'static str`.
macro_rules! field {
    ($name:literal) => {
        Field {
            truncated: concat!($name, " is truncated"),
            bad_utf8: concat!($name, " is not valid UTF-8"),
            nul: concat!($name, " contains U+0000"),
            zero: concat!($name, " is 0"),
        }
    };
}

/// Decodes the packet at the front of `buf`.
///
/// - `Ok(None)`: `buf` does not yet hold a whole packet; nothing was consumed. Read more and call
///   again. (The caller may `reserve` for the rest; this function never does.)
/// - `Ok(Some(packet))`: exactly that packet's bytes were removed from the front of `buf`. The
///   PUBLISH payload, will message and password share `buf`'s allocation.
/// - `Err(_)`: the connection must be closed. If the error came from the packet's fields, the
///   packet's bytes have been consumed; for an error found in the fixed header nothing was.
///
/// `max_packet_size` bounds the whole packet, fixed header included. A larger packet is refused
/// with [`DecodeError::PacketTooLarge`] as soon as its remaining-length field is complete.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first)?;
    let Some((remaining, length_bytes)) = read_remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    let header_len = 1 + length_bytes;
    let size = header_len + remaining;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge { size, max: max_packet_size });
    }
    check_remaining_length(first >> 4, remaining)?;
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header_len);
    parse_body(first, Reader { bytes: frame }).map(Some)
}

/// Rejects reserved packet types and fixed-header flags that MQTT 3.1.1 does not allow for the type.
fn check_first_byte(first: u8) -> Result<()> {
    let flags = first & 0x0F;
    let (expected, message) = match first >> 4 {
        0 => return Err(DecodeError::Malformed("reserved packet type 0")),
        15 => return Err(DecodeError::Malformed("reserved packet type 15")),
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 0 has the DUP flag set"));
            }
            return Ok(());
        }
        CONNECT => (0, "CONNECT fixed-header flags must be 0"),
        CONNACK => (0, "CONNACK fixed-header flags must be 0"),
        PUBACK => (0, "PUBACK fixed-header flags must be 0"),
        PUBREC => (0, "PUBREC fixed-header flags must be 0"),
        PUBREL => (0b0010, "PUBREL fixed-header flags must be 0b0010"),
        PUBCOMP => (0, "PUBCOMP fixed-header flags must be 0"),
        SUBSCRIBE => (0b0010, "SUBSCRIBE fixed-header flags must be 0b0010"),
        SUBACK => (0, "SUBACK fixed-header flags must be 0"),
        UNSUBSCRIBE => (0b0010, "UNSUBSCRIBE fixed-header flags must be 0b0010"),
        UNSUBACK => (0, "UNSUBACK fixed-header flags must be 0"),
        PINGREQ => (0, "PINGREQ fixed-header flags must be 0"),
        PINGRESP => (0, "PINGRESP fixed-header flags must be 0"),
        _ => (0, "DISCONNECT fixed-header flags must be 0"),
    };
    if flags == expected { Ok(()) } else { Err(DecodeError::Malformed(message)) }
}

/// Reads the variable-length remaining-length field from the bytes after the first one.
/// Returns the value and how many bytes encoded it, or `None` if the field is not complete yet.
fn read_remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut value = 0usize;
    for (index, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
    }
    if bytes.len() >= 4 { Err(DecodeError::Malformed("remaining length takes more than 4 bytes")) } else { Ok(None) }
}

/// Packet types whose body has a fixed size are checked before their body is awaited.
fn check_remaining_length(packet_type: u8, remaining: usize) -> Result<()> {
    let (expected, message) = match packet_type {
        CONNACK => (2, "CONNACK remaining length must be 2"),
        PUBACK => (2, "PUBACK remaining length must be 2"),
        PUBREC => (2, "PUBREC remaining length must be 2"),
        PUBREL => (2, "PUBREL remaining length must be 2"),
        PUBCOMP => (2, "PUBCOMP remaining length must be 2"),
        UNSUBACK => (2, "UNSUBACK remaining length must be 2"),
        PINGREQ => (0, "PINGREQ remaining length must be 0"),
        PINGRESP => (0, "PINGRESP remaining length must be 0"),
        DISCONNECT => (0, "DISCONNECT remaining length must be 0"),
        _ => return Ok(()),
    };
    if remaining == expected { Ok(()) } else { Err(DecodeError::Malformed(message)) }
}

fn parse_body(first: u8, mut body: Reader) -> Result<Packet> {
    let packet = match first >> 4 {
        CONNECT => Packet::Connect(parse_connect(&mut body)?),
        CONNACK => Packet::ConnAck(parse_connack(&mut body)?),
        PUBLISH => Packet::Publish(parse_publish(first, &mut body)?),
        PUBACK => Packet::PubAck(body.packet_id(field!("PUBACK packet identifier"))?),
        PUBREC => Packet::PubRec(body.packet_id(field!("PUBREC packet identifier"))?),
        PUBREL => Packet::PubRel(body.packet_id(field!("PUBREL packet identifier"))?),
        PUBCOMP => Packet::PubComp(body.packet_id(field!("PUBCOMP packet identifier"))?),
        SUBSCRIBE => Packet::Subscribe(parse_subscribe(&mut body)?),
        SUBACK => Packet::SubAck(parse_suback(&mut body)?),
        UNSUBSCRIBE => Packet::Unsubscribe(parse_unsubscribe(&mut body)?),
        UNSUBACK => Packet::UnsubAck(body.packet_id(field!("UNSUBACK packet identifier"))?),
        PINGREQ => Packet::PingReq,
        PINGRESP => Packet::PingResp,
        DISCONNECT => Packet::Disconnect,
        // check_first_byte refused 0 and 15 already; keep a non-panicking answer anyway.
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    // Fixed-size packets were size-checked up front, PUBLISH took the rest as payload and the
    // list-shaped packets loop to the end, so in practice only CONNECT can have leftovers.
    body.finish(if first >> 4 == CONNECT {
        "CONNECT has bytes after its last field"
    } else {
        "packet has bytes after its last field"
    })?;
    Ok(packet)
}

fn parse_connect(body: &mut Reader) -> Result<Connect> {
    let name = body.string(field!("CONNECT protocol name"))?;
    let level = body.u8("CONNECT protocol level is missing")?;
    if name != "MQTT" || level != 4 {
        return Err(DecodeError::UnsupportedProtocol { name, level });
    }

    let flags = body.u8("CONNECT flags are missing")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag is set"));
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed("CONNECT will QoS or will retain set without the will flag"));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("CONNECT will QoS is 3"))?;
    if password_flag && !username_flag {
        return Err(DecodeError::Malformed("CONNECT password flag set without the user name flag"));
    }

    let keep_alive = body.u16("CONNECT keep-alive is truncated")?;
    let client_id = body.string(field!("CONNECT client identifier"))?;
    let will = if will_flag {
        let topic = body.string(field!("CONNECT will topic"))?;
        if !is_valid_topic_name(&topic) {
            return Err(DecodeError::Malformed("CONNECT will topic is empty or contains a wildcard"));
        }
        let payload = body.binary("CONNECT will message is truncated")?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain })
    } else {
        None
    };
    let username = if username_flag { Some(body.string(field!("CONNECT user name"))?) } else { None };
    let password = if password_flag { Some(body.binary("CONNECT password is truncated")?) } else { None };

    Ok(Connect { protocol_level: level, clean_session, keep_alive, client_id, will, username, password })
}

fn parse_connack(body: &mut Reader) -> Result<ConnAck> {
    let flags = body.u8("CONNACK flags are missing")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("CONNACK reserved flags are set"));
    }
    let code = body.u8("CONNACK return code is missing")?;
    let code = ConnectReturnCode::from_u8(code).ok_or(DecodeError::Malformed("CONNACK return code is reserved"))?;
    let session_present = flags & 0x01 != 0;
    if session_present && code != ConnectReturnCode::Accepted {
        return Err(DecodeError::Malformed("CONNACK refuses the connection but reports a session present"));
    }
    Ok(ConnAck { session_present, code })
}

fn parse_publish(first: u8, body: &mut Reader) -> Result<Publish> {
    let dup = first & 0b1000 != 0;
    // check_first_byte refused QoS 3.
    let qos = QoS::from_u8((first >> 1) & 0b11).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let retain = first & 0b0001 != 0;
    let topic = body.string(field!("PUBLISH topic name"))?;
    if topic.is_empty() {
        return Err(DecodeError::Malformed("PUBLISH topic name is empty"));
    }
    if topic.contains(['+', '#']) {
        return Err(DecodeError::Malformed("PUBLISH topic name contains a wildcard"));
    }
    let packet_id =
        if qos == QoS::AtMostOnce { None } else { Some(body.packet_id(field!("PUBLISH packet identifier"))?) };
    let payload = body.take_rest();
    Ok(Publish { dup, qos, retain, topic, packet_id, payload })
}

fn parse_subscribe(body: &mut Reader) -> Result<Subscribe> {
    let packet_id = body.packet_id(field!("SUBSCRIBE packet identifier"))?;
    if body.is_empty() {
        return Err(DecodeError::Malformed("SUBSCRIBE has no topic filter"));
    }
    let mut filters = Vec::new();
    while !body.is_empty() {
        let filter = body.string(field!("SUBSCRIBE topic filter"))?;
        if filter.is_empty() {
            return Err(DecodeError::Malformed("SUBSCRIBE topic filter is empty"));
        }
        let options = body.u8("SUBSCRIBE requested QoS is missing")?;
        if options & 0xFC != 0 {
            return Err(DecodeError::Malformed("SUBSCRIBE reserved bits of the requested QoS byte are set"));
        }
        let qos = QoS::from_u8(options).ok_or(DecodeError::Malformed("SUBSCRIBE requested QoS is 3"))?;
        filters.push((filter, qos));
    }
    Ok(Subscribe { packet_id, filters })
}

fn parse_suback(body: &mut Reader) -> Result<SubAck> {
    let packet_id = body.packet_id(field!("SUBACK packet identifier"))?;
    if body.is_empty() {
        return Err(DecodeError::Malformed("SUBACK has no return code"));
    }
    let mut return_codes = Vec::with_capacity(body.len());
    while !body.is_empty() {
        let code = body.u8("SUBACK return code is missing")?;
        let code =
            SubAckCode::from_u8(code).ok_or(DecodeError::Malformed("SUBACK return code is not 0, 1, 2 or 0x80"))?;
        return_codes.push(code);
    }
    Ok(SubAck { packet_id, return_codes })
}

fn parse_unsubscribe(body: &mut Reader) -> Result<Unsubscribe> {
    let packet_id = body.packet_id(field!("UNSUBSCRIBE packet identifier"))?;
    if body.is_empty() {
        return Err(DecodeError::Malformed("UNSUBSCRIBE has no topic filter"));
    }
    let mut filters = Vec::new();
    while !body.is_empty() {
        let filter = body.string(field!("UNSUBSCRIBE topic filter"))?;
        if filter.is_empty() {
            return Err(DecodeError::Malformed("UNSUBSCRIBE topic filter is empty"));
        }
        filters.push(filter);
    }
    Ok(Unsubscribe { packet_id, filters })
}

/// Bounds-checked reads from the body of one packet. Every read that would run past the end
/// is an error (the remaining length did not cover the fields), never a panic.
struct Reader {
    bytes: Bytes,
}

impl Reader {
    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn u8(&mut self, missing: &'static str) -> Result<u8> {
        if self.bytes.is_empty() {
            return Err(DecodeError::Malformed(missing));
        }
        Ok(self.bytes.get_u8())
    }

    fn u16(&mut self, truncated: &'static str) -> Result<u16> {
        if self.bytes.len() < 2 {
            return Err(DecodeError::Malformed(truncated));
        }
        Ok(self.bytes.get_u16())
    }

    fn packet_id(&mut self, field: Field) -> Result<u16> {
        match self.u16(field.truncated)? {
            0 => Err(DecodeError::Malformed(field.zero)),
            id => Ok(id),
        }
    }

    /// A 16-bit length followed by that many bytes, returned without copying.
    fn binary(&mut self, truncated: &'static str) -> Result<Bytes> {
        let len = usize::from(self.u16(truncated)?);
        if self.bytes.len() < len {
            return Err(DecodeError::Malformed(truncated));
        }
        Ok(self.bytes.split_to(len))
    }

    /// An MQTT UTF-8 string: well-formed UTF-8 (so no surrogates) without U+0000.
    fn string(&mut self, field: Field) -> Result<String> {
        let raw = self.binary(field.truncated)?;
        let text = std::str::from_utf8(&raw).map_err(|_| DecodeError::Malformed(field.bad_utf8))?;
        if text.contains('\0') {
            return Err(DecodeError::Malformed(field.nul));
        }
        Ok(text.to_owned())
    }

    fn take_rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    fn finish(self, trailing: &'static str) -> Result<()> {
        if self.bytes.is_empty() { Ok(()) } else { Err(DecodeError::Malformed(trailing)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_boundaries() {
        let cases: [(&[u8], usize); 8] = [
            (&[0x00], 0),
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], MAX_REMAINING_LENGTH),
        ];
        for (bytes, value) in cases {
            assert_eq!(read_remaining_length(bytes), Ok(Some((value, bytes.len()))), "{bytes:02x?}");
            assert_eq!(read_remaining_length(&bytes[..bytes.len() - 1]), Ok(None), "{bytes:02x?}");
        }
        // A non-minimal encoding is not forbidden by MQTT 3.1.1 and is accepted.
        assert_eq!(read_remaining_length(&[0x80, 0x00]), Ok(Some((0, 2))));
        assert!(read_remaining_length(&[0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(read_remaining_length(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
    }

    #[test]
    fn every_reserved_or_wrong_first_byte_is_refused_alone() {
        for first in 0..=u8::MAX {
            let mut buf = BytesMut::from(&[first][..]);
            let outcome = decode(&mut buf, 1024);
            let packet_type = first >> 4;
            let flags = first & 0x0F;
            let allowed = match packet_type {
                0 | 15 => false,
                PUBLISH => (flags >> 1) & 0b11 != 3 && !((flags >> 1) & 0b11 == 0 && flags & 0b1000 != 0),
                PUBREL | SUBSCRIBE | UNSUBSCRIBE => flags == 0b0010,
                _ => flags == 0,
            };
            if allowed {
                assert_eq!(outcome, Ok(None), "{first:#04x}");
            } else {
                assert!(matches!(outcome, Err(DecodeError::Malformed(_))), "{first:#04x}: {outcome:?}");
            }
            assert_eq!(buf.len(), 1, "nothing consumed for {first:#04x}");
        }
    }
}
