//! The web console at `/console/`: a few static files compiled into the binary (no build step, no
//! CDN; see docs/adr/0004-web-console.md). The page itself holds no data and needs no token; it
//! signs in by asking for one and sends it on every API call it makes, so the console can do
//! exactly what the token may do through the REST API, and nothing else.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Name, media type and contents of each file the console is made of.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("index.html", "text/html; charset=utf-8", include_bytes!("../../console/index.html")),
    ("console.css", "text/css; charset=utf-8", include_bytes!("../../console/console.css")),
    ("api.js", "text/javascript; charset=utf-8", include_bytes!("../../console/api.js")),
    ("views.js", "text/javascript; charset=utf-8", include_bytes!("../../console/views.js")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../console/app.js")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../../console/favicon.svg")),
];

/// Only the console's own files and the server's API: no inline script, no other origin, no
/// framing (the pages act with the caller's token).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

pub(super) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { asset("index.html") }))
        .route("/console/{file}", get(|Path(file): Path<String>| async move { asset(&file) }))
}

fn asset(file: &str) -> Response {
    let Some((_, media, body)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let mut resp = (StatusCode::OK, *body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    // The files change with the binary; revalidating each time costs little on a local network.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type_and_policy() {
        for (name, media, body) in ASSETS {
            let resp = asset(name);
            assert_eq!(resp.status(), StatusCode::OK, "{name}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], *media);
            assert!(resp.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
            assert!(!body.is_empty());
        }
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(asset("missing.js").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        let index = std::str::from_utf8(ASSETS[0].2).unwrap();
        assert!(!index.contains("http://") && !index.contains("https://"), "no other origin");
        assert!(!index.contains("<script>"), "no inline script (the policy forbids it)");
    }
}
