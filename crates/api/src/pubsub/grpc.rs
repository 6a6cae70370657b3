//! `google.pubsub.v1.Publisher`, `google.pubsub.v1.Subscriber` and `google.iam.v1.IAMPolicy`
//! over gRPC, served beside DeviceManager on the `--grpc` listener.
//!
//! Every RPC authenticates the caller ([`Access::authenticate_pubsub`]) and, once the request's
//! names are parsed, checks its permission ([`Guard::check`]); StreamingPull checks on its first
//! request's subscription.
//!
//! StreamingPull runs two halves per stream: a reader that applies the client's in-stream acks
//! and deadline changes and answers protocol-1 keep-alives at once, and a sender that waits for
//! deliverable messages within the stream's flow-control window. A stream the server ends
//! (shutdown) ends with UNAVAILABLE, which every official client retries.

use super::convert::{self, subscription_name, topic_name};
use super::{Guard, IamResource};
use crate::authz::{Access, Call};
use crate::grpc::{authorization, status, unauthenticated};
use ferrocore_core::{Code, Error};
use ferrocore_iam::Caller;
use ferrocore_proto::pubsub::publisher_server::{Publisher, PublisherServer};
use ferrocore_proto::pubsub::subscriber_server::{Subscriber, SubscriberServer};
use ferrocore_proto::pubsub::{self as ps, streaming_pull_response as spr};
use ferrocore_proto::{Empty, iam};
use ferrocore_pubsub::{PubSub, StreamOptions};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Largest request accepted: a full 10 MB publish request with its framing.
pub const MAX_MESSAGE_BYTES: usize = 11 * 1024 * 1024;
/// How long before the client's deadline an empty Pull answers.
const PULL_DEADLINE_MARGIN: Duration = Duration::from_millis(200);
/// Messages per StreamingPull response at most.
const MAX_BATCH: usize = 1000;

#[derive(Clone)]
pub struct PubsubGrpc {
    pubsub: PubSub,
    access: Access,
}

/// Adds the three services to `routes` (the DeviceManager's, so one listener serves all).
pub fn add_routes(routes: tonic::service::Routes, pubsub: PubSub, access: Access) -> tonic::service::Routes {
    let svc = PubsubGrpc { pubsub, access };
    routes
        .add_service(
            PublisherServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            SubscriberServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(iam::iam_policy_server::IamPolicyServer::new(svc))
}

impl PubsubGrpc {
    fn authenticate<T>(&self, req: &Request<T>) -> std::result::Result<Caller, Status> {
        self.access.authenticate_pubsub(authorization(req)).map_err(|_| unauthenticated())
    }

    fn guard<'a>(&'a self, caller: &'a Caller) -> Guard<'a> {
        Guard { pubsub: &self.pubsub, access: &self.access, caller }
    }

    async fn check(&self, caller: &Caller, call: Call<'_>) -> std::result::Result<(), Status> {
        self.access.check(caller, call).await.map_err(status)
    }
}

fn unimplemented(what: &str) -> Status {
    status(Error::new(Code::Unimplemented, format!("{what} is not supported by this server.")))
}

type Result<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl Publisher for PubsubGrpc {
    async fn create_topic(&self, request: Request<ps::Topic>) -> Result<ps::Topic> {
        let caller = self.authenticate(&request)?;
        let topic = convert::topic_from_wire(request.into_inner()).map_err(status)?;
        self.check(&caller, Call::CreateTopic(&topic.name)).await?;
        let created = self.pubsub.create_topic(topic).await.map_err(status)?;
        Ok(Response::new(convert::topic_to_wire(&created)))
    }

    async fn update_topic(&self, request: Request<ps::UpdateTopicRequest>) -> Result<ps::Topic> {
        let caller = self.authenticate(&request)?;
        let updated = super::update_topic(self.guard(&caller), request.into_inner()).await.map_err(status)?;
        Ok(Response::new(updated))
    }

    async fn publish(&self, request: Request<ps::PublishRequest>) -> Result<ps::PublishResponse> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        let topic = topic_name("topic", &req.topic).map_err(status)?;
        self.check(&caller, Call::Publish(&topic)).await?;
        let messages = req.messages.into_iter().map(convert::outgoing).collect();
        let message_ids = self.pubsub.publish(&topic, messages).await.map_err(status)?;
        Ok(Response::new(ps::PublishResponse { message_ids }))
    }

    async fn get_topic(&self, request: Request<ps::GetTopicRequest>) -> Result<ps::Topic> {
        let caller = self.authenticate(&request)?;
        let name = topic_name("topic", &request.into_inner().topic).map_err(status)?;
        self.check(&caller, Call::GetTopic(&name)).await?;
        let topic = self.pubsub.get_topic(&name).await.map_err(status)?;
        Ok(Response::new(convert::topic_to_wire(&topic)))
    }

    async fn list_topics(&self, request: Request<ps::ListTopicsRequest>) -> Result<ps::ListTopicsResponse> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        let project = convert::project("project", &req.project).map_err(status)?;
        self.check(&caller, Call::ListTopics(&project)).await?;
        let (topics, next_page_token) =
            self.pubsub.list_topics(&project, req.page_size, &req.page_token).await.map_err(status)?;
        Ok(Response::new(ps::ListTopicsResponse {
            topics: topics.iter().map(convert::topic_to_wire).collect(),
            next_page_token,
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        request: Request<ps::ListTopicSubscriptionsRequest>,
    ) -> Result<ps::ListTopicSubscriptionsResponse> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        let topic = topic_name("topic", &req.topic).map_err(status)?;
        self.check(&caller, Call::ListTopicSubscriptions(&topic)).await?;
        let (names, next_page_token) =
            self.pubsub.list_topic_subscriptions(&topic, req.page_size, &req.page_token).await.map_err(status)?;
        Ok(Response::new(ps::ListTopicSubscriptionsResponse {
            subscriptions: names.into_iter().map(String::from).collect(),
            next_page_token,
        }))
    }

    async fn list_topic_snapshots(
        &self,
        request: Request<ps::ListTopicSnapshotsRequest>,
    ) -> Result<ps::ListTopicSnapshotsResponse> {
        let caller = self.authenticate(&request)?;
        let topic = topic_name("topic", &request.into_inner().topic).map_err(status)?;
        self.check(&caller, Call::ListTopicSnapshots(&topic)).await?;
        // Snapshots are not supported, so no topic has any.
        self.pubsub.get_topic(&topic).await.map_err(status)?;
        Ok(Response::new(ps::ListTopicSnapshotsResponse::default()))
    }

    async fn delete_topic(&self, request: Request<ps::DeleteTopicRequest>) -> Result<Empty> {
        let caller = self.authenticate(&request)?;
        let name = topic_name("topic", &request.into_inner().topic).map_err(status)?;
        self.check(&caller, Call::DeleteTopic(&name)).await?;
        self.pubsub.delete_topic(&name).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn detach_subscription(
        &self,
        request: Request<ps::DetachSubscriptionRequest>,
    ) -> Result<ps::DetachSubscriptionResponse> {
        let caller = self.authenticate(&request)?;
        let name = subscription_name("subscription", &request.into_inner().subscription).map_err(status)?;
        self.check(&caller, Call::DetachSubscription(&name)).await?;
        self.pubsub.detach_subscription(&name).await.map_err(status)?;
        Ok(Response::new(ps::DetachSubscriptionResponse {}))
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = std::result::Result<ps::StreamingPullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Subscriber for PubsubGrpc {
    async fn create_subscription(&self, request: Request<ps::Subscription>) -> Result<ps::Subscription> {
        let caller = self.authenticate(&request)?;
        let sub = convert::subscription_from_wire(request.into_inner()).map_err(status)?;
        self.check(&caller, Call::CreateSubscription(&sub.name, sub.topic.as_ref())).await?;
        let created = self.pubsub.create_subscription(sub).await.map_err(status)?;
        Ok(Response::new(convert::subscription_to_wire(&created)))
    }

    async fn get_subscription(&self, request: Request<ps::GetSubscriptionRequest>) -> Result<ps::Subscription> {
        let caller = self.authenticate(&request)?;
        let name = subscription_name("subscription", &request.into_inner().subscription).map_err(status)?;
        self.check(&caller, Call::GetSubscription(&name)).await?;
        let sub = self.pubsub.get_subscription(&name).await.map_err(status)?;
        Ok(Response::new(convert::subscription_to_wire(&sub)))
    }

    async fn update_subscription(&self, request: Request<ps::UpdateSubscriptionRequest>) -> Result<ps::Subscription> {
        let caller = self.authenticate(&request)?;
        let updated = super::update_subscription(self.guard(&caller), request.into_inner()).await.map_err(status)?;
        Ok(Response::new(updated))
    }

    async fn list_subscriptions(
        &self,
        request: Request<ps::ListSubscriptionsRequest>,
    ) -> Result<ps::ListSubscriptionsResponse> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        let project = convert::project("project", &req.project).map_err(status)?;
        self.check(&caller, Call::ListSubscriptions(&project)).await?;
        let (subs, next_page_token) =
            self.pubsub.list_subscriptions(&project, req.page_size, &req.page_token).await.map_err(status)?;
        Ok(Response::new(ps::ListSubscriptionsResponse {
            subscriptions: subs.iter().map(convert::subscription_to_wire).collect(),
            next_page_token,
        }))
    }

    async fn delete_subscription(&self, request: Request<ps::DeleteSubscriptionRequest>) -> Result<Empty> {
        let caller = self.authenticate(&request)?;
        let name = subscription_name("subscription", &request.into_inner().subscription).map_err(status)?;
        self.check(&caller, Call::DeleteSubscription(&name)).await?;
        self.pubsub.delete_subscription(&name).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn modify_ack_deadline(&self, request: Request<ps::ModifyAckDeadlineRequest>) -> Result<Empty> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        let name = subscription_name("subscription", &req.subscription).map_err(status)?;
        self.check(&caller, Call::ModifyAckDeadline(&name)).await?;
        self.pubsub.modify_ack_deadline(&name, &req.ack_ids, req.ack_deadline_seconds).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn acknowledge(&self, request: Request<ps::AcknowledgeRequest>) -> Result<Empty> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        let name = subscription_name("subscription", &req.subscription).map_err(status)?;
        self.check(&caller, Call::Acknowledge(&name)).await?;
        self.pubsub.acknowledge(&name, &req.ack_ids).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    #[allow(deprecated)]
    async fn pull(&self, request: Request<ps::PullRequest>) -> Result<ps::PullResponse> {
        let caller = self.authenticate(&request)?;
        let client_deadline = request.metadata().get("grpc-timeout").and_then(|v| grpc_timeout(v.to_str().ok()?));
        let req = request.into_inner();
        let name = subscription_name("subscription", &req.subscription).map_err(status)?;
        self.check(&caller, Call::Pull(&name)).await?;
        let wait = match (req.return_immediately, client_deadline) {
            (true, _) => Duration::ZERO,
            // Answer (empty) a little before the client's deadline rather than let it expire.
            (false, Some(deadline)) => deadline.saturating_sub(PULL_DEADLINE_MARGIN),
            (false, None) => ferrocore_pubsub::MAX_PULL_WAIT,
        };
        let got = self.pubsub.pull(&name, req.max_messages, wait).await.map_err(status)?;
        Ok(Response::new(ps::PullResponse { received_messages: got.into_iter().map(convert::received).collect() }))
    }

    type StreamingPullStream = ResponseStream;

    async fn streaming_pull(
        &self,
        request: Request<Streaming<ps::StreamingPullRequest>>,
    ) -> Result<Self::StreamingPullStream> {
        let caller = self.authenticate(&request)?;
        let mut inbound = request.into_inner();
        let first = match inbound.message().await {
            Ok(Some(first)) => first,
            Ok(None) => {
                return Err(status(Error::invalid("subscription", "The stream ended before its first request.")));
            }
            Err(e) => return Err(e),
        };
        let name = subscription_name("subscription", &first.subscription).map_err(status)?;
        // The stream's later requests are bound to this subscription, so one check covers them.
        self.check(&caller, Call::StreamingPull(&name)).await?;
        let options = StreamOptions {
            ack_deadline_seconds: first.stream_ack_deadline_seconds,
            max_outstanding_messages: first.max_outstanding_messages,
            max_outstanding_bytes: first.max_outstanding_bytes,
        };
        let mut stream = self.pubsub.open_stream(&name, options).await.map_err(status)?;
        apply_in_stream(&self.pubsub, &name, &first).await.map_err(status)?;
        let keep_alive = first.protocol_version >= 1;
        let ordering = stream.message_ordering();
        let (tx, rx) = mpsc::channel::<std::result::Result<ps::StreamingPullResponse, Status>>(4);

        // Reader: in-stream acks and deadline changes, keep-alive answers, new stream deadlines.
        let (deadline_tx, mut deadline_rx) = tokio::sync::watch::channel(first.stream_ack_deadline_seconds);
        let (reader_done_tx, mut reader_done) = tokio::sync::oneshot::channel::<()>();
        let reader = {
            let pubsub = self.pubsub.clone();
            let name = name.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                // Dropped when the reader ends, which tells the sender.
                let _done = reader_done_tx;
                loop {
                    let req = match inbound.message().await {
                        Ok(Some(r)) => r,
                        // Half-close or a broken connection: the stream is over.
                        Ok(None) | Err(_) => return,
                    };
                    if let Err(e) = apply_in_stream(&pubsub, &name, &req).await {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                    if req.stream_ack_deadline_seconds != 0 {
                        let _ = deadline_tx.send(req.stream_ack_deadline_seconds);
                    }
                    let empty = req.ack_ids.is_empty() && req.modify_deadline_ack_ids.is_empty();
                    if keep_alive && empty && tx.send(Ok(ps::StreamingPullResponse::default())).await.is_err() {
                        return;
                    }
                }
            })
        };

        // Sender: deliveries within the window, until the client goes away or the server stops.
        tokio::spawn(async move {
            let mut first_response = true;
            loop {
                let next = tokio::select! {
                    next = stream.next(MAX_BATCH) => next,
                    _ = tx.closed() => break,
                    _ = &mut reader_done => break,
                    changed = deadline_rx.changed() => {
                        if changed.is_ok() {
                            let seconds = *deadline_rx.borrow_and_update();
                            if let Err(e) = stream.set_ack_deadline(seconds) {
                                let _ = tx.send(Err(status(e))).await;
                                break;
                            }
                        }
                        continue;
                    }
                };
                let response = match next {
                    Ok(deliveries) => ps::StreamingPullResponse {
                        received_messages: deliveries.into_iter().map(convert::received).collect(),
                        subscription_properties: first_response.then_some(spr::SubscriptionProperties {
                            exactly_once_delivery_enabled: false,
                            message_ordering_enabled: ordering,
                        }),
                        ..Default::default()
                    },
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        break;
                    }
                };
                first_response = false;
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
            reader.abort();
        });
        let out = tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out)))
    }

    async fn modify_push_config(&self, request: Request<ps::ModifyPushConfigRequest>) -> Result<Empty> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        let name = subscription_name("subscription", &req.subscription).map_err(status)?;
        self.check(&caller, Call::ModifyPushConfig(&name)).await?;
        self.pubsub.get_subscription(&name).await.map_err(status)?;
        if req.push_config.is_some_and(|p| !p.push_endpoint.is_empty()) {
            return Err(unimplemented("Push delivery"));
        }
        // An empty push config turns a subscription into a pull one, which every one already is.
        Ok(Response::new(Empty {}))
    }

    async fn get_snapshot(&self, request: Request<ps::GetSnapshotRequest>) -> Result<ps::Snapshot> {
        self.authenticate(&request)?;
        Err(unimplemented("Snapshots"))
    }

    async fn list_snapshots(&self, request: Request<ps::ListSnapshotsRequest>) -> Result<ps::ListSnapshotsResponse> {
        self.authenticate(&request)?;
        Err(unimplemented("Snapshots"))
    }

    async fn create_snapshot(&self, request: Request<ps::CreateSnapshotRequest>) -> Result<ps::Snapshot> {
        self.authenticate(&request)?;
        Err(unimplemented("Snapshots"))
    }

    async fn update_snapshot(&self, request: Request<ps::UpdateSnapshotRequest>) -> Result<ps::Snapshot> {
        self.authenticate(&request)?;
        Err(unimplemented("Snapshots"))
    }

    async fn delete_snapshot(&self, request: Request<ps::DeleteSnapshotRequest>) -> Result<Empty> {
        self.authenticate(&request)?;
        Err(unimplemented("Snapshots"))
    }

    async fn seek(&self, request: Request<ps::SeekRequest>) -> Result<ps::SeekResponse> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        let name = subscription_name("subscription", &req.subscription).map_err(status)?;
        self.check(&caller, Call::Seek(&name)).await?;
        match req.target {
            Some(ps::seek_request::Target::Time(t)) => {
                let time = convert::seek_time(Some(t)).map_err(status)?;
                self.pubsub.seek_to_time(&name, time).await.map_err(status)?;
                Ok(Response::new(ps::SeekResponse {}))
            }
            Some(ps::seek_request::Target::Snapshot(_)) => Err(unimplemented("Seeking to a snapshot")),
            None => Err(status(Error::invalid("time", "A seek needs a time or a snapshot."))),
        }
    }
}

/// Acks and deadline changes carried inside a StreamingPull request.
async fn apply_in_stream(
    pubsub: &PubSub,
    name: &ferrocore_model::pubsub::SubscriptionName,
    req: &ps::StreamingPullRequest,
) -> ferrocore_core::Result<()> {
    if req.modify_deadline_ack_ids.len() != req.modify_deadline_seconds.len() {
        return Err(Error::invalid(
            "modify_deadline_seconds",
            "modify_deadline_seconds and modify_deadline_ack_ids must have the same length.",
        ));
    }
    if !req.ack_ids.is_empty() {
        pubsub.acknowledge(name, &req.ack_ids).await?;
    }
    // Consecutive ids with the same deadline go in one call.
    let mut i = 0;
    while i < req.modify_deadline_ack_ids.len() {
        let seconds = req.modify_deadline_seconds[i];
        let mut j = i + 1;
        while j < req.modify_deadline_ack_ids.len() && req.modify_deadline_seconds[j] == seconds {
            j += 1;
        }
        pubsub.modify_ack_deadline(name, &req.modify_deadline_ack_ids[i..j], seconds).await?;
        i = j;
    }
    Ok(())
}

#[tonic::async_trait]
impl iam::iam_policy_server::IamPolicy for PubsubGrpc {
    async fn set_iam_policy(&self, request: Request<iam::SetIamPolicyRequest>) -> Result<iam::Policy> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        let resource = IamResource::parse(&req.resource).map_err(status)?;
        self.check(&caller, resource.set_policy()).await?;
        let policy = req.policy.ok_or_else(|| status(Error::invalid("policy", "The policy is missing.")))?;
        let policy = convert::policy_from_wire(policy).map_err(status)?;
        let stored = self.pubsub.set_iam_policy(&req.resource, policy).await.map_err(status)?;
        Ok(Response::new(convert::policy_to_wire(&stored)))
    }

    async fn get_iam_policy(&self, request: Request<iam::GetIamPolicyRequest>) -> Result<iam::Policy> {
        let caller = self.authenticate(&request)?;
        let resource = IamResource::parse(&request.into_inner().resource).map_err(status)?;
        self.check(&caller, resource.get_policy()).await?;
        let policy = self.pubsub.get_iam_policy(resource.as_str()).await.map_err(status)?;
        Ok(Response::new(convert::policy_to_wire(&policy)))
    }

    async fn test_iam_permissions(
        &self,
        request: Request<iam::TestIamPermissionsRequest>,
    ) -> Result<iam::TestIamPermissionsResponse> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        let resource = IamResource::parse(&req.resource).map_err(status)?;
        let permissions =
            self.guard(&caller).test_iam_permissions(&resource, &req.permissions).await.map_err(status)?;
        Ok(Response::new(iam::TestIamPermissionsResponse { permissions }))
    }
}

/// The `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("4999m"), Some(Duration::from_millis(4999)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "S", "5", "5x", "123456789S", "-1S", "1.5S", "é"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}
