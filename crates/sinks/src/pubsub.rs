//! Google Cloud Pub/Sub destination, through Google's official client (`google-cloud-pubsub`):
//! each Ferrocore topic is forwarded to an existing Pub/Sub topic, as IoT Core's telemetry
//! notifications were.
//!
//! * URL: `pubsub:///projects/GP/topics/GT` publishes to the real service with Application Default
//!   Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, …); `pubsub://HOST:PORT/projects/GP/topics/GT`
//!   publishes to that endpoint over plaintext gRPC with anonymous credentials (an emulator). The
//!   topic is never created by Ferrocore: a missing one fails every delivery until it exists.
//! * Message: the payload as `data`; as attributes IoT Core's (`deviceId`, `deviceNumId`,
//!   `deviceRegistryId`, `deviceRegistryLocation`, `projectId`, `subFolder`) plus `ferrocoreTopic`
//!   and `ferrocoreOffset`, by which a subscriber de-duplicates.
//! * Confirmation: the whole batch is handed to the client's Publisher (which groups it into
//!   Publish requests), then each message's publish future is awaited in order; a message counts
//!   once Pub/Sub returned its message id. A message Pub/Sub would refuse whatever happens (over
//!   10 MB, or attributes over its limits) is reported as permanent. Pub/Sub keeps no order
//!   between messages without ordering keys, which IoT Core did not set either.

use crate::destination::{self, Destination, Failed, Source, Target};
use async_trait::async_trait;
use ferrocore_core::topics::StoredMessage;
use ferrocore_model::pubsub::TopicName;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

/// Pub/Sub's limits on one message [quotas page]: a Publish request of at most 10 MB (10^7
/// bytes, as Google's clients count), at most 100 attributes, keys up to 256 bytes and values up
/// to 1024 bytes. A message beyond them is refused however often it is sent.
const MAX_REQUEST_BYTES: usize = 10_000_000;
const MAX_ATTRIBUTES: usize = 100;
const MAX_KEY_BYTES: usize = 256;
const MAX_VALUE_BYTES: usize = 1024;

/// Batching of the official Publisher. `deliver` hands over a whole batch at once and then waits,
/// so there is nothing to gain from holding messages back: up to 1000 messages (the service's
/// maximum per request) or 9 MB of payload and attributes (the client does not count protobuf
/// framing, so this leaves room under the 10 MB request limit) go in one Publish request, and a
/// partial request leaves after 1 ms.
const BATCH_MESSAGES: u32 = 1000;
const BATCH_BYTES: u32 = 9_000_000;
const BATCH_DELAY: Duration = Duration::from_millis(1);

/// How long the client itself retries a Publish that failed transiently (an unreachable endpoint,
/// UNAVAILABLE). Its default is 10 minutes; the forwarder should hear of the trouble well before
/// that, and report the sink as retrying, with its own back-off.
const CLIENT_RETRY_LIMIT: Duration = Duration::from_secs(20);

/// How long a delivery waits for the next confirmation: past the client's own retries, so a
/// delivery that gave up leaves no retry of the client's behind (which would arrive besides the
/// forwarder's own; subscribers de-duplicate by topic and offset all the same).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks a `pubsub://` URL (endpoint, `projects/GP/topics/GT`) without network I/O and builds the
/// destination.
pub fn configure(url: &Url) -> Result<Arc<dyn Destination>, String> {
    let endpoint = endpoint(url)?;
    topic_name(url)?;
    Ok(Arc::new(PubSub { endpoint, client: tokio::sync::OnceCell::new(), publishers: Arc::default() }))
}

/// `None` for Google's service, or the plaintext endpoint of an emulator.
fn endpoint(url: &Url) -> Result<Option<String>, String> {
    if url.scheme() != "pubsub" {
        return Err(format!("Pub/Sub sink URL: the scheme must be pubsub, not '{}'", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("Pub/Sub sink URL: credentials do not go in the URL; the real service uses Application \
                    Default Credentials (GOOGLE_APPLICATION_CREDENTIALS)"
            .into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("Pub/Sub sink URL: takes no query parameters or fragment".into());
    }
    match url.host() {
        None => Ok(None),
        Some(url::Host::Domain("")) => Ok(None),
        Some(host) => match url.port() {
            Some(port) => Ok(Some(format!("http://{host}:{port}"))),
            None => Err(format!(
                "Pub/Sub sink URL: the endpoint {host} needs a port (pubsub://HOST:PORT/projects/P/topics/T); \
                 for Google's service leave the host out (pubsub:///projects/P/topics/T)"
            )),
        },
    }
}

/// The Pub/Sub topic: the URL's path, exactly `projects/GP/topics/GT`.
fn topic_name(url: &Url) -> Result<TopicName, String> {
    let path = url.path().strip_prefix('/').unwrap_or(url.path());
    TopicName::parse("url", path).map_err(|e| format!("Pub/Sub sink URL: {e}"))
}

type Publishers = Arc<Mutex<HashMap<String, Publisher>>>;

struct PubSub {
    endpoint: Option<String>,
    /// The connection to Pub/Sub, shared by every topic of this sink, made on first use.
    client: tokio::sync::OnceCell<BasePublisher>,
    /// One Publisher (one background batching task) per Pub/Sub topic, kept across re-opens.
    publishers: Publishers,
}

impl PubSub {
    async fn client(&self) -> Result<&BasePublisher, String> {
        self.client
            .get_or_try_init(|| async {
                use google_cloud_gax::retry_policy::RetryPolicyExt;
                let builder = BasePublisher::builder().with_retry_policy(
                    google_cloud_pubsub::retry_policy::RetryableErrors.with_time_limit(CLIENT_RETRY_LIMIT),
                );
                let builder = match &self.endpoint {
                    Some(endpoint) => builder.with_endpoint(endpoint).with_credentials(Anonymous::new().build()),
                    None => builder,
                };
                builder.build().await.map_err(|e| format!("cannot set up the Pub/Sub client: {e}"))
            })
            .await
    }
}

#[async_trait]
impl Destination for PubSub {
    async fn open(&self, url: &Url, _source: &Source<'_>) -> Result<Box<dyn Target>, String> {
        let topic = topic_name(url)?.to_string();
        let client = self.client().await?;
        let publisher = {
            let mut publishers = self.publishers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            publishers
                .entry(topic.clone())
                .or_insert_with(|| {
                    client
                        .publisher(topic.clone())
                        .set_message_count_threshold(BATCH_MESSAGES)
                        .set_byte_threshold(BATCH_BYTES)
                        .set_delay_threshold(BATCH_DELAY)
                        .build()
                })
                .clone()
        };
        Ok(Box::new(PubSubTarget { topic, publisher, publishers: self.publishers.clone() }))
    }
}

struct PubSubTarget {
    topic: String,
    publisher: Publisher,
    publishers: Publishers,
}

impl PubSubTarget {
    /// A Publisher whose background task is gone fails every publish: the next open makes a new one.
    fn forget_publisher(&self) {
        self.publishers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.topic);
    }
}

#[async_trait]
impl Target for PubSubTarget {
    async fn deliver(&mut self, source: &Source<'_>, batch: &[StoredMessage]) -> Result<(), Failed> {
        // Only the messages before the first one Pub/Sub would refuse are sent: what follows it
        // waits until the forwarder has skipped it.
        let refused = batch.iter().enumerate().find_map(|(i, m)| refusal(&self.topic, source, m).map(|why| (i, why)));
        let sendable = refused.as_ref().map_or(batch.len(), |(i, _)| *i);

        // All handed over first, so the client can fill its requests; then confirmed in order.
        let pending: Vec<_> = batch[..sendable].iter().map(|m| self.publisher.publish(message(source, m))).collect();
        for (i, confirmation) in pending.into_iter().enumerate() {
            match tokio::time::timeout(CONFIRM_TIMEOUT, confirmation).await {
                Ok(Ok(_message_id)) => {}
                Ok(Err(e)) => {
                    if matches!(e, PublishError::Shutdown) {
                        self.forget_publisher();
                    }
                    return Err(Failed::after(i, describe(&self.topic, &e)));
                }
                Err(_) => {
                    return Err(Failed::after(
                        i,
                        format!(
                            "Pub/Sub did not confirm a publish to {} within {} s (endpoint unreachable or overloaded)",
                            self.topic,
                            CONFIRM_TIMEOUT.as_secs()
                        ),
                    ));
                }
            }
        }
        match refused {
            Some((i, why)) => Err(Failed::permanent(i, why)),
            None => Ok(()),
        }
    }
}

fn message(source: &Source<'_>, m: &StoredMessage) -> Message {
    let offset = m.offset.to_string();
    Message::new().set_data(m.data.clone()).set_attributes(destination::attributes(source, m, &offset))
}

/// Why Pub/Sub would refuse this message on every attempt, if it would.
fn refusal(topic: &str, source: &Source<'_>, m: &StoredMessage) -> Option<String> {
    let offset = m.offset.to_string();
    let mut count = 0;
    // A request carrying this message alone: the topic name, the data and each attribute, with
    // a few bytes of protobuf framing for each field.
    let mut size = topic.len() + m.data.len() + 16;
    for (k, v) in destination::attributes(source, m, &offset) {
        count += 1;
        size += k.len() + v.len() + 8;
        if k.len() > MAX_KEY_BYTES {
            return Some(format!("message {}: attribute name longer than {MAX_KEY_BYTES} bytes", m.offset));
        }
        if v.len() > MAX_VALUE_BYTES {
            return Some(format!("message {}: attribute {k} longer than {MAX_VALUE_BYTES} bytes", m.offset));
        }
    }
    if count > MAX_ATTRIBUTES {
        return Some(format!("message {}: {count} attributes, Pub/Sub takes at most {MAX_ATTRIBUTES}", m.offset));
    }
    if size > MAX_REQUEST_BYTES {
        return Some(format!(
            "message {} is {} bytes, over Pub/Sub's 10 MB limit for a message with its attributes",
            m.offset, size
        ));
    }
    None
}

fn describe(topic: &str, e: &PublishError) -> String {
    match e {
        PublishError::Rpc(error) => {
            let not_found =
                error.status().is_some_and(|s| s.code.name() == "NOT_FOUND") || error.http_status_code() == Some(404);
            if not_found {
                format!(
                    "the Pub/Sub topic {topic} does not exist (NOT_FOUND); Ferrocore does not create it: \
                     create it in Pub/Sub"
                )
            } else if let Some(status) = error.status() {
                format!("Pub/Sub refused the publish to {topic}: {} {}", status.code.name(), status.message)
            } else {
                format!("publishing to Pub/Sub topic {topic} failed: {error}")
            }
        }
        other => format!("publishing to Pub/Sub topic {topic} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<(Option<String>, String), String> {
        let url = Url::parse(s).map_err(|e| e.to_string())?;
        Ok((endpoint(&url)?, topic_name(&url)?.to_string()))
    }

    #[test]
    fn urls() {
        assert_eq!(check("pubsub:///projects/gp/topics/tel").unwrap(), (None, "projects/gp/topics/tel".into()));
        assert_eq!(
            check("pubsub://127.0.0.1:8085/projects/gp/topics/tel").unwrap(),
            (Some("http://127.0.0.1:8085".into()), "projects/gp/topics/tel".into())
        );
        assert_eq!(
            check("pubsub://[::1]:8085/projects/gp/topics/tel").unwrap().0.as_deref(),
            Some("http://[::1]:8085")
        );
        assert!(check("pubsub://localhost/projects/gp/topics/tel").unwrap_err().contains("needs a port"));
        assert!(check("pubsub:///projects/gp/topics/tel/extra").unwrap_err().contains("Invalid topic name"));
        assert!(check("pubsub:///projects/gp/topics/goog-x").unwrap_err().contains("Invalid topic name"));
        assert!(check("pubsub:///projects/gp/subscriptions/tel").unwrap_err().contains("Invalid topic name"));
        assert!(check("pubsub:///projects/gp/topics/tel?x=1").unwrap_err().contains("query"));
        assert!(check("pubsub://u:p@h:1/projects/gp/topics/tel").unwrap_err().contains("credentials"));
        assert!(check("https://h:1/projects/gp/topics/tel").unwrap_err().contains("scheme"));
    }

    #[test]
    fn refuses_what_pubsub_never_takes() {
        let src = Source { sink: "test-sink", name: "projects/p/topics/t", project: "p", topic: "t" };
        let mut m = StoredMessage {
            offset: 3,
            time: ferrocore_model::Timestamp(0),
            attributes: vec![("deviceId".into(), "d".into())],
            data: bytes::Bytes::from(vec![0u8; 1000]),
        };
        assert_eq!(refusal("projects/gp/topics/tel", &src, &m), None);
        m.attributes.push(("subFolder".into(), "x".repeat(1025)));
        assert!(refusal("projects/gp/topics/tel", &src, &m).unwrap().contains("subFolder"));
        m.attributes.pop();
        m.data = bytes::Bytes::from(vec![0u8; MAX_REQUEST_BYTES]);
        assert!(refusal("projects/gp/topics/tel", &src, &m).unwrap().contains("10 MB"));
    }
}
