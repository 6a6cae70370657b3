//! Pub/Sub wire types (`google.pubsub.v1`, `google.iam.v1`) to and from the engine's domain
//! types, shared by the gRPC and REST adapters so both accept and answer the same things. The
//! policy conversions serve registries' policies (DeviceManager's IAM methods) as well.

use ferrocore_core::{Code, Error, Result};
use ferrocore_model::Timestamp;
use ferrocore_model::pubsub::{
    DELETED_TOPIC, DeadLetterPolicy, IamBinding, IamPolicy, RetryPolicy, Subscription, SubscriptionName, Topic,
    TopicName, TopicOrigin,
};
use ferrocore_proto::wkt;
use ferrocore_proto::{Duration, FieldMask, iam, pubsub as ps, r#type::Expr};
use ferrocore_pubsub::{Delivery, ORDERING_KEY_ATTRIBUTE, OutgoingMessage};
use std::collections::{BTreeMap, HashMap};

pub fn topic_name(field: &str, s: &str) -> Result<TopicName> {
    Ok(TopicName::parse(field, s)?)
}

pub fn subscription_name(field: &str, s: &str) -> Result<SubscriptionName> {
    Ok(SubscriptionName::parse(field, s)?)
}

/// `projects/{project}` as list requests name it.
pub fn project(field: &str, s: &str) -> Result<String> {
    match s.split('/').collect::<Vec<_>>().as_slice() {
        ["projects", p] if !p.is_empty() && !p.chars().any(|c| c.is_control() || c.is_whitespace()) => {
            Ok((*p).to_owned())
        }
        _ => Err(Error::invalid(field, "Expected 'projects/{project}'.")),
    }
}

fn seconds(field: &str, d: &Option<Duration>) -> Result<Option<i64>> {
    match d {
        None => Ok(None),
        Some(d) if d.nanos != 0 || d.seconds < 0 => {
            Err(Error::invalid(field, "The duration must be a whole, non-negative number of seconds."))
        }
        Some(d) => Ok(Some(d.seconds)),
    }
}

fn duration(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

fn labels(l: HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

pub fn topic_from_wire(t: ps::Topic) -> Result<Topic> {
    if !t.kms_key_name.is_empty() {
        return Err(unsupported("Customer-managed encryption keys (kms_key_name) are not supported."));
    }
    if t.schema_settings.as_ref().is_some_and(|s| !s.schema.is_empty()) {
        return Err(unsupported("Topic schemas are not supported."));
    }
    Ok(Topic {
        name: topic_name("name", &t.name)?,
        labels: labels(t.labels),
        message_retention_seconds: seconds("message_retention_duration", &t.message_retention_duration)?,
        origin: TopicOrigin::Created,
    })
}

pub fn topic_to_wire(t: &Topic) -> ps::Topic {
    ps::Topic {
        name: t.name.to_string(),
        labels: t.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        message_retention_duration: t.message_retention_seconds.map(duration),
        // ACTIVE
        state: 1,
        ..Default::default()
    }
}

fn unsupported(message: &str) -> Error {
    Error::new(Code::Unimplemented, message)
}

/// A subscription as a client sent it (CreateSubscription, or the fields of an update).
pub fn subscription_from_wire(s: ps::Subscription) -> Result<Subscription> {
    if s.push_config.as_ref().is_some_and(|p| !p.push_endpoint.is_empty()) {
        return Err(unsupported("Push subscriptions are not supported; use StreamingPull or Pull."));
    }
    if s.bigquery_config.as_ref().is_some_and(|c| !c.table.is_empty())
        || s.cloud_storage_config.as_ref().is_some_and(|c| !c.bucket.is_empty())
        || s.bigtable_config.is_some()
    {
        return Err(unsupported("Export subscriptions (BigQuery, Cloud Storage, Bigtable) are not supported."));
    }
    if s.enable_exactly_once_delivery {
        return Err(Error::invalid(
            "enable_exactly_once_delivery",
            "Exactly-once delivery is not supported; delivery is at-least-once.",
        ));
    }
    let topic = if s.topic.is_empty() { None } else { Some(topic_name("topic", &s.topic)?) };
    let dead_letter_policy = s
        .dead_letter_policy
        .filter(|p| !p.dead_letter_topic.is_empty())
        .map(|p| -> Result<DeadLetterPolicy> {
            Ok(DeadLetterPolicy {
                dead_letter_topic: topic_name("dead_letter_policy.dead_letter_topic", &p.dead_letter_topic)?,
                max_delivery_attempts: p.max_delivery_attempts,
            })
        })
        .transpose()?;
    let retry_policy = s
        .retry_policy
        .map(|r| -> Result<RetryPolicy> {
            Ok(RetryPolicy {
                minimum_backoff_seconds: seconds("retry_policy.minimum_backoff", &r.minimum_backoff)?.unwrap_or(10),
                maximum_backoff_seconds: seconds("retry_policy.maximum_backoff", &r.maximum_backoff)?.unwrap_or(600),
            })
        })
        .transpose()?;
    Ok(Subscription {
        name: subscription_name("name", &s.name)?,
        topic,
        ack_deadline_seconds: s.ack_deadline_seconds,
        retain_acked_messages: s.retain_acked_messages,
        message_retention_seconds: seconds("message_retention_duration", &s.message_retention_duration)?.unwrap_or(0),
        labels: labels(s.labels),
        enable_message_ordering: s.enable_message_ordering,
        expiration_ttl_seconds: s
            .expiration_policy
            .as_ref()
            .map(|p| seconds("expiration_policy.ttl", &p.ttl))
            .transpose()?
            .flatten(),
        filter: s.filter,
        dead_letter_policy,
        retry_policy,
        detached: s.detached,
        created: Timestamp(0),
    })
}

pub fn subscription_to_wire(s: &Subscription) -> ps::Subscription {
    ps::Subscription {
        name: s.name.to_string(),
        topic: s.topic.as_ref().map_or_else(|| DELETED_TOPIC.to_owned(), |t| t.to_string()),
        push_config: Some(ps::PushConfig::default()),
        ack_deadline_seconds: s.ack_deadline_seconds,
        retain_acked_messages: s.retain_acked_messages,
        message_retention_duration: Some(duration(s.message_retention_seconds)),
        labels: s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        enable_message_ordering: s.enable_message_ordering,
        expiration_policy: s.expiration_ttl_seconds.map(|t| ps::ExpirationPolicy { ttl: Some(duration(t)) }),
        filter: s.filter.clone(),
        dead_letter_policy: s.dead_letter_policy.as_ref().map(|p| ps::DeadLetterPolicy {
            dead_letter_topic: p.dead_letter_topic.to_string(),
            max_delivery_attempts: p.max_delivery_attempts,
        }),
        retry_policy: s.retry_policy.as_ref().map(|r| ps::RetryPolicy {
            minimum_backoff: Some(duration(r.minimum_backoff_seconds)),
            maximum_backoff: Some(duration(r.maximum_backoff_seconds)),
        }),
        detached: s.detached,
        // ACTIVE
        state: 1,
        ..Default::default()
    }
}

/// Applies an UpdateSubscription request to the current subscription: only the masked fields
/// change; a field no Ferrocore subscription can have is refused.
pub fn apply_subscription_mask(
    current: &Subscription,
    update: ps::Subscription,
    mask: Option<FieldMask>,
) -> Result<Subscription> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid("update_mask", "The update mask must name at least one field."));
    }
    let wanted =
        subscription_from_wire(ps::Subscription { name: current.name.to_string(), topic: String::new(), ..update })?;
    let mut out = current.clone();
    for path in &paths {
        match camel_to_snake(path).as_str() {
            "ack_deadline_seconds" => out.ack_deadline_seconds = wanted.ack_deadline_seconds,
            "retain_acked_messages" => out.retain_acked_messages = wanted.retain_acked_messages,
            "message_retention_duration" => out.message_retention_seconds = wanted.message_retention_seconds,
            "labels" => out.labels = wanted.labels.clone(),
            "expiration_policy" => out.expiration_ttl_seconds = wanted.expiration_ttl_seconds,
            "filter" => out.filter = wanted.filter.clone(),
            "dead_letter_policy" => out.dead_letter_policy = wanted.dead_letter_policy.clone(),
            "retry_policy" => out.retry_policy = wanted.retry_policy.clone(),
            "push_config" => {}
            "enable_message_ordering" => {
                return Err(Error::invalid("update_mask", "enable_message_ordering cannot be changed after creation."));
            }
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(Error::invalid("update_mask", format!("The field '{shown}' cannot be updated.")));
            }
        }
    }
    Ok(out)
}

/// Applies an UpdateTopic request: labels and message_retention_duration may change.
pub fn apply_topic_mask(current: &Topic, update: ps::Topic, mask: Option<FieldMask>) -> Result<Topic> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid("update_mask", "The update mask must name at least one field."));
    }
    let mut out = current.clone();
    for path in &paths {
        match camel_to_snake(path).as_str() {
            "labels" => out.labels = labels(update.labels.clone()),
            "message_retention_duration" => {
                out.message_retention_seconds =
                    seconds("topic.message_retention_duration", &update.message_retention_duration)?;
            }
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(Error::invalid("update_mask", format!("The field '{shown}' cannot be updated.")));
            }
        }
    }
    Ok(out)
}

fn camel_to_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn outgoing(m: ps::PubsubMessage) -> OutgoingMessage {
    let mut attributes: Vec<(String, String)> = m.attributes.into_iter().collect();
    // Stable order, so a message's attributes read back as they were sent whatever the map did.
    attributes.sort_unstable();
    OutgoingMessage { data: m.data, attributes, ordering_key: m.ordering_key }
}

pub fn received(d: Delivery) -> ps::ReceivedMessage {
    let m = &d.message;
    let mut ordering_key = String::new();
    let mut attributes = HashMap::with_capacity(m.attributes.len());
    for (k, v) in &m.attributes {
        if k == ORDERING_KEY_ATTRIBUTE {
            ordering_key = v.clone();
        } else {
            attributes.insert(k.clone(), v.clone());
        }
    }
    ps::ReceivedMessage {
        ack_id: d.ack_id,
        message: Some(ps::PubsubMessage {
            data: m.data.clone(),
            attributes,
            message_id: m.offset.to_string(),
            publish_time: Some(wkt::Timestamp::from_unix_nanos(m.time.nanos())),
            ordering_key,
        }),
        delivery_attempt: d.delivery_attempt.unwrap_or(0),
    }
}

pub fn seek_time(t: Option<wkt::Timestamp>) -> Result<Timestamp> {
    t.and_then(|t| t.unix_nanos())
        .map(Timestamp)
        .ok_or_else(|| Error::invalid("time", "The seek time is missing or out of range."))
}

pub fn policy_from_wire(p: iam::Policy) -> Result<IamPolicy> {
    if !p.audit_configs.is_empty() {
        return Err(Error::invalid("policy.audit_configs", "Audit configs are not supported."));
    }
    Ok(IamPolicy {
        version: p.version,
        bindings: p
            .bindings
            .into_iter()
            .map(|b| IamBinding {
                role: b.role,
                members: b.members,
                condition: b.condition.map(|c| (c.title, c.description, c.expression)),
            })
            .collect(),
        etag: p.etag.to_vec(),
    })
}

pub fn policy_to_wire(p: &IamPolicy) -> iam::Policy {
    iam::Policy {
        version: p.version,
        bindings: p
            .bindings
            .iter()
            .map(|b| iam::Binding {
                role: b.role.clone(),
                members: b.members.clone(),
                condition: b.condition.as_ref().map(|(title, description, expression)| Expr {
                    title: title.clone(),
                    description: description.clone(),
                    expression: expression.clone(),
                    location: String::new(),
                }),
            })
            .collect(),
        etag: p.etag.clone(),
        audit_configs: Vec::new(),
    }
}
