//! The device side of Ferrocore, written once for everything that plays a device: the simulator
//! (`ferrocore device simulate`), the load generator (`crates/bench`) and the end-to-end tests.
//!
//! - [`key`]: a device's private key (loaded from PEM or generated) and the JWTs it signs, as
//!   Cloud IoT Core firmware does (RS256 or ES256; `iat`, `exp`, and the project as `aud`).
//! - [`pem`]: PEM armour to DER and back.
//! - [`mqtt`]: a small MQTT 3.1.1 client over the workspace's codec, on any stream (TCP, TLS).
//! - [`tls`]: a rustls client configuration trusting a given CA, as devices trust the server's.
//!
//! Signing and TLS use aws-lc-rs, as the server does.

pub mod key;
pub mod mqtt;
pub mod pem;
pub mod tls;

pub use key::{Alg, DeviceKey, KeyError};
pub use mqtt::Client;
