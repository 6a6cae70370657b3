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
    pub tls: Option<TlsFiles>,
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

/// Listeners bound by the caller, so tests can pass port-0 sockets.
pub struct Listeners {
    pub http: TcpListener,
    /// The gRPC DeviceManager; None serves no gRPC.
    pub grpc: Option<TcpListener>,
}

/// Addresses actually bound, reported once the server is up.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
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
    // Telemetry has no destination until the device bridges are served.
    let sink = Arc::new(ferrocore_core::sink::MemorySink::default());
    let core = Core::new(store.clone(), Arc::new(SystemClock), sink);
    let activity = core.activity().clone();
    let flusher = activity.spawn_flusher(config.activity_flush_interval);

    // One shutdown signal, fanned out to every listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
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
    };
    let service = ferrocore_api::service::DeviceManager::new(core.clone());
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    let grpc = match listeners.grpc {
        Some(listener) => {
            let routes = ferrocore_api::grpc::routes(service.clone(), token.clone());
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
    let app = ferrocore_api::rest::router(service, token, ready.clone());
    let http = tokio::spawn(axum::serve(listeners.http, app).with_graceful_shutdown(stopped()).into_future());
    ready.store(true, Ordering::Release);
    tracing::info!(http = %bound.http, grpc = ?bound.grpc, "ferrocore is serving");
    on_ready(bound);

    let served_http = http.await.context("the HTTP server task failed")?;
    let served_grpc = match grpc {
        Some(task) => task.await.context("the gRPC server task failed")?.map_err(anyhow::Error::from),
        None => Ok(()),
    };

    flusher.abort();
    activity.flush().await;
    store.close().await;
    tracing::info!("ferrocore stopped");
    served_http.context("the HTTP listener failed")?;
    served_grpc.context("the gRPC listener failed")
}
