//! Syntax rules of MQTT 3.1.1 topic names (what a PUBLISH names) and topic filters (what a
//! SUBSCRIBE asks for), MQTT 3.1.1 §4.7.

/// Longest string a 16-bit length prefix can carry.
pub(crate) const MAX_STRING_LEN: usize = u16::MAX as usize;

/// True if `name` may appear as the topic of a PUBLISH or a will: at least one byte, at most
/// 65,535, no wildcard character (`+`, `#`) and no U+0000.
///
/// The decoder already enforces this on every PUBLISH and will topic.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_STRING_LEN && !name.contains(['+', '#', '\0'])
}

/// True if `filter` is a well-formed topic filter: at least one byte, at most 65,535, no U+0000,
/// `+` only as a whole level (`a/+/c`, `+`, `+/b`, not `a+`), and `#` only as the whole last
/// level (`#`, `a/#`, not `a#` nor `a/#/b`).
///
/// The decoder only checks that filters are non-empty and free of U+0000, so that the server can
/// choose how to refuse a badly placed wildcard (MQTT says close the connection; a SUBACK 0x80 is
/// gentler). Use this function to make that choice.
pub fn is_valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_STRING_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if is_last => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for good in ["a", "/", "//", "/devices/d1/events", "a b", "ü/€", "$SYS/x", " "] {
            assert!(is_valid_topic_name(good), "{good:?}");
        }
        for bad in ["", "a/+", "#", "a/#", "a+b", "x\0y"] {
            assert!(!is_valid_topic_name(bad), "{bad:?}");
        }
        assert!(is_valid_topic_name(&"a".repeat(65_535)));
        assert!(!is_valid_topic_name(&"a".repeat(65_536)));
    }

    #[test]
    fn topic_filters() {
        let good = [
            "#",
            "+",
            "/",
            "+/+",
            "/+",
            "+/",
            "a/#",
            "a/+/c",
            "/devices/d1/commands/#",
            "/devices/d1/config",
            "sport/tennis/+/#",
            "//#",
            "+/#",
        ];
        for filter in good {
            assert!(is_valid_topic_filter(filter), "{filter:?}");
        }
        let bad = ["", "a#", "a/#/b", "#/", "#/a", "a+", "+a", "a/b+/c", "a/+b", "##", "++", "a/\0", "#+"];
        for filter in bad {
            assert!(!is_valid_topic_filter(filter), "{filter:?}");
        }
        assert!(!is_valid_topic_filter(&"a".repeat(65_536)));
    }
}
