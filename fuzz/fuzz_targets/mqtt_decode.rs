//! Fuzz target: feeds arbitrary bytes through `decode` the way a connection loop would (in
//! chunks, with a size cap), and checks that every packet it accepts encodes back into bytes that
//! decode to the same packet. A panic, a hang or a failed check is a finding.

#![no_main]

use bytes::BytesMut;
use ferrocore_mqtt_codec::{Packet, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read-chunk size and the packet limit, so the fuzzer also explores
    // partial reads and the size check.
    let Some((&knobs, stream)) = data.split_first() else { return };
    let chunk = usize::from(knobs & 0x0F) + 1;
    let max_packet_size = if knobs & 0x80 != 0 { 64 } else { 64 * 1024 };

    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode(&mut buf, max_packet_size) {
                Ok(Some(packet)) => {
                    assert!(buf.len() < before, "a decoded packet consumed nothing");
                    check_round_trip(&packet);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "waiting for more input consumed bytes");
                    break;
                }
                // A real server closes the connection here.
                Err(_) => return,
            }
        }
    }
});

fn check_round_trip(packet: &Packet) {
    let mut encoded = BytesMut::new();
    encode(packet, &mut encoded);
    assert_eq!(encoded.len(), packet.encoded_len());
    let again = decode(&mut encoded, usize::MAX).expect("re-encoded packet must decode");
    assert_eq!(again.as_ref(), Some(packet));
    assert!(encoded.is_empty(), "re-encoded packet left trailing bytes");
}
