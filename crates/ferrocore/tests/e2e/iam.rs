//! Identity and access end to end (docs/iam.md): API tokens and service accounts made through
//! the owner's REST endpoints, each Cloud IoT role allowed and refused over REST and gRPC,
//! registry-scoped grants, revocation, registry policies (etags, testIamPermissions, forgotten
//! with the registry), Pub/Sub roles, and service-account key files through `POST /token`.

use crate::harness::*;
use base64::Engine;
use ferrocore_proto::pubsub::publisher_client::PublisherClient;
use ferrocore_proto::pubsub::subscriber_client::SubscriberClient;
use ferrocore_proto::{iam, iot, pubsub as ps};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PROJECT: &str = "acme";
const LOC: &str = "projects/acme/locations/us-central1";

/// Creates an API token with the admin token; returns (id, token).
async fn api_token(s: &TestServer, principal: &str, role: &str, registry: Option<&str>) -> (String, String) {
    let mut body = json!({"principal": principal, "role": role});
    if let Some(r) = registry {
        body["registry"] = json!(r);
    }
    let (st, created) = s.post(&format!("projects/{PROJECT}/tokens"), body).await;
    assert_eq!(st, StatusCode::OK, "{created}");
    let token = created["token"].as_str().expect("the token, once").to_owned();
    assert!(token.starts_with("fct_"), "{token}");
    assert_eq!(created["principal"], principal);
    assert_eq!(created["role"], role);
    assert!(created["createTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{created}");
    (created["id"].as_str().unwrap().to_owned(), token)
}

async fn call(s: &TestServer, token: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    s.call_as(Some(&format!("Bearer {token}")), method, path, body).await
}

/// Asserts a 403 PERMISSION_DENIED in Google's shape naming `permission`.
fn denied((st, body): (StatusCode, Value), permission: &str) {
    let msg = expect_error(st, &body, 403, "PERMISSION_DENIED");
    assert!(msg.contains(&format!("Permission '{permission}' denied on resource")), "{msg}");
}

fn grpc_denied<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, permission: &str) {
    let status = r.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(permission), "{status:?}");
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `POST /token` with a form body.
async fn token_endpoint(s: &TestServer, form: &[(&str, &str)]) -> (StatusCode, Value, Option<String>) {
    let body: String = form_encode(form);
    let resp = s
        .client
        .post(format!("{}/token", s.base))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let cache = resp.headers().get(reqwest::header::CACHE_CONTROL).map(|v| v.to_str().unwrap().to_owned());
    (status, resp.json().await.unwrap(), cache)
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[tokio::test]
async fn each_cloud_iot_role_is_allowed_what_it_grants_and_refused_the_rest() {
    let s = TestServer::start().await;
    let reg = s.registry(PROJECT, "fleet").await;
    s.device(&reg, "dev-1", json!({})).await;
    let roles = [
        "roles/cloudiot.viewer",
        "roles/cloudiot.deviceController",
        "roles/cloudiot.provisioner",
        "roles/cloudiot.editor",
        "roles/cloudiot.admin",
    ];
    for (level, role) in roles.iter().enumerate() {
        let (_, t) = api_token(&s, &format!("user:level{level}@example.com"), role, None).await;
        let at_least = |min: usize| level >= min;
        // A device's config changes at most once a second: one device per protocol and role.
        let (rest_dev, grpc_dev) = (format!("rest-{level}"), format!("grpc-{level}"));
        s.device(&reg, &rest_dev, json!({})).await;
        s.device(&reg, &grpc_dev, json!({})).await;
        // viewer: read the registry and its devices.
        let (st, body) = call(&s, &t, Method::GET, &reg, None).await;
        assert_eq!(st, StatusCode::OK, "{role}: {body}");
        let (st, body) = call(&s, &t, Method::GET, &format!("{reg}/devices"), None).await;
        assert_eq!(st, StatusCode::OK, "{role}: {body}");
        let (st, body) = call(&s, &t, Method::GET, &format!("{LOC}/registries"), None).await;
        assert_eq!(st, StatusCode::OK, "{role}: {body}");
        // deviceController: configs.
        let config = call(
            &s,
            &t,
            Method::POST,
            &format!("{reg}/devices/{rest_dev}:modifyCloudToDeviceConfig"),
            Some(json!({"binaryData": b64(b"cfg")})),
        )
        .await;
        if at_least(1) {
            assert_eq!(config.0, StatusCode::OK, "{role}: {}", config.1);
        } else {
            denied(config, "cloudiot.devices.updateConfig");
        }
        // provisioner: devices.
        let created =
            call(&s, &t, Method::POST, &format!("{reg}/devices"), Some(json!({"id": format!("made-{level}")}))).await;
        if at_least(2) {
            assert_eq!(created.0, StatusCode::OK, "{role}: {}", created.1);
        } else {
            denied(created, "cloudiot.devices.create");
        }
        // editor: the registry itself.
        let patched =
            call(&s, &t, Method::PATCH, &format!("{reg}?updateMask=logLevel"), Some(json!({"logLevel": "INFO"}))).await;
        if at_least(3) {
            assert_eq!(patched.0, StatusCode::OK, "{role}: {}", patched.1);
        } else {
            denied(patched, "cloudiot.registries.update");
        }
        // admin: the registry's policy.
        let policy = call(&s, &t, Method::POST, &format!("{reg}:getIamPolicy"), Some(json!({}))).await;
        if at_least(4) {
            assert_eq!(policy.0, StatusCode::OK, "{role}: {}", policy.1);
            assert!(policy.1["etag"].is_string(), "{}", policy.1);
        } else {
            denied(policy, "cloudiot.registries.getIamPolicy");
        }

        // The same table over gRPC.
        let mut g = s.grpc_client(Some(&t)).await;
        let got = g.get_device(iot::GetDeviceRequest { name: format!("{reg}/devices/dev-1"), field_mask: None }).await;
        assert!(got.is_ok(), "{role}: {got:?}");
        let send = g
            .modify_cloud_to_device_config(iot::ModifyCloudToDeviceConfigRequest {
                name: format!("{reg}/devices/{grpc_dev}"),
                version_to_update: 0,
                binary_data: b"grpc".to_vec(),
            })
            .await;
        if at_least(1) {
            assert!(send.is_ok(), "{role}: {send:?}");
        } else {
            grpc_denied(send, "cloudiot.devices.updateConfig");
        }
        let delete = g.delete_device(iot::DeleteDeviceRequest { name: format!("{reg}/devices/nobody-{level}") }).await;
        if at_least(2) {
            // Allowed, so the missing device is what the caller learns about.
            assert_eq!(delete.unwrap_err().code(), tonic::Code::NotFound, "{role}");
        } else {
            grpc_denied(delete, "cloudiot.devices.delete");
        }
        let policy = g.get_iam_policy(iam::GetIamPolicyRequest { resource: reg.clone(), options: None }).await;
        if at_least(4) {
            assert!(policy.is_ok(), "{role}: {policy:?}");
        } else {
            grpc_denied(policy, "cloudiot.registries.getIamPolicy");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_registry_grant_stays_in_its_registry_and_a_revoked_token_is_refused_at_once() {
    let s = TestServer::start().await;
    let fleet = s.registry(PROJECT, "fleet").await;
    let other = s.registry(PROJECT, "other").await;
    let (id, t) = api_token(&s, "serviceAccount:ingest@example.iam", "roles/cloudiot.provisioner", Some(&fleet)).await;
    let (st, listed) = s.get(&format!("projects/{PROJECT}/tokens")).await;
    assert_eq!(st, StatusCode::OK);
    let entry = &listed["tokens"][0];
    assert_eq!((&entry["id"], &entry["registry"]), (&json!(id), &json!(fleet)), "{listed}");
    assert!(entry.get("token").is_none(), "a token is shown once: {listed}");

    let (st, body) = call(&s, &t, Method::POST, &format!("{fleet}/devices"), Some(json!({"id": "dev-a"}))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    denied(call(&s, &t, Method::GET, &other, None).await, "cloudiot.registries.get");
    denied(
        call(&s, &t, Method::POST, &format!("{other}/devices"), Some(json!({"id": "x-1"}))).await,
        "cloudiot.devices.create",
    );
    denied(call(&s, &t, Method::GET, &format!("{LOC}/registries"), None).await, "cloudiot.registries.list");
    // Refused alike whether or not the resource exists.
    denied(call(&s, &t, Method::GET, &format!("{LOC}/registries/nowhere"), None).await, "cloudiot.registries.get");
    let mut g = s.grpc_client(Some(&t)).await;
    grpc_denied(
        g.get_device_registry(iot::GetDeviceRegistryRequest { name: other.clone() }).await,
        "cloudiot.registries.get",
    );
    grpc_denied(
        g.list_device_registries(iot::ListDeviceRegistriesRequest { parent: LOC.into(), ..Default::default() }).await,
        "cloudiot.registries.list",
    );
    assert!(g.get_device_registry(iot::GetDeviceRegistryRequest { name: fleet.clone() }).await.is_ok());
    // A bad name is still the handler's INVALID_ARGUMENT.
    let bad = g.get_device_registry(iot::GetDeviceRegistryRequest { name: "projects/acme/x".into() }).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);

    let (st, body) = s.delete(&format!("projects/{PROJECT}/tokens/{id}")).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, body) = call(&s, &t, Method::GET, &fleet, None).await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    let refused = g.get_device_registry(iot::GetDeviceRegistryRequest { name: fleet.clone() }).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    let (st, body) = s.delete(&format!("projects/{PROJECT}/tokens/{id}")).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn registry_policies_grant_access_and_are_forgotten_with_the_registry() {
    let s = TestServer::start().await;
    let reg = s.registry(PROJECT, "fleet").await;
    let other = s.registry(PROJECT, "other").await;
    // A token whose own grant holds no Cloud IoT permission.
    let (_, ana) = api_token(&s, "user:ana@example.com", "roles/pubsub.viewer", None).await;
    denied(call(&s, &ana, Method::GET, &reg, None).await, "cloudiot.registries.get");

    let (st, empty) = s.post(&format!("{reg}:getIamPolicy"), json!({})).await;
    assert_eq!(st, StatusCode::OK, "{empty}");
    assert!(empty.get("bindings").is_none(), "{empty}");
    let first_etag = empty["etag"].as_str().unwrap().to_owned();
    let binding = json!({"role": "roles/cloudiot.viewer", "members": ["user:ana@example.com"]});
    let (st, set) =
        s.post(&format!("{reg}:setIamPolicy"), json!({"policy": {"bindings": [binding], "etag": first_etag}})).await;
    assert_eq!(st, StatusCode::OK, "{set}");
    assert_eq!(set["bindings"], json!([binding]));
    assert_ne!(set["etag"], json!(first_etag));
    // Over gRPC, the same policy.
    let mut admin = s.grpc_client(Some(TOKEN)).await;
    let got = admin.get_iam_policy(iam::GetIamPolicyRequest { resource: reg.clone(), options: None }).await.unwrap();
    assert_eq!(serde_json::to_value(got.into_inner()).unwrap(), set);

    // The binding applies at once, to this registry only.
    let (st, body) = call(&s, &ana, Method::GET, &reg, None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    denied(call(&s, &ana, Method::GET, &other, None).await, "cloudiot.registries.get");
    denied(call(&s, &ana, Method::DELETE, &reg, None).await, "cloudiot.registries.delete");
    denied(
        call(&s, &ana, Method::POST, &format!("{reg}:getIamPolicy"), Some(json!({}))).await,
        "cloudiot.registries.getIamPolicy",
    );

    // A write based on an old read is refused; a role that is not predefined too.
    let (st, body) =
        s.post(&format!("{reg}:setIamPolicy"), json!({"policy": {"bindings": [], "etag": first_etag}})).await;
    expect_error(st, &body, 409, "ABORTED");
    let (st, body) = s
        .post(
            &format!("{reg}:setIamPolicy"),
            json!({"policy": {"bindings": [{"role": "roles/owner", "members": ["user:x@example.com"]}]}}),
        )
        .await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");

    // testIamPermissions: the subset held; none on a registry that does not exist.
    let asked =
        json!({"permissions": ["cloudiot.devices.get", "cloudiot.devices.delete", "cloudiot.registries.update"]});
    let (st, body) = call(&s, &ana, Method::POST, &format!("{reg}:testIamPermissions"), Some(asked.clone())).await;
    assert_eq!((st, &body), (StatusCode::OK, &json!({"permissions": ["cloudiot.devices.get"]})), "{body}");
    let (st, body) = s.post(&format!("{reg}:testIamPermissions"), asked.clone()).await;
    assert_eq!(body["permissions"].as_array().map(Vec::len), Some(3), "the owner holds all: {body}");
    let missing = format!("{LOC}/registries/missing");
    let (st2, body2) = call(&s, &ana, Method::POST, &format!("{missing}:testIamPermissions"), Some(asked)).await;
    assert_eq!((st, st2), (StatusCode::OK, StatusCode::OK), "{body2}");
    assert!(body2.get("permissions").is_none_or(|p| p == &json!([])), "{body2}");
    let mut g = s.grpc_client(Some(&ana)).await;
    let held = g
        .test_iam_permissions(iam::TestIamPermissionsRequest {
            resource: reg.clone(),
            permissions: vec!["cloudiot.devices.list".into(), "cloudiot.devices.update".into()],
        })
        .await
        .unwrap();
    assert_eq!(held.into_inner().permissions, ["cloudiot.devices.list"]);
    let (st, body) = s.post(&format!("{reg}:testIamPermissions"), json!({"permissions": ["cloudiot.fly"]})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");

    // getIamPolicy on a registry that does not exist, by a caller who may: NOT_FOUND.
    let (st, body) = s.post(&format!("{missing}:getIamPolicy"), json!({})).await;
    expect_error(st, &body, 404, "NOT_FOUND");

    // Deleting the registry deletes its policy: a new registry of the name starts without one.
    let (st, _) = s.delete(&reg).await;
    assert_eq!(st, StatusCode::OK);
    s.registry(PROJECT, "fleet").await;
    denied(call(&s, &ana, Method::GET, &reg, None).await, "cloudiot.registries.get");
    let (st, fresh) = s.post(&format!("{reg}:getIamPolicy"), json!({})).await;
    assert_eq!(st, StatusCode::OK);
    assert!(fresh.get("bindings").is_none(), "{fresh}");
    // A create that fails (the name is taken) leaves the existing registry's policy alone.
    let (st, set) = s.post(&format!("{other}:setIamPolicy"), json!({"policy": {"bindings": [binding]}})).await;
    assert_eq!(st, StatusCode::OK, "{set}");
    let (st, body) = s.post(&format!("{LOC}/registries"), json!({"id": "other"})).await;
    expect_error(st, &body, 409, "ALREADY_EXISTS");
    assert_eq!(call(&s, &ana, Method::GET, &other, None).await.0, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn a_pubsub_subscriber_may_pull_and_ack_but_not_publish() {
    let s = TestServer::start().await;
    let topic = format!("projects/{PROJECT}/topics/readings");
    let sub = format!("projects/{PROJECT}/subscriptions/readings-sub");
    assert_eq!(s.put(&topic, json!({})).await.0, StatusCode::OK);
    assert_eq!(s.put(&sub, json!({"topic": topic})).await.0, StatusCode::OK);
    let (st, _) = s.post(&format!("{topic}:publish"), json!({"messages": [{"data": b64(b"one")}]})).await;
    assert_eq!(st, StatusCode::OK);
    let (_, t) =
        api_token(&s, "serviceAccount:reader@acme.iam.gserviceaccount.com", "roles/pubsub.subscriber", None).await;

    let (st, pulled) = call(&s, &t, Method::POST, &format!("{sub}:pull"), Some(json!({"maxMessages": 10}))).await;
    assert_eq!(st, StatusCode::OK, "{pulled}");
    let ack_id = pulled["receivedMessages"][0]["ackId"].as_str().expect("the message").to_owned();
    let (st, body) = call(&s, &t, Method::POST, &format!("{sub}:acknowledge"), Some(json!({"ackIds": [ack_id]}))).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    denied(
        call(&s, &t, Method::POST, &format!("{topic}:publish"), Some(json!({"messages": [{"data": b64(b"x")}]}))).await,
        "pubsub.topics.publish",
    );
    denied(
        call(&s, &t, Method::PUT, &format!("projects/{PROJECT}/topics/mine"), Some(json!({}))).await,
        "pubsub.topics.create",
    );
    denied(call(&s, &t, Method::GET, &format!("projects/{PROJECT}/topics"), None).await, "pubsub.topics.list");
    let (st, body) = call(
        &s,
        &t,
        Method::POST,
        &format!("{sub}:testIamPermissions"),
        Some(json!({"permissions": ["pubsub.subscriptions.consume", "pubsub.topics.publish", "pubsub.topics.updateTag"]})),
    )
    .await;
    assert_eq!((st, &body), (StatusCode::OK, &json!({"permissions": ["pubsub.subscriptions.consume"]})), "{body}");
    // The owner is told it holds every well-formed permission, as before.
    let (_, body) = s
        .post(
            &format!("{sub}:testIamPermissions"),
            json!({"permissions": ["pubsub.subscriptions.consume", "pubsub.topics.publish"]}),
        )
        .await;
    assert_eq!(body["permissions"].as_array().unwrap().len(), 2, "{body}");

    // gRPC alike, StreamingPull included.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc)).unwrap().connect().await.unwrap();
    let mut publisher = PublisherClient::with_interceptor(ch.clone(), AddToken::bearer(Some(&t)));
    let mut subscriber = SubscriberClient::with_interceptor(ch, AddToken::bearer(Some(&t)));
    // Nothing is left to pull: answer at once rather than wait.
    #[allow(deprecated)]
    let pull = ps::PullRequest { subscription: sub.clone(), max_messages: 5, return_immediately: true };
    let pulled = subscriber.pull(pull).await;
    assert!(pulled.is_ok(), "{pulled:?}");
    grpc_denied(
        publisher
            .publish(ps::PublishRequest {
                topic: topic.clone(),
                messages: vec![ps::PubsubMessage { data: b"x".to_vec().into(), ..Default::default() }],
            })
            .await,
        "pubsub.topics.publish",
    );
    grpc_denied(
        publisher
            .create_topic(ps::Topic { name: format!("projects/{PROJECT}/topics/mine"), ..Default::default() })
            .await,
        "pubsub.topics.create",
    );
    let other_sub = format!("projects/{PROJECT}/subscriptions/readings-other");
    grpc_denied(
        subscriber
            .create_subscription(ps::Subscription { name: other_sub, topic: topic.clone(), ..Default::default() })
            .await,
        "pubsub.subscriptions.create",
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ps::StreamingPullRequest {
        subscription: format!("projects/{PROJECT}/subscriptions/readings-sub"),
        stream_ack_deadline_seconds: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let stream = subscriber.streaming_pull(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    assert!(stream.is_ok(), "{:?}", stream.err());
    // A publisher token may not consume.
    let (_, p) = api_token(&s, "user:pub@example.com", "roles/pubsub.publisher", None).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc)).unwrap().connect().await.unwrap();
    let mut as_publisher = SubscriberClient::with_interceptor(ch, AddToken::bearer(Some(&p)));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ps::StreamingPullRequest {
        subscription: sub.clone(),
        stream_ack_deadline_seconds: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    grpc_denied(
        as_publisher.streaming_pull(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)).await,
        "pubsub.subscriptions.consume",
    );
    drop(tx);
    s.stop().await;
}

#[tokio::test]
async fn identities_are_managed_by_the_owner_alone() {
    let s = TestServer::start().await;
    let (_, t) = api_token(&s, "user:boss@example.com", "roles/cloudiot.admin", None).await;
    let p = format!("projects/{PROJECT}");
    for (method, path, body) in [
        (
            Method::POST,
            format!("{p}/tokens"),
            Some(json!({"principal": "user:x@example.com", "role": "roles/cloudiot.admin"})),
        ),
        (Method::GET, format!("{p}/tokens"), None),
        (Method::GET, format!("{p}/serviceAccounts"), None),
        (
            Method::POST,
            format!("{p}/serviceAccounts"),
            Some(json!({"accountId": "sneaky-one", "roles": ["roles/cloudiot.admin"]})),
        ),
        (Method::GET, "sinks".to_owned(), None),
        (Method::GET, format!("{p}/topics/events/messages"), None),
    ] {
        let (st, refused) = call(&s, &t, method.clone(), &path, body.clone()).await;
        let msg = expect_error(st, &refused, 403, "PERMISSION_DENIED");
        assert!(msg.ends_with("requires the admin token."), "{msg}");
        let (st, refused) = s.call_as(None, method, &path, body).await;
        expect_error(st, &refused, 401, "UNAUTHENTICATED");
    }
    // Bad input is the owner's INVALID_ARGUMENT, in Google's shape.
    let (st, body) =
        s.post(&format!("{p}/tokens"), json!({"principal": "user:x@example.com", "role": "roles/owner"})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) =
        s.post(&format!("{p}/tokens"), json!({"principal": "x", "role": "roles/cloudiot.viewer", "colour": 1})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.call(Method::PUT, &format!("{p}/tokens"), Some(json!({}))).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn service_account_keys_work_like_google_key_files() {
    let s = TestServer::start().await;
    let reg = s.registry(PROJECT, "fleet").await;
    s.device(&reg, "dev-1", json!({})).await;
    let p = format!("projects/{PROJECT}/serviceAccounts");
    let (st, account) = s
        .post(
            &p,
            json!({"accountId": "backend-sa", "serviceAccount": {"displayName": "Back end"}, "roles": ["roles/cloudiot.viewer"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{account}");
    let email = "backend-sa@acme.iam.gserviceaccount.com";
    assert_eq!(account["email"], email);
    assert_eq!(account["name"], format!("{p}/{email}"));
    assert_eq!((&account["projectId"], &account["displayName"]), (&json!(PROJECT), &json!("Back end")));
    assert_eq!(account["roles"], json!(["roles/cloudiot.viewer"]));
    let (st, listed) = s.get(&p).await;
    assert_eq!((st, &listed["accounts"][0]["email"]), (StatusCode::OK, &json!(email)), "{listed}");
    let (st, got) = s.get(&format!("{p}/{email}")).await;
    assert_eq!((st, got), (StatusCode::OK, account.clone()));

    let (st, key) = s.post(&format!("{p}/{email}/keys"), json!({})).await;
    assert_eq!(st, StatusCode::OK, "{key}");
    assert_eq!(key["privateKeyType"], "TYPE_GOOGLE_CREDENTIALS_FILE");
    assert_eq!(key["keyAlgorithm"], "KEY_ALG_RSA_2048");
    assert!(key["validAfterTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{key}");
    let data = base64::engine::general_purpose::STANDARD.decode(key["privateKeyData"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(file["type"], "service_account");
    assert_eq!(file["project_id"], PROJECT);
    assert_eq!(file["client_email"], email);
    assert_eq!(file["client_id"], account["uniqueId"]);
    assert_eq!(file["token_uri"], format!("{}/token", s.base));
    let key_id = file["private_key_id"].as_str().unwrap().to_owned();
    assert_eq!(key["name"], format!("{p}/{email}/keys/{key_id}"));
    let (st, keys) = s.get(&format!("{p}/{email}/keys")).await;
    assert_eq!((st, &keys["keys"][0]["name"]), (StatusCode::OK, &key["name"]), "{keys}");
    assert!(keys["keys"][0].get("privateKeyData").is_none(), "the private key is handed out once");

    // The token endpoint: a JWT-bearer assertion for an access token.
    let iat = now();
    let assertion = sign_jwt(
        &file,
        &json!({"iss": email, "sub": email, "aud": file["token_uri"], "iat": iat, "exp": iat + 3600,
                "scope": "https://www.googleapis.com/auth/cloud-platform"}),
    );
    let (st, granted, cache) = token_endpoint(&s, &[("grant_type", JWT_BEARER), ("assertion", &assertion)]).await;
    assert_eq!(st, StatusCode::OK, "{granted}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    assert_eq!(granted["token_type"], "Bearer");
    assert!(granted["expires_in"].as_u64().is_some_and(|n| n > 3000 && n <= 3600), "{granted}");
    let access = granted["access_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("fca."), "{access}");
    let (st, body) = call(&s, &access, Method::GET, &reg, None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    denied(call(&s, &access, Method::DELETE, &format!("{reg}/devices/dev-1"), None).await, "cloudiot.devices.delete");
    // google-auth sends Google's own token URL as the audience; JSON bodies are accepted too.
    let google_aud = sign_jwt(
        &file,
        &json!({"iss": email, "aud": "https://oauth2.googleapis.com/token", "iat": iat, "exp": iat + 600}),
    );
    let resp = s
        .client
        .post(format!("{}/token", s.base))
        .json(&json!({"grant_type": JWT_BEARER, "assertion": google_aud}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A self-signed JWT (AIP-4111) is a bearer token itself, over REST and gRPC.
    let self_signed = sign_jwt(
        &file,
        &json!({"iss": email, "sub": email, "aud": "https://cloudiot.googleapis.com/", "iat": iat, "exp": iat + 3600}),
    );
    let (st, body) = call(&s, &self_signed, Method::GET, &format!("{reg}/devices"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let mut g = s.grpc_client(Some(&self_signed)).await;
    assert!(g.get_device_registry(iot::GetDeviceRegistryRequest { name: reg.clone() }).await.is_ok());

    // The token endpoint's refusals, in RFC 6749's shape.
    let (st, body, _) = token_endpoint(&s, &[("grant_type", "client_credentials"), ("assertion", &assertion)]).await;
    assert_eq!((st, &body["error"]), (StatusCode::BAD_REQUEST, &json!("unsupported_grant_type")), "{body}");
    let mut forged = assertion.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let (st, body, _) = token_endpoint(&s, &[("grant_type", JWT_BEARER), ("assertion", &forged)]).await;
    assert_eq!((st, &body["error"]), (StatusCode::BAD_REQUEST, &json!("invalid_grant")), "{body}");
    assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()));
    let elsewhere =
        sign_jwt(&file, &json!({"iss": email, "aud": "https://example.com/token", "iat": iat, "exp": iat + 60}));
    let (st, body, _) = token_endpoint(&s, &[("grant_type", JWT_BEARER), ("assertion", &elsewhere)]).await;
    assert_eq!((st, &body["error"]), (StatusCode::BAD_REQUEST, &json!("invalid_grant")), "{body}");
    let (st, body, _) = token_endpoint(&s, &[("grant_type", JWT_BEARER)]).await;
    assert_eq!((st, &body["error"]), (StatusCode::BAD_REQUEST, &json!("invalid_request")), "{body}");

    // Deleting the account ends its access tokens and JWTs at once.
    let (st, body) = s.delete(&format!("{p}/{email}")).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, body) = call(&s, &access, Method::GET, &reg, None).await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    let (st, body) = call(&s, &self_signed, Method::GET, &reg, None).await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    let (st, body, _) = token_endpoint(&s, &[("grant_type", JWT_BEARER), ("assertion", &assertion)]).await;
    assert_eq!((st, &body["error"]), (StatusCode::BAD_REQUEST, &json!("invalid_grant")), "{body}");
    let (st, body) = s.get(&format!("{p}/{email}")).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn a_deleted_key_ends_what_it_signed() {
    let s = TestServer::start().await;
    let reg = s.registry(PROJECT, "fleet").await;
    let p = format!("projects/{PROJECT}/serviceAccounts");
    let (st, _) =
        s.post(&p, json!({"accountId": "rotating", "roles": ["roles/cloudiot.viewer"], "registry": reg})).await;
    assert_eq!(st, StatusCode::OK);
    let email = "rotating@acme.iam.gserviceaccount.com";
    let mut files = Vec::new();
    for _ in 0..2 {
        let (st, key) =
            s.post(&format!("{p}/{email}/keys"), json!({"privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE"})).await;
        assert_eq!(st, StatusCode::OK, "{key}");
        let data = base64::engine::general_purpose::STANDARD.decode(key["privateKeyData"].as_str().unwrap()).unwrap();
        files.push(serde_json::from_slice::<Value>(&data).unwrap());
    }
    let iat = now();
    let jwt = |f: &Value| {
        sign_jwt(f, &json!({"iss": email, "aud": "https://cloudiot.googleapis.com/", "iat": iat, "exp": iat + 600}))
    };
    let (old, new) = (jwt(&files[0]), jwt(&files[1]));
    assert_eq!(call(&s, &old, Method::GET, &reg, None).await.0, StatusCode::OK);
    // The registry grant does not reach the project.
    denied(call(&s, &new, Method::GET, &format!("{LOC}/registries"), None).await, "cloudiot.registries.list");
    let old_id = files[0]["private_key_id"].as_str().unwrap();
    let (st, body) = s.delete(&format!("{p}/{email}/keys/{old_id}")).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, body) = call(&s, &old, Method::GET, &reg, None).await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    assert_eq!(call(&s, &new, Method::GET, &reg, None).await.0, StatusCode::OK);
    let (st, body) = s.post(&format!("{p}/{email}/keys"), json!({"keyAlgorithm": "KEY_ALG_RSA_1024"})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    s.stop().await;
}
