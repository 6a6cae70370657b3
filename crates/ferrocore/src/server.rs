//! Wires the store, the core and the listeners, and runs until shutdown.

use crate::secrets::{self, TokenSource};
use anyhow::{Context, Result};
use ferrocore_core::Core;
use ferrocore_core::clock::SystemClock;
use ferrocore_store::sqlite::SqliteStore;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Everything `ferrocore serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Where registries, devices and the rest are kept: SQLite in the data directory, or PostgreSQL.
    pub store: StoreLocation,
    /// The admin token; when None, the one in the data dir (created on first start).
    pub admin_token: Option<String>,
    /// How often batched device activity reaches the store.
    pub activity_flush_interval: Duration,
    /// Certificate chain and private key (PEM) for TLS; gRPC uses TLS with ALPN h2 when set.
    /// MQTT over TLS uses them, or a certificate generated in the data directory.
    pub tls: Option<TlsFiles>,
    /// Host names and addresses the generated certificate is for besides localhost, 127.0.0.1 and
    /// ::1 (with `tls` unset). Its CA is constrained to exactly these names.
    pub tls_names: Vec<String>,
    /// Where telemetry topics are kept, and for how long.
    pub topic_log: TopicLogSettings,
    pub mqtt: ferrocore_mqtt::MqttConfig,
    pub core: ferrocore_core::Settings,
    /// Lets Pub/Sub calls without credentials in (clients set up with `PUBSUB_EMULATOR_HOST`
    /// send none); never DeviceManager or the rest of the admin API.
    pub pubsub_anonymous: bool,
    /// Timeouts and connection caps of the HTTP and gRPC listeners, and the shutdown deadline.
    pub limits: Limits,
    /// What the core and Pub/Sub take for the current time (token and credential expiry, resource
    /// timestamps): the system clock, except in tests that move time instead of waiting.
    pub clock: ServerClock,
    /// External sinks (`--sink`), each forwarding the topics it takes from the topic log.
    pub sinks: Vec<ferrocore_sinks::spec::SinkSpec>,
    /// How the sinks batch, poll and back off.
    pub sink_settings: ferrocore_sinks::forward::Settings,
    /// How device activity logs are flushed and how long they are kept.
    pub device_logs: ferrocore_core::device_log::DeviceLogSettings,
    /// `--metrics`: an address serving `GET /metrics` alone, without a token (the `--http`
    /// listener serves it too: to loopback clients freely, to others with the admin token).
    pub metrics_listen: Option<SocketAddr>,
    /// `--cluster`: this server is one node of several, meeting on NATS.
    pub cluster: Option<ClusterSettings>,
    /// `--transparent-huge-pages`: leave the kernel's transparent huge pages on for the process
    /// (off by default: see [`crate::limits::set_transparent_huge_pages`]).
    pub transparent_huge_pages: bool,
}

/// How often a node checks the leases of the sinks it forwards, and tries those it does not:
/// a sink whose node died is taken over within about this long.
const SINK_LEASE_CHECK: Duration = Duration::from_secs(2);

/// The external sinks: all forwarded here on one node; in a cluster, each by the node holding
/// its lease.
#[derive(Clone)]
enum Sinks {
    Local(ferrocore_sinks::forward::Forwarders),
    Led(Arc<ferrocore_sinks::leader::LedSinks>),
}

impl Sinks {
    fn report(&self) -> Arc<dyn ferrocore_core::sink::SinkReport> {
        match self {
            Sinks::Local(f) => Arc::new(f.clone()),
            Sinks::Led(l) => l.clone(),
        }
    }

    async fn close(&self) {
        match self {
            Sinks::Local(f) => f.close().await,
            Sinks::Led(l) => l.close().await,
        }
    }
}

/// `--cluster`, `--node-id`, `--cluster-prefix`, `--cluster-log-replicas`.
#[derive(Clone)]
pub struct ClusterSettings {
    /// `nats://[USER:PASSWORD@]HOST:PORT`.
    pub url: String,
    pub node_id: String,
    pub prefix: String,
    /// JetStream replicas of each topic's stream.
    pub log_replicas: usize,
}

/// Never shows a NATS password.
impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("url", &redact_password(&self.url))
            .field("node_id", &self.node_id)
            .field("prefix", &self.prefix)
            .field("log_replicas", &self.log_replicas)
            .finish()
    }
}

/// `--store`: the embedded SQLite file in the data directory (the default), or a PostgreSQL
/// database several nodes can share.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Embedded,
    /// A `postgres://` (or `postgresql://`) URL, password included when there is one.
    Postgres(String),
}

impl StoreLocation {
    /// Parses `--store`: `sqlite` (or empty) for the embedded default, or a PostgreSQL URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "sqlite" | "embedded" => Ok(Self::Embedded),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            _ => Err("expected 'sqlite' (the embedded default) or a postgres://USER@HOST:PORT/DATABASE URL".into()),
        }
    }
}

/// Never shows a password: `postgres://user:***@host/db`.
impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("sqlite"),
            Self::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

/// The URL with any password replaced by `***`, for logs and error messages.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The clock of a server: [`SystemClock`] unless a test gives its own.
#[derive(Clone)]
pub struct ServerClock(pub Arc<dyn ferrocore_core::clock::Clock>);

impl Default for ServerClock {
    fn default() -> Self {
        Self(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for ServerClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerClock({})", self.0.now())
    }
}

pub use crate::limits::Limits;

impl Default for Config {
    /// `ferrocore serve`'s defaults; callers set the fields they care about and take the rest
    /// with `..Default::default()`.
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ferrocore-data"),
            store: StoreLocation::Embedded,
            admin_token: None,
            activity_flush_interval: Duration::from_secs(1),
            tls: None,
            tls_names: Vec::new(),
            topic_log: TopicLogSettings::default(),
            mqtt: ferrocore_mqtt::MqttConfig::default(),
            core: ferrocore_core::Settings::default(),
            pubsub_anonymous: false,
            limits: Limits::default(),
            clock: ServerClock::default(),
            sinks: Vec::new(),
            sink_settings: ferrocore_sinks::forward::Settings::default(),
            device_logs: ferrocore_core::device_log::DeviceLogSettings::default(),
            metrics_listen: None,
            cluster: None,
            transparent_huge_pages: false,
        }
    }
}

/// Retention of the embedded topic log.
#[derive(Debug, Clone)]
pub struct TopicLogSettings {
    pub max_age: Duration,
    pub max_bytes_per_topic: u64,
}

impl Default for TopicLogSettings {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(7 * 24 * 3600), max_bytes_per_topic: 1 << 30 }
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Listeners bound by the caller, so tests can pass port-0 sockets. None serves nothing there.
pub struct Listeners {
    pub http: TcpListener,
    /// The gRPC DeviceManager.
    pub grpc: Option<TcpListener>,
    /// MQTT over TLS.
    pub mqtts: Option<TcpListener>,
    /// Plain MQTT, for networks that terminate TLS elsewhere.
    pub mqtt: Option<TcpListener>,
}

/// Addresses actually bound, reported once the server is up.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    pub mqtt: Option<SocketAddr>,
    /// The `--metrics` listener.
    pub metrics: Option<SocketAddr>,
}

impl std::fmt::Display for Bound {
    /// `http=ADDR grpc=ADDR mqtts=ADDR mqtt=ADDR metrics=ADDR`, leaving out what is not served.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http={}", self.http)?;
        for (name, addr) in [("grpc", self.grpc), ("mqtts", self.mqtts), ("mqtt", self.mqtt), ("metrics", self.metrics)]
        {
            if let Some(a) = addr {
                write!(f, " {name}={a}")?;
            }
        }
        Ok(())
    }
}

/// Runs the server until `shutdown` completes, then drains requests and flushes batched state.
/// `on_ready` is called once every listener accepts connections.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Bound) + Send,
) -> Result<()> {
    let db = crate::datadir::prepare(&config.data_dir)?;
    crate::limits::set_transparent_huge_pages(config.transparent_huge_pages);
    let open_files = crate::limits::raise_open_file_limit();
    warn_if_files_short(open_files, &config);
    let (token, source) = secrets::admin_token(&config.data_dir, config.admin_token.clone())?;
    match source {
        TokenSource::Configured => tracing::info!("admin token taken from the configuration"),
        TokenSource::Existing(p) => tracing::info!(path = %p.display(), "admin token read from the data directory"),
        TokenSource::Generated(p) => {
            tracing::info!(path = %p.display(), "generated an admin token; admin requests need 'Authorization: Bearer <contents of this file>'")
        }
    }

    // Everything the server records for `/metrics`; the store is timed at its trait boundary.
    let metrics = Arc::new(ferrocore_metrics::Metrics::new());
    match &config.store {
        StoreLocation::Embedded => {
            let store = SqliteStore::open(&db)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the store at {}: {e}", db.display()))?;
            serve_on(store, metrics, config, listeners, token, shutdown, on_ready).await
        }
        StoreLocation::Postgres(url) => {
            let store = ferrocore_store::postgres::PostgresStore::open(url)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the store at {}: {e}", redact_password(url)))?;
            tracing::info!(store = %redact_password(url), "store: PostgreSQL");
            serve_on(store, metrics, config, listeners, token, shutdown, on_ready).await
        }
    }
}

/// The server over one opened backend.
async fn serve_on<B: ferrocore_store::Backend>(
    backend: B,
    metrics: Arc<ferrocore_metrics::Metrics>,
    config: Config,
    listeners: Listeners,
    token: ferrocore_iam::AdminToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Bound) + Send,
) -> Result<()> {
    let store = Arc::new(ferrocore_store::metered::Metered::new(backend, metrics.clone()));
    // Where telemetry lands and is read back: one shared JetStream log in a cluster, the embedded
    // log in the data directory otherwise. Either is both the core's sink and every reader's source.
    let (topic_log, sink, topics): (
        _,
        Arc<dyn ferrocore_core::sink::Sink>,
        Arc<dyn ferrocore_core::topics::TopicSource>,
    ) = match &config.cluster {
        Some(c) => {
            let log = ferrocore_cluster::log::JetStreamLog::connect(ferrocore_cluster::log::LogSettings {
                url: c.url.clone(),
                prefix: c.prefix.clone(),
                node_id: c.node_id.clone(),
                max_age: config.topic_log.max_age,
                max_bytes_per_topic: config.topic_log.max_bytes_per_topic,
                replicas: c.log_replicas,
            })
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
            tracing::info!(replicas = c.log_replicas, "topic log: NATS JetStream, shared by the cluster");
            let log = Arc::new(log);
            (TopicLogKind::Shared(log.as_ref().clone()), log.clone() as _, log as _)
        }
        None => {
            let mut log_config = ferrocore_topiclog::LogConfig::new(config.data_dir.join("topics"));
            log_config.retention_max_age = config.topic_log.max_age;
            log_config.retention_max_bytes = config.topic_log.max_bytes_per_topic;
            // Pub/Sub lets one message carry 10 MB (its whole request); devices stay under 256 KiB.
            log_config.max_record_bytes = ferrocore_pubsub::MAX_PUBLISH_BYTES + (1 << 20);
            let topic_log = ferrocore_topiclog::TopicLog::open(log_config)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the topic log: {}", e.detail()))?;
            let log_sink = Arc::new(ferrocore_sinks::log::LogSink::new(topic_log.clone()));
            (TopicLogKind::Embedded(topic_log), log_sink.clone() as _, log_sink as _)
        }
    };
    let core = Core::with_metrics(store.clone(), config.clock.0.clone(), sink, config.core.clone(), metrics.clone());
    let activity = core.activity().clone();
    let flusher = activity.spawn_flusher(config.activity_flush_interval);
    let log_flusher = core.spawn_log_flusher(config.device_logs.clone());
    let pubsub = ferrocore_pubsub::PubSub::new(
        store.clone(),
        topics.clone(),
        config.clock.0.clone(),
        ferrocore_pubsub::Settings::default(),
    );
    // Identities and policies: every admin call on every listener is checked through this.
    let iam = ferrocore_iam::Iam::open(
        token,
        store.clone() as Arc<dyn ferrocore_store::IamStore>,
        store.clone() as Arc<dyn ferrocore_store::PubsubStore>,
        config.clock.0.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot load identities and access: {}", e.message))?;
    let access = ferrocore_api::authz::Access::new(iam.clone(), pubsub.clone(), config.pubsub_anonymous);
    // Started before any listener, so that retention holds are in place before new records come.
    let forwarders = match (&config.cluster, &config.store) {
        _ if config.sinks.is_empty() => None,
        // The log is shared: each sink is forwarded by one node at a time, the one holding its
        // lease in PostgreSQL; the others stand by and take over when it goes.
        (Some(c), StoreLocation::Postgres(url)) => {
            let leases = ferrocore_sinks::leader::PgLeases::new(url.clone(), format!("ferrocore-sink/{}", c.prefix));
            let led = ferrocore_sinks::leader::LedSinks::start(
                config.sinks.clone(),
                topics.clone(),
                store.clone(),
                config.clock.0.clone(),
                config.sink_settings.clone(),
                Arc::new(leases),
                SINK_LEASE_CHECK,
            )
            .await;
            Some(Sinks::Led(Arc::new(led)))
        }
        _ => {
            let f = ferrocore_sinks::forward::Forwarders::start(
                config.sinks.clone(),
                topics.clone(),
                store.clone(),
                config.clock.0.clone(),
                config.sink_settings.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the sinks: {e}"))?;
            Some(Sinks::Local(f))
        }
    };

    // One shutdown signal, fanned out to every listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let pubsub = pubsub.clone();
        tokio::spawn(async move {
            shutdown.await;
            // StreamingPull streams end first (UNAVAILABLE, so clients reconnect elsewhere or later);
            // the gRPC server's graceful shutdown would otherwise wait for them forever.
            pubsub.stop_streams();
            let _ = stop_tx.send(true);
        });
    }
    let stopping = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let ready = Arc::new(AtomicBool::new(false));
    let mut bound = Bound {
        http: listeners.http.local_addr()?,
        grpc: listeners.grpc.as_ref().map(TcpListener::local_addr).transpose()?,
        mqtts: listeners.mqtts.as_ref().map(TcpListener::local_addr).transpose()?,
        mqtt: listeners.mqtt.as_ref().map(TcpListener::local_addr).transpose()?,
        metrics: None,
    };
    let metrics_listener = match config.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (--metrics)"))?;
            bound.metrics = Some(l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    let exporter = exporter(metrics.clone(), core.clone(), topic_log.clone(), forwarders.clone());
    let cluster = match &config.cluster {
        Some(c) => {
            let joined = ferrocore_cluster::Cluster::join(
                ferrocore_cluster::ClusterConfig {
                    url: c.url.clone(),
                    node_id: c.node_id.clone(),
                    prefix: c.prefix.clone(),
                    http_address: bound.http.to_string(),
                    mqtt_address: bound.mqtts.or(bound.mqtt).map(|a| a.to_string()).unwrap_or_default(),
                },
                core.clone(),
                iam.clone(),
                pubsub.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot join the cluster: {e}"))?;
            tracing::info!(node = %c.node_id, prefix = %c.prefix, "joined the cluster (NATS connects in the background when it is not up yet)");
            Some(joined)
        }
        None => None,
    };
    if config.pubsub_anonymous {
        let exposed: Vec<SocketAddr> =
            [Some(bound.http), bound.grpc].into_iter().flatten().filter(|a| !a.ip().is_loopback()).collect();
        if !exposed.is_empty() {
            tracing::warn!(
                listeners = ?exposed,
                "--pubsub-anonymous lets anyone who reaches these listeners read and publish Pub/Sub messages without a token"
            );
        }
    }
    let mut mqtt_tasks = Vec::new();
    if let Some(listener) = listeners.mqtts {
        let files = crate::tls::files(&config.data_dir, config.tls.as_ref(), &config.tls_names)?;
        let tls = crate::tls::server_config(&files, &[])?;
        let serve = ferrocore_mqtt::serve(listener, Some(tls), core.clone(), config.mqtt.clone(), stopped());
        mqtt_tasks.push(tokio::spawn(serve));
    }
    if let Some(listener) = listeners.mqtt {
        mqtt_tasks.push(tokio::spawn(ferrocore_mqtt::serve(
            listener,
            None,
            core.clone(),
            config.mqtt.clone(),
            stopped(),
        )));
    }
    let service = ferrocore_api::service::DeviceManager::new(core.clone(), iam.clone());
    let tls = config.tls.as_ref().map(|files| crate::tls::server_config(files, &[b"h2"])).transpose()?;
    let grpc = match listeners.grpc {
        Some(listener) => {
            let routes = ferrocore_api::pubsub::grpc::add_routes(
                ferrocore_api::grpc::routes(service.clone(), access.clone()),
                pubsub.clone(),
                access.clone(),
            );
            let routes = ferrocore_api::metrics::instrument_grpc(routes, metrics.clone());
            Some(tokio::spawn(crate::grpc_listener::serve(listener, tls, routes, config.limits.clone(), stopped())))
        }
        None => None,
    };
    let app = ferrocore_api::rest::router(ferrocore_api::rest::RestParts {
        core: core.clone(),
        topics,
        access,
        pubsub: pubsub.clone(),
        sinks: forwarders.as_ref().map(Sinks::report),
        ready: ready.clone(),
        metrics: Some(exporter.clone()),
        stopping,
        cluster: cluster.clone(),
    })
    .layer(axum::Extension(ferrocore_api::rest::BodyTimeout(config.limits.http_body_timeout)));
    let http = tokio::spawn(crate::http_listener::serve(listeners.http, app, config.limits.clone(), stopped()));
    let metrics_http = metrics_listener
        .map(|l| tokio::spawn(crate::http_listener::serve(l, exporter.router(), config.limits.clone(), stopped())));
    ready.store(true, Ordering::Release);
    tracing::info!(listening = %bound, "ferrocore is serving");
    on_ready(bound);

    http.await.context("the HTTP server task failed")?;
    if let Some(task) = metrics_http {
        task.await.context("the metrics server task failed")?;
    }
    let served_grpc = match grpc {
        Some(task) => task.await.context("the gRPC server task failed")?.map_err(anyhow::Error::from),
        None => Ok(()),
    };

    // Close order: listeners (above), MQTT sessions (each serve task returns once its sessions
    // drained), then batched activity, Pub/Sub cursors, the sinks (their batches in flight and
    // cursors), the topic log and the store, so nothing writes to what is already closed.
    for task in mqtt_tasks {
        let _ = task.await;
    }
    if let Some(c) = &cluster {
        c.leave().await;
    }
    flusher.stop().await;
    activity.flush().await;
    // Stopping flushes what the sessions logged last.
    log_flusher.stop().await;
    pubsub.close().await;
    if let Some(f) = &forwarders {
        f.close().await;
    }
    match &topic_log {
        TopicLogKind::Embedded(log) => log.close().await,
        TopicLogKind::Shared(log) => log.close().await,
    }
    ferrocore_store::Backend::close(&*store).await;
    tracing::info!("ferrocore stopped");
    served_grpc.context("the gRPC listener failed")
}

/// Which topic log this server runs over.
#[derive(Clone)]
enum TopicLogKind {
    Embedded(ferrocore_topiclog::TopicLog),
    Shared(ferrocore_cluster::log::JetStreamLog),
}

/// `GET /metrics`: what the server recorded, and what its parts report at scrape time.
fn exporter(
    metrics: Arc<ferrocore_metrics::Metrics>,
    core: Core,
    topic_log: TopicLogKind,
    sinks: Option<Sinks>,
) -> ferrocore_api::metrics::Exporter {
    ferrocore_api::metrics::Exporter::new(move || {
        let (metrics, core, topic_log, sinks) = (metrics.clone(), core.clone(), topic_log.clone(), sinks.clone());
        async move {
            let dropped = core.device_log().dropped();
            let sinks = match &sinks {
                Some(f) => f.report().statuses().await,
                None => Vec::new(),
            };
            // /proc reads are small but blocking (one directory entry per open file).
            let process = tokio::task::spawn_blocking(ferrocore_metrics::process::read).await.ok().flatten();
            let scraped = ferrocore_metrics::Scraped {
                devices_connected: core.presence().len() as u64,
                device_log_dropped: [dropped.debug, dropped.info, dropped.error],
                topic_log: match &topic_log {
                    TopicLogKind::Embedded(log) => Some(log.stats()),
                    // JetStream reports on its streams itself (its own monitoring endpoint).
                    TopicLogKind::Shared(_) => None,
                },
                sinks: sinks
                    .into_iter()
                    .map(|s| ferrocore_metrics::SinkValues {
                        up: s.state != ferrocore_core::sink::SinkState::Retrying,
                        lag_messages: s.lag_messages,
                        lag_seconds: s.lag_seconds,
                        forwarded_messages: s.forwarded_messages,
                        lost_messages: s.lost_messages,
                        rejected_messages: s.rejected_messages,
                        name: s.name,
                    })
                    .collect(),
                process,
            };
            metrics.render(&scraped)
        }
    })
}

/// Warns when the listeners' connection caps add up to more than the process may open: beyond
/// the limit, accepting fails on every listener at once instead of on the one that is full.
fn warn_if_files_short(open_files: Option<u64>, config: &Config) {
    let Some(limit) = open_files else { return };
    // Database, topic log segments, listeners, and room to spare.
    const RESERVED: u64 = 256;
    let caps = [config.mqtt.max_connections, config.limits.http_max_connections, config.limits.grpc_max_connections];
    let needed = caps.iter().map(|&c| c as u64).sum::<u64>() + RESERVED;
    if needed > limit {
        tracing::warn!(
            open_file_limit = limit,
            needed,
            "the connection caps (--mqtt-max-connections, --http-max-connections, --grpc-max-connections) exceed the open-file limit; lower them or raise the limit"
        );
    } else {
        tracing::debug!(open_file_limit = limit, "open-file limit");
    }
}
