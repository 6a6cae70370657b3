//! `api` (Ferrocore only): devices.create and devices.get throughput and latency with
//! `--concurrency` requests in flight, then device list pages on a registry of
//! `--list-devices` devices: every page timed while walking the registry, then the first and the
//! last page fetched `--list-samples` times each, alternately.
//!
//! The gets are spread over the whole registry (the devices created and those the list fill
//! added, or those `--prefilled` says are there), so a lookup that grows with a device's
//! position in the registry shows.

use crate::fleet::device_id;
use crate::report::{Report, latency_row, micros, opt_us, thousands};
use crate::stats::{Histogram, LatencySummary};
use crate::util::{Errors, Progress, for_each_concurrent};
use crate::{Ctx, api::Api};
use anyhow::Result;
use ferrocore_device::{Alg, DeviceKey};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct ApiArgs {
    /// devices.create calls (each a new device with an ES256 key).
    #[arg(long, default_value_t = 5000)]
    pub creates: usize,
    /// devices.get calls, spread over every device of the registry (created, filled or prefilled).
    #[arg(long, default_value_t = 50_000)]
    pub gets: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Devices the list registry holds (created untimed, without credentials, past --creates);
    /// 0: list only what --creates made.
    #[arg(long, default_value_t = 0)]
    pub list_devices: usize,
    /// Page size of list calls (the server's maximum is 500).
    #[arg(long, default_value_t = 500)]
    pub page_size: u32,
    /// Times the first and the last page are fetched for the comparison.
    #[arg(long, default_value_t = 20)]
    pub list_samples: usize,
    /// The registry (`--registry`) already holds the devices `d0000000` up to `--list-devices`
    /// (written straight into the database by scripts/bench-api-registry.sh): no fill.
    #[arg(long, requires = "list_devices")]
    pub prefilled: bool,
}

struct Phase {
    ops: u64,
    seconds: f64,
    latency: LatencySummary,
    cpu: crate::stats::CpuWindow,
    errors: Errors,
}

impl Phase {
    fn json(&self) -> Value {
        json!({
            "ops": self.ops,
            "seconds": self.seconds,
            "per_second": self.ops as f64 / self.seconds,
            "latency": self.latency,
            "cpu": self.cpu,
            "server_cpu_us_per_op": self.cpu.server_us_per(self.ops),
            "errors": self.errors.json(),
        })
    }
}

/// Runs `n` calls of `op(i)` with `concurrency` in flight, timing each.
async fn timed<F, Fut>(ctx: &Ctx, label: &str, n: usize, concurrency: usize, op: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let hist = Arc::new(Mutex::new(Histogram::new()));
    let errors = Arc::new(Mutex::new(Errors::default()));
    let done = Arc::new(AtomicU64::new(0));
    let op = Arc::new(op);
    let window = ctx.cpu_window();
    let started = Instant::now();
    {
        let _p = Progress::start(label, done.clone(), Some(n as u64), ctx.progress);
        let (hist, errors, done) = (hist.clone(), errors.clone(), done.clone());
        for_each_concurrent(n, concurrency, move |i| {
            let (hist, errors, done, op) = (hist.clone(), errors.clone(), done.clone(), op.clone());
            async move {
                let t0 = Instant::now();
                match op(i).await {
                    Ok(()) => {
                        hist.lock().unwrap_or_else(|p| p.into_inner()).record(t0.elapsed());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).add(e),
                }
            }
        })
        .await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = window.finish();
    let latency = hist.lock().unwrap_or_else(|p| p.into_inner()).summary();
    let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|p| p.into_inner()));
    Phase { ops: done.load(Ordering::Relaxed), seconds, latency, cpu, errors }
}

fn phase_rows(r: &mut Report, name: &str, p: &Phase) {
    r.row(format!("{name}/s"), thousands(p.ops as f64 / p.seconds));
    r.row(format!("{name} latency"), latency_row(&p.latency));
    r.row(format!("{name} server CPU"), opt_us(p.cpu.server_us_per(p.ops)));
    if p.errors.count > 0 {
        r.row(format!("{name} errors"), format!("{} ({})", p.errors.count, p.errors.samples.join("; ")));
    }
}

pub async fn run(ctx: &Ctx, args: ApiArgs) -> Result<Report> {
    let api: Api = ctx.api("api")?.clone();
    let registry = ctx.registry.clone().unwrap_or_else(|| format!("bench-api-{:x}", ctx.run_id));
    api.create_registry(&registry, &registry).await?;
    let key = Arc::new(DeviceKey::generate(Alg::Es256)?);
    let mut r = Report::new("api", serde_json::to_value(&args)?);
    r.row("registry", registry.clone());

    let create = {
        let (api, registry, key) = (api.clone(), registry.clone(), key.clone());
        timed(ctx, "devices.create", args.creates, args.concurrency, move |i| {
            let (api, registry, key) = (api.clone(), registry.clone(), key.clone());
            async move {
                api.create_device(&registry, &device_id(i), Some(("ES256_PEM", key.public_pem()))).await?;
                Ok(())
            }
        })
        .await
    };
    phase_rows(&mut r, "devices.create", &create);
    r.results["create"] = create.json();

    let list_n = args.list_devices.max(args.creates);
    if list_n > args.creates && !args.prefilled {
        let fill_started = Instant::now();
        let fill = {
            let (api, registry, from) = (api.clone(), registry.clone(), args.creates);
            timed(ctx, "fill list registry", list_n - args.creates, args.concurrency.max(64), move |i| {
                let (api, registry) = (api.clone(), registry.clone());
                async move {
                    api.create_device(&registry, &device_id(from + i), None).await?;
                    Ok(())
                }
            })
            .await
        };
        r.row(
            "list registry filled",
            format!(
                "{} devices in {:.0} s ({}/s)",
                thousands((list_n - args.creates) as f64),
                fill_started.elapsed().as_secs_f64(),
                thousands(fill.ops as f64 / fill.seconds)
            ),
        );
        r.results["fill"] = fill.json();
    }
    // Every device the registry holds: d0000000 up to list_n.
    if list_n > 0 && args.gets > 0 {
        let get = {
            let (api, registry, n) = (api.clone(), registry.clone(), list_n);
            timed(ctx, "devices.get", args.gets, args.concurrency, move |i| {
                let (api, registry) = (api.clone(), registry.clone());
                // A spread of ids over the whole registry without a random generator: a
                // multiplicative hash of i.
                let id = device_id(((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16) as usize % n);
                async move { api.get_device(&registry, &id).await }
            })
            .await
        };
        phase_rows(&mut r, "devices.get", &get);
        r.row("devices.get spread over", format!("{} devices", thousands(list_n as f64)));
        r.results["get"] = get.json();
    }
    if list_n > 0 {
        let list = list_pages(ctx, &api, &registry, &args).await?;
        r.row(
            "list pages walked",
            format!("{} pages of {} ({} devices)", list.pages, args.page_size, thousands(list.devices as f64)),
        );
        r.row("list page (walk)", latency_row(&list.walk));
        r.row("first page", latency_row(&list.first));
        r.row("last page", latency_row(&list.last));
        r.row(
            "last / first page (p50)",
            format!(
                "{:.2}x ({} vs {})",
                list.last.p50_us / list.first.p50_us.max(1e-9),
                micros(list.last.p50_us),
                micros(list.first.p50_us)
            ),
        );
        r.results["list"] = json!({
            "registry_devices": list.devices,
            "pages": list.pages,
            "page_size": args.page_size,
            "walk": list.walk,
            "first_page": list.first,
            "last_page": list.last,
            "last_over_first_p50": list.last.p50_us / list.first.p50_us.max(1e-9),
        });
    }
    Ok(r)
}

struct ListResult {
    devices: u64,
    pages: u64,
    walk: LatencySummary,
    first: LatencySummary,
    last: LatencySummary,
}

async fn list_pages(ctx: &Ctx, api: &Api, registry: &str, args: &ApiArgs) -> Result<ListResult> {
    let mut walk = Histogram::new();
    let mut token = String::new();
    let mut last_token = String::new();
    let (mut pages, mut devices) = (0u64, 0u64);
    let counter = Arc::new(AtomicU64::new(0));
    {
        let _p = Progress::start("list walk (devices)", counter.clone(), None, ctx.progress);
        // Bounded: a registry of 10 million devices at the smallest page size at most.
        for _ in 0..10_000_000 {
            let t0 = Instant::now();
            let (n, next) = api.list_devices(registry, args.page_size, &token).await?;
            walk.record(t0.elapsed());
            pages += 1;
            devices += n as u64;
            counter.store(devices, Ordering::Relaxed);
            if next.is_empty() {
                last_token = token;
                break;
            }
            token = next;
        }
    }
    let (mut first, mut last) = (Histogram::new(), Histogram::new());
    for _ in 0..args.list_samples.max(1) {
        let t0 = Instant::now();
        api.list_devices(registry, args.page_size, "").await?;
        first.record(t0.elapsed());
        let t0 = Instant::now();
        api.list_devices(registry, args.page_size, &last_token).await?;
        last.record(t0.elapsed());
    }
    Ok(ListResult { devices, pages, walk: walk.summary(), first: first.summary(), last: last.summary() })
}
