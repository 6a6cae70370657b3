//! `idle`: N connections opened and held without traffic; the server's resident memory is read
//! before the first and after the last (plus a settling pause), and along the way, giving the
//! memory one idle connection costs. Connections are spread over source addresses 127.0.0.2..,
//! each bound before connecting, so no single address runs out of ephemeral ports.
//!
//! With `--barrier DIR` several bench processes (one per node of a cluster) move in step: each
//! creates `DIR/provisioned.PID` once its devices exist and waits for `DIR/go` before connecting,
//! then creates `DIR/held.PID` once its connections are up and its memory read, and waits for
//! `DIR/release` before checking and closing them. Whoever started the processes creates `go` and
//! `release` when every process got there, so all connect at once and all hold at once.

use crate::fleet::Fleet;
use crate::report::{Report, thousands};
use crate::stats::{Window, sample};
use crate::util::for_each_concurrent;
use crate::{Ctx, mqtt};
use anyhow::Result;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct IdleArgs {
    /// Connections to open and hold (each process here may open at most 20,000 files).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connects in progress at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to wait after the last connect before reading the server's memory.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Seconds to keep the connections open in all (at least the settling time).
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Move in step with other bench processes through files in this directory (see the module
    /// documentation): connect when DIR/go exists, close when DIR/release exists.
    #[arg(long)]
    pub barrier: Option<PathBuf>,
}

/// Milliseconds since the Unix epoch (comparable between processes).
fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Creates `dir/mark.PID`, then waits (at most 30 minutes) until `dir/wait_for` exists.
async fn barrier(dir: &Path, mark: &str, wait_for: &str) -> Result<()> {
    std::fs::write(dir.join(format!("{mark}.{}", std::process::id())), b"")?;
    let go = dir.join(wait_for);
    let started = Instant::now();
    while !go.exists() {
        if started.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("{} did not appear within 30 minutes", go.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, args: IdleArgs) -> Result<Report> {
    let fleet = Fleet::prepare(ctx, args.connections, "idle").await?;
    if let Some(dir) = &args.barrier {
        barrier(dir, "provisioned", "go").await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = ctx.server_pid.and_then(sample);
    let bench_before = sample(std::process::id());
    let window = Window::start(ctx.server_pid);

    let connected = Arc::new(AtomicU64::new(0));
    let curve = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let started = Instant::now();
    let connect_started_unix_ms = unix_ms();
    // Samples of (connections, server RSS) for the chart, and the progress line.
    let sampler = {
        let (connected, curve, pid, every, total) =
            (connected.clone(), curve.clone(), ctx.server_pid, ctx.progress, args.connections);
        tokio::spawn(async move {
            let start = Instant::now();
            let mut last_print = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let n = connected.load(Ordering::Relaxed);
                let rss = pid.and_then(sample).map(|s| s.rss_kib);
                if let Some(rss) = rss {
                    curve.lock().unwrap_or_else(|p| p.into_inner()).push((n, rss));
                }
                if !every.is_zero() && last_print.elapsed() >= every {
                    last_print = Instant::now();
                    eprintln!(
                        "[idle] {:>6.1} s  {}/{} connected{}",
                        start.elapsed().as_secs_f64(),
                        thousands(n as f64),
                        thousands(total as f64),
                        rss.map(|r| format!(", server RSS {:.1} MiB", r as f64 / 1024.0)).unwrap_or_default()
                    );
                }
            }
        })
    };
    let (clients, errors) = fleet.connect_all(ctx, args.connections, args.concurrency, connected.clone()).await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let connect_finished_unix_ms = unix_ms();
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(0.0))).await;
    let after = ctx.server_pid.and_then(sample);
    let bench_after = sample(std::process::id());
    let cpu = window.finish();
    let rest = args.hold - started.elapsed().as_secs_f64() + connect_seconds;
    if rest > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(rest)).await;
    }
    if let Some(dir) = &args.barrier {
        barrier(dir, "held", "release").await?;
    }
    let check_started_unix_ms = unix_ms();
    sampler.abort();
    let n = connected.load(Ordering::Relaxed);
    // Still open? A server that dropped idle connections would make the figure meaningless.
    let still_open = count_open(clients.into_iter().map(|(_, c)| c).collect()).await;

    let per_conn = |a: Option<crate::stats::ProcSample>, b: Option<crate::stats::ProcSample>| match (a, b) {
        (Some(a), Some(b)) if n > 0 => Some((b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / n as f64),
        _ => None,
    };
    let server_bytes = per_conn(before, after);
    let bench_bytes = per_conn(bench_before, bench_after);
    let mut r = Report::new("idle", serde_json::to_value(&args)?);
    r.row("connections asked", thousands(args.connections as f64));
    r.row(
        "connected",
        format!(
            "{}{}",
            thousands(n as f64),
            if errors.count > 0 {
                format!(" ({} failed, e.g. {})", errors.count, errors.samples.first().cloned().unwrap_or_default())
            } else {
                String::new()
            }
        ),
    );
    r.row("still open at the end", thousands(still_open as f64));
    r.row("connect phase", format!("{connect_seconds:.1} s ({}/s)", thousands(n as f64 / connect_seconds)));
    if let (Some(b), Some(a)) = (before, after) {
        r.row(
            "server RSS before → after",
            format!("{:.1} MiB → {:.1} MiB", b.rss_kib as f64 / 1024.0, a.rss_kib as f64 / 1024.0),
        );
    }
    r.row(
        "server memory per connection",
        server_bytes.map_or_else(|| "n/a (no --server-pid)".into(), |b| format!("{:.2} KB", b / 1000.0)),
    );
    r.row("bench memory per connection", bench_bytes.map_or("n/a".into(), |b| format!("{:.2} KB", b / 1000.0)));
    r.row("server CPU per connect", crate::report::opt_us(cpu.server_us_per(n)));
    r.set("connected", n);
    r.set("failed", errors.json());
    r.set("still_open", still_open);
    r.set("connect_seconds", connect_seconds);
    r.set("connect_started_unix_ms", connect_started_unix_ms);
    r.set("connect_finished_unix_ms", connect_finished_unix_ms);
    r.set("check_started_unix_ms", check_started_unix_ms);
    r.set("server_rss_kib_before", before.map(|s| s.rss_kib));
    r.set("server_rss_kib_after", after.map(|s| s.rss_kib));
    r.set("server_bytes_per_connection", server_bytes);
    r.set("bench_bytes_per_connection", bench_bytes);
    r.set("server_threads", after.map(|s| s.threads));
    r.set("cpu", &cpu);
    r.set("server_cpu_us_per_connect", cpu.server_us_per(n));
    r.set("provision_seconds", fleet.provision_seconds);
    r.set("devices_created", fleet.created);
    r.set("tls", ctx.endpoint.is_tls());
    let curve = std::mem::take(&mut *curve.lock().unwrap_or_else(|p| p.into_inner()));
    r.results["rss_curve"] = json!(curve.iter().map(|(c, k)| json!([c, k])).collect::<Vec<_>>());
    Ok(r)
}

/// Sends a PINGREQ on every connection and counts the PINGRESPs that come back within 10 s,
/// then closes them all.
async fn count_open(clients: Vec<mqtt::Client>) -> u64 {
    let open = Arc::new(AtomicU64::new(0));
    let clients: Arc<Mutex<Vec<Option<mqtt::Client>>>> = Arc::new(Mutex::new(clients.into_iter().map(Some).collect()));
    let n = clients.lock().unwrap_or_else(|p| p.into_inner()).len();
    let (o, c) = (open.clone(), clients.clone());
    for_each_concurrent(n, 256, move |i| {
        let (open, clients) = (o.clone(), c.clone());
        async move {
            let Some(mut client) = clients.lock().unwrap_or_else(|p| p.into_inner())[i].take() else { return };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(10), client.ping()).await {
                open.fetch_add(1, Ordering::Relaxed);
            }
            client.disconnect().await;
        }
    })
    .await;
    open.load(Ordering::Relaxed)
}
