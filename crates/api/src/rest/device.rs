//! The HTTP device bridge (Cloud IoT's `cloudiotdevice` v1): `:publishEvent`, `:setState` and
//! `GET .../config`, each authenticated by the JWT in `Authorization: Bearer` of the device the
//! path names.
//!
//! Nothing is remembered between requests: every request carries and proves its token. With
//! `gatewayInfo.delegatedDeviceId` the path and JWT are a gateway's, acting for a device bound to
//! it; with `gatewayInfo.gatewayId` they are the device's, sent through that gateway. Either way
//! the gateway's auth method decides (see `ferrocore_core::gateways`), the device must be bound,
//! and the message is the device's.

use super::{Query, json_response, parse_body};
use crate::rest::route::Route;
use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use base64::Engine;
use ferrocore_core::bridge::{AuthFailure, AuthenticatedDevice, Transport};
use ferrocore_core::device_log::{DeviceEvent, EventType};
use ferrocore_core::gateways::GatewayRefusal;
use ferrocore_core::{Code, Core, Error};
use ferrocore_metrics::{Bridge, Inbound, Outbound};
use ferrocore_model::DeviceName;
use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};

/// bytes fields: standard or URL-safe base64, padded or not, as Google's JSON allows.
fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let s = String::deserialize(d)?;
    let trimmed = s.trim().trim_end_matches('=');
    let decoded =
        if trimmed.contains(['-', '_']) { URL_SAFE_NO_PAD.decode(trimmed) } else { STANDARD_NO_PAD.decode(trimmed) };
    decoded.map(Bytes::from).map_err(|_| D::Error::custom("Base64 decoding failed"))
}

/// `gatewayInfo`: a gateway in the request, one way or the other (a oneof: at most one is set).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct GatewayInfo {
    #[serde(alias = "gateway_id")]
    gateway_id: String,
    #[serde(alias = "delegated_device_id")]
    delegated_device_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct PublishEventRequest {
    name: String,
    #[serde(alias = "binary_data", deserialize_with = "base64_bytes")]
    binary_data: Bytes,
    #[serde(alias = "sub_folder")]
    sub_folder: String,
    #[serde(alias = "gateway_info")]
    gateway_info: Option<GatewayInfo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct StateBody {
    #[serde(alias = "binary_data", deserialize_with = "base64_bytes")]
    binary_data: Bytes,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct SetStateRequest {
    name: String,
    state: Option<StateBody>,
    #[serde(alias = "gateway_info")]
    gateway_info: Option<GatewayInfo>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigResponse {
    version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    binary_data: String,
}

/// Who the request speaks for, from `gatewayInfo`.
enum Via {
    /// The device of the path, on its own.
    Direct,
    /// The path and JWT are a gateway's, acting for this device.
    Delegated(String),
    /// The path and JWT are the device's, sent through this gateway.
    Gateway(String),
}

impl Via {
    /// The gateway the request goes through, for the activity log.
    fn gateway(&self, path: &DeviceName) -> Option<String> {
        match self {
            Via::Direct => None,
            Via::Delegated(_) => Some(path.device.to_string()),
            Via::Gateway(g) => Some(g.clone()),
        }
    }

    fn of(info: Option<GatewayInfo>) -> Result<Self, Error> {
        let Some(g) = info else { return Ok(Via::Direct) };
        match (g.gateway_id.is_empty(), g.delegated_device_id.is_empty()) {
            (true, true) => Ok(Via::Direct),
            (false, true) => Ok(Via::Gateway(g.gateway_id)),
            (true, false) => Ok(Via::Delegated(g.delegated_device_id)),
            (false, false) => Err(Error::invalid(
                "gateway_info",
                "Set gatewayInfo.gatewayId or gatewayInfo.delegatedDeviceId, not both.",
            )),
        }
    }
}

fn refusal(r: GatewayRefusal) -> Error {
    match r {
        GatewayRefusal::Refused(why) => Error::new(Code::PermissionDenied, why),
        GatewayRefusal::Unavailable => Error::new(Code::Unavailable, "Authentication is unavailable; retry later."),
    }
}

/// Authenticates the caller and returns the device the request is for.
async fn acting_device(
    core: &Core,
    name: &DeviceName,
    headers: &HeaderMap,
    via: Via,
) -> Result<AuthenticatedDevice, Error> {
    let caller = authenticate(core, name, headers).await?;
    match via {
        Via::Direct => Ok(caller),
        Via::Delegated(device) => {
            if !caller.is_gateway {
                return Err(Error::new(
                    Code::PermissionDenied,
                    format!("The device '{}' is not a gateway, so it cannot act for another device.", caller.id),
                ));
            }
            core.act_for_device(&caller, &device).await.map_err(refusal)
        }
        Via::Gateway(gateway) => {
            core.relay_through(&caller, &gateway).await.map_err(refusal)?;
            Ok(caller)
        }
    }
}

async fn authenticate(core: &Core, name: &DeviceName, headers: &HeaderMap) -> Result<AuthenticatedDevice, Error> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).map(|_| v[7..].trim()))
        .ok_or_else(|| Error::new(Code::Unauthenticated, "Send the device's JWT as 'Authorization: Bearer <JWT>'."))?;
    core.authenticate_device(name, token, Transport::Http).await.map_err(|e| match e {
        // The reason goes to the log only: a caller probing device names learns nothing.
        AuthFailure::Malformed(why) | AuthFailure::NotAuthorized(why) => {
            tracing::debug!(device = %name, %why, "HTTP device request refused");
            Error::new(Code::Unauthenticated, "The device's JWT was refused.")
        }
        AuthFailure::Unavailable => Error::new(Code::Unavailable, "Authentication is unavailable; retry later."),
    })
}

fn check_name(given: &str, path: &DeviceName) -> Result<(), Error> {
    if given.is_empty() || given == path.to_string() {
        Ok(())
    } else {
        Err(Error::invalid("name", "The device name in the body does not match the one in the URL."))
    }
}

pub(crate) async fn serve(
    core: &Core,
    route: Route,
    headers: &HeaderMap,
    client_ip: Option<std::net::IpAddr>,
    q: &Query,
    body: &Bytes,
) -> Result<Response, Error> {
    let empty = || json_response(&serde_json::json!({}));
    let event =
        |kind, gateway: Option<String>| DeviceEvent::new(kind, Transport::Http, client_ip).gateway(gateway.as_deref());
    match route {
        Route::PublishEvent(name) => {
            q.check(&[])?;
            let req: PublishEventRequest = parse_body(body)?;
            check_name(&req.name, &name)?;
            let via = Via::of(req.gateway_info)?;
            ferrocore_model::limits::check_subfolder("sub_folder", &req.sub_folder)?;
            let gateway = via.gateway(&name);
            let device = acting_device(core, &name, headers, via).await?;
            core.metrics().devices.received(Bridge::Http, Inbound::Telemetry, req.binary_data.len());
            let published = core.publish_event(&device, &req.sub_folder, req.binary_data).await;
            core.log_outcome(&device, EventType::Publish, &published, || {
                let logged = event(EventType::Publish, gateway).field("publishFromDeviceTopicType", "EVENT");
                match req.sub_folder.as_str() {
                    "" => logged,
                    folder => logged.field("publishFromDeviceTopicFolder", folder),
                }
            });
            published?;
            Ok(empty())
        }
        Route::SetState(name) => {
            q.check(&[])?;
            let req: SetStateRequest = parse_body(body)?;
            check_name(&req.name, &name)?;
            let via = Via::of(req.gateway_info)?;
            let state = req.state.ok_or_else(|| Error::invalid("state", "The request needs a state."))?;
            let gateway = via.gateway(&name);
            let device = acting_device(core, &name, headers, via).await?;
            core.metrics().devices.received(Bridge::Http, Inbound::State, state.binary_data.len());
            let reported = core.report_state(&device, state.binary_data).await;
            core.log_outcome(&device, EventType::Publish, &reported, || {
                event(EventType::Publish, gateway).field("publishFromDeviceTopicType", "STATE")
            });
            reported?;
            Ok(empty())
        }
        Route::GetConfig(name) => {
            q.check(&["localVersion", "gatewayInfo.gatewayId", "gatewayInfo.delegatedDeviceId"])?;
            let via = Via::of(Some(GatewayInfo {
                gateway_id: q.one("gatewayInfo.gatewayId").unwrap_or_default().to_owned(),
                delegated_device_id: q.one("gatewayInfo.delegatedDeviceId").unwrap_or_default().to_owned(),
            }))?;
            let local = match q.one("localVersion") {
                None | Some("") => 0,
                Some(v) => v
                    .parse::<i64>()
                    .map_err(|_| Error::invalid("local_version", "The local version must be an integer."))?,
            };
            let gateway = via.gateway(&name);
            let device = acting_device(core, &name, headers, via).await?;
            let config = core.device_config(&device).await.and_then(|config| {
                if local > config.version {
                    return Err(Error::new(
                        Code::OutOfRange,
                        format!(
                            "The local version {local} is newer than the latest config version {}.",
                            config.version
                        ),
                    ));
                }
                Ok(config)
            });
            core.log_outcome(&device, EventType::Config, &config, || {
                let logged = event(EventType::Config, gateway).field("delivery", "SENT");
                match &config {
                    Ok(c) => logged.field("configVersion", c.version.to_string()),
                    Err(_) => logged,
                }
            });
            let config = config?;
            core.config_sent(&device);
            core.metrics().devices.sent(Bridge::Http, Outbound::Config, config.binary_data.len());
            Ok(json_response(&ConfigResponse {
                version: config.version.to_string(),
                binary_data: base64::engine::general_purpose::STANDARD.encode(&config.binary_data),
            }))
        }
        _ => Err(Error::not_found("Not a device bridge route.")),
    }
}
