//! End-to-end tests: the real server on port 0, driven over HTTP like a back end would.

mod activity_logs;
mod cli;
mod cli_ops;
mod cli_verbs;
mod crash;
mod device;
mod devices;
mod errors;
mod gateways;
mod grpc;
mod hardening_files;
mod hardening_grpc;
mod hardening_http;
mod hardening_mqtt;
mod harness;
mod http_bridge;
mod metrics;
mod mqtt;
mod pubsub_cli;
mod pubsub_grpc;
mod pubsub_rest;
mod quickstart;
mod registries;
mod rules;
mod sinks;
mod wait;
