//! The `--http` listener: HTTP/1.1 served by hyper, with the bounds `axum::serve` has no knobs for.
//!
//! * A cap on connections, enforced at accept: a connection beyond it is closed at once.
//! * A deadline for a request's line and headers, counted from the accept, or from the first byte
//!   after an idle wait (a slowloris client gets closed).
//! * A deadline for the wait between requests on a kept-alive connection.
//! * A deadline for a response write the client does not read.
//! * On shutdown: no new connections, kept-alive ones closed, requests in progress given the
//!   shutdown deadline, then aborted.
//!
//! hyper's own header timeout starts as soon as a connection goes idle, so it cannot tell the
//! header deadline from the idle one; the connection's phase is tracked here instead (see
//! [`Phase`]). The body deadline is the REST dispatcher's, which can still answer with an error.

use crate::limits::Limits;
use crate::net::{self, Cap};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::Service;

/// Serves `app` on `listener` until `shutdown` completes, then drains within the shutdown deadline.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let mut cap = Cap::new(limits.http_max_connections, "http");
    let (close_tx, close_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Some((tcp, peer)) = net::accepted(accepted, "http").await else { continue };
                let Some(slot) = cap.admit(peer) else { continue };
                connections.spawn(connection(tcp, peer, app.clone(), limits.clone(), close_rx.clone(), slot));
            }
        }
    }
    // Closing the socket now makes new clients fail fast instead of waiting in the backlog.
    drop(listener);
    let _ = close_tx.send(true);
    net::drain(connections, limits.shutdown_timeout, "http").await;
}

async fn connection(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    app: Router,
    limits: Limits,
    mut close: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let phase = Arc::new(Phase::new(limits.http_header_timeout, limits.http_idle_timeout));
    let io = TokioIo::new(Timed::new(tcp, phase.clone(), limits.http_idle_timeout));
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // The client's address, as axum's `ConnectInfo` (the device bridge logs it).
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let busy = Busy::begin(phase.clone());
        let mut app = app.clone();
        let span = request_span(&req, peer);
        let started = Instant::now();
        async move {
            let response = tracing::Instrument::instrument(app.call(req), span.clone()).await?;
            served(&span, response.status().as_u16(), started);
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The deadlines are Timed's; hyper's own would also cut idle connections at the header deadline.
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            return;
        }
        _ = close.wait_for(|c| *c) => {}
    }
    // Shutdown: an idle connection closes now, a busy one after its response.
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "HTTP connection ended during shutdown");
    }
}

/// The span of one API request: what every line its handling logs carries. The path only (a
/// resource name), never the query or the headers, which may hold credentials.
fn request_span<B>(req: &hyper::Request<B>, peer: std::net::SocketAddr) -> tracing::Span {
    tracing::info_span!("request", method = %req.method(), path = req.uri().path(), client = %peer)
}

/// The request's completion line: its status (HTTP, or gRPC's code) and how long it took until
/// the response began.
pub(crate) fn served(span: &tracing::Span, status: u16, started: Instant) {
    // Whole microseconds: 0.158, not 0.15792900000000001.
    let latency_ms = started.elapsed().as_micros() as f64 / 1000.0;
    tracing::debug!(parent: span, status, latency_ms, "request served");
}

/// Where a connection is, which decides the deadline its reads run against.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting for a request's head, since then: the header deadline.
    Head(Instant),
    /// This many requests being served: no read deadline (the body's is the handler's).
    Busy(usize),
    /// Idle since then, between requests: the idle deadline.
    Idle(Instant),
}

/// A connection's state, shared by its socket ([`Timed`]) and its requests ([`Busy`]).
struct Phase {
    header: Duration,
    idle: Duration,
    state: Mutex<State>,
}

impl Phase {
    fn new(header: Duration, idle: Duration) -> Self {
        Self { header, idle, state: Mutex::new(State::Head(Instant::now())) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deadline(&self) -> Option<Instant> {
        match *self.state() {
            State::Head(since) => Some(since + self.header),
            State::Busy(_) => None,
            State::Idle(since) => Some(since + self.idle),
        }
    }

    /// Bytes came in: after an idle wait, they start the next request's head.
    fn bytes_read(&self) {
        let mut state = self.state();
        if let State::Idle(_) = *state {
            *state = State::Head(Instant::now());
        }
    }
}

/// One request in progress; its end (the response's body dropped) may leave the connection idle.
struct Busy(Arc<Phase>);

impl Busy {
    fn begin(phase: Arc<Phase>) -> Self {
        {
            let mut state = phase.state();
            *state = State::Busy(match *state {
                State::Busy(n) => n + 1,
                _ => 1,
            });
        }
        Self(phase)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state();
        if let State::Busy(n) = *state {
            *state = if n > 1 { State::Busy(n - 1) } else { State::Idle(Instant::now()) };
        }
    }
}

/// A response body that marks its request finished when hyper is done with it.
struct Tracked {
    body: axum::body::Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, failing its reads once the phase's deadline passes and its writes once they have
/// waited for the client longer than the stall limit.
struct Timed {
    tcp: TcpStream,
    phase: Arc<Phase>,
    deadline: Pin<Box<Sleep>>,
    stall_limit: Duration,
    stall: Option<Pin<Box<Sleep>>>,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl Timed {
    fn new(tcp: TcpStream, phase: Arc<Phase>, stall_limit: Duration) -> Self {
        let first = phase.deadline().unwrap_or_else(Instant::now);
        Self { tcp, phase, deadline: Box::pin(tokio::time::sleep_until(first)), stall_limit, stall: None }
    }

    /// Passes a write's outcome on; one that has been pending longer than the stall limit fails.
    fn watch_write<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match outcome {
            Poll::Ready(r) => {
                self.stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.stall_limit;
                let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out("the client stopped reading the response"))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for Timed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = this.phase.deadline() {
            if this.deadline.deadline() != deadline {
                this.deadline.as_mut().reset(deadline);
            }
            // Polling the timer registers this task with it, so hyper is woken to see the error.
            if this.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(timed_out("the client sent no complete request in time")));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.phase.bytes_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Timed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.watch_write(cx, outcome)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.watch_write(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.tcp).poll_flush(cx);
        this.watch_write(cx, outcome)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.tcp).poll_shutdown(cx);
        this.watch_write(cx, outcome)
    }
}
