//! The `--grpc` listener: tonic's server, fed by an accept loop that bounds what tonic does not.
//!
//! * A cap on connections, enforced at accept: a connection beyond it is closed at once.
//! * A handshake deadline: from accept, the TLS handshake (when configured) and the 24-byte HTTP/2
//!   preface must arrive within `grpc_handshake_timeout`, or the connection is closed.
//! * HTTP/2 keep-alive pings and TCP keep-alive, so a vanished peer does not hold its slot.
//! * A timeout for unary calls ([`UntilResponse`]): it bounds a call until its response begins,
//!   which for a stream is when it opens, so Pub/Sub's StreamingPull streams live on past it.
//! * On shutdown, tonic drains; connections still open at the shutdown deadline have their sockets
//!   failed under them, which ends them.
//!
//! TLS is terminated here rather than by tonic, so the preface deadline counts HTTP/2 bytes, not
//! the TLS handshake's.

use crate::limits::{Limits, TCP_KEEPALIVE};
use crate::net::{self, Cap};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The client's first bytes on an HTTP/2 connection.
const PREFACE_LEN: usize = 24;

/// Serves `routes` on `listener` (over TLS with `tls`) until `shutdown` completes, then drains
/// within the shutdown deadline.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    routes: tonic::service::Routes,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (kill_tx, kill_rx) = watch::channel(false);
    let (conn_tx, conn_rx) = mpsc::channel(64);
    tokio::spawn(accept(listener, tls.map(tokio_rustls::TlsAcceptor::from), limits.clone(), conn_tx, kill_rx));
    let (stopped_tx, mut stopped_rx) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stopped_tx.send(true);
    };
    let timeout = limits.grpc_request_timeout;
    let server = tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(move |inner| UntilResponse { inner, timeout }))
        .http2_keepalive_interval(Some(limits.grpc_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.grpc_keepalive_timeout))
        .add_routes(routes)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(conn_rx), signal);
    tokio::pin!(server);
    let deadline = async {
        // An error means the signal future is gone, which only happens once the server ended.
        let _ = stopped_rx.wait_for(|s| *s).await;
        tokio::time::sleep(limits.shutdown_timeout).await;
    };
    tokio::select! {
        served = &mut server => return served,
        _ = deadline => {}
    }
    tracing::warn!(listener = "grpc", "shutdown deadline reached; aborting open connections");
    let _ = kill_tx.send(true);
    // Every connection's socket now fails, so tonic's drain ends at once; it is not waited for longer.
    tokio::time::timeout(Duration::from_secs(1), server).await.unwrap_or(Ok(()))
}

/// Bounds a call until its response begins. A unary call's response begins when it is answered;
/// a stream's when it opens, after which it runs as long as it is used. Unlike tonic's own
/// `timeout`, which answers CANCELLED, the call ends with DEADLINE_EXCEEDED, as gRPC's deadlines do.
#[derive(Clone)]
struct UntilResponse<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B> tower::Service<axum::http::Request<B>> for UntilResponse<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        // One span per call (its gRPC method; never its metadata, which holds the token), and a
        // completion line with the gRPC status as the response begins (0 unless it says otherwise).
        let span = tracing::info_span!("request", method = req.uri().path());
        let started = Instant::now();
        let (call, timeout) = (self.inner.call(req), self.timeout);
        let call = tracing::Instrument::instrument(call, span.clone());
        Box::pin(async move {
            let response = match tokio::time::timeout(timeout, call).await {
                Ok(response) => response,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "The call did not complete within the server's limit of {} seconds.",
                    timeout.as_secs_f64()
                ))
                .into_http()),
            };
            if let Ok(r) = &response {
                let code = r.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
                crate::http_listener::served(&span, code, started);
            }
            response
        })
    }
}

/// Accepts connections and hands them to tonic once their TLS handshake (if any) is done. Ends when
/// tonic stops taking connections.
async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    conns: mpsc::Sender<io::Result<Guarded>>,
    kill: watch::Receiver<bool>,
) {
    let mut cap = Cap::new(limits.grpc_max_connections, "grpc");
    // Handshakes run beside the loop so a slow one delays no other; they end with it.
    let mut handshakes = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = conns.closed() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            accepted = listener.accept() => match net::accepted(accepted, "grpc").await {
                Some(a) => a,
                None => continue,
            },
        };
        let Some(slot) = cap.admit(peer) else { continue };
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        let deadline = Instant::now() + limits.grpc_handshake_timeout;
        let info = tcp.connect_info();
        let guard = Guard { slot, deadline, kill: kill.clone() };
        match &tls {
            None => {
                if conns.send(Ok(Guarded::new(Stream::Plain(tcp), info, guard))).await.is_err() {
                    break;
                }
            }
            Some(acceptor) => {
                let (acceptor, conns) = (acceptor.clone(), conns.clone());
                handshakes.spawn(async move {
                    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = conns.send(Ok(Guarded::new(Stream::Tls(Box::new(stream)), info, guard))).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// What a connection carries from accept: its slot under the cap, its handshake deadline, and the
/// signal that fails it at the shutdown deadline.
struct Guard {
    slot: OwnedSemaphorePermit,
    deadline: Instant,
    kill: watch::Receiver<bool>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A connection as tonic sees it: its reads fail if the HTTP/2 preface is late, and all its I/O
/// fails once the server gives up on it.
pub struct Guarded {
    stream: Stream,
    info: TcpConnectInfo,
    _slot: OwnedSemaphorePermit,
    /// Preface bytes still awaited, and by when; None once they are in.
    preface: Option<(usize, Pin<Box<Sleep>>)>,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Guarded {
    fn new(stream: Stream, info: TcpConnectInfo, guard: Guard) -> Self {
        let mut kill = guard.kill;
        let killed = Box::pin(async move {
            // The sender is dropped only when the server is done; that ends the connection too.
            let _ = kill.wait_for(|k| *k).await;
        });
        Self {
            stream,
            info,
            _slot: guard.slot,
            preface: Some((PREFACE_LEN, Box::pin(tokio::time::sleep_until(guard.deadline)))),
            killed,
        }
    }

    fn check_killed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the server is shutting down")),
            Poll::Pending => Ok(()),
        }
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_killed(cx)?;
        if let Some((_, deadline)) = &mut this.preface
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface in time")));
        }
        let before = buf.filled().len();
        match &mut this.stream {
            Stream::Plain(s) => ready!(Pin::new(s).poll_read(cx, buf))?,
            Stream::Tls(s) => ready!(Pin::new(s).poll_read(cx, buf))?,
        }
        if let Some((awaited, _)) = &mut this.preface {
            *awaited = awaited.saturating_sub(buf.filled().len() - before);
            if *awaited == 0 {
                this.preface = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_killed(cx)?;
        match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_killed(cx)?;
        match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_killed(cx)?;
        match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
