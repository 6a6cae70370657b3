//! A device for tests: signs its own JWTs and speaks MQTT 3.1.1 over TLS or TCP with the
//! project's codec, so tests can also send what well-behaved clients never would.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use ferrocore_mqtt_codec::{ConnAck, Connect, ConnectReturnCode, Packet, Publish, QoS, Subscribe, decode, encode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn der_of(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

/// Signs a JWT as firmware does: `{"alg","typ"}` header and `iat`/`exp`/`aud` claims.
pub fn jwt(alg: &str, private_pem: &str, audience: &str, iat: i64, exp: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"iat":{iat},"exp":{exp},"aud":"{audience}"}}"#));
    let input = format!("{header}.{claims}");
    let der = der_of(private_pem);
    let sig = match alg {
        "ES256" => {
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap();
            key.sign(&SystemRandom::new(), input.as_bytes()).unwrap().as_ref().to_vec()
        }
        "RS256" => {
            let key = RsaKeyPair::from_pkcs8(&der).unwrap();
            let mut sig = vec![0; key.public_modulus_len()];
            key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
            sig
        }
        other => panic!("{other}"),
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// A token for `project` signed with the ES256 fixture key, valid for an hour.
pub fn es256_token(project: &str) -> String {
    jwt("ES256", &crate::harness::fixture("ec_private.pem"), project, now(), now() + 3600)
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct MqttClient {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    next_id: u16,
}

impl MqttClient {
    /// Opens TLS to `addr`, trusting `ca_pem` for the name "localhost".
    pub async fn tls(addr: std::net::SocketAddr, ca_pem: &[u8]) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        Self::tls_over(tcp, ca_pem).await.unwrap()
    }

    /// TLS over an open TCP connection; an error when the server closes it during the handshake.
    pub async fn tls_over(tcp: tokio::net::TcpStream, ca_pem: &[u8]) -> std::io::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await?;
        Ok(Self::over(tls))
    }

    pub async fn plain(addr: std::net::SocketAddr) -> Self {
        Self::over(tokio::net::TcpStream::connect(addr).await.unwrap())
    }

    /// A client over any stream, such as one from [`tcp_from`].
    pub fn over(stream: impl Stream + 'static) -> Self {
        Self { stream: Box::new(stream), rbuf: BytesMut::new(), next_id: 1 }
    }

    /// Sends CONNECT and returns the CONNACK code, or None when the server closed the connection
    /// instead of answering.
    pub async fn try_connect(&mut self, client_id: &str, password: Option<&str>) -> Option<ConnectReturnCode> {
        self.send_connect(client_id, password, 60).await.ok()?;
        match self.recv_within(Duration::from_secs(5)).await? {
            Packet::ConnAck(ConnAck { code, .. }) => Some(code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send_connect(&mut self, client_id: &str, password: Option<&str>, keep_alive: u16) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        encode(
            &Packet::Connect(Connect {
                protocol_level: 4,
                clean_session: true,
                keep_alive,
                client_id: client_id.to_owned(),
                will: None,
                username: Some("unused".into()),
                password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
            }),
            &mut buf,
        );
        self.stream.write_all(&buf).await
    }

    pub async fn send(&mut self, p: Packet) {
        let mut buf = BytesMut::new();
        encode(&p, &mut buf);
        self.stream.write_all(&buf).await.unwrap();
        // TLS may keep records back while the socket is full; a test that then only reads must
        // not leave them there. A connection the server closed meanwhile is the test's to see.
        let _ = self.stream.flush().await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next packet, or None when the server closed the connection (or `within` passed).
    pub async fn recv_within(&mut self, within: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(p) = decode(&mut self.rbuf, 1 << 20).expect("server sent a malformed packet") {
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Packet {
        self.recv_within(Duration::from_secs(10)).await.expect("the server closed the connection")
    }

    /// True once the server has closed the connection (within `within`).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Sends CONNECT and returns the CONNACK code.
    pub async fn connect(&mut self, client_id: &str, password: Option<&str>, keep_alive: u16) -> ConnectReturnCode {
        self.send_connect(client_id, password, keep_alive).await.unwrap();
        match self.recv().await {
            Packet::ConnAck(ConnAck { code, .. }) => code,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Publishes; for QoS 1 returns the packet id to expect in the PUBACK.
    pub async fn publish(&mut self, topic: &str, qos: QoS, payload: &[u8]) -> Option<u16> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        self.send(Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned(),
            packet_id,
            payload: Bytes::copy_from_slice(payload),
        }))
        .await;
        packet_id
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    pub async fn publish_acked(&mut self, topic: &str, payload: &[u8]) {
        let id = self.publish(topic, QoS::AtLeastOnce, payload).await.unwrap();
        match self.recv().await {
            Packet::PubAck(got) => assert_eq!(got, id),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// Subscribes and returns the SUBACK return codes.
    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<ferrocore_mqtt_codec::SubAckCode> {
        let packet_id = self.packet_id();
        let filters = filters.iter().map(|(f, q)| ((*f).to_owned(), *q)).collect();
        self.send(Packet::Subscribe(Subscribe { packet_id, filters })).await;
        match self.recv().await {
            Packet::SubAck(s) => {
                assert_eq!(s.packet_id, packet_id);
                s.return_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
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
