//! Conversions between the wire types (`ferrocore_proto`) and the core's inputs and resources.
//!
//! The only place that knows both sides; REST and gRPC go through the same functions.

use ferrocore_core::Error;
use ferrocore_core::devices::DeviceInput;
use ferrocore_core::registries::{RegistryFields, RegistryInput};
use ferrocore_model::mask::{DeviceField, DeviceReadMask};
use ferrocore_model::{self as model, ApiEnum, Timestamp};
use ferrocore_proto::iot;
use ferrocore_proto::wkt;

fn enum_in<T: ApiEnum>(field: &str, n: i32) -> Result<T, Error> {
    T::from_number(n).ok_or_else(|| Error::invalid(field, format!("Invalid value {n} for enum field '{field}'.")))
}

fn ts_in(field: &str, t: Option<wkt::Timestamp>) -> Result<Option<Timestamp>, Error> {
    t.map(|t| t.unix_nanos().map(Timestamp).ok_or_else(|| Error::invalid(field, "The timestamp is out of range.")))
        .transpose()
}

fn ts_out(t: Option<Timestamp>) -> Option<wkt::Timestamp> {
    t.map(|t| wkt::Timestamp::from_unix_nanos(t.0))
}

pub fn registry_input(r: iot::DeviceRegistry) -> Result<RegistryInput, Error> {
    let credentials = r
        .credentials
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("device_registry.credentials[{i}].public_key_certificate");
            let iot::registry_credential::Credential::PublicKeyCertificate(cert) = c
                .credential
                .ok_or_else(|| Error::invalid(&field, "Each credential needs a public_key_certificate."))?;
            Ok(model::RegistryCredential {
                format: enum_in(&format!("{field}.format"), cert.format)?,
                certificate: cert.certificate,
                x509_details: None,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(RegistryInput {
        id: r.id,
        name: r.name,
        fields: RegistryFields {
            event_notification_configs: r
                .event_notification_configs
                .into_iter()
                .map(|c| model::EventNotificationConfig {
                    subfolder_matches: c.subfolder_matches,
                    pubsub_topic_name: c.pubsub_topic_name,
                })
                .collect(),
            state_notification_config: r
                .state_notification_config
                .map(|s| model::StateNotificationConfig { pubsub_topic_name: s.pubsub_topic_name }),
            mqtt_state: enum_in(
                "device_registry.mqtt_config.mqtt_enabled_state",
                r.mqtt_config.map_or(0, |m| m.mqtt_enabled_state),
            )?,
            http_state: enum_in(
                "device_registry.http_config.http_enabled_state",
                r.http_config.map_or(0, |h| h.http_enabled_state),
            )?,
            log_level: enum_in("device_registry.log_level", r.log_level)?,
            credentials,
        },
    })
}

pub fn registry_out(r: &model::Registry) -> iot::DeviceRegistry {
    iot::DeviceRegistry {
        id: r.name.registry.to_string(),
        name: r.name.to_string(),
        event_notification_configs: r
            .event_notification_configs
            .iter()
            .map(|c| iot::EventNotificationConfig {
                subfolder_matches: c.subfolder_matches.clone(),
                pubsub_topic_name: c.pubsub_topic_name.clone(),
            })
            .collect(),
        state_notification_config: Some(iot::StateNotificationConfig {
            pubsub_topic_name: r
                .state_notification_config
                .as_ref()
                .map(|s| s.pubsub_topic_name.clone())
                .unwrap_or_default(),
        }),
        mqtt_config: Some(iot::MqttConfig { mqtt_enabled_state: r.mqtt_state.number() }),
        http_config: Some(iot::HttpConfig { http_enabled_state: r.http_state.number() }),
        log_level: r.log_level.number(),
        credentials: r
            .credentials
            .iter()
            .map(|c| iot::RegistryCredential {
                credential: Some(iot::registry_credential::Credential::PublicKeyCertificate(
                    iot::PublicKeyCertificate {
                        format: c.format.number(),
                        certificate: c.certificate.clone(),
                        x509_details: c.x509_details.as_ref().map(|d| iot::X509CertificateDetails {
                            issuer: d.issuer.clone(),
                            subject: d.subject.clone(),
                            start_time: ts_out(d.start_time),
                            expiry_time: ts_out(d.expiry_time),
                            signature_algorithm: d.signature_algorithm.clone(),
                            public_key_type: d.public_key_type.clone(),
                        }),
                    },
                )),
            })
            .collect(),
    }
}

/// Reads the client-settable fields of a device; output-only fields are ignored.
pub fn device_input(d: iot::Device) -> Result<DeviceInput, Error> {
    let credentials = d
        .credentials
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("device.credentials[{i}]");
            let iot::device_credential::Credential::PublicKey(key) = c
                .credential
                .ok_or_else(|| Error::invalid(format!("{field}.public_key"), "Each credential needs a public_key."))?;
            Ok(model::DeviceCredential {
                public_key: model::PublicKey {
                    format: enum_in(&format!("{field}.public_key.format"), key.format)?,
                    key: key.key,
                },
                expiration_time: ts_in(&format!("{field}.expiration_time"), c.expiration_time)?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let gateway = d.gateway_config.unwrap_or_default();
    Ok(DeviceInput {
        id: d.id,
        name: d.name,
        num_id: d.num_id,
        credentials,
        blocked: d.blocked,
        log_level: enum_in("device.log_level", d.log_level)?,
        metadata: d.metadata.into_iter().collect(),
        gateway_type: enum_in("device.gateway_config.gateway_type", gateway.gateway_type)?,
        gateway_auth_method: enum_in("device.gateway_config.gateway_auth_method", gateway.gateway_auth_method)?,
        config: d.config.map(|c| (c.version, c.binary_data)),
    })
}

pub fn config_out(c: &model::DeviceConfig) -> iot::DeviceConfig {
    iot::DeviceConfig {
        version: c.version,
        cloud_update_time: ts_out(c.cloud_update_time),
        device_ack_time: ts_out(c.device_ack_time),
        binary_data: c.binary_data.clone(),
    }
}

pub fn state_out(s: &model::DeviceState) -> iot::DeviceState {
    iot::DeviceState { update_time: ts_out(Some(s.update_time)), binary_data: s.binary_data.clone() }
}

/// Renders the fields `mask` selects; the others keep their default, which the wire omits.
pub fn device_out(d: &model::Device, mask: DeviceReadMask) -> iot::Device {
    use DeviceField as F;
    let has = |f| mask.contains(f);
    let a = &d.activity;
    let when = |f, v: Option<Timestamp>| if has(f) { ts_out(v) } else { None };
    iot::Device {
        id: if has(F::Id) { d.id.to_string() } else { String::new() },
        name: if has(F::Name) { d.name().to_string() } else { String::new() },
        num_id: if has(F::NumId) { d.num_id.0 } else { 0 },
        credentials: if has(F::Credentials) {
            d.credentials
                .iter()
                .map(|c| iot::DeviceCredential {
                    credential: Some(iot::device_credential::Credential::PublicKey(iot::PublicKeyCredential {
                        format: c.public_key.format.number(),
                        key: c.public_key.key.clone(),
                    })),
                    expiration_time: ts_out(c.expiration_time),
                })
                .collect()
        } else {
            vec![]
        },
        last_heartbeat_time: when(F::LastHeartbeatTime, a.last_heartbeat_time),
        last_event_time: when(F::LastEventTime, a.last_event_time),
        last_state_time: when(F::LastStateTime, a.last_state_time),
        last_config_ack_time: when(F::LastConfigAckTime, a.last_config_ack_time),
        last_config_send_time: when(F::LastConfigSendTime, a.last_config_send_time),
        blocked: has(F::Blocked) && d.blocked,
        last_error_time: when(F::LastErrorTime, a.last_error_time),
        last_error_status: if has(F::LastErrorStatus) {
            a.last_error_status.as_ref().map(|s| ferrocore_proto::rpc::Status {
                code: s.code,
                message: s.message.clone(),
                details: vec![],
            })
        } else {
            None
        },
        config: has(F::Config).then(|| config_out(&d.config)),
        state: if has(F::State) { d.state.as_ref().map(state_out) } else { None },
        log_level: if has(F::LogLevel) { d.log_level.number() } else { 0 },
        metadata: if has(F::Metadata) {
            d.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        } else {
            Default::default()
        },
        gateway_config: has(F::GatewayConfig).then(|| iot::GatewayConfig {
            gateway_type: d.gateway_config.gateway_type.number(),
            gateway_auth_method: d.gateway_config.gateway_auth_method.number(),
            last_accessed_gateway_id: d.gateway_config.last_accessed_gateway_id.clone(),
            last_accessed_gateway_time: ts_out(d.gateway_config.last_accessed_gateway_time),
        }),
    }
}

/// A FieldMask as the comma-separated string the model's mask parsers take.
pub fn mask_string(m: &Option<ferrocore_proto::FieldMask>) -> Option<String> {
    m.as_ref().map(|m| m.paths.join(","))
}
