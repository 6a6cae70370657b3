//! `ferrocore-bench`: a load generator for Ferrocore and for any MQTT 3.1.1 broker.
//!
//! Scenarios: `connect`, `telemetry`, `idle`, `storm` (a reconnect storm), `command`, `api` and
//! `pubsub` (the last three Ferrocore only; `pubsub` reads telemetry back through Google's Pub/Sub gRPC API), and for
//! Ferrocore's external sinks `sink-ceiling` (a destination on its own: NATS JetStream,
//! RabbitMQ, Redis Streams, a webhook, Pub/Sub), `sink-forward` (Ferrocore forwarding device
//! telemetry to it) and `sink-admin` (fresh streams, queues, keys, topics).
//! Against Ferrocore (`--broker ferrocore`) devices are provisioned through the REST API with
//! keys made here and connect with their own JWTs, and acknowledged telemetry is looked up in the
//! topic log; against a broker (`--broker mqtt`) clients connect anonymously and a subscriber
//! counts what is delivered. Each run prints a table and, with `--json`, writes the numbers;
//! with `--server-pid` the server's CPU time per operation and its memory are read from /proc.
//! Only loopback addresses are accepted as targets.

mod api;
mod command;
mod connect;
mod fleet;
mod grpc;
mod idle;
mod load;
mod mqtt;
mod pubsub;
mod report;
mod sink;
mod stats;
mod storm;
mod telemetry;
mod util;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferrocore_device::Alg;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ferrocore-bench",
    version,
    about = "Load generator for Ferrocore and MQTT 3.1.1 brokers (loopback targets only)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Devices connect (TLS + JWT against Ferrocore) as fast as the server takes them.
    Connect(connect::ConnectArgs),
    /// Connected devices publish telemetry; acknowledged messages are checked at the other end.
    Telemetry(telemetry::TelemetryArgs),
    /// Idle connections held open: the server's memory per connection.
    Idle(idle::IdleArgs),
    /// A reconnect storm: devices connected, the server restarted (by the caller), every device
    /// reconnecting with backoff: time until all are back, latencies, refusals by cause.
    Storm(storm::StormArgs),
    /// REST sendCommandToDevice → device receipt latency, optionally under telemetry load.
    Command(command::CommandArgs),
    /// devices.create and devices.get throughput, list page latency on a large registry.
    Api(load::ApiArgs),
    /// Devices publish over MQTT; a back end StreamingPulls the telemetry topic's subscription
    /// over gRPC and acknowledges: rates, delivery check, publish → receive latency.
    Pubsub(pubsub::PubsubArgs),
    /// A sink's destination on its own: the client crate Ferrocore uses publishes 100-byte
    /// messages as fast as the destination confirms them (no Ferrocore involved).
    SinkCeiling(sink::CeilingArgs),
    /// Ferrocore (started with --sink) forwarding device telemetry to a destination: device
    /// rate, rate at the destination, lag, PUBACK latency, CPU; with --outage, the catch-up.
    SinkForward(sink::ForwardArgs),
    /// Make a sink destination fresh, remove it, or count what it holds.
    SinkAdmin(sink::AdminArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Broker {
    /// Ferrocore: REST provisioning, JWTs, the topic log.
    Ferrocore,
    /// Any MQTT 3.1.1 broker: anonymous clients, a subscriber counts deliveries.
    Mqtt,
}

#[derive(Args, Clone)]
struct Common {
    /// What is being measured.
    #[arg(long, value_enum, default_value_t = Broker::Ferrocore, global = true)]
    broker: Broker,
    /// MQTT host: a loopback address.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: IpAddr,
    /// MQTT port; default 8883 with --tls, 1883 without. Several, comma-separated (the nodes of a
    /// cluster): connection i goes to port i mod their number.
    #[arg(long, value_delimiter = ',', global = true)]
    port: Vec<u16>,
    /// Connect to MQTT over TLS.
    #[arg(long, global = true)]
    tls: bool,
    /// CA certificate (PEM) to trust; against Ferrocore, DATA_DIR/tls/ca.pem by default.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Accept any server certificate (loopback only, so no one is in the middle).
    #[arg(long, global = true)]
    insecure: bool,
    /// Name the server certificate must carry.
    #[arg(long, default_value = "localhost", global = true)]
    tls_name: String,
    /// Let TLS sessions resume (off: every connect is a full handshake).
    #[arg(long, global = true)]
    tls_resume: bool,
    /// Key exchanges the TLS client offers.
    #[arg(long, value_enum, default_value_t = mqtt::TlsGroups::Default, global = true)]
    tls_groups: mqtt::TlsGroups,
    /// Ferrocore's REST base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    api: String,
    /// Ferrocore's gRPC listener (Pub/Sub API): http:// for h2c, https:// for TLS (trusting --ca,
    /// or DATA_DIR/tls/ca.pem).
    #[arg(long, default_value = "http://127.0.0.1:8081", global = true)]
    grpc: String,
    /// Admin token; else DATA_DIR/admin-token.
    #[arg(long, env = "FERROCORE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Ferrocore's data directory, for the admin token and the generated CA.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "bench", global = true)]
    project: String,
    #[arg(long, default_value = "us-central1", global = true)]
    location: String,
    /// Registry to use (created if missing); default a new one per run.
    #[arg(long, global = true)]
    registry: Option<String>,
    /// Device key algorithm: es256 or rs256.
    #[arg(long, default_value = "es256", global = true)]
    alg: Alg,
    /// Distinct key pairs shared round-robin by the devices; 0: one per device for ES256, 32
    /// for RS256 (RSA key generation is slow).
    #[arg(long, default_value_t = 0, global = true)]
    key_pairs: usize,
    /// The server's process id: its CPU time and memory are read from /proc. Several,
    /// comma-separated (the nodes of a cluster): summed.
    #[arg(long, value_delimiter = ',', global = true)]
    server_pid: Vec<u32>,
    /// Other processes the server relies on (e.g. nats-server under a cluster), comma-separated:
    /// their CPU time over the same window is reported apart from the server's.
    #[arg(long, value_delimiter = ',', global = true)]
    other_pid: Vec<u32>,
    /// Write the results here as JSON.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 2.0, global = true)]
    progress: f64,
    /// Spread connections over this many source addresses 127.0.0.2, 127.0.0.3, ... (0: 127.0.0.1).
    #[arg(long, default_value_t = 8, global = true)]
    source_ips: usize,
    /// REST requests in flight while provisioning devices.
    #[arg(long, default_value_t = 32, global = true)]
    provision_concurrency: usize,
    /// Keep-alive announced in CONNECT, seconds.
    #[arg(long, default_value_t = 600, global = true)]
    keep_alive: u16,
    /// Free text stored in the JSON (e.g. "ferrocore tls").
    #[arg(long, global = true)]
    label: Option<String>,
}

/// What every scenario needs: where to connect, how devices authenticate, what to sample.
pub struct Ctx {
    pub broker: Broker,
    pub endpoint: mqtt::Endpoint,
    pub api: Option<api::Api>,
    /// The first of `server_pids` (memory curves, samplers of one process).
    pub server_pid: Option<u32>,
    pub server_pids: Vec<u32>,
    pub other_pids: Vec<u32>,
    pub progress: Duration,
    pub run_id: u64,
    pub alg: Alg,
    pub key_pairs: usize,
    pub registry: Option<String>,
    pub provision_concurrency: usize,
    pub keep_alive: u16,
    /// Ferrocore's gRPC URL, the CA to trust there, and the name its certificate carries.
    pub grpc: String,
    pub grpc_ca: Option<PathBuf>,
    pub tls_name: String,
    /// Ferrocore's REST base URL (`--api`).
    pub api_base: String,
}

impl Ctx {
    fn target(&self) -> String {
        format!(
            "{} at {} ({})",
            match self.broker {
                Broker::Ferrocore => "Ferrocore",
                Broker::Mqtt => "MQTT broker",
            },
            self.endpoint.addrs().iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            if self.endpoint.is_tls() { "TLS" } else { "plain TCP" }
        )
    }

    /// A CPU window over the server's processes (summed) and, apart, the other ones.
    pub fn cpu_window(&self) -> stats::Window {
        stats::Window::start_all(&self.server_pids, &self.other_pids)
    }

    /// Fails for scenarios that need Ferrocore's API.
    pub fn api(&self, scenario: &str) -> Result<&api::Api> {
        match &self.api {
            Some(a) => Ok(a),
            None => bail!("the {scenario} scenario needs --broker ferrocore"),
        }
    }
}

fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // Mixed with the pid so two runs started in the same instant differ.
    ((nanos as u64) ^ (u64::from(std::process::id()) << 40)) & 0xffff_ffff_ffff
}

async fn build_ctx(c: &Common) -> Result<Ctx> {
    if !c.host.is_loopback() {
        bail!("--host {} is not a loopback address; only 127.0.0.0/8 and ::1 may be targeted", c.host);
    }
    let ports = if c.port.is_empty() { vec![if c.tls { 8883 } else { 1883 }] } else { c.port.clone() };
    let ca = match (&c.ca, &c.data_dir, c.broker) {
        (Some(ca), _, _) => Some(ca.clone()),
        (None, Some(d), Broker::Ferrocore) if c.tls && !c.insecure => Some(d.join("tls").join("ca.pem")),
        _ => None,
    };
    if c.tls && ca.is_none() && !c.insecure {
        bail!("--tls needs --ca FILE (or --data-dir for Ferrocore's generated CA, or --insecure)");
    }
    let endpoint = mqtt::Endpoint::new(
        &ports.iter().map(|&p| SocketAddr::new(c.host, p)).collect::<Vec<_>>(),
        c.tls,
        if c.insecure { None } else { ca.as_deref() },
        &c.tls_name,
        c.tls_resume,
        c.tls_groups,
        c.source_ips,
    )?;
    let api = match c.broker {
        Broker::Mqtt => None,
        Broker::Ferrocore => {
            let token = match (&c.token, &c.data_dir) {
                (Some(t), _) => t.clone(),
                (None, Some(d)) => std::fs::read_to_string(d.join("admin-token"))
                    .with_context(|| format!("cannot read {}/admin-token", d.display()))?
                    .trim()
                    .to_owned(),
                (None, None) => bail!("Ferrocore needs the admin token: --token, FERROCORE_ADMIN_TOKEN or --data-dir"),
            };
            let api = api::Api::new(&c.api, token, &c.project, &c.location)?;
            api.check().await?;
            Some(api)
        }
    };
    Ok(Ctx {
        broker: c.broker,
        endpoint,
        api,
        server_pid: c.server_pid.first().copied(),
        server_pids: c.server_pid.clone(),
        other_pids: c.other_pid.clone(),
        progress: Duration::from_secs_f64(c.progress.max(0.0)),
        run_id: run_id(),
        alg: c.alg,
        key_pairs: c.key_pairs,
        registry: c.registry.clone(),
        provision_concurrency: c.provision_concurrency.max(1),
        keep_alive: c.keep_alive,
        grpc: c.grpc.clone(),
        grpc_ca: c.ca.clone().or_else(|| c.data_dir.as_ref().map(|d| d.join("tls").join("ca.pem"))),
        tls_name: c.tls_name.clone(),
        api_base: c.api.clone(),
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        // The sink destination scenarios involve no Ferrocore and no MQTT.
        let scenario = match cli.scenario {
            Scenario::SinkAdmin(a) => return sink::admin(a).await,
            Scenario::SinkCeiling(a) => {
                let report = sink::ceiling(a, cli.common.progress).await?;
                report.print("the destination alone");
                if let Some(path) = &cli.common.json {
                    report.write_json(path, serde_json::json!({"label": cli.common.label}))?;
                    eprintln!("wrote {}", path.display());
                }
                return Ok(());
            }
            other => other,
        };
        let ctx = build_ctx(&cli.common).await?;
        for (flag, pid) in
            ctx.server_pids.iter().map(|p| ("--server-pid", p)).chain(ctx.other_pids.iter().map(|p| ("--other-pid", p)))
        {
            if stats::sample(*pid).is_none() {
                bail!("{flag} {pid}: no such process readable in /proc");
            }
        }
        let report = match scenario {
            Scenario::Connect(a) => connect::run(&ctx, a).await?,
            Scenario::Telemetry(a) => telemetry::run(&ctx, a).await?,
            Scenario::Idle(a) => idle::run(&ctx, a).await?,
            Scenario::Storm(a) => storm::run(&ctx, a).await?,
            Scenario::Command(a) => command::run(&ctx, a).await?,
            Scenario::Api(a) => load::run(&ctx, a).await?,
            Scenario::Pubsub(a) => pubsub::run(&ctx, a).await?,
            Scenario::SinkForward(a) => sink::forward(&ctx, a).await?,
            Scenario::SinkCeiling(_) | Scenario::SinkAdmin(_) => unreachable!("handled above"),
        };
        report.print(&ctx.target());
        if let Some(path) = &cli.common.json {
            let common = serde_json::json!({
                "broker": ctx.broker,
                "address": ctx.endpoint.addr.to_string(),
                "addresses": ctx.endpoint.addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "tls": ctx.endpoint.is_tls(),
                "alg": ctx.alg.name(),
                "server_pid": ctx.server_pid,
                "server_pids": ctx.server_pids,
                "other_pids": ctx.other_pids,
                "label": cli.common.label,
            });
            report.write_json(path, common)?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    })
}
