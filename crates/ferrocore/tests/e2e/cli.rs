//! The `ferrocore` client commands against a running server.

use crate::device::es256_token;
use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;
use std::process::Command;

#[tokio::test]
async fn events_tail_prints_a_topic() {
    let s = TestServer::start().await;
    let parent = "projects/tail/locations/l";
    let (st, _) = s
        .post(
            &format!("{parent}/registries"),
            json!({"id": "reg", "eventNotificationConfigs": [{"pubsubTopicName": "projects/tail/topics/telemetry"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    s.device(&format!("{parent}/registries/reg"), "dev", json!({})).await;
    for payload in ["aGVsbG8=", "AAEC"] {
        let r = s
            .client
            .post(format!("{}/v1/{parent}/registries/reg/devices/dev:publishEvent", s.base))
            .bearer_auth(es256_token("tail"))
            .json(&json!({"binaryData": payload, "subFolder": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let base = s.base.clone();
    let run = move |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrocore"))
            .args([
                "events",
                "tail",
                "projects/tail/topics/telemetry",
                "--from",
                "earliest",
                "--no-follow",
                "--format",
                format,
            ])
            .args(["--server", &base, "--token", TOKEN])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run("text")
    })
    .await
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("0 ") && lines[0].ends_with(" hello") && lines[0].contains("deviceId=dev"), "{text}");
    assert!(lines[1].ends_with(" base64:AAEC"), "binary payloads are shown as base64: {text}");
    let jsonl = tokio::task::spawn_blocking(move || run("json")).await.unwrap();
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["attributes"]["subFolder"], "x");

    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ferrocore"))
            .args([
                "events",
                "tail",
                "projects/tail/topics/telemetry",
                "--no-follow",
                "--server",
                "http://127.0.0.1:9",
                "--token",
                "x",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"), "a clear error, not a panic");
    s.stop().await;
}
