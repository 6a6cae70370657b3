//! Ferrocore's admin API adapters over [`ferrocore_core::Core`].
//!
//! * [`rest`]: the Cloud IoT v1 REST/JSON API with Google's paths, JSON conventions and errors.
//! * [`admin_auth`]: bearer-token checks for admin requests.
//!
//! Adapters only translate: they parse wire input into the core's typed requests and render the
//! core's results and errors. No use-case logic lives here.

pub mod admin_auth;
pub mod rest;
