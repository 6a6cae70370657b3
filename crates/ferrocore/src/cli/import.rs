//! `ferrocore devices import FILE` and `ferrocore devices export [FILE]`: bulk provisioning from
//! CSV or JSON Lines, and the reverse, in the same format (see docs/cli.md).
//!
//! Columns (CSV header, or JSON Lines keys); only `id` is required:
//!
//! | column | what |
//! |---|---|
//! | `id` | device id |
//! | `key` | a public key or certificate: a PEM file path (relative to the import file) or the PEM text itself; `;` separates several |
//! | `format` | key type per key, as `--public-key type=` takes it (es256, rs256, es256-pem, rsa-x509-pem...); one applies to all |
//! | `expiration_time` | RFC 3339 expiration per key; empty for none |
//! | `metadata` | `k=v;k2=v2` (`\;` and `\\` escape), or in JSON Lines an object |
//! | `blocked` | true/false |
//! | `gateway` | empty for a device; `gateway`, or the gateway's auth method (association-only, device-auth-token-only, association-and-device-auth-token) |
//! | `log_level` | none, error, info or debug; empty to inherit the registry's |
//!
//! An import can be run again after an interruption: a device that already exists with the same
//! content counts as done; one that exists with different content is reported as a conflict and
//! left alone. Every failed line is reported with its line number, and the exit code is 1 if any
//! line failed.

use super::api::{Api, Registry, http_status};
use super::devices::{key_format, public_key, rfc3339, timestamp};
use super::output::{Output, print_json, status};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ferrocore_proto::iot;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    Csv,
    Jsonl,
}

impl FileFormat {
    fn of(path: Option<&Path>, given: Option<FileFormat>) -> Result<FileFormat> {
        if let Some(f) = given {
            return Ok(f);
        }
        match path.and_then(|p| p.extension()).and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(FileFormat::Csv),
            Some("jsonl" | "ndjson" | "json") => Ok(FileFormat::Jsonl),
            None if path.is_none() => Ok(FileFormat::Csv),
            _ => bail!("cannot tell the file's format from its name; give --file-format csv or jsonl"),
        }
    }
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// A .csv or .jsonl file.
    file: PathBuf,
    /// The file's format, if its extension does not tell.
    #[arg(long, value_enum)]
    file_format: Option<FileFormat>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// File to write (.csv or .jsonl); stdout if absent or `-`.
    file: Option<PathBuf>,
    /// Format to write, if the file's extension does not tell [default: csv].
    #[arg(long, value_enum)]
    file_format: Option<FileFormat>,
}

const COLUMNS: [&str; 8] = ["id", "key", "format", "expiration_time", "metadata", "blocked", "gateway", "log_level"];

/// A device as one line of the file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    id: String,
    credentials: Vec<Credential>,
    metadata: BTreeMap<String, String>,
    blocked: bool,
    /// For a gateway, its auth method (`Unspecified` when none was set).
    gateway: Option<iot::GatewayAuthMethod>,
    /// None to inherit the registry's.
    log_level: Option<iot::LogLevel>,
}

#[derive(Debug, Clone)]
struct Credential {
    format: iot::PublicKeyFormat,
    key: String,
    /// RFC 3339 in UTC, as [`rfc3339`] normalizes it.
    expiration: Option<String>,
}

/// Keys are the same whatever their line endings and surrounding blank space.
impl PartialEq for Credential {
    fn eq(&self, o: &Self) -> bool {
        let norm = |k: &str| k.replace("\r\n", "\n").trim().to_owned();
        self.format == o.format && norm(&self.key) == norm(&o.key) && self.expiration == o.expiration
    }
}
impl Eq for Credential {}

/// A field's values: a JSON array, or a `;`-separated string.
fn list(v: Option<&Value>) -> Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(vec![]),
        Some(Value::String(s)) => Ok(s.split(';').map(str::to_owned).collect()),
        Some(Value::Array(items)) => {
            items.iter().map(|i| i.as_str().map(str::to_owned).context("expected strings in the list")).collect()
        }
        Some(other) => bail!("expected a string or a list of strings, got {other}"),
    }
}

impl Record {
    /// Reads a line's fields; key files are read relative to `dir`.
    fn parse(fields: &Map<String, Value>, dir: &Path) -> Result<Record> {
        for k in fields.keys() {
            if !COLUMNS.contains(&k.as_str()) {
                bail!("unknown column '{k}' (columns: {})", COLUMNS.join(", "));
            }
        }
        let id = match fields.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => bail!("no id"),
        };
        let keys = list(fields.get("key")).context("key")?;
        let formats = list(fields.get("format")).context("format")?;
        let expirations = list(fields.get("expiration_time")).context("expiration_time")?;
        if formats.len() > 1 && formats.len() != keys.len() {
            bail!("{} keys but {} formats", keys.len(), formats.len());
        }
        if !expirations.is_empty() && expirations.len() != keys.len() {
            bail!("{} keys but {} expiration times", keys.len(), expirations.len());
        }
        let mut credentials = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let key = key.trim();
            let pem = if key.starts_with("-----BEGIN") {
                format!("{key}\n")
            } else {
                let path = dir.join(key);
                std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the key file {}", path.display()))?
            };
            let kind = formats.get(i).or(formats.first()).context("a key without a format")?;
            let expires = expirations.get(i).map(String::as_str).filter(|e| !e.trim().is_empty());
            credentials.push(Credential {
                format: key_format(kind, &pem)?,
                expiration: expires.map(rfc3339).transpose()?,
                key: pem,
            });
        }
        let metadata = match fields.get("metadata") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::String(s)) => parse_metadata(s)?,
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_str().context("metadata values must be strings")?.to_owned())))
                .collect::<Result<_>>()?,
            Some(other) => bail!("metadata must be k=v;k2=v2 or an object, not {other}"),
        };
        let blocked = match fields.get("blocked") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "" | "false" | "no" | "0" => false,
                "true" | "yes" | "1" => true,
                other => bail!("blocked must be true or false, not '{other}'"),
            },
            Some(other) => bail!("blocked must be true or false, not {other}"),
        };
        let word = |name: &str| -> Result<String> {
            match fields.get(name) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.trim().to_ascii_lowercase().replace('_', "-")),
                Some(other) => bail!("{name} must be a string, not {other}"),
            }
        };
        let gateway = match word("gateway")?.as_str() {
            "" | "non-gateway" => None,
            "gateway" => Some(iot::GatewayAuthMethod::Unspecified),
            "association-only" => Some(iot::GatewayAuthMethod::AssociationOnly),
            "device-auth-token-only" => Some(iot::GatewayAuthMethod::DeviceAuthTokenOnly),
            "association-and-device-auth-token" => Some(iot::GatewayAuthMethod::AssociationAndDeviceAuthToken),
            other => bail!(
                "gateway must be empty, gateway, association-only, device-auth-token-only or \
                 association-and-device-auth-token, not '{other}'"
            ),
        };
        let log_level = match word("log_level")?.as_str() {
            "" => None,
            "none" => Some(iot::LogLevel::None),
            "error" => Some(iot::LogLevel::Error),
            "info" => Some(iot::LogLevel::Info),
            "debug" => Some(iot::LogLevel::Debug),
            other => bail!("log_level must be none, error, info or debug, not '{other}'"),
        };
        Ok(Record { id, credentials, metadata, blocked, gateway, log_level })
    }

    /// The device as the server has it (read with every field).
    fn from_device(d: &iot::Device) -> Result<Record> {
        let mut credentials = Vec::new();
        for c in &d.credentials {
            let (format, key) = match &c.credential {
                Some(iot::device_credential::Credential::PublicKey(k)) => (k.format(), k.key.clone()),
                None => (iot::PublicKeyFormat::UnspecifiedPublicKeyFormat, String::new()),
            };
            let expiration = c.expiration_time.map(|t| rfc3339(&t.to_string())).transpose()?;
            credentials.push(Credential { format, key, expiration });
        }
        let gateway = d
            .gateway_config
            .as_ref()
            .filter(|g| g.gateway_type() == iot::GatewayType::Gateway)
            .map(|g| g.gateway_auth_method());
        Ok(Record {
            id: d.id.clone(),
            credentials,
            metadata: d.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            blocked: d.blocked,
            gateway,
            log_level: Some(d.log_level()).filter(|l| *l != iot::LogLevel::Unspecified),
        })
    }

    /// The request body that creates this device.
    fn body(&self) -> Result<iot::Device> {
        let credentials = self
            .credentials
            .iter()
            .map(|c| Ok(public_key(c.format, c.key.clone(), c.expiration.as_deref().map(timestamp).transpose()?)))
            .collect::<Result<_>>()?;
        let mut device = iot::Device {
            id: self.id.clone(),
            credentials,
            metadata: self.metadata.clone().into_iter().collect(),
            blocked: self.blocked,
            ..Default::default()
        };
        if let Some(l) = self.log_level {
            device.set_log_level(l);
        }
        if let Some(method) = self.gateway {
            let gateway = device.gateway_config.get_or_insert_default();
            gateway.set_gateway_type(iot::GatewayType::Gateway);
            gateway.set_gateway_auth_method(method);
        }
        Ok(device)
    }

    /// The fields in which `other` differs from this record.
    fn differences(&self, other: &Record) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.credentials != other.credentials {
            d.push("credentials");
        }
        if self.metadata != other.metadata {
            d.push("metadata");
        }
        if self.blocked != other.blocked {
            d.push("blocked");
        }
        if self.gateway != other.gateway {
            d.push("gateway");
        }
        if self.log_level != other.log_level {
            d.push("log_level");
        }
        d
    }

    /// The record as CSV fields, in [`COLUMNS`] order.
    fn csv_fields(&self) -> Vec<String> {
        let join = |f: &dyn Fn(&Credential) -> String| self.credentials.iter().map(f).collect::<Vec<_>>().join(";");
        let expirations = if self.credentials.iter().any(|c| c.expiration.is_some()) {
            join(&|c| c.expiration.clone().unwrap_or_default())
        } else {
            String::new()
        };
        vec![
            self.id.clone(),
            join(&|c| c.key.trim_end().to_owned()),
            join(&|c| type_name(c.format)),
            expirations,
            format_metadata(&self.metadata),
            self.blocked.to_string(),
            self.gateway_word(),
            self.log_level.map(level_name).unwrap_or_default(),
        ]
    }

    fn json_line(&self) -> Value {
        let one_or_many = |f: &dyn Fn(&Credential) -> String| -> Value {
            let v: Vec<String> = self.credentials.iter().map(f).collect();
            if v.len() == 1 { v[0].clone().into() } else { v.into() }
        };
        let mut line = json!({"id": self.id, "metadata": self.metadata, "blocked": self.blocked});
        if !self.credentials.is_empty() {
            line["key"] = one_or_many(&|c| c.key.clone());
            line["format"] = one_or_many(&|c| type_name(c.format));
            if self.credentials.iter().any(|c| c.expiration.is_some()) {
                line["expiration_time"] = one_or_many(&|c| c.expiration.clone().unwrap_or_default());
            }
        }
        if self.gateway.is_some() {
            line["gateway"] = self.gateway_word().into();
        }
        if let Some(l) = self.log_level {
            line["log_level"] = level_name(l).into();
        }
        line
    }

    fn gateway_word(&self) -> String {
        match self.gateway {
            None => String::new(),
            Some(iot::GatewayAuthMethod::Unspecified) => "gateway".into(),
            Some(m) => m.as_str_name().to_ascii_lowercase().replace('_', "-"),
        }
    }
}

/// `ES256_X509_PEM` → `es256-x509-pem`, the spelling `--public-key type=` takes.
fn type_name(format: iot::PublicKeyFormat) -> String {
    format.as_str_name().to_ascii_lowercase().replace('_', "-")
}

/// `INFO` → `info`, the spelling of the `log_level` column.
fn level_name(level: iot::LogLevel) -> String {
    level.as_str_name().to_ascii_lowercase()
}

fn format_metadata(m: &BTreeMap<String, String>) -> String {
    let escape = |s: &str| s.replace('\\', "\\\\").replace(';', "\\;");
    m.iter().map(|(k, v)| format!("{}={}", escape(k), escape(v))).collect::<Vec<_>>().join(";")
}

fn parse_metadata(s: &str) -> Result<BTreeMap<String, String>> {
    let (mut entries, mut current) = (Vec::new(), String::new());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.push(chars.next().unwrap_or('\\')),
            ';' => entries.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    entries.push(current);
    let mut map = BTreeMap::new();
    for e in entries.iter().filter(|e| !e.is_empty()) {
        let Some((k, v)) = e.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            bail!("metadata entry '{e}' is not key=value");
        };
        if map.insert(k.to_owned(), v.to_owned()).is_some() {
            bail!("metadata key '{k}' is given twice");
        }
    }
    Ok(map)
}

/// Each record of the file with its line number, or why that line cannot be read.
fn read_file(path: &Path, format: FileFormat) -> Result<Vec<(u64, Result<Record>)>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    match format {
        FileFormat::Jsonl => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let record = serde_json::from_str::<Value>(line)
                    .map_err(|e| anyhow::anyhow!("not JSON: {e}"))
                    .and_then(|v| match v {
                        Value::Object(fields) => Record::parse(&fields, dir),
                        _ => bail!("not a JSON object"),
                    });
                out.push((i as u64 + 1, record));
            }
        }
        FileFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
            // The reader's position is where it began to read a record, blank lines before it
            // included; skip those to name the line a person sees the record on.
            let line_of = |p: Option<&csv::Position>| {
                let Some(p) = p else { return 0 };
                let skipped = text.as_bytes().iter().skip(p.byte() as usize).take_while(|b| matches!(b, b'\r' | b'\n'));
                p.line() + skipped.filter(|b| **b == b'\n').count() as u64
            };
            let header: Vec<String> =
                reader.headers().context("cannot read the CSV header")?.iter().map(|h| h.trim().to_owned()).collect();
            if let Some(h) = header.iter().find(|h| !COLUMNS.contains(&h.as_str())) {
                bail!("line 1: unknown column '{h}' (columns: {})", COLUMNS.join(", "));
            }
            if !header.iter().any(|h| h == "id") {
                bail!("line 1: the header has no 'id' column (columns: {})", COLUMNS.join(", "));
            }
            for row in reader.records() {
                let (line, record) = match row {
                    Err(e) => (line_of(e.position()), Err(anyhow::anyhow!("malformed CSV: {e}"))),
                    Ok(r) => {
                        let line = line_of(r.position());
                        if r.len() != header.len() {
                            let e = anyhow::anyhow!("{} fields, but the header has {}", r.len(), header.len());
                            (line, Err(e))
                        } else {
                            let fields: Map<String, Value> =
                                header.iter().cloned().zip(r.iter().map(|f| Value::String(f.to_owned()))).collect();
                            (line, Record::parse(&fields, dir))
                        }
                    }
                };
                out.push((line, record));
            }
        }
    }
    Ok(out)
}

enum Outcome {
    Created,
    Unchanged,
    Failed(String),
}

async fn import_one(api: Api, registry: String, record: Record) -> Outcome {
    let err = |e: anyhow::Error| Outcome::Failed(format!("{e:#}"));
    let body = match record.body() {
        Ok(b) => b,
        Err(e) => return err(e),
    };
    match api.post::<iot::Device>(&registry, "/devices", &body).await {
        Ok(_) => Outcome::Created,
        Err(e) if http_status(&e) == Some(409) => {
            let existing = match api.get::<iot::Device>(&format!("{registry}/devices/{}", record.id), "", &[]).await {
                Ok(d) => d,
                Err(e) => return err(e),
            };
            match Record::from_device(&existing) {
                Ok(have) if have == record => Outcome::Unchanged,
                Ok(have) => Outcome::Failed(format!(
                    "conflict: the device exists with a different {}; left as it is",
                    record.differences(&have).join(", ")
                )),
                Err(e) => err(e),
            }
        }
        Err(e) => err(e),
    }
}

pub async fn import(args: ImportArgs, api: &Api, scope: &Registry, out: &Output) -> Result<()> {
    let format = FileFormat::of(Some(&args.file), args.file_format)?;
    let registry = scope.name()?;
    let lines = read_file(&args.file, format)?;
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{wide_bar} {pos}/{len} devices, {per_sec}, {eta} left")
    {
        bar.set_style(style);
    }
    let mut failures: Vec<(u64, String, String)> = Vec::new();
    let (mut created, mut unchanged) = (0u64, 0u64);
    let mut tasks = tokio::task::JoinSet::new();
    let mut tally = |line: u64, id: String, outcome: Outcome| {
        match outcome {
            Outcome::Created => created += 1,
            Outcome::Unchanged => unchanged += 1,
            Outcome::Failed(e) => failures.push((line, id, e)),
        }
        bar.inc(1);
    };
    let total = lines.len();
    for (line, record) in lines.into_iter().map(|(l, r)| (l, r.map_err(|e| format!("{e:#}")))) {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                tally(line, String::new(), Outcome::Failed(e));
                continue;
            }
        };
        // Bounded parallelism: wait for a slot before starting the next request.
        while tasks.len() >= usize::from(args.parallel) {
            if let Some(Ok((l, id, o))) = tasks.join_next().await {
                tally(l, id, o);
            }
        }
        let (api, registry) = (api.clone(), registry.clone());
        tasks.spawn(async move {
            let id = record.id.clone();
            (line, id, import_one(api, registry, record).await)
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok((l, id, o)) = done {
            tally(l, id, o);
        }
    }
    bar.finish_and_clear();
    failures.sort_by_key(|(line, _, _)| *line);
    if out.json() {
        let failed: Vec<Value> =
            failures.iter().map(|(line, id, e)| json!({"line": line, "id": id, "error": e})).collect();
        print_json(&json!({"created": created, "unchanged": unchanged, "failed": failed}));
    }
    for (line, id, e) in &failures {
        let who = if id.is_empty() { String::new() } else { format!(" (device {id})") };
        eprintln!("{}:{line}{who}: {e}", args.file.display());
    }
    status(format!(
        "Imported {total} lines into [{}]: {created} created, {unchanged} already there, {} failed.",
        registry,
        failures.len()
    ));
    if !failures.is_empty() {
        bail!("{} of {total} lines failed", failures.len());
    }
    Ok(())
}

pub async fn export(args: ExportArgs, api: &Api, scope: &Registry) -> Result<()> {
    let to_stdout = args.file.as_ref().is_none_or(|f| f.as_os_str() == "-");
    let format = FileFormat::of(args.file.as_deref().filter(|_| !to_stdout), args.file_format)?;
    let registry = scope.name()?;
    let mask = ("fieldMask", "credentials,metadata,blocked,gatewayConfig,logLevel".to_owned());
    let devices = api.list_all::<iot::ListDevicesResponse>(&registry, "/devices", &[mask], None).await?;
    let records = devices.iter().map(Record::from_device).collect::<Result<Vec<_>>>()?;

    let mut buf = Vec::new();
    match format {
        FileFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut buf);
            w.write_record(COLUMNS)?;
            for r in &records {
                w.write_record(r.csv_fields())?;
            }
            w.flush()?;
        }
        FileFormat::Jsonl => {
            for r in &records {
                writeln!(buf, "{}", r.json_line())?;
            }
        }
    }
    match args.file.filter(|_| !to_stdout) {
        None => super::stdout::write(&buf)?,
        Some(path) => {
            std::fs::write(&path, &buf).with_context(|| format!("cannot write {}", path.display()))?;
            status(format!("Exported {} devices of [{registry}] to {}.", records.len(), path.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_with_escapes() {
        let mut m = BTreeMap::new();
        m.insert("a".to_owned(), "x;y=z\\w".to_owned());
        m.insert("b".to_owned(), String::new());
        let s = format_metadata(&m);
        assert_eq!(s, "a=x\\;y=z\\\\w;b=");
        assert_eq!(parse_metadata(&s).unwrap(), m);
        assert!(parse_metadata("novalue").is_err());
        assert!(parse_metadata("a=1;a=2").is_err());
    }

    #[test]
    fn csv_lines_parse_with_defaults_and_errors() {
        let fields = |pairs: &[(&str, &str)]| -> Map<String, Value> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned()))).collect()
        };
        let pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----";
        let r = Record::parse(
            &fields(&[
                ("id", "d1"),
                ("key", pem),
                ("format", "es256"),
                ("metadata", "k=v"),
                ("gateway", "association-only"),
            ]),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(r.credentials[0].format, iot::PublicKeyFormat::Es256Pem);
        assert_eq!(r.gateway, Some(iot::GatewayAuthMethod::AssociationOnly));
        assert_eq!(r.csv_fields()[6], "association-only");
        assert!(!r.blocked);
        let e = Record::parse(&fields(&[("id", "d"), ("blocked", "maybe")]), Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("blocked"), "{e}");
        let e = Record::parse(
            &fields(&[("id", "d"), ("key", "missing.pem"), ("format", "es256")]),
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot read the key file"), "{e}");
    }
}
