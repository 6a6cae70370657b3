//! `connect`: N devices connect, at most `--concurrency` at a time, as fast as the server takes
//! them. Each connect is timed from the TCP connect to the CONNACK (TLS handshake and, against
//! Ferrocore, the JWT check included); tokens are signed before the clock starts, as firmware
//! signs once per token lifetime, not per connect.

use crate::fleet::Fleet;
use crate::report::{Report, latency_row, opt_us, thousands};
use crate::stats::Histogram;
use crate::util::{Errors, Progress, for_each_concurrent};
use crate::{Ctx, mqtt};
use anyhow::Result;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct ConnectArgs {
    /// Devices (connections) in total.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Connects in progress at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Keep every connection open until all have connected (default: DISCONNECT after CONNACK).
    #[arg(long)]
    pub hold: bool,
}

pub async fn run(ctx: &Ctx, args: ConnectArgs) -> Result<Report> {
    let fleet = Fleet::prepare(ctx, args.devices, "connect").await?;
    let devices = Arc::new(fleet.devices.clone());
    let hist = Arc::new(Mutex::new(Histogram::new()));
    let errors = Arc::new(Mutex::new(Errors::default()));
    let ok = Arc::new(AtomicU64::new(0));
    let held = Arc::new(Mutex::new(Vec::new()));
    let endpoint = ctx.endpoint.clone();
    let keep_alive = ctx.keep_alive;

    let window = ctx.cpu_window();
    let started = Instant::now();
    {
        let _progress = Progress::start("connect", ok.clone(), Some(args.devices as u64), ctx.progress);
        let (hist, errors, ok, held, hold) = (hist.clone(), errors.clone(), ok.clone(), held.clone(), args.hold);
        for_each_concurrent(args.devices, args.concurrency, move |i| {
            let (devices, endpoint, hist, errors, ok, held) =
                (devices.clone(), endpoint.clone(), hist.clone(), errors.clone(), ok.clone(), held.clone());
            async move {
                let d = &devices[i];
                let t0 = Instant::now();
                match connect_one(&endpoint, i, &d.client_id, d.password.as_deref(), keep_alive).await {
                    Ok(client) => {
                        hist.lock().unwrap_or_else(|p| p.into_inner()).record(t0.elapsed());
                        ok.fetch_add(1, Ordering::Relaxed);
                        if hold {
                            held.lock().unwrap_or_else(|p| p.into_inner()).push(client);
                        } else {
                            client.disconnect().await;
                        }
                    }
                    Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).add(e),
                }
            }
        })
        .await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = window.finish();
    let held: Vec<mqtt::Client> = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
    for c in held {
        c.disconnect().await;
    }

    let ok = ok.load(Ordering::Relaxed);
    let latency = hist.lock().unwrap_or_else(|p| p.into_inner()).summary();
    let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|p| p.into_inner()));
    let rate = ok as f64 / elapsed;
    let mut r = Report::new("connect", serde_json::to_value(&args)?);
    r.row("devices", thousands(args.devices as f64));
    r.row("provisioning (not measured)", format!("{:.1} s", fleet.provision_seconds));
    r.row("connected", thousands(ok as f64));
    r.row(
        "failed",
        format!("{}{}", errors.count, errors.samples.first().map(|s| format!(" ({s})")).unwrap_or_default()),
    );
    r.row("connects/s", thousands(rate));
    r.row("connect latency", latency_row(&latency));
    r.row("server CPU per connect", opt_us(cpu.server_us_per(ok)));
    r.row("bench CPU per connect", format!("{:.2} µs", cpu.bench_cpu_seconds * 1e6 / ok.max(1) as f64));
    r.set("connected", ok);
    r.set("failed", errors.json());
    r.set("seconds", elapsed);
    r.set("connects_per_second", rate);
    r.set("latency", latency);
    r.set("cpu", &cpu);
    r.set("server_cpu_us_per_connect", cpu.server_us_per(ok));
    r.set("provision_seconds", fleet.provision_seconds);
    r.set("devices_created", fleet.created);
    r.set("tls", ctx.endpoint.is_tls());
    r.results["alg"] = json!(ctx.api.as_ref().map(|_| ctx.alg.name()));
    Ok(r)
}

async fn connect_one(
    endpoint: &mqtt::Endpoint,
    i: usize,
    client_id: &str,
    password: Option<&str>,
    keep_alive: u16,
) -> Result<mqtt::Client> {
    let mut client = endpoint.open(i).await?;
    client.connect(client_id, password, keep_alive).await?;
    Ok(client)
}
