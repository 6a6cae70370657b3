//! The Cloud IoT v1 REST API: Google's paths, JSON and errors over the core.
//!
//! One fallback handler serves `/v1/...`: it checks the admin token, parses the path into a
//! [`route::Route`], reads the query and body, calls the core, and renders the result with
//! [`json`] or the error with [`error`]. `GET /healthz` answers without a token.

pub mod error;
pub mod json;
pub mod route;

use crate::admin_auth::AdminToken;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method as HttpMethod, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use error::RestError;
use ferrocore_core::devices::{DeviceInput, GatewayListOption, ListDevicesRequest};
use ferrocore_core::registries::{RegistryFields, RegistryInput};
use ferrocore_core::{Code, Core, Error};
use ferrocore_model::mask::{DeviceField, DeviceReadMask};
use ferrocore_model::{self as model, DeviceName, GatewayType, RegistryName};
use route::{Method, Route};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest request body accepted: a device with three certificates and its full 256 KiB of
/// metadata, or a 256 KiB command in base64, fits with room to spare.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
struct App {
    core: Core,
    token: AdminToken,
    ready: Arc<AtomicBool>,
}

/// The REST router. `ready` turns `/healthz` to 200 once every listener of the server accepts.
pub fn router(core: Core, token: AdminToken, ready: Arc<AtomicBool>) -> Router {
    let app = App { core, token, ready };
    Router::new().route("/healthz", get(healthz)).fallback(dispatch).with_state(app)
}

async fn healthz(State(app): State<App>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

fn json_response<T: Serialize>(value: &T) -> Response {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    resp
}

async fn dispatch(State(app): State<App>, req: Request) -> Response {
    match handle(&app, req).await {
        Ok(resp) => resp,
        Err(e) => {
            if e.code == Code::Internal || e.code == Code::Unavailable {
                tracing::warn!(code = e.code.name(), "request failed");
            }
            RestError(e).into_response()
        }
    }
}

/// Query parameters, in order, with repeated keys kept.
struct Query(Vec<(String, String)>);

/// Google's system parameters, accepted on every method; the server answers JSON regardless.
const SYSTEM_PARAMS: &[&str] = &[
    "$alt",
    "alt",
    "$.xgafv",
    "access_token",
    "callback",
    "fields",
    "key",
    "oauth_token",
    "prettyPrint",
    "quotaUser",
    "uploadType",
    "upload_protocol",
    "$prettyPrint",
    "$fields",
];

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        Self(form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect())
    }

    /// Refuses parameters the method does not know; `allowed` lists camelCase names, and the
    /// snake_case spelling of each is accepted too.
    fn check(&self, allowed: &[&str]) -> Result<(), Error> {
        for (k, _) in &self.0 {
            let camel = snake_to_camel(k);
            if !SYSTEM_PARAMS.contains(&k.as_str()) && !allowed.contains(&camel.as_str()) {
                return Err(Error::invalid(
                    k.as_str(),
                    format!(
                        "Invalid JSON payload received. Unknown name \"{}\": Cannot bind query parameter.",
                        model::ids::printable(k)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.0.iter().filter(move |(k, _)| snake_to_camel(k) == name).map(|(_, v)| v.as_str())
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.all(name).last()
    }

    fn int(&self, name: &str) -> Result<i64, Error> {
        match self.one(name) {
            None | Some("") => Ok(0),
            Some(v) => v.parse().map_err(|_| {
                Error::invalid(
                    name,
                    format!("Invalid value '{}' for '{name}': expected an integer.", model::ids::printable(v)),
                )
            }),
        }
    }
}

fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return Error::invalid("body", format!("Invalid JSON payload received. {inner}."));
        }
        // serde_json appends the position; the field path says more to a client.
        let text = inner.to_string();
        let text = text.rsplit_once(" at line ").map_or(text.as_str(), |(t, _)| t);
        if let Some(rest) = text.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default();
            let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
            let at = if parent.is_empty() { String::new() } else { format!(" at '{parent}'") };
            return Error::invalid(
                path,
                format!("Invalid JSON payload received. Unknown name \"{name}\"{at}: Cannot find field."),
            );
        }
        Error::invalid(path.clone(), format!("Invalid JSON payload received. Invalid value at '{path}': {text}."))
    })?;
    Ok(value)
}

async fn handle(app: &App, req: Request) -> Result<Response, Error> {
    let (parts, body) = req.into_parts();
    let Some(path) = parts.uri.path().strip_prefix("/v1/") else {
        return Err(Error::not_found(format!(
            "The requested URL '{}' was not found on this server.",
            model::ids::printable(parts.uri.path())
        )));
    };
    if !app.token.accepts(parts.headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        return Err(Error::new(
            Code::Unauthenticated,
            "Request is missing or has an invalid admin token; send 'Authorization: Bearer TOKEN'.",
        ));
    }
    let override_method = parts.headers.get("x-http-method-override").and_then(|v| v.to_str().ok());
    let method = match (&parts.method, override_method) {
        (&HttpMethod::POST, Some(m)) if m.eq_ignore_ascii_case("PATCH") => Method::Patch,
        (&HttpMethod::POST, Some(m)) if m.eq_ignore_ascii_case("DELETE") => Method::Delete,
        (&HttpMethod::POST, Some(m)) if m.eq_ignore_ascii_case("GET") => Method::Get,
        (&HttpMethod::GET, _) => Method::Get,
        (&HttpMethod::POST, _) => Method::Post,
        (&HttpMethod::PATCH, _) => Method::Patch,
        (&HttpMethod::DELETE, _) => Method::Delete,
        _ => return Err(Error::not_found("The requested method is not supported on this URL.")),
    };
    let route = route::parse(method, path)?;
    let query = Query::parse(parts.uri.query());
    let body = axum::body::to_bytes(Body::new(body), MAX_BODY_BYTES).await.map_err(|_| {
        Error::invalid("body", format!("The request body is larger than the limit of {MAX_BODY_BYTES} bytes."))
    })?;
    serve(&app.core, route, &query, &body).await
}

async fn serve(core: &Core, route: Route, q: &Query, body: &Bytes) -> Result<Response, Error> {
    let empty = || json_response(&serde_json::json!({}));
    Ok(match route {
        Route::CreateRegistry(parent) => {
            q.check(&[])?;
            let input = registry_input(parse_body(body)?);
            json_response(&registry_json(&core.create_registry(&parent, input).await?))
        }
        Route::GetRegistry(name) => {
            q.check(&[])?;
            json_response(&registry_json(&core.get_registry(&name).await?))
        }
        Route::ListRegistries(parent) => {
            q.check(&["pageSize", "pageToken"])?;
            let page = core.list_registries(&parent, q.int("pageSize")?, q.one("pageToken").unwrap_or("")).await?;
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Out {
                #[serde(skip_serializing_if = "Vec::is_empty")]
                device_registries: Vec<json::DeviceRegistry>,
                #[serde(skip_serializing_if = "String::is_empty")]
                next_page_token: String,
            }
            json_response(&Out {
                device_registries: page.registries.iter().map(registry_json).collect(),
                next_page_token: page.next_page_token,
            })
        }
        Route::PatchRegistry(name) => {
            q.check(&["updateMask"])?;
            let mask = required_mask(q)?;
            let body: json::DeviceRegistry = parse_body(body)?;
            check_body_name("device_registry.name", &body.name, &name.to_string())?;
            let input = registry_input(body);
            json_response(&registry_json(&core.update_registry(&name, input, mask).await?))
        }
        Route::DeleteRegistry(name) => {
            q.check(&[])?;
            core.delete_registry(&name).await?;
            empty()
        }
        Route::BindDeviceToGateway(parent) => {
            q.check(&[])?;
            let req = binding_request(&parent, body)?;
            core.bind_device_to_gateway(&parent, &req.gateway_id, &req.device_id).await?;
            empty()
        }
        Route::UnbindDeviceFromGateway(parent) => {
            q.check(&[])?;
            let req = binding_request(&parent, body)?;
            core.unbind_device_from_gateway(&parent, &req.gateway_id, &req.device_id).await?;
            empty()
        }
        Route::CreateDevice(parent) => {
            q.check(&[])?;
            let input = device_input(parse_body(body)?)?;
            json_response(&device_json(&core.create_device(&parent, input).await?, DeviceReadMask::ALL))
        }
        Route::GetDevice(name) => {
            q.check(&["fieldMask"])?;
            let mask = DeviceReadMask::for_get(q.one("fieldMask"))?;
            json_response(&device_json(&core.get_device(&name).await?, mask))
        }
        Route::ListDevices(parent) => list_devices(core, &parent, q).await?,
        Route::PatchDevice(name) => {
            q.check(&["updateMask"])?;
            let mask = required_mask(q)?;
            let body: json::Device = parse_body(body)?;
            check_device_body_name(&body.name, &name)?;
            let input = device_input(body)?;
            json_response(&device_json(&core.update_device(&name, input, mask).await?, DeviceReadMask::ALL))
        }
        Route::DeleteDevice(name) => {
            q.check(&[])?;
            core.delete_device(&name).await?;
            empty()
        }
        Route::ModifyConfig(name) => {
            q.check(&[])?;
            let req: json::ModifyConfigRequest = parse_body(body)?;
            check_device_body_name(&req.name, &name)?;
            json_response(&config_json(&core.modify_config(&name, req.version_to_update, req.binary_data).await?))
        }
        Route::SendCommand(name) => {
            q.check(&[])?;
            let req: json::SendCommandRequest = parse_body(body)?;
            check_device_body_name(&req.name, &name)?;
            core.send_command(&name, req.binary_data, &req.subfolder).await?;
            empty()
        }
        Route::ListConfigVersions(name) => {
            q.check(&["numVersions"])?;
            let configs = core.list_config_versions(&name, q.int("numVersions")?).await?;
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Out {
                #[serde(skip_serializing_if = "Vec::is_empty")]
                device_configs: Vec<json::DeviceConfig>,
            }
            json_response(&Out { device_configs: configs.iter().map(config_json).collect() })
        }
        Route::ListStates(name) => {
            q.check(&["numStates"])?;
            let states = core.list_states(&name, q.int("numStates")?).await?;
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Out {
                #[serde(skip_serializing_if = "Vec::is_empty")]
                device_states: Vec<json::DeviceState>,
            }
            json_response(&Out { device_states: states.iter().map(state_json).collect() })
        }
    })
}

fn binding_request(parent: &RegistryName, body: &Bytes) -> Result<json::GatewayBindingRequest, Error> {
    let req: json::GatewayBindingRequest = parse_body(body)?;
    check_body_name("parent", &req.parent, &parent.to_string())?;
    Ok(req)
}

fn required_mask(q: &Query) -> Result<&str, Error> {
    match q.one("updateMask") {
        Some(m) if !m.trim().is_empty() => Ok(m),
        _ => Err(Error::invalid("update_mask", "The update_mask query parameter is required.")),
    }
}

/// A resource name repeated in the body must agree with the path.
fn check_body_name(field: &str, given: &str, path: &str) -> Result<(), Error> {
    if given.is_empty() || given == path {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("The field '{field}' does not match the resource name in the URL.")))
    }
}

/// A device name in the body must name the same device as the path, by id or numeric id.
fn check_device_body_name(given: &str, path: &DeviceName) -> Result<(), Error> {
    if given.is_empty() || given == path.to_string() {
        return Ok(());
    }
    match DeviceName::parse_field("name", given) {
        Ok(n) if n.registry == path.registry => Ok(()),
        _ => Err(Error::invalid("name", "The device name in the body does not match the one in the URL.")),
    }
}

async fn list_devices(core: &Core, parent: &RegistryName, q: &Query) -> Result<Response, Error> {
    q.check(&[
        "deviceIds",
        "deviceNumIds",
        "fieldMask",
        "gatewayListOptions.gatewayType",
        "gatewayListOptions.associationsGatewayId",
        "gatewayListOptions.associationsDeviceId",
        "pageSize",
        "pageToken",
    ])?;
    let mask = DeviceReadMask::for_list(q.one("fieldMask"))?;
    // Repeated parameters may also arrive comma-separated.
    let device_ids: Vec<String> =
        q.all("deviceIds").flat_map(|v| v.split(',')).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let device_num_ids = q
        .all("deviceNumIds")
        .flat_map(|v| v.split(','))
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim().parse::<u64>().map_err(|_| {
                Error::invalid("device_num_ids", format!("Invalid numeric device id '{}'.", model::ids::printable(s)))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let gateway_type = q.one("gatewayListOptions.gatewayType");
    let assoc_gateway = q.one("gatewayListOptions.associationsGatewayId");
    let assoc_device = q.one("gatewayListOptions.associationsDeviceId");
    let gateway = match (gateway_type, assoc_gateway, assoc_device) {
        (None, None, None) => GatewayListOption::None,
        (Some(t), None, None) => GatewayListOption::GatewayType(GatewayType::parse(t).ok_or_else(|| {
            Error::invalid(
                "gateway_list_options.gateway_type",
                format!("Invalid value '{}' for gatewayListOptions.gatewayType.", model::ids::printable(t)),
            )
        })?),
        (None, Some(g), None) => GatewayListOption::AssociationsGatewayId(g.to_owned()),
        (None, None, Some(d)) => GatewayListOption::AssociationsDeviceId(d.to_owned()),
        _ => {
            return Err(Error::invalid(
                "gateway_list_options",
                "Only one of gatewayType, associationsGatewayId and associationsDeviceId may be set.",
            ));
        }
    };
    let req = ListDevicesRequest {
        device_ids,
        device_num_ids,
        gateway,
        page_size: q.int("pageSize")?,
        page_token: q.one("pageToken").unwrap_or("").to_owned(),
    };
    let page = core.list_devices(parent, req).await?;
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Out {
        #[serde(skip_serializing_if = "Vec::is_empty")]
        devices: Vec<json::Device>,
        #[serde(skip_serializing_if = "String::is_empty")]
        next_page_token: String,
    }
    Ok(json_response(&Out {
        devices: page.devices.iter().map(|d| device_json(d, mask)).collect(),
        next_page_token: page.next_page_token,
    }))
}

fn registry_input(r: json::DeviceRegistry) -> RegistryInput {
    RegistryInput {
        id: r.id,
        name: r.name,
        fields: RegistryFields {
            event_notification_configs: r
                .event_notification_configs
                .into_iter()
                .map(|c| model::EventNotificationConfig {
                    subfolder_matches: c.subfolder_matches,
                    pubsub_topic_name: c.pubsub_topic_name,
                })
                .collect(),
            state_notification_config: r
                .state_notification_config
                .map(|s| model::StateNotificationConfig { pubsub_topic_name: s.pubsub_topic_name }),
            mqtt_state: r.mqtt_config.map(|m| m.mqtt_enabled_state).unwrap_or_default(),
            http_state: r.http_config.map(|h| h.http_enabled_state).unwrap_or_default(),
            log_level: r.log_level,
            credentials: r
                .credentials
                .into_iter()
                .map(|c| {
                    let cert = c.public_key_certificate.unwrap_or_default();
                    model::RegistryCredential { format: cert.format, certificate: cert.certificate, x509_details: None }
                })
                .collect(),
        },
    }
}

fn registry_json(r: &model::Registry) -> json::DeviceRegistry {
    json::DeviceRegistry {
        id: r.name.registry.to_string(),
        name: r.name.to_string(),
        event_notification_configs: r
            .event_notification_configs
            .iter()
            .map(|c| json::EventNotificationConfig {
                subfolder_matches: c.subfolder_matches.clone(),
                pubsub_topic_name: c.pubsub_topic_name.clone(),
            })
            .collect(),
        state_notification_config: Some(json::StateNotificationConfig {
            pubsub_topic_name: r
                .state_notification_config
                .as_ref()
                .map(|s| s.pubsub_topic_name.clone())
                .unwrap_or_default(),
        }),
        mqtt_config: Some(json::MqttConfig { mqtt_enabled_state: r.mqtt_state }),
        http_config: Some(json::HttpConfig { http_enabled_state: r.http_state }),
        log_level: r.log_level,
        credentials: r
            .credentials
            .iter()
            .map(|c| json::RegistryCredential {
                public_key_certificate: Some(json::PublicKeyCertificate {
                    format: c.format,
                    certificate: c.certificate.clone(),
                    x509_details: c.x509_details.as_ref().map(|d| json::X509CertificateDetails {
                        issuer: d.issuer.clone(),
                        subject: d.subject.clone(),
                        start_time: d.start_time,
                        expiry_time: d.expiry_time,
                        signature_algorithm: d.signature_algorithm.clone(),
                        public_key_type: d.public_key_type.clone(),
                    }),
                }),
            })
            .collect(),
    }
}

fn device_input(d: json::Device) -> Result<DeviceInput, Error> {
    let credentials = d
        .credentials
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let key = c.public_key.ok_or_else(|| {
                Error::invalid(format!("device.credentials[{i}].public_key"), "Each credential needs a public_key.")
            })?;
            Ok(model::DeviceCredential {
                public_key: model::PublicKey { format: key.format, key: key.key },
                expiration_time: c.expiration_time,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let gateway = d.gateway_config.unwrap_or_default();
    Ok(DeviceInput {
        id: d.id,
        name: d.name,
        num_id: d.num_id,
        credentials,
        blocked: d.blocked.unwrap_or(false),
        log_level: d.log_level,
        metadata: d.metadata.unwrap_or_default(),
        gateway_type: gateway.gateway_type,
        gateway_auth_method: gateway.gateway_auth_method,
        config: d.config.map(|c| (c.version, c.binary_data)),
    })
}

fn config_json(c: &model::DeviceConfig) -> json::DeviceConfig {
    json::DeviceConfig {
        version: c.version,
        cloud_update_time: c.cloud_update_time,
        device_ack_time: c.device_ack_time,
        binary_data: c.binary_data.clone(),
    }
}

fn state_json(s: &model::DeviceState) -> json::DeviceState {
    json::DeviceState { update_time: Some(s.update_time), binary_data: s.binary_data.clone() }
}

/// Renders the fields `mask` selects; the rest stay absent.
fn device_json(d: &model::Device, mask: DeviceReadMask) -> json::Device {
    use DeviceField as F;
    let has = |f| mask.contains(f);
    let a = &d.activity;
    let when = |f, v: Option<model::Timestamp>| if has(f) { v } else { None };
    json::Device {
        id: if has(F::Id) { d.id.to_string() } else { String::new() },
        name: if has(F::Name) { d.name().to_string() } else { String::new() },
        num_id: if has(F::NumId) { d.num_id.0 } else { 0 },
        credentials: (has(F::Credentials) && !d.credentials.is_empty()).then(|| {
            d.credentials
                .iter()
                .map(|c| json::DeviceCredential {
                    public_key: Some(json::PublicKeyCredential {
                        format: c.public_key.format,
                        key: c.public_key.key.clone(),
                    }),
                    expiration_time: c.expiration_time,
                })
                .collect()
        }),
        last_heartbeat_time: when(F::LastHeartbeatTime, a.last_heartbeat_time),
        last_event_time: when(F::LastEventTime, a.last_event_time),
        last_state_time: when(F::LastStateTime, a.last_state_time),
        last_config_ack_time: when(F::LastConfigAckTime, a.last_config_ack_time),
        last_config_send_time: when(F::LastConfigSendTime, a.last_config_send_time),
        blocked: (has(F::Blocked) && d.blocked).then_some(true),
        last_error_time: when(F::LastErrorTime, a.last_error_time),
        last_error_status: if has(F::LastErrorStatus) {
            a.last_error_status.as_ref().map(|s| json::Status {
                code: s.code,
                message: s.message.clone(),
                details: vec![],
            })
        } else {
            None
        },
        config: has(F::Config).then(|| config_json(&d.config)),
        state: if has(F::State) { d.state.as_ref().map(state_json) } else { None },
        log_level: if has(F::LogLevel) { d.log_level } else { model::LogLevel::Unspecified },
        metadata: (has(F::Metadata) && !d.metadata.is_empty()).then(|| d.metadata.clone()),
        gateway_config: has(F::GatewayConfig).then(|| json::GatewayConfig {
            gateway_type: d.gateway_config.gateway_type,
            gateway_auth_method: d.gateway_config.gateway_auth_method,
            last_accessed_gateway_id: d.gateway_config.last_accessed_gateway_id.clone(),
            last_accessed_gateway_time: d.gateway_config.last_accessed_gateway_time,
        }),
    }
}
