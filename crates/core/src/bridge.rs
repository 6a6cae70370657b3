//! Device-facing use cases, shared by the MQTT and HTTP device bridges: authentication, telemetry,
//! state, config delivery and acknowledgement, heartbeats.
//!
//! Everything here runs per device message, so nothing writes to the database per message:
//! timestamps go through [`crate::activity`], states through a group-committing writer, and
//! telemetry through the [`crate::sink::Sink`], which batches on its own.

use crate::error::storage;
use crate::sink::{Message, SinkError};
use crate::{Code, Core, Error, Result};
use bytes::Bytes;
use ferrocore_auth::jwt::{JwtError, JwtRules, VerifiedJwt, verify_device_jwt};
use ferrocore_auth::keycache::KeyCache;
use ferrocore_model::limits::{MAX_STATE_BYTES, MAX_TELEMETRY_BYTES, check_subfolder};
use ferrocore_model::{
    ConfigAck, DeviceActivity, DeviceConfig, DeviceCredential, DeviceId, DeviceName, DeviceState, HttpState, MqttState,
    NumId, Registry, RegistryName, Status, Timestamp,
};
use std::sync::Arc;

/// Resolves once a submitted message is durable; errors are already recorded on the device.
pub type Delivery = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// Which bridge a device came through; registries can disable each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Mqtt,
    Http,
}

/// Why a device was not let in. Bridges map these to CONNACK codes or HTTP statuses; the text is
/// for the server log (authentication failures are never recorded on the device).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The password is not a well-formed JWT.
    #[error("malformed credentials: {0}")]
    Malformed(String),
    /// Unknown device, wrong key, expired token, blocked device, disabled bridge...
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// The server could not decide (storage down).
    #[error("authentication unavailable")]
    Unavailable,
}

/// A device that proved who it is, or that a gateway speaks for under its auth method.
#[derive(Debug, Clone)]
pub struct AuthenticatedDevice {
    /// Shared with the registry cache and every other device of the registry.
    pub registry: Arc<RegistryName>,
    pub id: DeviceId,
    pub num_id: NumId,
    /// The token that let it in: the device's own, or, for a device a gateway speaks for without
    /// one, the gateway's.
    pub token: VerifiedJwt,
    /// `gatewayConfig.gatewayType` is GATEWAY: it may attach devices and speak for them.
    pub is_gateway: bool,
}

impl AuthenticatedDevice {
    /// The name as the device uses it, with the string id.
    pub fn name(&self) -> DeviceName {
        self.registry.device(ferrocore_model::DeviceRef::Id(self.id.clone()))
    }

    /// Unix seconds after which the token no longer holds (exp + allowed skew). Worked out when
    /// asked rather than kept: every parked connection holds one of these.
    pub fn token_deadline(&self) -> i64 {
        self.token.deadline(&JwtRules::default())
    }
}

/// Attribute names IoT Core set on every forwarded message.
///
/// Runs per message: the values are copied straight from the device's ids (no formatting
/// machinery), into a vector of exactly the right size, so the only work is the allocations
/// the message's owned strings need.
fn attributes(dev: &AuthenticatedDevice, subfolder: Option<&str>) -> Vec<(String, String)> {
    let subfolder = subfolder.filter(|s| !s.is_empty());
    let mut a = Vec::with_capacity(5 + usize::from(subfolder.is_some()));
    a.extend([
        ("deviceId".to_owned(), dev.id.as_str().to_owned()),
        ("deviceNumId".to_owned(), dev.num_id.0.to_string()),
        ("deviceRegistryId".to_owned(), dev.registry.registry.as_str().to_owned()),
        ("deviceRegistryLocation".to_owned(), dev.registry.parent.location.as_str().to_owned()),
        ("projectId".to_owned(), dev.registry.parent.project.as_str().to_owned()),
    ]);
    if let Some(s) = subfolder {
        a.push(("subFolder".to_owned(), s.to_owned()));
    }
    a
}

/// The telemetry topic for a subfolder: the first config matching it exactly, else the first
/// config with no subfolder (the default route).
pub fn route_event<'r>(registry: &'r Registry, subfolder: &str) -> Option<&'r str> {
    let configs = &registry.event_notification_configs;
    let exact = (!subfolder.is_empty()).then(|| configs.iter().find(|c| c.subfolder_matches == subfolder)).flatten();
    exact.or_else(|| configs.iter().find(|c| c.subfolder_matches.is_empty())).map(|c| c.pubsub_topic_name.as_str())
}

impl Core {
    /// Checks a device's JWT against its credentials, and that it may use `transport`.
    pub async fn authenticate_device(
        &self,
        name: &DeviceName,
        token: &str,
        transport: Transport,
    ) -> std::result::Result<AuthenticatedDevice, AuthFailure> {
        let device = match self.inner.store.get_device_login(name).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err(AuthFailure::NotAuthorized(format!("no device {name}"))),
            Err(e) => {
                tracing::error!(error = %e, device = %name, "device lookup failed during authentication");
                return Err(AuthFailure::Unavailable);
            }
        };
        let (registry_name, registry) = self.cached_registry_named(&name.registry).await.map_err(|e| match e.code {
            Code::NotFound => AuthFailure::NotAuthorized(format!("no registry {}", name.registry)),
            _ => AuthFailure::Unavailable,
        })?;
        let disabled = match transport {
            Transport::Mqtt => registry.mqtt_state == MqttState::Disabled,
            Transport::Http => registry.http_state == HttpState::Disabled,
        };
        if disabled {
            return Err(AuthFailure::NotAuthorized(format!("{transport:?} is disabled for the registry")));
        }
        if device.blocked {
            return Err(AuthFailure::NotAuthorized("the device is blocked".into()));
        }
        let verified = self.verify_token(&name.registry, &device.credentials, token)?;
        self.inner.device_log.note_level(device.num_id, device.log_level);
        Ok(AuthenticatedDevice {
            registry: registry_name,
            is_gateway: device.gateway_type.is_gateway(),
            id: device.id,
            num_id: device.num_id,
            token: verified,
        })
    }

    /// Checks a JWT against the device's unexpired credentials, with the project as audience: the
    /// rules of a device CONNECT password.
    pub(crate) fn verify_token(
        &self,
        registry: &RegistryName,
        credentials: &[DeviceCredential],
        token: &str,
    ) -> std::result::Result<VerifiedJwt, AuthFailure> {
        // Parsed keys come from a cache named by the credential bytes, so a connect skips the
        // PEM, X.509 and key parsing for a key seen recently, and a changed credential is a miss.
        let valid_at = self.inner.settings.enforce_certificate_validity.then(|| self.now());
        let keys = KeyCache::global().verification_keys(credentials, valid_at);
        let project = registry.parent.project.as_str();
        verify_device_jwt(token, project, &keys, self.now(), &JwtRules::default()).map_err(|e| match e {
            JwtError::TooLong
            | JwtError::NotCompact
            | JwtError::BadEncoding
            | JwtError::InvalidHeader
            | JwtError::InvalidClaims => AuthFailure::Malformed(e.to_string()),
            other => AuthFailure::NotAuthorized(other.to_string()),
        })
    }

    /// The registry, from a cache that registry updates invalidate, so per-message routing never
    /// reads the database.
    pub(crate) async fn cached_registry(&self, name: &RegistryName) -> Result<Arc<Registry>> {
        Ok(self.cached_registry_named(name).await?.1)
    }

    /// As [`Core::cached_registry`], with the name shared by everything that holds it (a connected
    /// device keeps it for as long as it stays: one copy per registry instead of one per device).
    pub(crate) async fn cached_registry_named(
        &self,
        name: &RegistryName,
    ) -> Result<(Arc<RegistryName>, Arc<Registry>)> {
        let generation = {
            let cache = self.inner.registries.read().unwrap_or_else(|e| e.into_inner());
            if let Some((n, r)) = cache.entries.get_key_value(name) {
                return Ok((n.clone(), r.clone()));
            }
            cache.generation
        };
        // Boxed: a miss is rare, and its store read would make every caller's future as large.
        let registry = Arc::new(Box::pin(self.get_registry(name)).await?);
        let name = Arc::new(name.clone());
        let mut cache = self.inner.registries.write().unwrap_or_else(|e| e.into_inner());
        // A registry write during the read may have made it stale: serve it this once, cache it not.
        if cache.generation == generation {
            cache.entries.insert(name.clone(), registry.clone());
        }
        Ok((name, registry))
    }

    /// Drops this node's cached copy of a registry and, in a cluster, every other node's; returns
    /// once the other nodes said they did (or a bounded wait ran out), so the change is in force
    /// everywhere when the API call that made it returns.
    pub(crate) async fn forget_registry(&self, name: &RegistryName) {
        self.forget_registry_here(name);
        if let Some(p) = self.peers() {
            p.registry_changed(name).await;
        }
    }

    /// Drops this node's cached copy of a registry (another node changed it).
    pub fn forget_registry_here(&self, name: &RegistryName) {
        let mut cache = self.inner.registries.write().unwrap_or_else(|e| e.into_inner());
        cache.generation += 1;
        cache.entries.remove(name);
    }

    /// Routes one telemetry message and returns once its destination holds it durably.
    pub async fn publish_event(&self, dev: &AuthenticatedDevice, subfolder: &str, data: Bytes) -> Result<()> {
        self.submit_event(dev, subfolder, data).await?.await
    }

    /// Routes one telemetry message and queues it at its destination, behind the device's earlier
    /// messages; the returned [`Delivery`] resolves once it is durable. A connection can keep many
    /// messages in flight this way and still acknowledge them in order.
    pub async fn submit_event(&self, dev: &AuthenticatedDevice, subfolder: &str, data: Bytes) -> Result<Delivery> {
        if data.len() > MAX_TELEMETRY_BYTES {
            return Err(self.device_refused(
                dev,
                Error::invalid(
                    "binary_data",
                    format!("The telemetry message is {} bytes; the limit is {MAX_TELEMETRY_BYTES} bytes.", data.len()),
                ),
            ));
        }
        // The same rules for MQTT's `/events/{subfolder}` and the HTTP bridge's `subFolder`.
        check_subfolder("sub_folder", subfolder).map_err(|e| self.device_refused(dev, e.into()))?;
        let now = self.now();
        let registry = self.cached_registry(&dev.registry).await?;
        let Some(topic) = route_event(&registry, subfolder) else {
            let e = Error::failed_precondition(format!(
                "The registry '{}' has no telemetry topic for subfolder '{subfolder}'.",
                dev.registry
            ));
            self.record_device_error(dev.num_id, &e);
            return Err(e);
        };
        let message = Message { time: now, attributes: attributes(dev, Some(subfolder)), data };
        let ticket = self.inner.sink.submit(topic, vec![message]).await.map_err(|e| {
            let err = sink_error(e);
            self.record_device_error(dev.num_id, &err);
            err
        })?;
        let (core, device) = (self.clone(), dev.num_id);
        Ok(Box::pin(async move {
            ticket.await.map_err(|e| {
                let err = sink_error(e);
                core.record_device_error(device, &err);
                err
            })?;
            core.inner.activity.record(device, &DeviceActivity { last_event_time: Some(now), ..Default::default() });
            Ok(())
        }))
    }

    /// Stores a reported state (durably when this returns) and forwards it, best effort, to the
    /// registry's state topic.
    pub async fn report_state(&self, dev: &AuthenticatedDevice, data: Bytes) -> Result<()> {
        self.submit_state(dev, data).await?.await
    }

    /// Queues a reported state for storage; the [`Delivery`] resolves once it is stored.
    pub async fn submit_state(&self, dev: &AuthenticatedDevice, data: Bytes) -> Result<Delivery> {
        if data.len() > MAX_STATE_BYTES {
            return Err(self.device_refused(
                dev,
                Error::invalid(
                    "state.binary_data",
                    format!("The state is {} bytes; the limit is {MAX_STATE_BYTES} bytes.", data.len()),
                ),
            ));
        }
        let now = self.now();
        if !self.inner.state_rate.allow(dev.num_id, now) {
            let e = Error::new(Code::ResourceExhausted, "A device may report its state at most once per second.");
            return Err(self.device_refused(dev, e));
        }
        let stored = self
            .inner
            .states
            .submit(dev.num_id, DeviceState { update_time: now, binary_data: data.to_vec() })
            .await
            .map_err(storage)?;
        let registry = self.cached_registry(&dev.registry).await?;
        let mut notified = None;
        if let Some(topic) = registry.state_notification_config.as_ref().map(|s| s.pubsub_topic_name.as_str()) {
            let message = Message { time: now, attributes: attributes(dev, None), data };
            // State notifications are best effort: the state is stored all the same.
            match self.inner.sink.submit(topic, vec![message]).await {
                Ok(ticket) => notified = Some(ticket),
                Err(e) => tracing::warn!(error = %e, %topic, device = %dev.name(), "state notification not delivered"),
            }
        }
        let (core, device) = (self.clone(), dev.num_id);
        Ok(Box::pin(async move {
            stored.await.map_err(storage)?;
            if let Some(Err(e)) = match notified {
                Some(ticket) => Some(ticket.await),
                None => None,
            } {
                tracing::warn!(error = %e, %device, "state notification not delivered");
            }
            core.inner.activity.record(device, &DeviceActivity { last_state_time: Some(now), ..Default::default() });
            Ok(())
        }))
    }

    /// The device's current config.
    pub async fn device_config(&self, dev: &AuthenticatedDevice) -> Result<DeviceConfig> {
        Ok(self.get_device(&dev.name()).await?.config)
    }

    /// Notes that the current config was sent to the device.
    pub fn config_sent(&self, dev: &AuthenticatedDevice) {
        self.config_sent_to(dev.num_id);
    }

    /// As [`Core::config_sent`], by numeric id.
    pub fn config_sent_to(&self, device: NumId) {
        let a = DeviceActivity { last_config_send_time: Some(self.now()), ..Default::default() };
        self.inner.activity.record(device, &a);
    }

    /// Records the device's acknowledgement of config `version`. It reaches the store with the
    /// next activity flush (reads show it at once), so a PUBACK costs no transaction of its own.
    pub fn config_acked(&self, dev: &AuthenticatedDevice, version: i64) {
        self.config_acked_by(dev.num_id, version);
    }

    /// As [`Core::config_acked`], for a device known by its numeric id (a gateway acknowledging
    /// for a device it no longer has attached).
    pub fn config_acked_by(&self, device: NumId, version: i64) {
        let now = self.now();
        let a = DeviceActivity {
            last_config_ack_time: Some(now),
            config_acks: vec![ConfigAck { version, time: now }],
            ..Default::default()
        };
        self.inner.activity.record(device, &a);
    }

    /// Notes a keep-alive from the device.
    pub fn heartbeat(&self, dev: &AuthenticatedDevice) {
        let a = DeviceActivity { last_heartbeat_time: Some(self.now()), ..Default::default() };
        self.inner.activity.record(dev.num_id, &a);
    }

    /// Records a refused publish or state on the device (`lastErrorStatus`, batched) and returns
    /// the error for the bridge to answer with.
    fn device_refused(&self, dev: &AuthenticatedDevice, e: Error) -> Error {
        self.record_device_error(dev.num_id, &e);
        e
    }

    /// Records an error in the device's `lastErrorStatus` / `lastErrorTime`.
    pub fn record_device_error(&self, device: NumId, error: &Error) {
        let status = Status { code: error.code as i32, message: error.message.clone() };
        self.record_device_status(device, status);
    }

    pub fn record_device_status(&self, device: NumId, status: Status) {
        let a =
            DeviceActivity { last_error_time: Some(self.now()), last_error_status: Some(status), ..Default::default() };
        self.inner.activity.record(device, &a);
    }

    pub fn clock_now(&self) -> Timestamp {
        self.now()
    }
}

fn sink_error(e: SinkError) -> Error {
    match e {
        SinkError::Rejected(why) => {
            Error::failed_precondition(format!("The telemetry topic refused the message: {why}"))
        }
        SinkError::BackPressure => {
            Error::new(Code::ResourceExhausted, "The telemetry destination is busy; retry later.")
        }
        SinkError::Unavailable(why) => {
            tracing::error!(%why, "telemetry sink unavailable");
            Error::new(Code::Unavailable, "The telemetry destination is unavailable; retry later.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;

    fn pairs(a: &[(String, String)]) -> Vec<(&str, &str)> {
        a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// Exactly IoT Core's attributes, in its order, `subFolder` only when there is one; no spare
    /// capacity, so building them allocates nothing beyond the strings.
    #[tokio::test]
    async fn attributes_are_iot_cores() {
        let f = Fixture::new(crate::Settings::default()).await;
        let dev = f.authenticated();
        let num = dev.num_id.0.to_string();
        let base = [
            ("deviceId", dev.id.as_str()),
            ("deviceNumId", num.as_str()),
            ("deviceRegistryId", "reg"),
            ("deviceRegistryLocation", "l"),
            ("projectId", "p"),
        ];
        for sub in [None, Some("")] {
            let a = attributes(&dev, sub);
            assert_eq!(pairs(&a), base);
            assert_eq!(a.capacity(), 5);
        }
        let a = attributes(&dev, Some("alerts/high"));
        let mut want = base.to_vec();
        want.push(("subFolder", "alerts/high"));
        assert_eq!(pairs(&a), want);
        assert_eq!(a.capacity(), 6);
    }
}
