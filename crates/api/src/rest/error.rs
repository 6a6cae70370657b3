//! The one mapping from core errors to Google's REST error body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferrocore_core::Error;
use serde_json::json;

/// `{"error": {"code", "message", "status", "details"?}}` with the matching HTTP status.
pub struct RestError(pub Error);

impl From<Error> for RestError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        with_status(status, self.0)
    }
}

/// The error body for `e` with an HTTP status other than its code's usual one (408 for a body
/// that did not arrive in time, where the code's own would be 504, a gateway's).
pub fn with_status(status: StatusCode, e: Error) -> Response {
    let mut error = json!({ "code": status.as_u16(), "message": e.message, "status": e.code.name() });
    if let Some(field) = &e.field {
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": field, "description": e.message }],
        }]);
    }
    let body = serde_json::to_vec_pretty(&json!({ "error": error })).unwrap_or_default();
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ferrocore\""));
    }
    resp
}
