//! The operator's command line against the real server: every `ferrocore` client verb with its
//! table and JSON output and its errors, bulk import and export, key generation, and a simulated
//! device that the other verbs talk to.
//!
//! The binary runs as a child process, as a user would run it; the server runs in the test.

use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ferrocore");

/// What one run of the binary printed, and how it ended.
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    #[track_caller]
    pub fn success(self) -> Self {
        assert!(
            self.status.success(),
            "expected success, got {}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// A failure as users should see it: exit code 1 and one `error: ...` line, never a panic.
    #[track_caller]
    pub fn failure(self) -> Self {
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit code 1\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"), "{}", self.stderr);
        assert!(self.stderr.lines().any(|l| l.starts_with("error: ")), "no error line: {}", self.stderr);
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// The `error: ...` line.
    pub fn error(&self) -> &str {
        self.stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_default()
    }
}

/// The table's lines split into cells (columns are two or more spaces apart).
pub fn rows(table: &str) -> Vec<Vec<String>> {
    table.lines().map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect()).collect()
}

/// Runs the binary in a directory, against a server, with a controlled environment.
pub struct Cli {
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Cli {
    /// Talks to `s` with the admin token, from `cwd`.
    pub fn new(s: &TestServer, cwd: &Path) -> Self {
        Self {
            cwd: cwd.to_owned(),
            env: vec![
                ("FERROCORE_SERVER".into(), s.base.clone()),
                ("FERROCORE_TOKEN".into(), TOKEN.into()),
                ("FERROCORE_MQTT_SERVER".into(), format!("localhost:{}", s.mqtts.port())),
                ("FERROCORE_DATA_DIR".into(), s.data_dir().display().to_string()),
            ],
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(&self.cwd);
        // Only what the test sets: a developer's own FERROCORE_* must not leak in.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FERROCORE_")) {
            c.env_remove(k);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs to completion (off the async runtime, which serves the server meanwhile).
    pub async fn run(&self, args: &[&str]) -> Out {
        let mut c = self.command(args);
        let out = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
        Out {
            status: out.status,
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    /// Starts a long-running command whose output is read line by line.
    pub fn spawn(&self, args: &[&str]) -> Background {
        let mut c = self.command(args);
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        Background {
            stdout: Lines::new(child.stdout.take().unwrap()),
            stderr: Lines::new(child.stderr.take().unwrap()),
            child,
        }
    }
}

/// Lines of a child's stream, as they come.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    fn new(stream: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { rx, seen: Vec::new() }
    }

    fn drain(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l);
        }
    }

    /// Takes every line up to the end of the stream, once the child has exited: the end is there
    /// as soon as the reader thread has passed the last lines on. Bounded, in case something
    /// else still holds the pipe open.
    fn drain_to_end(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(l) => self.seen.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the output did not end 10 s after the process exited"),
            }
        }
    }

    pub fn count(&mut self, needle: &str) -> usize {
        self.drain();
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }
}

/// A running child process.
pub struct Background {
    child: std::process::Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Background {
    /// Waits until stdout (or stderr, with `err`) has shown `times` lines containing `needle`.
    pub async fn expect(&mut self, err: bool, needle: &str, times: usize) {
        for _ in 0..1000 {
            let lines = if err { &mut self.stderr } else { &mut self.stdout };
            if lines.count(needle) >= times {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stdout.drain_to_end();
                self.stderr.drain_to_end();
                panic!(
                    "exited ({status}) before printing '{needle}' x{times}\nstdout: {:#?}\nstderr: {:#?}",
                    self.stdout.seen, self.stderr.seen
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no '{needle}' x{times} after 20s\nstdout: {:#?}\nstderr: {:#?}", self.stdout.seen, self.stderr.seen);
    }

    pub async fn out(&mut self, needle: &str) {
        self.expect(false, needle, 1).await
    }

    pub async fn err(&mut self, needle: &str) {
        self.expect(true, needle, 1).await
    }

    /// Ctrl-C.
    pub fn interrupt(&self) {
        let ok = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to end on its own (20 s at most) and reads what it printed last.
    pub async fn finish(&mut self) -> ExitStatus {
        for _ in 0..1000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader threads end at EOF, having passed on the last lines.
                self.stdout.drain_to_end();
                self.stderr.drain_to_end();
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("still running after 20s\nstdout: {:#?}\nstderr: {:#?}", self.stdout.seen, self.stderr.seen);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture_path(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

#[tokio::test]
async fn registries_verbs_print_tables_and_json() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&s, dir.path());
    let at = ["--project", "p1", "--region", "europe-west1"];
    let ca = fixture_path("ca_cert.pem");
    let mut args = vec!["registries", "create", "fleet"];
    args.extend(at);
    args.extend([
        "--event-notification-config",
        "topic=alerts,subfolder=alerts",
        "--event-notification-config",
        "topic=projects/other/topics/telemetry",
        "--state-pubsub-topic",
        "state",
        "--no-enable-http-config",
        "--log-level",
        "info",
        "--public-key-path",
        &ca,
    ]);
    let out = cli.run(&args).await.success();
    assert_eq!(out.stderr, "Created registry [fleet].\n");
    assert_eq!(out.stdout, "", "a table-mode create only confirms");

    let out = cli.run(&[&["registries", "describe", "fleet"][..], &at].concat()).await.success();
    let table = rows(&out.stdout);
    for row in [
        ["eventNotificationConfigs[0].pubsubTopicName", "projects/p1/topics/alerts"],
        ["eventNotificationConfigs[0].subfolderMatches", "alerts"],
        ["eventNotificationConfigs[1].pubsubTopicName", "projects/other/topics/telemetry"],
        ["stateNotificationConfig.pubsubTopicName", "projects/p1/topics/state"],
        ["httpConfig.httpEnabledState", "HTTP_DISABLED"],
        ["mqttConfig.mqttEnabledState", "MQTT_ENABLED"],
        ["logLevel", "INFO"],
        ["name", "projects/p1/locations/europe-west1/registries/fleet"],
    ] {
        assert!(table.contains(&row.map(String::from).to_vec()), "no {row:?} in\n{}", out.stdout);
    }
    assert!(table.contains(&vec![
        "credentials[0].publicKeyCertificate.certificate".to_owned(),
        "-----BEGIN CERTIFICATE----- (+19 lines)".to_owned()
    ]));
    assert!(table.contains(&vec![
        "credentials[0].publicKeyCertificate.x509Details.subject".to_owned(),
        "O=Ferrocore, CN=Ferrocore Test RSA CA".to_owned()
    ]));

    // A full name needs no --project.
    let j = cli
        .run(&["registries", "describe", "projects/p1/locations/europe-west1/registries/fleet", "--format", "json"])
        .await
        .success()
        .json();
    assert_eq!(j["credentials"][0]["publicKeyCertificate"]["format"], "X509_CERTIFICATE_PEM");
    assert_eq!(j["eventNotificationConfigs"][0]["subfolderMatches"], "alerts");

    cli.run(&[&["registries", "create", "second"][..], &at].concat()).await.success();
    let out = cli.run(&[&["registries", "list"][..], &at].concat()).await.success();
    assert_eq!(
        rows(&out.stdout),
        [
            vec!["ID", "LOCATION", "MQTT", "HTTP", "TELEMETRY_TOPICS"],
            vec![
                "fleet",
                "europe-west1",
                "enabled",
                "disabled",
                "projects/p1/topics/alerts (alerts), projects/other/topics/telemetry"
            ],
            vec!["second", "europe-west1", "enabled", "enabled"],
        ]
    );
    let list = cli.run(&[&["registries", "list", "--format", "json"][..], &at].concat()).await.success().json();
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["fleet", "second"]);
    let list = cli.run(&[&["registries", "list", "--format", "json", "--limit", "1"][..], &at].concat()).await;
    assert_eq!(list.success().json().as_array().unwrap().len(), 1);

    let out = cli
        .run(&[&["registries", "update", "fleet", "--no-enable-mqtt-config", "--format", "json"][..], &at].concat())
        .await
        .success();
    assert_eq!(out.stderr, "Updated registry [fleet].\n");
    let j = out.json();
    assert_eq!(j["mqttConfig"]["mqttEnabledState"], "MQTT_DISABLED");
    assert_eq!(j["httpConfig"]["httpEnabledState"], "HTTP_DISABLED", "what was not given stays");
    assert_eq!(j["logLevel"], "INFO");
    let out = cli.run(&[&["registries", "update", "fleet"][..], &at].concat()).await.failure();
    assert!(out.error().contains("nothing to update"), "{}", out.stderr);
    let out = cli
        .run(&[&["registries", "update", "fleet", "--event-notification-config", "subfolder=x"][..], &at].concat())
        .await
        .failure();
    assert!(out.error().contains("names no topic"), "{}", out.stderr);

    // The server's refusals come through with its message.
    // The registry's CA is enforced on devices created through the CLI too.
    let signed = format!("path={},type=es256", fixture_path("device_signed_by_ca.pem"));
    let unsigned = format!("path={},type=es256", fixture_path("ec_public.pem"));
    let dev = |key: &str| -> Vec<String> {
        let mut a: Vec<String> =
            ["devices", "create", "dev-1", "--registry", "fleet", "--public-key", key].map(String::from).to_vec();
        a.extend(at.map(String::from));
        a
    };
    let args = dev(&unsigned);
    let out = cli.run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await.failure();
    assert!(out.error().contains("must be X.509 certificates"), "{}", out.stderr);
    let args = dev(&signed);
    cli.run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await.success();
    let out = cli.run(&[&["registries", "delete", "fleet"][..], &at].concat()).await.failure();
    assert!(out.error().starts_with("error: FAILED_PRECONDITION: "), "{}", out.stderr);
    let out = cli.run(&[&["registries", "create", "second"][..], &at].concat()).await.failure();
    assert!(out.error().starts_with("error: ALREADY_EXISTS: "), "{}", out.stderr);
    let out = cli.run(&[&["registries", "delete", "second"][..], &at].concat()).await.success();
    assert_eq!(out.stderr, "Deleted registry [second].\n");
    let out = cli.run(&[&["registries", "describe", "second"][..], &at].concat()).await.failure();
    assert!(out.error().starts_with("error: NOT_FOUND: "), "{}", out.stderr);
    let out = cli.run(&["registries", "describe", "fleet"]).await.failure();
    assert!(out.error().contains("--project"), "{}", out.stderr);
    s.stop().await;
}

#[tokio::test]
async fn devices_verbs_configs_states_commands_and_gateways() {
    // Config updates are limited to one per second per device: the test moves the server's clock.
    let clock = std::sync::Arc::new(ferrocore_core::clock::ManualClock::new(ferrocore_model::Timestamp::now()));
    let server_clock = ferrocore::server::ServerClock(clock.clone());
    let s = TestServer::start_configured(|_| None, |c| c.clock = server_clock).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&s, dir.path());
    // The scope can come from the environment, as gcloud's does from its configuration.
    cli.env.push(("FERROCORE_PROJECT".into(), "dp".into()));
    cli.env.push(("FERROCORE_REGISTRY".into(), "reg".into()));
    cli.run(&["registries", "create", "reg", "--event-notification-config", "topic=events"]).await.success();
    std::fs::write(dir.path().join("notes.txt"), "line 1\nline 2").unwrap();
    let rsa_cert =
        format!("path={},type=rs256,expiration-time=2031-01-01T02:00:00+02:00", fixture_path("rsa_cert.pem"));
    let ec_key = format!("path={},type=es256", fixture_path("ec_public.pem"));
    let out = cli
        .run(&[
            "devices",
            "create",
            "dev-1",
            "--public-key",
            &rsa_cert,
            "--public-key",
            &ec_key,
            "--metadata",
            "room=kitchen,floor=1",
            "--metadata-from-file",
            "notes=notes.txt",
            "--blocked",
            "--log-level",
            "debug",
        ])
        .await
        .success();
    let created = out.stderr.strip_prefix("Created device [dev-1] (numeric id ").expect(&out.stderr);
    let num_id = created.strip_suffix(").\n").unwrap().to_owned();

    let d = cli.run(&["devices", "describe", "dev-1", "--format", "json"]).await.success().json();
    assert_eq!(d["credentials"][0]["publicKey"]["format"], "RSA_X509_PEM", "rs256 with a certificate");
    assert_eq!(d["credentials"][0]["expirationTime"], "2031-01-01T00:00:00Z");
    assert_eq!(d["credentials"][1]["publicKey"]["format"], "ES256_PEM");
    assert_eq!(d["metadata"], serde_json::json!({"room": "kitchen", "floor": "1", "notes": "line 1\nline 2"}));
    assert_eq!((&d["blocked"], &d["logLevel"]), (&Value::Bool(true), &Value::from("DEBUG")));
    // By numeric id, by full name, and with gcloud's --device spelling.
    let full = format!("projects/dp/locations/us-central1/registries/reg/devices/{num_id}");
    for args in [
        &["devices", "describe", &num_id][..],
        &["devices", "describe", &full],
        &["devices", "describe", "--device", "dev-1"],
    ] {
        let out = cli.run(args).await.success();
        let table = rows(&out.stdout);
        assert!(table.contains(&vec!["id".into(), "dev-1".into()]), "{}", out.stdout);
        assert!(table.contains(&vec!["blocked".into(), "true".into()]), "{}", out.stdout);
        assert!(table.contains(&vec!["metadata.notes".into(), "line 1 (+1 lines)".into()]), "{}", out.stdout);
    }

    cli.run(&["devices", "create", "gw-1", "--device-type", "gateway", "--auth-method", "association-only"])
        .await
        .success();
    let out = cli.run(&["devices", "list"]).await.success();
    let table = rows(&out.stdout);
    assert_eq!(table[0], ["ID", "NUM_ID", "BLOCKED", "GATEWAY", "LAST_SEEN"]);
    assert_eq!(table[1], ["dev-1", num_id.as_str(), "true", "false"]);
    assert_eq!((table[2][0].as_str(), table[2][2].as_str(), table[2][3].as_str()), ("gw-1", "false", "true"));
    let gateways = cli.run(&["devices", "list", "--device-type", "gateway", "--format", "json"]).await.success().json();
    assert_eq!(gateways.as_array().unwrap().len(), 1);
    assert_eq!(gateways[0]["id"], "gw-1");
    assert_eq!(gateways[0]["gatewayConfig"]["gatewayType"], "GATEWAY");
    let out = cli.run(&["devices", "list", "--device-ids", "gw-1,nobody"]).await.success();
    assert_eq!(rows(&out.stdout).len(), 2, "{}", out.stdout);

    let d = cli
        .run(&["devices", "update", "dev-1", "--no-blocked", "--metadata", "room=hall", "--format", "json"])
        .await
        .success()
        .json();
    assert_eq!(d["blocked"], Value::Null, "unblocked (false is left out of the JSON)");
    assert_eq!(d["metadata"], serde_json::json!({"room": "hall"}));
    assert_eq!(d["credentials"].as_array().unwrap().len(), 2, "credentials not given are kept");
    let ec_cert = format!("path={},type=es256", fixture_path("ec_cert.pem"));
    let d = cli
        .run(&["devices", "update", "dev-1", "--clear-metadata", "--public-key", &ec_cert, "--format", "json"])
        .await
        .success()
        .json();
    assert_eq!(d["metadata"], Value::Null);
    assert_eq!(d["credentials"][0]["publicKey"]["format"], "ES256_X509_PEM");
    assert_eq!(d["credentials"].as_array().unwrap().len(), 1);

    // Configs: text, bytes from a file, compare-and-set.
    let out = cli.run(&["devices", "configs", "update", "dev-1", "--config-data", "hello"]).await.success();
    assert_eq!(out.stderr, "Updated the config of device [dev-1] to version 2.\n");
    clock.advance(std::time::Duration::from_secs(1));
    std::fs::write(dir.path().join("blob.bin"), [0u8, 1, 2]).unwrap();
    let c = cli
        .run(&[
            "devices",
            "configs",
            "update",
            "dev-1",
            "--config-file",
            "blob.bin",
            "--version-to-update",
            "2",
            "--format",
            "json",
        ])
        .await
        .success()
        .json();
    assert_eq!((&c["version"], &c["binaryData"]), (&Value::from("3"), &Value::from("AAEC")));
    let out = cli
        .run(&["devices", "configs", "update", "dev-1", "--config-data", "x", "--version-to-update", "1"])
        .await
        .failure();
    assert!(out.error().starts_with("error: FAILED_PRECONDITION: "), "{}", out.stderr);
    let out = cli.run(&["devices", "configs", "list", "dev-1"]).await.success();
    let table = rows(&out.stdout);
    assert_eq!(table[0], ["VERSION", "CLOUD_UPDATE_TIME", "DEVICE_ACK_TIME", "DATA"]);
    let versions: Vec<(&str, &str)> =
        table[1..].iter().map(|r| (r[0].as_str(), r.last().map(String::as_str).unwrap_or_default())).collect();
    assert_eq!(versions[..2], [("3", "base64:AAEC"), ("2", "hello")]);
    assert_eq!(versions[2].0, "1");
    let c =
        cli.run(&["devices", "configs", "list", "dev-1", "--limit", "1", "--format", "json"]).await.success().json();
    assert_eq!(c.as_array().unwrap().len(), 1);
    let out = cli.run(&["devices", "configs", "update", "dev-1"]).await;
    assert_eq!(out.status.code(), Some(2), "a usage error: {}", out.stderr);

    let out = cli.run(&["devices", "states", "list", "dev-1"]).await.success();
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", "Listed 0 items.\n"));
    assert_eq!(
        cli.run(&["devices", "states", "list", "dev-1", "--format", "json"]).await.success().json(),
        serde_json::json!([])
    );
    let out = cli.run(&["devices", "commands", "send", "dev-1", "--command-data", "x"]).await.failure();
    assert!(
        out.error().starts_with("error: FAILED_PRECONDITION: ") && out.error().contains("not subscribed"),
        "{}",
        out.stderr
    );

    // Gateways.
    let out = cli.run(&["devices", "gateways", "bind", "--gateway", "gw-1", "--device", "dev-1"]).await.success();
    assert_eq!(out.stderr, "Bound device [dev-1] to gateway [gw-1].\n");
    let out = cli.run(&["devices", "gateways", "list", "--gateway", "gw-1"]).await.success();
    assert_eq!(rows(&out.stdout), [vec!["ID", "NUM_ID"], vec!["dev-1", num_id.as_str()]]);
    let j = cli.run(&["devices", "gateways", "list", "--device", "dev-1", "--format", "json"]).await.success().json();
    assert_eq!(j[0]["id"], "gw-1");
    let out = cli.run(&["devices", "gateways", "bind", "--gateway", "dev-1", "--device", "gw-1"]).await.failure();
    assert!(out.error().starts_with("error: INVALID_ARGUMENT: "), "{}", out.stderr);
    let out = cli.run(&["devices", "gateways", "unbind", "--gateway", "gw-1", "--device", "dev-1"]).await.success();
    assert_eq!(out.stderr, "Unbound device [dev-1] from gateway [gw-1].\n");
    let out = cli.run(&["devices", "gateways", "unbind", "--gateway", "gw-1", "--device", "dev-1"]).await.failure();
    assert!(out.error().starts_with("error: NOT_FOUND: "), "{}", out.stderr);

    let out = cli.run(&["devices", "delete", "dev-1"]).await.success();
    assert_eq!(out.stderr, "Deleted device [dev-1].\n");
    let out = cli.run(&["devices", "describe", "dev-1"]).await.failure();
    assert_eq!(
        out.stderr,
        "error: NOT_FOUND: A device with the name 'projects/dp/locations/us-central1/registries/reg/devices/dev-1' doesn't exist.\n"
    );
    assert_eq!(out.stdout, "");

    // Mistakes caught before any request, and failures of the connection itself.
    let bad_type = format!("path={},type=hs256", fixture_path("ec_public.pem"));
    let out = cli.run(&["devices", "create", "dev-2", "--public-key", &bad_type]).await.failure();
    assert!(out.error().contains("unknown key type 'hs256'"), "{}", out.stderr);
    let out = cli.run(&["devices", "create", "dev-2", "--public-key", "path=nowhere.pem,type=es256"]).await.failure();
    assert!(out.error().contains("cannot read the key file nowhere.pem"), "{}", out.stderr);
    let out = cli.run(&["devices", "create", "dev-2", "--public-key", "type=es256"]).await.failure();
    assert!(out.error().contains("needs both path= and type="), "{}", out.stderr);
    let out = cli.run(&["devices", "list", "--token", "wrong-token-0123456789"]).await.failure();
    assert!(out.error().starts_with("error: UNAUTHENTICATED: "), "{}", out.stderr);
    let out = cli.run(&["devices", "list", "--server", "http://127.0.0.1:9"]).await.failure();
    assert!(out.error().starts_with("error: cannot reach http://127.0.0.1:9"), "{}", out.stderr);
    s.stop().await;
}

#[tokio::test]
async fn keys_generate_writes_a_key_pair_and_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli { cwd: dir.path().to_owned(), env: vec![] };
    for (kind, label) in [("es256", "es"), ("rs256", "rsa")] {
        let out = cli.run(&["keys", "generate", "--type", kind, "--out", label]).await.success();
        assert_eq!(
            rows(&out.stdout),
            [
                vec!["FILE".to_owned(), "WHAT".into()],
                vec![format!("{label}_private.pem"), "private key (keep it on the device)".into()],
                vec![format!("{label}_public.pem"), "public key".into()],
                vec![format!("{label}_cert.pem"), "self-signed certificate".into()],
            ]
        );
        assert!(out.stderr.contains(&format!("--public-key path={label}_public.pem,type={kind}")), "{}", out.stderr);
        let read = |suffix: &str| std::fs::read_to_string(dir.path().join(format!("{label}_{suffix}.pem"))).unwrap();
        assert!(read("private").starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(read("public").starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(read("cert").starts_with("-----BEGIN CERTIFICATE-----"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(format!("{label}_private.pem"))).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is the owner's only");
    }
    let out = cli.run(&["keys", "generate", "--type", "es256", "--out", "es"]).await.failure();
    assert!(out.error().contains("es_private.pem already exists; pass --force"), "{}", out.stderr);
    let before = std::fs::read_to_string(dir.path().join("es_private.pem")).unwrap();
    let j = cli
        .run(&["keys", "generate", "--type", "es256", "--out", "es", "--force", "--format", "json"])
        .await
        .success()
        .json();
    assert_eq!(j["privateKey"], "es_private.pem");
    assert_eq!(j["certificate"], "es_cert.pem");
    assert_ne!(std::fs::read_to_string(dir.path().join("es_private.pem")).unwrap(), before, "a new key");
}

/// Writes a CSV of devices: good ones, and the bad lines the import must report.
fn import_file(dir: &Path) -> PathBuf {
    std::fs::copy(fixture_path("ec_public.pem"), dir.join("ec_public.pem")).unwrap();
    std::fs::copy(fixture_path("rsa_cert.pem"), dir.join("rsa_cert.pem")).unwrap();
    let inline = std::fs::read_to_string(fixture_path("rsa_public.pem")).unwrap();
    let csv = format!(
        "id,key,format,expiration_time,metadata,blocked,gateway,log_level\n\
         sensor-1,ec_public.pem,es256,,room=a;note=x\\;y,false,,\n\
         sensor-2,rsa_cert.pem;ec_public.pem,rs256;es256,2031-01-01T00:00:00Z;,,true,,debug\n\
         \n\
         sensor-3,missing.pem,es256,,,,,\n\
         gateway-1,,,,,,association-only,\n\
         \"sensor-4\",\"{inline}\",rsa-pem,,,no,,\n\
         9bad-id,ec_public.pem,es256,,,,,\n\
         sensor-5,ec_public.pem,es256,,floor,,,\n"
    );
    let path = dir.join("fleet.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

#[tokio::test]
async fn import_creates_what_it_can_reports_each_bad_line_and_resumes() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&s, dir.path());
    cli.env.push(("FERROCORE_PROJECT".into(), "imp".into()));
    cli.env.push(("FERROCORE_REGISTRY".into(), "reg".into()));
    cli.run(&["registries", "create", "reg"]).await.success();
    import_file(dir.path());

    let out = cli.run(&["devices", "import", "fleet.csv"]).await.failure();
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(lines[0].starts_with("fleet.csv:5: cannot read the key file "), "{}", out.stderr);
    // sensor-4's key spans lines 7 to 16.
    assert!(lines[1].starts_with("fleet.csv:17 (device 9bad-id): INVALID_ARGUMENT: "), "{}", out.stderr);
    assert_eq!(lines[2], "fleet.csv:18: metadata entry 'floor' is not key=value");
    assert_eq!(
        lines[3],
        "Imported 7 lines into [projects/imp/locations/us-central1/registries/reg]: 4 created, 0 already there, 3 failed."
    );
    assert_eq!(lines[4], "error: 3 of 7 lines failed");
    let listed = cli.run(&["devices", "list", "--format", "json"]).await.success().json();
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["gateway-1", "sensor-1", "sensor-2", "sensor-4"]);
    let d = cli.run(&["devices", "describe", "sensor-2", "--format", "json"]).await.success().json();
    assert_eq!(d["credentials"][0]["publicKey"]["format"], "RSA_X509_PEM");
    assert_eq!(d["credentials"][0]["expirationTime"], "2031-01-01T00:00:00Z");
    assert!(d["credentials"][1].get("expirationTime").is_none());
    assert_eq!((&d["blocked"], &d["logLevel"]), (&Value::Bool(true), &Value::from("DEBUG")));
    let d = cli.run(&["devices", "describe", "sensor-1", "--format", "json"]).await.success().json();
    assert_eq!(d["metadata"], serde_json::json!({"room": "a", "note": "x;y"}));

    // Fix the bad lines, change one device behind the import's back, and run it again.
    let path = dir.path().join("fleet.csv");
    let fixed =
        std::fs::read_to_string(&path).unwrap().replace("missing.pem", "ec_public.pem").replace("9bad-id", "sensor-9");
    std::fs::write(&path, fixed.replace(",floor,", ",floor=2,")).unwrap();
    cli.run(&["devices", "update", "sensor-1", "--metadata", "room=b"]).await.success();
    let out = cli.run(&["devices", "import", "fleet.csv", "--format", "json"]).await.failure();
    let summary = out.json();
    assert_eq!((&summary["created"], &summary["unchanged"]), (&Value::from(3), &Value::from(3)));
    assert_eq!(summary["failed"][0]["line"], 2);
    assert_eq!(summary["failed"][0]["id"], "sensor-1");
    assert_eq!(summary["failed"][0]["error"], "conflict: the device exists with a different metadata; left as it is");
    assert!(out.stderr.contains("fleet.csv:2 (device sensor-1): conflict"), "{}", out.stderr);
    let d = cli.run(&["devices", "describe", "sensor-1", "--format", "json"]).await.success().json();
    assert_eq!(d["metadata"], serde_json::json!({"room": "b"}), "a conflict is left alone");

    // A malformed file is refused as a whole, before any request.
    std::fs::write(dir.path().join("bad.csv"), "id,colour\nx,red\n").unwrap();
    let out = cli.run(&["devices", "import", "bad.csv"]).await.failure();
    assert!(out.error().contains("line 1: unknown column 'colour'"), "{}", out.stderr);
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"id\": \"json-1\"}\n[1]\n{\"id\": \"json-2\", \"blocked\": true}\n",
    )
    .unwrap();
    let out = cli.run(&["devices", "import", "bad.jsonl"]).await.failure();
    assert!(out.stderr.contains("bad.jsonl:2: not a JSON object"), "{}", out.stderr);
    assert!(out.stderr.contains("2 created, 0 already there, 1 failed"), "{}", out.stderr);
    s.stop().await;
}

#[tokio::test]
async fn export_then_import_round_trips_thousands_of_devices() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&s, dir.path());
    cli.env.push(("FERROCORE_PROJECT".into(), "bulk".into()));
    for r in ["source", "copy-csv", "copy-jsonl"] {
        cli.run(&["registries", "create", r]).await.success();
    }
    import_file(dir.path());
    let path = dir.path().join("fleet.csv");
    let varied = std::fs::read_to_string(&path).unwrap();
    // The varied lines that import cleanly, and 1 200 more: more than one page of 1 000.
    let mut csv: String = varied
        .lines()
        .filter(|l| !l.contains("missing.pem") && !l.contains("9bad") && !l.contains(",floor,"))
        .map(|l| format!("{l}\n"))
        .collect();
    for i in 0..1200 {
        csv.push_str(&format!("bulk-{i:05},ec_public.pem,es256,,n={i},false,,\n"));
    }
    std::fs::write(&path, csv).unwrap();
    let out = cli.run(&["devices", "import", "fleet.csv", "--registry", "source"]).await.success();
    assert!(out.stderr.contains("1204 created, 0 already there, 0 failed"), "{}", out.stderr);

    for (format, copy) in [("csv", "copy-csv"), ("jsonl", "copy-jsonl")] {
        let first = format!("source.{format}");
        let out = cli.run(&["devices", "export", &first, "--registry", "source"]).await.success();
        assert_eq!(
            out.stderr,
            format!("Exported 1204 devices of [projects/bulk/locations/us-central1/registries/source] to {first}.\n")
        );
        let out = cli.run(&["devices", "import", &first, "--registry", copy]).await.success();
        assert!(out.stderr.contains("1204 created, 0 already there, 0 failed"), "{}", out.stderr);
        // Stdout when no file is given.
        let out = cli.run(&["devices", "export", "--registry", copy, "--file-format", format]).await.success();
        let exported = std::fs::read_to_string(dir.path().join(&first)).unwrap();
        assert_eq!(out.stdout, exported, "the copy exports exactly as the source");
        // Importing an export again changes nothing.
        let out = cli.run(&["devices", "import", &first, "--registry", copy]).await.success();
        assert!(out.stderr.contains("0 created, 1204 already there, 0 failed"), "{}", out.stderr);
    }
    let exported = std::fs::read_to_string(dir.path().join("source.csv")).unwrap();
    assert!(exported.starts_with("id,key,format,expiration_time,metadata,blocked,gateway,log_level\n"));
    assert!(exported.contains("\ngateway-1,,,,,false,association-only,\n"), "{exported}");
    assert!(exported.contains(",rsa-x509-pem;es256-pem,2031-01-01T00:00:00Z;,,true,,debug\n"), "{exported}");
    assert!(exported.contains(",es256-pem,,note=x\\;y;room=a,false,,\n"), "{exported}");
    let jsonl = std::fs::read_to_string(dir.path().join("source.jsonl")).unwrap();
    let first: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], "bulk-00000");
    assert_eq!(first["metadata"], serde_json::json!({"n": "0"}));
    assert_eq!(first["format"], "es256-pem");
    s.stop().await;
}

#[tokio::test]
async fn a_simulated_device_publishes_and_receives_configs_and_commands() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&s, dir.path());
    cli.env.push(("FERROCORE_PROJECT".into(), "sim".into()));
    cli.env.push(("FERROCORE_REGISTRY".into(), "reg".into()));
    cli.run(&[
        "registries",
        "create",
        "reg",
        "--event-notification-config",
        "topic=telemetry",
        "--state-pubsub-topic",
        "state",
    ])
    .await
    .success();
    cli.run(&["keys", "generate", "--type", "es256", "--out", "thermo"]).await.success();
    cli.run(&["devices", "create", "thermo", "--public-key", "path=thermo_public.pem,type=es256"]).await.success();
    let device = "projects/sim/locations/us-central1/registries/reg/devices/thermo";

    let mut sim = cli.spawn(&[
        "device",
        "simulate",
        "--device",
        device,
        "--key",
        "thermo_private.pem",
        "--rate",
        "20",
        "--state-every",
        "1s",
    ]);
    sim.err(&format!("Connected to localhost:{} as {device} (ES256).", s.mqtts.port())).await;
    sim.err("Subscribed to /devices/thermo/config and /devices/thermo/commands/#.").await;
    sim.out("config: (empty)").await;

    cli.run(&["devices", "configs", "update", "thermo", "--config-data", r#"{"led":"on"}"#]).await.success();
    sim.out(r#"config: {"led":"on"}"#).await;
    cli.run(&["devices", "commands", "send", "thermo", "--command-data", "reboot", "--subfolder", "power"])
        .await
        .success();
    sim.out("command [power]: reboot").await;
    std::fs::write(dir.path().join("cmd.bin"), [0xffu8, 0]).unwrap();
    cli.run(&["devices", "commands", "send", "thermo", "--command-file", "cmd.bin"]).await.success();
    sim.out("command: base64:/wA=").await;

    // Telemetry reaches the topic log, where `events tail` reads it.
    let mut seen = 0;
    for _ in 0..100 {
        let out = cli
            .run(&[
                "events",
                "tail",
                "projects/sim/topics/telemetry",
                "--from",
                "earliest",
                "--no-follow",
                "--format",
                "json",
            ])
            .await
            .success();
        let messages: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if let Some(m) = messages.first() {
            assert_eq!(m["attributes"]["deviceId"], "thermo");
            use base64::Engine;
            let data = base64::engine::general_purpose::STANDARD.decode(m["data"].as_str().unwrap()).unwrap();
            let payload: Value = serde_json::from_slice(&data).unwrap();
            assert_eq!((&payload["device"], &payload["seq"]), (&Value::from("thermo"), &Value::from(1)));
        }
        seen = messages.len();
        if seen >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen >= 5, "only {seen} messages in the topic");
    let states = cli.run(&["devices", "states", "list", "thermo", "--format", "json"]).await.success().json();
    assert!(states[0]["binaryData"].is_string(), "{states}");

    sim.interrupt();
    let status = sim.finish().await;
    assert!(status.success(), "Ctrl-C is a clean end: {status} {:#?}", sim.stderr.seen);
    let last = sim.stderr.seen.last().unwrap();
    assert!(last.starts_with("Sent ") && last.ends_with(" states; disconnected."), "{last}");
    let d = cli.run(&["devices", "describe", "thermo", "--format", "json"]).await.success().json();
    assert!(d["config"]["deviceAckTime"].is_string(), "the simulator acknowledged the config: {d}");

    // An RS256 device with a certificate, bounded by --count: every message acknowledged.
    cli.run(&["keys", "generate", "--type", "rs256", "--out", "rsa"]).await.success();
    cli.run(&["devices", "create", "rsa-dev", "--public-key", "path=rsa_cert.pem,type=rs256"]).await.success();
    let rsa_device = "projects/sim/locations/us-central1/registries/reg/devices/rsa-dev";
    let out = cli
        .run(&[
            "device",
            "simulate",
            "--device",
            rsa_device,
            "--key",
            "rsa_private.pem",
            "--rate",
            "50",
            "--count",
            "7",
            "--format",
            "json",
        ])
        .await
        .success();
    assert!(out.stderr.contains("(RS256)"), "{}", out.stderr);
    assert!(out.stderr.contains("Sent 7 events (7 acknowledged) and "), "{}", out.stderr);
    let config: Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(config, serde_json::json!({"type": "config", "subfolder": null, "text": "", "data": ""}));
    s.stop().await;
}

#[tokio::test]
async fn the_simulator_refreshes_its_token_and_reconnects_with_back_off() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&s, dir.path());
    cli.env.push(("FERROCORE_PROJECT".into(), "re".into()));
    cli.env.push(("FERROCORE_REGISTRY".into(), "reg".into()));
    cli.run(&["registries", "create", "reg", "--event-notification-config", "topic=telemetry"]).await.success();
    let key = fixture_path("ec_private.pem");
    cli.run(&[
        "devices",
        "create",
        "dev",
        "--public-key",
        &format!("path={},type=es256", fixture_path("ec_public.pem")),
    ])
    .await
    .success();
    let device = "projects/re/locations/us-central1/registries/reg/devices/dev";

    // A 2 s token: the simulator reconnects with a fresh one every 1.6 s.
    let mut sim =
        cli.spawn(&["device", "simulate", "--device", device, "--key", &key, "--jwt-lifetime", "2s", "--rate", "5"]);
    sim.expect(true, "Connected to ", 3).await;
    assert!(sim.stderr.count("The token expires soon; reconnecting with a new one.") >= 2, "{:#?}", sim.stderr.seen);

    // Blocking the device drops it and refuses it; it keeps retrying, backing off, until unblocked.
    cli.run(&["devices", "update", "dev", "--blocked"]).await.success();
    sim.expect(true, "the server refused the connection: not authorized (code 5)", 2).await;
    assert!(sim.stderr.seen.iter().any(|l| l.contains("; retrying in ")), "{:#?}", sim.stderr.seen);
    let connects = sim.stderr.count("Connected to ");
    cli.run(&["devices", "update", "dev", "--no-blocked"]).await.success();
    sim.expect(true, "Connected to ", connects + 1).await;
    sim.interrupt();
    assert!(sim.finish().await.success());
    s.stop().await;
}

#[tokio::test]
async fn simulator_errors_are_reported_not_retried_forever() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&s, dir.path());
    cli.run(&["registries", "create", "reg", "--project", "err"]).await.success();
    let key = fixture_path("ec_private.pem");
    let ghost = "projects/err/locations/us-central1/registries/reg/devices/ghost";

    let out = cli.run(&["device", "simulate", "--device", ghost, "--key", &key, "--count", "1"]).await.failure();
    assert!(
        out.error().starts_with("error: the server refused the connection: not authorized (code 5)"),
        "{}",
        out.stderr
    );
    let out = cli.run(&["device", "simulate", "--device", "ghost", "--key", &key]).await.failure();
    assert!(out.error().contains("--device must be a full name"), "{}", out.stderr);
    let out = cli.run(&["device", "simulate", "--device", ghost, "--key", "nothing.pem"]).await.failure();
    assert!(out.error().contains("cannot read the key nothing.pem"), "{}", out.stderr);
    let out = cli.run(&["device", "simulate", "--device", ghost, "--key", &key, "--ca", "nothing.pem"]).await.failure();
    assert!(out.error().contains("cannot read the CA file nothing.pem"), "{}", out.stderr);
    let out =
        cli.run(&["device", "simulate", "--device", ghost, "--key", &fixture_path("ec_public.pem")]).await.failure();
    assert!(out.error().contains("holds no PEM private key"), "{}", out.stderr);
    // Nothing listening: retried with back-off until --duration, then an error.
    let out = cli
        .run(&[
            "device",
            "simulate",
            "--device",
            ghost,
            "--key",
            &key,
            "--mqtt-server",
            "localhost:9",
            "--duration",
            "2s",
        ])
        .await
        .failure();
    assert!(out.stderr.contains("cannot connect to localhost:9"), "{}", out.stderr);
    assert!(out.stderr.contains("; retrying in "), "{}", out.stderr);
    assert!(out.error().starts_with("error: could not connect to localhost:9"), "{}", out.stderr);
    s.stop().await;
}
