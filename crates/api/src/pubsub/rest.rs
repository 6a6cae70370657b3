//! Pub/Sub v1 over Google's HTTP mapping (REST/JSON), served by the `--http` listener's `/v1/`
//! dispatcher next to the Cloud IoT API.
//!
//! * Topics: `PUT|GET|PATCH|DELETE /v1/projects/P/topics/T`, `GET /v1/projects/P/topics`,
//!   `GET .../topics/T/subscriptions`, `GET .../topics/T/snapshots`, `POST .../topics/T:publish`.
//! * Subscriptions: `PUT|GET|PATCH|DELETE /v1/projects/P/subscriptions/S`,
//!   `GET /v1/projects/P/subscriptions`, `POST .../subscriptions/S:pull`, `:acknowledge`,
//!   `:modifyAckDeadline`, `:seek`, `:modifyPushConfig`, `:detach`.
//! * IAM on both: `:getIamPolicy` (POST, or GET with `options.requestedPolicyVersion`),
//!   `:setIamPolicy`, `:testIamPermissions`.
//! * Snapshots (`/v1/projects/P/snapshots...`): 501 UNIMPLEMENTED, as over gRPC.
//!
//! Each handler transcodes path and body into the request message the gRPC adapter receives and
//! then does what that adapter does, through the same [`convert`] functions and engine calls, so
//! both protocols accept, refuse and answer alike. The dispatcher authenticates the caller before
//! this module sees the request; each handler checks the method's permission ([`Guard`]) once the
//! names are parsed, as the gRPC handlers do.

use super::convert::{self, subscription_name, topic_name};
use super::{Guard, IamResource};
use crate::authz::Call;
use crate::rest::route::{self, Method};
use crate::rest::{Query, check_body_name, json_response, method_not_supported, parse_body};
use axum::body::Bytes;
use axum::response::Response;
use ferrocore_core::{Code, Error, Result};
use ferrocore_model::ids::printable;
use ferrocore_proto::{Empty, iam, pubsub as ps};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Largest request body on Pub/Sub paths: a publish request may carry 10 MB
/// ([`ferrocore_pubsub::MAX_PUBLISH_BYTES`]), which base64 turns into 13.4 MB, plus the JSON around
/// up to 1000 messages and their attributes.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Whether `path` (everything after `/v1/`) is in Pub/Sub's collections: `projects/P/topics...`,
/// `projects/P/subscriptions...` or `projects/P/snapshots...`. Only the shape is looked at, so
/// the caller can be checked before any id is parsed.
pub(crate) fn is_pubsub_path(path: &str) -> bool {
    let (path, _) = route::split_verb(path);
    let mut segs = path.split('/');
    segs.next() == Some("projects")
        && segs.next().is_some()
        && matches!(segs.next(), Some("topics" | "subscriptions" | "snapshots"))
}

/// Serves one Pub/Sub request of the caller `guard` holds; `path` is everything after `/v1/`.
pub(crate) async fn serve(guard: Guard<'_>, method: Method, path: &str, q: &Query, body: &Bytes) -> Result<Response> {
    let (bare, verb) = route::split_verb(path);
    let segs = bare.split('/').map(route::decode).collect::<Result<Vec<_>>>()?;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    use Method::*;
    match (s.as_slice(), method, verb) {
        (["projects", _, "snapshots", ..], _, _) => Err(Error::new(
            Code::Unimplemented,
            "Snapshots are not supported by this server; seek subscriptions to a time instead.",
        )),
        (["projects", p, "topics"], Get, None) => list_topics(guard, p, q).await,
        (["projects", p, "subscriptions"], Get, None) => list_subscriptions(guard, p, q).await,
        (["projects", _, "topics", _], _, Some(v @ ("getIamPolicy" | "setIamPolicy" | "testIamPermissions")))
        | (
            ["projects", _, "subscriptions", _],
            _,
            Some(v @ ("getIamPolicy" | "setIamPolicy" | "testIamPermissions")),
        ) => iam_call(guard, bare, method, v, q, body).await,
        (["projects", _, "topics", _], _, verb) => topic(guard, bare, method, verb, q, body).await,
        (["projects", _, "topics", _, "subscriptions"], Get, None) => {
            q.check(&["pageSize", "pageToken"])?;
            let topic = topic_name("topic", &decoded(topic_of(bare))?)?;
            guard.check(Call::ListTopicSubscriptions(&topic)).await?;
            let (names, next_page_token) = guard
                .pubsub
                .list_topic_subscriptions(&topic, q.int32("pageSize")?, q.one("pageToken").unwrap_or_default())
                .await?;
            Ok(json_response(&ps::ListTopicSubscriptionsResponse {
                subscriptions: names.into_iter().map(String::from).collect(),
                next_page_token,
            }))
        }
        (["projects", _, "topics", _, "snapshots"], Get, None) => {
            q.check(&["pageSize", "pageToken"])?;
            q.int32("pageSize")?;
            let topic = topic_name("topic", &decoded(topic_of(bare))?)?;
            guard.check(Call::ListTopicSnapshots(&topic)).await?;
            // Snapshots are not supported, so no topic has any.
            guard.pubsub.get_topic(&topic).await?;
            Ok(json_response(&ps::ListTopicSnapshotsResponse::default()))
        }
        (["projects", _, "subscriptions", _], _, verb) => subscription(guard, bare, method, verb, q, body).await,
        (
            ["projects", _, "topics" | "subscriptions"] | ["projects", _, "topics", _, "subscriptions" | "snapshots"],
            _,
            v,
        ) => Err(v.map_or_else(method_not_supported, unknown_verb)),
        _ => Err(route::not_found(path)),
    }
}

/// `projects/P/topics/T` out of `projects/P/topics/T/...`.
fn topic_of(path: &str) -> &str {
    let end = path.match_indices('/').nth(3).map_or(path.len(), |(i, _)| i);
    &path[..end]
}

fn unknown_verb(v: &str) -> Error {
    Error::not_found(format!("The method ':{}' does not exist on this resource.", printable(v)))
}

/// The resource named by the path, percent-decoded.
fn decoded(path: &str) -> Result<String> {
    Ok(path.split('/').map(route::decode).collect::<Result<Vec<_>>>()?.join("/"))
}

async fn list_topics(guard: Guard<'_>, project: &str, q: &Query) -> Result<Response> {
    q.check(&["pageSize", "pageToken"])?;
    let project = convert::project("project", &format!("projects/{project}"))?;
    guard.check(Call::ListTopics(&project)).await?;
    let (topics, next_page_token) =
        guard.pubsub.list_topics(&project, q.int32("pageSize")?, q.one("pageToken").unwrap_or_default()).await?;
    Ok(json_response(&ps::ListTopicsResponse {
        topics: topics.iter().map(convert::topic_to_wire).collect(),
        next_page_token,
    }))
}

async fn list_subscriptions(guard: Guard<'_>, project: &str, q: &Query) -> Result<Response> {
    q.check(&["pageSize", "pageToken"])?;
    let project = convert::project("project", &format!("projects/{project}"))?;
    guard.check(Call::ListSubscriptions(&project)).await?;
    let (subs, next_page_token) =
        guard.pubsub.list_subscriptions(&project, q.int32("pageSize")?, q.one("pageToken").unwrap_or_default()).await?;
    Ok(json_response(&ps::ListSubscriptionsResponse {
        subscriptions: subs.iter().map(convert::subscription_to_wire).collect(),
        next_page_token,
    }))
}

/// `projects/P/topics/T` with or without a verb.
async fn topic(
    guard: Guard<'_>,
    path: &str,
    method: Method,
    verb: Option<&str>,
    q: &Query,
    body: &Bytes,
) -> Result<Response> {
    let name = decoded(path)?;
    match (method, verb) {
        (Method::Put, None) => {
            q.check(&[])?;
            let mut wire: ps::Topic = parse_body(body)?;
            check_body_name("name", &wire.name, &name)?;
            wire.name = name;
            let topic = convert::topic_from_wire(wire)?;
            guard.check(Call::CreateTopic(&topic.name)).await?;
            let created = guard.pubsub.create_topic(topic).await?;
            Ok(json_response(&convert::topic_to_wire(&created)))
        }
        (Method::Get, None) => {
            q.check(&[])?;
            let name = topic_name("topic", &name)?;
            guard.check(Call::GetTopic(&name)).await?;
            let topic = guard.pubsub.get_topic(&name).await?;
            Ok(json_response(&convert::topic_to_wire(&topic)))
        }
        (Method::Patch, None) => {
            q.check(&[])?;
            let mut req: ps::UpdateTopicRequest = parse_with_mask(body)?;
            let update = req.topic.as_mut().ok_or_else(|| Error::invalid("topic", "The topic is missing."))?;
            check_body_name("topic.name", &update.name, &name)?;
            update.name = name;
            Ok(json_response(&super::update_topic(guard, req).await?))
        }
        (Method::Delete, None) => {
            q.check(&[])?;
            let name = topic_name("topic", &name)?;
            guard.check(Call::DeleteTopic(&name)).await?;
            guard.pubsub.delete_topic(&name).await?;
            Ok(json_response(&Empty {}))
        }
        (Method::Post, Some("publish")) => {
            q.check(&[])?;
            let topic = topic_name("topic", &name)?;
            let req: ps::PublishRequest = parse_body(body)?;
            check_body_name("topic", &req.topic, &name)?;
            guard.check(Call::Publish(&topic)).await?;
            let messages = req.messages.into_iter().map(convert::outgoing).collect();
            let message_ids = guard.pubsub.publish(&topic, messages).await?;
            Ok(json_response(&ps::PublishResponse { message_ids }))
        }
        (_, Some(v)) if !matches!(v, "publish") => Err(unknown_verb(v)),
        _ => Err(method_not_supported()),
    }
}

/// `projects/P/subscriptions/S` with or without a verb.
async fn subscription(
    guard: Guard<'_>,
    path: &str,
    method: Method,
    verb: Option<&str>,
    q: &Query,
    body: &Bytes,
) -> Result<Response> {
    const VERBS: &[&str] = &["pull", "acknowledge", "modifyAckDeadline", "seek", "modifyPushConfig", "detach"];
    let name = decoded(path)?;
    match (method, verb) {
        (Method::Put, None) => {
            q.check(&[])?;
            let mut wire: ps::Subscription = parse_body(body)?;
            check_body_name("name", &wire.name, &name)?;
            wire.name = name;
            let sub = convert::subscription_from_wire(wire)?;
            guard.check(Call::CreateSubscription(&sub.name, sub.topic.as_ref())).await?;
            let created = guard.pubsub.create_subscription(sub).await?;
            Ok(json_response(&convert::subscription_to_wire(&created)))
        }
        (Method::Get, None) => {
            q.check(&[])?;
            let name = subscription_name("subscription", &name)?;
            guard.check(Call::GetSubscription(&name)).await?;
            let sub = guard.pubsub.get_subscription(&name).await?;
            Ok(json_response(&convert::subscription_to_wire(&sub)))
        }
        (Method::Patch, None) => {
            q.check(&[])?;
            let mut req: ps::UpdateSubscriptionRequest = parse_with_mask(body)?;
            let update = req
                .subscription
                .as_mut()
                .ok_or_else(|| Error::invalid("subscription", "The subscription is missing."))?;
            check_body_name("subscription.name", &update.name, &name)?;
            update.name = name;
            Ok(json_response(&super::update_subscription(guard, req).await?))
        }
        (Method::Delete, None) => {
            q.check(&[])?;
            let name = subscription_name("subscription", &name)?;
            guard.check(Call::DeleteSubscription(&name)).await?;
            guard.pubsub.delete_subscription(&name).await?;
            Ok(json_response(&Empty {}))
        }
        (Method::Post, Some(v)) if VERBS.contains(&v) => {
            q.check(&[])?;
            let sub = subscription_name("subscription", &name)?;
            subscription_verb(guard, &sub, v, body).await
        }
        (_, Some(v)) if !VERBS.contains(&v) => Err(unknown_verb(v)),
        _ => Err(method_not_supported()),
    }
}

async fn subscription_verb(
    guard: Guard<'_>,
    sub: &ferrocore_model::pubsub::SubscriptionName,
    verb: &str,
    body: &Bytes,
) -> Result<Response> {
    let path = sub.as_str();
    let pubsub = guard.pubsub;
    match verb {
        "pull" => {
            let req: ps::PullRequest = parse_body(body)?;
            check_body_name("subscription", &req.subscription, path)?;
            guard.check(Call::Pull(sub)).await?;
            #[allow(deprecated)]
            let return_immediately = req.return_immediately;
            let wait = if return_immediately { std::time::Duration::ZERO } else { ferrocore_pubsub::MAX_PULL_WAIT };
            let got = pubsub.pull(sub, req.max_messages, wait).await?;
            Ok(json_response(&ps::PullResponse { received_messages: got.into_iter().map(convert::received).collect() }))
        }
        "acknowledge" => {
            let req: ps::AcknowledgeRequest = parse_body(body)?;
            check_body_name("subscription", &req.subscription, path)?;
            guard.check(Call::Acknowledge(sub)).await?;
            pubsub.acknowledge(sub, &req.ack_ids).await?;
            Ok(json_response(&Empty {}))
        }
        "modifyAckDeadline" => {
            let req: ps::ModifyAckDeadlineRequest = parse_body(body)?;
            check_body_name("subscription", &req.subscription, path)?;
            guard.check(Call::ModifyAckDeadline(sub)).await?;
            pubsub.modify_ack_deadline(sub, &req.ack_ids, req.ack_deadline_seconds).await?;
            Ok(json_response(&Empty {}))
        }
        "seek" => {
            let req: ps::SeekRequest = parse_body(body)?;
            check_body_name("subscription", &req.subscription, path)?;
            guard.check(Call::Seek(sub)).await?;
            match req.target {
                Some(ps::seek_request::Target::Time(t)) => {
                    let time = convert::seek_time(Some(t))?;
                    pubsub.seek_to_time(sub, time).await?;
                    Ok(json_response(&ps::SeekResponse {}))
                }
                Some(ps::seek_request::Target::Snapshot(_)) => Err(unimplemented("Seeking to a snapshot")),
                None => Err(Error::invalid("time", "A seek needs a time or a snapshot.")),
            }
        }
        "modifyPushConfig" => {
            let req: ps::ModifyPushConfigRequest = parse_body(body)?;
            check_body_name("subscription", &req.subscription, path)?;
            guard.check(Call::ModifyPushConfig(sub)).await?;
            pubsub.get_subscription(sub).await?;
            if req.push_config.is_some_and(|p| !p.push_endpoint.is_empty()) {
                return Err(unimplemented("Push delivery"));
            }
            // An empty push config turns a subscription into a pull one, which every one already is.
            Ok(json_response(&Empty {}))
        }
        "detach" => {
            // DetachSubscriptionRequest has only the name, which the path carries.
            let req: ps::DetachSubscriptionRequest = parse_body(body)?;
            check_body_name("subscription", &req.subscription, path)?;
            guard.check(Call::DetachSubscription(sub)).await?;
            pubsub.detach_subscription(sub).await?;
            Ok(json_response(&ps::DetachSubscriptionResponse {}))
        }
        other => Err(unknown_verb(other)),
    }
}

/// A request with an `updateMask`. Google's JSON writes a FieldMask as one string
/// (`"labels,ackDeadlineSeconds"`), while the generated type reads only `{"paths": [...]}`; the
/// string is turned into that form first, and both are accepted.
pub(crate) fn parse_with_mask<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T> {
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        // Let the usual parser word the syntax error.
        return parse_body(body);
    };
    let Some(fields) = value.as_object_mut() else { return parse_body(body) };
    let mut changed = false;
    for key in ["updateMask", "update_mask"] {
        if let Some(Value::String(mask)) = fields.get(key) {
            let paths: Vec<&str> = mask.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
            let paths = serde_json::json!({ "paths": paths });
            fields.insert(key.to_owned(), paths);
            changed = true;
        }
    }
    if !changed {
        return parse_body(body);
    }
    parse_body(&Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
}

fn unimplemented(what: &str) -> Error {
    Error::new(Code::Unimplemented, format!("{what} is not supported by this server."))
}

/// `google.iam.v1.IAMPolicy` on a topic or subscription (`path` is its name, undecoded).
async fn iam_call(
    guard: Guard<'_>,
    path: &str,
    method: Method,
    verb: &str,
    q: &Query,
    body: &Bytes,
) -> Result<Response> {
    let name = decoded(path)?;
    // A malformed name is the client's mistake (400), before the engine looks the resource up.
    let target = if path.split('/').nth(2) == Some("topics") {
        IamResource::Topic(topic_name("resource", &name)?)
    } else {
        IamResource::Subscription(subscription_name("resource", &name)?)
    };
    let resource = target.as_str();
    let pubsub = guard.pubsub;
    match (method, verb) {
        (Method::Get, "getIamPolicy") => {
            q.check(&["options.requestedPolicyVersion"])?;
            q.int32("options.requestedPolicyVersion")?;
            guard.check(target.get_policy()).await?;
            let policy = pubsub.get_iam_policy(resource).await?;
            Ok(json_response(&convert::policy_to_wire(&policy)))
        }
        (Method::Post, "getIamPolicy") => {
            q.check(&[])?;
            let req: iam::GetIamPolicyRequest = parse_body(body)?;
            check_body_name("resource", &req.resource, resource)?;
            guard.check(target.get_policy()).await?;
            let policy = pubsub.get_iam_policy(resource).await?;
            Ok(json_response(&convert::policy_to_wire(&policy)))
        }
        (Method::Post, "setIamPolicy") => {
            q.check(&[])?;
            let req: iam::SetIamPolicyRequest = parse_with_mask(body)?;
            check_body_name("resource", &req.resource, resource)?;
            guard.check(target.set_policy()).await?;
            let policy = req.policy.ok_or_else(|| Error::invalid("policy", "The policy is missing."))?;
            let stored = pubsub.set_iam_policy(resource, convert::policy_from_wire(policy)?).await?;
            Ok(json_response(&convert::policy_to_wire(&stored)))
        }
        (Method::Post, "testIamPermissions") => {
            q.check(&[])?;
            let req: iam::TestIamPermissionsRequest = parse_body(body)?;
            check_body_name("resource", &req.resource, resource)?;
            let permissions = guard.test_iam_permissions(&target, &req.permissions).await?;
            Ok(json_response(&iam::TestIamPermissionsResponse { permissions }))
        }
        _ => Err(method_not_supported()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_paths_are_told_by_shape() {
        for p in [
            "projects/p/topics",
            "projects/p/topics/t",
            "projects/p/topics/t:publish",
            "projects/p/subscriptions/s:pull",
            "projects/p/snapshots/x",
            "projects/acme.com:p/topics",
            "projects//topics/x",
        ] {
            assert!(is_pubsub_path(p), "{p}");
        }
        for p in ["projects/p/locations/l/registries", "projects/p", "projects", "other/p/topics", ""] {
            assert!(!is_pubsub_path(p), "{p}");
        }
        assert_eq!(topic_of("projects/p/topics/t/subscriptions"), "projects/p/topics/t");
        assert_eq!(topic_of("projects/p/topics/t"), "projects/p/topics/t");
    }
}
