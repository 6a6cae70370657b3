//! Checks of device credentials and registry CA certificates, with the rules of Cloud IoT Core.
//!
//! * [`check_device_key`] accepts a device public key in one of the four `PublicKeyFormat`s and
//!   returns the raw key that JWT verification needs, plus the parsed certificate for the X.509
//!   formats.
//! * [`parse_ca_certificate`] accepts a registry CA certificate (RSA or EC key).
//! * [`is_issued_by`] tells whether a device certificate was signed by a CA certificate.
//!
//! Every rejection is a [`KeyError`] whose text is meant for the API user: it names the expected
//! format and never carries parser internals. No input makes these functions panic.
//!
//! Certificates are parsed with `x509-parser` (without its `verify` feature); signatures are checked
//! with `aws-lc-rs`.
//!
//! The work is split by concern: [`pem`] decodes the paste, [`spki`] takes public keys apart,
//! [`x509`] reads certificates and their signatures, [`ec`] handles P-256 points. This module
//! holds the API-facing checks that tie them together.

mod ec;
mod pem;
mod spki;
#[cfg(test)]
mod tests;
mod x509;

use aws_lc_rs::signature::{self, ParsedPublicKey, UnparsedPublicKey, VerificationAlgorithm};
use ec::uncompressed_p256_point;
use ferrocore_model::{PublicKeyFormat, X509Details};
use pem::{describe_other_label, parse_single_pem, private_key_label};
use spki::{AnalyzedKey, Curve, analyze_spki, check_rsa, parse_spki};
use x509::{certificate_details, names_match, parse_certificate, verification_algorithm};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
// What the unit tests (`tests.rs`) reach through `use super::*`.
#[cfg(test)]
use {base64::Engine as _, ferrocore_model::Timestamp, spki::bit_length};

/// The signature algorithm family of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa,
    EcP256,
}

/// A rejected key or certificate. The message is user-facing: it says what is wrong and what the
/// expected format is, and never includes parser internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// An X.509 certificate that passed the checks, with the details the API reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCertificate {
    /// The certificate's DER encoding.
    pub der: Vec<u8>,
    pub details: X509Details,
    /// The family of the certificate's own (subject) public key: `Rsa`, or `EcP256` for EC keys.
    /// Device certificates are always on P-256; a CA certificate's EC key may also be on P-384 or
    /// P-521 (see [`parse_ca_certificate`]).
    pub algorithm: KeyAlgorithm,
}

/// A device public key that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    pub algorithm: KeyAlgorithm,
    /// The raw public key in the form aws-lc-rs `UnparsedPublicKey` takes for JWT verification:
    /// RSA: PKCS#1 RSAPublicKey DER; EC P-256: the uncompressed SEC1 point.
    pub public_key: Vec<u8>,
    /// Some for the `*_X509_PEM` formats.
    pub certificate: Option<ParsedCertificate>,
}

/// Checks a device public key given in `format`, as Cloud IoT Core did when a device credential
/// was created or updated.
///
/// `RSA_PEM` and `ES256_PEM` take exactly one `-----BEGIN PUBLIC KEY-----` block
/// (SubjectPublicKeyInfo); `RSA_X509_PEM` and `ES256_X509_PEM` take exactly one
/// `-----BEGIN CERTIFICATE-----` block (x509 v1 or v3). RSA keys need at least 2048 bits; EC keys
/// must be on P-256. Surrounding whitespace is ignored; anything else around the block is not.
pub fn check_device_key(format: PublicKeyFormat, pem: &str) -> Result<DeviceKey, KeyError> {
    let expected = DeviceFormat::of(format);
    if let Some(label) = private_key_label(pem) {
        let public_part = match expected {
            Some(expected) => expected.public_part(),
            None => "its public key or certificate".to_string(),
        };
        return Err(KeyError(format!(
            "The public key is a private key ('-----BEGIN {label}-----'). A private key must never be uploaded: \
             keep it on the device and upload only {public_part}."
        )));
    }
    let Some(expected) = expected else {
        return Err(KeyError(
            "The public key format must be specified: one of RSA_PEM, ES256_PEM, RSA_X509_PEM or ES256_X509_PEM."
                .to_string(),
        ));
    };
    let fail = |problem: &str| {
        KeyError(format!(
            "The public key is not a valid {} key: {problem}; expected {}.",
            expected.name(),
            expected.expectation()
        ))
    };
    let block = parse_single_pem(pem).map_err(|p| fail(&p))?;
    match (expected.x509, block.label.as_str()) {
        (false, "PUBLIC KEY") => {
            let spki = parse_spki(&block.der).map_err(|p| fail(&p))?;
            let public_key = device_key_bytes(&spki, expected, "it").map_err(|p| fail(&p))?;
            Ok(DeviceKey { algorithm: expected.algorithm, public_key, certificate: None })
        }
        (true, "CERTIFICATE") => {
            let cert = parse_certificate(&block.der).map_err(fail)?;
            let spki = analyze_spki(cert.public_key()).map_err(|p| fail(&p))?;
            let public_key = device_key_bytes(&spki, expected, "the certificate").map_err(|p| fail(&p))?;
            let details = certificate_details(&cert, &spki);
            Ok(DeviceKey {
                algorithm: expected.algorithm,
                public_key,
                certificate: Some(ParsedCertificate { der: block.der, details, algorithm: expected.algorithm }),
            })
        }
        (false, "CERTIFICATE") => Err(fail(&format!(
            "it is an X.509 certificate ('-----BEGIN CERTIFICATE-----'), which needs the format {}",
            expected.other_packaging().name()
        ))),
        (true, "PUBLIC KEY") => Err(fail(&format!(
            "it is a bare public key ('-----BEGIN PUBLIC KEY-----'), not a certificate; bare keys use the format {}",
            expected.other_packaging().name()
        ))),
        (_, label) => Err(fail(&describe_other_label(label))),
    }
}

/// Parses a registry CA certificate: exactly one `-----BEGIN CERTIFICATE-----` block holding an
/// X.509 certificate whose key is RSA (2048 to 8192 bits) or EC (P-256, P-384 or P-521).
///
/// [`ParsedCertificate::algorithm`] is [`KeyAlgorithm::Rsa`] for RSA keys and
/// [`KeyAlgorithm::EcP256`] for every EC key (the enum only names the device families);
/// [`X509Details::public_key_type`] is `"RSA"` or `"EC"`.
pub fn parse_ca_certificate(pem: &str) -> Result<ParsedCertificate, KeyError> {
    const EXPECTED: &str =
        "a PEM block '-----BEGIN CERTIFICATE-----' holding an X.509 certificate with an RSA or EC key";
    if let Some(label) = private_key_label(pem) {
        return Err(KeyError(format!(
            "The CA certificate is a private key ('-----BEGIN {label}-----'). A private key must never be uploaded: \
             upload only the CA's certificate, {EXPECTED}."
        )));
    }
    let fail = |problem: &str| KeyError(format!("The CA certificate is not valid: {problem}; expected {EXPECTED}."));
    let block = parse_single_pem(pem).map_err(|p| fail(&p))?;
    match block.label.as_str() {
        "CERTIFICATE" => {}
        "PUBLIC KEY" => return Err(fail("it is a bare public key ('-----BEGIN PUBLIC KEY-----'), not a certificate")),
        label => return Err(fail(&describe_other_label(label))),
    }
    let cert = parse_certificate(&block.der).map_err(fail)?;
    let spki = analyze_spki(cert.public_key()).map_err(|p| fail(&p))?;
    let algorithm = match &spki {
        AnalyzedKey::Rsa { pkcs1, bits } => {
            check_rsa(pkcs1, *bits, "the certificate").map_err(|p| fail(&p))?;
            KeyAlgorithm::Rsa
        }
        AnalyzedKey::Ec { curve, point } => {
            let alg: &'static dyn VerificationAlgorithm = match curve {
                Curve::P256 => &signature::ECDSA_P256_SHA256_ASN1,
                Curve::P384 => &signature::ECDSA_P384_SHA384_ASN1,
                Curve::P521 => &signature::ECDSA_P521_SHA512_ASN1,
                Curve::Other(name) => {
                    return Err(fail(&format!(
                        "the certificate holds an EC key on {name}, \
                         but only the curves P-256, P-384 and P-521 are supported"
                    )));
                }
            };
            if ParsedPublicKey::new(alg, point).is_err() {
                return Err(fail("the certificate's EC public key is not a valid point on its curve"));
            }
            KeyAlgorithm::EcP256
        }
        AnalyzedKey::Other(what) => {
            return Err(fail(&format!("the certificate holds {what}, but only RSA and EC keys are supported")));
        }
    };
    let details = certificate_details(&cert, &spki);
    Ok(ParsedCertificate { der: block.der, details, algorithm })
}

/// True when `cert`'s issuer equals `ca`'s subject and `ca`'s public key verifies `cert`'s
/// signature (RSA PKCS#1 v1.5 with SHA-256/384/512, RSA-PSS with SHA-256/384/512 and a salt as
/// long as the digest or as long as possible, ECDSA on P-256/P-384/P-521 with SHA-256/384/512).
/// Validity periods and CA extensions are not looked at.
pub fn is_issued_by(cert: &ParsedCertificate, ca: &ParsedCertificate) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (X509Certificate::from_der(&cert.der), X509Certificate::from_der(&ca.der))
    else {
        return false;
    };
    if !names_match(cert.issuer(), ca.subject()) {
        return false;
    }
    // The outer algorithm must repeat the signed one (RFC 5280 4.1.1.2).
    if cert.signature_algorithm != cert.tbs_certificate.signature || cert.signature_value.unused_bits != 0 {
        return false;
    }
    let Some(algorithm) = verification_algorithm(ca.public_key(), &cert.signature_algorithm) else {
        return false;
    };
    UnparsedPublicKey::new(algorithm, &ca.public_key().subject_public_key.data)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .is_ok()
}

/// The four device key formats, with what each expects.
#[derive(Clone, Copy)]
struct DeviceFormat {
    algorithm: KeyAlgorithm,
    x509: bool,
}

impl DeviceFormat {
    fn of(format: PublicKeyFormat) -> Option<Self> {
        let (algorithm, x509) = match format {
            PublicKeyFormat::Unspecified => return None,
            PublicKeyFormat::RsaPem => (KeyAlgorithm::Rsa, false),
            PublicKeyFormat::Es256Pem => (KeyAlgorithm::EcP256, false),
            PublicKeyFormat::RsaX509Pem => (KeyAlgorithm::Rsa, true),
            PublicKeyFormat::Es256X509Pem => (KeyAlgorithm::EcP256, true),
        };
        Some(Self { algorithm, x509 })
    }

    fn format(self) -> PublicKeyFormat {
        match (self.algorithm, self.x509) {
            (KeyAlgorithm::Rsa, false) => PublicKeyFormat::RsaPem,
            (KeyAlgorithm::EcP256, false) => PublicKeyFormat::Es256Pem,
            (KeyAlgorithm::Rsa, true) => PublicKeyFormat::RsaX509Pem,
            (KeyAlgorithm::EcP256, true) => PublicKeyFormat::Es256X509Pem,
        }
    }

    fn name(self) -> &'static str {
        self.format().name()
    }

    /// The same key family in the other packaging (bare key <-> certificate).
    fn other_packaging(self) -> PublicKeyFormat {
        Self { x509: !self.x509, ..self }.format()
    }

    /// The same packaging for the other key family.
    fn other_family(self) -> PublicKeyFormat {
        let algorithm = match self.algorithm {
            KeyAlgorithm::Rsa => KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP256 => KeyAlgorithm::Rsa,
        };
        Self { algorithm, ..self }.format()
    }

    fn expectation(self) -> &'static str {
        match self.format() {
            PublicKeyFormat::RsaPem => "a PEM block '-----BEGIN PUBLIC KEY-----' holding an RSA key",
            PublicKeyFormat::Es256Pem => {
                "a PEM block '-----BEGIN PUBLIC KEY-----' holding an EC key on the P-256 curve"
            }
            PublicKeyFormat::RsaX509Pem => {
                "a PEM block '-----BEGIN CERTIFICATE-----' holding an X.509 certificate for an RSA key"
            }
            _ => {
                "a PEM block '-----BEGIN CERTIFICATE-----' holding an X.509 certificate \
                 for an EC key on the P-256 curve"
            }
        }
    }

    /// What to upload instead of a private key.
    fn public_part(self) -> String {
        let how = if self.x509 {
            "the device's certificate (for example from `openssl req -x509 -key private.pem -subj /CN=unused`)"
        } else {
            "the public key (for example from `openssl pkey -in private.pem -pubout`)"
        };
        format!("{how}; {} expects {}", self.name(), self.expectation())
    }
}

/// Checks a device key against the expected format and returns the raw key for JWT verification.
/// `holder` is "it" or "the certificate", for messages.
fn device_key_bytes(key: &AnalyzedKey, expected: DeviceFormat, holder: &str) -> Result<Vec<u8>, String> {
    match (key, expected.algorithm) {
        (AnalyzedKey::Rsa { pkcs1, bits }, KeyAlgorithm::Rsa) => {
            check_rsa(pkcs1, *bits, holder)?;
            Ok(pkcs1.clone())
        }
        (AnalyzedKey::Ec { curve: Curve::P256, point }, KeyAlgorithm::EcP256) => {
            let point = uncompressed_p256_point(point)
                .ok_or_else(|| format!("{holder} holds an EC public key that is not a valid P-256 point"))?;
            ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
                .map_err(|_| format!("{holder} holds an EC public key that is not a valid P-256 point"))?;
            Ok(point)
        }
        (AnalyzedKey::Ec { curve, .. }, KeyAlgorithm::EcP256) => {
            let name = match curve {
                Curve::P384 => "the P-384 curve".to_string(),
                Curve::P521 => "the P-521 curve".to_string(),
                Curve::P256 => "the P-256 curve".to_string(),
                Curve::Other(name) => name.clone(),
            };
            Err(format!("{holder} holds an EC key on {name}, but ES256 requires the P-256 curve (prime256v1)"))
        }
        (AnalyzedKey::Rsa { .. }, KeyAlgorithm::EcP256) => Err(format!(
            "{holder} holds an RSA key, not an EC key (RSA keys use the format {})",
            expected.other_family().name()
        )),
        (AnalyzedKey::Ec { .. }, KeyAlgorithm::Rsa) => Err(format!(
            "{holder} holds an EC key, not an RSA key (EC P-256 keys use the format {})",
            expected.other_family().name()
        )),
        (AnalyzedKey::Other(what), _) => Err(format!("{holder} holds {what}")),
    }
}
