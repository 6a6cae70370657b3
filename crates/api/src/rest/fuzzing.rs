//! A synchronous way into the REST request parsing, for the fuzz targets in `fuzz/` at the
//! repository root. Not part of the API: hidden from the docs and free to change.
//!
//! [`transcode`] takes one request as far as the dispatcher and the handlers take it before they
//! call a service or the Pub/Sub engine: it tells the API from the path's shape, parses a Cloud
//! IoT path into a [`Route`], checks the query, parses the body into the route's request message,
//! and converts that into the core's input where the handler would. The few lines of glue per
//! route follow `serve` and `pubsub::rest`; the parsers and checks they call are the real ones.
//!
//! One more check is made on the way: every body that parses is written back out with the same
//! JSON mapping and must parse again into the same message. A failure of that check is returned
//! as an INTERNAL error, which no input may produce.

use super::route::{self, Method, Route};
use super::{
    MAX_BODY_BYTES, Query, check_body_name, device_from_body, list_devices_request, parent_from_body, parse_body,
    topics,
};
use crate::convert;
use crate::pubsub::convert as ps_convert;
use crate::pubsub::rest as pubsub_rest;
use axum::body::Bytes;
use axum::http::uri::PathAndQuery;
use ferrocore_core::{Code, Error};
use ferrocore_proto::{iam, iot, pubsub as ps};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Parses `target` (a request target as an HTTP/1.1 request line carries it: `/v1/...?query`)
/// and `body` for `method` the way the `/v1/` dispatcher does, without calling any service.
/// `Ok` means the request would have reached the service; `Err` is the error the client would
/// have been sent. A target that `http` refuses to parse (hyper would answer 400 itself) and a
/// body over the limit are `Ok(())`: neither reaches this code in the server.
#[doc(hidden)]
pub fn transcode(method: Method, target: &str, body: &[u8]) -> Result<(), Error> {
    let Ok(target) = PathAndQuery::try_from(target) else { return Ok(()) };
    if body.len() > MAX_BODY_BYTES {
        return Ok(());
    }
    let body = Bytes::copy_from_slice(body);
    let q = Query::parse(target.query());
    let Some(path) = target.path().strip_prefix("/v1/") else {
        return Err(route::not_found(target.path()));
    };
    if topics::parse(path).is_some() {
        // Topic-log reads take no body, and their query is read by the async handler.
        return Ok(());
    }
    if let Some(collection) = super::iam_admin::parse(path) {
        // Identity management is the owner's alone; its bodies are read by the async handler.
        return collection.map(|_| ());
    }
    if pubsub_rest::is_pubsub_path(path) {
        return pubsub(method, path, &q, &body);
    }
    let method = match method {
        Method::Put => return Err(super::method_not_supported()),
        m => m,
    };
    let route = route::parse(method, path)?;
    if route.is_device_bridge() {
        // The device bridge reads its body only after the device's JWT has been verified.
        return Ok(());
    }
    match route {
        Route::CreateRegistry(parent) => {
            q.check(&[])?;
            let mut registry: iot::DeviceRegistry = message(&body)?;
            registry.name = format!("{parent}/registries/{}", registry.id);
            convert::registry_input(registry)?;
        }
        Route::GetRegistry(_) | Route::DeleteRegistry(_) | Route::DeleteDevice(_) => q.check(&[])?,
        Route::ListRegistries(_) => {
            q.check(&["pageSize", "pageToken"])?;
            q.int32("pageSize")?;
        }
        Route::PatchRegistry(name) => {
            q.check(&["updateMask"])?;
            let mut registry: iot::DeviceRegistry = message(&body)?;
            check_body_name("device_registry.name", &registry.name, &name.to_string())?;
            registry.name = name.to_string();
            q.mask("updateMask");
            convert::registry_input(registry)?;
        }
        Route::BindDeviceToGateway(parent) => {
            q.check(&[])?;
            let req: iot::BindDeviceToGatewayRequest = message(&body)?;
            parent_from_body(&req.parent, &parent)?;
        }
        Route::UnbindDeviceFromGateway(parent) => {
            q.check(&[])?;
            let req: iot::UnbindDeviceFromGatewayRequest = message(&body)?;
            parent_from_body(&req.parent, &parent)?;
        }
        Route::GetIamPolicy(resource) => {
            q.check(&[])?;
            let req: iam::GetIamPolicyRequest = message(&body)?;
            check_body_name("resource", &req.resource, &resource.to_string())?;
        }
        Route::SetIamPolicy(resource) => {
            q.check(&[])?;
            let req: iam::SetIamPolicyRequest = message(&body)?;
            check_body_name("resource", &req.resource, &resource.to_string())?;
            if let Some(policy) = req.policy {
                ps_convert::policy_from_wire(policy)?;
            }
        }
        Route::TestIamPermissions(resource) => {
            q.check(&[])?;
            let req: iam::TestIamPermissionsRequest = message(&body)?;
            check_body_name("resource", &req.resource, &resource.to_string())?;
        }
        Route::CreateDevice(_) => {
            q.check(&[])?;
            convert::device_input(message(&body)?)?;
        }
        Route::GetDevice(_) => {
            q.check(&["fieldMask"])?;
            q.mask("fieldMask");
        }
        Route::ListDevices(parent) => {
            list_devices_request(&parent, &q)?;
        }
        Route::PatchDevice(name) => {
            q.check(&["updateMask"])?;
            let mut device: iot::Device = message(&body)?;
            device.name = device_from_body(&device.name, &name)?;
            q.mask("updateMask");
            convert::device_input(device)?;
        }
        Route::ModifyConfig(name) => {
            q.check(&[])?;
            let req: iot::ModifyCloudToDeviceConfigRequest = message(&body)?;
            device_from_body(&req.name, &name)?;
        }
        Route::SendCommand(name) => {
            q.check(&[])?;
            let req: iot::SendCommandToDeviceRequest = message(&body)?;
            device_from_body(&req.name, &name)?;
        }
        Route::ListConfigVersions(_) => {
            q.check(&["numVersions"])?;
            q.int32("numVersions")?;
        }
        Route::ListStates(_) => {
            q.check(&["numStates"])?;
            q.int32("numStates")?;
        }
        Route::PublishEvent(_) | Route::SetState(_) | Route::GetConfig(_) => {}
    }
    Ok(())
}

/// The Pub/Sub paths: names, verbs and bodies as `pubsub::rest` reads them.
fn pubsub(method: Method, path: &str, q: &Query, body: &Bytes) -> Result<(), Error> {
    let (bare, verb) = route::split_verb(path);
    let segs = bare.split('/').map(route::decode).collect::<Result<Vec<_>, _>>()?;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let name = segs.join("/");
    use Method::*;
    match (s.as_slice(), method, verb) {
        (["projects", _, "snapshots", ..], _, _) => Err(Error::new(Code::Unimplemented, "snapshots")),
        (["projects", p, "topics" | "subscriptions"], Get, None) => {
            q.check(&["pageSize", "pageToken"])?;
            q.int32("pageSize")?;
            ps_convert::project("project", &format!("projects/{p}"))?;
            Ok(())
        }
        (["projects", _, kind @ ("topics" | "subscriptions"), _], _, Some(v))
            if v.ends_with("IamPolicy") || v == "testIamPermissions" =>
        {
            if *kind == "topics" {
                ps_convert::topic_name("resource", &name)?;
            } else {
                ps_convert::subscription_name("resource", &name)?;
            }
            match (method, v) {
                (Get, "getIamPolicy") => {
                    q.check(&["options.requestedPolicyVersion"])?;
                    q.int32("options.requestedPolicyVersion")?;
                }
                (Post, "getIamPolicy") => {
                    let req: iam::GetIamPolicyRequest = message(body)?;
                    check_body_name("resource", &req.resource, &name)?;
                }
                (Post, "setIamPolicy") => {
                    let req: iam::SetIamPolicyRequest = message(body)?;
                    check_body_name("resource", &req.resource, &name)?;
                    if let Some(policy) = req.policy {
                        ps_convert::policy_from_wire(policy)?;
                    }
                }
                (Post, "testIamPermissions") => {
                    let req: iam::TestIamPermissionsRequest = message(body)?;
                    check_body_name("resource", &req.resource, &name)?;
                }
                _ => return Err(super::method_not_supported()),
            }
            Ok(())
        }
        (["projects", _, "topics", _], _, verb) => {
            q.check(&[])?;
            match (method, verb) {
                (Put, None) => {
                    let mut wire: ps::Topic = message(body)?;
                    check_body_name("name", &wire.name, &name)?;
                    wire.name = name;
                    ps_convert::topic_from_wire(wire)?;
                }
                (Patch, None) => {
                    let req: ps::UpdateTopicRequest = message(body)?;
                    ps_convert::topic_name("topic.name", &name)?;
                    if let Some(update) = req.topic {
                        check_body_name("topic.name", &update.name, &name)?;
                    }
                }
                (Get | Delete, None) => {
                    ps_convert::topic_name("topic", &name)?;
                }
                (Post, Some("publish")) => {
                    ps_convert::topic_name("topic", &name)?;
                    let req: ps::PublishRequest = message(body)?;
                    check_body_name("topic", &req.topic, &name)?;
                    for m in req.messages {
                        ps_convert::outgoing(m);
                    }
                }
                _ => return Err(super::method_not_supported()),
            }
            Ok(())
        }
        (["projects", _, "subscriptions", _], _, verb) => {
            q.check(&[])?;
            match (method, verb) {
                (Put, None) => {
                    let mut wire: ps::Subscription = message(body)?;
                    check_body_name("name", &wire.name, &name)?;
                    wire.name = name;
                    ps_convert::subscription_from_wire(wire)?;
                }
                (Patch, None) => {
                    let req: ps::UpdateSubscriptionRequest = message(body)?;
                    ps_convert::subscription_name("subscription.name", &name)?;
                    if let Some(update) = req.subscription {
                        check_body_name("subscription.name", &update.name, &name)?;
                    }
                }
                (Get | Delete, None) => {
                    ps_convert::subscription_name("subscription", &name)?;
                }
                (Post, Some(v)) => {
                    ps_convert::subscription_name("subscription", &name)?;
                    let named = match v {
                        "pull" => message::<ps::PullRequest>(body)?.subscription,
                        "acknowledge" => message::<ps::AcknowledgeRequest>(body)?.subscription,
                        "modifyAckDeadline" => message::<ps::ModifyAckDeadlineRequest>(body)?.subscription,
                        "seek" => {
                            let req: ps::SeekRequest = message(body)?;
                            if let Some(ps::seek_request::Target::Time(t)) = req.target {
                                ps_convert::seek_time(Some(t))?;
                            }
                            req.subscription
                        }
                        "modifyPushConfig" => message::<ps::ModifyPushConfigRequest>(body)?.subscription,
                        "detach" => message::<ps::DetachSubscriptionRequest>(body)?.subscription,
                        _ => return Err(super::method_not_supported()),
                    };
                    check_body_name("subscription", &named, &name)?;
                }
                _ => return Err(super::method_not_supported()),
            }
            Ok(())
        }
        _ => Err(route::not_found(path)),
    }
}

/// [`parse_body`], then the round trip: written out and parsed again, the message is unchanged.
fn message<T>(body: &Bytes) -> Result<T, Error>
where
    T: DeserializeOwned + Serialize + Default + PartialEq + Debug,
{
    let value: T = parse_body(body)?;
    let internal = |what: String| Error::new(Code::Internal, what);
    let json = serde_json::to_vec(&value).map_err(|e| internal(format!("a parsed body does not serialize: {e}")))?;
    let again: T = parse_body(&Bytes::from(json.clone())).map_err(|e| {
        internal(format!("a serialized body does not parse again: {} ({})", e.message, String::from_utf8_lossy(&json)))
    })?;
    if again != value {
        return Err(internal(format!("a body changed on its round trip: {value:?} became {again:?}")));
    }
    Ok(value)
}
