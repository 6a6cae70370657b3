//! Input the decoder must refuse (every MQTT 3.1.1 rule it enforces, one vector each) and the
//! streaming contract: partial input waits without consuming, oversized packets are refused
//! from the fixed header alone, several packets in one buffer come out one by one.

use bytes::BytesMut;
use ferrocore_mqtt_codec::{DecodeError, Packet, decode, encode};

const MAX: usize = 1 << 20;

fn cat(pieces: &[&[u8]]) -> Vec<u8> {
    pieces.concat()
}

/// A valid CONNECT body from the protocol name on, with the given flags and trailing payload.
fn connect_bytes(flags: u8, payload: &[u8]) -> Vec<u8> {
    let body = cat(&[&[0, 4], b"MQTT", &[4, flags, 0, 60], payload]);
    let len = u8::try_from(body.len()).expect("short test vector");
    cat(&[&[0x10, len], &body])
}

/// Each case: a name, the bytes, and a piece of the expected `Malformed` message.
fn malformed_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        // Fixed header.
        ("reserved type 0", vec![0x00, 0x00], "reserved packet type 0"),
        ("reserved type 15", vec![0xF0, 0x00], "reserved packet type 15"),
        ("remaining length of 5 bytes", vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], "more than 4 bytes"),
        ("CONNECT flags", cat(&[&[0x11], &connect_bytes(0x02, &[0, 1, b'a'])[1..]]), "CONNECT fixed-header flags"),
        ("CONNACK flags", vec![0x28, 2, 0, 0], "CONNACK fixed-header flags"),
        ("PUBACK flags", vec![0x42, 2, 0, 1], "PUBACK fixed-header flags"),
        ("PUBREC flags", vec![0x51, 2, 0, 1], "PUBREC fixed-header flags"),
        ("PUBREL flags 0", vec![0x60, 2, 0, 1], "PUBREL fixed-header flags must be 0b0010"),
        ("PUBREL flags 3", vec![0x63, 2, 0, 1], "PUBREL fixed-header flags must be 0b0010"),
        ("PUBCOMP flags", vec![0x72, 2, 0, 1], "PUBCOMP fixed-header flags"),
        (
            "SUBSCRIBE flags 0",
            cat(&[&[0x80, 6, 0, 1, 0, 1], b"a", &[0]]),
            "SUBSCRIBE fixed-header flags must be 0b0010",
        ),
        ("SUBACK flags", vec![0x92, 3, 0, 1, 0], "SUBACK fixed-header flags"),
        ("UNSUBSCRIBE flags 0", cat(&[&[0xA0, 5, 0, 1, 0, 1], b"a"]), "UNSUBSCRIBE fixed-header flags must be 0b0010"),
        ("UNSUBACK flags", vec![0xB1, 2, 0, 1], "UNSUBACK fixed-header flags"),
        ("PINGREQ flags", vec![0xC1, 0], "PINGREQ fixed-header flags"),
        ("PINGRESP flags", vec![0xD8, 0], "PINGRESP fixed-header flags"),
        ("DISCONNECT flags", vec![0xE2, 0], "DISCONNECT fixed-header flags"),
        // PUBLISH.
        ("PUBLISH QoS 3", cat(&[&[0x36, 5, 0, 1], b"a", &[0, 1]]), "PUBLISH with QoS 3"),
        ("PUBLISH QoS 0 with DUP", cat(&[&[0x38, 3, 0, 1], b"a"]), "QoS 0 has the DUP flag"),
        ("PUBLISH topic with +", cat(&[&[0x30, 5, 0, 3], b"a/+"]), "wildcard"),
        ("PUBLISH topic with #", cat(&[&[0x30, 5, 0, 3], b"a/#"]), "wildcard"),
        ("PUBLISH topic #", cat(&[&[0x30, 3, 0, 1], b"#"]), "wildcard"),
        ("PUBLISH empty topic", vec![0x30, 2, 0, 0], "PUBLISH topic name is empty"),
        ("PUBLISH topic invalid UTF-8", vec![0x30, 4, 0, 2, 0xC3, 0x28], "PUBLISH topic name is not valid UTF-8"),
        ("PUBLISH topic surrogate", vec![0x30, 5, 0, 3, 0xED, 0xA0, 0x80], "PUBLISH topic name is not valid UTF-8"),
        ("PUBLISH topic overlong", vec![0x30, 4, 0, 2, 0xC0, 0xAF], "PUBLISH topic name is not valid UTF-8"),
        ("PUBLISH topic U+0000", vec![0x30, 5, 0, 3, b'a', 0, b'b'], "PUBLISH topic name contains U+0000"),
        ("PUBLISH topic truncated", vec![0x30, 3, 0, 5, b'a'], "PUBLISH topic name is truncated"),
        ("PUBLISH no topic length", vec![0x30, 1, 0], "PUBLISH topic name is truncated"),
        ("PUBLISH empty body", vec![0x30, 0], "PUBLISH topic name is truncated"),
        ("PUBLISH QoS 1 id 0", cat(&[&[0x32, 5, 0, 1], b"a", &[0, 0]]), "PUBLISH packet identifier is 0"),
        ("PUBLISH QoS 2 id 0", cat(&[&[0x34, 6, 0, 1], b"a", &[0, 0, 9]]), "PUBLISH packet identifier is 0"),
        ("PUBLISH QoS 1 no id", cat(&[&[0x32, 3, 0, 1], b"a"]), "PUBLISH packet identifier is truncated"),
        ("PUBLISH QoS 1 half id", cat(&[&[0x32, 4, 0, 1], b"a", &[7]]), "PUBLISH packet identifier is truncated"),
        // Fixed-size packets with another remaining length.
        ("CONNACK too long", vec![0x20, 3, 0, 0, 0], "CONNACK remaining length must be 2"),
        ("CONNACK too short", vec![0x20, 1, 0], "CONNACK remaining length must be 2"),
        ("PUBACK too long", vec![0x40, 3, 0, 1, 0], "PUBACK remaining length must be 2"),
        ("PUBACK empty", vec![0x40, 0], "PUBACK remaining length must be 2"),
        ("PUBREC too short", vec![0x50, 1, 1], "PUBREC remaining length must be 2"),
        ("PUBREL too long", vec![0x62, 4, 0, 1, 0, 0], "PUBREL remaining length must be 2"),
        ("PUBCOMP too long", vec![0x70, 3, 0, 1, 0], "PUBCOMP remaining length must be 2"),
        ("UNSUBACK too long", vec![0xB0, 3, 0, 1, 0], "UNSUBACK remaining length must be 2"),
        ("PINGREQ with body", vec![0xC0, 1, 0], "PINGREQ remaining length must be 0"),
        ("PINGRESP with body", vec![0xD0, 1, 0], "PINGRESP remaining length must be 0"),
        ("DISCONNECT with body", vec![0xE0, 2, 0, 0], "DISCONNECT remaining length must be 0"),
        // Packet identifiers that must not be 0.
        ("PUBACK id 0", vec![0x40, 2, 0, 0], "PUBACK packet identifier is 0"),
        ("PUBREC id 0", vec![0x50, 2, 0, 0], "PUBREC packet identifier is 0"),
        ("PUBREL id 0", vec![0x62, 2, 0, 0], "PUBREL packet identifier is 0"),
        ("PUBCOMP id 0", vec![0x70, 2, 0, 0], "PUBCOMP packet identifier is 0"),
        ("UNSUBACK id 0", vec![0xB0, 2, 0, 0], "UNSUBACK packet identifier is 0"),
        ("SUBACK id 0", vec![0x90, 3, 0, 0, 0], "SUBACK packet identifier is 0"),
        ("SUBSCRIBE id 0", cat(&[&[0x82, 6, 0, 0, 0, 1], b"a", &[0]]), "SUBSCRIBE packet identifier is 0"),
        ("UNSUBSCRIBE id 0", cat(&[&[0xA2, 5, 0, 0, 0, 1], b"a"]), "UNSUBSCRIBE packet identifier is 0"),
        // CONNACK.
        ("CONNACK reserved flags", vec![0x20, 2, 0x02, 0], "CONNACK reserved flags"),
        ("CONNACK code 6", vec![0x20, 2, 0, 6], "CONNACK return code is reserved"),
        ("CONNACK refusal with session", vec![0x20, 2, 1, 5], "reports a session present"),
        // SUBSCRIBE.
        ("SUBSCRIBE without filters", vec![0x82, 2, 0, 1], "SUBSCRIBE has no topic filter"),
        ("SUBSCRIBE without id", vec![0x82, 1, 0], "SUBSCRIBE packet identifier is truncated"),
        ("SUBSCRIBE QoS 3", cat(&[&[0x82, 6, 0, 1, 0, 1], b"a", &[3]]), "SUBSCRIBE requested QoS is 3"),
        ("SUBSCRIBE reserved bits", cat(&[&[0x82, 6, 0, 1, 0, 1], b"a", &[0x04]]), "reserved bits"),
        ("SUBSCRIBE reserved high bit", cat(&[&[0x82, 6, 0, 1, 0, 1], b"a", &[0x81]]), "reserved bits"),
        ("SUBSCRIBE missing QoS", cat(&[&[0x82, 5, 0, 1, 0, 1], b"a"]), "SUBSCRIBE requested QoS is missing"),
        ("SUBSCRIBE second filter missing QoS", cat(&[&[0x82, 9, 0, 1, 0, 1], b"a", &[0, 0, 1], b"b"]), "missing"),
        ("SUBSCRIBE empty filter", vec![0x82, 5, 0, 1, 0, 0, 0], "SUBSCRIBE topic filter is empty"),
        ("SUBSCRIBE filter truncated", vec![0x82, 5, 0, 1, 0, 9, b'a'], "SUBSCRIBE topic filter is truncated"),
        (
            "SUBSCRIBE filter invalid UTF-8",
            vec![0x82, 6, 0, 1, 0, 1, 0xFF, 0],
            "SUBSCRIBE topic filter is not valid UTF-8",
        ),
        ("SUBSCRIBE filter U+0000", vec![0x82, 6, 0, 1, 0, 1, 0, 0], "SUBSCRIBE topic filter contains U+0000"),
        // SUBACK.
        ("SUBACK without codes", vec![0x90, 2, 0, 1], "SUBACK has no return code"),
        ("SUBACK code 3", vec![0x90, 3, 0, 1, 3], "SUBACK return code is not"),
        ("SUBACK code 0x81", vec![0x90, 4, 0, 1, 0, 0x81], "SUBACK return code is not"),
        // UNSUBSCRIBE.
        ("UNSUBSCRIBE without filters", vec![0xA2, 2, 0, 1], "UNSUBSCRIBE has no topic filter"),
        ("UNSUBSCRIBE empty filter", vec![0xA2, 4, 0, 1, 0, 0], "UNSUBSCRIBE topic filter is empty"),
        ("UNSUBSCRIBE filter truncated", vec![0xA2, 5, 0, 1, 0, 2, b'a'], "UNSUBSCRIBE topic filter is truncated"),
        ("UNSUBSCRIBE filter U+0000", vec![0xA2, 5, 0, 1, 0, 1, 0], "UNSUBSCRIBE topic filter contains U+0000"),
        // CONNECT.
        ("CONNECT reserved flag", connect_bytes(0x03, &[0, 1, b'a']), "CONNECT reserved flag is set"),
        ("CONNECT will QoS without will", connect_bytes(0x0A, &[0, 1, b'a']), "without the will flag"),
        ("CONNECT will retain without will", connect_bytes(0x22, &[0, 1, b'a']), "without the will flag"),
        ("CONNECT will QoS 3", connect_bytes(0x1E, &[0, 1, b'a', 0, 1, b't', 0, 0]), "CONNECT will QoS is 3"),
        ("CONNECT password without user", connect_bytes(0x42, &[0, 1, b'a', 0, 1, b'p']), "password flag set without"),
        (
            "CONNECT will topic wildcard",
            connect_bytes(0x06, &[0, 1, b'a', 0, 1, b'#', 0, 0]),
            "CONNECT will topic is empty",
        ),
        ("CONNECT will topic empty", connect_bytes(0x06, &[0, 1, b'a', 0, 0, 0, 0]), "CONNECT will topic is empty"),
        ("CONNECT will topic U+0000", connect_bytes(0x06, &[0, 1, b'a', 0, 1, 0, 0, 0]), "will topic contains U+0000"),
        ("CONNECT will message missing", connect_bytes(0x06, &[0, 1, b'a', 0, 1, b't']), "will message is truncated"),
        (
            "CONNECT will message short",
            connect_bytes(0x06, &[0, 1, b'a', 0, 1, b't', 0, 3, 1]),
            "will message is truncated",
        ),
        ("CONNECT client id invalid UTF-8", connect_bytes(0x02, &[0, 1, 0x80]), "client identifier is not valid UTF-8"),
        ("CONNECT client id U+0000", connect_bytes(0x02, &[0, 1, 0]), "client identifier contains U+0000"),
        ("CONNECT client id missing", connect_bytes(0x02, &[]), "client identifier is truncated"),
        ("CONNECT user name missing", connect_bytes(0x82, &[0, 1, b'a']), "CONNECT user name is truncated"),
        ("CONNECT user name U+0000", connect_bytes(0x82, &[0, 1, b'a', 0, 1, 0]), "user name contains U+0000"),
        ("CONNECT user name bad UTF-8", connect_bytes(0x82, &[0, 1, b'a', 0, 1, 0xFE]), "user name is not valid UTF-8"),
        ("CONNECT password missing", connect_bytes(0xC2, &[0, 1, b'a', 0, 1, b'u']), "CONNECT password is truncated"),
        ("CONNECT password short", connect_bytes(0xC2, &[0, 1, b'a', 0, 1, b'u', 0, 9, 1]), "password is truncated"),
        ("CONNECT trailing bytes", connect_bytes(0x02, &[0, 1, b'a', 0xAA]), "CONNECT has bytes after its last field"),
        ("CONNECT trailing after pw", connect_bytes(0xC2, &[0, 0, 0, 1, b'u', 0, 0, 0]), "bytes after its last field"),
        ("CONNECT no flags", cat(&[&[0x10, 7, 0, 4], b"MQTT", &[4]]), "CONNECT flags are missing"),
        ("CONNECT no keep-alive", cat(&[&[0x10, 9, 0, 4], b"MQTT", &[4, 2, 0]]), "CONNECT keep-alive is truncated"),
        ("CONNECT no level", cat(&[&[0x10, 6, 0, 4], b"MQTT"]), "CONNECT protocol level is missing"),
        ("CONNECT empty", vec![0x10, 0], "CONNECT protocol name is truncated"),
        ("CONNECT name bad UTF-8", vec![0x10, 5, 0, 2, 0xFF, 0xFF, 4], "CONNECT protocol name is not valid UTF-8"),
        ("CONNECT name U+0000", vec![0x10, 5, 0, 2, b'M', 0, 4], "CONNECT protocol name contains U+0000"),
    ]
}

#[test]
fn every_rule_violation_is_malformed() {
    for (name, bytes, expected) in malformed_cases() {
        let mut buf = BytesMut::from(&bytes[..]);
        match decode(&mut buf, MAX) {
            Err(DecodeError::Malformed(message)) => {
                assert!(message.contains(expected), "{name}: got {message:?}, wanted {expected:?}");
                let logged = DecodeError::Malformed(message).to_string();
                assert!(logged.starts_with("malformed packet: "), "{name}: {logged}");
            }
            other => panic!("{name}: expected Malformed({expected:?}), got {other:?}"),
        }
    }
}

#[test]
fn malformed_fixed_headers_are_refused_before_the_body_arrives() {
    // Only the fixed header: the type/flags or size rule alone must trigger the error.
    let headers: [&[u8]; 6] = [&[0x00], &[0x36], &[0x38], &[0x82 & 0xF0], &[0xC0, 0x05], &[0x40, 0x7F]];
    for header in headers {
        let mut buf = BytesMut::from(header);
        assert!(matches!(decode(&mut buf, MAX), Err(DecodeError::Malformed(_))), "{header:02x?}");
        assert_eq!(buf.len(), header.len(), "fixed-header errors consume nothing");
    }
}

/// Valid packets of every type, for the streaming tests.
fn valid_packets() -> Vec<Vec<u8>> {
    vec![
        cat(&[
            &[0x10, 10 + 3 + 3 + 5],
            &[0, 4],
            b"MQTT",
            &[4, 0xC2, 0, 60],
            &[0, 1],
            b"c",
            &[0, 1],
            b"u",
            &[0, 3],
            b"jwt",
        ]),
        cat(&[
            &[0x10, 10 + 3 + 5 + 5],
            &[0, 4],
            b"MQTT",
            &[4, 0x2E, 1, 0],
            &[0, 1],
            b"c",
            &[0, 3],
            b"w/t",
            &[0, 3],
            b"bye",
        ]),
        vec![0x20, 2, 0, 0],
        cat(&[&[0x30, 10], &[0, 3], b"a/b", b"hello"]),
        cat(&[&[0x32, 0x87, 0x01], &[0, 1], b"t", &[0, 1], &[7; 130]]),
        vec![0x40, 2, 0, 1],
        vec![0x50, 2, 0, 1],
        vec![0x62, 2, 0, 1],
        vec![0x70, 2, 0, 1],
        cat(&[&[0x82, 2 + 6 + 6], &[0, 1], &[0, 3], b"a/b", &[1], &[0, 3], b"c/#", &[0]]),
        vec![0x90, 4, 0, 1, 1, 0x80],
        cat(&[&[0xA2, 7], &[0, 1], &[0, 3], b"a/b"]),
        vec![0xB0, 2, 0, 1],
        vec![0xC0, 0],
        vec![0xD0, 0],
        vec![0xE0, 0],
    ]
}

#[test]
fn partial_input_waits_at_every_split_point_without_consuming() {
    for bytes in valid_packets() {
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            assert_eq!(decode(&mut buf, MAX), Ok(None), "{bytes:02x?} cut at {split}");
            assert_eq!(&buf[..], &bytes[..split], "nothing consumed");
            // The rest arrives: now the packet comes out whole.
            buf.extend_from_slice(&bytes[split..]);
            let packet = decode(&mut buf, MAX).expect("valid").expect("complete");
            assert!(buf.is_empty());
            let mut again = BytesMut::new();
            encode(&packet, &mut again);
            assert_eq!(&again[..], &bytes[..], "re-encoding {packet:?}");
        }
    }
}

#[test]
fn oversized_packet_is_refused_from_its_fixed_header() {
    // PUBLISH announcing 65,535 body bytes (0xFF 0xFF 0x03); only the 4 header bytes are here.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0x03][..]);
    let error = decode(&mut buf, 1024).unwrap_err();
    assert_eq!(error, DecodeError::PacketTooLarge { size: 4 + 65_535, max: 1024 });
    assert_eq!(error.to_string(), "packet of 65539 bytes exceeds the limit of 1024 bytes");

    // The largest value the field can hold.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::PacketTooLarge { size: 5 + 268_435_455, max: MAX }));
}

#[test]
fn size_limit_counts_the_fixed_header_and_is_inclusive() {
    let bytes = cat(&[&[0x30, 10], &[0, 3], b"a/b", b"hello"]); // 12 bytes in total
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(decode(&mut buf, 12), Ok(Some(Packet::Publish(_)))));
    let mut buf = BytesMut::from(&bytes[..2]);
    assert_eq!(decode(&mut buf, 11), Err(DecodeError::PacketTooLarge { size: 12, max: 11 }));
    let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
    assert_eq!(decode(&mut buf, 1), Err(DecodeError::PacketTooLarge { size: 2, max: 1 }));
}

#[test]
fn back_to_back_packets_come_out_one_at_a_time() {
    let all = valid_packets();
    let mut buf = BytesMut::new();
    for bytes in &all {
        buf.extend_from_slice(bytes);
    }
    for bytes in &all {
        let before = buf.len();
        let packet = decode(&mut buf, MAX).expect("valid").expect("complete");
        assert_eq!(before - buf.len(), bytes.len(), "{packet:?} consumed exactly its own bytes");
    }
    assert!(buf.is_empty());
    assert_eq!(decode(&mut buf, MAX), Ok(None));
}

#[test]
fn a_whole_packet_followed_by_a_partial_one() {
    let mut buf = BytesMut::from(&[0x40, 2, 0, 1, 0x30, 10, 0, 3][..]);
    assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PubAck(1))));
    assert_eq!(decode(&mut buf, MAX), Ok(None));
    assert_eq!(&buf[..], &[0x30, 10, 0, 3]);
}

#[test]
fn errors_after_the_header_consume_the_packet_only() {
    let mut buf = BytesMut::from(&[0x40, 2, 0, 0, 0xC0, 0][..]);
    assert!(decode(&mut buf, MAX).is_err());
    assert_eq!(&buf[..], &[0xC0, 0]);
}
