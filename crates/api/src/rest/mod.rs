//! The REST APIs of the `--http` listener: Cloud IoT v1, Pub/Sub v1, and Ferrocore's topic-log
//! reads, with Google's paths, JSON and errors.
//!
//! One fallback handler serves `/v1/...`. It tells the API from the path's shape and
//! authenticates the caller first ([`Access`]): any admin credential for Cloud IoT, Pub/Sub
//! ([`crate::pubsub::rest`], which also lets credential-less calls in with `--pubsub-anonymous`)
//! and Ferrocore's own paths; a device's JWT for the device bridge ([`device`]). Then it parses
//! the path (for Cloud IoT into a [`route::Route`]), checks the caller's permission for it
//! ([`crate::authz`]), and transcodes path, query and body into the same request message the gRPC
//! API takes, as Google's HTTP mapping does; the result is rendered with the wire types' Google
//! JSON mapping, or the error with [`error`]. `GET /healthz` answers without a token;
//! `GET /metrics` answers loopback clients without one and others with the admin token
//! ([`crate::metrics`]); every request is counted under its [`operation`]'s name.
//!
//! Ferrocore's own paths: `GET /v1/sinks` (owner) reports the external sinks; the topic-log reads
//! ([`topics`], owner); `GET /v1/projects/P/locations/L/registries/R/logs` reads the device
//! activity logs ([`logs`], `cloudiot.devices.get`); `/v1/projects/P/tokens` and
//! `/v1/projects/P/serviceAccounts` manage identities ([`iam_admin`], owner); `GET /v1/status`, a
//! device's `connection` and the project's `:testIamPermissions` ([`status`]). `POST /token`
//! exchanges a service account's signed JWT for an access token ([`oauth`]). `/console/` serves
//! the web console's static files ([`console`]).
//!
//! A body must arrive within [`BodyTimeout`] (408 otherwise) and fit the path's limit; a declared
//! `Content-Length` over the limit is refused before anything is read.

mod console;
pub mod device;
pub mod discovery;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod iam_admin;
pub mod logs;
pub mod oauth;
pub mod operation;
pub mod route;
mod sinks;
mod status;
pub mod topics;

use crate::authz::{self, Access, Call};
use crate::pubsub::Guard;
use crate::pubsub::rest as pubsub_rest;
use crate::service::DeviceManager;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method as HttpMethod, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use error::RestError;
use ferrocore_core::sink::SinkReport;
use ferrocore_core::topics::TopicSource;
use ferrocore_core::{Code, Error};
use ferrocore_iam::Caller;
use ferrocore_model::{self as model, DeviceName, RegistryName};
use ferrocore_proto::{FieldMask, iot};
use ferrocore_pubsub::PubSub;
use route::{Method, Route};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Largest request body accepted (except on Pub/Sub paths, see [`pubsub_rest::MAX_BODY_BYTES`]):
/// a device with three certificates and its full 256 KiB of metadata, or a 256 KiB command in
/// base64, fits with room to spare.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
struct App {
    core: ferrocore_core::Core,
    topics: Arc<dyn TopicSource>,
    service: DeviceManager,
    access: Access,
    pubsub: PubSub,
    sinks: Option<Arc<dyn SinkReport>>,
    ready: Arc<AtomicBool>,
    metrics: Option<crate::metrics::Exporter>,
    stopping: tokio::sync::watch::Receiver<bool>,
    cluster: Option<ferrocore_cluster::Cluster>,
}

/// What the REST router serves.
pub struct RestParts {
    pub core: ferrocore_core::Core,
    pub topics: Arc<dyn TopicSource>,
    /// Authenticates and authorizes every admin call (and holds the admin token `/metrics` takes).
    pub access: Access,
    pub pubsub: PubSub,
    /// The external sinks' report, for `GET /v1/sinks`; `None` when there are none.
    pub sinks: Option<Arc<dyn SinkReport>>,
    /// Turns `/healthz` to 200 once every listener of the server accepts.
    pub ready: Arc<AtomicBool>,
    /// What `GET /metrics` serves; `None`: 404.
    pub metrics: Option<crate::metrics::Exporter>,
    /// Turns true when the server stops: long-lived responses (topic streams) end then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The cluster this server is a node of, for `GET /v1/cluster`.
    pub cluster: Option<ferrocore_cluster::Cluster>,
}

/// The REST router.
pub fn router(parts: RestParts) -> Router {
    let RestParts { core, topics, access, pubsub, sinks, ready, metrics, stopping, cluster } = parts;
    let recorded = core.metrics().clone();
    let app = App {
        service: DeviceManager::new(core.clone(), access.iam().clone()),
        core,
        topics,
        access,
        pubsub,
        sinks,
        ready,
        metrics,
        stopping,
        cluster,
    };
    Router::new()
        .merge(console::router())
        .route("/healthz", get(healthz))
        .route("/metrics", get(serve_metrics))
        .route("/token", post(token_endpoint))
        .fallback(dispatch)
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(recorded, crate::metrics::record_rest))
}

/// `GET /metrics`: free from loopback, with the admin token from elsewhere (the client's address
/// is the `ConnectInfo` the listener sets; without one, the token is needed).
async fn serve_metrics(State(app): State<App>, req: Request) -> Response {
    let Some(exporter) = &app.metrics else {
        return RestError(route::not_found("/metrics")).into_response();
    };
    let loopback = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| c.0.ip().to_canonical().is_loopback());
    if !loopback && !app.access.iam().admin().accepts(authorization(req.headers())) {
        return RestError(unauthenticated()).into_response();
    }
    exporter.response().await
}

/// `POST /token`: no credential needed, the assertion is one.
async fn token_endpoint(State(app): State<App>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let deadline = parts.extensions.get::<BodyTimeout>().map_or(DEFAULT_BODY_TIMEOUT, |t| t.0);
    let body = match read_body(&parts.headers, body, oauth::MAX_BODY_BYTES, deadline).await {
        Ok(b) => b,
        Err(failure) => {
            let mut resp = oauth::body_failure(matches!(failure, BodyFailure::Late));
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    };
    oauth::serve(app.access.iam(), &parts, &body)
}

async fn healthz(State(app): State<App>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

pub(crate) fn json_response<T: Serialize>(value: &T) -> Response {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    resp
}

/// How long a request's body may take to arrive, once its headers are in. The server sets it as a
/// request extension; without one, [`DEFAULT_BODY_TIMEOUT`] applies.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request's body could not be had.
enum BodyFailure {
    TooLarge,
    Late,
}

async fn dispatch(State(app): State<App>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let v1 = parts.uri.path().strip_prefix("/v1/");
    // Ferrocore's topic-log reads live under Pub/Sub's `topics/T`, but are admin-only.
    let pubsub = v1.is_some_and(|p| topics::parse(p).is_none() && pubsub_rest::is_pubsub_path(p));
    // Everything else under /v1/ but the device bridge (which checks a device's JWT) is admin-only.
    let admin = v1.is_some_and(|p| !pubsub && !route::is_device_bridge_path(p));
    // The caller is authenticated before anything else of the request is parsed, so a refused one
    // learns nothing about the path; only an admitted Pub/Sub caller may send the larger body a
    // publish request needs. (Whether an admitted caller may do what it asks is checked once the
    // path is parsed.)
    let auth = authorization(&parts.headers);
    let caller = if pubsub {
        Some(app.access.authenticate_pubsub(auth))
    } else if admin {
        Some(app.access.authenticate(auth))
    } else {
        None
    };
    let refused = matches!(caller, Some(Err(_)));
    let limit = if pubsub && !refused { pubsub_rest::MAX_BODY_BYTES } else { MAX_BODY_BYTES };
    let deadline = parts.extensions.get::<BodyTimeout>().map_or(DEFAULT_BODY_TIMEOUT, |t| t.0);
    // The body is read before anything is decided, refusals included: answering with a body left
    // unread would make the connection unusable for the client's next request.
    let body = match read_body(&parts.headers, body, limit, deadline).await {
        Ok(b) => b,
        Err(failure) => {
            let mut resp = match failure {
                _ if refused => RestError(unauthenticated()).into_response(),
                BodyFailure::TooLarge => RestError(Error::invalid(
                    "body",
                    format!("The request body is larger than the limit of {limit} bytes."),
                ))
                .into_response(),
                BodyFailure::Late => error::with_status(
                    StatusCode::REQUEST_TIMEOUT,
                    Error::new(
                        Code::DeadlineExceeded,
                        format!("The request body did not arrive within {} seconds.", deadline.as_secs_f64()),
                    ),
                ),
            };
            // The rest of the body was not read, so this connection cannot carry another request.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    };
    let result = match (v1, caller.and_then(Result::ok)) {
        _ if refused => Err(unauthenticated()),
        (Some(path), Some(caller)) if pubsub => match method(&parts) {
            Ok(m) => {
                let guard = Guard { pubsub: &app.pubsub, access: &app.access, caller: &caller };
                pubsub_rest::serve(guard, m, path, &Query::parse(parts.uri.query()), &body).await
            }
            Err(e) => Err(e),
        },
        (_, caller) => handle(&app, caller, parts, body).await,
    };
    match result {
        Ok(resp) => resp,
        Err(e) => {
            if e.code == Code::Internal || e.code == Code::Unavailable {
                tracing::warn!(code = e.code.name(), "request failed");
            }
            RestError(e).into_response()
        }
    }
}

/// Reads a body of at most `limit` bytes within `deadline`. A declared length over the limit is
/// refused before anything is read: waiting for a gigabyte that is never sent would hold the
/// connection until the deadline for nothing.
async fn read_body(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyFailure> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyFailure::TooLarge);
    }
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(BodyFailure::TooLarge),
        Err(_) => Err(BodyFailure::Late),
    }
}

fn authorization(headers: &axum::http::HeaderMap) -> Option<&[u8]> {
    headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes)
}

/// The HTTP method, or the one `X-HTTP-Method-Override` asks a POST to stand for.
fn method(parts: &axum::http::request::Parts) -> Result<Method, Error> {
    let override_method = parts.headers.get("x-http-method-override").and_then(|v| v.to_str().ok());
    Ok(match (&parts.method, override_method) {
        (&HttpMethod::POST, Some(m)) if m.eq_ignore_ascii_case("PATCH") => Method::Patch,
        (&HttpMethod::POST, Some(m)) if m.eq_ignore_ascii_case("DELETE") => Method::Delete,
        (&HttpMethod::POST, Some(m)) if m.eq_ignore_ascii_case("GET") => Method::Get,
        (&HttpMethod::POST, Some(m)) if m.eq_ignore_ascii_case("PUT") => Method::Put,
        (&HttpMethod::GET, _) => Method::Get,
        (&HttpMethod::POST, _) => Method::Post,
        (&HttpMethod::PUT, _) => Method::Put,
        (&HttpMethod::PATCH, _) => Method::Patch,
        (&HttpMethod::DELETE, _) => Method::Delete,
        _ => return Err(method_not_supported()),
    })
}

pub(crate) fn method_not_supported() -> Error {
    Error::not_found("The requested method is not supported on this URL.")
}

/// Query parameters, in order, with repeated keys kept.
pub(crate) struct Query(Vec<(String, String)>);

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
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        Self(form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect())
    }

    /// Refuses parameters the method does not know; `allowed` lists camelCase names, and the
    /// snake_case spelling of each is accepted too.
    pub(crate) fn check(&self, allowed: &[&str]) -> Result<(), Error> {
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

    pub(crate) fn one(&self, name: &str) -> Option<&str> {
        self.all(name).last()
    }

    pub(crate) fn int32(&self, name: &str) -> Result<i32, Error> {
        match self.one(name) {
            None | Some("") => Ok(0),
            Some(v) => v.parse().map_err(|_| {
                Error::invalid(
                    name,
                    format!("Invalid value '{}' for '{name}': expected a 32-bit integer.", model::ids::printable(v)),
                )
            }),
        }
    }

    fn mask(&self, name: &str) -> Option<FieldMask> {
        self.one(name)
            .map(|m| FieldMask { paths: m.split(',').map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect() })
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

pub(crate) fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Error> {
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
        let text =
            text.rsplit_once(" at line ").map_or(text.as_str(), |(t, _)| t).replace("expected expected", "expected");
        let text = text.as_str();
        if let Some(rest) = text.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default();
            let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
            let at = if parent.is_empty() { String::new() } else { format!(" at '{parent}'") };
            return Error::invalid(
                path,
                format!("Invalid JSON payload received. Unknown name \"{name}\"{at}: Cannot find field."),
            );
        }
        if path.ends_with("binaryData") || path.ends_with("binary_data") {
            // The wording Google's front end used for undecodable bytes fields.
            return Error::invalid(
                path.clone(),
                format!("Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed: {text}."),
            );
        }
        Error::invalid(path.clone(), format!("Invalid JSON payload received. Invalid value at '{path}': {text}."))
    })?;
    Ok(value)
}

fn unauthenticated() -> Error {
    Error::new(
        Code::Unauthenticated,
        "Request is missing or has an invalid admin token; send 'Authorization: Bearer TOKEN'.",
    )
}

/// Everything under `/v1/` but Pub/Sub (and the discovery document). `caller` is the
/// authenticated caller of an admin path; None for the device bridge and paths outside `/v1/`.
async fn handle(
    app: &App,
    caller: Option<Caller>,
    parts: axum::http::request::Parts,
    body: Bytes,
) -> Result<Response, Error> {
    if discovery::is_discovery_path(parts.uri.path()) && parts.method == HttpMethod::GET {
        return discovery::document(&parts.headers, parts.uri.query())
            .ok_or_else(|| Error::not_found("No discovery document for that API version or host."));
    }
    let Some(path) = parts.uri.path().strip_prefix("/v1/") else {
        return Err(Error::not_found(format!(
            "The requested URL '{}' was not found on this server.",
            model::ids::printable(parts.uri.path())
        )));
    };
    // The dispatcher has refused unauthenticated callers already; this keeps the rule where the
    // paths are told apart: a caller first, before any id is parsed, for all but the device bridge.
    if caller.is_none() && !route::is_device_bridge_path(path) {
        return Err(unauthenticated());
    }
    // Some on every path but the device bridge's.
    let admin = || caller.as_ref().ok_or_else(unauthenticated);
    if path == "sinks" {
        authz::owner_only(admin()?, "Listing sinks")?;
        if parts.method != HttpMethod::GET {
            return Err(method_not_supported());
        }
        Query::parse(parts.uri.query()).check(&[])?;
        return Ok(sinks::list(app.sinks.as_deref()).await);
    }
    if let Some(topics_route) = topics::parse(path) {
        authz::owner_only(admin()?, "Reading the topic log")?;
        if parts.method != HttpMethod::GET {
            return Err(method_not_supported());
        }
        let q = Query::parse(parts.uri.query());
        return topics::serve(app.topics.clone(), topics_route, &q, app.stopping.clone()).await;
    }
    if let Some(status_route) = status::parse(path) {
        let status_route = status_route?;
        let expected = match status_route {
            status::StatusRoute::ProjectPermissions(_) => HttpMethod::POST,
            _ => HttpMethod::GET,
        };
        if parts.method != expected {
            return Err(method_not_supported());
        }
        Query::parse(parts.uri.query()).check(&[])?;
        return status::serve(&app.core, &app.access, app.cluster.as_ref(), admin()?, status_route, &body).await;
    }
    if let Some(collection) = iam_admin::parse(path) {
        authz::owner_only(admin()?, "Managing tokens and service accounts")?;
        let method = method(&parts)?;
        return iam_admin::serve(app.access.iam(), &parts, collection?, method, &body).await;
    }
    if let Some(registry) = logs::parse(path) {
        if parts.method != HttpMethod::GET {
            return Err(method_not_supported());
        }
        let registry = registry?;
        app.access.check(admin()?, Call::ListDeviceLogs(&registry)).await?;
        return logs::serve(&app.core, registry, &Query::parse(parts.uri.query())).await;
    }
    let method = match method(&parts)? {
        // No Cloud IoT method is a PUT.
        Method::Put => return Err(method_not_supported()),
        m => m,
    };
    let route = route::parse(method, path)?;
    let query = Query::parse(parts.uri.query());
    if route.is_device_bridge() {
        let client_ip = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        return device::serve(&app.core, route, &parts.headers, client_ip, &query, &body).await;
    }
    let caller = admin()?;
    if let Some(call) = Call::of_route(&route) {
        app.access.check(caller, call).await?;
    }
    serve(&app.service, caller, route, &query, &body).await
}

async fn serve(svc: &DeviceManager, caller: &Caller, route: Route, q: &Query, body: &Bytes) -> Result<Response, Error> {
    let empty = || json_response(&serde_json::json!({}));
    Ok(match route {
        Route::CreateRegistry(parent) => {
            q.check(&[])?;
            let req = iot::CreateDeviceRegistryRequest {
                parent: parent.to_string(),
                device_registry: Some(parse_body(body)?),
            };
            json_response(&svc.create_device_registry(req).await?)
        }
        Route::GetRegistry(name) => {
            q.check(&[])?;
            json_response(&svc.get_device_registry(iot::GetDeviceRegistryRequest { name: name.to_string() }).await?)
        }
        Route::ListRegistries(parent) => {
            q.check(&["pageSize", "pageToken"])?;
            let req = iot::ListDeviceRegistriesRequest {
                parent: parent.to_string(),
                page_size: q.int32("pageSize")?,
                page_token: q.one("pageToken").unwrap_or_default().to_owned(),
            };
            json_response(&svc.list_device_registries(req).await?)
        }
        Route::PatchRegistry(name) => {
            q.check(&["updateMask"])?;
            let mut registry: iot::DeviceRegistry = parse_body(body)?;
            check_body_name("device_registry.name", &registry.name, &name.to_string())?;
            registry.name = name.to_string();
            let req =
                iot::UpdateDeviceRegistryRequest { device_registry: Some(registry), update_mask: q.mask("updateMask") };
            json_response(&svc.update_device_registry(req).await?)
        }
        Route::DeleteRegistry(name) => {
            q.check(&[])?;
            svc.delete_device_registry(iot::DeleteDeviceRegistryRequest { name: name.to_string() }).await?;
            empty()
        }
        Route::BindDeviceToGateway(parent) => {
            q.check(&[])?;
            let mut req: iot::BindDeviceToGatewayRequest = parse_body(body)?;
            req.parent = parent_from_body(&req.parent, &parent)?;
            json_response(&svc.bind_device_to_gateway(req).await?)
        }
        Route::UnbindDeviceFromGateway(parent) => {
            q.check(&[])?;
            let mut req: iot::UnbindDeviceFromGatewayRequest = parse_body(body)?;
            req.parent = parent_from_body(&req.parent, &parent)?;
            json_response(&svc.unbind_device_from_gateway(req).await?)
        }
        Route::GetIamPolicy(resource) => {
            q.check(&[])?;
            let mut req: ferrocore_proto::iam::GetIamPolicyRequest = parse_body(body)?;
            check_body_name("resource", &req.resource, &resource.to_string())?;
            req.resource = resource.to_string();
            json_response(&svc.get_iam_policy(req).await?)
        }
        Route::SetIamPolicy(resource) => {
            q.check(&[])?;
            let mut req: ferrocore_proto::iam::SetIamPolicyRequest = pubsub_rest::parse_with_mask(body)?;
            check_body_name("resource", &req.resource, &resource.to_string())?;
            req.resource = resource.to_string();
            json_response(&svc.set_iam_policy(req).await?)
        }
        Route::TestIamPermissions(resource) => {
            q.check(&[])?;
            let mut req: ferrocore_proto::iam::TestIamPermissionsRequest = parse_body(body)?;
            check_body_name("resource", &req.resource, &resource.to_string())?;
            req.resource = resource.to_string();
            json_response(&svc.test_iam_permissions(caller, req).await?)
        }
        Route::CreateDevice(parent) => {
            q.check(&[])?;
            let req = iot::CreateDeviceRequest { parent: parent.to_string(), device: Some(parse_body(body)?) };
            json_response(&svc.create_device(req).await?)
        }
        Route::GetDevice(name) => {
            q.check(&["fieldMask"])?;
            json_response(
                &svc.get_device(iot::GetDeviceRequest { name: name.to_string(), field_mask: q.mask("fieldMask") })
                    .await?,
            )
        }
        Route::ListDevices(parent) => {
            let prefix = q.one("deviceIdPrefix").unwrap_or_default().to_owned();
            json_response(&svc.list_devices_with_prefix(list_devices_request(&parent, q)?, prefix).await?)
        }
        Route::PatchDevice(name) => {
            q.check(&["updateMask"])?;
            let mut device: iot::Device = parse_body(body)?;
            device.name = device_from_body(&device.name, &name)?;
            let req = iot::UpdateDeviceRequest { device: Some(device), update_mask: q.mask("updateMask") };
            json_response(&svc.update_device(req).await?)
        }
        Route::DeleteDevice(name) => {
            q.check(&[])?;
            svc.delete_device(iot::DeleteDeviceRequest { name: name.to_string() }).await?;
            empty()
        }
        Route::ModifyConfig(name) => {
            q.check(&[])?;
            let mut req: iot::ModifyCloudToDeviceConfigRequest = parse_body(body)?;
            req.name = device_from_body(&req.name, &name)?;
            json_response(&svc.modify_cloud_to_device_config(req).await?)
        }
        Route::SendCommand(name) => {
            q.check(&[])?;
            let mut req: iot::SendCommandToDeviceRequest = parse_body(body)?;
            req.name = device_from_body(&req.name, &name)?;
            json_response(&svc.send_command_to_device(req).await?)
        }
        Route::ListConfigVersions(name) => {
            q.check(&["numVersions"])?;
            let req =
                iot::ListDeviceConfigVersionsRequest { name: name.to_string(), num_versions: q.int32("numVersions")? };
            json_response(&svc.list_device_config_versions(req).await?)
        }
        Route::PublishEvent(_) | Route::SetState(_) | Route::GetConfig(_) => {
            return Err(Error::not_found("Device bridge routes are served separately."));
        }
        Route::ListStates(name) => {
            q.check(&["numStates"])?;
            let req = iot::ListDeviceStatesRequest { name: name.to_string(), num_states: q.int32("numStates")? };
            json_response(&svc.list_device_states(req).await?)
        }
    })
}

/// A resource name repeated in the body must agree with the path.
pub(crate) fn check_body_name(field: &str, given: &str, path: &str) -> Result<(), Error> {
    if given.is_empty() || given == path {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("The field '{field}' does not match the resource name in the URL.")))
    }
}

fn parent_from_body(given: &str, path: &RegistryName) -> Result<String, Error> {
    let path = path.to_string();
    check_body_name("parent", given, &path)?;
    Ok(path)
}

/// A device name in the body must name a device of the same registry as the path (by id or
/// numeric id; the core checks it is the same device). The path's name is the one used.
fn device_from_body(given: &str, path: &DeviceName) -> Result<String, Error> {
    if !given.is_empty() && given != path.to_string() {
        match DeviceName::parse_field("name", given) {
            Ok(n) if n.registry == path.registry => {}
            _ => return Err(Error::invalid("name", "The device name in the body does not match the one in the URL.")),
        }
    }
    Ok(path.to_string())
}

fn list_devices_request(parent: &RegistryName, q: &Query) -> Result<iot::ListDevicesRequest, Error> {
    use iot::gateway_list_options::Filter;
    q.check(&[
        "deviceIds",
        "deviceNumIds",
        "fieldMask",
        "gatewayListOptions.gatewayType",
        "gatewayListOptions.associationsGatewayId",
        "gatewayListOptions.associationsDeviceId",
        "pageSize",
        "pageToken",
        "deviceIdPrefix",
    ])?;
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
    let filter = match (
        q.one("gatewayListOptions.gatewayType"),
        q.one("gatewayListOptions.associationsGatewayId"),
        q.one("gatewayListOptions.associationsDeviceId"),
    ) {
        (None, None, None) => None,
        (Some(t), None, None) => {
            // Names are resolved here; numbers go to the service as they are, as over gRPC.
            let number = model::GatewayType::parse(t).map(i32::from).or_else(|| t.parse().ok());
            Some(Filter::GatewayType(number.ok_or_else(|| {
                Error::invalid(
                    "gateway_list_options.gateway_type",
                    format!("Invalid value '{}' for gatewayListOptions.gatewayType.", model::ids::printable(t)),
                )
            })?))
        }
        (None, Some(g), None) => Some(Filter::AssociationsGatewayId(g.to_owned())),
        (None, None, Some(d)) => Some(Filter::AssociationsDeviceId(d.to_owned())),
        _ => {
            return Err(Error::invalid(
                "gateway_list_options",
                "Only one of gatewayType, associationsGatewayId and associationsDeviceId may be set.",
            ));
        }
    };
    Ok(iot::ListDevicesRequest {
        parent: parent.to_string(),
        device_num_ids,
        device_ids,
        field_mask: q.mask("fieldMask"),
        gateway_list_options: filter.map(|f| iot::GatewayListOptions { filter: Some(f) }),
        page_size: q.int32("pageSize")?,
        page_token: q.one("pageToken").unwrap_or_default().to_owned(),
    })
}
