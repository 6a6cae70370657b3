//! Fuzz target: device public keys and registry CA certificates as the API receives them
//! (`ferrocore_auth::check_device_key`, `parse_ca_certificate`, `is_issued_by`): PEM framing,
//! then SubjectPublicKeyInfo and X.509 DER.
//!
//! Input layout: `mode: u8 | rest`.
//!
//! * `mode & 8 == 0`: `rest` is the PEM text a client uploaded (lossily made UTF-8), checked as
//!   the device key format `mode & 7` picks (4 and up: unspecified) and as a CA certificate.
//! * `mode & 8 != 0`: `rest` is DER, wrapped here in one PEM block labelled `CERTIFICATE` (or
//!   `PUBLIC KEY` when `mode & 16`), so the fuzzer works on the ASN.1 parsers directly.
//!
//! Whatever parses is then checked against the fixture CA and device certificate in both roles
//! with `is_issued_by`. Checks beyond "no panic": an accepted key has the shape its format
//! promises (65-byte uncompressed point for ES256, a certificate exactly for the X.509 formats),
//! and every refusal is a non-empty message.

#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ferrocore_auth::{KeyAlgorithm, ParsedCertificate, check_device_key, is_issued_by, parse_ca_certificate};
use ferrocore_model::PublicKeyFormat;
use libfuzzer_sys::fuzz_target;

static CA: LazyLock<ParsedCertificate> = LazyLock::new(|| {
    parse_ca_certificate(include_str!("../../crates/auth/tests/fixtures/ca_cert.pem")).expect("fixture CA")
});

static DEVICE: LazyLock<ParsedCertificate> = LazyLock::new(|| {
    check_device_key(
        PublicKeyFormat::Es256X509Pem,
        include_str!("../../crates/auth/tests/fixtures/device_signed_by_ca.pem"),
    )
    .expect("fixture device certificate")
    .certificate
    .expect("an X.509 format yields a certificate")
});

const FORMATS: [PublicKeyFormat; 5] = [
    PublicKeyFormat::RsaX509Pem,
    PublicKeyFormat::Es256Pem,
    PublicKeyFormat::RsaPem,
    PublicKeyFormat::Es256X509Pem,
    PublicKeyFormat::Unspecified,
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let pem = if mode & 8 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let label = if mode & 16 != 0 { "PUBLIC KEY" } else { "CERTIFICATE" };
        let body = STANDARD.encode(rest);
        let lines: Vec<&str> =
            body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    };

    let format = FORMATS[usize::from(mode & 7).min(FORMATS.len() - 1)];
    let mut parsed = Vec::new();
    match check_device_key(format, &pem) {
        Ok(key) => {
            assert_ne!(format, PublicKeyFormat::Unspecified, "a key accepted without a format");
            match key.algorithm {
                KeyAlgorithm::EcP256 => {
                    assert!(matches!(format, PublicKeyFormat::Es256Pem | PublicKeyFormat::Es256X509Pem));
                    assert_eq!(key.public_key.len(), 65, "an ES256 key is an uncompressed P-256 point");
                    assert_eq!(key.public_key[0], 4);
                }
                KeyAlgorithm::Rsa => {
                    assert!(matches!(format, PublicKeyFormat::RsaPem | PublicKeyFormat::RsaX509Pem));
                    assert!(!key.public_key.is_empty());
                }
            }
            assert_eq!(key.certificate.is_some(), format.is_x509());
            parsed.extend(key.certificate);
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
    match parse_ca_certificate(&pem) {
        Ok(ca) => parsed.push(ca),
        Err(e) => assert!(!e.0.is_empty()),
    }
    for cert in &parsed {
        // Any answer will do; the question is whether asking can go wrong.
        let _ = is_issued_by(cert, &CA);
        let _ = is_issued_by(&DEVICE, cert);
        let _ = is_issued_by(cert, cert);
    }
});
