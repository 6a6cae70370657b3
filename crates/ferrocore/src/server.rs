//! Wires the store, the core and the listeners, and runs until shutdown.

use crate::secrets::{self, TokenSource};
use anyhow::{Context, Result};
use ferrocore_core::Core;
use ferrocore_core::clock::SystemClock;
use ferrocore_store::sqlite::SqliteStore;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Everything `ferrocore serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The admin token; when None, the one in the data dir (created on first start).
    pub admin_token: Option<String>,
    /// How often batched device activity reaches the store.
    pub activity_flush_interval: Duration,
    /// Certificate chain and private key (PEM) for TLS; gRPC uses TLS with ALPN h2 when set.
    /// MQTT over TLS uses them, or a certificate generated in the data directory.
    pub tls: Option<TlsFiles>,
    /// Where telemetry topics are kept, and for how long.
    pub topic_log: TopicLogSettings,
    pub mqtt: ferrocore_mqtt::MqttConfig,
    pub core: ferrocore_core::Settings,
    /// Lets Pub/Sub calls without credentials in (clients set up with `PUBSUB_EMULATOR_HOST`
    /// send none); never DeviceManager or the rest of the admin API.
    pub pubsub_anonymous: bool,
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

/// Reads the certificate and key; the key must not be readable by other users.
fn load_tls(files: &TlsFiles) -> Result<tonic::transport::Identity> {
    let cert = std::fs::read(&files.cert)
        .with_context(|| format!("cannot read the TLS certificate {}", files.cert.display()))?;
    let key = secrets::read_secret_file(&files.key).context("cannot use the TLS key")?;
    Ok(tonic::transport::Identity::from_pem(cert, key))
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
}

impl std::fmt::Display for Bound {
    /// `http=ADDR grpc=ADDR mqtts=ADDR mqtt=ADDR`, leaving out what is not served.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http={}", self.http)?;
        for (name, addr) in [("grpc", self.grpc), ("mqtts", self.mqtts), ("mqtt", self.mqtt)] {
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
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let (token, source) = secrets::admin_token(&config.data_dir, config.admin_token.clone())?;
    match source {
        TokenSource::Configured => tracing::info!("admin token taken from the configuration"),
        TokenSource::Existing(p) => tracing::info!(path = %p.display(), "admin token read from the data directory"),
        TokenSource::Generated(p) => {
            tracing::info!(path = %p.display(), "generated an admin token; admin requests need 'Authorization: Bearer <contents of this file>'")
        }
    }

    let db = config.data_dir.join("ferrocore.db");
    let store = Arc::new(
        SqliteStore::open(&db).await.map_err(|e| anyhow::anyhow!("cannot open the store at {}: {e}", db.display()))?,
    );
    let mut log_config = ferrocore_topiclog::LogConfig::new(config.data_dir.join("topics"));
    log_config.retention_max_age = config.topic_log.max_age;
    log_config.retention_max_bytes = config.topic_log.max_bytes_per_topic;
    // Pub/Sub lets one message carry 10 MB (its whole request); devices stay under 256 KiB.
    log_config.max_record_bytes = ferrocore_pubsub::MAX_PUBLISH_BYTES + (1 << 20);
    let topic_log = ferrocore_topiclog::TopicLog::open(log_config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the topic log: {}", e.detail()))?;
    // One LogSink is both where telemetry goes and where topic readers read it back.
    let log_sink = Arc::new(ferrocore_sinks::log::LogSink::new(topic_log.clone()));
    let core = Core::with_settings(store.clone(), Arc::new(SystemClock), log_sink.clone(), config.core.clone());
    let activity = core.activity().clone();
    let flusher = activity.spawn_flusher(config.activity_flush_interval);
    let pubsub = ferrocore_pubsub::PubSub::new(
        store.clone(),
        log_sink.clone(),
        Arc::new(SystemClock),
        ferrocore_pubsub::Settings::default(),
    );
    let pubsub_access = ferrocore_api::pubsub::PubsubAccess::new(token.clone(), config.pubsub_anonymous);

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
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let ready = Arc::new(AtomicBool::new(false));
    let bound = Bound {
        http: listeners.http.local_addr()?,
        grpc: listeners.grpc.as_ref().map(TcpListener::local_addr).transpose()?,
        mqtts: listeners.mqtts.as_ref().map(TcpListener::local_addr).transpose()?,
        mqtt: listeners.mqtt.as_ref().map(TcpListener::local_addr).transpose()?,
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
        let files = crate::tls::files(&config.data_dir, config.tls.as_ref())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(&files, &[])?);
        let serve = ferrocore_mqtt::serve(listener, Some(acceptor), core.clone(), config.mqtt.clone(), stopped());
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
    let service = ferrocore_api::service::DeviceManager::new(core.clone());
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    let grpc = match listeners.grpc {
        Some(listener) => {
            let routes = ferrocore_api::pubsub::grpc::add_routes(
                ferrocore_api::grpc::routes(service.clone(), token.clone()),
                pubsub.clone(),
                pubsub_access.clone(),
            );
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let mut builder = tonic::transport::Server::builder();
            if let Some(identity) = tls {
                builder = builder
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                    .context("the TLS certificate or key is not usable")?;
            }
            Some(tokio::spawn(builder.add_routes(routes).serve_with_incoming_shutdown(incoming, stopped())))
        }
        None => None,
    };
    let app = ferrocore_api::rest::router(core.clone(), log_sink, token, pubsub.clone(), pubsub_access, ready.clone());
    let http = tokio::spawn(axum::serve(listeners.http, app).with_graceful_shutdown(stopped()).into_future());
    ready.store(true, Ordering::Release);
    tracing::info!(listening = %bound, "ferrocore is serving");
    on_ready(bound);

    let served_http = http.await.context("the HTTP server task failed")?;
    let served_grpc = match grpc {
        Some(task) => task.await.context("the gRPC server task failed")?.map_err(anyhow::Error::from),
        None => Ok(()),
    };

    for task in mqtt_tasks {
        let _ = task.await;
    }
    pubsub.close().await;
    flusher.abort();
    activity.flush().await;
    topic_log.close().await;
    store.close().await;
    tracing::info!("ferrocore stopped");
    served_http.context("the HTTP listener failed")?;
    served_grpc.context("the gRPC listener failed")
}
