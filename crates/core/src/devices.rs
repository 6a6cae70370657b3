//! Device use cases: create, get, list, patch, delete, configs, states, commands and gateway bindings.

use crate::error::storage;
use crate::peers::{LocalCommand, PeerCommand};
use crate::registries::registry_not_found;
use crate::{Code, Core, Error, Result, paging, presence};
use ferrocore_auth::credentials::{ParsedCertificate, check_device_key, is_issued_by, parse_ca_certificate};
use ferrocore_model::limits::{self, HISTORY_KEPT, MAX_CONFIG_BYTES, MAX_DEVICE_CREDENTIALS, MAX_LIST_FILTER_IDS};
use ferrocore_model::mask::{DeviceUpdateField, parse_device_update_mask};
use ferrocore_model::{
    Device, DeviceConfig, DeviceCredential, DeviceId, DeviceName, DeviceRef, DeviceState, GatewayAuthMethod,
    GatewayType, LogLevel, NumId, Registry, RegistryName,
};
use ferrocore_store::{BindOutcome, ConfigUpdate, DeviceQuery, DeviceUpdate, GatewayFilter, NewDevice, StoreError};
use std::collections::BTreeMap;
use std::time::Duration;

/// A device as a client sent it, before validation.
#[derive(Debug, Clone, Default)]
pub struct DeviceInput {
    pub id: String,
    pub name: String,
    pub num_id: u64,
    pub credentials: Vec<DeviceCredential>,
    pub blocked: bool,
    pub log_level: LogLevel,
    pub metadata: BTreeMap<String, String>,
    pub gateway_type: GatewayType,
    pub gateway_auth_method: GatewayAuthMethod,
    /// `(version, binary_data)` of an initial config; the version must be 0.
    pub config: Option<(i64, Vec<u8>)>,
}

/// `gatewayListOptions`: at most one of these filters.
#[derive(Debug, Clone, Default)]
pub enum GatewayListOption {
    #[default]
    None,
    GatewayType(GatewayType),
    AssociationsGatewayId(String),
    AssociationsDeviceId(String),
}

#[derive(Debug, Clone, Default)]
pub struct ListDevicesRequest {
    pub device_ids: Vec<String>,
    pub device_num_ids: Vec<u64>,
    pub gateway: GatewayListOption,
    pub page_size: i64,
    pub page_token: String,
    /// Ferrocore's extension (REST `deviceIdPrefix`): only ids starting with this; empty for all.
    pub id_prefix: String,
}

pub struct DevicePage {
    pub devices: Vec<Device>,
    pub next_page_token: String,
}

fn device_not_found(name: &DeviceName) -> Error {
    Error::not_found(format!("A device with the name '{name}' doesn't exist."))
}

fn check_config_size(field: &str, data: &[u8]) -> Result<()> {
    if data.len() > MAX_CONFIG_BYTES {
        return Err(Error::invalid(
            field,
            format!("The config data is {} bytes; the limit is {MAX_CONFIG_BYTES} bytes.", data.len()),
        ));
    }
    Ok(())
}

/// Checks device keys: count, format, and, when the registry has CA certificates, that each key is
/// a certificate issued by one of them and not one of them.
fn check_credentials(registry: &Registry, creds: &[DeviceCredential]) -> Result<()> {
    if creds.len() > MAX_DEVICE_CREDENTIALS {
        return Err(Error::invalid(
            "device.credentials",
            format!("A device may have at most {MAX_DEVICE_CREDENTIALS} credentials; {} were given.", creds.len()),
        ));
    }
    let cas: Vec<ParsedCertificate> =
        registry.credentials.iter().filter_map(|c| parse_ca_certificate(&c.certificate).ok()).collect();
    for (i, c) in creds.iter().enumerate() {
        let field = format!("device.credentials[{i}].public_key");
        let key = check_device_key(c.public_key.format, &c.public_key.key).map_err(|e| Error::invalid(&field, e.0))?;
        if cas.is_empty() {
            continue;
        }
        let Some(cert) = key.certificate else {
            return Err(Error::invalid(
                &field,
                "The registry has CA certificates, so device credentials must be X.509 certificates (RSA_X509_PEM or ES256_X509_PEM) signed by one of them.",
            ));
        };
        if cas.iter().any(|ca| ca.der == cert.der) {
            return Err(Error::invalid(
                &field,
                "A device certificate must differ from the registry's CA certificates.",
            ));
        }
        if !cas.iter().any(|ca| is_issued_by(&cert, ca)) {
            return Err(Error::invalid(
                &field,
                "The device certificate is not signed by any of the registry's CA certificates.",
            ));
        }
    }
    Ok(())
}

impl Core {
    async fn registry(&self, name: &RegistryName) -> Result<Registry> {
        self.inner.store.get_registry(name).await.map_err(storage)?.ok_or_else(|| registry_not_found(name))
    }

    /// Reads a device by string or numeric id, with activity not yet flushed.
    pub async fn get_device(&self, name: &DeviceName) -> Result<Device> {
        let mut device = self.inner.store.get_device(name).await.map_err(storage)?.ok_or_else(|| {
            // Tell a missing registry apart from a missing device only when it is cheap: the
            // device message is what IoT Core gave for both.
            device_not_found(name)
        })?;
        self.inner.activity.overlay(&mut device);
        Ok(device)
    }

    pub async fn create_device(&self, parent: &RegistryName, input: DeviceInput) -> Result<Device> {
        if !input.name.is_empty() {
            return Err(Error::invalid(
                "device.name",
                "The device name must be empty on create; it is set by the server.",
            ));
        }
        if input.num_id != 0 {
            return Err(Error::invalid(
                "device.num_id",
                "The numeric id is assigned by the server and must not be set.",
            ));
        }
        if input.id.is_empty() {
            return Err(Error::invalid("device.id", "The device id is required."));
        }
        let id = DeviceId::parse_field("device.id", &input.id)?;
        limits::check_metadata("device.metadata", &input.metadata)?;
        let config_data = match input.config {
            Some((0, data)) => data,
            Some((v, _)) => {
                return Err(Error::invalid(
                    "device.config.version",
                    format!("The config version must be 0 on create (got {v}); the server numbers versions."),
                ));
            }
            None => Vec::new(),
        };
        check_config_size("device.config.binary_data", &config_data)?;
        let registry = self.registry(parent).await?;
        check_credentials(&registry, &input.credentials)?;
        let new = NewDevice {
            registry: parent.clone(),
            id,
            credentials: input.credentials,
            blocked: input.blocked,
            log_level: input.log_level,
            metadata: input.metadata,
            gateway_type: input.gateway_type,
            gateway_auth_method: input.gateway_auth_method,
            config_data,
            created: self.now(),
        };
        let id = new.id.clone();
        match self.inner.store.create_device(new).await {
            Ok(d) => Ok(d),
            Err(StoreError::AlreadyExists) => {
                Err(Error::new(Code::AlreadyExists, format!("Resource already exists in the project (resource={id}).")))
            }
            Err(StoreError::NotFound) => Err(registry_not_found(parent)),
            Err(e) => Err(storage(e)),
        }
    }

    pub async fn list_devices(&self, parent: &RegistryName, req: ListDevicesRequest) -> Result<DevicePage> {
        let size = paging::page_size(req.page_size)?;
        if req.device_ids.len() > MAX_LIST_FILTER_IDS || req.device_num_ids.len() > MAX_LIST_FILTER_IDS {
            return Err(Error::invalid(
                "device_ids",
                format!("At most {MAX_LIST_FILTER_IDS} ids may be listed at once."),
            ));
        }
        let after = paging::decode("devices", &req.page_token)?
            .map(|s| DeviceId::parse_field("page_token", &s))
            .transpose()
            .map_err(|_| Error::invalid("page_token", "The page token is invalid."))?;
        // Ids that cannot exist match nothing rather than failing the whole list.
        let device_ids: Vec<DeviceId> =
            req.device_ids.iter().filter_map(|s| DeviceId::parse_field("device_ids", s).ok()).collect();
        let filter_requested = !req.device_ids.is_empty() || !req.device_num_ids.is_empty();
        // A prefix no id can start with matches nothing. Ids are at least 3 characters long, so a
        // shorter prefix is checked as the id it would begin.
        let id_prefix = match req.id_prefix.as_str() {
            "" => None,
            p => {
                let padded = format!("{p}{}", "a".repeat(3usize.saturating_sub(p.len())));
                if DeviceId::parse_field("device_id_prefix", &padded).is_err() {
                    return Ok(DevicePage { devices: vec![], next_page_token: String::new() });
                }
                Some(p.to_owned())
            }
        };
        if filter_requested && device_ids.is_empty() && req.device_num_ids.is_empty() {
            return Ok(DevicePage { devices: vec![], next_page_token: String::new() });
        }
        self.registry(parent).await?;
        let gateway = match req.gateway {
            GatewayListOption::None | GatewayListOption::GatewayType(GatewayType::Unspecified) => GatewayFilter::All,
            GatewayListOption::GatewayType(GatewayType::Gateway) => GatewayFilter::GatewaysOnly,
            GatewayListOption::GatewayType(GatewayType::NonGateway) => GatewayFilter::NonGatewaysOnly,
            GatewayListOption::AssociationsGatewayId(g) => {
                let field = "gateway_list_options.associations_gateway_id";
                GatewayFilter::BoundTo(self.resolve_in(parent, field, &g).await?.num_id)
            }
            GatewayListOption::AssociationsDeviceId(d) => {
                let field = "gateway_list_options.associations_device_id";
                GatewayFilter::GatewaysOf(self.resolve_in(parent, field, &d).await?.num_id)
            }
        };
        let query = DeviceQuery {
            registry: parent.clone(),
            device_ids,
            num_ids: req.device_num_ids.into_iter().map(NumId).collect(),
            gateway,
            after,
            id_prefix,
            limit: size + 1,
        };
        let mut devices = self.inner.store.list_devices(&query).await.map_err(storage)?;
        let next_page_token = if devices.len() > size as usize {
            devices.truncate(size as usize);
            devices.last().map(|d| paging::encode("devices", d.id.as_str())).unwrap_or_default()
        } else {
            String::new()
        };
        for d in &mut devices {
            self.inner.activity.overlay(d);
        }
        Ok(DevicePage { devices, next_page_token })
    }

    /// Resolves a device named by id or numeric id inside a registry.
    async fn resolve_in(&self, registry: &RegistryName, field: &str, id: &str) -> Result<Device> {
        if id.is_empty() {
            return Err(Error::invalid(field, format!("The field '{field}' is required.")));
        }
        let name = registry.device(DeviceRef::parse_field(field, id)?);
        self.get_device(&name).await
    }

    pub async fn update_device(&self, name: &DeviceName, input: DeviceInput, update_mask: &str) -> Result<Device> {
        let fields = parse_device_update_mask(update_mask)?;
        let mut device = self.get_device(name).await?;
        let old_credentials = device.credentials.clone();
        if !input.id.is_empty() && input.id != device.id.as_str() {
            return Err(Error::invalid("device.id", "The device id cannot be changed."));
        }
        if input.num_id != 0 && input.num_id != device.num_id.0 {
            return Err(Error::invalid("device.num_id", "The numeric id cannot be changed."));
        }
        for field in &fields {
            match field {
                DeviceUpdateField::Credentials => {
                    let registry = self.registry(&name.registry).await?;
                    check_credentials(&registry, &input.credentials)?;
                    device.credentials = input.credentials.clone();
                }
                DeviceUpdateField::Blocked => device.blocked = input.blocked,
                DeviceUpdateField::Metadata => {
                    limits::check_metadata("device.metadata", &input.metadata)?;
                    device.metadata = input.metadata.clone();
                }
                DeviceUpdateField::LogLevel => device.log_level = input.log_level,
                DeviceUpdateField::GatewayAuthMethod => {
                    device.gateway_config.gateway_auth_method = input.gateway_auth_method
                }
            }
        }
        let update = DeviceUpdate {
            credentials: device.credentials.clone(),
            blocked: device.blocked,
            log_level: device.log_level,
            metadata: device.metadata.clone(),
            gateway_auth_method: device.gateway_config.gateway_auth_method,
        };
        match self.inner.store.update_device(device.num_id, &update).await {
            Ok(()) => {
                self.inner.device_log.note_level(device.num_id, device.log_level);
                if device.blocked {
                    self.kick_everywhere(device.num_id, presence::Reason::Blocked);
                } else if device.credentials != old_credentials {
                    // A session lives on the token a replaced key signed: it goes at once, and
                    // the device reconnects with what its credentials are now. A gateway's
                    // connection closing detaches every device it carried.
                    self.kick_everywhere(device.num_id, presence::Reason::CredentialsChanged);
                }
                Ok(device)
            }
            Err(StoreError::NotFound) => Err(device_not_found(name)),
            Err(e) => Err(storage(e)),
        }
    }

    /// Deletes a device, disconnecting it. A gateway that still has bound devices is refused
    /// (FAILED_PRECONDITION) until they are unbound; a device bound to gateways is deleted with
    /// its bindings.
    pub async fn delete_device(&self, name: &DeviceName) -> Result<()> {
        let device = self.get_device(name).await?;
        if device.gateway_config.gateway_type.is_gateway() {
            let bound = DeviceQuery {
                registry: name.registry.clone(),
                device_ids: Vec::new(),
                num_ids: Vec::new(),
                gateway: GatewayFilter::BoundTo(device.num_id),
                after: None,
                id_prefix: None,
                limit: 1,
            };
            if !self.inner.store.list_devices(&bound).await.map_err(storage)?.is_empty() {
                return Err(Error::failed_precondition(format!(
                    "The gateway '{}' still has devices bound to it; unbind them before deleting it.",
                    device.id
                )));
            }
        }
        match self.inner.store.delete_device(device.num_id).await {
            Ok(()) => {
                self.kick_everywhere(device.num_id, presence::Reason::Deleted);
                // Its noted log level would otherwise stay in memory for good.
                self.inner.device_log.note_level(device.num_id, LogLevel::Unspecified);
                Ok(())
            }
            Err(StoreError::NotFound) => Err(device_not_found(name)),
            Err(e) => Err(storage(e)),
        }
    }

    /// Writes a new config version. `version_to_update` 0 is unconditional; otherwise it must equal
    /// the current version.
    pub async fn modify_config(
        &self,
        name: &DeviceName,
        version_to_update: i64,
        data: Vec<u8>,
    ) -> Result<DeviceConfig> {
        if version_to_update < 0 {
            return Err(Error::invalid("version_to_update", "The version to update must not be negative."));
        }
        check_config_size("binary_data", &data)?;
        let device = self.get_device(name).await?;
        let expected = (version_to_update != 0).then_some(version_to_update);
        let mismatch = |current: i64| {
            Error::failed_precondition(format!(
                "The config version to update ({version_to_update}) does not match the current version ({current}) of device '{name}'."
            ))
        };
        // A stale version is told as such whatever the rate (the store checks again below).
        if expected.is_some_and(|v| v != device.config.version) {
            return Err(mismatch(device.config.version));
        }
        let now = self.now();
        // One update per second per device, from the last one the server accepted; a refused
        // write gives its slot back.
        let Some(slot) = self.inner.config_rate.acquire(device.num_id, now) else {
            return Err(Error::new(
                Code::ResourceExhausted,
                format!("The config of device '{}' may be updated at most once per second; retry later.", device.id),
            ));
        };
        let result = self.inner.store.modify_config(device.num_id, expected, &data, now).await;
        if !matches!(result, Ok(ConfigUpdate::Applied(_))) {
            self.inner.config_rate.release(slot);
        }
        match result {
            Ok(ConfigUpdate::Applied(config)) => {
                self.inner.presence.push_config(device.num_id, config.clone());
                if let Some(p) = self.peers() {
                    p.config_changed(device.num_id);
                }
                Ok(config)
            }
            Ok(ConfigUpdate::VersionMismatch { current }) => Err(mismatch(current)),
            Err(StoreError::NotFound) => Err(device_not_found(name)),
            Err(e) => Err(storage(e)),
        }
    }

    /// Newest first; `num_versions` 0 means all that are kept.
    pub async fn list_config_versions(&self, name: &DeviceName, num_versions: i64) -> Result<Vec<DeviceConfig>> {
        let limit = history_limit("num_versions", num_versions)?;
        let device = self.get_device(name).await?;
        let mut configs = self.inner.store.list_config_versions(device.num_id, limit).await.map_err(storage)?;
        self.inner.activity.overlay_configs(device.num_id, &mut configs);
        Ok(configs)
    }

    /// Newest first; `num_states` 0 means all that are kept.
    pub async fn list_states(&self, name: &DeviceName, num_states: i64) -> Result<Vec<DeviceState>> {
        let limit = history_limit("num_states", num_states)?;
        let device = self.get_device(name).await?;
        self.inner.store.list_states(device.num_id, limit).await.map_err(storage)
    }

    /// Sends a command to a connected device subscribed to its commands topic, and waits until the
    /// device has it.
    pub async fn send_command(&self, name: &DeviceName, data: Vec<u8>, subfolder: &str) -> Result<()> {
        if data.len() > limits::MAX_COMMAND_BYTES {
            return Err(Error::invalid(
                "binary_data",
                format!("The command is {} bytes; the limit is {} bytes.", data.len(), limits::MAX_COMMAND_BYTES),
            ));
        }
        limits::check_subfolder("subfolder", subfolder)?;
        let device = self.get_device(name).await?;
        let not_subscribed = || {
            Error::failed_precondition(format!(
                "Device '{}' is not connected or is not subscribed to the commands topic.",
                device.name()
            ))
        };
        let wait = self.inner.settings.command_ack_timeout;
        let deadline = || Error::new(Code::DeadlineExceeded, "The device did not acknowledge the command in time.");
        match self.deliver_command_here(device.num_id, subfolder, data.clone(), wait).await {
            LocalCommand::Delivered => return Ok(()),
            LocalCommand::Deadline => return Err(deadline()),
            LocalCommand::NotHeld => {}
        }
        let Some(peers) = self.peers() else { return Err(not_subscribed()) };
        match peers.send_command(device.num_id, subfolder, &data, wait).await {
            PeerCommand::Delivered => Ok(()),
            PeerCommand::NotHeld => Err(not_subscribed()),
            PeerCommand::Deadline => Err(deadline()),
            PeerCommand::Unavailable => Err(Error::new(
                Code::Unavailable,
                "The device is not connected to this node and the other nodes cannot be reached; retry later.",
            )),
        }
    }

    /// Delivers a command to the device if it is connected to this node and subscribed to its
    /// commands topic, waiting up to `wait` for the device to take it.
    pub async fn deliver_command_here(
        &self,
        device: NumId,
        subfolder: &str,
        data: Vec<u8>,
        wait: Duration,
    ) -> LocalCommand {
        let Some(channel) = self.inner.presence.command_channel(device) else { return LocalCommand::NotHeld };
        let (done, acked) = tokio::sync::oneshot::channel();
        let command = presence::SessionControl::Command { device, subfolder: subfolder.to_owned(), data, done };
        // The deadline covers the wait for room in the session's queue too: a session that does
        // not drain it must not hold the caller forever.
        let delivered = async {
            channel.send(command).await.map_err(|_| ())?;
            acked.await.map_err(|_| ())
        };
        match tokio::time::timeout(wait, delivered).await {
            Ok(Ok(())) => LocalCommand::Delivered,
            Ok(Err(())) => LocalCommand::NotHeld,
            Err(_) => LocalCommand::Deadline,
        }
    }

    /// Ends a device's presence on this node and, in a cluster, on every other.
    fn kick_everywhere(&self, device: NumId, reason: presence::Reason) {
        self.inner.presence.kick(device, None, reason);
        if let Some(p) = self.peers() {
            p.kick(device, reason);
        }
    }

    /// Binds a non-gateway device to a gateway of the same registry. Binding a bound pair succeeds.
    pub async fn bind_device_to_gateway(&self, parent: &RegistryName, gateway_id: &str, device_id: &str) -> Result<()> {
        let (gateway, device) = self.gateway_pair(parent, gateway_id, device_id).await?;
        match self.inner.store.bind(gateway.num_id, device.num_id).await.map_err(storage)? {
            BindOutcome::Bound | BindOutcome::AlreadyBound => Ok(()),
            BindOutcome::GatewayFull => Err(Error::new(
                Code::ResourceExhausted,
                format!(
                    "The gateway '{}' already has {} bound devices.",
                    gateway.id,
                    ferrocore_store::MAX_DEVICES_PER_GATEWAY
                ),
            )),
            BindOutcome::DeviceFull => Err(Error::new(
                Code::ResourceExhausted,
                format!(
                    "The device '{}' is already bound to {} gateways.",
                    device.id,
                    ferrocore_store::MAX_GATEWAYS_PER_DEVICE
                ),
            )),
        }
    }

    pub async fn unbind_device_from_gateway(
        &self,
        parent: &RegistryName,
        gateway_id: &str,
        device_id: &str,
    ) -> Result<()> {
        let (gateway, device) = self.gateway_pair(parent, gateway_id, device_id).await?;
        if self.inner.store.unbind(gateway.num_id, device.num_id).await.map_err(storage)? {
            // Attached through that gateway, it goes: whatever the auth method, an unbound device
            // is one the gateway no longer speaks for.
            self.inner.presence.detach_from_gateway(device.num_id, gateway.num_id, presence::Reason::Unbound);
            if let Some(p) = self.peers() {
                p.unbound(device.num_id, gateway.num_id);
            }
            Ok(())
        } else {
            Err(Error::not_found(format!("The device '{}' is not bound to the gateway '{}'.", device.id, gateway.id)))
        }
    }

    async fn gateway_pair(&self, parent: &RegistryName, gateway_id: &str, device_id: &str) -> Result<(Device, Device)> {
        let gateway = self.resolve_in(parent, "gateway_id", gateway_id).await?;
        let device = self.resolve_in(parent, "device_id", device_id).await?;
        if !gateway.gateway_config.gateway_type.is_gateway() {
            return Err(Error::invalid("gateway_id", format!("The device '{}' is not a gateway.", gateway.id)));
        }
        if device.gateway_config.gateway_type.is_gateway() {
            return Err(Error::invalid(
                "device_id",
                format!("The device '{}' is a gateway; only non-gateway devices can be bound.", device.id),
            ));
        }
        Ok((gateway, device))
    }
}

fn history_limit(field: &str, n: i64) -> Result<usize> {
    match n {
        0 => Ok(HISTORY_KEPT),
        n if n < 0 => Err(Error::invalid(field, format!("The field '{field}' must not be negative."))),
        n => Ok(usize::try_from(n).unwrap_or(HISTORY_KEPT).min(HISTORY_KEPT)),
    }
}

#[cfg(test)]
mod tests {
    use crate::presence::{CONTROL_QUEUE, SessionControl};
    use crate::testing::Fixture;
    use crate::{Code, Settings};
    use ferrocore_model::DeviceConfig;
    use std::time::{Duration, Instant};

    /// Finding 5 of issue 10: the send into a full control queue waited outside the ack timeout,
    /// so the call could hang forever.
    #[tokio::test]
    async fn a_command_to_a_session_that_does_not_drain_its_queue_times_out() {
        let timeout = Duration::from_millis(200);
        let f = Fixture::new(Settings { command_ack_timeout: timeout, ..Settings::default() }).await;
        let presence = f.core.presence();
        let link = presence.attach(f.device.num_id);
        link.commands().set(true);
        let queue = presence.command_channel(f.device.num_id).unwrap();
        for _ in 0..CONTROL_QUEUE {
            queue
                .try_send(SessionControl::Config { device: f.device.num_id, config: DeviceConfig::default() })
                .unwrap();
        }
        let started = Instant::now();
        let sent = tokio::time::timeout(Duration::from_secs(5), f.core.send_command(&f.name(), b"x".to_vec(), ""))
            .await
            .expect("sendCommandToDevice returns");
        assert_eq!(sent.unwrap_err().code, Code::DeadlineExceeded);
        assert!(started.elapsed() < Duration::from_secs(2), "bounded by the command timeout");
    }

    /// Finding 11 of issue 10: each config PUBACK was a SQLite transaction of its own. Now it is
    /// batched with device activity; reads see it before the flush.
    #[tokio::test]
    async fn config_acknowledgements_are_batched_and_visible_at_once() {
        let clock = std::sync::Arc::new(crate::clock::ManualClock::new(ferrocore_model::Timestamp::now()));
        let f = Fixture::with_clock(Settings::default(), clock.clone()).await;
        for data in [b"two", b"six"] {
            f.core.modify_config(&f.name(), 0, data.to_vec()).await.unwrap();
            // One config update per second per device.
            clock.advance(Duration::from_secs(1));
        }
        let dev = f.authenticated();
        f.core.config_acked(&dev, 2);
        f.core.config_acked(&dev, 3);

        let stored = f.sqlite.list_config_versions(f.device.num_id, 10).await.unwrap();
        assert!(stored.iter().all(|c| c.device_ack_time.is_none()), "nothing written per acknowledgement");
        let seen = f.core.list_config_versions(&f.name(), 0).await.unwrap();
        let acked: Vec<(i64, bool)> = seen.iter().map(|c| (c.version, c.device_ack_time.is_some())).collect();
        assert_eq!(acked, [(3, true), (2, true), (1, false)], "reads overlay pending acknowledgements");
        let device = f.core.get_device(&f.name()).await.unwrap();
        assert!(device.config.device_ack_time.is_some() && device.activity.last_config_ack_time.is_some());

        f.core.activity().flush().await;
        let stored = f.sqlite.list_config_versions(f.device.num_id, 10).await.unwrap();
        let acked: Vec<(i64, bool)> = stored.iter().map(|c| (c.version, c.device_ack_time.is_some())).collect();
        assert_eq!(acked, [(3, true), (2, true), (1, false)], "one flush writes both");
    }
}
