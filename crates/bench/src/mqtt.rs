//! Where the bench's MQTT connections go: the broker's address, TLS (trusting a CA, or for
//! `--insecure` any certificate), and the local source addresses connections are spread over.
//! The client itself is `ferrocore_device::mqtt::Client`.

use anyhow::{Context, Result, anyhow, bail};
pub use ferrocore_device::mqtt::Client;
use ferrocore_mqtt_codec::{QoS, SubAckCode};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;

/// Where and how to connect: the broker's address, TLS settings, and the local addresses that
/// connections are spread over.
#[derive(Clone)]
pub struct Endpoint {
    /// The first of `addrs`.
    pub addr: SocketAddr,
    /// Where connections go, in turn (one address, or the nodes of a cluster).
    addrs: Vec<SocketAddr>,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    sources: Vec<IpAddr>,
}

/// The key exchanges the bench's TLS client offers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsGroups {
    /// rustls' own list: the hybrid post-quantum X25519MLKEM768 first (as OpenSSL 3.5 and
    /// current browsers offer), then X25519, P-256, P-384.
    #[default]
    Default,
    /// X25519, P-256 and P-384 only: what device TLS stacks such as mbedTLS offer.
    Classic,
}

/// Builds a rustls client configuration trusting the CA in `ca_pem` (or, with none, any server
/// certificate: loopback benchmarks only). Resumption is off unless asked for: each connect
/// then pays a full handshake, as a fleet of devices coming back after an outage does.
fn tls_config(ca: Option<&Path>, resume: bool, groups: TlsGroups) -> Result<rustls::ClientConfig> {
    let mut provider = (*ferrocore_device::tls::provider()).clone();
    if groups == TlsGroups::Classic {
        use rustls::NamedGroup::{X25519, secp256r1, secp384r1};
        provider.kx_groups.retain(|g| matches!(g.name(), X25519 | secp256r1 | secp384r1));
    }
    let provider = Arc::new(provider);
    let mut config = match ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?;
            ferrocore_device::tls::client_config_with(&pem, provider).map_err(|e| anyhow!("{} {e}", path.display()))?
        }
        None => rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
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
    /// picks 127.0.0.1). Each holds its own ~28,000 ephemeral ports. Connection `i` goes to
    /// `addrs[i % addrs.len()]`.
    pub fn new(
        addrs: &[SocketAddr],
        tls: bool,
        ca: Option<&Path>,
        server_name: &str,
        resume: bool,
        groups: TlsGroups,
        sources: usize,
    ) -> Result<Self> {
        let Some(&addr) = addrs.first() else { bail!("no address to connect to") };
        if let Some(a) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            bail!("{a} is not a loopback address; this tool only targets 127.0.0.0/8 and ::1");
        }
        let tls = if tls {
            let config = tls_config(ca, resume, groups)?;
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
        Ok(Self { addr, addrs: addrs.to_vec(), tls, sources })
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens connection number `i` (its source address and destination are chosen by `i`), TLS
    /// included.
    pub async fn open(&self, i: usize) -> Result<Client> {
        let addr = self.addrs[i % self.addrs.len()];
        let tcp = if self.sources.is_empty() {
            tokio::net::TcpStream::connect(addr).await?
        } else {
            let socket = tokio::net::TcpSocket::new_v4()?;
            let source = self.sources[i % self.sources.len()];
            socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("cannot bind {source}"))?;
            socket.connect(addr).await?
        };
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            Some((connector, name)) => {
                Client::new(connector.connect(name.clone(), tcp).await.context("TLS handshake")?)
            }
            None => Client::new(tcp),
        })
    }
}

/// Subscribes to one filter; an error unless the broker grants it.
pub async fn subscribe(client: &mut Client, filter: &str, qos: QoS) -> Result<()> {
    match client.subscribe(&[(filter, qos)]).await?.first() {
        Some(SubAckCode::Granted(_)) => Ok(()),
        _ => bail!("subscription to {filter} refused"),
    }
}
