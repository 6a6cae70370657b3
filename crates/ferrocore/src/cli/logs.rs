//! `ferrocore logs read`: a registry's device activity logs
//! (`GET /v1/projects/P/locations/L/registries/R/logs`), oldest first, one line per entry, and
//! with `--follow` the entries logged after, polled from one `nextPageToken` to the next as
//! `events tail` follows a topic. Log entries are Cloud Logging's, with no message in
//! `ferrocore_proto`: they are read as plain JSON, and `--format json` prints each as it came.

use super::api::{Api, Connection, Registry};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use std::fmt::Write;
use std::time::Duration;

/// How long `--follow` waits before asking again when it has read everything.
const POLL: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(subcommand)]
    command: LogsCommand,
}

#[derive(Subcommand, Debug)]
enum LogsCommand {
    /// Print a registry's device activity log entries, oldest first.
    Read(ReadArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// One line per entry: time, severity, device, event type, status, topic.
    Text,
    /// One JSON object per line: the LogEntry as the REST API returns it.
    Json,
}

#[derive(Args, Debug)]
struct ReadArgs {
    #[command(flatten)]
    registry: Registry,
    /// Only this device's entries.
    #[arg(long)]
    device: Option<String>,
    /// Only entries at least this severe: DEBUG, INFO or ERROR.
    #[arg(long)]
    min_severity: Option<String>,
    /// Only entries of this event type (CONNECT, DISCONNECT, PUBLISH, SUBSCRIBE, CONFIG...).
    #[arg(long)]
    event_type: Option<String>,
    /// Only entries logged at or after this RFC 3339 time.
    #[arg(long)]
    start_time: Option<String>,
    /// Stop after this many entries.
    #[arg(long)]
    limit: Option<usize>,
    /// Keep printing entries as they are logged (Ctrl-C to stop).
    #[arg(long)]
    follow: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    connection: Connection,
}

pub async fn run(args: LogsArgs) -> Result<()> {
    match args.command {
        // `ferrocore logs read --follow | head` ends quietly, even between polls (see cli::stdout).
        LogsCommand::Read(a) => super::stdout::until_closed(read(a)).await,
    }
}

async fn read(args: ReadArgs) -> Result<()> {
    let api: Api = args.connection.api()?;
    let registry = args.registry.name()?;
    let mut query: Vec<(&str, String)> = Vec::new();
    for (key, value) in [
        ("deviceId", &args.device),
        ("minSeverity", &args.min_severity),
        ("eventType", &args.event_type),
        ("startTime", &args.start_time),
    ] {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    if args.limit == Some(0) {
        return Ok(());
    }
    let mut token = String::new();
    let mut printed = 0usize;
    loop {
        let page_size = args.limit.map_or(1000, |l| (l - printed).clamp(1, 1000));
        let mut q = query.clone();
        q.push(("pageSize", page_size.to_string()));
        if !token.is_empty() {
            q.push(("pageToken", token.clone()));
        }
        let page: Value = api.get(&registry, "/logs", &q).await?;
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        let mut batch = String::new();
        for e in &entries {
            match args.format {
                Format::Json => writeln!(batch, "{e}")?,
                Format::Text => writeln!(batch, "{}", text_line(e))?,
            }
        }
        super::stdout::write(batch).context("cannot write to stdout")?;
        printed += entries.len();
        if args.limit.is_some_and(|l| printed >= l) {
            return Ok(());
        }
        if let Some(t) = page["nextPageToken"].as_str().filter(|t| !t.is_empty()) {
            token = t.to_owned();
        }
        // A short page means everything logged so far was read.
        if entries.len() < page_size {
            if !args.follow {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn text_line(e: &Value) -> String {
    let p = &e["jsonPayload"];
    let status = match p["status"]["code"].as_i64() {
        Some(0) | None => "OK".to_owned(),
        Some(_) => format!(
            "{}: {}",
            p["status"]["description"].as_str().unwrap_or("ERROR"),
            p["status"]["message"].as_str().unwrap_or_default()
        ),
    };
    let mut line = format!(
        "{} {:<5} {} {} {}",
        e["timestamp"].as_str().unwrap_or("?"),
        e["severity"].as_str().unwrap_or("?"),
        p["deviceId"].as_str().unwrap_or("?"),
        p["eventType"].as_str().unwrap_or("?"),
        status,
    );
    for key in ["mqttTopic", "disconnectType", "delivery", "configVersion"] {
        if let Some(v) = p[key].as_str() {
            line.push_str(&format!(" {key}={v}"));
        }
    }
    if let Some(g) = p["gateway"]["id"].as_str() {
        line.push_str(&format!(" gateway={g}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_line_says_what_happened() {
        let e = serde_json::json!({
            "timestamp": "2026-01-01T00:00:00Z", "severity": "ERROR",
            "jsonPayload": {"deviceId": "d", "eventType": "DISCONNECT", "disconnectType": "SERVER",
                "status": {"code": 16, "description": "UNAUTHENTICATED", "message": "token expired"}},
        });
        assert_eq!(
            text_line(&e),
            "2026-01-01T00:00:00Z ERROR d DISCONNECT UNAUTHENTICATED: token expired disconnectType=SERVER"
        );
    }
}
