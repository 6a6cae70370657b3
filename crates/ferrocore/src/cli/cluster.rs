//! `ferrocore cluster status`: the nodes of the cluster a server belongs to (`GET /v1/cluster`),
//! each with its connected devices, last heartbeat and listener addresses. Ferrocore's own
//! endpoint, with no message in `ferrocore_proto`: read as plain JSON, printed as it came with
//! `--format json`.

use super::api::Connection;
use super::output::{Column, Output, text};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// List the nodes the server hears from, itself included.
    Status,
}

const COLUMNS: &[Column] = &[
    ("NODE", |v| text(&v["nodeId"])),
    ("CONNECTIONS", |v| text(&v["connections"])),
    ("LAST_HEARTBEAT", |v| text(&v["lastHeartbeatTime"])),
    ("HTTP", |v| text(&v["httpAddress"])),
    ("MQTT", |v| text(&v["mqttAddress"])),
];

pub async fn run(args: ClusterArgs) -> Result<()> {
    let api = args.connection.api()?;
    match args.command {
        ClusterCommand::Status => {
            let list: Value = api.get("cluster", "", &[]).await?;
            let nodes = list["nodes"].as_array().cloned().unwrap_or_default();
            args.output.list(&nodes, COLUMNS)?;
        }
    }
    Ok(())
}
