//! The gRPC service `google.cloud.iot.v1.DeviceManager` over [`DeviceManager`].
//!
//! Each RPC checks the admin token in the `authorization` metadata and calls the same
//! [`DeviceManager`] method the REST API transcodes onto. Core errors become gRPC statuses with the
//! same canonical code and message, plus a `google.rpc.BadRequest` in `grpc-status-details-bin`
//! where REST reports a field violation.

use crate::admin_auth::AdminToken;
use crate::service::DeviceManager;
use ferrocore_core::Error;
use ferrocore_proto::iot::device_manager_server::{self, DeviceManagerServer};
use ferrocore_proto::{Any, Empty, iot, rpc};
use prost::Message;
use tonic::{Request, Response, Status};

/// Largest request accepted, as for REST bodies.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

pub struct GrpcDeviceManager {
    service: DeviceManager,
    token: AdminToken,
}

/// The service's routes, ready to serve.
///
/// The IAM methods of Google's DeviceManager are not served; they answer UNIMPLEMENTED with the
/// same message as over REST, after the same token check.
pub fn routes(service: DeviceManager, token: AdminToken) -> tonic::service::Routes {
    let svc = DeviceManagerServer::new(GrpcDeviceManager { service, token: token.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(16 * MAX_MESSAGE_BYTES);
    let mut router = tonic::service::Routes::new(svc).into_axum_router();
    for (rpc, verb) in [
        ("GetIamPolicy", "getIamPolicy"),
        ("SetIamPolicy", "setIamPolicy"),
        ("TestIamPermissions", "testIamPermissions"),
    ] {
        let token = token.clone();
        let handler = move |headers: axum::http::HeaderMap| {
            let token = token.clone();
            async move {
                let status = if token.accepts(headers.get("authorization").map(|v| v.as_bytes())) {
                    status(Error::new(
                        ferrocore_core::Code::Unimplemented,
                        format!("The method '{verb}' is not supported by this server."),
                    ))
                } else {
                    unauthenticated()
                };
                status.into_http::<axum::body::Body>()
            }
        };
        router = router.route(&format!("/google.cloud.iot.v1.DeviceManager/{rpc}"), axum::routing::any(handler));
    }
    tonic::service::Routes::from(router)
}

fn unauthenticated() -> Status {
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

impl GrpcDeviceManager {
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.token.accepts(req.metadata().get("authorization").map(|v| v.as_bytes())) {
            Ok(())
        } else {
            Err(unauthenticated())
        }
    }
}

macro_rules! rpcs {
    ($($method:ident($req:ty) -> $resp:ty $(as $conv:expr)?;)+) => {
        #[tonic::async_trait]
        impl device_manager_server::DeviceManager for GrpcDeviceManager {
            $(
                async fn $method(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.authorize(&request)?;
                    let out = self.service.$method(request.into_inner()).await.map_err(status)?;
                    $(let out = ($conv)(out);)?
                    Ok(Response::new(out))
                }
            )+
        }
    };
}

rpcs! {
    create_device_registry(iot::CreateDeviceRegistryRequest) -> iot::DeviceRegistry;
    get_device_registry(iot::GetDeviceRegistryRequest) -> iot::DeviceRegistry;
    update_device_registry(iot::UpdateDeviceRegistryRequest) -> iot::DeviceRegistry;
    delete_device_registry(iot::DeleteDeviceRegistryRequest) -> Empty as |()| Empty {};
    list_device_registries(iot::ListDeviceRegistriesRequest) -> iot::ListDeviceRegistriesResponse;
    create_device(iot::CreateDeviceRequest) -> iot::Device;
    get_device(iot::GetDeviceRequest) -> iot::Device;
    update_device(iot::UpdateDeviceRequest) -> iot::Device;
    delete_device(iot::DeleteDeviceRequest) -> Empty as |()| Empty {};
    list_devices(iot::ListDevicesRequest) -> iot::ListDevicesResponse;
    modify_cloud_to_device_config(iot::ModifyCloudToDeviceConfigRequest) -> iot::DeviceConfig;
    list_device_config_versions(iot::ListDeviceConfigVersionsRequest) -> iot::ListDeviceConfigVersionsResponse;
    list_device_states(iot::ListDeviceStatesRequest) -> iot::ListDeviceStatesResponse;
    send_command_to_device(iot::SendCommandToDeviceRequest) -> iot::SendCommandToDeviceResponse;
    bind_device_to_gateway(iot::BindDeviceToGatewayRequest) -> iot::BindDeviceToGatewayResponse;
    unbind_device_from_gateway(iot::UnbindDeviceFromGatewayRequest) -> iot::UnbindDeviceFromGatewayResponse;
}
