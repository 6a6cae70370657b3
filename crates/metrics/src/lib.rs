//! Ferrocore's Prometheus metrics: every series the server exports is defined here, once, with its
//! name, type, help text and labels (see `docs/metrics.md`).
//!
//! * Recorded as they happen, into [`Metrics`] (one per server, shared as an `Arc`): MQTT
//!   connections, connects and refusals, device messages and bytes, PUBACK latency, API requests,
//!   store latency, activity flush sizes. Hot-path series are plain atomics in fixed arrays
//!   indexed by small enums ([`Listener`], [`Refusal`], [`Bridge`], [`Inbound`], [`Outbound`]):
//!   recording a device message is one or two relaxed `fetch_add`s, with no lock, allocation or
//!   label lookup. API requests and store operations (not per device message) go through a
//!   short-held mutex over a map keyed by `&'static str` labels.
//! * Read at scrape time from their owners, as plain values in a [`Scraped`]: the topic log's
//!   counters, connected devices, device activity log drops, the external sinks, and the process
//!   ([`process`], from `/proc/self`; absent elsewhere).
//!
//! Label values are always from a bounded set: enums here, route templates and RPC names, sink
//! names from the configuration. Never a device, registry, topic or subscription name.
//!
//! [`Metrics::render`] writes the Prometheus text exposition format (version 0.0.4).

pub mod process;
mod text;

pub use text::Encoder;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of latency histograms, in nanoseconds: 100 µs to 10 s.
pub const LATENCY_BOUNDS_NS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of batch-size histograms: 1 to 100,000 items.
pub const SIZE_BOUNDS: &[u64] = &[1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000];

/// A histogram over fixed buckets, in an integer unit (nanoseconds, items) converted when rendered.
/// An observation is a binary search over the bounds and two relaxed atomic adds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Units per rendered unit (1e9 for nanoseconds shown as seconds).
    divisor: f64,
    /// Non-cumulative counts; the last one is the +Inf bucket.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64], divisor: f64) -> Self {
        Self {
            bounds,
            divisor,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// A latency histogram, in seconds.
    pub fn seconds() -> Self {
        Self::new(LATENCY_BOUNDS_NS, 1e9)
    }

    /// A batch-size histogram.
    pub fn sizes() -> Self {
        Self::new(SIZE_BOUNDS, 1.0)
    }

    #[inline]
    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// The MQTT listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Mqtt = 0,
    Mqtts = 1,
}

impl Listener {
    pub const ALL: [Listener; 2] = [Listener::Mqtt, Listener::Mqtts];
    pub fn label(self) -> &'static str {
        match self {
            Listener::Mqtt => "mqtt",
            Listener::Mqtts => "mqtts",
        }
    }
}

/// Why an MQTT connection was closed before its device was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--mqtt-max-connections` reached: closed at accept.
    ConnectionLimit = 0,
    /// A per-address cap reached: closed at accept.
    AddressLimit,
    /// The TLS handshake failed.
    TlsHandshake,
    /// No TLS handshake or CONNECT before the deadline.
    Timeout,
    /// The first packet was malformed, or not a CONNECT.
    MalformedConnect,
    /// CONNACK 1: not MQTT 3.1.1 (or 3.1).
    UnsupportedProtocol,
    /// CONNACK 2: the client id is not a device name.
    IdentifierRejected,
    /// CONNACK 4: no password (JWT).
    BadCredentials,
    /// CONNACK 5: unknown device, bad or expired JWT, blocked device, MQTT disabled...
    NotAuthorized,
    /// CONNACK 3: the server could not decide (store unavailable).
    ServerUnavailable,
}

impl Refusal {
    pub const ALL: [Refusal; 10] = [
        Refusal::ConnectionLimit,
        Refusal::AddressLimit,
        Refusal::TlsHandshake,
        Refusal::Timeout,
        Refusal::MalformedConnect,
        Refusal::UnsupportedProtocol,
        Refusal::IdentifierRejected,
        Refusal::BadCredentials,
        Refusal::NotAuthorized,
        Refusal::ServerUnavailable,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::AddressLimit => "address_limit",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::Timeout => "timeout",
            Refusal::MalformedConnect => "malformed_connect",
            Refusal::UnsupportedProtocol => "unsupported_protocol",
            Refusal::IdentifierRejected => "identifier_rejected",
            Refusal::BadCredentials => "bad_credentials",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::ServerUnavailable => "server_unavailable",
        }
    }
}

/// The device bridges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bridge {
    Mqtt = 0,
    Http = 1,
}

impl Bridge {
    pub const ALL: [Bridge; 2] = [Bridge::Mqtt, Bridge::Http];
    pub fn label(self) -> &'static str {
        match self {
            Bridge::Mqtt => "mqtt",
            Bridge::Http => "http",
        }
    }
}

/// What devices send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Telemetry = 0,
    State = 1,
}

impl Inbound {
    pub const ALL: [Inbound; 2] = [Inbound::Telemetry, Inbound::State];
    pub fn label(self) -> &'static str {
        match self {
            Inbound::Telemetry => "telemetry",
            Inbound::State => "state",
        }
    }
}

/// What devices are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    Config = 0,
    Command = 1,
}

impl Outbound {
    pub const ALL: [Outbound; 2] = [Outbound::Config, Outbound::Command];
    pub fn label(self) -> &'static str {
        match self {
            Outbound::Config => "config",
            Outbound::Command => "command",
        }
    }
}

/// The admin APIs' protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Rest,
    Grpc,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Rest => "rest",
            Protocol::Grpc => "grpc",
        }
    }
}

/// gRPC status code names, by number.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The MQTT bridge.
#[derive(Debug)]
pub struct MqttMetrics {
    connections: [Gauge; 2],
    connects: [Counter; 2],
    refusals: [Counter; Refusal::ALL.len()],
    /// From a PUBLISH (QoS 1) read to its PUBACK queued for writing, the message being durable.
    pub puback_latency: Histogram,
}

impl MqttMetrics {
    #[inline]
    pub fn connection_opened(&self, l: Listener) {
        self.connections[l as usize].inc();
    }
    #[inline]
    pub fn connection_closed(&self, l: Listener) {
        self.connections[l as usize].dec();
    }
    #[inline]
    pub fn connected(&self, l: Listener) {
        self.connects[l as usize].inc();
    }
    #[inline]
    pub fn refused(&self, r: Refusal) {
        self.refusals[r as usize].inc();
    }
    /// MQTT connections open now on a listener (authenticated or not yet).
    pub fn open_connections(&self, l: Listener) -> i64 {
        self.connections[l as usize].get()
    }
}

/// Device traffic through both bridges.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    received: [[Counter; 2]; 2],
    received_bytes: [[Counter; 2]; 2],
    sent: [[Counter; 2]; 2],
    sent_bytes: [[Counter; 2]; 2],
}

impl DeviceMetrics {
    /// A device message received (telemetry or state), whatever becomes of it.
    #[inline]
    pub fn received(&self, bridge: Bridge, kind: Inbound, bytes: usize) {
        self.received[bridge as usize][kind as usize].inc();
        self.received_bytes[bridge as usize][kind as usize].add(bytes as u64);
    }
    /// A config or command sent to a device.
    #[inline]
    pub fn sent(&self, bridge: Bridge, kind: Outbound, bytes: usize) {
        self.sent[bridge as usize][kind as usize].inc();
        self.sent_bytes[bridge as usize][kind as usize].add(bytes as u64);
    }
    /// Messages of one kind received so far, both bridges.
    pub fn received_total(&self, kind: Inbound) -> u64 {
        self.received.iter().map(|by_kind| by_kind[kind as usize].get()).sum()
    }
    /// Messages of one kind sent so far, both bridges.
    pub fn sent_total(&self, kind: Outbound) -> u64 {
        self.sent.iter().map(|by_kind| by_kind[kind as usize].get()).sum()
    }
}

/// One API method's series.
#[derive(Debug)]
struct MethodSeries {
    codes: BTreeMap<u16, u64>,
    latency: Histogram,
}

/// Admin API requests (REST and gRPC).
#[derive(Debug, Default)]
pub struct ApiMetrics {
    methods: Mutex<BTreeMap<(Protocol, &'static str), MethodSeries>>,
}

impl ApiMetrics {
    /// A finished request. `method` is a route template or RPC name (a bounded set); `code` an
    /// HTTP status for REST, a gRPC status code for gRPC.
    pub fn record(&self, protocol: Protocol, method: &'static str, code: u16, elapsed: Duration) {
        let mut methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        let s = methods
            .entry((protocol, method))
            .or_insert_with(|| MethodSeries { codes: BTreeMap::new(), latency: Histogram::seconds() });
        *s.codes.entry(code).or_default() += 1;
        s.latency.observe_duration(elapsed);
    }
}

/// Store operations, by operation (a `Store` method name).
#[derive(Debug, Default)]
pub struct StoreMetrics {
    ops: Mutex<BTreeMap<&'static str, (Histogram, u64)>>,
}

impl StoreMetrics {
    pub fn record(&self, operation: &'static str, elapsed: Duration, failed: bool) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let (h, errors) = ops.entry(operation).or_insert_with(|| (Histogram::seconds(), 0));
        h.observe_duration(elapsed);
        *errors += u64::from(failed);
    }
}

/// The batched device activity writer.
#[derive(Debug)]
pub struct ActivityMetrics {
    /// Devices per flush (one transaction).
    pub flush_devices: Histogram,
    pub flush_failures: Counter,
}

/// Everything recorded as it happens; one per server.
#[derive(Debug)]
pub struct Metrics {
    pub mqtt: MqttMetrics,
    pub devices: DeviceMetrics,
    pub api: ApiMetrics,
    pub store: StoreMetrics,
    pub activity: ActivityMetrics,
    /// Plain MQTT connections whose session is parked (quiet, waiting without a task). Last, so
    /// the series above keep their places in memory: devices.get measured 10-20% slower when
    /// this gauge shifted them (cache-line sharing between the per-request locks and counters).
    mqtt_parked: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The topic log's counters (`TopicLog::stats`), read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicLogValues {
    /// Records made durable.
    pub appended_records: u64,
    /// Their bytes, framing included.
    pub appended_bytes: u64,
    /// Batches written (one write and one fsync each, plus one per segment roll).
    pub commits: u64,
    /// fsyncs of files and directories, recovery and retention included.
    pub fsyncs: u64,
    pub retention_deleted_segments: u64,
    pub retention_deleted_bytes: u64,
    pub topics: u64,
    /// Bytes on disk over all topics.
    pub bytes: u64,
}

/// One external sink, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct SinkValues {
    pub name: String,
    pub up: bool,
    pub lag_messages: u64,
    pub lag_seconds: f64,
    pub forwarded_messages: u64,
    pub lost_messages: u64,
    pub rejected_messages: u64,
}

/// What is read from its owners at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Scraped {
    pub devices_connected: u64,
    /// Device activity log entries dropped, by severity: DEBUG, INFO, ERROR.
    pub device_log_dropped: [u64; 3],
    pub topic_log: Option<TopicLogValues>,
    pub sinks: Vec<SinkValues>,
    pub process: Option<process::ProcessValues>,
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            mqtt: MqttMetrics {
                connections: Default::default(),
                connects: Default::default(),
                refusals: Default::default(),
                puback_latency: Histogram::seconds(),
            },
            devices: DeviceMetrics::default(),
            api: ApiMetrics::default(),
            store: StoreMetrics::default(),
            activity: ActivityMetrics { flush_devices: Histogram::sizes(), flush_failures: Counter::new() },
            mqtt_parked: Gauge::new(),
        }
    }

    /// Plain MQTT connections parked now (the listener's lot counts them).
    pub fn set_mqtt_parked(&self, n: usize) {
        self.mqtt_parked.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Plain MQTT connections parked now.
    pub fn mqtt_parked(&self) -> i64 {
        self.mqtt_parked.get()
    }

    /// Every series, in the text exposition format.
    pub fn render(&self, scraped: &Scraped) -> String {
        let mut e = Encoder::default();
        e.family("ferrocore_build_info", "gauge", "The running version (always 1).");
        e.sample("ferrocore_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);

        // MQTT.
        e.family("ferrocore_mqtt_connections", "gauge", "Open MQTT connections (TLS handshake and CONNECT included).");
        for l in Listener::ALL {
            e.sample("ferrocore_mqtt_connections", &[("protocol", l.label())], self.mqtt.connections[l as usize].get());
        }
        e.family(
            "ferrocore_mqtt_parked_connections",
            "gauge",
            "Plain MQTT connections whose quiet session waits without a task.",
        );
        e.sample("ferrocore_mqtt_parked_connections", &[], self.mqtt_parked.get());
        e.family("ferrocore_mqtt_connects_total", "counter", "MQTT devices let in (CONNACK 0).");
        for l in Listener::ALL {
            e.sample("ferrocore_mqtt_connects_total", &[("protocol", l.label())], self.mqtt.connects[l as usize].get());
        }
        e.family(
            "ferrocore_mqtt_connect_refusals_total",
            "counter",
            "MQTT connections closed before their device was let in, by reason.",
        );
        for r in Refusal::ALL {
            e.sample(
                "ferrocore_mqtt_connect_refusals_total",
                &[("reason", r.label())],
                self.mqtt.refusals[r as usize].get(),
            );
        }
        e.family(
            "ferrocore_mqtt_puback_latency_seconds",
            "histogram",
            "From a QoS 1 PUBLISH read to its PUBACK queued for writing, once the message is durable.",
        );
        e.histogram("ferrocore_mqtt_puback_latency_seconds", &[], &self.mqtt.puback_latency);
        e.family(
            "ferrocore_devices_connected",
            "gauge",
            "Devices connected to this node (gateway-attached ones included).",
        );
        e.sample("ferrocore_devices_connected", &[], scraped.devices_connected);

        // Device traffic.
        let d = &self.devices;
        let inbound: [(&str, &str, &[[Counter; 2]; 2]); 2] = [
            ("ferrocore_device_messages_received_total", "Messages devices sent, by bridge and kind.", &d.received),
            (
                "ferrocore_device_received_bytes_total",
                "Payload bytes devices sent, by bridge and kind.",
                &d.received_bytes,
            ),
        ];
        for (name, help, counters) in inbound {
            e.family(name, "counter", help);
            for b in Bridge::ALL {
                for k in Inbound::ALL {
                    e.sample(
                        name,
                        &[("bridge", b.label()), ("kind", k.label())],
                        counters[b as usize][k as usize].get(),
                    );
                }
            }
        }
        let outbound: [(&str, &str, &[[Counter; 2]; 2]); 2] = [
            (
                "ferrocore_device_messages_sent_total",
                "Configs and commands sent to devices, by bridge and kind.",
                &d.sent,
            ),
            ("ferrocore_device_sent_bytes_total", "Payload bytes sent to devices, by bridge and kind.", &d.sent_bytes),
        ];
        for (name, help, counters) in outbound {
            e.family(name, "counter", help);
            for b in Bridge::ALL {
                for k in Outbound::ALL {
                    e.sample(
                        name,
                        &[("bridge", b.label()), ("kind", k.label())],
                        counters[b as usize][k as usize].get(),
                    );
                }
            }
        }

        // Admin APIs.
        {
            let methods = self.api.methods.lock().unwrap_or_else(|e| e.into_inner());
            e.family(
                "ferrocore_api_requests_total",
                "counter",
                "Admin API requests, by protocol, method (route or RPC) and code (HTTP status or gRPC code).",
            );
            for ((p, m), s) in methods.iter() {
                for (code, n) in &s.codes {
                    let code = match p {
                        Protocol::Rest => CodeLabel::Http(*code),
                        Protocol::Grpc => CodeLabel::Grpc(*code),
                    };
                    let code = code.to_string();
                    e.sample(
                        "ferrocore_api_requests_total",
                        &[("protocol", p.label()), ("method", m), ("code", &code)],
                        n,
                    );
                }
            }
            e.family(
                "ferrocore_api_request_duration_seconds",
                "histogram",
                "Admin API request latency, by protocol and method.",
            );
            for ((p, m), s) in methods.iter() {
                e.histogram(
                    "ferrocore_api_request_duration_seconds",
                    &[("protocol", p.label()), ("method", m)],
                    &s.latency,
                );
            }
        }

        // Store.
        {
            let ops = self.store.ops.lock().unwrap_or_else(|e| e.into_inner());
            e.family(
                "ferrocore_store_operation_duration_seconds",
                "histogram",
                "Store operation latency, by operation.",
            );
            for (op, (h, _)) in ops.iter() {
                e.histogram("ferrocore_store_operation_duration_seconds", &[("operation", op)], h);
            }
            e.family(
                "ferrocore_store_operation_errors_total",
                "counter",
                "Store operations that failed, by operation.",
            );
            for (op, (_, errors)) in ops.iter() {
                e.sample("ferrocore_store_operation_errors_total", &[("operation", op)], errors);
            }
        }

        // Device activity and activity logs.
        e.family(
            "ferrocore_activity_flush_devices",
            "histogram",
            "Devices written per device-activity flush (one transaction).",
        );
        e.histogram("ferrocore_activity_flush_devices", &[], &self.activity.flush_devices);
        e.family(
            "ferrocore_activity_flush_failures_total",
            "counter",
            "Device-activity flushes the store refused (retried).",
        );
        e.sample("ferrocore_activity_flush_failures_total", &[], self.activity.flush_failures.get());
        e.family(
            "ferrocore_device_log_dropped_entries_total",
            "counter",
            "Device activity log entries dropped (buffer full or store failing), by severity.",
        );
        for (i, s) in ["DEBUG", "INFO", "ERROR"].into_iter().enumerate() {
            e.sample("ferrocore_device_log_dropped_entries_total", &[("severity", s)], scraped.device_log_dropped[i]);
        }

        // Topic log.
        if let Some(t) = &scraped.topic_log {
            let counters = [
                (
                    "ferrocore_topiclog_appended_records_total",
                    "Records appended to the topic log (durable).",
                    t.appended_records,
                ),
                (
                    "ferrocore_topiclog_appended_bytes_total",
                    "Bytes appended to the topic log, framing included.",
                    t.appended_bytes,
                ),
                (
                    "ferrocore_topiclog_commits_total",
                    "Group commits: one write and one fsync for a batch of appends.",
                    t.commits,
                ),
                ("ferrocore_topiclog_fsyncs_total", "fsyncs of topic log files and directories.", t.fsyncs),
                (
                    "ferrocore_topiclog_retention_deleted_segments_total",
                    "Segments deleted by retention (age or size).",
                    t.retention_deleted_segments,
                ),
                (
                    "ferrocore_topiclog_retention_deleted_bytes_total",
                    "Bytes deleted by retention (age or size).",
                    t.retention_deleted_bytes,
                ),
            ];
            for (name, help, v) in counters {
                e.family(name, "counter", help);
                e.sample(name, &[], v);
            }
            e.family("ferrocore_topiclog_topics", "gauge", "Topics in the topic log.");
            e.sample("ferrocore_topiclog_topics", &[], t.topics);
            e.family("ferrocore_topiclog_bytes", "gauge", "Bytes the topic log's segments hold, over all topics.");
            e.sample("ferrocore_topiclog_bytes", &[], t.bytes);
        }

        // Sinks.
        if !scraped.sinks.is_empty() {
            type Get = fn(&SinkValues) -> String;
            let families: [(&str, &str, &str, Get); 6] = [
                ("ferrocore_sink_up", "gauge", "1 while the sink forwards or is caught up, 0 while it retries.", |s| {
                    u8::from(s.up).to_string()
                }),
                (
                    "ferrocore_sink_lag_messages",
                    "gauge",
                    "Messages in the log the sink's destination has not confirmed.",
                    |s| s.lag_messages.to_string(),
                ),
                (
                    "ferrocore_sink_lag_seconds",
                    "gauge",
                    "Age of the oldest message not yet confirmed; 0 when caught up.",
                    |s| s.lag_seconds.to_string(),
                ),
                (
                    "ferrocore_sink_forwarded_messages_total",
                    "counter",
                    "Messages the sink's destination confirmed.",
                    |s| s.forwarded_messages.to_string(),
                ),
                (
                    "ferrocore_sink_lost_messages_total",
                    "counter",
                    "Messages the log's size cap removed before they were forwarded.",
                    |s| s.lost_messages.to_string(),
                ),
                (
                    "ferrocore_sink_rejected_messages_total",
                    "counter",
                    "Messages the destination can never take, skipped.",
                    |s| s.rejected_messages.to_string(),
                ),
            ];
            for (name, kind, help, get) in families {
                e.family(name, kind, help);
                for s in &scraped.sinks {
                    e.sample(name, &[("sink", &s.name)], get(s));
                }
            }
        }

        if let Some(p) = &scraped.process {
            p.render(&mut e);
        }
        e.finish()
    }
}

/// A `code` label value.
enum CodeLabel {
    Http(u16),
    Grpc(u16),
}

impl std::fmt::Display for CodeLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            CodeLabel::Http(c) => write!(f, "{c}"),
            CodeLabel::Grpc(c) => f.write_str(GRPC_CODES.get(usize::from(c)).copied().unwrap_or("UNKNOWN")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_le_semantics() {
        let h = Histogram::new(&[1, 10], 1.0);
        for v in [0, 1, 2, 10, 11, 1000] {
            h.observe(v);
        }
        let mut e = Encoder::default();
        e.histogram("x", &[("a", "b")], &h);
        let out = e.finish();
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 6\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 1024\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 6\n"), "{out}");
        assert_eq!(h.count(), 6);
    }

    #[test]
    fn render_has_every_family_once_and_counts() {
        let m = Metrics::new();
        m.mqtt.connection_opened(Listener::Mqtts);
        m.mqtt.connected(Listener::Mqtts);
        m.mqtt.refused(Refusal::NotAuthorized);
        m.devices.received(Bridge::Mqtt, Inbound::Telemetry, 10);
        m.devices.received(Bridge::Mqtt, Inbound::Telemetry, 5);
        m.api.record(Protocol::Rest, "DeviceManager.GetDevice", 404, Duration::from_millis(3));
        m.api.record(Protocol::Grpc, "DeviceManager.GetDevice", 5, Duration::from_millis(3));
        m.store.record("get_device", Duration::from_micros(50), false);
        m.mqtt.puback_latency.observe_duration(Duration::from_millis(2));
        let s = Scraped {
            sinks: vec![SinkValues { name: "a\"b".into(), up: true, lag_messages: 3, ..Default::default() }],
            topic_log: Some(TopicLogValues::default()),
            ..Default::default()
        };
        let out = m.render(&s);
        assert!(out.contains("ferrocore_mqtt_connections{protocol=\"mqtts\"} 1\n"));
        assert!(out.contains("ferrocore_mqtt_connect_refusals_total{reason=\"not_authorized\"} 1\n"));
        assert!(out.contains("ferrocore_device_messages_received_total{bridge=\"mqtt\",kind=\"telemetry\"} 2\n"));
        assert!(out.contains("ferrocore_device_received_bytes_total{bridge=\"mqtt\",kind=\"telemetry\"} 15\n"));
        assert!(out.contains(
            "ferrocore_api_requests_total{protocol=\"rest\",method=\"DeviceManager.GetDevice\",code=\"404\"} 1\n"
        ));
        assert!(out.contains(
            "ferrocore_api_requests_total{protocol=\"grpc\",method=\"DeviceManager.GetDevice\",code=\"NOT_FOUND\"} 1\n"
        ));
        assert!(out.contains("ferrocore_mqtt_puback_latency_seconds_bucket{le=\"0.0025\"} 1\n"), "{out}");
        assert!(out.contains("ferrocore_sink_lag_messages{sink=\"a\\\"b\"} 3\n"), "{out}");
        let mut seen = std::collections::HashSet::new();
        for line in out.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(seen.insert(line.to_owned()), "family declared twice: {line}");
        }
    }
}
