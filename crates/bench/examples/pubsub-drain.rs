//! `pubsub-drain`: a backlog drained through ONE StreamingPull stream, with Google's official Rust
//! client (`google-cloud-pubsub`, protocol_version 1, unary acks batched by the client) or with
//! the generated tonic client, against Ferrocore or Google's Pub/Sub emulator: the same wire API,
//! so the same run measures both.
//!
//! 1. A topic and a subscription (ack deadline 60 s) are created over gRPC.
//! 2. `--messages` payloads are published with Publish in batches of `--batch`, before the clock.
//! 3. One stream receives and acknowledges every message; the drain rate is distinct messages
//!    over the time from opening the stream to the last one received, and the run ends once the
//!    client has flushed its acknowledgements. With `--server-pid` the server's CPU time per
//!    message over that window is read from /proc.
//! 4. With `--check-after S`, once S seconds have passed (more than the stream's ack deadline) a
//!    Pull asks for anything left: an acknowledgement that did not take shows up there.
//!
//! ```sh
//! cargo build --release -p ferrocore-bench --features google-client --example pubsub-drain
//! target/release/examples/pubsub-drain --endpoint http://127.0.0.1:8081 --messages 200000 --client google
//! ```
//! The official client sends no credentials here (anonymous), so Ferrocore must run with
//! `--pubsub-anonymous`; `--token` is used only by the tonic calls (setup, `--client tonic`).

#[path = "../src/grpc.rs"]
mod grpc;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use ferrocore_proto::pubsub as ps;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_pubsub::client::Subscriber;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum ClientKind {
    /// google-cloud-pubsub's Subscriber (what a back end written in Rust uses).
    Google,
    /// The generated tonic client: StreamingPull plus unary Acknowledge per received batch.
    Tonic,
}

#[derive(Parser, Debug, serde::Serialize)]
#[command(about = "Drain a Pub/Sub backlog on one StreamingPull stream (loopback targets only)")]
struct Args {
    /// The Pub/Sub gRPC endpoint: Ferrocore's --grpc listener or the emulator (h2c).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    endpoint: String,
    /// Bearer token for the tonic calls (Ferrocore's admin token); none: anonymous.
    #[arg(long, env = "FERROCORE_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    token: Option<String>,
    #[arg(long, default_value = "bench")]
    project: String,
    /// Backlog size.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Messages per Publish request (Pub/Sub allows 1000).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Publish requests in flight while the backlog is written.
    #[arg(long, default_value_t = 4)]
    publish_concurrency: usize,
    /// Bytes per message (at least 16).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    #[arg(long, value_enum, default_value_t = ClientKind::Google)]
    client: ClientKind,
    /// max_outstanding_messages of the stream (Google's clients: 1000; 0 or less: no limit).
    #[arg(long, default_value_t = 1000)]
    max_outstanding: i64,
    /// The server's process id, for its CPU time per message.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Give up after this many seconds of draining.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// After the drain, wait this long and Pull what is left (0: skip).
    #[arg(long, default_value_t = 0.0)]
    check_after: f64,
    /// Write the results here as JSON.
    #[arg(long)]
    #[serde(skip)]
    json: Option<std::path::PathBuf>,
    /// Free text stored in the JSON.
    #[arg(long)]
    label: Option<String>,
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ: 100 on Linux
}

/// Which sequence numbers arrived.
struct Seen {
    bits: Vec<u64>,
    distinct: u64,
    duplicates: u64,
    foreign: u64,
    run: u64,
}

impl Seen {
    fn new(run: u64, n: u64) -> Self {
        Self { bits: vec![0; n.div_ceil(64) as usize], distinct: 0, duplicates: 0, foreign: 0, run }
    }

    fn mark(&mut self, data: &[u8]) {
        let parsed = (data.len() >= 16 && data[..8] == self.run.to_le_bytes())
            .then(|| u32::from_le_bytes([data[12], data[13], data[14], data[15]]) as usize);
        match parsed {
            Some(seq) if seq / 64 < self.bits.len() => {
                let (w, b) = (seq / 64, seq % 64);
                if self.bits[w] >> b & 1 == 1 {
                    self.duplicates += 1;
                } else {
                    self.bits[w] |= 1 << b;
                    self.distinct += 1;
                }
            }
            _ => self.foreign += 1,
        }
    }
}

fn payload(run: u64, seq: u32, size: usize) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(16)];
    p[..8].copy_from_slice(&run.to_le_bytes());
    p[12..16].copy_from_slice(&seq.to_le_bytes());
    p
}

/// Publishes the backlog; its duration.
async fn publish_backlog(target: &grpc::Target, topic: &str, args: &Args, run: u64) -> Result<f64> {
    let started = Instant::now();
    let channel = target.channel().await?;
    let batches: Vec<(u64, u64)> = (0..args.messages)
        .step_by(args.batch.max(1))
        .map(|s| (s, (s + args.batch as u64).min(args.messages)))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut done = 0u64;
    while done < args.messages {
        while set.len() < args.publish_concurrency.max(1) && next < batches.len() {
            let (from, to) = batches[next];
            next += 1;
            let mut client = target.publisher(channel.clone());
            let request = ps::PublishRequest {
                topic: topic.to_owned(),
                messages: (from..to)
                    .map(|i| ps::PubsubMessage {
                        data: payload(run, i as u32, args.payload).into(),
                        ..Default::default()
                    })
                    .collect(),
            };
            set.spawn(async move { client.publish(request).await.map(|r| r.into_inner().message_ids.len() as u64) });
        }
        match set.join_next().await {
            Some(Ok(Ok(n))) => done += n,
            Some(Ok(Err(e))) => bail!("Publish failed: {e}"),
            Some(Err(e)) => bail!("publish task: {e}"),
            None => break,
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// What a drain measured.
struct Drained {
    seen: Seen,
    /// Stream opened → last distinct message received.
    receive_seconds: f64,
    /// Stream opened → acknowledgements flushed and the stream closed.
    total_seconds: f64,
    first_message_seconds: Option<f64>,
    ack_calls: u64,
}

async fn drain_google(args: &Args, subscription: &str, run: u64) -> Result<Drained> {
    let client = Subscriber::builder()
        .with_endpoint(args.endpoint.clone())
        .with_credentials(Anonymous::new().build())
        .build()
        .await
        .context("building the official Subscriber")?;
    let mut seen = Seen::new(run, args.messages);
    let started = Instant::now();
    let mut stream = client.subscribe(subscription).set_max_outstanding_messages(args.max_outstanding).build();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout);
    let mut first = None;
    let mut receive_seconds = 0.0;
    while seen.distinct < args.messages {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        match next {
            Ok(Some(Ok((m, h)))) => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                seen.mark(&m.data);
                h.ack();
                receive_seconds = started.elapsed().as_secs_f64();
            }
            Ok(Some(Err(e))) => bail!("the official client's stream failed: {e}"),
            Ok(None) => bail!("the official client's stream ended after {} messages", seen.distinct),
            Err(_) => {
                eprintln!("timed out with {} of {} messages", seen.distinct, args.messages);
                break;
            }
        }
    }
    // Shutting down flushes the acknowledgements the client still holds.
    stream.shutdown_token().shutdown().await;
    drop(stream);
    Ok(Drained {
        seen,
        receive_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        first_message_seconds: first,
        ack_calls: 0,
    })
}

async fn drain_tonic(args: &Args, target: &grpc::Target, subscription: &str, run: u64) -> Result<Drained> {
    let channel = target.channel().await?;
    let mut client = target.subscriber(channel.clone());
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(4);
    req_tx
        .send(ps::StreamingPullRequest {
            subscription: subscription.to_owned(),
            stream_ack_deadline_seconds: 60,
            max_outstanding_messages: args.max_outstanding,
            max_outstanding_bytes: 100 << 20,
            protocol_version: 1,
            client_id: format!("pubsub-drain-{run:x}"),
            ..Default::default()
        })
        .await?;
    let mut seen = Seen::new(run, args.messages);
    let started = Instant::now();
    let mut inbound = client
        .streaming_pull(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(req_rx))
        .await
        .context("StreamingPull")?
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout);
    let mut acks = tokio::task::JoinSet::new();
    let mut pending: Vec<String> = Vec::new();
    let (mut first, mut receive_seconds, mut ack_calls) = (None, 0.0, 0u64);
    while seen.distinct < args.messages {
        // Acks of one response go out at once, up to 1000 ids per call, two calls in flight.
        while acks.len() < 2 && !pending.is_empty() {
            let ids: Vec<String> = pending.drain(..pending.len().min(1000)).collect();
            let mut c = target.subscriber(channel.clone());
            let request = ps::AcknowledgeRequest { subscription: subscription.to_owned(), ack_ids: ids };
            acks.spawn(async move { c.acknowledge(request).await.map(|_| ()) });
            ack_calls += 1;
        }
        tokio::select! {
            m = tokio::time::timeout_at(deadline, inbound.message()) => match m {
                Ok(Ok(Some(r))) => {
                    if r.received_messages.is_empty() {
                        continue;
                    }
                    first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                    for m in r.received_messages {
                        if let Some(msg) = &m.message {
                            seen.mark(&msg.data);
                        }
                        pending.push(m.ack_id);
                    }
                    receive_seconds = started.elapsed().as_secs_f64();
                }
                Ok(Ok(None)) => bail!("the server ended the stream after {} messages", seen.distinct),
                Ok(Err(e)) => bail!("StreamingPull failed: {e}"),
                Err(_) => {
                    eprintln!("timed out with {} of {} messages", seen.distinct, args.messages);
                    break;
                }
            },
            Some(done) = acks.join_next(), if !acks.is_empty() => {
                if let Ok(Err(e)) = done {
                    bail!("Acknowledge failed: {e}");
                }
            }
        }
    }
    while !pending.is_empty() {
        let ids: Vec<String> = pending.drain(..pending.len().min(1000)).collect();
        target
            .subscriber(channel.clone())
            .acknowledge(ps::AcknowledgeRequest { subscription: subscription.to_owned(), ack_ids: ids })
            .await?;
        ack_calls += 1;
    }
    while let Some(done) = acks.join_next().await {
        if let Ok(Err(e)) = done {
            bail!("Acknowledge failed: {e}");
        }
    }
    drop(req_tx);
    Ok(Drained {
        seen,
        receive_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        first_message_seconds: first,
        ack_calls,
    })
}

async fn main_async(args: Args) -> Result<()> {
    let target = grpc::Target::new(&args.endpoint, args.token.as_deref(), None, "localhost")?;
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64
        ^ (u64::from(std::process::id()) << 40);
    let id = format!("drain-{:x}", run & 0xffff_ffff_ffff);
    let topic = format!("projects/{}/topics/{id}", args.project);
    let subscription = format!("projects/{}/subscriptions/{id}", args.project);
    let channel = target.channel().await?;
    target
        .publisher(channel.clone())
        .create_topic(ps::Topic { name: topic.clone(), ..Default::default() })
        .await
        .context("CreateTopic")?;
    target
        .subscriber(channel.clone())
        .create_subscription(ps::Subscription {
            name: subscription.clone(),
            topic: topic.clone(),
            ack_deadline_seconds: 60,
            ..Default::default()
        })
        .await
        .context("CreateSubscription")?;

    eprintln!("publishing {} messages in batches of {}", args.messages, args.batch);
    let publish_seconds = publish_backlog(&target, &topic, &args, run).await?;
    eprintln!(
        "published in {publish_seconds:.2} s ({:.0} msg/s); draining with the {:?} client",
        args.messages as f64 / publish_seconds,
        args.client
    );

    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let own_before = cpu_seconds(std::process::id());
    let d = match args.client {
        ClientKind::Google => drain_google(&args, &subscription, run).await?,
        ClientKind::Tonic => drain_tonic(&args, &target, &subscription, run).await?,
    };
    let cpu = match (cpu_before, args.server_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let own = match (own_before, cpu_seconds(std::process::id())) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let rate = d.seen.distinct as f64 / d.receive_seconds.max(1e-9);
    let us_per = cpu.map(|c| c * 1e6 / d.seen.distinct.max(1) as f64);
    let client_us_per = own.map(|c| c * 1e6 / d.seen.distinct.max(1) as f64);

    let mut left = None;
    if args.check_after > 0.0 {
        eprintln!("waiting {} s, then pulling what is left", args.check_after);
        tokio::time::sleep(Duration::from_secs_f64(args.check_after)).await;
        #[allow(deprecated)]
        let r = target
            .subscriber(channel.clone())
            .pull(ps::PullRequest { subscription: subscription.clone(), return_immediately: true, max_messages: 1000 })
            .await
            .context("Pull")?;
        left = Some(r.into_inner().received_messages.len());
    }

    println!();
    println!("pubsub-drain against {} ({:?} client, one stream)", args.endpoint, args.client);
    println!("{}", "-".repeat(60));
    println!("backlog                   {} messages of {} B", args.messages, args.payload);
    println!("publish                   {publish_seconds:.2} s ({:.0} msg/s)", args.messages as f64 / publish_seconds);
    println!("max_outstanding_messages  {}", args.max_outstanding);
    println!(
        "received                  {} distinct, {} duplicates, {} foreign",
        d.seen.distinct, d.seen.duplicates, d.seen.foreign
    );
    println!("first message after       {:.3} s", d.first_message_seconds.unwrap_or(f64::NAN));
    println!("drain                     {:.2} s → {rate:.0} msg/s", d.receive_seconds);
    println!("until acks flushed        {:.2} s", d.total_seconds);
    if let Some(u) = us_per {
        println!("server CPU per message    {u:.2} µs ({:.2} s)", cpu.unwrap_or(0.0));
    }
    if let Some(u) = client_us_per {
        println!("client CPU per message    {u:.2} µs ({:.2} s)", own.unwrap_or(0.0));
    }
    if let Some(n) = left {
        println!("left after {:>5.0} s        {n} (0: every ack took)", args.check_after);
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "tool": "pubsub-drain",
            "params": &args,
            "results": {
                "publish_seconds": publish_seconds,
                "publish_msgs_per_second": args.messages as f64 / publish_seconds,
                "distinct": d.seen.distinct,
                "duplicates": d.seen.duplicates,
                "foreign": d.seen.foreign,
                "first_message_seconds": d.first_message_seconds,
                "receive_seconds": d.receive_seconds,
                "total_seconds": d.total_seconds,
                "msgs_per_second": rate,
                "ack_calls": d.ack_calls,
                "server_cpu_seconds": cpu,
                "server_cpu_us_per_message": us_per,
                "client_cpu_seconds": own,
                "client_cpu_us_per_message": client_us_per,
                "left_after_check": left,
            },
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    if d.seen.distinct < args.messages {
        bail!("{} of {} messages never arrived", args.messages - d.seen.distinct, args.messages);
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(main_async(args))
}
