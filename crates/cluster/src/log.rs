//! The topic log of a cluster: one NATS JetStream stream per topic, shared by every node.
//!
//! On one node, telemetry lands in the embedded log in the data directory. In a cluster every
//! node appends to, and reads from, the same JetStream streams, so a device's events published
//! through node A are read by a Pub/Sub subscriber, a sink or `events tail` on node B. This type
//! stands behind both seams of the core: [`Sink`] (a QoS 1 PUBACK waits for JetStream's ack) and
//! [`TopicSource`] (reads by offset, from either end, or from a time).
//!
//! Mapping:
//! * a topic `projects/P/topics/T` is the stream `{prefix}_log_{h}` capturing the single subject
//!   `{prefix}_log.{h}`, where `h` is the first 128 bits of the name's SHA-256 in hex (topic ids
//!   may hold characters and lengths that stream names and subject tokens cannot). The topic's
//!   name is the stream's description; a stream whose description differs is refused. The
//!   subject's first token is not `{prefix}`, so the cluster's own `{prefix}.>` traffic never
//!   carries telemetry;
//! * a message's offset is its stream sequence minus one (offsets start at 0, as in the embedded
//!   log); its time is the time JetStream stored it, so reading from a time is exact;
//! * attributes travel inside the payload (`0xF1`, a big-endian u16 count, then per attribute a
//!   u16 length and the name, a u32 length and the value, then the data), since NATS headers
//!   cannot carry every name and value Pub/Sub allows;
//! * retention is the stream's own: `max_age` and `max_bytes` from `--topic-retention-*`, oldest
//!   first. A sink's or a subscription's position does not hold records back (unlike the
//!   embedded log's holds); one that falls behind the retention loses what was removed, and
//!   counts it.
//!
//! Reads go through ephemeral pull consumers (no acks, memory-backed) positioned at the offset
//! read from. Readers read sequentially (sinks, subscriptions, tails), so a consumer that
//! finished a read is kept, keyed by the offset it stands at, and the next read from there
//! reuses it instead of creating another; unused ones vanish on the server after
//! [`READER_IDLE`]. Extents (first and next offset, bytes per topic) are listed from JetStream
//! every [`EXTENT_REFRESH`] and moved forward by this node's own appends at once.

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, Subject};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use ferrocore_core::sink::{Message, Sink, SinkError, SinkHealth, Ticket};
use ferrocore_core::topics::{ReadBatch, ReadError, ReadFrom, RetentionHold, StoredMessage, TopicExtent, TopicSource};
use ferrocore_model::Timestamp;
use ferrocore_model::pubsub::TopicName;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How often the extents of every topic are listed from JetStream.
pub const EXTENT_REFRESH: Duration = Duration::from_secs(2);
/// A positioned reader unused for this long is removed by the server.
pub const READER_IDLE: Duration = Duration::from_secs(60);
/// Positioned readers kept for reuse, over all topics.
const MAX_READERS: usize = 512;
/// How long a JetStream request (stream lookup, consumer creation, ack) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes whose acks may be outstanding at once, over all topics.
const ACKS_IN_FLIGHT: usize = 16_384;
const FORMAT: u8 = 0xF1;

/// Where the log lives and how long it keeps what it holds.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `nats://HOST:PORT` (the cluster's NATS).
    pub url: String,
    /// The cluster prefix: streams and subjects start with it.
    pub prefix: String,
    pub node_id: String,
    pub max_age: Duration,
    pub max_bytes_per_topic: u64,
    /// JetStream replicas per stream (1 on a single NATS server; 3 on a NATS cluster).
    pub replicas: usize,
}

/// The clustered topic log. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamLog {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    js: jetstream::Context,
    settings: LogSettings,
    /// Streams known to exist, by topic name.
    streams: Mutex<HashMap<String, Arc<TopicStream>>>,
    /// Extents as last listed, moved forward by this node's appends.
    extents: Mutex<HashMap<String, TopicExtent>>,
    /// Consumers standing at a known sequence, by (stream, next stream sequence).
    readers: Mutex<Readers>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The server's max_payload, read with the extents rather than per append (reading the
    /// client's server info clones it).
    max_payload: AtomicUsize,
}

struct TopicStream {
    name: String,
    subject: Subject,
}

#[derive(Default)]
struct Readers {
    by_position: HashMap<(String, u64), Vec<consumer::PullConsumer>>,
    count: usize,
}

/// The stream and subject names of `topic` under `prefix`.
pub fn stream_names(prefix: &str, topic: &str) -> (String, String) {
    let digest = Sha256::digest(topic.as_bytes());
    let mut h = String::with_capacity(32);
    for b in &digest[..16] {
        h.push_str(&format!("{b:02x}"));
    }
    (format!("{prefix}_log_{h}"), format!("{prefix}_log.{h}"))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ReadError {
    ReadError::Unavailable(format!("{what}: {e}"))
}

fn to_sink_error(e: ReadError) -> SinkError {
    match e {
        ReadError::InvalidTopic(m) => SinkError::Rejected(m),
        ReadError::Unavailable(m) => SinkError::Unavailable(m),
    }
}

fn check_topic(topic: &str) -> Result<(), ReadError> {
    TopicName::parse("topic", topic).map(|_| ()).map_err(|e| ReadError::InvalidTopic(e.message))
}

/// Encodes one message's attributes and data as the stream keeps them.
fn encode(m: &Message) -> Result<Bytes, String> {
    if m.attributes.len() > usize::from(u16::MAX) {
        return Err("too many attributes".into());
    }
    let size = 3 + m.attributes.iter().map(|(k, v)| 6 + k.len() + v.len()).sum::<usize>() + m.data.len();
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(FORMAT);
    out.put_u16(m.attributes.len() as u16);
    for (k, v) in &m.attributes {
        let klen = u16::try_from(k.len()).map_err(|_| "an attribute name is too long")?;
        let vlen = u32::try_from(v.len()).map_err(|_| "an attribute value is too long")?;
        out.put_u16(klen);
        out.put_slice(k.as_bytes());
        out.put_u32(vlen);
        out.put_slice(v.as_bytes());
    }
    out.put_slice(&m.data);
    Ok(out.freeze())
}

/// The inverse of [`encode`]; `None` for anything it did not write.
fn decode(payload: &Bytes) -> Option<(Vec<(String, String)>, Bytes)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    let mut b: &[u8] = payload;
    if *take(&mut b, 1)?.first()? != FORMAT {
        return None;
    }
    let count = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
    let mut attributes = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let klen = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
        let k = std::str::from_utf8(take(&mut b, usize::from(klen))?).ok()?.to_owned();
        let vlen = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
        let v = std::str::from_utf8(take(&mut b, vlen as usize)?).ok()?.to_owned();
        attributes.push((k, v));
    }
    let start = payload.len() - b.len();
    Some((attributes, payload.slice(start..)))
}

impl JetStreamLog {
    /// Connects to NATS (in the background when it is not up yet) and starts listing extents.
    pub async fn connect(settings: LogSettings) -> Result<Self, String> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("ferrocore-{}-log", settings.node_id))
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .connect(&settings.url)
            .await
            .map_err(|e| format!("cannot connect to NATS (--cluster): {e}"))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .ack_timeout(REQUEST_TIMEOUT)
            .max_ack_inflight(ACKS_IN_FLIGHT)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let (stop, _) = tokio::sync::watch::channel(false);
        let log = Self {
            inner: Arc::new(Inner {
                client,
                js,
                settings,
                streams: Mutex::default(),
                extents: Mutex::default(),
                readers: Mutex::default(),
                stop,
                max_payload: AtomicUsize::new(0),
            }),
        };
        tokio::spawn(log.clone().refresh_extents());
        Ok(log)
    }

    /// Stops listing extents. Appends and reads in flight finish on their own.
    pub async fn close(&self) {
        let _ = self.inner.stop.send(true);
        let _ = self.inner.client.flush().await;
    }

    /// Removes every stream of the log under `prefix`: for tests and for decommissioning a
    /// cluster. Returns how many were removed.
    pub async fn remove_all(url: &str, prefix: &str) -> Result<usize, String> {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let js = jetstream::new(client);
        let start = format!("{prefix}_log_");
        let mut names = js.stream_names();
        let mut doomed = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| e.to_string())?;
            if name.starts_with(&start) {
                doomed.push(name);
            }
        }
        for name in &doomed {
            js.delete_stream(name).await.map_err(|e| e.to_string())?;
        }
        Ok(doomed.len())
    }

    async fn refresh_extents(self) {
        let mut stop = self.inner.stop.subscribe();
        loop {
            self.inner.max_payload.store(self.inner.client.server_info().max_payload, Ordering::Relaxed);
            if let Err(e) = self.list_extents().await {
                tracing::debug!(error = %e, "listing the topic log's streams failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(EXTENT_REFRESH) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn list_extents(&self) -> Result<(), String> {
        let start = format!("{}_log_", self.inner.settings.prefix);
        let mut listed = HashMap::new();
        let mut streams = self.inner.js.streams();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| e.to_string())?;
            if !info.config.name.starts_with(&start) {
                continue;
            }
            let Some(topic) = info.config.description.clone() else { continue };
            listed.insert(topic.clone(), extent_of(topic, &info.state));
        }
        let mut extents = self.inner.extents.lock().unwrap_or_else(PoisonError::into_inner);
        for (topic, fresh) in listed {
            let e = extents.entry(topic).or_insert_with(|| fresh.clone());
            // Appends made here since the listing was taken are not undone by it.
            e.next_offset = e.next_offset.max(fresh.next_offset);
            e.earliest_offset = fresh.earliest_offset.min(e.next_offset);
            e.bytes = fresh.bytes;
        }
        Ok(())
    }

    fn config(&self, topic: &str, name: &str, subject: &str) -> stream::Config {
        let s = &self.inner.settings;
        stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            description: Some(topic.to_owned()),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: s.max_age,
            max_bytes: i64::try_from(s.max_bytes_per_topic).unwrap_or(i64::MAX),
            num_replicas: s.replicas.max(1),
            allow_direct: true,
            ..Default::default()
        }
    }

    /// The stream of `topic`; created when `create` and it does not exist yet, else `None`.
    async fn stream(&self, topic: &str, create: bool) -> Result<Option<Arc<TopicStream>>, ReadError> {
        if let Some(s) = self.inner.streams.lock().unwrap_or_else(PoisonError::into_inner).get(topic) {
            return Ok(Some(s.clone()));
        }
        check_topic(topic)?;
        let (name, subject) = stream_names(&self.inner.settings.prefix, topic);
        let info = if create {
            let mut s = match self.inner.js.get_or_create_stream(self.config(topic, &name, &subject)).await {
                Ok(s) => s,
                // Another node created it between this one's lookup and its create.
                Err(e) => self
                    .inner
                    .js
                    .get_stream(&name)
                    .await
                    .map_err(|_| unavailable("creating the topic's stream failed", e))?,
            };
            let info = s.info().await.map_err(|e| unavailable("reading the topic's stream failed", e))?.clone();
            let wanted = self.config(topic, &name, &subject);
            if info.config.description.as_deref() == Some(topic)
                && (info.config.max_age != wanted.max_age || info.config.max_bytes != wanted.max_bytes)
            {
                // The retention flags changed since the stream was made: they apply from now on.
                self.inner.js.update_stream(wanted).await.map_err(|e| unavailable("updating the topic's stream", e))?;
            }
            info
        } else {
            match self.inner.js.get_stream(&name).await {
                Ok(mut s) => s.info().await.map_err(|e| unavailable("reading the topic's stream failed", e))?.clone(),
                Err(e)
                    if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
                {
                    // Nothing was ever appended: nothing to read yet.
                    return Ok(None);
                }
                Err(e) => return Err(unavailable("looking up the topic's stream failed", e)),
            }
        };
        if info.config.description.as_deref() != Some(topic) {
            return Err(ReadError::Unavailable(format!(
                "stream {name} belongs to another topic ({:?}); not using it",
                info.config.description
            )));
        }
        let handle = Arc::new(TopicStream { name, subject: Subject::from(subject) });
        self.inner.streams.lock().unwrap_or_else(PoisonError::into_inner).insert(topic.to_owned(), handle.clone());
        let mut extents = self.inner.extents.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = extent_of(topic.to_owned(), &info.state);
        extents
            .entry(topic.to_owned())
            .and_modify(|e| e.next_offset = e.next_offset.max(fresh.next_offset))
            .or_insert(fresh);
        Ok(Some(handle))
    }

    /// Fails at once without NATS: the client would queue requests and publishes until it is
    /// back, so a device would wait out the ack timeout for a PUBACK that is refused anyway.
    fn connected(&self) -> Result<(), ReadError> {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(ReadError::Unavailable("not connected to NATS".into())),
        }
    }

    /// Publishes `messages` in order and returns the acks to await.
    async fn send(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<jetstream::context::PublishAckFuture>, ReadError> {
        self.connected()?;
        let stream = self.stream(topic, true).await?.ok_or_else(|| unavailable("no stream", topic))?;
        // Every size is checked before anything is sent, so a batch is refused whole.
        let limit = self.inner.max_payload.load(Ordering::Relaxed);
        let mut payloads = Vec::with_capacity(messages.len());
        for m in &messages {
            let payload = encode(m).map_err(ReadError::InvalidTopic)?;
            if limit > 0 && payload.len() + stream.subject.len() > limit {
                return Err(ReadError::InvalidTopic(format!(
                    "A message of {} bytes is larger than the cluster's topic log takes ({limit} bytes, NATS max_payload).",
                    m.data.len()
                )));
            }
            payloads.push(payload);
        }
        let mut acks = Vec::with_capacity(payloads.len());
        for p in payloads {
            let ack = self
                .inner
                .js
                .publish(stream.subject.clone(), p)
                .await
                .map_err(|e| unavailable("publishing to the topic log failed", e))?;
            acks.push(ack);
        }
        Ok(acks)
    }

    fn appended(&self, topic: &str, last_offset: u64, count: u64, bytes: u64) {
        let mut extents = self.inner.extents.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked up before inserting: no name is allocated per append once the topic is known.
        if !extents.contains_key(topic) {
            let earliest = (last_offset + 1).saturating_sub(count);
            let fresh = TopicExtent { name: topic.to_owned(), earliest_offset: earliest, next_offset: 0, bytes: 0 };
            extents.insert(topic.to_owned(), fresh);
        }
        if let Some(e) = extents.get_mut(topic) {
            e.next_offset = e.next_offset.max(last_offset + 1);
            e.bytes += bytes;
        }
    }

    fn take_reader(&self, stream: &str, seq: u64) -> Option<consumer::PullConsumer> {
        let mut r = self.inner.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (stream.to_owned(), seq);
        let list = r.by_position.get_mut(&key)?;
        let c = list.pop();
        if list.is_empty() {
            r.by_position.remove(&key);
        }
        if c.is_some() {
            r.count -= 1;
        }
        c
    }

    fn keep_reader(&self, stream: &str, seq: u64, c: consumer::PullConsumer) {
        let mut r = self.inner.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if r.count >= MAX_READERS {
            // Dropped here, removed by the server once idle.
            let Some(key) = r.by_position.keys().next().cloned() else { return };
            let n = r.by_position.remove(&key).map_or(0, |l| l.len());
            r.count -= n;
        }
        r.by_position.entry((stream.to_owned(), seq)).or_default().push(c);
        r.count += 1;
    }

    async fn new_reader(
        &self,
        stream: &str,
        deliver: consumer::DeliverPolicy,
    ) -> Result<consumer::PullConsumer, ReadError> {
        let s =
            self.inner.js.get_stream_no_info(stream).await.map_err(|e| unavailable("opening the topic's stream", e))?;
        s.create_consumer(consumer::pull::Config {
            deliver_policy: deliver,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: READER_IDLE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("creating a reader on the topic's stream", e))
    }

    /// One pull of up to `max` messages; waits up to `wait` for the first when given.
    async fn pull(
        c: &consumer::PullConsumer,
        max: usize,
        max_bytes: usize,
        wait: Option<Duration>,
        out: &mut Vec<(u64, StoredMessage)>,
    ) -> Result<(), String> {
        let batch = match wait {
            None => c.fetch().max_messages(max).max_bytes(max_bytes).messages().await,
            Some(w) => c.batch().max_messages(max).max_bytes(max_bytes).expires(w).messages().await,
        };
        let mut batch = batch.map_err(|e| e.to_string())?;
        while let Some(m) = batch.next().await {
            let m = match m {
                Ok(m) => m,
                // "Message Size Exceeds MaxBytes" ends a batch that has what fits.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e.to_string()),
            };
            let info = m.info().map_err(|e| e.to_string())?;
            let (seq, time) = (info.stream_sequence, info.published.unix_timestamp_nanos());
            let time = Timestamp(i64::try_from(time).unwrap_or(i64::MAX));
            let (attributes, data) = decode(&m.message.payload).unwrap_or_else(|| {
                tracing::warn!(
                    stream = info.stream,
                    seq,
                    "a message in the topic log is not in Ferrocore's format; read as bare data"
                );
                (Vec::new(), m.message.payload.clone())
            });
            out.push((seq, StoredMessage { offset: seq - 1, time, attributes, data }));
        }
        Ok(())
    }

    async fn read_from(
        &self,
        topic: &str,
        stream: &TopicStream,
        seq: u64,
        max: usize,
        max_bytes: usize,
        wait: Option<Duration>,
    ) -> Result<ReadBatch, ReadError> {
        let max = max.max(1);
        let mut got = Vec::new();
        let mut attempts = 0;
        let consumer = loop {
            attempts += 1;
            let c = match self.take_reader(&stream.name, seq) {
                Some(c) => c,
                None => {
                    self.new_reader(&stream.name, consumer::DeliverPolicy::ByStartSequence { start_sequence: seq })
                        .await?
                }
            };
            got.clear();
            let bytes = max_bytes.max(1);
            let mut pulled = Self::pull(&c, max, bytes, None, &mut got).await;
            if pulled.is_err() && got.is_empty() {
                // The first message alone is larger than max_bytes: at least one is returned.
                pulled = Self::pull(&c, 1, 0, None, &mut got).await;
            }
            if let Err(e) = pulled {
                if attempts < 2 {
                    // A reader kept from before may be gone on the server (idle, or NATS restarted).
                    continue;
                }
                return Err(unavailable("reading the topic log failed", e));
            }
            if got.first().is_some_and(|(s, _)| *s < seq) {
                // A reader that moved past where it was kept: start over with a fresh one.
                if attempts < 2 {
                    continue;
                }
                return Err(ReadError::Unavailable("a topic log reader was out of position".into()));
            }
            break c;
        };
        if got.is_empty()
            && let Some(w) = wait
        {
            Self::pull(&consumer, 1, 0, Some(w), &mut got)
                .await
                .map_err(|e| unavailable("waiting on the topic log failed", e))?;
            if !got.is_empty() && max > 1 {
                let room = max_bytes.saturating_sub(got[0].1.data.len()).max(1);
                let _ = Self::pull(&consumer, max - 1, room, None, &mut got).await;
            }
        }
        let cached = self.extent(topic);
        let next_seq = got.last().map_or(seq, |(s, _)| s + 1);
        let mut earliest = cached.as_ref().map_or(0, |e| e.earliest_offset);
        if let Some((first, _)) = got.first()
            && *first > seq
        {
            // Retention removed what lay between: the stream starts at the first one read.
            earliest = earliest.max(first - 1);
        }
        self.keep_reader(&stream.name, next_seq, consumer);
        let next_offset = next_seq - 1;
        Ok(ReadBatch {
            messages: got.into_iter().map(|(_, m)| m).collect(),
            next_offset,
            earliest_offset: earliest.min(next_offset),
        })
    }

    async fn state(&self, stream: &TopicStream) -> Result<stream::State, ReadError> {
        let s =
            self.inner.js.get_stream(&stream.name).await.map_err(|e| unavailable("reading the topic's stream", e))?;
        Ok(s.cached_info().state.clone())
    }
}

fn extent_of(topic: String, state: &stream::State) -> TopicExtent {
    let next = state.last_sequence;
    let earliest = if state.messages == 0 { next } else { state.first_sequence.saturating_sub(1) };
    TopicExtent { name: topic, earliest_offset: earliest.min(next), next_offset: next, bytes: state.bytes }
}

async fn await_acks(acks: Vec<jetstream::context::PublishAckFuture>) -> Result<Vec<u64>, ReadError> {
    let mut offsets = Vec::with_capacity(acks.len());
    for a in acks {
        let ack = a.await.map_err(|e| unavailable("the topic log did not acknowledge", e))?;
        if ack.duplicate {
            tracing::debug!(seq = ack.sequence, "the topic log took a message as a duplicate");
        }
        offsets.push(ack.sequence.saturating_sub(1));
    }
    Ok(offsets)
}

#[async_trait]
impl Sink for JetStreamLog {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), SinkError> {
        self.submit(topic, messages).await?.await
    }

    async fn submit(&self, topic: &str, messages: Vec<Message>) -> Result<Ticket, SinkError> {
        let (count, bytes) = (messages.len() as u64, messages.iter().map(|m| m.data.len() as u64).sum::<u64>());
        let acks = self.send(topic, messages).await.map_err(to_sink_error)?;
        let (log, topic) = (self.clone(), topic.to_owned());
        Ok(Box::pin(async move {
            let offsets = await_acks(acks).await.map_err(|e| {
                tracing::warn!(%topic, error = %e, "topic log append failed");
                to_sink_error(e)
            })?;
            if let Some(&last) = offsets.iter().max() {
                log.appended(&topic, last, count, bytes);
            }
            Ok(())
        }))
    }

    fn health(&self) -> SinkHealth {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => SinkHealth::Healthy,
            _ => SinkHealth::Degraded("not connected to NATS".into()),
        }
    }
}

#[async_trait]
impl TopicSource for JetStreamLog {
    async fn append(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<u64>, ReadError> {
        let (count, bytes) = (messages.len() as u64, messages.iter().map(|m| m.data.len() as u64).sum::<u64>());
        let offsets = await_acks(self.send(topic, messages).await?).await?;
        if let Some(&last) = offsets.iter().max() {
            self.appended(topic, last, count, bytes);
        }
        Ok(offsets)
    }

    async fn read(
        &self,
        topic: &str,
        from: ReadFrom,
        max_messages: usize,
        max_bytes: usize,
        wait: Option<Duration>,
    ) -> Result<ReadBatch, ReadError> {
        self.connected()?;
        // A reader that will wait makes the stream, so that it sees the first message.
        let Some(stream) = self.stream(topic, wait.is_some()).await? else {
            return Ok(ReadBatch::default());
        };
        let seq = match from {
            ReadFrom::Offset(o) => o.saturating_add(1),
            ReadFrom::Earliest => {
                let s = self.state(&stream).await?;
                if s.messages == 0 { s.last_sequence + 1 } else { s.first_sequence }
            }
            ReadFrom::Latest => self.state(&stream).await?.last_sequence + 1,
        };
        self.read_from(topic, &stream, seq, max_messages, max_bytes, wait).await
    }

    async fn offset_at(&self, topic: &str, time: Timestamp) -> Result<u64, ReadError> {
        self.connected()?;
        let Some(stream) = self.stream(topic, false).await? else { return Ok(0) };
        let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time.nanos()))
            .map_err(|_| ReadError::InvalidTopic("The time is out of range.".into()))?;
        let c = self.new_reader(&stream.name, consumer::DeliverPolicy::ByStartTime { start_time }).await?;
        let mut got = Vec::new();
        Self::pull(&c, 1, 0, None, &mut got).await.map_err(|e| unavailable("reading the topic log failed", e))?;
        match got.first() {
            Some((seq, _)) => {
                let seq = *seq;
                self.keep_reader(&stream.name, seq + 1, c);
                Ok(seq - 1)
            }
            None => Ok(self.state(&stream).await?.last_sequence),
        }
    }

    async fn next_offset(&self, topic: &str) -> Result<u64, ReadError> {
        self.connected()?;
        let Some(stream) = self.stream(topic, false).await? else { return Ok(0) };
        let state = self.state(&stream).await?;
        let fresh = extent_of(topic.to_owned(), &state);
        let mut extents = self.inner.extents.lock().unwrap_or_else(PoisonError::into_inner);
        let e = extents.entry(topic.to_owned()).or_insert_with(|| fresh.clone());
        e.next_offset = e.next_offset.max(fresh.next_offset);
        Ok(fresh.next_offset)
    }

    fn extent(&self, topic: &str) -> Option<TopicExtent> {
        self.inner
            .extents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .filter(|e| e.next_offset > 0)
            .cloned()
    }

    fn extents(&self) -> Vec<TopicExtent> {
        let mut all: Vec<TopicExtent> = self
            .inner
            .extents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|e| e.next_offset > 0)
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Retention is the stream's own (age and size); positions do not hold records back.
    fn hold(&self, _topic: &str, _offset: u64) -> Box<dyn RetentionHold> {
        Box::new(NoHold)
    }
}

struct NoHold;

impl RetentionHold for NoHold {
    fn advance(&self, _offset: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_fit_nats() {
        let (stream, subject) = stream_names("fc", "projects/p/topics/a.b~c%d+e");
        assert_eq!(stream.len(), "fc_log_".len() + 32);
        assert!(subject.starts_with("fc_log."));
        assert!(!stream.contains('.') && !stream.contains('*') && !stream.contains('>'));
        assert_eq!(stream_names("fc", "projects/p/topics/a.b~c%d+e").0, stream);
        assert_ne!(stream_names("fc", "projects/p/topics/other").0, stream);
    }

    #[test]
    fn the_format_round_trips_and_refuses_what_it_did_not_write() {
        let m = Message {
            time: Timestamp(1),
            attributes: vec![("deviceId".into(), "d-1".into()), ("ü".into(), String::new())],
            data: Bytes::from_static(b"\x00payload"),
        };
        let encoded = encode(&m).expect("encode");
        let (attributes, data) = decode(&encoded).expect("decode");
        assert_eq!((attributes, data), (m.attributes.clone(), m.data.clone()));
        assert!(decode(&Bytes::from_static(b"plain")).is_none());
        assert!(decode(&encoded.slice(..encoded.len() - m.data.len() - 1)).is_none(), "cut inside an attribute");
        for cut in 0..encoded.len() - m.data.len() {
            let _ = decode(&encoded.slice(..cut));
        }
    }
}
