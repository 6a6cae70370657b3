//! One node serves each Pub/Sub subscription; the others forward to it.
//!
//! Leases, nacks and redeliveries live in the memory of the node that loaded a subscription. If
//! every node served every subscription, subscribers splitting one subscription's load across
//! nodes would each get every message. So each subscription has an owner: of the live nodes
//! (heard from within [`crate::NODE_TIMEOUT`]), the one ranking highest for the subscription's
//! name (rendezvous hashing: SHA-256 of node id and name). Every node computes the same owner
//! from the same membership, and when a node joins or leaves only the subscriptions it wins or
//! held move. While two nodes disagree (a membership change in flight), both may serve a
//! subscription for a moment: duplicates, never a lost acknowledgement, which Pub/Sub's
//! at-least-once delivery allows.
//!
//! Forwarded calls (Pull, Acknowledge, ModifyAckDeadline, and the pulls of a StreamingPull
//! stream opened elsewhere) are NATS requests on `{prefix}_subs.{owner}`, a subject only the
//! owner listens on, so a call to a node that is gone fails at once with "no responders" and the
//! client retries, by then against the next owner.

use crate::Cluster;
use async_nats::Subject;
use base64::Engine;
use bytes::Bytes;
use ferrocore_core::topics::StoredMessage;
use ferrocore_core::{Code, Error, Result};
use ferrocore_model::Timestamp;
use ferrocore_model::pubsub::SubscriptionName;
use ferrocore_pubsub::{Delivery, Owners, PubSub};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait a forwarded pull may ask of the owner.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Added to a forwarded call's own wait before the caller gives up on the owner.
const SLACK: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
struct Call {
    /// `pull`, `ack` or `modack`.
    op: String,
    subscription: String,
    #[serde(default)]
    max: i32,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    ack_ids: Vec<String>,
    #[serde(default)]
    seconds: i32,
}

#[derive(Serialize, Deserialize, Default)]
struct Answer {
    /// 0 for success, else the gRPC code.
    code: i32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    deliveries: Vec<WireDelivery>,
}

#[derive(Serialize, Deserialize)]
struct WireDelivery {
    ack_id: String,
    offset: u64,
    time: i64,
    attributes: Vec<(String, String)>,
    /// Standard base64.
    data: String,
    #[serde(default)]
    delivery_attempt: Option<i32>,
}

impl From<&Delivery> for WireDelivery {
    fn from(d: &Delivery) -> Self {
        Self {
            ack_id: d.ack_id.clone(),
            offset: d.message.offset,
            time: d.message.time.nanos(),
            attributes: d.message.attributes.clone(),
            data: base64::engine::general_purpose::STANDARD.encode(&d.message.data),
            delivery_attempt: d.delivery_attempt,
        }
    }
}

impl WireDelivery {
    fn into_delivery(self) -> Option<Delivery> {
        let data = base64::engine::general_purpose::STANDARD.decode(&self.data).ok()?;
        Some(Delivery {
            ack_id: self.ack_id,
            message: Arc::new(StoredMessage {
                offset: self.offset,
                time: Timestamp(self.time),
                attributes: self.attributes,
                data: Bytes::from(data),
            }),
            delivery_attempt: self.delivery_attempt,
        })
    }
}

fn answer_of(r: Result<Vec<Delivery>>) -> Answer {
    match r {
        Ok(d) => Answer { deliveries: d.iter().map(WireDelivery::from).collect(), ..Default::default() },
        Err(e) => Answer { code: e.code as i32, message: e.message, field: e.field, deliveries: Vec::new() },
    }
}

fn owner_gone() -> Error {
    Error::new(Code::Unavailable, "The node serving this subscription is unavailable; retry.")
}

/// The subject `node` answers forwarded subscription calls on.
pub(crate) fn subject(prefix: &str, node: &str) -> String {
    format!("{prefix}_subs.{node}")
}

/// The owner of `subscription` among `nodes` (rendezvous hashing).
pub(crate) fn owner<'a>(nodes: impl IntoIterator<Item = &'a str>, subscription: &str) -> Option<&'a str> {
    nodes.into_iter().max_by_key(|node| {
        let mut h = Sha256::new();
        h.update(node.as_bytes());
        h.update([0]);
        h.update(subscription.as_bytes());
        let d = h.finalize();
        (u128::from_be_bytes(d[..16].try_into().unwrap_or([0; 16])), *node)
    })
}

impl Cluster {
    async fn forward(&self, node: &str, call: &Call, wait: Duration) -> Result<Vec<Delivery>> {
        let payload = serde_json::to_vec(call).map_err(|_| owner_gone())?;
        let request = async_nats::Request::new().payload(payload.into()).timeout(Some(wait + SLACK));
        let subject = Subject::from(subject(&self.inner.config.prefix, node));
        let reply = self.inner.client.send_request(subject, request).await.map_err(|e| {
            tracing::debug!(node, error = %e, "a forwarded subscription call failed");
            owner_gone()
        })?;
        let answer: Answer = serde_json::from_slice(&reply.payload).map_err(|_| owner_gone())?;
        if answer.code != 0 {
            let code = Code::ALL.into_iter().find(|c| *c as i32 == answer.code).unwrap_or(Code::Unknown);
            return Err(Error { code, message: answer.message, field: answer.field });
        }
        Ok(answer.deliveries.into_iter().filter_map(WireDelivery::into_delivery).collect())
    }

    /// Serves subscription calls forwarded to this node, each on its own task (pulls wait).
    pub(crate) async fn serve_subscriptions(self, mut calls: async_nats::Subscriber, pubsub: PubSub) {
        use futures_util::StreamExt;
        loop {
            let message = tokio::select! {
                m = calls.next() => m,
                () = self.stopped() => None,
            };
            let Some(message) = message else { return };
            let (this, pubsub) = (self.clone(), pubsub.clone());
            tokio::spawn(async move {
                let Some(reply) = message.reply else { return };
                let answer = match serde_json::from_slice::<Call>(&message.payload) {
                    Ok(call) => answer_of(this.serve(&pubsub, call).await),
                    Err(_) => answer_of(Err(Error::invalid("request", "malformed forwarded call"))),
                };
                let payload = serde_json::to_vec(&answer).unwrap_or_default();
                let _ = this.inner.client.publish(reply, payload.into()).await;
            });
        }
    }

    async fn serve(&self, pubsub: &PubSub, call: Call) -> Result<Vec<Delivery>> {
        let name = SubscriptionName::parse("subscription", &call.subscription)?;
        match call.op.as_str() {
            "pull" => pubsub.pull_here(&name, call.max, Duration::from_millis(call.wait_ms).min(MAX_WAIT)).await,
            "ack" => pubsub.acknowledge_here(&name, &call.ack_ids).await.map(|()| Vec::new()),
            "modack" => pubsub.modify_ack_deadline_here(&name, &call.ack_ids, call.seconds).await.map(|()| Vec::new()),
            _ => Err(Error::invalid("request", "unknown forwarded call")),
        }
    }
}

#[async_trait::async_trait]
impl Owners for Cluster {
    fn elsewhere(&self, name: &SubscriptionName) -> Option<String> {
        let nodes = self.nodes();
        let owner = owner(nodes.iter().map(|n| n.node_id.as_str()), name.as_str())?;
        (owner != self.me()).then(|| owner.to_owned())
    }

    async fn pull(&self, node: &str, name: &SubscriptionName, max: i32, wait: Duration) -> Result<Vec<Delivery>> {
        let wait = wait.min(MAX_WAIT);
        let call = Call {
            op: "pull".into(),
            subscription: name.as_str().to_owned(),
            max,
            wait_ms: wait.as_millis() as u64,
            ack_ids: Vec::new(),
            seconds: 0,
        };
        self.forward(node, &call, wait).await
    }

    async fn acknowledge(&self, node: &str, name: &SubscriptionName, ack_ids: &[String]) -> Result<()> {
        let call = Call {
            op: "ack".into(),
            subscription: name.as_str().to_owned(),
            max: 0,
            wait_ms: 0,
            ack_ids: ack_ids.to_vec(),
            seconds: 0,
        };
        self.forward(node, &call, Duration::ZERO).await.map(|_| ())
    }

    async fn modify_ack_deadline(
        &self,
        node: &str,
        name: &SubscriptionName,
        ack_ids: &[String],
        seconds: i32,
    ) -> Result<()> {
        let call = Call {
            op: "modack".into(),
            subscription: name.as_str().to_owned(),
            max: 0,
            wait_ms: 0,
            ack_ids: ack_ids.to_vec(),
            seconds,
        };
        self.forward(node, &call, Duration::ZERO).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_agrees_and_only_a_leaver_s_subscriptions_move() {
        let three = ["node-a", "node-b", "node-c"];
        let names: Vec<String> = (0..300).map(|i| format!("projects/p/subscriptions/s{i}")).collect();
        let mut per_node = std::collections::HashMap::new();
        for n in &names {
            let o = owner(three, n).unwrap();
            // The order nodes are listed in does not matter.
            assert_eq!(owner(["node-c", "node-a", "node-b"], n), Some(o));
            *per_node.entry(o).or_insert(0) += 1;
            // Without node-b, only node-b's subscriptions move.
            let two = owner(["node-a", "node-c"], n).unwrap();
            if o != "node-b" {
                assert_eq!(two, o);
            }
        }
        for node in three {
            assert!(per_node[node] > 60, "spread: {per_node:?}");
        }
        assert_eq!(owner(std::iter::empty::<&str>(), "x"), None);
    }

    #[test]
    fn deliveries_cross_the_wire_intact() {
        let d = Delivery {
            ack_id: "ack-1".into(),
            message: Arc::new(StoredMessage {
                offset: 7,
                time: Timestamp(1_700_000_000_123_456_789),
                attributes: vec![("deviceId".into(), "d".into())],
                data: Bytes::from_static(b"\x00\xffdata"),
            }),
            delivery_attempt: Some(2),
        };
        let back = WireDelivery::from(&d).into_delivery().unwrap();
        assert_eq!((back.ack_id, back.delivery_attempt, &*back.message), (d.ack_id, d.delivery_attempt, &*d.message));
        let e = answer_of(Err(Error::not_found("gone")));
        assert_eq!(e.code, Code::NotFound as i32);
    }
}
