//! `ferrocore device simulate`: one device, behaving like Cloud IoT Core firmware.
//!
//! It connects to the MQTT bridge over TLS (trusting the server's CA), authenticates with a JWT
//! signed by the device's private key, subscribes to `/devices/D/config` and
//! `/devices/D/commands/#` and prints everything that arrives there on stdout, publishes telemetry
//! at `--rate` and its state every `--state-every`. Connection news and progress go to stderr.
//!
//! Keeping a device online is most of the work:
//! * a JWT cannot be renewed on an open connection, so the simulator reconnects with a fresh token
//!   before the current one expires (the server closes connections whose token has expired);
//! * a lost connection is retried with exponential back-off and jitter, so a fleet of simulators
//!   does not hammer a restarting server in lockstep;
//! * QoS 1 messages not acknowledged when a connection drops are published again on the next one;
//! * the first connection refused by the server (wrong key, unknown device...) ends the run, since
//!   retrying cannot fix it; once a device has been online, refusals are retried like firmware does
//!   (it may be blocked for a while, or the server may be restoring its database).
//!
//! The run ends on Ctrl-C or SIGTERM, after `--duration`, or once `--count` telemetry messages are
//! sent (and, with QoS 1, acknowledged); the simulator then sends DISCONNECT and closes TLS cleanly.
//!
//! With `--gateway-for D1,D2,...` the device is a gateway, as Google's gateway sample runs one: on
//! every connection it subscribes to `/devices/G/errors`, attaches each device
//! (`/devices/D/attach`, with the device's JWT when `--device-key` is given), subscribes to their
//! config and commands, and publishes telemetry for the attached devices in turn, their states
//! with its own. A device the server refuses or detaches (reported on the errors topic) is left
//! out until the next connection.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use ferrocore_device::mqtt::{self, Client};
use ferrocore_device::{DeviceKey, KeyError};
use ferrocore_mqtt_codec::{ConnectReturnCode, Packet, Publish, QoS, SubAckCode, Subscribe};
use rand::Rng;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until, timeout};
use tokio_rustls::rustls;

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Connect as a device over MQTT: publish telemetry and state, print configs and commands.
    Simulate(SimulateArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrintFormat {
    /// `config: PAYLOAD` and `command [SUBFOLDER]: PAYLOAD` lines.
    Text,
    /// One JSON object per received message.
    Json,
}

const DEFAULT_PAYLOAD: &str = r#"{"device":"{device}","seq":{seq},"time":"{time}"}"#;
const DEFAULT_STATE: &str = r#"{"status":"ok","seq":{seq},"uptimeSeconds":{uptime}}"#;

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The device, projects/P/locations/L/registries/R/devices/D (its MQTT client id).
    #[arg(long)]
    device: String,
    /// The device's private key (PEM: PKCS#8, or OpenSSL's "EC PRIVATE KEY" / "RSA PRIVATE KEY").
    #[arg(long)]
    key: PathBuf,
    /// Address of the MQTT bridge.
    #[arg(long, env = "FERROCORE_MQTT_SERVER", default_value = "localhost:8883")]
    mqtt_server: String,
    /// CA certificates (PEM) the server's certificate must chain to [default: DATA_DIR/tls/ca.pem].
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Data directory of a server on this machine, for its CA.
    #[arg(long, env = "FERROCORE_DATA_DIR", default_value = "./ferrocore-data")]
    data_dir: PathBuf,
    /// Speak plain MQTT, for a server's `--mqtt` listener.
    #[arg(long)]
    no_tls: bool,
    /// Telemetry messages per second (at most 100, the server's limit per connection).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// How often to report the device state (e.g. 30s, 5m; at least 1s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    state_every: Duration,
    /// Stop after this many telemetry messages (acknowledged by the server, with QoS 1).
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (e.g. 90s, 10m).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Telemetry payload; {device}, {seq} and {time} are filled in.
    #[arg(long, default_value = DEFAULT_PAYLOAD)]
    payload: String,
    /// State payload; {device}, {seq}, {time} and {uptime} are filled in.
    #[arg(long, default_value = DEFAULT_STATE)]
    state: String,
    /// Publish telemetry to this subfolder (`/devices/D/events/SUBFOLDER`).
    #[arg(long)]
    subfolder: Option<String>,
    /// QoS of telemetry and state: 1 waits for the server to have stored each message.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Lifetime of each JWT (at most 24h); the simulator reconnects with a new one before it ends.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    jwt_lifetime: Duration,
    /// MQTT keep-alive interval.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    keepalive: Duration,
    /// Longest wait between two connection attempts.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    max_backoff: Duration,
    /// How received configs and commands are printed.
    #[arg(long, value_enum, default_value_t = PrintFormat::Text)]
    format: PrintFormat,
    /// Act as a gateway for these devices (ids in the same registry): attach each, receive their
    /// configs and commands, and publish telemetry for them in turn.
    #[arg(long, value_delimiter = ',', value_name = "DEVICE,...")]
    gateway_for: Vec<String>,
    /// With --gateway-for: sign each attached device's JWT with this private key, for gateways
    /// whose auth method wants the device's token (otherwise the attach carries none).
    #[arg(long, requires = "gateway_for")]
    device_key: Option<PathBuf>,
}

/// `500ms`, `10s`, `1.5m`, `2h`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("'{s}' is not a duration like 500ms, 10s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{s}' is not a valid duration"))
}

pub async fn run(command: DeviceCommand) -> Result<()> {
    let DeviceCommand::Simulate(args) = command;
    // Its output is the configs and commands it receives: once their reader is gone, it stops.
    super::stdout::until_closed(Simulator::new(args)?.run()).await
}

/// The device's private key (the JWT algorithm follows from it).
fn load_key(path: &Path) -> Result<DeviceKey> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read the key {}", path.display()))?;
    DeviceKey::from_pem(&String::from_utf8_lossy(&pem)).map_err(|e| match e {
        KeyError::NoPrivateKey | KeyError::Pem(_) => anyhow!("{} holds no PEM private key", path.display()),
        _ => anyhow!("{} is neither an EC P-256 nor an RSA private key", path.display()),
    })
}

/// Why a connection ended, when it was not asked to.
enum Failure {
    /// The server answered CONNECT with a refusal.
    Refused(ConnectReturnCode),
    /// TCP, TLS or MQTT trouble: worth another try.
    Lost(String),
}

impl From<mqtt::Error> for Failure {
    fn from(e: mqtt::Error) -> Self {
        match e {
            mqtt::Error::Refused(code) => Failure::Refused(code),
            e => Failure::Lost(e.to_string()),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        mqtt::Error::Io(e).into()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused(code) => write!(f, "the server refused the connection: {}", refusal(*code)),
            Failure::Lost(why) => f.write_str(why),
        }
    }
}

fn refusal(code: ConnectReturnCode) -> &'static str {
    match code.as_u8() {
        1 => "unacceptable protocol version (code 1)",
        2 => "the client id is not a device name (code 2)",
        3 => "server unavailable (code 3)",
        4 => "the JWT is missing or malformed (code 4)",
        5 => {
            "not authorized (code 5): unknown device, a key that is not the device's, wrong project, \
              expired token, blocked device or MQTT disabled on the registry"
        }
        _ => "refused",
    }
}

/// How a session ended without a failure.
enum End {
    /// Ctrl-C, SIGTERM or `--duration`.
    Stop,
    /// `--count` reached.
    Done,
    /// The token is about to expire: connect again at once with a new one.
    Refresh,
}

#[derive(Clone)]
enum Kind {
    Event,
    State,
}

/// A message published at QoS 1 and not yet acknowledged.
#[derive(Clone)]
struct Pending {
    kind: Kind,
    topic: String,
    payload: Bytes,
}

/// Exponential back-off with "equal jitter": half the delay is fixed, half is random.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);

    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d / 2 + d.mul_f64(rand::rng().random::<f64>() / 2.0)
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

struct Simulator {
    args: SimulateArgs,
    signer: DeviceKey,
    project: String,
    device_id: String,
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    started: Instant,
    deadline: Option<Instant>,
    /// With --gateway-for: the key that signs the attached devices' JWTs.
    device_signer: Option<DeviceKey>,
    /// The --gateway-for devices attached on this connection (the server acknowledged them).
    attached: Vec<String>,
    /// Attach requests awaiting their PUBACK, by packet id.
    attaching: BTreeMap<u16, String>,
    /// The next attached device to publish telemetry for.
    turn: usize,
    stop: watch::Receiver<bool>,
    backoff: Backoff,
    connected_once: bool,
    seq: u64,
    events_sent: u64,
    events_acked: u64,
    states_sent: u64,
    /// QoS 1 messages in flight, by packet id.
    pending: BTreeMap<u16, Pending>,
    next_id: u16,
}

/// At most this many QoS 1 messages wait for their PUBACK; telemetry pauses beyond it.
const MAX_IN_FLIGHT: usize = 100;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

impl Simulator {
    fn new(args: SimulateArgs) -> Result<Self> {
        let segs: Vec<&str> = args.device.split('/').collect();
        if segs.len() != 8
            || segs[0] != "projects"
            || segs[2] != "locations"
            || segs[4] != "registries"
            || segs[6] != "devices"
        {
            bail!("--device must be a full name: projects/P/locations/L/registries/R/devices/D");
        }
        if !(args.rate > 0.0 && args.rate <= 100.0) {
            bail!("--rate must be above 0 and at most 100 messages per second");
        }
        if args.state_every < Duration::from_secs(1) {
            bail!("--state-every must be at least 1s (the server keeps one state per second)");
        }
        if args.jwt_lifetime < Duration::from_secs(1) || args.jwt_lifetime > Duration::from_secs(86_400) {
            bail!("--jwt-lifetime must be between 1s and 24h");
        }
        if args.keepalive < Duration::from_secs(1) || args.keepalive > Duration::from_secs(65_535) {
            bail!("--keepalive must be between 1s and 65535s");
        }
        if args.max_backoff < Duration::from_secs(1) {
            bail!("--max-backoff must be at least 1s");
        }
        for d in &args.gateway_for {
            if d.is_empty() || d.contains(['/', '+', '#']) || *d == segs[7] {
                bail!("--gateway-for takes the ids of other devices of the registry, separated by commas");
            }
        }
        let signer = load_key(&args.key)?;
        let device_signer = args.device_key.as_deref().map(load_key).transpose()?;
        let tls = if args.no_tls { None } else { Some(tls_config(&args)?) };
        let (project, device_id) = (segs[1].to_owned(), segs[7].to_owned());
        let started = Instant::now();
        Ok(Self {
            signer,
            project,
            device_id,
            tls,
            started,
            deadline: args.duration.map(|d| started + d),
            device_signer,
            attached: Vec::new(),
            attaching: BTreeMap::new(),
            turn: 0,
            stop: stop_signal(),
            backoff: Backoff { next: Backoff::FIRST, max: args.max_backoff },
            connected_once: false,
            seq: 0,
            events_sent: 0,
            events_acked: 0,
            states_sent: 0,
            pending: BTreeMap::new(),
            next_id: 1,
            args,
        })
    }

    async fn run(mut self) -> Result<()> {
        let mut last_failure = None;
        loop {
            if *self.stop.borrow() || self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            match self.session().await {
                Ok(End::Stop | End::Done) => break,
                Ok(End::Refresh) => eprintln!("The token expires soon; reconnecting with a new one."),
                Err(f @ Failure::Refused(_)) if !self.connected_once => bail!("{f}"),
                Err(f) => {
                    let delay = self.backoff.delay();
                    eprintln!("{f}; retrying in {:.1}s", delay.as_secs_f64());
                    last_failure = Some(f.to_string());
                    if self.pause(delay).await {
                        break;
                    }
                }
            }
        }
        let qos1 = if self.args.qos == 1 { format!(" ({} acknowledged)", self.events_acked) } else { String::new() };
        eprintln!("Sent {} events{qos1} and {} states; disconnected.", self.events_sent, self.states_sent);
        if !self.connected_once {
            bail!(
                "could not connect to {}{}",
                self.args.mqtt_server,
                last_failure.map(|f| format!(": {f}")).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Sleeps between attempts; true if the run was stopped meanwhile.
    async fn pause(&mut self, delay: Duration) -> bool {
        let deadline = self.deadline.unwrap_or_else(|| Instant::now() + delay + Duration::from_secs(1));
        tokio::select! {
            _ = self.stop.changed() => true,
            _ = sleep_until(deadline) => self.deadline.is_some(),
            _ = sleep(delay) => false,
        }
    }

    fn topic(&self, leaf: &str) -> String {
        format!("/devices/{}/{leaf}", self.device_id)
    }

    fn gateway(&self) -> bool {
        !self.args.gateway_for.is_empty()
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    fn fill(&self, template: &str, device: &str) -> String {
        let now = time::OffsetDateTime::now_utc();
        let time = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        template
            .replace("{device}", device)
            .replace("{seq}", &self.seq.to_string())
            .replace("{time}", &time)
            .replace("{uptime}", &self.started.elapsed().as_secs().to_string())
    }

    fn count_reached(&self) -> bool {
        self.args.count.is_some_and(|c| self.events_sent >= c)
    }

    /// One connection, from TCP connect to its end.
    async fn session(&mut self) -> Result<End, Failure> {
        let mut conn = timeout(IO_TIMEOUT, self.open())
            .await
            .map_err(|_| Failure::Lost(format!("connecting to {} timed out", self.args.mqtt_server)))??;
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default();
        let token = self.jwt(&self.signer, iat)?;
        let keep_alive = self.args.keepalive.as_secs() as u16;
        timeout(IO_TIMEOUT, conn.connect(&self.args.device, Some(&token), keep_alive))
            .await
            .map_err(|_| Failure::Lost("no CONNACK within 10s".into()))??;
        self.connected_once = true;
        self.backoff.reset();
        eprintln!("Connected to {} as {} ({}).", self.args.mqtt_server, self.args.device, self.signer.alg());

        let subscribe_id = self.packet_id();
        let filters = vec![(self.topic("config"), QoS::AtLeastOnce), (self.topic("commands/#"), QoS::AtLeastOnce)];
        send(&mut conn, &Packet::Subscribe(Subscribe { packet_id: subscribe_id, filters })).await?;
        if self.gateway() {
            self.attach_all(&mut conn, iat).await?;
        }
        // What the last connection left unacknowledged goes out again, under new packet ids;
        // but not states: the first tick reports a fresh one, and the server takes one a second.
        let unacked: Vec<Pending> =
            std::mem::take(&mut self.pending).into_values().filter(|p| matches!(p.kind, Kind::Event)).collect();
        for p in unacked {
            self.publish(&mut conn, p).await?;
        }

        let lifetime = self.args.jwt_lifetime;
        // Reconnect well before the token expires: 5 minutes early, or at 80% of a short lifetime.
        let refresh = if lifetime > Duration::from_secs(600) {
            lifetime - Duration::from_secs(300)
        } else {
            lifetime.mul_f64(0.8)
        };
        let refresh_at = Instant::now() + refresh;
        let mut events = tokio::time::interval(Duration::from_secs_f64(1.0 / self.args.rate));
        events.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut states = tokio::time::interval(self.args.state_every);
        states.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pings = tokio::time::interval_at(Instant::now() + self.args.keepalive / 2, self.args.keepalive / 2);
        let mut ping_sent: Option<Instant> = None;
        let mut last_report = Instant::now();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);

        loop {
            if self.count_reached() && self.pending.is_empty() {
                conn.disconnect().await;
                return Ok(End::Done);
            }
            let can_publish = !self.count_reached() && self.pending.len() < MAX_IN_FLIGHT;
            tokio::select! {
                _ = self.stop.changed() => {
                    conn.disconnect().await;
                    return Ok(End::Stop);
                }
                _ = sleep_until(self.deadline.unwrap_or(far)) => {
                    conn.disconnect().await;
                    return Ok(End::Stop);
                }
                _ = sleep_until(refresh_at) => {
                    conn.disconnect().await;
                    return Ok(End::Refresh);
                }
                _ = events.tick(), if can_publish => {
                    // A gateway publishes for its attached devices in turn (for none, nothing).
                    let device = match self.gateway() {
                        false => self.device_id.clone(),
                        true if self.attached.is_empty() => continue,
                        true => {
                            self.turn = (self.turn + 1) % self.attached.len();
                            self.attached[self.turn].clone()
                        }
                    };
                    self.seq += 1;
                    let topic = match &self.args.subfolder {
                        Some(s) => format!("/devices/{device}/events/{s}"),
                        None => format!("/devices/{device}/events"),
                    };
                    let payload = Bytes::from(self.fill(&self.args.payload, &device));
                    self.events_sent += 1;
                    self.publish(&mut conn, Pending { kind: Kind::Event, topic, payload }).await?;
                }
                _ = states.tick() => {
                    let devices: Vec<String> =
                        std::iter::once(self.device_id.clone()).chain(self.attached.iter().cloned()).collect();
                    for device in devices {
                        let payload = Bytes::from(self.fill(&self.args.state, &device));
                        self.states_sent += 1;
                        let topic = format!("/devices/{device}/state");
                        self.publish(&mut conn, Pending { kind: Kind::State, topic, payload }).await?;
                    }
                }
                _ = pings.tick() => {
                    if ping_sent.is_some_and(|t| t.elapsed() > self.args.keepalive) {
                        return Err(Failure::Lost("the server stopped answering PINGREQ".into()));
                    }
                    if ping_sent.is_none() {
                        ping_sent = Some(Instant::now());
                    }
                    send(&mut conn, &Packet::PingReq).await?;
                }
                read = conn.read_more() => {
                    if !read? {
                        return Err(mqtt::Error::Closed.into());
                    }
                    while let Some(packet) = conn.next_buffered().map_err(mqtt::Error::from)? {
                        match packet {
                            Packet::PingResp => ping_sent = None,
                            Packet::PubAck(id) => {
                                if let Some(device) = self.attaching.remove(&id) {
                                    eprintln!("Attached {device}.");
                                    self.attached.push(device);
                                } else if let Some(Pending { kind: Kind::Event, .. }) = self.pending.remove(&id) {
                                    self.events_acked += 1;
                                }
                            }
                            Packet::SubAck(ack) if ack.packet_id == subscribe_id => {
                                let filters = [self.topic("config"), self.topic("commands/#")];
                                let refused: Vec<&str> = filters
                                    .iter()
                                    .zip(&ack.return_codes)
                                    .filter(|(_, code)| **code == SubAckCode::Failure)
                                    .map(|(f, _)| f.as_str())
                                    .collect();
                                if !refused.is_empty() {
                                    eprintln!("The server refused the subscription to {}.", refused.join(" and "));
                                } else {
                                    eprintln!("Subscribed to {} and {}.", self.topic("config"), self.topic("commands/#"));
                                }
                            }
                            // The gateway's subscriptions for its devices: refusals come with errors.
                            Packet::SubAck(_) if self.gateway() => {}
                            Packet::Publish(p) => self.received(&mut conn, p).await?,
                            other => return Err(Failure::Lost(format!("unexpected {} from the server", other.name()))),
                        }
                    }
                }
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                eprintln!("{} events and {} states sent so far.", self.events_sent, self.states_sent);
            }
        }
    }

    async fn publish(&mut self, conn: &mut Client, message: Pending) -> Result<(), Failure> {
        let qos1 = self.args.qos == 1;
        let packet_id = qos1.then(|| self.packet_id());
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: if qos1 { QoS::AtLeastOnce } else { QoS::AtMostOnce },
            retain: false,
            topic: message.topic.clone(),
            packet_id,
            payload: message.payload.clone(),
        });
        send(conn, &publish).await?;
        match packet_id {
            Some(id) => {
                self.pending.insert(id, message);
            }
            None if matches!(message.kind, Kind::Event) => self.events_acked += 1,
            None => {}
        }
        Ok(())
    }

    /// A config or a command (the device's, or an attached device's): printed, then
    /// acknowledged. A gateway's errors go to stderr.
    async fn received(&mut self, conn: &mut Client, p: Publish) -> Result<(), Failure> {
        let (device, tail) = p.topic.strip_prefix("/devices/").and_then(|t| t.split_once('/')).unwrap_or(("", ""));
        let (kind, subfolder) = match tail {
            "config" => ("config", None),
            "commands" => ("command", None),
            "errors" if device == self.device_id => {
                self.gateway_error(&p.payload);
                return Ok(());
            }
            t => match t.strip_prefix("commands/") {
                Some(sub) => ("command", Some(sub.to_owned())),
                None => ("message", Some(p.topic.clone())),
            },
        };
        // Messages for an attached device name it; the device's own do not.
        let other = (kind != "message" && device != self.device_id).then(|| device.to_owned());
        let text = std::str::from_utf8(&p.payload)
            .ok()
            .filter(|s| !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
        match self.args.format {
            PrintFormat::Json => {
                let mut line =
                    json!({"type": kind, "subfolder": subfolder, "text": text, "data": STANDARD.encode(&p.payload)});
                if let Some(d) = &other {
                    line["device"] = json!(d);
                }
                super::output::emit(format!("{line}\n"));
            }
            PrintFormat::Text => {
                let shown = match text {
                    Some("") => "(empty)".to_owned(),
                    Some(t) => t.to_owned(),
                    None => format!("base64:{}", STANDARD.encode(&p.payload)),
                };
                let of = other.map(|d| format!(" for {d}")).unwrap_or_default();
                match subfolder {
                    Some(s) => super::output::emit(format!("{kind} [{s}]{of}: {shown}\n")),
                    None => super::output::emit(format!("{kind}{of}: {shown}\n")),
                }
            }
        }
        if let Some(id) = p.packet_id {
            send(conn, &Packet::PubAck(id)).await?;
        }
        Ok(())
    }

    /// Subscribes to the gateway's errors topic, attaches every --gateway-for device, and
    /// subscribes to their config and commands (the server takes them in this order).
    async fn attach_all(&mut self, conn: &mut Client, iat: i64) -> Result<(), Failure> {
        self.attached.clear();
        self.attaching.clear();
        let errors_id = self.packet_id();
        let filters = vec![(self.topic("errors"), QoS::AtMostOnce)];
        send(conn, &Packet::Subscribe(Subscribe { packet_id: errors_id, filters })).await?;
        let mut filters = Vec::new();
        for device in self.args.gateway_for.clone() {
            let token = match &self.device_signer {
                Some(signer) => self.jwt(signer, iat)?,
                None => String::new(),
            };
            let packet_id = self.packet_id();
            let attach = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: format!("/devices/{device}/attach"),
                packet_id: Some(packet_id),
                payload: Bytes::from(json!({"authorization": token}).to_string()),
            });
            send(conn, &attach).await?;
            filters.push((format!("/devices/{device}/config"), QoS::AtLeastOnce));
            filters.push((format!("/devices/{device}/commands/#"), QoS::AtLeastOnce));
            self.attaching.insert(packet_id, device);
        }
        let packet_id = self.packet_id();
        send(conn, &Packet::Subscribe(Subscribe { packet_id, filters })).await
    }

    /// A token issued at `iat` for this device's project, lasting `--jwt-lifetime`.
    fn jwt(&self, key: &DeviceKey, iat: i64) -> Result<String, Failure> {
        let exp = iat + self.args.jwt_lifetime.as_secs().max(1) as i64;
        key.jwt(&self.project, iat, exp).map_err(|e| Failure::Lost(e.to_string()))
    }

    /// An error from the gateway's errors topic: shown, and a device it names as not attached
    /// (refused, or detached) is left out, its unacknowledged messages dropped.
    fn gateway_error(&mut self, payload: &[u8]) {
        let error: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
        let kind = error["error_type"].as_str().unwrap_or("unknown error");
        let description = error["description"].as_str().unwrap_or_default();
        let device = error["device_id"].as_str().unwrap_or_default().to_owned();
        let of = if device.is_empty() { String::new() } else { format!(" for {device}") };
        eprintln!("Gateway error {kind}{of}: {description}");
        let gone =
            matches!(kind, "GATEWAY_ATTACHMENT_ERROR" | "GATEWAY_DEVICE_NOT_FOUND" | "GATEWAY_DETACHMENT_DEVICE_ERROR");
        if gone && !device.is_empty() {
            self.attached.retain(|d| *d != device);
            self.attaching.retain(|_, d| *d != device);
            let prefix = format!("/devices/{device}/");
            self.pending.retain(|_, p| !p.topic.starts_with(&prefix));
        }
    }

    async fn open(&self) -> Result<Client, Failure> {
        let addr = &self.args.mqtt_server;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| Failure::Lost(format!("cannot connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Client::new(tcp)),
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Failure::Lost(format!("TLS with {addr} failed: {e}")))?;
                Ok(Client::new(tls))
            }
        }
    }
}

/// Trusts only the given CA (not the system's roots: the server's certificate is its own CA's).
fn tls_config(args: &SimulateArgs) -> Result<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)> {
    use rustls::pki_types::ServerName;
    let path = args.ca.clone().unwrap_or_else(|| args.data_dir.join("tls").join("ca.pem"));
    let pem = std::fs::read(&path).with_context(|| {
        format!("cannot read the CA file {} (give --ca, or --no-tls for a plain MQTT listener)", path.display())
    })?;
    let config = ferrocore_device::tls::client_config(&pem).map_err(|e| anyhow!("{} {e}", path.display()))?;
    let host = match args.mqtt_server.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => bail!("--mqtt-server must be HOST:PORT"),
    };
    let name = ServerName::try_from(host.to_owned()).with_context(|| format!("'{host}' is not a host name"))?;
    Ok((Arc::new(config), name))
}

/// Set once Ctrl-C or SIGTERM arrives.
fn stop_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            // Keep `tx` alive: a dropped sender would read as a stop.
            return std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
        std::future::pending::<()>().await
    });
    rx
}

/// Sends one packet; a server that stops reading for IO_TIMEOUT counts as lost.
async fn send(conn: &mut Client, packet: &Packet) -> Result<(), Failure> {
    match timeout(IO_TIMEOUT, conn.send(packet)).await {
        Ok(sent) => Ok(sent?),
        Err(_) => Err(Failure::Lost("the server stopped reading".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff { next: Backoff::FIRST, max: Duration::from_secs(8) };
        let delays: Vec<Duration> = (0..6).map(|_| b.delay()).collect();
        for (d, nominal) in delays.iter().zip([1, 2, 4, 8, 8, 8]) {
            let nominal = Duration::from_secs(nominal);
            assert!(*d >= nominal / 2 && *d <= nominal, "{d:?} for {nominal:?}");
        }
        b.reset();
        assert!(b.delay() <= Backoff::FIRST);
    }
}
