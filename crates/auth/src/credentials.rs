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

use aws_lc_rs::signature::{
    self, ParsedPublicKey, RsaParameters, RsaPssSaltLength, UnparsedPublicKey, VerificationAlgorithm,
};
use base64::Engine as _;
use ferrocore_model::{PublicKeyFormat, Timestamp, X509Details};
use x509_parser::certificate::X509Certificate;
use x509_parser::num_bigint::BigUint;
use x509_parser::objects::oid_registry;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_HASH_SHA1, OID_KEY_TYPE_DSA, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_MD5_WITH_RSA, OID_NIST_EC_P384,
    OID_NIST_EC_P521, OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_MD5WITHRSAENC,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA224WITHRSA,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SHA1_WITH_RSA,
    OID_SIG_DSA_WITH_SHA1, OID_SIG_ECDSA_WITH_SHA224, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    OID_SIG_ECDSA_WITH_SHA512, OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo, X509Name};

/// The smallest RSA modulus accepted, in bits (Cloud IoT Core's rule).
const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted, in bits: aws-lc-rs verifies RSA signatures up to this size.
const MAX_RSA_BITS: usize = 8192;

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

/// One decoded PEM block.
struct PemBlock {
    label: String,
    der: Vec<u8>,
}

/// The label of a private key block anywhere in `input`, if there is one.
fn private_key_label(input: &str) -> Option<String> {
    if input.contains("PuTTY-User-Key-File") {
        return Some("PuTTY PRIVATE KEY".to_string());
    }
    input
        .lines()
        .filter_map(|line| begin_label(line.trim()))
        .find(|label| label.contains("PRIVATE KEY"))
        .map(|label| if is_plain_label(label) { label.to_string() } else { "PRIVATE KEY".to_string() })
}

fn begin_label(line: &str) -> Option<&str> {
    line.strip_prefix("-----BEGIN ")?.strip_suffix("-----")
}

fn end_label(line: &str) -> Option<&str> {
    line.strip_prefix("-----END ")?.strip_suffix("-----")
}

/// Whether a PEM label is safe and short enough to quote back to the user.
fn is_plain_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 40
        && label.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ')
}

/// Decodes `input` as exactly one PEM block with nothing but whitespace around it.
/// The error is a user-facing problem description ("it ...").
fn parse_single_pem(input: &str) -> Result<PemBlock, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("it is empty".to_string());
    }
    if !text.contains("-----BEGIN") {
        let openssh = ["ssh-rsa ", "ssh-ed25519 ", "ecdsa-sha2-", "---- BEGIN SSH2 PUBLIC KEY ----"];
        if openssh.iter().any(|prefix| text.starts_with(prefix)) {
            return Err("it is an SSH public key, not a PEM block".to_string());
        }
        return Err("it is not PEM-encoded (there is no '-----BEGIN' line)".to_string());
    }
    if text.contains("\\n") {
        return Err("it contains the two characters '\\n' where line breaks should be".to_string());
    }
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let mut blocks = Vec::new();
    while let Some(line) = lines.next() {
        let Some(label) = begin_label(line) else {
            return Err(if blocks.is_empty() {
                "it has unexpected text before the '-----BEGIN' line".to_string()
            } else {
                "it has unexpected text after the '-----END' line".to_string()
            });
        };
        let mut body = String::new();
        let mut ended = false;
        for line in lines.by_ref() {
            if let Some(end) = end_label(line) {
                if end != label {
                    return Err("its '-----END' line does not match its '-----BEGIN' line".to_string());
                }
                ended = true;
                break;
            }
            if line.starts_with("-----") {
                return Err("its PEM block is not closed by an '-----END' line".to_string());
            }
            body.extend(line.chars().filter(|c| !c.is_whitespace()));
        }
        if !ended {
            return Err("its PEM block is not closed by an '-----END' line".to_string());
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| "the content of its PEM block is not valid base64".to_string())?;
        if der.is_empty() {
            return Err("its PEM block is empty".to_string());
        }
        blocks.push(PemBlock { label: label.to_string(), der });
    }
    if blocks.len() > 1 {
        return Err(format!("it holds {} PEM blocks, but exactly one is allowed", blocks.len()));
    }
    blocks.pop().ok_or_else(|| "it is not PEM-encoded (there is no '-----BEGIN' line)".to_string())
}

/// A problem description for a PEM block of an unexpected type.
fn describe_other_label(label: &str) -> String {
    match label {
        "RSA PUBLIC KEY" => "it is a PKCS#1 RSA public key ('-----BEGIN RSA PUBLIC KEY-----'); convert it to a \
                             SubjectPublicKeyInfo with `openssl rsa -RSAPublicKey_in -in key.pem -pubout`"
            .to_string(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => {
            "it is a certificate signing request, not a certificate or a public key".to_string()
        }
        "EC PARAMETERS" => "it holds only EC curve parameters ('-----BEGIN EC PARAMETERS-----'), not a key".to_string(),
        label if is_plain_label(label) => format!("it is a PEM block of type '-----BEGIN {label}-----'"),
        _ => "it is a PEM block of an unexpected type".to_string(),
    }
}

/// An elliptic curve, as far as these checks care.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
    /// Any other curve (or explicit curve parameters), described for messages.
    Other(String),
}

/// A public key taken apart.
enum AnalyzedKey {
    Rsa {
        pkcs1: Vec<u8>,
        bits: usize,
    },
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    /// Some other kind of key, described for messages ("a DSA key").
    Other(String),
}

/// Parses one DER certificate with nothing after it. The error is a user-facing problem description.
fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, &'static str> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("the certificate is followed by unexpected data inside the PEM block"),
        Err(_) => Err("the PEM block does not hold a valid X.509 certificate"),
    }
}

fn parse_spki(der: &[u8]) -> Result<AnalyzedKey, String> {
    match SubjectPublicKeyInfo::from_der(der) {
        Ok(([], spki)) => analyze_spki(&spki),
        Ok(_) => Err("the public key is followed by unexpected data inside the PEM block".to_string()),
        Err(_) => Err("the PEM block does not hold a valid SubjectPublicKeyInfo structure".to_string()),
    }
}

fn analyze_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<AnalyzedKey, String> {
    let oid = &spki.algorithm.algorithm;
    let key = &spki.subject_public_key;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err("its RSA public key is malformed".to_string());
        };
        if key.unused_bits != 0 {
            return Err("its RSA public key is malformed".to_string());
        }
        return Ok(AnalyzedKey::Rsa { pkcs1: key.data.to_vec(), bits: bit_length(rsa.modulus) });
    }
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        if key.unused_bits != 0 {
            return Err("its EC public key is malformed".to_string());
        }
        let curve = match spki.algorithm.parameters.as_ref().map(|p| p.as_oid()) {
            Some(Ok(c)) if c == OID_EC_P256 => Curve::P256,
            Some(Ok(c)) if c == OID_NIST_EC_P384 => Curve::P384,
            Some(Ok(c)) if c == OID_NIST_EC_P521 => Curve::P521,
            Some(Ok(c)) => Curve::Other(match c.to_id_string().as_str() {
                "1.3.132.0.10" => "the curve secp256k1".to_string(),
                "1.2.840.10045.3.1.1" => "the curve P-192".to_string(),
                "1.3.132.0.33" => "the curve P-224".to_string(),
                id if id.starts_with("1.3.36.3.3.2.8.1.1.") => "a Brainpool curve".to_string(),
                _ => "an unsupported curve".to_string(),
            }),
            _ => Curve::Other("a curve given by explicit parameters rather than by name".to_string()),
        };
        return Ok(AnalyzedKey::Ec { curve, point: key.data.to_vec() });
    }
    let what = if *oid == OID_KEY_TYPE_DSA {
        "a DSA key"
    } else {
        match oid.to_id_string().as_str() {
            "1.3.101.112" => "an Ed25519 key",
            "1.3.101.113" => "an Ed448 key",
            "1.2.840.113549.1.1.10" => "an RSA-PSS-only key",
            _ => "a key of an unsupported type",
        }
    };
    Ok(AnalyzedKey::Other(what.to_string()))
}

/// The number of significant bits of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    let Some(first) = bytes.iter().position(|&b| b != 0) else {
        return 0;
    };
    (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize
}

fn check_rsa(pkcs1: &[u8], bits: usize, holder: &str) -> Result<(), String> {
    if bits < MIN_RSA_BITS {
        return Err(format!("{holder} holds a {bits}-bit RSA key, but RSA keys must be at least {MIN_RSA_BITS} bits"));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!("{holder} holds a {bits}-bit RSA key, but RSA keys can be at most {MAX_RSA_BITS} bits"));
    }
    ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, pkcs1)
        .map(|_| ())
        .map_err(|_| format!("{holder} holds an RSA public key that is not usable (bad modulus or exponent)"))
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

/// The uncompressed SEC1 form of a P-256 point given compressed or uncompressed; None when the
/// encoding is wrong or the x coordinate has no point. Whether an uncompressed point lies on the
/// curve is left to aws-lc-rs.
fn uncompressed_p256_point(point: &[u8]) -> Option<Vec<u8>> {
    match point {
        [0x04, rest @ ..] if rest.len() == 64 => Some(point.to_vec()),
        [prefix @ (0x02 | 0x03), x @ ..] if x.len() == 32 => {
            // y² = x³ - 3x + b (mod p); p ≡ 3 (mod 4), so a square root is rhs^((p+1)/4).
            let p = BigUint::from_bytes_be(&P256_P);
            let b = BigUint::from_bytes_be(&P256_B);
            let x = BigUint::from_bytes_be(x);
            if x >= p {
                return None;
            }
            let three_x = (&x * 3u32) % &p;
            let rhs = ((&x * &x % &p * &x) % &p + &p - three_x + b) % &p;
            let y = rhs.modpow(&((&p + 1u32) >> 2), &p);
            if (&y * &y) % &p != rhs {
                return None;
            }
            let odd = y.bit(0);
            let y = if odd == (*prefix == 0x03) {
                y
            } else if y == BigUint::from(0u32) {
                return None;
            } else {
                &p - y
            };
            let mut out = vec![0x04];
            out.extend(left_pad_32(&x.to_bytes_be()));
            out.extend(left_pad_32(&y.to_bytes_be()));
            Some(out)
        }
        _ => None,
    }
}

fn left_pad_32(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32usize.saturating_sub(bytes.len())];
    out.extend_from_slice(bytes);
    out
}

const P256_P: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
];
const P256_B: [u8; 32] = [
    0x5a, 0xc6, 0x35, 0xd8, 0xaa, 0x3a, 0x93, 0xe7, 0xb3, 0xeb, 0xbd, 0x55, 0x76, 0x98, 0x86, 0xbc, 0x65, 0x1d, 0x06,
    0xb0, 0xcc, 0x53, 0xb0, 0xf6, 0x3b, 0xce, 0x3c, 0x3e, 0x27, 0xd2, 0x60, 0x4b,
];

fn certificate_details(cert: &X509Certificate<'_>, key: &AnalyzedKey) -> X509Details {
    let validity = cert.validity();
    X509Details {
        issuer: name_string(cert.issuer()),
        subject: name_string(cert.subject()),
        start_time: Some(Timestamp::from_unix_seconds(validity.not_before.timestamp())),
        expiry_time: Some(Timestamp::from_unix_seconds(validity.not_after.timestamp())),
        signature_algorithm: signature_algorithm_name(&cert.signature_algorithm),
        public_key_type: match key {
            AnalyzedKey::Rsa { .. } => "RSA",
            AnalyzedKey::Ec { .. } => "EC",
            AnalyzedKey::Other(_) => "",
        }
        .to_string(),
    }
}

/// A distinguished name as x509-parser prints it ("O=Ferrocore, CN=device-1"); empty if it
/// cannot be printed.
fn name_string(name: &X509Name<'_>) -> String {
    name.to_string_with_registry(oid_registry()).unwrap_or_default()
}

fn names_match(a: &X509Name<'_>, b: &X509Name<'_>) -> bool {
    if a.as_raw() == b.as_raw() {
        return true;
    }
    // Same names in different string types (PrintableString vs UTF8String) or letter case.
    match (a.to_string_with_registry(oid_registry()), b.to_string_with_registry(oid_registry())) {
        (Ok(a), Ok(b)) => !a.is_empty() && a.eq_ignore_ascii_case(&b),
        _ => false,
    }
}

/// The name reported in `X509Details::signature_algorithm`, e.g. `SHA256_WITH_RSA`.
fn signature_algorithm_name(alg: &AlgorithmIdentifier<'_>) -> String {
    let oid = &alg.algorithm;
    let name = if *oid == OID_PKCS1_SHA256WITHRSA {
        "SHA256_WITH_RSA"
    } else if *oid == OID_PKCS1_SHA384WITHRSA {
        "SHA384_WITH_RSA"
    } else if *oid == OID_PKCS1_SHA512WITHRSA {
        "SHA512_WITH_RSA"
    } else if *oid == OID_PKCS1_SHA224WITHRSA {
        "SHA224_WITH_RSA"
    } else if *oid == OID_PKCS1_SHA1WITHRSA || *oid == OID_SHA1_WITH_RSA {
        "SHA1_WITH_RSA"
    } else if *oid == OID_PKCS1_MD5WITHRSAENC || *oid == OID_MD5_WITH_RSA {
        "MD5_WITH_RSA"
    } else if *oid == OID_SIG_ECDSA_WITH_SHA256 {
        "ECDSA_WITH_SHA256"
    } else if *oid == OID_SIG_ECDSA_WITH_SHA384 {
        "ECDSA_WITH_SHA384"
    } else if *oid == OID_SIG_ECDSA_WITH_SHA512 {
        "ECDSA_WITH_SHA512"
    } else if *oid == OID_SIG_ECDSA_WITH_SHA224 {
        "ECDSA_WITH_SHA224"
    } else if *oid == OID_SIG_ED25519 {
        "ED25519"
    } else if *oid == OID_SIG_ED448 {
        "ED448"
    } else if *oid == OID_SIG_DSA_WITH_SHA1 {
        "DSA_WITH_SHA1"
    } else if *oid == OID_PKCS1_RSASSAPSS {
        let params = alg.parameters.as_ref().and_then(|p| RsaSsaPssParams::try_from(p).ok());
        match params.as_ref().map(|params| params.hash_algorithm_oid()) {
            Some(h) if *h == OID_NIST_HASH_SHA256 => "SHA256_WITH_RSA_PSS",
            Some(h) if *h == OID_NIST_HASH_SHA384 => "SHA384_WITH_RSA_PSS",
            Some(h) if *h == OID_NIST_HASH_SHA512 => "SHA512_WITH_RSA_PSS",
            Some(h) if *h == OID_HASH_SHA1 => "SHA1_WITH_RSA_PSS",
            _ => "RSA_PSS",
        }
    } else {
        return oid.to_id_string();
    };
    name.to_string()
}

/// Hash functions usable in certificate signatures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(oid: &x509_parser::asn1_rs::Oid<'_>) -> Option<Self> {
        if *oid == OID_NIST_HASH_SHA256 {
            Some(Self::Sha256)
        } else if *oid == OID_NIST_HASH_SHA384 {
            Some(Self::Sha384)
        } else if *oid == OID_NIST_HASH_SHA512 {
            Some(Self::Sha512)
        } else {
            None
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

static RSA_PSS_SHA256_MAX_SALT: RsaParameters =
    signature::RSA_PSS_2048_8192_SHA256.with_pss_salt_length(RsaPssSaltLength::Max);
static RSA_PSS_SHA384_MAX_SALT: RsaParameters =
    signature::RSA_PSS_2048_8192_SHA384.with_pss_salt_length(RsaPssSaltLength::Max);
static RSA_PSS_SHA512_MAX_SALT: RsaParameters =
    signature::RSA_PSS_2048_8192_SHA512.with_pss_salt_length(RsaPssSaltLength::Max);

/// The aws-lc-rs algorithm that checks a signature made with `sig` by the key `signer`, if supported.
fn verification_algorithm(
    signer: &SubjectPublicKeyInfo<'_>,
    sig: &AlgorithmIdentifier<'_>,
) -> Option<&'static dyn VerificationAlgorithm> {
    let oid = &sig.algorithm;
    match analyze_spki(signer).ok()? {
        AnalyzedKey::Rsa { bits, .. } => {
            if *oid == OID_PKCS1_SHA256WITHRSA {
                Some(&signature::RSA_PKCS1_2048_8192_SHA256)
            } else if *oid == OID_PKCS1_SHA384WITHRSA {
                Some(&signature::RSA_PKCS1_2048_8192_SHA384)
            } else if *oid == OID_PKCS1_SHA512WITHRSA {
                Some(&signature::RSA_PKCS1_2048_8192_SHA512)
            } else if *oid == OID_PKCS1_RSASSAPSS {
                rsa_pss_algorithm(sig, bits)
            } else {
                None
            }
        }
        AnalyzedKey::Ec { curve, .. } => {
            let hash = if *oid == OID_SIG_ECDSA_WITH_SHA256 {
                Hash::Sha256
            } else if *oid == OID_SIG_ECDSA_WITH_SHA384 {
                Hash::Sha384
            } else if *oid == OID_SIG_ECDSA_WITH_SHA512 {
                Hash::Sha512
            } else {
                return None;
            };
            // ecdsa-with-SHA* identifiers carry no parameters (RFC 5758 3.2).
            if sig.parameters.is_some() {
                return None;
            }
            Some(match (curve, hash) {
                (Curve::P256, Hash::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
                (Curve::P256, Hash::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
                (Curve::P256, Hash::Sha512) => &signature::ECDSA_P256_SHA512_ASN1,
                (Curve::P384, Hash::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
                (Curve::P384, Hash::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
                (Curve::P384, Hash::Sha512) => &signature::ECDSA_P384_SHA512_ASN1,
                (Curve::P521, Hash::Sha256) => &signature::ECDSA_P521_SHA256_ASN1,
                (Curve::P521, Hash::Sha384) => &signature::ECDSA_P521_SHA384_ASN1,
                (Curve::P521, Hash::Sha512) => &signature::ECDSA_P521_SHA512_ASN1,
                (Curve::Other(_), _) => return None,
            })
        }
        AnalyzedKey::Other(_) => None,
    }
}

/// RSASSA-PSS with SHA-2, MGF1 over the same hash, trailer 1, and a salt as long as the digest or
/// the longest possible (OpenSSL's default).
fn rsa_pss_algorithm(sig: &AlgorithmIdentifier<'_>, key_bits: usize) -> Option<&'static dyn VerificationAlgorithm> {
    let params = RsaSsaPssParams::try_from(sig.parameters.as_ref()?).ok()?;
    let hash = Hash::from_oid(params.hash_algorithm_oid())?;
    let mgf = params.mask_gen_algorithm().ok()?;
    if mgf.mgf.to_id_string() != "1.2.840.113549.1.1.8" || Hash::from_oid(&mgf.hash) != Some(hash) {
        return None;
    }
    if params.trailer_field() != 1 {
        return None;
    }
    let salt = usize::try_from(params.salt_length()).ok()?;
    // emLen = ceil((modBits - 1) / 8); the longest salt is emLen - hLen - 2 (RFC 8017 9.1.1).
    let max_salt = ((key_bits + 6) / 8).checked_sub(hash.len() + 2)?;
    if salt == hash.len() {
        Some(match hash {
            Hash::Sha256 => &signature::RSA_PSS_2048_8192_SHA256,
            Hash::Sha384 => &signature::RSA_PSS_2048_8192_SHA384,
            Hash::Sha512 => &signature::RSA_PSS_2048_8192_SHA512,
        })
    } else if salt == max_salt {
        Some(match hash {
            Hash::Sha256 => &RSA_PSS_SHA256_MAX_SALT,
            Hash::Sha384 => &RSA_PSS_SHA384_MAX_SALT,
            Hash::Sha512 => &RSA_PSS_SHA512_MAX_SALT,
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};

    use crate::test_fixtures::*;

    const EC_P384_PUBLIC: &str = fixture!("ec_p384_public.pem");
    const RSA1024_PUBLIC: &str = fixture!("rsa1024_public.pem");
    const CA_KEY: &str = fixture!("ca_key.pem");
    const CA_CERT: &str = fixture!("ca_cert.pem");
    const DEVICE_SIGNED_BY_CA: &str = fixture!("device_signed_by_ca.pem");
    const DEVICE_SIGNED_BY_CA_KEY: &str = fixture!("device_signed_by_ca_key.pem");
    const DEVICE_SIGNED_BY_CA_PSS: &str = fixture!("device_signed_by_ca_pss.pem");
    const DEVICE_SIGNED_BY_CA_PSS_MAX: &str = fixture!("device_signed_by_ca_pss_max.pem");
    const EC_CA_KEY: &str = fixture!("ec_ca_key.pem");
    const EC_CA_CERT: &str = fixture!("ec_ca_cert.pem");
    const DEVICE_SIGNED_BY_EC_CA: &str = fixture!("device_signed_by_ec_ca.pem");
    const DEVICE_SIGNED_BY_EC_CA_KEY: &str = fixture!("device_signed_by_ec_ca_key.pem");

    const ALL_FIXTURES: &[&str] = &[
        RSA_PRIVATE,
        RSA_PUBLIC,
        RSA_CERT,
        EC_PRIVATE,
        EC_PUBLIC,
        EC_CERT,
        EC_P384_PUBLIC,
        RSA1024_PUBLIC,
        CA_KEY,
        CA_CERT,
        DEVICE_SIGNED_BY_CA,
        DEVICE_SIGNED_BY_CA_KEY,
        DEVICE_SIGNED_BY_CA_PSS,
        DEVICE_SIGNED_BY_CA_PSS_MAX,
        EC_CA_KEY,
        EC_CA_CERT,
        DEVICE_SIGNED_BY_EC_CA,
        DEVICE_SIGNED_BY_EC_CA_KEY,
    ];

    const ALL_FORMATS: [PublicKeyFormat; 5] = [
        PublicKeyFormat::Unspecified,
        PublicKeyFormat::RsaPem,
        PublicKeyFormat::Es256Pem,
        PublicKeyFormat::RsaX509Pem,
        PublicKeyFormat::Es256X509Pem,
    ];

    // Validity of the fixture certificates (generated 2026-11-26 with -days 36500).
    const RSA_CERT_START: i64 = 1_795_696_058;
    const RSA_CERT_END: i64 = 4_949_296_058;
    const CA_START: i64 = 1_795_696_059;
    const CA_END: i64 = 4_949_296_059;

    fn ok(format: PublicKeyFormat, pem: &str) -> DeviceKey {
        match check_device_key(format, pem) {
            Ok(key) => key,
            Err(e) => panic!("{format} rejected: {e}"),
        }
    }

    /// The rejection message, checked for the common shape.
    fn err(format: PublicKeyFormat, pem: &str) -> String {
        let message = match check_device_key(format, pem) {
            Ok(_) => panic!("{format} accepted input it should reject:\n{pem}"),
            Err(KeyError(message)) => message,
        };
        assert_user_facing(&message);
        message
    }

    fn ca(pem: &str) -> ParsedCertificate {
        match parse_ca_certificate(pem) {
            Ok(cert) => cert,
            Err(e) => panic!("CA rejected: {e}"),
        }
    }

    fn ca_err(pem: &str) -> String {
        let message = match parse_ca_certificate(pem) {
            Ok(_) => panic!("CA certificate accepted input it should reject:\n{pem}"),
            Err(KeyError(message)) => message,
        };
        assert_user_facing(&message);
        assert!(message.starts_with("The CA certificate "), "{message}");
        message
    }

    fn device_cert(format: PublicKeyFormat, pem: &str) -> ParsedCertificate {
        ok(format, pem).certificate.expect("x509 formats return the certificate")
    }

    fn assert_user_facing(message: &str) {
        for internal in ["Error", "error", "{", "}", "Der", "nom", "Incomplete", "Some(", "None", "0x"] {
            assert!(!message.contains(internal), "message leaks internals ({internal}): {message}");
        }
        assert!(message.ends_with('.'), "{message}");
    }

    fn der_of(pem: &str) -> Vec<u8> {
        match parse_single_pem(pem) {
            Ok(block) => block.der,
            Err(p) => panic!("fixture is not PEM: {p}"),
        }
    }

    fn to_pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    fn rsa_sign(private_pem: &str, message: &[u8]) -> Vec<u8> {
        let pair = RsaKeyPair::from_pkcs8(&der_of(private_pem)).unwrap();
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig).unwrap();
        sig
    }

    fn es256_sign(private_pem: &str, message: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der_of(private_pem)).unwrap();
        let sig = pair.sign(&SystemRandom::new(), message).unwrap();
        (sig.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
    }

    // ---- accepted keys -------------------------------------------------------------------

    #[test]
    fn rsa_pem_is_accepted_and_verifies_rs256() {
        let key = ok(PublicKeyFormat::RsaPem, RSA_PUBLIC);
        assert_eq!(key.algorithm, KeyAlgorithm::Rsa);
        assert!(key.certificate.is_none());
        let message = b"header.payload";
        let sig = rsa_sign(RSA_PRIVATE, message);
        let public = UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &key.public_key);
        assert!(public.verify(message, &sig).is_ok());
        assert!(public.verify(b"header.payloaD", &sig).is_err());
    }

    #[test]
    fn es256_pem_is_accepted_and_verifies_es256() {
        let key = ok(PublicKeyFormat::Es256Pem, EC_PUBLIC);
        assert_eq!(key.algorithm, KeyAlgorithm::EcP256);
        assert!(key.certificate.is_none());
        assert_eq!(key.public_key.len(), 65);
        assert_eq!(key.public_key[0], 0x04);
        let message = b"header.payload";
        let (sig, point) = es256_sign(EC_PRIVATE, message);
        assert_eq!(key.public_key, point);
        let public = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &key.public_key);
        assert!(public.verify(message, &sig).is_ok());
        assert!(public.verify(b"header.payloaD", &sig).is_err());
    }

    #[test]
    fn rsa_x509_pem_is_accepted_with_details() {
        let key = ok(PublicKeyFormat::RsaX509Pem, RSA_CERT);
        assert_eq!(key.algorithm, KeyAlgorithm::Rsa);
        assert_eq!(key.public_key, ok(PublicKeyFormat::RsaPem, RSA_PUBLIC).public_key);
        let cert = key.certificate.unwrap();
        assert_eq!(cert.algorithm, KeyAlgorithm::Rsa);
        assert_eq!(cert.der, der_of(RSA_CERT));
        assert_eq!(
            cert.details,
            X509Details {
                issuer: "CN=unused".to_string(),
                subject: "CN=unused".to_string(),
                start_time: Some(Timestamp::from_unix_seconds(RSA_CERT_START)),
                expiry_time: Some(Timestamp::from_unix_seconds(RSA_CERT_END)),
                signature_algorithm: "SHA256_WITH_RSA".to_string(),
                public_key_type: "RSA".to_string(),
            }
        );
    }

    #[test]
    fn es256_x509_pem_is_accepted_with_details() {
        let key = ok(PublicKeyFormat::Es256X509Pem, EC_CERT);
        assert_eq!(key.algorithm, KeyAlgorithm::EcP256);
        assert_eq!(key.public_key, ok(PublicKeyFormat::Es256Pem, EC_PUBLIC).public_key);
        let details = key.certificate.unwrap().details;
        assert_eq!(details.issuer, "CN=unused");
        assert_eq!(details.subject, "CN=unused");
        assert_eq!(details.signature_algorithm, "ECDSA_WITH_SHA256");
        assert_eq!(details.public_key_type, "EC");
        assert_eq!(details.start_time, Some(Timestamp::from_unix_seconds(RSA_CERT_START)));
        assert_eq!(details.expiry_time, Some(Timestamp::from_unix_seconds(RSA_CERT_END)));
    }

    #[test]
    fn x509_v1_device_certificate_is_accepted() {
        let der = der_of(DEVICE_SIGNED_BY_CA);
        let (_, parsed) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(parsed.version().0, 0, "fixture should be x509 v1");

        let key = ok(PublicKeyFormat::Es256X509Pem, DEVICE_SIGNED_BY_CA);
        let message = b"header.payload";
        let (sig, point) = es256_sign(DEVICE_SIGNED_BY_CA_KEY, message);
        assert_eq!(key.public_key, point);
        assert!(
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &key.public_key).verify(message, &sig).is_ok()
        );
        let details = key.certificate.unwrap().details;
        assert_eq!(
            details,
            X509Details {
                issuer: "O=Ferrocore, CN=Ferrocore Test RSA CA".to_string(),
                subject: "CN=device-signed-by-ca".to_string(),
                start_time: Some(Timestamp::from_unix_seconds(CA_START)),
                expiry_time: Some(Timestamp::from_unix_seconds(CA_END)),
                signature_algorithm: "SHA256_WITH_RSA".to_string(),
                public_key_type: "EC".to_string(),
            }
        );
    }

    #[test]
    fn ca_signed_v3_device_certificate_is_accepted() {
        let key = ok(PublicKeyFormat::Es256X509Pem, DEVICE_SIGNED_BY_EC_CA);
        let (_, point) = es256_sign(DEVICE_SIGNED_BY_EC_CA_KEY, b"x");
        assert_eq!(key.public_key, point);
        let details = key.certificate.unwrap().details;
        assert_eq!(details.issuer, "O=Ferrocore, CN=Ferrocore Test EC CA");
        assert_eq!(details.subject, "CN=device-signed-by-ec-ca");
        assert_eq!(details.signature_algorithm, "ECDSA_WITH_SHA384");
        assert_eq!(details.public_key_type, "EC");
    }

    #[test]
    fn pss_signature_algorithm_is_named() {
        let details = device_cert(PublicKeyFormat::Es256X509Pem, DEVICE_SIGNED_BY_CA_PSS).details;
        assert_eq!(details.signature_algorithm, "SHA256_WITH_RSA_PSS");
    }

    #[test]
    fn surrounding_whitespace_and_crlf_are_tolerated() {
        let expected = ok(PublicKeyFormat::RsaPem, RSA_PUBLIC);
        let padded = format!("\n\n   \t{RSA_PUBLIC}\n\r\n  \t ");
        assert_eq!(ok(PublicKeyFormat::RsaPem, &padded), expected);
        let crlf = RSA_PUBLIC.replace('\n', "\r\n");
        assert_eq!(ok(PublicKeyFormat::RsaPem, &crlf), expected);
        let no_newline = RSA_PUBLIC.trim_end();
        assert_eq!(ok(PublicKeyFormat::RsaPem, no_newline), expected);
        let cert = format!("  \n{EC_CERT}\n\n");
        assert!(check_device_key(PublicKeyFormat::Es256X509Pem, &cert).is_ok());
        assert!(parse_ca_certificate(&format!("\r\n{CA_CERT}  ")).is_ok());
    }

    #[test]
    fn compressed_p256_point_is_returned_uncompressed() {
        let spki = der_of(EC_PUBLIC);
        let uncompressed = ok(PublicKeyFormat::Es256Pem, EC_PUBLIC).public_key;
        // 0x30 0x39 SEQ { 0x30 0x13 AlgorithmIdentifier, 0x03 0x22 0x00 BIT STRING (33 bytes) }
        let mut compressed = vec![0x30, 0x39];
        compressed.extend_from_slice(&spki[2..2 + 0x15]);
        compressed.extend_from_slice(&[0x03, 0x22, 0x00, 0x02 | (uncompressed[64] & 1)]);
        compressed.extend_from_slice(&uncompressed[1..33]);
        let key = ok(PublicKeyFormat::Es256Pem, &to_pem("PUBLIC KEY", &compressed));
        assert_eq!(key.public_key, uncompressed);

        // The other parity gives the other point, which is still a valid key.
        let last = compressed.len() - 33;
        compressed[last] ^= 1;
        let other = ok(PublicKeyFormat::Es256Pem, &to_pem("PUBLIC KEY", &compressed)).public_key;
        assert_eq!(other[1..33], uncompressed[1..33]);
        assert_ne!(other, uncompressed);
    }

    #[test]
    fn p256_decompression_rejects_bad_points() {
        assert!(uncompressed_p256_point(&[0x02; 32]).is_none()); // too short
        assert!(uncompressed_p256_point(&[0x05; 33]).is_none()); // bad prefix
        let mut x_too_big = vec![0x02];
        x_too_big.extend_from_slice(&[0xff; 32]);
        assert!(uncompressed_p256_point(&x_too_big).is_none());
        // Roughly half of all x have no point; find one and check it is refused.
        let refused = (0u8..=255).any(|i| {
            let mut candidate = vec![0x02];
            candidate.extend_from_slice(&[i; 32]);
            uncompressed_p256_point(&candidate).is_none()
        });
        assert!(refused);
    }

    // ---- rejected keys -------------------------------------------------------------------

    #[test]
    fn unspecified_format_is_rejected() {
        let message = err(PublicKeyFormat::Unspecified, RSA_PUBLIC);
        assert_eq!(
            message,
            "The public key format must be specified: one of RSA_PEM, ES256_PEM, RSA_X509_PEM or ES256_X509_PEM."
        );
        // Even without a format, a private key gets the private key warning.
        assert!(err(PublicKeyFormat::Unspecified, EC_PRIVATE).contains("must never be uploaded"));
    }

    #[test]
    fn private_keys_are_refused_with_a_clear_message() {
        let cases = [
            (PublicKeyFormat::RsaPem, RSA_PRIVATE),
            (PublicKeyFormat::Es256Pem, EC_PRIVATE),
            (PublicKeyFormat::RsaX509Pem, RSA_PRIVATE),
            (PublicKeyFormat::Es256X509Pem, DEVICE_SIGNED_BY_CA_KEY),
            (PublicKeyFormat::RsaPem, CA_KEY),
        ];
        for (format, pem) in cases {
            let message = err(format, pem);
            assert!(
                message.starts_with("The public key is a private key ('-----BEGIN PRIVATE KEY-----')"),
                "{message}"
            );
            assert!(message.contains("must never be uploaded"), "{message}");
            assert!(message.contains(format.name()), "{message}");
        }
        // Traditional OpenSSL forms, and a private key hidden after a valid public key.
        let body = "MHcCAQEEIIm3\n";
        let params = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
        let sec1 = format!("{params}-----BEGIN EC PRIVATE KEY-----\n{body}-----END EC PRIVATE KEY-----\n");
        let message = err(PublicKeyFormat::Es256Pem, &sec1);
        assert!(message.contains("'-----BEGIN EC PRIVATE KEY-----'") && message.contains("never"), "{message}");
        let pkcs1 = format!("-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----");
        assert!(err(PublicKeyFormat::RsaPem, &pkcs1).contains("'-----BEGIN RSA PRIVATE KEY-----'"));
        let openssh = format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{body}-----END OPENSSH PRIVATE KEY-----");
        assert!(err(PublicKeyFormat::RsaPem, &openssh).contains("private key"));
        let encrypted = format!("-----BEGIN ENCRYPTED PRIVATE KEY-----\n{body}-----END ENCRYPTED PRIVATE KEY-----");
        assert!(err(PublicKeyFormat::Es256Pem, &encrypted).contains("never be uploaded"));
        let hidden = format!("{EC_PUBLIC}{EC_PRIVATE}");
        assert!(err(PublicKeyFormat::Es256Pem, &hidden).contains("never be uploaded"));

        let message = ca_err(CA_KEY);
        assert!(message.contains("private key") && message.contains("never be uploaded"), "{message}");
        assert!(ca_err(&format!("{CA_CERT}{EC_CA_KEY}")).contains("private key"));
    }

    #[test]
    fn key_of_the_wrong_family_is_rejected() {
        assert_eq!(
            err(PublicKeyFormat::RsaPem, EC_PUBLIC),
            "The public key is not a valid RSA_PEM key: it holds an EC key, not an RSA key (EC P-256 keys use the \
             format ES256_PEM); expected a PEM block '-----BEGIN PUBLIC KEY-----' holding an RSA key."
        );
        assert_eq!(
            err(PublicKeyFormat::Es256Pem, RSA_PUBLIC),
            "The public key is not a valid ES256_PEM key: it holds an RSA key, not an EC key (RSA keys use the format \
             RSA_PEM); expected a PEM block '-----BEGIN PUBLIC KEY-----' holding an EC key on the P-256 curve."
        );
        let message = err(PublicKeyFormat::RsaX509Pem, EC_CERT);
        assert!(message.starts_with("The public key is not a valid RSA_X509_PEM key: the certificate holds an EC key"));
        assert!(message.contains("ES256_X509_PEM"), "{message}");
        let message = err(PublicKeyFormat::Es256X509Pem, RSA_CERT);
        assert!(message.starts_with("The public key is not a valid ES256_X509_PEM key: the certificate holds an RSA"));
        assert!(message.contains("RSA_X509_PEM"), "{message}");
        // A certificate whose key is RSA, signed by an EC CA, and vice versa, are judged by their own key.
        assert!(err(PublicKeyFormat::RsaX509Pem, DEVICE_SIGNED_BY_CA).contains("holds an EC key"));
    }

    #[test]
    fn certificate_given_for_a_bare_key_format_is_rejected() {
        let message = err(PublicKeyFormat::RsaPem, RSA_CERT);
        assert_eq!(
            message,
            "The public key is not a valid RSA_PEM key: it is an X.509 certificate ('-----BEGIN CERTIFICATE-----'), \
             which needs the format RSA_X509_PEM; expected a PEM block '-----BEGIN PUBLIC KEY-----' holding an RSA key."
        );
        let message = err(PublicKeyFormat::Es256Pem, EC_CERT);
        assert!(message.contains("which needs the format ES256_X509_PEM"), "{message}");
    }

    #[test]
    fn bare_key_given_for_a_certificate_format_is_rejected() {
        let message = err(PublicKeyFormat::RsaX509Pem, RSA_PUBLIC);
        assert_eq!(
            message,
            "The public key is not a valid RSA_X509_PEM key: it is a bare public key ('-----BEGIN PUBLIC KEY-----'), \
             not a certificate; bare keys use the format RSA_PEM; expected a PEM block '-----BEGIN CERTIFICATE-----' \
             holding an X.509 certificate for an RSA key."
        );
        let message = err(PublicKeyFormat::Es256X509Pem, EC_PUBLIC);
        assert!(message.contains("bare keys use the format ES256_PEM"), "{message}");
    }

    #[test]
    fn other_curves_are_rejected_for_es256() {
        let message = err(PublicKeyFormat::Es256Pem, EC_P384_PUBLIC);
        assert!(
            message.contains("holds an EC key on the P-384 curve, but ES256 requires the P-256 curve"),
            "{message}"
        );
        assert!(
            err(PublicKeyFormat::Es256X509Pem, EC_CA_CERT).contains("the certificate holds an EC key on the P-384")
        );
        // secp256k1: same SPKI as P-256 but another curve OID.
        let mut k1 = der_of(EC_PUBLIC);
        let curve_oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let at = k1.windows(curve_oid.len()).position(|w| w == curve_oid).unwrap();
        k1.splice(at..at + curve_oid.len(), [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]);
        k1[1] -= 3;
        k1[3] -= 3;
        let message = err(PublicKeyFormat::Es256Pem, &to_pem("PUBLIC KEY", &k1));
        assert!(message.contains("on the curve secp256k1"), "{message}");
    }

    #[test]
    fn short_rsa_keys_are_rejected() {
        let message = err(PublicKeyFormat::RsaPem, RSA1024_PUBLIC);
        assert_eq!(
            message,
            "The public key is not a valid RSA_PEM key: it holds a 1024-bit RSA key, but RSA keys must be at least \
             2048 bits; expected a PEM block '-----BEGIN PUBLIC KEY-----' holding an RSA key."
        );
    }

    #[test]
    fn point_off_the_curve_is_rejected() {
        let mut der = der_of(EC_PUBLIC);
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let message = err(PublicKeyFormat::Es256Pem, &to_pem("PUBLIC KEY", &der));
        assert!(message.contains("not a valid P-256 point"), "{message}");
    }

    #[test]
    fn junk_and_malformed_pem_is_rejected() {
        let f = PublicKeyFormat::RsaPem;
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "it is empty"),
            (" \n\t\r\n".to_string(), "it is empty"),
            ("hello".to_string(), "it is not PEM-encoded"),
            (base64::engine::general_purpose::STANDARD.encode(der_of(RSA_PUBLIC)), "it is not PEM-encoded"),
            ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ user@host".to_string(), "SSH public key"),
            (format!("my key:\n{RSA_PUBLIC}"), "unexpected text before the '-----BEGIN' line"),
            (format!("{RSA_PUBLIC}thanks!"), "unexpected text after the '-----END' line"),
            (format!("{RSA_PUBLIC}{RSA_PUBLIC}"), "it holds 2 PEM blocks, but exactly one is allowed"),
            (format!("{RSA_PUBLIC}\n{RSA_CERT}"), "it holds 2 PEM blocks"),
            (RSA_PUBLIC.replace("-----END PUBLIC KEY-----", ""), "not closed by an '-----END' line"),
            (RSA_PUBLIC.replace("-----END PUBLIC KEY-----", "-----END CERTIFICATE-----"), "does not match"),
            (RSA_PUBLIC.replacen('M', "*", 1), "not valid base64"),
            (RSA_PUBLIC.replacen("\n", "\n=", 2), "not valid base64"),
            ("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----".to_string(), "its PEM block is empty"),
            (RSA_PUBLIC.replace('\n', "\\n"), "the two characters '\\n'"),
            (to_pem("PUBLIC KEY", b"not der at all"), "does not hold a valid SubjectPublicKeyInfo"),
            (to_pem("PUBLIC KEY", &[der_of(RSA_PUBLIC), vec![0]].concat()), "followed by unexpected data"),
            (to_pem("RSA PUBLIC KEY", &der_of(RSA_PUBLIC)), "PKCS#1 RSA public key"),
            (to_pem("CERTIFICATE REQUEST", b"x"), "certificate signing request"),
            (to_pem("X509 CRL", b"x"), "it is a PEM block of type '-----BEGIN X509 CRL-----'"),
            (to_pem("weird <script>", b"x"), "it is a PEM block of an unexpected type"),
        ];
        for (input, expected) in cases {
            let message = err(f, &input);
            assert!(message.starts_with("The public key is not a valid RSA_PEM key: "), "{message}");
            assert!(message.contains(expected), "expected {expected:?} in {message:?}");
            assert!(
                message.ends_with("; expected a PEM block '-----BEGIN PUBLIC KEY-----' holding an RSA key."),
                "{message}"
            );
            assert!(!message.contains("<script>"), "{message}");
        }
        // Certificate formats: a certificate with trailing data, and a non-certificate.
        let cert_der = der_of(RSA_CERT);
        let message =
            err(PublicKeyFormat::RsaX509Pem, &to_pem("CERTIFICATE", &[cert_der.clone(), vec![5, 0]].concat()));
        assert!(message.contains("followed by unexpected data"), "{message}");
        let message = err(PublicKeyFormat::RsaX509Pem, &to_pem("CERTIFICATE", &cert_der[..cert_der.len() - 10]));
        assert!(message.contains("does not hold a valid X.509 certificate"), "{message}");
        assert!(message.ends_with("holding an X.509 certificate for an RSA key."), "{message}");
    }

    // ---- CA certificates -----------------------------------------------------------------

    #[test]
    fn rsa_ca_certificate_is_parsed() {
        let cert = ca(CA_CERT);
        assert_eq!(cert.algorithm, KeyAlgorithm::Rsa);
        assert_eq!(cert.der, der_of(CA_CERT));
        assert_eq!(
            cert.details,
            X509Details {
                issuer: "O=Ferrocore, CN=Ferrocore Test RSA CA".to_string(),
                subject: "O=Ferrocore, CN=Ferrocore Test RSA CA".to_string(),
                start_time: Some(Timestamp::from_unix_seconds(CA_START)),
                expiry_time: Some(Timestamp::from_unix_seconds(CA_END)),
                signature_algorithm: "SHA256_WITH_RSA".to_string(),
                public_key_type: "RSA".to_string(),
            }
        );
    }

    #[test]
    fn ec_ca_certificate_is_parsed() {
        let cert = ca(EC_CA_CERT);
        assert_eq!(cert.algorithm, KeyAlgorithm::EcP256);
        assert_eq!(cert.details.subject, "O=Ferrocore, CN=Ferrocore Test EC CA");
        assert_eq!(cert.details.issuer, "O=Ferrocore, CN=Ferrocore Test EC CA");
        assert_eq!(cert.details.signature_algorithm, "ECDSA_WITH_SHA384");
        assert_eq!(cert.details.public_key_type, "EC");
        assert_eq!(cert.details.start_time, Some(Timestamp::from_unix_seconds(CA_START)));
        assert_eq!(cert.details.expiry_time, Some(Timestamp::from_unix_seconds(CA_END)));
    }

    #[test]
    fn any_rsa_or_ec_certificate_can_be_a_ca() {
        for pem in [RSA_CERT, EC_CERT, DEVICE_SIGNED_BY_CA, DEVICE_SIGNED_BY_EC_CA] {
            ca(pem);
        }
    }

    #[test]
    fn bad_ca_certificates_are_rejected() {
        let message = ca_err("");
        assert_eq!(
            message,
            "The CA certificate is not valid: it is empty; expected a PEM block '-----BEGIN CERTIFICATE-----' \
             holding an X.509 certificate with an RSA or EC key."
        );
        assert!(ca_err(CA_KEY).contains("never be uploaded"));
        assert!(ca_err(RSA_PUBLIC).contains("bare public key"));
        assert!(ca_err(&format!("{CA_CERT}{EC_CA_CERT}")).contains("it holds 2 PEM blocks"));
        assert!(ca_err(&format!("CA:\n{CA_CERT}")).contains("unexpected text before"));
        assert!(ca_err(&to_pem("CERTIFICATE", b"garbage")).contains("does not hold a valid X.509 certificate"));
        assert!(ca_err(&to_pem("TRUSTED CERTIFICATE", &der_of(CA_CERT))).contains("TRUSTED CERTIFICATE"));
    }

    // ---- issuance ------------------------------------------------------------------------

    #[test]
    fn device_certificate_is_issued_by_its_ca() {
        let rsa_ca = ca(CA_CERT);
        let ec_ca = ca(EC_CA_CERT);
        let by_rsa = device_cert(PublicKeyFormat::Es256X509Pem, DEVICE_SIGNED_BY_CA);
        let by_ec = device_cert(PublicKeyFormat::Es256X509Pem, DEVICE_SIGNED_BY_EC_CA);
        assert!(is_issued_by(&by_rsa, &rsa_ca));
        assert!(is_issued_by(&by_ec, &ec_ca));
        assert!(!is_issued_by(&by_rsa, &ec_ca));
        assert!(!is_issued_by(&by_ec, &rsa_ca));
    }

    #[test]
    fn rsa_pss_signatures_are_verified() {
        let rsa_ca = ca(CA_CERT);
        for pem in [DEVICE_SIGNED_BY_CA_PSS, DEVICE_SIGNED_BY_CA_PSS_MAX] {
            let cert = device_cert(PublicKeyFormat::Es256X509Pem, pem);
            assert!(is_issued_by(&cert, &rsa_ca));
            assert!(!is_issued_by(&cert, &ca(EC_CA_CERT)));
        }
    }

    #[test]
    fn self_signed_certificates_are_not_issued_by_a_ca() {
        let rsa_ca = ca(CA_CERT);
        let ec_ca = ca(EC_CA_CERT);
        for (format, pem) in [(PublicKeyFormat::RsaX509Pem, RSA_CERT), (PublicKeyFormat::Es256X509Pem, EC_CERT)] {
            let cert = device_cert(format, pem);
            assert!(!is_issued_by(&cert, &rsa_ca));
            assert!(!is_issued_by(&cert, &ec_ca));
            // A self-signed certificate is its own issuer.
            assert!(is_issued_by(&cert, &cert));
        }
        assert!(is_issued_by(&rsa_ca, &rsa_ca));
        assert!(is_issued_by(&ec_ca, &ec_ca));
        // The CA is not issued by its device.
        assert!(!is_issued_by(&rsa_ca, &device_cert(PublicKeyFormat::Es256X509Pem, DEVICE_SIGNED_BY_CA)));
    }

    #[test]
    fn tampered_certificates_are_not_issued_by_the_ca() {
        let rsa_ca = ca(CA_CERT);
        let ec_ca = ca(EC_CA_CERT);
        for (pem, issuer) in [
            (DEVICE_SIGNED_BY_CA, &rsa_ca),
            (DEVICE_SIGNED_BY_CA_PSS, &rsa_ca),
            (DEVICE_SIGNED_BY_CA_PSS_MAX, &rsa_ca),
            (DEVICE_SIGNED_BY_EC_CA, &ec_ca),
        ] {
            let good = device_cert(PublicKeyFormat::Es256X509Pem, pem);
            assert!(is_issued_by(&good, issuer));
            // Change one character of the subject's CN ("device-..."), inside the signed part.
            let at = good.der.windows(7).position(|w| w == b"device-").unwrap();
            let mut subject = good.clone();
            subject.der[at] = b'D';
            assert!(X509Certificate::from_der(&subject.der).is_ok());
            assert!(!is_issued_by(&subject, issuer));
            // Change the last byte of the signature.
            let mut sig = good.clone();
            let last = sig.der.len() - 1;
            sig.der[last] ^= 0x01;
            assert!(!is_issued_by(&sig, issuer));
            // Garbage is never issued by anything.
            let garbage = ParsedCertificate { der: vec![0x30, 0x03, 0x02, 0x01, 0x00], ..good.clone() };
            assert!(!is_issued_by(&garbage, issuer));
            assert!(!is_issued_by(&good, &garbage));
        }
    }

    #[test]
    fn names_match_across_string_types() {
        let der = der_of(DEVICE_SIGNED_BY_CA);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(names_match(cert.subject(), cert.subject()));
        assert!(!names_match(cert.subject(), cert.issuer()));
    }

    #[test]
    fn bit_length_counts_significant_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x01, 0xff]), 9);
    }

    // ---- robustness ----------------------------------------------------------------------

    /// A small deterministic PRNG (xorshift64*), so the fuzz tests need no extra dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Runs every entry point on `input`; none may panic and every message must be user-facing.
    fn exercise(input: &str) {
        for format in ALL_FORMATS {
            if let Err(KeyError(message)) = check_device_key(format, input) {
                assert_user_facing(&message);
                assert!(message.starts_with("The public key "), "{message}");
            }
        }
        match parse_ca_certificate(input) {
            Ok(cert) => {
                let _ = is_issued_by(&cert, &cert);
            }
            Err(KeyError(message)) => {
                assert_user_facing(&message);
            }
        }
    }

    #[test]
    fn truncated_pem_never_panics() {
        for fixture in ALL_FIXTURES {
            let step = if fixture.len() > 1000 { 7 } else { 1 };
            for end in (0..fixture.len()).step_by(step) {
                exercise(&fixture[..end]);
                exercise(&fixture[end..]);
            }
        }
    }

    #[test]
    fn garbled_pem_never_panics() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for fixture in ALL_FIXTURES {
            for _ in 0..200 {
                let mut bytes = fixture.as_bytes().to_vec();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(bytes.len());
                    match rng.below(3) {
                        0 => bytes[at] = b"AZaz09+/=-\n \r"[rng.below(13)],
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, b"AQ=\n-"[rng.below(5)]),
                    }
                }
                exercise(&String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn mutated_der_never_panics() {
        let mut rng = Rng(0x0ddb_a11c_afe5_eed5);
        let mut certs = Vec::new();
        for fixture in ALL_FIXTURES {
            let block = parse_single_pem(fixture).unwrap();
            let der = block.der;
            let labels = ["PUBLIC KEY", "CERTIFICATE"];
            // Every single-byte change in the first 64 bytes (the ASN.1 headers), then random ones.
            for at in 0..der.len().min(64) {
                for value in [0x00, 0x01, 0x7f, 0x80, 0x81, 0xff, der[at] ^ 0x20] {
                    let mut mutated = der.clone();
                    mutated[at] = value;
                    for label in labels {
                        exercise(&to_pem(label, &mutated));
                    }
                }
            }
            for _ in 0..300 {
                let mut mutated = der.clone();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(mutated.len());
                    mutated[at] = rng.next() as u8;
                }
                if rng.below(4) == 0 {
                    mutated.truncate(rng.below(mutated.len()));
                }
                let label = labels[rng.below(2)];
                let pem = to_pem(label, &mutated);
                exercise(&pem);
                if let Ok(cert) = parse_ca_certificate(&pem) {
                    certs.push(cert);
                }
            }
            for end in (0..der.len()).step_by(3) {
                exercise(&to_pem("CERTIFICATE", &der[..end]));
                exercise(&to_pem("PUBLIC KEY", &der[..end]));
            }
        }
        // Mutated certificates that still parse against the real CAs and each other.
        let real = [ca(CA_CERT), ca(EC_CA_CERT)];
        for cert in certs.iter().take(200) {
            for other in &real {
                let _ = is_issued_by(cert, other);
                let _ = is_issued_by(other, cert);
            }
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = Rng(0xfeed_face_dead_beef);
        for _ in 0..2000 {
            let len = rng.below(600);
            let bytes = rng.bytes(len);
            exercise(&String::from_utf8_lossy(&bytes));
            let label = ["PUBLIC KEY", "CERTIFICATE", "RSA PUBLIC KEY", "X"][rng.below(4)];
            exercise(&to_pem(label, &bytes));
        }
        // ParsedCertificates built by hand from garbage must not make is_issued_by panic.
        let template = ca(CA_CERT);
        for _ in 0..500 {
            let len = rng.below(300);
            let cert = ParsedCertificate { der: rng.bytes(len), ..template.clone() };
            assert!(!is_issued_by(&cert, &template));
            assert!(!is_issued_by(&template, &cert));
        }
    }
}
