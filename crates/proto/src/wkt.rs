//! `google.protobuf.Timestamp` with the JSON form Google's APIs use: RFC 3339 in UTC ending in
//! `Z`, with 0, 3, 6 or 9 fractional digits. (pbjson-types prints `+00:00`, which strict clients
//! and our own contract refuse.)

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    pub fn from_unix_nanos(n: i64) -> Self {
        Self { seconds: n.div_euclid(1_000_000_000), nanos: n.rem_euclid(1_000_000_000) as i32 }
    }

    /// Nanoseconds since the epoch, or None when out of range or malformed.
    pub fn unix_nanos(&self) -> Option<i64> {
        if !(0..1_000_000_000).contains(&self.nanos) {
            return None;
        }
        self.seconds.checked_mul(1_000_000_000)?.checked_add(i64::from(self.nanos))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ts = ferrocore_model::Timestamp(
            self.unix_nanos().ok_or_else(|| serde::ser::Error::custom("timestamp out of range"))?,
        );
        s.collect_str(&ts)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                ferrocore_model::Timestamp::parse(v).map(|t| Timestamp::from_unix_nanos(t.0)).ok_or_else(|| {
                    E::custom(format!("'{}' is not an RFC 3339 timestamp", ferrocore_model::ids::printable(v)))
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unix_nanos() {
            Some(n) => ferrocore_model::Timestamp(n).fmt(f),
            None => f.write_str("<invalid timestamp>"),
        }
    }
}
