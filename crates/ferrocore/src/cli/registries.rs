//! `ferrocore registries create|describe|list|update|delete`, with gcloud's flags: telemetry
//! topics with subfolders, a state topic, MQTT/HTTP switches, log level and CA certificates.

use super::api::{Connection, Location, last_id};
use super::output::{Column, Output, status, text};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RegistriesArgs {
    #[command(subcommand)]
    command: RegistriesCommand,
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    location: Location,
    #[command(flatten)]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum RegistriesCommand {
    /// Create a registry.
    Create {
        /// Registry id (or full name projects/P/locations/L/registries/R).
        registry: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Show a registry.
    Describe {
        /// Registry id or full name.
        registry: String,
    },
    /// List the registries of a project and region.
    List {
        /// Show at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Change the settings given; the others stay as they are.
    Update {
        /// Registry id or full name.
        registry: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Delete a registry; the server refuses while it still holds devices.
    Delete {
        /// Registry id or full name.
        registry: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogLevel {
    None,
    Error,
    Info,
    Debug,
}

impl LogLevel {
    pub fn api(self) -> &'static str {
        match self {
            LogLevel::None => "NONE",
            LogLevel::Error => "ERROR",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
        }
    }
}

#[derive(Args, Debug)]
struct Settings {
    /// A telemetry topic: `topic=TOPIC[,subfolder=SUBFOLDER]`. Repeat it for several; events
    /// published to a subfolder go to the first matching one, the others to the one without a
    /// subfolder. A topic without `projects/` is in the registry's project. On update, the list
    /// given replaces the registry's.
    #[arg(long = "event-notification-config", value_name = "topic=TOPIC[,subfolder=PATH]")]
    event_notification_configs: Vec<String>,
    /// The topic that receives device states.
    #[arg(long, value_name = "TOPIC")]
    state_pubsub_topic: Option<String>,
    /// Let devices connect over MQTT (the default on create).
    #[arg(long, overrides_with = "no_enable_mqtt_config")]
    enable_mqtt_config: bool,
    /// Refuse MQTT connections.
    #[arg(long, overrides_with = "enable_mqtt_config")]
    no_enable_mqtt_config: bool,
    /// Let devices use the HTTP bridge (the default on create).
    #[arg(long, overrides_with = "no_enable_http_config")]
    enable_http_config: bool,
    /// Refuse HTTP bridge requests.
    #[arg(long, overrides_with = "enable_http_config")]
    no_enable_http_config: bool,
    /// Device activity log level.
    #[arg(long, value_enum)]
    log_level: Option<LogLevel>,
    /// A CA certificate (PEM file) that device certificates must be signed by. Repeat for up to
    /// 10; on update, the certificates given replace the registry's.
    #[arg(long = "public-key-path", value_name = "FILE")]
    public_key_paths: Vec<PathBuf>,
}

/// `--flag`, `--no-flag`, or neither.
pub fn switch(yes: bool, no: bool) -> Option<bool> {
    match (yes, no) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

impl Settings {
    /// The registry fields these flags set, and their update-mask paths.
    fn body(&self, registry: &str) -> Result<(Map<String, Value>, Vec<&'static str>)> {
        let project = registry.split('/').nth(1).unwrap_or_default();
        let topic =
            |t: &str| if t.starts_with("projects/") { t.to_owned() } else { format!("projects/{project}/topics/{t}") };
        let mut body = Map::new();
        let mut mask = Vec::new();
        if !self.event_notification_configs.is_empty() {
            let mut configs = Vec::new();
            for spec in &self.event_notification_configs {
                let mut config = Map::new();
                for part in spec.split(',') {
                    match part.split_once('=') {
                        Some(("topic", t)) => config.insert("pubsubTopicName".into(), topic(t).into()),
                        Some(("subfolder", s)) => config.insert("subfolderMatches".into(), s.into()),
                        None if !part.is_empty() && !config.contains_key("pubsubTopicName") => {
                            config.insert("pubsubTopicName".into(), topic(part).into())
                        }
                        _ => bail!("--event-notification-config '{spec}' is not topic=TOPIC[,subfolder=SUBFOLDER]"),
                    };
                }
                if !config.contains_key("pubsubTopicName") {
                    bail!("--event-notification-config '{spec}' names no topic");
                }
                configs.push(Value::Object(config));
            }
            body.insert("eventNotificationConfigs".into(), configs.into());
            mask.push("event_notification_configs");
        }
        if let Some(t) = &self.state_pubsub_topic {
            body.insert("stateNotificationConfig".into(), json!({"pubsubTopicName": topic(t)}));
            mask.push("state_notification_config");
        }
        if let Some(on) = switch(self.enable_mqtt_config, self.no_enable_mqtt_config) {
            let state = if on { "MQTT_ENABLED" } else { "MQTT_DISABLED" };
            body.insert("mqttConfig".into(), json!({"mqttEnabledState": state}));
            mask.push("mqtt_config");
        }
        if let Some(on) = switch(self.enable_http_config, self.no_enable_http_config) {
            let state = if on { "HTTP_ENABLED" } else { "HTTP_DISABLED" };
            body.insert("httpConfig".into(), json!({"httpEnabledState": state}));
            mask.push("http_config");
        }
        if let Some(l) = self.log_level {
            body.insert("logLevel".into(), l.api().into());
            mask.push("log_level");
        }
        if !self.public_key_paths.is_empty() {
            let mut creds = Vec::new();
            for path in &self.public_key_paths {
                let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                creds.push(json!({"publicKeyCertificate": {"format": "X509_CERTIFICATE_PEM", "certificate": pem}}));
            }
            body.insert("credentials".into(), creds.into());
            mask.push("credentials");
        }
        Ok((body, mask))
    }
}

pub async fn run(args: RegistriesArgs) -> Result<()> {
    let api = args.connection.api()?;
    let out = &args.output;
    match args.command {
        RegistriesCommand::Create { registry, settings } => {
            let name = args.location.registry(&registry)?;
            let (mut body, _) = settings.body(&name)?;
            body.insert("id".into(), last_id(&name).into());
            let parent = name.rsplit_once("/registries/").map(|(p, _)| p).unwrap_or_default();
            let created = api.post(parent, "/registries", &Value::Object(body)).await?;
            status(format!("Created registry [{}].", last_id(&name)));
            if out.json() {
                out.resource(&created);
            }
        }
        RegistriesCommand::Describe { registry } => {
            out.resource(&api.get(&args.location.registry(&registry)?, "", &[]).await?);
        }
        RegistriesCommand::List { limit } => {
            let parent = args.location.parent()?;
            let items = api.list_all(&parent, "/registries", "deviceRegistries", &[], limit).await?;
            out.list(&items, COLUMNS);
        }
        RegistriesCommand::Update { registry, settings } => {
            let name = args.location.registry(&registry)?;
            let (body, mask) = settings.body(&name)?;
            if mask.is_empty() {
                bail!("nothing to update: give at least one setting (see `ferrocore registries update --help`)");
            }
            let updated = api.patch(&name, &[("updateMask", mask.join(","))], &Value::Object(body)).await?;
            status(format!("Updated registry [{}].", last_id(&name)));
            if out.json() {
                out.resource(&updated);
            }
        }
        RegistriesCommand::Delete { registry } => {
            let name = args.location.registry(&registry)?;
            let answer = api.delete(&name).await?;
            status(format!("Deleted registry [{}].", last_id(&name)));
            if out.json() {
                out.resource(&answer);
            }
        }
    }
    Ok(())
}

const COLUMNS: &[Column] = &[
    ("ID", |r| text(&r["id"])),
    ("LOCATION", |r| text(&r["name"]).split('/').nth(3).unwrap_or_default().to_owned()),
    ("MQTT", |r| enabled(&r["mqttConfig"]["mqttEnabledState"])),
    ("HTTP", |r| enabled(&r["httpConfig"]["httpEnabledState"])),
    ("TELEMETRY_TOPICS", |r| {
        let configs = r["eventNotificationConfigs"].as_array().cloned().unwrap_or_default();
        let topics: Vec<String> = configs
            .iter()
            .map(|c| {
                let t = text(&c["pubsubTopicName"]);
                match c["subfolderMatches"].as_str() {
                    Some(s) if !s.is_empty() => format!("{t} ({s})"),
                    _ => t,
                }
            })
            .collect();
        topics.join(", ")
    }),
];

/// `MQTT_ENABLED` → `enabled`: unspecified means enabled, as on the server.
fn enabled(state: &Value) -> String {
    if state.as_str().is_some_and(|s| s.ends_with("_DISABLED")) { "disabled" } else { "enabled" }.to_owned()
}
