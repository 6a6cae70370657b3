//! Issue 10, findings 1, 2 and 13, over real sockets: the HTTP listener holds no connection open on
//! a client's behalf (header, body and idle deadlines, a cap at accept, the open-file limit
//! raised), SIGTERM ends the process while a client holds a request half-sent, and every admin
//! route checks the token before it looks at the path.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// Short deadlines, so each test takes a few seconds.
fn short_limits() -> ferrocore::server::Limits {
    ferrocore::server::Limits {
        http_header_timeout: Duration::from_secs(1),
        http_body_timeout: Duration::from_secs(1),
        http_idle_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn start(limits: ferrocore::server::Limits) -> TestServer {
    TestServer::start_configured(|_| None, move |c| c.limits = limits).await
}

fn addr(s: &TestServer) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it sent, or None if it was still
/// open after `within`.
async fn until_closed(tcp: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Reads one response (head and Content-Length body): status and body.
async fn read_response(tcp: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string());
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await.expect("a response in time").unwrap();
        assert!(n > 0, "closed before a whole response: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_request_head_sent_slowly_is_cut_at_the_header_deadline() {
    let s = start(short_limits()).await;
    let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
    let started = Instant::now();
    // One header byte every 100 ms: bytes keep coming, but the head never completes.
    let head =
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for b in head {
        if tcp.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        if let Ok(r) = timeout(Duration::from_millis(100), tcp.read(&mut [0u8; 64])).await {
            assert!(matches!(r, Ok(0) | Err(_)), "no response to a head never completed");
            closed = true;
            break;
        }
    }
    assert!(closed, "the connection was still open after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(4), "closed only after {:?}", started.elapsed());
    s.stop().await;
}

#[tokio::test]
async fn a_half_sent_request_head_is_closed_at_the_header_deadline() {
    let s = start(short_limits()).await;
    let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let sent = until_closed(&mut tcp, Duration::from_secs(5)).await.expect("closed within seconds");
    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    // A connection that sends nothing at all is closed the same way.
    let mut silent = TcpStream::connect(addr(&s)).await.unwrap();
    assert!(until_closed(&mut silent, Duration::from_secs(5)).await.is_some());
    s.stop().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_is_answered_at_the_body_deadline() {
    let s = start(short_limits()).await;
    let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
    let started = Instant::now();
    let head = format!(
        "POST /v1/projects/p/locations/l/registries HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&[b' '; 100]).await.unwrap();
    let (status, body) = read_response(&mut tcp).await;
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    assert_eq!(status, 408, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], 408, "{body}");
    assert_eq!(body["error"]["status"], "DEADLINE_EXCEEDED", "{body}");
    // The rest of the body was never read, so the connection is not reused.
    assert!(until_closed(&mut tcp, Duration::from_secs(5)).await.is_some());
    s.stop().await;
}

#[tokio::test]
async fn a_declared_gigabyte_is_refused_before_its_body_is_read() {
    // A body deadline far away: the refusal must not wait for it.
    let s = start(ferrocore::server::Limits { http_body_timeout: Duration::from_secs(60), ..short_limits() }).await;
    for (authorization, code, status) in [
        (format!("Authorization: Bearer {TOKEN}\r\n"), 400, "INVALID_ARGUMENT"),
        (String::new(), 401, "UNAUTHENTICATED"),
    ] {
        let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
        let started = Instant::now();
        let head = format!(
            "POST /v1/projects/p/locations/l/registries HTTP/1.1\r\nHost: localhost\r\n{authorization}Content-Length: 1073741824\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&[b'x'; 100]).await.unwrap();
        let (got, body) = read_response(&mut tcp).await;
        assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
        assert_eq!(got, code, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["status"], status, "{body}");
        assert!(until_closed(&mut tcp, Duration::from_secs(5)).await.is_some());
    }
    s.stop().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_at_the_idle_deadline() {
    let limits = short_limits();
    let idle = limits.http_idle_timeout;
    assert!(idle > limits.http_header_timeout, "the test tells the two deadlines apart");
    let s = start(limits).await;
    let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for _ in 0..2 {
        tcp.write_all(get).await.unwrap();
        assert_eq!(read_response(&mut tcp).await.0, 200, "kept alive between requests");
    }
    let idle_since = Instant::now();
    assert!(until_closed(&mut tcp, idle + Duration::from_secs(3)).await.is_some(), "closed once idle");
    let waited = idle_since.elapsed();
    // Not at the (shorter) header deadline: an idle connection gets the idle one.
    assert!(waited >= idle - Duration::from_millis(300), "closed after {waited:?}, before the idle deadline");
    s.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let cap = 8;
    let s = start(ferrocore::server::Limits {
        http_max_connections: cap,
        http_header_timeout: Duration::from_secs(30),
        ..short_limits()
    })
    .await;
    // The server accepts in order, so these hold every slot before the next one arrives.
    let mut held = Vec::new();
    for _ in 0..cap {
        let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(tcp);
    }
    let mut extra = TcpStream::connect(addr(&s)).await.unwrap();
    let started = Instant::now();
    assert!(until_closed(&mut extra, Duration::from_secs(2)).await.is_some(), "closed at accept");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A slot given back serves the next client.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = timeout(Duration::from_secs(1), s.client.get(format!("{}/healthz", s.base)).send()).await;
        if matches!(ok, Ok(Ok(ref r)) if r.status() == StatusCode::OK) {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back: {ok:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_ends_within_its_deadline_while_a_request_is_half_sent() {
    let limits = ferrocore::server::Limits {
        http_header_timeout: Duration::from_secs(60),
        grpc_handshake_timeout: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let s = start(limits).await;
    let mut http = TcpStream::connect(addr(&s)).await.unwrap();
    http.write_all(b"POST /v1/projects/p/locations/l/registries HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        .await
        .unwrap();
    let mut head = TcpStream::connect(addr(&s)).await.unwrap();
    head.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let _grpc = TcpStream::connect(s.grpc).await.unwrap();
    let started = Instant::now();
    timeout(Duration::from_secs(8), s.stop()).await.expect("the server stopped within its shutdown deadline");
    assert!(started.elapsed() >= Duration::from_millis(900), "a deadline, not an immediate abort");
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on port-0 listeners under a shell that first sets the soft open-file limit
/// to `soft_files`; returns the process and its `listening` line.
fn spawn_binary(data_dir: &std::path::Path, soft_files: u32, extra: &[&str]) -> (Server, String) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -S -n {soft_files} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_ferrocore"))
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--mqtts", "off", "--mqtt", "127.0.0.1:0"])
        .args(extra)
        .env("FERROCORE_ADMIN_TOKEN", TOKEN)
        .env("FERROCORE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ferrocore");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("ferrocore listening"), "{line:?}");
    (server, line)
}

fn listening(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .to_owned()
}

#[tokio::test]
async fn healthz_and_mqtt_answer_while_hundreds_of_half_open_connections_are_held() {
    let dir = tempfile::tempdir().unwrap();
    // A soft limit below what 300 connections need; the server raises it to the hard limit.
    let (_server, line) = spawn_binary(&dir.path().join("data"), 256, &["--http-header-timeout-seconds", "60"]);
    let http = listening(&line, "http");
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut tcp = TcpStream::connect(&http).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        held.push(tcp);
    }
    let client = reqwest::Client::new();
    let health = timeout(Duration::from_secs(5), client.get(format!("http://{http}/healthz")).send()).await;
    assert!(matches!(health, Ok(Ok(ref r)) if r.status() == StatusCode::OK), "healthz: {health:?}");
    let mut mqtt = crate::device::MqttClient::plain(listening(&line, "mqtt").parse().unwrap()).await;
    let connack = timeout(
        Duration::from_secs(5),
        mqtt.connect("projects/p/locations/l/registries/r/devices/d", Some("not-a-jwt"), 60),
    )
    .await;
    assert!(connack.is_ok(), "MQTT answered CONNECT");
    drop(held);
}

#[tokio::test]
async fn sigterm_ends_the_process_while_a_request_is_half_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, line) = spawn_binary(
        &dir.path().join("data"),
        4096,
        &[
            "--http-header-timeout-seconds",
            "60",
            "--grpc-handshake-timeout-seconds",
            "60",
            "--shutdown-timeout-seconds",
            "1",
        ],
    );
    let mut half = TcpStream::connect(listening(&line, "http")).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let _grpc = TcpStream::connect(listening(&line, "grpc")).await.unwrap();
    let status = Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = server.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "still running 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn admin_routes_check_the_token_before_the_path() {
    let s = TestServer::start().await;
    let loc = "projects/p/locations/us-central1";
    let cases: &[(Method, String)] = &[
        (Method::POST, format!("{loc}/registries/r:getIamPolicy")),
        (Method::POST, format!("{loc}/registries/r:setIamPolicy")),
        (Method::POST, format!("{loc}/registries/r:testIamPermissions")),
        (Method::GET, format!("{loc}/registries/1bad")),
        (Method::GET, format!("{loc}/registries/r/devices/-bad")),
        (Method::POST, format!("{loc}/registries/r:nope")),
        (Method::PUT, format!("{loc}/registries/r")),
        (Method::GET, format!("{loc}/registries/r/devices/d/configVersions")),
        (Method::POST, format!("{loc}/registries/r/devices/d:sendCommandToDevice")),
        (Method::GET, "projects/p/unknown".to_owned()),
        (Method::GET, "nothing/here".to_owned()),
    ];
    for (method, path) in cases {
        for authorization in [None, Some("Bearer wrong-token-0123456789"), Some("Basic abc")] {
            let (st, body) = s.call_as(authorization, method.clone(), path, Some(serde_json::json!({}))).await;
            expect_error(st, &body, 401, "UNAUTHENTICATED");
        }
        // With the token, the path is looked at.
        let (st, _) = s.call(method.clone(), path, Some(serde_json::json!({}))).await;
        assert_ne!(st, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    // The device bridge keeps its own rules (a device's JWT), and /healthz needs nothing.
    let (st, body) = s
        .call_as(
            None,
            Method::POST,
            &format!("{loc}/registries/reg/devices/dev:publishEvent"),
            Some(serde_json::json!({})),
        )
        .await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    let (st, body) = s.call_as(None, Method::GET, &format!("{loc}/registries/1bad/devices/d/config"), None).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert_eq!(s.client.get(format!("{}/healthz", s.base)).send().await.unwrap().status(), StatusCode::OK);
    s.stop().await;
}
