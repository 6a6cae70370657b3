//! The server on PostgreSQL (`--store postgres://…`): what the API acknowledges lives in the
//! database, not the data directory, so a server with a fresh data directory on the same database
//! finds it, and two servers sharing one database see each other's writes at once.
//!
//! Each test has a database of its own ([`TestDatabase`]); without a PostgreSQL server the tests
//! skip with a printed reason, except under `CI=true`, where they fail.

use crate::harness::{TOKEN, TestServer, b64, expect_error};
use ferrocore::server::StoreLocation;
use ferrocore_store::postgres::testing::TestDatabase;
use reqwest::StatusCode;
use serde_json::json;

async fn server_on(db: &TestDatabase) -> TestServer {
    let url = db.url();
    TestServer::start_configured(|_| None, move |c| c.store = StoreLocation::Postgres(url)).await
}

#[tokio::test]
async fn acknowledged_writes_live_in_the_database() {
    let Some(db) = TestDatabase::create().await else { return };
    let first = server_on(&db).await;
    let registry = first.registry("pg-project", "fleet").await;
    let device = first.device(&registry, "sensor-1", json!({"metadata": {"site": "north"}})).await;
    let (status, config) = first
        .post(
            &format!("{}:modifyCloudToDeviceConfig", device["name"].as_str().unwrap()),
            json!({"binaryData": b64(b"fan=on")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{config}");
    let (status, token) = first
        .post(
            "projects/pg-project/tokens",
            json!({"principal": "user:viewer@example.com", "role": "roles/cloudiot.viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{token}");
    let viewer = format!("Bearer {}", token["token"].as_str().unwrap());
    first.stop().await;

    // A new data directory: everything below comes from PostgreSQL.
    let second = server_on(&db).await;
    let (status, got) = second.get(device["name"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["numId"], device["numId"], "the numeric id is kept");
    assert_eq!(got["metadata"], json!({"site": "north"}));
    assert_eq!(got["config"]["version"], "2");
    assert_eq!(got["config"]["binaryData"], b64(b"fan=on"));
    let (status, listed) =
        second.call_as(Some(&viewer), reqwest::Method::GET, &format!("{registry}/devices"), None).await;
    assert_eq!(status, StatusCode::OK, "an API token made on the first server works on the second: {listed}");
    assert_eq!(listed["devices"].as_array().map(Vec::len), Some(1));
    second.stop().await;
}

#[tokio::test]
async fn two_servers_on_one_database_see_each_others_writes() {
    let Some(db) = TestDatabase::create().await else { return };
    let a = server_on(&db).await;
    let b = server_on(&db).await;
    let registry = a.registry("pg-shared", "fleet").await;
    let device = a.device(&registry, "sensor-1", json!({})).await;
    let name = device["name"].as_str().unwrap().to_owned();

    let (status, got) = b.get(&name).await;
    assert_eq!(status, StatusCode::OK, "a device created on A is read on B at once: {got}");

    // Compare-and-set across servers: B moves the version, then A's stale update is refused.
    let (status, _) = b
        .post(&format!("{name}:modifyCloudToDeviceConfig"), json!({"binaryData": b64(b"b"), "versionToUpdate": "1"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, stale) = a
        .post(&format!("{name}:modifyCloudToDeviceConfig"), json!({"binaryData": b64(b"a"), "versionToUpdate": "1"}))
        .await;
    expect_error(status, &stale, 400, "FAILED_PRECONDITION");

    let (status, _) = b.delete(&name).await;
    assert_eq!(status, StatusCode::OK);
    let (status, gone) = a.get(&name).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_unreachable_database_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // A port nothing listens on; the password must not appear in the error.
    let config = ferrocore::server::Config {
        data_dir: dir.path().join("data"),
        admin_token: Some(TOKEN.into()),
        store: StoreLocation::Postgres("postgres://ferrocore:s3cret-pw@127.0.0.1:1/ferrocore".into()),
        ..Default::default()
    };
    let listeners = ferrocore::server::Listeners { http, grpc: None, mqtts: None, mqtt: None };
    let err = ferrocore::server::run(config, listeners, std::future::pending(), |_| {}).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("cannot open the store at postgres://ferrocore:***@127.0.0.1:1/ferrocore"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

/// A TCP proxy in front of PostgreSQL that the test can cut (every connection closed, new ones
/// refused at once) and restore: a database outage without touching the machine's server.
struct CuttableProxy {
    port: u16,
    up: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl CuttableProxy {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(tokio::sync::watch::channel(true).0);
        let gate = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = gate.subscribe();
                if !*state.borrow() {
                    continue; // dropped: refused
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

#[tokio::test]
async fn losing_postgresql_answers_unavailable_and_service_returns_with_it() {
    use crate::device::{MqttClient, es256_token};
    use ferrocore_mqtt_codec::ConnectReturnCode;
    let Some(db) = TestDatabase::create().await else { return };
    let url = db.url();
    let (authority, database) = url.rsplit_once('/').unwrap();
    let (_, host) = authority.rsplit_once('@').unwrap();
    let proxy = CuttableProxy::start(host.to_owned()).await;
    let proxied = format!("{}@127.0.0.1:{}/{database}", authority.rsplit_once('@').unwrap().0, proxy.port);
    let s = TestServer::start_configured(|_| None, move |c| c.store = StoreLocation::Postgres(proxied)).await;
    let registry = s.registry("outage", "reg").await;
    s.device(&registry, "dev-1", json!({})).await;
    let client_id = "projects/outage/locations/us-central1/registries/reg/devices/dev-1";

    proxy.cut();
    let started = std::time::Instant::now();
    let (st, body) = s.post(&format!("{registry}/devices"), json!({"id": "dev-2"})).await;
    expect_error(st, &body, 503, "UNAVAILABLE");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("127.0.0.1") && !message.contains("sqlx"), "no internals: {message}");
    let (st, body) = s.get(&format!("{registry}/devices/dev-1")).await;
    expect_error(st, &body, 503, "UNAVAILABLE");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
    // A device that cannot be checked is not let in.
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_ne!(c.try_connect(client_id, Some(&es256_token("outage"))).await, Some(ConnectReturnCode::Accepted));

    proxy.restore();
    crate::wait::eventually("writes to work again", async || {
        let (st, _) = s.post(&format!("{registry}/devices"), json!({"id": "dev-2"})).await;
        (st == StatusCode::OK).then_some(())
    })
    .await;
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(c.try_connect(client_id, Some(&es256_token("outage"))).await, Some(ConnectReturnCode::Accepted));
    s.stop().await;
}
