//! A device for tests: `ferrocore_device`'s keys and MQTT client, with the tests' manners: every
//! step that should work unwraps, and the client can also send what well-behaved ones never would.

use bytes::Bytes;
use ferrocore_device::DeviceKey;
use ferrocore_device::mqtt::{Client, Error, Stream};
use ferrocore_mqtt_codec::{ConnectReturnCode, Packet, Publish, QoS, SubAckCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_rustls::rustls;

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A device JWT signed with the private key `private_pem` (its algorithm follows from the key).
pub fn jwt(private_pem: &str, audience: &str, iat: i64, exp: i64) -> String {
    DeviceKey::from_pem(private_pem).unwrap().jwt(audience, iat, exp).unwrap()
}

/// A token for `project` signed with the ES256 fixture key, valid for an hour.
pub fn es256_token(project: &str) -> String {
    jwt(&crate::harness::fixture("ec_private.pem"), project, now(), now() + 3600)
}

pub struct MqttClient(Client);

impl MqttClient {
    /// Opens TLS to `addr`, trusting `ca_pem` for the name "localhost".
    pub async fn tls(addr: std::net::SocketAddr, ca_pem: &[u8]) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        Self::tls_over(tcp, ca_pem).await.unwrap()
    }

    /// TLS over an open TCP connection; an error when the server closes it during the handshake.
    pub async fn tls_over(tcp: tokio::net::TcpStream, ca_pem: &[u8]) -> std::io::Result<Self> {
        let config = ferrocore_device::tls::client_config(ca_pem).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await?;
        Ok(Self::over(tls))
    }

    pub async fn plain(addr: std::net::SocketAddr) -> Self {
        Self::over(tokio::net::TcpStream::connect(addr).await.unwrap())
    }

    /// A client over any stream, such as one from [`tcp_from`].
    pub fn over(stream: impl Stream + 'static) -> Self {
        Self(Client::new(stream))
    }

    /// Sends CONNECT and returns the CONNACK code, or None when the server closed the connection
    /// instead of answering.
    pub async fn try_connect(&mut self, client_id: &str, password: Option<&str>) -> Option<ConnectReturnCode> {
        match tokio::time::timeout(Duration::from_secs(5), self.0.connect(client_id, password, 60)).await.ok()? {
            Ok(()) => Some(ConnectReturnCode::Accepted),
            Err(Error::Refused(code)) => Some(code),
            Err(Error::Closed | Error::Io(_)) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// Sends CONNECT and returns the CONNACK code.
    pub async fn connect(&mut self, client_id: &str, password: Option<&str>, keep_alive: u16) -> ConnectReturnCode {
        let connect = self.0.connect(client_id, password, keep_alive);
        match tokio::time::timeout(Duration::from_secs(10), connect).await.expect("no CONNACK within 10 s") {
            Ok(()) => ConnectReturnCode::Accepted,
            Err(Error::Refused(code)) => code,
            Err(e) => panic!("{e}"),
        }
    }

    /// Sends `p`; a connection the server closed meanwhile is the test's to see.
    pub async fn send(&mut self, p: Packet) {
        let _ = self.0.send(&p).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.0.queue_raw(bytes);
        self.0.flush().await.unwrap();
    }

    /// The next packet, or None when the server closed the connection (or `within` passed).
    pub async fn recv_within(&mut self, within: Duration) -> Option<Packet> {
        match tokio::time::timeout(within, self.0.recv()).await.ok()? {
            Ok(p) => Some(p),
            Err(Error::Closed | Error::Io(_)) => None,
            Err(e) => panic!("{e}"),
        }
    }

    pub async fn recv(&mut self) -> Packet {
        self.recv_within(Duration::from_secs(10)).await.expect("the server closed the connection")
    }

    /// True once the server has closed the connection (within `within`).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.0.read_more()).await {
                Ok(Ok(false) | Err(_)) => return true,
                Ok(Ok(true)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Publishes; for QoS 1 returns the packet id to expect in the PUBACK.
    pub async fn publish(&mut self, topic: &str, qos: QoS, payload: &[u8]) -> Option<u16> {
        // Not the client's `publish`: the server may close the connection over this very message,
        // and the test still wants the packet id.
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.0.packet_id());
        let payload = Bytes::copy_from_slice(payload);
        self.send(Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned(),
            packet_id,
            payload,
        }))
        .await;
        packet_id
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    pub async fn publish_acked(&mut self, topic: &str, payload: &[u8]) {
        self.0.publish_acked(topic, Bytes::copy_from_slice(payload)).await.unwrap();
    }

    /// Subscribes and returns the SUBACK return codes.
    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<SubAckCode> {
        self.0.subscribe(filters).await.unwrap()
    }
}

/// Opens TCP to `addr` from the local address `source` (None: the kernel's choice; any of
/// 127.0.0.0/8 works on loopback), with a receive buffer of `recv_buffer` bytes if given: a small
/// one makes a device that stops reading hold up the server's writes sooner.
pub async fn tcp_from(
    addr: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
    recv_buffer: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = source {
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}
