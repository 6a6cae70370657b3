//! Presence: which devices hold a connection on this node, and what they subscribed to.
//!
//! A device bridge registers a session here when a device connects; the rest of the server
//! reaches the connection through its control channel: commands, new config versions, and
//! disconnect orders (session takeover, blocked or deleted device). A device with no session here
//! is not connected to this node.

use ferrocore_model::{DeviceConfig, NumId, Status};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

/// What the server asks of a connected session.
#[derive(Debug)]
pub enum SessionControl {
    /// Deliver a command; answer on `done` once the device has it (QoS 1: when it acknowledged;
    /// QoS 0: when written).
    Command { subfolder: String, data: Vec<u8>, done: oneshot::Sender<()> },
    /// A new config version to push if the device subscribed to its config topic.
    Config(DeviceConfig),
    /// Close the connection, recording why on the device when the reason is an error.
    Disconnect(Option<Status>),
}

/// The part of a session the rest of the server may touch.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Unique per connection, so a late cleanup of an old connection cannot remove a new one.
    pub id: u64,
    pub control: mpsc::Sender<SessionControl>,
    /// Set while the device is subscribed to `/devices/{id}/commands/#`.
    pub commands: Arc<AtomicBool>,
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
    pub fn attach(&self, device: NumId) -> (SessionHandle, mpsc::Receiver<SessionControl>) {
        let (control, rx) = mpsc::channel(CONTROL_QUEUE);
        let handle = SessionHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            control,
            commands: Arc::new(AtomicBool::new(false)),
        };
        let old = self.sessions.write().unwrap_or_else(|e| e.into_inner()).insert(device, handle.clone());
        if let Some(old) = old {
            let _ = old.control.try_send(SessionControl::Disconnect(None));
        }
        (handle, rx)
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

    /// The control channel of a connected device subscribed to its commands topic.
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
            // The session also closes when its control channel closes, so a full queue still ends it.
            let _ = s.control.try_send(SessionControl::Disconnect(reason));
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

    #[tokio::test]
    async fn a_new_connection_takes_over_and_old_cleanup_is_harmless() {
        let p = Presence::default();
        let (first, mut first_rx) = p.attach(NumId(1));
        let (second, _second_rx) = p.attach(NumId(1));
        assert!(matches!(first_rx.recv().await, Some(SessionControl::Disconnect(None))), "the older one is told to go");
        p.detach(NumId(1), first.id);
        assert!(p.is_connected(NumId(1)), "the old session's cleanup leaves the new one");
        assert!(p.command_channel(NumId(1)).is_none(), "not subscribed yet");
        second.commands.store(true, Ordering::Release);
        assert!(p.command_channel(NumId(1)).is_some());
        p.kick(NumId(1), None);
        assert!(!p.is_connected(NumId(1)));
    }
}
