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
        let e = self.0;
        let status = e.code.http_status();
        let mut error = json!({ "code": status, "message": e.message, "status": e.code.name() });
        if let Some(field) = &e.field {
            error["details"] = json!([{
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{ "field": field, "description": e.message }],
            }]);
        }
        let body = serde_json::to_vec_pretty(&json!({ "error": error })).unwrap_or_default();
        let mut resp =
            (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
        if status == 401 {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ferrocore\""));
        }
        resp
    }
}
