//! Device activity logs: what the bridges saw a device do (connect, disconnect, publish,
//! subscribe, attach, configs, commands, errors), at the device's effective `logLevel`, in Cloud
//! Logging's IoT Core entry shape (`jsonPayload` with `eventType`, `protocol`, `clientIp`,
//! `status`...).
//!
//! Logging never slows a bridge: [`DeviceLog::push`] takes a short lock on an in-memory buffer
//! and never waits for the store. A background task ([`DeviceLog::spawn_flusher`]) moves the
//! buffer to the store in one transaction per interval (200 ms by default) and prunes the store
//! by age and row count. The buffer is bounded ([`BUFFER_CAPACITY`]); when it is full, DEBUG
//! entries give way first, then INFO, and every entry that is dropped is counted by severity
//! ([`DeviceLog::dropped`]).
//!
//! The effective level is the device's own `logLevel` unless it is LOG_LEVEL_UNSPECIFIED, then the
//! registry's (unspecified there means NONE). Device levels are noted when a device
//! authenticates, is attached by a gateway, or is updated; registry levels come from the core's
//! registry cache, so checking the level costs no database read.
//!
//! With [`DeviceLogSettings::topic`], every stored batch is also published to that topic (one
//! message per entry, the LogEntry JSON as data), and so reaches Pub/Sub subscribers and sinks.

use crate::bridge::{AuthenticatedDevice, Transport};
use crate::{Code, Core, Error};
use ferrocore_model::{LogLevel, NumId, Timestamp};
use ferrocore_store::Store;
pub use ferrocore_store::{DeviceLogEntry, DeviceLogQuery, LogSeverity};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Entries the in-memory buffer holds between two flushes.
pub const BUFFER_CAPACITY: usize = 20_000;

/// How often the store is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// IoT Core's event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Connect,
    Disconnect,
    Publish,
    Subscribe,
    Unsubscribe,
    AttachToGateway,
    DetachFromGateway,
    Config,
    Command,
    PingReq,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::Connect,
        EventType::Disconnect,
        EventType::Publish,
        EventType::Subscribe,
        EventType::Unsubscribe,
        EventType::AttachToGateway,
        EventType::DetachFromGateway,
        EventType::Config,
        EventType::Command,
        EventType::PingReq,
    ];

    /// The event type of a name, in any case.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.name().eq_ignore_ascii_case(name))
    }

    pub fn name(self) -> &'static str {
        match self {
            EventType::Connect => "CONNECT",
            EventType::Disconnect => "DISCONNECT",
            EventType::Publish => "PUBLISH",
            EventType::Subscribe => "SUBSCRIBE",
            EventType::Unsubscribe => "UNSUBSCRIBE",
            EventType::AttachToGateway => "ATTACH_TO_GATEWAY",
            EventType::DetachFromGateway => "DETACH_FROM_GATEWAY",
            EventType::Config => "CONFIG",
            EventType::Command => "COMMAND",
            EventType::PingReq => "PINGREQ",
        }
    }

    /// The severity of the event when it succeeded; a failure is always ERROR.
    pub fn severity(self) -> LogSeverity {
        match self {
            EventType::Publish | EventType::Command | EventType::PingReq => LogSeverity::Debug,
            _ => LogSeverity::Info,
        }
    }
}

/// Whether a level records entries of a severity.
pub fn level_admits(level: LogLevel, severity: LogSeverity) -> bool {
    match level {
        LogLevel::Unspecified | LogLevel::None => false,
        LogLevel::Error => severity >= LogSeverity::Error,
        LogLevel::Info => severity >= LogSeverity::Info,
        LogLevel::Debug => true,
    }
}

/// One thing a device did, as a bridge reports it.
#[derive(Debug, Clone)]
pub struct DeviceEvent {
    pub kind: EventType,
    pub transport: Transport,
    pub client_ip: Option<IpAddr>,
    /// The MQTT topic (or topic filter) the event is about.
    pub topic: Option<String>,
    /// The failure, if it failed: google.rpc code number and message.
    pub error: Option<(i32, String)>,
    /// The gateway the device spoke through.
    pub gateway: Option<String>,
    /// Further `jsonPayload` fields (`disconnectType`, `publishFromDeviceTopicType`...).
    pub fields: Vec<(&'static str, Value)>,
}

impl DeviceEvent {
    pub fn new(kind: EventType, transport: Transport, client_ip: Option<IpAddr>) -> Self {
        Self { kind, transport, client_ip, topic: None, error: None, gateway: None, fields: Vec::new() }
    }

    pub fn topic(mut self, topic: &str) -> Self {
        self.topic = Some(topic.to_owned());
        self
    }

    pub fn failed(mut self, e: &Error) -> Self {
        self.error = Some((e.code as i32, e.message.clone()));
        self
    }

    pub fn failed_with(mut self, code: Code, message: impl Into<String>) -> Self {
        self.error = Some((code as i32, message.into()));
        self
    }

    /// Failed with a google.rpc.Status (code 0 is no failure).
    pub fn failed_status(mut self, status: &ferrocore_model::Status) -> Self {
        if status.code != 0 {
            self.error = Some((status.code, status.message.clone()));
        }
        self
    }

    pub fn gateway(mut self, gateway: Option<&str>) -> Self {
        self.gateway = gateway.map(str::to_owned);
        self
    }

    pub fn field(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.fields.push((name, value.into()));
        self
    }

    pub fn severity(&self) -> LogSeverity {
        if self.error.is_some() { LogSeverity::Error } else { self.kind.severity() }
    }

    fn payload(&self, dev: &AuthenticatedDevice) -> String {
        let mut p = Map::new();
        p.insert("eventType".into(), self.kind.name().into());
        p.insert("serviceName".into(), "cloudiot.googleapis.com".into());
        p.insert(
            "resourceName".into(),
            dev.registry.device(ferrocore_model::DeviceRef::Num(dev.num_id)).to_string().into(),
        );
        p.insert("deviceId".into(), dev.id.as_str().into());
        p.insert(
            "protocol".into(),
            match self.transport {
                Transport::Mqtt => "MQTT",
                Transport::Http => "HTTP",
            }
            .into(),
        );
        if let Some(ip) = self.client_ip {
            p.insert("clientIp".into(), ip.to_canonical().to_string().into());
        }
        if let Some(t) = &self.topic {
            p.insert("mqttTopic".into(), t.as_str().into());
        }
        let status = match &self.error {
            None => json!({"code": 0, "description": "OK"}),
            Some((code, message)) => json!({
                "code": code,
                "description": Code::from_number(*code).map_or("UNKNOWN", Code::name),
                "message": message,
            }),
        };
        p.insert("status".into(), status);
        if let Some(g) = &self.gateway {
            p.insert("gateway".into(), json!({ "id": g }));
        }
        for (k, v) in &self.fields {
            p.insert((*k).into(), v.clone());
        }
        Value::Object(p).to_string()
    }
}

/// One entry as a Cloud Logging LogEntry, IoT Core's `device_activity` log.
pub fn entry_json(e: &DeviceLogEntry) -> Value {
    let project = e.registry.parent.project.as_str();
    let payload: Value = serde_json::from_str(&e.payload).unwrap_or_else(|_| json!({}));
    json!({
        "logName": format!("projects/{project}/logs/cloudiot.googleapis.com%2Fdevice_activity"),
        "resource": {
            "type": "cloudiot_device",
            "labels": {
                "device_num_id": e.device_num_id.to_string(),
                "device_registry_id": e.registry.registry.as_str(),
                "location": e.registry.parent.location.as_str(),
                "project_id": project,
            },
        },
        "labels": { "device_id": e.device_id.as_str() },
        "timestamp": e.time.to_string(),
        "receiveTimestamp": e.received.to_string(),
        "severity": e.severity.name(),
        "insertId": format!("{:016x}", e.seq),
        "jsonPayload": payload,
    })
}

/// Dropped entries by severity, since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub debug: u64,
    pub info: u64,
    pub error: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.debug + self.info + self.error
    }
}

#[derive(Default)]
struct Queues {
    next: u64,
    debug: VecDeque<(u64, DeviceLogEntry)>,
    info: VecDeque<(u64, DeviceLogEntry)>,
    error: VecDeque<(u64, DeviceLogEntry)>,
}

impl Queues {
    fn len(&self) -> usize {
        self.debug.len() + self.info.len() + self.error.len()
    }
}

/// The buffer of entries on their way to the store, and the device levels.
pub struct DeviceLog {
    store: Arc<dyn Store>,
    capacity: usize,
    queues: Mutex<Queues>,
    dropped: [AtomicU64; 3],
    /// Devices' own levels (those not LOG_LEVEL_UNSPECIFIED), as last seen.
    levels: RwLock<HashMap<NumId, LogLevel>>,
    flushing: tokio::sync::Mutex<()>,
}

/// How the flusher writes and prunes.
#[derive(Debug, Clone)]
pub struct DeviceLogSettings {
    pub flush_interval: Duration,
    /// Entries older than this are deleted.
    pub retention: Duration,
    /// At most this many entries are kept; the oldest go first.
    pub max_entries: u64,
    /// A topic (`projects/P/topics/T`) every stored entry is also published to.
    pub topic: Option<String>,
}

impl Default for DeviceLogSettings {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(200),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_entries: 10_000_000,
            topic: None,
        }
    }
}

/// The background flusher; [`LogFlusher::stop`] ends it between two flushes.
pub struct LogFlusher {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LogFlusher {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl DeviceLog {
    pub(crate) fn new(store: Arc<dyn Store>, capacity: usize) -> Self {
        Self {
            store,
            capacity: capacity.max(1),
            queues: Mutex::new(Queues::default()),
            dropped: Default::default(),
            levels: RwLock::new(HashMap::new()),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        // Pushing and taking cannot leave the queues half-changed.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_drop(&self, s: LogSeverity) {
        // Indexed by the enum's order: DEBUG, INFO, ERROR.
        self.dropped[s as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Entries dropped so far because the buffer was full or the store failed.
    pub fn dropped(&self) -> Dropped {
        let n = |i: usize| self.dropped[i].load(Ordering::Relaxed);
        Dropped { debug: n(0), info: n(1), error: n(2) }
    }

    /// Entries waiting for the next flush.
    pub fn buffered(&self) -> usize {
        self.queues().len()
    }

    /// Queues an entry without waiting. When the buffer is full, the oldest entry of a lower
    /// severity makes room (DEBUG first, then INFO); with none, the new entry is dropped.
    pub fn push(&self, entry: DeviceLogEntry) {
        let severity = entry.severity;
        let mut q = self.queues();
        if q.len() >= self.capacity {
            let evicted = match severity {
                LogSeverity::Debug => None,
                LogSeverity::Info => q.debug.pop_front().map(|_| LogSeverity::Debug),
                LogSeverity::Error => q
                    .debug
                    .pop_front()
                    .map(|_| LogSeverity::Debug)
                    .or_else(|| q.info.pop_front().map(|_| LogSeverity::Info)),
            };
            match evicted {
                Some(s) => self.count_drop(s),
                None => {
                    drop(q);
                    return self.count_drop(severity);
                }
            }
        }
        let order = q.next;
        q.next += 1;
        match severity {
            LogSeverity::Debug => q.debug.push_back((order, entry)),
            LogSeverity::Info => q.info.push_back((order, entry)),
            LogSeverity::Error => q.error.push_back((order, entry)),
        }
    }

    /// Takes everything buffered, in the order it was pushed.
    fn take(&self) -> Vec<DeviceLogEntry> {
        let Queues { debug, info, error, .. } = {
            let mut q = self.queues();
            let next = q.next;
            std::mem::replace(&mut *q, Queues { next, ..Default::default() })
        };
        let mut all: Vec<(u64, DeviceLogEntry)> = debug.into_iter().chain(info).chain(error).collect();
        all.sort_unstable_by_key(|(order, _)| *order);
        all.into_iter().map(|(_, e)| e).collect()
    }

    /// Writes what is buffered in one transaction and returns it as stored (sequence numbers and
    /// receive times set). Entries a failed write held are dropped and counted: logs are best
    /// effort, and a store that refuses them must not grow the buffer.
    pub async fn flush(&self, now: Timestamp) -> Vec<DeviceLogEntry> {
        let _one_at_a_time = self.flushing.lock().await;
        let mut batch = self.take();
        if batch.is_empty() {
            return batch;
        }
        match self.store.append_device_logs(&batch, now).await {
            Ok(seqs) => {
                for (entry, seq) in batch.iter_mut().zip(seqs) {
                    entry.seq = seq;
                    entry.received = now;
                }
                batch
            }
            Err(e) => {
                tracing::warn!(error = %e, entries = batch.len(), "device log flush failed; its entries are dropped");
                for entry in &batch {
                    self.count_drop(entry.severity);
                }
                Vec::new()
            }
        }
    }

    /// Notes a device's own level (from a device read or update).
    pub fn note_level(&self, device: NumId, level: LogLevel) {
        // Every authentication notes the level; most find it unchanged, under the read lock.
        if self.device_level(device) == level {
            return;
        }
        let mut levels = self.levels.write().unwrap_or_else(|e| e.into_inner());
        match level {
            LogLevel::Unspecified => levels.remove(&device),
            l => levels.insert(device, l),
        };
    }

    fn device_level(&self, device: NumId) -> LogLevel {
        self.levels.read().unwrap_or_else(|e| e.into_inner()).get(&device).copied().unwrap_or_default()
    }
}

impl Core {
    pub fn device_log(&self) -> &Arc<DeviceLog> {
        &self.inner.device_log
    }

    /// The level a device logs at: its own unless unspecified, then its registry's.
    pub fn effective_log_level(&self, dev: &AuthenticatedDevice) -> LogLevel {
        match self.inner.device_log.device_level(dev.num_id) {
            LogLevel::Unspecified => {
                let cache = self.inner.registries.read().unwrap_or_else(|e| e.into_inner());
                cache.entries.get(&dev.registry).map(|r| r.log_level).unwrap_or_default()
            }
            own => own,
        }
    }

    /// Whether an entry of `severity` about `dev` would be recorded: bridges check before
    /// building an event on a hot path.
    pub fn logs_at(&self, dev: &AuthenticatedDevice, severity: LogSeverity) -> bool {
        level_admits(self.effective_log_level(dev), severity)
    }

    /// Records an event about `dev` if its effective level admits the event's severity.
    pub fn log_device_event(&self, dev: &AuthenticatedDevice, event: DeviceEvent) {
        let severity = event.severity();
        if !self.logs_at(dev, severity) {
            return;
        }
        let entry = DeviceLogEntry {
            seq: 0,
            time: self.now(),
            received: Timestamp(0),
            registry: (*dev.registry).clone(),
            device_id: dev.id.clone(),
            device_num_id: dev.num_id,
            severity,
            event_type: event.kind.name().to_owned(),
            payload: event.payload(dev),
        };
        self.inner.device_log.push(entry);
    }

    /// Records how an event ended: ERROR with the failure, or at the event's own severity. The
    /// event is built only when the device's level records that severity, so a device at NONE
    /// costs one level check and no allocation.
    pub fn log_outcome<T>(
        &self,
        dev: &AuthenticatedDevice,
        kind: EventType,
        result: &crate::Result<T>,
        event: impl FnOnce() -> DeviceEvent,
    ) {
        let severity = if result.is_err() { LogSeverity::Error } else { kind.severity() };
        if !self.logs_at(dev, severity) {
            return;
        }
        let event = event();
        debug_assert_eq!(event.kind, kind);
        match result {
            Ok(_) => self.log_device_event(dev, event),
            Err(e) => self.log_device_event(dev, event.failed(e)),
        }
    }

    /// As [`Core::log_device_event`], first reading the registry back into the cache if a
    /// registry update emptied it, so its level is known (for events no message precedes, such
    /// as a disconnect).
    pub async fn log_device_event_fresh(&self, dev: &AuthenticatedDevice, event: DeviceEvent) {
        let cached = {
            let cache = self.inner.registries.read().unwrap_or_else(|e| e.into_inner());
            cache.entries.contains_key(&dev.registry)
        };
        if !cached && self.inner.device_log.device_level(dev.num_id) == LogLevel::Unspecified {
            // A registry that is gone logs nothing; the error is of no use here.
            let _ = self.cached_registry(&dev.registry).await;
        }
        self.log_device_event(dev, event);
    }

    /// A registry's log entries, oldest first; NOT_FOUND for an unknown registry.
    pub async fn read_device_logs(&self, query: &DeviceLogQuery) -> crate::Result<Vec<DeviceLogEntry>> {
        self.get_registry(&query.registry).await?;
        self.inner.store.list_device_logs(query).await.map_err(crate::error::storage)
    }

    /// Flushes the device log every `settings.flush_interval` and prunes the store by age and row
    /// count every minute, until [`LogFlusher::stop`].
    pub fn spawn_log_flusher(&self, settings: DeviceLogSettings) -> LogFlusher {
        let core = self.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let log = core.inner.device_log.clone();
            let mut tick = tokio::time::interval(settings.flush_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune: Option<tokio::time::Instant> = None;
            let mut reported = Dropped::default();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                let stored = log.flush(core.now()).await;
                if let Some(topic) = &settings.topic {
                    core.publish_log_entries(topic, &stored).await;
                }
                let dropped = log.dropped();
                if dropped.total() > reported.total() {
                    tracing::warn!(
                        debug = dropped.debug,
                        info = dropped.info,
                        error = dropped.error,
                        "device log entries dropped since start (buffer full or store failing)"
                    );
                    reported = dropped;
                }
                if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                    last_prune = Some(tokio::time::Instant::now());
                    let age = i64::try_from(settings.retention.as_nanos()).unwrap_or(i64::MAX);
                    let before = Timestamp(core.now().nanos().saturating_sub(age));
                    match core.inner.store.prune_device_logs(before, settings.max_entries).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(deleted = n, "pruned device log entries"),
                        Err(e) => tracing::warn!(error = %e, "device log pruning failed"),
                    }
                }
            }
            let stored = log.flush(core.now()).await;
            if let Some(topic) = &settings.topic {
                core.publish_log_entries(topic, &stored).await;
            }
        });
        LogFlusher { stop, task }
    }

    /// Publishes stored entries to `topic`, one message per entry, and waits until they are
    /// durable there. Failures are logged: the entries are in the store all the same.
    async fn publish_log_entries(&self, topic: &str, entries: &[DeviceLogEntry]) {
        if entries.is_empty() {
            return;
        }
        let messages = entries
            .iter()
            .map(|e| crate::sink::Message {
                time: e.time,
                attributes: vec![
                    ("deviceId".to_owned(), e.device_id.to_string()),
                    ("deviceNumId".to_owned(), e.device_num_id.to_string()),
                    ("deviceRegistryId".to_owned(), e.registry.registry.to_string()),
                    ("deviceRegistryLocation".to_owned(), e.registry.parent.location.to_string()),
                    ("projectId".to_owned(), e.registry.parent.project.to_string()),
                    ("severity".to_owned(), e.severity.name().to_owned()),
                    ("eventType".to_owned(), e.event_type.clone()),
                ],
                data: bytes::Bytes::from(entry_json(e).to_string()),
            })
            .collect();
        let delivered = match self.inner.sink.submit(topic, messages).await {
            Ok(ticket) => ticket.await,
            Err(e) => Err(e),
        };
        if let Err(e) = delivered {
            tracing::warn!(error = %e, %topic, entries = entries.len(), "device log entries not published to the log topic");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;
    use ferrocore_store::DeviceLogQuery;

    fn entry(f: &Fixture, severity: LogSeverity, n: i64) -> DeviceLogEntry {
        DeviceLogEntry {
            seq: 0,
            time: Timestamp(n),
            received: Timestamp(0),
            registry: f.device.registry.clone(),
            device_id: f.device.id.clone(),
            device_num_id: f.device.num_id,
            severity,
            event_type: "PUBLISH".into(),
            payload: "{}".into(),
        }
    }

    #[tokio::test]
    async fn a_full_buffer_drops_debug_first_then_info() {
        let f = Fixture::new(Default::default()).await;
        let log = DeviceLog::new(f.store.clone(), 4);
        for i in 0..4 {
            log.push(entry(&f, LogSeverity::Debug, i));
        }
        log.push(entry(&f, LogSeverity::Debug, 4));
        assert_eq!(log.dropped(), Dropped { debug: 1, info: 0, error: 0 }, "a new DEBUG entry is dropped");
        for i in 10..14 {
            log.push(entry(&f, LogSeverity::Info, i));
        }
        assert_eq!(log.dropped().debug, 5, "INFO pushes every DEBUG out");
        log.push(entry(&f, LogSeverity::Info, 14));
        assert_eq!(log.dropped(), Dropped { debug: 5, info: 1, error: 0 }, "then a new INFO is dropped");
        log.push(entry(&f, LogSeverity::Error, 20));
        assert_eq!(log.dropped().info, 2, "ERROR pushes INFO out");
        for i in 21..25 {
            log.push(entry(&f, LogSeverity::Error, i));
        }
        assert_eq!(log.dropped(), Dropped { debug: 5, info: 5, error: 1 }, "and a new ERROR is dropped last");
        assert_eq!(log.buffered(), 4);

        log.flush(Timestamp(99)).await;
        assert_eq!(log.buffered(), 0);
        let stored = f.store.list_device_logs(&DeviceLogQuery::registry(f.device.registry.clone(), 100)).await.unwrap();
        assert_eq!(stored.iter().map(|e| e.time.0).collect::<Vec<_>>(), [20, 21, 22, 23], "in push order");
        assert!(stored.iter().all(|e| e.severity == LogSeverity::Error));
    }

    #[tokio::test]
    async fn mixed_entries_keep_their_order_through_a_flush() {
        let f = Fixture::new(Default::default()).await;
        let log = DeviceLog::new(f.store.clone(), 100);
        let kinds = [LogSeverity::Info, LogSeverity::Debug, LogSeverity::Error, LogSeverity::Debug, LogSeverity::Info];
        for (i, s) in kinds.iter().enumerate() {
            log.push(entry(&f, *s, i as i64));
        }
        log.flush(Timestamp(1)).await;
        let stored = f.store.list_device_logs(&DeviceLogQuery::registry(f.device.registry.clone(), 100)).await.unwrap();
        assert_eq!(stored.iter().map(|e| e.time.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(log.dropped().total(), 0);
    }

    #[test]
    fn levels_include_the_ones_below() {
        use LogSeverity::*;
        assert!(!level_admits(LogLevel::None, Error));
        assert!(!level_admits(LogLevel::Unspecified, Error));
        assert!(level_admits(LogLevel::Error, Error) && !level_admits(LogLevel::Error, Info));
        assert!(level_admits(LogLevel::Info, Info) && !level_admits(LogLevel::Info, Debug));
        assert!(level_admits(LogLevel::Debug, Debug));
    }
}
