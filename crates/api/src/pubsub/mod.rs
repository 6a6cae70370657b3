//! Google's Pub/Sub v1 API over [`ferrocore_pubsub::PubSub`]: gRPC ([`grpc`]) on the `--grpc`
//! listener and Google's REST mapping ([`rest`]) on `--http`, with one conversion layer
//! ([`convert`]) and one access rule ([`PubsubAccess`]).

pub mod convert;
pub mod grpc;
pub mod rest;

use crate::admin_auth::AdminToken;

/// Who may call the Pub/Sub API: the admin token, and with `anonymous` also calls that carry no
/// credentials at all (clients configured through `PUBSUB_EMULATOR_HOST` send none). A call that
/// carries any other credential — a device JWT, a wrong token — is refused either way.
#[derive(Clone, Debug)]
pub struct PubsubAccess {
    token: AdminToken,
    anonymous: bool,
}

impl PubsubAccess {
    pub fn new(token: AdminToken, anonymous: bool) -> Self {
        Self { token, anonymous }
    }

    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        match authorization {
            None => self.anonymous,
            Some(_) => self.token.accepts(authorization),
        }
    }
}

pub(crate) fn unauthenticated_status() -> tonic::Status {
    tonic::Status::unauthenticated(UNAUTHENTICATED_MESSAGE)
}

pub(crate) const UNAUTHENTICATED_MESSAGE: &str =
    "Request is missing or has an invalid admin token; send 'authorization: Bearer TOKEN' metadata.";
