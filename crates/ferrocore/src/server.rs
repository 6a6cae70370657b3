//! Wires the store, the core and the listeners, and runs until shutdown.

use crate::secrets::{self, TokenSource};
use anyhow::{Context, Result};
use ferrocore_core::Core;
use ferrocore_core::clock::SystemClock;
use ferrocore_store::sqlite::SqliteStore;
use std::future::Future;
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
}

/// Listeners bound by the caller, so tests can pass port-0 sockets.
pub struct Listeners {
    pub http: TcpListener,
}

/// Addresses actually bound, reported once the server is up.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub http: SocketAddr,
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
    let core = Core::new(store.clone(), Arc::new(SystemClock));
    let activity = core.activity().clone();
    let flusher = activity.spawn_flusher(config.activity_flush_interval);

    let ready = Arc::new(AtomicBool::new(false));
    let app = ferrocore_api::rest::router(core.clone(), token, ready.clone());
    let bound = Bound { http: listeners.http.local_addr()? };
    let http = axum::serve(listeners.http, app).with_graceful_shutdown(shutdown);
    ready.store(true, Ordering::Release);
    tracing::info!(http = %bound.http, "ferrocore is serving");
    on_ready(bound);
    let served = http.await;

    flusher.abort();
    activity.flush().await;
    store.close().await;
    tracing::info!("ferrocore stopped");
    served.context("the HTTP listener failed")
}
