//! How the client commands print: aligned tables for people, JSON for scripts.
//!
//! Data goes to stdout; confirmations ("Created device [d].") and progress go to stderr, so that
//! `--format json` output can be piped as it is.

use base64::Engine;
use clap::{Args, ValueEnum};
use comfy_table::{Table, TableStyle};
use serde_json::Value;

/// A table column: its header, and how a cell is taken from an item.
pub type Column = (&'static str, fn(&Value) -> String);

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

    /// Prints `value` as JSON, or as a field/value table.
    pub fn resource(&self, value: &Value) {
        if self.json() {
            print_json(value);
        } else {
            emit(describe(value));
        }
    }

    /// Prints a list: a JSON array, or a table of `columns` picked from each item.
    pub fn list(&self, items: &[Value], columns: &[Column]) {
        if self.json() {
            print_json(&Value::Array(items.to_vec()));
            return;
        }
        if items.is_empty() {
            eprintln!("Listed 0 items.");
            return;
        }
        let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
        let rows = items.iter().map(|item| columns.iter().map(|(_, f)| f(item)).collect()).collect();
        emit(table(&headers, rows));
    }
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
    match std::str::from_utf8(&bytes) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\t' && c != '\n') => s.to_owned(),
        _ => format!("base64:{b64}"),
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
    fn describe_flattens_and_decodes() {
        let d = describe(&json!({"id": "d", "config": {"version": "2", "binaryData": "aGk="},
            "credentials": [{"publicKey": {"key": "-----BEGIN X-----\nAAA\n-----END X-----\n"}}]}));
        let lines: Vec<Vec<&str>> = d.lines().map(|l| l.split_whitespace().collect()).collect();
        assert!(lines.contains(&vec!["config.binaryData", "hi"]), "{d}");
        assert!(lines.contains(&vec!["credentials[0].publicKey.key", "-----BEGIN", "X-----", "(+2", "lines)"]), "{d}");
        assert_eq!(payload_text("AAEC"), "base64:AAEC");
        assert_eq!(shorten("abcdef", 4), "abc…");
    }
}
