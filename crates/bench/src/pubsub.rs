//! `pubsub`: device telemetry to a back end through Google's Pub/Sub API, end to end. N devices
//! publish over MQTT QoS 1 (plain or TLS) to their registry's telemetry topic; a subscription on
//! that topic, created over gRPC before the load starts, is read by StreamingPull streams (the
//! generated tonic client, `max_outstanding_messages` 1000 as Google's clients ask) that
//! acknowledge with unary Acknowledge calls of up to 1000 ids, as Google's clients do.
//!
//! Every payload carries the run id, device, sequence number and publish time (see
//! `telemetry`), so the subscriber checks that every PUBACKed message arrived and times publish →
//! receive on the machine's clock. Reported: the PUBACKed rate, the delivered-and-acknowledged
//! rate at the subscriber (distinct messages whose Acknowledge succeeded, over the time from the
//! first publish to the last acknowledgement), missing and duplicate messages, the latency
//! histogram, and the server's CPU time per delivered-and-acknowledged message (ingest and
//! delivery together).

use crate::fleet::Fleet;
use crate::grpc::{Subscriber, Target};
use crate::report::{Report, latency_row, opt_us, thousands};
use crate::telemetry::{self, PublishSpec, STAMPED, Seen, connect_all, publish_loop, totals, unix_nanos};
use crate::util::Progress;
use crate::{Broker, Ctx};
use anyhow::{Context, Result, bail};
use ferrocore_mqtt_codec::QoS;
use ferrocore_proto::pubsub as ps;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct PubsubArgs {
    /// Publishing devices (one MQTT connection each).
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// Payload bytes per message (at least 24: run, device, sequence, publish time).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Target messages per second over all devices; 0: as fast as PUBACKs come back.
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
    /// StreamingPull streams, each on its own HTTP/2 connection.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// max_outstanding_messages asked for on each stream (Google's clients: 1000).
    #[arg(long, default_value_t = 1000)]
    pub max_outstanding: i64,
    /// Ack ids per Acknowledge call at most (Google's clients: 1000).
    #[arg(long, default_value_t = 1000)]
    pub ack_batch: usize,
    /// Acknowledge calls in flight per stream at once; ids wait and batch up beyond that.
    #[arg(long, default_value_t = 2)]
    pub acks_in_flight: usize,
    /// Seconds the subscriber waits for missing messages once publishing is over.
    #[arg(long, default_value_t = 15.0)]
    pub drain_timeout: f64,
    /// Connects in progress at once while devices come up.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

/// What the subscriber streams share.
struct Shared {
    run_id: u64,
    seen: Mutex<Seen>,
    /// Ack ids whose Acknowledge call succeeded.
    acked: AtomicU64,
    /// Deliveries received (duplicates included).
    received: AtomicU64,
    ack_errors: AtomicU64,
    last_ack: Mutex<Option<Instant>>,
    /// Set when the subscriber should close its streams.
    stop: AtomicBool,
    stop_notify: tokio::sync::Notify,
    error: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, e: impl std::fmt::Display) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e.to_string());
        }
    }
}

/// One StreamingPull stream and its acknowledger, until `shared.stop`.
async fn stream_loop(
    client: Subscriber,
    subscription: String,
    args: Arc<PubsubArgs>,
    shared: Arc<Shared>,
    opened: tokio::sync::oneshot::Sender<()>,
) {
    let (req_tx, req_rx) = mpsc::channel::<ps::StreamingPullRequest>(4);
    let first = ps::StreamingPullRequest {
        subscription: subscription.clone(),
        stream_ack_deadline_seconds: 60,
        client_id: format!("ferrocore-bench-{:x}", shared.run_id),
        max_outstanding_messages: args.max_outstanding,
        max_outstanding_bytes: 100 << 20,
        protocol_version: 1,
        ..Default::default()
    };
    let _ = req_tx.send(first).await;
    let mut pull = client.clone();
    let mut inbound =
        match pull.streaming_pull(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(req_rx)).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                shared.fail(format!("StreamingPull refused: {e}"));
                let _ = opened.send(());
                return;
            }
        };
    let _ = opened.send(());

    // The acknowledger: sends what the stream received, up to `ack_batch` ids per call and
    // `acks_in_flight` calls at once; more waits and joins the next call.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Vec<String>>();
    let acker = {
        let (client, subscription, shared, args) = (client.clone(), subscription.clone(), shared.clone(), args.clone());
        tokio::spawn(async move {
            let mut pending: Vec<String> = Vec::new();
            let mut calls = tokio::task::JoinSet::new();
            let mut open = true;
            loop {
                while calls.len() < args.acks_in_flight.max(1) && !pending.is_empty() {
                    let n = pending.len().min(args.ack_batch.max(1));
                    let ids: Vec<String> = pending.drain(..n).collect();
                    let mut client = client.clone();
                    let request = ps::AcknowledgeRequest { subscription: subscription.clone(), ack_ids: ids };
                    calls.spawn(async move {
                        let n = request.ack_ids.len() as u64;
                        client.acknowledge(request).await.map(|_| n)
                    });
                }
                if !open && pending.is_empty() && calls.is_empty() {
                    break;
                }
                tokio::select! {
                    ids = ack_rx.recv(), if open => match ids {
                        Some(ids) => pending.extend(ids),
                        None => open = false,
                    },
                    Some(done) = calls.join_next(), if !calls.is_empty() => match done {
                        Ok(Ok(n)) => {
                            shared.acked.fetch_add(n, Ordering::Relaxed);
                            *shared.last_ack.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        }
                        Ok(Err(e)) => {
                            shared.ack_errors.fetch_add(1, Ordering::Relaxed);
                            shared.fail(format!("Acknowledge failed: {e}"));
                        }
                        Err(e) => shared.fail(format!("Acknowledge task failed: {e}")),
                    },
                }
            }
        })
    };

    loop {
        // Registered before the flag is read, so a stop in between is not missed.
        let stopped = shared.stop_notify.notified();
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = stopped => break,
        };
        match msg {
            Ok(Some(response)) => {
                if response.received_messages.is_empty() {
                    continue; // a keep-alive answer
                }
                let now = unix_nanos();
                let mut ids = Vec::with_capacity(response.received_messages.len());
                {
                    let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
                    for m in response.received_messages {
                        if let Some(message) = &m.message {
                            seen.mark_at(shared.run_id, &message.data, now);
                        }
                        ids.push(m.ack_id);
                    }
                }
                shared.received.fetch_add(ids.len() as u64, Ordering::Relaxed);
                let _ = ack_tx.send(ids);
            }
            Ok(None) => {
                shared.fail("the server ended the StreamingPull stream");
                break;
            }
            Err(e) => {
                shared.fail(format!("StreamingPull failed: {e}"));
                break;
            }
        }
    }
    // Half-close the stream; wait for the acknowledgements already due.
    drop(req_tx);
    drop(ack_tx);
    let _ = acker.await;
}

/// Creates the subscription `name` on `topic` (ack deadline 60 s).
async fn create_subscription(target: &Target, name: &str, topic: &str) -> Result<()> {
    let mut admin = target.subscriber(target.channel().await?);
    let sub = ps::Subscription {
        name: name.to_owned(),
        topic: topic.to_owned(),
        ack_deadline_seconds: 60,
        ..Default::default()
    };
    match admin.create_subscription(sub).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => bail!("the subscription {name} exists already"),
        Err(s) => Err(anyhow::anyhow!("CreateSubscription {name}: {s}")),
    }
}

pub async fn run(ctx: &Ctx, args: PubsubArgs) -> Result<Report> {
    if ctx.broker != Broker::Ferrocore {
        bail!("the pubsub scenario needs --broker ferrocore (Mosquitto's side is `telemetry --sub-qos 1`)");
    }
    if args.payload < STAMPED {
        bail!("--payload must be at least {STAMPED} bytes: run id, device, sequence and publish time");
    }
    let api = ctx.api("pubsub")?;
    let target = Target::new(&ctx.grpc, api.token(), ctx.grpc_ca.as_deref(), &ctx.tls_name)?;
    let fleet = Fleet::prepare(ctx, args.devices, "pubsub").await?;
    let topic = api.topic_name(&fleet.topic);
    let subscription = format!("projects/{}/subscriptions/{}-sub", api.project, fleet.topic);
    create_subscription(&target, &subscription, &topic).await.context("creating the subscription over gRPC")?;

    let args = Arc::new(args);
    let shared = Arc::new(Shared {
        run_id: ctx.run_id,
        seen: Mutex::new(Seen::default()),
        acked: AtomicU64::new(0),
        received: AtomicU64::new(0),
        ack_errors: AtomicU64::new(0),
        last_ack: Mutex::new(None),
        stop: AtomicBool::new(false),
        stop_notify: tokio::sync::Notify::new(),
        error: Mutex::new(None),
    });
    let mut streams = Vec::new();
    for _ in 0..args.streams.max(1) {
        let client = target.subscriber(target.channel().await?);
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        streams.push(tokio::spawn(stream_loop(client, subscription.clone(), args.clone(), shared.clone(), opened_tx)));
        let _ = opened_rx.await;
    }
    if let Some(e) = shared.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        bail!("{e}");
    }

    let clients = connect_all(ctx, &fleet, 0, args.devices, args.connect_concurrency, "connect devices").await?;
    let pubacked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(args.devices as f64 / args.rate));
    let window = ctx.cpu_window();
    let started = Instant::now();
    let spec = PublishSpec {
        run_id: ctx.run_id,
        payload: args.payload,
        qos: QoS::AtLeastOnce,
        window: args.inflight.max(1),
        interval,
        max_messages: if args.messages == 0 { u64::from(u32::MAX) } else { args.messages },
        deadline: started + Duration::from_secs_f64(args.duration),
    };
    let progress_pub = Progress::start("PUBACKed", pubacked.clone(), None, ctx.progress);
    let acked_counter = Arc::new(AtomicU64::new(0));
    let mirror = {
        // Mirrors the subscriber's count into a counter Progress can show.
        let (shared, counter) = (shared.clone(), acked_counter.clone());
        tokio::spawn(async move {
            loop {
                counter.store(shared.acked.load(Ordering::Relaxed), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let progress_sub = Progress::start("delivered+acked", acked_counter.clone(), None, ctx.progress);
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let events = fleet.devices[i].events_topic.clone();
        tasks.push(tokio::spawn(publish_loop(client, i as u32, events, spec.clone(), stop.clone(), pubacked.clone())));
    }
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await?);
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    drop(progress_pub);
    let t = totals(&runs);
    let backlog_at_end = t.acked.saturating_sub(shared.acked.load(Ordering::Relaxed));

    // Wait until every PUBACKed message was received and acknowledged, or nothing moves for
    // `drain_timeout` seconds.
    let quiet_limit = Duration::from_secs_f64(args.drain_timeout.max(0.1));
    let mut last_progress = (shared.acked.load(Ordering::Relaxed), Instant::now());
    loop {
        let acked = shared.acked.load(Ordering::Relaxed);
        let unique = shared.seen.lock().unwrap_or_else(|p| p.into_inner()).unique();
        let received = shared.received.load(Ordering::Relaxed);
        if unique >= t.acked && acked >= received {
            break;
        }
        if acked != last_progress.0 {
            last_progress = (acked, Instant::now());
        } else if last_progress.1.elapsed() > quiet_limit {
            break;
        }
        if shared.error.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = window.finish();
    let end = shared.last_ack.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or_else(Instant::now);
    let sub_seconds = end.duration_since(started).as_secs_f64().max(1e-9);
    shared.stop.store(true, Ordering::Relaxed);
    shared.stop_notify.notify_waiters();
    for s in streams {
        let _ = s.await;
    }
    mirror.abort();
    drop(progress_sub);

    let seen = std::mem::take(&mut *shared.seen.lock().unwrap_or_else(|p| p.into_inner()));
    let missing = telemetry::missing(&runs, &seen);
    let acked = shared.acked.load(Ordering::Relaxed);
    let received = shared.received.load(Ordering::Relaxed);
    let publish_rate = t.acked as f64 / publish_seconds;
    // Distinct messages delivered and acknowledged (an ack of a duplicate delivery is not one more).
    let delivered_acked = acked.min(seen.unique());
    let sub_rate = delivered_acked as f64 / sub_seconds;
    let latency = seen.latency.summary();
    let error = shared.error.lock().unwrap_or_else(|p| p.into_inner()).clone();

    let mut r = Report::new("pubsub", serde_json::to_value(&*args)?);
    r.row("devices / streams", format!("{} / {}", args.devices, args.streams.max(1)));
    r.row("payload", format!("{} B, QoS 1", args.payload));
    r.row("target rate", if args.rate > 0.0 { format!("{} msg/s", thousands(args.rate)) } else { "max".into() });
    r.row("PUBACKed", thousands(t.acked as f64));
    r.row("msg/s PUBACKed", thousands(publish_rate));
    r.row("publish → PUBACK", latency_row(&t.latency));
    r.row("msg/s delivered+acked", format!("{} (over {:.2} s)", thousands(sub_rate), sub_seconds));
    r.row("behind when publishing ended", thousands(backlog_at_end as f64));
    r.row(
        "received",
        format!(
            "{} distinct of {} PUBACKed; {} missing, {} duplicates; {} acked{}",
            thousands(seen.unique() as f64),
            thousands(t.acked as f64),
            missing,
            seen.duplicates,
            thousands(acked as f64),
            error.as_ref().map(|e| format!(" (error: {e})")).unwrap_or_default()
        ),
    );
    r.row("publish → receive", latency_row(&latency));
    r.row("server CPU per delivered+acked", opt_us(cpu.server_us_per(delivered_acked)));
    r.row("bench CPU per message", format!("{:.2} µs", cpu.bench_cpu_seconds * 1e6 / delivered_acked.max(1) as f64));
    r.row(
        "device errors",
        format!("{}{}", t.errors.count, t.errors.samples.first().map(|s| format!(" (e.g. {s})")).unwrap_or_default()),
    );
    r.set("sent", t.sent);
    r.set("acked", t.acked);
    r.set("publish_seconds", publish_seconds);
    r.set("msgs_per_second", publish_rate);
    r.set("publish_latency", &t.latency);
    r.set("subscriber_seconds", sub_seconds);
    r.set("delivered_acked", delivered_acked);
    r.set("delivered_acked_per_second", sub_rate);
    r.set("received", received);
    r.set("ack_ids_acked", acked);
    r.set("ack_errors", shared.ack_errors.load(Ordering::Relaxed));
    r.set("behind_when_publishing_ended", backlog_at_end);
    r.set("latency", &latency);
    r.set(
        "verification",
        json!({
            "found": seen.unique(),
            "missing_acknowledged": missing,
            "duplicates": seen.duplicates,
            "foreign": seen.foreign,
            "error": error,
        }),
    );
    r.set("errors", t.errors.json());
    r.set("cpu", &cpu);
    r.set("server_cpu_us_per_message", cpu.server_us_per(delivered_acked));
    r.set("provision_seconds", fleet.provision_seconds);
    r.set("subscription", &subscription);
    r.set("tls", ctx.endpoint.is_tls());
    r.set("grpc", &ctx.grpc);
    Ok(r)
}
