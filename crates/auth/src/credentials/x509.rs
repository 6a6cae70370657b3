//! X.509 certificates: parsing, the details the API reports (`x509Details`), name comparison,
//! and which aws-lc-rs algorithm checks a certificate's signature (RSA PKCS#1 v1.5, RSA-PSS,
//! ECDSA on P-256/P-384/P-521).

use super::spki::{AnalyzedKey, Curve, analyze_spki};
use aws_lc_rs::signature::{self, RsaParameters, RsaPssSaltLength, VerificationAlgorithm};
use ferrocore_model::{Timestamp, X509Details};
use x509_parser::certificate::X509Certificate;
use x509_parser::objects::oid_registry;
use x509_parser::oid_registry::{
    OID_HASH_SHA1, OID_MD5_WITH_RSA, OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512,
    OID_PKCS1_MD5WITHRSAENC, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA224WITHRSA,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SHA1_WITH_RSA,
    OID_SIG_DSA_WITH_SHA1, OID_SIG_ECDSA_WITH_SHA224, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    OID_SIG_ECDSA_WITH_SHA512, OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo, X509Name};

/// Parses one DER certificate with nothing after it. The error is a user-facing problem description.
pub(super) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, &'static str> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("the certificate is followed by unexpected data inside the PEM block"),
        Err(_) => Err("the PEM block does not hold a valid X.509 certificate"),
    }
}

pub(super) fn certificate_details(cert: &X509Certificate<'_>, key: &AnalyzedKey) -> X509Details {
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
pub(super) fn name_string(name: &X509Name<'_>) -> String {
    name.to_string_with_registry(oid_registry()).unwrap_or_default()
}

pub(super) fn names_match(a: &X509Name<'_>, b: &X509Name<'_>) -> bool {
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
pub(super) fn signature_algorithm_name(alg: &AlgorithmIdentifier<'_>) -> String {
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
pub(super) enum Hash {
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

pub(super) static RSA_PSS_SHA256_MAX_SALT: RsaParameters =
    signature::RSA_PSS_2048_8192_SHA256.with_pss_salt_length(RsaPssSaltLength::Max);
pub(super) static RSA_PSS_SHA384_MAX_SALT: RsaParameters =
    signature::RSA_PSS_2048_8192_SHA384.with_pss_salt_length(RsaPssSaltLength::Max);
pub(super) static RSA_PSS_SHA512_MAX_SALT: RsaParameters =
    signature::RSA_PSS_2048_8192_SHA512.with_pss_salt_length(RsaPssSaltLength::Max);

/// The aws-lc-rs algorithm that checks a signature made with `sig` by the key `signer`, if supported.
pub(super) fn verification_algorithm(
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
pub(super) fn rsa_pss_algorithm(
    sig: &AlgorithmIdentifier<'_>,
    key_bits: usize,
) -> Option<&'static dyn VerificationAlgorithm> {
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
