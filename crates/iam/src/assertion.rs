//! Service-account JWTs: the RFC 7523 assertion sent to `POST /token`, and the self-signed JWT of
//! AIP-4111 sent directly as a bearer token. Both are RS256, signed with one of the account's keys
//! (the header's `kid` picks it; without one, any key of the account may verify), `iss` the
//! account's email (`sub`, when present, the same), lifetime at most one hour, with five minutes
//! of clock skew either way.
//!
//! A self-signed JWT must name the API it is for: an `aud` of a Google API URL Ferrocore serves
//! (`https://cloudiot.googleapis.com/`, `https://pubsub.googleapis.com/`, with or without the
//! trailing slash or a path) or a `scope` claim.

/// The clock skew allowed on `iat` and `exp`, in seconds.
pub const SKEW_SECONDS: i64 = 300;
/// The longest lifetime (`exp - iat`) accepted, in seconds.
pub const MAX_LIFETIME_SECONDS: i64 = 3600;
/// Where google-auth sends its assertions, whatever the key file's `token_uri` says; both are
/// accepted as `aud` of an assertion.
pub const GOOGLE_TOKEN_URIS: &[&str] =
    &["https://oauth2.googleapis.com/token", "https://www.googleapis.com/oauth2/v4/token"];

use crate::b64::BASE64URL;
use aws_lc_rs::signature::ParsedPublicKey;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The longest JWT accepted, in bytes, checked before anything is decoded (as for device JWTs).
pub const MAX_JWT_LEN: usize = 8 * 1024;

/// The API hosts a self-signed JWT may name as its audience.
const API_AUDIENCES: &[&str] = &["https://cloudiot.googleapis.com", "https://pubsub.googleapis.com"];

/// What the JWT must be for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Audience<'a> {
    /// A bearer token for the APIs: `aud` an API URL, or a `scope` claim.
    Api,
    /// A `POST /token` assertion: `aud` this server's token URL or one of [`GOOGLE_TOKEN_URIS`].
    TokenEndpoint(&'a str),
}

/// A JWT that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub email: String,
    /// The key that verified the signature.
    pub key_id: String,
    pub expires_at: i64,
}

/// Whether `token` has the shape of a compact JWS: three non-empty base64url segments.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    let mut n = 0;
    for segment in token.split('.') {
        n += 1;
        if segment.is_empty()
            || !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        {
            return false;
        }
    }
    n == 3
}

/// Verifies a service-account JWT at `now` (unix seconds). `keys` answers an account's keys by
/// email (`None`: no such account). The reason of a refusal is a short sentence that never
/// repeats the token. Nothing read from the claims is trusted before the signature is checked,
/// except `iss` and the header's `kid`, which only choose the keys to try.
pub(crate) fn verify(
    token: &str,
    keys: impl FnOnce(&str) -> Option<Vec<(String, Arc<ParsedPublicKey>)>>,
    now: i64,
    audience: Audience<'_>,
) -> Result<Verified, &'static str> {
    if token.len() > MAX_JWT_LEN {
        return Err("The JWT is too long.");
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err("The JWT is not three base64url segments separated by dots.");
    };
    let decode = |s: &str| BASE64URL.decode(s).map_err(|_| "A JWT segment is not valid base64url.");
    let header = object(&decode(header_b64)?).ok_or("The JWT header is not a JSON object.")?;
    let claims = object(&decode(claims_b64)?).ok_or("The JWT claims are not a JSON object.")?;
    let signature = decode(signature_b64)?;

    if header.contains_key("crit") {
        return Err("The JWT header has crit, which is not supported.");
    }
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "RS256" => {}
        _ => return Err("The JWT algorithm must be RS256."),
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err("The JWT header typ must be JWT."),
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err("The JWT header kid must be a string."),
    };
    let Some(Value::String(iss)) = claims.get("iss") else {
        return Err("The JWT has no iss claim naming the service account.");
    };

    let keys = keys(iss).ok_or("The JWT issuer is not a known service account.")?;
    let mut candidates = keys.iter().filter(|(id, _)| kid.is_none_or(|kid| kid == id)).peekable();
    if candidates.peek().is_none() {
        return Err(if kid.is_some() {
            "The JWT kid is not a key of the service account."
        } else {
            "The service account has no keys."
        });
    }
    // The signing input is the first two segments exactly as sent, with the dot between them.
    let signed = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
    let key_id = candidates
        .find(|(_, key)| key.verify_sig(signed, &signature).is_ok())
        .map(|(id, _)| id.clone())
        .ok_or("The JWT signature does not match a key of the service account.")?;

    match claims.get("sub") {
        None => {}
        Some(Value::String(sub)) if sub == iss => {}
        Some(_) => return Err("The JWT sub claim must be the service account's email, as iss."),
    }
    let iat = seconds(&claims, "iat").ok_or("The JWT iat claim must be a whole number of seconds.")?;
    let exp = seconds(&claims, "exp").ok_or("The JWT exp claim must be a whole number of seconds.")?;
    if exp <= iat {
        return Err("The JWT expires before it was issued.");
    }
    if exp.saturating_sub(iat) > MAX_LIFETIME_SECONDS {
        return Err("The JWT lifetime (exp minus iat) is longer than one hour.");
    }
    if iat > now.saturating_add(SKEW_SECONDS) {
        return Err("The JWT was issued in the future; check the clock.");
    }
    if exp.saturating_add(SKEW_SECONDS) < now {
        return Err("The JWT has expired.");
    }
    check_audience(&claims, audience)?;
    Ok(Verified { email: iss.clone(), key_id, expires_at: exp })
}

/// Parses a JSON object (anything else, arrays included, is refused).
fn object(json: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice(json).ok()
}

/// A time claim: a JSON integer.
fn seconds(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    claims.get(name)?.as_i64()
}

/// The `aud` claim's values: a string, or an array of strings (RFC 7519 allows both).
fn audiences(claims: &Map<String, Value>) -> Result<Vec<&str>, &'static str> {
    match claims.get("aud") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or("The JWT aud claim must be a string or an array of strings."))
            .collect(),
        Some(_) => Err("The JWT aud claim must be a string or an array of strings."),
    }
}

fn check_audience(claims: &Map<String, Value>, audience: Audience<'_>) -> Result<(), &'static str> {
    let auds = audiences(claims)?;
    match audience {
        Audience::Api => {
            let has_scope = matches!(claims.get("scope"), Some(Value::String(s)) if !s.trim().is_empty());
            if has_scope || auds.iter().any(|a| is_api_audience(a)) {
                Ok(())
            } else if auds.is_empty() {
                Err("The JWT has neither an aud naming the API nor a scope claim.")
            } else {
                Err("The JWT audience is not an API this server serves.")
            }
        }
        Audience::TokenEndpoint(token_uri) => {
            if auds.is_empty() {
                Err("The JWT has no aud claim.")
            } else if auds.iter().any(|a| *a == token_uri || GOOGLE_TOKEN_URIS.contains(a)) {
                Ok(())
            } else {
                Err("The JWT audience is not this token endpoint.")
            }
        }
    }
}

/// `https://cloudiot.googleapis.com` or `https://pubsub.googleapis.com`, optionally followed by a
/// path (`/`, `/google.pubsub.v1.Publisher`); not another host that merely starts the same way.
fn is_api_audience(aud: &str) -> bool {
    API_AUDIENCES.iter().any(|base| aud.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
    use aws_lc_rs::signature::{self, KeyPair as _};
    use serde_json::json;
    use std::sync::OnceLock;

    const NOW: i64 = 1_800_000_000;
    const EMAIL: &str = "backend@p.iam.gserviceaccount.com";

    /// Two key pairs, made once for every test of the crate (RSA generation is slow).
    pub(crate) fn test_keys() -> &'static [RsaKeyPair; 2] {
        static KEYS: OnceLock<[RsaKeyPair; 2]> = OnceLock::new();
        KEYS.get_or_init(|| {
            [RsaKeyPair::generate(KeySize::Rsa2048).unwrap(), RsaKeyPair::generate(KeySize::Rsa2048).unwrap()]
        })
    }

    /// Signs `header` and `claims` as a compact RS256 JWS.
    pub(crate) fn sign(key: &RsaKeyPair, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            BASE64URL.encode(serde_json::to_vec(header).unwrap()),
            BASE64URL.encode(serde_json::to_vec(claims).unwrap())
        );
        let mut sig = vec![0; key.public_modulus_len()];
        key.sign(&signature::RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), input.as_bytes(), &mut sig)
            .unwrap();
        format!("{input}.{}", BASE64URL.encode(sig))
    }

    fn verifier(key: &RsaKeyPair) -> Arc<ParsedPublicKey> {
        let der = key.public_key().as_der().unwrap();
        Arc::new(ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der.as_ref()).unwrap())
    }

    fn account_keys(email: &str) -> Option<Vec<(String, Arc<ParsedPublicKey>)>> {
        let [a, b] = test_keys();
        (email == EMAIL).then(|| vec![("ka".to_string(), verifier(a)), ("kb".to_string(), verifier(b))])
    }

    fn claims() -> Value {
        json!({"iss": EMAIL, "sub": EMAIL, "aud": "https://pubsub.googleapis.com/", "iat": NOW - 10, "exp": NOW + 3590})
    }

    fn check(token: &str) -> Result<Verified, &'static str> {
        verify(token, account_keys, NOW, Audience::Api)
    }

    fn with(changes: Value) -> Value {
        let mut c = claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    #[test]
    fn a_good_self_signed_jwt_verifies_with_the_named_key() {
        let [a, b] = test_keys();
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": "kb"});
        let v = check(&sign(b, &header, &claims())).unwrap();
        assert_eq!(v, Verified { email: EMAIL.into(), key_id: "kb".into(), expires_at: NOW + 3590 });
        // Without kid any key of the account may verify.
        let v = check(&sign(a, &json!({"alg": "RS256"}), &claims())).unwrap();
        assert_eq!(v.key_id, "ka");
        // A scope claim instead of aud.
        let scoped = with(json!({"aud": null, "scope": "https://www.googleapis.com/auth/cloud-platform"}));
        assert!(check(&sign(a, &json!({"alg": "RS256"}), &scoped)).is_ok());
        for aud in [
            "https://cloudiot.googleapis.com",
            "https://cloudiot.googleapis.com/",
            "https://pubsub.googleapis.com/google.pubsub.v1.Publisher",
        ] {
            assert!(check(&sign(a, &json!({"alg": "RS256"}), &with(json!({"aud": aud})))).is_ok(), "{aud}");
        }
        assert!(looks_like_jwt(&sign(a, &json!({"alg": "RS256"}), &claims())));
    }

    #[test]
    fn bad_jwts_are_refused() {
        let [a, b] = test_keys();
        let h = json!({"alg": "RS256", "kid": "ka"});
        let cases: Vec<(&str, String)> = vec![
            ("wrong kid", sign(b, &h, &claims())),
            ("unknown kid", sign(a, &json!({"alg": "RS256", "kid": "zz"}), &claims())),
            ("expired", sign(a, &h, &with(json!({"iat": NOW - 4000, "exp": NOW - 400})))),
            ("lifetime", sign(a, &h, &with(json!({"iat": NOW - 10, "exp": NOW + 3600})))),
            ("future iat", sign(a, &h, &with(json!({"iat": NOW + 301, "exp": NOW + 1000})))),
            ("exp before iat", sign(a, &h, &with(json!({"exp": NOW - 20})))),
            ("float iat", sign(a, &h, &with(json!({"iat": 1.5})))),
            ("no exp", sign(a, &h, &with(json!({"exp": null})))),
            ("wrong aud", sign(a, &h, &with(json!({"aud": "https://example.com/"})))),
            ("lookalike aud", sign(a, &h, &with(json!({"aud": "https://pubsub.googleapis.com.evil.example/"})))),
            ("no aud or scope", sign(a, &h, &with(json!({"aud": null})))),
            ("unknown account", sign(a, &h, &with(json!({"iss": "x@p.iam.gserviceaccount.com", "sub": null})))),
            ("sub differs", sign(a, &h, &with(json!({"sub": "other@p.iam.gserviceaccount.com"})))),
            ("no iss", sign(a, &h, &with(json!({"iss": null})))),
            ("HS256", sign(a, &json!({"alg": "HS256"}), &claims())),
            ("none", sign(a, &json!({"alg": "none"}), &claims())),
            ("crit", sign(a, &json!({"alg": "RS256", "crit": ["x"]}), &claims())),
        ];
        for (what, token) in cases {
            assert!(check(&token).is_err(), "{what}");
        }
        // A forged signature: the claims changed after signing.
        let good = sign(a, &h, &claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let other = BASE64URL.encode(serde_json::to_vec(&with(json!({"exp": NOW + 3595}))).unwrap());
        parts[1] = &other;
        assert_eq!(check(&parts.join(".")), Err("The JWT signature does not match a key of the service account."));
        for junk in ["", "a.b", "a.b.c.d", "...", "e30.e30.e30", &"x".repeat(MAX_JWT_LEN + 1)] {
            assert!(check(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn assertions_name_the_token_endpoint() {
        let [a, _] = test_keys();
        let h = json!({"alg": "RS256", "kid": "ka"});
        let ours = "https://iot.example.com/token";
        let at = |aud: Value| {
            verify(&sign(a, &h, &with(json!({"aud": aud}))), account_keys, NOW, Audience::TokenEndpoint(ours))
        };
        assert!(at(json!(ours)).is_ok());
        assert!(at(json!("https://oauth2.googleapis.com/token")).is_ok());
        assert!(at(json!(["x", "https://www.googleapis.com/oauth2/v4/token"])).is_ok());
        assert!(at(json!("https://pubsub.googleapis.com/")).is_err());
        assert!(at(json!("https://iot.example.com/token/")).is_err());
        assert!(at(Value::Null).is_err());
    }
}
