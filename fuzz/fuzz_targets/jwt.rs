//! Fuzz target: device JWT verification (`ferrocore_auth::jwt::verify_device_jwt`), the first
//! thing the MQTT and HTTP bridges run on a CONNECT password or a bearer token.
//!
//! Input layout: `mode: u8 | now: i64 LE | skew: i32 LE | lifetime: i32 LE | rest`.
//!
//! * `mode & 1 == 0`: `rest` is the token exactly as a device sent it (lossily made UTF-8, as
//!   the bridges receive text). The fuzzer cannot forge a signature, so this explores the
//!   length, segment, base64 and header checks that run before the signature.
//! * `mode & 1 == 1`: `rest` is `header JSON 0x00 claims JSON`. Both are base64url-encoded
//!   (with padding when `mode & 2`) and signed with the test EC key, so the fuzzer gets past the
//!   signature to the claim and time rules. `mode & 4` makes every credential expire at `now`.
//!
//! Checks beyond "no panic": an accepted token always satisfies the documented time rules; a
//! correctly signed ES256 token is never refused for its signature.

#![no_main]

use std::sync::LazyLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use ferrocore_auth::KeyAlgorithm;
use ferrocore_auth::jwt::{JwtError, JwtRules, VerificationKey, verify_device_jwt};
use ferrocore_model::{DeviceCredential, PublicKey, PublicKeyFormat, Timestamp};
use libfuzzer_sys::fuzz_target;

const AUDIENCE: &str = "my-project";
const EC_PRIVATE: &str = include_str!("../../crates/auth/tests/fixtures/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../../crates/auth/tests/fixtures/ec_public.pem");
const RSA_PUBLIC: &str = include_str!("../../crates/auth/tests/fixtures/rsa_public.pem");

static SIGNER: LazyLock<EcdsaKeyPair> = LazyLock::new(|| {
    let body: String = EC_PRIVATE.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(body).expect("fixture PEM");
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).expect("fixture key")
});

fn keys(expires: Option<Timestamp>) -> Vec<VerificationKey> {
    let cred = |format, key: &str| DeviceCredential {
        public_key: PublicKey { format, key: key.to_owned() },
        expiration_time: expires,
    };
    let keys = VerificationKey::from_credentials(&[
        cred(PublicKeyFormat::Es256Pem, EC_PUBLIC),
        cred(PublicKeyFormat::RsaPem, RSA_PUBLIC),
    ]);
    assert_eq!(keys.len(), 2, "the fixture credentials must parse");
    keys
}

static KEYS: LazyLock<Vec<VerificationKey>> = LazyLock::new(|| keys(None));

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_at_checked(17) else { return };
    let mode = head[0];
    let now = i64::from_le_bytes(head[1..9].try_into().unwrap());
    let skew = i32::from_le_bytes(head[9..13].try_into().unwrap());
    let lifetime = i32::from_le_bytes(head[13..17].try_into().unwrap());
    let rules = JwtRules { max_clock_skew_secs: i64::from(skew), max_lifetime_secs: i64::from(lifetime) };
    let now = Timestamp::from_unix_seconds(now);

    let expiring;
    let keys: &[VerificationKey] = if mode & 4 != 0 {
        expiring = keys(Some(now));
        &expiring
    } else {
        &KEYS
    };

    let (token, signed_es256) = if mode & 1 == 0 {
        (String::from_utf8_lossy(rest).into_owned(), false)
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let b64 = |bytes: &[u8]| if mode & 2 != 0 { URL_SAFE.encode(bytes) } else { URL_SAFE_NO_PAD.encode(bytes) };
        let signing_input = format!("{}.{}", b64(header), b64(claims));
        let signature = SIGNER.sign(&SystemRandom::new(), signing_input.as_bytes()).expect("signing");
        let alg_is_es256 = serde_json::from_slice::<serde_json::Value>(header)
            .ok()
            .is_some_and(|h| h.get("alg").and_then(|a| a.as_str()) == Some("ES256"));
        (format!("{signing_input}.{}", b64(signature.as_ref())), alg_is_es256)
    };

    match verify_device_jwt(&token, AUDIENCE, keys, now, &rules) {
        Ok(verified) => {
            let skew = rules.max_clock_skew_secs.max(0);
            let lifetime = rules.max_lifetime_secs.max(0);
            let now = now.unix_seconds();
            assert!(verified.issued_at >= 0, "negative iat accepted");
            assert!(verified.expires_at > verified.issued_at, "exp <= iat accepted");
            assert!(verified.issued_at <= now.saturating_add(skew), "token from the future accepted");
            assert!(verified.expires_at - verified.issued_at <= lifetime + skew, "lifetime too long accepted");
            assert!(verified.expires_at.saturating_add(skew) >= now, "expired token accepted");
            assert!(verified.deadline(&rules) >= verified.expires_at);
            assert!(mode & 4 == 0, "a token verified by an expired credential");
            if signed_es256 {
                assert_eq!(verified.algorithm, KeyAlgorithm::EcP256);
            }
        }
        Err(JwtError::InvalidSignature) => {
            assert!(!signed_es256, "a correctly signed ES256 token was refused for its signature");
        }
        Err(e) => {
            // Every message is a fixed sentence; none may repeat the token.
            let text = e.to_string();
            assert!(text.len() < 100 && !text.is_empty());
        }
    }
});
