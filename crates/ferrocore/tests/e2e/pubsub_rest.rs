//! Pub/Sub v1 over REST (Google's HTTP mapping) on the real server: the lifecycle of topics and
//! subscriptions, publish/pull/ack/nack/seek, paging, IAM etags, Google's error bodies, who may
//! call (admin token, `--pubsub-anonymous`), registry topics, and the topic-log reads that share
//! the `topics/T` paths.

use crate::device::es256_token;
use crate::harness::*;
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap()
}

/// RFC 3339 for the present, as a seek takes it.
fn now_rfc3339() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
    ferrocore_model::Timestamp(nanos).to_string()
}

/// Pulls until `count` messages came (a pull may return fewer than are waiting).
async fn pull(s: &TestServer, sub: &str, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..50 {
        let (st, body) = s.post(&format!("{sub}:pull"), json!({"maxMessages": count - got.len()})).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        got.extend(body["receivedMessages"].as_array().cloned().unwrap_or_default());
        if got.len() >= count {
            return got;
        }
    }
    panic!("pulled {} of {count}: {got:?}", got.len());
}

/// What a pull that does not wait finds.
async fn pull_now(s: &TestServer, sub: &str) -> Vec<Value> {
    let (st, body) = s.post(&format!("{sub}:pull"), json!({"maxMessages": 100, "returnImmediately": true})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body["receivedMessages"].as_array().cloned().unwrap_or_default()
}

fn message_id(m: &Value) -> &str {
    m["message"]["messageId"].as_str().unwrap()
}

#[tokio::test]
async fn pubsub_rest_publish_pull_ack_nack_and_seek() {
    let s = TestServer::start().await;
    let topic = "projects/ps/topics/orders";
    let sub = "projects/ps/subscriptions/orders-sub";
    let (st, created) = s.put(topic, json!({"labels": {"team": "iot"}})).await;
    assert_eq!(st, StatusCode::OK, "{created}");
    assert_eq!(created["name"], topic);
    assert_eq!(created["labels"], json!({"team": "iot"}));
    let (st, got) = s.get(topic).await;
    assert_eq!((st, &got), (StatusCode::OK, &created));
    let (st, created) = s.put(sub, json!({"topic": topic, "ackDeadlineSeconds": 20})).await;
    assert_eq!(st, StatusCode::OK, "{created}");
    assert_eq!(
        (&created["name"], &created["topic"], &created["ackDeadlineSeconds"]),
        (&json!(sub), &json!(topic), &json!(20))
    );
    assert_eq!(created["messageRetentionDuration"], "604800s", "Pub/Sub's default, as a Google JSON duration");

    let before = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let binary = [0u8, 1, 2, 0xfb, 0xff];
    let (st, published) = s
        .post(
            &format!("{topic}:publish"),
            json!({"messages": [
                {"data": b64(b"hello"), "attributes": {"kind": "text", "empty": ""}},
                {"data": b64(&binary), "attributes": {"kind": "binary"}},
                {"attributes": {"only": "attributes"}},
            ]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{published}");
    let ids: Vec<String> =
        published["messageIds"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 3);

    let received = pull(&s, sub, 3).await;
    let by_id = |id: &str| received.iter().find(|m| message_id(m) == id).unwrap().clone();
    let first = by_id(&ids[0]);
    assert_eq!(unb64(&first["message"]["data"]), b"hello");
    assert_eq!(first["message"]["attributes"], json!({"kind": "text", "empty": ""}));
    assert!(first["message"]["publishTime"].as_str().unwrap().ends_with('Z'), "{first}");
    assert!(first["ackId"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(unb64(&by_id(&ids[1])["message"]["data"]), binary);
    assert!(by_id(&ids[2])["message"].get("data").is_none(), "empty data is left out, as in Google's JSON");

    // A nack (deadline 0) brings the message back at once: same message id, new ack id.
    let (st, body) =
        s.post(&format!("{sub}:modifyAckDeadline"), json!({"ackIds": [first["ackId"]], "ackDeadlineSeconds": 0})).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let again = pull(&s, sub, 1).await;
    assert_eq!(message_id(&again[0]), ids[0]);
    assert_ne!(again[0]["ackId"], first["ackId"]);

    // Extending a lease is accepted; acking everything leaves nothing to pull.
    let (st, _) = s
        .post(&format!("{sub}:modifyAckDeadline"), json!({"ackIds": [again[0]["ackId"]], "ackDeadlineSeconds": 60}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let acks = json!([again[0]["ackId"], by_id(&ids[1])["ackId"], by_id(&ids[2])["ackId"]]);
    let (st, body) = s.post(&format!("{sub}:acknowledge"), json!({ "ackIds": acks })).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    assert_eq!(pull_now(&s, sub).await, Vec::<Value>::new());

    // Seeking to a time before the messages delivers them all again.
    let (st, body) = s.post(&format!("{sub}:seek"), json!({ "time": before })).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let replayed = pull(&s, sub, 3).await;
    let mut replayed_ids: Vec<&str> = replayed.iter().map(message_id).collect();
    replayed_ids.sort_unstable();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(replayed_ids, expected);
    // Seeking to now skips them.
    let (st, _) = s.post(&format!("{sub}:seek"), json!({ "time": now_rfc3339() })).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(pull_now(&s, sub).await, Vec::<Value>::new());
    let (st, body) = s.post(&format!("{sub}:seek"), json!({"snapshot": "projects/ps/snapshots/x"})).await;
    expect_error(st, &body, 501, "UNIMPLEMENTED");
    s.stop().await;
}

#[tokio::test]
async fn pubsub_rest_lists_page_and_resources_update() {
    let s = TestServer::start().await;
    let p = "projects/lists";
    for t in ["t-a", "t-b", "t-c"] {
        let (st, body) = s.put(&format!("{p}/topics/{t}"), json!({})).await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }
    for sub in ["s-a", "s-b", "s-c"] {
        let (st, body) = s.put(&format!("{p}/subscriptions/{sub}"), json!({"topic": format!("{p}/topics/t-a")})).await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }
    // Topics and subscriptions, two per page.
    for (collection, field) in [("topics", "topics"), ("subscriptions", "subscriptions")] {
        let (st, page1) = s.get(&format!("{p}/{collection}?pageSize=2")).await;
        assert_eq!(st, StatusCode::OK, "{page1}");
        let names: Vec<&str> = page1[field].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), 2, "{page1}");
        let token = page1["nextPageToken"].as_str().expect("a next page");
        let (_, page2) = s.get(&format!("{p}/{collection}?pageSize=2&pageToken={token}")).await;
        let rest: Vec<&str> = page2[field].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(rest.len(), 1, "{page2}");
        assert!(page2.get("nextPageToken").is_none(), "{page2}");
        assert!(!names.contains(&rest[0]));
    }
    let (st, body) = s.get(&format!("{p}/topics?page_size=1")).await;
    assert_eq!((st, body["topics"].as_array().unwrap().len()), (StatusCode::OK, 1), "snake_case parameters too");
    let (st, body) = s.get(&format!("{p}/topics?pageSize=abc")).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.get(&format!("{p}/topics?colour=red")).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");

    // A topic's subscriptions, by name, paged too; its snapshots (none).
    let (st, body) = s.get(&format!("{p}/topics/t-a/subscriptions")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        body["subscriptions"],
        json!([format!("{p}/subscriptions/s-a"), format!("{p}/subscriptions/s-b"), format!("{p}/subscriptions/s-c")])
    );
    let (_, body) = s.get(&format!("{p}/topics/t-a/subscriptions?pageSize=1")).await;
    assert_eq!(body["subscriptions"].as_array().unwrap().len(), 1);
    assert!(body["nextPageToken"].is_string());
    let (_, body) = s.get(&format!("{p}/topics/t-b/subscriptions")).await;
    assert_eq!(body, json!({}));
    let (st, body) = s.get(&format!("{p}/topics/t-a/snapshots")).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, body) = s.get(&format!("{p}/topics/nope/subscriptions")).await;
    expect_error(st, &body, 404, "NOT_FOUND");

    // PATCH with an update mask changes only what it names.
    let (st, body) = s
        .patch(
            &format!("{p}/topics/t-b"),
            json!({"topic": {"labels": {"env": "prod"}, "messageRetentionDuration": "3600s"}, "updateMask": "labels"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["labels"], json!({"env": "prod"}));
    assert!(body.get("messageRetentionDuration").is_none(), "{body}");
    let (st, body) = s
        .patch(
            &format!("{p}/subscriptions/s-b"),
            json!({"subscription": {"ackDeadlineSeconds": 45, "filter": "ignored"}, "updateMask": "ackDeadlineSeconds"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!((&body["ackDeadlineSeconds"], body.get("filter")), (&json!(45), None));
    let (st, body) = s
        .patch(
            &format!("{p}/subscriptions/s-b"),
            json!({"subscription": {"name": format!("{p}/subscriptions/s-c"), "ackDeadlineSeconds": 45}, "updateMask": "ackDeadlineSeconds"}),
        )
        .await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.patch(&format!("{p}/subscriptions/s-b"), json!({"subscription": {}})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");

    // modifyPushConfig to pull is a no-op; a push endpoint is not served.
    let (st, body) = s.post(&format!("{p}/subscriptions/s-b:modifyPushConfig"), json!({"pushConfig": {}})).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, body) = s
        .post(
            &format!("{p}/subscriptions/s-b:modifyPushConfig"),
            json!({"pushConfig": {"pushEndpoint": "https://example.test/push"}}),
        )
        .await;
    expect_error(st, &body, 501, "UNIMPLEMENTED");

    // Detach, then delete.
    let (st, body) = s.post(&format!("{p}/subscriptions/s-c:detach"), json!({})).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (_, body) = s.get(&format!("{p}/subscriptions/s-c")).await;
    assert_eq!(body["detached"], true);
    let (st, body) = s.delete(&format!("{p}/subscriptions/s-c")).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, body) = s.get(&format!("{p}/subscriptions/s-c")).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.delete(&format!("{p}/topics/t-a")).await;
    assert_eq!((st, body), (StatusCode::OK, json!({})));
    let (st, body) = s.get(&format!("{p}/subscriptions/s-a")).await;
    assert_eq!((st, &body["topic"]), (StatusCode::OK, &json!("_deleted-topic_")), "{body}");
    let (st, body) = s.delete(&format!("{p}/topics/t-a")).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn pubsub_rest_iam_policies_use_etags() {
    let s = TestServer::start().await;
    let topic = "projects/iam/topics/secured";
    let sub = "projects/iam/subscriptions/secured-sub";
    assert_eq!(s.put(topic, json!({})).await.0, StatusCode::OK);
    assert_eq!(s.put(sub, json!({"topic": topic})).await.0, StatusCode::OK);
    for resource in [topic, sub] {
        let (st, empty) = s.post(&format!("{resource}:getIamPolicy"), json!({})).await;
        assert_eq!(st, StatusCode::OK, "{empty}");
        let first_etag = empty["etag"].as_str().expect("an etag even without a policy").to_owned();
        assert!(empty.get("bindings").is_none(), "{empty}");
        let binding = json!({"role": "roles/pubsub.subscriber", "members": ["user:ops@example.com"]});
        let (st, set) = s
            .post(&format!("{resource}:setIamPolicy"), json!({"policy": {"bindings": [binding], "etag": first_etag}}))
            .await;
        assert_eq!(st, StatusCode::OK, "{set}");
        assert_eq!(set["bindings"], json!([binding]));
        assert_ne!(set["etag"], json!(first_etag));
        // Google also allows GET for getIamPolicy.
        let (st, got) = s.get(&format!("{resource}:getIamPolicy?options.requestedPolicyVersion=3")).await;
        assert_eq!((st, &got), (StatusCode::OK, &set));
        // A write based on what was read before the last one is refused.
        let (st, body) =
            s.post(&format!("{resource}:setIamPolicy"), json!({"policy": {"bindings": [], "etag": first_etag}})).await;
        expect_error(st, &body, 409, "ABORTED");
        let (st, body) = s
            .post(
                &format!("{resource}:testIamPermissions"),
                json!({"permissions": ["pubsub.topics.publish", "pubsub.subscriptions.consume"]}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(body["permissions"].as_array().unwrap().len(), 2);
        let (st, body) =
            s.post(&format!("{resource}:setIamPolicy"), json!({"policy": {"bindings": [{"role": "owner"}]}})).await;
        expect_error(st, &body, 400, "INVALID_ARGUMENT");
    }
    let (st, body) = s.post("projects/iam/topics/missing:getIamPolicy", json!({})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.post("projects/iam/topics/x:getIamPolicy", json!({})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    s.stop().await;
}

#[tokio::test]
async fn pubsub_rest_errors_are_google_errors() {
    let s = TestServer::start().await;
    let p = "projects/errs";
    let topic = format!("{p}/topics/events");
    let sub = format!("{p}/subscriptions/events-sub");
    // Bad names.
    for path in [format!("{p}/topics/ab"), format!("{p}/topics/goog-x"), format!("{p}/topics/1abc")] {
        let (st, body) = s.put(&path, json!({})).await;
        expect_error(st, &body, 400, "INVALID_ARGUMENT");
    }
    let (st, body) = s.get(&format!("{p}/subscriptions/a%20b")).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.post(&format!("{p}/topics/ab:publish"), json!({"messages": [{"data": "AA=="}]})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    // Unknown resources.
    let (st, body) = s.get(&topic).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.post(&format!("{topic}:publish"), json!({"messages": [{"data": "AA=="}]})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.put(&sub, json!({ "topic": topic })).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.post(&format!("{sub}:pull"), json!({"maxMessages": 1})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    // Duplicates.
    assert_eq!(s.put(&topic, json!({})).await.0, StatusCode::OK);
    let (st, body) = s.put(&topic, json!({})).await;
    expect_error(st, &body, 409, "ALREADY_EXISTS");
    // Out-of-range settings and malformed input.
    let (st, body) = s.put(&sub, json!({"topic": topic, "ackDeadlineSeconds": 5})).await;
    let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert!(msg.contains("ack deadline"), "{msg}");
    let (st, body) = s.put(&sub, json!({"topic": topic, "enableExactlyOnceDelivery": true})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.put(&sub, json!({"topic": topic, "pushConfig": {"pushEndpoint": "https://x.test"}})).await;
    expect_error(st, &body, 501, "UNIMPLEMENTED");
    let (st, body) = s.put(&sub, json!({"name": format!("{p}/subscriptions/other"), "topic": topic})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert_eq!(s.put(&sub, json!({ "topic": topic })).await.0, StatusCode::OK);
    let (st, body) = s.put(&sub, json!({ "topic": topic })).await;
    expect_error(st, &body, 409, "ALREADY_EXISTS");
    let (st, body) = s.post(&format!("{sub}:acknowledge"), json!({"ackIds": ["this is not an ack id"]})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) =
        s.post(&format!("{sub}:modifyAckDeadline"), json!({"ackIds": [], "ackDeadlineSeconds": 601})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.post(&format!("{sub}:pull"), json!({})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.post(&format!("{sub}:seek"), json!({})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.post(&format!("{sub}:seek"), json!({"time": "yesterday"})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.post(&format!("{topic}:publish"), json!({"messages": []})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.post(&format!("{topic}:publish"), json!({"messages": [{"data": "not base64!"}]})).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    // Unknown JSON fields are named.
    let (st, body) = s.put(&format!("{p}/topics/other"), json!({"colour": "red"})).await;
    let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert!(msg.contains("colour"), "{msg}");
    let (st, body) =
        s.post(&format!("{topic}:publish"), json!({"messages": [{"data": "AA==", "priority": "high"}]})).await;
    let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert!(msg.contains("priority"), "{msg}");
    assert_eq!(body["error"]["details"][0]["fieldViolations"][0]["field"], "messages[0].priority", "{body}");
    let resp = s
        .client
        .post(format!("{}/v1/{topic}:publish", s.base))
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Snapshots are not served; unknown verbs and methods are not found, as for Cloud IoT paths.
    for (method, path) in [
        (Method::GET, format!("{p}/snapshots")),
        (Method::GET, format!("{p}/snapshots/snap")),
        (Method::PUT, format!("{p}/snapshots/snap")),
        (Method::DELETE, format!("{p}/snapshots/snap")),
    ] {
        let (st, body) = s.call(method, &path, None).await;
        let msg = expect_error(st, &body, 501, "UNIMPLEMENTED");
        assert!(msg.contains("Snapshots"), "{msg}");
    }
    let (st, body) = s.post(&format!("{topic}:explode"), json!({})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.post(&format!("{sub}:publish"), json!({})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.get(&format!("{topic}:publish")).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.post(&format!("{p}/topics"), json!({})).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    let (st, body) = s.get(&format!("{topic}/nothing")).await;
    expect_error(st, &body, 404, "NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn pubsub_rest_publish_takes_large_bodies_other_paths_do_not() {
    let s = TestServer::start().await;
    let topic = "projects/big/topics/blobs";
    let sub = "projects/big/subscriptions/blobs-sub";
    assert_eq!(s.put(topic, json!({})).await.0, StatusCode::OK);
    assert_eq!(s.put(sub, json!({"topic": topic})).await.0, StatusCode::OK);
    // 9 MB of data is 12 MB of JSON: over the 1 MiB of other paths, within Pub/Sub's 10 MB, in
    // one message or in several.
    let big: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
    let (st, body) = s.post(&format!("{topic}:publish"), json!({"messages": [{"data": b64(&big)}]})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let got = pull(&s, sub, 1).await;
    assert_eq!(unb64(&got[0]["message"]["data"]), big);
    let data = &big[..900_000];
    let messages: Vec<Value> = (0..10).map(|_| json!({"data": b64(data)})).collect();
    let (st, body) = s.post(&format!("{topic}:publish"), json!({ "messages": messages })).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["messageIds"].as_array().unwrap().len(), 10);
    // Over 10 MB of data: the engine's limit.
    let messages: Vec<Value> = (0..12).map(|_| json!({"data": b64(data)})).collect();
    let (st, body) = s.post(&format!("{topic}:publish"), json!({ "messages": messages })).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    // A Cloud IoT path keeps its 1 MiB.
    let big = json!({"id": "reg", "filler": "x".repeat(2 << 20)});
    let (st, body) = s.post("projects/big/locations/l/registries", big).await;
    let msg = expect_error(st, &body, 400, "INVALID_ARGUMENT");
    assert!(msg.contains("larger than the limit"), "{msg}");
    s.stop().await;
}

#[tokio::test]
async fn pubsub_rest_needs_the_admin_token_by_default() {
    let s = TestServer::start().await;
    let topic = "projects/auth/topics/locked";
    assert_eq!(s.put(topic, json!({})).await.0, StatusCode::OK);
    for auth in [None, Some("Bearer not-the-admin-token-at-all"), Some("Basic YTpi")] {
        for (method, path) in [
            (Method::GET, "projects/auth/topics".to_owned()),
            (Method::GET, topic.to_owned()),
            (Method::PUT, "projects/auth/topics/other".to_owned()),
            (Method::POST, format!("{topic}:publish")),
            (Method::GET, "projects/auth/snapshots/x".to_owned()),
        ] {
            let (st, body) = s.call_as(auth, method, &path, Some(json!({"messages": [{"data": "AA=="}]}))).await;
            expect_error(st, &body, 401, "UNAUTHENTICATED");
        }
    }
    // The caller is checked before the name or the body is looked at.
    let (st, body) = s.call_as(None, Method::PUT, "projects/auth/topics/ab", Some(json!({"bad": 1}))).await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    s.stop().await;
}

#[tokio::test]
async fn pubsub_rest_anonymous_mode_admits_calls_without_credentials_only() {
    let s = TestServer::start_pubsub_anonymous().await;
    let topic = "projects/anon/topics/open";
    let sub = "projects/anon/subscriptions/open-sub";
    // No Authorization header at all: the Pub/Sub emulator's clients.
    let (st, body) = s.call_as(None, Method::PUT, topic, Some(json!({}))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = s.call_as(None, Method::PUT, sub, Some(json!({ "topic": topic }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = s
        .call_as(None, Method::POST, &format!("{topic}:publish"), Some(json!({"messages": [{"data": b64(b"hi")}]})))
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = s.call_as(None, Method::GET, "projects/anon/topics", None).await;
    assert_eq!((st, &body["topics"][0]["name"]), (StatusCode::OK, &json!(topic)));
    let (st, body) = s.call_as(None, Method::POST, &format!("{sub}:pull"), Some(json!({"maxMessages": 1}))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(unb64(&body["receivedMessages"][0]["message"]["data"]), b"hi");
    // The admin token still works.
    assert_eq!(s.get(topic).await.0, StatusCode::OK);
    // Any other credential is refused, even though no credential at all would pass.
    for auth in ["Bearer not-the-admin-token-at-all", "Basic YTpi", &format!("Bearer {}", es256_token("anon"))] {
        let (st, body) = s.call_as(Some(auth), Method::GET, topic, None).await;
        expect_error(st, &body, 401, "UNAUTHENTICATED");
    }
    // The rest of the admin API still needs the token.
    for path in [
        "projects/anon/locations/us-central1/registries".to_owned(),
        format!("{topic}/messages?from=earliest"),
        format!("{topic}/extent"),
    ] {
        let (st, body) = s.call_as(None, Method::GET, &path, None).await;
        expect_error(st, &body, 401, "UNAUTHENTICATED");
        let (st, body) = s.get(&path).await;
        assert_eq!(st, StatusCode::OK, "{path}: {body}");
    }
    let (st, body) = s
        .call_as(None, Method::POST, "projects/anon/locations/us-central1/registries", Some(json!({"id": "reg"})))
        .await;
    expect_error(st, &body, 401, "UNAUTHENTICATED");
    s.stop().await;
}

#[tokio::test]
async fn pubsub_rest_registry_topics_are_pubsub_topics() {
    let s = TestServer::start().await;
    let reg = s.registry("fleet", "reg").await;
    let topic = "projects/fleet/topics/events";
    let (st, body) = s.get("projects/fleet/topics").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, [topic]);
    let (st, body) = s.get(topic).await;
    assert_eq!((st, &body["name"]), (StatusCode::OK, &json!(topic)));
    let (st, body) = s.put(topic, json!({})).await;
    expect_error(st, &body, 409, "ALREADY_EXISTS");

    // A device's telemetry reaches a subscription on the registry's topic.
    let sub = "projects/fleet/subscriptions/backend";
    assert_eq!(s.put(sub, json!({ "topic": topic })).await.0, StatusCode::OK);
    s.device(&reg, "dev-1", json!({})).await;
    let resp = s
        .client
        .post(format!("{}/v1/{reg}/devices/dev-1:publishEvent", s.base))
        .bearer_auth(es256_token("fleet"))
        .json(&json!({"binaryData": b64(b"21.5C"), "subFolder": "temp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got = pull(&s, sub, 1).await;
    let m = &got[0]["message"];
    assert_eq!(unb64(&m["data"]), b"21.5C");
    assert_eq!((&m["attributes"]["deviceId"], &m["attributes"]["subFolder"]), (&json!("dev-1"), &json!("temp")));
    s.stop().await;
}

#[tokio::test]
async fn topic_log_extent_and_messages_stay_with_the_admin_token() {
    let s = TestServer::start().await;
    let topic = "projects/log/topics/readings";
    assert_eq!(s.put(topic, json!({})).await.0, StatusCode::OK);
    let (st, body) = s.get(&format!("{topic}/extent")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"name": topic, "earliestOffset": "0", "nextOffset": "0", "bytes": "0"}));
    let (st, _) =
        s.post(&format!("{topic}:publish"), json!({"messages": [{"data": b64(b"one")}, {"data": b64(b"two")}]})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = s.get(&format!("{topic}/extent")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!((&body["earliestOffset"], &body["nextOffset"]), (&json!("0"), &json!("2")));
    assert!(body["bytes"].as_str().unwrap().parse::<u64>().unwrap() > 0, "{body}");
    let (st, body) = s.get(&format!("{topic}/messages?from=earliest")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let data: Vec<Vec<u8>> = body["messages"].as_array().unwrap().iter().map(|m| unb64(&m["data"])).collect();
    assert_eq!(data, [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(body["nextOffset"], "2");
    let (st, body) = s.get("projects/log/topics/ab/extent").await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    let (st, body) = s.get(&format!("{topic}/extent?x=1")).await;
    expect_error(st, &body, 400, "INVALID_ARGUMENT");
    for path in [format!("{topic}/extent"), format!("{topic}/messages")] {
        let (st, body) = s.call_as(None, Method::GET, &path, None).await;
        expect_error(st, &body, 401, "UNAUTHENTICATED");
        let (st, body) = s.post(&path, json!({})).await;
        expect_error(st, &body, 404, "NOT_FOUND");
    }
    s.stop().await;
}
