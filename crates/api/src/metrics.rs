//! The admin APIs' side of the Prometheus metrics: `GET /metrics` ([`Exporter`]) and the request
//! metrics of REST ([`record_rest`], in [`crate::rest::router`]) and gRPC ([`instrument_grpc`]).
//!
//! Requests are labelled with [`crate::rest::operation`]'s names (route templates and RPC
//! names), never with the raw path. REST's code is the HTTP status; gRPC's the `grpc-status`,
//! read from the response headers or, for a response with a body, from its trailers once the
//! body ends (so a call's latency runs to the end of its response, streams included).
//!
//! Who may read `/metrics` on the `--http` listener: anyone connecting from a loopback address,
//! others only with the admin token. `--metrics ADDR` serves [`Exporter::router`] instead, with
//! no token, on a listener of its own (for a network only the Prometheus server reaches).

use crate::rest::operation;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrocore_metrics::{Metrics, Protocol};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

type Render = dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync;

/// Renders the exposition: the server's recorded [`Metrics`] and what it reads at scrape time.
#[derive(Clone)]
pub struct Exporter(Arc<Render>);

impl Exporter {
    pub fn new<F, Fut>(render: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = String> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(render())))
    }

    /// The exposition, as a response.
    pub async fn response(&self) -> Response {
        let mut resp = (StatusCode::OK, (self.0)().await).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ferrocore_metrics::CONTENT_TYPE));
        resp
    }

    /// `GET /metrics` alone, without a token: what `--metrics ADDR` serves.
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", axum::routing::get(|State(e): State<Exporter>| async move { e.response().await }))
            .with_state(self)
    }
}

/// Records a REST request: its operation, HTTP status and latency (to the response's head).
pub async fn record_rest(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = operation::classify(req.method(), req.headers(), req.uri().path());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics.api.record(Protocol::Rest, method, resp.status().as_u16(), started.elapsed());
    resp
}

/// The gRPC routes, with every call recorded: method, `grpc-status` and latency.
pub fn instrument_grpc(routes: tonic::service::Routes, metrics: Arc<Metrics>) -> tonic::service::Routes {
    let router = routes.into_axum_router().layer(axum::middleware::from_fn_with_state(metrics, record_grpc));
    tonic::service::Routes::from(router)
}

async fn record_grpc(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = operation::grpc_method(req.uri().path());
    let started = Instant::now();
    let resp = next.run(req).await;
    // A trailers-only response (most errors) carries its status in the headers.
    if let Some(code) = grpc_status(resp.headers()) {
        metrics.api.record(Protocol::Grpc, method, code, started.elapsed());
        return resp;
    }
    resp.map(|body| Body::new(GrpcBody { body, pending: Some(Pending { metrics, method, started, code: None }) }))
}

fn grpc_status(headers: &axum::http::HeaderMap) -> Option<u16> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok())
}

/// A call whose status is still to come, in its trailers.
struct Pending {
    metrics: Arc<Metrics>,
    method: &'static str,
    started: Instant,
    code: Option<u16>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // No trailers seen: the response was cut short (the client went away).
        let code = self.code.unwrap_or(1);
        self.metrics.api.record(Protocol::Grpc, self.method, code, self.started.elapsed());
    }
}

/// A gRPC response body that records its call once the trailers pass, or when it is dropped.
struct GrpcBody {
    body: Body,
    pending: Option<Pending>,
}

impl http_body::Body for GrpcBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(mut p) = this.pending.take()
                {
                    p.code = Some(grpc_status(trailers).unwrap_or(2));
                }
            }
            Some(Err(_)) => {
                if let Some(mut p) = this.pending.take() {
                    p.code = Some(2);
                }
            }
            None => {
                if let Some(mut p) = this.pending.take() {
                    p.code.get_or_insert(2);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
