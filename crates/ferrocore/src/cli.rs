//! Client commands that talk to a running server over its REST API.
//!
//! * `ferrocore events tail`: follows a telemetry topic of the embedded topic log.
//!
//! The server is `--server` (default `http://127.0.0.1:8080`); the admin token comes from
//! `--token`, `FERROCORE_TOKEN`, or the local data directory's `admin-token`.

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Base URL of the server's REST API.
    #[arg(long, env = "FERROCORE_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// Admin token; by default FERROCORE_TOKEN, else DATA_DIR/admin-token.
    #[arg(long, env = "FERROCORE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Data directory to read the admin token from when none is given.
    #[arg(long, default_value = "./ferrocore-data", global = true)]
    pub data_dir: PathBuf,
}

impl Connection {
    fn token(&self) -> Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = self.data_dir.join(crate::secrets::TOKEN_FILE);
        crate::secrets::read_secret_file(&path)
            .with_context(|| format!("no --token or FERROCORE_TOKEN given, and {} is not readable", path.display()))
    }
}

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
        EventsCommand::Tail(args) => tail(args).await,
    }
}

async fn tail(args: TailArgs) -> Result<()> {
    let Some(rest) = args.topic.strip_prefix("projects/") else {
        bail!("the topic must look like projects/PROJECT/topics/TOPIC");
    };
    let token = args.connection.token()?;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/projects/{rest}/messages", args.connection.server.trim_end_matches('/'));
    let mut position = match args.from.as_str() {
        "earliest" | "latest" => format!("from={}", args.from),
        n => format!("offset={}", n.parse::<u64>().context("--from must be earliest, latest or an offset")?),
    };
    let wait = if args.no_follow { 0 } else { 30 };
    let stdout = std::io::stdout();
    loop {
        let resp = client
            .get(format!("{url}?{position}&maxMessages=500&waitSeconds={wait}"))
            .bearer_auth(&token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", args.connection.server))?;
        let status = resp.status();
        let body: Value = resp.json().await.context("the server's answer is not JSON")?;
        if !status.is_success() {
            bail!("{}: {}", status, body["error"]["message"].as_str().unwrap_or("request failed"));
        }
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let mut out = stdout.lock();
        for m in &messages {
            match args.format {
                Format::Json => writeln!(out, "{m}")?,
                Format::Text => writeln!(out, "{}", text_line(m))?,
            }
        }
        out.flush()?;
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
