//! The devices a scenario drives. Against Ferrocore they are provisioned through the REST API
//! (a registry of their own whose telemetry goes to a topic of the same name, one device per
//! connection, keys generated here) and each gets its own JWT, signed before the measured part
//! starts. Against a plain MQTT broker they are only client ids and topics.

use crate::Ctx;
use crate::api::Created;
use crate::util::{Errors, Progress, for_each_concurrent};
use anyhow::{Context, Result, bail};
use ferrocore_device::{Alg, DeviceKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How one device connects and where it publishes telemetry.
#[derive(Clone)]
pub struct Device {
    pub id: String,
    pub client_id: String,
    pub password: Option<String>,
    pub events_topic: String,
}

pub struct Fleet {
    /// The registry (Ferrocore) or a prefix naming this run (broker).
    pub registry: String,
    /// The topic id telemetry lands in (Ferrocore), or the filter matching every device's
    /// topic (broker).
    pub topic: String,
    pub devices: Vec<Device>,
    /// Seconds spent creating devices and signing tokens, outside any measured window.
    pub provision_seconds: f64,
    pub created: u64,
}

/// Device ids sort in creation order, which keeps list pages in a known order.
pub fn device_id(i: usize) -> String {
    format!("d{i:07}")
}

impl Fleet {
    /// `n` devices for a scenario named `label`.
    pub async fn prepare(ctx: &Ctx, n: usize, label: &str) -> Result<Fleet> {
        let Some(api) = ctx.api.clone() else {
            let prefix = format!("bench/{:x}", ctx.run_id);
            let devices = (0..n)
                .map(|i| Device {
                    id: i.to_string(),
                    client_id: format!("fb-{:x}-{i}", ctx.run_id),
                    password: None,
                    // Shaped like IoT Core's telemetry topics; the subscriber uses a `+` filter.
                    events_topic: format!("{prefix}/devices/{i}/events"),
                })
                .collect();
            return Ok(Fleet {
                registry: prefix.clone(),
                topic: format!("{prefix}/devices/+/events"),
                devices,
                provision_seconds: 0.0,
                created: 0,
            });
        };
        let started = Instant::now();
        let registry = ctx.registry.clone().unwrap_or_else(|| format!("bench-{label}-{:x}", ctx.run_id));
        api.create_registry(&registry, &registry).await?;

        // Keys: ES256 ones are cheap, so one per device by default; RSA-2048 takes ~0.1 s each.
        let key_count = match (ctx.key_pairs, ctx.alg) {
            (0, Alg::Es256) => n,
            (0, Alg::Rs256) => n.min(32),
            (k, _) => n.min(k),
        }
        .max(1);
        let alg = ctx.alg;
        let keys = Arc::new(
            split_blocking(key_count, move |_| DeviceKey::generate(alg))
                .await?
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?,
        );

        let done = Arc::new(AtomicU64::new(0));
        let new = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Errors::default()));
        {
            let _progress = Progress::start("provision devices", done.clone(), Some(n as u64), ctx.progress);
            let (api, keys, registry, done, new, errors) =
                (api.clone(), keys.clone(), registry.clone(), done.clone(), new.clone(), errors.clone());
            for_each_concurrent(n, ctx.provision_concurrency, move |i| {
                let (api, keys, registry, done, new, errors) =
                    (api.clone(), keys.clone(), registry.clone(), done.clone(), new.clone(), errors.clone());
                async move {
                    let key = &keys[i % keys.len()];
                    let mut attempt = 0;
                    loop {
                        match api
                            .create_device(&registry, &device_id(i), Some((alg.key_format(), key.public_pem())))
                            .await
                        {
                            Ok(c) => {
                                if c == Created::New {
                                    new.fetch_add(1, Ordering::Relaxed);
                                }
                                break;
                            }
                            Err(e) if attempt < 3 => {
                                attempt += 1;
                                tracing_lite(&e);
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(e) => {
                                errors.lock().unwrap_or_else(|p| p.into_inner()).add(e);
                                break;
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
        }
        let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|p| p.into_inner()));
        if errors.count > 0 {
            bail!("{} device creates failed, e.g. {}", errors.count, errors.samples.join("; "));
        }

        // Tokens valid for a day; `sub` makes each one distinct.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
        let audience = api.project.clone();
        let tokens_keys = keys.clone();
        let tokens = split_blocking(n, move |i| {
            let key = &tokens_keys[i % tokens_keys.len()];
            let claims =
                serde_json::json!({"iat": now - 60, "exp": now + 23 * 3600, "aud": audience, "sub": device_id(i)});
            key.sign(&key.header(), &claims)
        })
        .await?;
        let mut devices = Vec::with_capacity(n);
        for (i, token) in tokens.into_iter().enumerate() {
            let id = device_id(i);
            devices.push(Device {
                client_id: api.device_path(&registry, &id),
                password: Some(token.context("JWT signing failed")?),
                events_topic: format!("/devices/{id}/events"),
                id,
            });
        }
        Ok(Fleet {
            topic: registry.clone(),
            registry,
            devices,
            provision_seconds: started.elapsed().as_secs_f64(),
            created: new.load(Ordering::Relaxed),
        })
    }
}

fn tracing_lite(e: &anyhow::Error) {
    eprintln!("retrying after: {e:#}");
}

/// Runs `f(i)` for i in 0..n on the blocking pool, split in one chunk per core.
async fn split_blocking<T, F>(n: usize, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> T + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let parts = std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1).max(1);
    let chunk = n.div_ceil(parts).max(1);
    let mut handles = Vec::new();
    for start in (0..n).step_by(chunk) {
        let f = f.clone();
        let end = (start + chunk).min(n);
        handles.push(tokio::task::spawn_blocking(move || (start..end).map(|i| f(i)).collect::<Vec<T>>()));
    }
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.extend(h.await?);
    }
    Ok(out)
}

impl Fleet {
    /// Connects the first `n` devices (device i over `ctx.endpoint.open(i)`), `concurrency` at a
    /// time, counting each success in `connected` as it comes (so a sampler can follow): the
    /// connections, each with its device's index, and the failures.
    pub async fn connect_all(
        &self,
        ctx: &Ctx,
        n: usize,
        concurrency: usize,
        connected: Arc<AtomicU64>,
    ) -> (Vec<(usize, crate::mqtt::Client)>, Errors) {
        let held = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let errors = Arc::new(Mutex::new(Errors::default()));
        {
            let devices = Arc::new(self.devices.clone());
            let (endpoint, keep_alive) = (ctx.endpoint.clone(), ctx.keep_alive);
            let (held, errors) = (held.clone(), errors.clone());
            for_each_concurrent(n, concurrency, move |i| {
                let (devices, endpoint, held, errors, connected) =
                    (devices.clone(), endpoint.clone(), held.clone(), errors.clone(), connected.clone());
                async move {
                    let d = &devices[i];
                    let r = async {
                        let mut c = endpoint.open(i).await?;
                        c.connect(&d.client_id, d.password.as_deref(), keep_alive).await?;
                        anyhow::Ok(c)
                    }
                    .await;
                    match r {
                        Ok(c) => {
                            held.lock().unwrap_or_else(|p| p.into_inner()).push((i, c));
                            connected.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).add(e),
                    }
                }
            })
            .await;
        }
        let held = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
        let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|p| p.into_inner()));
        (held, errors)
    }
}
