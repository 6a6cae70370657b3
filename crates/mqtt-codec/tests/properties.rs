//! Property tests: every valid packet survives encode → decode unchanged (whole, split anywhere,
//! or several in a row), and no input at all — random bytes, or random bytes behind a
//! plausible fixed header — makes the decoder panic or return a packet that does not re-encode
//! to itself.

use bytes::{Bytes, BytesMut};
use ferrocore_mqtt_codec::{
    ConnAck, Connect, ConnectReturnCode, Packet, Publish, QoS, SubAck, SubAckCode, Subscribe, Unsubscribe, Will,
    decode, encode,
};
use proptest::prelude::*;

const MAX: usize = 1 << 20;

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

/// Any MQTT string: any Unicode scalar except U+0000 (multi-byte characters included).
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[^\u{0}+#]{1,12}"
}

fn topic_filter() -> impl Strategy<Value = String> {
    prop_oneof!["[^\u{0}]{1,12}", "[a-z+]{1,3}(/[a-z+]{0,3}){0,3}(/#)?", Just("#".to_owned())]
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn connect() -> impl Strategy<Value = Connect> {
    let will = prop::option::of(
        (topic_name(), bytes(32), qos(), any::<bool>()).prop_map(|(topic, payload, qos, retain)| Will {
            topic,
            payload,
            qos,
            retain,
        }),
    );
    // A password only ever comes with a user name.
    let credentials = prop::option::of((text(), prop::option::of(bytes(32))));
    (any::<bool>(), any::<u16>(), text(), will, credentials).prop_map(
        |(clean_session, keep_alive, client_id, will, credentials)| {
            let (username, password) = match credentials {
                Some((username, password)) => (Some(username), password),
                None => (None, None),
            };
            Connect { protocol_level: 4, clean_session, keep_alive, client_id, will, username, password }
        },
    )
}

fn connack() -> impl Strategy<Value = ConnAck> {
    (0u8..=5, any::<bool>()).prop_map(|(code, session)| {
        let code = ConnectReturnCode::from_u8(code).expect("0..=5");
        ConnAck { session_present: session && code == ConnectReturnCode::Accepted, code }
    })
}

fn publish() -> impl Strategy<Value = Publish> {
    (qos(), any::<bool>(), any::<bool>(), topic_name(), packet_id(), bytes(300)).prop_map(
        |(qos, dup, retain, topic, id, payload)| {
            let at_most_once = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                packet_id: if at_most_once { None } else { Some(id) },
                payload,
            }
        },
    )
}

fn suback_code() -> impl Strategy<Value = SubAckCode> {
    prop_oneof![qos().prop_map(SubAckCode::Granted), Just(SubAckCode::Failure)]
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect().prop_map(Packet::Connect),
        connack().prop_map(Packet::ConnAck),
        publish().prop_map(Packet::Publish),
        packet_id().prop_map(Packet::PubAck),
        packet_id().prop_map(Packet::PubRec),
        packet_id().prop_map(Packet::PubRel),
        packet_id().prop_map(Packet::PubComp),
        (packet_id(), prop::collection::vec((topic_filter(), qos()), 1..5))
            .prop_map(|(packet_id, filters)| Packet::Subscribe(Subscribe { packet_id, filters })),
        (packet_id(), prop::collection::vec(suback_code(), 1..5))
            .prop_map(|(packet_id, return_codes)| Packet::SubAck(SubAck { packet_id, return_codes })),
        (packet_id(), prop::collection::vec(topic_filter(), 1..5))
            .prop_map(|(packet_id, filters)| Packet::Unsubscribe(Unsubscribe { packet_id, filters })),
        packet_id().prop_map(Packet::UnsubAck),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

fn encoded(packet: &Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, &mut buf);
    buf
}

/// Decodes everything decodable from `input`; every packet must re-encode and decode to itself.
/// Stops at the first error or when more input would be needed. Never panics on its own.
fn decode_all_and_recheck(input: &[u8], max: usize) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(input);
    while let Ok(Some(packet)) = decode(&mut buf, max) {
        let mut again = encoded(&packet);
        prop_assert_eq!(again.len(), packet.encoded_len());
        prop_assert_eq!(decode(&mut again, usize::MAX), Ok(Some(packet)));
        prop_assert!(again.is_empty());
    }
    Ok(())
}

proptest! {
    // Integration tests have no lib.rs for proptest to store regressions beside; a failure prints
    // its minimal input instead.
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn valid_packets_round_trip(packet in packet()) {
        let mut buf = encoded(&packet);
        prop_assert_eq!(buf.len(), packet.encoded_len());
        prop_assert_eq!(decode(&mut buf, MAX), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn valid_packets_survive_any_split(packet in packet(), cut in any::<prop::sample::Index>()) {
        let whole = encoded(&packet);
        let cut = cut.index(whole.len());
        let mut buf = BytesMut::from(&whole[..cut]);
        prop_assert_eq!(decode(&mut buf, MAX), Ok(None));
        prop_assert_eq!(&buf[..], &whole[..cut]);
        buf.extend_from_slice(&whole[cut..]);
        prop_assert_eq!(decode(&mut buf, MAX), Ok(Some(packet)));
    }

    #[test]
    fn packet_streams_decode_in_order(packets in prop::collection::vec(packet(), 1..8)) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            encode(packet, &mut buf);
        }
        for packet in packets {
            prop_assert_eq!(decode(&mut buf, MAX), Ok(Some(packet)));
        }
        prop_assert_eq!(decode(&mut buf, MAX), Ok(None));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512), max in 0usize..1024) {
        decode_all_and_recheck(&input, max)?;
    }

    #[test]
    fn arbitrary_body_after_a_valid_fixed_header_never_panics(
        packet_type in 1u8..=14,
        flags in 0u8..16,
        body in prop::collection::vec(any::<u8>(), 0..300),
        trailing in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        // Encode the real remaining length so the body is what gets parsed.
        let mut input = vec![packet_type << 4 | flags];
        let mut len = body.len();
        loop {
            let group = (len & 0x7F) as u8;
            len >>= 7;
            if len == 0 {
                input.push(group);
                break;
            }
            input.push(group | 0x80);
        }
        input.extend_from_slice(&body);
        input.extend_from_slice(&trailing);
        decode_all_and_recheck(&input, MAX)?;
    }

    #[test]
    fn mutated_valid_packets_never_panic(packet in packet(), position in any::<prop::sample::Index>(), value in any::<u8>()) {
        let mut bytes = encoded(&packet).to_vec();
        let position = position.index(bytes.len());
        bytes[position] = value;
        decode_all_and_recheck(&bytes, MAX)?;
    }
}
