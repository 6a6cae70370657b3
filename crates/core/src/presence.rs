//! Presence: which devices hold a connection on this node, and what they subscribed to.
//!
//! A device bridge registers a session here when a device connects; the rest of the server
//! reaches the connection through its control queue (commands, new config versions) and ends it
//! through a separate disconnect signal (session takeover, blocked or deleted device, a control
//! queue the session no longer drains). The signal is a value, not a queued message, so it is
//! never lost however full the queue is. A device with no session here is not connected to this
//! node.

use ferrocore_model::{DeviceConfig, NumId, Status};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

/// What the server asks of a connected session.
#[derive(Debug)]
pub enum SessionControl {
    /// Deliver a command; answer on `done` once the device has it (QoS 1: when it acknowledged;
    /// QoS 0: when queued for writing).
    Command { subfolder: String, data: Vec<u8>, done: oneshot::Sender<()> },
    /// A new config version to push if the device subscribed to its config topic.
    Config(DeviceConfig),
}

/// An order to close a session, with the status to record on the device, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub status: Option<Status>,
}

/// The part of a session the rest of the server may touch.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Unique per connection, so a late cleanup of an old connection cannot remove a new one.
    pub id: u64,
    control: mpsc::Sender<SessionControl>,
    /// Set while the device is subscribed to `/devices/{id}/commands/#`.
    pub commands: Arc<AtomicBool>,
    end: watch::Sender<Option<Disconnect>>,
}

impl SessionHandle {
    /// Tells the session to close; the first order is the one that counts.
    pub fn disconnect(&self, status: Option<Status>) {
        self.end.send_if_modified(|order| {
            if order.is_some() {
                return false;
            }
            *order = Some(Disconnect { status });
            true
        });
    }
}

/// What the session itself holds: the receiving ends. It keeps no sender of its own, so its
/// queue closes once presence forgets it.
#[derive(Debug)]
pub struct SessionLink {
    pub id: u64,
    pub control: mpsc::Receiver<SessionControl>,
    pub commands: Arc<AtomicBool>,
    pub ended: watch::Receiver<Option<Disconnect>>,
}

impl SessionLink {
    /// Resolves with the order once the session is told to close (or is forgotten by presence).
    pub async fn ended(&mut self) -> Disconnect {
        match self.ended.wait_for(Option::is_some).await {
            Ok(order) => order.clone().unwrap_or(Disconnect { status: None }),
            Err(_) => Disconnect { status: None },
        }
    }
}

#[derive(Debug, Default)]
pub struct Presence {
    sessions: RwLock<HashMap<NumId, SessionHandle>>,
    next_id: AtomicU64,
}

/// Control messages a session may have queued; beyond this the sender waits or gives up.
pub const CONTROL_QUEUE: usize = 32;

impl Presence {
    /// Creates a session for a device and registers it, replacing (and disconnecting) any older
    /// connection of the same device: one connection per device.
    pub fn attach(&self, device: NumId) -> (SessionHandle, SessionLink) {
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (end, ended) = watch::channel(None);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let commands = Arc::new(AtomicBool::new(false));
        let handle = SessionHandle { id, control, commands: commands.clone(), end };
        let old = self.sessions.write().unwrap_or_else(|e| e.into_inner()).insert(device, handle.clone());
        if let Some(old) = old {
            old.disconnect(None);
        }
        (handle, SessionLink { id, control: control_rx, commands, ended })
    }

    /// Removes the session `id` of a device, unless a newer connection already replaced it.
    pub fn detach(&self, device: NumId, id: u64) {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        if sessions.get(&device).is_some_and(|s| s.id == id) {
            sessions.remove(&device);
        }
    }

    fn get(&self, device: NumId) -> Option<SessionHandle> {
        self.sessions.read().unwrap_or_else(|e| e.into_inner()).get(&device).cloned()
    }

    /// The control queue of a connected device subscribed to its commands topic.
    pub fn command_channel(&self, device: NumId) -> Option<mpsc::Sender<SessionControl>> {
        self.get(device).filter(|s| s.commands.load(Ordering::Acquire)).map(|s| s.control)
    }

    /// Tells a connected device's session about a new config version.
    pub fn push_config(&self, device: NumId, config: DeviceConfig) {
        if let Some(s) = self.get(device)
            && s.control.try_send(SessionControl::Config(config)).is_err()
        {
            // A session that cannot keep up with its control queue is stuck; drop it so the
            // device reconnects and receives the latest config on subscribe.
            tracing::warn!(device = %device, "config push queue full; disconnecting the device");
            self.kick(device, None);
        }
    }

    /// Disconnects a device if it is connected here.
    pub fn kick(&self, device: NumId, reason: Option<Status>) {
        if let Some(s) = self.sessions.write().unwrap_or_else(|e| e.into_inner()).remove(&device) {
            s.disconnect(reason);
        }
    }

    pub fn is_connected(&self, device: NumId) -> bool {
        self.get(device).is_some()
    }

    /// Devices connected to this node.
    pub fn len(&self) -> usize {
        self.sessions.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_new_connection_takes_over_and_old_cleanup_is_harmless() {
        let p = Presence::default();
        let (first, mut first_link) = p.attach(NumId(1));
        let (second, _second_link) = p.attach(NumId(1));
        assert_eq!(first_link.ended().await, Disconnect { status: None }, "the older one is told to go");
        p.detach(NumId(1), first.id);
        assert!(p.is_connected(NumId(1)), "the old session's cleanup leaves the new one");
        assert!(p.command_channel(NumId(1)).is_none(), "not subscribed yet");
        second.commands.store(true, Ordering::Release);
        assert!(p.command_channel(NumId(1)).is_some());
        p.kick(NumId(1), None);
        assert!(!p.is_connected(NumId(1)));
    }

    /// Finding 4 of issue 10: with the control queue full, a kick used to be dropped by
    /// `try_send`, and the session, holding its own sender, never saw its queue close.
    #[tokio::test]
    async fn a_kick_reaches_a_session_whose_control_queue_is_full() {
        let p = Presence::default();
        let (handle, mut link) = p.attach(NumId(7));
        for v in 0..CONTROL_QUEUE {
            let config = DeviceConfig { version: v as i64, ..Default::default() };
            handle.control.try_send(SessionControl::Config(config)).expect("room in the queue");
        }
        assert!(handle.control.try_send(SessionControl::Config(DeviceConfig::default())).is_err(), "full");
        let blocked = Status { code: 9, message: "blocked".into() };
        p.kick(NumId(7), Some(blocked.clone()));
        let order = tokio::time::timeout(Duration::from_secs(1), link.ended()).await.expect("the order arrives");
        assert_eq!(order, Disconnect { status: Some(blocked) });
        drop(handle);
        // Presence forgot the session, so the queue closes once it is drained.
        for _ in 0..CONTROL_QUEUE {
            assert!(link.control.recv().await.is_some());
        }
        assert!(link.control.recv().await.is_none(), "no sender is left once presence let go");
    }

    /// A config push that finds the queue full ends the session instead of being lost.
    #[tokio::test]
    async fn a_full_queue_on_config_push_closes_the_session() {
        let p = Presence::default();
        let (_handle, mut link) = p.attach(NumId(8));
        for v in 0..=CONTROL_QUEUE as i64 {
            p.push_config(NumId(8), DeviceConfig { version: v, ..Default::default() });
        }
        let order = tokio::time::timeout(Duration::from_secs(1), link.ended()).await.expect("closed");
        assert_eq!(order.status, None);
        assert!(!p.is_connected(NumId(8)));
    }
}
