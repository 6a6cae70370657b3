//! The HTTP device bridge: publishEvent, setState and getConfig with the device's own JWT.

use crate::device::*;
use crate::harness::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PROJECT: &str = "http-proj";

async fn call(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    jwt: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = s.client.request(method, format!("{}/v1/{path}", s.base));
    if let Some(t) = jwt {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let st = resp.status();
    (st, resp.json().await.unwrap())
}

#[tokio::test]
async fn devices_publish_report_state_and_read_config_over_http() {
    let s = TestServer::start().await;
    let parent = format!("projects/{PROJECT}/locations/europe-west1");
    let (st, _) = s
        .post(
            &format!("{parent}/registries"),
            json!({"id": "http-reg", "eventNotificationConfigs": [{"pubsubTopicName": format!("projects/{PROJECT}/topics/events")}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let reg = format!("{parent}/registries/http-reg");
    let created = s.device(&reg, "web-dev", json!({"config": {"binaryData": "aW5pdA=="}})).await;
    let dev = format!("{reg}/devices/web-dev");
    let by_num = format!("{reg}/devices/{}", created["numId"].as_str().unwrap());
    let token = es256_token(PROJECT);

    // The HTTP sample sends snake_case and URL-safe base64.
    let (st, body) = call(
        &s,
        reqwest::Method::POST,
        &format!("{dev}:publishEvent"),
        Some(&token),
        Some(json!({"binary_data": "_-8", "sub_folder": "a/b"})),
    )
    .await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, _) = call(
        &s,
        reqwest::Method::POST,
        &format!("{by_num}:publishEvent"),
        Some(&token),
        Some(json!({"binaryData": "aGk="})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "a numeric id addresses the device too");
    let (_, msgs) = s.get(&format!("projects/{PROJECT}/topics/events/messages")).await;
    let m = &msgs["messages"];
    assert_eq!(m[0]["data"], "/+8=");
    assert_eq!(m[0]["attributes"]["subFolder"], "a/b");
    assert_eq!(m[0]["attributes"]["deviceId"], "web-dev");
    assert_eq!(m[0]["attributes"]["deviceRegistryLocation"], "europe-west1");
    assert_eq!(m[1]["data"], "aGk=");

    let (st, _) = call(
        &s,
        reqwest::Method::POST,
        &format!("{dev}:setState"),
        Some(&token),
        Some(json!({"state": {"binary_data": "b24="}})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (_, states) = s.get(&format!("{dev}/states")).await;
    assert_eq!(states["deviceStates"][0]["binaryData"], "b24=");
    let (st, body) = call(
        &s,
        reqwest::Method::POST,
        &format!("{dev}:setState"),
        Some(&token),
        Some(json!({"state": {"binaryData": "b2Zm"}})),
    )
    .await;
    expect_error(st, &body, 429, "RESOURCE_EXHAUSTED");

    let (st, cfg) = call(&s, reqwest::Method::GET, &format!("{dev}/config?local_version=0"), Some(&token), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(cfg, json!({"version": "1", "binaryData": "aW5pdA=="}));
    let (st, cfg) = call(&s, reqwest::Method::GET, &format!("{dev}/config?localVersion=1"), Some(&token), None).await;
    assert_eq!((st, cfg["version"].clone()), (StatusCode::OK, json!("1")));
    let (st, body) = call(&s, reqwest::Method::GET, &format!("{dev}/config?local_version=2"), Some(&token), None).await;
    expect_error(st, &body, 400, "OUT_OF_RANGE");

    // Refusals: no token, the admin token, another project's token, oversized telemetry.
    for bad in [None, Some(TOKEN.to_owned()), Some(es256_token("elsewhere"))] {
        let (st, body) = call(
            &s,
            reqwest::Method::POST,
            &format!("{dev}:publishEvent"),
            bad.as_deref(),
            Some(json!({"binaryData": "aGk="})),
        )
        .await;
        expect_error(st, &body, 401, "UNAUTHENTICATED");
    }
    let big = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(vec![1u8; 256 * 1024 + 1])
    };
    let (st, body) =
        call(&s, reqwest::Method::POST, &format!("{dev}:publishEvent"), Some(&token), Some(json!({"binaryData": big})))
            .await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    // Through a gateway that does not exist (gateways.rs covers those that do).
    let (st, body) = call(
        &s,
        reqwest::Method::POST,
        &format!("{dev}:publishEvent"),
        Some(&token),
        Some(json!({"binaryData": "aGk=", "gatewayInfo": {"gatewayId": "gw"}})),
    )
    .await;
    expect_error(st, &body, 403, "PERMISSION_DENIED");

    let (st, _) = s
        .patch(&format!("{reg}?updateMask=http_config"), json!({"httpConfig": {"httpEnabledState": "HTTP_DISABLED"}}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = call(
        &s,
        reqwest::Method::POST,
        &format!("{dev}:publishEvent"),
        Some(&token),
        Some(json!({"binaryData": "aGk="})),
    )
    .await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    let (_, msgs) = s.get(&format!("projects/{PROJECT}/topics/events/messages")).await;
    assert_eq!(msgs["messages"].as_array().unwrap().len(), 2, "nothing refused was routed");
    s.stop().await;
}
