//! Webhook destination: every message is POSTed to an HTTP(S) endpoint in Google Pub/Sub's push
//! format, so a receiver written for Pub/Sub push subscriptions takes Ferrocore's telemetry as is.
//!
//! * URL: `http://HOST[:PORT]/PATH[?QUERY]` or `https://…`. The optional `token_file=PATH` query
//!   parameter is Ferrocore's own: the file is read once when the sink is configured and its
//!   trimmed content is sent as `Authorization: Bearer TOKEN`; the parameter itself is removed from
//!   the URL that is POSTed to, every other query parameter is kept as written.
//! * Body (`Content-Type: application/json`), exactly like a push request:
//!   `{"message": {"data": BASE64, "attributes": {...}, "messageId": OFFSET, "message_id": OFFSET,
//!   "publishTime": RFC3339, "publish_time": RFC3339}, "subscription": NAME}`. The attributes are
//!   IoT Core's (`deviceId`, `deviceNumId`, `deviceRegistryId`, `deviceRegistryLocation`,
//!   `projectId`, `subFolder`) plus `ferrocoreTopic` and `ferrocoreOffset`, by which a receiver
//!   de-duplicates; the message id is the offset in the topic.
//! * Confirmation: one POST per message, in order, on kept-alive connections; a 2xx answer confirms
//!   the message. Any other status, a connection error or no answer within 30 s stops the batch
//!   there (transient: the forwarder retries from that message).

use crate::destination::{self, Destination, Failed, Source, Target};
use async_trait::async_trait;
use base64::Engine as _;
use ferrocore_core::topics::StoredMessage;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The query parameter Ferrocore reads and does not forward.
const TOKEN_FILE: &str = "token_file";

/// Per request, from sending to the end of the answer: a receiver that takes longer is treated as
/// down, and the forwarder retries the message later.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of an answer's body is read so that the connection can be reused; a longer body
/// closes the connection instead of being read to its end.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Checks a webhook URL (scheme, host, `token_file`) without network I/O, reads the token file and
/// builds the destination.
pub fn configure(url: &Url) -> Result<Arc<dyn Destination>, String> {
    check_url(url)?;
    let authorization = match token_file(url)? {
        Some(path) => {
            if !url.username().is_empty() || url.password().is_some() {
                return Err("webhook sink URL: give either user:password in the URL or token_file, not both".into());
            }
            Some(read_token(&path)?)
        }
        None => None,
    };
    Ok(Arc::new(Webhook { authorization, client: tokio::sync::OnceCell::new() }))
}

/// The `subscription` field of each push request: a push request names the subscription that
/// delivered it, and here the sink stands in for one, in the source topic's project. A sink's name
/// (`webhook-HASH`) is a valid subscription id.
fn subscription_name(source: &Source<'_>) -> String {
    format!("projects/{}/subscriptions/{}", source.project, source.sink)
}

fn check_url(url: &Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("webhook sink URL: the scheme must be http or https, not '{}'", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("webhook sink URL: a host is required".into());
    }
    Ok(())
}

/// The `token_file` parameter: at most once, and not empty.
fn token_file(url: &Url) -> Result<Option<String>, String> {
    let mut paths = url.query_pairs().filter(|(k, _)| k == TOKEN_FILE).map(|(_, v)| v.into_owned());
    let path = paths.next();
    if paths.next().is_some() {
        return Err("webhook sink URL: token_file is given more than once".into());
    }
    match path {
        Some(p) if p.is_empty() => Err("webhook sink URL: token_file is empty; give the path of a file".into()),
        p => Ok(p),
    }
}

/// Reads the bearer token. Errors name the file and what is wrong with it, never its content.
fn read_token(path: &str) -> Result<HeaderValue, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("webhook token_file '{path}' cannot be read: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("webhook token_file '{path}' is empty"));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        format!("webhook token_file '{path}' must hold one line of printable ASCII characters (the token)")
    })?;
    // Keeps the token out of reqwest's debug output.
    value.set_sensitive(true);
    Ok(value)
}

/// The URL requests go to: Ferrocore's own parameters removed, the others kept byte for byte (a
/// receiver may check a signature over them), and no fragment.
fn post_url(url: &Url) -> Url {
    let mut out = url.clone();
    out.set_fragment(None);
    if let Some(query) = url.query() {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                !pair.is_empty() && !url::form_urlencoded::parse(pair.as_bytes()).any(|(k, _)| k == TOKEN_FILE)
            })
            .collect();
        let kept = kept.join("&");
        out.set_query(if kept.is_empty() { None } else { Some(&kept) });
    }
    out
}

struct Webhook {
    authorization: Option<HeaderValue>,
    /// One client (and so one connection pool) for every topic of this sink, made on first use.
    client: tokio::sync::OnceCell<reqwest::Client>,
}

#[async_trait]
impl Destination for Webhook {
    async fn open(&self, url: &Url, _source: &Source<'_>) -> Result<Box<dyn Target>, String> {
        check_url(url)?;
        let client = self
            .client
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .timeout(REQUEST_TIMEOUT)
                    // A redirect is an answer other than 2xx: following it would re-send the body
                    // (and maybe the token) somewhere the operator did not name.
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("Ferrocore/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("cannot set up the webhook HTTP client: {}", describe(&e)))
            })
            .await?
            .clone();
        Ok(Box::new(WebhookTarget { client, url: post_url(url), authorization: self.authorization.clone() }))
    }
}

struct WebhookTarget {
    client: reqwest::Client,
    url: Url,
    authorization: Option<HeaderValue>,
}

#[async_trait]
impl Target for WebhookTarget {
    async fn deliver(&mut self, source: &Source<'_>, batch: &[StoredMessage]) -> Result<(), Failed> {
        let subscription = subscription_name(source);
        // One at a time: the receiver sees the topic's messages in order.
        for (i, message) in batch.iter().enumerate() {
            let body = push_body(source, message, &subscription)
                .map_err(|e| Failed::after(i, format!("cannot encode message {}: {e}", message.offset)))?;
            let mut request = self.client.post(self.url.clone()).header(CONTENT_TYPE, "application/json").body(body);
            if let Some(authorization) = &self.authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            let response = request.send().await.map_err(|e| {
                Failed::after(i, format!("webhook POST of message {} failed: {}", message.offset, describe(&e)))
            })?;
            let status = response.status();
            drain(response).await;
            if !status.is_success() {
                return Err(Failed::after(i, format!("webhook answered HTTP {status} to message {}", message.offset)));
            }
        }
        Ok(())
    }
}

/// Reads a short answer to its end so the connection goes back to the pool.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > DRAIN_LIMIT {
            break;
        }
    }
}

/// What went wrong, without the URL (its query may hold a secret): the kind, then the causes.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.ends_with(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

#[derive(Serialize)]
struct PushRequest<'a> {
    message: PushMessage<'a>,
    subscription: &'a str,
}

/// Google's push requests carry the id and time under both spellings.
#[derive(Serialize)]
struct PushMessage<'a> {
    data: String,
    attributes: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "messageId")]
    message_id_camel: &'a str,
    message_id: &'a str,
    #[serde(rename = "publishTime")]
    publish_time_camel: &'a str,
    publish_time: &'a str,
}

fn push_body(source: &Source<'_>, message: &StoredMessage, subscription: &str) -> serde_json::Result<Vec<u8>> {
    let offset = message.offset.to_string();
    // Proto3 JSON form, as Pub/Sub prints publish times: UTC, `Z`, nanosecond precision.
    let time = message.time.to_string();
    let request = PushRequest {
        message: PushMessage {
            data: base64::engine::general_purpose::STANDARD.encode(&message.data),
            attributes: destination::attributes(source, message, &offset).collect(),
            message_id_camel: &offset,
            message_id: &offset,
            publish_time_camel: &time,
            publish_time: &time,
        },
        subscription,
    };
    serde_json::to_vec(&request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn token_file_is_removed_and_other_parameters_kept_as_written() {
        let u = url("https://h.example/push?a=1&token_file=%2Ftmp%2Fx&b=x%20y+z#frag");
        assert_eq!(post_url(&u).as_str(), "https://h.example/push?a=1&b=x%20y+z");
        assert_eq!(post_url(&url("http://h/p?token_file=/t")).as_str(), "http://h/p");
        assert_eq!(post_url(&url("http://h/p?x=1")).as_str(), "http://h/p?x=1");
    }

    #[test]
    fn configure_names_the_problem() {
        assert!(configure(&url("ftp://h/p")).err().unwrap().contains("http or https"));
        assert!(configure(&url("http://h/p?token_file=")).err().unwrap().contains("empty"));
        assert!(configure(&url("http://h/p?token_file=/a&token_file=/b")).err().unwrap().contains("more than once"));
        let missing = configure(&url("http://h/p?token_file=/nonexistent/ferrocore-token")).err().unwrap();
        assert!(missing.contains("/nonexistent/ferrocore-token") && missing.contains("cannot be read"), "{missing}");
        assert!(configure(&url("http://h/p?a=b")).is_ok());
    }

    #[test]
    fn push_body_has_both_spellings() {
        let m = StoredMessage {
            offset: 42,
            time: ferrocore_model::Timestamp(1_700_000_000_123_456_789),
            attributes: vec![("deviceId".into(), "d1".into())],
            data: bytes::Bytes::from_static(b"hi"),
        };
        let src = Source { sink: "test-sink", name: "projects/p/topics/t", project: "p", topic: "t" };
        let v: serde_json::Value =
            serde_json::from_slice(&push_body(&src, &m, &subscription_name(&src)).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "message": {
                    "data": "aGk=",
                    "attributes": {"deviceId": "d1", "ferrocoreTopic": "projects/p/topics/t", "ferrocoreOffset": "42"},
                    "messageId": "42", "message_id": "42",
                    "publishTime": "2023-11-14T22:13:20.123456789Z", "publish_time": "2023-11-14T22:13:20.123456789Z"
                },
                "subscription": "projects/p/subscriptions/test-sink"
            })
        );
    }
}
