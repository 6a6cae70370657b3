//! The one error type of the topic log.
//!
//! Callers render these to API clients, so `Display` never contains a file path or an OS error
//! text: the storage cause lives in [`LogError::detail`], which is meant for logs only.

/// Why a topic log operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The name is not one `ferrocore_model::pubsub::TopicName` accepts. Holds that type's
    /// explanation (the name, shortened, and the grammar), which is fit for a client.
    #[error("{0}")]
    InvalidTopic(String),
    /// One record's payload and attributes together exceed `LogConfig::max_record_bytes`.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    /// The configuration cannot work (zero sizes, say).
    #[error("invalid topic log configuration: {0}")]
    InvalidConfig(String),
    /// Storage failed. The text names files and OS errors, so it is kept out of `Display`.
    #[error("the topic log could not access its storage")]
    Io(String),
    /// `close()` was called; nothing more is accepted.
    #[error("the topic log is closed")]
    Closed,
}

impl LogError {
    /// The full cause, paths included: for the server's own logs, never for clients.
    pub fn detail(&self) -> String {
        match self {
            LogError::Io(detail) => format!("topic log storage error: {detail}"),
            other => other.to_string(),
        }
    }

    /// Wraps an I/O error with what was being done, keeping the text for [`LogError::detail`].
    pub(crate) fn io(context: impl std::fmt::Display, err: std::io::Error) -> LogError {
        LogError::Io(format!("{context}: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_hides_io_detail() {
        let err = LogError::io("writing /secret/path/00000000000000000000.log", std::io::Error::other("disk on fire"));
        assert!(!err.to_string().contains("/secret"));
        assert!(!err.to_string().contains("fire"));
        assert!(err.detail().contains("/secret/path"));
        assert!(err.detail().contains("disk on fire"));
    }
}
