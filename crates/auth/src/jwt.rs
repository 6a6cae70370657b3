//! Verification of the JWTs devices present to the MQTT bridge (as the CONNECT password) and to
//! the HTTP bridge (as the bearer token), with the rules of Cloud IoT Core.
//!
//! A device token is a compact JWS: `header.claims.signature`, three base64url segments (padding
//! optional). The header names the algorithm, `RS256` (RSASSA-PKCS1-v1_5 with SHA-256) or `ES256`
//! (ECDSA on P-256 with SHA-256, signature as the 64-byte `r || s`); nothing else is accepted, and
//! a `crit` header is refused. The claims must carry `iat` and `exp` (whole seconds since the
//! epoch) and `aud`, the project id as a string; every other claim, `nbf` included, is ignored.
//!
//! The token is accepted when one of the device's credentials of the token's algorithm that has
//! not expired verifies the signature (devices rotate keys by holding up to three), and its times
//! pass the checks of [`JwtRules`]: issued no later than the clock skew from now, lifetime at most
//! the maximum plus the skew, not expired by more than the skew.
//!
//! Signatures are checked with `aws-lc-rs`. Every rejection is a [`JwtError`] whose text is a
//! short sentence that never repeats any part of the token. No input makes this module panic.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ferrocore_model::{DeviceCredential, Timestamp};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::credentials::{KeyAlgorithm, check_device_key};
use crate::keycache::CachedVerificationKey;

/// The longest token accepted, in bytes, checked before anything is decoded. An RS256 token
/// signed with an 8192-bit key is about 1.5 KiB, so honest tokens stay far below this.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The largest `iat` / `exp` given as a JSON float that is accepted (2^53: beyond it, floats no
/// longer hold every whole number).
const MAX_FLOAT_SECONDS: f64 = 9_007_199_254_740_992.0;

/// base64url, with or without padding, refusing non-zero trailing bits so each segment has a
/// single encoding.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(false),
);

/// A device key ready for verification, built once per connection attempt from the device's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationKey {
    pub algorithm: KeyAlgorithm,
    /// RSA: PKCS#1 RSAPublicKey DER; EC P-256: the uncompressed SEC1 point (as in
    /// [`DeviceKey`](crate::credentials::DeviceKey)).
    pub public_key: Vec<u8>,
    /// The credential's `expirationTime`: from this instant on, the key no longer verifies tokens.
    pub expires: Option<Timestamp>,
}

impl VerificationKey {
    /// Parses every credential (skipping ones that fail to parse) — credentials were validated at write time.
    pub fn from_credentials(creds: &[DeviceCredential]) -> Vec<VerificationKey> {
        Self::collect(creds, None)
    }

    /// As [`VerificationKey::from_credentials`], leaving out X.509 credentials whose certificate
    /// is not valid at `now` (before its notBefore or after its notAfter). IoT Core did not look
    /// at these dates; a server may choose to (`--enforce-certificate-validity`).
    pub fn from_credentials_valid_at(creds: &[DeviceCredential], now: Timestamp) -> Vec<VerificationKey> {
        Self::collect(creds, Some(now))
    }

    fn collect(creds: &[DeviceCredential], certificates_valid_at: Option<Timestamp>) -> Vec<VerificationKey> {
        creds
            .iter()
            .filter_map(|cred| {
                let key = check_device_key(cred.public_key.format, &cred.public_key.key).ok()?;
                if let (Some(now), Some(cert)) = (certificates_valid_at, &key.certificate) {
                    let d = &cert.details;
                    let started = d.start_time.is_none_or(|t| t <= now);
                    let unexpired = d.expiry_time.is_none_or(|t| now <= t);
                    if !(started && unexpired) {
                        return None;
                    }
                }
                Some(VerificationKey {
                    algorithm: key.algorithm,
                    public_key: key.public_key,
                    expires: cred.expiration_time,
                })
            })
            .collect()
    }
}

/// What [`verify_device_jwt`] needs of a key: its family, until when it may verify, and the
/// check itself. Implemented by [`VerificationKey`] (raw key bytes, parsed per check) and by
/// [`CachedVerificationKey`] (parsed once, from [`crate::keycache::KeyCache`]).
pub trait TokenKey {
    fn algorithm(&self) -> KeyAlgorithm;
    /// The credential's `expirationTime`: from this instant on, the key verifies nothing.
    fn expires(&self) -> Option<Timestamp>;
    /// Whether `signature` is this key's signature of `message` under the key's JWT algorithm.
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool;
}

impl TokenKey for VerificationKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn expires(&self) -> Option<Timestamp> {
        self.expires
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(signature_algorithm(self.algorithm), &self.public_key).verify(message, signature).is_ok()
    }
}

/// The signature scheme of a key family's JWT algorithm (RS256, ES256).
pub(crate) fn signature_algorithm(algorithm: KeyAlgorithm) -> &'static dyn VerificationAlgorithm {
    match algorithm {
        KeyAlgorithm::Rsa => &signature::RSA_PKCS1_2048_8192_SHA256,
        KeyAlgorithm::EcP256 => &signature::ECDSA_P256_SHA256_FIXED,
    }
}

impl TokenKey for CachedVerificationKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.key.algorithm()
    }

    fn expires(&self) -> Option<Timestamp> {
        self.expires
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.verifies(message, signature)
    }
}

/// Whether a key may still verify tokens at `now`.
fn usable_at<K: TokenKey>(key: &K, now: Timestamp) -> bool {
    key.expires().is_none_or(|expires| expires > now)
}

/// The time limits applied to device tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtRules {
    /// Clock difference tolerated between device and server, in seconds (IoT Core: 10 minutes).
    /// Negative values count as 0.
    pub max_clock_skew_secs: i64,
    /// Longest `exp - iat` accepted, before the skew is added, in seconds (IoT Core: 24 hours).
    /// Negative values count as 0.
    pub max_lifetime_secs: i64,
}

impl Default for JwtRules {
    fn default() -> Self {
        Self { max_clock_skew_secs: 600, max_lifetime_secs: 86_400 }
    }
}

impl JwtRules {
    fn skew(&self) -> i64 {
        self.max_clock_skew_secs.max(0)
    }

    fn lifetime(&self) -> i64 {
        self.max_lifetime_secs.max(0)
    }
}

/// What a verified token established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedJwt {
    /// The token's algorithm, which is also that of the credential that verified it.
    pub algorithm: KeyAlgorithm,
    /// `iat`, in unix seconds.
    pub issued_at: i64,
    /// `exp`, in unix seconds.
    pub expires_at: i64,
}

impl VerifiedJwt {
    /// When the server must cut a connection authenticated by this token (exp + skew), in unix seconds.
    pub fn deadline(&self, rules: &JwtRules) -> i64 {
        self.expires_at.saturating_add(rules.skew())
    }
}

/// Why a token was refused. Each message is a short sentence for the device's `lastErrorStatus`
/// and for logs; none repeats any part of the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("The JWT is too long (the limit is 8192 bytes).")]
    TooLong,
    #[error("The JWT is not three base64url segments separated by dots.")]
    NotCompact,
    #[error("A JWT segment is not valid base64url.")]
    BadEncoding,
    #[error("The JWT header is not a JSON object.")]
    InvalidHeader,
    #[error("The JWT header has no alg.")]
    MissingAlgorithm,
    #[error("The JWT algorithm is not supported: use RS256 or ES256.")]
    UnsupportedAlgorithm,
    #[error("The JWT header typ must be JWT.")]
    InvalidType,
    #[error("The JWT header has crit, which is not supported.")]
    CriticalHeader,
    #[error("The device has no credential of the JWT's algorithm.")]
    NoCredentialForAlgorithm,
    #[error("Every device credential of the JWT's algorithm has expired.")]
    CredentialsExpired,
    #[error("The JWT signature does not match any of the device's credentials.")]
    InvalidSignature,
    #[error("The JWT claims are not a JSON object.")]
    InvalidClaims,
    /// The name of the missing claim: `iat`, `exp` or `aud`.
    #[error("The JWT has no {0} claim.")]
    MissingClaim(&'static str),
    /// The claim (`iat` or `exp`) is not a non-negative whole number.
    #[error("The JWT {0} claim must be a whole number of seconds since the epoch.")]
    InvalidTime(&'static str),
    #[error("The JWT aud claim must be a string, the project id.")]
    InvalidAudience,
    #[error("The JWT audience is not the device's project.")]
    WrongAudience,
    #[error("The JWT was issued in the future; check the device's clock.")]
    IssuedInFuture,
    #[error("The JWT expires before it was issued.")]
    ExpiresBeforeIssued,
    #[error("The JWT lifetime (exp minus iat) is longer than allowed.")]
    LifetimeTooLong,
    /// Cloud IoT Core's own wording for this case.
    #[error("The authorization token expired.")]
    Expired,
}

/// Verifies a device token: its form, its signature against `keys`, its audience (the project
/// id) and its times at `now` under `rules`.
///
/// The steps run in this order, and the first failure is returned: length, segments, header,
/// choice of keys, signature, claims, audience, times. Nothing read from the claims is trusted
/// before the signature has been checked.
pub fn verify_device_jwt<K: TokenKey>(
    token: &str,
    audience: &str,
    keys: &[K],
    now: Timestamp,
    rules: &JwtRules,
) -> Result<VerifiedJwt, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLong);
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err(JwtError::NotCompact);
    };
    let header = decode_segment(header_b64)?;
    let claims = decode_segment(claims_b64)?;
    let signature = decode_segment(signature_b64)?;

    let algorithm = check_header(&header)?;

    // The signing input is the first two segments exactly as sent, with the dot between them.
    let signed = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
    check_signature(algorithm, signed, &signature, keys, now)?;

    let claims = read_claims(&claims)?;
    match claims.aud {
        Field::Absent => return Err(JwtError::MissingClaim("aud")),
        Field::Present(Value::String(aud)) if aud == audience => {}
        Field::Present(Value::String(_)) => return Err(JwtError::WrongAudience),
        Field::Present(_) => return Err(JwtError::InvalidAudience),
    }
    let issued_at = seconds(claims.iat, "iat")?;
    let expires_at = seconds(claims.exp, "exp")?;
    check_times(issued_at, expires_at, now.unix_seconds(), rules)?;
    Ok(VerifiedJwt { algorithm, issued_at, expires_at })
}

fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    BASE64URL.decode(segment).map_err(|_| JwtError::BadEncoding)
}

/// A JSON member that may be absent. Unlike `Option`, an explicit `null` counts as present.
#[derive(Default)]
enum Field {
    #[default]
    Absent,
    Present(Value),
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Field::Present)
    }
}

/// The header members that matter. Other members (`kid`, ...) are skipped; a repeated member
/// that matters makes the header invalid.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    alg: Field,
    #[serde(default)]
    typ: Field,
    #[serde(default)]
    crit: Field,
}

/// The claims that matter; the rest are skipped. A repeated one makes the claims invalid.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iat: Field,
    #[serde(default)]
    exp: Field,
    #[serde(default)]
    aud: Field,
}

/// Parses `json` as a single JSON object into `T`. The derived deserializers would also take a
/// JSON array, so the opening brace is checked first.
fn parse_object<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Option<T> {
    let first = json.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(json).ok()
}

fn check_header(json: &[u8]) -> Result<KeyAlgorithm, JwtError> {
    let header: Header = parse_object(json).ok_or(JwtError::InvalidHeader)?;
    if let Field::Present(_) = header.crit {
        return Err(JwtError::CriticalHeader);
    }
    match header.typ {
        Field::Absent => {}
        Field::Present(Value::String(typ)) if typ.eq_ignore_ascii_case("JWT") => {}
        Field::Present(_) => return Err(JwtError::InvalidType),
    }
    match header.alg {
        Field::Absent => Err(JwtError::MissingAlgorithm),
        Field::Present(Value::String(alg)) if alg == "RS256" => Ok(KeyAlgorithm::Rsa),
        Field::Present(Value::String(alg)) if alg == "ES256" => Ok(KeyAlgorithm::EcP256),
        Field::Present(_) => Err(JwtError::UnsupportedAlgorithm),
    }
}

fn check_signature<K: TokenKey>(
    algorithm: KeyAlgorithm,
    signed: &[u8],
    signature: &[u8],
    keys: &[K],
    now: Timestamp,
) -> Result<(), JwtError> {
    let mut candidates = keys.iter().filter(|key| key.algorithm() == algorithm).peekable();
    if candidates.peek().is_none() {
        return Err(JwtError::NoCredentialForAlgorithm);
    }
    let mut usable = candidates.filter(|key| usable_at(*key, now)).peekable();
    if usable.peek().is_none() {
        return Err(JwtError::CredentialsExpired);
    }
    if usable.any(|key| key.verifies(signed, signature)) { Ok(()) } else { Err(JwtError::InvalidSignature) }
}

fn read_claims(json: &[u8]) -> Result<Claims, JwtError> {
    parse_object(json).ok_or(JwtError::InvalidClaims)
}

/// Reads `iat` or `exp`: a non-negative whole number, written as an integer or as a float with
/// no fractional part (some JSON encoders write `1.7e9`).
fn seconds(field: Field, name: &'static str) -> Result<i64, JwtError> {
    let Field::Present(value) = field else {
        return Err(JwtError::MissingClaim(name));
    };
    let invalid = JwtError::InvalidTime(name);
    let Value::Number(number) = value else {
        return Err(invalid);
    };
    if let Some(int) = number.as_i64() {
        return if int >= 0 { Ok(int) } else { Err(invalid) };
    }
    if number.is_u64() {
        // Larger than i64::MAX.
        return Err(invalid);
    }
    match number.as_f64() {
        Some(float) if float.is_finite() && float.fract() == 0.0 && (0.0..=MAX_FLOAT_SECONDS).contains(&float) => {
            // Exact: a whole number no larger than 2^53.
            Ok(float as i64)
        }
        _ => Err(invalid),
    }
}

fn check_times(issued_at: i64, expires_at: i64, now: i64, rules: &JwtRules) -> Result<(), JwtError> {
    let skew = rules.skew();
    if issued_at > now.saturating_add(skew) {
        return Err(JwtError::IssuedInFuture);
    }
    if expires_at <= issued_at {
        return Err(JwtError::ExpiresBeforeIssued);
    }
    // Both are non-negative, so the difference cannot overflow.
    if expires_at - issued_at > rules.lifetime().saturating_add(skew) {
        return Err(JwtError::LifetimeTooLong);
    }
    if expires_at.saturating_add(skew) < now {
        return Err(JwtError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
    use ferrocore_model::{PublicKey, PublicKeyFormat};
    use serde_json::json;

    use crate::test_fixtures::*;

    const OTHER_EC_PRIVATE: &str = fixture!("device_signed_by_ec_ca_key.pem");
    const OTHER_EC_CERT: &str = fixture!("device_signed_by_ec_ca.pem");
    const THIRD_EC_PRIVATE: &str = fixture!("device_signed_by_ca_key.pem");
    const CA_CERT: &str = fixture!("ca_cert.pem");

    const PROJECT: &str = "my-project";
    const NOW: i64 = 1_800_000_000;
    const SKEW: i64 = 600;
    const DAY: i64 = 86_400;

    fn now() -> Timestamp {
        Timestamp::from_unix_seconds(NOW)
    }

    fn rules() -> JwtRules {
        JwtRules::default()
    }

    /// The DER inside a single-block PEM.
    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).expect("fixture PEM body")
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    enum Signer {
        Rsa(RsaKeyPair),
        Ec(EcdsaKeyPair),
    }

    impl Signer {
        fn rsa(pem: &str) -> Self {
            Signer::Rsa(RsaKeyPair::from_pkcs8(&pem_der(pem)).expect("RSA fixture key"))
        }

        fn ec(pem: &str) -> Self {
            Signer::Ec(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pem_der(pem))
                    .expect("EC fixture key"),
            )
        }

        fn alg(&self) -> &'static str {
            match self {
                Signer::Rsa(_) => "RS256",
                Signer::Ec(_) => "ES256",
            }
        }

        fn sign(&self, message: &[u8]) -> Vec<u8> {
            let rng = SystemRandom::new();
            match self {
                Signer::Rsa(pair) => {
                    let mut out = vec![0; pair.public_modulus_len()];
                    pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut out).expect("RSA signing");
                    out
                }
                Signer::Ec(pair) => pair.sign(&rng, message).expect("EC signing").as_ref().to_vec(),
            }
        }

        /// The key as a `VerificationKey`, without going through a credential.
        fn ec_key(&self) -> VerificationKey {
            let Signer::Ec(pair) = self else { panic!("not an EC signer") };
            VerificationKey {
                algorithm: KeyAlgorithm::EcP256,
                public_key: pair.public_key().as_ref().to_vec(),
                expires: None,
            }
        }
    }

    /// A compact JWS of exactly these header and claims bytes.
    fn sign_raw(signer: &Signer, header: &[u8], claims: &[u8]) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let signature = signer.sign(input.as_bytes());
        format!("{input}.{}", b64(&signature))
    }

    fn sign_json(signer: &Signer, header: &Value, claims: &Value) -> String {
        sign_raw(signer, header.to_string().as_bytes(), claims.to_string().as_bytes())
    }

    fn standard_header(signer: &Signer) -> Value {
        json!({"alg": signer.alg(), "typ": "JWT"})
    }

    fn claims_at(iat: i64, exp: i64) -> Value {
        json!({"iat": iat, "exp": exp, "aud": PROJECT})
    }

    /// A token as the IoT Core samples make it: issued now, valid for an hour.
    fn token(signer: &Signer) -> String {
        sign_json(signer, &standard_header(signer), &claims_at(NOW, NOW + 3600))
    }

    fn with_claims(signer: &Signer, claims: Value) -> String {
        sign_json(signer, &standard_header(signer), &claims)
    }

    fn with_header(signer: &Signer, header: Value) -> String {
        sign_json(signer, &header, &claims_at(NOW, NOW + 3600))
    }

    fn credential(format: PublicKeyFormat, pem: &str, expiration_time: Option<Timestamp>) -> DeviceCredential {
        DeviceCredential { public_key: PublicKey { format, key: pem.to_string() }, expiration_time }
    }

    fn keys_of(creds: &[DeviceCredential]) -> Vec<VerificationKey> {
        let keys = VerificationKey::from_credentials(creds);
        assert_eq!(keys.len(), creds.len(), "every fixture credential parses");
        keys
    }

    fn rsa_keys() -> Vec<VerificationKey> {
        keys_of(&[credential(PublicKeyFormat::RsaPem, RSA_PUBLIC, None)])
    }

    fn ec_keys() -> Vec<VerificationKey> {
        keys_of(&[credential(PublicKeyFormat::Es256Pem, EC_PUBLIC, None)])
    }

    /// Both fixture device keys, RSA and EC.
    fn all_keys() -> Vec<VerificationKey> {
        keys_of(&[
            credential(PublicKeyFormat::RsaPem, RSA_PUBLIC, None),
            credential(PublicKeyFormat::Es256Pem, EC_PUBLIC, None),
        ])
    }

    /// Verifies with the raw keys and, as a cross-check, with the same keys parsed once (as the
    /// key cache holds them): both must give the same answer for every token of this suite.
    fn verify(token: &str, keys: &[VerificationKey]) -> Result<VerifiedJwt, JwtError> {
        let raw = verify_device_jwt(token, PROJECT, keys, now(), &rules());
        let parsed: Vec<CachedVerificationKey> = keys
            .iter()
            .map(|k| CachedVerificationKey {
                key: std::sync::Arc::new(crate::keycache::ParsedKey::from_raw(k.algorithm, &k.public_key)),
                expires: k.expires,
            })
            .collect();
        assert_eq!(verify_device_jwt(token, PROJECT, &parsed, now(), &rules()), raw, "parsed keys disagree");
        raw
    }

    fn verify_err(token: &str, keys: &[VerificationKey]) -> JwtError {
        match verify(token, keys) {
            Ok(verified) => panic!("token accepted ({verified:?}): {token}"),
            Err(e) => e,
        }
    }

    // ---- accepted tokens ----

    #[test]
    fn rs256_with_bare_key_and_certificate() {
        let signer = Signer::rsa(RSA_PRIVATE);
        let token = token(&signer);
        let expected = VerifiedJwt { algorithm: KeyAlgorithm::Rsa, issued_at: NOW, expires_at: NOW + 3600 };
        assert_eq!(verify(&token, &rsa_keys()), Ok(expected.clone()));
        let cert = keys_of(&[credential(PublicKeyFormat::RsaX509Pem, RSA_CERT, None)]);
        assert_eq!(verify(&token, &cert), Ok(expected));
    }

    #[test]
    fn es256_with_bare_key_and_certificate() {
        let signer = Signer::ec(EC_PRIVATE);
        let token = token(&signer);
        let expected = VerifiedJwt { algorithm: KeyAlgorithm::EcP256, issued_at: NOW, expires_at: NOW + 3600 };
        assert_eq!(verify(&token, &ec_keys()), Ok(expected.clone()));
        let cert = keys_of(&[credential(PublicKeyFormat::Es256X509Pem, EC_CERT, None)]);
        assert_eq!(verify(&token, &cert), Ok(expected));
    }

    #[test]
    fn keys_of_the_other_algorithm_are_not_in_the_way() {
        let keys = all_keys();
        assert!(verify(&token(&Signer::rsa(RSA_PRIVATE)), &keys).is_ok());
        assert!(verify(&token(&Signer::ec(EC_PRIVATE)), &keys).is_ok());
    }

    #[test]
    fn key_rotation_second_of_three_keys_verifies() {
        let creds = [
            credential(PublicKeyFormat::Es256X509Pem, OTHER_EC_CERT, None),
            credential(PublicKeyFormat::Es256Pem, EC_PUBLIC, None),
            credential(PublicKeyFormat::RsaX509Pem, RSA_CERT, None),
        ];
        let keys = keys_of(&creds);
        let verified = verify(&token(&Signer::ec(EC_PRIVATE)), &keys).expect("second key verifies");
        assert_eq!(verified.algorithm, KeyAlgorithm::EcP256);
        // The first key verifies its own tokens too; a third EC key verifies nothing.
        assert!(verify(&token(&Signer::ec(OTHER_EC_PRIVATE)), &keys).is_ok());
        assert_eq!(verify_err(&token(&Signer::ec(THIRD_EC_PRIVATE)), &keys), JwtError::InvalidSignature);
    }

    #[test]
    fn from_credentials_skips_unparsable_credentials_and_keeps_expiry() {
        let expires = Some(Timestamp::from_unix_seconds(NOW + 10));
        let creds = [
            credential(PublicKeyFormat::RsaPem, "not a key", None),
            credential(PublicKeyFormat::Es256Pem, EC_PUBLIC, expires),
            credential(PublicKeyFormat::Es256Pem, RSA_PUBLIC, None), // format does not match the key
            credential(PublicKeyFormat::Unspecified, EC_PUBLIC, None),
            credential(PublicKeyFormat::RsaX509Pem, CA_CERT, None),
        ];
        let keys = VerificationKey::from_credentials(&creds);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].algorithm, KeyAlgorithm::EcP256);
        assert_eq!(keys[0].expires, expires);
        assert_eq!(keys[0].public_key.len(), 65);
        assert_eq!(keys[0].public_key[0], 0x04);
        assert_eq!(keys[1].algorithm, KeyAlgorithm::Rsa);
        assert_eq!(keys[1].expires, None);
        assert!(VerificationKey::from_credentials(&[]).is_empty());
    }

    #[test]
    fn header_variants_that_are_accepted() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        for header in [
            json!({"alg": "ES256"}),
            json!({"alg": "ES256", "typ": "jwt"}),
            json!({"typ": "Jwt", "alg": "ES256", "kid": "key-2", "x5t": "ignored", "cty": "whatever"}),
        ] {
            assert!(verify(&with_header(&signer, header.clone()), &keys).is_ok(), "{header}");
        }
        // Whitespace around the JSON is fine.
        let token =
            sign_raw(&signer, b" \n{ \"alg\" : \"ES256\" }\r\n", claims_at(NOW, NOW + 60).to_string().as_bytes());
        assert!(verify(&token, &keys).is_ok());
    }

    #[test]
    fn padded_segments_are_accepted() {
        let signer = Signer::ec(EC_PRIVATE);
        let pad = |s: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(s);
        // Pick claims whose encoding needs padding, so the test means something.
        let claims = json!({"iat": NOW, "exp": NOW + 60, "aud": PROJECT, "x": "y"}).to_string();
        let header = json!({"alg": "ES256", "typ": "JWT"}).to_string();
        assert!(!claims.len().is_multiple_of(3) || !header.len().is_multiple_of(3));
        let input = format!("{}.{}", pad(header.as_bytes()), pad(claims.as_bytes()));
        let token = format!("{input}.{}", pad(&signer.sign(input.as_bytes())));
        assert!(token.contains('='));
        assert!(verify(&token, &ec_keys()).is_ok());
    }

    #[test]
    fn other_claims_and_nbf_are_ignored() {
        let signer = Signer::rsa(RSA_PRIVATE);
        let claims = json!({
            "iat": NOW, "exp": NOW + 60, "aud": PROJECT,
            "nbf": NOW + 100_000, "sub": "device", "iss": 42, "jti": [1, 2]
        });
        assert!(verify(&with_claims(&signer, claims), &rsa_keys()).is_ok());
    }

    #[test]
    fn integral_float_times_are_accepted() {
        let signer = Signer::ec(EC_PRIVATE);
        let claims = format!(r#"{{"iat": 1.8e9, "exp": {}.0, "aud": "{PROJECT}"}}"#, NOW + 60);
        let token = sign_raw(&signer, br#"{"alg":"ES256","typ":"JWT"}"#, claims.as_bytes());
        let verified = verify(&token, &ec_keys()).expect("integral floats");
        assert_eq!((verified.issued_at, verified.expires_at), (NOW, NOW + 60));
    }

    // ---- credentials and their expiry ----

    #[test]
    fn expired_credential_is_skipped() {
        let signer = Signer::ec(EC_PRIVATE);
        let token = token(&signer);
        let at = |secs| Some(Timestamp::from_unix_seconds(secs));
        for expires in [at(NOW - 1), at(NOW), Some(now())] {
            let only = keys_of(&[credential(PublicKeyFormat::Es256Pem, EC_PUBLIC, expires)]);
            assert_eq!(verify_err(&token, &only), JwtError::CredentialsExpired, "{expires:?}");
            // With another, unexpired EC key that does not match, the signature fails.
            let mut keys = only.clone();
            keys.push(Signer::ec(OTHER_EC_PRIVATE).ec_key());
            assert_eq!(verify_err(&token, &keys), JwtError::InvalidSignature);
        }
        // One nanosecond before expiry the key still works.
        let mut key = Signer::ec(EC_PRIVATE).ec_key();
        key.expires = Some(Timestamp(now().nanos() + 1));
        assert!(verify(&token, &[key]).is_ok());
        let later = keys_of(&[credential(PublicKeyFormat::Es256Pem, EC_PUBLIC, at(NOW + 1))]);
        assert!(verify(&token, &later).is_ok());
    }

    #[test]
    fn expired_key_of_the_same_algorithm_next_to_a_valid_one() {
        let signer = Signer::rsa(RSA_PRIVATE);
        let keys = keys_of(&[
            credential(PublicKeyFormat::RsaX509Pem, RSA_CERT, Some(Timestamp::from_unix_seconds(NOW - 5))),
            credential(PublicKeyFormat::RsaPem, RSA_PUBLIC, None),
        ]);
        assert!(verify(&token(&signer), &keys).is_ok());
    }

    #[test]
    fn no_credential_of_the_tokens_algorithm() {
        assert_eq!(verify_err(&token(&Signer::ec(EC_PRIVATE)), &rsa_keys()), JwtError::NoCredentialForAlgorithm);
        assert_eq!(verify_err(&token(&Signer::rsa(RSA_PRIVATE)), &ec_keys()), JwtError::NoCredentialForAlgorithm);
        assert_eq!(verify_err(&token(&Signer::rsa(RSA_PRIVATE)), &[]), JwtError::NoCredentialForAlgorithm);
    }

    // ---- algorithm ----

    #[test]
    fn alg_none_hs256_and_other_algorithms_are_refused() {
        let signer = Signer::rsa(RSA_PRIVATE);
        let keys = all_keys();
        for alg in [
            "none", "None", "HS256", "HS384", "HS512", "PS256", "ES384", "ES512", "RS384", "RS512", "EdDSA", "rs256",
            "es256", "RS256 ", "",
        ] {
            let token = with_header(&signer, json!({"alg": alg, "typ": "JWT"}));
            assert_eq!(verify_err(&token, &keys), JwtError::UnsupportedAlgorithm, "{alg}");
        }
        for alg in [json!(null), json!(256), json!(["RS256"]), json!({"name": "RS256"})] {
            let token = with_header(&signer, json!({"alg": alg, "typ": "JWT"}));
            assert_eq!(verify_err(&token, &keys), JwtError::UnsupportedAlgorithm, "{alg}");
        }
        assert_eq!(verify_err(&with_header(&signer, json!({"typ": "JWT"})), &keys), JwtError::MissingAlgorithm);

        // An unsigned token (empty signature), the classic alg=none attack.
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims_at(NOW, NOW + 60).to_string().as_bytes())
        );
        assert_eq!(verify_err(&format!("{input}."), &keys), JwtError::UnsupportedAlgorithm);
        // The same with a supported alg but no signature.
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64(claims_at(NOW, NOW + 60).to_string().as_bytes())
        );
        assert_eq!(verify_err(&format!("{input}."), &keys), JwtError::InvalidSignature);
    }

    #[test]
    fn hs256_keyed_with_the_public_key_is_refused() {
        // The algorithm-confusion attack: an HMAC over the token keyed with the device's public key.
        let keys = rsa_keys();
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(claims_at(NOW, NOW + 60).to_string().as_bytes())
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &keys[0].public_key);
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        assert_eq!(verify_err(&format!("{input}.{}", b64(tag.as_ref())), &keys), JwtError::UnsupportedAlgorithm);
        // Claiming RS256 for the HMAC does not help.
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64(claims_at(NOW, NOW + 60).to_string().as_bytes())
        );
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        assert_eq!(verify_err(&format!("{input}.{}", b64(tag.as_ref())), &keys), JwtError::InvalidSignature);
    }

    #[test]
    fn alg_that_does_not_match_the_signing_key() {
        let keys = all_keys();
        // Signed with the EC key but labelled RS256, and the reverse.
        let ec = Signer::ec(EC_PRIVATE);
        let labelled_rs = with_header(&ec, json!({"alg": "RS256", "typ": "JWT"}));
        assert_eq!(verify_err(&labelled_rs, &keys), JwtError::InvalidSignature);
        let rsa = Signer::rsa(RSA_PRIVATE);
        let labelled_es = with_header(&rsa, json!({"alg": "ES256", "typ": "JWT"}));
        assert_eq!(verify_err(&labelled_es, &keys), JwtError::InvalidSignature);
        // An EC token checked against EC keys only when an RSA key is present.
        assert_eq!(verify_err(&labelled_rs, &ec_keys()), JwtError::NoCredentialForAlgorithm);
    }

    #[test]
    fn typ_and_crit() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        for typ in [json!("JOSE"), json!("JWS"), json!("at+jwt"), json!(""), json!(null), json!(1), json!(["JWT"])] {
            let token = with_header(&signer, json!({"alg": "ES256", "typ": typ}));
            assert_eq!(verify_err(&token, &keys), JwtError::InvalidType, "{typ}");
        }
        for crit in [json!(["exp"]), json!([]), json!(null), json!("b64")] {
            let token = with_header(&signer, json!({"alg": "ES256", "typ": "JWT", "crit": crit}));
            assert_eq!(verify_err(&token, &keys), JwtError::CriticalHeader, "{crit}");
        }
    }

    #[test]
    fn header_that_is_not_a_json_object() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        let claims = claims_at(NOW, NOW + 60).to_string();
        for header in [
            &b""[..],
            b"null",
            b"[\"ES256\", \"JWT\"]",
            b"\"ES256\"",
            b"{\"alg\":\"ES256\"",
            b"{\"alg\":\"ES256\"} {}",
            b"{\"alg\":\"ES256\",}",
            b"{\"alg\":\"ES256\",\"alg\":\"RS256\"}",
            b"{\"alg\":\"ES256\",\"alg\":\"ES256\"}",
            b"\xef\xbb\xbf{\"alg\":\"ES256\"}",
            b"{\"alg\":\"ES\xff256\"}",
        ] {
            let token = sign_raw(&signer, header, claims.as_bytes());
            assert_eq!(verify_err(&token, &keys), JwtError::InvalidHeader, "{}", String::from_utf8_lossy(header));
        }
    }

    // ---- tampering ----

    #[test]
    fn tampered_payload() {
        for (signer, keys) in [(Signer::rsa(RSA_PRIVATE), rsa_keys()), (Signer::ec(EC_PRIVATE), ec_keys())] {
            let token = token(&signer);
            let parts: Vec<&str> = token.split('.').collect();
            let forged = b64(claims_at(NOW, NOW + 7200).to_string().as_bytes());
            let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
            assert_eq!(verify_err(&tampered, &keys), JwtError::InvalidSignature);
            // A different project, same signature.
            let other = b64(json!({"iat": NOW, "exp": NOW + 3600, "aud": "other"}).to_string().as_bytes());
            assert_eq!(verify_err(&format!("{}.{other}.{}", parts[0], parts[2]), &keys), JwtError::InvalidSignature);
            // A header with an extra member, same signature.
            let header = b64(json!({"alg": signer.alg(), "typ": "JWT", "kid": "x"}).to_string().as_bytes());
            assert_eq!(verify_err(&format!("{header}.{}.{}", parts[1], parts[2]), &keys), JwtError::InvalidSignature);
        }
    }

    #[test]
    fn tampered_signature() {
        for (signer, keys) in [(Signer::rsa(RSA_PRIVATE), rsa_keys()), (Signer::ec(EC_PRIVATE), ec_keys())] {
            let token = token(&signer);
            let (input, sig_b64) = token.rsplit_once('.').unwrap();
            let sig = BASE64URL.decode(sig_b64).unwrap();
            for i in [0, sig.len() / 2, sig.len() - 1] {
                let mut bad = sig.clone();
                bad[i] ^= 0x01;
                assert_eq!(verify_err(&format!("{input}.{}", b64(&bad)), &keys), JwtError::InvalidSignature);
            }
            // Truncated, extended, and empty signatures.
            let short = b64(&sig[..sig.len() - 1]);
            let long = b64(&[&sig[..], &[0]].concat());
            for bad in [short, long, String::new()] {
                assert_eq!(verify_err(&format!("{input}.{bad}"), &keys), JwtError::InvalidSignature);
            }
        }
    }

    #[test]
    fn ecdsa_signature_in_der_form_is_refused() {
        // JOSE wants r || s; a DER-encoded ECDSA signature (what some libraries produce) fails.
        let Signer::Ec(pair) = Signer::ec(EC_PRIVATE) else { unreachable!() };
        let der_pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &pem_der(EC_PRIVATE)).unwrap();
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"ES256","typ":"JWT"}"#),
            b64(claims_at(NOW, NOW + 60).to_string().as_bytes())
        );
        let der = der_pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        assert_eq!(verify_err(&format!("{input}.{}", b64(der.as_ref())), &ec_keys()), JwtError::InvalidSignature);
        let fixed = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        assert!(verify(&format!("{input}.{}", b64(fixed.as_ref())), &ec_keys()).is_ok());
    }

    // ---- audience ----

    #[test]
    fn wrong_audience() {
        let signer = Signer::rsa(RSA_PRIVATE);
        let keys = rsa_keys();
        for aud in
            ["other-project", "My-Project", "my-project ", " my-project", "", "projects/my-project", "my-project\u{0}"]
        {
            let token = with_claims(&signer, json!({"iat": NOW, "exp": NOW + 60, "aud": aud}));
            assert_eq!(verify_err(&token, &keys), JwtError::WrongAudience, "{aud:?}");
        }
        // The same token against the right and the wrong project.
        let token = token(&signer);
        assert!(verify_device_jwt(&token, PROJECT, &keys, now(), &rules()).is_ok());
        assert_eq!(verify_device_jwt(&token, "other", &keys, now(), &rules()), Err(JwtError::WrongAudience));
    }

    #[test]
    fn audience_must_be_a_string() {
        let signer = Signer::rsa(RSA_PRIVATE);
        let keys = rsa_keys();
        for aud in [json!([PROJECT]), json!([]), json!(null), json!(7), json!({"aud": PROJECT}), json!(true)] {
            let token = with_claims(&signer, json!({"iat": NOW, "exp": NOW + 60, "aud": aud}));
            assert_eq!(verify_err(&token, &keys), JwtError::InvalidAudience, "{aud}");
        }
    }

    // ---- claims ----

    #[test]
    fn missing_claims() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        let cases = [
            (json!({"exp": NOW + 60, "aud": PROJECT}), "iat"),
            (json!({"iat": NOW, "aud": PROJECT}), "exp"),
            (json!({"iat": NOW, "exp": NOW + 60}), "aud"),
            (json!({}), "aud"),
        ];
        for (claims, name) in cases {
            assert_eq!(verify_err(&with_claims(&signer, claims), &keys), JwtError::MissingClaim(name));
        }
    }

    #[test]
    fn times_that_are_not_whole_seconds() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        let bad = [
            json!(NOW.to_string()),
            json!("1800000000"),
            json!(null),
            json!(true),
            json!([NOW]),
            json!({"t": NOW}),
            json!(-1),
            json!(1_800_000_000.5),
            json!(u64::MAX),
            json!(1e300),
            json!(-0.5),
        ];
        for value in &bad {
            let token = with_claims(&signer, json!({"iat": value, "exp": NOW + 60, "aud": PROJECT}));
            assert_eq!(verify_err(&token, &keys), JwtError::InvalidTime("iat"), "iat {value}");
            let token = with_claims(&signer, json!({"iat": NOW, "exp": value, "aud": PROJECT}));
            assert_eq!(verify_err(&token, &keys), JwtError::InvalidTime("exp"), "exp {value}");
        }
    }

    #[test]
    fn claims_that_are_not_a_json_object() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        let header = br#"{"alg":"ES256","typ":"JWT"}"#;
        let dup = format!(r#"{{"iat":{NOW},"exp":{},"aud":"other","aud":"{PROJECT}"}}"#, NOW + 60);
        for claims in [&b""[..], b"[]", b"null", b"42", b"{", b"{\"iat\":1}x", dup.as_bytes(), b"\xff"] {
            let token = sign_raw(&signer, header, claims);
            assert_eq!(verify_err(&token, &keys), JwtError::InvalidClaims, "{}", String::from_utf8_lossy(claims));
        }
    }

    // ---- times ----

    #[test]
    fn iat_in_the_future() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        // Within the skew: accepted.
        let iat = NOW + SKEW;
        assert!(verify(&with_claims(&signer, claims_at(iat, iat + 60)), &keys).is_ok());
        let iat = NOW + 60;
        assert!(verify(&with_claims(&signer, claims_at(iat, iat + 3600)), &keys).is_ok());
        // Beyond it: refused.
        let iat = NOW + SKEW + 1;
        assert_eq!(verify_err(&with_claims(&signer, claims_at(iat, iat + 60)), &keys), JwtError::IssuedInFuture);
        let iat = NOW + DAY;
        assert_eq!(verify_err(&with_claims(&signer, claims_at(iat, iat + 60)), &keys), JwtError::IssuedInFuture);
    }

    #[test]
    fn exp_plus_skew_in_the_past() {
        let signer = Signer::rsa(RSA_PRIVATE);
        let keys = rsa_keys();
        // Expired, but within the skew: accepted (exp + skew == now is the last accepted second).
        assert!(verify(&with_claims(&signer, claims_at(NOW - 3600, NOW - SKEW)), &keys).is_ok());
        assert!(verify(&with_claims(&signer, claims_at(NOW - 3600, NOW - 1)), &keys).is_ok());
        // Beyond the skew: refused.
        let expired = with_claims(&signer, claims_at(NOW - 3600, NOW - SKEW - 1));
        assert_eq!(verify_err(&expired, &keys), JwtError::Expired);
        assert_eq!(JwtError::Expired.to_string(), "The authorization token expired.");
        assert_eq!(verify_err(&with_claims(&signer, claims_at(0, 60)), &keys), JwtError::Expired);
    }

    #[test]
    fn exp_must_follow_iat() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        assert_eq!(verify_err(&with_claims(&signer, claims_at(NOW, NOW)), &keys), JwtError::ExpiresBeforeIssued);
        assert_eq!(verify_err(&with_claims(&signer, claims_at(NOW, NOW - 1)), &keys), JwtError::ExpiresBeforeIssued);
        assert!(verify(&with_claims(&signer, claims_at(NOW, NOW + 1)), &keys).is_ok());
    }

    #[test]
    fn lifetime_over_a_day_plus_skew() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        assert!(verify(&with_claims(&signer, claims_at(NOW, NOW + DAY)), &keys).is_ok());
        assert!(verify(&with_claims(&signer, claims_at(NOW, NOW + DAY + SKEW)), &keys).is_ok());
        let long = with_claims(&signer, claims_at(NOW, NOW + DAY + SKEW + 1));
        assert_eq!(verify_err(&long, &keys), JwtError::LifetimeTooLong);
        let forever = with_claims(&signer, claims_at(NOW, i64::MAX));
        assert_eq!(verify_err(&forever, &keys), JwtError::LifetimeTooLong);
    }

    #[test]
    fn custom_rules() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        let strict = JwtRules { max_clock_skew_secs: 0, max_lifetime_secs: 3600 };
        let check =
            |claims, rules: &JwtRules| verify_device_jwt(&with_claims(&signer, claims), PROJECT, &keys, now(), rules);
        assert!(check(claims_at(NOW, NOW + 3600), &strict).is_ok());
        assert_eq!(check(claims_at(NOW, NOW + 3601), &strict), Err(JwtError::LifetimeTooLong));
        assert_eq!(check(claims_at(NOW + 1, NOW + 60), &strict), Err(JwtError::IssuedInFuture));
        assert_eq!(check(claims_at(NOW - 60, NOW - 1), &strict), Err(JwtError::Expired));
        assert!(check(claims_at(NOW - 60, NOW), &strict).is_ok());
        // Nonsense rules are clamped, not trusted.
        let negative = JwtRules { max_clock_skew_secs: -100, max_lifetime_secs: i64::MIN };
        assert_eq!(check(claims_at(NOW, NOW + 1), &negative), Err(JwtError::LifetimeTooLong));
        let huge = JwtRules { max_clock_skew_secs: i64::MAX, max_lifetime_secs: i64::MAX };
        assert!(check(claims_at(NOW, i64::MAX), &huge).is_ok());
        let verified = check(claims_at(NOW, i64::MAX), &huge).unwrap();
        assert_eq!(verified.deadline(&huge), i64::MAX);
    }

    #[test]
    fn deadline_is_exp_plus_skew() {
        let signer = Signer::ec(EC_PRIVATE);
        let verified = verify(&with_claims(&signer, claims_at(NOW, NOW + 4200)), &ec_keys()).unwrap();
        // IoT Core's example: exp 01:10:20 → the connection is cut at 01:20:20.
        assert_eq!(verified.deadline(&rules()), NOW + 4200 + 600);
        assert_eq!(verified.deadline(&JwtRules { max_clock_skew_secs: 0, ..rules() }), NOW + 4200);
        assert_eq!(verified.deadline(&JwtRules { max_clock_skew_secs: -5, ..rules() }), NOW + 4200);
        assert_eq!(JwtRules::default(), JwtRules { max_clock_skew_secs: 600, max_lifetime_secs: 86_400 });
    }

    // ---- malformed tokens ----

    #[test]
    fn garbage_segments() {
        let keys = all_keys();
        let good = token(&Signer::ec(EC_PRIVATE));
        let parts: Vec<&str> = good.split('.').collect();
        let two_segments = format!("{}.{}", parts[0], parts[1]);
        let four_segments = [format!("{good}."), format!(".{good}"), format!("{good}.{}", parts[2])];
        for token in ["", ".", "...", "a.b", "abc", "a.b.c.d", &two_segments]
            .into_iter()
            .chain(four_segments.iter().map(String::as_str))
        {
            assert_eq!(verify_err(token, &keys), JwtError::NotCompact, "{token:?}");
        }
        // Three empty segments decode, to an empty header.
        assert_eq!(verify_err("..", &keys), JwtError::InvalidHeader);
        let bad_b64 = [
            "a", // one leftover character
            "ab+c", "ab/c", "ab c", "ab\nc", "abc=d", "ab===", "é", "ab%3D", "eyJ", // trailing bits set
        ];
        for bad in bad_b64 {
            for position in 0..3 {
                let mut segments = parts.clone();
                segments[position] = bad;
                assert_eq!(verify_err(&segments.join("."), &keys), JwtError::BadEncoding, "{bad:?} at {position}");
            }
        }
        // Surrounding whitespace is not trimmed.
        assert_eq!(verify_err(&format!(" {good}"), &keys), JwtError::BadEncoding);
        assert_eq!(verify_err(&format!("{good}\n"), &keys), JwtError::BadEncoding);
        assert_eq!(verify_err(&format!("Bearer {good}"), &keys), JwtError::BadEncoding);
    }

    #[test]
    fn oversize_token() {
        let keys = all_keys();
        let good = token(&Signer::rsa(RSA_PRIVATE));
        // Pad the claims with an ignored claim up to exactly the limit, then one byte over.
        let signer = Signer::rsa(RSA_PRIVATE);
        let padded = |filler: usize| {
            with_claims(&signer, json!({"iat": NOW, "exp": NOW + 60, "aud": PROJECT, "f": "x".repeat(filler)}))
        };
        let base = padded(0).len();
        let sized = |len: usize| {
            // Four base64 characters per three bytes; start a little below the estimate.
            let mut filler = (len.saturating_sub(base) * 3 / 4).saturating_sub(8);
            loop {
                let token = padded(filler);
                if token.len() >= len {
                    return token;
                }
                filler += 1;
            }
        };
        let at_limit = sized(MAX_TOKEN_LEN);
        assert_eq!(at_limit.len(), MAX_TOKEN_LEN);
        assert!(verify(&at_limit, &keys).is_ok());
        let over = sized(MAX_TOKEN_LEN + 1);
        assert!(over.len() > MAX_TOKEN_LEN);
        assert_eq!(verify_err(&over, &keys), JwtError::TooLong);
        assert_eq!(verify_err(&"a".repeat(MAX_TOKEN_LEN + 1), &keys), JwtError::TooLong);
        assert_eq!(verify_err(&".".repeat(1_000_000), &keys), JwtError::TooLong);
        assert_eq!(verify_err(&format!("{good}{}", " ".repeat(MAX_TOKEN_LEN)), &keys), JwtError::TooLong);
    }

    #[test]
    fn deeply_nested_json_does_not_overflow() {
        let signer = Signer::ec(EC_PRIVATE);
        let keys = ec_keys();
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let claims =
            |extra: &str| format!(r#"{{"iat":{NOW},"exp":{},"aud":"{PROJECT}"{extra}}}"#, NOW + 60).into_bytes();
        // Nesting inside a member that is read hits serde_json's depth limit.
        let header = format!(r#"{{"alg":"ES256","typ":{}}}"#, nested(2000));
        assert_eq!(verify_err(&sign_raw(&signer, header.as_bytes(), &claims("")), &keys), JwtError::InvalidHeader);
        let aud = format!(r#"{{"iat":{NOW},"exp":{},"aud":{}}}"#, NOW + 60, nested(2000));
        let token = sign_raw(&signer, br#"{"alg":"ES256"}"#, aud.as_bytes());
        assert_eq!(verify_err(&token, &keys), JwtError::InvalidClaims);
        // Inside an ignored member it is skipped without recursion.
        let header = format!(r#"{{"alg":"ES256","kid":{}}}"#, nested(2000));
        assert!(verify(&sign_raw(&signer, header.as_bytes(), &claims("")), &keys).is_ok());
        let extra = format!(r#","x":{}"#, nested(2000));
        assert!(verify(&sign_raw(&signer, br#"{"alg":"ES256"}"#, &claims(&extra)), &keys).is_ok());
    }

    #[test]
    fn messages_are_short_sentences_without_token_text() {
        let all = [
            JwtError::TooLong,
            JwtError::NotCompact,
            JwtError::BadEncoding,
            JwtError::InvalidHeader,
            JwtError::MissingAlgorithm,
            JwtError::UnsupportedAlgorithm,
            JwtError::InvalidType,
            JwtError::CriticalHeader,
            JwtError::NoCredentialForAlgorithm,
            JwtError::CredentialsExpired,
            JwtError::InvalidSignature,
            JwtError::InvalidClaims,
            JwtError::MissingClaim("iat"),
            JwtError::InvalidTime("exp"),
            JwtError::InvalidAudience,
            JwtError::WrongAudience,
            JwtError::IssuedInFuture,
            JwtError::ExpiresBeforeIssued,
            JwtError::LifetimeTooLong,
            JwtError::Expired,
        ];
        assert!(JwtError::TooLong.to_string().contains(&MAX_TOKEN_LEN.to_string()));
        let mut seen = std::collections::HashSet::new();
        for error in all {
            let message = error.to_string();
            assert!(message.starts_with(char::is_uppercase) && message.ends_with('.'), "{message}");
            assert!(message.len() < 90, "{message}");
            assert!(seen.insert(message.clone()), "duplicate message {message}");
        }
    }

    // ---- robustness ----

    /// xorshift64*: deterministic, so a failure reproduces.
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

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const TOKEN_CHARS: &[char] =
        &['a', 'Z', '0', '9', '-', '_', '+', '/', '=', '.', ' ', '\n', '\0', 'é', '\u{2028}', '{', '"', '\u{ffff}'];

    fn mutate(rng: &mut Rng, token: &str) -> String {
        let mut chars: Vec<char> = token.chars().collect();
        for _ in 0..=rng.below(4) {
            let len = chars.len();
            match rng.below(7) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    chars[i] = *rng.pick(TOKEN_CHARS);
                }
                1 => {
                    let i = rng.below(len + 1);
                    chars.insert(i, *rng.pick(TOKEN_CHARS));
                }
                2 if len > 0 => {
                    chars.remove(rng.below(len));
                }
                3 => chars.truncate(rng.below(len + 1)),
                4 if len > 0 => {
                    // Swap two characters.
                    let (i, j) = (rng.below(len), rng.below(len));
                    chars.swap(i, j);
                }
                5 if len > 0 => {
                    // Flip a bit of a base64 character's value, keeping it in the alphabet.
                    let i = rng.below(len);
                    let alphabet: Vec<char> = ('A'..='Z').chain('a'..='z').chain('0'..='9').chain(['-', '_']).collect();
                    if let Some(pos) = alphabet.iter().position(|&c| c == chars[i]) {
                        chars[i] = alphabet[pos ^ (1 << rng.below(6))];
                    }
                }
                _ => {
                    // Duplicate a run.
                    let i = rng.below(len + 1);
                    let j = (i + rng.below(16)).min(len);
                    let run: Vec<char> = chars[i..j].to_vec();
                    chars.splice(i..i, run);
                }
            }
        }
        chars.into_iter().collect()
    }

    fn random_json(rng: &mut Rng, depth: usize) -> Value {
        match rng.below(if depth > 2 { 8 } else { 10 }) {
            0 => Value::Null,
            1 => json!(rng.below(2) == 0),
            2 => json!(NOW + rng.below(200_000) as i64 - 100_000),
            3 => json!(-(rng.below(1000) as i64)),
            4 => json!((rng.next() as f64) / 7.0),
            5 => json!(*rng.pick(&["RS256", "ES256", "none", "JWT", "jwt", PROJECT, "", "\u{0}"])),
            6 => json!(rng.next()),
            7 => json!(f64::from_bits(rng.next())), // null when not finite
            8 => Value::Array((0..rng.below(3)).map(|_| random_json(rng, depth + 1)).collect()),
            _ => random_object(rng, depth + 1),
        }
    }

    fn random_object(rng: &mut Rng, depth: usize) -> Value {
        const NAMES: &[&str] = &["alg", "typ", "crit", "kid", "iat", "exp", "aud", "nbf", "x"];
        let mut object = serde_json::Map::new();
        for _ in 0..rng.below(6) {
            object.insert((*rng.pick(NAMES)).to_string(), random_json(rng, depth));
        }
        Value::Object(object)
    }

    #[test]
    fn no_panic_on_mutated_tokens() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let keys = all_keys();
        let originals = [token(&Signer::rsa(RSA_PRIVATE)), token(&Signer::ec(EC_PRIVATE))];
        let mut accepted = 0;
        for round in 0..20_000 {
            let original = &originals[round % 2];
            let mutated = mutate(&mut rng, original);
            if verify(&mutated, &keys).is_ok() {
                // Only the optional padding may differ: the signature covers the segments as sent,
                // but a padded signature segment decodes to the same signature.
                assert_eq!(&mutated.replace('=', ""), original, "a mutated token was accepted");
                accepted += 1;
            }
        }
        // Random strings over the token alphabet, of random lengths.
        for _ in 0..5_000 {
            let len = rng.below(300);
            let token: String = (0..len).map(|_| *rng.pick(TOKEN_CHARS)).collect();
            assert!(verify(&token, &keys).is_err());
        }
        // Random bytes in each segment, properly base64url-encoded.
        for _ in 0..5_000 {
            let segment = |rng: &mut Rng| {
                let bytes: Vec<u8> = (0..rng.below(80)).map(|_| rng.next() as u8).collect();
                b64(&bytes)
            };
            let token = format!("{}.{}.{}", segment(&mut rng), segment(&mut rng), segment(&mut rng));
            assert!(verify(&token, &keys).is_err());
        }
        assert!(accepted < 20_000);
    }

    #[test]
    fn no_panic_on_signed_random_headers_and_claims() {
        // Properly signed tokens with random JSON, so every check after the signature runs.
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let keys = all_keys();
        let signer = Signer::ec(EC_PRIVATE);
        for _ in 0..3_000 {
            let mut header = random_object(&mut rng, 0);
            if rng.below(2) == 0 {
                header["alg"] = json!("ES256");
            }
            let mut claims = random_object(&mut rng, 0);
            if rng.below(2) == 0 {
                claims["aud"] = json!(PROJECT);
            }
            let token = sign_json(&signer, &header, &claims);
            if let Ok(verified) = verify(&token, &keys) {
                assert_eq!(header["alg"], json!("ES256"));
                assert_eq!(claims["aud"], json!(PROJECT));
                assert!(verified.expires_at > verified.issued_at);
            }
            let _ = verify_device_jwt(&token, PROJECT, &keys, Timestamp(i64::MIN), &rules());
            let _ = verify_device_jwt(&token, PROJECT, &keys, Timestamp(i64::MAX), &rules());
        }
    }
}
