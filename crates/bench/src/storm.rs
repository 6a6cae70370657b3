//! `storm`: a reconnect storm. N devices connect and stay connected; once all are up the tool
//! creates `--ready-file` and waits for the server to go away (whoever runs the tool restarts
//! it: `scripts/bench-storm.sh`). Every device then reconnects on its own as soon as it sees its
//! connection drop, the way device firmware does: a first attempt straight away (after
//! `--first-jitter-ms` at most), then exponential backoff with jitter after each failure, and a
//! per-attempt timeout. The run ends when every device is back (or at `--deadline`).
//!
//! Reported: the time from the first drop until every device was back, when the first one got
//! back (the server's downtime as devices saw it), each device's drop → back time, each
//! successful attempt's connect latency (TCP connect to CONNACK, TLS and JWT check included),
//! the attempts, and every failed attempt by cause: CONNACK return code, TCP refused (server
//! not listening yet), timeout, TLS or I/O error. With `--server-pid-file` (the restarted
//! server's pid, written by the script) the new server's CPU time since its start is read when
//! the last device is back.

use crate::fleet::Fleet;
use crate::report::{Report, latency_row, micros, thousands};
use crate::stats::{Histogram, sample};
use crate::util::Progress;
use crate::{Ctx, mqtt};
use anyhow::{Result, bail};
use ferrocore_device::mqtt::Error as MqttError;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct StormArgs {
    /// Devices (connections) in the storm.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Connects in progress at once while the fleet first connects (not measured).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Created once every device is connected: the signal to restart the server.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Seconds to wait for the connections to drop after the ready file was created.
    #[arg(long, default_value_t = 120.0)]
    pub drop_timeout: f64,
    /// A device's first reconnect attempt waits a random 0..=this many ms (0: at once).
    #[arg(long, default_value_t = 0)]
    pub first_jitter_ms: u64,
    /// Backoff after the first failed attempt, ms; doubled after each further one.
    #[arg(long, default_value_t = 500)]
    pub backoff_min_ms: u64,
    /// Longest backoff, ms.
    #[arg(long, default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    /// One attempt (TCP, TLS, CONNECT → CONNACK) fails after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub attempt_timeout: f64,
    /// Seconds after the first drop at which devices still out are given up on.
    #[arg(long, default_value_t = 600.0)]
    pub deadline: f64,
    /// A file the restarted server's pid is written to: its CPU time is read at the end.
    #[arg(long)]
    pub server_pid_file: Option<PathBuf>,
}

/// What every device task shares.
struct Shared {
    /// The instant of the first drop any device saw.
    first_drop: Mutex<Option<Instant>>,
    /// The instants the first and the last device got back.
    first_back: Mutex<Option<Instant>>,
    last_back: Mutex<Option<Instant>>,
    dropped: AtomicU64,
    back: AtomicU64,
    attempts: AtomicU64,
    attempt_latency: Mutex<Histogram>,
    back_latency: Mutex<Histogram>,
    failures: Mutex<BTreeMap<String, u64>>,
    clients: Mutex<Vec<mqtt::Client>>,
}

/// A stable pseudo-random number for device `i`'s attempt `k` (splitmix64), for the jitter:
/// the same run gives the same spread, and no random number crate is needed.
fn jitter(i: usize, k: u32, seed: u64) -> u64 {
    let mut z = seed ^ ((i as u64) << 20) ^ u64::from(k);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The wait after failed attempt number `failures` (1, 2, ...): min · 2^(failures-1), capped,
/// then "equal jitter" (half fixed, half random) so retries of one failed wave spread out.
fn backoff(args: &StormArgs, failures: u32, random: u64) -> Duration {
    let base = args.backoff_min_ms.saturating_mul(1u64 << failures.saturating_sub(1).min(20)).min(args.backoff_max_ms);
    let half = base / 2;
    Duration::from_millis(half + if half == 0 { 0 } else { random % (half + 1) })
}

/// The cause of a failed attempt, as counted in the report.
fn cause(e: &anyhow::Error) -> String {
    // `Endpoint::open` names the TLS stage; a socket error there means the server gave up on
    // the handshake (or never answered it), not on the device.
    let stage = if e.chain().any(|c| c.to_string() == "TLS handshake") { "TLS handshake, " } else { "" };
    for c in e.chain() {
        if let Some(m) = c.downcast_ref::<MqttError>() {
            return match m {
                MqttError::Refused(code) => format!("CONNACK {code:?}"),
                MqttError::Closed => "closed before CONNACK".into(),
                MqttError::Io(io) => format!("I/O during CONNECT: {:?}", io.kind()),
                MqttError::Malformed(_) => "malformed CONNACK".into(),
                MqttError::Unexpected(_) => "unexpected packet".into(),
            };
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "TCP connect refused (server not listening)".into(),
                kind => format!("{stage}I/O: {kind:?}"),
            };
        }
    }
    let text = e.to_string();
    if text.contains("TLS handshake") { "TLS handshake failed".into() } else { text }
}

pub async fn run(ctx: &Ctx, args: StormArgs) -> Result<Report> {
    let fleet = Fleet::prepare(ctx, args.devices, "storm").await?;
    let devices = Arc::new(fleet.devices.clone());
    let shared = Arc::new(Shared {
        first_drop: Mutex::new(None),
        first_back: Mutex::new(None),
        last_back: Mutex::new(None),
        dropped: AtomicU64::new(0),
        back: AtomicU64::new(0),
        attempts: AtomicU64::new(0),
        attempt_latency: Mutex::new(Histogram::new()),
        back_latency: Mutex::new(Histogram::new()),
        failures: Mutex::new(BTreeMap::new()),
        clients: Mutex::new(Vec::with_capacity(args.devices)),
    });
    // 1. The fleet connects (not measured).
    let connected = Arc::new(AtomicU64::new(0));
    let initial_started = Instant::now();
    let (held, errors) = {
        let _progress = Progress::start("connect", connected.clone(), Some(args.devices as u64), ctx.progress);
        fleet.connect_all(ctx, args.devices, args.concurrency, connected.clone()).await
    };
    if errors.count > 0 {
        let sample = errors.samples.first().cloned().unwrap_or_default();
        bail!("{} of {} devices could not connect before the storm, e.g. {sample}", errors.count, args.devices);
    }
    let initial_seconds = initial_started.elapsed().as_secs_f64();
    eprintln!("[storm] {} devices connected in {initial_seconds:.1} s", thousands(args.devices as f64));

    // 2. Every device waits for its connection to drop, then reconnects until it is back.
    let seed = ctx.run_id;
    let args = Arc::new(args);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in held {
        let (devices, endpoint, keep_alive, shared, args) =
            (devices.clone(), ctx.endpoint.clone(), ctx.keep_alive, shared.clone(), args.clone());
        tasks.spawn(async move {
            let mut client = client;
            // Waits for the drop: the server sends nothing to an idle device before then.
            while client.recv().await.is_ok() {}
            let dropped_at = Instant::now();
            shared.first_drop.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(dropped_at);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            drop(client);
            let d = &devices[i];
            let mut failures = 0u32;
            let first = args.first_jitter_ms;
            if first > 0 {
                tokio::time::sleep(Duration::from_millis(jitter(i, 0, seed) % (first + 1))).await;
            }
            let give_up = dropped_at + Duration::from_secs_f64(args.deadline.max(1.0));
            loop {
                if Instant::now() >= give_up {
                    return;
                }
                shared.attempts.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                let attempt = tokio::time::timeout(Duration::from_secs_f64(args.attempt_timeout.max(0.1)), async {
                    let mut c = endpoint.open(i).await?;
                    c.connect(&d.client_id, d.password.as_deref(), keep_alive).await?;
                    anyhow::Ok(c)
                })
                .await;
                let failure = match attempt {
                    Ok(Ok(c)) => {
                        let now = Instant::now();
                        shared.attempt_latency.lock().unwrap_or_else(|p| p.into_inner()).record(now - t0);
                        shared.back_latency.lock().unwrap_or_else(|p| p.into_inner()).record(now - dropped_at);
                        shared.first_back.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(now);
                        *shared.last_back.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
                        shared.back.fetch_add(1, Ordering::Relaxed);
                        shared.clients.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                        return;
                    }
                    Ok(Err(e)) => cause(&e),
                    Err(_) => "attempt timed out".to_owned(),
                };
                *shared.failures.lock().unwrap_or_else(|p| p.into_inner()).entry(failure).or_default() += 1;
                failures += 1;
                tokio::time::sleep(backoff(&args, failures, jitter(i, failures, seed))).await;
            }
        });
    }
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", args.devices))?;
    }
    eprintln!("[storm] holding {} connections; waiting for the server to drop them", thousands(args.devices as f64));

    // 3. Progress until all are back, or the deadlines pass.
    let waiting_since = Instant::now();
    let mut last_print = Instant::now();
    let n = args.devices as u64;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let first_drop = *shared.first_drop.lock().unwrap_or_else(|p| p.into_inner());
        let back = shared.back.load(Ordering::Relaxed);
        match first_drop {
            None if waiting_since.elapsed().as_secs_f64() > args.drop_timeout => {
                tasks.abort_all();
                bail!("no connection dropped within {} s of the ready file", args.drop_timeout);
            }
            None => continue,
            Some(t) => {
                if back >= n || tasks.is_empty() {
                    break;
                }
                if t.elapsed().as_secs_f64() > args.deadline + args.attempt_timeout + 1.0 {
                    break;
                }
                if !ctx.progress.is_zero() && last_print.elapsed() >= ctx.progress {
                    last_print = Instant::now();
                    eprintln!(
                        "[storm] {:>6.1} s after the first drop: {} dropped, {} back, {} attempts",
                        t.elapsed().as_secs_f64(),
                        thousands(shared.dropped.load(Ordering::Relaxed) as f64),
                        thousands(back as f64),
                        thousands(shared.attempts.load(Ordering::Relaxed) as f64)
                    );
                }
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    let end = Instant::now();
    let server_after = args
        .server_pid_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<u32>().ok())
        .and_then(|pid| sample(pid).map(|s| (pid, s)));
    tasks.abort_all();
    let back = shared.back.load(Ordering::Relaxed);
    let first_drop = shared.first_drop.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(end);
    let first_back = *shared.first_back.lock().unwrap_or_else(|p| p.into_inner());
    let last_back = *shared.last_back.lock().unwrap_or_else(|p| p.into_inner());
    let all_back_s = (back >= n).then(|| last_back.map(|t| (t - first_drop).as_secs_f64())).flatten();
    let downtime_s = first_back.map(|t| (t - first_drop).as_secs_f64());
    // Reconnects per second once the server took connections again.
    let wave_s = match (first_back, last_back) {
        (Some(a), Some(b)) if b > a => Some((b - a).as_secs_f64()),
        _ => None,
    };
    let attempt = shared.attempt_latency.lock().unwrap_or_else(|p| p.into_inner()).summary();
    let back_latency = shared.back_latency.lock().unwrap_or_else(|p| p.into_inner()).summary();
    let failures = std::mem::take(&mut *shared.failures.lock().unwrap_or_else(|p| p.into_inner()));
    let clients = std::mem::take(&mut *shared.clients.lock().unwrap_or_else(|p| p.into_inner()));
    for c in clients {
        c.disconnect().await;
    }

    let attempts = shared.attempts.load(Ordering::Relaxed);
    let mut r = Report::new("storm", serde_json::to_value(&*args)?);
    r.row("devices", thousands(n as f64));
    r.row("provisioning (not measured)", format!("{:.1} s", fleet.provision_seconds));
    r.row("first connect (not measured)", format!("{initial_seconds:.1} s"));
    r.row("dropped", thousands(shared.dropped.load(Ordering::Relaxed) as f64));
    r.row("back", format!("{}{}", thousands(back as f64), if back < n { " (NOT ALL)" } else { "" }));
    r.row("first drop → all back", all_back_s.map_or("never".into(), |s| format!("{s:.2} s")));
    r.row("first drop → first back (server down)", downtime_s.map_or("-".into(), |s| format!("{s:.2} s")));
    if let (Some(w), true) = (wave_s, back > 1) {
        r.row("first back → last back", format!("{w:.2} s ({}/s)", thousands(back as f64 / w)));
    }
    r.row("drop → back, per device", latency_row(&back_latency));
    r.row("connect latency (successful attempts)", latency_row(&attempt));
    r.row("attempts", format!("{} ({:.2} per device)", thousands(attempts as f64), attempts as f64 / n.max(1) as f64));
    if failures.is_empty() {
        r.row("failed attempts", "none");
    }
    for (why, count) in &failures {
        r.row(format!("failed: {why}"), thousands(*count as f64));
    }
    if let Some((pid, s)) = server_after {
        r.row(
            "restarted server CPU (since its start)",
            format!(
                "{:.2} s, {} per reconnect (pid {pid})",
                s.cpu_seconds,
                micros(s.cpu_seconds * 1e6 / back.max(1) as f64)
            ),
        );
        r.set("restarted_server_cpu_seconds", s.cpu_seconds);
        r.set("restarted_server_cpu_us_per_reconnect", s.cpu_seconds * 1e6 / back.max(1) as f64);
        r.set("restarted_server_rss_kib", s.rss_kib);
    }
    r.set("devices", n);
    r.set("dropped", shared.dropped.load(Ordering::Relaxed));
    r.set("back", back);
    r.set("all_back_seconds", all_back_s);
    r.set("downtime_seconds", downtime_s);
    r.set("wave_seconds", wave_s);
    r.set("back_latency", back_latency);
    r.set("latency", attempt);
    r.set("attempts", attempts);
    r.set("failures", json!(failures));
    r.set("initial_connect_seconds", initial_seconds);
    r.set("provision_seconds", fleet.provision_seconds);
    r.set("tls", ctx.endpoint.is_tls());
    r.results["alg"] = json!(ctx.api.as_ref().map(|_| ctx.alg.name()));
    Ok(r)
}
