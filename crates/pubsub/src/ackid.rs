//! Ack ids: opaque to clients, `EPOCH-OFFSET-GENERATION` in hex to us.
//!
//! The offset names the message in its topic, so an ack id keeps working after the stream that
//! delivered it closed, and after a restart (acknowledging a delivered message is always right).
//! The epoch (random per process) and the generation (per delivery) tell a stale ack id from the
//! current one, so a late ModifyAckDeadline cannot extend or cancel a newer delivery's lease.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckId {
    pub epoch: u32,
    pub offset: u64,
    pub generation: u32,
}

impl AckId {
    pub fn encode(&self) -> String {
        format!("{:x}-{:x}-{:x}", self.epoch, self.offset, self.generation)
    }

    /// `None` when `s` is not an ack id this server could have issued.
    pub fn parse(s: &str) -> Option<AckId> {
        if s.len() > 40 {
            return None;
        }
        let mut parts = s.split('-');
        let (Some(e), Some(o), Some(g), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        let hex = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !(hex(e) && hex(o) && hex(g)) {
            return None;
        }
        Some(AckId {
            epoch: u32::from_str_radix(e, 16).ok()?,
            offset: u64::from_str_radix(o, 16).ok()?,
            generation: u32::from_str_radix(g, 16).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let id = AckId { epoch: 0xdead_beef, offset: u64::MAX, generation: 7 };
        assert_eq!(AckId::parse(&id.encode()), Some(id));
        for bad in ["", "x", "1-2", "1-2-3-4", "g-1-1", "1--1", "A-1-1", "1-2-3 ", "100000000-1-1"] {
            assert_eq!(AckId::parse(bad), None, "{bad}");
        }
    }
}
