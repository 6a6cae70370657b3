//! A session's mailbox: the bounded queue of control messages (commands, config pushes, detach
//! orders) and the order to close, in one small allocation.
//!
//! Every connected device has one, and nearly all of them stay empty for the whole connection, so
//! an idle mailbox must cost next to nothing: the queue allocates only when a message is queued
//! (a tokio mpsc channel preallocates a block of 32 slots, ~2 KB here), and the close order sits
//! beside it instead of in a watch channel of its own. The single receiver (the session) leaves
//! its waker in the state, whether its task waits or it is parked without a task (see the MQTT
//! bridge's parking); senders waiting for room wait on a `Notify`.

use crate::presence::{Disconnect, SessionControl};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use tokio::sync::Notify;

struct State {
    queue: VecDeque<SessionControl>,
    /// The order to close; the first one given is kept.
    ended: Option<Disconnect>,
    /// Live senders; none left means presence forgot the session.
    senders: usize,
    /// The session is gone: nothing more can be delivered.
    receiver_gone: bool,
    /// Woken (once) by whatever would wake the session: its task's, or the parking lot's.
    waker: Option<Waker>,
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes senders waiting for room.
    room: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the session after a change to `state`, which this releases first.
    fn wake_session(&self, mut state: MutexGuard<'_, State>) {
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A new mailbox holding up to `capacity` control messages.
pub(crate) fn mailbox(capacity: usize) -> (ControlSender, Mailbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { queue: VecDeque::new(), ended: None, senders: 1, receiver_gone: false, waker: None }),
        capacity,
        room: Notify::new(),
    });
    (ControlSender(shared.clone()), Mailbox(shared))
}

/// Why a message could not be queued; it comes back to the caller.
#[derive(Debug)]
pub enum SendError {
    /// The queue holds `capacity` messages.
    Full(SessionControl),
    /// The session is gone.
    Closed(SessionControl),
}

/// The sending side, held by presence (and clones of it by whoever sends a command).
pub struct ControlSender(Arc<Shared>);

impl Clone for ControlSender {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(self.0.clone())
    }
}

impl Drop for ControlSender {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        if state.senders == 0 {
            self.0.wake_session(state);
        }
    }
}

impl std::fmt::Debug for ControlSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlSender")
    }
}

impl ControlSender {
    /// Queues a message if there is room.
    pub fn try_send(&self, message: SessionControl) -> Result<(), SendError> {
        let mut state = self.0.lock();
        if state.receiver_gone {
            return Err(SendError::Closed(message));
        }
        if state.queue.len() >= self.0.capacity {
            return Err(SendError::Full(message));
        }
        state.queue.push_back(message);
        self.0.wake_session(state);
        Ok(())
    }

    /// Queues a message, waiting for room; gives it back if the session is gone.
    pub async fn send(&self, mut message: SessionControl) -> Result<(), SessionControl> {
        loop {
            // Registered before the check, so room made in between is not missed.
            let room = self.0.room.notified();
            match self.try_send(message) {
                Ok(()) => return Ok(()),
                Err(SendError::Closed(m)) => return Err(m),
                Err(SendError::Full(m)) => message = m,
            }
            room.await;
        }
    }

    /// Orders the session to close; the first order is the one that counts.
    pub(crate) fn close(&self, status: Option<ferrocore_model::Status>) {
        let mut state = self.0.lock();
        if state.ended.is_some() {
            return;
        }
        state.ended = Some(Disconnect { status });
        self.0.wake_session(state);
    }
}

/// What woke the session.
#[derive(Debug)]
pub enum Signal {
    /// A control message.
    Control(SessionControl),
    /// The session must close: ordered to, or forgotten by presence (no sender left).
    Ended(Disconnect),
}

/// The receiving side, held by the session.
pub struct Mailbox(Arc<Shared>);

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mailbox")
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.0.lock();
            state.receiver_gone = true;
            std::mem::take(&mut state.queue)
        };
        // Dropped outside the lock: a command's answer channel wakes its caller.
        drop(queued);
        self.0.room.notify_waiters();
    }
}

impl Mailbox {
    /// The next thing for the session: a close order first, then (when `take_control`) the
    /// oldest control message. Closed by presence counts as an order without a status.
    pub async fn next(&mut self, take_control: bool) -> Signal {
        self.wait(|state| {
            if let Some(order) = &state.ended {
                return Some(Signal::Ended(order.clone()));
            }
            if state.senders == 0 {
                return Some(Signal::Ended(Disconnect { status: None }));
            }
            if take_control { self.take(state).map(Signal::Control) } else { None }
        })
        .await
    }

    /// Resolves with the order once the session is told to close (or is forgotten by presence).
    pub async fn ended(&mut self) -> Disconnect {
        match self.next(false).await {
            Signal::Ended(order) => order,
            Signal::Control(_) => unreachable!("control messages are not taken"),
        }
    }

    /// The next control message, whatever the close order says; None once the queue is empty
    /// and no sender is left.
    pub async fn recv(&mut self) -> Option<SessionControl> {
        self.wait(|state| match self.take(state) {
            Some(m) => Some(Some(m)),
            None if state.senders == 0 => Some(None),
            None => None,
        })
        .await
    }

    /// Waits until `ready` finds what it looks for in the state. The waker is left under the
    /// same lock as the look, so a change made after it wakes the task.
    async fn wait<T>(&self, mut ready: impl FnMut(&mut State) -> Option<T>) -> T {
        std::future::poll_fn(|cx| {
            let mut state = self.0.lock();
            match ready(&mut state) {
                Some(found) => Poll::Ready(found),
                None => {
                    match &mut state.waker {
                        Some(w) => w.clone_from(cx.waker()),
                        none => *none = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Takes the oldest control message, making room for a waiting sender.
    fn take(&self, state: &mut State) -> Option<SessionControl> {
        let m = state.queue.pop_front()?;
        self.0.room.notify_one();
        Some(m)
    }

    /// For a session parked without a task: true when there is something for it now (a message,
    /// a close order, no sender left); otherwise `waker` is kept and woken once there is.
    pub fn watch(&self, waker: &Waker) -> bool {
        let mut state = self.0.lock();
        if !state.queue.is_empty() || state.ended.is_some() || state.senders == 0 {
            return true;
        }
        state.waker = Some(waker.clone());
        false
    }

    /// Forgets the waker `watch` kept: the session runs again.
    pub fn unwatch(&self) {
        self.0.lock().waker = None;
    }

    /// True once the session was told to close, or forgotten.
    pub fn is_ended(&self) -> bool {
        let state = self.0.lock();
        state.ended.is_some() || state.senders == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocore_model::{DeviceConfig, NumId};
    use std::time::Duration;

    fn config(v: i64) -> SessionControl {
        SessionControl::Config { device: NumId(1), config: DeviceConfig { version: v, ..Default::default() } }
    }

    fn version(s: Signal) -> i64 {
        match s {
            Signal::Control(SessionControl::Config { config, .. }) => config.version,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn messages_arrive_in_order_and_the_bound_holds() {
        let (tx, mut rx) = mailbox(2);
        tx.try_send(config(1)).unwrap();
        tx.try_send(config(2)).unwrap();
        assert!(matches!(tx.try_send(config(3)), Err(SendError::Full(_))));
        assert_eq!(version(rx.next(true).await), 1);
        assert_eq!(version(rx.next(true).await), 2);
        // Nothing queued: the session waits.
        assert!(tokio::time::timeout(Duration::from_millis(50), rx.next(true)).await.is_err());
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_gets_in_when_the_session_takes_one() {
        let (tx, mut rx) = mailbox(1);
        tx.try_send(config(1)).unwrap();
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(config(2)).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no room yet");
        assert_eq!(version(rx.next(true).await), 1);
        assert!(waiting.await.unwrap());
        assert_eq!(version(rx.next(true).await), 2);
    }

    #[tokio::test]
    async fn a_close_order_comes_first_and_the_first_one_counts() {
        let (tx, mut rx) = mailbox(4);
        tx.try_send(config(1)).unwrap();
        let status = ferrocore_model::Status { code: 9, message: "blocked".into() };
        tx.close(Some(status.clone()));
        tx.close(None);
        assert!(rx.is_ended());
        match rx.next(true).await {
            Signal::Ended(order) => assert_eq!(order.status, Some(status)),
            other => panic!("{other:?}"),
        }
        // The queued message is still there for whoever drains it.
        assert!(rx.recv().await.is_some());
    }

    #[tokio::test]
    async fn the_last_sender_gone_ends_the_session_and_a_waiting_one_is_woken() {
        let (tx, mut rx) = mailbox(4);
        let session =
            tokio::spawn(async move { matches!(rx.next(true).await, Signal::Ended(Disconnect { status: None })) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        assert!(tokio::time::timeout(Duration::from_secs(1), session).await.expect("woken").unwrap());
    }

    /// A parked session's waker: counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_parked_session_is_woken_by_a_message_a_close_order_and_the_last_sender_gone() {
        let woken = |count: &Arc<Count>| count.0.load(std::sync::atomic::Ordering::SeqCst);
        // A message.
        let (tx, rx) = mailbox(4);
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        assert!(!rx.watch(&waker), "nothing there yet");
        tx.try_send(config(1)).unwrap();
        assert_eq!(woken(&count), 1);
        assert!(rx.watch(&waker), "the message is there");
        // A close order, once.
        let (tx, rx) = mailbox(4);
        let count = Arc::new(Count(Default::default()));
        assert!(!rx.watch(&Waker::from(count.clone())));
        tx.close(None);
        tx.close(None);
        assert_eq!(woken(&count), 1);
        // The last sender gone; an unwatched session is not woken.
        let (tx, rx) = mailbox(4);
        let count = Arc::new(Count(Default::default()));
        assert!(!rx.watch(&Waker::from(count.clone())));
        let second = tx.clone();
        drop(tx);
        assert_eq!(woken(&count), 0, "a sender is left");
        rx.unwatch();
        drop(second);
        assert_eq!(woken(&count), 0, "no longer watched");
        assert!(rx.watch(&Waker::from(count.clone())), "ended");
    }

    #[tokio::test]
    async fn a_gone_session_refuses_messages_and_frees_waiting_senders() {
        let (tx, rx) = mailbox(1);
        tx.try_send(config(1)).unwrap();
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(config(2)).await.is_err() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert!(tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("woken").unwrap());
        assert!(matches!(tx.try_send(config(3)), Err(SendError::Closed(_))));
    }
}
