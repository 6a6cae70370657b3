//! The Ferrocore server, as a library: configuration, the admin token, and [`server::run`], which
//! wires the store, the core and every listener together.
//!
//! The `ferrocore` binary is a thin command line over this; tests start the same server on
//! port-0 listeners.

pub mod cli;
pub mod datadir;
mod grpc_listener;
mod http_listener;
pub mod limits;
mod net;
pub mod secrets;
pub mod server;
pub mod tls;

/// Every program linking the server (the `ferrocore` binary, the bench server, the tests) allocates
/// through mimalloc: per-thread free lists instead of glibc's arenas and consolidation.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
