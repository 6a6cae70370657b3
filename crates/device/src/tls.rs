//! The TLS a device speaks to the MQTT bridge: rustls with aws-lc-rs, trusting only the CA it is
//! given (the server's generated CA, or the operator's), not the system's roots, since a device
//! is pinned to its server's CA as IoT Core's were to Google's.

use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// Why a CA file is of no use; the messages read after the file's name (`ca.pem holds no
/// certificate`).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("holds a malformed PEM certificate ({0})")]
    BadPem(String),
    #[error("holds no certificate")]
    NoCertificate,
    #[error("holds an unusable CA certificate ({0})")]
    Rustls(#[from] rustls::Error),
}

/// A client configuration trusting the certificates of `ca_pem` (one or more PEM blocks),
/// with rustls' safe default protocol versions.
pub fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    client_config_with(ca_pem, provider())
}

/// [`client_config`] with another provider (fewer key exchanges, say).
pub fn client_config_with(
    ca_pem: &[u8],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.map_err(|e| TlsError::BadPem(e.to_string()))?)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// aws-lc-rs, the provider the whole workspace uses (never ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusts_the_given_ca_and_refuses_what_holds_none() {
        let ca = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../auth/tests/fixtures/ca_cert.pem")).unwrap();
        assert!(client_config(&ca).is_ok());
        assert!(matches!(client_config(b"no pem here"), Err(TlsError::NoCertificate)));
        let key = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../auth/tests/fixtures/ec_public.pem")).unwrap();
        assert!(matches!(client_config(&key), Err(TlsError::NoCertificate)));
    }
}
