//! The other nodes of a cluster, as the core sees them: what it tells them and what it asks of
//! them. A single process has none; `ferrocore-cluster` implements [`Peers`] over NATS.
//!
//! Presence stays per node (a device's connection lives in one process); this seam carries what
//! must reach the node holding a device wherever the API call landed: a session takeover, the end
//! of a blocked, deleted or re-keyed device's connection, a new config to push, a command and its
//! acknowledgement, and the invalidation of a registry another node cached.

use crate::presence::Reason;
use ferrocore_model::{NumId, RegistryName};
use std::time::{Duration, SystemTime};

/// What a command sent to the other nodes came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCommand {
    /// A node held the device, subscribed, and the device took the command.
    Delivered,
    /// Every node that answered said it does not hold the device subscribed to its commands.
    NotHeld,
    /// The node holding the device did not see it acknowledge in time.
    Deadline,
    /// The cluster's bus cannot be reached now.
    Unavailable,
}

#[async_trait::async_trait]
pub trait Peers: Send + Sync + 'static {
    /// A device connected to this node at `since`: any other node holding an older connection
    /// of it ends that session.
    fn connected(&self, device: NumId, since: SystemTime);
    /// The device's presence must end everywhere (blocked, deleted, credentials changed).
    fn kick(&self, device: NumId, reason: Reason);
    /// The device was unbound from `gateway`: the node where that gateway carries it detaches it.
    fn unbound(&self, device: NumId, gateway: NumId);
    /// The device has a new config version: the node holding it pushes it.
    fn config_changed(&self, device: NumId);
    /// A registry changed or went: nodes drop their cached copy (and end the sessions of its
    /// devices when its MQTT bridge is now disabled). Returns once they did, or after a bounded
    /// wait for a node that does not answer.
    async fn registry_changed(&self, name: &RegistryName);
    /// Delivers a command to the device on whichever other node holds it, waiting up to `wait`
    /// for its acknowledgement.
    async fn send_command(&self, device: NumId, subfolder: &str, data: &[u8], wait: Duration) -> PeerCommand;
}

/// What delivering a command on this node came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCommand {
    Delivered,
    /// The device is not connected here, or not subscribed to its commands topic.
    NotHeld,
    Deadline,
}
