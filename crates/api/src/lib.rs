//! Ferrocore's admin API adapters over [`ferrocore_core::Core`].
//!
//! * [`service`]: every Device Manager RPC, once, on the wire messages of `ferrocore_proto`.
//! * [`rest`]: the Cloud IoT v1 REST/JSON API, transcoded onto [`service`].
//! * [`grpc`]: the gRPC service `google.cloud.iot.v1.DeviceManager` over [`service`].
//! * [`convert`]: wire types to and from the core's inputs and resources.
//! * [`authz`]: who may call what — authentication with `ferrocore_iam`, and the one table of
//!   the permission each method needs, shared by REST and gRPC.
//! * [`pubsub`]: Google's Pub/Sub v1 API (gRPC and REST) over `ferrocore_pubsub`.
//! * [`metrics`]: `GET /metrics` and the admin APIs' request metrics.
//!
//! Adapters only translate: no use-case logic lives here.

pub mod authz;
pub mod convert;
pub mod grpc;
pub mod metrics;
pub mod pubsub;
pub mod rest;
pub mod service;
