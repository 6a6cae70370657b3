//! Opaque page tokens for keyset pagination.
//!
//! A token names the last id of the previous page and the kind of list it belongs to, so a page
//! costs the same however deep it is. Tokens are base64url so clients treat them as opaque.

use crate::{Error, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferrocore_model::limits::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

pub fn encode(kind: &str, last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{last_id}"))
}

/// Returns the id after which the page starts, or None for the first page.
pub fn decode(kind: &str, token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid =
        || Error::invalid("page_token", "The page token is invalid; pass the nextPageToken of a previous response.");
    let raw = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| invalid())?;
    let text = String::from_utf8(raw).map_err(|_| invalid())?;
    let rest = text.strip_prefix(kind).and_then(|r| r.strip_prefix(':')).ok_or_else(invalid)?;
    Ok(Some(rest.to_owned()))
}

/// 0 means the default; larger than the maximum is clamped; negative is refused.
pub fn page_size(requested: i64) -> Result<u32> {
    page_size_up_to(requested, MAX_PAGE_SIZE)
}

/// As [`page_size`], for a list with its own maximum (Cloud Logging's entries take 1000).
pub fn page_size_up_to(requested: i64, max: u32) -> Result<u32> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE.min(max)),
        n if n < 0 => Err(Error::invalid("page_size", "The page size must not be negative.")),
        n => Ok(u32::try_from(n).unwrap_or(max).min(max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_foreign_input() {
        let t = encode("devices", "dev-1");
        assert_eq!(decode("devices", &t).unwrap().as_deref(), Some("dev-1"));
        assert!(decode("registries", &t).is_err(), "a device token is not a registry token");
        assert!(decode("devices", "!!!").is_err());
        assert_eq!(decode("devices", "").unwrap(), None);
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(100_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
        assert_eq!(page_size_up_to(0, 1000).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size_up_to(700, 1000).unwrap(), 700);
        assert_eq!(page_size_up_to(5000, 1000).unwrap(), 1000);
    }
}
