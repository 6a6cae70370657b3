//! Cloud IoT Core's MQTT topics, parsed into typed values before anything acts on them.
//!
//! Devices publish to `/devices/{id}/events[/subfolder...]` and `/devices/{id}/state`, and
//! subscribe to `/devices/{id}/config` and `/devices/{id}/commands/#`; gateways also publish
//! `/devices/{id}/attach` and `/devices/{id}/detach` and subscribe `/devices/{gateway}/errors`.
//! Anything else is refused.

/// A topic a device may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishTopic<'a> {
    Events { device: &'a str, subfolder: &'a str },
    State { device: &'a str },
    Attach { device: &'a str },
    Detach { device: &'a str },
}

/// A topic filter a device may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeTopic<'a> {
    Config { device: &'a str },
    Commands { device: &'a str },
    Errors { device: &'a str },
}

fn device_and_rest(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("/devices/")?;
    match rest.split_once('/') {
        Some((device, tail)) if !device.is_empty() => Some((device, tail)),
        _ => None,
    }
}

pub fn parse_publish(topic: &str) -> Option<PublishTopic<'_>> {
    let (device, tail) = device_and_rest(topic)?;
    match tail {
        "events" => Some(PublishTopic::Events { device, subfolder: "" }),
        "state" => Some(PublishTopic::State { device }),
        "attach" => Some(PublishTopic::Attach { device }),
        "detach" => Some(PublishTopic::Detach { device }),
        _ => {
            let subfolder = tail.strip_prefix("events/")?;
            // Empty levels (`events//x`, a trailing `/`) do not name a subfolder.
            (!subfolder.is_empty() && !subfolder.split('/').any(str::is_empty))
                .then_some(PublishTopic::Events { device, subfolder })
        }
    }
}

pub fn parse_subscribe(filter: &str) -> Option<SubscribeTopic<'_>> {
    let (device, tail) = device_and_rest(filter)?;
    if device.contains(['+', '#']) {
        return None;
    }
    match tail {
        "config" => Some(SubscribeTopic::Config { device }),
        "commands/#" => Some(SubscribeTopic::Commands { device }),
        "errors" => Some(SubscribeTopic::Errors { device }),
        _ => None,
    }
}

/// For a topic no publish rule accepts: whether devices subscribe to it instead (a PUBLISH of
/// the wrong type, rather than an unknown topic).
pub fn is_subscribe_topic(topic: &str) -> bool {
    device_and_rest(topic)
        .is_some_and(|(_, tail)| matches!(tail, "config" | "errors" | "commands") || tail.starts_with("commands/"))
}

/// For a filter no subscribe rule accepts: whether devices publish to it instead.
pub fn is_publish_topic(filter: &str) -> bool {
    parse_publish(filter).is_some()
}

/// The topic a command arrives on.
pub fn command_topic(device: &str, subfolder: &str) -> String {
    if subfolder.is_empty() {
        format!("/devices/{device}/commands")
    } else {
        format!("/devices/{device}/commands/{subfolder}")
    }
}

pub fn config_topic(device: &str) -> String {
    format!("/devices/{device}/config")
}

pub fn errors_topic(gateway: &str) -> String {
    format!("/devices/{gateway}/errors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(parse_publish("/devices/d1/events"), Some(PublishTopic::Events { device: "d1", subfolder: "" }));
        assert_eq!(
            parse_publish("/devices/d1/events/a/b"),
            Some(PublishTopic::Events { device: "d1", subfolder: "a/b" })
        );
        assert_eq!(parse_publish("/devices/d1/state"), Some(PublishTopic::State { device: "d1" }));
        for bad in [
            "devices/d1/events",
            "/devices//events",
            "/devices/d1/events/",
            "/devices/d1/events//x",
            "/devices/d1/other",
            "/devices/d1",
        ] {
            assert_eq!(parse_publish(bad), None, "{bad}");
        }
        assert_eq!(parse_subscribe("/devices/d1/commands/#"), Some(SubscribeTopic::Commands { device: "d1" }));
        assert_eq!(parse_subscribe("/devices/d1/config"), Some(SubscribeTopic::Config { device: "d1" }));
        for bad in ["/devices/d1/commands/x", "/devices/+/config", "/devices/d1/commands", "#"] {
            assert_eq!(parse_subscribe(bad), None, "{bad}");
        }
        assert_eq!(parse_publish("/devices/d1/attach"), Some(PublishTopic::Attach { device: "d1" }));
        assert_eq!(parse_publish("/devices/d1/detach"), Some(PublishTopic::Detach { device: "d1" }));
        assert_eq!(parse_subscribe("/devices/gw/errors"), Some(SubscribeTopic::Errors { device: "gw" }));
        for sub in ["/devices/d/config", "/devices/d/commands", "/devices/d/commands/x", "/devices/d/errors"] {
            assert!(is_subscribe_topic(sub), "{sub}");
        }
        for other in ["/devices/d/other", "/x/d/config", "/devices/d/events"] {
            assert!(!is_subscribe_topic(other), "{other}");
        }
        assert!(is_publish_topic("/devices/d/state") && !is_publish_topic("/devices/d/config"));
        assert_eq!(command_topic("d", ""), "/devices/d/commands");
        assert_eq!(command_topic("d", "a/b"), "/devices/d/commands/a/b");
    }
}
