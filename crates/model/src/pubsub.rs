//! Pub/Sub resources served over the topic log: topic and subscription names, topics,
//! subscriptions with their settings, a subscription's durable acknowledgement cursor, and IAM
//! policies on either.
//!
//! [`TopicName`] is the one topic grammar of Ferrocore: registries' notification configs, the core's
//! routing, the topic log and the Pub/Sub API all take it, so a name one part accepts every other
//! part accepts too.

use crate::{Invalid, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Printable excerpt of untrusted input for error messages.
fn excerpt(s: &str) -> String {
    s.chars().take(300).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A Pub/Sub resource id (topic or subscription): 3 to 255 characters, starting with a letter,
/// of letters, digits and `-_.~+%`, and not starting with `goog`.
pub fn is_pubsub_id(id: &str) -> bool {
    let mut chars = id.chars();
    (3..=255).contains(&id.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !id.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("goog"))
}

/// A project id as the Pub/Sub paths carry it: non-empty, no `/`, whitespace or control characters.
fn is_project(p: &str) -> bool {
    !p.is_empty() && p.len() <= 255 && !p.chars().any(|c| c == '/' || c.is_control() || c.is_whitespace())
}

/// Splits `projects/{project}/{collection}/{id}`.
fn split<'a>(name: &'a str, collection: &str) -> Option<(&'a str, &'a str)> {
    let mut parts = name.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("projects"), Some(p), Some(c), Some(id), None)
            if c == collection && is_project(p) && is_pubsub_id(id) =>
        {
            Some((p, id))
        }
        _ => None,
    }
}

macro_rules! pubsub_name {
    ($(#[$doc:meta])* $name:ident, $collection:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `name`; `field` names the request field in the error.
            pub fn parse(field: &str, name: &str) -> Result<Self, Invalid> {
                if split(name, $collection).is_some() {
                    Ok(Self(name.to_owned()))
                } else {
                    Err(Invalid::new(
                        field,
                        format!(
                            concat!("Invalid ", $what, " name '{}': expected 'projects/{{project}}/", $collection,
                                "/{{id}}' where the id has 3 to 255 letters, digits or '-_.~+%', starts with a letter and does not start with 'goog'."),
                            excerpt(name)
                        ),
                    ))
                }
            }

            pub fn new(project: &str, id: &str) -> Result<Self, Invalid> {
                Self::parse("name", &format!(concat!("projects/{}/", $collection, "/{}"), project, id))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn project(&self) -> &str {
                split(&self.0, $collection).map(|(p, _)| p).unwrap_or_default()
            }

            pub fn id(&self) -> &str {
                split(&self.0, $collection).map(|(_, id)| id).unwrap_or_default()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Invalid;
            fn try_from(s: String) -> Result<Self, Invalid> {
                Self::parse("name", &s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

pubsub_name!(
    /// `projects/{project}/topics/{topic}`.
    TopicName,
    "topics",
    "topic"
);
pubsub_name!(
    /// `projects/{project}/subscriptions/{subscription}`.
    SubscriptionName,
    "subscriptions",
    "subscription"
);

/// What Pub/Sub answers for a subscription whose topic was deleted.
pub const DELETED_TOPIC: &str = "_deleted-topic_";

/// Why a topic exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicOrigin {
    /// CreateTopic.
    Created,
    /// A registry's event or state notification config names it.
    Registry,
}

/// A Pub/Sub topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    pub name: TopicName,
    pub labels: BTreeMap<String, String>,
    /// Seconds; `None` when unset (the log's retention applies either way).
    pub message_retention_seconds: Option<i64>,
    pub origin: TopicOrigin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterPolicy {
    pub dead_letter_topic: TopicName,
    /// 5..=100 (Pub/Sub's range); 0 on input means the default, 5.
    pub max_delivery_attempts: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Seconds, 0..=600.
    pub minimum_backoff_seconds: i64,
    pub maximum_backoff_seconds: i64,
}

/// A subscription to a topic, with the settings a client set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub name: SubscriptionName,
    /// `None` once the topic was deleted (Pub/Sub then shows `_deleted-topic_`).
    pub topic: Option<TopicName>,
    /// 10..=600.
    pub ack_deadline_seconds: i32,
    pub retain_acked_messages: bool,
    pub message_retention_seconds: i64,
    pub labels: BTreeMap<String, String>,
    pub enable_message_ordering: bool,
    /// Seconds of inactivity after which Pub/Sub would delete it; stored, not enforced.
    pub expiration_ttl_seconds: Option<i64>,
    /// The attribute filter's text; empty for none.
    pub filter: String,
    pub dead_letter_policy: Option<DeadLetterPolicy>,
    pub retry_policy: Option<RetryPolicy>,
    pub detached: bool,
    pub created: Timestamp,
}

/// Where a subscription stands in its topic's log: every offset below `floor` is acknowledged,
/// and so is every offset in `acked` (sorted, disjoint, half-open ranges above the floor).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SubscriptionCursor {
    pub floor: u64,
    pub acked: Vec<(u64, u64)>,
}

/// A member/role binding of an IAM policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IamBinding {
    pub role: String,
    pub members: Vec<String>,
    /// A CEL condition, kept as given (title, description, expression).
    pub condition: Option<(String, String, String)>,
}

/// An IAM policy on a resource, as `google.iam.v1.Policy` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IamPolicy {
    pub version: i32,
    pub bindings: Vec<IamBinding>,
    /// Changes on every write; a write that names an etag must match the current one.
    pub etag: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = TopicName::parse("topic", "projects/p/topics/telemetry").unwrap();
        assert_eq!((t.project(), t.id()), ("p", "telemetry"));
        let long = format!("projects/p/topics/a{}", "~+%".repeat(84));
        assert_eq!(long.len() - "projects/p/topics/".len(), 253);
        assert!(TopicName::parse("topic", &long).is_ok());
        for bad in [
            "topics/t",
            "projects/p/topics/",
            "projects/p/topics/ab",
            "projects/p/topics/goog-x",
            "projects/p/topics/1abc",
            "projects/p/topics/t/x",
            "projects//topics/abc",
            "projects/p/subscriptions/abc",
            "projects/p q/topics/abc",
        ] {
            let e = TopicName::parse("topic", bad).unwrap_err();
            assert_eq!(e.field, "topic", "{bad}");
        }
        assert!(SubscriptionName::parse("s", "projects/p/subscriptions/sub").is_ok());
        assert!(SubscriptionName::parse("s", "projects/p/topics/sub").is_err());
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"projects/p/topics/telemetry\"");
        assert!(serde_json::from_str::<TopicName>("\"projects/p/topics/x\"").is_err());
    }
}
