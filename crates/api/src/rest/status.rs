//! Ferrocore's own read-only views of a running server, for the web console and for scripts:
//!
//! * `GET /v1/status` (owner): devices connected to this node, open MQTT connections by listener,
//!   and the device messages counted since start (a client derives rates from two readings).
//! * `GET /v1/cluster` (owner): the nodes of the cluster this server belongs to (`--cluster`),
//!   FAILED_PRECONDITION on a server that runs alone.
//! * `GET /v1/projects/P/locations/L/registries/R/devices/D/connection` (`cloudiot.devices.get`):
//!   whether the device holds a connection to this node now, directly or through a gateway.
//! * `POST /v1/projects/P:testIamPermissions` with `{"permissions": [...]}`: the subset of the
//!   asked permissions the caller holds on the project, as Resource Manager answers it, so a
//!   client can hide what a token may not do.

use super::{json_response, parse_body, route};
use crate::authz::{self, Access, Call};
use axum::response::Response;
use ferrocore_core::{Core, Error};
use ferrocore_iam::{Caller, Resource};
use ferrocore_metrics::{Inbound, Listener, Outbound};
use ferrocore_model::{DeviceName, ProjectId};
use serde::{Deserialize, Serialize};

/// A parsed status path.
pub(crate) enum StatusRoute {
    Status,
    Cluster,
    Connection(DeviceName),
    ProjectPermissions(ProjectId),
}

/// Recognises this module's paths (everything after `/v1/`); None for any other path.
pub(crate) fn parse(path: &str) -> Option<Result<StatusRoute, Error>> {
    match path {
        "status" => return Some(Ok(StatusRoute::Status)),
        "cluster" => return Some(Ok(StatusRoute::Cluster)),
        _ => {}
    }
    if let Some(project) = path.strip_prefix("projects/").and_then(|p| p.strip_suffix(":testIamPermissions"))
        && !project.contains('/')
    {
        return Some(
            route::decode(project)
                .and_then(|p| ProjectId::parse_field("resource", &p).map_err(Error::from))
                .map(StatusRoute::ProjectPermissions),
        );
    }
    let segs: Vec<&str> = path.split('/').collect();
    if segs.len() == 9 && segs[8] == "connection" && segs[0] == "projects" && segs[6] == "devices" {
        let decoded = match segs[..8].iter().map(|s| route::decode(s)).collect::<Result<Vec<_>, _>>() {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        return Some(
            DeviceName::parse_field("name", &decoded.join("/")).map(StatusRoute::Connection).map_err(Error::from),
        );
    }
    None
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson {
    version: &'static str,
    connected_devices: String,
    mqtt_connections: MqttConnections,
    messages: Messages,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MqttConnections {
    mqtt: String,
    mqtts: String,
}

/// Counters since the server started; int64 as strings, as Google's JSON writes them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Messages {
    telemetry_received: String,
    state_received: String,
    configs_sent: String,
    commands_sent: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionJson {
    name: String,
    connected: bool,
    /// The numeric id of the gateway the device is attached through, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_num_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PermissionsRequest {
    #[serde(default)]
    permissions: Vec<String>,
}

#[derive(Serialize)]
struct PermissionsJson {
    permissions: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeJson {
    node_id: String,
    connections: String,
    last_heartbeat_time: String,
    http_address: String,
    mqtt_address: String,
}

pub(crate) async fn serve(
    core: &Core,
    access: &Access,
    cluster: Option<&ferrocore_cluster::Cluster>,
    caller: &Caller,
    route: StatusRoute,
    body: &axum::body::Bytes,
) -> Result<Response, Error> {
    match route {
        StatusRoute::Status => {
            authz::owner_only(caller, "Reading the server's status")?;
            let m = core.metrics();
            Ok(json_response(&StatusJson {
                version: env!("CARGO_PKG_VERSION"),
                connected_devices: core.presence().len().to_string(),
                mqtt_connections: MqttConnections {
                    mqtt: m.mqtt.open_connections(Listener::Mqtt).max(0).to_string(),
                    mqtts: m.mqtt.open_connections(Listener::Mqtts).max(0).to_string(),
                },
                messages: Messages {
                    telemetry_received: m.devices.received_total(Inbound::Telemetry).to_string(),
                    state_received: m.devices.received_total(Inbound::State).to_string(),
                    configs_sent: m.devices.sent_total(Outbound::Config).to_string(),
                    commands_sent: m.devices.sent_total(Outbound::Command).to_string(),
                },
            }))
        }
        StatusRoute::Cluster => {
            authz::owner_only(caller, "Reading the cluster's nodes")?;
            let Some(cluster) = cluster else {
                return Err(Error::failed_precondition("This server runs alone: it was not started with --cluster."));
            };
            let nodes: Vec<NodeJson> = cluster
                .nodes()
                .into_iter()
                .map(|n| NodeJson {
                    node_id: n.node_id,
                    connections: n.connections.to_string(),
                    last_heartbeat_time: n.last_heartbeat.to_string(),
                    http_address: n.http_address,
                    mqtt_address: n.mqtt_address,
                })
                .collect();
            Ok(json_response(&serde_json::json!({ "nodes": nodes })))
        }
        StatusRoute::Connection(name) => {
            access.check(caller, Call::GetDevice(&name)).await?;
            let device = core.get_device(&name).await?;
            let presence = core.presence();
            Ok(json_response(&ConnectionJson {
                name: device.name().to_string(),
                connected: presence.is_connected(device.num_id),
                gateway_num_id: presence.attached_via(device.num_id).map(|g| g.0.to_string()),
            }))
        }
        StatusRoute::ProjectPermissions(project) => {
            let req: PermissionsRequest = parse_body(body)?;
            let held = access.iam().held(caller, Resource::Project(project.as_str()), &req.permissions).await?;
            Ok(json_response(&PermissionsJson { permissions: held }))
        }
    }
}
