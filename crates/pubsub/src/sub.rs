//! A loaded subscription: its [`State`] under a mutex, and the two tasks that drive it — the
//! fetcher, which reads the topic into the state while there is room, and the timer, which ends
//! leases and back-offs when they are due.

use crate::subscription::{State, Wake};
use ferrocore_core::topics::{ReadFrom, TopicSource};
use ferrocore_model::pubsub::SubscriptionName;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How many messages, and bytes, one read of the topic asks for.
const FETCH_MESSAGES: usize = 2_000;
const FETCH_BYTES: usize = 8 << 20;
/// How long one read waits for new messages before it is started again.
const FETCH_WAIT: Duration = Duration::from_secs(20);

pub(crate) struct Sub {
    pub name: SubscriptionName,
    state: Mutex<State>,
    /// Consumers (streams, pulls) wait here for deliverable messages.
    pub deliverable: Notify,
    /// The fetcher waits here for room; seek, delete and settings changes interrupt its read.
    fetcher: Notify,
    reset: Notify,
    /// The timer task waits here when an earlier deadline appears.
    timers: Notify,
}

impl Sub {
    pub fn new(name: SubscriptionName, state: State) -> Arc<Sub> {
        Arc::new(Sub {
            name,
            state: Mutex::new(state),
            deliverable: Notify::new(),
            fetcher: Notify::new(),
            reset: Notify::new(),
            timers: Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the tasks and consumers what an operation changed. Call without the lock held.
    pub fn wake(&self, wake: Wake) {
        if wake.consumers {
            self.deliverable.notify_waiters();
        }
        if wake.fetcher {
            self.fetcher.notify_one();
        }
        if wake.timers {
            self.timers.notify_one();
        }
    }

    /// Interrupts a read in progress (seek, delete, new topic).
    pub fn reset(&self) {
        self.reset.notify_one();
        self.fetcher.notify_one();
        self.timers.notify_one();
        self.deliverable.notify_waiters();
    }

    /// Starts the fetcher and the timer; both end when the subscription is deleted or moved, or at
    /// shutdown.
    pub fn spawn(self: &Arc<Sub>, source: Arc<dyn TopicSource>, shutdown: watch::Receiver<bool>) {
        tokio::spawn(fetch_loop(self.clone(), source, shutdown.clone()));
        tokio::spawn(timer_loop(self.clone(), shutdown));
    }
}

async fn fetch_loop(sub: Arc<Sub>, source: Arc<dyn TopicSource>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() || shutdown.has_changed().is_err() {
            return;
        }
        let room = sub.fetcher.notified();
        tokio::pin!(room);
        room.as_mut().enable();
        let job = {
            let s = sub.lock();
            if s.deleted || s.moved {
                return;
            }
            match (&s.settings.topic, s.has_room()) {
                (Some(topic), true) => Some((topic.clone(), s.read_next, s.epoch_of_reads)),
                _ => None,
            }
        };
        let Some((topic, from, epoch_of_reads)) = job else {
            tokio::select! {
                _ = &mut room => {}
                _ = shutdown.changed() => {}
            }
            continue;
        };
        let read = tokio::select! {
            r = source.read(topic.as_str(), ReadFrom::Offset(from), FETCH_MESSAGES, FETCH_BYTES, Some(FETCH_WAIT)) => r,
            _ = sub.reset.notified() => continue,
            _ = shutdown.changed() => continue,
        };
        match read {
            Ok(batch) => {
                let wake = sub.lock().add_fetched(batch, epoch_of_reads);
                sub.wake(wake);
            }
            Err(e) => {
                tracing::warn!(subscription = %sub.name, error = ?e, "reading the topic failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

async fn timer_loop(sub: Arc<Sub>, mut shutdown: watch::Receiver<bool>) {
    let far = Duration::from_secs(3600);
    loop {
        if *shutdown.borrow() || shutdown.has_changed().is_err() {
            return;
        }
        let changed = sub.timers.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let next = {
            let s = sub.lock();
            if s.deleted || s.moved {
                return;
            }
            s.next_timer()
        };
        let at = next.unwrap_or_else(|| Instant::now() + far);
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {
                let wake = sub.lock().expire(Instant::now());
                sub.wake(wake);
            }
            _ = &mut changed => {}
            _ = shutdown.changed() => {}
        }
    }
}
