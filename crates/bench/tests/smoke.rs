//! Smoke test of `ferrocore-bench`: the real server runs in this process on port-0 listeners,
//! the bench binary runs every scenario against it with tiny counts, and the JSON it writes is
//! checked for sane results (everything acknowledged is found, latencies are positive). When a
//! `mosquitto` binary is installed, the `--broker mqtt` mode is run against one as well.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "smoke-admin-token-0123456789";

struct Server {
    http: SocketAddr,
    mqtt: SocketAddr,
    mqtts: SocketAddr,
    grpc: SocketAddr,
    data: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(dir: &Path) -> Server {
    let data = dir.join("data");
    let config = ferrocore::server::Config {
        data_dir: data.clone(),
        admin_token: Some(TOKEN.into()),
        activity_flush_interval: Duration::from_millis(200),
        tls: None,
        topic_log: Default::default(),
        mqtt: ferrocore_mqtt::MqttConfig::default(),
        core: Default::default(),
        pubsub_anonymous: false,
        ..Default::default()
    };
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let (http, mqtt, mqtts, grpc) = (bind().await, bind().await, bind().await, bind().await);
    let (http_addr, mqtt_addr, mqtts_addr, grpc_addr) = (
        http.local_addr().unwrap(),
        mqtt.local_addr().unwrap(),
        mqtts.local_addr().unwrap(),
        grpc.local_addr().unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listeners = ferrocore::server::Listeners { http, grpc: Some(grpc), mqtts: Some(mqtts), mqtt: Some(mqtt) };
    let task = tokio::spawn(ferrocore::server::run(
        config,
        listeners,
        async move {
            let _ = stopped.await;
        },
        |_| {},
    ));
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("http://{http_addr}/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Server { http: http_addr, mqtt: mqtt_addr, mqtts: mqtts_addr, grpc: grpc_addr, data, stop: Some(stop), task }
}

/// Runs the bench binary with `args` and returns the JSON it wrote.
async fn bench(dir: &Path, name: &str, args: Vec<String>) -> Value {
    let json = dir.join(format!("{name}.json"));
    let mut full = vec!["--progress".to_owned(), "0".into(), "--json".into(), json.display().to_string()];
    full.extend(args);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ferrocore-bench")).args(&full).output().expect("the bench runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} failed:\n{stdout}\n{stderr}");
    println!("{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn ferrocore_args(s: &Server, tls: bool) -> Vec<String> {
    let mut a = vec![
        "--broker".to_owned(),
        "ferrocore".into(),
        "--api".into(),
        format!("http://{}", s.http),
        "--token".into(),
        TOKEN.into(),
        "--server-pid".into(),
        std::process::id().to_string(),
        "--source-ips".into(),
        "2".into(),
        "--grpc".into(),
        format!("http://{}", s.grpc),
    ];
    if tls {
        a.extend(["--tls".into(), "--port".into(), s.mqtts.port().to_string(), "--data-dir".into()]);
        a.push(s.data.display().to_string());
    } else {
        a.extend(["--port".into(), s.mqtt.port().to_string()]);
    }
    a
}

fn with(mut base: Vec<String>, more: &[&str]) -> Vec<String> {
    base.extend(more.iter().map(|s| (*s).to_owned()));
    base
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_against_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path()).await;
    let d = dir.path();

    let r = bench(d, "connect-plain", with(ferrocore_args(&s, false), &["connect", "--devices", "20"])).await;
    assert_eq!(f(&r, &["results", "connected"]), 20.0);
    assert!(f(&r, &["results", "latency", "p50_us"]) > 0.0);
    assert!(f(&r, &["results", "connects_per_second"]) > 0.0);

    let r = bench(
        d,
        "connect-tls-rs256",
        with(ferrocore_args(&s, true), &["--alg", "rs256", "--key-pairs", "1", "connect", "--devices", "5", "--hold"]),
    )
    .await;
    assert_eq!(f(&r, &["results", "connected"]), 5.0);
    assert_eq!(r["results"]["tls"], true);

    let r = bench(
        d,
        "telemetry",
        with(ferrocore_args(&s, false), &["telemetry", "--devices", "4", "--messages", "40", "--rate", "200"]),
    )
    .await;
    assert_eq!(f(&r, &["results", "acked"]), 160.0, "{r}");
    assert_eq!(f(&r, &["results", "verification", "missing_acknowledged"]), 0.0);
    assert_eq!(f(&r, &["results", "verification", "found"]), 160.0);
    assert!(f(&r, &["results", "latency", "p99_us"]) >= f(&r, &["results", "latency", "p50_us"]));
    assert!(f(&r, &["results", "latency", "p50_us"]) > 0.0);
    assert!(r["results"]["cpu"]["server_cpu_seconds"].is_number());

    let r = bench(
        d,
        "telemetry-tls-after",
        with(
            ferrocore_args(&s, true),
            &["telemetry", "--devices", "2", "--messages", "30", "--rate", "100", "--verify", "after"],
        ),
    )
    .await;
    assert_eq!(f(&r, &["results", "verification", "found"]), 60.0);

    let r = bench(
        d,
        "telemetry-qos0",
        with(
            ferrocore_args(&s, false),
            &["telemetry", "--devices", "2", "--qos", "0", "--messages", "20", "--rate", "100"],
        ),
    )
    .await;
    assert_eq!(f(&r, &["results", "sent"]), 40.0);

    let r = bench(
        d,
        "idle",
        with(ferrocore_args(&s, false), &["idle", "--connections", "30", "--settle", "0.3", "--hold", "0.3"]),
    )
    .await;
    assert_eq!(f(&r, &["results", "connected"]), 30.0);
    assert_eq!(f(&r, &["results", "still_open"]), 30.0);
    assert!(r["results"]["server_bytes_per_connection"].is_number());

    let r = bench(
        d,
        "command",
        with(
            ferrocore_args(&s, false),
            &[
                "command",
                "--devices",
                "2",
                "--commands",
                "20",
                "--rate",
                "100",
                "--telemetry-rate",
                "100",
                "--telemetry-devices",
                "2",
                "--warmup",
                "0.2",
            ],
        ),
    )
    .await;
    assert_eq!(f(&r, &["results", "received"]), 20.0, "{r}");
    assert!(f(&r, &["results", "latency", "p50_us"]) > 0.0);
    assert!(f(&r, &["results", "telemetry", "msgs_per_second"]) > 0.0);

    let r = bench(
        d,
        "api",
        with(
            ferrocore_args(&s, false),
            &[
                "api",
                "--creates",
                "40",
                "--gets",
                "80",
                "--list-devices",
                "120",
                "--page-size",
                "50",
                "--list-samples",
                "2",
            ],
        ),
    )
    .await;
    assert_eq!(f(&r, &["results", "create", "ops"]), 40.0);
    assert_eq!(f(&r, &["results", "get", "ops"]), 80.0);
    assert_eq!(f(&r, &["results", "list", "registry_devices"]), 120.0);
    assert_eq!(f(&r, &["results", "list", "pages"]), 3.0);

    let r = bench(
        d,
        "pubsub",
        with(
            ferrocore_args(&s, false),
            &[
                "pubsub",
                "--devices",
                "3",
                "--messages",
                "50",
                "--rate",
                "300",
                "--streams",
                "2",
                "--drain-timeout",
                "5",
            ],
        ),
    )
    .await;
    assert_eq!(f(&r, &["results", "acked"]), 150.0, "{r}");
    assert_eq!(f(&r, &["results", "verification", "found"]), 150.0, "{r}");
    assert_eq!(f(&r, &["results", "verification", "missing_acknowledged"]), 0.0);
    assert_eq!(f(&r, &["results", "delivered_acked"]), 150.0);
    assert!(f(&r, &["results", "latency", "p50_us"]) > 0.0);
    assert!(f(&r, &["results", "delivered_acked_per_second"]) > 0.0);

    let r = bench(
        d,
        "pubsub-tls",
        with(ferrocore_args(&s, true), &["pubsub", "--devices", "2", "--messages", "20", "--drain-timeout", "5"]),
    )
    .await;
    assert_eq!(f(&r, &["results", "delivered_acked"]), 40.0, "{r}");

    if let Some(stop) = s.stop.take() {
        let _ = stop.send(());
    }
    (&mut s.task).await.unwrap().unwrap();
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_mode_against_mosquitto_when_installed() {
    let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].into_iter().find(|p| Path::new(p).exists());
    let Some(binary) = binary else {
        println!("mosquitto is not installed: broker mode not exercised");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"))
        .unwrap();
    let mut child = Command::new(binary).arg("-c").arg(&conf).spawn().unwrap();
    let pid = child.id().to_string();
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(up, "mosquitto did not start");
    let base = vec![
        "--broker".to_owned(),
        "mqtt".into(),
        "--port".into(),
        port.to_string(),
        "--server-pid".into(),
        pid,
        "--source-ips".into(),
        "2".into(),
    ];
    let d = dir.path();
    let r = bench(d, "m-connect", with(base.clone(), &["connect", "--devices", "20"])).await;
    assert_eq!(f(&r, &["results", "connected"]), 20.0);
    let r = bench(d, "m-telemetry", with(base.clone(), &["telemetry", "--devices", "3", "--messages", "100"])).await;
    assert_eq!(f(&r, &["results", "acked"]), 300.0);
    assert_eq!(f(&r, &["results", "verification", "missing_acknowledged"]), 0.0);
    assert!(f(&r, &["results", "verification", "subscriber_msgs_per_second"]) > 0.0);
    assert!(f(&r, &["results", "verification", "latency", "p50_us"]) > 0.0);
    let r = bench(d, "m-idle", with(base, &["idle", "--connections", "20", "--settle", "0.2", "--hold", "0.2"])).await;
    assert_eq!(f(&r, &["results", "still_open"]), 20.0);
    let _ = child.kill();
    let _ = child.wait();
}
