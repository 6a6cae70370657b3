//! The admin token: `Authorization: Bearer TOKEN`, compared in constant time. Its holder owns
//! everything ([`crate::Caller::Owner`]).

use subtle::ConstantTimeEq;

/// The accepted admin token. Its Debug output never shows the secret.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// Refuses tokens too short to resist guessing.
    pub fn new(token: String) -> Result<Self, String> {
        if token.len() < 16 {
            return Err("the admin token must be at least 16 characters long".into());
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the admin token must not contain whitespace or control characters".into());
        }
        Ok(Self(token))
    }

    /// Checks an `Authorization` header value.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(value) = header else { return false };
        let Some(presented) = strip_bearer(value) else { return false };
        // ct_eq returns early only on a length mismatch, which reveals the token's length at most.
        presented.ct_eq(self.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

pub(crate) fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_exact_bearer_token() {
        let t = AdminToken::new("0123456789abcdef0123".into()).unwrap();
        assert!(t.accepts(Some(b"Bearer 0123456789abcdef0123")));
        assert!(t.accepts(Some(b"bearer 0123456789abcdef0123")));
        assert!(!t.accepts(Some(b"Bearer 0123456789abcdef012")));
        assert!(!t.accepts(Some(b"Basic 0123456789abcdef0123")));
        assert!(!t.accepts(Some(b"Bearer")));
        assert!(!t.accepts(None));
        assert!(AdminToken::new("short".into()).is_err());
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }
}
