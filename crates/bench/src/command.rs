//! `command` (Ferrocore only): REST sendCommandToDevice → the device's receipt of the command,
//! timed in one process so one clock serves both ends; optionally while other devices publish
//! telemetry at `--telemetry-rate`. The REST call's own latency (which, for a QoS 1 subscriber,
//! includes the device's PUBACK) is reported beside it.

use crate::fleet::Fleet;
use crate::report::{Report, latency_row, opt_us, thousands};
use crate::stats::Histogram;
use crate::telemetry::{self, PublishSpec, qos_of};
use crate::util::Errors;
use crate::{Ctx, mqtt};
use anyhow::{Result, bail};
use ferrocore_mqtt_codec::{Packet, QoS};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct CommandArgs {
    /// Devices receiving commands (round robin).
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Commands to send.
    #[arg(long, default_value_t = 1000)]
    pub commands: usize,
    /// Commands per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Command payload bytes (at least 16).
    #[arg(long, default_value_t = 32)]
    pub payload: usize,
    /// QoS of the devices' commands subscription.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// REST calls in flight at most.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Background telemetry, messages per second over all telemetry devices (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub telemetry_rate: f64,
    /// Telemetry devices; 0 picks enough to stay under 80 messages/s per device.
    #[arg(long, default_value_t = 0)]
    pub telemetry_devices: usize,
    #[arg(long, default_value_t = 100)]
    pub telemetry_payload: usize,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub telemetry_qos: u8,
    /// Unacknowledged telemetry messages per device.
    #[arg(long, default_value_t = 32)]
    pub telemetry_inflight: usize,
    /// Seconds of telemetry before the first command.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

/// Reads commands on one device connection and reports (sequence, arrival) to the collector.
async fn receive(
    mut client: mqtt::Client,
    run_id: u64,
    qos: QoS,
    arrivals: Arc<Mutex<Vec<Option<Instant>>>>,
    stop: Arc<AtomicBool>,
) -> Option<String> {
    loop {
        if stop.load(Ordering::Relaxed) {
            client.disconnect().await;
            return None;
        }
        tokio::select! {
            read = client.read_more() => match read {
                Ok(true) => loop {
                    match client.next_buffered() {
                        Ok(Some(Packet::Publish(p))) => {
                            let now = Instant::now();
                            if let Some((_, seq)) = telemetry::parse_header(run_id, &p.payload) {
                                let mut a = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                                if let Some(slot) = a.get_mut(seq as usize) {
                                    slot.get_or_insert(now);
                                }
                            }
                            if let (QoS::AtLeastOnce, Some(id)) = (qos, p.packet_id) {
                                client.queue(&Packet::PubAck(id));
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => return Some(format!("{e:#}")),
                    }
                },
                Ok(false) | Err(_) => return Some("the server closed a command device's connection".into()),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if let Err(e) = client.flush().await {
            return Some(format!("{e:#}"));
        }
    }
}

pub async fn run(ctx: &Ctx, args: CommandArgs) -> Result<Report> {
    let api = ctx.api("command")?.clone();
    if args.payload < telemetry::HEADER {
        bail!("--payload must be at least {} bytes", telemetry::HEADER);
    }
    let tdevices = match (args.telemetry_rate > 0.0, args.telemetry_devices) {
        (false, _) => 0,
        (true, 0) => (args.telemetry_rate / 80.0).ceil() as usize,
        (true, n) => n,
    };
    let fleet = Fleet::prepare(ctx, args.devices + tdevices, "command").await?;
    let mut receivers = telemetry::connect_all(ctx, &fleet, 0, args.devices, 64, "connect command devices").await?;
    let qos = qos_of(args.qos);
    for (i, c) in receivers.iter_mut().enumerate() {
        let filter = match ctx.broker {
            crate::Broker::Ferrocore => format!("/devices/{}/commands/#", fleet.devices[i].id),
            crate::Broker::Mqtt => bail!("the command scenario needs --broker ferrocore"),
        };
        mqtt::subscribe(c, &filter, qos).await?;
    }
    let arrivals = Arc::new(Mutex::new(vec![None; args.commands]));
    let stop_receivers = Arc::new(AtomicBool::new(false));
    let receiver_tasks: Vec<_> = receivers
        .into_iter()
        .map(|c| tokio::spawn(receive(c, ctx.run_id, qos, arrivals.clone(), stop_receivers.clone())))
        .collect();

    // Background telemetry.
    let acked_total = Arc::new(AtomicU64::new(0));
    let stop_telemetry = Arc::new(AtomicBool::new(false));
    let mut telemetry_tasks = Vec::new();
    if tdevices > 0 {
        let clients =
            telemetry::connect_all(ctx, &fleet, args.devices, tdevices, 64, "connect telemetry devices").await?;
        let spec = PublishSpec {
            run_id: ctx.run_id ^ 1,
            payload: args.telemetry_payload,
            qos: qos_of(args.telemetry_qos),
            window: args.telemetry_inflight.max(1),
            interval: Some(Duration::from_secs_f64(tdevices as f64 / args.telemetry_rate)),
            max_messages: u64::from(u32::MAX),
            deadline: Instant::now() + Duration::from_secs(24 * 3600),
        };
        for (i, c) in clients.into_iter().enumerate() {
            let topic = fleet.devices[args.devices + i].events_topic.clone();
            telemetry_tasks.push(tokio::spawn(telemetry::publish_loop(
                c,
                i as u32,
                topic,
                spec.clone(),
                stop_telemetry.clone(),
                acked_total.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_secs_f64(args.warmup.max(0.0))).await;
    }

    // Commands, paced; each REST call in its own task, at most `concurrency` at once.
    let sent_at = Arc::new(Mutex::new(vec![None::<Instant>; args.commands]));
    let rest_hist = Arc::new(Mutex::new(Histogram::new()));
    let errors = Arc::new(Mutex::new(Errors::default()));
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let window = ctx.cpu_window();
    let acked_at_start = acked_total.load(Ordering::Relaxed);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let progress_done = Arc::new(AtomicU64::new(0));
    let progress =
        crate::util::Progress::start("commands", progress_done.clone(), Some(args.commands as u64), ctx.progress);
    let mut calls = Vec::new();
    for k in 0..args.commands {
        tokio::time::sleep_until(started + interval * k as u32).await;
        let permit = slots.clone().acquire_owned().await?;
        let device = fleet.devices[k % args.devices].id.clone();
        let mut data = vec![b'c'; args.payload];
        data[..8].copy_from_slice(&ctx.run_id.to_le_bytes());
        data[8..12].copy_from_slice(&((k % args.devices) as u32).to_le_bytes());
        data[12..16].copy_from_slice(&(k as u32).to_le_bytes());
        let (api, registry, sent_at, rest_hist, errors, done) = (
            api.clone(),
            fleet.registry.clone(),
            sent_at.clone(),
            rest_hist.clone(),
            errors.clone(),
            progress_done.clone(),
        );
        calls.push(tokio::spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            sent_at.lock().unwrap_or_else(|p| p.into_inner())[k] = Some(t0);
            match api.send_command(&registry, &device, &data).await {
                Ok(()) => rest_hist.lock().unwrap_or_else(|p| p.into_inner()).record(t0.elapsed()),
                Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).add(e),
            }
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for c in calls {
        c.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let telemetry_acked = acked_total.load(Ordering::Relaxed) - acked_at_start;
    let cpu = window.finish();
    drop(progress);
    // Late arrivals (QoS 0 returns before the device reads it).
    let grace = Instant::now() + Duration::from_secs(2);
    while Instant::now() < grace && arrivals.lock().unwrap_or_else(|p| p.into_inner()).iter().any(Option::is_none) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_receivers.store(true, Ordering::Relaxed);
    stop_telemetry.store(true, Ordering::Relaxed);
    let mut receiver_errors = Errors::default();
    for t in receiver_tasks {
        if let Ok(Some(e)) = t.await {
            receiver_errors.add(e);
        }
    }
    let mut telemetry_runs = Vec::new();
    for t in telemetry_tasks {
        telemetry_runs.push(t.await?);
    }
    let tt = telemetry::totals(&telemetry_runs);

    let mut e2e = Histogram::new();
    let (sent_at, arrivals) = (
        std::mem::take(&mut *sent_at.lock().unwrap_or_else(|p| p.into_inner())),
        std::mem::take(&mut *arrivals.lock().unwrap_or_else(|p| p.into_inner())),
    );
    let mut received = 0u64;
    for (s, a) in sent_at.iter().zip(&arrivals) {
        if let (Some(s), Some(a)) = (s, a) {
            e2e.record(a.saturating_duration_since(*s));
            received += 1;
        }
    }
    let e2e = e2e.summary();
    let rest = rest_hist.lock().unwrap_or_else(|p| p.into_inner()).summary();
    let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|p| p.into_inner()));
    let telemetry_rate = telemetry_acked as f64 / elapsed;

    let mut r = Report::new("command", serde_json::to_value(&args)?);
    r.row("commands sent / received", format!("{} / {}", args.commands, received));
    r.row("command rate", format!("{:.0}/s", args.commands as f64 / elapsed));
    r.row("send → device receipt", latency_row(&e2e));
    r.row("REST call", latency_row(&rest));
    r.row(
        "REST errors",
        format!("{}{}", errors.count, errors.samples.first().map(|s| format!(" ({s})")).unwrap_or_default()),
    );
    if tdevices > 0 {
        r.row(
            "background telemetry",
            format!("{} devices, {} msg/s acknowledged", tdevices, thousands(telemetry_rate)),
        );
        r.row("telemetry publish → PUBACK", latency_row(&tt.latency));
        r.row(
            "telemetry device errors",
            format!("{}{}", tt.errors.count, tt.errors.samples.first().map(|s| format!(" ({s})")).unwrap_or_default()),
        );
    }
    r.row("server CPU per command (incl. telemetry)", opt_us(cpu.server_us_per(args.commands as u64)));
    if cpu.other_cpu_seconds.is_some() {
        r.row("other processes' CPU per command", opt_us(cpu.other_us_per(args.commands as u64)));
    }
    r.set("commands", args.commands);
    r.set("received", received);
    r.set("latency", &e2e);
    r.set("rest_latency", &rest);
    r.set("errors", errors.json());
    r.set("receiver_errors", receiver_errors.json());
    r.set("seconds", elapsed);
    r.set("cpu", &cpu);
    r.results["telemetry"] = json!({
        "devices": tdevices,
        "target_rate": args.telemetry_rate,
        "msgs_per_second": telemetry_rate,
        "latency": tt.latency,
        "errors": tt.errors.json(),
    });
    Ok(r)
}
