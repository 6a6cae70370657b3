//! The credential checks' unit tests: accepted and refused keys and certificates, CA
//! signatures, and inputs that must never make them panic.

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
    assert!(UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &key.public_key).verify(message, &sig).is_ok());
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
        assert!(message.starts_with("The public key is a private key ('-----BEGIN PRIVATE KEY-----')"), "{message}");
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
    assert!(message.contains("holds an EC key on the P-384 curve, but ES256 requires the P-256 curve"), "{message}");
    assert!(err(PublicKeyFormat::Es256X509Pem, EC_CA_CERT).contains("the certificate holds an EC key on the P-384"));
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
    let message = err(PublicKeyFormat::RsaX509Pem, &to_pem("CERTIFICATE", &[cert_der.clone(), vec![5, 0]].concat()));
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
