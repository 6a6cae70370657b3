//! Device authentication for Ferrocore.
//!
//! * [`credentials`]: device credentials as the API receives them: device public keys (`RSA_PEM`,
//!   `ES256_PEM`, `RSA_X509_PEM`, `ES256_X509_PEM`), registry CA certificates, and whether a device
//!   certificate was issued by a registry CA.
//! * [`jwt`]: the JWTs devices present to the MQTT and HTTP bridges, verified against those
//!   credentials with IoT Core's rules.
//! * [`keycache`]: credential keys parsed once and kept, bounded, for the connects that follow.

pub mod credentials;
pub mod jwt;
pub mod keycache;
#[cfg(test)]
mod test_fixtures;

pub use credentials::{
    DeviceKey, KeyAlgorithm, KeyError, ParsedCertificate, check_device_key, is_issued_by, parse_ca_certificate,
};
