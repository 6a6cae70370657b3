//! Accepts MQTT connections (plain or TLS) and runs a session for each, within limits.

use crate::session;
use ferrocore_core::Core;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Limits of the MQTT bridge.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Time from TCP accept to a complete CONNECT (TLS handshake included).
    pub connect_timeout: Duration,
    /// Largest packet accepted: the 256 KiB telemetry limit plus room for the topic and headers.
    pub max_packet_size: usize,
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Messages a connection may send per second (IoT Core: 100).
    pub max_messages_per_second: u32,
    /// Longest silence allowed whatever the keep-alive (IoT Core: 20 minutes).
    pub max_idle: Duration,
    /// Commands and configs awaiting a device PUBACK per connection.
    pub max_inflight: usize,
    /// Device messages a connection may have in flight (received, not yet durable); beyond this
    /// the connection stops reading, which pushes back on the device.
    pub max_pipeline: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 256 * 1024 + 4 * 1024,
            max_connections: 18_000,
            max_messages_per_second: 100,
            max_idle: Duration::from_secs(20 * 60),
            max_inflight: 64,
            max_pipeline: 1024,
        }
    }
}

/// Serves `listener` until `shutdown` completes; open sessions are closed then.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    core: Core,
    config: MqttConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing the new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (core, config, tls, mut stop) = (core.clone(), config.clone(), tls.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let run = serve_connection(tcp, peer, tls, core, config);
            tokio::select! {
                _ = run => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
    let _ = stop_tx.send(true);
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    core: Core,
    config: Arc<MqttConfig>,
) {
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    match tls {
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => session::run(stream, peer, core, config, deadline).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
        None => session::run(tcp, peer, core, config, deadline).await,
    }
}
