//! A small MQTT 3.1.1 client for load generation, over plain TCP or TLS (rustls), built on the
//! project's codec. It buffers what it sends until `flush`, so a generator writes a burst of
//! packets in one syscall, and decodes every whole packet already read before reading again.

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use ferrocore_mqtt_codec::{ConnAck, Connect, ConnectReturnCode, Packet, QoS, SubAckCode, Subscribe, decode, encode};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

/// Largest packet the bench accepts from a server.
const MAX_PACKET: usize = 1 << 20;

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where and how to connect: the broker's address, TLS settings, and the local addresses that
/// connections are spread over.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    sources: Vec<IpAddr>,
}

/// Builds a rustls client configuration trusting the CA in `ca_pem` (or, with none, any server
/// certificate: loopback benchmarks only). Resumption is off unless asked for: each connect
/// then pays a full handshake, as a fleet of devices coming back after an outage does.
fn tls_config(ca: Option<&Path>, resume: bool) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = match ca {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let pem = std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.context("bad certificate in the CA file")?).context("unusable CA certificate")?;
            }
            if roots.is_empty() {
                bail!("{} holds no certificate", path.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))).with_no_client_auth()
        }
    };
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(config)
}

/// Accepts any server certificate (still checking the handshake signature), for `--insecure`.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// True for 127.0.0.0/8 and ::1: the only addresses this tool will send load to.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

impl Endpoint {
    /// `sources` local addresses 127.0.0.2, 127.0.0.3, ... are used in turn (none: the kernel
    /// picks 127.0.0.1). Each holds its own ~28,000 ephemeral ports.
    pub fn new(
        addr: SocketAddr,
        tls: bool,
        ca: Option<&Path>,
        server_name: &str,
        resume: bool,
        sources: usize,
    ) -> Result<Self> {
        if !is_loopback(addr.ip()) {
            bail!("{addr} is not a loopback address; this tool only targets 127.0.0.0/8 and ::1");
        }
        let tls = if tls {
            let config = tls_config(ca, resume)?;
            let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
                .map_err(|_| anyhow!("'{server_name}' is not a valid TLS server name"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let sources = if addr.is_ipv4() {
            (0..sources.min(250)).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))).collect()
        } else {
            Vec::new()
        };
        Ok(Self { addr, tls, sources })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens connection number `i` (its source address is chosen by `i`), TLS included.
    pub async fn open(&self, i: usize) -> Result<Client> {
        let tcp = if self.sources.is_empty() {
            tokio::net::TcpStream::connect(self.addr).await?
        } else {
            let socket = tokio::net::TcpSocket::new_v4()?;
            let source = self.sources[i % self.sources.len()];
            socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("cannot bind {source}"))?;
            socket.connect(self.addr).await?
        };
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await.context("TLS handshake")?),
            None => Box::new(tcp),
        };
        Ok(Client { stream, rbuf: BytesMut::with_capacity(256), wbuf: BytesMut::with_capacity(256), next_id: 1 })
    }
}

pub struct Client {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_id: u16,
}

impl Client {
    /// Encodes `p` into the send buffer; nothing is written until [`Client::flush`].
    pub fn queue(&mut self, p: &Packet) {
        encode(p, &mut self.wbuf);
    }

    pub fn queued_bytes(&self) -> usize {
        self.wbuf.len()
    }

    pub async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// A whole packet already read, if any.
    pub fn next_buffered(&mut self) -> Result<Option<Packet>> {
        decode(&mut self.rbuf, MAX_PACKET).map_err(|e| anyhow!("the server sent a malformed packet: {e}"))
    }

    /// Reads more bytes; Ok(false) when the server closed the connection. Cancel-safe.
    pub async fn read_more(&mut self) -> Result<bool> {
        Ok(self.stream.read_buf(&mut self.rbuf).await? > 0)
    }

    /// The next packet; an error when the connection closes first.
    pub async fn recv(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = self.next_buffered()? {
                return Ok(p);
            }
            if !self.read_more().await? {
                bail!("the server closed the connection");
            }
        }
    }

    pub fn packet_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Sends CONNECT (clean session, MQTT 3.1.1) and waits for the CONNACK.
    pub async fn connect(&mut self, client_id: &str, password: Option<&str>, keep_alive: u16) -> Result<()> {
        self.queue(&Packet::Connect(Connect {
            protocol_level: 4,
            clean_session: true,
            keep_alive,
            client_id: client_id.to_owned(),
            will: None,
            username: password.map(|_| "unused".to_owned()),
            password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
        }));
        self.flush().await?;
        match self.recv().await? {
            Packet::ConnAck(ConnAck { code: ConnectReturnCode::Accepted, .. }) => Ok(()),
            Packet::ConnAck(ConnAck { code, .. }) => bail!("CONNACK refused: {code:?}"),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// Subscribes to one filter and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        let packet_id = self.packet_id();
        self.queue(&Packet::Subscribe(Subscribe { packet_id, filters: vec![(filter.to_owned(), qos)] }));
        self.flush().await?;
        match self.recv().await? {
            Packet::SubAck(s) if s.packet_id == packet_id => match s.return_codes.first() {
                Some(SubAckCode::Granted(_)) => Ok(()),
                _ => bail!("subscription to {filter} refused"),
            },
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }

    /// Sends DISCONNECT and closes the socket.
    pub async fn disconnect(mut self) {
        self.queue(&Packet::Disconnect);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
