//! The endpoints the web console reads beyond Google's API, over real sockets: the console's
//! files, `GET /v1/status`, a device's `connection`, the project's `testIamPermissions`,
//! `deviceIdPrefix` on `devices.list`, and a topic followed as server-sent events.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

const PROJECT: &str = "console-proj";

async fn viewer_token(s: &TestServer) -> String {
    let body = json!({"principal": "user:viewer@example.com", "role": "roles/cloudiot.viewer"});
    let (st, created) = s.post(&format!("projects/{PROJECT}/tokens"), body).await;
    assert_eq!(st, StatusCode::OK, "{created}");
    created["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_no_token() {
    let s = TestServer::start().await;
    let resp = s.client.get(format!("{}/console", s.base)).send().await.unwrap();
    assert_eq!(resp.url().path(), "/console/", "redirected to the page");
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let page = resp.text().await.unwrap();
    assert!(page.contains(r#"<script type="module" src="app.js">"#));
    for file in ["app.js", "api.js", "views.js", "console.css", "favicon.svg"] {
        let resp = s.client.get(format!("{}/console/{file}", s.base)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{file}");
    }
    let resp = s.client.get(format!("{}/console/secrets.txt", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn status_connection_and_permissions() {
    let s = TestServer::start().await;
    let registry = s.registry(PROJECT, "reg").await;
    let device = s.device(&registry, "dev-1", json!({})).await;

    let (st, status) = s.get("status").await;
    assert_eq!(st, StatusCode::OK, "{status}");
    assert_eq!(status["connectedDevices"], "0");
    assert_eq!(status["messages"]["telemetryReceived"], "0");
    assert!(status["version"].as_str().is_some_and(|v| !v.is_empty()));
    let (st, body) = s.call_as(None, Method::GET, "status", None).await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");

    let (st, conn) = s.get(&format!("{registry}/devices/dev-1/connection")).await;
    assert_eq!(st, StatusCode::OK, "{conn}");
    assert_eq!(conn, json!({"name": device["name"], "connected": false}));
    let (st, body) = s.get(&format!("{registry}/devices/nobody/connection")).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.call(Method::POST, &format!("{registry}/devices/dev-1/connection"), Some(json!({}))).await;
    expect_error(st, &body, 404, "NOT_FOUND");

    let asked =
        json!({"permissions": ["cloudiot.registries.list", "cloudiot.registries.create", "cloudiot.devices.get"]});
    let (st, held) = s.post(&format!("projects/{PROJECT}:testIamPermissions"), asked.clone()).await;
    assert_eq!(st, StatusCode::OK, "{held}");
    assert_eq!(held["permissions"], asked["permissions"], "the owner holds everything");

    let viewer = format!("Bearer {}", viewer_token(&s).await);
    let path = format!("projects/{PROJECT}:testIamPermissions");
    let (st, held) = s.call_as(Some(&viewer), Method::POST, &path, Some(asked)).await;
    assert_eq!(st, StatusCode::OK, "{held}");
    assert_eq!(held["permissions"], json!(["cloudiot.registries.list", "cloudiot.devices.get"]));
    let bad = json!({"permissions": ["cloudiot.registries.fly"]});
    let (st, body) = s.call_as(Some(&viewer), Method::POST, &path, Some(bad)).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    // A viewer reads a device's connection, but not the server's status.
    let (st, _) = s.call_as(Some(&viewer), Method::GET, &format!("{registry}/devices/dev-1/connection"), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = s.call_as(Some(&viewer), Method::GET, "status", None).await;
    expect_error(st, &body, 403, "PERMISSION_DENIED");
    s.stop().await;
}

#[tokio::test]
async fn devices_are_found_by_id_prefix_page_by_page() {
    let s = TestServer::start().await;
    let registry = s.registry(PROJECT, "reg").await;
    for id in ["pump-1", "pump-2", "pump-3", "pumpkin", "valve-1", "Pump-9"] {
        s.device(&registry, id, json!({})).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (st, page) = s.get(&format!("{registry}/devices?deviceIdPrefix=pump-&pageSize=2&pageToken={token}")).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        seen.extend(page["devices"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match page["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_owned(),
            _ => break,
        }
    }
    assert_eq!(seen, ["pump-1", "pump-2", "pump-3"]);
    let (_, page) = s.get(&format!("{registry}/devices?deviceIdPrefix=pump")).await;
    assert_eq!(page["devices"].as_array().unwrap().len(), 4, "pump-1..3 and pumpkin, not Pump-9: {page}");
    let (_, page) = s.get(&format!("{registry}/devices?deviceIdPrefix=v")).await;
    assert_eq!(page["devices"][0]["id"], "valve-1", "a prefix shorter than any id: {page}");
    // A prefix no id can start with matches nothing rather than failing.
    let (st, page) = s.get(&format!("{registry}/devices?deviceIdPrefix=9x")).await;
    assert_eq!((st, page), (StatusCode::OK, json!({})));
    s.stop().await;
}

/// The `data:` payloads of the `message` events in `text`, as JSON.
fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| e.lines().any(|l| l == "event: message"))
        .map(|e| {
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let v: Value = serde_json::from_str(data).unwrap();
            let id = e.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
            assert_eq!(v["offset"], id, "the event id is the record's offset");
            v
        })
        .collect()
}

/// Reads the stream until `n` message events arrived (or panics after a while).
async fn read_events(resp: &mut reqwest::Response, text: &mut String, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = events(text);
        if got.len() >= n {
            return got;
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk()).await.expect("events in time").unwrap();
        text.push_str(std::str::from_utf8(&chunk.expect("the stream is open")).unwrap());
    }
}

#[tokio::test]
async fn a_topic_streams_as_server_sent_events() {
    let s = TestServer::start().await;
    s.registry(PROJECT, "reg").await;
    let topic = format!("projects/{PROJECT}/topics/events");
    let publish = |device: &'static str, data: &'static str| {
        let body = json!({"messages": [{"data": b64(data.as_bytes()), "attributes": {"deviceId": device}}]});
        let s = &s;
        let topic = &topic;
        async move {
            let (st, out) = s.post(&format!("{topic}:publish"), body).await;
            assert_eq!(st, StatusCode::OK, "{out}");
        }
    };
    publish("dev-a", "one").await;
    publish("dev-b", "two").await;

    let open = |query: &str| {
        s.client
            .get(format!("{}/v1/{topic}/stream?{query}", s.base))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
    };
    let mut all = open("from=earliest").await.unwrap();
    assert_eq!(all.status(), StatusCode::OK);
    assert_eq!(all.headers()["content-type"], "text/event-stream");
    let mut all_text = String::new();
    let got = read_events(&mut all, &mut all_text, 2).await;
    assert_eq!(got[0]["data"], b64(b"one"));
    assert_eq!(got[1]["attributes"]["deviceId"], "dev-b");

    // One device's records only, from what comes next.
    let mut only_a = open("from=latest&deviceId=dev-a").await.unwrap();
    let mut a_text = String::new();
    publish("dev-b", "three").await;
    publish("dev-a", "four").await;
    let got = read_events(&mut only_a, &mut a_text, 1).await;
    assert_eq!(got.len(), 1, "{a_text}");
    assert_eq!(got[0]["data"], b64(b"four"));
    assert_eq!(read_events(&mut all, &mut all_text, 4).await.len(), 4, "the unfiltered stream has everything");

    // Bad requests are answered as errors, not as streams.
    let resp = open("from=sometime").await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = s.client.get(format!("{}/v1/{topic}/stream", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Stopping the server ends the streams instead of waiting for them.
    let stopped = tokio::time::Instant::now();
    let drain = async move { while let Ok(Some(_)) = all.chunk().await {} };
    let (_, ()) = tokio::join!(s.stop(), drain);
    assert!(stopped.elapsed() < Duration::from_secs(8), "stop took {:?}", stopped.elapsed());
}
