//! Registries, devices and what hangs off them, as the core and the store see them.
//!
//! These carry no wire format: REST and gRPC adapters translate them. The serde derives give the
//! store a stable form for the nested values it keeps as JSON columns.

use crate::{
    DeviceId, DeviceName, DeviceRef, GatewayAuthMethod, GatewayType, HttpState, LogLevel, MqttState, NumId,
    PublicKeyCertificateFormat, PublicKeyFormat, RegistryName, Timestamp,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventNotificationConfig {
    /// Exact subfolder to match; empty matches everything (the default route).
    pub subfolder_matches: String,
    pub pubsub_topic_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StateNotificationConfig {
    pub pubsub_topic_name: String,
}

/// Facts read from a parsed certificate (output only).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct X509Details {
    pub issuer: String,
    pub subject: String,
    pub start_time: Option<Timestamp>,
    pub expiry_time: Option<Timestamp>,
    pub signature_algorithm: String,
    pub public_key_type: String,
}

/// A CA certificate that signs the registry's device certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredential {
    pub format: PublicKeyCertificateFormat,
    pub certificate: String,
    pub x509_details: Option<X509Details>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    pub name: RegistryName,
    pub event_notification_configs: Vec<EventNotificationConfig>,
    pub state_notification_config: Option<StateNotificationConfig>,
    pub mqtt_state: MqttState,
    pub http_state: HttpState,
    pub log_level: LogLevel,
    pub credentials: Vec<RegistryCredential>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub format: PublicKeyFormat,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCredential {
    pub public_key: PublicKey,
    /// After this instant the key no longer authenticates new connections; it is kept all the same.
    pub expiration_time: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceConfig {
    pub version: i64,
    pub cloud_update_time: Option<Timestamp>,
    pub device_ack_time: Option<Timestamp>,
    pub binary_data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub update_time: Timestamp,
    pub binary_data: Vec<u8>,
}

/// A google.rpc.Status, as kept in `lastErrorStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Status {
    pub code: i32,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayConfig {
    pub gateway_type: GatewayType,
    pub gateway_auth_method: GatewayAuthMethod,
    pub last_accessed_gateway_id: String,
    pub last_accessed_gateway_time: Option<Timestamp>,
}

/// The output-only timestamps and error that device traffic updates. They change far more often
/// than anything else on a device, so they travel and persist separately, in batches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceActivity {
    pub last_heartbeat_time: Option<Timestamp>,
    pub last_event_time: Option<Timestamp>,
    pub last_state_time: Option<Timestamp>,
    pub last_config_ack_time: Option<Timestamp>,
    pub last_config_send_time: Option<Timestamp>,
    pub last_error_time: Option<Timestamp>,
    pub last_error_status: Option<Status>,
    /// Config versions the device acknowledged and when, waiting to reach the store with the rest
    /// (each sets that version's `deviceAckTime`). Empty on devices read from the store.
    pub config_acks: Vec<ConfigAck>,
    /// The latest gateway that spoke for the device, waiting to reach the store as
    /// `gatewayConfig.lastAccessedGateway{Id,Time}`. None on devices read from the store, whose
    /// `gateway_config` holds it.
    pub gateway_access: Option<GatewayAccess>,
}

/// A gateway speaking for a device (an MQTT attach, or an HTTP request with `gatewayInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAccess {
    pub gateway_id: DeviceId,
    pub time: Timestamp,
}

/// A device's acknowledgement of one config version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigAck {
    pub version: i64,
    pub time: Timestamp,
}

impl DeviceActivity {
    /// Folds a newer update into this one: later timestamps win, a newer error replaces an older.
    pub fn merge(&mut self, newer: &DeviceActivity) {
        fn later(a: &mut Option<Timestamp>, b: Option<Timestamp>) {
            if b > *a {
                *a = b;
            }
        }
        later(&mut self.last_heartbeat_time, newer.last_heartbeat_time);
        later(&mut self.last_event_time, newer.last_event_time);
        later(&mut self.last_state_time, newer.last_state_time);
        later(&mut self.last_config_ack_time, newer.last_config_ack_time);
        later(&mut self.last_config_send_time, newer.last_config_send_time);
        if newer.last_error_time > self.last_error_time {
            self.last_error_time = newer.last_error_time;
            self.last_error_status = newer.last_error_status.clone();
        }
        for ack in &newer.config_acks {
            match self.config_acks.iter_mut().find(|a| a.version == ack.version) {
                Some(a) => a.time = a.time.max(ack.time),
                None => self.config_acks.push(*ack),
            }
        }
        // Only the newest versions are kept in the store, so older acks have nothing to mark.
        if self.config_acks.len() > crate::limits::HISTORY_KEPT {
            self.config_acks.sort_unstable_by_key(|a| std::cmp::Reverse(a.version));
            self.config_acks.truncate(crate::limits::HISTORY_KEPT);
        }
        if let Some(access) = &newer.gateway_access
            && self.gateway_access.as_ref().is_none_or(|a| access.time >= a.time)
        {
            self.gateway_access = Some(access.clone());
        }
    }
}

impl GatewayConfig {
    /// Takes a gateway access into `lastAccessedGateway{Id,Time}` unless a later one is there.
    pub fn note_access(&mut self, access: &GatewayAccess) {
        if self.last_accessed_gateway_time.is_none_or(|t| access.time >= t) {
            self.last_accessed_gateway_id = access.gateway_id.to_string();
            self.last_accessed_gateway_time = Some(access.time);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub registry: RegistryName,
    pub id: DeviceId,
    pub num_id: NumId,
    pub credentials: Vec<DeviceCredential>,
    pub blocked: bool,
    pub activity: DeviceActivity,
    pub config: DeviceConfig,
    pub state: Option<DeviceState>,
    pub log_level: LogLevel,
    pub metadata: BTreeMap<String, String>,
    pub gateway_config: GatewayConfig,
}

impl Device {
    /// The resource name as responses give it: ending in the numeric id.
    pub fn name(&self) -> DeviceName {
        self.registry.device(DeviceRef::Num(self.num_id))
    }
}
