//! Google's JSON mapping of the Cloud IoT v1 resources.
//!
//! Input accepts lowerCamelCase and proto (snake_case) field names, enum names or numbers, int64
//! as strings or numbers, and bytes in standard or URL-safe base64; unknown fields are refused.
//! Output uses lowerCamelCase, enum names, int64 as strings, RFC 3339 `Z` timestamps, and leaves
//! out fields holding their default value, as proto3 JSON does.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ferrocore_model::{
    ApiEnum, GatewayAuthMethod, GatewayType, HttpState, LogLevel, MqttState, PublicKeyCertificateFormat,
    PublicKeyFormat, Timestamp,
};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// int64/uint64 fields: strings on output; strings or numbers on input.
pub mod int64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = i64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a 64-bit integer as a number or a decimal string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
                Ok(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
                i64::try_from(v).map_err(|_| E::custom("the number is out of range"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
                if v.fract() == 0.0 && v.abs() < 9.0e15 { Ok(v as i64) } else { Err(E::custom("expected an integer")) }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
                v.trim()
                    .parse()
                    .map_err(|_| E::custom(format!("'{}' is not a 64-bit integer", ferrocore_model::ids::printable(v))))
            }
        }
        d.deserialize_any(V)
    }
}

/// uint64 numeric ids.
pub mod uint64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = int64::deserialize(d)?;
        u64::try_from(v).map_err(|_| de::Error::custom("expected a non-negative integer"))
    }
}

/// bytes fields as base64.
pub mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).ok_or_else(|| {
            de::Error::custom(format!("Base64 decoding failed for \"{}\"", ferrocore_model::ids::printable(&s)))
        })
    }

    /// Standard or URL-safe alphabet, padded or not.
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let s = s.trim();
        let padded = s.ends_with('=');
        if s.contains(['-', '_']) {
            if padded { URL_SAFE.decode(s) } else { URL_SAFE_NO_PAD.decode(s) }.ok()
        } else if padded {
            STANDARD.decode(s).ok()
        } else {
            STANDARD_NO_PAD.decode(s).ok()
        }
    }
}

/// Enums by name or number.
pub mod enumeration {
    use super::*;

    pub fn serialize<S: Serializer, T: ApiEnum>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: ApiEnum>(d: D) -> Result<T, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: ApiEnum> Visitor<'_> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an enum value name or number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
                i32::try_from(v)
                    .ok()
                    .and_then(T::from_number)
                    .ok_or_else(|| E::custom(format!("invalid enum value {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
                i32::try_from(v)
                    .ok()
                    .and_then(T::from_number)
                    .ok_or_else(|| E::custom(format!("invalid enum value {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
                T::parse(v)
                    .ok_or_else(|| E::custom(format!("invalid enum value '{}'", ferrocore_model::ids::printable(v))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<T, E> {
                Ok(T::default())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Optional timestamps.
pub mod timestamp {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.collect_str(t),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else { return Ok(None) };
        Timestamp::parse(&s).map(Some).ok_or_else(|| {
            de::Error::custom(format!("'{}' is not an RFC 3339 timestamp", ferrocore_model::ids::printable(&s)))
        })
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EventNotificationConfig {
    #[serde(alias = "subfolder_matches", skip_serializing_if = "String::is_empty")]
    pub subfolder_matches: String,
    #[serde(alias = "pubsub_topic_name", skip_serializing_if = "String::is_empty")]
    pub pubsub_topic_name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StateNotificationConfig {
    #[serde(alias = "pubsub_topic_name", skip_serializing_if = "String::is_empty")]
    pub pubsub_topic_name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MqttConfig {
    #[serde(alias = "mqtt_enabled_state", with = "enumeration", skip_serializing_if = "is_default")]
    pub mqtt_enabled_state: MqttState,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpConfig {
    #[serde(alias = "http_enabled_state", with = "enumeration", skip_serializing_if = "is_default")]
    pub http_enabled_state: HttpState,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct X509CertificateDetails {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    #[serde(alias = "start_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Timestamp>,
    #[serde(alias = "expiry_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub expiry_time: Option<Timestamp>,
    #[serde(alias = "signature_algorithm", skip_serializing_if = "String::is_empty")]
    pub signature_algorithm: String,
    #[serde(alias = "public_key_type", skip_serializing_if = "String::is_empty")]
    pub public_key_type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PublicKeyCertificate {
    #[serde(with = "enumeration", skip_serializing_if = "is_default")]
    pub format: PublicKeyCertificateFormat,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub certificate: String,
    #[serde(alias = "x509_details", skip_serializing_if = "Option::is_none")]
    pub x509_details: Option<X509CertificateDetails>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RegistryCredential {
    #[serde(alias = "public_key_certificate", skip_serializing_if = "Option::is_none")]
    pub public_key_certificate: Option<PublicKeyCertificate>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeviceRegistry {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(alias = "event_notification_configs", skip_serializing_if = "Vec::is_empty")]
    pub event_notification_configs: Vec<EventNotificationConfig>,
    #[serde(alias = "state_notification_config", skip_serializing_if = "Option::is_none")]
    pub state_notification_config: Option<StateNotificationConfig>,
    #[serde(alias = "mqtt_config", skip_serializing_if = "Option::is_none")]
    pub mqtt_config: Option<MqttConfig>,
    #[serde(alias = "http_config", skip_serializing_if = "Option::is_none")]
    pub http_config: Option<HttpConfig>,
    #[serde(alias = "log_level", with = "enumeration", skip_serializing_if = "is_default")]
    pub log_level: LogLevel,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<RegistryCredential>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PublicKeyCredential {
    #[serde(with = "enumeration", skip_serializing_if = "is_default")]
    pub format: PublicKeyFormat,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeviceCredential {
    #[serde(alias = "public_key", skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKeyCredential>,
    #[serde(alias = "expiration_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeviceConfig {
    #[serde(with = "int64", skip_serializing_if = "is_default")]
    pub version: i64,
    #[serde(alias = "cloud_update_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub cloud_update_time: Option<Timestamp>,
    #[serde(alias = "device_ack_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub device_ack_time: Option<Timestamp>,
    #[serde(alias = "binary_data", with = "bytes", skip_serializing_if = "Vec::is_empty")]
    pub binary_data: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeviceState {
    #[serde(alias = "update_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub update_time: Option<Timestamp>,
    #[serde(alias = "binary_data", with = "bytes", skip_serializing_if = "Vec::is_empty")]
    pub binary_data: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Status {
    #[serde(skip_serializing_if = "is_default")]
    pub code: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GatewayConfig {
    #[serde(alias = "gateway_type", with = "enumeration", skip_serializing_if = "is_default")]
    pub gateway_type: GatewayType,
    #[serde(alias = "gateway_auth_method", with = "enumeration", skip_serializing_if = "is_default")]
    pub gateway_auth_method: GatewayAuthMethod,
    #[serde(alias = "last_accessed_gateway_id", skip_serializing_if = "String::is_empty")]
    pub last_accessed_gateway_id: String,
    #[serde(alias = "last_accessed_gateway_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub last_accessed_gateway_time: Option<Timestamp>,
}

/// A Device; also the output of reads, where absent fields were masked out or hold defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Device {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(alias = "num_id", with = "uint64", skip_serializing_if = "is_default")]
    pub num_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Vec<DeviceCredential>>,
    #[serde(alias = "last_heartbeat_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Timestamp>,
    #[serde(alias = "last_event_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub last_event_time: Option<Timestamp>,
    #[serde(alias = "last_state_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub last_state_time: Option<Timestamp>,
    #[serde(alias = "last_config_ack_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub last_config_ack_time: Option<Timestamp>,
    #[serde(alias = "last_config_send_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub last_config_send_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<bool>,
    #[serde(alias = "last_error_time", with = "timestamp", skip_serializing_if = "Option::is_none")]
    pub last_error_time: Option<Timestamp>,
    #[serde(alias = "last_error_status", skip_serializing_if = "Option::is_none")]
    pub last_error_status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<DeviceConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<DeviceState>,
    #[serde(alias = "log_level", with = "enumeration", skip_serializing_if = "is_default")]
    pub log_level: LogLevel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(alias = "gateway_config", skip_serializing_if = "Option::is_none")]
    pub gateway_config: Option<GatewayConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ModifyConfigRequest {
    /// Present in gRPC-transcoded bodies (`body: "*"`); must match the path when given.
    pub name: String,
    #[serde(alias = "version_to_update", with = "int64")]
    pub version_to_update: i64,
    #[serde(alias = "binary_data", with = "bytes")]
    pub binary_data: Vec<u8>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SendCommandRequest {
    pub name: String,
    #[serde(alias = "binary_data", with = "bytes")]
    pub binary_data: Vec<u8>,
    pub subfolder: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GatewayBindingRequest {
    pub parent: String,
    #[serde(alias = "gateway_id")]
    pub gateway_id: String,
    #[serde(alias = "device_id")]
    pub device_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_google_json_variants() {
        let d: Device = serde_json::from_str(
            r#"{"id":"dev-1","num_id":"12","logLevel":40,"gateway_config":{"gatewayType":"GATEWAY"},
                "credentials":[{"publicKey":{"format":3,"key":"K"},"expirationTime":"2030-01-01T00:00:00Z"}],
                "config":{"version":0,"binary_data":"aGk_"}}"#,
        )
        .unwrap();
        assert_eq!(d.num_id, 12);
        assert_eq!(d.log_level, LogLevel::Debug);
        assert_eq!(d.gateway_config.unwrap().gateway_type, GatewayType::Gateway);
        assert_eq!(d.credentials.unwrap()[0].public_key.as_ref().unwrap().format, PublicKeyFormat::RsaPem);
        assert_eq!(d.config.unwrap().binary_data, b"hi?");
        assert!(serde_json::from_str::<Device>(r#"{"nope":1}"#).is_err());
        assert!(serde_json::from_str::<Device>(r#"{"logLevel":"LOUD"}"#).is_err());
        assert_eq!(bytes::decode("aGk/").unwrap(), b"hi?");
        assert_eq!(bytes::decode("aGk").unwrap(), b"hi");
        assert!(bytes::decode("123").is_none());
    }

    #[test]
    fn output_follows_proto3_json() {
        let c = DeviceConfig {
            version: 3,
            cloud_update_time: Timestamp::parse("2024-01-02T03:04:05Z"),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"version":"3","cloudUpdateTime":"2024-01-02T03:04:05Z"}"#);
    }
}
