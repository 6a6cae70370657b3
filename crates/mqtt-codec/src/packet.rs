//! The MQTT 3.1.1 control packets as plain Rust values.
//!
//! These types carry no behaviour beyond small conversions: [`crate::decode`] builds them from
//! bytes (and guarantees the invariants written on each field), [`crate::encode`] turns them back
//! into bytes (and trusts them). Payloads are [`Bytes`], so a decoded PUBLISH shares the read
//! buffer instead of owning a copy.

use bytes::Bytes;

/// Quality-of-service level of a PUBLISH, a will message or a subscription.
///
/// Ordered, so `requested.min(QoS::AtLeastOnce)` downgrades a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    /// Fire and forget: no acknowledgement, no packet id.
    AtMostOnce = 0,
    /// Acknowledged by PUBACK; may be delivered more than once.
    AtLeastOnce = 1,
    /// Four-step PUBREC/PUBREL/PUBCOMP exchange; delivered once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS with this wire value, or `None` for 3 and above (3 is reserved by MQTT).
    pub const fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// The wire value (0, 1 or 2).
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// One decoded control packet.
///
/// The `u16` of the acknowledgement variants is the packet identifier they answer; a decoded one
/// is never 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client → server: open a session (always the first packet of a connection).
    Connect(Connect),
    /// Server → client: answer to CONNECT.
    ConnAck(ConnAck),
    /// Either direction: an application message.
    Publish(Publish),
    /// Acknowledges a QoS 1 PUBLISH.
    PubAck(u16),
    /// First answer to a QoS 2 PUBLISH.
    PubRec(u16),
    /// Answer to PUBREC.
    PubRel(u16),
    /// Answer to PUBREL; ends a QoS 2 exchange.
    PubComp(u16),
    /// Client → server: subscribe to topic filters.
    Subscribe(Subscribe),
    /// Server → client: answer to SUBSCRIBE, one code per filter.
    SubAck(SubAck),
    /// Client → server: drop subscriptions.
    Unsubscribe(Unsubscribe),
    /// Server → client: answer to UNSUBSCRIBE.
    UnsubAck(u16),
    /// Client → server keep-alive probe.
    PingReq,
    /// Server → client answer to PINGREQ.
    PingResp,
    /// Client → server: orderly close (the will message is discarded).
    Disconnect,
}

impl Packet {
    /// Upper-case MQTT name of the packet type ("CONNECT", "PUBACK"...), for logs and metrics labels.
    pub const fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect => "DISCONNECT",
        }
    }
}

/// CONNECT for protocol "MQTT" level 4 (other protocols are reported by
/// [`crate::DecodeError::UnsupportedProtocol`] and never reach this type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Always 4 when decoded; written as-is by the encoder (tests use it to build 3.1/5.0 clients).
    pub protocol_level: u8,
    pub clean_session: bool,
    /// Seconds; 0 turns the keep-alive mechanism off.
    pub keep_alive: u16,
    /// May be empty. MQTT requires the server to answer CONNACK 2 to an empty id with
    /// `clean_session == false`; that decision belongs to the server, not to the codec.
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    /// Only ever `Some` together with `username` (MQTT 3.1.1 forbids a password without a user
    /// name). Cloud IoT devices put their JWT here.
    pub password: Option<Bytes>,
}

/// Last-will message of a CONNECT, published by the server if the client vanishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// A valid topic name: not empty, no wildcards.
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// CONNACK: the server's verdict on a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// Must be false unless `code` is [`ConnectReturnCode::Accepted`] (checked by the decoder).
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

/// The return codes MQTT 3.1.1 defines for CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUsernameOrPassword = 4,
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The code with this wire value, or `None` for 6 and above (reserved).
    pub const fn from_u8(value: u8) -> Option<ConnectReturnCode> {
        match value {
            0 => Some(ConnectReturnCode::Accepted),
            1 => Some(ConnectReturnCode::UnacceptableProtocolVersion),
            2 => Some(ConnectReturnCode::IdentifierRejected),
            3 => Some(ConnectReturnCode::ServerUnavailable),
            4 => Some(ConnectReturnCode::BadUsernameOrPassword),
            5 => Some(ConnectReturnCode::NotAuthorized),
            _ => None,
        }
    }

    /// The wire value (0 to 5).
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery marker; never set together with QoS 0 (checked by the decoder).
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// A valid topic name: not empty, no `+` or `#`, no U+0000.
    pub topic: String,
    /// `Some(non-zero id)` exactly when `qos` is above [`QoS::AtMostOnce`]. The encoder writes
    /// the id only for QoS 1 and 2 (and 0 if it is missing there, which the peer will refuse).
    pub packet_id: Option<u16>,
    /// Everything after the variable header; may be empty. A slice of the decode buffer.
    pub payload: Bytes,
}

/// SUBSCRIBE: one or more topic filters, each with the highest QoS the client wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Non-zero.
    pub packet_id: u16,
    /// At least one entry; each filter is non-empty and free of U+0000. Wildcard placement is NOT
    /// checked by the decoder: the server decides between SUBACK 0x80 and closing, see
    /// [`crate::is_valid_topic_filter`].
    pub filters: Vec<(String, QoS)>,
}

/// SUBACK: one return code per filter of the SUBSCRIBE it answers, in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Non-zero.
    pub packet_id: u16,
    /// At least one entry.
    pub return_codes: Vec<SubAckCode>,
}

/// One SUBACK return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubAckCode {
    /// The subscription exists with this maximum QoS (possibly lower than requested).
    Granted(QoS),
    /// The subscription was refused (wire value 0x80).
    Failure,
}

impl SubAckCode {
    /// The code with this wire value: 0, 1, 2 or 0x80; `None` otherwise.
    pub const fn from_u8(value: u8) -> Option<SubAckCode> {
        match value {
            0x80 => Some(SubAckCode::Failure),
            _ => match QoS::from_u8(value) {
                Some(qos) => Some(SubAckCode::Granted(qos)),
                None => None,
            },
        }
    }

    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            SubAckCode::Granted(qos) => qos.as_u8(),
            SubAckCode::Failure => 0x80,
        }
    }
}

/// UNSUBSCRIBE: topic filters to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Non-zero.
    pub packet_id: u16,
    /// At least one entry; each non-empty and free of U+0000 (wildcards not checked, as for
    /// [`Subscribe::filters`]).
    pub filters: Vec<String>,
}
