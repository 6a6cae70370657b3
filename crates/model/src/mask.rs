//! Field masks: which device fields a read returns, and which fields an update replaces.
//!
//! Paths are accepted in snake_case or lowerCamelCase, comma-separated, as Google's FieldMask JSON
//! form allows. A read path into a sub-message (`config.version`) selects its whole top-level field.

use crate::Invalid;

/// Converts `lowerCamel` to `snake_case`; snake_case input passes through unchanged.
pub fn to_snake(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a FieldMask string into snake_case paths, dropping empty entries.
pub fn parse_paths(mask: &str) -> Vec<String> {
    mask.split(',').map(str::trim).filter(|p| !p.is_empty()).map(to_snake).collect()
}

macro_rules! device_fields {
    ($($variant:ident = $path:literal),+ $(,)?) => {
        /// The top-level fields of a Device, as read masks name them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum DeviceField { $($variant),+ }

        impl DeviceField {
            pub const ALL: &'static [DeviceField] = &[$(DeviceField::$variant),+];

            pub fn path(self) -> &'static str {
                match self { $(DeviceField::$variant => $path),+ }
            }

            fn from_path(p: &str) -> Option<Self> {
                match p { $($path => Some(DeviceField::$variant),)+ _ => None }
            }
        }
    };
}

device_fields!(
    Id = "id",
    Name = "name",
    NumId = "num_id",
    Credentials = "credentials",
    LastHeartbeatTime = "last_heartbeat_time",
    LastEventTime = "last_event_time",
    LastStateTime = "last_state_time",
    LastConfigAckTime = "last_config_ack_time",
    LastConfigSendTime = "last_config_send_time",
    Blocked = "blocked",
    LastErrorTime = "last_error_time",
    LastErrorStatus = "last_error_status",
    Config = "config",
    State = "state",
    LogLevel = "log_level",
    Metadata = "metadata",
    GatewayConfig = "gateway_config",
);

/// A set of device fields to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceReadMask(u32);

impl DeviceReadMask {
    pub const ALL: DeviceReadMask = DeviceReadMask(u32::MAX);

    /// What `devices.list` returns: the ids always, plus whatever the mask names. `name` is
    /// included too, since clients address devices by it.
    pub fn for_list(mask: Option<&str>) -> Result<Self, Invalid> {
        let base = Self::of(&[DeviceField::Id, DeviceField::NumId, DeviceField::Name]);
        Ok(match mask {
            Some(m) => Self(base.0 | Self::parse("field_mask", m)?.unwrap_or(base).0),
            None => base,
        })
    }

    /// What `devices.get` returns: everything when the mask is absent or empty.
    pub fn for_get(mask: Option<&str>) -> Result<Self, Invalid> {
        Ok(match mask {
            Some(m) => Self::parse("field_mask", m)?.unwrap_or(Self::ALL),
            None => Self::ALL,
        })
    }

    pub fn of(fields: &[DeviceField]) -> Self {
        Self(fields.iter().fold(0, |acc, f| acc | 1 << (*f as u8)))
    }

    /// Parses a mask string; `Ok(None)` when it names no path at all.
    fn parse(field: &str, mask: &str) -> Result<Option<Self>, Invalid> {
        let paths = parse_paths(mask);
        if paths.is_empty() {
            return Ok(None);
        }
        let mut set = 0u32;
        for p in &paths {
            let top = p.split('.').next().unwrap_or(p);
            let f = DeviceField::from_path(top).ok_or_else(|| {
                Invalid::new(
                    field,
                    format!("Invalid field mask path '{}': Device has no such field.", crate::ids::printable(p)),
                )
            })?;
            set |= 1 << (f as u8);
        }
        Ok(Some(Self(set)))
    }

    pub fn contains(self, f: DeviceField) -> bool {
        self.0 & (1 << (f as u8)) != 0
    }
}

/// The device fields an update mask may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceUpdateField {
    Credentials,
    Blocked,
    Metadata,
    LogLevel,
    GatewayAuthMethod,
}

const DEVICE_MUTABLE: &str =
    "['blocked', 'credentials', 'gateway_config.gateway_auth_method', 'log_level', 'metadata']";

/// Parses a device update mask. It must name at least one path, and only mutable ones.
pub fn parse_device_update_mask(mask: &str) -> Result<Vec<DeviceUpdateField>, Invalid> {
    let paths = parse_paths(mask);
    if paths.is_empty() {
        return Err(Invalid::new(
            "update_mask",
            format!("The update_mask must name at least one field; mutable fields are {DEVICE_MUTABLE}."),
        ));
    }
    let mut out = Vec::with_capacity(paths.len());
    for p in &paths {
        let f = match p.as_str() {
            "credentials" => DeviceUpdateField::Credentials,
            "blocked" => DeviceUpdateField::Blocked,
            "metadata" => DeviceUpdateField::Metadata,
            "log_level" => DeviceUpdateField::LogLevel,
            "gateway_config.gateway_auth_method" => DeviceUpdateField::GatewayAuthMethod,
            other => {
                return Err(Invalid::new(
                    "update_mask",
                    format!(
                        "The field '{}' cannot be updated; the update_mask may only contain {DEVICE_MUTABLE}.",
                        crate::ids::printable(other)
                    ),
                ));
            }
        };
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

/// The registry fields an update mask may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryUpdateField {
    EventNotificationConfigs,
    StateNotificationConfig,
    MqttConfig,
    HttpConfig,
    LogLevel,
    Credentials,
}

const REGISTRY_MUTABLE: &str = "['credentials', 'event_notification_configs', 'http_config', 'log_level', 'mqtt_config', 'state_notification_config']";

/// Parses a registry update mask. Sub-field paths (`mqtt_config.mqtt_enabled_state`) select their
/// whole top-level field, as gcloud and Terraform sent them.
pub fn parse_registry_update_mask(mask: &str) -> Result<Vec<RegistryUpdateField>, Invalid> {
    let paths = parse_paths(mask);
    if paths.is_empty() {
        return Err(Invalid::new(
            "update_mask",
            format!("The update_mask must name at least one field; mutable fields are {REGISTRY_MUTABLE}."),
        ));
    }
    let mut out = Vec::with_capacity(paths.len());
    for p in &paths {
        let f = match p.as_str() {
            "event_notification_configs" | "event_notification_config" => RegistryUpdateField::EventNotificationConfigs,
            "state_notification_config" | "state_notification_config.pubsub_topic_name" => {
                RegistryUpdateField::StateNotificationConfig
            }
            "mqtt_config" | "mqtt_config.mqtt_enabled_state" => RegistryUpdateField::MqttConfig,
            "http_config" | "http_config.http_enabled_state" => RegistryUpdateField::HttpConfig,
            "log_level" => RegistryUpdateField::LogLevel,
            "credentials" => RegistryUpdateField::Credentials,
            other => {
                return Err(Invalid::new(
                    "update_mask",
                    format!(
                        "The field '{}' cannot be updated; the update_mask may only contain {REGISTRY_MUTABLE}.",
                        crate::ids::printable(other)
                    ),
                ));
            }
        };
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_masks_accept_both_spellings() {
        let m = DeviceReadMask::for_get(Some("lastHeartbeatTime, config.version")).unwrap();
        assert!(m.contains(DeviceField::LastHeartbeatTime));
        assert!(m.contains(DeviceField::Config));
        assert!(!m.contains(DeviceField::Metadata));
        assert_eq!(DeviceReadMask::for_get(Some("")).unwrap(), DeviceReadMask::ALL);
        assert!(DeviceReadMask::for_get(Some("nope")).is_err());
        let l = DeviceReadMask::for_list(None).unwrap();
        assert!(l.contains(DeviceField::NumId) && !l.contains(DeviceField::Config));
    }

    #[test]
    fn update_masks_refuse_immutable_fields() {
        assert_eq!(
            parse_device_update_mask("blocked,gatewayConfig.gatewayAuthMethod").unwrap(),
            vec![DeviceUpdateField::Blocked, DeviceUpdateField::GatewayAuthMethod]
        );
        assert!(parse_device_update_mask("id").unwrap_err().message.contains("may only contain"));
        assert!(parse_device_update_mask("gateway_config.gateway_type").is_err());
        assert!(parse_device_update_mask(" , ").is_err());
        assert_eq!(
            parse_registry_update_mask("mqttConfig.mqttEnabledState,logLevel").unwrap(),
            vec![RegistryUpdateField::MqttConfig, RegistryUpdateField::LogLevel]
        );
        assert!(parse_registry_update_mask("id").is_err());
    }
}
