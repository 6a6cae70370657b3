//! Fuzz target: the Pub/Sub inputs a subscriber controls that are parsed by hand, not by serde:
//! subscription filters (`ferrocore_pubsub::filter::Filter`) and ack ids.
//!
//! Input layout: `filter text | 0x00 | attributes`, where attributes are records separated by
//! 0x01, each `key 0x02 value` (all lossily made UTF-8, as JSON strings always are).
//!
//! Checks beyond "no panic": a filter longer than 256 bytes is refused; a parsed filter evaluates
//! the same inside parentheses and to the opposite under `NOT` (whenever those still parse, which
//! they must unless the nesting limit or the length limit is what refused them); an accepted ack
//! id re-encodes to one that parses to the same id and is no longer than the input.

#![no_main]

use ferrocore_pubsub::filter::{Filter, MAX_FILTER_BYTES};
use ferrocore_pubsub::fuzz_ack_id;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, attrs) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let attrs: Vec<(String, String)> = if attrs.is_empty() {
        Vec::new()
    } else {
        attrs
            .split(|&b| b == 1)
            .map(|rec| {
                let (k, v) = match rec.iter().position(|&b| b == 2) {
                    Some(i) => (&rec[..i], &rec[i + 1..]),
                    None => (rec, &[][..]),
                };
                (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned())
            })
            .collect()
    };

    if let Some((parts, encoded)) = fuzz_ack_id(&text) {
        assert!(encoded.len() <= text.len(), "{text:?} re-encoded longer as {encoded:?}");
        assert_eq!(fuzz_ack_id(&encoded), Some((parts, encoded.clone())), "{text:?}");
    }

    match Filter::parse(&text) {
        Ok(filter) => {
            assert!(text.len() <= MAX_FILTER_BYTES);
            let verdict = filter.matches_pairs(&attrs);
            assert_eq!(verdict, filter.matches(attrs.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
            for (wrapped, negated) in
                [(format!("({text})"), false), (format!("NOT ({text})"), true), (format!("-({text})"), true)]
            {
                match Filter::parse(&wrapped) {
                    Ok(w) => assert_eq!(w.matches_pairs(&attrs), verdict ^ negated, "{wrapped:?} on {attrs:?}"),
                    Err(e) => assert!(
                        wrapped.len() > MAX_FILTER_BYTES || e.message.contains("nested"),
                        "{text:?} parses but {wrapped:?} does not: {}",
                        e.message
                    ),
                }
            }
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
});
