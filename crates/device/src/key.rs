//! A device's private key and the JWTs it signs.
//!
//! Cloud IoT Core devices authenticate with a JWT they sign themselves: header `{"alg","typ"}`,
//! claims `iat`, `exp` (seconds since the epoch, at most 24 hours apart) and `aud`, the project id.
//! The algorithm follows from the key: ES256 for an EC P-256 key (the signature is the 64-byte
//! `r || s`), RS256 for an RSA key (PKCS#1 v1.5 with SHA-256). The server's verifier is
//! `ferrocore_auth::jwt`; the tests below check every token against it.

use crate::pem;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::fmt;
use std::str::FromStr;

/// The JWT algorithm of a device key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    Es256,
    Rs256,
}

impl Alg {
    /// The name in the JWT header: `ES256` or `RS256`.
    pub const fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Rs256 => "RS256",
        }
    }

    /// The Device Manager API's format for the public key as [`DeviceKey::public_pem`] gives it.
    pub const fn key_format(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256_PEM",
            Alg::Rs256 => "RSA_PEM",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `es256` or `rs256`, in any case (for command-line flags).
impl FromStr for Alg {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s.to_ascii_uppercase().as_str() {
            "ES256" => Ok(Alg::Es256),
            "RS256" => Ok(Alg::Rs256),
            _ => Err(KeyError::UnknownAlg(s.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Pem(#[from] pem::PemError),
    #[error("no private key in the PEM (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)")]
    NoPrivateKey,
    #[error("the {0} is neither an EC P-256 nor an RSA private key")]
    Unsupported(String),
    #[error("'{0}' is not a key algorithm: es256 or rs256")]
    UnknownAlg(String),
    /// aws-lc-rs refused to generate, encode or sign; it says no more than that.
    #[error("{0} failed")]
    Crypto(&'static str),
}

enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

/// A device's private key, with its public half as the Device Manager API takes it.
pub struct DeviceKey {
    signer: Signer,
    public_pem: String,
}

impl fmt::Debug for DeviceKey {
    // Never the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey").field("alg", &self.alg()).finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// A new key: P-256 for ES256, RSA-2048 for RS256 (about 0.1 s to make).
    pub fn generate(alg: Alg) -> Result<Self, KeyError> {
        let signer = match alg {
            Alg::Es256 => Signer::Es256(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| KeyError::Crypto("P-256 key generation"))?,
            ),
            Alg::Rs256 => Signer::Rs256(
                RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Crypto("RSA key generation"))?,
            ),
        };
        Self::new(signer)
    }

    /// The first private key in `pem`: PKCS#8 (`PRIVATE KEY`, EC P-256 or RSA), or OpenSSL's
    /// traditional forms, SEC1 (`EC PRIVATE KEY`, which `openssl ecparam -genkey` writes after an
    /// `EC PARAMETERS` block) and PKCS#1 (`RSA PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let blocks = pem::blocks(pem)?;
        let block = blocks
            .iter()
            .find(|b| matches!(b.label.as_str(), "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY"))
            .ok_or(KeyError::NoPrivateKey)?;
        let der = &block.der[..];
        let unsupported = || KeyError::Unsupported(block.label.clone());
        let signer = match block.label.as_str() {
            "EC PRIVATE KEY" => Signer::Es256(
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|_| unsupported())?,
            ),
            "RSA PRIVATE KEY" => Signer::Rs256(RsaKeyPair::from_der(der).map_err(|_| unsupported())?),
            // PKCS#8 names its algorithm inside: try P-256, then RSA.
            _ => match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                Ok(k) => Signer::Es256(k),
                Err(_) => Signer::Rs256(RsaKeyPair::from_pkcs8(der).map_err(|_| unsupported())?),
            },
        };
        Self::new(signer)
    }

    fn new(signer: Signer) -> Result<Self, KeyError> {
        let spki = match &signer {
            Signer::Es256(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Signer::Rs256(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        }
        .map_err(|_| KeyError::Crypto("public key encoding"))?;
        Ok(Self { signer, public_pem: pem::encode("PUBLIC KEY", &spki) })
    }

    pub fn alg(&self) -> Alg {
        match self.signer {
            Signer::Es256(_) => Alg::Es256,
            Signer::Rs256(_) => Alg::Rs256,
        }
    }

    /// The public key as a SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`): a device
    /// credential of format [`Alg::key_format`].
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// A device JWT as IoT Core wants it: `iat` and `exp` in seconds since the epoch, `aud` the
    /// project id.
    pub fn jwt(&self, audience: &str, iat: i64, exp: i64) -> Result<String, KeyError> {
        self.sign(&self.header(), &json!({"iat": iat, "exp": exp, "aud": audience}))
    }

    /// The JWT header for this key: `{"alg": "ES256" | "RS256", "typ": "JWT"}`.
    pub fn header(&self) -> Value {
        json!({"alg": self.alg().name(), "typ": "JWT"})
    }

    /// A compact JWS of `header` and `claims`, for tokens with claims of their own. The header's
    /// `alg` must be this key's ([`DeviceKey::header`] is).
    pub fn sign(&self, header: &Value, claims: &Value) -> Result<String, KeyError> {
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let rng = SystemRandom::new();
        let signature = match &self.signer {
            Signer::Es256(k) => {
                k.sign(&rng, input.as_bytes()).map_err(|_| KeyError::Crypto("ES256 signing"))?.as_ref().to_vec()
            }
            Signer::Rs256(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                    .map_err(|_| KeyError::Crypto("RS256 signing"))?;
                sig
            }
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocore_auth::credentials::check_device_key;
    use ferrocore_auth::jwt::{JwtError, JwtRules, VerificationKey, verify_device_jwt};
    use ferrocore_model::{PublicKeyFormat, Timestamp};

    const T: i64 = 1_800_000_000;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/../auth/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// What the server makes of `token` for a device holding `key`'s public half, at T.
    fn verify(key: &DeviceKey, token: &str, project: &str) -> Result<(), JwtError> {
        let format = match key.alg() {
            Alg::Es256 => PublicKeyFormat::Es256Pem,
            Alg::Rs256 => PublicKeyFormat::RsaPem,
        };
        let public = check_device_key(format, key.public_pem()).expect("the server takes the public key");
        let keys = [VerificationKey { algorithm: public.algorithm, public_key: public.public_key, expires: None }];
        verify_device_jwt(token, project, &keys, Timestamp::from_unix_seconds(T), &JwtRules::default()).map(|_| ())
    }

    #[test]
    fn generated_keys_sign_tokens_the_server_accepts() {
        for alg in [Alg::Es256, Alg::Rs256] {
            let key = DeviceKey::generate(alg).unwrap();
            assert_eq!(key.alg(), alg);
            let token = key.jwt("my-project", T, T + 3600).unwrap();
            assert_eq!(verify(&key, &token, "my-project"), Ok(()), "{alg}");
            assert_eq!(verify(&key, &token, "other-project"), Err(JwtError::WrongAudience), "{alg}");
            let expired = key.jwt("my-project", T - 7200, T - 3600).unwrap();
            assert_eq!(verify(&key, &expired, "my-project"), Err(JwtError::Expired), "{alg}");
            // Another key of the same algorithm does not verify it.
            let other = DeviceKey::generate(alg).unwrap();
            assert_eq!(verify(&other, &token, "my-project"), Err(JwtError::InvalidSignature), "{alg}");
        }
    }

    #[test]
    fn tokens_carry_the_claims_iot_core_wants() {
        let key = DeviceKey::from_pem(&fixture("ec_private.pem")).unwrap();
        let token = key.jwt("p", 10, 20).unwrap();
        let parts: Vec<Value> = token
            .split('.')
            .take(2)
            .map(|s| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap())
            .collect();
        assert_eq!(parts, [json!({"alg": "ES256", "typ": "JWT"}), json!({"iat": 10, "exp": 20, "aud": "p"})]);
    }

    #[test]
    fn pkcs8_fixtures_load_and_match_their_public_keys() {
        for (private, public, alg) in
            [("ec_private.pem", "ec_public.pem", Alg::Es256), ("rsa_private.pem", "rsa_public.pem", Alg::Rs256)]
        {
            let key = DeviceKey::from_pem(&fixture(private)).unwrap();
            assert_eq!(key.alg(), alg);
            assert_eq!(key.public_pem(), fixture(public), "the SPKI PEM reads as OpenSSL writes it");
            let token = key.jwt("p", T, T + 60).unwrap();
            assert_eq!(verify(&key, &token, "p"), Ok(()));
        }
    }

    #[test]
    fn openssl_traditional_forms_load() {
        // SEC1, after the EC PARAMETERS block `openssl ecparam -genkey` writes first.
        let pkcs8 = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pem::to_der(&fixture("ec_private.pem")).unwrap(),
        )
        .unwrap();
        let sec1 = pkcs8.private_key().as_der().unwrap();
        let text = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            pem::encode("EC PRIVATE KEY", sec1.as_ref())
        );
        let key = DeviceKey::from_pem(&text).unwrap();
        assert_eq!((key.alg(), key.public_pem()), (Alg::Es256, fixture("ec_public.pem").as_str()));

        // PKCS#1: the fixture's PKCS#8 wraps it as the OCTET STRING after a fixed 26-byte prefix
        // (version 0, rsaEncryption with NULL parameters, the string's tag and length).
        let der = pem::to_der(&fixture("rsa_private.pem")).unwrap();
        assert_eq!(&der[4..22], &[2, 1, 0, 48, 13, 6, 9, 42, 134, 72, 134, 247, 13, 1, 1, 1, 5, 0]);
        let key = DeviceKey::from_pem(&pem::encode("RSA PRIVATE KEY", &der[26..])).unwrap();
        assert_eq!((key.alg(), key.public_pem()), (Alg::Rs256, fixture("rsa_public.pem").as_str()));
    }

    #[test]
    fn what_is_not_a_usable_private_key_is_refused() {
        assert_eq!(DeviceKey::from_pem(&fixture("ec_public.pem")).unwrap_err(), KeyError::NoPrivateKey);
        assert_eq!(DeviceKey::from_pem(&fixture("rsa_cert.pem")).unwrap_err(), KeyError::NoPrivateKey);
        assert_eq!(DeviceKey::from_pem("not pem").unwrap_err(), KeyError::NoPrivateKey);
        // A P-384 key is neither.
        let p384 = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING)
            .unwrap()
            .to_pkcs8v1()
            .unwrap();
        let text = pem::encode("PRIVATE KEY", p384.as_ref());
        assert_eq!(DeviceKey::from_pem(&text).unwrap_err(), KeyError::Unsupported("PRIVATE KEY".into()));
    }

    #[test]
    fn alg_names() {
        assert_eq!("es256".parse::<Alg>(), Ok(Alg::Es256));
        assert_eq!("RS256".parse::<Alg>(), Ok(Alg::Rs256));
        assert!("hs256".parse::<Alg>().is_err());
        assert_eq!((Alg::Rs256.name(), Alg::Rs256.key_format()), ("RS256", "RSA_PEM"));
    }
}
