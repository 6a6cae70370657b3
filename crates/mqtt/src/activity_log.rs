//! What the MQTT bridge writes to the device activity logs (`ferrocore_core::device_log`): the
//! events of IoT Core's `device_activity` log, built here so the session only says what happened.
//!
//! Every entry carries `protocol: "MQTT"` and the connection's `clientIp`; messages a gateway
//! sends for a device it attached are logged on that device, with `gateway.id`.

use crate::gateway::{ErrorType, MessageInfo};
use ferrocore_core::bridge::{AuthenticatedDevice, Delivery, Transport};
use ferrocore_core::device_log::{DeviceEvent, EventType, LogSeverity};
use ferrocore_core::{Code, Core};
use std::net::SocketAddr;

/// An event of this connection.
pub fn event(kind: EventType, peer: SocketAddr) -> DeviceEvent {
    DeviceEvent::new(kind, Transport::Mqtt, Some(peer.ip()))
}

/// A device message (`EVENT` telemetry or `STATE`) submitted to the core: failures are logged at
/// once; an accepted one is logged when its delivery completes (DEBUG on success, ERROR if it
/// fails on the way). The delivery is wrapped only when the device logs at a level that records
/// something, so a device at NONE costs one level check.
pub fn publish(
    core: &Core,
    dev: &AuthenticatedDevice,
    peer: SocketAddr,
    topic: &str,
    kind: &'static str,
    gateway: Option<&str>,
    submitted: ferrocore_core::Result<Delivery>,
) -> ferrocore_core::Result<Delivery> {
    let build =
        || event(EventType::Publish, peer).topic(topic).gateway(gateway).field("publishFromDeviceTopicType", kind);
    match submitted {
        Err(e) => {
            let failed = Err(e);
            core.log_outcome(dev, EventType::Publish, &failed, build);
            failed
        }
        Ok(delivery) if core.logs_at(dev, LogSeverity::Error) => {
            let (core, dev, event) = (core.clone(), dev.clone(), build());
            Ok(Box::pin(async move {
                let result = delivery.await;
                core.log_outcome(&dev, EventType::Publish, &result, || event);
                result
            }))
        }
        Ok(delivery) => Ok(delivery),
    }
}

/// The entry for an error reported on a gateway's errors topic, logged on the gateway.
pub fn gateway_error(
    kind: ErrorType,
    device: Option<&str>,
    why: &str,
    info: Option<MessageInfo<'_>>,
    peer: SocketAddr,
) -> DeviceEvent {
    let event_type = match (kind, info.map(|i| i.message_type)) {
        (ErrorType::AttachmentError, _) => EventType::AttachToGateway,
        (ErrorType::DetachmentDeviceError, _) => EventType::DetachFromGateway,
        (_, Some("SUBSCRIBE")) => EventType::Subscribe,
        _ => EventType::Publish,
    };
    let code = match kind {
        ErrorType::AttachmentError => Code::PermissionDenied,
        ErrorType::DeviceNotFound => Code::NotFound,
        ErrorType::InvalidMqttTopic | ErrorType::WrongMessageType | ErrorType::UnexpectedPacketId => {
            Code::InvalidArgument
        }
        ErrorType::DetachmentDeviceError => Code::Aborted,
        ErrorType::UnknownError => Code::Unavailable,
    };
    let mut e = event(event_type, peer).failed_with(code, why).field("gatewayErrorType", kind.as_str());
    if let Some(t) = info.and_then(|i| i.topic) {
        e = e.topic(t);
    }
    if let Some(d) = device {
        e = e.field("targetDeviceId", ferrocore_model::ids::printable(d));
    }
    e
}
