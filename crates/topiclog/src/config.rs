//! How a topic log is sized: where it lives, how much it keeps, how it cuts files.

use crate::LogError;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of one [`TopicLog`](crate::TopicLog). Build with [`LogConfig::new`] and override fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The log's own directory (created if missing); each topic gets a subdirectory in it.
    pub dir: PathBuf,
    /// Segments whose newest record is older than this are deleted. Default: 7 days.
    pub retention_max_age: Duration,
    /// Per topic: the oldest segments are deleted while the topic is larger. Default: 1 GiB.
    pub retention_max_bytes: u64,
    /// A segment file is closed and a new one started once it reaches this size. Default: 64 MiB.
    pub segment_bytes: u64,
    /// Limit on one record's payload plus attribute keys and values. Default: 1 MiB.
    pub max_record_bytes: usize,
}

impl LogConfig {
    pub const DEFAULT_RETENTION_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    pub const DEFAULT_RETENTION_MAX_BYTES: u64 = 1 << 30;
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
    pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

    /// The defaults, stored under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            dir: dir.into(),
            retention_max_age: Self::DEFAULT_RETENTION_MAX_AGE,
            retention_max_bytes: Self::DEFAULT_RETENTION_MAX_BYTES,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            max_record_bytes: Self::DEFAULT_MAX_RECORD_BYTES,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), LogError> {
        let problem = if self.dir.as_os_str().is_empty() {
            "dir must not be empty"
        } else if self.retention_max_age.is_zero() {
            "retention_max_age must be positive"
        } else if self.segment_bytes == 0 {
            "segment_bytes must be positive"
        } else if self.max_record_bytes == 0 || self.max_record_bytes > MAX_RECORD_BYTES_LIMIT {
            "max_record_bytes must be between 1 byte and 1 GiB"
        } else {
            return Ok(());
        };
        Err(LogError::InvalidConfig(problem.to_owned()))
    }

    /// Active segments are also cut by age, so that a quiet topic's old records can expire: retention
    /// never deletes the active segment.
    pub(crate) fn roll_after_nanos(&self) -> i64 {
        i64::try_from(self.retention_max_age.as_nanos() / 2).unwrap_or(i64::MAX).max(1)
    }

    pub(crate) fn max_age_nanos(&self) -> i64 {
        i64::try_from(self.retention_max_age.as_nanos()).unwrap_or(i64::MAX)
    }
}

/// Record lengths are stored as `u32`; a gigabyte leaves room for framing and is far above any
/// sensible telemetry message.
const MAX_RECORD_BYTES_LIMIT: usize = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = LogConfig::new("/tmp/x");
        assert_eq!(c.retention_max_age, Duration::from_secs(604_800));
        assert_eq!(c.retention_max_bytes, 1 << 30);
        assert_eq!(c.segment_bytes, 64 << 20);
        assert_eq!(c.max_record_bytes, 1 << 20);
        assert!(c.validate().is_ok());
        assert!(LogConfig { segment_bytes: 0, ..c.clone() }.validate().is_err());
        assert!(LogConfig { max_record_bytes: 0, ..c.clone() }.validate().is_err());
        assert!(LogConfig { retention_max_age: Duration::ZERO, ..c.clone() }.validate().is_err());
        assert!(LogConfig::new("").validate().is_err());
    }
}
