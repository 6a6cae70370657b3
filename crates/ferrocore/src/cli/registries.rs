//! `ferrocore registries create|describe|list|update|delete`, with gcloud's flags: telemetry
//! topics with subfolders, a state topic, MQTT/HTTP switches, log level and CA certificates.

use super::api::{Connection, Location, last_id};
use super::output::{Column, Output, status};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use ferrocore_proto::{Empty, iot};
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
    pub fn api(self) -> iot::LogLevel {
        match self {
            LogLevel::None => iot::LogLevel::None,
            LogLevel::Error => iot::LogLevel::Error,
            LogLevel::Info => iot::LogLevel::Info,
            LogLevel::Debug => iot::LogLevel::Debug,
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
    fn body(&self, registry: &str) -> Result<(iot::DeviceRegistry, Vec<&'static str>)> {
        let project = registry.split('/').nth(1).unwrap_or_default();
        let topic =
            |t: &str| if t.starts_with("projects/") { t.to_owned() } else { format!("projects/{project}/topics/{t}") };
        let mut body = iot::DeviceRegistry::default();
        let mut mask = Vec::new();
        if !self.event_notification_configs.is_empty() {
            for spec in &self.event_notification_configs {
                let mut config = iot::EventNotificationConfig::default();
                for part in spec.split(',') {
                    match part.split_once('=') {
                        Some(("topic", t)) => config.pubsub_topic_name = topic(t),
                        Some(("subfolder", s)) => config.subfolder_matches = s.to_owned(),
                        None if !part.is_empty() && config.pubsub_topic_name.is_empty() => {
                            config.pubsub_topic_name = topic(part)
                        }
                        _ => bail!("--event-notification-config '{spec}' is not topic=TOPIC[,subfolder=SUBFOLDER]"),
                    };
                }
                if config.pubsub_topic_name.is_empty() {
                    bail!("--event-notification-config '{spec}' names no topic");
                }
                body.event_notification_configs.push(config);
            }
            mask.push("event_notification_configs");
        }
        if let Some(t) = &self.state_pubsub_topic {
            body.state_notification_config = Some(iot::StateNotificationConfig { pubsub_topic_name: topic(t) });
            mask.push("state_notification_config");
        }
        if let Some(on) = switch(self.enable_mqtt_config, self.no_enable_mqtt_config) {
            let state = if on { iot::MqttState::MqttEnabled } else { iot::MqttState::MqttDisabled };
            body.mqtt_config = Some(iot::MqttConfig { mqtt_enabled_state: state.into() });
            mask.push("mqtt_config");
        }
        if let Some(on) = switch(self.enable_http_config, self.no_enable_http_config) {
            let state = if on { iot::HttpState::HttpEnabled } else { iot::HttpState::HttpDisabled };
            body.http_config = Some(iot::HttpConfig { http_enabled_state: state.into() });
            mask.push("http_config");
        }
        if let Some(l) = self.log_level {
            body.set_log_level(l.api());
            mask.push("log_level");
        }
        if !self.public_key_paths.is_empty() {
            for path in &self.public_key_paths {
                let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let certificate = iot::PublicKeyCertificate {
                    format: iot::PublicKeyCertificateFormat::X509CertificatePem.into(),
                    certificate: pem,
                    x509_details: None,
                };
                body.credentials.push(iot::RegistryCredential {
                    credential: Some(iot::registry_credential::Credential::PublicKeyCertificate(certificate)),
                });
            }
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
            body.id = last_id(&name).to_owned();
            let parent = name.rsplit_once("/registries/").map(|(p, _)| p).unwrap_or_default();
            let created: iot::DeviceRegistry = api.post(parent, "/registries", &body).await?;
            status(format!("Created registry [{}].", last_id(&name)));
            if out.json() {
                out.resource(&created)?;
            }
        }
        RegistriesCommand::Describe { registry } => {
            let found: iot::DeviceRegistry = api.get(&args.location.registry(&registry)?, "", &[]).await?;
            out.resource(&found)?;
        }
        RegistriesCommand::List { limit } => {
            let parent = args.location.parent()?;
            let items = api.list_all::<iot::ListDeviceRegistriesResponse>(&parent, "/registries", &[], limit).await?;
            out.list(&items, COLUMNS)?;
        }
        RegistriesCommand::Update { registry, settings } => {
            let name = args.location.registry(&registry)?;
            let (body, mask) = settings.body(&name)?;
            if mask.is_empty() {
                bail!("nothing to update: give at least one setting (see `ferrocore registries update --help`)");
            }
            let updated: iot::DeviceRegistry = api.patch(&name, &[("updateMask", mask.join(","))], &body).await?;
            status(format!("Updated registry [{}].", last_id(&name)));
            if out.json() {
                out.resource(&updated)?;
            }
        }
        RegistriesCommand::Delete { registry } => {
            let name = args.location.registry(&registry)?;
            let answer: Empty = api.delete(&name).await?;
            status(format!("Deleted registry [{}].", last_id(&name)));
            if out.json() {
                out.resource(&answer)?;
            }
        }
    }
    Ok(())
}

const COLUMNS: &[Column<iot::DeviceRegistry>] = &[
    ("ID", |r| r.id.clone()),
    ("LOCATION", |r| r.name.split('/').nth(3).unwrap_or_default().to_owned()),
    // Unspecified means enabled, as on the server.
    ("MQTT", |r| {
        enabled(r.mqtt_config.as_ref().is_some_and(|c| c.mqtt_enabled_state() == iot::MqttState::MqttDisabled))
    }),
    ("HTTP", |r| {
        enabled(r.http_config.as_ref().is_some_and(|c| c.http_enabled_state() == iot::HttpState::HttpDisabled))
    }),
    ("TELEMETRY_TOPICS", |r| {
        let topics: Vec<String> = r
            .event_notification_configs
            .iter()
            .map(|c| match c.subfolder_matches.as_str() {
                "" => c.pubsub_topic_name.clone(),
                s => format!("{} ({s})", c.pubsub_topic_name),
            })
            .collect();
        topics.join(", ")
    }),
];

fn enabled(disabled: bool) -> String {
    if disabled { "disabled" } else { "enabled" }.to_owned()
}
