//! The discovery document, served so clients that build themselves from a discovery URL work.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::LazyLock;

static DOCUMENT: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(include_str!("../../discovery/cloudiot.v1.json")).unwrap_or(Value::Null));

/// Paths under which Google served the document.
pub fn is_discovery_path(path: &str) -> bool {
    path == "/$discovery/rest" || path == "/discovery/v1/apis/cloudiot/v1/rest"
}

/// The document with `rootUrl` and `baseUrl` pointing at the address the client used.
pub fn document(headers: &HeaderMap, query: Option<&str>) -> Option<Response> {
    let version = form_urlencoded::parse(query.unwrap_or("").as_bytes()).find(|(k, _)| k == "version").map(|(_, v)| v);
    if version.as_deref().is_some_and(|v| v != "v1") {
        return None;
    }
    let origin = origin(headers, headers.get(header::HOST).and_then(|h| h.to_str().ok())?)?;
    let mut doc = DOCUMENT.clone();
    let root = format!("{origin}/");
    doc["rootUrl"] = Value::String(root.clone());
    doc["baseUrl"] = Value::String(root);
    let mut resp = (StatusCode::OK, serde_json::to_vec(&doc).unwrap_or_default()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    Some(resp)
}

/// `scheme://host` of the server as the client addressed it: `host` (the `Host` header's value,
/// or the request URI's authority) if it is a plausible host name or address, and the scheme
/// `https` when a proxy in front says so with `X-Forwarded-Proto: https`.
pub(crate) fn origin(headers: &HeaderMap, host: &str) -> Option<String> {
    // Only a plausible host name or address goes into a URL the server hands out.
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)) {
        return None;
    }
    let scheme = match headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()) {
        Some("https") => "https",
        _ => "http",
    };
    Some(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_parses_and_describes_devices() {
        let doc = &*super::DOCUMENT;
        let devices =
            &doc["resources"]["projects"]["resources"]["locations"]["resources"]["registries"]["resources"]["devices"];
        assert_eq!(devices["methods"]["get"]["path"], "v1/{+name}");
        assert!(doc["schemas"]["Device"]["properties"]["numId"].is_object());
    }
}
