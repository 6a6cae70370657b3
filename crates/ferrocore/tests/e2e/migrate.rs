//! `ferrocore migrate` end to end: an installation served on SQLite is stopped, its store copied
//! into PostgreSQL (by the library function, and by the binary), and served from there; every
//! read answers as before, the API token and the service account's access token made before
//! still authenticate, and a subscription resumes where its acknowledgements left it.
//!
//! Skipped without a PostgreSQL server (see `postgres::testing`), except under `CI=true`.

use crate::device::es256_token;
use crate::harness::{TestServer, b64, sign_jwt};
use base64::Engine;
use ferrocore::server::StoreLocation;
use ferrocore_store::postgres::testing::TestDatabase;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::process::Command;

const PROJECT: &str = "mig-e2e";
const LOCATION: &str = "projects/mig-e2e/locations/us-central1";
const TOPIC: &str = "projects/mig-e2e/topics/orders";
const SUBSCRIPTION: &str = "projects/mig-e2e/subscriptions/orders-sub";
const ACCOUNTS: &str = "projects/mig-e2e/serviceAccounts";
const EMAIL: &str = "backend-sa@mig-e2e.iam.gserviceaccount.com";

/// What [`populate`] made that is not read back through the admin token.
struct Credentials {
    /// An API token (`fct_…`) with the viewer role.
    api_token: String,
    /// An access token (`fca.…`) from `POST /token` for the service account's key.
    access_token: String,
}

fn ok((status, body): (StatusCode, Value)) -> Value {
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Registries, devices (a gateway with a bound device, a blocked one), config history, states
/// and activity over the HTTP bridge, an API token, a service account with a key and an access
/// token, registry and topic policies, a topic and a subscription with some messages acknowledged.
async fn populate(s: &TestServer) -> Credentials {
    let fleet = s
        .registry_with(
            PROJECT,
            "fleet",
            json!({"logLevel": "DEBUG", "stateNotificationConfig": {"pubsubTopicName": "projects/mig-e2e/topics/state"}}),
        )
        .await;
    let backup = s.registry(PROJECT, "backup").await;
    s.device(
        &fleet,
        "gw-1",
        json!({"gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"}}),
    )
    .await;
    s.device(&fleet, "dev-1", json!({"metadata": {"site": "north", "floor": "3"}})).await;
    s.device(&backup, "dev-2", json!({"blocked": true, "logLevel": "ERROR"})).await;
    ok(s.post(&format!("{fleet}:bindDeviceToGateway"), json!({"gatewayId": "gw-1", "deviceId": "dev-1"})).await);
    let dev = format!("{fleet}/devices/dev-1");
    // One config update per device (a device's config changes at most once a second).
    for (device, data) in [(&dev, "fan=on"), (&format!("{backup}/devices/dev-2"), "fan=off")] {
        let body = json!({"binaryData": b64(data.as_bytes())});
        ok(s.post(&format!("{device}:modifyCloudToDeviceConfig"), body).await);
    }

    // The devices themselves over HTTP: an event, states, a config read.
    let jwt = format!("Bearer {}", es256_token(PROJECT));
    let as_device = async |method, path: String, body| s.call_as(Some(&jwt), method, &path, body).await;
    ok(as_device(Method::POST, format!("{dev}:publishEvent"), Some(json!({"binaryData": b64(b"temp=21")}))).await);
    // A device reports its state at most once a second: one each for two devices.
    for (device, state) in [(&dev, "on"), (&format!("{fleet}/devices/gw-1"), "gateway up")] {
        let body = json!({"state": {"binaryData": b64(state.as_bytes())}});
        ok(as_device(Method::POST, format!("{device}:setState"), Some(body)).await);
    }
    ok(as_device(Method::GET, format!("{dev}/config?local_version=0"), None).await);

    // Identities and policies.
    let token = ok(s
        .post(
            &format!("projects/{PROJECT}/tokens"),
            json!({"principal": "user:viewer@example.com", "role": "roles/cloudiot.viewer"}),
        )
        .await);
    ok(s.post(
        ACCOUNTS,
        json!({"accountId": "backend-sa", "serviceAccount": {"displayName": "Back end"}, "roles": ["roles/cloudiot.viewer"]}),
    )
    .await);
    let key = ok(s.post(&format!("{ACCOUNTS}/{EMAIL}/keys"), json!({})).await);
    let file: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD.decode(key["privateKeyData"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let iat = crate::device::now();
    let assertion = sign_jwt(&file, &json!({"iss": EMAIL, "aud": file["token_uri"], "iat": iat, "exp": iat + 3600}));
    let granted = s
        .client
        .post(format!("{}/token", s.base))
        .json(&json!({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), StatusCode::OK);
    let granted: Value = granted.json().await.unwrap();
    let policy = |role: &str| json!({"policy": {"bindings": [{"role": role, "members": ["user:ana@example.com"]}]}});
    ok(s.post(&format!("{fleet}:setIamPolicy"), policy("roles/cloudiot.viewer")).await);

    // Pub/Sub: of three messages, the first two acknowledged.
    ok(s.put(TOPIC, json!({"labels": {"team": "ops"}})).await);
    ok(s.put(SUBSCRIPTION, json!({"topic": TOPIC, "ackDeadlineSeconds": 30, "labels": {"env": "test"}})).await);
    ok(s.post(&format!("{TOPIC}:setIamPolicy"), policy("roles/pubsub.subscriber")).await);
    let messages: Vec<Value> = ["one", "two", "three"].iter().map(|m| json!({"data": b64(m.as_bytes())})).collect();
    ok(s.post(&format!("{TOPIC}:publish"), json!({ "messages": messages })).await);
    let pulled = pull(s, 3).await;
    let acks: Vec<&Value> = pulled.iter().filter(|m| data(m) != "three").map(|m| &m["ackId"]).collect();
    assert_eq!(acks.len(), 2, "{pulled:?}");
    ok(s.post(&format!("{SUBSCRIPTION}:acknowledge"), json!({ "ackIds": acks })).await);

    Credentials {
        api_token: token["token"].as_str().unwrap().to_owned(),
        access_token: granted["access_token"].as_str().unwrap().to_owned(),
    }
}

/// A pulled message's data, as text.
fn data(m: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD.decode(m["message"]["data"].as_str().unwrap_or("")).unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Pulls until `count` messages came.
async fn pull(s: &TestServer, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..50 {
        let body = ok(s.post(&format!("{SUBSCRIPTION}:pull"), json!({"maxMessages": count - got.len()})).await);
        got.extend(body["receivedMessages"].as_array().cloned().unwrap_or_default());
        if got.len() >= count {
            return got;
        }
    }
    panic!("pulled {} of {count}: {got:?}", got.len());
}

/// Every read of what [`populate`] made: (method, path, body).
async fn reads(s: &TestServer) -> Vec<(Method, String, Option<Value>)> {
    let all_fields: Vec<&str> = ferrocore_model::mask::DeviceField::ALL.iter().map(|f| f.path()).collect();
    let all_fields = all_fields.join(",");
    let fleet = format!("{LOCATION}/registries/fleet");
    let backup = format!("{LOCATION}/registries/backup");
    let get = |path: String| (Method::GET, path, None);
    let mut out = vec![
        get(format!("{LOCATION}/registries")),
        get(fleet.clone()),
        get(backup.clone()),
        get(format!("{fleet}/devices?gatewayListOptions.gatewayType=GATEWAY")),
        get(format!("{fleet}/devices?gatewayListOptions.associationsGatewayId=gw-1")),
        get(format!("{fleet}/devices?gatewayListOptions.associationsDeviceId=dev-1")),
        get(format!("{fleet}/logs")),
        (Method::POST, format!("{fleet}:getIamPolicy"), Some(json!({}))),
        get(format!("projects/{PROJECT}/tokens")),
        get(ACCOUNTS.to_owned()),
        get(format!("{ACCOUNTS}/{EMAIL}")),
        get(format!("{ACCOUNTS}/{EMAIL}/keys")),
        get(format!("projects/{PROJECT}/topics")),
        get(TOPIC.to_owned()),
        get(format!("{TOPIC}/subscriptions")),
        get(format!("{TOPIC}:getIamPolicy")),
        get("projects/mig-e2e/topics/state".to_owned()),
        get(format!("projects/{PROJECT}/subscriptions")),
        get(SUBSCRIPTION.to_owned()),
    ];
    for reg in [&fleet, &backup] {
        let listed = ok(s.get(&format!("{reg}/devices?fieldMask={all_fields}")).await);
        out.push(get(format!("{reg}/devices?fieldMask={all_fields}")));
        for d in listed["devices"].as_array().unwrap() {
            let (id, num) = (d["id"].as_str().unwrap(), d["numId"].as_str().unwrap());
            for path in [id, num].map(|i| format!("{reg}/devices/{i}")) {
                out.push(get(path.clone()));
                out.push(get(format!("{path}/configVersions")));
                out.push(get(format!("{path}/states")));
            }
        }
    }
    out
}

/// The answer to each read.
async fn answers(s: &TestServer, reads: &[(Method, String, Option<Value>)]) -> Vec<(StatusCode, Value)> {
    let mut out = Vec::new();
    for (method, path, body) in reads {
        out.push(s.call(method.clone(), path, body.clone()).await);
    }
    out
}

fn assert_same_answers(
    reads: &[(Method, String, Option<Value>)],
    before: &[(StatusCode, Value)],
    after: &[(StatusCode, Value)],
) {
    assert_eq!(before.len(), after.len());
    for ((read, b), a) in reads.iter().zip(before).zip(after) {
        assert_eq!(b, a, "{} {} answers differently after the migration", read.0, read.1);
    }
}

/// Runs the binary; returns (exit code, stdout, stderr).
fn ferrocore(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrocore")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test]
async fn a_migrated_installation_answers_every_read_as_before() {
    let Some(by_library) = TestDatabase::create().await else { return };
    let Some(by_cli) = TestDatabase::create().await else { return };

    let first = TestServer::start().await;
    let credentials = populate(&first).await;
    let dir = first.stop_keeping_data().await;

    // Read back from a restarted SQLite server: nothing of the first run is still in flight.
    let sqlite = TestServer::start_in(dir, |_| None, |_| {}).await;
    let reads = reads(&sqlite).await;
    let before = answers(&sqlite, &reads).await;
    let device = &before.iter().zip(&reads).find(|(_, r)| r.1.ends_with("/devices/dev-1")).unwrap().0.1;
    for field in ["lastEventTime", "lastStateTime", "lastConfigSendTime", "state"] {
        assert!(device.get(field).is_some(), "the device has {field} to compare: {device}");
    }
    let logs = &before.iter().zip(&reads).find(|(_, r)| r.1.ends_with("/logs")).unwrap().0.1;
    assert!(logs["entries"].as_array().is_some_and(|e| !e.is_empty()), "activity logs to compare: {logs}");
    let data_dir = sqlite.data_dir();
    let dir = sqlite.stop_keeping_data().await;
    let database = data_dir.join("ferrocore.db");

    // The library function.
    let mut told = Vec::new();
    let report = ferrocore_store::migrate_to_postgres::copy_sqlite_to_postgres(&database, &by_library.url(), |t, n| {
        told.push(format!("{t}: {n}"))
    })
    .await
    .unwrap();
    assert_eq!(told.len(), ferrocore_store::migrate_to_postgres::TABLES.len(), "{told:?}");
    assert_eq!((report.table("registries"), report.table("devices")), (Some(2), Some(3)), "{report:?}");

    // The binary, with a password in the URL that must never be printed.
    let url = by_cli.url().replacen('@', ":s3cret-pw@", 1);
    let redacted = ferrocore::server::redact_password(&url);
    assert!(redacted.contains(":***@"), "{redacted}");
    let from = format!("sqlite:{}", data_dir.display());
    let (code, stdout, stderr) = ferrocore(&["migrate", "--from", &from, "--to", &url]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "", "everything goes to stderr");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), ferrocore_store::migrate_to_postgres::TABLES.len() + 1, "{stderr}");
    assert_eq!(lines[0], "registries: 2 rows", "{stderr}");
    assert!(lines.contains(&"devices: 3 rows") && lines.contains(&"api_tokens: 1 row"), "{stderr}");
    let summary = lines.last().unwrap();
    assert!(summary.starts_with(&format!("migrated {} rows in ", report.rows())), "{summary}");
    assert!(summary.contains(&redacted), "{summary}");

    // Again into the now filled database: refused, one error line, exit code 1.
    let (code, stdout, stderr) = ferrocore(&["migrate", "--from", &from, "--to", &url]);
    assert_eq!((code, stdout.as_str()), (Some(1), ""), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("already holds Ferrocore data"), "{stderr}");
    assert!(stderr.contains(&redacted) && !stderr.contains("s3cret-pw"), "{stderr}");
    let (code, _, stderr) = ferrocore(&["migrate", "--from", &data_dir.display().to_string(), "--to", &url]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "error: --from must be sqlite:DATA_DIR, the data directory of the installation to copy"
    );

    // Served from the library's copy with a fresh data directory: the same answers, the same
    // credentials (the server secrets came along).
    let url_library = by_library.url();
    let pg = TestServer::start_configured(|_| None, move |c| c.store = StoreLocation::Postgres(url_library)).await;
    assert_same_answers(&reads, &before, &answers(&pg, &reads).await);
    let fleet = format!("{LOCATION}/registries/fleet");
    for credential in [&credentials.api_token, &credentials.access_token] {
        let (status, body) = pg.call_as(Some(&format!("Bearer {credential}")), Method::GET, &fleet, None).await;
        assert_eq!(status, StatusCode::OK, "a credential made before the migration works after it: {body}");
    }
    pg.stop().await;

    // Served from the binary's copy with the installation's own data directory, as
    // docs/configuration.md says: the same answers, and the subscription resumes after the two
    // messages acknowledged before.
    let pg = TestServer::start_in(dir, |_| None, move |c| c.store = StoreLocation::Postgres(url)).await;
    assert_same_answers(&reads, &before, &answers(&pg, &reads).await);
    let pulled = pull(&pg, 1).await;
    assert_eq!(pulled.iter().map(data).collect::<Vec<_>>(), ["three"]);
    let body =
        ok(pg.post(&format!("{SUBSCRIPTION}:pull"), json!({"maxMessages": 10, "returnImmediately": true})).await);
    assert!(body["receivedMessages"].as_array().is_none_or(|m| m.is_empty()), "only the unacknowledged one: {body}");
    pg.stop().await;
}
