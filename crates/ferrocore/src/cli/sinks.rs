//! `ferrocore sinks list`: the external sinks of a running server (`GET /v1/sinks`), with their
//! state, lag and last error. The endpoint is Ferrocore's own, with no message in
//! `ferrocore_proto`: its answer is read as plain JSON, and `--format json` prints it as it came.

use super::api::Connection;
use super::output::{Column, Output, shorten, text};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct SinksArgs {
    #[command(subcommand)]
    command: SinksCommand,
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum SinksCommand {
    /// List the sinks the server forwards topics to (`--sink`), with state and lag.
    List,
}

const COLUMNS: &[Column] = &[
    ("NAME", |v| text(&v["name"])),
    ("TOPICS", |v| text(&v["topics"])),
    ("URL", |v| shorten(&text(&v["url"]), 60)),
    ("STATE", |v| text(&v["state"])),
    ("FORWARDED", |v| text(&v["forwardedMessages"])),
    ("LAG_MESSAGES", |v| text(&v["lagMessages"])),
    ("LAG_SECONDS", |v| text(&v["lagSeconds"])),
    ("LOST", |v| text(&v["lostMessages"])),
    ("LAST_ERROR", |v| shorten(&text(&v["lastError"]), 80)),
];

pub async fn run(args: SinksArgs) -> Result<()> {
    let api = args.connection.api()?;
    match args.command {
        SinksCommand::List => {
            let list: Value = api.get("sinks", "", &[]).await?;
            let items = list["sinks"].as_array().cloned().unwrap_or_default();
            if args.output.json() || !items.is_empty() {
                args.output.list(&items, COLUMNS)?;
            } else {
                eprintln!("The server forwards to no sinks (see --sink).");
            }
        }
    }
    Ok(())
}
