//! Timestamps: nanoseconds since the Unix epoch, printed the way proto3 JSON prints them
//! (RFC 3339 in UTC with `Z`, and 0, 3, 6 or 9 fractional digits).

use std::fmt;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

/// Proto3's Timestamp range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

impl Timestamp {
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    pub fn from_unix_seconds(s: i64) -> Self {
        Self(s.saturating_mul(1_000_000_000))
    }

    pub fn nanos(self) -> i64 {
        self.0
    }

    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }

    fn from_datetime(dt: OffsetDateTime) -> Self {
        Self(i64::try_from(dt.unix_timestamp_nanos()).unwrap_or(i64::MAX))
    }

    /// Parses RFC 3339 (any offset; normalised to UTC). Returns None on malformed or out-of-range input.
    pub fn parse(s: &str) -> Option<Self> {
        let dt = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        let secs = dt.unix_timestamp();
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&secs) {
            return None;
        }
        // i64 nanoseconds cover 1677..2262, which holds every realistic device timestamp.
        i64::try_from(dt.unix_timestamp_nanos()).ok().map(Self)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(dt) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0)) else {
            return f.write_str("1970-01-01T00:00:00Z");
        };
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        )?;
        let nanos = dt.nanosecond();
        if nanos == 0 {
        } else if nanos % 1_000_000 == 0 {
            write!(f, ".{:03}", nanos / 1_000_000)?;
        } else if nanos % 1_000 == 0 {
            write!(f, ".{:06}", nanos / 1_000)?;
        } else {
            write!(f, ".{nanos:09}")?;
        }
        f.write_str("Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_proto_json_form() {
        for s in [
            "2023-08-16T00:00:00Z",
            "2019-10-07T19:35:24.470Z",
            "2019-10-07T19:35:24.470378Z",
            "2019-10-07T19:35:24.470378001Z",
        ] {
            assert_eq!(Timestamp::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Timestamp::parse("2023-08-16T02:00:00+02:00").unwrap().to_string(), "2023-08-16T00:00:00Z");
        assert!(Timestamp::parse("yesterday").is_none());
        assert!(Timestamp::parse("2023-13-01T00:00:00Z").is_none());
    }
}
