//! Accepts MQTT connections (plain or TLS) and runs a session for each, within limits: a cap on
//! connections, per source address caps (all connections, and those not yet authenticated), and
//! a drain on shutdown that waits, up to a deadline, for every session to finish. Quiet plain
//! sessions leave their task and wait in the listener's parking lot (`crate::park`) until
//! something calls them back.

use crate::park::{Parkable, Parking};
use crate::session;
use bytes::BytesMut;
use ferrocore_core::Core;
use ferrocore_metrics::{Listener, Metrics, Refusal};
use futures_util::FutureExt;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::rustls::ServerConfig;

/// Limits of the MQTT bridge.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Time from TCP accept to a complete CONNECT (TLS handshake included).
    pub connect_timeout: Duration,
    /// Largest packet accepted: the 256 KiB telemetry limit plus room for the topic and headers.
    pub max_packet_size: usize,
    /// Largest first packet (CONNECT) accepted before the device is authenticated. A client id,
    /// a user name and a JWT (at most 8 KiB) fit with room to spare.
    pub max_connect_size: usize,
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Connections from one source address (IPv6: one /64) at once; 0 for no limit. Fleets behind
    /// NAT share addresses, so this is off by default.
    pub max_connections_per_ip: usize,
    /// Connections from one source address (IPv6: one /64) not yet authenticated (TLS handshake
    /// or CONNECT under way); 0 for no limit.
    pub max_unauthenticated_per_ip: usize,
    /// Packets a connection may send per second (IoT Core: 100 messages); every packet counts but
    /// the PUBACKs answering the server's own messages.
    pub max_messages_per_second: u32,
    /// Longest silence allowed whatever the keep-alive (IoT Core: 20 minutes).
    pub max_idle: Duration,
    /// Commands and configs awaiting a device PUBACK per connection.
    pub max_inflight: usize,
    /// Device messages a connection may have in flight (received, not yet durable); beyond this
    /// the connection stops reading, which pushes back on the device.
    pub max_pipeline: usize,
    /// Output may wait this long for a device to read it; then the connection is closed.
    pub write_timeout: Duration,
    /// Output waiting for one device beyond this closes its connection. Must hold the largest
    /// command (256 KiB) with its topic.
    pub max_write_buffer: usize,
    /// On shutdown, sessions get this long to finish what they took; then they are aborted.
    pub shutdown_timeout: Duration,
    /// A plain connection quiet this long (no packet, nothing in flight or waiting to be written)
    /// leaves its task and waits, parked, for its socket, its mailbox or a deadline; None: never.
    /// TLS connections and gateways are never parked.
    pub park_after: Option<Duration>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 256 * 1024 + 4 * 1024,
            max_connect_size: 16 * 1024,
            max_connections: 18_000,
            max_connections_per_ip: 0,
            max_unauthenticated_per_ip: 64,
            max_messages_per_second: 100,
            max_idle: Duration::from_secs(20 * 60),
            max_inflight: 64,
            max_pipeline: 1024,
            write_timeout: Duration::from_secs(30),
            max_write_buffer: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            park_after: Some(Duration::from_secs(3)),
        }
    }
}

/// Serves `listener` until `shutdown` completes. Then it stops accepting, tells every session to
/// drain, and returns once they all finished, or `shutdown_timeout` passed and the rest were
/// aborted: nothing of a session outlives this future.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    core: Core,
    config: MqttConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let config = Arc::new(config);
    let listener_kind = if tls.is_some() { Listener::Mqtts } else { Listener::Mqtt };
    let admission = Arc::new(Admission {
        slots: Semaphore::new(config.max_connections),
        metrics: core.metrics().clone(),
        listener: listener_kind,
    });
    let sources = Arc::new(Sources::new(&config));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Only plain sessions park: a TLS session's state is mostly rustls', which would go with it.
    let mut parking = match (&tls, config.park_after) {
        (None, Some(_)) => Parking::new()
            .inspect_err(|e| tracing::warn!(error = %e, "idle MQTT connections cannot be parked here"))
            .ok(),
        _ => None,
    };
    let may_park = parking.is_some();
    let spawner = Spawner { core: core.clone(), config: config.clone(), stop: stop_rx.clone() };
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let step = tokio::select! {
            _ = &mut shutdown => break,
            // Finished sessions are reaped as they go, so the set only holds running ones.
            Some(done) = sessions.join_next(), if !sessions.is_empty() => Step::Ended(done.ok().flatten()),
            woken = async {
                match parking.as_mut() {
                    Some(lot) => lot.next().await,
                    None => std::future::pending().await,
                }
            }, if parking.as_ref().is_some_and(|p| p.len() > 0) => Step::Woken(woken),
            accepted = listener.accept() => Step::Accepted(accepted),
        };
        let (tcp, peer) = match step {
            Step::Ended(None) => continue,
            Step::Ended(Some(parked)) => {
                // A socket the lot cannot watch runs on in a task.
                let refused = match parking.as_mut() {
                    Some(lot) => lot.park(parked).err(),
                    None => Some(parked),
                };
                if let Some(parked) = refused {
                    spawner.resume(&mut sessions, parked);
                }
                core.metrics().set_mqtt_parked(parking.as_ref().map_or(0, Parking::len));
                continue;
            }
            Step::Woken(parked) => {
                core.metrics().set_mqtt_parked(parking.as_ref().map_or(0, Parking::len));
                spawner.resume(&mut sessions, parked);
                continue;
            }
            Step::Accepted(Ok(a)) => a,
            Step::Accepted(Err(e)) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = admission.admit() else {
            core.metrics().mqtt.refused(Refusal::ConnectionLimit);
            tracing::warn!(%peer, "connection limit reached; closing the new connection");
            continue;
        };
        let Some(source) = sources.admit(peer.ip()) else {
            core.metrics().mqtt.refused(Refusal::AddressLimit);
            tracing::debug!(%peer, "per-address connection limit reached; closing the new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (core, config, tls, stop) = (core.clone(), config.clone(), tls.clone(), stop_rx.clone());
        let connection = serve_connection(tcp, peer, tls, core, config, stop, source, slot, may_park);
        sessions.spawn(tracing::Instrument::instrument(connection, connection_span(peer, None)));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Parked sessions run again to drain like the others.
    for parked in parking.as_mut().map(Parking::take_all).unwrap_or_default() {
        spawner.resume(&mut sessions, parked);
    }
    core.metrics().set_mqtt_parked(0);
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while let Some(done) = sessions.join_next().await {
            // One that parked just as the server stopped.
            if let Ok(Some(parked)) = done {
                spawner.resume(&mut sessions, parked);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(sessions = sessions.len(), "MQTT sessions still open at the shutdown deadline; aborting them");
        sessions.shutdown().await;
    }
}

/// What woke the accept loop.
enum Step {
    /// A session task ended: closed, or parked.
    Ended(Outcome),
    /// A parked session has something to do.
    Woken(Box<ParkedConnection>),
    Accepted(std::io::Result<(tokio::net::TcpStream, SocketAddr)>),
}

/// How a connection's task ends: closed (None), or parked.
type Outcome = Option<Box<ParkedConnection>>;

/// A plain connection whose session is parked, with what counts it while it lasts.
struct ParkedConnection {
    session: session::Parked<std::net::TcpStream, SourceSlot>,
    /// Its place under `max_connections`, and in the connections gauge.
    slot: Admitted,
}

impl Parkable for Box<ParkedConnection> {
    fn socket(&self) -> BorrowedFd<'_> {
        self.session.stream().as_fd()
    }

    fn deadline(&self) -> tokio::time::Instant {
        self.session.deadline()
    }

    fn watch(&self, waker: &Waker) -> bool {
        self.session.link().watch(waker)
    }

    fn unwatch(&self) {
        self.session.link().unwatch();
    }
}

/// A session that parked, out of the runtime's reactor: None when its socket cannot leave it
/// (the connection closes).
fn into_parked(session: session::Parked<tokio::net::TcpStream, SourceSlot>, slot: Admitted) -> Outcome {
    let session = session.map_stream(tokio::net::TcpStream::into_std).ok()?;
    Some(Box::new(ParkedConnection { session, slot }))
}

/// One span per connection, entered only when its task is polled: every line the session logs
/// carries the client's address, and its device and registry once authenticated. At debug level:
/// an enabled span keeps its formatted fields for the connection's life, ~1.3 KB per idle
/// connection (measured), more than the rest of an idle session. At the default level the lines
/// a session can log at info or above name their device.
fn connection_span(peer: SocketAddr, device: Option<&ferrocore_core::bridge::AuthenticatedDevice>) -> tracing::Span {
    let span = tracing::debug_span!(
        "mqtt",
        client = %peer,
        device = tracing::field::Empty,
        registry = tracing::field::Empty
    );
    if let Some(d) = device {
        span.record("device", d.id.as_str());
        span.record("registry", tracing::field::display(&d.registry));
    }
    span
}

/// Runs parked sessions again, in tasks of the listener's set.
struct Spawner {
    core: Core,
    config: Arc<MqttConfig>,
    stop: watch::Receiver<bool>,
}

impl Spawner {
    // The lot hands back the box it kept the connection in.
    #[allow(clippy::boxed_local)]
    fn resume(&self, sessions: &mut JoinSet<Outcome>, parked: Box<ParkedConnection>) {
        let ParkedConnection { session, slot } = *parked;
        // What the device sent is read here, so the session serves it at once instead of
        // waiting for the runtime's reactor to report the socket readable a second time.
        let mut input = BytesMut::new();
        let mut chunk = [0u8; session::READ_CHUNK];
        let mut socket = session.stream();
        if let Ok(n) = std::io::Read::read(&mut socket, &mut chunk) {
            input.extend_from_slice(&chunk[..n]);
        }
        // Back in the runtime's reactor; if the socket cannot rejoin it, the connection closes.
        // A socket without a peer address has lost its connection: the session finds it closed.
        let peer = session.stream().peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let Ok(session) = session.map_stream(tokio::net::TcpStream::from_std) else { return };
        let span = connection_span(peer, Some(session.device()));
        let run = session::resume(session, peer, self.core.clone(), self.config.clone(), self.stop.clone(), input);
        // Mapped, not awaited in an async block: a future captured by one is stored twice (once
        // as the block's capture, once as what it awaits), doubling the session's task.
        let run = run.map(move |parked| into_parked(parked?, slot));
        sessions.spawn(tracing::Instrument::instrument(run, span));
    }
}

/// A connection from accept to close (or until its session parks). Not an `async fn`: what its
/// arguments hold would stay in the task for the connection's whole life. Everything up to the
/// session (the TLS handshake) runs in a boxed future that is gone once done, so the task holds
/// little beside the session.
#[allow(clippy::too_many_arguments)]
fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    core: Core,
    config: Arc<MqttConfig>,
    stop: watch::Receiver<bool>,
    mut source: SourceSlot,
    slot: Admitted,
    may_park: bool,
) -> impl Future<Output = Outcome> {
    let listener = slot.0.listener;
    let metrics = core.metrics().clone();
    // The session keeps what this returns until it ends: the slot counts the connection against
    // its source address for as long as it lasts.
    let connected = move || {
        source.authenticated();
        metrics.mqtt.connected(listener);
        source
    };
    let start = Box::pin(start_session(tcp, peer, tls, core, config, stop, may_park, connected));
    async move {
        let session = start.await?;
        let parked = session.await?;
        into_parked(parked, slot)
    }
}

/// The running session of a plain connection; None when it closed, the parked session when it
/// parked.
type SessionRun = Pin<Box<dyn Future<Output = Option<session::Parked<tokio::net::TcpStream, SourceSlot>>> + Send>>;

/// The session future of a connection, after the TLS handshake if there is one.
#[allow(clippy::too_many_arguments)]
async fn start_session(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    core: Core,
    config: Arc<MqttConfig>,
    stop: watch::Receiver<bool>,
    may_park: bool,
    connected: impl FnOnce() -> SourceSlot + Send + 'static,
) -> Option<SessionRun> {
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    Some(match tls {
        Some(tls) => {
            let stream = handshake(tls, tcp, peer, deadline, stop.clone(), &core).await?;
            // TLS sessions never park. Mapped, not awaited in a block (see `Spawner::resume`).
            Box::pin(session::run(stream, peer, core, config, deadline, stop, false, connected).map(|_| None))
        }
        None => Box::pin(session::run(tcp, peer, core, config, deadline, stop, may_park, connected)),
    })
}

/// The TLS handshake, within the connect deadline: the stream, or None (counted and logged).
async fn handshake(
    tls: Arc<ServerConfig>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    mut stop: watch::Receiver<bool>,
    core: &Core,
) -> Option<crate::tls::TlsStream<tokio::net::TcpStream>> {
    let metrics = core.metrics();
    let handshake = tokio::time::timeout_at(deadline, crate::tls::accept(tls, tcp));
    tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                metrics.mqtt.refused(Refusal::TlsHandshake);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                metrics.mqtt.refused(Refusal::Timeout);
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        },
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// A listener's connection cap and gauge.
struct Admission {
    /// One permit per connection `max_connections` allows.
    slots: Semaphore,
    metrics: Arc<Metrics>,
    listener: Listener,
}

impl Admission {
    /// A place for one more connection, counted in the `ferrocore_mqtt_connections` gauge; None
    /// at the cap.
    fn admit(self: &Arc<Self>) -> Option<Admitted> {
        // Given back by `Admitted`'s drop: one pointer per connection instead of a permit (a
        // pointer and a count) and a gauge guard (another pointer), in every parked connection.
        self.slots.try_acquire().ok()?.forget();
        self.metrics.mqtt.connection_opened(self.listener);
        Some(Admitted(self.clone()))
    }
}

/// A connection's place under its listener's cap, and in the gauge, until dropped.
struct Admitted(Arc<Admission>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.slots.add_permits(1);
        self.0.metrics.mqtt.connection_closed(self.0.listener);
    }
}

/// Connection counts per source address.
struct Sources {
    max_total: usize,
    max_unauthenticated: usize,
    counts: Mutex<HashMap<SourceKey, Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    unauthenticated: usize,
}

/// An IPv4 address, or the /64 an IPv6 address is in (one host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4.to_bits()),
            IpAddr::V6(v6) => Self::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

impl Sources {
    fn new(config: &MqttConfig) -> Self {
        Self {
            max_total: config.max_connections_per_ip,
            max_unauthenticated: config.max_unauthenticated_per_ip,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<SourceKey, Counts>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `ip`, or None when that address is at one of its limits.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let key = SourceKey::of(ip);
        let mut counts = self.counts();
        let c = counts.entry(key).or_default();
        let over = |n: usize, max: usize| max != 0 && n >= max;
        if over(c.total, self.max_total) || over(c.unauthenticated, self.max_unauthenticated) {
            if c.total == 0 {
                counts.remove(&key);
            }
            return None;
        }
        c.total += 1;
        c.unauthenticated += 1;
        let (bits, v6) = match key {
            SourceKey::V4(b) => (u64::from(b), false),
            SourceKey::V6(b) => (b, true),
        };
        Some(SourceSlot { sources: self.clone(), bits, v6, authenticated: false })
    }
}

/// One counted connection; uncounted when dropped. Its key is kept in pieces (a `SourceKey` with
/// its own padding would make every parked connection 8 bytes larger).
struct SourceSlot {
    sources: Arc<Sources>,
    bits: u64,
    v6: bool,
    authenticated: bool,
}

impl SourceSlot {
    fn key(&self) -> SourceKey {
        // V4 bits came from a u32.
        if self.v6 { SourceKey::V6(self.bits) } else { SourceKey::V4(self.bits as u32) }
    }

    fn authenticated(&mut self) {
        if !std::mem::replace(&mut self.authenticated, true)
            && let Some(c) = self.sources.counts().get_mut(&self.key())
        {
            c.unauthenticated -= 1;
        }
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let key = self.key();
        let mut counts = self.sources.counts();
        if let Some(c) = counts.get_mut(&key) {
            c.total -= 1;
            if !self.authenticated {
                c.unauthenticated -= 1;
            }
            if c.total == 0 {
                counts.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parked connection is what an idle plain connection costs beside the kernel's socket and
    /// its presence entry: its size multiplies by every quiet device. The allocator's size classes
    /// around it are 160, 192 and 224 bytes: a byte more costs 32.
    #[test]
    fn a_parked_connection_stays_small() {
        let size = std::mem::size_of::<ParkedConnection>();
        println!("parked connection: {size} bytes");
        assert!(size <= 192, "a parked connection takes {size} bytes");
    }

    #[test]
    fn source_limits_count_and_release() {
        let config = MqttConfig { max_connections_per_ip: 3, max_unauthenticated_per_ip: 2, ..Default::default() };
        let sources = Arc::new(Sources::new(&config));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut first = sources.admit(a).unwrap();
        let second = sources.admit(a).unwrap();
        assert!(sources.admit(a).is_none(), "two not yet authenticated");
        assert!(sources.admit("10.0.0.2".parse().unwrap()).is_some(), "another address is not affected");
        first.authenticated();
        first.authenticated();
        let _third = sources.admit(a).unwrap();
        assert!(sources.admit(a).is_none(), "three in all");
        drop(second);
        drop(first);
        assert!(sources.admit(a).is_some());
        // One IPv6 host: the /64 counts as one source; a v4-mapped address as its IPv4.
        let v6 = |s: &str| SourceKey::of(s.parse().unwrap());
        assert_eq!(v6("2001:db8::1"), v6("2001:db8::ffff:1"));
        assert_ne!(v6("2001:db8::1"), v6("2001:db8:0:1::1"));
        assert_eq!(v6("::ffff:10.0.0.1"), SourceKey::of(a));
        drop(_third);
        assert!(sources.counts().len() <= 1, "entries of idle addresses are removed");
    }
}
