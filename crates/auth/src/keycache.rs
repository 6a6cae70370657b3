//! Device keys parsed once for JWT verification, kept in a small bounded cache.
//!
//! Every CONNECT used to decode the credential's PEM, take its SubjectPublicKeyInfo or X.509
//! certificate apart, and hand aws-lc the raw key to parse again (and, for RSA, to build its
//! Montgomery context again) for a single signature check. A device that reconnects, or a fleet
//! whose devices share a key, pays that again and again for the same bytes.
//!
//! Entries are keyed by the SHA-256 of the credential's format and its exact PEM text, so a
//! credential that changes in any byte is a different entry: a stale parse can never verify a
//! token for a key the device no longer has. Nothing else about the credential is cached (its
//! `expirationTime` is read from the credential on every lookup), and what is cached is the pure
//! result of [`check_device_key`] on those bytes. The cache is bounded (two generations: the young
//! one fills up, then becomes the old one and the oldest entries go), so memory stays small
//! whatever the size of the fleet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use aws_lc_rs::digest;
use aws_lc_rs::signature::ParsedPublicKey;
use ferrocore_model::{DeviceCredential, PublicKeyFormat, Timestamp};

use crate::credentials::{KeyAlgorithm, check_device_key};
use crate::jwt::signature_algorithm;

/// Entries the process-wide cache holds at most: the keys of recently reconnecting devices and
/// of keys shared by many devices, in at most ~2 MB (an RSA-2048 entry is about 2 KB, a P-256
/// one under 1 KB), so the cache does not show in the memory of a large idle fleet.
pub const DEFAULT_CAPACITY: usize = 1024;

/// A credential's key, parsed and ready to verify signatures.
pub struct ParsedKey {
    algorithm: KeyAlgorithm,
    /// The certificate's notBefore / notAfter for the X.509 formats; `None` for bare keys.
    validity: Option<(Option<Timestamp>, Option<Timestamp>)>,
    /// `None` when aws-lc refused the raw key: such a key verifies nothing, as before.
    verifier: Option<ParsedPublicKey>,
}

impl std::fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKey")
            .field("algorithm", &self.algorithm)
            .field("validity", &self.validity)
            .field("parsed", &self.verifier.is_some())
            .finish()
    }
}

impl ParsedKey {
    /// Parses a credential key, or `None` when it does not pass [`check_device_key`].
    fn parse(format: PublicKeyFormat, pem: &str) -> Option<ParsedKey> {
        let key = check_device_key(format, pem).ok()?;
        let mut parsed = ParsedKey::from_raw(key.algorithm, &key.public_key);
        parsed.validity = key.certificate.map(|c| (c.details.start_time, c.details.expiry_time));
        Some(parsed)
    }

    /// A key from raw bytes (as [`crate::jwt::VerificationKey`] holds them), with no
    /// certificate dates.
    pub(crate) fn from_raw(algorithm: KeyAlgorithm, public_key: &[u8]) -> ParsedKey {
        let verifier = ParsedPublicKey::new(signature_algorithm(algorithm), public_key).ok();
        ParsedKey { algorithm, validity: None, verifier }
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// False for an X.509 credential whose certificate is not valid at `now`.
    pub fn certificate_valid_at(&self, now: Timestamp) -> bool {
        self.validity.is_none_or(|(start, expiry)| start.is_none_or(|t| t <= now) && expiry.is_none_or(|t| now <= t))
    }

    /// Whether `signature` is this key's signature of `message` (with the key's JWT algorithm).
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verifier.as_ref().is_some_and(|k| k.verify_sig(message, signature).is_ok())
    }
}

/// A bounded map from credential bytes to parsed keys; see the module documentation.
pub struct KeyCache {
    capacity: usize,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    young: HashMap<[u8; 32], Arc<ParsedKey>>,
    old: HashMap<[u8; 32], Arc<ParsedKey>>,
}

impl KeyCache {
    /// A cache holding at most `capacity` entries (at least 2).
    pub fn new(capacity: usize) -> KeyCache {
        KeyCache { capacity: capacity.max(2), generations: Mutex::new(Generations::default()) }
    }

    /// The cache shared by every verification in this process. Sharing is safe because entries
    /// are named by the credential's own bytes.
    pub fn global() -> &'static KeyCache {
        static CACHE: OnceLock<KeyCache> = OnceLock::new();
        CACHE.get_or_init(|| KeyCache::new(DEFAULT_CAPACITY))
    }

    /// The parsed key of a credential (format and PEM text), from the cache or parsed now;
    /// `None` when the credential does not parse (those are not cached: credentials are checked
    /// when written, so they are rare, and parsing them again costs nothing that matters).
    pub fn get(&self, format: PublicKeyFormat, pem: &str) -> Option<Arc<ParsedKey>> {
        let id = credential_id(format, pem);
        if let Some(hit) = self.lookup(&id) {
            return Some(hit);
        }
        // Parsed outside the lock: a parse takes tens of microseconds and other connects go on.
        let parsed = Arc::new(ParsedKey::parse(format, pem)?);
        let mut g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        self.insert(&mut g, id, parsed.clone());
        Some(parsed)
    }

    /// Entries held now (both generations).
    pub fn len(&self) -> usize {
        let g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        g.young.len() + g.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, id: &[u8; 32]) -> Option<Arc<ParsedKey>> {
        let mut g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = g.young.get(id) {
            return Some(hit.clone());
        }
        // A key still in use moves to the young generation, so it outlives the next turnover.
        let hit = g.old.remove(id)?;
        self.insert(&mut g, *id, hit.clone());
        Some(hit)
    }

    fn insert(&self, g: &mut Generations, id: [u8; 32], key: Arc<ParsedKey>) {
        if g.young.len() >= self.capacity / 2 {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(id, key);
    }

    /// The keys of `creds` ready for [`crate::jwt::verify_device_jwt`], leaving out credentials
    /// that do not parse and, with `certificates_valid_at`, X.509 credentials whose certificate
    /// is not valid then: the same choice as
    /// [`VerificationKey::from_credentials_valid_at`](crate::jwt::VerificationKey::from_credentials_valid_at).
    pub fn verification_keys(
        &self,
        creds: &[DeviceCredential],
        certificates_valid_at: Option<Timestamp>,
    ) -> Vec<CachedVerificationKey> {
        creds
            .iter()
            .filter_map(|cred| {
                let key = self.get(cred.public_key.format, &cred.public_key.key)?;
                if let Some(now) = certificates_valid_at
                    && !key.certificate_valid_at(now)
                {
                    return None;
                }
                Some(CachedVerificationKey { key, expires: cred.expiration_time })
            })
            .collect()
    }
}

/// A parsed credential key and that credential's `expirationTime`.
#[derive(Debug, Clone)]
pub struct CachedVerificationKey {
    pub key: Arc<ParsedKey>,
    pub expires: Option<Timestamp>,
}

/// SHA-256 over the format's number and the PEM text, each length-prefixed so that no two
/// different credentials hash the same input.
fn credential_id(format: PublicKeyFormat, pem: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&i32::from(format).to_be_bytes());
    ctx.update(&(pem.len() as u64).to_be_bytes());
    ctx.update(pem.as_bytes());
    let mut id = [0u8; 32];
    id.copy_from_slice(ctx.finish().as_ref());
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{JwtError, JwtRules, VerificationKey, verify_device_jwt};
    use crate::test_fixtures::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair};
    use base64::Engine as _;
    use ferrocore_model::PublicKey;

    const PROJECT: &str = "my-project";
    const NOW: i64 = 1_800_000_000;

    fn now() -> Timestamp {
        Timestamp::from_unix_seconds(NOW)
    }

    fn der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rs256_token() -> String {
        let pair = RsaKeyPair::from_pkcs8(&der(RSA_PRIVATE)).unwrap();
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64(format!(r#"{{"iat":{NOW},"exp":{},"aud":"{PROJECT}"}}"#, NOW + 3600).as_bytes())
        );
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
        format!("{input}.{}", b64(&sig))
    }

    fn es256_token() -> String {
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der(EC_PRIVATE)).unwrap();
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"ES256","typ":"JWT"}"#),
            b64(format!(r#"{{"iat":{NOW},"exp":{},"aud":"{PROJECT}"}}"#, NOW + 3600).as_bytes())
        );
        let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }

    fn cred(format: PublicKeyFormat, pem: &str, expires: Option<i64>) -> DeviceCredential {
        DeviceCredential {
            public_key: PublicKey { format, key: pem.to_owned() },
            expiration_time: expires.map(Timestamp::from_unix_seconds),
        }
    }

    /// The cached path and the per-connect path, for the same credentials.
    fn both(
        cache: &KeyCache,
        token: &str,
        creds: &[DeviceCredential],
        valid_at: Option<Timestamp>,
    ) -> Result<(), JwtError> {
        let raw = match valid_at {
            Some(t) => VerificationKey::from_credentials_valid_at(creds, t),
            None => VerificationKey::from_credentials(creds),
        };
        let expected = verify_device_jwt(token, PROJECT, &raw, now(), &JwtRules::default()).map(|_| ());
        let cached = cache.verification_keys(creds, valid_at);
        let got = verify_device_jwt(token, PROJECT, &cached, now(), &JwtRules::default()).map(|_| ());
        assert_eq!(got, expected, "the cached keys decide as the parsed-per-connect keys do");
        got
    }

    #[test]
    fn cached_keys_decide_as_keys_parsed_per_connect() {
        let cache = KeyCache::new(64);
        let (rs, es) = (rs256_token(), es256_token());
        let rsa = [cred(PublicKeyFormat::RsaPem, RSA_PUBLIC, None), cred(PublicKeyFormat::RsaX509Pem, RSA_CERT, None)];
        let ec = [cred(PublicKeyFormat::Es256Pem, EC_PUBLIC, None), cred(PublicKeyFormat::Es256X509Pem, EC_CERT, None)];
        // Twice: the first pass fills the cache, the second is served from it.
        for _ in 0..2 {
            for c in &rsa {
                assert_eq!(both(&cache, &rs, std::slice::from_ref(c), None), Ok(()));
                assert_eq!(both(&cache, &rs, std::slice::from_ref(c), Some(now())), Ok(()));
                assert_eq!(both(&cache, &es, std::slice::from_ref(c), None), Err(JwtError::NoCredentialForAlgorithm));
            }
            for c in &ec {
                assert_eq!(both(&cache, &es, std::slice::from_ref(c), None), Ok(()));
                assert_eq!(both(&cache, &rs, std::slice::from_ref(c), None), Err(JwtError::NoCredentialForAlgorithm));
            }
            // A tampered signature, and an expired credential, fail the same way.
            let mut bad = rs.clone();
            bad.replace_range(bad.len() - 4.., "AAAA");
            assert_eq!(both(&cache, &bad, &rsa, None), Err(JwtError::InvalidSignature));
            let expired = [cred(PublicKeyFormat::RsaPem, RSA_PUBLIC, Some(NOW - 1))];
            assert_eq!(both(&cache, &rs, &expired, None), Err(JwtError::CredentialsExpired));
            // Unparsable credentials are skipped by both.
            let junk = [cred(PublicKeyFormat::RsaPem, "not a key", None), rsa[0].clone()];
            assert_eq!(both(&cache, &rs, &junk, None), Ok(()));
        }
        assert_eq!(cache.len(), 4, "one entry per distinct credential; junk is not cached");
    }

    #[test]
    fn a_changed_credential_never_verifies_with_the_old_key() {
        let cache = KeyCache::new(64);
        let rs = rs256_token();
        let before = [cred(PublicKeyFormat::RsaPem, RSA_PUBLIC, None)];
        assert_eq!(both(&cache, &rs, &before, None), Ok(()));
        // The device's key replaced by another RSA key (the CA's): the old token must fail.
        let ca_public = crate::check_device_key(PublicKeyFormat::RsaX509Pem, fixture!("ca_cert.pem")).unwrap();
        assert_eq!(ca_public.algorithm, KeyAlgorithm::Rsa);
        let after = [cred(PublicKeyFormat::RsaX509Pem, fixture!("ca_cert.pem"), None)];
        assert_eq!(both(&cache, &rs, &after, None), Err(JwtError::InvalidSignature));
        // Replaced by an EC key: no RSA credential at all any more.
        let after = [cred(PublicKeyFormat::Es256Pem, EC_PUBLIC, None)];
        assert_eq!(both(&cache, &rs, &after, None), Err(JwtError::NoCredentialForAlgorithm));
        // The same key text under another format is another credential (and here not a valid one).
        assert!(cache.get(PublicKeyFormat::Es256Pem, RSA_PUBLIC).is_none());
        // The expiration time is read from the credential each time, never from the cache.
        let later = [cred(PublicKeyFormat::RsaPem, RSA_PUBLIC, Some(NOW - 10))];
        assert_eq!(both(&cache, &rs, &later, None), Err(JwtError::CredentialsExpired));
    }

    #[test]
    fn certificate_dates_are_checked_on_every_use() {
        let cache = KeyCache::new(64);
        let rs = rs256_token();
        let creds = [cred(PublicKeyFormat::RsaX509Pem, RSA_CERT, None)];
        assert_eq!(both(&cache, &rs, &creds, Some(now())), Ok(()));
        // Long after the fixture certificate's notAfter (100 years from 2026), and long before.
        let far = Timestamp::from_unix_seconds(NOW + 200 * 365 * 86_400);
        assert_eq!(both(&cache, &rs, &creds, Some(far)), Err(JwtError::NoCredentialForAlgorithm));
        assert_eq!(
            both(&cache, &rs, &creds, Some(Timestamp::from_unix_seconds(0))),
            Err(JwtError::NoCredentialForAlgorithm)
        );
        // Bare keys carry no dates.
        let bare = cache.get(PublicKeyFormat::RsaPem, RSA_PUBLIC).unwrap();
        assert!(bare.certificate_valid_at(far));
    }

    #[test]
    fn the_cache_stays_within_its_capacity_and_keeps_keys_in_use() {
        let cache = KeyCache::new(8);
        // Surrounding whitespace is allowed, so each of these is a distinct credential text.
        let texts: Vec<String> = (0..40).map(|i| format!("{RSA_PUBLIC}{}", "\n".repeat(i + 1))).collect();
        let hot = cache.get(PublicKeyFormat::RsaPem, RSA_PUBLIC).unwrap();
        for t in &texts {
            assert!(cache.get(PublicKeyFormat::RsaPem, t).is_some());
            assert!(cache.len() <= 8, "{} entries", cache.len());
            // A key looked up all along is not evicted by the others.
            let again = cache.get(PublicKeyFormat::RsaPem, RSA_PUBLIC).unwrap();
            assert!(Arc::ptr_eq(&hot, &again), "the key in use was parsed again");
        }
        // The oldest of the others are gone, the newest are still there.
        assert!(cache.lookup(&credential_id(PublicKeyFormat::RsaPem, &texts[0])).is_none());
        assert!(cache.lookup(&credential_id(PublicKeyFormat::RsaPem, &texts[39])).is_some());
    }

    #[test]
    fn credential_ids_differ_by_format_and_text() {
        let a = credential_id(PublicKeyFormat::RsaPem, RSA_PUBLIC);
        assert_eq!(a, credential_id(PublicKeyFormat::RsaPem, RSA_PUBLIC));
        assert_ne!(a, credential_id(PublicKeyFormat::RsaX509Pem, RSA_PUBLIC));
        assert_ne!(a, credential_id(PublicKeyFormat::RsaPem, &format!("{RSA_PUBLIC}\n")));
    }
}
