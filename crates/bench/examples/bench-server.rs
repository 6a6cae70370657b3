//! `bench-server`: Ferrocore's server (`ferrocore::server::run`, the same code as `ferrocore
//! serve`) with the MQTT bridge's limits set from the command line, for benchmarks that need
//! more than the defaults allow: IoT Core's 100 messages per second per connection, and the
//! 18,000 connection cap. Everything else is as `ferrocore serve` does it. `--grpc ADDR` serves
//! the gRPC listener (DeviceManager and the Pub/Sub API; TLS when a certificate is given), with
//! `--pubsub-anonymous` as in `ferrocore serve`. `--sink 'TOPICS=URL'` (repeatable) configures
//! external sinks exactly as `ferrocore serve --sink` does, and `--topic-retention-mb` the topic
//! log's size cap per topic (so a benchmark's backlog is not cut by the default 1 GiB).
//!
//! ```sh
//! cargo build --release -p ferrocore-bench --example bench-server
//! FERROCORE_ADMIN_TOKEN=... target/release/examples/bench-server --data-dir D --http 127.0.0.1:8080 \
//!     --mqtt 127.0.0.1:1883 --mqtts 127.0.0.1:8883 --max-messages-per-second 1000000
//! ```

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    #[arg(long)]
    mqtt: Option<SocketAddr>,
    #[arg(long)]
    mqtts: Option<SocketAddr>,
    /// The gRPC listener (DeviceManager, Pub/Sub); none unless given.
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// Let Pub/Sub calls without credentials in (clients set up for an emulator send none).
    #[arg(long)]
    pubsub_anonymous: bool,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Messages a connection may send per second (Ferrocore's default: 100, as IoT Core).
    #[arg(long, default_value_t = 100)]
    max_messages_per_second: u32,
    /// Connections served at once per listener (Ferrocore's default: 18,000).
    #[arg(long, default_value_t = 18_000)]
    max_connections: usize,
    /// Seconds of quiet before a plain session is parked (`ferrocore serve`'s default: 3); 0: never.
    #[arg(long, default_value_t = 3.0)]
    park_after_seconds: f64,
    /// Leave transparent huge pages on (`ferrocore serve --transparent-huge-pages`).
    #[arg(long)]
    transparent_huge_pages: bool,
    /// An external sink, `TOPICS=URL`, as `ferrocore serve --sink` takes it (repeatable).
    #[arg(long = "sink", value_name = "TOPICS=URL")]
    sinks: Vec<String>,
    /// The topic log's size cap per topic, MiB (Ferrocore's default: 1024).
    #[arg(long, default_value_t = 1024)]
    topic_retention_mb: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ferrocore::limits::restart_without_transparent_huge_pages(args.transparent_huge_pages);
    let sinks = ferrocore_sinks::spec::parse_all(args.sinks.iter().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("--sink: {e}"))?;
    let config = ferrocore::server::Config {
        data_dir: args.data_dir,
        admin_token: std::env::var("FERROCORE_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
        activity_flush_interval: Duration::from_secs(1),
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(ferrocore::server::TlsFiles { cert, key }),
            _ => None,
        },
        topic_log: ferrocore::server::TopicLogSettings {
            max_bytes_per_topic: args.topic_retention_mb.max(1) << 20,
            ..Default::default()
        },
        sinks,
        mqtt: ferrocore_mqtt::MqttConfig {
            max_messages_per_second: args.max_messages_per_second,
            max_connections: args.max_connections,
            park_after: (args.park_after_seconds > 0.0).then(|| Duration::from_secs_f64(args.park_after_seconds)),
            ..Default::default()
        },
        core: Default::default(),
        pubsub_anonymous: args.pubsub_anonymous,
        transparent_huge_pages: args.transparent_huge_pages,
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let bind = |a: SocketAddr| async move { tokio::net::TcpListener::bind(a).await };
        let listeners = ferrocore::server::Listeners {
            http: bind(args.http).await?,
            grpc: match args.grpc {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
            mqtts: match args.mqtts {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
            mqtt: match args.mqtt {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
        };
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        ferrocore::server::run(config, listeners, shutdown, |bound| println!("ferrocore listening {bound}")).await
    })
}
