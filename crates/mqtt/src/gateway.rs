//! What a gateway's connection keeps beyond a device's: the devices it attached, each with its
//! own subscriptions, and the errors topic, where IoT Core reported what went wrong for a device
//! instead of closing the gateway's connection.
//!
//! Errors are JSON, as IoT Core sent them:
//! `{"error_type": "GATEWAY_DEVICE_NOT_FOUND", "device_id": "d", "description": "...",
//! "mqtt_message_info": {"message_type": "PUBLISH", "topic": "/devices/d/state", "packet_id": 10}}`,
//! published at QoS 0 on `/devices/{gateway}/errors` when the gateway subscribed to it.

use crate::session::Subscriptions;
use bytes::Bytes;
use ferrocore_core::Core;
use ferrocore_core::bridge::AuthenticatedDevice;
use ferrocore_model::NumId;
use serde::Serialize;
use std::collections::HashMap;

/// The `error_type` values of the errors topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// An attach was refused (unknown or blocked device, not bound, bad token, limit reached...).
    AttachmentError,
    /// A message for a device that is not attached to this gateway.
    DeviceNotFound,
    /// A topic outside IoT Core's layout.
    InvalidMqttTopic,
    /// A PUBACK for a packet id the server is not waiting for.
    UnexpectedPacketId,
    /// A PUBLISH to a topic devices subscribe to, or a SUBSCRIBE to one they publish to.
    WrongMessageType,
    /// An attached device was detached: its message failed, or the server ended its attachment.
    DetachmentDeviceError,
    /// The server could not handle the request (storage unavailable).
    UnknownError,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::AttachmentError => "GATEWAY_ATTACHMENT_ERROR",
            ErrorType::DeviceNotFound => "GATEWAY_DEVICE_NOT_FOUND",
            ErrorType::InvalidMqttTopic => "GATEWAY_INVALID_MQTT_TOPIC",
            ErrorType::UnexpectedPacketId => "GATEWAY_UNEXPECTED_PACKET_ID",
            ErrorType::WrongMessageType => "GATEWAY_WRONG_MESSAGE_TYPE",
            ErrorType::DetachmentDeviceError => "GATEWAY_DETACHMENT_DEVICE_ERROR",
            ErrorType::UnknownError => "GATEWAY_UNKNOWN_ERROR",
        }
    }
}

/// The packet an error is about.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MessageInfo<'a> {
    pub message_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_id: Option<u16>,
}

#[derive(Serialize)]
struct Payload<'a> {
    error_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<&'a str>,
    description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mqtt_message_info: Option<MessageInfo<'a>>,
}

/// An error message for the errors topic.
pub fn error_payload(kind: ErrorType, device: Option<&str>, description: &str, info: Option<MessageInfo>) -> Bytes {
    let payload = Payload { error_type: kind.as_str(), device_id: device, description, mqtt_message_info: info };
    // Serializing strings and integers cannot fail.
    Bytes::from(serde_json::to_vec(&payload).unwrap_or_default())
}

/// An attach payload that is neither empty nor a JSON object with an optional string
/// `authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAttachPayload;

/// The device JWT of an attach payload: none for an empty payload, `{}` or an empty
/// `authorization`.
pub fn attach_token(payload: &[u8]) -> Result<Option<String>, BadAttachPayload> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(payload).map_err(|_| BadAttachPayload)?;
    match object.get("authorization") {
        None => Ok(None),
        Some(serde_json::Value::String(t)) => Ok(Some(t.clone()).filter(|t| !t.is_empty())),
        Some(_) => Err(BadAttachPayload),
    }
}

/// A device the gateway attached.
pub struct Delegate {
    pub device: AuthenticatedDevice,
    /// The attachment's presence id: orders for an older one are stale.
    pub presence_id: u64,
    pub subs: Subscriptions,
}

/// The gateway's attached devices, by numeric id (how the core names them) and by string id (how
/// topics do). Dropping it takes them all out of presence: the gateway's disconnect detaches them.
pub struct Gateway {
    core: Core,
    /// The gateway subscribed to its errors topic.
    pub errors: bool,
    pub errors_topic: String,
    delegates: HashMap<NumId, Delegate>,
    ids: HashMap<String, NumId>,
}

impl Gateway {
    pub fn new(core: Core, gateway_id: &str) -> Self {
        Self {
            core,
            errors: false,
            errors_topic: crate::topic::errors_topic(gateway_id),
            delegates: HashMap::new(),
            ids: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.delegates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.delegates.is_empty()
    }

    pub fn num_id(&self, device: &str) -> Option<NumId> {
        self.ids.get(device).copied()
    }

    pub fn get(&self, device: NumId) -> Option<&Delegate> {
        self.delegates.get(&device)
    }

    pub fn get_mut(&mut self, device: NumId) -> Option<&mut Delegate> {
        self.delegates.get_mut(&device)
    }

    /// The attached devices.
    pub fn devices(&self) -> impl Iterator<Item = &Delegate> {
        self.delegates.values()
    }

    pub fn by_id(&self, device: &str) -> Option<&Delegate> {
        self.num_id(device).and_then(|n| self.delegates.get(&n))
    }

    pub fn insert(&mut self, delegate: Delegate) {
        let num = delegate.device.num_id;
        self.ids.insert(delegate.device.id.to_string(), num);
        if let Some(old) = self.delegates.insert(num, delegate) {
            self.core.presence().detach(num, old.presence_id);
        }
    }

    /// Detaches a device: out of this gateway and out of presence (if presence still lists it).
    pub fn remove(&mut self, device: NumId) -> Option<Delegate> {
        let d = self.delegates.remove(&device)?;
        self.ids.remove(d.device.id.as_str());
        self.core.presence().detach(device, d.presence_id);
        Some(d)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for (num, d) in &self.delegates {
            self.core.presence().detach(*num, d.presence_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_payloads() {
        assert_eq!(attach_token(b""), Ok(None));
        assert_eq!(attach_token(b"{}"), Ok(None));
        assert_eq!(attach_token(br#"{"authorization" : ""}"#), Ok(None));
        assert_eq!(attach_token(br#"{"authorization":"a.b.c","x":1}"#), Ok(Some("a.b.c".into())));
        assert_eq!(attach_token(b"not json"), Err(BadAttachPayload));
        assert_eq!(attach_token(br#"{"authorization": 7}"#), Err(BadAttachPayload));
        assert_eq!(attach_token(b"[]"), Err(BadAttachPayload));
    }

    #[test]
    fn error_shape() {
        let info = MessageInfo { message_type: "PUBLISH", topic: Some("/devices/d/state"), packet_id: Some(10) };
        let p = error_payload(ErrorType::DeviceNotFound, Some("d"), "not attached", Some(info));
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error_type": "GATEWAY_DEVICE_NOT_FOUND", "device_id": "d", "description": "not attached",
                "mqtt_message_info": {"message_type": "PUBLISH", "topic": "/devices/d/state", "packet_id": 10}})
        );
        let p = error_payload(ErrorType::UnknownError, None, "later", None);
        assert_eq!(&p[..], br#"{"error_type":"GATEWAY_UNKNOWN_ERROR","description":"later"}"#);
    }
}
