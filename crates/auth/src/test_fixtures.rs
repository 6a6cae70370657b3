//! The PEM fixtures in `tests/fixtures`, shared by the unit tests of this crate.

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/", $name))
    };
}
pub(crate) use fixture;

pub const RSA_PRIVATE: &str = fixture!("rsa_private.pem");
pub const RSA_PUBLIC: &str = fixture!("rsa_public.pem");
pub const RSA_CERT: &str = fixture!("rsa_cert.pem");
pub const EC_PRIVATE: &str = fixture!("ec_private.pem");
pub const EC_PUBLIC: &str = fixture!("ec_public.pem");
pub const EC_CERT: &str = fixture!("ec_cert.pem");
