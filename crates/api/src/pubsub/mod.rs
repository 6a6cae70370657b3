//! Google's Pub/Sub v1 API over [`ferrocore_pubsub::PubSub`]: gRPC ([`grpc`]) on the `--grpc`
//! listener and Google's REST mapping ([`rest`]) on `--http`, with one conversion layer
//! ([`convert`]). Callers are authenticated and authorized by [`crate::authz::Access`]
//! (`--pubsub-anonymous` lets calls without any credential in); each handler checks its method's
//! permission ([`Guard`]) once it has parsed the names, before the engine looks anything up.

pub mod convert;
pub mod grpc;
pub mod rest;

use crate::authz::{Access, Call};
use convert::{subscription_name, topic_name};
use ferrocore_core::{Error, Result};
use ferrocore_iam::{Caller, Resource};
use ferrocore_model::pubsub::{SubscriptionName, TopicName};
use ferrocore_proto::pubsub as ps;
use ferrocore_pubsub::PubSub;

/// The engine, with the caller of one request and how to check it.
#[derive(Clone, Copy)]
pub(crate) struct Guard<'a> {
    pub pubsub: &'a PubSub,
    pub access: &'a Access,
    pub caller: &'a Caller,
}

impl Guard<'_> {
    pub async fn check(&self, call: Call<'_>) -> Result<()> {
        self.access.check(self.caller, call).await
    }

    /// testIamPermissions on a topic or subscription: the engine checks that the resource exists
    /// and that the permissions are well-formed, then the caller's subset is answered.
    pub async fn test_iam_permissions(&self, resource: &IamResource, permissions: &[String]) -> Result<Vec<String>> {
        let asked = self.pubsub.test_iam_permissions(resource.as_str(), permissions).await?;
        self.access.held_pubsub(self.caller, resource.resource(), asked).await
    }
}

/// The resource of an IAM call on the Pub/Sub API.
pub(crate) enum IamResource {
    Topic(TopicName),
    Subscription(SubscriptionName),
}

impl IamResource {
    /// A topic or subscription name; anything else is INVALID_ARGUMENT in the engine's words.
    pub fn parse(resource: &str) -> Result<Self> {
        if let Ok(t) = TopicName::parse("resource", resource) {
            Ok(Self::Topic(t))
        } else if let Ok(s) = SubscriptionName::parse("resource", resource) {
            Ok(Self::Subscription(s))
        } else {
            Err(Error::invalid(
                "resource",
                "The resource must be a topic (projects/P/topics/T) or a subscription (projects/P/subscriptions/S).",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Topic(t) => t.as_str(),
            Self::Subscription(s) => s.as_str(),
        }
    }

    fn resource(&self) -> Resource<'_> {
        match self {
            Self::Topic(t) => Resource::Topic(t),
            Self::Subscription(s) => Resource::Subscription(s),
        }
    }

    pub fn get_policy(&self) -> Call<'_> {
        match self {
            Self::Topic(t) => Call::GetTopicIamPolicy(t),
            Self::Subscription(s) => Call::GetSubscriptionIamPolicy(s),
        }
    }

    pub fn set_policy(&self) -> Call<'_> {
        match self {
            Self::Topic(t) => Call::SetTopicIamPolicy(t),
            Self::Subscription(s) => Call::SetSubscriptionIamPolicy(s),
        }
    }
}

/// UpdateTopic as both transports serve it: check, read the topic, apply the request's mask, write.
pub(crate) async fn update_topic(guard: Guard<'_>, req: ps::UpdateTopicRequest) -> Result<ps::Topic> {
    let update = req.topic.ok_or_else(|| Error::invalid("topic", "The topic is missing."))?;
    let name = topic_name("topic.name", &update.name)?;
    guard.check(Call::UpdateTopic(&name)).await?;
    let current = guard.pubsub.get_topic(&name).await?;
    let changed = convert::apply_topic_mask(&current, update, req.update_mask)?;
    Ok(convert::topic_to_wire(&guard.pubsub.update_topic(changed).await?))
}

/// UpdateSubscription as both transports serve it: check, read, apply the request's mask, write.
pub(crate) async fn update_subscription(
    guard: Guard<'_>,
    req: ps::UpdateSubscriptionRequest,
) -> Result<ps::Subscription> {
    let update = req.subscription.ok_or_else(|| Error::invalid("subscription", "The subscription is missing."))?;
    let name = subscription_name("subscription.name", &update.name)?;
    guard.check(Call::UpdateSubscription(&name)).await?;
    let current = guard.pubsub.get_subscription(&name).await?;
    let changed = convert::apply_subscription_mask(&current, update, req.update_mask)?;
    Ok(convert::subscription_to_wire(&guard.pubsub.update_subscription(changed).await?))
}
