//! The gRPC service `google.cloud.iot.v1.DeviceManager` over [`DeviceManager`].
//!
//! Each RPC authenticates the caller from the `authorization` metadata, checks the permission the
//! method needs on the resource its request names ([`crate::authz`], the same table REST uses),
//! and calls the same [`DeviceManager`] method the REST API transcodes onto. Core errors become
//! gRPC statuses with the same canonical code and message, plus a `google.rpc.BadRequest` in
//! `grpc-status-details-bin` where REST reports a field violation.

use crate::authz::{Access, Call};
use crate::service::DeviceManager;
use ferrocore_core::Error;
use ferrocore_iam::Caller;
use ferrocore_model::{DeviceName, LocationName, RegistryName};
use ferrocore_proto::iot::device_manager_server::{self, DeviceManagerServer};
use ferrocore_proto::{Any, Empty, iam, iot, rpc};
use prost::Message;
use tonic::{Request, Response, Status};

/// Largest request accepted, as for REST bodies.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

pub struct GrpcDeviceManager {
    service: DeviceManager,
    access: Access,
}

/// The service's routes, ready to serve.
pub fn routes(service: DeviceManager, access: Access) -> tonic::service::Routes {
    let svc = DeviceManagerServer::new(GrpcDeviceManager { service, access })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(16 * MAX_MESSAGE_BYTES);
    tonic::service::Routes::new(svc)
}

/// The status of a missing or refused credential, on every gRPC service.
pub(crate) fn unauthenticated() -> Status {
    Status::unauthenticated(
        "Request is missing or has an invalid admin token; send 'authorization: Bearer TOKEN' metadata.",
    )
}

/// The one mapping from core errors to gRPC statuses.
pub fn status(e: Error) -> Status {
    let code = tonic::Code::from_i32(e.code as i32);
    let Some(field) = e.field else {
        return Status::new(code, e.message);
    };
    let violation = rpc::bad_request::FieldViolation { field, description: e.message.clone() };
    let details = rpc::Status {
        code: e.code as i32,
        message: e.message.clone(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
            value: rpc::BadRequest { field_violations: vec![violation] }.encode_to_vec().into(),
        }],
    };
    Status::with_details(code, e.message, details.encode_to_vec().into())
}

/// The `authorization` metadata of a request, as bytes.
pub(crate) fn authorization<T>(req: &Request<T>) -> Option<&[u8]> {
    req.metadata().get("authorization").map(|v| v.as_bytes())
}

// Name parsers with the handlers' field names, so that a principal's request with a bad name gets
// the same INVALID_ARGUMENT the handler would give.
fn location(field: &str, s: &str) -> Result<LocationName, Status> {
    LocationName::parse_field(field, s).map_err(|e| status(e.into()))
}

fn registry(field: &str, s: &str) -> Result<RegistryName, Status> {
    RegistryName::parse_field(field, s).map_err(|e| status(e.into()))
}

fn device(field: &str, s: &str) -> Result<DeviceName, Status> {
    DeviceName::parse_field(field, s).map_err(|e| status(e.into()))
}

impl GrpcDeviceManager {
    fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.access.authenticate(authorization(req)).map_err(|_| unauthenticated())
    }

    async fn check(&self, caller: &Caller, call: Call<'_>) -> Result<(), Status> {
        self.access.check(caller, call).await.map_err(status)
    }
}

/// Each RPC: authenticate, then (for a principal: the owner skips the parse and the check) build
/// the [`Call`] from the request `r` and check it, then serve.
macro_rules! rpcs {
    ($($method:ident($req:ty) -> $resp:ty, |$r:ident| $call:expr $(, as $conv:expr)?;)+ @extra { $($extra:item)* }) => {
        #[tonic::async_trait]
        impl device_manager_server::DeviceManager for GrpcDeviceManager {
            $(
                async fn $method(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    let caller = self.authenticate(&request)?;
                    let $r = request.into_inner();
                    if !matches!(caller, Caller::Owner) {
                        self.check(&caller, $call).await?;
                    }
                    let out = self.service.$method($r).await.map_err(status)?;
                    $(let out = ($conv)(out);)?
                    Ok(Response::new(out))
                }
            )+
            $($extra)*
        }
    };
}

rpcs! {
    create_device_registry(iot::CreateDeviceRegistryRequest) -> iot::DeviceRegistry,
        |r| Call::CreateDeviceRegistry(&location("parent", &r.parent)?);
    get_device_registry(iot::GetDeviceRegistryRequest) -> iot::DeviceRegistry,
        |r| Call::GetDeviceRegistry(&registry("name", &r.name)?);
    update_device_registry(iot::UpdateDeviceRegistryRequest) -> iot::DeviceRegistry,
        |r| Call::UpdateDeviceRegistry(&registry(
            "device_registry.name",
            r.device_registry.as_ref().map_or("", |d| d.name.as_str()),
        )?);
    delete_device_registry(iot::DeleteDeviceRegistryRequest) -> Empty,
        |r| Call::DeleteDeviceRegistry(&registry("name", &r.name)?), as |()| Empty {};
    list_device_registries(iot::ListDeviceRegistriesRequest) -> iot::ListDeviceRegistriesResponse,
        |r| Call::ListDeviceRegistries(&location("parent", &r.parent)?);
    create_device(iot::CreateDeviceRequest) -> iot::Device,
        |r| Call::CreateDevice(&registry("parent", &r.parent)?);
    get_device(iot::GetDeviceRequest) -> iot::Device,
        |r| Call::GetDevice(&device("name", &r.name)?);
    update_device(iot::UpdateDeviceRequest) -> iot::Device,
        |r| Call::UpdateDevice(&device("device.name", r.device.as_ref().map_or("", |d| d.name.as_str()))?);
    delete_device(iot::DeleteDeviceRequest) -> Empty,
        |r| Call::DeleteDevice(&device("name", &r.name)?), as |()| Empty {};
    list_devices(iot::ListDevicesRequest) -> iot::ListDevicesResponse,
        |r| Call::ListDevices(&registry("parent", &r.parent)?);
    modify_cloud_to_device_config(iot::ModifyCloudToDeviceConfigRequest) -> iot::DeviceConfig,
        |r| Call::ModifyCloudToDeviceConfig(&device("name", &r.name)?);
    list_device_config_versions(iot::ListDeviceConfigVersionsRequest) -> iot::ListDeviceConfigVersionsResponse,
        |r| Call::ListDeviceConfigVersions(&device("name", &r.name)?);
    list_device_states(iot::ListDeviceStatesRequest) -> iot::ListDeviceStatesResponse,
        |r| Call::ListDeviceStates(&device("name", &r.name)?);
    send_command_to_device(iot::SendCommandToDeviceRequest) -> iot::SendCommandToDeviceResponse,
        |r| Call::SendCommandToDevice(&device("name", &r.name)?);
    bind_device_to_gateway(iot::BindDeviceToGatewayRequest) -> iot::BindDeviceToGatewayResponse,
        |r| Call::BindDeviceToGateway(&registry("parent", &r.parent)?);
    unbind_device_from_gateway(iot::UnbindDeviceFromGatewayRequest) -> iot::UnbindDeviceFromGatewayResponse,
        |r| Call::UnbindDeviceFromGateway(&registry("parent", &r.parent)?);
    get_iam_policy(iam::GetIamPolicyRequest) -> iam::Policy,
        |r| Call::GetIamPolicy(&registry("resource", &r.resource)?);
    set_iam_policy(iam::SetIamPolicyRequest) -> iam::Policy,
        |r| Call::SetIamPolicy(&registry("resource", &r.resource)?);
    @extra {
        /// Needs no permission: answers the subset of the asked ones the caller holds.
        async fn test_iam_permissions(
            &self,
            request: Request<iam::TestIamPermissionsRequest>,
        ) -> Result<Response<iam::TestIamPermissionsResponse>, Status> {
            let caller = self.authenticate(&request)?;
            let out = self.service.test_iam_permissions(&caller, request.into_inner()).await.map_err(status)?;
            Ok(Response::new(out))
        }
    }
}
