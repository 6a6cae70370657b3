//! Every Device Manager RPC, once, in terms of the wire messages.
//!
//! The gRPC adapter calls these directly; the REST adapter transcodes a request (path, query,
//! body) into the same request message first, as Google's HTTP mapping does. So REST and gRPC
//! cannot disagree on validation, results or errors. Callers are authorized before a method is
//! called ([`crate::authz`]); only `testIamPermissions`, whose answer depends on the caller, takes
//! it.
//!
//! A registry's IAM policy lives with [`Iam`]: it is forgotten when the registry is deleted, and
//! a stale one (left by a delete that failed half-way) before a registry of the name is created.

use crate::convert::{self, mask_string};
use crate::pubsub::convert::{policy_from_wire, policy_to_wire};
use ferrocore_core::devices::{GatewayListOption, ListDevicesRequest};
use ferrocore_core::{Code, Core, Error};
use ferrocore_iam::{Caller, Iam, Resource};
use ferrocore_model::mask::DeviceReadMask;
use ferrocore_model::{DeviceName, GatewayType, LocationName, RegistryId, RegistryName};
use ferrocore_proto::{iam, iot};

#[derive(Clone)]
pub struct DeviceManager {
    core: Core,
    iam: Iam,
}

fn registry_name(field: &str, s: &str) -> Result<RegistryName, Error> {
    Ok(RegistryName::parse_field(field, s)?)
}

fn device_name(field: &str, s: &str) -> Result<DeviceName, Error> {
    Ok(DeviceName::parse_field(field, s)?)
}

impl DeviceManager {
    pub fn new(core: Core, iam: Iam) -> Self {
        Self { core, iam }
    }

    pub async fn create_device_registry(
        &self,
        r: iot::CreateDeviceRegistryRequest,
    ) -> Result<iot::DeviceRegistry, Error> {
        let parent = LocationName::parse_field("parent", &r.parent)?;
        let registry = r.device_registry.unwrap_or_default();
        let id = RegistryId::parse_field("device_registry.id", &registry.id).ok();
        let input = convert::registry_input(registry)?;
        if let Some(id) = id {
            let name = RegistryName { parent: parent.clone(), registry: id };
            // Only a name no registry has: a create that fails as ALREADY_EXISTS must leave the
            // existing registry's policy alone.
            match self.core.get_registry(&name).await {
                Err(e) if e.code == Code::NotFound => self.iam.forget_registry_policy(&name).await?,
                _ => {}
            }
        }
        Ok(convert::registry_out(&self.core.create_registry(&parent, input).await?))
    }

    pub async fn get_device_registry(&self, r: iot::GetDeviceRegistryRequest) -> Result<iot::DeviceRegistry, Error> {
        let name = registry_name("name", &r.name)?;
        Ok(convert::registry_out(&self.core.get_registry(&name).await?))
    }

    pub async fn update_device_registry(
        &self,
        r: iot::UpdateDeviceRegistryRequest,
    ) -> Result<iot::DeviceRegistry, Error> {
        let registry = r.device_registry.unwrap_or_default();
        let name = registry_name("device_registry.name", &registry.name)?;
        let mask = mask_string(&r.update_mask).unwrap_or_default();
        let input = convert::registry_input(registry)?;
        Ok(convert::registry_out(&self.core.update_registry(&name, input, &mask).await?))
    }

    pub async fn delete_device_registry(&self, r: iot::DeleteDeviceRegistryRequest) -> Result<(), Error> {
        let name = registry_name("name", &r.name)?;
        self.core.delete_registry(&name).await?;
        // Deleting a registry deletes its policy (docs/iam.md); should this fail, the next create
        // of the name forgets it.
        self.iam.forget_registry_policy(&name).await
    }

    pub async fn list_device_registries(
        &self,
        r: iot::ListDeviceRegistriesRequest,
    ) -> Result<iot::ListDeviceRegistriesResponse, Error> {
        let parent = LocationName::parse_field("parent", &r.parent)?;
        let page = self.core.list_registries(&parent, i64::from(r.page_size), &r.page_token).await?;
        Ok(iot::ListDeviceRegistriesResponse {
            device_registries: page.registries.iter().map(convert::registry_out).collect(),
            next_page_token: page.next_page_token,
        })
    }

    pub async fn create_device(&self, r: iot::CreateDeviceRequest) -> Result<iot::Device, Error> {
        let parent = registry_name("parent", &r.parent)?;
        let input = convert::device_input(r.device.unwrap_or_default())?;
        Ok(convert::device_out(&self.core.create_device(&parent, input).await?, DeviceReadMask::ALL))
    }

    pub async fn get_device(&self, r: iot::GetDeviceRequest) -> Result<iot::Device, Error> {
        let name = device_name("name", &r.name)?;
        let mask = DeviceReadMask::for_get(mask_string(&r.field_mask).as_deref())?;
        Ok(convert::device_out(&self.core.get_device(&name).await?, mask))
    }

    pub async fn update_device(&self, r: iot::UpdateDeviceRequest) -> Result<iot::Device, Error> {
        let device = r.device.unwrap_or_default();
        let name = device_name("device.name", &device.name)?;
        let mask = mask_string(&r.update_mask).unwrap_or_default();
        let input = convert::device_input(device)?;
        Ok(convert::device_out(&self.core.update_device(&name, input, &mask).await?, DeviceReadMask::ALL))
    }

    pub async fn delete_device(&self, r: iot::DeleteDeviceRequest) -> Result<(), Error> {
        self.core.delete_device(&device_name("name", &r.name)?).await
    }

    pub async fn list_devices(&self, r: iot::ListDevicesRequest) -> Result<iot::ListDevicesResponse, Error> {
        self.list_devices_with_prefix(r, String::new()).await
    }

    /// As [`Self::list_devices`], keeping only ids that start with `id_prefix` (REST's
    /// `deviceIdPrefix`, a Ferrocore extension; empty: all).
    pub async fn list_devices_with_prefix(
        &self,
        r: iot::ListDevicesRequest,
        id_prefix: String,
    ) -> Result<iot::ListDevicesResponse, Error> {
        use iot::gateway_list_options::Filter;
        let parent = registry_name("parent", &r.parent)?;
        let mask = DeviceReadMask::for_list(mask_string(&r.field_mask).as_deref())?;
        let gateway = match r.gateway_list_options.and_then(|o| o.filter) {
            None => GatewayListOption::None,
            Some(Filter::GatewayType(t)) => {
                GatewayListOption::GatewayType(GatewayType::from_number(t).ok_or_else(|| {
                    Error::invalid("gateway_list_options.gateway_type", format!("Invalid gateway type {t}."))
                })?)
            }
            Some(Filter::AssociationsGatewayId(g)) => GatewayListOption::AssociationsGatewayId(g),
            Some(Filter::AssociationsDeviceId(d)) => GatewayListOption::AssociationsDeviceId(d),
        };
        let req = ListDevicesRequest {
            device_ids: r.device_ids,
            device_num_ids: r.device_num_ids,
            gateway,
            page_size: i64::from(r.page_size),
            page_token: r.page_token,
            id_prefix,
        };
        let page = self.core.list_devices(&parent, req).await?;
        Ok(iot::ListDevicesResponse {
            devices: page.devices.iter().map(|d| convert::device_out(d, mask)).collect(),
            next_page_token: page.next_page_token,
        })
    }

    pub async fn modify_cloud_to_device_config(
        &self,
        r: iot::ModifyCloudToDeviceConfigRequest,
    ) -> Result<iot::DeviceConfig, Error> {
        let name = device_name("name", &r.name)?;
        Ok(convert::config_out(&self.core.modify_config(&name, r.version_to_update, r.binary_data).await?))
    }

    pub async fn list_device_config_versions(
        &self,
        r: iot::ListDeviceConfigVersionsRequest,
    ) -> Result<iot::ListDeviceConfigVersionsResponse, Error> {
        let name = device_name("name", &r.name)?;
        let configs = self.core.list_config_versions(&name, i64::from(r.num_versions)).await?;
        Ok(iot::ListDeviceConfigVersionsResponse { device_configs: configs.iter().map(convert::config_out).collect() })
    }

    pub async fn list_device_states(
        &self,
        r: iot::ListDeviceStatesRequest,
    ) -> Result<iot::ListDeviceStatesResponse, Error> {
        let name = device_name("name", &r.name)?;
        let states = self.core.list_states(&name, i64::from(r.num_states)).await?;
        Ok(iot::ListDeviceStatesResponse { device_states: states.iter().map(convert::state_out).collect() })
    }

    pub async fn send_command_to_device(
        &self,
        r: iot::SendCommandToDeviceRequest,
    ) -> Result<iot::SendCommandToDeviceResponse, Error> {
        let name = device_name("name", &r.name)?;
        self.core.send_command(&name, r.binary_data, &r.subfolder).await?;
        Ok(iot::SendCommandToDeviceResponse {})
    }

    pub async fn bind_device_to_gateway(
        &self,
        r: iot::BindDeviceToGatewayRequest,
    ) -> Result<iot::BindDeviceToGatewayResponse, Error> {
        let parent = registry_name("parent", &r.parent)?;
        self.core.bind_device_to_gateway(&parent, &r.gateway_id, &r.device_id).await?;
        Ok(iot::BindDeviceToGatewayResponse {})
    }

    pub async fn unbind_device_from_gateway(
        &self,
        r: iot::UnbindDeviceFromGatewayRequest,
    ) -> Result<iot::UnbindDeviceFromGatewayResponse, Error> {
        let parent = registry_name("parent", &r.parent)?;
        self.core.unbind_device_from_gateway(&parent, &r.gateway_id, &r.device_id).await?;
        Ok(iot::UnbindDeviceFromGatewayResponse {})
    }

    /// The registry's policy (an empty one with its etag when none was set); NOT_FOUND when there
    /// is no such registry.
    pub async fn get_iam_policy(&self, r: iam::GetIamPolicyRequest) -> Result<iam::Policy, Error> {
        let name = registry_name("resource", &r.resource)?;
        self.core.get_registry(&name).await?;
        Ok(policy_to_wire(&self.iam.get_registry_policy(&name).await?))
    }

    /// Replaces the registry's policy; a stale etag is ABORTED.
    pub async fn set_iam_policy(&self, r: iam::SetIamPolicyRequest) -> Result<iam::Policy, Error> {
        let name = registry_name("resource", &r.resource)?;
        let policy = r.policy.ok_or_else(|| Error::invalid("policy", "The policy is missing."))?;
        let policy = policy_from_wire(policy)?;
        self.core.get_registry(&name).await?;
        Ok(policy_to_wire(&self.iam.set_registry_policy(&name, policy).await?))
    }

    /// The subset of the asked permissions `caller` holds on the registry; on a registry that
    /// does not exist, none (as Google answered, rather than NOT_FOUND).
    pub async fn test_iam_permissions(
        &self,
        caller: &Caller,
        r: iam::TestIamPermissionsRequest,
    ) -> Result<iam::TestIamPermissionsResponse, Error> {
        let name = registry_name("resource", &r.resource)?;
        // Asked first, so that an unknown permission is refused whether or not the registry exists.
        let held = self.iam.held(caller, Resource::Registry(&name), &r.permissions).await?;
        let permissions = match self.core.get_registry(&name).await {
            Ok(_) => held,
            Err(e) if e.code == Code::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(iam::TestIamPermissionsResponse { permissions })
    }
}
