//! Google Pub/Sub v1 semantics over Ferrocore's durable topics, free of any wire format.
//!
//! [`PubSub`] is what the gRPC and REST adapters call: topics (created by CreateTopic, or by a
//! registry naming them), subscriptions with at-least-once delivery, ack deadlines, nacks, lease
//! extension, redelivery, seek to a time, attribute filters, ordering and dead-letter policies,
//! and IAM policies on both. Messages stay in the topic log (read through
//! [`ferrocore_core::topics::TopicSource`]); a subscription is a durable cursor over it, saved in
//! the store in batches.
//!
//! Durability: Publish answers once the log holds the messages. Acknowledgements are saved every
//! [`Settings::cursor_flush`] (200 ms by default), in one store transaction for all subscriptions;
//! an ack in the last interval before a crash may be lost, so that message comes again. An unacked
//! message always comes again.
//!
//! * `filter`: the subscription filter language.
//! * `subscription`: one subscription's delivery state machine (pure).
//! * `sub`: a loaded subscription and the tasks that drive it.
//! * `ackset`, `ackid`: acknowledged offsets and ack ids.

mod ackid;
mod ackset;
pub mod filter;
mod sub;
mod subscription;

pub use subscription::{Delivery, ORDERING_KEY_ATTRIBUTE};

/// Parses `text` as an ack id the way Acknowledge and ModifyAckDeadline do, and returns its parts
/// (epoch, offset, generation) and its canonical encoding; `None` when it is refused. For the
/// fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub fn fuzz_ack_id(text: &str) -> Option<((u32, u64, u32), String)> {
    AckId::parse(text).map(|id| ((id.epoch, id.offset, id.generation), id.encode()))
}

use ackid::AckId;
use bytes::Bytes;
use ferrocore_core::clock::Clock;
use ferrocore_core::error::storage;
use ferrocore_core::sink::Message;
use ferrocore_core::topics::{ReadError, TopicSource};
use ferrocore_core::{Code, Error, Result, paging};
use ferrocore_model::Timestamp;
use ferrocore_model::pubsub::{
    IamPolicy, Subscription, SubscriptionCursor, SubscriptionName, Topic, TopicName, TopicOrigin,
};
use ferrocore_store::StoreError;
use ferrocore_store::pubsub::{Page, PubsubStore};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use sub::Sub;
use subscription::{PULL, State, StreamId};
use tokio::sync::watch;
use tokio::time::Instant;

/// Pub/Sub's documented limits on a publish request.
pub const MAX_PUBLISH_MESSAGES: usize = 1000;
pub const MAX_PUBLISH_BYTES: usize = 10_000_000;
pub const MAX_ATTRIBUTES: usize = 100;
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
pub const MAX_ORDERING_KEY_BYTES: usize = 1024;
/// Ack deadlines Pub/Sub accepts, in seconds.
pub const MIN_ACK_DEADLINE: i32 = 10;
pub const MAX_ACK_DEADLINE: i32 = 600;
pub const DEFAULT_ACK_DEADLINE: i32 = 10;
/// Retention Pub/Sub accepts on a subscription: 10 minutes to 31 days; 7 days by default.
pub const MIN_RETENTION_SECONDS: i64 = 600;
pub const MAX_RETENTION_SECONDS: i64 = 31 * 24 * 3600;
pub const DEFAULT_RETENTION_SECONDS: i64 = 7 * 24 * 3600;
/// How long a Pull with nothing to deliver waits for a message at most.
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(10);

/// Tunables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often acknowledgements reach the store.
    pub cursor_flush: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { cursor_flush: Duration::from_millis(200) }
    }
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    pub data: Bytes,
    pub attributes: Vec<(String, String)>,
    pub ordering_key: String,
}

/// What the first StreamingPull request asks for.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    pub ack_deadline_seconds: i32,
    /// 0 or less: no limit.
    pub max_outstanding_messages: i64,
    pub max_outstanding_bytes: i64,
}

/// A change this node made that other nodes sharing the store must apply to what they hold in
/// memory (see [`PubSub::on_change`] and [`PubSub::changed_elsewhere`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    TopicDeleted(TopicName),
    /// Settings changed (UpdateSubscription, DetachSubscription): re-read them from the store.
    SubscriptionUpdated(SubscriptionName),
    SubscriptionDeleted(SubscriptionName),
    /// Seek: delivery restarts at this offset of the topic.
    Seeked(SubscriptionName, u64),
}

type ChangeHook = Arc<dyn Fn(&Change) + Send + Sync>;

/// In a cluster, each subscription is served by one node, its owner, so subscribers reaching
/// different nodes share its messages instead of each getting all of them; the other nodes
/// forward Pull, Acknowledge, ModifyAckDeadline and StreamingPull's pulls to the owner.
#[async_trait::async_trait]
pub trait Owners: Send + Sync + 'static {
    /// The node serving `name`, when it is not this one.
    fn elsewhere(&self, name: &SubscriptionName) -> Option<String>;
    async fn pull(
        &self,
        node: &str,
        name: &SubscriptionName,
        max_messages: i32,
        wait: Duration,
    ) -> Result<Vec<Delivery>>;
    async fn acknowledge(&self, node: &str, name: &SubscriptionName, ack_ids: &[String]) -> Result<()>;
    async fn modify_ack_deadline(
        &self,
        node: &str,
        name: &SubscriptionName,
        ack_ids: &[String],
        seconds: i32,
    ) -> Result<()>;
}

/// How long a forwarded StreamingPull waits on the owner for messages before asking again.
pub const FORWARDED_PULL_WAIT: Duration = Duration::from_secs(10);

/// Cheap to clone; all clones share one service.
#[derive(Clone)]
pub struct PubSub {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn PubsubStore>,
    source: Arc<dyn TopicSource>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    subs: RwLock<HashMap<SubscriptionName, Arc<Sub>>>,
    /// Serialises loading, so one subscription is never loaded twice.
    loading: tokio::sync::Mutex<()>,
    /// Topics known to exist, so Publish does not read the store per request.
    known_topics: RwLock<HashSet<TopicName>>,
    /// Random per process: tells this run's ack ids from an earlier run's.
    epoch: u32,
    next_stream: AtomicU64,
    shutdown: watch::Sender<bool>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Told of every change other nodes must apply (the cluster announces it).
    on_change: RwLock<Option<ChangeHook>>,
    /// Which node serves each subscription; none on a single node.
    owners: RwLock<Option<Arc<dyn Owners>>>,
}

fn not_found(what: &str, name: &str) -> Error {
    Error::not_found(format!("Resource not found ({what}={name})."))
}

fn source_error(e: ReadError) -> Error {
    match e {
        ReadError::InvalidTopic(m) => Error::invalid("topic", m),
        ReadError::Unavailable(cause) => {
            tracing::error!(%cause, "topic log unavailable");
            Error::new(Code::Unavailable, "The topic log is unavailable; retry later.")
        }
    }
}

/// ModifyAckDeadline's seconds: 0 (nack) to [`MAX_ACK_DEADLINE`].
fn check_ack_deadline(seconds: i32) -> Result<()> {
    if !(0..=MAX_ACK_DEADLINE).contains(&seconds) {
        return Err(Error::invalid(
            "ack_deadline_seconds",
            format!("Invalid ack deadline {seconds}: it must be between 0 and {MAX_ACK_DEADLINE} seconds."),
        ));
    }
    Ok(())
}

/// A detached subscription delivers nothing more: what was read counts as done.
fn detach_loaded(loaded: &Sub) {
    let mut s = loaded.lock();
    let end = s.read_next;
    let wake = s.seek(end);
    drop(s);
    loaded.wake(wake);
    loaded.reset();
}

fn closing() -> Error {
    Error::new(Code::Unavailable, "The server is shutting down; reconnect.")
}

impl PubSub {
    /// Builds the service and starts its cursor flusher; must run inside a tokio runtime.
    pub fn new(
        store: Arc<dyn PubsubStore>,
        source: Arc<dyn TopicSource>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> PubSub {
        let service = PubSub {
            inner: Arc::new(Inner {
                store,
                source,
                clock,
                settings,
                subs: RwLock::new(HashMap::new()),
                loading: tokio::sync::Mutex::new(()),
                known_topics: RwLock::new(HashSet::new()),
                epoch: rand::random(),
                next_stream: AtomicU64::new(PULL + 1),
                shutdown: watch::Sender::new(false),
                flusher: Mutex::new(None),
                on_change: RwLock::new(None),
                owners: RwLock::new(None),
            }),
        };
        let flusher = tokio::spawn(flush_loop(Arc::downgrade(&service.inner), service.inner.shutdown.subscribe()));
        *service.inner.flusher.lock().unwrap_or_else(PoisonError::into_inner) = Some(flusher);
        service
    }

    /// Ends every StreamingPull stream with UNAVAILABLE and stops the subscriptions' tasks; new
    /// calls are refused (UNAVAILABLE) from now on.
    pub fn stop_streams(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Stops as [`PubSub::stop_streams`] does, then saves every cursor.
    pub async fn close(&self) {
        self.inner.shutdown.send_replace(true);
        let flusher = self.inner.flusher.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(f) = flusher {
            let _ = f.await;
        }
        for sub in self.loaded() {
            sub.reset();
        }
        flush_once(&self.inner).await;
    }

    fn loaded(&self) -> Vec<Arc<Sub>> {
        self.inner.subs.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// Serves each subscription on the node `owners` names, forwarding from this one.
    pub fn served_by(&self, owners: Arc<dyn Owners>) {
        *self.inner.owners.write().unwrap_or_else(PoisonError::into_inner) = Some(owners);
    }

    fn owner_elsewhere(&self, name: &SubscriptionName) -> Option<(Arc<dyn Owners>, String)> {
        let owners = self.inner.owners.read().unwrap_or_else(PoisonError::into_inner).clone()?;
        let node = owners.elsewhere(name)?;
        self.hand_over(name);
        Some((owners, node))
    }

    /// This node served `name` until the owner moved: its copy stops (tasks, streams) after
    /// saving what its clients acknowledged, so the new owner starts from there.
    fn hand_over(&self, name: &SubscriptionName) {
        if !self.inner.subs.read().unwrap_or_else(PoisonError::into_inner).contains_key(name) {
            return;
        }
        let Some(sub) = self.inner.subs.write().unwrap_or_else(PoisonError::into_inner).remove(name) else { return };
        let cursor = {
            let mut s = sub.lock();
            s.moved = true;
            let cursor = (s.dirty && !s.deleted).then(|| s.cursor());
            s.dirty = false;
            cursor
        };
        sub.reset();
        sub.wake(subscription::Wake { consumers: true, fetcher: true, timers: true });
        tracing::info!(subscription = %name, "another node serves this subscription now");
        if let Some(cursor) = cursor {
            let (store, name) = (self.inner.store.clone(), name.clone());
            tokio::spawn(async move {
                if let Err(e) = store.save_cursors(&[(name.clone(), cursor)]).await {
                    tracing::warn!(subscription = %name, error = %e, "saving a handed-over cursor failed");
                }
            });
        }
    }

    /// Calls `hook` after each change other nodes sharing the store must apply to their memory.
    pub fn on_change(&self, hook: impl Fn(&Change) + Send + Sync + 'static) {
        *self.inner.on_change.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(hook));
    }

    fn changed(&self, change: Change) {
        let hook = self.inner.on_change.read().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(hook) = hook {
            hook(&change);
        }
    }

    /// Applies a change another node made (and saved in the shared store) to what this node
    /// holds: cached topics, loaded subscriptions' settings, positions and streams.
    pub async fn changed_elsewhere(&self, change: &Change) {
        match change {
            Change::TopicDeleted(name) => self.forget_topic(name),
            Change::SubscriptionUpdated(name) => {
                let Some(loaded) = self.inner.subs.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
                else {
                    return;
                };
                match self.inner.store.get_subscription(name).await {
                    Ok(Some((settings, _))) => {
                        let detached = settings.detached && !loaded.lock().settings.detached;
                        loaded.lock().set_settings(Arc::new(settings));
                        if detached {
                            detach_loaded(&loaded);
                        }
                    }
                    Ok(None) => self.unload_deleted(name),
                    Err(e) => {
                        tracing::warn!(subscription = %name, error = %e, "cannot re-read a subscription another node changed")
                    }
                }
            }
            Change::SubscriptionDeleted(name) => self.unload_deleted(name),
            Change::Seeked(name, offset) => {
                let Some(sub) = self.inner.subs.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
                else {
                    return;
                };
                let wake = {
                    let mut s = sub.lock();
                    let wake = s.seek(*offset);
                    // The node that sought saved the position already.
                    s.dirty = false;
                    wake
                };
                sub.wake(wake);
                sub.reset();
            }
        }
    }

    fn unload_deleted(&self, name: &SubscriptionName) {
        let loaded = self.inner.subs.write().unwrap_or_else(PoisonError::into_inner).remove(name);
        if let Some(sub) = loaded {
            sub.lock().deleted = true;
            sub.reset();
        }
    }

    /// The topic is gone: Publish re-checks it, and loaded subscriptions on it stop reading.
    fn forget_topic(&self, name: &TopicName) {
        self.inner.known_topics.write().unwrap_or_else(PoisonError::into_inner).remove(name);
        for sub in self.loaded() {
            let mut s = sub.lock();
            if s.settings.topic.as_ref() == Some(name) {
                let mut settings = (*s.settings).clone();
                settings.topic = None;
                s.set_settings(Arc::new(settings));
                drop(s);
                sub.reset();
            }
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    // --- topics -------------------------------------------------------------------------------

    pub async fn create_topic(&self, topic: Topic) -> Result<Topic> {
        check_labels(&topic.labels)?;
        check_retention("message_retention_duration", topic.message_retention_seconds)?;
        let topic = Topic { origin: TopicOrigin::Created, ..topic };
        match self.inner.store.create_topic(&topic).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists) => {
                return Err(Error::new(Code::AlreadyExists, "Topic already exists"));
            }
            Err(e) => return Err(storage(e)),
        }
        self.inner.known_topics.write().unwrap_or_else(PoisonError::into_inner).insert(topic.name.clone());
        Ok(topic)
    }

    pub async fn get_topic(&self, name: &TopicName) -> Result<Topic> {
        let topic = self.inner.store.get_topic(name).await.map_err(storage)?;
        topic.ok_or_else(|| not_found("topic", name.as_str()))
    }

    /// A page of `project`'s topics, and the token of the next page (empty at the end).
    pub async fn list_topics(&self, project: &str, page_size: i32, page_token: &str) -> Result<(Vec<Topic>, String)> {
        let limit = paging::page_size(i64::from(page_size))?;
        let after = paging::decode("topics", page_token)?.map(|a| TopicName::parse("page_token", &a)).transpose()?;
        let topics = self
            .inner
            .store
            .list_topics(Page { project, after: after.as_ref(), limit: limit + 1 })
            .await
            .map_err(storage)?;
        Ok(page_of(topics, limit, |t| paging::encode("topics", t.name.as_str())))
    }

    /// Replaces labels and retention (the adapter applies the update mask).
    pub async fn update_topic(&self, topic: Topic) -> Result<Topic> {
        check_labels(&topic.labels)?;
        check_retention("topic.message_retention_duration", topic.message_retention_seconds)?;
        let current = self.get_topic(&topic.name).await?;
        let topic = Topic { origin: current.origin, ..topic };
        match self.inner.store.update_topic(&topic).await {
            Ok(()) => Ok(topic),
            Err(StoreError::NotFound) => Err(not_found("topic", topic.name.as_str())),
            Err(e) => Err(storage(e)),
        }
    }

    /// Deletes the topic; its subscriptions stay, detached from it (`_deleted-topic_`). The
    /// messages already in the log stay until retention removes them.
    pub async fn delete_topic(&self, name: &TopicName) -> Result<()> {
        if !self.inner.store.delete_topic(name).await.map_err(storage)? {
            return Err(not_found("topic", name.as_str()));
        }
        self.forget_topic(name);
        self.changed(Change::TopicDeleted(name.clone()));
        Ok(())
    }

    pub async fn list_topic_subscriptions(
        &self,
        topic: &TopicName,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<SubscriptionName>, String)> {
        self.get_topic(topic).await?;
        let limit = paging::page_size(i64::from(page_size))?;
        let after = paging::decode("topic-subscriptions", page_token)?
            .map(|a| SubscriptionName::parse("page_token", &a))
            .transpose()?;
        let names =
            self.inner.store.list_topic_subscriptions(topic, after.as_ref(), limit + 1).await.map_err(storage)?;
        Ok(page_of(names, limit, |n| paging::encode("topic-subscriptions", n.as_str())))
    }

    async fn ensure_topic(&self, name: &TopicName) -> Result<()> {
        if self.inner.known_topics.read().unwrap_or_else(PoisonError::into_inner).contains(name) {
            return Ok(());
        }
        self.get_topic(name).await?;
        self.inner.known_topics.write().unwrap_or_else(PoisonError::into_inner).insert(name.clone());
        Ok(())
    }

    /// Appends the messages to the topic; their ids once durable.
    pub async fn publish(&self, topic: &TopicName, messages: Vec<OutgoingMessage>) -> Result<Vec<String>> {
        check_publish(&messages)?;
        self.ensure_topic(topic).await?;
        let time = self.now();
        let messages = messages
            .into_iter()
            .map(|m| {
                let mut attributes = m.attributes;
                if !m.ordering_key.is_empty() {
                    attributes.push((ORDERING_KEY_ATTRIBUTE.to_owned(), m.ordering_key));
                }
                Message { time, attributes, data: m.data }
            })
            .collect();
        let offsets = self.inner.source.append(topic.as_str(), messages).await.map_err(source_error)?;
        Ok(offsets.into_iter().map(|o| o.to_string()).collect())
    }

    // --- subscriptions ------------------------------------------------------------------------

    /// Creates a subscription that receives what is published to its topic from now on.
    pub async fn create_subscription(&self, sub: Subscription) -> Result<Subscription> {
        let sub = normalize_subscription(sub, self.now())?;
        let Some(topic) = &sub.topic else {
            return Err(Error::invalid("topic", "A subscription needs a topic."));
        };
        if let Some(p) = &sub.dead_letter_policy {
            self.get_topic(&p.dead_letter_topic).await.map_err(|_| {
                Error::invalid("dead_letter_policy.dead_letter_topic", "The dead-letter topic does not exist.")
            })?;
        }
        // Read now, not from a cache: in a cluster other nodes append to the same log.
        let start = self.inner.source.next_offset(topic.as_str()).await.map_err(source_error)?;
        let cursor = SubscriptionCursor { floor: start, acked: Vec::new() };
        match self.inner.store.create_subscription(&sub, &cursor).await {
            Ok(()) => Ok(sub),
            Err(StoreError::AlreadyExists) => Err(Error::new(Code::AlreadyExists, "Subscription already exists")),
            Err(StoreError::NotFound) => Err(not_found("topic", topic.as_str())),
            Err(e) => Err(storage(e)),
        }
    }

    pub async fn get_subscription(&self, name: &SubscriptionName) -> Result<Subscription> {
        if let Some(sub) = self.inner.subs.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Ok((*sub.lock().settings).clone());
        }
        let found = self.inner.store.get_subscription(name).await.map_err(storage)?;
        found.map(|(s, _)| s).ok_or_else(|| not_found("subscription", name.as_str()))
    }

    pub async fn list_subscriptions(
        &self,
        project: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Subscription>, String)> {
        let limit = paging::page_size(i64::from(page_size))?;
        let after = paging::decode("subscriptions", page_token)?
            .map(|a| SubscriptionName::parse("page_token", &a))
            .transpose()?;
        let subs = self
            .inner
            .store
            .list_subscriptions(Page { project, after: after.as_ref(), limit: limit + 1 })
            .await
            .map_err(storage)?;
        Ok(page_of(subs, limit, |s| paging::encode("subscriptions", s.name.as_str())))
    }

    /// Replaces the settings a client may change (the adapter applies the update mask); the
    /// topic and creation time stay.
    pub async fn update_subscription(&self, update: Subscription) -> Result<Subscription> {
        let current = self.get_subscription(&update.name).await?;
        let mut sub = normalize_subscription(update, current.created)?;
        sub.topic = current.topic.clone();
        sub.detached = current.detached;
        if let Some(p) = &sub.dead_letter_policy
            && current.dead_letter_policy.as_ref().map(|c| &c.dead_letter_topic) != Some(&p.dead_letter_topic)
        {
            self.get_topic(&p.dead_letter_topic).await.map_err(|_| {
                Error::invalid("dead_letter_policy.dead_letter_topic", "The dead-letter topic does not exist.")
            })?;
        }
        match self.inner.store.update_subscription(&sub).await {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(not_found("subscription", sub.name.as_str())),
            Err(e) => return Err(storage(e)),
        }
        if let Some(loaded) = self.inner.subs.read().unwrap_or_else(PoisonError::into_inner).get(&sub.name) {
            loaded.lock().set_settings(Arc::new(sub.clone()));
        }
        self.changed(Change::SubscriptionUpdated(sub.name.clone()));
        Ok(sub)
    }

    pub async fn delete_subscription(&self, name: &SubscriptionName) -> Result<()> {
        if !self.inner.store.delete_subscription(name).await.map_err(storage)? {
            return Err(not_found("subscription", name.as_str()));
        }
        self.unload_deleted(name);
        self.changed(Change::SubscriptionDeleted(name.clone()));
        Ok(())
    }

    /// Stops delivery from the topic to the subscription for good (DetachSubscription).
    pub async fn detach_subscription(&self, name: &SubscriptionName) -> Result<()> {
        let mut sub = self.get_subscription(name).await?;
        sub.detached = true;
        match self.inner.store.update_subscription(&sub).await {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(not_found("subscription", name.as_str())),
            Err(e) => return Err(storage(e)),
        }
        if let Some(loaded) = self.inner.subs.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned() {
            loaded.lock().set_settings(Arc::new(sub));
            detach_loaded(&loaded);
        }
        self.changed(Change::SubscriptionUpdated(name.clone()));
        Ok(())
    }

    /// The loaded subscription, loading it (and starting its tasks) on first use.
    async fn sub(&self, name: &SubscriptionName) -> Result<Arc<Sub>> {
        if *self.inner.shutdown.borrow() {
            return Err(closing());
        }
        if let Some(sub) = self.inner.subs.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Ok(sub.clone());
        }
        let _loading = self.inner.loading.lock().await;
        if let Some(sub) = self.inner.subs.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Ok(sub.clone());
        }
        let (settings, cursor) = self
            .inner
            .store
            .get_subscription(name)
            .await
            .map_err(storage)?
            .ok_or_else(|| not_found("subscription", name.as_str()))?;
        let sub = Sub::new(name.clone(), State::new(Arc::new(settings), &cursor));
        sub.spawn(self.inner.source.clone(), self.inner.shutdown.subscribe());
        self.inner.subs.write().unwrap_or_else(PoisonError::into_inner).insert(name.clone(), sub.clone());
        Ok(sub)
    }

    /// [`PubSub::end_of`] read from the log itself rather than its cached extent.
    async fn fresh_end_of(&self, sub: &Sub) -> Option<u64> {
        let topic = sub.lock().settings.topic.clone()?;
        self.inner.source.next_offset(topic.as_str()).await.ok()
    }

    /// The topic's next offset: acks for offsets below it and not read yet are recorded.
    fn end_of(&self, sub: &Sub) -> u64 {
        let topic = sub.lock().settings.topic.clone();
        topic.and_then(|t| self.inner.source.extent(t.as_str())).map_or(0, |e| e.next_offset)
    }

    /// Up to `max_messages` messages, waiting up to `wait` (at most [`MAX_PULL_WAIT`]; zero for
    /// none) for the first. Adapters pass less than the caller's own deadline, so a Pull that finds
    /// nothing answers empty before the client gives up on it.
    pub async fn pull(&self, name: &SubscriptionName, max_messages: i32, wait: Duration) -> Result<Vec<Delivery>> {
        if max_messages <= 0 {
            return Err(Error::invalid("max_messages", "max_messages must be a positive number."));
        }
        if let Some((owners, node)) = self.owner_elsewhere(name) {
            return owners.pull(&node, name, max_messages, wait).await;
        }
        self.pull_here(name, max_messages, wait).await
    }

    /// [`PubSub::pull`] on this node, which serves the subscription.
    pub async fn pull_here(&self, name: &SubscriptionName, max_messages: i32, wait: Duration) -> Result<Vec<Delivery>> {
        if max_messages <= 0 {
            return Err(Error::invalid("max_messages", "max_messages must be a positive number."));
        }
        let sub = self.sub(name).await?;
        let deadline = Instant::now() + wait.min(MAX_PULL_WAIT);
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let notified = sub.deliverable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lease = {
                let s = sub.lock();
                if s.deleted {
                    return Err(not_found("subscription", name.as_str()));
                }
                Duration::from_secs(s.settings.ack_deadline_seconds.clamp(MIN_ACK_DEADLINE, MAX_ACK_DEADLINE) as u64)
            };
            let got = self.take(&sub, PULL, max_messages as usize, lease);
            if !got.is_empty() || wait.is_zero() {
                return Ok(got);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                _ = shutdown.wait_for(|&s| s) => return Ok(Vec::new()),
            }
        }
    }

    /// Leases messages to `stream` and moves those past their dead-letter policy on.
    fn take(&self, sub: &Arc<Sub>, stream: StreamId, max: usize, lease: Duration) -> Vec<Delivery> {
        let (taken, dead_topic, attempts) = {
            let mut s = sub.lock();
            if s.settings.detached {
                return Vec::new();
            }
            let taken = s.take(stream, max, lease, Instant::now(), self.inner.epoch);
            let policy = s.settings.dead_letter_policy.clone();
            (taken, policy.as_ref().map(|p| p.dead_letter_topic.clone()), policy.map_or(0, |p| p.max_delivery_attempts))
        };
        sub.wake(taken.wake);
        if let Some(topic) = dead_topic
            && !taken.dead_letters.is_empty()
        {
            // In a task of its own: a caller that is cancelled (a stream whose client left) must
            // not strand messages half-way to the dead-letter topic.
            let service = self.clone();
            let sub = sub.clone();
            tokio::spawn(async move { service.dead_letter(&sub, &topic, attempts, taken.dead_letters).await });
        }
        taken.deliveries
    }

    async fn dead_letter(
        &self,
        sub: &Arc<Sub>,
        topic: &TopicName,
        attempts: i32,
        dead: Vec<(u64, Arc<ferrocore_core::topics::StoredMessage>)>,
    ) {
        let messages = dead
            .iter()
            .map(|(_, m)| {
                let mut attributes = m.attributes.clone();
                attributes.push(("CloudPubSubDeadLetterSourceSubscription".into(), sub.name.id().to_owned()));
                attributes
                    .push(("CloudPubSubDeadLetterSourceSubscriptionProject".into(), sub.name.project().to_owned()));
                attributes.push(("CloudPubSubDeadLetterSourceDeliveryCount".into(), attempts.to_string()));
                attributes.push(("CloudPubSubDeadLetterSourceTopicPublishTime".into(), m.time.to_string()));
                Message { time: self.now(), attributes, data: m.data.clone() }
            })
            .collect();
        let published = self.inner.source.append(topic.as_str(), messages).await;
        let end = self.end_of(sub);
        let mut s = sub.lock();
        let mut wake = subscription::Wake::default();
        for (offset, _) in dead {
            wake = wake.or(match &published {
                Ok(_) => s.ack(offset, end),
                Err(_) => s.requeue(offset, Instant::now(), true),
            });
        }
        drop(s);
        if let Err(e) = published {
            tracing::warn!(subscription = %sub.name, error = ?e, "dead-letter publish failed; redelivering");
        }
        sub.wake(wake);
    }

    fn parse_ack_ids(ack_ids: &[String]) -> Result<Vec<AckId>> {
        ack_ids
            .iter()
            .map(|id| {
                AckId::parse(id).ok_or_else(|| {
                    let shown: String = id.chars().take(64).collect();
                    Error::invalid("ack_ids", format!("Invalid ack ID '{shown}'."))
                })
            })
            .collect()
    }

    /// Acknowledges; unknown and stale ids are ignored, malformed ones refused.
    pub async fn acknowledge(&self, name: &SubscriptionName, ack_ids: &[String]) -> Result<()> {
        Self::parse_ack_ids(ack_ids)?;
        if let Some((owners, node)) = self.owner_elsewhere(name) {
            return owners.acknowledge(&node, name, ack_ids).await;
        }
        self.acknowledge_here(name, ack_ids).await
    }

    /// [`PubSub::acknowledge`] on this node, which serves the subscription.
    pub async fn acknowledge_here(&self, name: &SubscriptionName, ack_ids: &[String]) -> Result<()> {
        let ids = Self::parse_ack_ids(ack_ids)?;
        let sub = self.sub(name).await?;
        let mut end = self.end_of(&sub);
        if ids.iter().any(|id| id.offset >= end) {
            // Delivered elsewhere (another node) past what this node knows of the log.
            end = self.fresh_end_of(&sub).await.unwrap_or(end);
        }
        let mut wake = subscription::Wake::default();
        {
            let mut s = sub.lock();
            for id in ids {
                wake = wake.or(s.ack(id.offset, end));
            }
        }
        sub.wake(wake);
        Ok(())
    }

    /// ModifyAckDeadline: 0 nacks, 1..=600 extends the lease from now.
    pub async fn modify_ack_deadline(&self, name: &SubscriptionName, ack_ids: &[String], seconds: i32) -> Result<()> {
        check_ack_deadline(seconds)?;
        Self::parse_ack_ids(ack_ids)?;
        if let Some((owners, node)) = self.owner_elsewhere(name) {
            return owners.modify_ack_deadline(&node, name, ack_ids, seconds).await;
        }
        self.modify_ack_deadline_here(name, ack_ids, seconds).await
    }

    /// [`PubSub::modify_ack_deadline`] on this node, which serves the subscription.
    pub async fn modify_ack_deadline_here(
        &self,
        name: &SubscriptionName,
        ack_ids: &[String],
        seconds: i32,
    ) -> Result<()> {
        check_ack_deadline(seconds)?;
        let ids = Self::parse_ack_ids(ack_ids)?;
        let sub = self.sub(name).await?;
        let now = Instant::now();
        let mut wake = subscription::Wake::default();
        {
            let mut s = sub.lock();
            for id in ids {
                wake = wake.or(s.modify_deadline(id, seconds as u32, now, self.inner.epoch));
            }
        }
        sub.wake(wake);
        Ok(())
    }

    /// Seek to a time: messages published from `time` on become deliverable again, earlier ones
    /// count as acknowledged. Any subscription can seek back as far as the log keeps messages.
    pub async fn seek_to_time(&self, name: &SubscriptionName, time: Timestamp) -> Result<()> {
        let sub = self.sub(name).await?;
        let topic = sub.lock().settings.topic.clone();
        let Some(topic) = topic else {
            return Err(Error::failed_precondition("The subscription's topic was deleted; it cannot seek."));
        };
        let offset = self.inner.source.offset_at(topic.as_str(), time).await.map_err(source_error)?;
        let (wake, cursor) = {
            let mut s = sub.lock();
            let wake = s.seek(offset);
            s.dirty = false;
            (wake, s.cursor())
        };
        sub.wake(wake);
        sub.reset();
        // A seek is saved before it is answered.
        self.inner.store.save_cursors(&[(name.clone(), cursor)]).await.map_err(storage)?;
        self.changed(Change::Seeked(name.clone(), offset));
        Ok(())
    }

    /// Opens a StreamingPull stream on the subscription.
    pub async fn open_stream(&self, name: &SubscriptionName, options: StreamOptions) -> Result<MessageStream> {
        let seconds = options.ack_deadline_seconds;
        if !(MIN_ACK_DEADLINE..=MAX_ACK_DEADLINE).contains(&seconds) {
            return Err(Error::invalid(
                "stream_ack_deadline_seconds",
                format!(
                    "Invalid stream ack deadline {seconds}: it must be between {MIN_ACK_DEADLINE} and {MAX_ACK_DEADLINE} seconds."
                ),
            ));
        }
        if *self.inner.shutdown.borrow() {
            return Err(closing());
        }
        if let Some((owners, node)) = self.owner_elsewhere(name) {
            // Served by another node: this stream asks it for messages, one pull at a time.
            let (settings, _) = self
                .inner
                .store
                .get_subscription(name)
                .await
                .map_err(storage)?
                .ok_or_else(|| not_found("subscription", name.as_str()))?;
            return Ok(MessageStream {
                service: self.clone(),
                source: StreamSource::Forwarded {
                    name: name.clone(),
                    ordering: settings.enable_message_ordering,
                    owners,
                    node,
                },
                lease: Duration::from_secs(seconds as u64),
                shutdown: self.inner.shutdown.subscribe(),
            });
        }
        let sub = self.sub(name).await?;
        let id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        sub.lock().open_stream(id, options.max_outstanding_messages, options.max_outstanding_bytes);
        Ok(MessageStream {
            service: self.clone(),
            source: StreamSource::Here { sub, id },
            lease: Duration::from_secs(seconds as u64),
            shutdown: self.inner.shutdown.subscribe(),
        })
    }

    // --- IAM ----------------------------------------------------------------------------------

    /// The resource must be an existing topic or subscription.
    async fn check_iam_resource(&self, resource: &str) -> Result<()> {
        if let Ok(t) = TopicName::parse("resource", resource) {
            self.get_topic(&t).await.map(|_| ())
        } else if let Ok(s) = SubscriptionName::parse("resource", resource) {
            self.get_subscription(&s).await.map(|_| ())
        } else {
            Err(Error::invalid(
                "resource",
                "The resource must be a topic (projects/P/topics/T) or a subscription (projects/P/subscriptions/S).",
            ))
        }
    }

    pub async fn get_iam_policy(&self, resource: &str) -> Result<IamPolicy> {
        self.check_iam_resource(resource).await?;
        let policy = self.inner.store.get_iam_policy(resource).await.map_err(storage)?;
        Ok(policy.unwrap_or_else(ferrocore_iam::policy::empty_policy))
    }

    /// Stores `policy`; an etag that is not the current one means someone else wrote in between.
    pub async fn set_iam_policy(&self, resource: &str, policy: IamPolicy) -> Result<IamPolicy> {
        self.check_iam_resource(resource).await?;
        for (i, b) in policy.bindings.iter().enumerate() {
            if b.role.is_empty() || !b.role.starts_with("roles/") {
                return Err(Error::invalid(format!("policy.bindings[{i}].role"), "A role must be named 'roles/...'."));
            }
            for m in &b.members {
                if !ferrocore_iam::policy::valid_member(m) {
                    let shown: String = m.chars().take(100).collect();
                    return Err(Error::invalid(
                        format!("policy.bindings[{i}].members"),
                        format!(
                            "Invalid member '{shown}': expected user:, serviceAccount:, group:, domain:, allUsers or allAuthenticatedUsers."
                        ),
                    ));
                }
            }
        }
        let current = self.get_iam_policy(resource).await?;
        ferrocore_iam::policy::check_etag(&policy.etag, &current.etag)?;
        let stored = IamPolicy { etag: ferrocore_iam::policy::new_etag(), ..policy };
        self.inner.store.set_iam_policy(resource, &stored).await.map_err(storage)?;
        Ok(stored)
    }

    /// Checks that the resource exists and every permission is a well-formed Pub/Sub one; returns
    /// them all. Which of them the caller holds is the API layer's to filter (`Iam::held`).
    pub async fn test_iam_permissions(&self, resource: &str, permissions: &[String]) -> Result<Vec<String>> {
        self.check_iam_resource(resource).await?;
        for p in permissions {
            if !p.starts_with("pubsub.") || p.len() > 128 || p.split('.').count() != 3 {
                let shown: String = p.chars().take(100).collect();
                return Err(Error::invalid("permissions", format!("Invalid permission '{shown}'.")));
            }
        }
        Ok(permissions.to_vec())
    }
}

fn page_of<T>(mut items: Vec<T>, limit: u32, token: impl Fn(&T) -> String) -> (Vec<T>, String) {
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        let next = items.last().map(&token).unwrap_or_default();
        (items, next)
    } else {
        (items, String::new())
    }
}

fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<()> {
    if labels.len() > 64 {
        return Err(Error::invalid("labels", "At most 64 labels are allowed."));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        let value_ok =
            v.len() <= 63 && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !key_ok || !value_ok {
            let shown: String = k.chars().take(63).collect();
            return Err(Error::invalid(
                "labels",
                format!(
                    "Invalid label '{shown}': keys start with a lowercase letter; keys and values have at most 63 lowercase letters, digits, '_' or '-'."
                ),
            ));
        }
    }
    Ok(())
}

fn check_retention(field: &str, seconds: Option<i64>) -> Result<()> {
    match seconds {
        Some(s) if !(MIN_RETENTION_SECONDS..=MAX_RETENTION_SECONDS).contains(&s) => Err(Error::invalid(
            field,
            format!("The retention must be between {MIN_RETENTION_SECONDS}s and {MAX_RETENTION_SECONDS}s."),
        )),
        _ => Ok(()),
    }
}

/// Applies Pub/Sub's defaults and range checks to a subscription a client sent.
fn normalize_subscription(mut sub: Subscription, created: Timestamp) -> Result<Subscription> {
    sub.created = created;
    if sub.ack_deadline_seconds == 0 {
        sub.ack_deadline_seconds = DEFAULT_ACK_DEADLINE;
    }
    if !(MIN_ACK_DEADLINE..=MAX_ACK_DEADLINE).contains(&sub.ack_deadline_seconds) {
        return Err(Error::invalid(
            "ack_deadline_seconds",
            format!(
                "Invalid ack deadline {}: it must be between {MIN_ACK_DEADLINE} and {MAX_ACK_DEADLINE} seconds.",
                sub.ack_deadline_seconds
            ),
        ));
    }
    if sub.message_retention_seconds == 0 {
        sub.message_retention_seconds = DEFAULT_RETENTION_SECONDS;
    }
    check_retention("message_retention_duration", Some(sub.message_retention_seconds))?;
    check_labels(&sub.labels)?;
    if !sub.filter.trim().is_empty() {
        filter::Filter::parse(&sub.filter).map_err(|e| Error::invalid("filter", format!("Invalid filter: {e}")))?;
    }
    if let Some(p) = &mut sub.dead_letter_policy {
        if p.max_delivery_attempts == 0 {
            p.max_delivery_attempts = 5;
        }
        if !(5..=100).contains(&p.max_delivery_attempts) {
            return Err(Error::invalid(
                "dead_letter_policy.max_delivery_attempts",
                "max_delivery_attempts must be between 5 and 100.",
            ));
        }
    }
    if let Some(r) = &sub.retry_policy {
        let ok = (0..=600).contains(&r.minimum_backoff_seconds)
            && (0..=600).contains(&r.maximum_backoff_seconds)
            && r.minimum_backoff_seconds <= r.maximum_backoff_seconds;
        if !ok {
            return Err(Error::invalid(
                "retry_policy",
                "The retry back-offs must be between 0 and 600 seconds, the minimum not above the maximum.",
            ));
        }
    }
    if let Some(ttl) = sub.expiration_ttl_seconds
        && ttl != 0
        && ttl < 86_400
    {
        return Err(Error::invalid("expiration_policy.ttl", "The expiration TTL must be at least one day."));
    }
    Ok(sub)
}

/// Pub/Sub's limits on a publish request.
fn check_publish(messages: &[OutgoingMessage]) -> Result<()> {
    if messages.is_empty() {
        return Err(Error::invalid("messages", "A publish request needs at least one message."));
    }
    if messages.len() > MAX_PUBLISH_MESSAGES {
        return Err(Error::invalid(
            "messages",
            format!("A publish request may carry at most {MAX_PUBLISH_MESSAGES} messages; it had {}.", messages.len()),
        ));
    }
    let mut total = 0usize;
    for (i, m) in messages.iter().enumerate() {
        if m.data.is_empty() && m.attributes.is_empty() {
            return Err(Error::invalid(format!("messages[{i}]"), "A message needs data or at least one attribute."));
        }
        if m.attributes.len() > MAX_ATTRIBUTES {
            return Err(Error::invalid(
                format!("messages[{i}].attributes"),
                format!("A message may have at most {MAX_ATTRIBUTES} attributes."),
            ));
        }
        for (k, v) in &m.attributes {
            if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY_BYTES {
                return Err(Error::invalid(
                    format!("messages[{i}].attributes"),
                    format!("Attribute keys must be 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes."),
                ));
            }
            if k.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("goog")) {
                return Err(Error::invalid(
                    format!("messages[{i}].attributes"),
                    "Attribute keys starting with 'goog' are reserved.",
                ));
            }
            if v.len() > MAX_ATTRIBUTE_VALUE_BYTES {
                return Err(Error::invalid(
                    format!("messages[{i}].attributes"),
                    format!("Attribute values must be at most {MAX_ATTRIBUTE_VALUE_BYTES} bytes."),
                ));
            }
            total += k.len() + v.len();
        }
        if m.ordering_key.len() > MAX_ORDERING_KEY_BYTES {
            return Err(Error::invalid(
                format!("messages[{i}].ordering_key"),
                format!("Ordering keys must be at most {MAX_ORDERING_KEY_BYTES} bytes."),
            ));
        }
        total += m.data.len() + m.ordering_key.len();
    }
    if total > MAX_PUBLISH_BYTES {
        return Err(Error::invalid(
            "messages",
            format!("A publish request may carry at most {MAX_PUBLISH_BYTES} bytes."),
        ));
    }
    Ok(())
}

/// A StreamingPull stream's hold on its subscription. Dropping it closes the stream's window;
/// its leases run to their deadlines.
pub struct MessageStream {
    service: PubSub,
    source: StreamSource,
    lease: Duration,
    shutdown: watch::Receiver<bool>,
}

enum StreamSource {
    /// Served by this node.
    Here { sub: Arc<Sub>, id: StreamId },
    /// Served by another node (a cluster's owner of the subscription), pulled from there.
    Forwarded { name: SubscriptionName, ordering: bool, owners: Arc<dyn Owners>, node: String },
}

impl MessageStream {
    pub fn subscription(&self) -> &SubscriptionName {
        match &self.source {
            StreamSource::Here { sub, .. } => &sub.name,
            StreamSource::Forwarded { name, .. } => name,
        }
    }

    pub fn message_ordering(&self) -> bool {
        match &self.source {
            StreamSource::Here { sub, .. } => sub.lock().settings.enable_message_ordering,
            StreamSource::Forwarded { ordering, .. } => *ordering,
        }
    }

    /// Waits for up to `max` messages within the stream's window. Ends with UNAVAILABLE at
    /// shutdown (clients reconnect) and NOT_FOUND once the subscription is deleted.
    pub async fn next(&mut self, max: usize) -> Result<Vec<Delivery>> {
        let (sub, id) = match &self.source {
            StreamSource::Here { sub, id } => (sub.clone(), *id),
            StreamSource::Forwarded { name, owners, node, .. } => {
                let max = i32::try_from(max.max(1)).unwrap_or(i32::MAX);
                loop {
                    if *self.shutdown.borrow() {
                        return Err(closing());
                    }
                    let got = tokio::select! {
                        got = owners.pull(node, name, max, FORWARDED_PULL_WAIT) => got?,
                        _ = self.shutdown.wait_for(|&s| s) => return Err(closing()),
                    };
                    if !got.is_empty() {
                        return Ok(got);
                    }
                }
            }
        };
        loop {
            let notified = sub.deliverable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if *self.shutdown.borrow() {
                return Err(closing());
            }
            let deliverable = {
                let s = sub.lock();
                if s.deleted {
                    return Err(not_found("subscription", sub.name.as_str()));
                }
                if s.moved {
                    return Err(Error::new(Code::Unavailable, "The subscription moved to another node; reconnect."));
                }
                s.has_deliverable(id)
            };
            if deliverable {
                let got = self.service.take(&sub, id, max, self.lease);
                if !got.is_empty() {
                    return Ok(got);
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.shutdown.wait_for(|&s| s) => return Err(closing()),
            }
        }
    }

    /// Acks sent inside the stream (older clients do this).
    pub async fn acknowledge(&self, ack_ids: &[String]) -> Result<()> {
        self.service.acknowledge(self.subscription(), ack_ids).await
    }

    pub async fn modify_ack_deadline(&self, ack_ids: &[String], seconds: i32) -> Result<()> {
        self.service.modify_ack_deadline(self.subscription(), ack_ids, seconds).await
    }

    /// A later request's `stream_ack_deadline_seconds`.
    pub fn set_ack_deadline(&mut self, seconds: i32) -> Result<()> {
        if !(MIN_ACK_DEADLINE..=MAX_ACK_DEADLINE).contains(&seconds) {
            return Err(Error::invalid(
                "stream_ack_deadline_seconds",
                format!(
                    "Invalid stream ack deadline {seconds}: it must be between {MIN_ACK_DEADLINE} and {MAX_ACK_DEADLINE} seconds."
                ),
            ));
        }
        self.lease = Duration::from_secs(seconds as u64);
        Ok(())
    }
}

impl Drop for MessageStream {
    fn drop(&mut self) {
        if let StreamSource::Here { sub, id } = &self.source {
            sub.lock().close_stream(*id);
        }
    }
}

async fn flush_loop(inner: std::sync::Weak<Inner>, mut shutdown: watch::Receiver<bool>) {
    let Some(period) = inner.upgrade().map(|i| i.settings.cursor_flush) else { return };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|&s| s) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        flush_once(&inner).await;
    }
}

/// Saves every changed cursor in one store call.
async fn flush_once(inner: &Inner) {
    let subs: Vec<Arc<Sub>> = inner.subs.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
    let mut batch = Vec::new();
    for sub in &subs {
        let mut s = sub.lock();
        if s.dirty && !s.deleted {
            s.dirty = false;
            batch.push((sub.name.clone(), s.cursor()));
        }
    }
    if batch.is_empty() {
        return;
    }
    if let Err(e) = inner.store.save_cursors(&batch).await {
        tracing::error!(error = %e, "saving subscription cursors failed; retrying");
        for sub in &subs {
            if batch.iter().any(|(n, _)| *n == sub.name) {
                sub.lock().dirty = true;
            }
        }
    }
}
