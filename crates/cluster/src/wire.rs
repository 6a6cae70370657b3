//! The JSON documents nodes exchange. Each names its sender, so a node can ignore its own.

use crate::NodeInfo;
use ferrocore_core::peers::LocalCommand;
use ferrocore_core::presence::Reason;
use ferrocore_model::{NumId, Timestamp};
use serde::{Deserialize, Serialize};

/// `connected`, `kick`, `config`, `registry` and `iam`: what happened, and to what.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Announcement {
    pub node: String,
    #[serde(default)]
    pub device: u64,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub registry: String,
    /// `unbound`: the gateway the device was unbound from.
    #[serde(default)]
    pub gateway: u64,
    /// `connected`: when the connection began, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub since_ms: u64,
}

impl Announcement {
    pub fn new(node: &str) -> Self {
        Self { node: node.to_owned(), ..Default::default() }
    }

    pub fn device(node: &str, device: NumId, reason: &str) -> Self {
        Self { node: node.to_owned(), device: device.0, reason: reason.to_owned(), ..Default::default() }
    }
}

/// `nodes`: a node's heartbeat.
#[derive(Serialize, Deserialize)]
pub(crate) struct NodeBeat {
    pub node: String,
    pub connections: u64,
    pub time: i64,
    pub http: String,
    pub mqtt: String,
}

impl From<&NodeInfo> for NodeBeat {
    fn from(i: &NodeInfo) -> Self {
        Self {
            node: i.node_id.clone(),
            connections: i.connections,
            time: i.last_heartbeat.unix_seconds(),
            http: i.http_address.clone(),
            mqtt: i.mqtt_address.clone(),
        }
    }
}

impl NodeBeat {
    pub fn into_info(self) -> NodeInfo {
        NodeInfo {
            node_id: self.node,
            connections: self.connections,
            last_heartbeat: Timestamp::from_unix_seconds(self.time),
            http_address: self.http,
            mqtt_address: self.mqtt,
        }
    }
}

/// `command`: a command for whichever node holds the device, answered on the reply subject.
#[derive(Serialize, Deserialize)]
pub(crate) struct CommandOffer {
    pub node: String,
    pub device: u64,
    pub subfolder: String,
    /// Standard base64.
    pub data: String,
    pub wait_ms: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CommandAnswer {
    pub node: String,
    /// `delivered`, `not_held` or `deadline`.
    pub outcome: String,
}

pub(crate) fn outcome(c: LocalCommand) -> &'static str {
    match c {
        LocalCommand::Delivered => "delivered",
        LocalCommand::NotHeld => "not_held",
        LocalCommand::Deadline => "deadline",
    }
}

pub(crate) fn reason_name(r: Reason) -> &'static str {
    match r {
        Reason::Replaced => "replaced",
        Reason::Blocked => "blocked",
        Reason::Deleted => "deleted",
        Reason::Unbound => "unbound",
        Reason::CredentialsChanged => "credentials",
        Reason::BridgeDisabled => "bridge",
    }
}

pub(crate) fn reason(name: &str) -> Reason {
    match name {
        "blocked" => Reason::Blocked,
        "deleted" => Reason::Deleted,
        "unbound" => Reason::Unbound,
        "credentials" => Reason::CredentialsChanged,
        "bridge" => Reason::BridgeDisabled,
        _ => Reason::Replaced,
    }
}

/// `pubsub`: a Pub/Sub topic or subscription changed; the others apply it to their memory.
#[derive(Serialize, Deserialize)]
pub(crate) struct PubsubChange {
    pub node: String,
    /// `topic-deleted`, `subscription-updated`, `subscription-deleted` or `seeked`.
    pub change: String,
    pub name: String,
    #[serde(default)]
    pub offset: u64,
}

impl PubsubChange {
    pub fn new(node: &str, change: &ferrocore_pubsub::Change) -> Self {
        use ferrocore_pubsub::Change as C;
        let (kind, name, offset) = match change {
            C::TopicDeleted(t) => ("topic-deleted", t.as_str(), 0),
            C::SubscriptionUpdated(s) => ("subscription-updated", s.as_str(), 0),
            C::SubscriptionDeleted(s) => ("subscription-deleted", s.as_str(), 0),
            C::Seeked(s, o) => ("seeked", s.as_str(), *o),
        };
        Self { node: node.to_owned(), change: kind.to_owned(), name: name.to_owned(), offset }
    }

    /// None for a change this version does not know or a malformed name.
    pub fn into_change(self) -> Option<ferrocore_pubsub::Change> {
        use ferrocore_model::pubsub::{SubscriptionName, TopicName};
        use ferrocore_pubsub::Change as C;
        let sub = || SubscriptionName::parse("subscription", &self.name).ok();
        Some(match self.change.as_str() {
            "topic-deleted" => C::TopicDeleted(TopicName::parse("topic", &self.name).ok()?),
            "subscription-updated" => C::SubscriptionUpdated(sub()?),
            "subscription-deleted" => C::SubscriptionDeleted(sub()?),
            "seeked" => C::Seeked(sub()?, self.offset),
            _ => return None,
        })
    }
}
