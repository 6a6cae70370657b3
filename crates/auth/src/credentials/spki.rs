//! Public keys taken apart: a SubjectPublicKeyInfo analysed into RSA (PKCS#1 key and size), EC
//! (named curve and SEC1 point) or another kind, with the RSA size rules.

use aws_lc_rs::signature::{self, ParsedPublicKey};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_DSA, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The smallest RSA modulus accepted, in bits (Cloud IoT Core's rule).
pub(super) const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted, in bits: aws-lc-rs verifies RSA signatures up to this size.
pub(super) const MAX_RSA_BITS: usize = 8192;

/// An elliptic curve, as far as these checks care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Curve {
    P256,
    P384,
    P521,
    /// Any other curve (or explicit curve parameters), described for messages.
    Other(String),
}

/// A public key taken apart.
pub(super) enum AnalyzedKey {
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

pub(super) fn parse_spki(der: &[u8]) -> Result<AnalyzedKey, String> {
    match SubjectPublicKeyInfo::from_der(der) {
        Ok(([], spki)) => analyze_spki(&spki),
        Ok(_) => Err("the public key is followed by unexpected data inside the PEM block".to_string()),
        Err(_) => Err("the PEM block does not hold a valid SubjectPublicKeyInfo structure".to_string()),
    }
}

pub(super) fn analyze_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<AnalyzedKey, String> {
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
pub(super) fn bit_length(bytes: &[u8]) -> usize {
    let Some(first) = bytes.iter().position(|&b| b != 0) else {
        return 0;
    };
    (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize
}

pub(super) fn check_rsa(pkcs1: &[u8], bits: usize, holder: &str) -> Result<(), String> {
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
