//! `ferrocore tokens create|list|revoke`: the API tokens (`fct_…`) of a project, each a principal
//! with one role on the project or on one registry (docs/iam.md). Only the owner (the admin
//! token) manages them; the server keeps only a token's hash, so a token is printed once, at
//! creation, and never listed.
//!
//! These endpoints are Ferrocore's own, with no message in `ferrocore_proto`: requests and
//! answers are plain JSON, and `--format json` prints the server's answer as it came.

use super::api::{Connection, Location};
use super::output::{Column, Output, emit, print_json, status, text};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

#[derive(Args, Debug)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: TokensCommand,
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    location: Location,
    #[command(flatten)]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Create a token and print it, alone on stdout: it is shown this once.
    Create {
        /// Who the token is, as an IAM member: `user:ana@example.com`,
        /// `serviceAccount:ingest@p.iam.gserviceaccount.com`...; policy bindings naming it apply.
        #[arg(long, value_name = "MEMBER")]
        principal: String,
        /// The role it holds, e.g. roles/cloudiot.viewer, roles/cloudiot.provisioner,
        /// roles/pubsub.subscriber (see docs/iam.md).
        #[arg(long)]
        role: String,
        /// Hold the role on this registry alone (id, or full name) instead of on the project.
        #[arg(long, value_name = "REGISTRY")]
        registry: Option<String>,
    },
    /// List the tokens of a project (never their values).
    List,
    /// Revoke a token: it is refused from now on.
    Revoke {
        /// The token's id (as `create` and `list` show it).
        id: String,
    },
}

const COLUMNS: &[Column] = &[
    ("ID", |t| text(&t["id"])),
    ("PRINCIPAL", |t| text(&t["principal"])),
    ("ROLE", |t| text(&t["role"])),
    ("REGISTRY", |t| text(&t["registry"])),
    ("CREATED", |t| text(&t["createTime"])),
];

pub async fn run(args: TokensArgs) -> Result<()> {
    let api = args.connection.api()?;
    let (location, out) = (&args.location, &args.output);
    let parent = format!("projects/{}", location.project()?);
    match args.command {
        TokensCommand::Create { principal, role, registry } => {
            let mut body = Map::new();
            body.insert("principal".into(), principal.into());
            body.insert("role".into(), role.into());
            if let Some(r) = &registry {
                body.insert("registry".into(), location.registry(r)?.into());
            }
            let created: Value = api.post(&parent, "/tokens", &Value::Object(body)).await?;
            let token = created["token"].as_str().unwrap_or_default();
            if token.is_empty() {
                anyhow::bail!(
                    "the server answered without a token (is {} a Ferrocore server?)",
                    args.connection.server
                );
            }
            let scope = match created["registry"].as_str() {
                Some(r) if !r.is_empty() => r.to_owned(),
                _ => parent.clone(),
            };
            status(format!(
                "Created token [{}] for {} with {} on {scope}. It is shown only now.",
                text(&created["id"]),
                text(&created["principal"]),
                text(&created["role"]),
            ));
            if out.json() {
                print_json(&created);
            } else {
                emit(format!("{token}\n"));
            }
        }
        TokensCommand::List => {
            let list: Value = api.get(&parent, "/tokens", &[]).await?;
            let items = list["tokens"].as_array().cloned().unwrap_or_default();
            out.list(&items, COLUMNS)?;
        }
        TokensCommand::Revoke { id } => {
            if id.is_empty() || id.contains('/') {
                anyhow::bail!("'{id}' is not a token id (see `ferrocore tokens list`)");
            }
            let answer: Value = api.delete(&format!("{parent}/tokens/{id}")).await?;
            status(format!("Revoked token [{id}]."));
            if out.json() {
                out.resource(&answer)?;
            }
        }
    }
    Ok(())
}
