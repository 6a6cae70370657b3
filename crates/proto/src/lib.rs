//! The wire types of the Google APIs Ferrocore serves, shared by the REST and gRPC adapters:
//! Cloud IoT v1 ([`iot`]), Pub/Sub v1 ([`pubsub`]), and IAM v1 ([`iam`], the policy messages of
//! DeviceManager's IAM methods on registries and of the calls Pub/Sub clients make on topics and
//! subscriptions).
//!
//! Generated at build time from Ferrocore's own `.proto` files (in `proto/`): prost messages for
//! the gRPC wire, tonic server and client code for the `DeviceManager`, `Publisher`, `Subscriber`
//! and `IAMPolicy` services, and serde impls (pbjson) that follow Google's JSON mapping, so one
//! type serves both protocols and a field added once appears in both.
//!
//! JSON input accepts lowerCamelCase and proto field names, enum names or numbers, int64 as
//! strings or numbers, standard or URL-safe base64, and refuses unknown fields.

pub mod wkt;

/// Generated code, nested as the proto packages are so its relative paths resolve.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod google {
    pub mod cloud {
        pub mod iot {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/google.cloud.iot.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/google.cloud.iot.v1.serde.rs"));
            }
        }
    }
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
        include!(concat!(env!("OUT_DIR"), "/google.rpc.serde.rs"));
    }
    pub mod pubsub {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/google.pubsub.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/google.pubsub.v1.serde.rs"));
        }
    }
    pub mod iam {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/google.iam.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/google.iam.v1.serde.rs"));
        }
    }
    pub mod r#type {
        include!(concat!(env!("OUT_DIR"), "/google.r#type.rs"));
        include!(concat!(env!("OUT_DIR"), "/google.r#type.serde.rs"));
    }
}

pub use google::cloud::iot::v1 as iot;
pub use google::iam::v1 as iam;
pub use google::pubsub::v1 as pubsub;
pub use google::rpc;
pub use google::r#type;
pub use pbjson_types::{Any, Duration, Empty, FieldMask};

/// The encoded FileDescriptorSet, for gRPC reflection.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
