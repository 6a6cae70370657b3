//! What the HTTP and gRPC accept loops share: accept errors that must not spin, a cap whose
//! refusals are logged without flooding the log, and a drain bounded by the shutdown deadline.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The outcome of `accept`, or None to go round again. Errors that concern one connection are
/// skipped; the others (out of file descriptors, mostly) pause the loop briefly so that it does not
/// spin while the condition lasts.
pub(crate) async fn accepted(
    result: io::Result<(TcpStream, SocketAddr)>,
    listener: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    match result {
        Ok(a) => Some(a),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
            ) =>
        {
            None
        }
        Err(e) => {
            tracing::warn!(listener, error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// A connection cap: a slot per connection, taken at accept and given back when it closes.
pub(crate) struct Cap {
    slots: Arc<Semaphore>,
    max: usize,
    listener: &'static str,
    last_warning: Option<Instant>,
    refused_since: u64,
}

impl Cap {
    pub(crate) fn new(max: usize, listener: &'static str) -> Self {
        let max = max.max(1);
        Self { slots: Arc::new(Semaphore::new(max)), max, listener, last_warning: None, refused_since: 0 }
    }

    /// A slot for a new connection, or None when the cap is reached: the caller closes the
    /// connection at once. Refusals are logged at most every ten seconds, with their count.
    pub(crate) fn admit(&mut self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        self.refused_since += 1;
        let now = Instant::now();
        if self.last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            tracing::warn!(
                listener = self.listener,
                max = self.max,
                %peer,
                refused = self.refused_since,
                "connection limit reached; closing new connections"
            );
            self.last_warning = Some(now);
            self.refused_since = 0;
        }
        None
    }
}

/// Waits for the connection tasks to end, at most `deadline`; then aborts those still running.
pub(crate) async fn drain(mut tasks: JoinSet<()>, deadline: Duration, listener: &'static str) {
    let all_ended = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(deadline, all_ended).await.is_err() {
        tracing::warn!(listener, connections = tasks.len(), "shutdown deadline reached; aborting open connections");
        tasks.shutdown().await;
    }
}
