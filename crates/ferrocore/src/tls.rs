//! TLS for the device-facing listeners.
//!
//! With `--tls-cert`/`--tls-key` the server uses the operator's certificate. Without them, the
//! first start creates a private CA (`DATA_DIR/tls/ca.pem`) and a server certificate signed by it
//! for localhost, 127.0.0.1, ::1 and the names given with `--tls-name`, both ECDSA P-256
//! (handshakes several times cheaper than RSA-2048); devices trust `ca.pem`. Later starts reuse
//! them. TLS 1.2 and 1.3 are offered.
//!
//! The generated CA can vouch for nothing else, now or later: it carries name constraints (only
//! the server certificate's names), it expires with the server certificate, and its private key is
//! never written to disk. A certificate for other names therefore needs a new CA, which devices
//! must then trust (remove `DATA_DIR/tls` and restart).
//!
//! Sessions resume with stateless tickets whose keys live only in memory: a device reconnecting
//! to the same process skips the full handshake, one reconnecting after a restart does not.

use crate::secrets::read_secret_file;
use crate::server::TlsFiles;
use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::CipherSuite;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the generated material lives, relative to the data directory.
pub const GENERATED_DIR: &str = "tls";

/// Names every generated server certificate is for.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How long the generated CA and server certificate are valid (about 27 months).
const VALIDITY_DAYS: i64 = 825;

/// Where earlier versions kept the generated CA's private key.
const CA_KEY_FILE: &str = "ca-key.pem";

/// The certificate and key to serve: the configured ones, or generated ones in the data dir, for
/// the local names and `names` (DNS names or IP addresses).
pub fn files(data_dir: &Path, configured: Option<&TlsFiles>, names: &[String]) -> Result<TlsFiles> {
    if let Some(f) = configured {
        return Ok(f.clone());
    }
    let dir = data_dir.join(GENERATED_DIR);
    let files = TlsFiles { cert: dir.join("server.pem"), key: dir.join("server-key.pem") };
    if files.cert.exists() && files.key.exists() {
        forget_ca_key(&dir)?;
        warn_about_missing_names(&files.cert, names);
        return Ok(files);
    }
    if dir.join("ca.pem").exists() {
        bail!(
            "{} holds a CA but no server certificate; restore server.pem and server-key.pem, or remove the directory to start over (devices must then trust the new ca.pem)",
            dir.display()
        );
    }
    generate(&dir, names)?;
    tracing::info!(ca = %dir.join("ca.pem").display(), "generated a local CA and server certificate; devices must trust this CA file");
    Ok(files)
}

/// Earlier versions left the CA's key on disk, from where it could sign a certificate for any
/// name that devices would trust. Nothing needs it once the server certificate exists.
fn forget_ca_key(dir: &Path) -> Result<()> {
    let key = dir.join(CA_KEY_FILE);
    if key.exists() {
        std::fs::remove_file(&key).with_context(|| format!("cannot remove {}", key.display()))?;
        tracing::warn!(
            path = %key.display(),
            "removed the generated CA's private key; that CA has no name constraints, so remove {} and restart to replace it with one that has (devices must then trust the new ca.pem)",
            dir.display()
        );
    }
    Ok(())
}

/// The certificate cannot be re-issued for names added later (the CA's key is gone): say so.
fn warn_about_missing_names(cert: &Path, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let Ok(pem) = std::fs::read(cert) else { return };
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(&pem).next() else { return };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&der) else { return };
    let mut covered: Vec<String> = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => covered.push(d.to_ascii_lowercase()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*ip).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    covered.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let missing: Vec<&String> = names.iter().filter(|n| !covered.contains(&normalize(n))).collect();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            cert = %cert.display(),
            "the generated certificate does not cover these --tls-name names and cannot be re-issued; remove the tls directory and restart to generate a new CA and certificate (devices must then trust the new ca.pem)"
        );
    }
}

/// A name as certificates hold it: DNS names in lower case, IP addresses in their usual form.
fn normalize(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

fn write_file(path: &PathBuf, contents: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn generate(dir: &Path, extra_names: &[String]) -> Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let now = time::OffsetDateTime::now_utc();
    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|n| (*n).to_owned()).collect();
    for name in extra_names {
        let name = normalize(name.trim());
        if name.is_empty() {
            bail!("--tls-name takes a host name or an IP address");
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut permitted = Vec::new();
    let mut sans = Vec::new();
    for name in &names {
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                )));
                sans.push(SanType::IpAddress(ip));
            }
            Err(_) => {
                permitted.push(GeneralSubtree::DnsName(name.clone()));
                sans.push(SanType::DnsName(
                    name.as_str().try_into().with_context(|| format!("'{name}' is not a valid host name"))?,
                ));
            }
        }
    }

    // The CA's key lives only in this function: once the server certificate is signed, no
    // certificate devices trust can be made again.
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::OrganizationName, "Ferrocore");
    ca.distinguished_name.push(DnType::CommonName, "Ferrocore local CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.name_constraints = Some(NameConstraints { permitted_subtrees: permitted, excluded_subtrees: Vec::new() });
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut server = CertificateParams::default();
    server.subject_alt_names = sans;
    server.distinguished_name.push(DnType::CommonName, "localhost");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = now - time::Duration::days(1);
    server.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let issuer = Issuer::new(ca, &ca_key);
    let server_cert = server.signed_by(&server_key, &issuer)?;

    // Every file here is the server user's alone; devices get a copy of ca.pem from the operator.
    write_file(&dir.join("ca.pem"), &ca_cert.pem())?;
    write_file(&dir.join("server-key.pem"), &server_key.serialize_pem())?;
    write_file(&dir.join("server.pem"), &format!("{}{}", server_cert.pem(), ca_cert.pem()))?;
    Ok(())
}

/// aws-lc's provider with the AES-128-GCM suites first. Most clients list AES-256-GCM with
/// SHA-384 first; in TLS 1.3 the handshake's key schedule is some twenty HMACs of the suite's
/// hash, and x86-64 has instructions for SHA-256 (SHA-NI) but not for SHA-512, on which SHA-384
/// runs: with the SHA-384 suite those HMACs were ~9% of a connect's server CPU. AES-128-GCM is
/// the suite every TLS 1.3 implementation must support, and a 128-bit key is no weaker than the
/// P-256 and X25519 key exchanges in front of it.
fn server_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // Stable: suites of the preferred kind keep their relative order, the rest follow.
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
}

/// A rustls server config for the files, offering TLS 1.2 and 1.3 and the given ALPN protocols.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("cannot read the TLS certificate {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", files.cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", files.cert.display());
    }
    let key_pem = read_secret_file(&files.key).context("cannot use the TLS key")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .with_context(|| format!("{} is not a PEM private key", files.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(server_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match or are unsupported")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // The server's order of cipher suites decides (see `server_provider`).
    config.ignore_client_order = true;
    // Stateless session tickets (keys in memory only, rotated by rustls every 6 hours), so any
    // device that reconnects to this process may resume, however large the fleet: the default
    // in-memory session store keeps only 256 sessions. A resumed handshake skips the server's
    // certificate signature; the MQTT CONNECT that follows is authenticated as always. One
    // ticket per handshake is enough for a device that reconnects once at a time.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().context("TLS session tickets")?;
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_is_reused_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = files(dir.path(), None, &[]).unwrap();
        let pem = std::fs::read_to_string(&first.cert).unwrap();
        let again = files(dir.path(), None, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&again.cert).unwrap(), pem, "reused, not regenerated");
        let generated = dir.path().join(GENERATED_DIR);
        for file in ["ca.pem", "server.pem", "server-key.pem"] {
            let mode = std::fs::metadata(generated.join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        assert!(!generated.join(CA_KEY_FILE).exists(), "the CA's key is not kept");
        server_config(&first, &[]).unwrap();
    }

    /// Runs a handshake between in-memory client and server connections; returns how the
    /// client's handshake went (full or resumed).
    fn handshake(
        client_config: &Arc<rustls::ClientConfig>,
        server_config: &Arc<rustls::ServerConfig>,
    ) -> rustls::HandshakeKind {
        connect(client_config, server_config).handshake_kind().unwrap()
    }

    /// The client's side of a completed in-memory handshake.
    fn connect(
        client_config: &Arc<rustls::ClientConfig>,
        server_config: &Arc<rustls::ServerConfig>,
    ) -> rustls::ClientConnection {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client_config.clone(), name).unwrap();
        let mut server = rustls::ServerConnection::new(server_config.clone()).unwrap();
        let mut buf = Vec::new();
        for _ in 0..20 {
            buf.clear();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut read = &buf[..];
            while !read.is_empty() {
                server.read_tls(&mut read).unwrap();
            }
            server.process_new_packets().unwrap();
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut read = &buf[..];
            while !read.is_empty() {
                client.read_tls(&mut read).unwrap();
            }
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
                break;
            }
        }
        assert!(!client.is_handshaking(), "the handshake did not finish");
        client
    }

    #[test]
    fn the_server_prefers_aes_128_gcm_and_still_serves_clients_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let server = server_config(&files(dir.path(), None, &[]).unwrap(), &[]).unwrap();
        let ca = std::fs::read(dir.path().join(GENERATED_DIR).join("ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(parse_pem(&ca).remove(0)).unwrap();
        let client = |version: &'static rustls::SupportedProtocolVersion, suites: Option<&[CipherSuite]>| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            if let Some(only) = suites {
                provider.cipher_suites.retain(|s| only.contains(&s.suite()));
            }
            let c = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            Arc::new(c)
        };
        let suite = |c: &Arc<rustls::ClientConfig>| connect(c, &server).negotiated_cipher_suite().unwrap().suite();
        // aws-lc's own client lists the AES-256 suites first; the server's order wins.
        let default = rustls::crypto::aws_lc_rs::default_provider();
        assert_ne!(default.cipher_suites[0].suite(), CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(suite(&client(&rustls::version::TLS13, None)), CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(suite(&client(&rustls::version::TLS12, None)), CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
        // A client that offers only other suites gets one of them.
        for only in [CipherSuite::TLS13_AES_256_GCM_SHA384, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256] {
            assert_eq!(suite(&client(&rustls::version::TLS13, Some(&[only]))), only);
        }
        let tls12 = CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
        assert_eq!(suite(&client(&rustls::version::TLS12, Some(&[tls12]))), tls12);
    }

    #[test]
    fn sessions_resume_with_tickets_beyond_the_session_cache() {
        let dir = tempfile::tempdir().unwrap();
        let generated = files(dir.path(), None, &[]).unwrap();
        let server = server_config(&generated, &[]).unwrap();
        let ca = std::fs::read(dir.path().join(GENERATED_DIR).join("ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(parse_pem(&ca).remove(0)).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = |resume: bool| {
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            if !resume {
                c.resumption = rustls::client::Resumption::disabled();
            }
            Arc::new(c)
        };
        // More devices than the 256 sessions the default in-memory store keeps: with tickets,
        // each one's reconnect still resumes.
        let devices: Vec<_> = (0..300).map(|_| client(true)).collect();
        for d in &devices {
            assert_eq!(handshake(d, &server), rustls::HandshakeKind::Full);
        }
        for d in &devices {
            assert_eq!(handshake(d, &server), rustls::HandshakeKind::Resumed);
        }
        // A client that does not resume always gets the full handshake.
        let fresh = client(false);
        assert_eq!(handshake(&fresh, &server), rustls::HandshakeKind::Full);
        assert_eq!(handshake(&fresh, &server), rustls::HandshakeKind::Full);
        // Another server process (a restart) has other ticket keys: the device falls back to a
        // full handshake, and gets in.
        let restarted = server_config(&generated, &[]).unwrap();
        assert_eq!(handshake(&devices[0], &restarted), rustls::HandshakeKind::Full);
    }

    fn parse_pem(pem: &[u8]) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn the_generated_ca_is_name_constrained_and_short_lived() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{ServerName, UnixTime};
        use x509_parser::extensions::GeneralName;
        let dir = tempfile::tempdir().unwrap();
        let generated = files(dir.path(), None, &["IoT.example.com".into(), "10.0.0.7".into()]).unwrap();
        let ca_pem = std::fs::read(dir.path().join(GENERATED_DIR).join("ca.pem")).unwrap();
        let ca_der = parse_pem(&ca_pem).remove(0);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let constraints = ca.name_constraints().unwrap().expect("name constraints").value;
        assert!(constraints.excluded_subtrees.is_none());
        let permitted: std::collections::BTreeSet<String> = constraints
            .permitted_subtrees
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| match &s.base {
                GeneralName::DNSName(d) => (*d).to_owned(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => panic!("{other:?}"),
            })
            .collect();
        let v6_loopback: Vec<u8> = [[0u8; 15].as_slice(), &[1], &[255; 16]].concat();
        let expected: std::collections::BTreeSet<String> = [
            "localhost".to_owned(),
            "iot.example.com".to_owned(),
            format!("{:?}", [127u8, 0, 0, 1, 255, 255, 255, 255]),
            format!("{:?}", [10u8, 0, 0, 7, 255, 255, 255, 255]),
            format!("{v6_loopback:?}"),
        ]
        .into();
        assert_eq!(permitted, expected);
        let lifetime = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
        assert!(lifetime <= (VALIDITY_DAYS + 1) * 86_400, "{lifetime}");

        // Clients that enforce the constraints still accept the server for each of its names.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let chain = parse_pem(&std::fs::read(&generated.cert).unwrap());
        for name in ["localhost", "127.0.0.1", "::1", "iot.example.com", "10.0.0.7"] {
            let name = ServerName::try_from(name).unwrap();
            verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now()).unwrap();
        }
        let other = ServerName::try_from("other.example.com").unwrap();
        assert!(verifier.verify_server_cert(&chain[0], &chain[1..], &other, &[], UnixTime::now()).is_err());
    }

    #[test]
    fn a_ca_key_left_by_an_earlier_version_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path(), None, &[]).unwrap();
        let key = dir.path().join(GENERATED_DIR).join(CA_KEY_FILE);
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        files(dir.path(), None, &[]).unwrap();
        assert!(!key.exists());
    }
}
