//! Access tokens that `POST /token` issues: `fca.` + base64url(claims) + `.` + base64url(HMAC-SHA256
//! over everything before it), under a secret kept in the store (so tokens survive restarts and
//! hold on every node). The claims name the account and key and the expiry; the token is refused
//! once either is deleted, or when it has expired.

/// The prefix every access token starts with.
pub const PREFIX: &str = "fca.";

/// How long an access token lives, in seconds (as Google's).
pub const LIFETIME_SECONDS: u64 = 3600;

use crate::b64::BASE64URL;
use aws_lc_rs::hmac;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The name under which the HMAC secret is kept in the store.
pub(crate) const SECRET_NAME: &str = "access-token-hmac";

/// What an access token says. Short member names keep the token short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The service account's email.
    #[serde(rename = "sub")]
    pub email: String,
    /// The key whose assertion was exchanged.
    #[serde(rename = "kid")]
    pub key_id: String,
    /// Expiry, unix seconds.
    pub exp: i64,
}

/// Makes the token for `claims`.
pub(crate) fn issue(key: &hmac::Key, claims: &Claims) -> String {
    // Serializing a struct of strings and an integer cannot fail.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = format!("{PREFIX}{}", BASE64URL.encode(json));
    let tag = hmac::sign(key, token.as_bytes());
    token.push('.');
    token.push_str(&BASE64URL.encode(tag.as_ref()));
    token
}

/// Checks the tag (in constant time) and reads the claims. Expiry and the account's existence are
/// the caller's to check.
pub(crate) fn open(key: &hmac::Key, token: &str) -> Result<Claims, &'static str> {
    const INVALID: &str = "The access token is not valid.";
    let rest = token.strip_prefix(PREFIX).ok_or(INVALID)?;
    let (claims_b64, tag_b64) = rest.rsplit_once('.').ok_or(INVALID)?;
    let tag = BASE64URL.decode(tag_b64).map_err(|_| INVALID)?;
    // The signed part is everything before the last dot, prefix included.
    let signed = &token.as_bytes()[..PREFIX.len() + claims_b64.len()];
    hmac::verify(key, signed, &tag).map_err(|_| INVALID)?;
    let json = BASE64URL.decode(claims_b64).map_err(|_| INVALID)?;
    serde_json::from_slice(&json).map_err(|_| INVALID)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[byte; 32])
    }

    #[test]
    fn round_trip_and_tampering() {
        let claims = Claims { email: "a@p.iam.gserviceaccount.com".into(), key_id: "k1".into(), exp: 1_800_000_000 };
        let token = issue(&key(1), &claims);
        assert!(token.starts_with(PREFIX));
        assert_eq!(open(&key(1), &token), Ok(claims.clone()));
        // Another server's secret.
        assert!(open(&key(2), &token).is_err());
        // Claims changed, tag kept.
        let (_, tag) = token.rsplit_once('.').unwrap();
        let forged = Claims { exp: 1_900_000_000, ..claims };
        let forged_body = issue(&key(9), &forged);
        let (forged_signed, _) = forged_body.rsplit_once('.').unwrap();
        assert!(open(&key(1), &format!("{forged_signed}.{tag}")).is_err());
        // Every single-character change of the tag is refused.
        let mut bytes = token.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(open(&key(1), &String::from_utf8(bytes).unwrap()).is_err());
        for junk in ["", "fca.", "fca..", "fca.x.y", "fca.e30", "nope"] {
            assert!(open(&key(1), junk).is_err(), "{junk}");
        }
    }
}
