//! One forwarding node per sink, cluster-wide: the sinks of nodes that share one topic log.
//!
//! Every node of a cluster is given the same `--sink` entries and reads the same log, so each
//! sink must be forwarded by one node at a time (two would send everything twice and fight over
//! the cursor), and by another within seconds when that node dies or loses the database. Each
//! node runs [`LedSinks`]: per sink, a task that tries to take the sink's lease, forwards the sink
//! with [`Forwarders`] while it holds it, checks the lease every few seconds, and stops forwarding
//! the moment it cannot confirm it still holds it.
//!
//! Leases come through the [`Leases`] seam so this crate stays free of a consensus of its own;
//! [`PgLeases`] takes them as PostgreSQL advisory locks on the shared store, which the server frees
//! when the holder's connection ends (see [`ferrocore_store::postgres::lease`]). Cursors are the
//! store's, under the sink's plain name, so whichever node takes over resumes where the last
//! holder's confirmed deliveries ended: at-least-once, with duplicates only around a takeover.

use crate::forward::{Forwarders, Settings};
use crate::spec::SinkSpec;
use async_trait::async_trait;
use ferrocore_core::clock::Clock;
use ferrocore_core::sink::{SinkReport, SinkState, SinkStatus};
use ferrocore_core::topics::TopicSource;
use ferrocore_store::SinkStore;
use ferrocore_store::postgres::lease::AdvisoryLease;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Takes named, cluster-wide, exclusive leases.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// The lease `name` if no one holds it: `Ok(None)` when another holder has it, `Err` (for the
    /// log) when the lease service cannot be reached. Never waits for the holder to let go.
    async fn try_acquire(&self, name: &str) -> Result<Option<Box<dyn Lease>>, String>;
}

/// A held lease. Dropping it gives it up (possibly only once the lease service notices).
#[async_trait]
pub trait Lease: Send + 'static {
    /// Whether it is still held; `false` means another may hold it now.
    async fn alive(&mut self) -> bool;
    /// Gives it up now.
    async fn release(self: Box<Self>);
}

/// Leases as PostgreSQL advisory locks on the database at `url`, named `{scope}/{name}`: the scope
/// keeps two clusters (or a cluster and the tests) on one database apart, and sinks apart from any
/// other use of leases.
pub struct PgLeases {
    url: String,
    scope: String,
}

impl PgLeases {
    /// `url` is the `--store` URL (it is never logged); `scope` for example
    /// `ferrocore-sink/{cluster prefix}`.
    pub fn new(url: impl Into<String>, scope: impl Into<String>) -> PgLeases {
        PgLeases { url: url.into(), scope: scope.into() }
    }
}

impl std::fmt::Debug for PgLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry the database password.
        f.debug_struct("PgLeases").field("scope", &self.scope).finish_non_exhaustive()
    }
}

#[async_trait]
impl Leases for PgLeases {
    async fn try_acquire(&self, name: &str) -> Result<Option<Box<dyn Lease>>, String> {
        let full = format!("{}/{name}", self.scope);
        match AdvisoryLease::try_acquire(&self.url, &full).await {
            Ok(Some(lease)) => Ok(Some(Box::new(lease))),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[async_trait]
impl Lease for AdvisoryLease {
    async fn alive(&mut self) -> bool {
        AdvisoryLease::alive(self).await
    }

    async fn release(self: Box<Self>) {
        AdvisoryLease::release(*self).await
    }
}

/// The configured sinks, each forwarded by this node only while it holds the sink's lease.
/// Dropping it does not stop the tasks: call [`LedSinks::close`].
pub struct LedSinks {
    sinks: Vec<Arc<Led>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// One sink and, while this node forwards it, its forwarders.
struct Led {
    spec: SinkSpec,
    running: Mutex<Option<Forwarders>>,
}

/// What every sink's task needs besides its own sink.
#[derive(Clone)]
struct Deps {
    source: Arc<dyn TopicSource>,
    store: Arc<dyn SinkStore>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    leases: Arc<dyn Leases>,
    check_every: Duration,
}

impl LedSinks {
    /// Starts one task per sink that takes the sink's lease (named by the sink's name) when it is
    /// free, forwards the sink while the lease holds, and tries again every `check_every` when it
    /// is held elsewhere or lost. Returns once every sink has had its first try, so a node alone
    /// forwards all its sinks when this returns (unless the lease service is unreachable).
    pub async fn start(
        specs: Vec<SinkSpec>,
        source: Arc<dyn TopicSource>,
        store: Arc<dyn SinkStore>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        leases: Arc<dyn Leases>,
        check_every: Duration,
    ) -> LedSinks {
        let deps = Deps { source, store, clock, settings, leases, check_every };
        let stop = watch::Sender::new(false);
        let mut sinks = Vec::with_capacity(specs.len());
        let mut tasks = Vec::with_capacity(specs.len());
        let mut first_tries = Vec::with_capacity(specs.len());
        for spec in specs {
            let led = Arc::new(Led { spec, running: Mutex::new(None) });
            let (tried, first_try) = oneshot::channel();
            tasks.push(tokio::spawn(lead(led.clone(), deps.clone(), stop.subscribe(), tried)));
            sinks.push(led);
            first_tries.push(first_try);
        }
        for first_try in first_tries {
            // An error means the task ended early (stopped); nothing to wait for then.
            let _ = first_try.await;
        }
        LedSinks { sinks, stop, tasks: Mutex::new(tasks) }
    }

    /// Stops trying to take leases, closes the forwarders of the sinks this node forwards (batches
    /// in flight get [`Settings::shutdown_grace`]) and then gives their leases up.
    pub async fn close(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(error = %e, "a sink's leadership task panicked");
            }
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

/// One sink's life on this node: wait for the lease, forward while it holds, start over when lost.
async fn lead(led: Arc<Led>, deps: Deps, mut stop: watch::Receiver<bool>, tried: oneshot::Sender<()>) {
    let name = led.spec.name.clone();
    let mut tried = Some(tried);
    // Log transitions only: a standby node tries every few seconds for as long as it runs.
    let mut unreachable = false;
    let mut said_standby = false;
    loop {
        // Wait for the lease.
        let lease = loop {
            let attempt = tokio::select! {
                r = deps.leases.try_acquire(&name) => r,
                _ = stopping(&mut stop) => return,
            };
            match attempt {
                Ok(Some(lease)) => break lease,
                Ok(None) => {
                    if !said_standby {
                        tracing::info!(sink = %name, "another node forwards sink {name}; this node stands by");
                        said_standby = true;
                    }
                    unreachable = false;
                }
                Err(e) => {
                    if !unreachable {
                        tracing::warn!(sink = %name, error = %e, "cannot take sink {name}'s lease; will try again");
                        unreachable = true;
                    }
                }
            }
            if let Some(t) = tried.take() {
                let _ = t.send(());
            }
            if !pause(&mut stop, deps.check_every).await {
                return;
            }
        };
        unreachable = false;
        said_standby = false;

        let forwarders = match Forwarders::start(
            vec![led.spec.clone()],
            deps.source.clone(),
            deps.store.clone(),
            deps.clock.clone(),
            deps.settings.clone(),
        )
        .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "holding sink {name}'s lease but cannot start forwarding it; giving the lease up and trying again");
                lease.release().await;
                if let Some(t) = tried.take() {
                    let _ = t.send(());
                }
                if !pause(&mut stop, deps.check_every).await {
                    return;
                }
                continue;
            }
        };
        *led.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(forwarders.clone());
        tracing::info!(sink = %name, "this node forwards sink {name}");
        if let Some(t) = tried.take() {
            let _ = t.send(());
        }

        // Hold it: check the lease, stop forwarding at the first doubt.
        let mut lease = lease;
        loop {
            if !pause(&mut stop, deps.check_every).await {
                // Shutting down: the forwarders stay in place so the report shows them stopped.
                forwarders.close().await;
                lease.release().await;
                return;
            }
            if !lease.alive().await {
                break;
            }
        }
        forwarders.close().await;
        led.running.lock().unwrap_or_else(PoisonError::into_inner).take();
        tracing::warn!(sink = %name, "could not confirm sink {name}'s lease (its database session ended or did not answer); stopped forwarding it, another node may take over");
        // Its session is dead or unreachable: dropping the connection is all there is to do.
        drop(lease);
        if !pause(&mut stop, deps.check_every).await {
            return;
        }
    }
}

/// Sleeps `d`, or returns `false` at once when stopping.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stopping(stop) => return false,
    }
    !*stop.borrow()
}

/// Resolves once [`LedSinks::close`] was called; never when the [`LedSinks`] was dropped without
/// it (like [`Forwarders`], the tasks then run on).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[async_trait]
impl SinkReport for LedSinks {
    async fn statuses(&self) -> Vec<SinkStatus> {
        let mut out = Vec::with_capacity(self.sinks.len());
        for led in &self.sinks {
            let running = led.running.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if let Some(f) = running {
                out.extend(f.statuses().await);
                continue;
            }
            out.push(SinkStatus {
                name: led.spec.name.clone(),
                topics: led.spec.pattern.to_string(),
                url: led.spec.redacted.clone(),
                state: if self.stopped() { SinkState::Stopped } else { SinkState::Standby },
                last_error: None,
                cursor: Vec::new(),
                lag_messages: 0,
                lag_seconds: 0.0,
                forwarded_messages: 0,
                lost_messages: 0,
                rejected_messages: 0,
            });
        }
        out
    }
}
