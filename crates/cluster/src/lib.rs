//! Several Ferrocore nodes as one service. The nodes share their store (PostgreSQL) for what is
//! durable; this crate carries, over core NATS, what is about live connections and in-memory
//! caches, which no database row tells another node:
//!
//! * **presence**: a device that connects to one node ends its session on any other (one
//!   connection per device, cluster-wide); blocking, deleting or re-keying a device ends its
//!   session wherever it is;
//! * **configs and commands**: a new config reaches the node holding the device; a command is
//!   offered to every node, the one holding the device delivers it and answers with the device's
//!   acknowledgement, the others answer that they do not hold it, so the API answers as on one
//!   node (OK, FAILED_PRECONDITION, DEADLINE_EXCEEDED) without waiting out a timeout;
//! * **caches**: a registry or an identity (API token, service account, key) changed on one
//!   node is dropped from or reloaded into the others' memory, and so is a Pub/Sub topic deleted
//!   or a subscription updated, detached, deleted or sought (its loaded state follows);
//! * **the topic log** ([`log`]): one JetStream stream per topic, shared by every node;
//! * **subscriptions** (`owners`): each Pub/Sub subscription is served by one node, to which
//!   the others forward pulls, acks and deadline changes;
//! * **membership**: each node announces itself every [`HEARTBEAT`]; `GET /v1/cluster` lists
//!   the nodes heard from within [`NODE_TIMEOUT`].
//!
//! Every subject starts with the cluster prefix (`--cluster-prefix`), so clusters (and test runs)
//! can share one NATS server. Messages are small JSON documents naming their sender; a node
//! ignores its own. The NATS client reconnects by itself; while it is down, cross-node commands
//! answer UNAVAILABLE and announcements are lost (a node that missed a kick still ends the
//! session when the device's next token check or reconnect meets the store).

pub mod log;
mod owners;
mod wire;

use async_nats::{Client, ConnectOptions};
use base64::Engine;
use ferrocore_core::Core;
use ferrocore_core::peers::{PeerCommand, Peers};
use ferrocore_core::presence::Reason;
use ferrocore_iam::Iam;
use ferrocore_model::{NumId, RegistryName, Timestamp};
use ferrocore_pubsub::PubSub;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use wire::{Announcement, CommandAnswer, CommandOffer, NodeBeat};

/// How often a node announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not heard from for this long is taken as gone.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a registry change waits for the other nodes to confirm they applied it.
const REGISTRY_WAIT: Duration = Duration::from_secs(2);
/// How long to wait for a NATS connection at start before serving anyway (the client keeps
/// trying in the background).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `--cluster`, `--node-id`, `--cluster-prefix`, and where this node's listeners are.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `nats://HOST:PORT`.
    pub url: String,
    pub node_id: String,
    pub prefix: String,
    /// Reported in the node list, for operators.
    pub http_address: String,
    pub mqtt_address: String,
}

/// Checks `--node-id` and `--cluster-prefix`: letters, digits, `-` and `_`, 1 to 63 characters
/// (they become NATS subject tokens).
pub fn check_name(flag: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(format!("{flag} must be 1 to 63 letters, digits, '-' or '_'")) }
}

/// The answers to one [`Cluster::ask`]: one is expected from each node alive when it was asked.
struct Answers {
    replies: async_nats::Subscriber,
    left: usize,
}

impl Answers {
    /// The next answer before `deadline`; None once every node answered or the deadline passed.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Option<async_nats::Message> {
        use futures_util::StreamExt;
        if self.left == 0 {
            return None;
        }
        let m = tokio::time::timeout_at(deadline, self.replies.next()).await.ok()??;
        self.left -= 1;
        Some(m)
    }

    fn all_heard(&self) -> bool {
        self.left == 0
    }
}

/// A node as the others heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    pub connections: u64,
    pub last_heartbeat: Timestamp,
    pub http_address: String,
    pub mqtt_address: String,
}

/// This node's membership in a cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: ClusterConfig,
    core: Core,
    /// Other nodes, by id, with when they were last heard from.
    nodes: Mutex<HashMap<String, (NodeInfo, Instant)>>,
    /// Announcements queue here and go out from one task, so callers never wait on NATS.
    outbox: mpsc::UnboundedSender<(String, Vec<u8>)>,
    /// Turns true on [`Cluster::leave`]: the tasks end.
    stop: tokio::sync::watch::Sender<bool>,
    /// The task publishing announcements, awaited on leave so that none is lost.
    sender: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Cluster {
    /// Connects to NATS and starts listening; `iam` is told to reload when another node changes
    /// identities, and tells the others when this node does.
    pub async fn join(config: ClusterConfig, core: Core, iam: Iam, pubsub: PubSub) -> Result<Self, String> {
        check_name("--node-id", &config.node_id)?;
        check_name("--cluster-prefix", &config.prefix)?;
        let options = ConnectOptions::new()
            .name(format!("ferrocore-{}", config.node_id))
            .connection_timeout(CONNECT_TIMEOUT)
            .retry_on_initial_connect();
        // The URL may carry a NATS password: it stays out of the message.
        let client =
            options.connect(&config.url).await.map_err(|e| format!("cannot connect to NATS (--cluster): {e}"))?;
        let (outbox, queued) = mpsc::unbounded_channel();
        let (stop, _) = tokio::sync::watch::channel(false);
        let cluster = Self {
            inner: Arc::new(Inner {
                client,
                config,
                core: core.clone(),
                nodes: Mutex::new(HashMap::new()),
                outbox,
                stop,
                sender: Mutex::new(None),
            }),
        };
        let sender = tokio::spawn(cluster.clone().send_queued(queued));
        *cluster.inner.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        let subscriber = cluster.inner.client.subscribe(cluster.subject(">")).await.map_err(|e| e.to_string())?;
        tokio::spawn(cluster.clone().receive(subscriber, iam.clone(), pubsub.clone()));
        tokio::spawn(cluster.clone().heartbeat());
        let me = cluster.clone();
        iam.on_change(move || me.announce("iam", &Announcement::new(&me.inner.config.node_id)));
        let me = cluster.clone();
        pubsub.on_change(move |c| me.announce("pubsub", &wire::PubsubChange::new(&me.inner.config.node_id, c)));
        let calls = cluster
            .inner
            .client
            .subscribe(owners::subject(&cluster.inner.config.prefix, &cluster.inner.config.node_id))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(cluster.clone().serve_subscriptions(calls, pubsub.clone()));
        pubsub.served_by(Arc::new(cluster.clone()));
        core.join_peers(Arc::new(cluster.clone()));
        Ok(cluster)
    }

    /// Stops listening and announcing, sends what was queued, and closes the NATS connection.
    pub async fn leave(&self) {
        let _ = self.inner.stop.send(true);
        let sender = self.inner.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = sender {
            let _ = task.await;
        }
        let _ = self.inner.client.flush().await;
        let _ = self.inner.client.drain().await;
    }

    async fn stopped(&self) {
        let mut rx = self.inner.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn subject(&self, kind: &str) -> String {
        format!("{}.{kind}", self.inner.config.prefix)
    }

    fn me(&self) -> &str {
        &self.inner.config.node_id
    }

    /// Every node heard from within [`NODE_TIMEOUT`], this one included, by id.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut out = vec![self.own_info()];
        let nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(nodes.values().filter(|(_, seen)| seen.elapsed() < NODE_TIMEOUT).map(|(info, _)| info.clone()));
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    fn live_peers(&self) -> usize {
        let nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.values().filter(|(_, seen)| seen.elapsed() < NODE_TIMEOUT).count()
    }

    fn own_info(&self) -> NodeInfo {
        NodeInfo {
            node_id: self.me().to_owned(),
            connections: self.inner.core.presence().len() as u64,
            last_heartbeat: Timestamp::now(),
            http_address: self.inner.config.http_address.clone(),
            mqtt_address: self.inner.config.mqtt_address.clone(),
        }
    }

    /// Offers `payload` on `kind` to the other nodes with a reply subject, for the exchanges that
    /// wait for them (commands, registry changes); None when NATS cannot be reached now.
    async fn ask(&self, kind: &str, payload: Vec<u8>) -> Option<Answers> {
        let client = &self.inner.client;
        if client.connection_state() != async_nats::connection::State::Connected {
            return None;
        }
        let inbox = client.new_inbox();
        let replies = client.subscribe(inbox.clone()).await.ok()?;
        client.publish_with_reply(self.subject(kind), inbox, payload.into()).await.ok()?;
        Some(Answers { replies, left: self.live_peers() })
    }

    /// Queues an announcement; the sending task publishes it.
    fn announce(&self, kind: &str, body: &impl serde::Serialize) {
        let payload = serde_json::to_vec(body).unwrap_or_default();
        let _ = self.inner.outbox.send((self.subject(kind), payload));
    }

    async fn send_queued(self, mut queued: mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
        loop {
            let next = tokio::select! {
                next = queued.recv() => next,
                () = self.stopped() => {
                    // What was announced before the stop still goes out.
                    queued.close();
                    queued.recv().await
                }
            };
            let Some((subject, payload)) = next else { return };
            if let Err(e) = self.inner.client.publish(subject, payload.into()).await {
                tracing::warn!(error = %e, "cannot publish to the cluster");
            }
        }
    }

    async fn heartbeat(self) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tick.tick() => self.announce("nodes", &NodeBeat::from(&self.own_info())),
                () = self.stopped() => return,
            }
        }
    }

    async fn receive(self, mut subscriber: async_nats::Subscriber, iam: Iam, pubsub: PubSub) {
        use futures_util::StreamExt;
        loop {
            let message = tokio::select! {
                m = subscriber.next() => m,
                () = self.stopped() => None,
            };
            let Some(message) = message else { return };
            let kind = message.subject.as_str().strip_prefix(&self.inner.config.prefix).unwrap_or_default();
            let kind = kind.strip_prefix('.').unwrap_or_default().to_owned();
            let this = self.clone();
            let (iam, pubsub) = (iam.clone(), pubsub.clone());
            // Commands wait for a device; nothing else may wait behind them.
            tokio::spawn(async move { this.handle(&kind, message, &iam, &pubsub).await });
        }
    }

    async fn handle(&self, kind: &str, message: async_nats::Message, iam: &Iam, pubsub: &PubSub) {
        let core = &self.inner.core;
        match kind {
            "nodes" => {
                let Ok(beat) = serde_json::from_slice::<NodeBeat>(&message.payload) else { return };
                if beat.node != self.me() {
                    let info = beat.into_info();
                    let mut nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
                    nodes.insert(info.node_id.clone(), (info, Instant::now()));
                }
            }
            "connected" | "kick" | "unbound" | "config" | "iam" => {
                let Ok(a) = serde_json::from_slice::<Announcement>(&message.payload) else { return };
                if a.node == self.me() {
                    return;
                }
                match kind {
                    "connected" => {
                        let since = std::time::UNIX_EPOCH + Duration::from_millis(a.since_ms);
                        core.presence().kick_if_older(NumId(a.device), since, Reason::Replaced);
                    }
                    "kick" => core.presence().kick(NumId(a.device), None, wire::reason(&a.reason)),
                    "unbound" => {
                        core.presence().detach_from_gateway(NumId(a.device), NumId(a.gateway), Reason::Unbound)
                    }
                    "config" => {
                        let device = NumId(a.device);
                        if core.presence().is_connected(device) {
                            match core.store().list_config_versions(device, 1).await {
                                Ok(mut v) if !v.is_empty() => core.presence().push_config(device, v.remove(0)),
                                Ok(_) => {}
                                Err(e) => tracing::warn!(error = %e, "cannot read a config another node wrote"),
                            }
                        }
                    }
                    _ => {
                        if let Err(e) = iam.reload().await {
                            tracing::warn!(error = %e, "cannot reload identities another node changed");
                        }
                    }
                }
            }
            "pubsub" => {
                let Ok(c) = serde_json::from_slice::<wire::PubsubChange>(&message.payload) else { return };
                if c.node == self.me() {
                    return;
                }
                if let Some(change) = c.into_change() {
                    pubsub.changed_elsewhere(&change).await;
                }
            }
            "registry" => {
                let Ok(a) = serde_json::from_slice::<Announcement>(&message.payload) else { return };
                if a.node == self.me() {
                    return;
                }
                if let Ok(name) = RegistryName::parse_field("registry", &a.registry)
                    && let Err(e) = core.registry_changed_elsewhere(&name).await
                {
                    tracing::warn!(error = %e, registry = %name, "cannot apply another node's registry change");
                }
                // The answer tells the node that made the change it is in force here.
                if let Some(reply) = message.reply {
                    let _ = self.inner.client.publish(reply, Vec::new().into()).await;
                }
            }
            "command" => {
                let (Some(reply), Ok(offer)) =
                    (message.reply, serde_json::from_slice::<CommandOffer>(&message.payload))
                else {
                    return;
                };
                if offer.node == self.me() {
                    return;
                }
                let data = base64::engine::general_purpose::STANDARD.decode(&offer.data).unwrap_or_default();
                let wait = Duration::from_millis(offer.wait_ms);
                let outcome = core.deliver_command_here(NumId(offer.device), &offer.subfolder, data, wait).await;
                let answer = CommandAnswer { node: self.me().to_owned(), outcome: wire::outcome(outcome).to_owned() };
                let payload = serde_json::to_vec(&answer).unwrap_or_default();
                let _ = self.inner.client.publish(reply, payload.into()).await;
            }
            _ => {}
        }
    }
}

#[async_trait::async_trait]
impl Peers for Cluster {
    fn connected(&self, device: NumId, since: std::time::SystemTime) {
        let mut a = Announcement::device(self.me(), device, "");
        a.since_ms = since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.announce("connected", &a);
    }

    fn kick(&self, device: NumId, reason: Reason) {
        self.announce("kick", &Announcement::device(self.me(), device, wire::reason_name(reason)));
    }

    fn unbound(&self, device: NumId, gateway: NumId) {
        let mut a = Announcement::device(self.me(), device, "");
        a.gateway = gateway.0;
        self.announce("unbound", &a);
    }

    fn config_changed(&self, device: NumId) {
        self.announce("config", &Announcement::device(self.me(), device, ""));
    }

    async fn registry_changed(&self, name: &RegistryName) {
        let mut a = Announcement::new(self.me());
        a.registry = name.to_string();
        let Some(mut answers) = self.ask("registry", serde_json::to_vec(&a).unwrap_or_default()).await else {
            return;
        };
        let deadline = tokio::time::Instant::now() + REGISTRY_WAIT;
        while answers.next(deadline).await.is_some() {}
        if !answers.all_heard() {
            tracing::warn!(registry = %name, missing = answers.left, "not every node confirmed a registry change in time");
        }
    }

    async fn send_command(&self, device: NumId, subfolder: &str, data: &[u8], wait: Duration) -> PeerCommand {
        let offer = CommandOffer {
            node: self.me().to_owned(),
            device: device.0,
            subfolder: subfolder.to_owned(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
            wait_ms: wait.as_millis() as u64,
        };
        let Some(mut answers) = self.ask("command", serde_json::to_vec(&offer).unwrap_or_default()).await else {
            return PeerCommand::Unavailable;
        };
        // The holder answers once the device acknowledged (or its own wait ran out); the others
        // at once. A node that dies meanwhile never answers: the wait ends with what was heard.
        let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(1);
        let mut outcome = PeerCommand::NotHeld;
        while let Some(m) = answers.next(deadline).await {
            match serde_json::from_slice::<CommandAnswer>(&m.payload).map(|a| a.outcome) {
                Ok(o) if o == "delivered" => return PeerCommand::Delivered,
                Ok(o) if o == "deadline" => outcome = PeerCommand::Deadline,
                _ => {}
            }
        }
        outcome
    }
}
