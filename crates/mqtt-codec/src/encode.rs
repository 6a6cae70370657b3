//! Encoding: appends the wire form of a [`Packet`] to an output buffer.
//!
//! The size is computed first, the buffer grows once, then the fields are written straight into
//! it: no temporary buffers, no per-field allocation. The encoder trusts the packet (it does not
//! re-check the rules that [`crate::decode`] enforces, so tests can produce invalid packets); it only
//! refuses what the format cannot express at all, see [`EncodeError`].

use bytes::{BufMut, BytesMut};

use crate::decode::{
    CONNACK, CONNECT, DISCONNECT, MAX_REMAINING_LENGTH, PINGREQ, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL,
    SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
};
use crate::error::EncodeError;
use crate::packet::{Connect, Packet, QoS};
use crate::topic::MAX_STRING_LEN;

/// Appends `packet` to `buf`.
///
/// A packet the format cannot express (a string or binary field over 65,535 bytes, a body over
/// 268,435,455 bytes) is skipped: nothing is appended, so the stream stays well-formed. Those
/// cannot come out of [`crate::decode`]; when a packet is built from other input (an API payload,
/// say), use [`try_encode`] to learn of it.
pub fn encode(packet: &Packet, buf: &mut BytesMut) {
    // The only error is "not representable", documented above as "nothing written".
    let _ = try_encode(packet, buf);
}

/// Appends `packet` to `buf`, or leaves `buf` untouched and says why the packet cannot be framed.
pub fn try_encode(packet: &Packet, buf: &mut BytesMut) -> Result<(), EncodeError> {
    check_field_lengths(packet)?;
    let body = body_len(packet);
    if body > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge { len: body });
    }
    buf.reserve(1 + remaining_length_len(body) + body);
    buf.put_u8(first_byte(packet));
    put_remaining_length(buf, body);
    write_body(packet, buf);
    Ok(())
}

impl Packet {
    /// Bytes [`encode`] appends for this packet, fixed header included. Exact for every packet
    /// that can be encoded.
    pub fn encoded_len(&self) -> usize {
        let body = body_len(self);
        1 + remaining_length_len(body) + body
    }
}

fn first_byte(packet: &Packet) -> u8 {
    let (packet_type, flags) = match packet {
        Packet::Connect(_) => (CONNECT, 0),
        Packet::ConnAck(_) => (CONNACK, 0),
        Packet::Publish(publish) => {
            let flags = u8::from(publish.dup) << 3 | publish.qos.as_u8() << 1 | u8::from(publish.retain);
            (PUBLISH, flags)
        }
        Packet::PubAck(_) => (PUBACK, 0),
        Packet::PubRec(_) => (PUBREC, 0),
        Packet::PubRel(_) => (PUBREL, 0b0010),
        Packet::PubComp(_) => (PUBCOMP, 0),
        Packet::Subscribe(_) => (SUBSCRIBE, 0b0010),
        Packet::SubAck(_) => (SUBACK, 0),
        Packet::Unsubscribe(_) => (UNSUBSCRIBE, 0b0010),
        Packet::UnsubAck(_) => (UNSUBACK, 0),
        Packet::PingReq => (PINGREQ, 0),
        Packet::PingResp => (PINGRESP, 0),
        Packet::Disconnect => (DISCONNECT, 0),
    };
    packet_type << 4 | flags
}

/// Length of a length-prefixed string or binary field.
fn prefixed(len: usize) -> usize {
    2 + len
}

fn body_len(packet: &Packet) -> usize {
    match packet {
        Packet::Connect(connect) => connect_len(connect),
        Packet::ConnAck(_) => 2,
        Packet::Publish(publish) => {
            let id = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
            prefixed(publish.topic.len()) + id + publish.payload.len()
        }
        Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) | Packet::UnsubAck(_) => 2,
        Packet::Subscribe(subscribe) => {
            2 + subscribe.filters.iter().map(|(filter, _)| prefixed(filter.len()) + 1).sum::<usize>()
        }
        Packet::SubAck(suback) => 2 + suback.return_codes.len(),
        Packet::Unsubscribe(unsubscribe) => {
            2 + unsubscribe.filters.iter().map(|filter| prefixed(filter.len())).sum::<usize>()
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
    }
}

fn connect_len(connect: &Connect) -> usize {
    // Protocol name "MQTT", level, flags, keep-alive.
    let mut len = prefixed(4) + 1 + 1 + 2;
    len += prefixed(connect.client_id.len());
    if let Some(will) = &connect.will {
        len += prefixed(will.topic.len()) + prefixed(will.payload.len());
    }
    if let Some(username) = &connect.username {
        len += prefixed(username.len());
    }
    if let Some(password) = &connect.password {
        len += prefixed(password.len());
    }
    len
}

/// Every length-prefixed field must fit its 16-bit prefix.
fn check_field_lengths(packet: &Packet) -> Result<(), EncodeError> {
    let check = |len: usize| if len > MAX_STRING_LEN { Err(EncodeError::FieldTooLong { len }) } else { Ok(()) };
    match packet {
        Packet::Connect(connect) => {
            check(connect.client_id.len())?;
            if let Some(will) = &connect.will {
                check(will.topic.len())?;
                check(will.payload.len())?;
            }
            if let Some(username) = &connect.username {
                check(username.len())?;
            }
            if let Some(password) = &connect.password {
                check(password.len())?;
            }
            Ok(())
        }
        Packet::Publish(publish) => check(publish.topic.len()),
        Packet::Subscribe(subscribe) => subscribe.filters.iter().try_for_each(|(filter, _)| check(filter.len())),
        Packet::Unsubscribe(unsubscribe) => unsubscribe.filters.iter().try_for_each(|filter| check(filter.len())),
        _ => Ok(()),
    }
}

fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `len` (at most [`MAX_REMAINING_LENGTH`]) as 7-bit groups, least significant first,
/// the high bit of each byte saying that another follows.
fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let group = (len & 0x7F) as u8;
        len >>= 7;
        if len == 0 {
            buf.put_u8(group);
            return;
        }
        buf.put_u8(group | 0x80);
    }
}

/// Writes a 16-bit length and the bytes; the caller checked the length fits.
fn put_prefixed(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

fn write_body(packet: &Packet, buf: &mut BytesMut) {
    match packet {
        Packet::Connect(connect) => write_connect(connect, buf),
        Packet::ConnAck(connack) => {
            buf.put_u8(u8::from(connack.session_present));
            buf.put_u8(connack.code.as_u8());
        }
        Packet::Publish(publish) => {
            put_prefixed(buf, publish.topic.as_bytes());
            if publish.qos != QoS::AtMostOnce {
                buf.put_u16(publish.packet_id.unwrap_or(0));
            }
            buf.put_slice(&publish.payload);
        }
        Packet::PubAck(id) | Packet::PubRec(id) | Packet::PubRel(id) | Packet::PubComp(id) | Packet::UnsubAck(id) => {
            buf.put_u16(*id)
        }
        Packet::Subscribe(subscribe) => {
            buf.put_u16(subscribe.packet_id);
            for (filter, qos) in &subscribe.filters {
                put_prefixed(buf, filter.as_bytes());
                buf.put_u8(qos.as_u8());
            }
        }
        Packet::SubAck(suback) => {
            buf.put_u16(suback.packet_id);
            for code in &suback.return_codes {
                buf.put_u8(code.as_u8());
            }
        }
        Packet::Unsubscribe(unsubscribe) => {
            buf.put_u16(unsubscribe.packet_id);
            for filter in &unsubscribe.filters {
                put_prefixed(buf, filter.as_bytes());
            }
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
    }
}

fn write_connect(connect: &Connect, buf: &mut BytesMut) {
    put_prefixed(buf, b"MQTT");
    buf.put_u8(connect.protocol_level);
    let mut flags = u8::from(connect.clean_session) << 1;
    if let Some(will) = &connect.will {
        flags |= 0x04 | will.qos.as_u8() << 3 | u8::from(will.retain) << 5;
    }
    if connect.password.is_some() {
        flags |= 0x40;
    }
    if connect.username.is_some() {
        flags |= 0x80;
    }
    buf.put_u8(flags);
    buf.put_u16(connect.keep_alive);
    put_prefixed(buf, connect.client_id.as_bytes());
    if let Some(will) = &connect.will {
        put_prefixed(buf, will.topic.as_bytes());
        put_prefixed(buf, &will.payload);
    }
    if let Some(username) = &connect.username {
        put_prefixed(buf, username.as_bytes());
    }
    if let Some(password) = &connect.password {
        put_prefixed(buf, password);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Publish;
    use bytes::Bytes;

    #[test]
    fn remaining_length_encoding_matches_its_size() {
        for len in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_REMAINING_LENGTH] {
            let mut buf = BytesMut::new();
            put_remaining_length(&mut buf, len);
            assert_eq!(buf.len(), remaining_length_len(len), "{len}");
        }
        let mut buf = BytesMut::new();
        put_remaining_length(&mut buf, 321);
        assert_eq!(&buf[..], &[0xC1, 0x02]);
    }

    #[test]
    fn unrepresentable_packets_write_nothing() {
        let long = "a".repeat(MAX_STRING_LEN + 1);
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: long,
            packet_id: None,
            payload: Bytes::new(),
        });
        let mut buf = BytesMut::from(&b"xy"[..]);
        assert_eq!(try_encode(&publish, &mut buf), Err(EncodeError::FieldTooLong { len: MAX_STRING_LEN + 1 }));
        encode(&publish, &mut buf);
        assert_eq!(&buf[..], b"xy");

        let huge = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            payload: Bytes::from(vec![0; MAX_REMAINING_LENGTH]),
        });
        assert_eq!(try_encode(&huge, &mut buf), Err(EncodeError::PacketTooLarge { len: MAX_REMAINING_LENGTH + 3 }));
        assert_eq!(&buf[..], b"xy");
    }

    #[test]
    fn encodes_into_a_presized_buffer_without_reallocating() {
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "/devices/d/events".into(),
            packet_id: Some(7),
            payload: Bytes::from(vec![1; 1000]),
        });
        let mut buf = BytesMut::with_capacity(publish.encoded_len());
        let start = buf.as_ptr();
        encode(&publish, &mut buf);
        assert_eq!(buf.len(), publish.encoded_len());
        assert_eq!(buf.as_ptr(), start);
    }
}
