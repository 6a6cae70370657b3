//! The command line as operators run it: piped into `head` (it ends quietly when its reader goes
//! away), against an HTTPS server (`--ca-file`), with shell completions; and `serve
//! --log-format json`, whose lines carry the MQTT connection's and the API request's spans and
//! never a secret.
//!
//! Ferrocore's `--http` listener speaks plain HTTP; HTTPS in front of it comes from a
//! TLS-terminating proxy, played here by [`TlsProxy`] with the server's generated certificate.

use crate::cli_verbs::{BIN, Cli};
use crate::device::*;
use crate::harness::*;
use ferrocore_mqtt_codec::{ConnectReturnCode as Rc, Packet};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const PROJECT: &str = "ops-proj";

/// A registry whose telemetry goes to `projects/PROJECT/topics/TOPIC`; returns its name.
async fn registry(s: &TestServer, id: &str, topic: &str) -> String {
    let topic = format!("projects/{PROJECT}/topics/{topic}");
    s.registry_with(PROJECT, id, json!({"logLevel": "INFO", "eventNotificationConfigs": [{"pubsubTopicName": topic}]}))
        .await
}

async fn publish(s: &TestServer, topic: &str, n: usize) {
    let messages: Vec<Value> = (0..n).map(|i| json!({"data": b64(format!("message {i}").as_bytes())})).collect();
    let (st, body) =
        s.post(&format!("projects/{PROJECT}/topics/{topic}:publish"), json!({ "messages": messages })).await;
    assert_eq!(st, StatusCode::OK, "{body}");
}

/// Waits (off the runtime) for `child` to end within `within`; kills it and fails otherwise.
async fn exits_within(mut child: Child, within: Duration) -> (ExitStatus, String) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                return (status, err);
            }
            if started.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("still running {within:?} after its stdout was closed; stderr: {err}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap()
}

/// `ferrocore ARGS | head -n 1`: reads one line of stdout, closes the pipe, and returns how the
/// process ended and what it said on stderr.
async fn head_one_line(cli: &Cli, args: &[&str]) -> (String, ExitStatus, String) {
    let mut child = cli.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
        // The reader is dropped here: the pipe's only reading end closes, as `head` exiting does.
    })
    .await
    .unwrap();
    let (status, stderr) = exits_within(child, Duration::from_secs(5)).await;
    (first, status, stderr)
}

#[track_caller]
fn quiet_end(status: ExitStatus, stderr: &str) {
    assert_eq!(status.code(), Some(0), "a closed stdout ends the command with status 0; stderr: {stderr}");
    assert!(!stderr.contains("Broken pipe") && !stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[tokio::test]
async fn a_closed_pipe_ends_tail_and_follow_quietly_and_at_once() {
    let s = TestServer::start().await;
    let reg = registry(&s, "pipes", "telemetry").await;
    publish(&s, "telemetry", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&s, dir.path());

    // `events tail` has printed everything there is and waits in a 30 s long poll: closing the
    // pipe must end it now, not at the next message.
    let topic = format!("projects/{PROJECT}/topics/telemetry");
    let started = Instant::now();
    let (line, status, stderr) = head_one_line(&cli, &["events", "tail", &topic, "--from", "earliest"]).await;
    assert!(line.contains("message 0"), "{line}");
    quiet_end(status, &stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    // The same for JSON lines.
    let (line, status, stderr) =
        head_one_line(&cli, &["events", "tail", &topic, "--from", "earliest", "--format", "json"]).await;
    assert!(serde_json::from_str::<Value>(&line).is_ok(), "{line}");
    quiet_end(status, &stderr);

    // `logs read --follow` polls every second; a device's CONNECT gives it a first line.
    s.device(&reg, "pipe-dev", json!({})).await;
    let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
    assert_eq!(c.connect(&format!("{reg}/devices/pipe-dev"), Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    let (line, status, stderr) =
        head_one_line(&cli, &["logs", "read", "--registry", &reg, "--follow", "--format", "json"]).await;
    assert!(line.contains("CONNECT"), "{line}");
    quiet_end(status, &stderr);
}

#[tokio::test]
async fn a_pipe_closed_before_the_output_is_no_error_for_any_verb() {
    let s = TestServer::start().await;
    registry(&s, "closed-early", "early").await;
    publish(&s, "early", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&s, dir.path());
    let topic = format!("projects/{PROJECT}/topics/early");
    for args in [
        vec!["registries", "list", "--project", PROJECT],
        vec!["registries", "list", "--project", PROJECT, "--format", "json"],
        vec!["registries", "describe", "closed-early", "--project", PROJECT],
        vec!["events", "tail", &topic, "--from", "earliest", "--no-follow"],
        vec!["pubsub", "topics", "list", "--project", PROJECT],
        vec!["completions", "bash"],
    ] {
        // Stdout's reading end is closed before the command writes anything: its first write
        // fails with EPIPE (`print!` would panic on it).
        let mut child = cli.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let (status, stderr) = exits_within(child, Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
}

/// A TLS-terminating proxy in front of the server's plain `--http` listener, with the server's
/// generated certificate (for localhost, signed by DATA_DIR/tls/ca.pem).
struct TlsProxy {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    async fn start(s: &TestServer) -> Self {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls = s.data_dir().join("tls");
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(tls.join("server.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(tls.join("server-key.pem")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = s.base.trim_start_matches("http://").to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    // A refused handshake (the client does not trust us) just ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self { addr, task }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn https_servers_are_reached_with_the_ca_file_and_refused_clearly_without() {
    let s = TestServer::start().await;
    registry(&s, "over-tls", "secure").await;
    publish(&s, "secure", 1).await;
    let proxy = TlsProxy::start(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&s, dir.path());
    cli.env.retain(|(k, _)| k != "FERROCORE_SERVER");
    let ca = s.data_dir().join("tls").join("ca.pem").display().to_string();
    let url = proxy.url();

    // --ca-file trusts the server's CA: a REST verb and the long-polling `events tail` work.
    let out =
        cli.run(&["registries", "list", "--project", PROJECT, "--server", &url, "--ca-file", &ca]).await.success();
    assert!(out.stdout.contains("over-tls"), "{}", out.stdout);
    let topic = format!("projects/{PROJECT}/topics/secure");
    let out = cli
        .run(&["events", "tail", &topic, "--from", "earliest", "--no-follow", "--server", &url, "--ca-file", &ca])
        .await
        .success();
    assert!(out.stdout.contains("message 0"), "{}", out.stdout);

    // The same from the environment.
    let mut env_cli = Cli { cwd: cli.cwd.clone(), env: cli.env.clone() };
    env_cli.env.push(("FERROCORE_SERVER".into(), url.clone()));
    env_cli.env.push(("FERROCORE_CA_FILE".into(), ca.clone()));
    let out = env_cli.run(&["registries", "describe", "over-tls", "--project", PROJECT, "--format", "json"]).await;
    assert_eq!(out.success().json()["id"], "over-tls");

    // Without it, the system's roots do not know the generated CA.
    let out = cli.run(&["registries", "list", "--project", PROJECT, "--server", &url]).await.failure();
    let e = out.error();
    assert!(
        e.contains("TLS certificate is refused") && e.contains("unknown authority") && e.contains("--ca-file"),
        "{e}"
    );
    assert!(!e.contains("error sending request") && !e.contains("UnknownIssuer"), "no internals: {e}");
    assert_eq!(out.stderr.lines().count(), 1, "one line, no library logs: {}", out.stderr);
    let out = cli.run(&["events", "tail", &topic, "--no-follow", "--server", &url]).await.failure();
    assert!(out.error().contains("unknown authority"), "{}", out.error());

    // Another CA is no better, and says which file did not vouch for the server.
    let other_ca = format!("{FIXTURES}/ca_cert.pem");
    let out = cli
        .run(&["registries", "list", "--project", PROJECT, "--server", &url, "--ca-file", &other_ca])
        .await
        .failure();
    assert!(out.error().contains("does not vouch") && out.error().contains("ca_cert.pem"), "{}", out.error());

    // A CA file that is missing, or not PEM.
    let out = cli
        .run(&["registries", "list", "--project", PROJECT, "--server", &url, "--ca-file", "/nonexistent/ca.pem"])
        .await
        .failure();
    assert!(out.error().contains("cannot read the CA file /nonexistent/ca.pem"), "{}", out.error());
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.display().to_string();
    let out =
        cli.run(&["registries", "list", "--project", PROJECT, "--server", &url, "--ca-file", &junk]).await.failure();
    assert!(out.error().contains("holds no PEM certificate"), "{}", out.error());
    assert!(!out.stderr.contains("Error {") && !out.stderr.contains("os error"), "no internals: {}", out.stderr);
}

#[tokio::test]
async fn completions_print_a_script_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli { cwd: dir.path().to_owned(), env: Vec::new() };
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef ferrocore"), ("fish", "complete -c ferrocore")] {
        let out = cli.run(&["completions", shell]).await.success();
        assert!(out.stdout.contains(marker), "{shell}: {}", out.stdout);
        for verb in ["serve", "registries", "devices", "events", "pubsub", "completions"] {
            assert!(out.stdout.contains(verb), "{shell} completions name {verb}");
        }
        assert_eq!(out.stderr, "");
    }
    let out = cli.run(&["completions", "tcsh"]).await;
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error: {}", out.stderr);
}

/// `ferrocore serve` as its own process, so that its log format is its own.
struct Served {
    child: Child,
    http: String,
    mqtts: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    stderr: std::thread::JoinHandle<String>,
}

fn serve(data: &Path, extra: &[&str]) -> Served {
    let mut c = std::process::Command::new(BIN);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FERROCORE_")) {
        c.env_remove(k);
    }
    c.args(["serve", "--data-dir"])
        .arg(data)
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--mqtts", "127.0.0.1:0"])
        .args(extra)
        .env("FERROCORE_ADMIN_TOKEN", TOKEN)
        .env("FERROCORE_LOG", "info,ferrocore=debug,ferrocore_mqtt=debug,ferrocore_core=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // `ferrocore listening http=ADDR grpc=ADDR mqtts=ADDR`
    let addr = |name: &str| -> std::net::SocketAddr {
        let field = line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")));
        field.unwrap_or_else(|| panic!("no {name} in {line:?}")).parse().unwrap()
    };
    Served { http: format!("http://{}", addr("http")), mqtts: addr("mqtts"), grpc: addr("grpc"), child, stderr }
}

impl Served {
    /// SIGTERM, then everything it logged.
    async fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        tokio::task::spawn_blocking(move || {
            let _ = self.child.wait();
            self.stderr.join().unwrap()
        })
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn json_logs_carry_connection_and_request_spans_and_no_secret() {
    let data = tempfile::tempdir().unwrap();
    let served = serve(&data.path().join("data"), &["--log-format", "json"]);
    let http = reqwest::Client::new();
    let call = async |method: reqwest::Method, path: &str, auth: &str, body: Option<Value>| {
        let mut req = http.request(method, format!("{}/v1/{path}", served.http)).header("authorization", auth);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.json::<Value>().await.unwrap_or_default())
    };
    let bearer = format!("Bearer {TOKEN}");
    let parent = format!("projects/{PROJECT}/locations/us-central1");
    let (st, body) = call(
        reqwest::Method::POST,
        &format!("{parent}/registries"),
        &bearer,
        Some(json!({"id": "logged", "logLevel": "DEBUG",
            "eventNotificationConfigs": [{"pubsubTopicName": format!("projects/{PROJECT}/topics/logged")}]})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let reg = format!("{parent}/registries/logged");
    let device = json!({"id": "log-dev", "credentials": [{"publicKey": {"format": "ES256_PEM", "key": fixture("ec_public.pem")}}]});
    let (st, body) = call(reqwest::Method::POST, &format!("{reg}/devices"), &bearer, Some(device)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // A refused token is logged as refused, not as itself.
    let wrong = "Bearer not-the-admin-token-42";
    let (st, _) = call(reqwest::Method::GET, &format!("{parent}/registries"), wrong, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // A device connects with its JWT, publishes and leaves; another is refused with a bad one.
    let jwt = es256_token(PROJECT);
    let ca = std::fs::read(data.path().join("data").join("tls").join("ca.pem")).unwrap();
    let mut c = MqttClient::tls(served.mqtts, &ca).await;
    assert_eq!(c.connect(&format!("{reg}/devices/log-dev"), Some(&jwt), 60).await, Rc::Accepted);
    c.publish_acked("/devices/log-dev/events", b"hello").await;
    c.send(Packet::Disconnect).await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
    let forged = format!("{}x", &jwt[..jwt.len() - 1]);
    let mut refused = MqttClient::tls(served.mqtts, &ca).await;
    assert_eq!(refused.connect(&format!("{reg}/devices/log-dev"), Some(&forged), 60).await, Rc::NotAuthorized);

    // A gRPC call, with the token in its metadata.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", served.grpc)).unwrap().connect().await.unwrap();
    let mut grpc = ferrocore_proto::iot::device_manager_client::DeviceManagerClient::with_interceptor(
        channel,
        AddToken::bearer(Some(TOKEN)),
    );
    grpc.get_device_registry(ferrocore_proto::iot::GetDeviceRegistryRequest { name: reg.clone() }).await.unwrap();
    // Activity is flushed within a second; give the session's last lines time to be written.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = served.stop().await;
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{logs}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["fields"].is_object(), "{l}");
    }

    // Every line the authenticated session logged names its device, registry and client.
    let in_session: Vec<&Value> = lines.iter().filter(|l| l["span"]["device"] == "log-dev").collect();
    assert!(!in_session.is_empty(), "no line in the device's span:\n{logs}");
    for l in &in_session {
        assert_eq!(l["span"]["name"], "mqtt", "{l}");
        assert_eq!(l["span"]["registry"], reg.as_str(), "{l}");
        assert!(l["span"]["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{l}");
    }
    assert!(in_session.iter().any(|l| l["fields"]["message"] == "device connected"), "{logs}");
    // The refused connection's line has its client address, and no device yet.
    let refused_line = lines.iter().find(|l| l["fields"]["message"] == "refused CONNECT").expect("refusal logged");
    assert!(refused_line["span"]["client"].is_string() && refused_line["span"]["device"].is_null(), "{refused_line}");

    // One completion line per API request: method, path, status, latency.
    let served_lines: Vec<&Value> = lines.iter().filter(|l| l["fields"]["message"] == "request served").collect();
    let rest = |method: &str, status: u64| {
        served_lines
            .iter()
            .any(|l| l["span"]["name"] == "request" && l["span"]["method"] == method && l["fields"]["status"] == status)
    };
    assert!(rest("POST", 200) && rest("GET", 401), "{logs}");
    assert!(served_lines.iter().all(|l| l["fields"]["latency_ms"].is_number()), "{logs}");
    assert!(
        served_lines.iter().any(|l| l["span"]["method"] == "/google.cloud.iot.v1.DeviceManager/GetDeviceRegistry"
            && l["fields"]["status"] == 0),
        "{logs}"
    );

    // No secret, anywhere.
    for secret in [TOKEN, "not-the-admin-token-42", jwt.as_str(), forged.as_str()] {
        assert!(!logs.contains(secret), "the log holds a secret ({secret})");
    }
    let signature = jwt.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "the log holds a JWT's signature");
}

#[tokio::test]
async fn text_logs_stay_the_default() {
    let data = tempfile::tempdir().unwrap();
    let served = serve(&data.path().join("data"), &[]);
    let logs = served.stop().await;
    assert!(logs.lines().all(|l| !l.trim_start().starts_with('{')), "{logs}");
    assert!(
        logs.lines().any(|l| l.contains("INFO") && l.contains("admin token taken from the configuration")),
        "{logs}"
    );
}
