//! One device connection, from CONNECT to close.
//!
//! The loop reads packets, acts on them through the core, and answers; it also serves the
//! control messages the core sends (commands, config pushes, disconnects) and enforces the
//! keep-alive, the token's expiry and the message rate. Replies produced while handling a burst
//! of packets are written together, so a busy connection costs one write per burst.

use crate::server::MqttConfig;
use crate::topic::{self, PublishTopic, SubscribeTopic};
use bytes::{Bytes, BytesMut};
use ferrocore_core::bridge::{AuthFailure, AuthenticatedDevice, Delivery, Transport};
use ferrocore_core::presence::{SessionControl, SessionHandle};
use ferrocore_core::{Code, Core, Error};
use ferrocore_model::{DeviceConfig, DeviceName, Status};
use ferrocore_mqtt_codec::{
    ConnAck, Connect, ConnectReturnCode, DecodeError, Packet, Publish, QoS, SubAck, SubAckCode, decode, encode,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Why a session ended; errors are recorded on the device as IoT Core did.
enum Close {
    /// The device disconnected or the socket closed.
    Normal,
    /// The server ends the connection, recording this on the device.
    Error(Error),
    /// Told to go by the core (takeover, blocked, deleted), with an optional status to record.
    Ordered(Option<Status>),
}

/// What woke the session loop.
enum Event {
    /// Bytes arrived (true) or the peer closed (false).
    Read(bool),
    Delivered(ferrocore_core::Result<()>),
    Control(Option<SessionControl>),
    Idle,
    TokenExpired,
}

/// A message sent to the device that awaits its PUBACK.
enum Outgoing {
    Command(oneshot::Sender<()>),
    Config(i64),
}

struct Session<S> {
    stream: S,
    core: Core,
    config: Arc<MqttConfig>,
    device: AuthenticatedDevice,
    handle: SessionHandle,
    rbuf: BytesMut,
    wbuf: BytesMut,
    idle_limit: Duration,
    idle_deadline: Instant,
    token_deadline: Instant,
    config_qos: Option<QoS>,
    commands_qos: Option<QoS>,
    inflight: HashMap<u16, Outgoing>,
    /// Device messages queued for delivery, in arrival order, with the packet id to acknowledge.
    pending: VecDeque<(Option<u16>, Delivery)>,
    next_packet_id: u16,
    window_start: Instant,
    window_count: u32,
}

/// Runs a connection: waits for CONNECT until `connect_deadline`, authenticates, then serves.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    core: Core,
    config: Arc<MqttConfig>,
    connect_deadline: Instant,
) {
    let mut rbuf = BytesMut::with_capacity(1024);
    let connect = match tokio::time::timeout_at(connect_deadline, read_packet(&mut stream, &mut rbuf, &config)).await {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Err(DecodeError::UnsupportedProtocol { name, level })) => {
            tracing::debug!(%peer, %name, level, "refused CONNECT for an unsupported protocol");
            let _ = send_connack(&mut stream, ConnectReturnCode::UnacceptableProtocolVersion).await;
            return;
        }
        Ok(Ok(Some(_))) => return tracing::debug!(%peer, "first packet was not CONNECT"),
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "bad CONNECT"),
        Err(_) => return tracing::debug!(%peer, "no CONNECT before the deadline"),
    };
    let device = match authenticate(&core, &connect).await {
        Ok(d) => d,
        Err(code) => {
            let _ = send_connack(&mut stream, code).await;
            return;
        }
    };
    let (handle, control) = core.presence().attach(device.num_id);
    if send_connack(&mut stream, ConnectReturnCode::Accepted).await.is_err() {
        core.presence().detach(device.num_id, handle.id);
        return;
    }
    tracing::debug!(%peer, device = %device.name(), "device connected");
    let idle_limit = match connect.keep_alive {
        0 => config.max_idle,
        ka => Duration::from_millis(u64::from(ka) * 1500).min(config.max_idle),
    };
    let now = Instant::now();
    let token_left = device.token_deadline - core.clock_now().unix_seconds();
    let mut session = Session {
        stream,
        core: core.clone(),
        config,
        device,
        handle,
        rbuf,
        wbuf: BytesMut::with_capacity(1024),
        idle_limit,
        idle_deadline: now + idle_limit,
        token_deadline: now + Duration::from_secs(u64::try_from(token_left).unwrap_or(0)),
        config_qos: None,
        commands_qos: None,
        inflight: HashMap::new(),
        pending: VecDeque::new(),
        next_packet_id: 1,
        window_start: now,
        window_count: 0,
    };
    let close = session.serve(control).await;
    let (device, handle) = (session.device, session.handle);
    core.presence().detach(device.num_id, handle.id);
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
    config: &MqttConfig,
) -> Result<Option<Packet>, DecodeError> {
    loop {
        if let Some(p) = decode(rbuf, config.max_packet_size)? {
            return Ok(Some(p));
        }
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn send_connack<S: AsyncWrite + Unpin>(stream: &mut S, code: ConnectReturnCode) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(4);
    encode(&Packet::ConnAck(ConnAck { session_present: false, code }), &mut buf);
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// CONNECT → an authenticated device, or the CONNACK code refusing it.
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
        Err(AuthFailure::Malformed(why)) => {
            tracing::debug!(device = %name, %why, "refused: malformed token");
            Err(ConnectReturnCode::BadUsernameOrPassword)
        }
        Err(AuthFailure::NotAuthorized(why)) => {
            tracing::debug!(device = %name, %why, "refused: not authorized");
            Err(ConnectReturnCode::NotAuthorized)
        }
        Err(AuthFailure::Unavailable) => Err(ConnectReturnCode::ServerUnavailable),
    }
}

fn violation(message: impl Into<String>) -> Close {
    Close::Error(Error::invalid("mqtt", message))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn serve(&mut self, mut control: tokio::sync::mpsc::Receiver<SessionControl>) -> Close {
        // Packets that arrived together with CONNECT are already buffered: serve them first.
        if let Err(close) = self.handle_buffered().await {
            let _ = self.flush().await;
            return close;
        }
        if self.flush().await.is_err() {
            return Close::Normal;
        }
        loop {
            let event = {
                // Disjoint borrows, so the branches can wait side by side.
                let (stream, rbuf, pending) = (&mut self.stream, &mut self.rbuf, &mut self.pending);
                let reading = pending.len() < self.config.max_pipeline;
                let front = async {
                    match pending.front_mut() {
                        Some((_, delivery)) => delivery.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    read = stream.read_buf(rbuf), if reading => Event::Read(read.map(|n| n > 0).unwrap_or(false)),
                    done = front => Event::Delivered(done),
                    ctl = control.recv() => Event::Control(ctl),
                    _ = tokio::time::sleep_until(self.idle_deadline) => Event::Idle,
                    _ = tokio::time::sleep_until(self.token_deadline) => Event::TokenExpired,
                }
            };
            let close = match event {
                Event::Read(false) => Some(Close::Normal),
                Event::Read(true) => self.handle_buffered().await.err(),
                Event::Delivered(result) => self.acknowledge(result).await.err(),
                Event::Control(Some(ctl)) => self.handle_control(ctl).err(),
                Event::Control(None) => Some(Close::Ordered(None)),
                Event::Idle => Some(violation(format!("No packet for {:?}: keep-alive expired.", self.idle_limit))),
                Event::TokenExpired => Some(Close::Error(Error::new(
                    Code::Unauthenticated,
                    "mqtt: SERVER: The authorization token expired.",
                ))),
            };
            if let Some(close) = close {
                let _ = self.flush().await;
                return close;
            }
            if self.flush().await.is_err() {
                return Close::Normal;
            }
        }
    }

    /// Handles the delivery at the front of the pipeline, and every one behind it that is already
    /// complete, so a burst of PUBACKs leaves in one write. PUBACKs go out in the order the
    /// PUBLISHes came in.
    async fn acknowledge(&mut self, first: ferrocore_core::Result<()>) -> Result<(), Close> {
        let mut result = first;
        loop {
            let (packet_id, _) = self.pending.pop_front().expect("the front delivery completed");
            result.map_err(Close::Error)?;
            if let Some(id) = packet_id {
                encode(&Packet::PubAck(id), &mut self.wbuf);
            }
            let pending = &mut self.pending;
            let next = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(match pending.front_mut() {
                    Some((_, d)) => match d.as_mut().poll(cx) {
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

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        result?;
        self.stream.flush().await
    }

    /// Handles every whole packet in the read buffer.
    async fn handle_buffered(&mut self) -> Result<(), Close> {
        loop {
            let packet = match decode(&mut self.rbuf, self.config.max_packet_size) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => return Err(violation(format!("Malformed MQTT packet: {e}"))),
            };
            self.idle_deadline = Instant::now() + self.idle_limit;
            self.handle_packet(packet).await?;
        }
    }

    fn count_message(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count += 1;
        if self.window_count > self.config.max_messages_per_second {
            return Err(Close::Error(Error::new(
                Code::ResourceExhausted,
                format!("The device sent more than {} messages in one second.", self.config.max_messages_per_second),
            )));
        }
        Ok(())
    }

    async fn handle_packet(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => {
                self.count_message()?;
                self.handle_publish(p).await
            }
            Packet::PubAck(id) => {
                match self.inflight.remove(&id) {
                    Some(Outgoing::Command(done)) => {
                        let _ = done.send(());
                    }
                    Some(Outgoing::Config(version)) => {
                        if let Err(e) = self.core.config_acked(&self.device, version).await {
                            tracing::warn!(error = %e, "config acknowledgement not recorded");
                        }
                    }
                    None => {}
                }
                Ok(())
            }
            Packet::Subscribe(s) => {
                self.count_message()?;
                self.handle_subscribe(s.packet_id, s.filters).await
            }
            Packet::Unsubscribe(u) => {
                for f in &u.filters {
                    match topic::parse_subscribe(f) {
                        Some(SubscribeTopic::Config { device }) if device == self.device.id.as_str() => {
                            self.config_qos = None
                        }
                        Some(SubscribeTopic::Commands { device }) if device == self.device.id.as_str() => {
                            self.commands_qos = None;
                            self.handle.commands.store(false, Ordering::Release);
                        }
                        _ => {}
                    }
                }
                encode(&Packet::UnsubAck(u.packet_id), &mut self.wbuf);
                Ok(())
            }
            Packet::PingReq => {
                self.core.heartbeat(&self.device);
                encode(&Packet::PingResp, &mut self.wbuf);
                Ok(())
            }
            Packet::Disconnect => Err(Close::Normal),
            Packet::Connect(_) => Err(violation("A second CONNECT on the same connection.")),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => Err(violation("QoS 2 is not supported.")),
            other => Err(violation(format!("Unexpected packet from a device: {}", packet_name(&other)))),
        }
    }

    async fn handle_publish(&mut self, p: Publish) -> Result<(), Close> {
        if p.qos == QoS::ExactlyOnce {
            return Err(violation("QoS 2 is not supported; publish with QoS 0 or 1."));
        }
        let own = self.device.id.as_str();
        let delivery = match topic::parse_publish(&p.topic) {
            Some(PublishTopic::Events { device, subfolder }) if device == own => {
                self.core.submit_event(&self.device, subfolder, p.payload).await
            }
            Some(PublishTopic::State { device }) if device == own => {
                self.core.submit_state(&self.device, p.payload).await
            }
            Some(PublishTopic::Attach { .. } | PublishTopic::Detach { .. }) => {
                return Err(violation("Only gateways may attach devices, and gateway attach is not supported yet."));
            }
            _ => {
                return Err(violation(format!(
                    "Publishing to '{}' is not allowed.",
                    ferrocore_model::ids::printable(&p.topic)
                )));
            }
        };
        // The PUBACK goes out once the delivery completes: what is acknowledged is never lost.
        let packet_id = p.packet_id.filter(|_| p.qos == QoS::AtLeastOnce);
        self.pending.push_back((packet_id, delivery.map_err(Close::Error)?));
        Ok(())
    }

    async fn handle_subscribe(&mut self, packet_id: u16, filters: Vec<(String, QoS)>) -> Result<(), Close> {
        let own = self.device.id.to_string();
        let mut codes = Vec::with_capacity(filters.len());
        let mut send_config = false;
        for (filter, qos) in &filters {
            // QoS 2 is granted as 1.
            let granted = if *qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            let code = match topic::parse_subscribe(filter) {
                Some(SubscribeTopic::Config { device }) if device == own => {
                    self.config_qos = Some(granted);
                    send_config = true;
                    SubAckCode::Granted(granted)
                }
                Some(SubscribeTopic::Commands { device }) if device == own => {
                    self.commands_qos = Some(granted);
                    self.handle.commands.store(true, Ordering::Release);
                    SubAckCode::Granted(granted)
                }
                _ => SubAckCode::Failure,
            };
            codes.push(code);
        }
        encode(&Packet::SubAck(SubAck { packet_id, return_codes: codes }), &mut self.wbuf);
        if send_config {
            // The latest config arrives at once on subscribe, even if the device has seen it.
            let config = self.core.device_config(&self.device).await.map_err(Close::Error)?;
            self.send_config(config)?;
        }
        Ok(())
    }

    fn allocate_packet_id(&mut self) -> Result<u16, Close> {
        if self.inflight.len() >= self.config.max_inflight {
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
            (None, Outgoing::Config(_)) => {}
        }
        Ok(())
    }

    fn send_config(&mut self, config: DeviceConfig) -> Result<(), Close> {
        let Some(qos) = self.config_qos else { return Ok(()) };
        let topic = topic::config_topic(self.device.id.as_str());
        self.publish(topic, qos, Bytes::from(config.binary_data), Outgoing::Config(config.version))?;
        self.core.config_sent(&self.device);
        Ok(())
    }

    fn handle_control(&mut self, ctl: SessionControl) -> Result<(), Close> {
        match ctl {
            SessionControl::Command { subfolder, data, done } => {
                // Not subscribed (any more): dropping `done` tells the caller.
                let Some(qos) = self.commands_qos else { return Ok(()) };
                let topic = topic::command_topic(self.device.id.as_str(), &subfolder);
                self.publish(topic, qos, Bytes::from(data), Outgoing::Command(done))
            }
            SessionControl::Config(config) => self.send_config(config),
            SessionControl::Disconnect(reason) => Err(Close::Ordered(reason)),
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
