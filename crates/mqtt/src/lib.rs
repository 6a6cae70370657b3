//! Ferrocore's MQTT bridge: what devices running Cloud IoT Core firmware connect to.
//!
//! * [`server`]: the accept loop, TLS, the connection caps (in all and per source address), the
//!   CONNECT deadline, and the drain of every session on shutdown.
//! * [`session`]: one connected device: authentication, topics, QoS 1, keep-alive, token expiry,
//!   write deadlines, and the control messages (commands, config pushes, disconnects) the core
//!   sends it.
//! * [`gateway`]: what a gateway's session adds: the devices it attached, and its errors topic.
//! * `park`: the lot where quiet plain sessions wait without a task (Linux; elsewhere none park).
//! * [`tls`]: the TLS stream of the MQTT listener, which holds no buffer while a connection is
//!   idle.
//! * [`topic`]: Cloud IoT Core's topic layout, parsed into typed values.
//! * [`activity_log`]: the device activity log entries the sessions write.
//!
//! Protocol parsing lives in `ferrocore-mqtt-codec`; use cases (authentication, routing,
//! storage) in `ferrocore-core`. This crate only connects the two.

pub mod activity_log;
pub mod gateway;
#[cfg(target_os = "linux")]
mod park;
#[cfg(not(target_os = "linux"))]
#[path = "park_unsupported.rs"]
mod park;
pub mod server;
pub mod session;
pub mod tls;
pub mod topic;

pub use server::{MqttConfig, serve};
