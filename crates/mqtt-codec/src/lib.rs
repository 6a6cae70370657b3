//! MQTT 3.1.1 packet codec for Ferrocore's device bridge.
//!
//! A map of the crate:
//! - [`packet`]: the control packets as plain values ([`Packet`], [`Connect`], [`Publish`]...).
//! - [`decode()`](decode()): bytes → one [`Packet`] at a time, strict MQTT 3.1.1 checks, a size cap
//!   enforced from the fixed header on, PUBLISH payloads and passwords split off the read buffer
//!   without copying. Errors are [`DecodeError`].
//! - [`encode()`](encode()) / [`try_encode`]: a [`Packet`] → bytes appended to an output buffer,
//!   one reservation per packet.
//! - [`topic`]: syntax of topic names and filters ([`is_valid_topic_filter`]).
//!
//! The codec holds no state and does no I/O; the connection loop owns the buffers:
//!
//! ```
//! use bytes::BytesMut;
//! use ferrocore_mqtt_codec::{decode, encode, Packet};
//!
//! let mut input = BytesMut::from(&[0xC0, 0x00][..]); // PINGREQ
//! let mut output = BytesMut::new();
//! while let Some(packet) = decode(&mut input, 64 * 1024)? {
//!     if packet == Packet::PingReq {
//!         encode(&Packet::PingResp, &mut output);
//!     }
//! }
//! assert_eq!(&output[..], &[0xD0, 0x00]);
//! # Ok::<(), ferrocore_mqtt_codec::DecodeError>(())
//! ```
//!
//! Session rules (CONNECT first, keep-alive, packet-id bookkeeping, which topics a device may use)
//! belong to the server, not here.

mod decode;
mod encode;
mod error;
pub mod packet;
pub mod topic;

pub use decode::{MAX_REMAINING_LENGTH, decode};
pub use encode::{encode, try_encode};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    ConnAck, Connect, ConnectReturnCode, Packet, Publish, QoS, SubAck, SubAckCode, Subscribe, Unsubscribe, Will,
};
pub use topic::{is_valid_topic_filter, is_valid_topic_name};
