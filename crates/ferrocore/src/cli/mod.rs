//! The client side of the `ferrocore` binary: the verbs of `gcloud iot`, against a Ferrocore
//! server instead of Cloud IoT Core, and the helpers a first device needs.
//!
//! * `registries create|describe|list|update|delete` ([`registries`]);
//! * `devices create|describe|list|update|delete`, `devices configs|states|commands|gateways`
//!   ([`devices`]), `devices import|export` ([`import`]);
//! * `keys generate` ([`keys`]);
//! * `device simulate` ([`simulate`]);
//! * `events tail` ([`events`]);
//! * `logs read` ([`logs`]), a registry's device activity logs;
//! * `pubsub topics|subscriptions|pull` ([`pubsub`]), the verbs of `gcloud pubsub`;
//! * `sinks list` ([`sinks`]), the external sinks and how far behind they are;
//! * `cluster status` ([`cluster`]), the nodes of a cluster;
//! * `tokens create|list|revoke` ([`tokens`]), API tokens for other principals than the owner;
//! * `service-accounts create|list|describe|delete`, `service-accounts keys create|list|delete`
//!   ([`service_accounts`]), service accounts and their Google-format key files.
//!
//! The REST commands find the server with `--server`, `--token` and `--data-dir` ([`api`]).
//! Output is a table unless `--format json` ([`output`]). Any failure is one `error: ...` line on
//! stderr and exit code 1; clap's usage errors keep their own exit code 2.

pub mod api;
pub mod cluster;
pub mod devices;
pub mod events;
pub mod import;
pub mod keys;
pub mod logs;
pub mod output;
pub mod pubsub;
pub mod registries;
pub mod service_accounts;
pub mod simulate;
pub mod sinks;
pub mod stdout;
pub mod tokens;

pub use api::Connection;
pub use events::EventsCommand;

use clap::Subcommand;
use std::process::ExitCode;

/// The client commands, flattened into the binary's top-level commands beside `serve`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage device registries (like `gcloud iot registries`).
    Registries(registries::RegistriesArgs),
    /// Manage devices, their configs, states, commands and gateway bindings (like `gcloud iot devices`).
    Devices(devices::DevicesArgs),
    /// Create device key pairs and certificates.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Act as a device.
    Device {
        #[command(subcommand)]
        command: simulate::DeviceCommand,
    },
    /// Read telemetry topics from a running server.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Read device activity logs (connections, publishes, configs, errors) at each device's logLevel.
    Logs(logs::LogsArgs),
    /// Manage Pub/Sub topics and subscriptions, publish and pull (like `gcloud pubsub`).
    Pubsub(pubsub::PubsubArgs),
    /// Show the external sinks the server forwards topics to.
    Sinks(sinks::SinksArgs),
    /// Show the nodes of the cluster a server belongs to (`serve --cluster`).
    Cluster(cluster::ClusterArgs),
    /// Manage API tokens: a principal with one role on a project or a registry (see docs/iam.md).
    Tokens(tokens::TokensArgs),
    /// Manage service accounts and their key files (like `gcloud iam service-accounts`).
    ServiceAccounts(service_accounts::ServiceAccountsArgs),
}

/// Runs a client command to its end and turns any error into one line on stderr.
pub fn run(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Registries(args) => registries::run(args).await,
            Command::Devices(args) => devices::run(args).await,
            Command::Keys { command } => keys::run(command),
            Command::Device { command } => simulate::run(command).await,
            Command::Events { command } => events::events(command).await,
            Command::Logs(args) => logs::run(args).await,
            Command::Pubsub(args) => pubsub::run(args).await,
            Command::Sinks(args) => sinks::run(args).await,
            Command::Cluster(args) => cluster::run(args).await,
            Command::Tokens(args) => tokens::run(args).await,
            Command::ServiceAccounts(args) => service_accounts::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Stdout's reader went away (`| head`): not a failure (see [`stdout`]).
        Err(e) if stdout::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the causes on one line, never a Debug dump.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
