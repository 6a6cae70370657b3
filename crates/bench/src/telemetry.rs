//! `telemetry`: N connected devices publish S-byte payloads at QoS 0 or 1, as fast as the server
//! acknowledges them (a window of `--inflight` unacknowledged messages per device) or at a
//! target rate. Every payload starts with the run id, the device number and a sequence number,
//! so what was acknowledged can be looked up at the other end: in Ferrocore's topic log through
//! the REST API, or at a subscriber on the broker. Both readers run while devices publish
//! (`--verify live`, the default) or only afterwards (`--verify after`).

use crate::fleet::Fleet;
use crate::mqtt::Client;
use crate::report::{Report, latency_row, opt_us, thousands};
use crate::stats::{Histogram, LatencySummary};
use crate::util::{Errors, Progress, for_each_concurrent};
use crate::{Broker, Ctx};
use anyhow::{Result, bail};
use bytes::Bytes;
use ferrocore_mqtt_codec::{Packet, Publish, QoS};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Bytes at the start of every payload: run id (u64), device (u32), sequence (u32), little endian.
pub const HEADER: usize = 16;
/// Payloads of at least this many bytes also carry the time they were published (u64, nanoseconds
/// since the Unix epoch, little endian) after the header, so a receiver on the same machine can
/// time publish → receive.
pub const STAMPED: usize = HEADER + 8;

/// Nanoseconds since the Unix epoch: the clock payloads are stamped with.
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Read the topic log / subscribe while devices publish.
    Live,
    /// Read the topic log once publishing is over (Ferrocore only; a broker needs a live subscriber).
    After,
    /// Do not check.
    Off,
}

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct TelemetryArgs {
    /// Publishing devices (one connection each).
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// Payload bytes per message (at least 16 to be verifiable).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// QoS of the publishes: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Target messages per second over all devices; 0: as fast as acknowledged.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop each device after this many messages (0: no cap).
    #[arg(long, default_value_t = 0)]
    pub messages: u64,
    /// Unacknowledged QoS 1 messages allowed per device.
    #[arg(long, default_value_t = 32)]
    pub inflight: usize,
    /// How acknowledged messages are checked at the other end.
    #[arg(long, value_enum, default_value_t = Verify::Live)]
    pub verify: Verify,
    /// QoS of the broker-side subscriber.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub sub_qos: u8,
    /// Connects in progress at once while devices come up.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

pub fn qos_of(q: u8) -> QoS {
    if q == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce }
}

/// How one device publishes.
#[derive(Clone)]
pub struct PublishSpec {
    pub run_id: u64,
    pub payload: usize,
    pub qos: QoS,
    pub window: usize,
    /// Time between two messages of one device; None: as fast as the window allows.
    pub interval: Option<Duration>,
    /// Messages per device at most.
    pub max_messages: u64,
    pub deadline: Instant,
}

/// What one device did.
pub struct DeviceRun {
    pub sent: u64,
    pub acked: u64,
    pub hist: Histogram,
    /// Bit `seq` set when message `seq` was acknowledged (QoS 1) or written (QoS 0).
    pub acked_bits: Vec<u64>,
    pub error: Option<String>,
}

fn set_bit(bits: &mut Vec<u64>, i: u32) -> bool {
    let (word, bit) = ((i / 64) as usize, i % 64);
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    let was = bits[word] >> bit & 1 == 1;
    bits[word] |= 1 << bit;
    was
}

fn payload(spec: &PublishSpec, device: u32, seq: u32, stamp: u64) -> Bytes {
    let mut p = vec![b'x'; spec.payload];
    if spec.payload >= HEADER {
        p[..8].copy_from_slice(&spec.run_id.to_le_bytes());
        p[8..12].copy_from_slice(&device.to_le_bytes());
        p[12..16].copy_from_slice(&seq.to_le_bytes());
    }
    if spec.payload >= STAMPED {
        p[HEADER..STAMPED].copy_from_slice(&stamp.to_le_bytes());
    }
    Bytes::from(p)
}

/// The publish time a stamped payload carries.
pub fn parse_stamp(data: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(HEADER..STAMPED)?.try_into().ok()?))
}

/// Parses a payload header: (device, seq) when it belongs to run `run_id`.
pub fn parse_header(run_id: u64, data: &[u8]) -> Option<(u32, u32)> {
    if data.len() < HEADER || u64::from_le_bytes(data[..8].try_into().ok()?) != run_id {
        return None;
    }
    Some((u32::from_le_bytes(data[8..12].try_into().ok()?), u32::from_le_bytes(data[12..16].try_into().ok()?)))
}

/// Publishes on a connected client until the deadline, `stop`, or the message cap, then waits
/// (at most 10 s) for the outstanding acknowledgements.
pub async fn publish_loop(
    mut client: Client,
    device: u32,
    topic: String,
    spec: PublishSpec,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicU64>,
) -> DeviceRun {
    let mut run = DeviceRun { sent: 0, acked: 0, hist: Histogram::new(), acked_bits: Vec::new(), error: None };
    let mut inflight: VecDeque<(u16, u32, Instant)> = VecDeque::with_capacity(spec.window);
    let mut seq: u32 = 0;
    let mut next_due = Instant::now();
    let mut stopping: Option<Instant> = None;
    const DRAIN: Duration = Duration::from_secs(10);
    let qos1 = spec.qos == QoS::AtLeastOnce;
    loop {
        let now = Instant::now();
        if stopping.is_none()
            && (now >= spec.deadline || stop.load(Ordering::Relaxed) || u64::from(seq) >= spec.max_messages)
        {
            stopping = Some(now);
        }
        if stopping.is_none() {
            let mut burst = 0;
            let stamp = unix_nanos();
            while (if qos1 { inflight.len() < spec.window } else { burst < 64 })
                && u64::from(seq) < spec.max_messages
                && spec.interval.is_none_or(|_| next_due <= now)
            {
                let packet_id = qos1.then(|| client.packet_id());
                client.queue(&Packet::Publish(Publish {
                    dup: false,
                    qos: spec.qos,
                    retain: false,
                    topic: topic.clone(),
                    packet_id,
                    payload: payload(&spec, device, seq, stamp),
                }));
                match packet_id {
                    Some(id) => inflight.push_back((id, seq, now)),
                    None => {
                        set_bit(&mut run.acked_bits, seq);
                        run.acked += 1;
                        acked_total.fetch_add(1, Ordering::Relaxed);
                    }
                }
                seq += 1;
                run.sent += 1;
                burst += 1;
                if let Some(iv) = spec.interval {
                    next_due += iv;
                }
            }
            // Behind schedule (a slow server): catch up by at most 100 ms worth of messages.
            if spec.interval.is_some() && next_due + Duration::from_millis(100) < now {
                next_due = now - Duration::from_millis(100);
            }
        }
        if client.queued_bytes() > 0
            && let Err(e) = client.flush().await
        {
            run.error = Some(format!("write failed after {} messages: {e:#}", run.sent));
            break;
        }
        if let Some(t) = stopping
            && (inflight.is_empty() || now > t + DRAIN)
        {
            if !inflight.is_empty() {
                run.error = Some(format!("{} messages never acknowledged", inflight.len()));
            }
            break;
        }
        if !qos1 && spec.interval.is_none() && stopping.is_none() {
            tokio::task::yield_now().await;
            continue;
        }
        let wake = match stopping {
            Some(t) => t + DRAIN,
            None if spec.interval.is_some() && (!qos1 || inflight.len() < spec.window) => next_due.min(spec.deadline),
            None => spec.deadline,
        }
        .min(now + Duration::from_millis(50));
        tokio::select! {
            read = client.read_more() => match read {
                Ok(true) => loop {
                    match client.next_buffered() {
                        Ok(Some(Packet::PubAck(id))) => {
                            if let Some(pos) = inflight.iter().position(|e| e.0 == id)
                                && let Some((_, s, t)) = inflight.remove(pos)
                            {
                                run.hist.record(t.elapsed());
                                set_bit(&mut run.acked_bits, s);
                                run.acked += 1;
                                acked_total.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            run.error = Some(format!("{e:#}"));
                            break;
                        }
                    }
                },
                Ok(false) | Err(_) => {
                    run.error = Some(format!(
                        "the server closed the connection after {} messages ({} acknowledged)",
                        run.sent, run.acked
                    ));
                    break;
                }
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
        if run.error.is_some() {
            break;
        }
    }
    if run.error.is_none() {
        client.disconnect().await;
    }
    run
}

/// Connects `n` devices of `fleet` starting at `first`; failures are errors.
pub async fn connect_all(
    ctx: &Ctx,
    fleet: &Fleet,
    first: usize,
    n: usize,
    concurrency: usize,
    label: &str,
) -> Result<Vec<Client>> {
    let slots: Arc<Mutex<Vec<Option<Client>>>> = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let errors = Arc::new(Mutex::new(Errors::default()));
    let done = Arc::new(AtomicU64::new(0));
    {
        let _p = Progress::start(label, done.clone(), Some(n as u64), ctx.progress);
        let devices = Arc::new(fleet.devices[first..first + n].to_vec());
        let (endpoint, keep_alive) = (ctx.endpoint.clone(), ctx.keep_alive);
        let (slots, errors, done) = (slots.clone(), errors.clone(), done.clone());
        for_each_concurrent(n, concurrency, move |i| {
            let (devices, endpoint, slots, errors, done) =
                (devices.clone(), endpoint.clone(), slots.clone(), errors.clone(), done.clone());
            async move {
                let d = &devices[i];
                let r = async {
                    let mut c = endpoint.open(first + i).await?;
                    c.connect(&d.client_id, d.password.as_deref(), keep_alive).await?;
                    anyhow::Ok(c)
                }
                .await;
                match r {
                    Ok(c) => slots.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(c),
                    Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).add(e),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
    }
    let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|p| p.into_inner()));
    if errors.count > 0 {
        bail!("{} of {n} devices could not connect, e.g. {}", errors.count, errors.samples.join("; "));
    }
    let clients = std::mem::take(&mut *slots.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(clients.into_iter().flatten().collect())
}

/// What the other end saw: per device, the sequence numbers found.
#[derive(Default)]
pub struct Seen {
    pub found: Vec<Vec<u64>>,
    pub total: u64,
    pub duplicates: u64,
    pub foreign: u64,
    /// PINGREQs the subscriber sent to wake a broker that stopped delivering.
    pub kicks: u64,
    pub error: Option<String>,
    /// Publish → receipt of stamped payloads (meaningful for live receivers only).
    pub latency: Histogram,
    /// When the last message of this run arrived.
    pub last_received: Option<Instant>,
}

impl Seen {
    /// Counts one received payload; `received` is [`unix_nanos`] at its receipt.
    pub fn mark_at(&mut self, run_id: u64, data: &[u8], received: u64) {
        match parse_header(run_id, data) {
            Some((dev, seq)) => {
                let dev = dev as usize;
                if self.found.len() <= dev {
                    self.found.resize(dev + 1, Vec::new());
                }
                if set_bit(&mut self.found[dev], seq) {
                    self.duplicates += 1;
                }
                self.total += 1;
                if let Some(sent) = parse_stamp(data) {
                    self.latency.record_nanos(received.saturating_sub(sent));
                }
                self.last_received = Some(Instant::now());
            }
            None => self.foreign += 1,
        }
    }

    fn mark(&mut self, run_id: u64, data: &[u8]) {
        self.mark_at(run_id, data, unix_nanos());
    }

    /// Distinct messages of this run received.
    pub fn unique(&self) -> u64 {
        self.total - self.duplicates
    }
}

/// What a run shares with its log reader: set once the devices stopped, how many messages were
/// acknowledged, how many the reader has read.
pub struct RunShared {
    pub done: Arc<AtomicBool>,
    pub expected: Arc<AtomicU64>,
    pub read_total: Arc<AtomicU64>,
}

/// How long the log reader waits for a topic's end to move when acknowledged messages are
/// still missing.
const END_SETTLE: Duration = Duration::from_secs(10);

/// Reads topic `topic` of Ferrocore's log from `start`: tails it while `done` is false, then
/// reads up to the end offset the server reports once `done` is set, and on from there while
/// fewer than `expected` messages of the run were found and the end moves (for up to
/// [`END_SETTLE`]): a cluster node learns of other nodes' appends every few seconds.
pub async fn read_log(
    api: crate::api::Api,
    topic: String,
    start: u64,
    run_id: u64,
    live: bool,
    run: RunShared,
) -> Seen {
    let RunShared { done, expected, read_total } = run;
    let mut seen = Seen::default();
    let mut offset = start;
    let give_up = Instant::now() + Duration::from_secs(3600);
    let result: Result<()> = async {
        if live {
            while !done.load(Ordering::Relaxed) && Instant::now() < give_up {
                let (msgs, next) = api.read_topic(&topic, offset, 1000, 1).await?;
                for m in &msgs {
                    seen.mark(run_id, &m.data);
                }
                read_total.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                offset = next;
            }
        } else {
            while !done.load(Ordering::Relaxed) && Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The rest, in parallel ranges of 1,000.
        let end = api.topic_end(&topic).await?;
        let ranges: Vec<u64> = (offset..end).step_by(1000).collect();
        let parts = Arc::new(Mutex::new(Vec::new()));
        {
            let (api, topic, parts, read_total) = (api.clone(), topic.clone(), parts.clone(), read_total.clone());
            let ranges = Arc::new(ranges.clone());
            let failed = Arc::new(Mutex::new(None::<String>));
            let f2 = failed.clone();
            for_each_concurrent(ranges.len(), 4, move |i| {
                let (api, topic, parts, ranges, read_total, failed) =
                    (api.clone(), topic.clone(), parts.clone(), ranges.clone(), read_total.clone(), f2.clone());
                async move {
                    let from = ranges[i];
                    let to = (from + 1000).min(end);
                    let mut at = from;
                    let mut got = Vec::new();
                    while at < to {
                        match api.read_topic(&topic, at, (to - at) as u32, 0).await {
                            Ok((msgs, next)) if next > at => {
                                read_total.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                                got.extend(msgs.into_iter().map(|m| m.data));
                                at = next;
                            }
                            Ok(_) => break,
                            Err(e) => {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                                break;
                            }
                        }
                    }
                    parts.lock().unwrap_or_else(|p| p.into_inner()).push(got);
                }
            })
            .await;
            if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
                bail!("reading the topic log failed: {e}");
            }
        }
        for part in std::mem::take(&mut *parts.lock().unwrap_or_else(|p| p.into_inner())) {
            for data in part {
                seen.mark(run_id, &data);
            }
        }
        let (mut at, settle) = (end.max(offset), Instant::now() + END_SETTLE);
        while seen.unique() < expected.load(Ordering::Relaxed) && Instant::now() < settle {
            let end = api.topic_end(&topic).await?;
            if end <= at {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            while at < end {
                let (msgs, next) = api.read_topic(&topic, at, (end - at).min(1000) as u32, 0).await?;
                if next <= at {
                    break;
                }
                read_total.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                for m in &msgs {
                    seen.mark(run_id, &m.data);
                }
                at = next;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        seen.error = Some(format!("{e:#}"));
    }
    seen
}

/// A broker-side subscriber: counts deliveries until `done` is set and either `expected()`
/// messages have arrived or 5 s pass without one.
pub async fn subscribe_broker(
    mut client: Client,
    qos: QoS,
    run_id: u64,
    done: Arc<AtomicBool>,
    expected: Arc<AtomicU64>,
    read_total: Arc<AtomicU64>,
) -> Seen {
    let mut seen = Seen::default();
    let mut last = Instant::now();
    let mut last_kick = Instant::now();
    loop {
        if done.load(Ordering::Relaxed)
            && (seen.total >= expected.load(Ordering::Relaxed) || last.elapsed() > Duration::from_secs(15))
        {
            break;
        }
        // Nothing for a second although messages are due: a PINGREQ gives the broker a reason to
        // look at this connection again (counted: a broker needing this has stalled deliveries).
        if last.elapsed() > Duration::from_secs(1) && last_kick.elapsed() > Duration::from_secs(1) {
            let due = !done.load(Ordering::Relaxed) || seen.total < expected.load(Ordering::Relaxed);
            if due {
                last_kick = Instant::now();
                seen.kicks += 1;
                client.queue(&Packet::PingReq);
                if let Err(e) = client.flush().await {
                    seen.error = Some(format!("{e:#}"));
                    return seen;
                }
            }
        }
        tokio::select! {
            read = client.read_more() => match read {
                Ok(true) => {
                    last = Instant::now();
                    loop {
                        match client.next_buffered() {
                            Ok(Some(Packet::Publish(p))) => {
                                seen.mark(run_id, &p.payload);
                                read_total.fetch_add(1, Ordering::Relaxed);
                                if let (QoS::AtLeastOnce, Some(id)) = (qos, p.packet_id) {
                                    client.queue(&Packet::PubAck(id));
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(e) => {
                                seen.error = Some(format!("{e:#}"));
                                return seen;
                            }
                        }
                    }
                    if let Err(e) = client.flush().await {
                        seen.error = Some(format!("{e:#}"));
                        return seen;
                    }
                }
                Ok(false) | Err(_) => {
                    seen.error = Some("the broker closed the subscriber's connection".into());
                    return seen;
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    client.disconnect().await;
    seen
}

/// Acknowledged messages not seen at the other end.
pub fn missing(runs: &[DeviceRun], seen: &Seen) -> u64 {
    let mut missing = 0;
    for (dev, run) in runs.iter().enumerate() {
        let found = seen.found.get(dev);
        for (w, bits) in run.acked_bits.iter().enumerate() {
            let f = found.and_then(|f| f.get(w)).copied().unwrap_or(0);
            missing += u64::from((bits & !f).count_ones());
        }
    }
    missing
}

/// The verification side of a run, started before devices publish.
pub enum Checker {
    Log(tokio::task::JoinHandle<Seen>),
    Broker(tokio::task::JoinHandle<Seen>),
    None,
}

/// Starts the reader or subscriber that checks delivery for `fleet`.
pub async fn start_checker(
    ctx: &Ctx,
    fleet: &Fleet,
    verify: Verify,
    sub_qos: QoS,
    done: Arc<AtomicBool>,
    expected: Arc<AtomicU64>,
    read_total: Arc<AtomicU64>,
) -> Result<Checker> {
    if verify == Verify::Off {
        return Ok(Checker::None);
    }
    Ok(match ctx.broker {
        Broker::Ferrocore => {
            let api = ctx.api("telemetry")?.clone();
            let start = api.topic_end(&fleet.topic).await?;
            Checker::Log(tokio::spawn(read_log(
                api,
                fleet.topic.clone(),
                start,
                ctx.run_id,
                verify == Verify::Live,
                RunShared { done, expected, read_total },
            )))
        }
        Broker::Mqtt => {
            let mut sub = ctx.endpoint.open(usize::MAX / 2).await?;
            sub.connect(&format!("fb-{:x}-subscriber", ctx.run_id), None, ctx.keep_alive).await?;
            crate::mqtt::subscribe(&mut sub, &fleet.topic, sub_qos).await?;
            Checker::Broker(tokio::spawn(subscribe_broker(sub, sub_qos, ctx.run_id, done, expected, read_total)))
        }
    })
}

impl Checker {
    pub async fn finish(self) -> Option<Seen> {
        match self {
            Checker::Log(h) | Checker::Broker(h) => h.await.ok(),
            Checker::None => None,
        }
    }
}

/// Totals over devices.
pub struct Totals {
    pub sent: u64,
    pub acked: u64,
    pub latency: LatencySummary,
    pub errors: Errors,
}

pub fn totals(runs: &[DeviceRun]) -> Totals {
    let mut hist = Histogram::new();
    let mut errors = Errors::default();
    let (mut sent, mut acked) = (0, 0);
    for r in runs {
        hist.merge(&r.hist);
        sent += r.sent;
        acked += r.acked;
        if let Some(e) = &r.error {
            errors.add(e);
        }
    }
    Totals { sent, acked, latency: hist.summary(), errors }
}

pub async fn run(ctx: &Ctx, args: TelemetryArgs) -> Result<Report> {
    if args.verify == Verify::After && ctx.broker == Broker::Mqtt {
        bail!("--verify after needs Ferrocore's topic log; a broker is checked with a live subscriber");
    }
    let verify = if args.payload < HEADER {
        eprintln!("payloads under {HEADER} bytes carry no sequence number: delivery is not checked");
        Verify::Off
    } else {
        args.verify
    };
    let fleet = Fleet::prepare(ctx, args.devices, "telemetry").await?;
    let done = Arc::new(AtomicBool::new(false));
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let read_total = Arc::new(AtomicU64::new(0));
    let checker =
        start_checker(ctx, &fleet, verify, qos_of(args.sub_qos), done.clone(), expected.clone(), read_total.clone())
            .await?;
    let clients = connect_all(ctx, &fleet, 0, args.devices, args.connect_concurrency, "connect devices").await?;

    let acked_total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(args.devices as f64 / args.rate));
    let window = ctx.cpu_window();
    let started = Instant::now();
    let spec = PublishSpec {
        run_id: ctx.run_id,
        payload: args.payload,
        qos: qos_of(args.qos),
        window: args.inflight.max(1),
        interval,
        max_messages: if args.messages == 0 { u64::from(u32::MAX) } else { args.messages },
        deadline: started + Duration::from_secs_f64(args.duration),
    };
    let progress = Progress::start("telemetry acked", acked_total.clone(), None, ctx.progress);
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let topic = fleet.devices[i].events_topic.clone();
        tasks.push(tokio::spawn(publish_loop(
            client,
            i as u32,
            topic,
            spec.clone(),
            stop.clone(),
            acked_total.clone(),
        )));
    }
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = window.finish();
    drop(progress);

    let t = totals(&runs);
    expected.store(t.acked, Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let check_started = Instant::now();
    let _p = Progress::start("verify: messages read", read_total.clone(), Some(t.acked), ctx.progress);
    let seen = checker.finish().await;
    let check_seconds = check_started.elapsed().as_secs_f64();
    drop(_p);

    let rate = t.acked as f64 / elapsed;
    let mut r = Report::new("telemetry", serde_json::to_value(&args)?);
    r.row("devices", thousands(args.devices as f64));
    r.row("payload / QoS", format!("{} B / {}", args.payload, args.qos));
    r.row("sent", thousands(t.sent as f64));
    r.row(if args.qos == 1 { "acknowledged" } else { "written (QoS 0)" }, thousands(t.acked as f64));
    r.row("msg/s (acknowledged)", thousands(rate));
    if args.qos == 1 {
        r.row("publish → PUBACK", latency_row(&t.latency));
    }
    r.row("server CPU per message", opt_us(cpu.server_us_per(t.acked)));
    if cpu.other_cpu_seconds.is_some() {
        r.row("other processes' CPU per message", opt_us(cpu.other_us_per(t.acked)));
    }
    r.row("bench CPU per message", format!("{:.2} µs", cpu.bench_cpu_seconds * 1e6 / t.acked.max(1) as f64));
    r.row(
        "device errors",
        format!("{}{}", t.errors.count, t.errors.samples.first().map(|s| format!(" (e.g. {s})")).unwrap_or_default()),
    );
    let mut verification = json!({"mode": verify});
    if let Some(seen) = &seen {
        let missing = missing(&runs, seen);
        let where_ = if ctx.broker == Broker::Ferrocore { "in the topic log" } else { "at the subscriber" };
        r.row(
            format!("found {where_}"),
            format!(
                "{} of {} acknowledged; {} missing, {} duplicates{}{}",
                thousands(seen.total as f64),
                thousands(t.acked as f64),
                missing,
                seen.duplicates,
                if seen.kicks > 0 { format!(", {} stall pings", seen.kicks) } else { String::new() },
                seen.error.as_ref().map(|e| format!(" (reader error: {e})")).unwrap_or_default()
            ),
        );
        let live_subscriber = ctx.broker == Broker::Mqtt;
        let subscriber_rate =
            seen.last_received.map(|t| seen.unique() as f64 / t.duration_since(started).as_secs_f64().max(1e-9));
        let latency = seen.latency.summary();
        if live_subscriber {
            r.row("msg/s at the subscriber", subscriber_rate.map_or_else(|| "n/a".into(), thousands));
            if latency.count > 0 {
                r.row("publish → subscriber", latency_row(&latency));
            }
        }
        verification = json!({
            "mode": verify,
            "where": where_,
            "subscriber_msgs_per_second": if live_subscriber { subscriber_rate } else { None },
            "latency": if live_subscriber && latency.count > 0 { Some(&latency) } else { None },
            "found": seen.total,
            "missing_acknowledged": missing,
            "duplicates": seen.duplicates,
            "foreign": seen.foreign,
            "subscriber_stall_pings": seen.kicks,
            "error": seen.error,
            "seconds_after_publishing": check_seconds,
        });
    }
    r.set("sent", t.sent);
    r.set("acked", t.acked);
    r.set("seconds", elapsed);
    r.set("msgs_per_second", rate);
    r.set("latency", &t.latency);
    r.set("errors", t.errors.json());
    r.set("cpu", &cpu);
    r.set("server_cpu_us_per_message", cpu.server_us_per(t.acked));
    if cpu.other_cpu_seconds.is_some() {
        r.set("other_cpu_us_per_message", cpu.other_us_per(t.acked));
    }
    r.set("verification", verification);
    r.set("provision_seconds", fleet.provision_seconds);
    r.set("devices_created", fleet.created);
    r.set("tls", ctx.endpoint.is_tls());
    Ok(r)
}
