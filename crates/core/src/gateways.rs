//! Gateways speaking for devices: who may attach to a gateway over MQTT, or be relayed by one
//! over HTTP (`gatewayInfo`), under the gateway's `gatewayAuthMethod`; and the trace an access
//! leaves on the device (`gatewayConfig.lastAccessedGateway{Id,Time}`, batched like other activity).
//!
//! The rules, whatever the bridge:
//! * `ASSOCIATION_ONLY`: the device must be bound to the gateway; a device JWT is ignored.
//! * `DEVICE_AUTH_TOKEN_ONLY`: the device's own JWT, checked as a CONNECT password is (its
//!   credentials, audience = project); binding is not checked (HTTP requires it all the same).
//! * `ASSOCIATION_AND_DEVICE_AUTH_TOKEN`: both.
//! * `GATEWAY_AUTH_METHOD_UNSPECIFIED`: no device may use the gateway.
//!
//! Refusals carry a sentence for the gateway (its MQTT errors topic, or the HTTP error): it is
//! already authenticated and asked about that device, so it learns nothing it could not.

use crate::Core;
use crate::bridge::{AuthFailure, AuthenticatedDevice};
use ferrocore_auth::jwt::VerifiedJwt;
use ferrocore_model::ids::printable;
use ferrocore_model::{Device, DeviceActivity, DeviceId, DeviceRef, GatewayAccess, GatewayAuthMethod, NumId};
use ferrocore_store::{DeviceQuery, GatewayFilter};

/// Devices one gateway may have attached at once (IoT Core's quota).
pub const MAX_ATTACHED_DEVICES: usize = 1_000;

/// Why a gateway may not speak for a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayRefusal {
    /// The rules say no; the text is for the gateway.
    #[error("{0}")]
    Refused(String),
    /// The server could not decide (storage down).
    #[error("The server could not check the device; retry later.")]
    Unavailable,
}

/// How the device itself proved who it is, if at all.
enum Proof<'a> {
    /// Nothing: the gateway asks on its own authority.
    None,
    /// A JWT still to check (an MQTT attach payload).
    Token(&'a str),
    /// Its own JWT, already checked (an HTTP request sent with `gatewayInfo.gatewayId`).
    Verified,
}

fn refused(message: impl Into<String>) -> GatewayRefusal {
    GatewayRefusal::Refused(message.into())
}

fn method_name(m: GatewayAuthMethod) -> &'static str {
    match m {
        GatewayAuthMethod::Unspecified => "GATEWAY_AUTH_METHOD_UNSPECIFIED",
        GatewayAuthMethod::AssociationOnly => "ASSOCIATION_ONLY",
        GatewayAuthMethod::DeviceAuthTokenOnly => "DEVICE_AUTH_TOKEN_ONLY",
        GatewayAuthMethod::AssociationAndDeviceAuthToken => "ASSOCIATION_AND_DEVICE_AUTH_TOKEN",
    }
}

impl Core {
    /// MQTT attach: may `gateway` attach the device with string id `device`, proving it with
    /// `token` (the attach payload's `authorization`, if any)? On success the device is what the
    /// gateway then publishes and subscribes for, and its last gateway access is noted.
    pub async fn attach_to_gateway(
        &self,
        gateway: &AuthenticatedDevice,
        device: &str,
        token: Option<&str>,
    ) -> Result<AuthenticatedDevice, GatewayRefusal> {
        let proof = token.filter(|t| !t.is_empty()).map_or(Proof::None, Proof::Token);
        let id = DeviceId::parse_field("device", device)
            .map_err(|_| refused(format!("'{}' is not a valid device ID.", printable(device))))?;
        let gw = self.gateway_device(gateway.num_id, gateway).await?;
        let dev = self.find_device(gateway, &DeviceRef::Id(id)).await?;
        self.delegate(&gw, dev, proof, false, &gateway.token).await
    }

    /// HTTP with `gatewayInfo.delegatedDeviceId`: `gateway` (authenticated by its own JWT) acts
    /// for `device`. There is no device JWT, so only `ASSOCIATION_ONLY` gateways may, for devices
    /// bound to them.
    pub async fn act_for_device(
        &self,
        gateway: &AuthenticatedDevice,
        device: &str,
    ) -> Result<AuthenticatedDevice, GatewayRefusal> {
        let r = DeviceRef::parse_field("gateway_info.delegated_device_id", device)
            .map_err(|_| refused(format!("'{}' is not a valid device ID.", printable(device))))?;
        let gw = self.gateway_device(gateway.num_id, gateway).await?;
        let dev = self.find_device(gateway, &r).await?;
        self.delegate(&gw, dev, Proof::None, true, &gateway.token).await
    }

    /// HTTP with `gatewayInfo.gatewayId`: `device` (authenticated by its own JWT) sends through
    /// `gateway`, which must be a gateway of its registry it is bound to, allowing device tokens.
    pub async fn relay_through(&self, device: &AuthenticatedDevice, gateway: &str) -> Result<(), GatewayRefusal> {
        let r = DeviceRef::parse_field("gateway_info.gateway_id", gateway)
            .map_err(|_| refused(format!("'{}' is not a valid gateway ID.", printable(gateway))))?;
        let gw = self.find_device(device, &r).await?;
        if !gw.gateway_config.gateway_type.is_gateway() {
            return Err(refused(format!("The device '{}' is not a gateway.", gw.id)));
        }
        if gw.blocked {
            return Err(refused(format!("The gateway '{}' is blocked.", gw.id)));
        }
        let dev = self.find_device(device, &DeviceRef::Num(device.num_id)).await?;
        self.delegate(&gw, dev, Proof::Verified, true, &device.token).await.map(|_| ())
    }

    /// The gateway as stored now: its auth method may have changed since it connected.
    async fn gateway_device(&self, num: NumId, gateway: &AuthenticatedDevice) -> Result<Device, GatewayRefusal> {
        let gw = self.find_device(gateway, &DeviceRef::Num(num)).await?;
        if !gw.gateway_config.gateway_type.is_gateway() {
            return Err(refused(format!("The device '{}' is not a gateway.", gw.id)));
        }
        if gw.blocked {
            return Err(refused(format!("The gateway '{}' is blocked.", gw.id)));
        }
        Ok(gw)
    }

    /// A device of the same registry as `near`.
    async fn find_device(&self, near: &AuthenticatedDevice, r: &DeviceRef) -> Result<Device, GatewayRefusal> {
        let name = near.registry.device(r.clone());
        match self.inner.store.get_device(&name).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => {
                Err(refused(format!("The device with ID '{r}' does not exist in registry '{}'.", near.registry)))
            }
            Err(e) => {
                tracing::error!(error = %e, gateway = %near.id, device = %r, "device lookup failed for a gateway");
                Err(GatewayRefusal::Unavailable)
            }
        }
    }

    /// Applies the gateway's auth method to `dev`. `binding` forces the association check
    /// (HTTP always needs it). `vouch` is the token standing for the device when it gave none.
    async fn delegate(
        &self,
        gw: &Device,
        dev: Device,
        proof: Proof<'_>,
        binding: bool,
        vouch: &VerifiedJwt,
    ) -> Result<AuthenticatedDevice, GatewayRefusal> {
        if dev.num_id == gw.num_id {
            return Err(refused("A gateway cannot attach or act for itself."));
        }
        if dev.gateway_config.gateway_type.is_gateway() {
            return Err(refused(format!(
                "The device '{}' is a gateway; gateways cannot be attached to gateways.",
                dev.id
            )));
        }
        if dev.blocked {
            return Err(refused(format!("The device '{}' is blocked.", dev.id)));
        }
        let method = gw.gateway_config.gateway_auth_method;
        let (association, token) = match method {
            GatewayAuthMethod::Unspecified => {
                return Err(refused(format!(
                    "The gateway '{}' has gatewayAuthMethod GATEWAY_AUTH_METHOD_UNSPECIFIED: no device may use it.",
                    gw.id
                )));
            }
            GatewayAuthMethod::AssociationOnly => (true, false),
            GatewayAuthMethod::DeviceAuthTokenOnly => (false, true),
            GatewayAuthMethod::AssociationAndDeviceAuthToken => (true, true),
        };
        if (association || binding) && !self.is_bound(gw, &dev).await? {
            return Err(refused(format!("The device '{}' is not bound to the gateway '{}'.", dev.id, gw.id)));
        }
        let verified = match (token, proof) {
            (false, _) | (true, Proof::Verified) => None,
            (true, Proof::None) => {
                return Err(refused(format!(
                    "The gateway's gatewayAuthMethod {} requires the device's own JWT, as \
                     {{\"authorization\": \"<JWT>\"}} in the attach payload (over HTTP: send the request \
                     as the device, with gatewayInfo.gatewayId).",
                    method_name(method)
                )));
            }
            (true, Proof::Token(t)) => {
                Some(self.verify_token(&dev.registry, &dev.credentials, t).map_err(|e| match e {
                    AuthFailure::Malformed(why) | AuthFailure::NotAuthorized(why) => {
                        refused(format!("The JWT of device '{}' was refused: {why}", dev.id))
                    }
                    AuthFailure::Unavailable => GatewayRefusal::Unavailable,
                })?)
            }
        };
        let access = GatewayAccess { gateway_id: gw.id.clone(), time: self.now() };
        self.inner.activity.record(dev.num_id, &DeviceActivity { gateway_access: Some(access), ..Default::default() });
        let token = verified.unwrap_or_else(|| vouch.clone());
        self.inner.device_log.note_level(dev.num_id, dev.log_level);
        Ok(AuthenticatedDevice {
            token,
            registry: std::sync::Arc::new(dev.registry),
            id: dev.id,
            num_id: dev.num_id,
            is_gateway: false,
        })
    }

    async fn is_bound(&self, gw: &Device, dev: &Device) -> Result<bool, GatewayRefusal> {
        let query = DeviceQuery {
            registry: gw.registry.clone(),
            device_ids: Vec::new(),
            num_ids: vec![dev.num_id],
            gateway: GatewayFilter::BoundTo(gw.num_id),
            after: None,
            id_prefix: None,
            limit: 1,
        };
        match self.inner.store.list_devices(&query).await {
            Ok(found) => Ok(!found.is_empty()),
            Err(e) => {
                tracing::error!(error = %e, gateway = %gw.id, device = %dev.id, "binding lookup failed for a gateway");
                Err(GatewayRefusal::Unavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DeviceInput;
    use crate::testing::Fixture;
    use ferrocore_model::GatewayType;

    /// A gateway `gw-1` of the fixture's registry with this auth method, as a bridge holds it.
    async fn gateway(f: &Fixture, method: GatewayAuthMethod) -> AuthenticatedDevice {
        let input = DeviceInput {
            id: "gw-1".into(),
            gateway_type: GatewayType::Gateway,
            gateway_auth_method: method,
            ..Default::default()
        };
        let gw = f.core.create_device(&f.device.registry, input).await.unwrap();
        AuthenticatedDevice { id: gw.id, num_id: gw.num_id, is_gateway: true, ..f.authenticated() }
    }

    #[tokio::test]
    async fn an_attach_is_noted_on_the_device_and_reaches_the_store_with_the_next_flush() {
        let f = Fixture::new(Default::default()).await;
        let gw = gateway(&f, GatewayAuthMethod::AssociationOnly).await;
        let refused = f.core.attach_to_gateway(&gw, "dev", None).await.unwrap_err();
        assert!(matches!(&refused, GatewayRefusal::Refused(why) if why.contains("not bound")), "{refused:?}");
        f.core.bind_device_to_gateway(&f.device.registry, "gw-1", "dev").await.unwrap();
        let dev = f.core.attach_to_gateway(&gw, "dev", Some("ignored")).await.unwrap();
        assert_eq!((dev.num_id, dev.is_gateway), (f.device.num_id, false));

        let seen = f.core.get_device(&f.name()).await.unwrap();
        assert_eq!(seen.gateway_config.last_accessed_gateway_id, "gw-1", "reads overlay the access");
        let stored = f.sqlite.get_device(&f.name()).await.unwrap().unwrap();
        assert_eq!(stored.gateway_config.last_accessed_gateway_time, None, "nothing written per attach");
        f.core.activity().flush().await;
        let stored = f.sqlite.get_device(&f.name()).await.unwrap().unwrap();
        assert_eq!(stored.gateway_config.last_accessed_gateway_id, "gw-1");
        assert_eq!(stored.gateway_config.last_accessed_gateway_time, seen.gateway_config.last_accessed_gateway_time);
    }

    #[tokio::test]
    async fn http_delegation_needs_a_binding_and_no_device_token() {
        let f = Fixture::new(Default::default()).await;
        let gw = gateway(&f, GatewayAuthMethod::DeviceAuthTokenOnly).await;
        f.core.bind_device_to_gateway(&f.device.registry, "gw-1", "dev").await.unwrap();
        // The gateway's JWT cannot stand for the device's.
        assert!(f.core.act_for_device(&gw, "dev").await.is_err());
        // The device's own JWT, through the gateway, can.
        f.core.relay_through(&f.authenticated(), "gw-1").await.unwrap();
        f.core.unbind_device_from_gateway(&f.device.registry, "gw-1", "dev").await.unwrap();
        assert!(f.core.relay_through(&f.authenticated(), "gw-1").await.is_err(), "HTTP always needs the binding");
    }
}
