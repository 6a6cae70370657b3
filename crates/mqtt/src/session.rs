//! One device connection, from CONNECT to close.
//!
//! The loop reads packets, acts on them through the core, and answers; it also serves the
//! control messages the core sends (commands, config pushes), obeys disconnect orders, and
//! enforces the keep-alive, the token's expiry and the packet rate. Replies produced while
//! handling a burst of packets are written together, so a busy connection costs one write per
//! burst.
//!
//! Writing is one of the things the loop waits on, never something it waits for: a device that
//! stops reading cannot stop the session from seeing a deadline or a disconnect order. Output
//! that waits longer than `write_timeout`, or grows past `max_write_buffer`, closes the
//! connection. On server shutdown the session stops reading, lets the messages it already took
//! become durable, writes their PUBACKs and closes.
//!
//! A gateway's session also serves the devices it attaches (`/devices/{d}/attach`): it publishes
//! their telemetry and state through the core under their own identity, subscribes their config
//! and commands, and reports what goes wrong for one of them on `/devices/{gateway}/errors`
//! instead of closing (see [`crate::gateway`]). A message that fails for an attached device
//! detaches that device and gets no PUBACK; the gateway's connection stays open.

use crate::activity_log::{self as log, event};
use crate::gateway::{self, Delegate, ErrorType, Gateway, MessageInfo};
use crate::server::MqttConfig;
use crate::topic::{self, PublishTopic, SubscribeTopic};
use bytes::{Buf, Bytes, BytesMut};
use ferrocore_core::bridge::{AuthFailure, AuthenticatedDevice, Delivery, Transport};
use ferrocore_core::device_log::EventType;
use ferrocore_core::gateways::{GatewayRefusal, MAX_ATTACHED_DEVICES};
use ferrocore_core::presence::{CommandsFlag, Disconnect, SessionControl, SessionLink, Signal};
use ferrocore_core::{Code, Core, Error};
use ferrocore_metrics::{Bridge, Inbound, Outbound, Refusal};
use ferrocore_model::{DeviceConfig, DeviceName, NumId, Status};
use ferrocore_mqtt_codec::{
    ConnAck, Connect, ConnectReturnCode, DecodeError, Packet, Publish, QoS, SubAck, SubAckCode, decode, encode,
};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// Bytes read from the socket in one go. They are read into a buffer on the stack and copied
/// into the session's read buffer, which is empty (and holds no memory) between packets: an idle
/// connection keeps no buffer at all.
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// Longest wait for the last bytes when a connection is closed for a reason other than its output.
const CLOSING_WRITE: Duration = Duration::from_secs(1);

/// Why a session ended; errors are recorded on the device as IoT Core did.
enum Close {
    /// The device disconnected, the socket closed, or the server shut down.
    Normal,
    /// The server ends the connection, recording this on the device.
    Error(Error),
    /// Told to go by the core (takeover, blocked, deleted), with an optional status to record.
    Ordered(Option<Status>),
}

/// What woke the session loop.
enum Event {
    Io(Io),
    Delivered(ferrocore_core::Result<()>),
    Control(SessionControl),
    Ended(Disconnect),
    Shutdown,
    /// The timer fired: one of the deadlines may be due.
    Timer,
}

/// What the socket did.
enum Io {
    /// Bytes arrived (true) or the peer closed (false).
    Read(bool),
    /// All output went out.
    Wrote,
    /// The socket failed.
    Failed,
}

/// A message sent to the device that awaits its PUBACK.
enum Outgoing {
    Command(oneshot::Sender<()>),
    /// Config version for a device (the connection's own, or one its gateway attached).
    Config(NumId, i64),
}

/// What a connection subscribed to for one device: its own, or one its gateway attached.
pub struct Subscriptions {
    config_qos: Option<QoS>,
    commands_qos: Option<QoS>,
    /// The newest config version sent; older pushes that arrive late are not sent.
    config_version: i64,
    /// Set while subscribed to commands; presence reads it.
    commands: CommandsFlag,
}

impl Subscriptions {
    pub fn new(commands: CommandsFlag) -> Self {
        Self { config_qos: None, commands_qos: None, config_version: 0, commands }
    }
}

/// Which of a device's subscriptions.
#[derive(Clone, Copy)]
enum Feed {
    Config,
    Commands,
}

/// For a gateway's message for a device it attached: that device, whose failure detaches it
/// instead of closing the connection.
type Relayed = Option<NumId>;

struct Session<S> {
    stream: S,
    core: Core,
    config: Arc<MqttConfig>,
    device: AuthenticatedDevice,
    /// The device's address, for the activity logs.
    peer: SocketAddr,
    /// This connection's presence id.
    session_id: u64,
    /// The device's own subscriptions.
    subs: Subscriptions,
    /// Only for a gateway: the devices it attached.
    gateway: Option<Box<Gateway>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes accepted by the stream but maybe not sent (TLS buffers records until flushed).
    unflushed: bool,
    /// Output waiting since before this instant + `write_timeout` closes the connection.
    write_deadline: Option<Instant>,
    idle_limit: Duration,
    idle_deadline: Instant,
    token_deadline: Instant,
    /// One timer for the three deadlines (idle, token, output), armed at the earliest of them
    /// or earlier: deadlines that move later (every packet moves the idle one) leave it be, and
    /// when it fires early it is armed again. Cheaper than a timer per deadline per wake-up.
    timer: Pin<Box<tokio::time::Sleep>>,
    inflight: HashMap<u16, Outgoing>,
    /// Device messages queued for delivery, in arrival order, with the packet id to acknowledge.
    /// With each, when its PUBLISH was read (for the PUBACK latency metric).
    pending: VecDeque<(Option<u16>, Delivery, Relayed, Instant)>,
    /// When the packet being handled was read.
    packet_at: Instant,
    next_packet_id: u16,
    window_start: Instant,
    window_count: u32,
    /// Shutting down: no more reading, only finishing what was taken.
    draining: bool,
    /// Whether, and how soon, the session leaves its task when quiet (see [`Parked`]).
    parking: Parking,
}

/// When a quiet session parks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parking {
    /// TLS sessions: rustls' state would go with them. (Gateways never park either: their
    /// attached devices are state a parked session does not keep, see `park_at`.)
    Never,
    /// Just connected: after [`FIRST_PARK`] at most. After a restart a whole fleet connects at
    /// once, and running sessions held for `park_after` would be a peak of memory the allocator
    /// keeps (measured: 19,000 plain connections cost 2.44 KB each with 0.5 s here, 1.49 KB with
    /// 0.1 s). A device that subscribes a round trip later is woken once for it, a small cost next
    /// to its connect.
    First,
    /// Ran again after parking: after `park_after`.
    Again,
}

/// Longest quiet before a just-connected session parks.
const FIRST_PARK: Duration = Duration::from_millis(100);

/// What a session ended its run with.
enum Served {
    Closed(Close),
    /// Quiet for `park_after`: the session leaves its task (see [`Parked`]).
    Park,
}

/// A quiet session out of its task: what it must remember until its socket, its mailbox or a
/// deadline calls it back (see `crate::park`), a few hundred bytes where a running session costs
/// kilobytes. Nothing of it is lost if it is dropped instead: it still detaches from presence and
/// releases what `on_connected` returned, and the socket closes.
pub struct Parked<S, G> {
    stream: S,
    guard: G,
    quiet: Quiet,
}

/// What a parked session remembers beside its socket and guard. (Not the peer's address: the
/// socket knows it, and a fleet of parked sessions would keep 32 bytes each for it.)
struct Quiet {
    device: AuthenticatedDevice,
    /// Its presence link, inside the guard that detaches it.
    attached: Attached,
    subs: Subscriptions,
    times: QuietTimes,
}

/// A parked session's keep-alive and deadlines in 20 bytes instead of 48 (a `Duration` and two
/// `Instant`s): milliseconds, the deadlines counted from an origin fixed once per process and
/// rounded up (a session runs at most a millisecond late). The next packet id rides in what
/// would be padding.
#[derive(Clone, Copy)]
struct QuietTimes {
    idle_limit_ms: u32,
    next_packet_id: u16,
    idle_deadline: u64,
    token_deadline: u64,
}

impl QuietTimes {
    fn origin() -> Instant {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        // A day back, so that a clock that lags (a test runtime's paused one) still counts from it.
        *ORIGIN.get_or_init(|| {
            let now = Instant::now();
            now.checked_sub(Duration::from_secs(24 * 3600)).unwrap_or(now)
        })
    }

    fn new(idle_limit: Duration, idle_deadline: Instant, token_deadline: Instant, next_packet_id: u16) -> Self {
        let origin = Self::origin();
        let ms = |at: Instant| {
            let ns = at.saturating_duration_since(origin).as_nanos().div_ceil(1_000_000);
            u64::try_from(ns).unwrap_or(u64::MAX)
        };
        Self {
            idle_limit_ms: u32::try_from(idle_limit.as_millis()).unwrap_or(u32::MAX),
            next_packet_id,
            idle_deadline: ms(idle_deadline),
            token_deadline: ms(token_deadline),
        }
    }

    fn at(ms: u64) -> Instant {
        // Capped far beyond any deadline a session sets, so that the sum cannot overflow.
        Self::origin() + Duration::from_millis(ms).min(FAR_FUTURE)
    }

    /// The earlier of the two deadlines: when a parked session must run again.
    fn earliest(self) -> Instant {
        Self::at(self.idle_deadline.min(self.token_deadline))
    }

    fn idle_limit(self) -> Duration {
        Duration::from_millis(u64::from(self.idle_limit_ms))
    }

    fn idle_deadline(self) -> Instant {
        Self::at(self.idle_deadline)
    }

    fn token_deadline(self) -> Instant {
        Self::at(self.token_deadline)
    }
}

/// A deadline that never comes in practice (a century).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl<S, G> Parked<S, G> {
    /// The connection's socket.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// When the session must run again even if nothing happens: keep-alive or token expiry.
    pub fn deadline(&self) -> Instant {
        self.quiet.times.earliest()
    }

    /// The session's presence link: its mailbox wakes it (see [`SessionLink::watch`]).
    pub fn link(&self) -> &SessionLink {
        &self.quiet.attached.link
    }

    /// The device connected.
    pub fn device(&self) -> &AuthenticatedDevice {
        &self.quiet.device
    }

    /// The same session over `f(stream)`: the socket leaves the runtime while parked and comes
    /// back to it to run.
    pub fn map_stream<T>(self, f: impl FnOnce(S) -> std::io::Result<T>) -> std::io::Result<Parked<T, G>> {
        Ok(Parked { stream: f(self.stream)?, guard: self.guard, quiet: self.quiet })
    }
}

/// Removes the session from presence when it ends, however it ends (aborted tasks included).
struct Attached {
    core: Core,
    device: NumId,
    link: SessionLink,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.core.presence().detach(self.device, self.link.id());
    }
}

/// Resolves once `shutdown` turns true; never if its sender is gone without doing so.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs a connection: waits for CONNECT until `connect_deadline`, authenticates, then serves
/// until the device leaves, the core ends the session, or `shutdown` turns true (then it
/// drains). `on_connected` runs once the device is authenticated; what it returns is kept until
/// the session ends. With `may_park`, a quiet session ends its run early and
/// comes out [`Parked`], to be run again by [`resume`].
///
/// The task of a connection is as large as the largest state of this future, and a connection
/// spends nearly all its life waiting in [`Session::serve`]; so opening (CONNECT, authentication)
/// and closing (the activity log) run in boxed futures of their own that exist only while they
/// run.
/// (Not an `async fn`: its arguments would stay in the future for its whole life.)
#[allow(clippy::too_many_arguments)]
pub fn run<S: AsyncRead + AsyncWrite + Unpin, G>(
    stream: S,
    peer: SocketAddr,
    core: Core,
    config: Arc<MqttConfig>,
    connect_deadline: Instant,
    shutdown: watch::Receiver<bool>,
    may_park: bool,
    on_connected: impl FnOnce() -> G,
) -> impl Future<Output = Option<Parked<S, G>>> {
    let opening = Box::pin(open(stream, peer, core, config, connect_deadline, shutdown, may_park, on_connected));
    async move {
        let opened = opening.await?;
        serve_opened(opened).await
    }
}

/// Runs a parked session again, from where it stopped: its socket, its mailbox or a deadline
/// has something for it. `input` is what the caller already read from the socket (served first,
/// without waiting for the runtime to report the socket readable).
pub fn resume<S: AsyncRead + AsyncWrite + Unpin, G>(
    parked: Parked<S, G>,
    peer: SocketAddr,
    core: Core,
    config: Arc<MqttConfig>,
    shutdown: watch::Receiver<bool>,
    input: BytesMut,
) -> impl Future<Output = Option<Parked<S, G>>> {
    let Parked { stream, guard, quiet } = parked;
    quiet.attached.link.unwatch();
    serve_opened(Session::running(stream, peer, core, config, quiet, input, None, Parking::Again, shutdown, guard))
}

/// Serves an open session until it closes (then records how) or parks. (Not an `async fn`: its
/// argument would be kept beside the parts taken out of it.)
fn serve_opened<S: AsyncRead + AsyncWrite + Unpin, G>(
    opened: Opened<S, G>,
) -> impl Future<Output = Option<Parked<S, G>>> {
    let Opened { mut session, mut attached, mut shutdown, guard } = opened;
    async move {
        match session.serve(&mut attached.link, &mut shutdown).await {
            Served::Park => Some(session.park(attached, guard)),
            Served::Closed(close) => {
                Box::pin(finish(session, close)).await;
                drop(attached);
                drop(guard);
                None
            }
        }
    }
}

/// A connection past CONNACK.
struct Opened<S, G> {
    session: Session<S>,
    /// The presence link, kept in presence until dropped.
    attached: Attached,
    shutdown: watch::Receiver<bool>,
    /// What `on_connected` returned.
    guard: G,
}

impl<S> Session<S> {
    /// A session ready to serve: just opened (with `rbuf` what came after CONNECT), or parked
    /// and run again (with `rbuf` what the socket held). Quiet counts from now.
    #[allow(clippy::too_many_arguments)]
    fn running<G>(
        stream: S,
        peer: SocketAddr,
        core: Core,
        config: Arc<MqttConfig>,
        quiet: Quiet,
        rbuf: BytesMut,
        gateway: Option<Box<Gateway>>,
        parking: Parking,
        shutdown: watch::Receiver<bool>,
        guard: G,
    ) -> Opened<S, G> {
        let Quiet { device, attached, subs, times } = quiet;
        let (idle_limit, idle_deadline, token_deadline) =
            (times.idle_limit(), times.idle_deadline(), times.token_deadline());
        let now = Instant::now();
        let session = Session {
            stream,
            core,
            config,
            device,
            peer,
            session_id: attached.link.id(),
            subs,
            gateway,
            rbuf,
            wbuf: BytesMut::new(),
            unflushed: false,
            write_deadline: None,
            idle_limit,
            idle_deadline,
            token_deadline,
            timer: Box::pin(tokio::time::sleep_until(idle_deadline.min(token_deadline))),
            inflight: HashMap::new(),
            pending: VecDeque::new(),
            packet_at: now,
            next_packet_id: times.next_packet_id,
            window_start: now,
            window_count: 0,
            draining: false,
            parking,
        };
        Opened { session, attached, shutdown, guard }
    }
}

/// Waits for CONNECT until `connect_deadline`, authenticates, registers the session in presence
/// and answers CONNACK: the session ready to serve, or None when the connection ends here.
#[allow(clippy::too_many_arguments)]
async fn open<S: AsyncRead + AsyncWrite + Unpin, G>(
    mut stream: S,
    peer: SocketAddr,
    core: Core,
    config: Arc<MqttConfig>,
    connect_deadline: Instant,
    mut shutdown: watch::Receiver<bool>,
    may_park: bool,
    on_connected: impl FnOnce() -> G,
) -> Option<Opened<S, G>> {
    let mut rbuf = BytesMut::new();
    // Before authentication only a small first packet is buffered: a CONNECT with a JWT fits.
    let first = tokio::time::timeout_at(connect_deadline, read_packet(&mut stream, &mut rbuf, config.max_connect_size));
    let connect = tokio::select! {
        read = first => match read {
            Ok(Ok(Some(Packet::Connect(c)))) => c,
            Ok(Err(DecodeError::UnsupportedProtocol { name, level })) => {
                core.metrics().mqtt.refused(Refusal::UnsupportedProtocol);
                tracing::debug!(%peer, %name, level, "refused CONNECT for an unsupported protocol");
                let _ = send_connack(&mut stream, ConnectReturnCode::UnacceptableProtocolVersion, &config).await;
                return None;
            }
            Ok(Ok(Some(_))) => {
                core.metrics().mqtt.refused(Refusal::MalformedConnect);
                tracing::debug!(%peer, "first packet was not CONNECT");
                return None;
            }
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                core.metrics().mqtt.refused(Refusal::MalformedConnect);
                tracing::debug!(%peer, error = %e, "bad CONNECT");
                return None;
            }
            Err(_) => {
                core.metrics().mqtt.refused(Refusal::Timeout);
                tracing::debug!(%peer, "no CONNECT before the deadline");
                return None;
            }
        },
        _ = stopped(&mut shutdown) => return None,
    };
    // Boxed, as the other rare large awaits below: a future is as large as its largest state,
    // and a connection spends its life in the small one (see the session tests).
    let device = match Box::pin(authenticate(&core, &connect)).await {
        Ok(d) => {
            // The connection's span (see server.rs) names the device from here on.
            let span = tracing::Span::current();
            span.record("device", d.id.as_str());
            span.record("registry", tracing::field::display(&d.registry));
            d
        }
        Err(code) => {
            core.metrics().mqtt.refused(match code {
                ConnectReturnCode::IdentifierRejected => Refusal::IdentifierRejected,
                ConnectReturnCode::BadUsernameOrPassword => Refusal::BadCredentials,
                ConnectReturnCode::ServerUnavailable => Refusal::ServerUnavailable,
                ConnectReturnCode::UnacceptableProtocolVersion => Refusal::UnsupportedProtocol,
                _ => Refusal::NotAuthorized,
            });
            let _ = send_connack(&mut stream, code, &config).await;
            return None;
        }
    };
    let link = if device.is_gateway {
        core.presence().attach_gateway(device.num_id)
    } else {
        core.presence().attach(device.num_id)
    };
    let commands = link.commands();
    let attached = Attached { core: core.clone(), device: device.num_id, link };
    // One connection per device across a cluster too: other nodes end theirs.
    core.connected_here(device.num_id);
    if send_connack(&mut stream, ConnectReturnCode::Accepted, &config).await.is_err() {
        return None;
    }
    let guard = on_connected();
    tracing::debug!(%peer, device = %device.name(), "device connected");
    core.log_device_event(&device, event(EventType::Connect, peer));
    let idle_limit = match connect.keep_alive {
        0 => config.max_idle,
        ka => Duration::from_millis(u64::from(ka) * 1500).min(config.max_idle),
    };
    let now = Instant::now();
    let token_left = device.token_deadline().saturating_sub(core.clock_now().unix_seconds());
    let gateway = device.is_gateway.then(|| Box::new(Gateway::new(core.clone(), device.id.as_str())));
    let quiet = Quiet {
        subs: Subscriptions::new(commands),
        device,
        attached,
        times: QuietTimes::new(
            idle_limit,
            now + idle_limit,
            now + Duration::from_secs(u64::try_from(token_left).unwrap_or(0)),
            1,
        ),
    };
    let parking = if may_park { Parking::First } else { Parking::Never };
    Some(Session::running(stream, peer, core.clone(), config, quiet, rbuf, gateway, parking, shutdown, guard))
}

/// Records how the session ended: the disconnect (and the detach of a gateway's devices) in the
/// activity log, and an error or status on the device.
async fn finish<S>(session: Session<S>, close: Close) {
    let (core, peer) = (session.core.clone(), session.peer);
    let disconnect = match &close {
        Close::Normal if session.draining => event(EventType::Disconnect, peer)
            .field("disconnectType", "SERVER")
            .field("reason", "The server is shutting down."),
        Close::Normal => event(EventType::Disconnect, peer).field("disconnectType", "CLIENT"),
        Close::Error(e) => event(EventType::Disconnect, peer).field("disconnectType", "SERVER").failed(e),
        Close::Ordered(None) => event(EventType::Disconnect, peer)
            .field("disconnectType", "SERVER")
            .field("reason", "The device connected again, or was deleted."),
        Close::Ordered(Some(status)) => {
            event(EventType::Disconnect, peer).field("disconnectType", "SERVER").failed_status(status)
        }
    };
    // The gateway's devices go with it.
    for d in session.gateway.as_deref().into_iter().flat_map(Gateway::devices) {
        let detached = event(EventType::DetachFromGateway, peer)
            .gateway(Some(session.device.id.as_str()))
            .field("reason", "The gateway disconnected.");
        core.log_device_event(&d.device, detached);
    }
    Box::pin(core.log_device_event_fresh(&session.device, disconnect)).await;
    let device = session.device;
    match close {
        Close::Normal | Close::Ordered(None) => {}
        Close::Error(e) => {
            tracing::debug!(device = %device.name(), error = %e, "closing the connection");
            core.record_device_error(device.num_id, &e);
        }
        Close::Ordered(Some(status)) => core.record_device_status(device.num_id, status),
    }
}

/// Reads until one whole packet is buffered; Ok(None) when the peer closed first.
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    loop {
        if let Some(p) = decode(rbuf, max_size)? {
            return Ok(Some(p));
        }
        if !std::future::poll_fn(|cx| poll_read_into(cx, stream, rbuf)).await {
            return Ok(None);
        }
    }
}

async fn send_connack<S: AsyncWrite + Unpin>(
    stream: &mut S,
    code: ConnectReturnCode,
    config: &MqttConfig,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(4);
    encode(&Packet::ConnAck(ConnAck { session_present: false, code }), &mut buf);
    let write = async {
        stream.write_all(&buf).await?;
        stream.flush().await
    };
    tokio::time::timeout(config.write_timeout, write).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// CONNECT → an authenticated device, or the CONNACK code refusing it.
///
/// Every refused credential gets the same code (5), whatever the reason: a different answer for
/// an unknown device would tell anyone which devices exist. The reason goes to the server log.
async fn authenticate(core: &Core, c: &Connect) -> Result<AuthenticatedDevice, ConnectReturnCode> {
    let Ok(name) = DeviceName::parse_field("client_id", &c.client_id) else {
        return Err(ConnectReturnCode::IdentifierRejected);
    };
    // Some clients send the password only with a user name; IoT Core ignored the user name.
    let Some(token) = c.password.as_ref().and_then(|p| std::str::from_utf8(p).ok()) else {
        return Err(ConnectReturnCode::BadUsernameOrPassword);
    };
    match core.authenticate_device(&name, token, Transport::Mqtt).await {
        Ok(d) => Ok(d),
        Err(AuthFailure::Malformed(why) | AuthFailure::NotAuthorized(why)) => {
            tracing::debug!(device = %name, %why, "refused CONNECT");
            Err(ConnectReturnCode::NotAuthorized)
        }
        Err(AuthFailure::Unavailable) => Err(ConnectReturnCode::ServerUnavailable),
    }
}

fn violation(message: impl Into<String>) -> Close {
    Close::Error(Error::invalid("mqtt", message))
}

/// Polls the socket for both directions: output first (progress there frees memory), then input
/// when `reading`. Output that only partly goes out stays pending without waking the loop; it
/// reports `Wrote` once all of it is out, so the loop can clear the write deadline.
fn poll_io<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    stream: &mut S,
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    unflushed: &mut bool,
    reading: bool,
) -> Poll<Io> {
    while !wbuf.is_empty() {
        match Pin::new(&mut *stream).poll_write(cx, wbuf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Io::Failed),
            Poll::Ready(Ok(n)) => {
                wbuf.advance(n);
                *unflushed = true;
            }
            Poll::Pending => break,
        }
    }
    if wbuf.is_empty() && *unflushed {
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                *unflushed = false;
                return Poll::Ready(Io::Wrote);
            }
            Poll::Ready(Err(_)) => return Poll::Ready(Io::Failed),
            Poll::Pending => {}
        }
    }
    if reading && let Poll::Ready(got) = poll_read_into(cx, stream, rbuf) {
        return Poll::Ready(Io::Read(got));
    }
    Poll::Pending
}

/// Reads what the socket has (up to `READ_CHUNK` bytes) and appends it to `rbuf`: true when bytes
/// came, false when the peer closed or the socket failed. The chunk lives on the stack of this
/// call only, so waiting for input holds no buffer.
fn poll_read_into<S: AsyncRead + Unpin>(cx: &mut Context<'_>, stream: &mut S, rbuf: &mut BytesMut) -> Poll<bool> {
    let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut chunk);
    match Pin::new(stream).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) if !read.filled().is_empty() => {
            rbuf.extend_from_slice(read.filled());
            Poll::Ready(true)
        }
        Poll::Ready(_) => Poll::Ready(false),
        Poll::Pending => Poll::Pending,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn serve(&mut self, link: &mut SessionLink, shutdown: &mut watch::Receiver<bool>) -> Served {
        // Packets that arrived together with CONNECT are already buffered: serve them first.
        if let Err(close) = Box::pin(self.handle_buffered()).await {
            self.write_out().await;
            return Served::Closed(close);
        }
        loop {
            if let Err(close) = self.check_output() {
                return Served::Closed(close);
            }
            if self.draining && self.pending.is_empty() && self.write_deadline.is_none() {
                return Served::Closed(Close::Normal);
            }
            // Re-armed when a deadline moved earlier, or when it fired for one that has moved
            // later since (then nothing was due).
            let due = self.next_deadline();
            if due < self.timer.deadline() || self.timer.is_elapsed() {
                self.timer.as_mut().reset(due);
            }
            let event = {
                let (draining, max_pipeline) = (self.draining, self.config.max_pipeline);
                // Disjoint borrows, so the branches can wait side by side.
                let Self { stream, rbuf, wbuf, unflushed, pending, timer, .. } = self;
                let reading = !draining && pending.len() < max_pipeline;
                let io = std::future::poll_fn(|cx| poll_io(cx, stream, rbuf, wbuf, unflushed, reading));
                let front = async {
                    match pending.front_mut() {
                        Some((_, delivery, _, _)) => delivery.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                // Orders and deadlines first: when they are due, nothing else is served. The
                // mailbox gives a close order before any control message.
                tokio::select! {
                    biased;
                    signal = link.next(!draining) => match signal {
                        Signal::Ended(order) => Event::Ended(order),
                        Signal::Control(ctl) => Event::Control(ctl),
                    },
                    _ = stopped(shutdown), if !draining => Event::Shutdown,
                    _ = timer.as_mut() => Event::Timer,
                    done = front => Event::Delivered(done),
                    io = io => Event::Io(io),
                }
            };
            let close = match event {
                Event::Io(Io::Read(false)) => Some(Close::Normal),
                // Boxed (one allocation per burst of input, not per packet): handling packets
                // is the session's largest state, and an idle connection need not carry it.
                Event::Io(Io::Read(true)) => Box::pin(self.handle_buffered()).await.err(),
                Event::Io(Io::Wrote) => None,
                Event::Io(Io::Failed) => return Served::Closed(Close::Normal),
                Event::Delivered(result) => self.acknowledge(result).await.err(),
                Event::Control(ctl) => self.handle_control(ctl).err(),
                Event::Ended(order) => Some(Close::Ordered(order.status)),
                Event::Shutdown => {
                    self.draining = true;
                    None
                }
                Event::Timer => {
                    let now = Instant::now();
                    if now >= self.token_deadline {
                        Some(Close::Error(Error::new(
                            Code::Unauthenticated,
                            "mqtt: SERVER: The authorization token expired.",
                        )))
                    } else if self.write_deadline.is_some_and(|w| now >= w) {
                        // The device is not reading: there is no point in trying to write more.
                        return Served::Closed(Close::Error(Error::new(
                            Code::DeadlineExceeded,
                            format!(
                                "The device did not read what the server sent within {:?}.",
                                self.config.write_timeout
                            ),
                        )));
                    } else if !self.draining && now >= self.idle_deadline {
                        Some(violation(format!("No packet for {:?}: keep-alive expired.", self.idle_limit)))
                    } else if self.park_at().is_some_and(|at| now >= at) {
                        return Served::Park;
                    } else {
                        // Fired for a deadline that has moved since: re-armed at the loop's top.
                        None
                    }
                }
            };
            if let Some(close) = close {
                // Revoked sessions go at once; others send their last answers, unless output was
                // already stuck before this event.
                if !matches!(close, Close::Ordered(_)) && self.write_deadline.is_none() {
                    self.write_out().await;
                }
                return Served::Closed(close);
            }
        }
    }

    /// When a quiet session leaves its task: `park_after` after its last packet, if it may park
    /// and nothing is in flight, buffered or waiting to be written.
    fn park_at(&self) -> Option<Instant> {
        let busy = self.draining
            || self.gateway.is_some()
            || !self.inflight.is_empty()
            || !self.pending.is_empty()
            || !self.rbuf.is_empty()
            || !self.wbuf.is_empty()
            || self.unflushed
            || self.write_deadline.is_some();
        let after = match self.parking {
            Parking::Never => return None,
            Parking::First => self.config.park_after?.min(FIRST_PARK),
            Parking::Again => self.config.park_after?,
        };
        (!busy).then(|| self.packet_at + after)
    }

    /// The session out of its task, keeping what it must remember.
    fn park<G>(self, attached: Attached, guard: G) -> Parked<S, G> {
        let quiet = Quiet {
            device: self.device,
            attached,
            subs: self.subs,
            times: QuietTimes::new(self.idle_limit, self.idle_deadline, self.token_deadline, self.next_packet_id),
        };
        Parked { stream: self.stream, guard, quiet }
    }

    /// The earliest deadline: the token's, the output's while output waits, the keep-alive's
    /// unless draining, and the time to park when quiet.
    fn next_deadline(&self) -> Instant {
        let mut due = self.token_deadline;
        if let Some(w) = self.write_deadline {
            due = due.min(w);
        }
        if !self.draining {
            due = due.min(self.idle_deadline);
        }
        if let Some(at) = self.park_at() {
            due = due.min(at);
        }
        due
    }

    /// Bounds the output and keeps its deadline: set when output starts waiting, cleared once
    /// it is all out.
    fn check_output(&mut self) -> Result<(), Close> {
        if self.wbuf.len() > self.config.max_write_buffer {
            return Err(Close::Error(Error::new(
                Code::ResourceExhausted,
                format!(
                    "The device is not reading: over {} bytes were waiting to be sent to it.",
                    self.config.max_write_buffer
                ),
            )));
        }
        let waiting = !self.wbuf.is_empty() || self.unflushed;
        match (waiting, self.write_deadline) {
            (true, None) => self.write_deadline = Some(Instant::now() + self.config.write_timeout),
            (false, Some(_)) => {
                self.write_deadline = None;
                // All out: the buffer's memory goes back until the next reply.
                self.wbuf = BytesMut::new();
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes what is buffered before a close, briefly: the session is ending anyway.
    async fn write_out(&mut self) {
        let limit = self.config.write_timeout.min(CLOSING_WRITE);
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        let _ = tokio::time::timeout(limit, write).await;
    }

    /// Handles the delivery at the front of the pipeline, and every one behind it that is already
    /// complete, so a burst of PUBACKs leaves in one write. PUBACKs go out in the order the
    /// PUBLISHes came in.
    async fn acknowledge(&mut self, first: ferrocore_core::Result<()>) -> Result<(), Close> {
        let mut result = first;
        let mut acked_at = None;
        loop {
            let (packet_id, _, relayed, read_at) = self.pending.pop_front().expect("the front delivery completed");
            match (result, relayed) {
                (Ok(()), _) => {
                    if let Some(id) = packet_id {
                        encode(&Packet::PubAck(id), &mut self.wbuf);
                        // One clock read per burst of PUBACKs.
                        let now = *acked_at.get_or_insert_with(Instant::now);
                        self.core
                            .metrics()
                            .mqtt
                            .puback_latency
                            .observe_duration(now.saturating_duration_since(read_at));
                    }
                }
                (Err(e), Some(device)) => self.device_failed(device, &e),
                (Err(e), None) => return Err(Close::Error(e)),
            }
            let pending = &mut self.pending;
            let next = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(match pending.front_mut() {
                    Some((_, d, _, _)) => match d.as_mut().poll(cx) {
                        std::task::Poll::Ready(r) => Some(r),
                        std::task::Poll::Pending => None,
                    },
                    None => None,
                })
            })
            .await;
            match next {
                Some(r) => result = r,
                None => return Ok(()),
            }
        }
    }

    /// Handles every whole packet in the read buffer.
    async fn handle_buffered(&mut self) -> Result<(), Close> {
        loop {
            let packet = match decode(&mut self.rbuf, self.config.max_packet_size) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return Err(violation(format!("Malformed MQTT packet: {e}"))),
            };
            let now = Instant::now();
            self.packet_at = now;
            self.idle_deadline = now + self.idle_limit;
            // Every packet counts against the rate, except PUBACKs answering the server's own
            // messages: those are bounded by what the server sends.
            if !matches!(&packet, Packet::PubAck(id) if self.inflight.contains_key(id)) {
                self.count_packet()?;
            }
            self.handle_packet(packet).await?;
        }
        if self.rbuf.is_empty() {
            // Between packets an idle connection holds no read buffer.
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    fn count_packet(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count += 1;
        if self.window_count > self.config.max_messages_per_second {
            return Err(Close::Error(Error::new(
                Code::ResourceExhausted,
                format!(
                    "The device sent more than {} MQTT packets in one second.",
                    self.config.max_messages_per_second
                ),
            )));
        }
        Ok(())
    }

    async fn handle_packet(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.handle_publish(p).await,
            Packet::PubAck(id) => {
                match self.inflight.remove(&id) {
                    Some(Outgoing::Command(done)) => {
                        let _ = done.send(());
                    }
                    Some(Outgoing::Config(device, version)) => {
                        self.core.config_acked_by(device, version);
                        if let Some(dev) = self.device_by_num(device) {
                            let gw = (device != self.device.num_id).then_some(self.device.id.as_str());
                            let acked = event(EventType::Config, self.peer)
                                .gateway(gw)
                                .field("delivery", "ACKNOWLEDGED")
                                .field("configVersion", version.to_string());
                            self.core.log_device_event(dev, acked);
                        }
                    }
                    None if self.gateway.is_some() => {
                        let info = MessageInfo { message_type: "PUBACK", topic: None, packet_id: Some(id) };
                        let why = "The server is not waiting for an acknowledgement with this packet ID.";
                        self.gateway_error(ErrorType::UnexpectedPacketId, None, why, Some(info));
                    }
                    None => {}
                }
                Ok(())
            }
            Packet::Subscribe(s) => Box::pin(self.handle_subscribe(s.packet_id, s.filters)).await,
            Packet::Unsubscribe(u) => {
                for f in &u.filters {
                    match topic::parse_subscribe(f) {
                        Some(SubscribeTopic::Config { device }) => {
                            if let Some(subs) = self.subs_by_id(device) {
                                subs.config_qos = None;
                            }
                        }
                        Some(SubscribeTopic::Commands { device }) => {
                            if let Some(subs) = self.subs_by_id(device) {
                                subs.commands_qos = None;
                                subs.commands.set(false);
                            }
                        }
                        Some(SubscribeTopic::Errors { device }) if device == self.device.id.as_str() => {
                            if let Some(g) = self.gateway.as_deref_mut() {
                                g.errors = false;
                            }
                        }
                        _ => {}
                    }
                }
                encode(&Packet::UnsubAck(u.packet_id), &mut self.wbuf);
                Ok(())
            }
            Packet::PingReq => {
                self.core.heartbeat(&self.device);
                self.core.log_device_event(&self.device, event(EventType::PingReq, self.peer));
                encode(&Packet::PingResp, &mut self.wbuf);
                Ok(())
            }
            Packet::Disconnect => Err(Close::Normal),
            Packet::Connect(_) => Err(violation("A second CONNECT on the same connection.")),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => Err(violation("QoS 2 is not supported.")),
            other => Err(violation(format!("Unexpected packet from a device: {}", packet_name(&other)))),
        }
    }

    /// The device with this numeric id, if this connection serves it: its own, or one its gateway
    /// attached.
    fn device_by_num(&self, device: NumId) -> Option<&AuthenticatedDevice> {
        if device == self.device.num_id {
            return Some(&self.device);
        }
        self.gateway.as_deref()?.get(device).map(|d| &d.device)
    }

    /// The subscriptions of the device a topic names (by string id).
    fn subs_by_id(&mut self, device: &str) -> Option<&mut Subscriptions> {
        if device == self.device.id.as_str() {
            return Some(&mut self.subs);
        }
        let g = self.gateway.as_deref_mut()?;
        let num = g.num_id(device)?;
        g.get_mut(num).map(|d| &mut d.subs)
    }

    /// The device and its subscriptions, by numeric id.
    fn target(&mut self, device: NumId) -> Option<(&AuthenticatedDevice, &mut Subscriptions)> {
        if device == self.device.num_id {
            return Some((&self.device, &mut self.subs));
        }
        self.gateway.as_deref_mut()?.get_mut(device).map(|d| (&d.device, &mut d.subs))
    }

    async fn handle_publish(&mut self, p: Publish) -> Result<(), Close> {
        if p.qos == QoS::ExactlyOnce {
            return Err(violation("QoS 2 is not supported; publish with QoS 0 or 1."));
        }
        // The PUBACK goes out once the delivery completes: what is acknowledged is never lost.
        let packet_id = p.packet_id.filter(|_| p.qos == QoS::AtLeastOnce);
        let own = self.device.id.as_str();
        let delivery = match topic::parse_publish(&p.topic) {
            Some(PublishTopic::Events { device, subfolder }) if device == own => {
                self.core.metrics().devices.received(Bridge::Mqtt, Inbound::Telemetry, p.payload.len());
                let submitted = self.core.submit_event(&self.device, subfolder, p.payload).await;
                log::publish(&self.core, &self.device, self.peer, &p.topic, "EVENT", None, submitted)
            }
            Some(PublishTopic::State { device }) if device == own => {
                self.core.metrics().devices.received(Bridge::Mqtt, Inbound::State, p.payload.len());
                // Boxed: states are rare (one a second at most) and their future is large.
                let submitted = Box::pin(self.core.submit_state(&self.device, p.payload)).await;
                log::publish(&self.core, &self.device, self.peer, &p.topic, "STATE", None, submitted)
            }
            _ if self.gateway.is_some() => {
                Box::pin(self.gateway_publish(p, packet_id)).await;
                return Ok(());
            }
            Some(PublishTopic::Attach { .. } | PublishTopic::Detach { .. }) => {
                return Err(violation("Only gateways may attach and detach devices."));
            }
            _ => {
                return Err(violation(format!(
                    "Publishing to '{}' is not allowed.",
                    ferrocore_model::ids::printable(&p.topic)
                )));
            }
        };
        self.pending.push_back((packet_id, delivery.map_err(Close::Error)?, None, self.packet_at));
        Ok(())
    }

    /// A gateway's PUBLISH other than its own telemetry and state: an attach, a detach, a message
    /// for an attached device, or a mistake, reported on its errors topic. None of them closes
    /// the connection.
    async fn gateway_publish(&mut self, p: Publish, packet_id: Option<u16>) {
        let info = MessageInfo { message_type: "PUBLISH", topic: Some(&p.topic), packet_id };
        match topic::parse_publish(&p.topic) {
            Some(PublishTopic::Attach { device }) => self.attach(device, &p.payload, info).await,
            Some(PublishTopic::Detach { device }) => {
                let gone = self.gateway.as_deref_mut().and_then(|g| g.num_id(device).and_then(|n| g.remove(n)));
                match gone {
                    Some(gone) => {
                        let detached = event(EventType::DetachFromGateway, self.peer)
                            .topic(&p.topic)
                            .gateway(Some(self.device.id.as_str()));
                        self.core.log_device_event(&gone.device, detached);
                        tracing::debug!(gateway = %self.device.id, device, "device detached");
                        self.acknowledge_now(packet_id)
                    }
                    None => self.not_attached(device, info),
                }
            }
            Some(PublishTopic::Events { device, subfolder }) => {
                let Some(dev) = self.gateway.as_deref().and_then(|g| g.by_id(device)).map(|d| &d.device) else {
                    return self.not_attached(device, info);
                };
                // The HTTP bridge's subFolder rules; a bad one is a bad topic for the gateway,
                // not a device error that would detach the device.
                if let Err(e) = ferrocore_model::limits::check_subfolder("sub_folder", subfolder) {
                    return self.gateway_error(ErrorType::InvalidMqttTopic, Some(device), &e.message, Some(info));
                }
                let num = dev.num_id;
                self.core.metrics().devices.received(Bridge::Mqtt, Inbound::Telemetry, p.payload.len());
                let submitted = self.core.submit_event(dev, subfolder, p.payload).await;
                let gw = Some(self.device.id.as_str());
                let submitted = log::publish(&self.core, dev, self.peer, &p.topic, "EVENT", gw, submitted);
                self.relay(num, packet_id, submitted);
            }
            Some(PublishTopic::State { device }) => {
                let Some(dev) = self.gateway.as_deref().and_then(|g| g.by_id(device)).map(|d| &d.device) else {
                    return self.not_attached(device, info);
                };
                let num = dev.num_id;
                self.core.metrics().devices.received(Bridge::Mqtt, Inbound::State, p.payload.len());
                let submitted = Box::pin(self.core.submit_state(dev, p.payload)).await;
                let gw = Some(self.device.id.as_str());
                let submitted = log::publish(&self.core, dev, self.peer, &p.topic, "STATE", gw, submitted);
                self.relay(num, packet_id, submitted);
            }
            None => {
                let (kind, why) = if topic::is_subscribe_topic(&p.topic) {
                    (ErrorType::WrongMessageType, "Devices subscribe to this topic; it cannot be published to.")
                } else {
                    (ErrorType::InvalidMqttTopic, "The topic is not one of Cloud IoT Core's device topics.")
                };
                self.gateway_error(kind, None, why, Some(info));
            }
        }
    }

    /// Attaches a device to this gateway if its auth method allows; the PUBACK (QoS 1) says it
    /// did. A refusal gets no PUBACK, and an error on the errors topic.
    async fn attach(&mut self, device: &str, payload: &[u8], info: MessageInfo<'_>) {
        let Ok(token) = gateway::attach_token(payload) else {
            let why = r#"The attach payload must be empty, {} or {"authorization": "<device JWT>"}."#;
            return self.gateway_error(ErrorType::AttachmentError, Some(device), why, Some(info));
        };
        let Some(g) = self.gateway.as_deref() else { return };
        if g.num_id(device).is_none() && g.len() >= MAX_ATTACHED_DEVICES {
            let why = format!("The gateway already has {MAX_ATTACHED_DEVICES} devices attached; detach one first.");
            return self.gateway_error(ErrorType::AttachmentError, Some(device), &why, Some(info));
        }
        let dev = match self.core.attach_to_gateway(&self.device, device, token.as_deref()).await {
            Ok(dev) => dev,
            Err(GatewayRefusal::Refused(why)) => {
                return self.gateway_error(ErrorType::AttachmentError, Some(device), &why, Some(info));
            }
            Err(GatewayRefusal::Unavailable) => {
                let why = "The server could not attach the device; retry later.";
                return self.gateway_error(ErrorType::UnknownError, Some(device), why, Some(info));
            }
        };
        let (num, presence) = (dev.num_id, self.core.presence());
        let Some(g) = self.gateway.as_deref_mut() else { return };
        // Attaching an attached device changes nothing, unless presence gave it to another since.
        if !g.get(num).is_some_and(|d| presence.holds(num, d.presence_id)) {
            let Some(a) = presence.attach_through(num, self.device.num_id, self.session_id) else {
                let why = "The gateway's connection is closing.";
                return self.gateway_error(ErrorType::UnknownError, Some(device), why, Some(info));
            };
            self.core.connected_here(num);
            tracing::debug!(gateway = %self.device.id, device = %dev.id, "device attached");
            let attached = event(EventType::AttachToGateway, self.peer)
                .gateway(Some(self.device.id.as_str()))
                .field("mqttTopic", info.topic.unwrap_or_default());
            self.core.log_device_event(&dev, attached);
            g.insert(Delegate { device: dev, presence_id: a.id, subs: Subscriptions::new(a.commands) });
        }
        self.acknowledge_now(info.packet_id);
    }

    /// A PUBACK for a message handled on the spot, in its turn behind the messages still on
    /// their way to durability.
    fn acknowledge_now(&mut self, packet_id: Option<u16>) {
        if packet_id.is_some() {
            self.pending.push_back((packet_id, Box::pin(std::future::ready(Ok(()))), None, self.packet_at));
        }
    }

    fn not_attached(&mut self, device: &str, info: MessageInfo<'_>) {
        let why = format!(
            "The specified device with ID '{}' is not attached to the gateway.",
            ferrocore_model::ids::printable(device)
        );
        self.gateway_error(ErrorType::DeviceNotFound, Some(device), &why, Some(info));
    }

    /// Queues a gateway's message for an attached device, or detaches the device if it failed.
    fn relay(&mut self, device: NumId, packet_id: Option<u16>, submitted: ferrocore_core::Result<Delivery>) {
        match submitted {
            Ok(delivery) => self.pending.push_back((packet_id, delivery, Some(device), self.packet_at)),
            Err(e) => self.device_failed(device, &e),
        }
    }

    /// A gateway's message for an attached device failed: as IoT Core did, the error is recorded
    /// on the device and the device is detached (GATEWAY_DETACHMENT_DEVICE_ERROR); the message
    /// gets no PUBACK and the gateway stays connected.
    fn device_failed(&mut self, device: NumId, e: &Error) {
        self.core.record_device_error(device, e);
        let Some(gone) = self.gateway.as_deref_mut().and_then(|g| g.remove(device)) else { return };
        let detached = event(EventType::DetachFromGateway, self.peer).gateway(Some(self.device.id.as_str())).failed(e);
        self.core.log_device_event(&gone.device, detached);
        let why = format!("Device detached because of a device error: {}", e.message);
        self.gateway_error(ErrorType::DetachmentDeviceError, Some(gone.device.id.as_str()), &why, None);
    }

    /// Reports an error on the gateway's errors topic (QoS 0), if it subscribed to it.
    fn gateway_error(&mut self, kind: ErrorType, device: Option<&str>, why: &str, info: Option<MessageInfo<'_>>) {
        let Some(g) = self.gateway.as_deref() else { return };
        tracing::debug!(gateway = %self.device.id, error_type = kind.as_str(), device, why, "gateway error");
        self.core.log_device_event(&self.device, log::gateway_error(kind, device, why, info, self.peer));
        if !g.errors {
            return;
        }
        let payload = gateway::error_payload(kind, device, why, info);
        let topic = g.errors_topic.clone();
        let publish = Publish { dup: false, qos: QoS::AtMostOnce, retain: false, topic, packet_id: None, payload };
        encode(&Packet::Publish(publish), &mut self.wbuf);
    }

    async fn handle_subscribe(&mut self, packet_id: u16, filters: Vec<(String, QoS)>) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(filters.len());
        let mut send_config = Vec::new();
        let mut refused = Vec::new();
        for (filter, qos) in &filters {
            // QoS 2 is granted as 1.
            let granted = if *qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            let (feed, device) = match topic::parse_subscribe(filter) {
                Some(SubscribeTopic::Config { device }) => (Feed::Config, device),
                Some(SubscribeTopic::Commands { device }) => (Feed::Commands, device),
                Some(SubscribeTopic::Errors { device }) if device == self.device.id.as_str() => {
                    let code = match self.gateway.as_deref_mut() {
                        // Errors go out at QoS 0, whatever was asked.
                        Some(g) => {
                            g.errors = true;
                            SubAckCode::Granted(QoS::AtMostOnce)
                        }
                        None => SubAckCode::Failure,
                    };
                    codes.push(code);
                    continue;
                }
                _ => {
                    let kind = if topic::is_publish_topic(filter) {
                        ErrorType::WrongMessageType
                    } else {
                        ErrorType::InvalidMqttTopic
                    };
                    refused.push((kind, None, filter.as_str()));
                    codes.push(SubAckCode::Failure);
                    continue;
                }
            };
            let Some(subs) = self.subs_by_id(device) else {
                refused.push((ErrorType::DeviceNotFound, Some(device), filter.as_str()));
                codes.push(SubAckCode::Failure);
                continue;
            };
            match feed {
                Feed::Config => subs.config_qos = Some(granted),
                Feed::Commands => {
                    subs.commands_qos = Some(granted);
                    subs.commands.set(true);
                }
            }
            if matches!(feed, Feed::Config) {
                let num = if device == self.device.id.as_str() {
                    Some(self.device.num_id)
                } else {
                    self.gateway.as_deref().and_then(|g| g.num_id(device))
                };
                send_config.extend(num);
            }
            codes.push(SubAckCode::Granted(granted));
            let subscriber = if device == self.device.id.as_str() {
                Some(&self.device)
            } else {
                self.gateway.as_deref().and_then(|g| g.by_id(device)).map(|d| &d.device)
            };
            if let Some(dev) = subscriber {
                let gw = (dev.num_id != self.device.num_id).then_some(self.device.id.as_str());
                let subscribed =
                    event(EventType::Subscribe, self.peer).topic(filter).gateway(gw).field("qos", granted as u8);
                self.core.log_device_event(dev, subscribed);
            }
        }
        encode(&Packet::SubAck(SubAck { packet_id, return_codes: codes }), &mut self.wbuf);
        if self.gateway.is_none() {
            for (_, _, filter) in &refused {
                let failed = event(EventType::Subscribe, self.peer)
                    .topic(filter)
                    .failed_with(Code::InvalidArgument, "The topic filter is not one the device can subscribe to.");
                self.core.log_device_event(&self.device, failed);
            }
        }
        for (kind, device, filter) in refused {
            let info = MessageInfo { message_type: "SUBSCRIBE", topic: Some(filter), packet_id: Some(packet_id) };
            match (kind, device) {
                (ErrorType::DeviceNotFound, Some(device)) => self.not_attached(device, info),
                (kind, _) => {
                    let why = match kind {
                        ErrorType::WrongMessageType => "Devices publish to this topic; it cannot be subscribed to.",
                        _ => "The topic filter is not one a device can subscribe to.",
                    };
                    self.gateway_error(kind, None, why, Some(info));
                }
            }
        }
        for device in send_config {
            // The latest config arrives at once on subscribe, even if the device has seen it.
            let Some(dev) = self.device_by_num(device) else { continue };
            match self.core.device_config(dev).await {
                Ok(config) => self.send_config(device, config, true)?,
                Err(e) if device == self.device.num_id => return Err(Close::Error(e)),
                Err(e) => self.device_failed(device, &e),
            }
        }
        Ok(())
    }

    /// The most messages awaiting a PUBACK: a gateway's are shared by the devices it attached.
    fn max_inflight(&self) -> usize {
        match self.gateway {
            Some(_) => self.config.max_inflight.saturating_mul(16),
            None => self.config.max_inflight,
        }
    }

    fn allocate_packet_id(&mut self) -> Result<u16, Close> {
        if self.inflight.len() >= self.max_inflight() {
            return Err(Close::Error(Error::new(
                Code::ResourceExhausted,
                "The device is not acknowledging messages sent to it.",
            )));
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return Ok(id);
            }
        }
    }

    fn publish(&mut self, topic: String, qos: QoS, payload: Bytes, pending: Outgoing) -> Result<(), Close> {
        let kind = match pending {
            Outgoing::Command(_) => Outbound::Command,
            Outgoing::Config(..) => Outbound::Config,
        };
        self.core.metrics().devices.sent(Bridge::Mqtt, kind, payload.len());
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(self.allocate_packet_id()?),
        };
        encode(&Packet::Publish(Publish { dup: false, qos, retain: false, topic, packet_id, payload }), &mut self.wbuf);
        match (packet_id, pending) {
            (Some(id), pending) => {
                self.inflight.insert(id, pending);
            }
            // QoS 0: delivered once written.
            (None, Outgoing::Command(done)) => {
                let _ = done.send(());
            }
            (None, Outgoing::Config(..)) => {}
        }
        Ok(())
    }

    /// Sends a config version if the device's config topic is subscribed: on subscribe, the
    /// current one even if already sent; as a push, only one newer than any sent (two updates
    /// may push in the opposite order to the one they were written in).
    fn send_config(&mut self, device: NumId, config: DeviceConfig, on_subscribe: bool) -> Result<(), Close> {
        let Some((dev, subs)) = self.target(device) else { return Ok(()) };
        let Some(qos) = subs.config_qos else { return Ok(()) };
        let stale =
            if on_subscribe { config.version < subs.config_version } else { config.version <= subs.config_version };
        if stale {
            return Ok(());
        }
        subs.config_version = config.version;
        let topic = topic::config_topic(dev.id.as_str());
        let sent = event(EventType::Config, self.peer)
            .topic(&topic)
            .field("delivery", "SENT")
            .field("configVersion", config.version.to_string());
        self.publish(topic, qos, Bytes::from(config.binary_data), Outgoing::Config(device, config.version))?;
        self.core.config_sent_to(device);
        if let Some(dev) = self.device_by_num(device) {
            let gw = (device != self.device.num_id).then_some(self.device.id.as_str());
            self.core.log_device_event(dev, sent.gateway(gw));
        }
        Ok(())
    }

    fn handle_control(&mut self, ctl: SessionControl) -> Result<(), Close> {
        match ctl {
            SessionControl::Command { device, subfolder, data, done } => {
                // Not subscribed (any more), or not attached: dropping `done` tells the caller.
                let Some((dev, subs)) = self.target(device) else { return Ok(()) };
                let Some(qos) = subs.commands_qos else { return Ok(()) };
                let topic = topic::command_topic(dev.id.as_str(), &subfolder);
                let sent = event(EventType::Command, self.peer).topic(&topic).field("delivery", "SENT");
                self.publish(topic, qos, Bytes::from(data), Outgoing::Command(done))?;
                if let Some(dev) = self.device_by_num(device) {
                    let gw = (device != self.device.num_id).then_some(self.device.id.as_str());
                    self.core.log_device_event(dev, sent.gateway(gw));
                }
                Ok(())
            }
            SessionControl::Config { device, config } => self.send_config(device, config, false),
            SessionControl::Detach { device, id, reason } => {
                let Some(g) = self.gateway.as_deref_mut() else { return Ok(()) };
                // An order for an older attachment of the device is stale.
                if g.get(device).is_none_or(|d| d.presence_id != id) {
                    return Ok(());
                }
                if let Some(gone) = g.remove(device) {
                    let detached = event(EventType::DetachFromGateway, self.peer)
                        .gateway(Some(self.device.id.as_str()))
                        .field("reason", reason.describe());
                    self.core.log_device_event(&gone.device, detached);
                    let id = gone.device.id.as_str();
                    self.gateway_error(ErrorType::DetachmentDeviceError, Some(id), reason.describe(), None);
                }
                Ok(())
            }
        }
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::ConnAck(_) => "CONNACK",
        Packet::SubAck(_) => "SUBACK",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingResp => "PINGRESP",
        _ => "packet",
    }
}
