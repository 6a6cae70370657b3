//! `POST /token`: the OAuth 2.0 token endpoint of service-account key files (`token_uri`), where
//! google-auth and Go's `oauth2/google` exchange a JWT signed with the account's key for an access
//! token (the RFC 7523 JWT-bearer grant).
//!
//! The body is `application/x-www-form-urlencoded` (`grant_type`, `assertion`), as RFC 6749 has
//! it and every Google library sends; a JSON object with the same fields is accepted too. The
//! answer is `{"access_token", "expires_in", "token_type": "Bearer"}` or an RFC 6749 §5.2 error,
//! `400 {"error", "error_description"}`, never cached. No credential is needed: the assertion is
//! one, checked by [`Iam::exchange`].

use super::discovery;
use axum::body::Bytes;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferrocore_core::Error;
use ferrocore_iam::{Iam, OAuthError};
use serde_json::{Value, json};

/// An assertion is a few kilobytes; nothing legitimate comes near this.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// This server's `/token` URL as the request reached it: `{scheme}://{Host}/token` (the scheme
/// `https` behind a proxy that sends `X-Forwarded-Proto: https`). Without a `Host` header, the
/// request URI's authority; without either, INVALID_ARGUMENT.
pub(crate) fn token_uri(parts: &Parts) -> Result<String, Error> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    host.and_then(|h| discovery::origin(&parts.headers, h))
        .map(|origin| format!("{origin}/token"))
        .ok_or_else(|| Error::invalid("Host", "Send a Host header naming this server: the token URL is made from it."))
}

/// Answers one token request whose body was read.
pub(crate) fn serve(iam: &Iam, parts: &Parts, body: &Bytes) -> Response {
    let (grant_type, assertion) = match fields(parts, body) {
        Ok(f) => f,
        Err(description) => return error("invalid_request", description),
    };
    let Some(grant_type) = grant_type else {
        return error("invalid_request", "The request has no grant_type.".into());
    };
    let token_uri = match token_uri(parts) {
        Ok(u) => u,
        Err(e) => return error("invalid_request", e.message),
    };
    let assertion = match assertion {
        Some(a) => a,
        // An unsupported grant type is that, whatever else is missing.
        None if grant_type != JWT_BEARER => String::new(),
        None => return error("invalid_request", "The request has no assertion.".into()),
    };
    match iam.exchange(&grant_type, &assertion, &token_uri) {
        Ok(token) => reply(
            StatusCode::OK,
            json!({
                "access_token": token.access_token,
                "expires_in": token.expires_in,
                "token_type": "Bearer",
            }),
        ),
        Err(OAuthError { error: code, description }) => {
            tracing::debug!(error = code, "token request refused");
            error(code, description)
        }
    }
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// `grant_type` and `assertion` of a form or JSON body. A parameter sent twice is refused
/// (RFC 6749 §3.2); unknown ones are ignored, as RFC 6749 §3.2 asks.
fn fields(parts: &Parts, body: &Bytes) -> Result<(Option<String>, Option<String>), String> {
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let json = content_type.to_ascii_lowercase().contains("json")
        || (content_type.is_empty() && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'));
    let pairs: Vec<(String, String)> = if json {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            return Err("The body is not a JSON object.".into());
        };
        map.into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_owned()))).collect()
    } else {
        form_urlencoded::parse(body).into_owned().collect()
    };
    let one = |name: &str| -> Result<Option<String>, String> {
        let mut values = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
        match (values.next(), values.next()) {
            (Some(_), Some(_)) => Err(format!("The parameter {name} is repeated.")),
            (Some(v), None) if !v.is_empty() => Ok(Some(v.clone())),
            _ => Ok(None),
        }
    };
    Ok((one("grant_type")?, one("assertion")?))
}

/// An RFC 6749 §5.2 error.
fn error(code: &str, description: String) -> Response {
    reply(StatusCode::BAD_REQUEST, json!({ "error": code, "error_description": description }))
}

/// What a body that was too large, or too slow, gets.
pub(crate) fn body_failure(late: bool) -> Response {
    if late {
        let mut resp = error("invalid_request", "The request body did not arrive in time.".into());
        *resp.status_mut() = StatusCode::REQUEST_TIMEOUT;
        resp
    } else {
        error("invalid_request", format!("The request body is larger than the limit of {MAX_BODY_BYTES} bytes."))
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    // RFC 6749 §5.1: tokens, and answers about them, are not to be cached.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)], uri: &str) -> Parts {
        let mut b = axum::http::Request::builder().method("POST").uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_token_uri_is_the_address_the_client_used() {
        assert_eq!(
            token_uri(&parts(&[("host", "iot.example.com:8080")], "/token")).unwrap(),
            "http://iot.example.com:8080/token"
        );
        let behind_proxy = parts(&[("host", "iot.example.com"), ("x-forwarded-proto", "https")], "/token");
        assert_eq!(token_uri(&behind_proxy).unwrap(), "https://iot.example.com/token");
        assert_eq!(token_uri(&parts(&[], "http://127.0.0.1:9/token")).unwrap(), "http://127.0.0.1:9/token");
        assert!(token_uri(&parts(&[], "/token")).is_err());
        assert!(token_uri(&parts(&[("host", "evil.com/x?")], "/token")).is_err());
    }

    #[test]
    fn form_and_json_bodies() {
        let form = parts(&[("content-type", "application/x-www-form-urlencoded")], "/token");
        let body =
            Bytes::from_static(b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c&x=1");
        assert_eq!(fields(&form, &body).unwrap(), (Some(JWT_BEARER.into()), Some("a.b.c".into())));
        let json = parts(&[("content-type", "application/json")], "/token");
        let body = Bytes::from_static(br#"{"grant_type": "g", "assertion": "a"}"#);
        assert_eq!(fields(&json, &body).unwrap(), (Some("g".into()), Some("a".into())));
        let untyped = parts(&[], "/token");
        assert_eq!(fields(&untyped, &body).unwrap(), (Some("g".into()), Some("a".into())));
        assert!(fields(&form, &Bytes::from_static(b"grant_type=a&grant_type=b")).is_err());
        assert!(fields(&json, &Bytes::from_static(b"[1]")).is_err());
        assert_eq!(fields(&form, &Bytes::new()).unwrap(), (None, None));
    }
}
