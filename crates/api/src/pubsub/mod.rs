//! Google's Pub/Sub v1 API over [`ferrocore_pubsub::PubSub`]: gRPC ([`grpc`]) on the `--grpc`
//! listener and Google's REST mapping ([`rest`]) on `--http`, with one conversion layer
//! ([`convert`]) and one access rule ([`PubsubAccess`]).

pub mod convert;
pub mod grpc;
pub mod rest;

use crate::admin_auth::AdminToken;
use convert::{subscription_name, topic_name};
use ferrocore_core::{Error, Result};
use ferrocore_proto::pubsub as ps;
use ferrocore_pubsub::PubSub;

/// Who may call the Pub/Sub API: the admin token, and with `anonymous` also calls that carry no
/// credentials at all (clients configured through `PUBSUB_EMULATOR_HOST` send none). A call that
/// carries any other credential — a device JWT, a wrong token — is refused either way.
#[derive(Clone, Debug)]
pub struct PubsubAccess {
    token: AdminToken,
    anonymous: bool,
}

impl PubsubAccess {
    pub fn new(token: AdminToken, anonymous: bool) -> Self {
        Self { token, anonymous }
    }

    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        match authorization {
            None => self.anonymous,
            Some(_) => self.token.accepts(authorization),
        }
    }
}

pub(crate) fn unauthenticated_status() -> tonic::Status {
    tonic::Status::unauthenticated(UNAUTHENTICATED_MESSAGE)
}

pub(crate) const UNAUTHENTICATED_MESSAGE: &str =
    "Request is missing or has an invalid admin token; send 'authorization: Bearer TOKEN' metadata.";

/// UpdateTopic as both transports serve it: read the topic, apply the request's mask, write.
pub(crate) async fn update_topic(pubsub: &PubSub, req: ps::UpdateTopicRequest) -> Result<ps::Topic> {
    let update = req.topic.ok_or_else(|| Error::invalid("topic", "The topic is missing."))?;
    let current = pubsub.get_topic(&topic_name("topic.name", &update.name)?).await?;
    let changed = convert::apply_topic_mask(&current, update, req.update_mask)?;
    Ok(convert::topic_to_wire(&pubsub.update_topic(changed).await?))
}

/// UpdateSubscription as both transports serve it: read, apply the request's mask, write.
pub(crate) async fn update_subscription(
    pubsub: &PubSub,
    req: ps::UpdateSubscriptionRequest,
) -> Result<ps::Subscription> {
    let update = req.subscription.ok_or_else(|| Error::invalid("subscription", "The subscription is missing."))?;
    let current = pubsub.get_subscription(&subscription_name("subscription.name", &update.name)?).await?;
    let changed = convert::apply_subscription_mask(&current, update, req.update_mask)?;
    Ok(convert::subscription_to_wire(&pubsub.update_subscription(changed).await?))
}
