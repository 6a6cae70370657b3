//! Presence: which devices hold a connection on this node, and what they subscribed to.
//!
//! A device bridge registers a session here when a device connects; the rest of the server
//! reaches the connection through its control queue (commands, new config versions) and ends it
//! through a separate disconnect signal (session takeover, blocked or deleted device, a control
//! queue the session no longer drains). The signal is a value, not a queued message, so it is
//! never lost however full the queue is. A device with no session here is not connected to this
//! node.
//!
//! A device a gateway attached is present too, through the gateway's connection: its entry
//! shares the gateway session's control queue (every message names the device it is for) and
//! has a commands flag of its own. Ending such an entry detaches the device (an order on that
//! queue), not the gateway; if the queue is full, the stuck gateway connection is closed instead,
//! which detaches everything it carried. One entry per device, and the newest wins: a direct
//! connection replaces an attachment and the other way round, as a second connection replaces
//! the first.

use crate::mailbox::{Attachment as AttachmentEntry, Entry, Mailbox, Session};
pub use crate::mailbox::{CommandsFlag, ControlSender, Mailbox as SessionLink, SendError, Signal};
use ferrocore_model::{DeviceConfig, NumId, Status};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};
use std::time::SystemTime;
use tokio::sync::oneshot;

/// What the server asks of a connected session. Each message names its device: a gateway's
/// session serves the devices it attached as well as its own.
#[derive(Debug)]
pub enum SessionControl {
    /// Deliver a command; answer on `done` once the device has it (QoS 1: when it acknowledged;
    /// QoS 0: when queued for writing).
    Command { device: NumId, subfolder: String, data: Vec<u8>, done: oneshot::Sender<()> },
    /// A new config version to push if the device's config topic is subscribed.
    Config { device: NumId, config: DeviceConfig },
    /// Presence no longer lists attachment `id` of `device`: the gateway must let it go.
    Detach { device: NumId, id: u64, reason: Reason },
}

/// Why the server ended a device's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A newer connection or attachment of the same device took its place.
    Replaced,
    Blocked,
    Deleted,
    /// Unbound from the gateway it was attached through.
    Unbound,
    /// Its credentials were replaced: the key that let it in may be gone.
    CredentialsChanged,
    /// Its registry disabled the bridge it came through.
    BridgeDisabled,
}

impl Reason {
    /// A sentence for the gateway that loses the device.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Replaced => "Device detached because it connected directly or through another gateway.",
            Reason::Blocked => "Device detached because it was blocked.",
            Reason::Deleted => "Device detached because it was deleted.",
            Reason::Unbound => "Device detached because it was unbound from the gateway.",
            Reason::CredentialsChanged => "Device detached because its credentials were changed.",
            Reason::BridgeDisabled => "Device detached because MQTT was disabled for its registry.",
        }
    }
}

/// An order to close a session, with the status to record on the device, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub status: Option<Status>,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Presence's entry for a device: the map owns it, and dropping it (the device is replaced,
/// kicked or detached) tells a connection that presence forgot it. 16 bytes: with every connected
/// device in the map, its buckets are most of what presence costs.
struct Listed(Entry);

impl Drop for Listed {
    fn drop(&mut self) {
        if let Entry::Session(s) = &self.0 {
            s.forget();
        }
    }
}

impl Listed {
    /// Ends this presence of `device`: a direct connection closes; an attachment is detached from
    /// its gateway.
    fn end(&self, device: NumId, status: Option<Status>, reason: Reason) {
        let control = self.0.control();
        if self.0.via().is_none() {
            return control.close(status);
        }
        let order = SessionControl::Detach { device, id: self.0.id(), reason };
        if control.try_send(order).is_err() {
            // A gateway that does not drain its queue is stuck: closing it detaches everything.
            tracing::warn!(%device, "gateway control queue full; disconnecting the gateway");
            control.close(None);
        }
    }
}

/// A device attached through a gateway's session, as that session keeps it.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// This attachment's presence id; orders for another id are stale.
    pub id: u64,
    /// Set by the gateway session while it subscribes the device's commands topic.
    pub commands: CommandsFlag,
}

impl SessionLink {
    /// The session's commands flag.
    pub fn commands(&self) -> CommandsFlag {
        CommandsFlag(Entry::Session(self.0.clone()))
    }
}

#[derive(Default)]
pub struct Presence {
    sessions: RwLock<HashMap<NumId, Listed>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").field("devices", &self.len()).finish()
    }
}

/// Control messages a session may have queued; beyond this the sender waits or gives up.
pub const CONTROL_QUEUE: usize = 32;
/// The same for a gateway, whose queue carries the messages of every device it attached.
pub const GATEWAY_CONTROL_QUEUE: usize = 1024;

impl Presence {
    fn sessions(&self) -> RwLockWriteGuard<'_, HashMap<NumId, Listed>> {
        self.sessions.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a session for a device and registers it, replacing (and ending) any older
    /// connection or attachment of the same device: one connection per device. The session ends
    /// once presence forgets it.
    pub fn attach(&self, device: NumId) -> SessionLink {
        self.connect(device, CONTROL_QUEUE)
    }

    /// As [`Presence::attach`], for a gateway: its control queue has room for its devices too.
    pub fn attach_gateway(&self, device: NumId) -> SessionLink {
        self.connect(device, GATEWAY_CONTROL_QUEUE)
    }

    fn connect(&self, device: NumId, queue: usize) -> SessionLink {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Session::new(id, unix_nanos(SystemTime::now()), queue);
        let old = self.sessions().insert(device, Listed(Entry::Session(session.clone())));
        // Ended (and forgotten) outside the map's lock.
        if let Some(old) = old {
            old.end(device, None, Reason::Replaced);
        }
        Mailbox(session)
    }

    /// Registers `device` as attached through the session `gateway_session` of `gateway`,
    /// replacing (and ending) any other presence of the device. None when that session is no
    /// longer registered (it is closing).
    pub fn attach_through(&self, device: NumId, gateway: NumId, gateway_session: u64) -> Option<Attachment> {
        let mut sessions = self.sessions();
        let control = match sessions.get(&gateway) {
            Some(Listed(gw @ Entry::Session(s))) if s.id() == gateway_session => gw.control(),
            _ => return None,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry::Attachment(AttachmentEntry::new(id, unix_nanos(SystemTime::now()), gateway, control));
        let commands = CommandsFlag(entry.clone());
        let old = sessions.insert(device, Listed(entry));
        drop(sessions);
        if let Some(old) = old {
            old.end(device, None, Reason::Replaced);
        }
        Some(Attachment { id, commands })
    }

    /// Removes the session or attachment `id` of a device, unless a newer one already replaced it.
    pub fn detach(&self, device: NumId, id: u64) {
        drop(self.take_if(device, |s| s.id() == id));
    }

    /// Removes the device's entry if `which` says so. The caller ends or drops what comes back
    /// once the map's lock is released.
    fn take_if(&self, device: NumId, which: impl FnOnce(&Entry) -> bool) -> Option<Listed> {
        let mut sessions = self.sessions();
        if sessions.get(&device).is_some_and(|l| which(&l.0)) { sessions.remove(&device) } else { None }
    }

    /// True while presence lists `id` for the device.
    pub fn holds(&self, device: NumId, id: u64) -> bool {
        self.get(device).is_some_and(|s| s.id() == id)
    }

    fn get(&self, device: NumId) -> Option<Entry> {
        self.sessions.read().unwrap_or_else(|e| e.into_inner()).get(&device).map(|l| l.0.clone())
    }

    /// The control queue of a connected (or attached) device subscribed to its commands topic.
    pub fn command_channel(&self, device: NumId) -> Option<ControlSender> {
        self.get(device).filter(Entry::commands).map(|s| s.control())
    }

    /// Tells a connected device's session about a new config version.
    pub fn push_config(&self, device: NumId, config: DeviceConfig) {
        let Some(s) = self.get(device) else { return };
        let control = s.control();
        if control.try_send(SessionControl::Config { device, config }).is_err() {
            // A session that cannot keep up with its control queue is stuck; drop the connection
            // (the gateway's, for an attached device) so it comes back and receives the latest
            // config on subscribe.
            tracing::warn!(device = %device, "config push queue full; disconnecting the device");
            drop(self.take_if(device, |l| l.id() == s.id()));
            control.close(None);
        }
    }

    /// Ends a device's presence here, if any: a connection is closed (recording `status` on the
    /// device), an attachment detached from its gateway.
    pub fn kick(&self, device: NumId, status: Option<Status>, reason: Reason) {
        let removed = self.sessions().remove(&device);
        if let Some(s) = removed {
            s.end(device, status, reason);
        }
    }

    /// Ends the device's presence here if it began before `time`: another node took the device
    /// at `time`, and only the newer connection stays (one that began here later is kept, and
    /// its own announcement ends the other).
    pub fn kick_if_older(&self, device: NumId, time: SystemTime, reason: Reason) {
        if let Some(s) = self.take_if(device, |s| s.since() < unix_nanos(time)) {
            s.end(device, None, reason);
        }
    }

    /// When the device's presence here began, if it is here.
    pub fn since(&self, device: NumId) -> Option<SystemTime> {
        self.get(device).map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(s.since()))
    }

    /// Detaches a device attached through `gateway`, if it is.
    pub fn detach_from_gateway(&self, device: NumId, gateway: NumId, reason: Reason) {
        if let Some(s) = self.take_if(device, |s| s.via() == Some(gateway)) {
            s.end(device, None, reason);
        }
    }

    /// True when the device holds a connection here, or is attached through a gateway that does.
    pub fn is_connected(&self, device: NumId) -> bool {
        self.get(device).is_some()
    }

    /// The gateway a device is attached through, if it is.
    pub fn attached_via(&self, device: NumId) -> Option<NumId> {
        self.get(device).and_then(|s| s.via())
    }

    /// Devices connected to this node, attached ones included.
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
    async fn another_nodes_newer_connection_ends_only_an_older_one_here() {
        let p = Presence::default();
        let before = SystemTime::now() - Duration::from_secs(1);
        let mut link = p.attach(NumId(7));
        p.kick_if_older(NumId(7), before, Reason::Replaced);
        assert!(p.is_connected(NumId(7)), "a connection made here after the other node's stays");
        p.kick_if_older(NumId(7), SystemTime::now() + Duration::from_secs(1), Reason::Replaced);
        assert!(!p.is_connected(NumId(7)));
        assert_eq!(link.ended().await, Disconnect { status: None }, "the older one is told to go");
        p.kick_if_older(NumId(8), SystemTime::now(), Reason::Replaced);
    }

    #[tokio::test]
    async fn a_new_connection_takes_over_and_old_cleanup_is_harmless() {
        let p = Presence::default();
        let mut first_link = p.attach(NumId(1));
        let second = p.attach(NumId(1));
        assert_eq!(first_link.ended().await, Disconnect { status: None }, "the older one is told to go");
        p.detach(NumId(1), first_link.id());
        assert!(p.is_connected(NumId(1)), "the old session's cleanup leaves the new one");
        assert!(p.command_channel(NumId(1)).is_none(), "not subscribed yet");
        second.commands().set(true);
        assert!(p.command_channel(NumId(1)).is_some());
        p.kick(NumId(1), None, Reason::Blocked);
        assert!(!p.is_connected(NumId(1)));
    }

    /// Finding 4 of issue 10: with the control queue full, a kick used to be dropped by
    /// `try_send`, and the session, holding its own sender, never saw its queue close.
    #[tokio::test]
    async fn a_kick_reaches_a_session_whose_control_queue_is_full() {
        let p = Presence::default();
        let mut link = p.attach(NumId(7));
        let control = p.get(NumId(7)).unwrap().control();
        for v in 0..CONTROL_QUEUE {
            let config = DeviceConfig { version: v as i64, ..Default::default() };
            control.try_send(SessionControl::Config { device: NumId(7), config }).expect("room in the queue");
        }
        let config = DeviceConfig::default();
        assert!(control.try_send(SessionControl::Config { device: NumId(7), config }).is_err(), "full");
        let blocked = Status { code: 9, message: "blocked".into() };
        p.kick(NumId(7), Some(blocked.clone()), Reason::Blocked);
        let order = tokio::time::timeout(Duration::from_secs(1), link.ended()).await.expect("the order arrives");
        assert_eq!(order, Disconnect { status: Some(blocked) });
        drop(control);
        // Presence forgot the session, so the queue closes once it is drained.
        for _ in 0..CONTROL_QUEUE {
            assert!(link.recv().await.is_some());
        }
        assert!(link.recv().await.is_none(), "no sender is left once presence let go");
    }

    /// A config push that finds the queue full ends the session instead of being lost.
    #[tokio::test]
    async fn a_full_queue_on_config_push_closes_the_session() {
        let p = Presence::default();
        let mut link = p.attach(NumId(8));
        for v in 0..=CONTROL_QUEUE as i64 {
            p.push_config(NumId(8), DeviceConfig { version: v, ..Default::default() });
        }
        let order = tokio::time::timeout(Duration::from_secs(1), link.ended()).await.expect("closed");
        assert_eq!(order.status, None);
        assert!(!p.is_connected(NumId(8)));
    }

    /// An attachment shares the gateway's queue, has its own commands flag, and ends by an order
    /// to the gateway, not by closing the gateway's connection.
    #[tokio::test]
    async fn attachments_ride_on_the_gateway_session() {
        let p = Presence::default();
        let mut gw_link = p.attach_gateway(NumId(1));
        assert!(p.attach_through(NumId(2), NumId(1), gw_link.id() + 100).is_none(), "only the gateway's live session");
        let a = p.attach_through(NumId(2), NumId(1), gw_link.id()).expect("attached");
        assert!(p.is_connected(NumId(2)) && p.holds(NumId(2), a.id));
        assert_eq!(p.attached_via(NumId(2)), Some(NumId(1)));
        assert!(p.command_channel(NumId(2)).is_none(), "commands not subscribed for the device yet");
        a.commands.set(true);
        assert!(p.command_channel(NumId(2)).is_some());
        assert!(p.command_channel(NumId(1)).is_none(), "the gateway's own flag is apart");

        p.push_config(NumId(2), DeviceConfig { version: 4, ..Default::default() });
        match gw_link.recv().await {
            Some(SessionControl::Config { device, config }) => assert_eq!((device, config.version), (NumId(2), 4)),
            other => panic!("{other:?}"),
        }
        p.kick(NumId(2), None, Reason::Blocked);
        match gw_link.recv().await {
            Some(SessionControl::Detach { device, id, reason }) => {
                assert_eq!((device, id, reason), (NumId(2), a.id, Reason::Blocked))
            }
            other => panic!("{other:?}"),
        }
        assert!(!gw_link.is_ended(), "the gateway stays connected");
        assert!(!p.is_connected(NumId(2)) && p.is_connected(NumId(1)));
    }

    /// The newest presence of a device wins, whichever kind each is.
    #[tokio::test]
    async fn the_newest_of_a_connection_and_an_attachment_wins() {
        let p = Presence::default();
        let mut gw_link = p.attach_gateway(NumId(1));
        let a = p.attach_through(NumId(2), NumId(1), gw_link.id()).unwrap();
        let mut direct_link = p.attach(NumId(2));
        match gw_link.recv().await {
            Some(SessionControl::Detach { id, reason: Reason::Replaced, .. }) => assert_eq!(id, a.id),
            other => panic!("{other:?}"),
        }
        p.detach(NumId(2), a.id);
        assert!(p.holds(NumId(2), direct_link.id()), "a late cleanup of the attachment leaves the connection");
        let again = p.attach_through(NumId(2), NumId(1), gw_link.id()).unwrap();
        assert_eq!(direct_link.ended().await, Disconnect { status: None }, "the direct connection is told to go");
        assert!(p.holds(NumId(2), again.id));
        // Unbinding from another gateway leaves it; from this one detaches it.
        p.detach_from_gateway(NumId(2), NumId(9), Reason::Unbound);
        assert!(p.holds(NumId(2), again.id));
        p.detach_from_gateway(NumId(2), NumId(1), Reason::Unbound);
        assert!(!p.is_connected(NumId(2)));
        assert!(matches!(gw_link.recv().await, Some(SessionControl::Detach { reason: Reason::Unbound, .. })));
    }

    /// A gateway that does not drain its queue is closed when an order for one of its devices
    /// cannot be queued: nothing is lost, its devices go with it.
    #[tokio::test]
    async fn a_stuck_gateway_is_closed_rather_than_losing_a_detach() {
        let p = Presence::default();
        let mut gw_link = p.attach_gateway(NumId(1));
        let _a = p.attach_through(NumId(2), NumId(1), gw_link.id()).unwrap();
        for v in 0..GATEWAY_CONTROL_QUEUE as i64 {
            p.push_config(NumId(1), DeviceConfig { version: v, ..Default::default() });
        }
        p.kick(NumId(2), None, Reason::Deleted);
        let order = tokio::time::timeout(Duration::from_secs(1), gw_link.ended()).await.expect("closed");
        assert_eq!(order.status, None);
    }
}
