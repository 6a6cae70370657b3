//! The `ferrocore` command line: `ferrocore serve` runs the server, `ferrocore migrate` copies a
//! stopped installation's store into PostgreSQL; the other commands are clients of a running
//! server (see `ferrocore::cli`).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferrocore::server::{self, Config, Listeners};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ferrocore", version, about = "A self-hosted, drop-in replacement for Google Cloud IoT Core")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start and dropped: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the server: REST and gRPC admin APIs, the MQTT and HTTP device bridges.
    Serve(ServeArgs),
    /// Copy a stopped installation's store from its SQLite database into an empty PostgreSQL
    /// database, to serve it with `--store postgres://...` (see docs/configuration.md).
    Migrate(MigrateArgs),
    #[command(flatten)]
    Client(ferrocore::cli::Command),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell (see docs/cli.md).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (ferrocore.1, ferrocore-serve.1, ...) into DIR; scripts/package-deb.sh
    /// runs it to put them in the Debian package.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Parser)]
struct ServeArgs {
    /// Directory holding everything the server keeps (database, admin token).
    #[arg(long, env = "FERROCORE_DATA_DIR", default_value = "./ferrocore-data")]
    data_dir: PathBuf,
    /// Where registries, devices, configs, states, Pub/Sub state and identities are kept:
    /// `sqlite` (the embedded default, in the data directory) or a PostgreSQL database,
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE` (several nodes may share one). The
    /// data directory still holds the topic log, the admin token and the TLS material.
    #[arg(long, env = "FERROCORE_STORE", default_value = "sqlite", value_parser = ferrocore::server::StoreLocation::parse, hide_env_values = true)]
    store: ferrocore::server::StoreLocation,
    /// How the server's log lines (stderr) are written: `text` for people, `json` for one JSON
    /// object per line with the fields of its spans (see docs/operations.md).
    #[arg(long, env = "FERROCORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Address of the REST admin API (and /healthz).
    #[arg(long, env = "FERROCORE_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Address of the gRPC DeviceManager API (h2c). Pass `off` to serve no gRPC.
    #[arg(long, env = "FERROCORE_GRPC", default_value = "127.0.0.1:8081")]
    grpc: Listen,
    /// Address of a plain-TCP MQTT bridge; off unless given.
    #[arg(long, env = "FERROCORE_MQTT")]
    mqtt: Option<SocketAddr>,
    /// Address of a listener serving only the Prometheus metrics (`GET /metrics`), without a
    /// token; off unless given. The --http listener serves /metrics too: without a token to
    /// loopback clients, with the admin token to others (see docs/metrics.md).
    #[arg(long, env = "FERROCORE_METRICS")]
    metrics: Option<SocketAddr>,
    /// Address of the MQTT-over-TLS bridge. Pass `off` to serve none.
    #[arg(long, env = "FERROCORE_MQTTS", default_value = "127.0.0.1:8883")]
    mqtts: Listen,
    /// Days telemetry stays in the embedded topic log.
    #[arg(long, default_value_t = 7.0)]
    topic_retention_days: f64,
    /// Megabytes each topic may keep in the embedded topic log; the oldest records go first.
    #[arg(long, default_value_t = 1024)]
    topic_retention_mb: u64,
    /// File holding the admin token (mode 0600). Without it and without FERROCORE_ADMIN_TOKEN, the
    /// token in DATA_DIR/admin-token is used, generated on first start.
    #[arg(long, env = "FERROCORE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM). With --tls-key, gRPC is served over TLS (ALPN h2).
    #[arg(long, env = "FERROCORE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, mode 0600).
    #[arg(long, env = "FERROCORE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A host name or IP address the generated certificate is for, besides localhost, 127.0.0.1
    /// and ::1 (repeat the flag, or separate names with commas). Only when the certificate is
    /// first generated: it cannot be re-issued (see docs/configuration.md).
    #[arg(long = "tls-name", env = "FERROCORE_TLS_NAMES", value_delimiter = ',', conflicts_with = "tls_cert")]
    tls_names: Vec<String>,
    /// Seconds between flushes of batched device activity (last heartbeat, event, state times).
    #[arg(long, default_value_t = 1.0)]
    activity_flush_seconds: f64,
    /// Hours device activity log entries are kept (see docs/activity-logs.md).
    #[arg(long, default_value_t = 168.0)]
    log_retention_hours: f64,
    /// Device activity log entries kept at most, over all registries; the oldest go first.
    #[arg(long, default_value_t = 10_000_000)]
    log_max_entries: u64,
    /// Also publish every device activity log entry to this topic (`projects/P/topics/T`), and so
    /// to its subscribers and sinks.
    #[arg(long)]
    log_topic: Option<String>,
    /// MQTT connections served at once (one process may open at most as many files as its limit).
    #[arg(long, default_value_t = 18_000)]
    mqtt_max_connections: usize,
    /// Messages one MQTT connection may send per second (IoT Core: 100).
    #[arg(long, default_value_t = 100)]
    mqtt_messages_per_second: u32,
    /// MQTT connections from one source address (IPv6: one /64) at once; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    mqtt_max_connections_per_ip: usize,
    /// MQTT connections from one source address (IPv6: one /64) still in their TLS handshake or
    /// CONNECT; 0 for no limit.
    #[arg(long, default_value_t = 64)]
    mqtt_max_unauthenticated_per_ip: usize,
    /// Seconds an MQTT device may leave what the server sends it unread before it is disconnected.
    #[arg(long, default_value_t = 30.0)]
    mqtt_write_timeout_seconds: f64,
    /// Seconds a plain MQTT connection may be quiet before its session is parked (it leaves its
    /// task and waits on the socket, its mailbox and its deadlines: a fraction of the memory).
    /// 0: never park.
    #[arg(long, default_value_t = 3.0)]
    mqtt_park_after_seconds: f64,
    /// Leave the kernel's transparent huge pages on for the process. Off by default: they make
    /// the memory of idle connections resident 2 MiB at a time.
    #[arg(long, env = "FERROCORE_TRANSPARENT_HUGE_PAGES")]
    transparent_huge_pages: bool,
    /// Seconds sendCommandToDevice waits for a QoS 1 acknowledgement before DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = 60)]
    command_timeout_seconds: u64,
    /// Refuse, at connect, a device whose X.509 certificate credential is outside its notBefore /
    /// notAfter (CONNACK 5 over MQTT, 401 over HTTP). Off by default: IoT Core enforced only a
    /// credential's expirationTime, and fleets run on self-signed certificates long expired.
    #[arg(long, env = "FERROCORE_ENFORCE_CERTIFICATE_VALIDITY")]
    enforce_certificate_validity: bool,
    /// HTTP connections served at once; further ones are closed at accept.
    #[arg(long, default_value_t = 1024)]
    http_max_connections: usize,
    /// Seconds a client has to send a request's line and headers.
    #[arg(long, default_value_t = 10.0)]
    http_header_timeout_seconds: f64,
    /// Seconds a client has to send a request's body.
    #[arg(long, default_value_t = 60.0)]
    http_body_timeout_seconds: f64,
    /// Seconds a kept-alive HTTP connection may wait for its next request, or a response for the
    /// client to read it.
    #[arg(long, default_value_t = 60.0)]
    http_idle_timeout_seconds: f64,
    /// gRPC connections served at once; further ones are closed at accept.
    #[arg(long, default_value_t = 512)]
    grpc_max_connections: usize,
    /// Seconds from a gRPC connection's accept to its HTTP/2 preface (TLS handshake included).
    #[arg(long, default_value_t = 10.0)]
    grpc_handshake_timeout_seconds: f64,
    /// Seconds between the HTTP/2 pings that check a gRPC peer is still there.
    #[arg(long, default_value_t = 60.0)]
    grpc_keepalive_seconds: f64,
    /// Seconds a unary gRPC call may take (streams such as StreamingPull are not cut).
    #[arg(long, default_value_t = 120.0)]
    grpc_request_timeout_seconds: f64,
    /// Seconds requests in progress get to finish on SIGTERM or Ctrl-C before they are aborted.
    #[arg(long, default_value_t = 10.0)]
    shutdown_timeout_seconds: f64,
    /// Let Pub/Sub API calls that carry no credentials in, as Google's clients send none when
    /// pointed at an emulator with PUBSUB_EMULATOR_HOST. Only the Pub/Sub services (gRPC and their
    /// REST paths); DeviceManager and the rest of the admin API still need the token.
    #[arg(long)]
    pubsub_anonymous: bool,
    /// Forward topics to an external system: 'TOPICS=URL', repeatable. TOPICS is a topic name or a
    /// pattern with * for a whole project or topic id; URL is pubsub://, nats://, amqp://,
    /// redis:// or http(s):// and may contain {project} and {topic} (see docs/sinks.md). Without
    /// the flag, FERROCORE_SINKS holds the entries, separated by whitespace.
    #[arg(long = "sink", value_name = "TOPICS=URL")]
    sinks: Vec<String>,
    /// Run as a node of a cluster whose nodes meet on this NATS server (`nats://HOST:PORT`):
    /// configs, commands, session takeovers and cache changes reach the node holding a device.
    /// Nodes share one `--store postgres://...` (see docs/cluster.md).
    #[arg(long, env = "FERROCORE_CLUSTER", value_name = "NATS_URL")]
    cluster: Option<String>,
    /// This node's name in the cluster: letters, digits, '-' or '_', up to 63. Defaults to the
    /// host name.
    #[arg(long, env = "FERROCORE_NODE_ID")]
    node_id: Option<String>,
    /// Prefix of every NATS subject the cluster uses, so clusters can share one NATS server.
    #[arg(long, env = "FERROCORE_CLUSTER_PREFIX", default_value = "ferrocore")]
    cluster_prefix: String,
    /// Copies JetStream keeps of each topic's stream in a cluster: 1 on a single NATS server,
    /// 3 (or 5) on a NATS cluster, so the topic log survives losing a NATS server.
    #[arg(long, env = "FERROCORE_CLUSTER_LOG_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    cluster_log_replicas: u8,
}

#[derive(Parser)]
struct MigrateArgs {
    /// The installation to copy, its server stopped: `sqlite:DATA_DIR`, its data directory (the
    /// database is DATA_DIR/ferrocore.db). The file is only read.
    #[arg(long, value_name = "sqlite:DATA_DIR")]
    from: String,
    /// The PostgreSQL database to fill, `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`: it must
    /// exist and hold no Ferrocore data; the schema is applied first.
    #[arg(long, value_name = "postgres://USER@HOST:PORT/DATABASE")]
    to: String,
}

/// The server log's format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines, each with its spans' fields.
    Text,
    /// One JSON object per line: timestamp, level, target, fields, and the spans it happened in.
    Json,
}

/// Logs to stderr, filtered by FERROCORE_LOG (default: `info` for the server; nothing for the
/// client commands, whose errors are their own one line, not their libraries' logs).
fn init_logs(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERROCORE_LOG").unwrap_or_else(|_| default.into());
    // Colour only for a person at a terminal: not in the journal, a file or a pipe, nor with NO_COLOR.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => logs.init(),
        // The innermost span's fields, under "span": a connection's or a request's (they do not nest).
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        ferrocore::limits::restart_without_transparent_huge_pages(args.transparent_huge_pages);
    }
    match &cli.command {
        // PostgreSQL's notices (a migration table that already exists...) are not news.
        Command::Serve(args) => init_logs(args.log_format, "info,sqlx::postgres::notice=warn"),
        _ => init_logs(LogFormat::Text, "off"),
    }
    match cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "ferrocore", &mut script);
            ferrocore::cli::output::emit(script);
            ExitCode::SUCCESS
        }
        Command::Manpages { dir } => {
            match std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Migrate(args) => match migrate(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Client(command) => ferrocore::cli::run(command),
    }
}

/// `ferrocore migrate`: one line per table copied on stderr, then a summary. The URL is shown
/// with its password redacted, and checked here rather than by clap, whose errors would echo it.
fn migrate(args: MigrateArgs) -> Result<()> {
    let Some(from) = args.from.strip_prefix("sqlite:").filter(|p| !p.is_empty()) else {
        anyhow::bail!("--from must be sqlite:DATA_DIR, the data directory of the installation to copy");
    };
    let url = match server::StoreLocation::parse(&args.to) {
        Ok(server::StoreLocation::Postgres(url)) => url,
        _ => anyhow::bail!("--to must be a postgres://USER[:PASSWORD]@HOST:PORT/DATABASE URL"),
    };
    let from = PathBuf::from(from);
    // The data directory, or the database file itself.
    let database = if from.is_file() { from } else { from.join(ferrocore::datadir::DATABASE_FILE) };
    let shown = server::redact_password(&url);
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime
        .block_on(ferrocore_store::migrate_to_postgres::copy_sqlite_to_postgres(&database, &url, |table, rows| {
            eprintln!("{table}: {}", count_rows(rows));
        }))
        .map_err(|e| {
            let why = match e {
                ferrocore_store::StoreError::Backend(why) => why,
                other => other.to_string(),
            };
            anyhow::anyhow!("cannot migrate {} to {shown}: {why}", database.display())
        })?;
    eprintln!(
        "migrated {} in {} tables from {} to {shown} in {:.1} s; start the server with --store set to this \
         URL and the same --data-dir",
        count_rows(report.rows()),
        report.tables.len(),
        database.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    // The token may come from the environment; it is read here and never logged.
    let admin_token = match (&args.admin_token_file, std::env::var("FERROCORE_ADMIN_TOKEN")) {
        (Some(path), _) => Some(ferrocore::secrets::read_secret_file(path)?),
        (None, Ok(t)) if !t.is_empty() => Some(t),
        _ => None,
    };
    if !(args.activity_flush_seconds > 0.0 && args.activity_flush_seconds <= 3600.0) {
        anyhow::bail!("--activity-flush-seconds must be between 0 and 3600");
    }
    // Flags win over the environment; entries hold no whitespace, so it separates them there.
    let sink_entries: Vec<String> = if args.sinks.is_empty() {
        std::env::var("FERROCORE_SINKS").unwrap_or_default().split_whitespace().map(str::to_owned).collect()
    } else {
        args.sinks.clone()
    };
    let sinks = ferrocore_sinks::spec::parse_all(sink_entries.iter().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("--sink: {e}"))?;
    let device_logs = ferrocore_core::device_log::DeviceLogSettings {
        retention: Duration::try_from_secs_f64(args.log_retention_hours * 3600.0)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow::anyhow!("--log-retention-hours must be a positive number"))?,
        max_entries: args.log_max_entries,
        topic: args
            .log_topic
            .as_deref()
            .map(|t| ferrocore_model::pubsub::TopicName::parse("--log-topic", t).map(|n| n.as_str().to_owned()))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--log-topic: {}", e.message))?,
        ..Default::default()
    };
    let cluster = match &args.cluster {
        None => None,
        Some(url) => {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                anyhow::bail!("--cluster must be a nats://HOST:PORT URL");
            }
            if args.store == server::StoreLocation::Embedded {
                anyhow::bail!("--cluster needs a store the nodes share: --store postgres://...");
            }
            let node_id = match &args.node_id {
                Some(n) => n.clone(),
                None => std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_owned(),
            };
            ferrocore_cluster::check_name("--node-id", &node_id).map_err(|e| anyhow::anyhow!(e))?;
            ferrocore_cluster::check_name("--cluster-prefix", &args.cluster_prefix).map_err(|e| anyhow::anyhow!(e))?;
            Some(server::ClusterSettings {
                url: url.clone(),
                node_id,
                prefix: args.cluster_prefix.clone(),
                log_replicas: usize::from(args.cluster_log_replicas),
            })
        }
    };
    let config = Config {
        cluster,
        metrics_listen: args.metrics,
        transparent_huge_pages: args.transparent_huge_pages,
        device_logs,
        sinks,
        data_dir: args.data_dir,
        store: args.store,
        admin_token,
        activity_flush_interval: Duration::from_secs_f64(args.activity_flush_seconds),
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(server::TlsFiles { cert, key }),
            _ => None,
        },
        topic_log: server::TopicLogSettings {
            max_age: Duration::try_from_secs_f64(args.topic_retention_days * 86_400.0)
                .map_err(|_| anyhow::anyhow!("--topic-retention-days must be a positive number"))?,
            max_bytes_per_topic: args.topic_retention_mb.saturating_mul(1 << 20),
        },
        mqtt: ferrocore_mqtt::MqttConfig {
            max_connections: args.mqtt_max_connections.max(1),
            max_messages_per_second: args.mqtt_messages_per_second.max(1),
            max_connections_per_ip: args.mqtt_max_connections_per_ip,
            max_unauthenticated_per_ip: args.mqtt_max_unauthenticated_per_ip,
            write_timeout: seconds("--mqtt-write-timeout-seconds", args.mqtt_write_timeout_seconds)?,
            park_after: (args.mqtt_park_after_seconds != 0.0)
                .then(|| seconds("--mqtt-park-after-seconds", args.mqtt_park_after_seconds))
                .transpose()?,
            // Sessions drain within the same deadline as HTTP and gRPC requests.
            shutdown_timeout: seconds("--shutdown-timeout-seconds", args.shutdown_timeout_seconds)?,
            ..Default::default()
        },
        core: ferrocore_core::Settings {
            command_ack_timeout: Duration::from_secs(args.command_timeout_seconds.max(1)),
            enforce_certificate_validity: args.enforce_certificate_validity,
        },
        pubsub_anonymous: args.pubsub_anonymous,
        limits: server::Limits {
            http_max_connections: args.http_max_connections.max(1),
            http_header_timeout: seconds("--http-header-timeout-seconds", args.http_header_timeout_seconds)?,
            http_body_timeout: seconds("--http-body-timeout-seconds", args.http_body_timeout_seconds)?,
            http_idle_timeout: seconds("--http-idle-timeout-seconds", args.http_idle_timeout_seconds)?,
            grpc_max_connections: args.grpc_max_connections.max(1),
            grpc_handshake_timeout: seconds("--grpc-handshake-timeout-seconds", args.grpc_handshake_timeout_seconds)?,
            grpc_keepalive_interval: seconds("--grpc-keepalive-seconds", args.grpc_keepalive_seconds)?,
            grpc_request_timeout: seconds("--grpc-request-timeout-seconds", args.grpc_request_timeout_seconds)?,
            shutdown_timeout: seconds("--shutdown-timeout-seconds", args.shutdown_timeout_seconds)?,
            ..Default::default()
        },
        tls_names: args.tls_names,
        clock: Default::default(),
        sink_settings: Default::default(),
    };
    if config.limits.grpc_request_timeout <= config.core.command_ack_timeout {
        tracing::warn!(
            "--grpc-request-timeout-seconds is not above --command-timeout-seconds: sendCommandToDevice over gRPC may be cut before its acknowledgement"
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let http = tokio::net::TcpListener::bind(args.http)
            .await
            .with_context(|| format!("cannot listen on {} (--http)", args.http))?;
        async fn bind(flag: &str, listen: Option<SocketAddr>) -> Result<Option<tokio::net::TcpListener>> {
            match listen {
                None => Ok(None),
                Some(addr) => tokio::net::TcpListener::bind(addr)
                    .await
                    .map(Some)
                    .with_context(|| format!("cannot listen on {addr} ({flag})")),
            }
        }
        let listeners = Listeners {
            http,
            grpc: bind("--grpc", args.grpc.addr()).await?,
            mqtts: bind("--mqtts", args.mqtts.addr()).await?,
            mqtt: bind("--mqtt", args.mqtt).await?,
        };
        server::run(config, listeners, shutdown_signal(), |bound| {
            // A line scripts can wait for; with port 0 it tells which ports were chosen.
            println!("ferrocore listening {bound}");
        })
        .await
    })
}

/// `1 row`, `2 rows`.
fn count_rows(n: u64) -> String {
    format!("{n} {}", if n == 1 { "row" } else { "rows" })
}

/// A duration flag: a positive number of seconds, at most a day.
fn seconds(flag: &str, value: f64) -> Result<Duration> {
    if !(value > 0.0 && value <= 86_400.0) {
        anyhow::bail!("{flag} must be a number of seconds between 0 and 86400");
    }
    Ok(Duration::from_secs_f64(value))
}

/// A listen address, or `off`.
#[derive(Clone, Copy, Debug)]
enum Listen {
    Off,
    At(SocketAddr),
}

impl Listen {
    fn addr(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::At(a) => Some(a),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Listen::Off);
        }
        s.parse().map(Listen::At).map_err(|_| format!("'{s}' is not an address like 127.0.0.1:8081, nor 'off'"))
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
