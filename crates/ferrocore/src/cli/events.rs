//! `ferrocore events tail`: follows a telemetry topic of the embedded topic log, long-polling
//! `GET /v1/projects/P/topics/T/messages` from one `nextOffset` to the next. The endpoint is
//! Ferrocore's own, with no message in `ferrocore_proto`: messages are read as plain JSON, and
//! `--format json` prints each as it came.

use super::api::Connection;
use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use std::fmt::Write;

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Print the messages of a topic, and keep following it.
    Tail(TailArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// One line per message: offset, time, attributes, payload (as text when printable).
    Text,
    /// One JSON object per line, as the REST API returns each message.
    Json,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    /// The topic, `projects/P/topics/T`.
    pub topic: String,
    /// Where to start: `earliest`, `latest`, or an offset.
    #[arg(long, default_value = "latest")]
    pub from: String,
    /// Stop after printing what is there instead of waiting for more.
    #[arg(long)]
    pub no_follow: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub connection: Connection,
}

pub async fn events(cmd: EventsCommand) -> Result<()> {
    match cmd {
        // Following a topic waits for long stretches: a reader gone meanwhile ends it at once.
        EventsCommand::Tail(args) => super::stdout::until_closed(tail(args)).await,
    }
}

async fn tail(args: TailArgs) -> Result<()> {
    let Some(rest) = args.topic.strip_prefix("projects/") else {
        bail!("the topic must look like projects/PROJECT/topics/TOPIC");
    };
    let token = args.connection.token()?;
    let client = args.connection.http_client()?;
    let url = format!("{}/v1/projects/{rest}/messages", args.connection.server.trim_end_matches('/'));
    let mut position = match args.from.as_str() {
        "earliest" | "latest" => format!("from={}", args.from),
        n => format!("offset={}", n.parse::<u64>().context("--from must be earliest, latest or an offset")?),
    };
    let wait = if args.no_follow { 0 } else { 30 };
    loop {
        let resp = client
            .get(format!("{url}?{position}&maxMessages=500&waitSeconds={wait}"))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| args.connection.send_error(e))?;
        let status = resp.status();
        let body: Value = resp.json().await.context("the server's answer is not JSON")?;
        if !status.is_success() {
            bail!("{}: {}", status, body["error"]["message"].as_str().unwrap_or("request failed"));
        }
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let mut batch = String::new();
        for m in &messages {
            match args.format {
                Format::Json => writeln!(batch, "{m}")?,
                Format::Text => writeln!(batch, "{}", text_line(m))?,
            }
        }
        super::stdout::write(batch).context("cannot write to stdout")?;
        let next = body["nextOffset"].as_str().context("the answer has no nextOffset")?;
        position = format!("offset={next}");
        if args.no_follow && messages.is_empty() {
            return Ok(());
        }
    }
}

fn text_line(m: &Value) -> String {
    let data =
        base64::engine::general_purpose::STANDARD.decode(m["data"].as_str().unwrap_or_default()).unwrap_or_default();
    let payload = match std::str::from_utf8(&data) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\t') => s.to_owned(),
        _ => format!("base64:{}", m["data"].as_str().unwrap_or_default()),
    };
    let attrs: Vec<String> = m["attributes"]
        .as_object()
        .map(|a| a.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    format!(
        "{} {} {} {}",
        m["offset"].as_str().unwrap_or("?"),
        m["publishTime"].as_str().unwrap_or("?"),
        attrs.join(","),
        payload
    )
}
