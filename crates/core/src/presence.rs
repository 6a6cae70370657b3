//! Presence: which devices hold a connection on this node, and what they subscribed to.
//!
//! The MQTT bridge registers a session here when a device connects and subscribes; commands and
//! config pushes find the device through it. A device with no session here is not connected.

use ferrocore_model::NumId;
use std::collections::HashMap;
use std::sync::RwLock;
use tokio::sync::{mpsc, oneshot};

/// A command for a connected device. The session answers on `done` once the device has it
/// (QoS 1: when it acknowledged; QoS 0: when written).
#[derive(Debug)]
pub struct Command {
    pub subfolder: String,
    pub data: Vec<u8>,
    pub done: oneshot::Sender<()>,
}

/// What a connected session offers the rest of the server.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Set while the device is subscribed to `/devices/{id}/commands/#`.
    pub commands: Option<mpsc::Sender<Command>>,
}

#[derive(Debug, Default)]
pub struct Presence {
    sessions: RwLock<HashMap<NumId, SessionHandle>>,
}

impl Presence {
    /// Registers (or replaces) the session of a device.
    pub fn attach(&self, device: NumId, session: SessionHandle) {
        self.sessions.write().unwrap_or_else(|e| e.into_inner()).insert(device, session);
    }

    pub fn detach(&self, device: NumId) {
        self.sessions.write().unwrap_or_else(|e| e.into_inner()).remove(&device);
    }

    /// The command channel of a connected, subscribed device.
    pub fn command_channel(&self, device: NumId) -> Option<mpsc::Sender<Command>> {
        self.sessions.read().unwrap_or_else(|e| e.into_inner()).get(&device).and_then(|s| s.commands.clone())
    }
}
