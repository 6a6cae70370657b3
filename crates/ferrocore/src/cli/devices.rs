//! `ferrocore devices ...`: devices and everything addressed through them — create, describe,
//! list, update, delete; `configs update|list`, `states list`, `commands send`, `gateways
//! bind|unbind|list` — with gcloud's flags, and `import`/`export` from [`super::import`].

use super::api::{Api, Connection, Registry, last_id};
use super::output::{Column, Output, payload_text, shorten, status, text};
use super::registries::{LogLevel, switch};
use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DevicesArgs {
    #[command(subcommand)]
    command: DevicesCommand,
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    scope: Registry,
    #[command(flatten)]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum DevicesCommand {
    /// Create a device.
    Create {
        /// Device id (or full name projects/P/locations/L/registries/R/devices/D).
        device: String,
        /// Whether the device is a gateway.
        #[arg(long, value_enum)]
        device_type: Option<DeviceType>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Show a device, with its credentials, config, state and activity.
    Describe {
        #[command(flatten)]
        device: DeviceArg,
    },
    /// List the devices of a registry.
    List {
        /// Only these ids (comma-separated).
        #[arg(long, value_delimiter = ',')]
        device_ids: Vec<String>,
        /// Only these numeric ids (comma-separated).
        #[arg(long, value_delimiter = ',')]
        device_num_ids: Vec<String>,
        /// Only gateways, or only non-gateways.
        #[arg(long, value_enum)]
        device_type: Option<DeviceType>,
        /// Show at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Change the settings given; the others stay as they are.
    Update {
        #[command(flatten)]
        device: DeviceArg,
        /// Remove all metadata.
        #[arg(long, conflicts_with_all = ["metadata", "metadata_from_file"])]
        clear_metadata: bool,
        #[command(flatten)]
        settings: Settings,
    },
    /// Delete a device.
    Delete {
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Push configurations to a device, and read their history.
    Configs {
        #[command(subcommand)]
        command: ConfigsCommand,
    },
    /// Read the states a device reported.
    States {
        #[command(subcommand)]
        command: StatesCommand,
    },
    /// Send commands to a connected device.
    Commands {
        #[command(subcommand)]
        command: CommandsCommand,
    },
    /// Bind devices to gateways, unbind them, list bindings.
    Gateways {
        #[command(subcommand)]
        command: GatewaysCommand,
    },
    /// Create many devices from a CSV or JSON Lines file (see docs/cli.md for the columns).
    Import(super::import::ImportArgs),
    /// Write a registry's devices as CSV or JSON Lines, in the format `import` reads.
    Export(super::import::ExportArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigsCommand {
    /// Send a new configuration; a connected device receives it at once.
    Update {
        #[command(flatten)]
        device: DeviceArg,
        /// The configuration, as text.
        #[arg(long, conflicts_with = "config_file", required_unless_present = "config_file")]
        config_data: Option<String>,
        /// A file holding the configuration (any bytes).
        #[arg(long)]
        config_file: Option<PathBuf>,
        /// Only update if the current version is this one.
        #[arg(long)]
        version_to_update: Option<u64>,
    },
    /// List the latest configuration versions, newest first.
    List {
        #[command(flatten)]
        device: DeviceArg,
        /// How many versions (the server keeps 10).
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
enum StatesCommand {
    /// List the latest states, newest first.
    List {
        #[command(flatten)]
        device: DeviceArg,
        /// How many states (the server keeps 10).
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
enum CommandsCommand {
    /// Send a command; it succeeds once the device has acknowledged it.
    Send {
        #[command(flatten)]
        device: DeviceArg,
        /// The command, as text.
        #[arg(long, conflicts_with = "command_file", required_unless_present = "command_file")]
        command_data: Option<String>,
        /// A file holding the command (any bytes).
        #[arg(long)]
        command_file: Option<PathBuf>,
        /// Subfolder the command is published to (`/devices/D/commands/SUBFOLDER`).
        #[arg(long)]
        subfolder: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum GatewaysCommand {
    /// Let a device communicate through a gateway.
    Bind {
        /// The gateway (id or full name).
        #[arg(long)]
        gateway: String,
        /// The device (id or full name).
        #[arg(long)]
        device: String,
    },
    /// Remove a binding.
    Unbind {
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        device: String,
    },
    /// The devices bound to a gateway, or the gateways a device is bound to.
    List {
        #[arg(long, conflicts_with = "device", required_unless_present = "device")]
        gateway: Option<String>,
        #[arg(long)]
        device: Option<String>,
    },
}

/// A device given as `DEVICE`, or as gcloud's `--device DEVICE`.
#[derive(Args, Debug)]
struct DeviceArg {
    /// Device id, numeric id, or full name projects/P/locations/L/registries/R/devices/D.
    #[arg(value_name = "DEVICE", required_unless_present = "device_flag")]
    device: Option<String>,
    #[arg(long = "device", value_name = "DEVICE", conflicts_with = "device", hide = true)]
    device_flag: Option<String>,
}

impl DeviceArg {
    fn name(&self, scope: &Registry) -> Result<String> {
        scope.device(self.device.as_deref().or(self.device_flag.as_deref()).unwrap_or_default())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceType {
    Gateway,
    NonGateway,
}

impl DeviceType {
    fn api(self) -> &'static str {
        match self {
            DeviceType::Gateway => "GATEWAY",
            DeviceType::NonGateway => "NON_GATEWAY",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMethod {
    AssociationOnly,
    DeviceAuthTokenOnly,
    AssociationAndDeviceAuthToken,
}

impl AuthMethod {
    pub fn api(self) -> &'static str {
        match self {
            AuthMethod::AssociationOnly => "ASSOCIATION_ONLY",
            AuthMethod::DeviceAuthTokenOnly => "DEVICE_AUTH_TOKEN_ONLY",
            AuthMethod::AssociationAndDeviceAuthToken => "ASSOCIATION_AND_DEVICE_AUTH_TOKEN",
        }
    }
}

#[derive(Args, Debug)]
struct Settings {
    /// A credential: `path=FILE,type=TYPE[,expiration-time=RFC3339]`, TYPE one of es256,
    /// es256-pem, es256-x509-pem, rs256, rsa-pem, rsa-x509-pem (es256 and rs256 take a public key
    /// or a certificate). Repeat for up to 3; on update, the keys given replace the device's.
    #[arg(long = "public-key", value_name = "path=FILE,type=TYPE[,expiration-time=TIME]")]
    public_keys: Vec<String>,
    /// Metadata `KEY=VALUE[,KEY=VALUE...]`; repeatable. On update, replaces all metadata.
    #[arg(long, value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Metadata values read from files: `KEY=FILE[,KEY=FILE...]`; repeatable.
    #[arg(long, value_name = "KEY=FILE")]
    metadata_from_file: Vec<String>,
    /// Refuse the device's connections.
    #[arg(long, overrides_with = "no_blocked")]
    blocked: bool,
    /// Accept the device's connections again.
    #[arg(long, overrides_with = "blocked")]
    no_blocked: bool,
    /// Device activity log level.
    #[arg(long, value_enum)]
    log_level: Option<LogLevel>,
    /// How devices behind this gateway authenticate.
    #[arg(long, value_enum)]
    auth_method: Option<AuthMethod>,
}

impl Settings {
    /// The device fields these flags set, and their update-mask paths.
    fn body(&self) -> Result<(Map<String, Value>, Vec<&'static str>)> {
        let mut body = Map::new();
        let mut mask = Vec::new();
        if !self.public_keys.is_empty() {
            let creds = self.public_keys.iter().map(|s| public_key_flag(s)).collect::<Result<Vec<_>>>()?;
            body.insert("credentials".into(), creds.into());
            mask.push("credentials");
        }
        if !self.metadata.is_empty() || !self.metadata_from_file.is_empty() {
            let mut map = BTreeMap::new();
            for (k, v) in self.metadata.iter().flat_map(|m| m.split(',')).map(|kv| pair("--metadata", kv)) {
                insert_once(&mut map, k?, v.to_owned())?;
            }
            for kv in self.metadata_from_file.iter().flat_map(|m| m.split(',')) {
                let (k, path) = pair("--metadata-from-file", kv);
                let v = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
                insert_once(&mut map, k?, v)?;
            }
            body.insert("metadata".into(), json!(map));
            mask.push("metadata");
        }
        if let Some(b) = switch(self.blocked, self.no_blocked) {
            body.insert("blocked".into(), b.into());
            mask.push("blocked");
        }
        if let Some(l) = self.log_level {
            body.insert("logLevel".into(), l.api().into());
            mask.push("log_level");
        }
        if let Some(m) = self.auth_method {
            body.insert("gatewayConfig".into(), json!({"gatewayAuthMethod": m.api()}));
            mask.push("gateway_config.gateway_auth_method");
        }
        Ok((body, mask))
    }
}

fn pair<'a>(flag: &str, kv: &'a str) -> (Result<&'a str>, &'a str) {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => (Ok(k), v),
        _ => (Err(anyhow::anyhow!("{flag} '{kv}' is not KEY=VALUE")), ""),
    }
}

fn insert_once(map: &mut BTreeMap<String, String>, key: &str, value: String) -> Result<()> {
    if map.insert(key.to_owned(), value).is_some() {
        bail!("metadata key '{key}' is given twice");
    }
    Ok(())
}

/// One `--public-key path=...,type=...,expiration-time=...` as a DeviceCredential.
fn public_key_flag(spec: &str) -> Result<Value> {
    let (mut path, mut kind, mut expires) = (None, None, None);
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("path", v)) => path = Some(v),
            Some(("type", v)) => kind = Some(v),
            Some(("expiration-time", v)) => expires = Some(v),
            _ => bail!("--public-key '{spec}': expected path=FILE,type=TYPE[,expiration-time=TIME], got '{part}'"),
        }
    }
    let (Some(path), Some(kind)) = (path, kind) else {
        bail!("--public-key '{spec}' needs both path= and type=");
    };
    let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read the key file {path}"))?;
    credential(&pem, kind, expires)
}

/// A DeviceCredential from a PEM text, a key type, and an optional RFC 3339 expiration time.
fn credential(pem: &str, kind: &str, expires: Option<&str>) -> Result<Value> {
    let mut c = json!({"publicKey": {"format": key_format(kind, pem)?, "key": pem}});
    if let Some(t) = expires.filter(|t| !t.is_empty()) {
        c["expirationTime"] = rfc3339(t)?.into();
    }
    Ok(c)
}

/// gcloud's key type (or the API's format name) → the API's format. `es256` and `rs256` name only
/// the algorithm: the PEM itself tells a certificate from a public key.
pub fn key_format(kind: &str, pem: &str) -> Result<&'static str> {
    let cert = pem.contains("-----BEGIN CERTIFICATE-----");
    Ok(match kind.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "es256" if cert => "ES256_X509_PEM",
        "es256" => "ES256_PEM",
        "rs256" if cert => "RSA_X509_PEM",
        "rs256" => "RSA_PEM",
        "es256-pem" => "ES256_PEM",
        "es256-x509-pem" => "ES256_X509_PEM",
        "rsa-pem" => "RSA_PEM",
        "rsa-x509-pem" => "RSA_X509_PEM",
        other => {
            bail!("unknown key type '{other}': use es256, es256-pem, es256-x509-pem, rs256, rsa-pem or rsa-x509-pem")
        }
    })
}

/// An RFC 3339 time, normalized to UTC as the server writes it.
pub fn rfc3339(t: &str) -> Result<String> {
    use time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(t.trim(), &Rfc3339)
        .with_context(|| format!("'{t}' is not an RFC 3339 time like 2030-01-01T00:00:00Z"))?;
    Ok(parsed.to_offset(time::UtcOffset::UTC).format(&Rfc3339)?)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `--x-data TEXT` or `--x-file FILE` as bytes.
fn data(text: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>> {
    match (text, file) {
        (Some(t), _) => Ok(t.into_bytes()),
        (None, Some(f)) => std::fs::read(&f).with_context(|| format!("cannot read {}", f.display())),
        (None, None) => bail!("no data given"),
    }
}

pub async fn run(args: DevicesArgs) -> Result<()> {
    let out = &args.output;
    let scope = &args.scope;
    let api = args.connection.api()?;
    match args.command {
        DevicesCommand::Create { device, device_type, settings } => {
            let name = scope.device(&device)?;
            let (mut body, _) = settings.body()?;
            body.insert("id".into(), last_id(&name).into());
            if let Some(t) = device_type {
                let gateway = body.entry("gatewayConfig").or_insert_with(|| json!({}));
                gateway["gatewayType"] = t.api().into();
            }
            let registry = name.rsplit_once("/devices/").map(|(r, _)| r).unwrap_or_default();
            let created = api.post(registry, "/devices", &Value::Object(body)).await?;
            status(format!("Created device [{}] (numeric id {}).", last_id(&name), text(&created["numId"])));
            if out.json() {
                out.resource(&created);
            }
        }
        DevicesCommand::Describe { device } => out.resource(&api.get(&device.name(scope)?, "", &[]).await?),
        DevicesCommand::List { device_ids, device_num_ids, device_type, limit } => {
            let mut q =
                vec![("fieldMask", "blocked,gatewayConfig,lastHeartbeatTime,lastEventTime,lastStateTime".into())];
            q.extend(device_ids.into_iter().map(|d| ("deviceIds", d)));
            q.extend(device_num_ids.into_iter().map(|d| ("deviceNumIds", d)));
            if let Some(t) = device_type {
                q.push(("gatewayListOptions.gatewayType", t.api().into()));
            }
            let items = api.list_all(&scope.name()?, "/devices", "devices", &q, limit).await?;
            out.list(&items, DEVICE_COLUMNS);
        }
        DevicesCommand::Update { device, clear_metadata, settings } => {
            let name = device.name(scope)?;
            let (mut body, mut mask) = settings.body()?;
            if clear_metadata {
                body.insert("metadata".into(), json!({}));
                mask.push("metadata");
            }
            if mask.is_empty() {
                bail!("nothing to update: give at least one setting (see `ferrocore devices update --help`)");
            }
            let updated = api.patch(&name, &[("updateMask", mask.join(","))], &Value::Object(body)).await?;
            status(format!("Updated device [{}].", last_id(&name)));
            if out.json() {
                out.resource(&updated);
            }
        }
        DevicesCommand::Delete { device } => {
            let name = device.name(scope)?;
            let answer = api.delete(&name).await?;
            status(format!("Deleted device [{}].", last_id(&name)));
            if out.json() {
                out.resource(&answer);
            }
        }
        DevicesCommand::Configs { command } => configs(&api, scope, out, command).await?,
        DevicesCommand::States { command: StatesCommand::List { device, limit } } => {
            let q: Vec<_> = limit.map(|l| ("numStates", l.to_string())).into_iter().collect();
            let answer = api.get(&device.name(scope)?, "/states", &q).await?;
            let items = answer["deviceStates"].as_array().cloned().unwrap_or_default();
            out.list(
                &items,
                &[("UPDATE_TIME", |s| text(&s["updateTime"])), ("DATA", |s| data_column(&s["binaryData"]))],
            );
        }
        DevicesCommand::Commands {
            command: CommandsCommand::Send { device, command_data, command_file, subfolder },
        } => {
            let name = device.name(scope)?;
            let mut body = json!({"binaryData": b64(&data(command_data, command_file)?)});
            if let Some(s) = subfolder {
                body["subfolder"] = s.into();
            }
            let answer = api.post(&name, ":sendCommandToDevice", &body).await?;
            status(format!("Sent the command to device [{}].", last_id(&name)));
            if out.json() {
                out.resource(&answer);
            }
        }
        DevicesCommand::Gateways { command } => gateways(&api, scope, out, command).await?,
        DevicesCommand::Import(a) => super::import::import(a, &api, scope, out).await?,
        DevicesCommand::Export(a) => super::import::export(a, &api, scope).await?,
    }
    Ok(())
}

async fn configs(api: &Api, scope: &Registry, out: &Output, command: ConfigsCommand) -> Result<()> {
    match command {
        ConfigsCommand::Update { device, config_data, config_file, version_to_update } => {
            let name = device.name(scope)?;
            let mut body = json!({"binaryData": b64(&data(config_data, config_file)?)});
            if let Some(v) = version_to_update {
                body["versionToUpdate"] = v.to_string().into();
            }
            let config = api.post(&name, ":modifyCloudToDeviceConfig", &body).await?;
            status(format!(
                "Updated the config of device [{}] to version {}.",
                last_id(&name),
                text(&config["version"])
            ));
            if out.json() {
                out.resource(&config);
            }
        }
        ConfigsCommand::List { device, limit } => {
            let q: Vec<_> = limit.map(|l| ("numVersions", l.to_string())).into_iter().collect();
            let answer = api.get(&device.name(scope)?, "/configVersions", &q).await?;
            let items = answer["deviceConfigs"].as_array().cloned().unwrap_or_default();
            out.list(
                &items,
                &[
                    ("VERSION", |c| text(&c["version"])),
                    ("CLOUD_UPDATE_TIME", |c| text(&c["cloudUpdateTime"])),
                    ("DEVICE_ACK_TIME", |c| text(&c["deviceAckTime"])),
                    ("DATA", |c| data_column(&c["binaryData"])),
                ],
            );
        }
    }
    Ok(())
}

async fn gateways(api: &Api, scope: &Registry, out: &Output, command: GatewaysCommand) -> Result<()> {
    let (verb, gateway, device) = match command {
        GatewaysCommand::Bind { gateway, device } => ("bindDeviceToGateway", gateway, device),
        GatewaysCommand::Unbind { gateway, device } => ("unbindDeviceFromGateway", gateway, device),
        GatewaysCommand::List { gateway, device } => {
            let (filter, who) = match (gateway, device) {
                (Some(g), _) => ("gatewayListOptions.associationsGatewayId", g),
                (None, Some(d)) => ("gatewayListOptions.associationsDeviceId", d),
                (None, None) => bail!("give --gateway or --device"),
            };
            let (registry, id) = split_device(&scope.device(&who)?);
            let items = api.list_all(&registry, "/devices", "devices", &[(filter, id)], None).await?;
            out.list(&items, &[("ID", |d| text(&d["id"])), ("NUM_ID", |d| text(&d["numId"]))]);
            return Ok(());
        }
    };
    let (registry, gateway_id) = split_device(&scope.device(&gateway)?);
    let (device_registry, device_id) = split_device(&scope.device(&device)?);
    if registry != device_registry {
        bail!("the gateway and the device must be in the same registry");
    }
    let answer =
        api.post(&registry, &format!(":{verb}"), &json!({"gatewayId": gateway_id, "deviceId": device_id})).await?;
    if verb == "bindDeviceToGateway" {
        status(format!("Bound device [{device_id}] to gateway [{gateway_id}]."));
    } else {
        status(format!("Unbound device [{device_id}] from gateway [{gateway_id}]."));
    }
    if out.json() {
        out.resource(&answer);
    }
    Ok(())
}

/// A device name as its registry name and its id.
fn split_device(name: &str) -> (String, String) {
    match name.rsplit_once("/devices/") {
        Some((r, d)) => (r.to_owned(), d.to_owned()),
        None => (String::new(), name.to_owned()),
    }
}

/// A bytes field for a table cell: text when printable, cut to fit.
fn data_column(v: &Value) -> String {
    v.as_str().map(|b| shorten(&payload_text(b), 60)).unwrap_or_default()
}

const DEVICE_COLUMNS: &[Column] = &[
    ("ID", |d| text(&d["id"])),
    ("NUM_ID", |d| text(&d["numId"])),
    ("BLOCKED", |d| d["blocked"].as_bool().unwrap_or(false).to_string()),
    ("GATEWAY", |d| (d["gatewayConfig"]["gatewayType"] == "GATEWAY").to_string()),
    ("LAST_SEEN", last_seen),
];

/// The latest of a device's heartbeat, event and state times.
fn last_seen(d: &Value) -> String {
    use time::format_description::well_known::Rfc3339;
    ["lastHeartbeatTime", "lastEventTime", "lastStateTime"]
        .iter()
        .filter_map(|f| d[*f].as_str())
        .filter_map(|t| time::OffsetDateTime::parse(t, &Rfc3339).ok().map(|p| (p, t)))
        .max_by_key(|(p, _)| *p)
        .map(|(_, t)| t.to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_follow_gcloud_and_the_pem() {
        let cert = "-----BEGIN CERTIFICATE-----\n";
        let key = "-----BEGIN PUBLIC KEY-----\n";
        assert_eq!(key_format("es256", key).unwrap(), "ES256_PEM");
        assert_eq!(key_format("es256", cert).unwrap(), "ES256_X509_PEM");
        assert_eq!(key_format("rs256", cert).unwrap(), "RSA_X509_PEM");
        assert_eq!(key_format("RSA_PEM", key).unwrap(), "RSA_PEM");
        assert_eq!(key_format("rsa-x509-pem", cert).unwrap(), "RSA_X509_PEM");
        assert!(key_format("hs256", key).unwrap_err().to_string().contains("unknown key type 'hs256'"));
        assert_eq!(rfc3339("2030-01-01T02:00:00+02:00").unwrap(), "2030-01-01T00:00:00Z");
        assert!(rfc3339("tomorrow").is_err());
    }
}
