//! Registry use cases: create, get, list, patch, delete.

use crate::error::storage;
use crate::{Code, Core, Error, Result, paging, presence};
use ferrocore_auth::credentials::parse_ca_certificate;
use ferrocore_model::limits::{self, MAX_REGISTRY_CREDENTIALS};
use ferrocore_model::mask::{RegistryUpdateField, parse_registry_update_mask};
use ferrocore_model::{
    EventNotificationConfig, HttpState, LocationName, LogLevel, MqttState, PublicKeyCertificateFormat, Registry,
    RegistryCredential, RegistryId, RegistryName, StateNotificationConfig,
};
use ferrocore_store::{DeviceQuery, GatewayFilter, RegistryDelete, StoreError};

/// The user-settable fields of a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryFields {
    pub event_notification_configs: Vec<EventNotificationConfig>,
    pub state_notification_config: Option<StateNotificationConfig>,
    pub mqtt_state: MqttState,
    pub http_state: HttpState,
    pub log_level: LogLevel,
    /// CA certificates; any `x509_details` given are ignored and recomputed.
    pub credentials: Vec<RegistryCredential>,
}

/// A registry as a client sent it, before validation.
#[derive(Debug, Clone, Default)]
pub struct RegistryInput {
    pub id: String,
    pub name: String,
    pub fields: RegistryFields,
}

pub struct RegistryPage {
    pub registries: Vec<Registry>,
    pub next_page_token: String,
}

pub(crate) fn registry_not_found(name: &RegistryName) -> Error {
    Error::not_found(format!("A registry with the name '{name}' doesn't exist."))
}

fn check_fields(f: &mut RegistryFields) -> Result<()> {
    // Unspecified means enabled; store and show it as such, as IoT Core did.
    if f.mqtt_state == MqttState::Unspecified {
        f.mqtt_state = MqttState::Enabled;
    }
    if f.http_state == HttpState::Unspecified {
        f.http_state = HttpState::Enabled;
    }
    limits::check_event_notification_configs(
        "device_registry.event_notification_configs",
        &f.event_notification_configs,
    )?;
    if let Some(s) = &f.state_notification_config {
        if s.pubsub_topic_name.is_empty() {
            // An empty topic means "no state notifications", as the proto default does.
            f.state_notification_config = None;
        } else {
            limits::check_topic_name(
                "device_registry.state_notification_config.pubsub_topic_name",
                &s.pubsub_topic_name,
            )?;
        }
    }
    if f.credentials.len() > MAX_REGISTRY_CREDENTIALS {
        return Err(Error::invalid(
            "device_registry.credentials",
            format!(
                "A registry may have at most {MAX_REGISTRY_CREDENTIALS} credentials; {} were given.",
                f.credentials.len()
            ),
        ));
    }
    for (i, c) in f.credentials.iter_mut().enumerate() {
        let field = format!("device_registry.credentials[{i}].public_key_certificate");
        if c.format != PublicKeyCertificateFormat::X509CertificatePem {
            return Err(Error::invalid(&field, "The certificate format must be X509_CERTIFICATE_PEM."));
        }
        let parsed = parse_ca_certificate(&c.certificate).map_err(|e| Error::invalid(&field, e.0))?;
        c.x509_details = Some(parsed.details);
    }
    Ok(())
}

impl Core {
    pub async fn create_registry(&self, parent: &LocationName, mut input: RegistryInput) -> Result<Registry> {
        if !input.name.is_empty() {
            return Err(Error::invalid(
                "device_registry.name",
                "The registry name must be empty on create; it is set by the server.",
            ));
        }
        if input.id.is_empty() {
            return Err(Error::invalid("device_registry.id", "The registry id is required."));
        }
        let id = RegistryId::parse_field("device_registry.id", &input.id)?;
        check_fields(&mut input.fields)?;
        let f = input.fields;
        let registry = Registry {
            name: RegistryName { parent: parent.clone(), registry: id },
            event_notification_configs: f.event_notification_configs,
            state_notification_config: f.state_notification_config,
            mqtt_state: f.mqtt_state,
            http_state: f.http_state,
            log_level: f.log_level,
            credentials: f.credentials,
        };
        match self.inner.store.create_registry(&registry).await {
            Ok(()) => Ok(registry),
            Err(StoreError::AlreadyExists) => Err(Error::new(
                Code::AlreadyExists,
                format!("Resource already exists in the project (resource={}).", registry.name.registry),
            )),
            Err(e) => Err(storage(e)),
        }
    }

    pub async fn get_registry(&self, name: &RegistryName) -> Result<Registry> {
        self.inner.store.get_registry(name).await.map_err(storage)?.ok_or_else(|| registry_not_found(name))
    }

    pub async fn list_registries(
        &self,
        parent: &LocationName,
        page_size: i64,
        page_token: &str,
    ) -> Result<RegistryPage> {
        let size = paging::page_size(page_size)?;
        let after = paging::decode("registries", page_token)?
            .map(|s| RegistryId::parse_field("page_token", &s))
            .transpose()
            .map_err(|_| Error::invalid("page_token", "The page token is invalid."))?;
        let mut registries =
            self.inner.store.list_registries(parent, after.as_ref(), size + 1).await.map_err(storage)?;
        let next_page_token = if registries.len() > size as usize {
            registries.truncate(size as usize);
            registries.last().map(|r| paging::encode("registries", r.name.registry.as_str())).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(RegistryPage { registries, next_page_token })
    }

    pub async fn update_registry(
        &self,
        name: &RegistryName,
        mut input: RegistryInput,
        update_mask: &str,
    ) -> Result<Registry> {
        let fields = parse_registry_update_mask(update_mask)?;
        if !input.id.is_empty() && input.id != name.registry.as_str() {
            return Err(Error::invalid("device_registry.id", "The registry id cannot be changed."));
        }
        check_fields(&mut input.fields)?;
        let mut registry = self.get_registry(name).await?;
        let mqtt_was_enabled = registry.mqtt_state != MqttState::Disabled;
        let f = input.fields;
        for field in fields {
            match field {
                RegistryUpdateField::EventNotificationConfigs => {
                    registry.event_notification_configs = f.event_notification_configs.clone()
                }
                RegistryUpdateField::StateNotificationConfig => {
                    registry.state_notification_config = f.state_notification_config.clone()
                }
                RegistryUpdateField::MqttConfig => registry.mqtt_state = f.mqtt_state,
                RegistryUpdateField::HttpConfig => registry.http_state = f.http_state,
                RegistryUpdateField::LogLevel => registry.log_level = f.log_level,
                RegistryUpdateField::Credentials => registry.credentials = f.credentials.clone(),
            }
        }
        let result = self.inner.store.update_registry(&registry).await;
        self.forget_registry(name).await;
        match result {
            Ok(()) => {
                // Disabling MQTT ends the registry's live MQTT sessions at once (new ones are
                // refused at CONNECT, as HTTP requests are refused from now on). Its CA
                // credentials changing ends nothing: existing devices keep connecting.
                if mqtt_was_enabled
                    && registry.mqtt_state == MqttState::Disabled
                    && let Err(e) = self.disconnect_registry(name).await
                {
                    // The update is made and new connections are refused; sessions the failed
                    // read did not reach end when their token does.
                    tracing::error!(registry = %name, error = %e.message, "could not disconnect the registry's devices");
                }
                Ok(registry)
            }
            Err(StoreError::NotFound) => Err(registry_not_found(name)),
            Err(e) => Err(storage(e)),
        }
    }

    /// Another node changed or deleted a registry: this node drops its cached copy and, when the
    /// registry's MQTT bridge is now disabled, ends the sessions it holds for the registry's
    /// devices, as the node that made the change did for its own.
    pub async fn registry_changed_elsewhere(&self, name: &RegistryName) -> Result<()> {
        self.forget_registry_here(name);
        match self.inner.store.get_registry(name).await.map_err(storage)? {
            Some(r) if r.mqtt_state == MqttState::Disabled => self.disconnect_registry(name).await,
            _ => Ok(()),
        }
    }

    /// Ends the presence on this node of every device of the registry: their connections close,
    /// devices attached through a gateway are detached. Pages through the registry's devices
    /// (ids only matter), so it costs one read per thousand devices and nothing per message.
    async fn disconnect_registry(&self, name: &RegistryName) -> Result<()> {
        const PAGE: u32 = 1000;
        if self.inner.presence.is_empty() {
            return Ok(());
        }
        let mut after = None;
        loop {
            let query = DeviceQuery {
                registry: name.clone(),
                device_ids: Vec::new(),
                num_ids: Vec::new(),
                gateway: GatewayFilter::All,
                after,
                id_prefix: None,
                limit: PAGE,
            };
            let devices = self.inner.store.list_devices(&query).await.map_err(storage)?;
            for d in &devices {
                self.inner.presence.kick(d.num_id, None, presence::Reason::BridgeDisabled);
            }
            if devices.len() < PAGE as usize {
                return Ok(());
            }
            after = devices.last().map(|d| d.id.clone());
        }
    }

    pub async fn delete_registry(&self, name: &RegistryName) -> Result<()> {
        let outcome = self.inner.store.delete_registry(name).await.map_err(storage)?;
        self.forget_registry(name).await;
        match outcome {
            RegistryDelete::Deleted => Ok(()),
            RegistryDelete::NotFound => Err(registry_not_found(name)),
            RegistryDelete::NotEmpty => Err(Error::failed_precondition(format!(
                "The registry '{name}' is not empty; delete its devices first."
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;
    use std::time::Duration;

    /// Finding 10 of issue 10: a cache miss that read the registry just before an update, and
    /// inserted it just after, kept the old registry in the device bridges' cache for good.
    #[tokio::test]
    async fn a_registry_read_racing_an_update_does_not_cache_the_old_registry() {
        let f = Fixture::new(Default::default()).await;
        let name = f.device.registry.clone();
        f.core.forget_registry_here(&name);
        f.store.get_registry.arm();
        let core = f.core.clone();
        let reader = {
            let name = name.clone();
            tokio::spawn(async move { core.cached_registry(&name).await.unwrap() })
        };
        f.store.get_registry.held().await;
        let input = RegistryInput {
            fields: RegistryFields { mqtt_state: MqttState::Disabled, ..Default::default() },
            ..Default::default()
        };
        f.core.update_registry(&name, input, "mqtt_config").await.unwrap();
        f.store.get_registry.open();
        let raced = tokio::time::timeout(Duration::from_secs(5), reader).await.unwrap().unwrap();
        assert_eq!(raced.mqtt_state, MqttState::Enabled, "the racing read saw the old registry");
        let now = f.core.cached_registry(&name).await.unwrap();
        assert_eq!(now.mqtt_state, MqttState::Disabled, "but it was not cached");
    }
}
