//! `GET /v1/sinks` (admin): each external sink's destination, state, cursors and lag, as
//! `ferrocore sinks list` shows them. Offsets and counts are int64, so strings, as in Google's JSON.

use super::json_response;
use axum::response::Response;
use ferrocore_core::sink::{SinkReport, SinkStatus};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SinkJson {
    name: String,
    topics: String,
    url: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    cursor: BTreeMap<String, String>,
    lag_messages: String,
    lag_seconds: f64,
    forwarded_messages: String,
    lost_messages: String,
    rejected_messages: String,
}

#[derive(Serialize)]
struct ListJson {
    sinks: Vec<SinkJson>,
}

fn json(s: SinkStatus) -> SinkJson {
    SinkJson {
        name: s.name,
        topics: s.topics,
        url: s.url,
        state: s.state.as_str(),
        last_error: s.last_error,
        cursor: s.cursor.into_iter().map(|(t, o)| (t, o.to_string())).collect(),
        lag_messages: s.lag_messages.to_string(),
        // Milliseconds are precise enough, and keep the number short.
        lag_seconds: (s.lag_seconds * 1000.0).round() / 1000.0,
        forwarded_messages: s.forwarded_messages.to_string(),
        lost_messages: s.lost_messages.to_string(),
        rejected_messages: s.rejected_messages.to_string(),
    }
}

/// The list; empty when the server runs without sinks.
pub(crate) async fn list(report: Option<&dyn SinkReport>) -> Response {
    let sinks = match report {
        Some(r) => r.statuses().await.into_iter().map(json).collect(),
        None => Vec::new(),
    };
    json_response(&ListJson { sinks })
}
