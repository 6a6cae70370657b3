//! Device keys made by the bench itself, and the JWTs devices present in CONNECT.
//!
//! Keys are generated with aws-lc-rs (P-256 for ES256, RSA-2048 for RS256). The public half is
//! registered as `ES256_PEM` / `RSA_PEM` (a SubjectPublicKeyInfo PEM), as IoT Core expected.

use anyhow::{Result, anyhow};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Alg {
    Es256,
    Rs256,
}

impl Alg {
    pub fn jwt_name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Rs256 => "RS256",
        }
    }

    /// The credential format the Cloud IoT API knows the public key by.
    pub fn key_format(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256_PEM",
            Alg::Rs256 => "RSA_PEM",
        }
    }
}

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A device key pair.
pub struct DeviceKey {
    alg: Alg,
    signer: Signer,
    public_pem: String,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl DeviceKey {
    pub fn generate(alg: Alg) -> Result<Self> {
        let (signer, spki) = match alg {
            Alg::Es256 => {
                let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| anyhow!("P-256 key generation failed"))?;
                let spki = key.public_key().as_der().map_err(|_| anyhow!("P-256 public key encoding failed"))?;
                let spki = spki.as_ref().to_vec();
                (Signer::Ec(key), spki)
            }
            Alg::Rs256 => {
                let key = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow!("RSA key generation failed"))?;
                let spki = key.public_key().as_der().map_err(|_| anyhow!("RSA public key encoding failed"))?;
                let spki = spki.as_ref().to_vec();
                (Signer::Rsa(key), spki)
            }
        };
        Ok(Self { alg, signer, public_pem: pem("PUBLIC KEY", &spki) })
    }

    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// A device JWT: `{"alg","typ"}` and `iat`, `exp`, `aud`, plus `sub` naming the device so
    /// that every device presents a token of its own.
    pub fn jwt(&self, audience: &str, subject: &str, iat: i64, exp: i64) -> Result<String> {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.alg.jwt_name()));
        let claims = serde_json::json!({"iat": iat, "exp": exp, "aud": audience, "sub": subject});
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let rng = SystemRandom::new();
        let signature = match &self.signer {
            Signer::Ec(k) => {
                k.sign(&rng, input.as_bytes()).map_err(|_| anyhow!("ES256 signing failed"))?.as_ref().to_vec()
            }
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                    .map_err(|_| anyhow!("RS256 signing failed"))?;
                sig
            }
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    fn spki_of(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(b64).unwrap()
    }

    #[test]
    fn tokens_verify_with_the_published_key() {
        for alg in [Alg::Es256, Alg::Rs256] {
            let key = DeviceKey::generate(alg).unwrap();
            let token = key.jwt("p", "d1", 1, 2).unwrap();
            let (input, sig) = token.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            let spki = spki_of(key.public_pem());
            // aws-lc-rs parses SubjectPublicKeyInfo for these algorithms.
            let ok = match alg {
                Alg::Es256 => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &spki).verify(input.as_bytes(), &sig),
                Alg::Rs256 => UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &spki).verify(input.as_bytes(), &sig),
            };
            assert!(ok.is_ok(), "{alg:?}");
        }
    }
}
