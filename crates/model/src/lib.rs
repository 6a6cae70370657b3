//! The Cloud IoT v1 data model, free of any wire format or storage concern.
//!
//! * [`ids`]: validated newtypes for every id and resource name (`projects/P/locations/L/...`).
//! * [`enums`]: the API's enums with their proto names and numbers.
//! * [`resources`]: registries, devices, credentials, configs and states.
//! * [`time`]: timestamps as nanoseconds since the Unix epoch, printed as RFC 3339 `...Z`.
//! * [`mask`]: field masks for device reads and updates.
//! * [`limits`]: the documented limits and the checks that enforce them.
//! * [`pubsub`]: topic and subscription names, topics, subscriptions, cursors and IAM policies.
//!
//! Everything here is validated once, at construction; code holding a value of these types can rely
//! on it.

pub mod enums;
pub mod ids;
pub mod limits;
pub mod mask;
pub mod pubsub;
pub mod resources;
pub mod time;

pub use enums::*;
pub use ids::*;
pub use resources::*;
pub use time::Timestamp;

/// A validation failure: which field, and what is wrong with it, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// The offending field as the API names it (snake_case path), e.g. `device.metadata`.
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}
