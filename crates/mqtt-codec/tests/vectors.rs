//! Hand-written byte vectors laid out after the MQTT 3.1.1 specification (§3, one section per
//! packet type): each is decoded into the expected value and that value encodes back into the same
//! bytes. Also checks zero-copy payloads and the handling of other protocol versions.

use bytes::{Bytes, BytesMut};
use ferrocore_mqtt_codec::{
    ConnAck, Connect, ConnectReturnCode, DecodeError, Packet, Publish, QoS, SubAck, SubAckCode, Subscribe, Unsubscribe,
    Will, decode, encode,
};

const MAX: usize = 1 << 20;

/// Joins byte pieces so the vectors can be written field by field.
fn cat(pieces: &[&[u8]]) -> Vec<u8> {
    pieces.concat()
}

/// `bytes` decodes to exactly `packet` (consuming everything) and `packet` encodes to `bytes`.
#[track_caller]
fn both_ways(bytes: &[u8], packet: Packet) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(decode(&mut buf, MAX), Ok(Some(packet.clone())), "decoding {bytes:02x?}");
    assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    let mut out = BytesMut::new();
    encode(&packet, &mut out);
    assert_eq!(&out[..], bytes, "encoding {packet:?}");
    assert_eq!(packet.encoded_len(), bytes.len());
}

fn connect(client_id: &str) -> Connect {
    Connect {
        protocol_level: 4,
        clean_session: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

#[test]
fn connect_minimal_with_keep_alive() {
    let bytes = cat(&[&[0x10, 13], &[0, 4], b"MQTT", &[4, 0b0000_0010, 0, 60], &[0, 1], b"a"]);
    both_ways(&bytes, Packet::Connect(connect("a")));
}

#[test]
fn connect_zero_length_client_id_and_no_keep_alive() {
    let bytes = cat(&[&[0x10, 12], &[0, 4], b"MQTT", &[4, 0b0000_0010, 0, 0], &[0, 0]]);
    both_ways(&bytes, Packet::Connect(Connect { keep_alive: 0, ..connect("") }));
}

#[test]
fn connect_persistent_session_flag() {
    let bytes = cat(&[&[0x10, 13], &[0, 4], b"MQTT", &[4, 0, 0x01, 0x2C], &[0, 1], b"p"]);
    both_ways(&bytes, Packet::Connect(Connect { clean_session: false, keep_alive: 300, ..connect("p") }));
}

#[test]
fn connect_with_username_and_password_like_a_cloud_iot_device() {
    let client_id = b"projects/p/locations/us-central1/registries/r/devices/d";
    assert_eq!(client_id.len(), 55);
    let bytes = cat(&[
        &[0x10, 10 + 57 + 8 + 9],
        &[0, 4],
        b"MQTT",
        &[4, 0b1100_0010, 0, 60],
        &[0, 55],
        client_id,
        &[0, 6],
        b"unused",
        &[0, 7],
        b"a.b.sig",
    ]);
    let packet = Packet::Connect(Connect {
        username: Some("unused".into()),
        password: Some(Bytes::from_static(b"a.b.sig")),
        ..connect(std::str::from_utf8(client_id).unwrap())
    });
    both_ways(&bytes, packet);
}

#[test]
fn connect_with_username_only() {
    let bytes = cat(&[&[0x10, 10 + 3 + 3], &[0, 4], b"MQTT", &[4, 0b1000_0010, 0, 60], &[0, 1], b"c", &[0, 1], b"u"]);
    both_ways(&bytes, Packet::Connect(Connect { username: Some("u".into()), ..connect("c") }));
}

#[test]
fn connect_with_will() {
    // will flag 0x04, will QoS 1 (0x08), will retain 0x20, clean session 0x02.
    let bytes = cat(&[
        &[0x10, 10 + 3 + 5 + 5],
        &[0, 4],
        b"MQTT",
        &[4, 0b0010_1110, 0x01, 0x2C],
        &[0, 1],
        b"c",
        &[0, 3],
        b"w/t",
        &[0, 3],
        b"bye",
    ]);
    let will = Will { topic: "w/t".into(), payload: Bytes::from_static(b"bye"), qos: QoS::AtLeastOnce, retain: true };
    both_ways(&bytes, Packet::Connect(Connect { keep_alive: 300, will: Some(will), ..connect("c") }));
}

#[test]
fn connect_with_everything() {
    // user name, password, will QoS 2 without retain, will, clean session.
    let bytes = cat(&[
        &[0x10, 10 + 4 + 3 + 2 + 6 + 4],
        &[0, 4],
        b"MQTT",
        &[4, 0b1101_0110, 0xFF, 0xFF],
        &[0, 2],
        b"id",
        &[0, 1],
        b"t",
        &[0, 0],
        &[0, 4],
        b"user",
        &[0, 2],
        &[0x00, 0xFF],
    ]);
    let packet = Packet::Connect(Connect {
        keep_alive: u16::MAX,
        will: Some(Will { topic: "t".into(), payload: Bytes::new(), qos: QoS::ExactlyOnce, retain: false }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(&[0x00, 0xFF])),
        ..connect("id")
    });
    both_ways(&bytes, packet);
}

#[test]
fn connack_variants() {
    both_ways(&[0x20, 2, 0, 0], Packet::ConnAck(ConnAck { session_present: false, code: ConnectReturnCode::Accepted }));
    both_ways(&[0x20, 2, 1, 0], Packet::ConnAck(ConnAck { session_present: true, code: ConnectReturnCode::Accepted }));
    let codes = [
        ConnectReturnCode::UnacceptableProtocolVersion,
        ConnectReturnCode::IdentifierRejected,
        ConnectReturnCode::ServerUnavailable,
        ConnectReturnCode::BadUsernameOrPassword,
        ConnectReturnCode::NotAuthorized,
    ];
    for (value, code) in (1u8..).zip(codes) {
        both_ways(&[0x20, 2, 0, value], Packet::ConnAck(ConnAck { session_present: false, code }));
    }
}

#[test]
fn publish_qos0_with_payload() {
    let bytes = cat(&[&[0x30, 10], &[0, 3], b"a/b", b"hello"]);
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: None,
        payload: Bytes::from_static(b"hello"),
    });
    both_ways(&bytes, packet);
}

#[test]
fn publish_qos0_empty_payload_retained() {
    let bytes = cat(&[&[0x31, 3], &[0, 1], b"x"]);
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "x".into(),
        packet_id: None,
        payload: Bytes::new(),
    });
    both_ways(&bytes, packet);
}

#[test]
fn publish_qos1_dup_retain() {
    let bytes = cat(&[&[0x3B, 23], &[0, 17], b"/devices/d/events", &[0x0A, 0x0B], b"{}"]);
    let packet = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "/devices/d/events".into(),
        packet_id: Some(0x0A0B),
        payload: Bytes::from_static(b"{}"),
    });
    both_ways(&bytes, packet);
}

#[test]
fn publish_qos2() {
    let bytes = cat(&[&[0x34, 6], &[0, 1], b"q", &[0xFF, 0xFF], b"!"]);
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "q".into(),
        packet_id: Some(u16::MAX),
        payload: Bytes::from_static(b"!"),
    });
    both_ways(&bytes, packet);
}

#[test]
fn publish_with_two_byte_remaining_length_and_utf8_topic() {
    // Remaining length 2 + 4 + 200 = 206 = 0b1_1001110: bytes 0xCE 0x01.
    let payload = vec![0xA5; 200];
    let bytes = cat(&[&[0x32, 0xCE, 0x01], &[0, 2], "é".as_bytes(), &[0, 1], &payload]);
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "é".into(),
        packet_id: Some(1),
        payload: Bytes::from(payload),
    });
    both_ways(&bytes, packet);
}

#[test]
fn acknowledgements() {
    both_ways(&[0x40, 2, 0, 1], Packet::PubAck(1));
    both_ways(&[0x50, 2, 0x12, 0x34], Packet::PubRec(0x1234));
    both_ways(&[0x62, 2, 0xFF, 0xFF], Packet::PubRel(u16::MAX));
    both_ways(&[0x70, 2, 1, 0], Packet::PubComp(256));
    both_ways(&[0xB0, 2, 0, 9], Packet::UnsubAck(9));
}

#[test]
fn subscribe_several_filters() {
    let bytes = cat(&[
        &[0x82, 2 + 20 + 24 + 6],
        &[0, 10],
        &[0, 17],
        b"/devices/d/config",
        &[1],
        &[0, 21],
        b"/devices/d/commands/#",
        &[0],
        &[0, 3],
        b"a/+",
        &[2],
    ]);
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 10,
        filters: vec![
            ("/devices/d/config".into(), QoS::AtLeastOnce),
            ("/devices/d/commands/#".into(), QoS::AtMostOnce),
            ("a/+".into(), QoS::ExactlyOnce),
        ],
    });
    both_ways(&bytes, packet);
}

#[test]
fn subscribe_keeps_badly_placed_wildcards_for_the_server_to_judge() {
    let bytes = cat(&[&[0x82, 2 + 5 + 1], &[0, 1], &[0, 3], b"a#b", &[0]]);
    let packet = Packet::Subscribe(Subscribe { packet_id: 1, filters: vec![("a#b".into(), QoS::AtMostOnce)] });
    both_ways(&bytes, packet);
}

#[test]
fn suback_mixed_codes() {
    let packet = Packet::SubAck(SubAck {
        packet_id: 10,
        return_codes: vec![
            SubAckCode::Granted(QoS::AtLeastOnce),
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::ExactlyOnce),
        ],
    });
    both_ways(&[0x90, 6, 0, 10, 1, 0, 0x80, 2], packet);
}

#[test]
fn unsubscribe_two_filters() {
    let bytes = cat(&[&[0xA2, 12], &[0, 11], &[0, 3], b"a/b", &[0, 3], b"c/#"]);
    let packet = Packet::Unsubscribe(Unsubscribe { packet_id: 11, filters: vec!["a/b".into(), "c/#".into()] });
    both_ways(&bytes, packet);
}

#[test]
fn header_only_packets() {
    both_ways(&[0xC0, 0], Packet::PingReq);
    both_ways(&[0xD0, 0], Packet::PingResp);
    both_ways(&[0xE0, 0], Packet::Disconnect);
}

#[test]
fn publish_payload_and_password_share_the_input_buffer() {
    let bytes = cat(&[&[0x30, 10], &[0, 3], b"a/b", b"hello"]);
    let mut buf = BytesMut::from(&bytes[..]);
    let range = buf.as_ptr_range();
    let Ok(Some(Packet::Publish(publish))) = decode(&mut buf, MAX) else { panic!("not a PUBLISH") };
    assert!(range.contains(&publish.payload.as_ptr()), "payload was copied");

    let bytes = cat(&[
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
    ]);
    let mut buf = BytesMut::from(&bytes[..]);
    let range = buf.as_ptr_range();
    let Ok(Some(Packet::Connect(connect))) = decode(&mut buf, MAX) else { panic!("not a CONNECT") };
    let password = connect.password.expect("password");
    assert_eq!(&password[..], b"jwt");
    assert!(range.contains(&password.as_ptr()), "password was copied");
}

#[test]
fn mqtt_3_1_connect_is_reported_as_unsupported() {
    let bytes = cat(&[&[0x10, 15], &[0, 6], b"MQIsdp", &[3, 0x02, 0, 60], &[0, 1], b"a"]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::UnsupportedProtocol { name: "MQIsdp".into(), level: 3 }));
}

#[test]
fn mqtt_5_connect_is_reported_as_unsupported() {
    // MQTT 5 adds a properties length (here 0) after keep-alive: not readable as 3.1.1, still reported.
    let bytes = cat(&[&[0x10, 14], &[0, 4], b"MQTT", &[5, 0x02, 0, 60], &[0], &[0, 1], b"a"]);
    let mut buf = BytesMut::from(&bytes[..]);
    let error = decode(&mut buf, MAX).unwrap_err();
    assert_eq!(error, DecodeError::UnsupportedProtocol { name: "MQTT".into(), level: 5 });
    assert_eq!(error.to_string(), "unsupported protocol \"MQTT\" level 5 (only \"MQTT\" level 4 is served)");
}

#[test]
fn unknown_protocol_name_at_level_4_is_unsupported() {
    let bytes = cat(&[&[0x10, 13], &[0, 4], b"MQTX", &[4, 0x02, 0, 60], &[0, 1], b"a"]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::UnsupportedProtocol { name: "MQTX".into(), level: 4 }));
}

#[test]
fn level_4_connect_is_parsed_fully() {
    // Right name and level but a truncated client id: this is malformed, not "unsupported".
    let bytes = cat(&[&[0x10, 12], &[0, 4], b"MQTT", &[4, 0x02, 0, 60], &[0, 5]]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::Malformed("CONNECT client identifier is truncated")));
}

#[test]
fn encoding_appends_after_existing_bytes() {
    let mut out = BytesMut::from(&b"head"[..]);
    encode(&Packet::PubAck(3), &mut out);
    encode(&Packet::PingResp, &mut out);
    assert_eq!(&out[..], b"head\x40\x02\x00\x03\xD0\x00");
}
