//! TLS for the device-facing listeners.
//!
//! With `--tls-cert`/`--tls-key` the server uses the operator's certificate. Without them, the
//! first start creates a private CA (`DATA_DIR/tls/ca.pem`) and a server certificate for
//! localhost, 127.0.0.1 and ::1 signed by it, both ECDSA P-256 (handshakes several times cheaper
//! than RSA-2048); devices trust `ca.pem`. Later starts reuse them. TLS 1.2 and 1.3 are offered.

use crate::secrets::read_secret_file;
use crate::server::TlsFiles;
use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the generated material lives, relative to the data directory.
pub const GENERATED_DIR: &str = "tls";

/// The certificate and key to serve: the configured ones, or generated ones in the data dir.
pub fn files(data_dir: &Path, configured: Option<&TlsFiles>) -> Result<TlsFiles> {
    if let Some(f) = configured {
        return Ok(f.clone());
    }
    let dir = data_dir.join(GENERATED_DIR);
    let files = TlsFiles { cert: dir.join("server.pem"), key: dir.join("server-key.pem") };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    if dir.join("ca.pem").exists() {
        bail!(
            "{} holds a CA but no server certificate; restore server.pem and server-key.pem, or remove the directory to start over (devices must then trust the new ca.pem)",
            dir.display()
        );
    }
    generate(&dir)?;
    tracing::info!(ca = %dir.join("ca.pem").display(), "generated a local CA and server certificate; devices must trust this CA file");
    Ok(files)
}

fn write_file(path: &PathBuf, contents: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn generate(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let now = time::OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::OrganizationName, "Ferrocore");
    ca.distinguished_name.push(DnType::CommonName, "Ferrocore local CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()])?;
    server.distinguished_name.push(DnType::CommonName, "localhost");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = now - time::Duration::days(1);
    server.not_after = now + time::Duration::days(825);
    let issuer = Issuer::new(ca, &ca_key);
    let server_cert = server.signed_by(&server_key, &issuer)?;

    write_file(&dir.join("ca-key.pem"), &ca_key.serialize_pem(), 0o600)?;
    write_file(&dir.join("ca.pem"), &ca_cert.pem(), 0o644)?;
    write_file(&dir.join("server-key.pem"), &server_key.serialize_pem(), 0o600)?;
    write_file(&dir.join("server.pem"), &format!("{}{}", server_cert.pem(), ca_cert.pem()), 0o644)?;
    Ok(())
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
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match or are unsupported")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_is_reused_and_private_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = files(dir.path(), None).unwrap();
        let pem = std::fs::read_to_string(&first.cert).unwrap();
        let again = files(dir.path(), None).unwrap();
        assert_eq!(std::fs::read_to_string(&again.cert).unwrap(), pem, "reused, not regenerated");
        for key in ["ca-key.pem", "server-key.pem"] {
            let mode = std::fs::metadata(dir.path().join(GENERATED_DIR).join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        server_config(&first, &[]).unwrap();
    }
}
