//! The gRPC DeviceManager against REST: one scenario table through both, compared field by field.

use crate::harness::*;
use ferrocore_proto::iot;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Replaces what must differ between the two runs (the project, numeric ids) and checks that
/// timestamps are UTC `Z` strings before masking them.
fn normalize(v: &Value, project: &str) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if k.ends_with("Time") {
                        assert!(v.as_str().is_some_and(|s| s.ends_with('Z')), "{k} = {v}");
                        json!("<time>")
                    } else if k == "numId" {
                        json!("<num>")
                    } else {
                        normalize(v, project)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| normalize(v, project)).collect()),
        Value::String(s) => json!(mask_num_ids(&s.replace(project, "<project>"))),
        other => other.clone(),
    }
}

/// Device names (also inside messages) end in the numeric id, which differs between runs.
fn mask_num_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("/devices/") {
        let (head, tail) = rest.split_at(i + "/devices/".len());
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("<num>");
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// A result as JSON, or the error as `{code, status, message}`: the same shape for both APIs.
fn grpc_result<T: serde::Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Value {
    match r {
        Ok(resp) => serde_json::to_value(resp.into_inner()).unwrap(),
        Err(status) => {
            let name = match status.code() {
                tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
                tonic::Code::NotFound => "NOT_FOUND",
                tonic::Code::AlreadyExists => "ALREADY_EXISTS",
                tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
                tonic::Code::Unauthenticated => "UNAUTHENTICATED",
                other => panic!("unexpected gRPC status {other:?}: {}", status.message()),
            };
            json!({"error": {"status": name, "message": status.message()}})
        }
    }
}

fn rest_result((status, body): (StatusCode, Value)) -> Value {
    if status.is_success() {
        body
    } else {
        json!({"error": {"status": body["error"]["status"], "message": body["error"]["message"]}})
    }
}

#[tokio::test]
async fn rest_and_grpc_agree_on_every_call() {
    let s = TestServer::start().await;
    let mut g = s.grpc_client(Some(TOKEN)).await;
    let (rp, gp) = ("via-rest", "via-grpc");
    let parent = |p: &str| format!("projects/{p}/locations/us-central1");
    let reg = |p: &str| format!("{}/registries/fleet", parent(p));
    let dev = |p: &str, d: &str| format!("{}/devices/{d}", reg(p));
    let rsa = fixture("rsa_public.pem");
    let ec = fixture("ec_public.pem");
    let mut steps: Vec<(&str, Value, Value)> = vec![];
    macro_rules! step {
        ($name:expr, $rest:expr, $grpc:expr) => {{
            let r = rest_result($rest);
            let g = grpc_result($grpc);
            steps.push(($name, normalize(&r, rp), normalize(&g, gp)));
            (r, g)
        }};
    }

    let registry_json = |p: &str| {
        json!({"id": "fleet", "eventNotificationConfigs": [{"pubsubTopicName": format!("projects/{p}/topics/events")}],
               "stateNotificationConfig": {"pubsubTopicName": format!("projects/{p}/topics/state")}, "logLevel": "INFO"})
    };
    let registry_proto = |p: &str| iot::DeviceRegistry {
        id: "fleet".into(),
        event_notification_configs: vec![iot::EventNotificationConfig {
            pubsub_topic_name: format!("projects/{p}/topics/events"),
            ..Default::default()
        }],
        state_notification_config: Some(iot::StateNotificationConfig {
            pubsub_topic_name: format!("projects/{p}/topics/state"),
        }),
        log_level: iot::LogLevel::Info as i32,
        ..Default::default()
    };
    step!(
        "create registry",
        s.post(&format!("{}/registries", parent(rp)), registry_json(rp)).await,
        g.create_device_registry(iot::CreateDeviceRegistryRequest {
            parent: parent(gp),
            device_registry: Some(registry_proto(gp))
        })
        .await
    );
    step!(
        "duplicate registry",
        s.post(&format!("{}/registries", parent(rp)), registry_json(rp)).await,
        g.create_device_registry(iot::CreateDeviceRegistryRequest {
            parent: parent(gp),
            device_registry: Some(registry_proto(gp))
        })
        .await
    );

    let device_json = json!({
        "id": "dev-1",
        "credentials": [{"publicKey": {"format": "RSA_PEM", "key": rsa}, "expirationTime": "2030-05-06T07:08:09Z"},
                        {"publicKey": {"format": "ES256_PEM", "key": ec}}],
        "metadata": {"room": "lab"},
        "gatewayConfig": {"gatewayAuthMethod": "ASSOCIATION_ONLY"}
    });
    let key = |format: iot::PublicKeyFormat, key: &str, exp: Option<i64>| iot::DeviceCredential {
        credential: Some(iot::device_credential::Credential::PublicKey(iot::PublicKeyCredential {
            format: format as i32,
            key: key.into(),
        })),
        expiration_time: exp.map(|s| ferrocore_proto::wkt::Timestamp { seconds: s, nanos: 0 }),
    };
    let device_proto = iot::Device {
        id: "dev-1".into(),
        credentials: vec![
            key(iot::PublicKeyFormat::RsaPem, &rsa, Some(1_904_540_889)),
            key(iot::PublicKeyFormat::Es256Pem, &ec, None),
        ],
        metadata: [("room".to_owned(), "lab".to_owned())].into(),
        gateway_config: Some(iot::GatewayConfig {
            gateway_auth_method: iot::GatewayAuthMethod::AssociationOnly as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let (created, _) = step!(
        "create device",
        s.post(&format!("{}/devices", reg(rp)), device_json.clone()).await,
        g.create_device(iot::CreateDeviceRequest { parent: reg(gp), device: Some(device_proto.clone()) }).await
    );
    assert_eq!(created["credentials"][0]["expirationTime"], "2030-05-06T07:08:09Z");
    step!(
        "create gateway",
        s.post(&format!("{}/devices", reg(rp)), json!({"id": "gw-1", "gatewayConfig": {"gatewayType": "GATEWAY"}}))
            .await,
        g.create_device(iot::CreateDeviceRequest {
            parent: reg(gp),
            device: Some(iot::Device {
                id: "gw-1".into(),
                gateway_config: Some(iot::GatewayConfig {
                    gateway_type: iot::GatewayType::Gateway as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
    );
    step!(
        "duplicate device",
        s.post(&format!("{}/devices", reg(rp)), device_json.clone()).await,
        g.create_device(iot::CreateDeviceRequest { parent: reg(gp), device: Some(device_proto.clone()) }).await
    );
    step!(
        "invalid device id",
        s.post(&format!("{}/devices", reg(rp)), json!({"id": "1bad"})).await,
        g.create_device(iot::CreateDeviceRequest {
            parent: reg(gp),
            device: Some(iot::Device { id: "1bad".into(), ..Default::default() })
        })
        .await
    );
    step!(
        "bad key",
        s.post(
            &format!("{}/devices", reg(rp)),
            json!({"id": "dev-x", "credentials": [{"publicKey": {"format": "RSA_PEM", "key": ec}}]})
        )
        .await,
        g.create_device(iot::CreateDeviceRequest {
            parent: reg(gp),
            device: Some(iot::Device {
                id: "dev-x".into(),
                credentials: vec![key(iot::PublicKeyFormat::RsaPem, &ec, None)],
                ..Default::default()
            }),
        })
        .await
    );
    step!(
        "get device",
        s.get(&dev(rp, "dev-1")).await,
        g.get_device(iot::GetDeviceRequest { name: dev(gp, "dev-1"), field_mask: None }).await
    );
    step!(
        "get device with mask",
        s.get(&format!("{}?fieldMask=metadata,config,gatewayConfig", dev(rp, "dev-1"))).await,
        g.get_device(iot::GetDeviceRequest {
            name: dev(gp, "dev-1"),
            field_mask: Some(ferrocore_proto::FieldMask {
                paths: vec!["metadata".into(), "config".into(), "gateway_config".into()]
            }),
        })
        .await
    );
    step!(
        "missing device",
        s.get(&dev(rp, "ghost")).await,
        g.get_device(iot::GetDeviceRequest { name: dev(gp, "ghost"), field_mask: None }).await
    );
    step!(
        "list with mask",
        s.get(&format!("{}/devices?fieldMask=metadata&pageSize=1", reg(rp))).await,
        g.list_devices(iot::ListDevicesRequest {
            parent: reg(gp),
            field_mask: Some(ferrocore_proto::FieldMask { paths: vec!["metadata".into()] }),
            page_size: 1,
            ..Default::default()
        })
        .await
    );
    step!(
        "update device",
        s.patch(
            &format!("{}?updateMask=blocked,metadata", dev(rp, "dev-1")),
            json!({"blocked": true, "metadata": {"k": "v"}})
        )
        .await,
        g.update_device(iot::UpdateDeviceRequest {
            device: Some(iot::Device {
                name: dev(gp, "dev-1"),
                blocked: true,
                metadata: [("k".to_owned(), "v".to_owned())].into(),
                ..Default::default()
            }),
            update_mask: Some(ferrocore_proto::FieldMask { paths: vec!["blocked".into(), "metadata".into()] }),
        })
        .await
    );
    step!(
        "update immutable field",
        s.patch(&format!("{}?updateMask=id", dev(rp, "dev-1")), json!({})).await,
        g.update_device(iot::UpdateDeviceRequest {
            device: Some(iot::Device { name: dev(gp, "dev-1"), ..Default::default() }),
            update_mask: Some(ferrocore_proto::FieldMask { paths: vec!["id".into()] }),
        })
        .await
    );
    for (name, version) in [("modify config", 1), ("stale config version", 1)] {
        step!(
            name,
            s.post(
                &format!("{}:modifyCloudToDeviceConfig", dev(rp, "dev-1")),
                json!({"versionToUpdate": version.to_string(), "binaryData": "AAEC"})
            )
            .await,
            g.modify_cloud_to_device_config(iot::ModifyCloudToDeviceConfigRequest {
                name: dev(gp, "dev-1"),
                version_to_update: version,
                binary_data: vec![0, 1, 2]
            })
            .await
        );
    }
    step!(
        "config versions",
        s.get(&format!("{}/configVersions", dev(rp, "dev-1"))).await,
        g.list_device_config_versions(iot::ListDeviceConfigVersionsRequest { name: dev(gp, "dev-1"), num_versions: 0 })
            .await
    );
    step!(
        "states",
        s.get(&format!("{}/states", dev(rp, "dev-1"))).await,
        g.list_device_states(iot::ListDeviceStatesRequest { name: dev(gp, "dev-1"), num_states: 0 }).await
    );
    step!(
        "send command",
        s.post(&format!("{}:sendCommandToDevice", dev(rp, "dev-1")), json!({"binaryData": "AAEC"})).await,
        g.send_command_to_device(iot::SendCommandToDeviceRequest {
            name: dev(gp, "dev-1"),
            binary_data: vec![0, 1, 2],
            subfolder: String::new()
        })
        .await
    );
    for (name, bind) in [("bind", true), ("unbind", false), ("unbind again", false)] {
        let verb = if bind { "bindDeviceToGateway" } else { "unbindDeviceFromGateway" };
        let rest = s.post(&format!("{}:{verb}", reg(rp)), json!({"gatewayId": "gw-1", "deviceId": "dev-1"})).await;
        let (p, gw, d) = (reg(gp), "gw-1".to_owned(), "dev-1".to_owned());
        if bind {
            step!(
                name,
                rest,
                g.bind_device_to_gateway(iot::BindDeviceToGatewayRequest { parent: p, gateway_id: gw, device_id: d })
                    .await
            );
        } else {
            step!(
                name,
                rest,
                g.unbind_device_from_gateway(iot::UnbindDeviceFromGatewayRequest {
                    parent: p,
                    gateway_id: gw,
                    device_id: d
                })
                .await
            );
        }
    }
    step!(
        "list registries",
        s.get(&format!("{}/registries", parent(rp))).await,
        g.list_device_registries(iot::ListDeviceRegistriesRequest { parent: parent(gp), ..Default::default() }).await
    );
    step!(
        "delete non-empty registry",
        s.delete(&reg(rp)).await,
        g.delete_device_registry(iot::DeleteDeviceRegistryRequest { name: reg(gp) }).await
    );
    step!(
        "delete device",
        s.delete(&dev(rp, "dev-1")).await,
        g.delete_device(iot::DeleteDeviceRequest { name: dev(gp, "dev-1") }).await
    );

    for (name, rest, grpc) in &steps {
        assert_eq!(rest, grpc, "step '{name}' differs between REST and gRPC");
    }
    // The table exercised successes and each kind of error.
    let errors: Vec<&str> = steps.iter().filter_map(|(_, r, _)| r["error"]["status"].as_str()).collect();
    for status in ["ALREADY_EXISTS", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"] {
        assert!(errors.contains(&status), "no {status} step in {errors:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn grpc_needs_the_token_and_reports_field_violations() {
    let s = TestServer::start().await;
    for token in [None, Some("not-the-admin-token-xyz")] {
        let mut g = s.grpc_client(token).await;
        let err = g
            .get_device_registry(iot::GetDeviceRegistryRequest { name: "projects/p/locations/l/registries/reg".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token:?}");
    }
    let mut g = s.grpc_client(Some(TOKEN)).await;
    let err = g
        .create_device_registry(iot::CreateDeviceRegistryRequest {
            parent: "projects/p/locations/l".into(),
            device_registry: Some(iot::DeviceRegistry { id: "x".into(), ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    use prost::Message;
    let details =
        ferrocore_proto::rpc::Status::decode(err.details()).expect("grpc-status-details-bin is a google.rpc.Status");
    assert_eq!(details.code, 3);
    let any = &details.details[0];
    assert_eq!(any.type_url, "type.googleapis.com/google.rpc.BadRequest");
    let bad = ferrocore_proto::rpc::BadRequest::decode(any.value.clone()).unwrap();
    assert_eq!(bad.field_violations[0].field, "device_registry.id");
    let err = g.get_device_registry(iot::GetDeviceRegistryRequest { name: "registries/reg".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("'name' must be in the form"), "{}", err.message());
    s.stop().await;
}

/// Copies the test certificate and key next to the server, the key with mode 0600.
fn tls_files(dir: &std::path::Path) -> ferrocore::server::TlsFiles {
    use std::os::unix::fs::PermissionsExt;
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let cert = dir.join("server.pem");
    let key = dir.join("server-key.pem");
    std::fs::copy(format!("{src}/server.pem"), &cert).unwrap();
    std::fs::copy(format!("{src}/server-key.pem"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    ferrocore::server::TlsFiles { cert, key }
}

#[tokio::test]
async fn grpc_over_tls_with_alpn_h2() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let s = TestServer::start_with(|dir| Some(tls_files(dir))).await;
    let ca = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem")).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    let channel =
        Endpoint::from_shared(format!("https://{}", s.grpc)).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    let mut g = iot::device_manager_client::DeviceManagerClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", token.clone());
            Ok(req)
        },
    );
    let r = g
        .create_device_registry(iot::CreateDeviceRegistryRequest {
            parent: "projects/tls/locations/l".into(),
            device_registry: Some(iot::DeviceRegistry { id: "secure".into(), ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.name, "projects/tls/locations/l/registries/secure");

    // A plaintext client cannot talk to the TLS listener.
    let mut plain = s.grpc_client(Some(TOKEN)).await;
    assert!(plain.get_device_registry(iot::GetDeviceRegistryRequest { name: r.name.clone() }).await.is_err());
    s.stop().await;
}

#[tokio::test]
async fn a_tls_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let files = tls_files(dir.path());
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = ferrocore::server::Config {
        data_dir: dir.path().join("data"),
        admin_token: Some(TOKEN.into()),
        activity_flush_interval: std::time::Duration::from_secs(1),
        tls: Some(files),
        topic_log: Default::default(),
        mqtt: Default::default(),
        core: Default::default(),
        pubsub_anonymous: false,
        ..Default::default()
    };
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listeners = ferrocore::server::Listeners { http, grpc: Some(grpc), mqtts: None, mqtt: None };
    let err = ferrocore::server::run(config, listeners, std::future::pending(), |_| {}).await.unwrap_err();
    assert!(format!("{err:#}").contains("readable by other users"), "{err:#}");
}
