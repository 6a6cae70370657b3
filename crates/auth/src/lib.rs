//! Device authentication for Ferrocore.
//!
//! Today this crate checks device credentials as the API receives them: device public keys
//! (`RSA_PEM`, `ES256_PEM`, `RSA_X509_PEM`, `ES256_X509_PEM`), registry CA certificates, and
//! whether a device certificate was issued by a registry CA (see [`credentials`]). Verification
//! of the JWTs devices present to the MQTT and HTTP bridges will live here too.

pub mod credentials;

pub use credentials::{
    DeviceKey, KeyAlgorithm, KeyError, ParsedCertificate, check_device_key, is_issued_by, parse_ca_certificate,
};
