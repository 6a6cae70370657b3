//! `ferrocore devices ...`: devices and everything addressed through them — create, describe,
//! list, update, delete; `configs update|list`, `states list`, `commands send`, `gateways
//! bind|unbind|list` — with gcloud's flags, and `import`/`export` from [`super::import`].

use super::api::{Api, Connection, Registry, last_id};
use super::output::{Column, Output, bytes_text, number, shorten, status, time};
use super::registries::{LogLevel, switch};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use ferrocore_proto::wkt::Timestamp;
use ferrocore_proto::{Empty, iot};
use std::collections::HashMap;
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
    fn api(self) -> iot::GatewayType {
        match self {
            DeviceType::Gateway => iot::GatewayType::Gateway,
            DeviceType::NonGateway => iot::GatewayType::NonGateway,
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
    pub fn api(self) -> iot::GatewayAuthMethod {
        match self {
            AuthMethod::AssociationOnly => iot::GatewayAuthMethod::AssociationOnly,
            AuthMethod::DeviceAuthTokenOnly => iot::GatewayAuthMethod::DeviceAuthTokenOnly,
            AuthMethod::AssociationAndDeviceAuthToken => iot::GatewayAuthMethod::AssociationAndDeviceAuthToken,
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
    fn body(&self) -> Result<(iot::Device, Vec<&'static str>)> {
        let mut body = iot::Device::default();
        let mut mask = Vec::new();
        if !self.public_keys.is_empty() {
            body.credentials = self.public_keys.iter().map(|s| public_key_flag(s)).collect::<Result<Vec<_>>>()?;
            mask.push("credentials");
        }
        if !self.metadata.is_empty() || !self.metadata_from_file.is_empty() {
            for (k, v) in self.metadata.iter().flat_map(|m| m.split(',')).map(|kv| pair("--metadata", kv)) {
                insert_once(&mut body.metadata, k?, v.to_owned())?;
            }
            for kv in self.metadata_from_file.iter().flat_map(|m| m.split(',')) {
                let (k, path) = pair("--metadata-from-file", kv);
                let v = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
                insert_once(&mut body.metadata, k?, v)?;
            }
            mask.push("metadata");
        }
        if let Some(b) = switch(self.blocked, self.no_blocked) {
            body.blocked = b;
            mask.push("blocked");
        }
        if let Some(l) = self.log_level {
            body.set_log_level(l.api());
            mask.push("log_level");
        }
        if let Some(m) = self.auth_method {
            body.gateway_config.get_or_insert_default().set_gateway_auth_method(m.api());
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

fn insert_once(map: &mut HashMap<String, String>, key: &str, value: String) -> Result<()> {
    if map.insert(key.to_owned(), value).is_some() {
        bail!("metadata key '{key}' is given twice");
    }
    Ok(())
}

/// One `--public-key path=...,type=...,expiration-time=...` as a DeviceCredential.
fn public_key_flag(spec: &str) -> Result<iot::DeviceCredential> {
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
fn credential(pem: &str, kind: &str, expires: Option<&str>) -> Result<iot::DeviceCredential> {
    Ok(public_key(
        key_format(kind, pem)?,
        pem.to_owned(),
        expires.filter(|t| !t.is_empty()).map(timestamp).transpose()?,
    ))
}

/// A DeviceCredential holding a public key (or certificate) in `format`.
pub fn public_key(format: iot::PublicKeyFormat, key: String, expires: Option<Timestamp>) -> iot::DeviceCredential {
    let key = iot::PublicKeyCredential { format: format.into(), key };
    iot::DeviceCredential {
        expiration_time: expires,
        credential: Some(iot::device_credential::Credential::PublicKey(key)),
    }
}

/// gcloud's key type (or the API's format name) → the API's format. `es256` and `rs256` name only
/// the algorithm: the PEM itself tells a certificate from a public key.
pub fn key_format(kind: &str, pem: &str) -> Result<iot::PublicKeyFormat> {
    use iot::PublicKeyFormat as F;
    let cert = pem.contains("-----BEGIN CERTIFICATE-----");
    Ok(match kind.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "es256" if cert => F::Es256X509Pem,
        "es256" => F::Es256Pem,
        "rs256" if cert => F::RsaX509Pem,
        "rs256" => F::RsaPem,
        "es256-pem" => F::Es256Pem,
        "es256-x509-pem" => F::Es256X509Pem,
        "rsa-pem" => F::RsaPem,
        "rsa-x509-pem" => F::RsaX509Pem,
        other => {
            bail!("unknown key type '{other}': use es256, es256-pem, es256-x509-pem, rs256, rsa-pem or rsa-x509-pem")
        }
    })
}

/// An RFC 3339 time (any offset).
fn parse_time(t: &str) -> Result<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(t.trim(), &Rfc3339)
        .with_context(|| format!("'{t}' is not an RFC 3339 time like 2030-01-01T00:00:00Z"))
}

/// An RFC 3339 time, normalized to UTC as the server writes it.
pub fn rfc3339(t: &str) -> Result<String> {
    use time::format_description::well_known::Rfc3339;
    Ok(parse_time(t)?.to_offset(time::UtcOffset::UTC).format(&Rfc3339)?)
}

/// An RFC 3339 time as the API's Timestamp.
pub fn timestamp(t: &str) -> Result<Timestamp> {
    let nanos = i64::try_from(parse_time(t)?.unix_timestamp_nanos())
        .map_err(|_| anyhow::anyhow!("'{t}' is out of range (years 1678 to 2262)"))?;
    Ok(Timestamp::from_unix_nanos(nanos))
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
            body.id = last_id(&name).to_owned();
            if let Some(t) = device_type {
                body.gateway_config.get_or_insert_default().set_gateway_type(t.api());
            }
            let registry = name.rsplit_once("/devices/").map(|(r, _)| r).unwrap_or_default();
            let created: iot::Device = api.post(registry, "/devices", &body).await?;
            status(format!("Created device [{}] (numeric id {}).", last_id(&name), number(created.num_id)));
            if out.json() {
                out.resource(&created)?;
            }
        }
        DevicesCommand::Describe { device } => {
            let found: iot::Device = api.get(&device.name(scope)?, "", &[]).await?;
            out.resource(&found)?;
        }
        DevicesCommand::List { device_ids, device_num_ids, device_type, limit } => {
            let mut q =
                vec![("fieldMask", "blocked,gatewayConfig,lastHeartbeatTime,lastEventTime,lastStateTime".into())];
            q.extend(device_ids.into_iter().map(|d| ("deviceIds", d)));
            q.extend(device_num_ids.into_iter().map(|d| ("deviceNumIds", d)));
            if let Some(t) = device_type {
                q.push(("gatewayListOptions.gatewayType", t.api().as_str_name().into()));
            }
            let items = api.list_all::<iot::ListDevicesResponse>(&scope.name()?, "/devices", &q, limit).await?;
            out.list(&items, DEVICE_COLUMNS)?;
        }
        DevicesCommand::Update { device, clear_metadata, settings } => {
            let name = device.name(scope)?;
            let (body, mut mask) = settings.body()?;
            if clear_metadata {
                // The mask names the field and the body leaves it empty.
                mask.push("metadata");
            }
            if mask.is_empty() {
                bail!("nothing to update: give at least one setting (see `ferrocore devices update --help`)");
            }
            let updated: iot::Device = api.patch(&name, &[("updateMask", mask.join(","))], &body).await?;
            status(format!("Updated device [{}].", last_id(&name)));
            if out.json() {
                out.resource(&updated)?;
            }
        }
        DevicesCommand::Delete { device } => {
            let name = device.name(scope)?;
            let answer: Empty = api.delete(&name).await?;
            status(format!("Deleted device [{}].", last_id(&name)));
            if out.json() {
                out.resource(&answer)?;
            }
        }
        DevicesCommand::Configs { command } => configs(&api, scope, out, command).await?,
        DevicesCommand::States { command: StatesCommand::List { device, limit } } => {
            let q: Vec<_> = limit.map(|l| ("numStates", l.to_string())).into_iter().collect();
            let answer: iot::ListDeviceStatesResponse = api.get(&device.name(scope)?, "/states", &q).await?;
            out.list(
                &answer.device_states,
                &[("UPDATE_TIME", |s| time(&s.update_time)), ("DATA", |s| data_column(&s.binary_data))],
            )?;
        }
        DevicesCommand::Commands {
            command: CommandsCommand::Send { device, command_data, command_file, subfolder },
        } => {
            let name = device.name(scope)?;
            let body = iot::SendCommandToDeviceRequest {
                binary_data: data(command_data, command_file)?,
                subfolder: subfolder.unwrap_or_default(),
                ..Default::default()
            };
            let answer: iot::SendCommandToDeviceResponse = api.post(&name, ":sendCommandToDevice", &body).await?;
            status(format!("Sent the command to device [{}].", last_id(&name)));
            if out.json() {
                out.resource(&answer)?;
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
            let body = iot::ModifyCloudToDeviceConfigRequest {
                binary_data: data(config_data, config_file)?,
                version_to_update: match version_to_update {
                    Some(v) => i64::try_from(v).context("--version-to-update is too large")?,
                    None => 0,
                },
                ..Default::default()
            };
            let config: iot::DeviceConfig = api.post(&name, ":modifyCloudToDeviceConfig", &body).await?;
            status(format!("Updated the config of device [{}] to version {}.", last_id(&name), number(config.version)));
            if out.json() {
                out.resource(&config)?;
            }
        }
        ConfigsCommand::List { device, limit } => {
            let q: Vec<_> = limit.map(|l| ("numVersions", l.to_string())).into_iter().collect();
            let answer: iot::ListDeviceConfigVersionsResponse =
                api.get(&device.name(scope)?, "/configVersions", &q).await?;
            out.list(
                &answer.device_configs,
                &[
                    ("VERSION", |c| number(c.version)),
                    ("CLOUD_UPDATE_TIME", |c| time(&c.cloud_update_time)),
                    ("DEVICE_ACK_TIME", |c| time(&c.device_ack_time)),
                    ("DATA", |c| data_column(&c.binary_data)),
                ],
            )?;
        }
    }
    Ok(())
}

async fn gateways(api: &Api, scope: &Registry, out: &Output, command: GatewaysCommand) -> Result<()> {
    let (bind, gateway, device) = match command {
        GatewaysCommand::Bind { gateway, device } => (true, gateway, device),
        GatewaysCommand::Unbind { gateway, device } => (false, gateway, device),
        GatewaysCommand::List { gateway, device } => {
            let (filter, who) = match (gateway, device) {
                (Some(g), _) => ("gatewayListOptions.associationsGatewayId", g),
                (None, Some(d)) => ("gatewayListOptions.associationsDeviceId", d),
                (None, None) => bail!("give --gateway or --device"),
            };
            let (registry, id) = split_device(&scope.device(&who)?);
            let items = api.list_all::<iot::ListDevicesResponse>(&registry, "/devices", &[(filter, id)], None).await?;
            out.list(&items, &[("ID", |d| d.id.clone()), ("NUM_ID", |d| number(d.num_id))])?;
            return Ok(());
        }
    };
    let (registry, gateway_id) = split_device(&scope.device(&gateway)?);
    let (device_registry, device_id) = split_device(&scope.device(&device)?);
    if registry != device_registry {
        bail!("the gateway and the device must be in the same registry");
    }
    if bind {
        let body = iot::BindDeviceToGatewayRequest { parent: String::new(), gateway_id, device_id };
        let answer: iot::BindDeviceToGatewayResponse = api.post(&registry, ":bindDeviceToGateway", &body).await?;
        status(format!("Bound device [{}] to gateway [{}].", body.device_id, body.gateway_id));
        if out.json() {
            out.resource(&answer)?;
        }
    } else {
        let body = iot::UnbindDeviceFromGatewayRequest { parent: String::new(), gateway_id, device_id };
        let answer: iot::UnbindDeviceFromGatewayResponse =
            api.post(&registry, ":unbindDeviceFromGateway", &body).await?;
        status(format!("Unbound device [{}] from gateway [{}].", body.device_id, body.gateway_id));
        if out.json() {
            out.resource(&answer)?;
        }
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
fn data_column(data: &[u8]) -> String {
    shorten(&bytes_text(data), 60)
}

const DEVICE_COLUMNS: &[Column<iot::Device>] = &[
    ("ID", |d| d.id.clone()),
    ("NUM_ID", |d| number(d.num_id)),
    ("BLOCKED", |d| d.blocked.to_string()),
    ("GATEWAY", |d| {
        d.gateway_config.as_ref().is_some_and(|g| g.gateway_type() == iot::GatewayType::Gateway).to_string()
    }),
    ("LAST_SEEN", last_seen),
];

/// The latest of a device's heartbeat, event and state times.
fn last_seen(d: &iot::Device) -> String {
    let latest = [d.last_heartbeat_time, d.last_event_time, d.last_state_time]
        .into_iter()
        .flatten()
        .max_by_key(|t| t.unix_nanos());
    time(&latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_follow_gcloud_and_the_pem() {
        let cert = "-----BEGIN CERTIFICATE-----\n";
        let key = "-----BEGIN PUBLIC KEY-----\n";
        use iot::PublicKeyFormat as F;
        assert_eq!(key_format("es256", key).unwrap(), F::Es256Pem);
        assert_eq!(key_format("es256", cert).unwrap(), F::Es256X509Pem);
        assert_eq!(key_format("rs256", cert).unwrap(), F::RsaX509Pem);
        assert_eq!(key_format("RSA_PEM", key).unwrap(), F::RsaPem);
        assert_eq!(key_format("rsa-x509-pem", cert).unwrap(), F::RsaX509Pem);
        assert!(key_format("hs256", key).unwrap_err().to_string().contains("unknown key type 'hs256'"));
        assert_eq!(rfc3339("2030-01-01T02:00:00+02:00").unwrap(), "2030-01-01T00:00:00Z");
        assert!(rfc3339("tomorrow").is_err());
        assert_eq!(timestamp("2030-01-01T02:00:00+02:00").unwrap().to_string(), "2030-01-01T00:00:00Z");
        assert!(timestamp("9999-01-01T00:00:00Z").unwrap_err().to_string().contains("out of range"));
    }
}
