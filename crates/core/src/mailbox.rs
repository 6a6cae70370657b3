//! A connection's presence entry and mailbox, in one small allocation: its presence id and start,
//! its commands flag, the bounded queue of control messages (commands, config pushes, detach
//! orders) and the order to close.
//!
//! Every connected device has one, and nearly all of them stay empty for the whole connection, so
//! an idle one must cost next to nothing: the queue, the close order and the senders waiting for
//! room live in a box allocated only when something is queued or ordered (and freed once the
//! queue is drained), not in a channel that preallocates its slots. Presence holds the entry; the
//! session holds the receiving end ([`Mailbox`]), and leaves its waker in the state whether its
//! task waits or it is parked without a task (see the MQTT bridge's parking). Presence forgetting
//! the entry ends the session.
//!
//! A device a gateway attached has an entry of its own ([`Attachment`]): its presence id, start
//! and commands flag, and the gateway's sender (every message names its device).

use crate::presence::{Disconnect, SessionControl};
use ferrocore_model::NumId;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// A connection's entry: presence's view of it and its mailbox.
pub(crate) struct Session {
    /// Unique per connection, so a late cleanup of an old one cannot remove a new one.
    id: u64,
    /// When presence took it, in nanoseconds since the Unix epoch (wall clock, so that nodes of a
    /// cluster can tell the newer of two connections of one device).
    since: u64,
    /// Set while `/devices/{id}/commands/#` is subscribed.
    commands: AtomicBool,
    /// Control messages the queue may hold.
    capacity: u32,
    state: Mutex<State>,
}

struct State {
    /// Woken (once) by whatever would wake the session: its task's, or the parking lot's.
    waker: Option<Waker>,
    /// What an idle connection does not need: allocated on the first message or order.
    busy: Option<Box<Busy>>,
    /// Presence still lists the session; once it forgets it, the session ends.
    listed: bool,
    /// The session is gone: nothing more can be delivered.
    receiver_gone: bool,
}

#[derive(Default)]
struct Busy {
    queue: VecDeque<SessionControl>,
    /// The order to close; the first one given is kept.
    ended: Option<Disconnect>,
    /// Senders waiting for room, all woken when a message is taken (waiters are rare, and one
    /// that gave up must not swallow the wake-up meant for another).
    room: Vec<Waker>,
}

impl Session {
    pub(crate) fn new(id: u64, since: u64, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            id,
            since,
            commands: AtomicBool::new(false),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            state: Mutex::new(State { waker: None, busy: None, listed: true, receiver_gone: false }),
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Presence no longer lists the session: it ends.
    pub(crate) fn forget(&self) {
        let mut state = self.lock();
        state.listed = false;
        wake_session(state);
    }
}

/// Wakes the session after a change to `state`, which this releases first.
fn wake_session(mut state: MutexGuard<'_, State>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(w) = waker {
        w.wake();
    }
}

impl State {
    /// Told to close, or forgotten by presence.
    fn is_ended(&self) -> bool {
        !self.listed || self.busy.as_ref().is_some_and(|b| b.ended.is_some())
    }

    fn ended(&self) -> Option<Disconnect> {
        match self.busy.as_ref().and_then(|b| b.ended.as_ref()) {
            Some(order) => Some(order.clone()),
            // Forgotten by presence counts as an order without a status.
            None if !self.listed => Some(Disconnect { status: None }),
            None => None,
        }
    }

    fn has_messages(&self) -> bool {
        self.busy.as_ref().is_some_and(|b| !b.queue.is_empty())
    }

    /// Takes the oldest control message, waking the senders waiting for room; frees the busy
    /// part once nothing is left in it.
    fn take(&mut self) -> Option<SessionControl> {
        let busy = self.busy.as_mut()?;
        let m = busy.queue.pop_front()?;
        for w in busy.room.drain(..) {
            w.wake();
        }
        if busy.queue.is_empty() && busy.ended.is_none() {
            self.busy = None;
        }
        Some(m)
    }
}

/// A device attached through a gateway's session: its own id, start and commands flag; its
/// messages go to the gateway's mailbox.
pub(crate) struct Attachment {
    id: u64,
    since: u64,
    commands: AtomicBool,
    gateway: NumId,
    control: ControlSender,
}

impl Attachment {
    pub(crate) fn new(id: u64, since: u64, gateway: NumId, control: ControlSender) -> Arc<Self> {
        Arc::new(Self { id, since, commands: AtomicBool::new(false), gateway, control })
    }
}

/// A presence entry: a connection, or a device attached through one.
#[derive(Clone)]
pub(crate) enum Entry {
    Session(Arc<Session>),
    Attachment(Arc<Attachment>),
}

impl Entry {
    pub(crate) fn id(&self) -> u64 {
        match self {
            Entry::Session(s) => s.id,
            Entry::Attachment(a) => a.id,
        }
    }

    pub(crate) fn since(&self) -> u64 {
        match self {
            Entry::Session(s) => s.since,
            Entry::Attachment(a) => a.since,
        }
    }

    /// The gateway, when the device is attached through one.
    pub(crate) fn via(&self) -> Option<NumId> {
        match self {
            Entry::Session(_) => None,
            Entry::Attachment(a) => Some(a.gateway),
        }
    }

    fn flag(&self) -> &AtomicBool {
        match self {
            Entry::Session(s) => &s.commands,
            Entry::Attachment(a) => &a.commands,
        }
    }

    /// True while the device's commands topic is subscribed.
    pub(crate) fn commands(&self) -> bool {
        self.flag().load(Ordering::Acquire)
    }

    /// Where its control messages go: its own mailbox, or its gateway's.
    pub(crate) fn control(&self) -> ControlSender {
        match self {
            Entry::Session(s) => ControlSender(s.clone()),
            Entry::Attachment(a) => a.control.clone(),
        }
    }
}

/// A device's commands flag, set by the session while the commands topic is subscribed (presence
/// reads it to decide whether a command can be delivered).
#[derive(Clone)]
pub struct CommandsFlag(pub(crate) Entry);

impl CommandsFlag {
    pub fn set(&self, subscribed: bool) {
        self.0.flag().store(subscribed, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.commands()
    }
}

impl std::fmt::Debug for CommandsFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CommandsFlag").field(&self.get()).finish()
    }
}

/// Why a message could not be queued; it comes back to the caller.
#[derive(Debug)]
pub enum SendError {
    /// The queue holds `capacity` messages.
    Full(SessionControl),
    /// The session is gone.
    Closed(SessionControl),
}

/// The sending side of a connection's mailbox.
#[derive(Clone)]
pub struct ControlSender(pub(crate) Arc<Session>);

impl std::fmt::Debug for ControlSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlSender")
    }
}

impl ControlSender {
    /// Queues a message if there is room.
    pub fn try_send(&self, message: SessionControl) -> Result<(), SendError> {
        let mut state = self.0.lock();
        Self::push(&mut state, self.0.capacity, message)?;
        wake_session(state);
        Ok(())
    }

    fn push(state: &mut State, capacity: u32, message: SessionControl) -> Result<(), SendError> {
        if state.receiver_gone {
            return Err(SendError::Closed(message));
        }
        let busy = state.busy.get_or_insert_with(Box::default);
        if busy.queue.len() >= capacity as usize {
            return Err(SendError::Full(message));
        }
        busy.queue.push_back(message);
        Ok(())
    }

    /// Queues a message, waiting for room; gives it back if the session is gone.
    pub async fn send(&self, message: SessionControl) -> Result<(), SessionControl> {
        let mut message = Some(message);
        std::future::poll_fn(|cx| {
            let Some(m) = message.take() else { return Poll::Ready(Ok(())) };
            let mut state = self.0.lock();
            match Self::push(&mut state, self.0.capacity, m) {
                Ok(()) => {
                    wake_session(state);
                    Poll::Ready(Ok(()))
                }
                Err(SendError::Closed(m)) => Poll::Ready(Err(m)),
                Err(SendError::Full(m)) => {
                    message = Some(m);
                    // Registered under the lock that saw the queue full, so room made after it
                    // wakes this task. Full means the busy part exists.
                    if let Some(busy) = state.busy.as_mut()
                        && !busy.room.iter().any(|w| w.will_wake(cx.waker()))
                    {
                        busy.room.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Orders the session to close; the first order is the one that counts.
    pub(crate) fn close(&self, status: Option<ferrocore_model::Status>) {
        let mut state = self.0.lock();
        let busy = state.busy.get_or_insert_with(Box::default);
        if busy.ended.is_some() {
            return;
        }
        busy.ended = Some(Disconnect { status });
        wake_session(state);
    }
}

/// What woke the session.
#[derive(Debug)]
pub enum Signal {
    /// A control message.
    Control(SessionControl),
    /// The session must close: ordered to, or forgotten by presence.
    Ended(Disconnect),
}

/// The receiving side, held by the session.
pub struct Mailbox(pub(crate) Arc<Session>);

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mailbox")
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let busy = {
            let mut state = self.0.lock();
            state.receiver_gone = true;
            state.busy.take()
        };
        // Dropped outside the lock: a command's answer channel wakes its caller.
        if let Some(busy) = busy {
            busy.room.into_iter().for_each(Waker::wake);
            drop(busy.queue);
        }
    }
}

impl Mailbox {
    /// The session's presence id.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The next thing for the session: a close order first, then (when `take_control`) the
    /// oldest control message. Forgotten by presence counts as an order without a status.
    pub async fn next(&mut self, take_control: bool) -> Signal {
        self.wait(|state| {
            if let Some(order) = state.ended() {
                return Some(Signal::Ended(order));
            }
            if take_control { state.take().map(Signal::Control) } else { None }
        })
        .await
    }

    /// Resolves with the order once the session is told to close (or is forgotten by presence).
    pub async fn ended(&mut self) -> Disconnect {
        self.wait(|state| state.ended()).await
    }

    /// The next control message, whatever the close order says; None once the queue is empty
    /// and presence forgot the session.
    pub async fn recv(&mut self) -> Option<SessionControl> {
        self.wait(|state| match state.take() {
            Some(m) => Some(Some(m)),
            None if !state.listed => Some(None),
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

    /// For a session parked without a task: true when there is something for it now (a message,
    /// a close order, forgotten by presence); otherwise `waker` is kept and woken once there is.
    pub fn watch(&self, waker: &Waker) -> bool {
        let mut state = self.0.lock();
        if state.has_messages() || state.is_ended() {
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
        self.0.lock().is_ended()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocore_model::{DeviceConfig, NumId};
    use std::time::Duration;

    fn mailbox(capacity: usize) -> (ControlSender, Mailbox) {
        let session = Session::new(1, 0, capacity);
        (ControlSender(session.clone()), Mailbox(session))
    }

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
        assert!(rx.0.lock().busy.is_none(), "a drained mailbox keeps nothing allocated");
        // Nothing queued: the session waits.
        assert!(tokio::time::timeout(Duration::from_millis(50), rx.next(true)).await.is_err());
        tx.try_send(config(3)).unwrap();
        assert_eq!(version(rx.next(true).await), 3);
    }

    #[tokio::test]
    async fn senders_waiting_for_room_get_in_as_the_session_takes_messages() {
        let (tx, mut rx) = mailbox(1);
        tx.try_send(config(1)).unwrap();
        let waiting: Vec<_> = (2..=3)
            .map(|v| {
                let tx = tx.clone();
                tokio::spawn(async move { tx.send(config(v)).await.is_ok() })
            })
            .collect();
        // One that gives up must not keep the others waiting.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), tx.send(config(9))).await;
        assert!(gave_up.is_err(), "no room yet");
        assert!(waiting.iter().all(|w| !w.is_finished()), "no room yet");
        let mut seen = vec![version(rx.next(true).await)];
        for _ in 0..2 {
            seen.push(version(rx.next(true).await));
        }
        for w in waiting {
            assert!(w.await.unwrap());
        }
        seen.sort();
        assert_eq!(seen, [1, 2, 3]);
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
        assert!(rx.is_ended(), "draining keeps the order");
    }

    #[tokio::test]
    async fn being_forgotten_ends_the_session_and_wakes_a_waiting_one() {
        let (tx, mut rx) = mailbox(4);
        let session = tx.0.clone();
        let waiting =
            tokio::spawn(async move { matches!(rx.next(true).await, Signal::Ended(Disconnect { status: None })) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        session.forget();
        assert!(tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("woken").unwrap());
    }

    /// A parked session's waker: counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_parked_session_is_woken_by_a_message_a_close_order_and_being_forgotten() {
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
        // Forgotten; an unwatched session is not woken.
        let (tx, rx) = mailbox(4);
        let count = Arc::new(Count(Default::default()));
        assert!(!rx.watch(&Waker::from(count.clone())));
        rx.unwatch();
        tx.0.forget();
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

    /// What every connected device costs here: one allocation of mimalloc's 80-byte class.
    #[test]
    fn an_idle_session_is_one_small_allocation() {
        let size = std::mem::size_of::<Session>() + 2 * std::mem::size_of::<usize>();
        assert!(size <= 80, "{size} bytes with the Arc's counts");
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }
}
