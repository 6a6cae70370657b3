//! Starts the real server in-process on a port-0 listener and offers a small REST client.

use ferrocore_proto::iot::device_manager_client::DeviceManagerClient;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

pub type GrpcClient =
    DeviceManagerClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AddToken>>;

#[derive(Clone)]
pub struct AddToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl AddToken {
    /// Sends `Authorization: Bearer <token>`, or nothing for None.
    pub fn bearer(token: Option<&str>) -> Self {
        Self(token.map(|t| format!("Bearer {t}").parse().expect("a token fits in metadata")))
    }
}

pub const TOKEN: &str = "e2e-admin-token-0123456789";
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../auth/tests/fixtures");

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
}

pub struct TestServer {
    pub base: String,
    pub grpc: std::net::SocketAddr,
    pub mqtts: std::net::SocketAddr,
    pub mqtt: std::net::SocketAddr,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| None).await
    }

    /// Starts with TLS files prepared in the server's temp dir by `tls`.
    pub async fn start_with(tls: impl FnOnce(&Path) -> Option<ferrocore::server::TlsFiles>) -> Self {
        Self::start_configured(tls, |_| {}).await
    }

    /// Starts with `--pubsub-anonymous`: Pub/Sub calls without credentials are let in.
    pub async fn start_pubsub_anonymous() -> Self {
        Self::start_configured(|_| None, |c| c.pubsub_anonymous = true).await
    }

    /// Starts with the test defaults changed by `configure`.
    pub async fn start_configured(
        tls: impl FnOnce(&Path) -> Option<ferrocore::server::TlsFiles>,
        configure: impl FnOnce(&mut ferrocore::server::Config),
    ) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), tls, configure).await
    }

    /// As [`TestServer::start_configured`], in `dir`: given the directory of a stopped server
    /// ([`TestServer::stop_keeping_data`]), a restart that finds its data.
    pub async fn start_in(
        dir: tempfile::TempDir,
        tls: impl FnOnce(&Path) -> Option<ferrocore::server::TlsFiles>,
        configure: impl FnOnce(&mut ferrocore::server::Config),
    ) -> Self {
        let tls = tls(dir.path());
        let mut config = ferrocore::server::Config {
            data_dir: dir.path().join("data"),
            admin_token: Some(TOKEN.into()),
            activity_flush_interval: Duration::from_millis(50),
            tls,
            topic_log: Default::default(),
            mqtt: ferrocore_mqtt::MqttConfig { connect_timeout: Duration::from_secs(2), ..Default::default() },
            core: ferrocore_core::Settings { command_ack_timeout: Duration::from_secs(1), ..Default::default() },
            pubsub_anonymous: false,
            ..Default::default()
        };
        configure(&mut config);
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = http.local_addr().unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let mqtts = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mqtts_addr = mqtts.local_addr().unwrap();
        let mqtt = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mqtt_addr = mqtt.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ferrocore::server::run(
            config,
            ferrocore::server::Listeners { http, grpc: Some(grpc), mqtts: Some(mqtts), mqtt: Some(mqtt) },
            async move {
                let _ = stopped.await;
            },
            |_| {},
        ));
        let server = Self {
            base: format!("http://{addr}"),
            grpc: grpc_addr,
            mqtts: mqtts_addr,
            mqtt: mqtt_addr,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
            dir,
        };
        for _ in 0..100 {
            if let Ok(r) = server.client.get(format!("{}/healthz", server.base)).send().await
                && r.status() == StatusCode::OK
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server did not become healthy");
    }

    /// A gRPC DeviceManager client sending `token` (None: no authorization metadata).
    pub async fn grpc_client(&self, token: Option<&str>) -> GrpcClient {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.unwrap();
        let header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
            token.map(|t| format!("Bearer {t}").parse().unwrap());
        DeviceManagerClient::with_interceptor(channel, AddToken(header))
    }

    /// The CA that signed the server's generated MQTT certificate.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("data").join("tls").join("ca.pem")).unwrap()
    }

    /// The server's data directory (`tls/ca.pem` is there), as `--data-dir` takes it.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// The server's database file, for tests that play the part of a device bridge.
    pub fn database(&self) -> std::path::PathBuf {
        self.dir.path().join("data").join("ferrocore.db")
    }

    /// Sends an authenticated request; returns the status and the JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(Some(&format!("Bearer {TOKEN}")), method, path, body).await
    }

    /// Sends a request with this `Authorization` header (None: no header at all).
    pub async fn call_as(
        &self,
        authorization: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}/v1/{path}", self.base));
        if let Some(a) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("response is not JSON: {text}"));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates a registry with a default telemetry topic; returns its path.
    pub async fn registry(&self, project: &str, id: &str) -> String {
        self.registry_with(project, id, json!({})).await
    }

    /// Creates a registry with a default telemetry topic (`projects/P/topics/events`) and the
    /// fields of `extra` (which may replace it); returns its path.
    pub async fn registry_with(&self, project: &str, id: &str, extra: Value) -> String {
        let parent = format!("projects/{project}/locations/us-central1");
        let body = merged(
            json!({"id": id, "eventNotificationConfigs": [{"pubsubTopicName": format!("projects/{project}/topics/events")}]}),
            extra,
        );
        let (s, body) = self.post(&format!("{parent}/registries"), body).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        format!("{parent}/registries/{id}")
    }

    /// Creates a device with an ES256 key; returns the created resource.
    pub async fn device(&self, registry: &str, id: &str, extra: Value) -> Value {
        let body = merged(
            json!({"id": id, "credentials": [{"publicKey": {"format": "ES256_PEM", "key": fixture("ec_public.pem")}}]}),
            extra,
        );
        let (s, created) = self.post(&format!("{registry}/devices"), body).await;
        assert_eq!(s, StatusCode::OK, "{created}");
        created
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    /// Stops the server (waiting until `run` returned) and hands back its directory.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        self.dir
    }
}

/// `base` with the top-level fields of `extra` set over it.
fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// Standard base64, as JSON carries bytes.
pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Asserts Google's error shape and returns the message.
pub fn expect_error(status: StatusCode, body: &Value, code: u16, name: &str) -> String {
    assert_eq!(status.as_u16(), code, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["status"], name, "{body}");
    let msg = body["error"]["message"].as_str().expect("error message").to_owned();
    assert!(!msg.is_empty());
    msg
}

/// An RS256 JWT signed with a Google-format service-account key file's private key, `kid` its
/// key id: what google-auth signs for `POST /token` or as a self-signed JWT.
pub fn sign_jwt(key_file: &Value, claims: &Value) -> String {
    let pem = key_file["private_key"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS #8 PEM");
    let key = ferrocore_device::DeviceKey::from_pem(pem).unwrap();
    assert_eq!(key.alg(), ferrocore_device::Alg::Rs256);
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": key_file["private_key_id"]});
    key.sign(&header, claims).unwrap()
}
