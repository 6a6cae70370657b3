//! Device activity log entries (connects, disconnects, publishes, configs, errors), as the core
//! batches them into the store, and the queries the logs API reads them back with.
//!
//! Entries are appended in batches (one transaction each), read oldest first by their sequence
//! number, and pruned by age and by a row cap; nothing here is written once per device message.

use ferrocore_model::{DeviceId, NumId, RegistryName, Timestamp};

/// Cloud Logging's severities that device activity uses, with their LogSeverity numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogSeverity {
    Debug,
    Info,
    Error,
}

impl LogSeverity {
    /// google.logging.type.LogSeverity's number.
    pub fn number(self) -> i32 {
        match self {
            LogSeverity::Debug => 100,
            LogSeverity::Info => 200,
            LogSeverity::Error => 500,
        }
    }

    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            100 => Some(LogSeverity::Debug),
            200 => Some(LogSeverity::Info),
            500 => Some(LogSeverity::Error),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogSeverity::Debug => "DEBUG",
            LogSeverity::Info => "INFO",
            LogSeverity::Error => "ERROR",
        }
    }

    /// A severity name as Cloud Logging spells it; the levels between the three used here
    /// (NOTICE, WARNING...) select the next one up, DEFAULT selects all.
    pub fn parse_min(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "DEFAULT" | "DEBUG" => Some(LogSeverity::Debug),
            "INFO" => Some(LogSeverity::Info),
            "NOTICE" | "WARNING" | "ERROR" => Some(LogSeverity::Error),
            _ => None,
        }
    }
}

/// One device activity entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceLogEntry {
    /// Assigned by the store on append (ignored there); increases with every entry.
    pub seq: u64,
    /// When the event happened.
    pub time: Timestamp,
    /// When the store took it (Cloud Logging's `receiveTimestamp`); set by the store on append.
    pub received: Timestamp,
    pub registry: RegistryName,
    pub device_id: DeviceId,
    pub device_num_id: NumId,
    pub severity: LogSeverity,
    /// `CONNECT`, `DISCONNECT`, `PUBLISH`...
    pub event_type: String,
    /// The entry's `jsonPayload`, as JSON text.
    pub payload: String,
}

/// Which entries a read returns: one registry's, oldest first, after `after`.
#[derive(Debug, Clone)]
pub struct DeviceLogQuery {
    pub registry: RegistryName,
    pub device_id: Option<DeviceId>,
    pub min_severity: Option<LogSeverity>,
    pub event_type: Option<String>,
    /// Entries at or after this time.
    pub start_time: Option<Timestamp>,
    /// Keyset: entries whose sequence number is above this one.
    pub after: Option<u64>,
    pub limit: u32,
}

impl DeviceLogQuery {
    /// The first `limit` entries of a registry, unfiltered.
    pub fn registry(registry: RegistryName, limit: u32) -> Self {
        Self { registry, device_id: None, min_severity: None, event_type: None, start_time: None, after: None, limit }
    }
}
