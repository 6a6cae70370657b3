//! A small MQTT 3.1.1 client over the workspace's codec, on any byte stream (plain TCP, TLS).
//!
//! Writes are buffered: [`Client::queue`] encodes a packet into the send buffer and
//! [`Client::flush`] writes all of it, so a load generator sends a burst of packets in one
//! syscall; [`Client::send`] is both at once. Reads go the other way: [`Client::read_more`] reads
//! what the socket has (cancel-safe, for `select!`) and [`Client::next_buffered`] decodes one whole
//! packet from what was read, so every packet already received is handled before reading again.
//! Nothing here allocates per packet beyond what the codec's packets hold.
//!
//! On top of these, the exchanges a device has: [`Client::connect`] (CONNECT → CONNACK),
//! [`Client::publish`] / [`Client::publish_acked`], [`Client::subscribe`], [`Client::ping`] and
//! [`Client::disconnect`]. They expect the server's answer next and report anything else as
//! [`Error::Unexpected`]; a client that must take other packets meanwhile (commands arriving
//! while it publishes) drives the primitives itself.

use bytes::{Bytes, BytesMut};
use ferrocore_mqtt_codec::{
    ConnAck, Connect, ConnectReturnCode, DecodeError, Packet, Publish, QoS, SubAckCode, Subscribe, decode, encode,
};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest packet accepted from the server. Commands and configs are at most 256 KiB, so this
/// leaves room while keeping a broken server from filling memory.
pub const MAX_PACKET: usize = 1 << 20;

/// What a connection runs over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server sent a malformed packet: {0}")]
    Malformed(#[from] DecodeError),
    /// CONNACK with a code other than 0.
    #[error("the server refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    /// Not the answer the exchange waits for.
    #[error("{0}")]
    Unexpected(String),
}

/// One MQTT connection: the stream, what was read and not yet decoded, what was queued and not
/// yet written, and the next packet id.
pub struct Client {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_id: u16,
}

impl Client {
    pub fn new(stream: impl Stream + 'static) -> Self {
        Self {
            stream: Box::new(stream),
            rbuf: BytesMut::with_capacity(256),
            wbuf: BytesMut::with_capacity(256),
            next_id: 1,
        }
    }

    /// Encodes `p` into the send buffer; nothing is written until [`Client::flush`].
    #[inline]
    pub fn queue(&mut self, p: &Packet) {
        encode(p, &mut self.wbuf);
    }

    /// Appends bytes as they are, for tests that send what the codec would not encode.
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    #[inline]
    pub fn queued_bytes(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes everything queued. Flushing the stream too matters for TLS, which may hold records
    /// back while the socket is full: a client that then only reads must not leave them there.
    /// Not cancel-safe: a cancelled flush may have written part of the buffer.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// Queues `p` and flushes.
    pub async fn send(&mut self, p: &Packet) -> io::Result<()> {
        self.queue(p);
        self.flush().await
    }

    /// A whole packet already read, if any.
    #[inline]
    pub fn next_buffered(&mut self) -> Result<Option<Packet>, DecodeError> {
        decode(&mut self.rbuf, MAX_PACKET)
    }

    /// Reads more bytes; Ok(false) when the server closed the connection. Cancel-safe: what was
    /// read stays in the buffer.
    pub async fn read_more(&mut self) -> io::Result<bool> {
        Ok(self.stream.read_buf(&mut self.rbuf).await? > 0)
    }

    /// The next packet; [`Error::Closed`] when the connection ends first. Cancel-safe, so it can
    /// run under a timeout.
    pub async fn recv(&mut self) -> Result<Packet, Error> {
        loop {
            if let Some(p) = self.next_buffered()? {
                return Ok(p);
            }
            if !self.read_more().await? {
                return Err(Error::Closed);
            }
        }
    }

    /// A packet id for the next QoS 1 PUBLISH or SUBSCRIBE: 1, 2, ... 65535, 1, ... (0 is not
    /// a packet id).
    #[inline]
    pub fn packet_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Sends CONNECT (MQTT 3.1.1, clean session) and waits for the CONNACK: Ok when it accepts,
    /// [`Error::Refused`] with its code when not. With a password (the device's JWT) the user
    /// name is "unused", since MQTT 3.1.1 allows no password without one and IoT Core ignored it;
    /// without one (an anonymous broker client) there is neither.
    pub async fn connect(&mut self, client_id: &str, password: Option<&str>, keep_alive: u16) -> Result<(), Error> {
        self.send(&Packet::Connect(Connect {
            protocol_level: 4,
            clean_session: true,
            keep_alive,
            client_id: client_id.to_owned(),
            will: None,
            username: password.map(|_| "unused".to_owned()),
            password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
        }))
        .await?;
        match self.recv().await? {
            Packet::ConnAck(ConnAck { code: ConnectReturnCode::Accepted, .. }) => Ok(()),
            Packet::ConnAck(ConnAck { code, .. }) => Err(Error::Refused(code)),
            other => Err(unexpected("CONNACK", &other)),
        }
    }

    /// Sends a PUBLISH; at QoS 1 (or 2) returns the packet id its acknowledgement will carry.
    pub async fn publish(&mut self, topic: &str, qos: QoS, payload: Bytes) -> io::Result<Option<u16>> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        let publish = Publish { dup: false, qos, retain: false, topic: topic.to_owned(), packet_id, payload };
        self.send(&Packet::Publish(publish)).await?;
        Ok(packet_id)
    }

    /// Publishes at QoS 1 and waits for its PUBACK.
    pub async fn publish_acked(&mut self, topic: &str, payload: Bytes) -> Result<(), Error> {
        let id = self.publish(topic, QoS::AtLeastOnce, payload).await?;
        match self.recv().await? {
            Packet::PubAck(got) if Some(got) == id => Ok(()),
            Packet::PubAck(got) => {
                Err(Error::Unexpected(format!("expected PUBACK {}, got PUBACK {got}", id.unwrap_or(0))))
            }
            other => Err(unexpected("PUBACK", &other)),
        }
    }

    /// Sends one SUBSCRIBE for `filters` and returns the SUBACK's codes, one per filter.
    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Result<Vec<SubAckCode>, Error> {
        let packet_id = self.packet_id();
        let filters = filters.iter().map(|(f, q)| ((*f).to_owned(), *q)).collect();
        self.send(&Packet::Subscribe(Subscribe { packet_id, filters })).await?;
        match self.recv().await? {
            Packet::SubAck(s) if s.packet_id == packet_id => Ok(s.return_codes),
            other => Err(unexpected("SUBACK", &other)),
        }
    }

    /// Sends PINGREQ and waits for the PINGRESP; other packets arriving first are dropped (an
    /// idle connection expects none).
    pub async fn ping(&mut self) -> Result<(), Error> {
        self.send(&Packet::PingReq).await?;
        while self.recv().await? != Packet::PingResp {}
        Ok(())
    }

    /// DISCONNECT, then closing the stream (TLS sends close_notify): the server sees an orderly
    /// goodbye, not a dropped link. Errors are ignored, since the connection ends either way, and
    /// the close waits at most 2 s for a server that stopped reading.
    pub async fn disconnect(mut self) {
        self.queue(&Packet::Disconnect);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

fn unexpected(expected: &str, got: &Packet) -> Error {
    Error::Unexpected(format!("expected {expected}, got {}", got.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocore_mqtt_codec::SubAck;

    /// The server end of a client's connection, speaking packets through the codec.
    struct Server {
        stream: tokio::io::DuplexStream,
        buf: BytesMut,
    }

    impl Server {
        async fn recv(&mut self) -> Packet {
            loop {
                if let Some(p) = decode(&mut self.buf, MAX_PACKET).unwrap() {
                    return p;
                }
                assert!(self.stream.read_buf(&mut self.buf).await.unwrap() > 0, "the client closed");
            }
        }

        async fn send(&mut self, p: Packet) {
            let mut out = BytesMut::new();
            encode(&p, &mut out);
            self.stream.write_all(&out).await.unwrap();
        }

        /// Reads the client's CONNECT and answers it with `code`.
        async fn answer_connect(&mut self, code: ConnectReturnCode) -> Connect {
            let Packet::Connect(connect) = self.recv().await else { panic!("CONNECT first") };
            self.send(Packet::ConnAck(ConnAck { session_present: false, code })).await;
            connect
        }
    }

    fn pair() -> (Client, Server) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (Client::new(a), Server { stream: b, buf: BytesMut::new() })
    }

    #[tokio::test]
    async fn connect_publish_subscribe_ping_disconnect() {
        let (mut c, mut s) = pair();
        let server = tokio::spawn(async move {
            let connect = s.answer_connect(ConnectReturnCode::Accepted).await;
            assert_eq!((connect.client_id.as_str(), connect.username.as_deref()), ("dev", Some("unused")));
            assert_eq!(connect.password.as_deref(), Some(&b"token"[..]));
            let Packet::Publish(p) = s.recv().await else { panic!("PUBLISH") };
            assert_eq!((p.qos, p.packet_id, &p.payload[..]), (QoS::AtLeastOnce, Some(1), &b"x"[..]));
            s.send(Packet::PubAck(1)).await;
            let Packet::Subscribe(sub) = s.recv().await else { panic!("SUBSCRIBE") };
            assert_eq!(sub.packet_id, 2);
            let return_codes = vec![SubAckCode::Granted(QoS::AtLeastOnce)];
            s.send(Packet::SubAck(SubAck { packet_id: 2, return_codes })).await;
            assert_eq!(s.recv().await, Packet::PingReq);
            s.send(Packet::PubAck(9)).await; // dropped by ping()
            s.send(Packet::PingResp).await;
            assert_eq!(s.recv().await, Packet::Disconnect);
            assert_eq!(s.stream.read_buf(&mut s.buf).await.unwrap(), 0, "closed after DISCONNECT");
        });
        c.connect("dev", Some("token"), 60).await.unwrap();
        c.publish_acked("/devices/dev/events", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(c.subscribe(&[("/devices/dev/commands/#", QoS::AtLeastOnce)]).await.unwrap().len(), 1);
        c.ping().await.unwrap();
        c.disconnect().await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refusal_a_close_and_garbage_are_told_apart() {
        let (mut c, mut s) = pair();
        let server = tokio::spawn(async move {
            let connect = s.answer_connect(ConnectReturnCode::NotAuthorized).await;
            assert_eq!((connect.username, connect.password), (None, None), "anonymous");
            s.stream.write_all(&[0xf0, 0x00]).await.unwrap(); // reserved packet type
        });
        assert!(matches!(c.connect("dev", None, 60).await, Err(Error::Refused(ConnectReturnCode::NotAuthorized))));
        assert!(matches!(c.recv().await, Err(Error::Malformed(_))));
        server.await.unwrap();
        let (mut c, s) = pair();
        drop(s);
        assert!(matches!(c.recv().await, Err(Error::Closed)));
    }

    #[test]
    fn packet_ids_skip_zero() {
        let (mut c, _s) = pair();
        c.next_id = u16::MAX;
        assert_eq!((c.packet_id(), c.packet_id(), c.packet_id()), (u16::MAX, 1, 2));
    }

    #[tokio::test]
    async fn queued_packets_go_out_in_one_write() {
        let (mut c, mut s) = pair();
        c.queue(&Packet::PingReq);
        c.queue_raw(&[0xe0, 0x00]);
        assert_eq!(c.queued_bytes(), 4);
        c.flush().await.unwrap();
        assert_eq!(c.queued_bytes(), 0);
        assert_eq!((s.recv().await, s.recv().await), (Packet::PingReq, Packet::Disconnect));
    }
}
