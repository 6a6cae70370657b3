//! Fuzz target: the REST front door (`ferrocore_api::rest::fuzzing::transcode`): request target
//! parsing, the split between Cloud IoT, Pub/Sub and topic-log paths, Cloud IoT routing, query
//! checks, and Google's JSON mapping of every request body (pbjson), then the conversion into the
//! core's inputs.
//!
//! Input layout: `method: u8 | request target (e.g. /v1/projects/...?...) | 0x00 | body`.
//! The method is GET, POST, PUT, PATCH or DELETE (`method % 5`).
//!
//! Checks beyond "no panic": no request produces an INTERNAL error; in particular every body that
//! parses writes back out as JSON that parses into the same message.

#![no_main]

use ferrocore_api::rest::fuzzing::transcode;
use ferrocore_api::rest::route::Method;
use ferrocore_core::Code;
use libfuzzer_sys::fuzz_target;

const METHODS: [Method; 5] = [Method::Get, Method::Post, Method::Put, Method::Patch, Method::Delete];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let (target, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    // A request line is text; hyper refuses anything else before the router runs.
    let Ok(target) = std::str::from_utf8(target) else { return };
    if let Err(e) = transcode(METHODS[usize::from(m) % METHODS.len()], target, body) {
        assert_ne!(e.code, Code::Internal, "{target:?}: {}", e.message);
        assert!(!e.message.is_empty());
    }
});
