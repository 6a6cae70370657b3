//! Bad input of every kind: Google's error shape, the right code, and never a crash.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn admin_requests_need_the_token() {
    let s = TestServer::start().await;
    let url = format!("{}/v1/projects/p/locations/l/registries", s.base);
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token"),
        Some("Basic ZTJlOmUyZQ=="),
        Some("Bearer "),
        Some(&*format!("Bearer {TOKEN}x")),
    ] {
        let mut req = s.client.get(&url);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        expect_error(StatusCode::UNAUTHORIZED, &body, 401, "UNAUTHENTICATED");
    }
    // Health needs no token; a write without a token changed nothing.
    assert_eq!(s.client.get(format!("{}/healthz", s.base)).send().await.unwrap().status(), StatusCode::OK);
    let resp = s.client.post(&url).json(&json!({"id": "sneaky"})).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (st, body) = s.get("projects/p/locations/l/registries/sneaky").await;
    expect_error(st, &body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let s = TestServer::start().await;
    let reg = s.registry("bad", "reg").await;
    let raw =
        |body: &'static str| s.client.post(format!("{}/v1/{reg}/devices", s.base)).bearer_auth(TOKEN).body(body).send();
    for body in [
        "{",
        "[1,2]",
        "{\"id\": 5}",
        "not json",
        "{\"id\":\"dev\",\"blocked\":\"yes\"}",
        "{\"id\":\"dev\",\"logLevel\":\"LOUD\"}",
        "{\"id\":\"dev\",\"logLevel\":7}",
    ] {
        let resp = raw(body).await.unwrap();
        let st = resp.status();
        let v: Value = resp.json().await.unwrap();
        expect_error(st, &v, 400, "INVALID_ARGUMENT");
    }
    let (st, body) = s.post(&format!("{reg}/devices"), json!({"id": "dev", "colour": "red"})).await;
    let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert_eq!(msg, "Invalid JSON payload received. Unknown name \"colour\": Cannot find field.");
    let (st, body) = s.post(&format!("{reg}/devices"), json!({"id": "dev", "gatewayConfig": {"colour": 1}})).await;
    let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert!(msg.contains("\"colour\" at 'gatewayConfig'"), "{msg}");

    // Oversized bodies.
    let huge = format!("{{\"id\":\"dev\",\"metadata\":{{\"k\":\"{}\"}}}}", "x".repeat(2 * 1024 * 1024));
    let resp =
        s.client.post(format!("{}/v1/{reg}/devices", s.base)).bearer_auth(TOKEN).body(huge).send().await.unwrap();
    let st = resp.status();
    let v: Value = resp.json().await.unwrap();
    expect_error(st, &v, 400, "INVALID_ARGUMENT");

    // Unknown query parameters, malformed numbers; system parameters are fine.
    let (st, body) = s.get(&format!("{reg}/devices?colour=red")).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.get(&format!("{reg}/devices?pageSize=ten")).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, _) = s.get(&format!("{reg}/devices?$alt=json;enum-encoding=int&prettyPrint=false")).await;
    assert_eq!(st, StatusCode::OK);

    // Resource names.
    let (st, body) = s.get("projects/p/regions/l/registries").await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.get("projects/p/locations/l/registries/r1").await;
    let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert!(msg.contains("between 3 and 255"), "{msg}");
    let (st, body) = s.post(&format!("{reg}/devices/dev:explode"), json!({})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.post(&format!("{reg}:getIamPolicy"), json!({})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = s.post(&format!("{reg}:fetchIamPolicy"), json!({})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let resp = s.client.request(Method::PUT, format!("{}/v1/{reg}", s.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn documented_limits_are_enforced() {
    let s = TestServer::start().await;
    let parent = "projects/lim/locations/us-central1/registries";
    for id in ["ab", "1abc", "goog-reg", "GOOGle", "has space", "has/slash", "ünï", &"r".repeat(256)] {
        let (st, body) = s.post(parent, json!({"id": id})).await;
        let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
        assert_eq!(body["error"]["details"][0]["fieldViolations"][0]["field"], "device_registry.id", "{id}: {msg}");
    }
    for ok in ["abc", "a-b.c_d+e~f%g", &"r".repeat(255)] {
        let (st, body) = s.post(parent, json!({"id": ok})).await;
        assert_eq!(st, StatusCode::OK, "{ok}: {body}");
    }
    let (st, body) = s.post(parent, json!({"id": "named", "name": "projects/x/locations/y/registries/named"})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.post(parent, json!({})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let configs: Vec<Value> = (0..11)
        .map(|i| json!({"subfolderMatches": format!("s{i}"), "pubsubTopicName": "projects/p/topics/events"}))
        .collect();
    let (st, body) = s.post(parent, json!({"id": "too-many", "eventNotificationConfigs": configs})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) =
        s.post(parent, json!({"id": "bad-topic", "eventNotificationConfigs": [{"pubsubTopicName": "events"}]})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");

    let reg = s.registry("lim", "devs").await;
    let devices = format!("{reg}/devices");
    for (body, field) in [
        (json!({"id": "ab"}), "device.id"),
        (json!({"id": "goog-dev"}), "device.id"),
        (json!({}), "device.id"),
        (json!({"id": "dev", "numId": "5"}), "device.num_id"),
        (json!({"id": "dev", "name": "x"}), "device.name"),
        (json!({"id": "dev", "metadata": {"1key": "v"}}), "device.metadata"),
        (json!({"id": "dev", "metadata": {"k".repeat(129): "v"}}), "device.metadata"),
        (json!({"id": "dev", "metadata": {"k": "v".repeat(32 * 1024 + 1)}}), "device.metadata"),
        (
            json!({"id": "dev", "metadata": (0..501).map(|i| (format!("k{i}"), json!(""))).collect::<serde_json::Map<_, _>>()}),
            "device.metadata",
        ),
        (
            json!({"id": "dev", "metadata": (0..9).map(|i| (format!("k{i}"), json!("v".repeat(30 * 1024)))).collect::<serde_json::Map<_, _>>()}),
            "device.metadata",
        ),
        (json!({"id": "dev", "config": {"binaryData": base64_len(64 * 1024 + 1)}}), "device.config.binary_data"),
    ] {
        let (st, resp) = s.post(&devices, body).await;
        expect_error(st, &resp, 400, "INVALID_ARGUMENT");
        assert_eq!(resp["error"]["details"][0]["fieldViolations"][0]["field"], field, "{resp}");
    }
    let full: serde_json::Map<_, _> = (0..500).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (st, body) =
        s.post(&devices, json!({"id": "dev", "metadata": full, "config": {"binaryData": base64_len(64 * 1024)}})).await;
    assert_eq!(st, StatusCode::OK, "limits are inclusive: {body}");
    s.stop().await;
}

fn base64_len(n: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(vec![7u8; n])
}

/// Random bodies, paths and queries against every route: the server answers each with a
/// well-formed error or success, and keeps serving.
#[tokio::test]
async fn random_input_never_breaks_the_server() {
    let s = TestServer::start().await;
    let reg = s.registry("fuzz", "reg").await;
    s.device(&reg, "dev", json!({})).await;
    let paths = [
        "projects/fuzz/locations/us-central1/registries".to_owned(),
        reg.clone(),
        format!("{reg}:bindDeviceToGateway"),
        format!("{reg}/devices"),
        format!("{reg}/devices/dev"),
        format!("{reg}/devices/dev:modifyCloudToDeviceConfig"),
        format!("{reg}/devices/dev:sendCommandToDevice"),
        format!("{reg}/devices/dev/configVersions"),
        format!("{reg}/devices/%ff%00"),
        format!("{reg}/devices/99999999999999999999999"),
        "projects/%2F/locations/%00/registries/x".to_owned(),
    ];
    let bodies = [
        "",
        "null",
        "{}",
        "{\"id\":null}",
        "{\"binaryData\":12}",
        "{\"versionToUpdate\":\"-1\"}",
        "{\"versionToUpdate\":1e400}",
        "{\"id\":\"\\ud800\"}",
        "\u{0}\u{1}",
        "{\"credentials\":[{}]}",
        "{\"credentials\":[{\"publicKey\":null}]}",
        "{\"gatewayId\":\"\",\"deviceId\":\"\"}",
        "{\"metadata\":{\"\":\"\"}}",
        "{\"eventNotificationConfigs\":[{\"pubsubTopicName\":\"projects/p/topics/ok-topic\",\"subfolderMatches\":\"/x\"}]}",
    ];
    let queries = [
        "",
        "?updateMask=",
        "?updateMask=%ff",
        "?fieldMask=,,,",
        "?pageToken=%00",
        "?numVersions=-5",
        "?pageSize=99999999999999999999",
    ];
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for _ in 0..300 {
        let method = [Method::GET, Method::POST, Method::PATCH, Method::DELETE][next(4)].clone();
        let path = &paths[next(paths.len())];
        let url = format!("{}/v1/{path}{}", s.base, queries[next(queries.len())]);
        let resp = s
            .client
            .request(method.clone(), &url)
            .bearer_auth(TOKEN)
            .body(bodies[next(bodies.len())])
            .send()
            .await
            .unwrap();
        let st = resp.status();
        let v: Value = resp.json().await.unwrap_or_else(|_| panic!("{method} {url}: body is not JSON"));
        assert!(st.as_u16() < 500, "{method} {url}: {st} {v}");
        if !st.is_success() {
            assert!(v["error"]["message"].is_string() && v["error"]["status"].is_string(), "{v}");
        }
    }
    // Random DELETEs may have removed the device; the server must still answer normally.
    let (st, _) = s.get("projects/fuzz/locations/us-central1/registries").await;
    assert_eq!(st, StatusCode::OK, "still serving");
    s.stop().await;
}
