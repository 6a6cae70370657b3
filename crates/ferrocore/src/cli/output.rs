//! How the client commands print: aligned tables for people, JSON for scripts.
//!
//! Data goes to stdout; confirmations ("Created device [d].") and progress go to stderr, so that
//! `--format json` output can be piped as it is.

use anyhow::{Context, Result};
use base64::Engine;
use clap::{Args, ValueEnum};
use comfy_table::{Table, TableStyle};
use ferrocore_proto::wkt::Timestamp;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

/// A table column: its header, and how a cell is taken from an item (a typed message, or plain
/// JSON for the Ferrocore-only endpoints).
pub type Column<T = Value> = (&'static str, fn(&T) -> String);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns, for reading.
    #[default]
    Table,
    /// The server's JSON resources (lists as one array), for scripts.
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct Output {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
}

impl Output {
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// Prints `resource` as JSON, or as a field/value table.
    pub fn resource(&self, resource: &impl Serialize) -> Result<()> {
        let value = to_json(resource)?;
        if self.json() {
            print_json(&value);
        } else {
            emit(describe(&value));
        }
        Ok(())
    }

    /// Prints a list: a JSON array, or a table of `columns` picked from each item.
    pub fn list<T: Serialize>(&self, items: &[T], columns: &[Column<T>]) -> Result<()> {
        if self.json() {
            print_json(&to_json(items)?);
            return Ok(());
        }
        if items.is_empty() {
            eprintln!("Listed 0 items.");
            return Ok(());
        }
        let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
        let rows = items.iter().map(|item| columns.iter().map(|(_, f)| f(item)).collect()).collect();
        emit(table(&headers, rows));
        Ok(())
    }
}

/// A message as a JSON value, in Google's JSON mapping. Through a [`Value`], whose objects keep
/// their keys sorted: output has the key order it had when the server's answer was printed as it
/// came, and map fields (metadata, attributes, labels: `HashMap`s) print in a stable order.
fn to_json(message: &(impl Serialize + ?Sized)) -> Result<Value> {
    serde_json::to_value(message).context("cannot print the server's answer as JSON")
}

/// Tells the user what was done (stderr, so JSON on stdout stays clean).
pub fn status(message: impl std::fmt::Display) {
    eprintln!("{message}");
}

pub fn print_json(value: &Value) {
    emit(format!("{}\n", serde_json::to_string_pretty(value).unwrap_or_default()));
}

/// Writes data to stdout ([`super::stdout::write`]: a closed pipe ends the process quietly). Any
/// other failure to write is the command's failure: one error line and exit code 1.
pub fn emit(text: impl AsRef<[u8]>) {
    if let Err(e) = super::stdout::write(text) {
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Columns separated by two spaces, an upper-case header, no borders: the look of `gcloud`.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(TableStyle::new());
    if !headers.is_empty() {
        t.set_header(headers.to_vec());
    }
    t.add_rows(rows);
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    let mut out = t.trim_fmt();
    out.push('\n');
    out
}

/// A resource as a two-column table of dotted field paths and values.
pub fn describe(value: &Value) -> String {
    let mut rows = Vec::new();
    flatten("", value, &mut rows);
    if rows.is_empty() {
        return String::new();
    }
    table(&[], rows.into_iter().map(|(k, v)| vec![k, v]).collect())
}

fn flatten(path: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    let field = path.rsplit('.').next().unwrap_or(path);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                flatten(&p, v, rows);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{path}[{i}]"), v, rows);
            }
        }
        // Bytes fields are base64 on the wire; most configs and states are text.
        Value::String(s) if field == "binaryData" => rows.push((path.to_owned(), shorten(&payload_text(s), 100))),
        Value::String(s) => rows.push((path.to_owned(), first_line(s))),
        other => rows.push((path.to_owned(), other.to_string())),
    }
}

/// A multi-line value (a PEM key) as its first line and the number of lines left out.
fn first_line(s: &str) -> String {
    let mut lines = s.trim_end().lines();
    let first = lines.next().unwrap_or_default().to_owned();
    match lines.count() {
        0 => first,
        n => format!("{first} (+{n} lines)"),
    }
}

/// Decodes base64 bytes: the text when it is printable UTF-8, else `base64:...` as given.
pub fn payload_text(b64: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
    printable(&bytes).unwrap_or_else(|| format!("base64:{b64}"))
}

/// Bytes as [`payload_text`] shows them: the text when printable UTF-8, else `base64:...`.
pub fn bytes_text(bytes: &[u8]) -> String {
    printable(bytes).unwrap_or_else(|| format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

fn printable(bytes: &[u8]) -> Option<String> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\t' && c != '\n') => Some(s.to_owned()),
        _ => None,
    }
}

/// Cuts `s` to `max` characters, marking the cut.
pub fn shorten(s: &str, max: usize) -> String {
    let one_line = s.replace('\n', "\\n");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// A timestamp field as the API writes it (RFC 3339, UTC), or "" when unset.
pub fn time(t: &Option<Timestamp>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

/// A number field, or "" for 0: Google's JSON leaves default values out, and a cell shows what
/// the JSON holds.
pub fn number(n: impl Into<i128>) -> String {
    match n.into() {
        0 => String::new(),
        n => n.to_string(),
    }
}

/// A map field as `k=v,k2=v2`, sorted by key.
pub fn pairs(map: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = map.iter().collect();
    pairs.sort_unstable();
    pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A JSON string field, or "" when absent.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_without_borders() {
        let t = table(&["ID", "NUM_ID"], vec![vec!["a".into(), "1".into()], vec!["longer".into(), "22".into()]]);
        assert_eq!(t, "ID      NUM_ID\na       1\nlonger  22\n");
    }

    #[test]
    fn a_typed_device_prints_what_the_server_wrote() {
        let t = "2024-05-01T12:00:00.123Z";
        let wrote = json!({
            "id": "d", "name": "projects/p/locations/l/registries/r/devices/d", "numId": "123",
            "credentials": [{"publicKey": {"format": "ES256_PEM", "key": "K"}, "expirationTime": t}],
            "lastHeartbeatTime": t, "lastEventTime": t, "lastStateTime": t, "lastConfigAckTime": t,
            "lastConfigSendTime": t, "blocked": true, "lastErrorTime": t,
            "lastErrorStatus": {"code": 9, "message": "m"},
            "config": {"version": "2", "cloudUpdateTime": t, "deviceAckTime": t, "binaryData": "aGk="},
            "state": {"updateTime": t, "binaryData": "AAEC"}, "logLevel": "DEBUG",
            "metadata": {"b": "2", "a": "1"},
            "gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY",
                "lastAccessedGatewayId": "g", "lastAccessedGatewayTime": t},
        });
        let device: ferrocore_proto::iot::Device = serde_json::from_value(wrote.clone()).unwrap();
        assert_eq!(to_json(&device).unwrap(), wrote);
        // A field the message does not know is refused, not dropped.
        let mut more = wrote;
        more["futureField"] = json!(1);
        assert!(serde_json::from_value::<ferrocore_proto::iot::Device>(more).is_err());
    }

    #[test]
    fn describe_flattens_and_decodes() {
        let d = describe(&json!({"id": "d", "config": {"version": "2", "binaryData": "aGk="},
            "credentials": [{"publicKey": {"key": "-----BEGIN X-----\nAAA\n-----END X-----\n"}}]}));
        let lines: Vec<Vec<&str>> = d.lines().map(|l| l.split_whitespace().collect()).collect();
        assert!(lines.contains(&vec!["config.binaryData", "hi"]), "{d}");
        assert!(lines.contains(&vec!["credentials[0].publicKey.key", "-----BEGIN", "X-----", "(+2", "lines)"]), "{d}");
        assert_eq!(payload_text("AAEC"), "base64:AAEC");
        assert_eq!(bytes_text(&[0, 1, 2]), "base64:AAEC");
        assert_eq!(bytes_text(b"hi"), "hi");
        assert_eq!(shorten("abcdef", 4), "abc…");
    }
}
