//! Errors of the codec: why a byte stream was refused, and why a packet could not be written.

/// Why [`crate::decode`] refused the input. Every variant means the connection must be closed
/// (after CONNACK 1 for [`DecodeError::UnsupportedProtocol`]); none is retryable.
///
/// The messages are meant for logs. They never contain payload bytes; the only client-supplied
/// text is the protocol name of an unsupported CONNECT, printed escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The fixed header announces a packet (header included) larger than the caller's limit.
    /// Reported before the body is received.
    #[error("packet of {size} bytes exceeds the limit of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },

    /// The bytes violate MQTT 3.1.1; the text says which rule.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),

    /// A readable CONNECT for another protocol or version (MQTT 3.1 is "MQIsdp"/3, MQTT 5 is
    /// "MQTT"/5). MQTT 3.1.1 wants CONNACK with return code 1 before the connection is closed.
    #[error("unsupported protocol {} level {level} (only \"MQTT\" level 4 is served)", Shortened(name))]
    UnsupportedProtocol { name: String, level: u8 },
}

/// Why [`crate::try_encode`] could not frame a packet. Only values that MQTT cannot represent
/// are refused; the encoder does not re-check the rules the decoder enforces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or length-prefixed binary field is longer than the 65,535 bytes a 16-bit
    /// length prefix can describe.
    #[error("a string or binary field of {len} bytes exceeds the 65535-byte MQTT limit")]
    FieldTooLong { len: usize },

    /// The packet body is longer than the 268,435,455 bytes the remaining-length field can describe.
    #[error("packet body of {len} bytes exceeds the 268435455-byte MQTT limit")]
    PacketTooLarge { len: usize },
}

/// Shows a client-supplied name quoted and escaped, cut after 32 characters so a hostile client
/// cannot fill a log line.
struct Shortened<'a>(&'a str);

impl std::fmt::Display for Shortened<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 32;
        match self.0.char_indices().nth(SHOWN) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}...", &self.0[..cut]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_protocol_names_are_escaped_and_shortened() {
        let error = DecodeError::UnsupportedProtocol { name: "MQ\nIsdp".into(), level: 3 };
        assert_eq!(error.to_string(), r#"unsupported protocol "MQ\nIsdp" level 3 (only "MQTT" level 4 is served)"#);
        let error = DecodeError::UnsupportedProtocol { name: "é".repeat(40), level: 9 };
        let shown = format!("\"{}\"...", "é".repeat(32));
        assert_eq!(
            error.to_string(),
            format!("unsupported protocol {shown} level 9 (only \"MQTT\" level 4 is served)")
        );
    }

    #[test]
    fn size_errors_read_well() {
        assert_eq!(
            DecodeError::PacketTooLarge { size: 70_000, max: 65_536 }.to_string(),
            "packet of 70000 bytes exceeds the limit of 65536 bytes"
        );
        assert_eq!(DecodeError::Malformed("PUBLISH with QoS 3").to_string(), "malformed packet: PUBLISH with QoS 3");
        assert_eq!(
            EncodeError::FieldTooLong { len: 70_000 }.to_string(),
            "a string or binary field of 70000 bytes exceeds the 65535-byte MQTT limit"
        );
    }
}
