//! Compiles Ferrocore's .proto files in pure Rust (protox; no system protoc) into prost messages,
//! tonic service code (server and client: IoT DeviceManager, Pub/Sub Publisher and Subscriber, IAM
//! IAMPolicy), and pbjson serde impls for Google's JSON mapping.

use prost::Message;
use std::error::Error;
use std::path::PathBuf;

// The roots; protox pulls in what they import (IoT resources, Pub/Sub schema, IAM policy and
// options, google.type.Expr, the well-known types), and all of it lands in `DESCRIPTORS`.
const PROTOS: &[&str] = &[
    "proto/google/cloud/iot/v1/device_manager.proto",
    "proto/google/rpc/error_details.proto",
    "proto/google/pubsub/v1/pubsub.proto",
    "proto/google/iam/v1/iam_policy.proto",
];

/// Packages that get serde impls following Google's JSON mapping.
const JSON_PACKAGES: &[&str] =
    &[".google.cloud.iot.v1", ".google.rpc", ".google.pubsub.v1", ".google.iam.v1", ".google.type"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = fds.encode_to_vec();
    std::fs::write(out.join("descriptors.bin"), &descriptors)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_well_known_types(true)
        // Message payloads travel as `Bytes` end to end (log, engine, wire) without copies.
        .bytes(".google.pubsub.v1.PubsubMessage.data")
        // Our Timestamp prints `...Z` as Google's JSON does; the other well-known types come from
        // pbjson-types, which already follow Google's JSON.
        .extern_path(".google.protobuf.Timestamp", "crate::wkt::Timestamp")
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .extern_path(".google.protobuf.Timestamp", "crate::wkt::Timestamp")
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(JSON_PACKAGES)?;
    Ok(())
}
