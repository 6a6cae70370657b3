//! The Pub/Sub and IAM wire types: Google's JSON mapping (what REST clients send and expect) and
//! the binary field numbers (what gRPC clients send), checked against hand-made input so that a
//! renumbered or renamed field in our .proto files fails here rather than in a client.

use ferrocore_proto::wkt::Timestamp;
use ferrocore_proto::{Duration, iam, pubsub};
use prost::Message;
use serde_json::json;
use std::collections::HashMap;

#[test]
fn pubsub_message_json_uses_google_mapping() {
    let msg = pubsub::PubsubMessage {
        data: b"hello world".to_vec().into(),
        attributes: HashMap::from([("k".to_string(), "v".to_string())]),
        message_id: "42".into(),
        publish_time: Some(Timestamp { seconds: 1_700_000_000, nanos: 123_000_000 }),
        ordering_key: "key-1".into(),
    };
    let v = serde_json::to_value(&msg).unwrap();
    assert_eq!(
        v,
        json!({
            // Standard base64, with padding.
            "data": "aGVsbG8gd29ybGQ=",
            "attributes": {"k": "v"},
            "messageId": "42",
            "publishTime": "2023-11-14T22:13:20.123Z",
            "orderingKey": "key-1",
        })
    );

    // Bytes that differ between standard and URL-safe base64 must come out standard.
    let v =
        serde_json::to_value(pubsub::PubsubMessage { data: vec![0xfb, 0xff].into(), ..Default::default() }).unwrap();
    assert_eq!(v["data"], "+/8=");

    let back: pubsub::PubsubMessage =
        serde_json::from_value(json!({"data": "aGVsbG8gd29ybGQ=", "attributes": {"k": "v"}})).unwrap();
    assert_eq!(back.data[..], b"hello world"[..]);
    assert_eq!(back.attributes["k"], "v");
}

#[test]
fn publish_request_and_response_json() {
    let req: pubsub::PublishRequest = serde_json::from_value(json!({
        "topic": "projects/p/topics/t",
        "messages": [{"data": "AQI=", "orderingKey": "o"}, {"attributes": {"a": ""}}],
    }))
    .unwrap();
    assert_eq!(req.messages.len(), 2);
    assert_eq!(req.messages[0].data[..], [1, 2]);
    assert_eq!(req.messages[1].attributes["a"], "");

    let resp = pubsub::PublishResponse { message_ids: vec!["1".into(), "2".into()] };
    assert_eq!(serde_json::to_value(&resp).unwrap(), json!({"messageIds": ["1", "2"]}));
}

#[test]
fn subscription_json_parses_with_durations_and_policies() {
    let sub: pubsub::Subscription = serde_json::from_value(json!({
        "name": "projects/p/subscriptions/s",
        "topic": "projects/p/topics/t",
        "pushConfig": {},
        "ackDeadlineSeconds": 20,
        "messageRetentionDuration": "600s",
        "deadLetterPolicy": {"deadLetterTopic": "projects/p/topics/dead", "maxDeliveryAttempts": 5},
        "retryPolicy": {"minimumBackoff": "10s", "maximumBackoff": "1.500s"},
        "filter": "attributes.kind = \"alarm\"",
        "enableExactlyOnceDelivery": true,
        "expirationPolicy": {"ttl": "86400s"},
        "labels": {"team": "ops"},
        "state": "ACTIVE",
    }))
    .unwrap();
    assert_eq!(sub.ack_deadline_seconds, 20);
    assert_eq!(sub.message_retention_duration, Some(Duration { seconds: 600, nanos: 0 }));
    let dlp = sub.dead_letter_policy.as_ref().unwrap();
    assert_eq!((dlp.dead_letter_topic.as_str(), dlp.max_delivery_attempts), ("projects/p/topics/dead", 5));
    assert_eq!(sub.retry_policy.as_ref().unwrap().maximum_backoff, Some(Duration { seconds: 1, nanos: 500_000_000 }));
    assert_eq!(sub.filter, "attributes.kind = \"alarm\"");
    assert!(sub.enable_exactly_once_delivery);
    assert_eq!(sub.state(), pubsub::subscription::State::Active);
    assert!(sub.push_config.is_some());

    // And back out: durations as "<seconds>s", enums by name, defaults left out.
    let v = serde_json::to_value(&sub).unwrap();
    assert_eq!(v["messageRetentionDuration"], "600s");
    assert_eq!(v["expirationPolicy"]["ttl"], "86400s");
    assert_eq!(v["deadLetterPolicy"]["maxDeliveryAttempts"], 5);
    assert_eq!(v["state"], "ACTIVE");
    assert!(v.get("retainAckedMessages").is_none());

    // Unknown fields are refused rather than silently dropped.
    assert!(serde_json::from_value::<pubsub::Subscription>(json!({"nope": 1})).is_err());
}

#[test]
fn push_config_oneofs_and_seek_target_in_json() {
    let pc: pubsub::PushConfig = serde_json::from_value(json!({
        "pushEndpoint": "https://example.test/push",
        "oidcToken": {"serviceAccountEmail": "sa@p.iam.gserviceaccount.com", "audience": "aud"},
        "noWrapper": {"writeMetadata": true},
    }))
    .unwrap();
    assert!(matches!(pc.authentication_method, Some(pubsub::push_config::AuthenticationMethod::OidcToken(_))));
    assert_eq!(
        pc.wrapper,
        Some(pubsub::push_config::Wrapper::NoWrapper(pubsub::push_config::NoWrapper { write_metadata: true }))
    );

    let seek: pubsub::SeekRequest =
        serde_json::from_value(json!({"subscription": "projects/p/subscriptions/s", "time": "2024-01-02T03:04:05Z"}))
            .unwrap();
    assert_eq!(seek.target, Some(pubsub::seek_request::Target::Time(Timestamp { seconds: 1_704_164_645, nanos: 0 })));
    assert_eq!(serde_json::to_value(&seek).unwrap()["time"], "2024-01-02T03:04:05Z");
}

#[test]
fn streaming_pull_int64_fields_are_json_strings() {
    let req = pubsub::StreamingPullRequest {
        subscription: "projects/p/subscriptions/s".into(),
        max_outstanding_messages: 1000,
        max_outstanding_bytes: 104_857_600,
        protocol_version: 1,
        ..Default::default()
    };
    let v = serde_json::to_value(&req).unwrap();
    assert_eq!(v["maxOutstandingBytes"], "104857600");
    assert_eq!(v["protocolVersion"], "1");
    let back: pubsub::StreamingPullRequest = serde_json::from_value(v).unwrap();
    assert_eq!(back, req);
}

#[test]
fn iam_policy_round_trips_with_base64_etag() {
    let input = json!({
        "version": 3,
        "bindings": [{
            "role": "roles/pubsub.subscriber",
            "members": ["user:a@example.com", "serviceAccount:b@p.iam.gserviceaccount.com"],
            "condition": {"expression": "request.time < timestamp(\"2030-01-01T00:00:00Z\")", "title": "until 2030"},
        }],
        "auditConfigs": [{"service": "pubsub.googleapis.com", "auditLogConfigs": [{"logType": "DATA_READ"}]}],
        "etag": "BwXhqDlMvUs=",
    });
    let policy: iam::Policy = serde_json::from_value(input.clone()).unwrap();
    assert_eq!(policy.etag, [0x07, 0x05, 0xe1, 0xa8, 0x39, 0x4c, 0xbd, 0x4b]);
    assert_eq!(policy.bindings[0].condition.as_ref().unwrap().title, "until 2030");
    assert_eq!(policy.audit_configs[0].audit_log_configs[0].log_type(), iam::audit_log_config::LogType::DataRead);
    assert_eq!(serde_json::to_value(&policy).unwrap(), input);

    let req: iam::GetIamPolicyRequest =
        serde_json::from_value(json!({"resource": "projects/p/topics/t", "options": {"requestedPolicyVersion": 3}}))
            .unwrap();
    assert_eq!(req.options.unwrap().requested_policy_version, 3);

    // The binary form survives too.
    assert_eq!(iam::Policy::decode(policy.encode_to_vec().as_slice()).unwrap(), policy);
}

/// A protobuf key: field number and wire type.
fn key(field: u32, wire_type: u8) -> u8 {
    u8::try_from(field << 3).unwrap() | wire_type
}

#[test]
fn streaming_pull_request_field_numbers_on_the_wire() {
    // subscription (1, length-delimited), stream_ack_deadline_seconds (5, varint),
    // client_id (6), max_outstanding_messages (7), protocol_version (10), built by hand.
    let mut wire = vec![key(1, 2), 3];
    wire.extend_from_slice(b"s/1");
    wire.extend_from_slice(&[key(5, 0), 60, key(6, 2), 2, b'c', b'x', key(7, 0), 0xe8, 0x07, key(10, 0), 1]);
    let req = pubsub::StreamingPullRequest::decode(wire.as_slice()).unwrap();
    assert_eq!(req.subscription, "s/1");
    assert_eq!(req.stream_ack_deadline_seconds, 60);
    assert_eq!(req.client_id, "cx");
    assert_eq!(req.max_outstanding_messages, 1000);
    assert_eq!(req.protocol_version, 1);
    // Fields are written in number order, so re-encoding gives the same bytes back.
    assert_eq!(req.encode_to_vec(), wire);

    // protocol_version alone: field 10, varint, value 1.
    let only = pubsub::StreamingPullRequest { protocol_version: 1, ..Default::default() };
    assert_eq!(only.encode_to_vec(), [0x50, 0x01]);

    // The in-stream ack and deadline lists: ack_ids 2, modify_deadline_seconds 3 (packed),
    // modify_deadline_ack_ids 4.
    let acks = pubsub::StreamingPullRequest {
        ack_ids: vec!["a".into()],
        modify_deadline_seconds: vec![0, 10],
        modify_deadline_ack_ids: vec!["b".into(), "c".into()],
        ..Default::default()
    };
    assert_eq!(acks.encode_to_vec(), [key(2, 2), 1, b'a', key(3, 2), 2, 0, 10, key(4, 2), 1, b'b', key(4, 2), 1, b'c']);
}

#[test]
fn other_hot_path_field_numbers_on_the_wire() {
    // ModifyAckDeadlineRequest numbers its ack ids 4 and the deadline 3.
    let m = pubsub::ModifyAckDeadlineRequest {
        subscription: String::new(),
        ack_ids: vec!["x".into()],
        ack_deadline_seconds: 30,
    };
    assert_eq!(m.encode_to_vec(), [key(3, 0), 30, key(4, 2), 1, b'x']);

    // ReceivedMessage: ack_id 1, message 2, delivery_attempt 3; PubsubMessage.ordering_key 5.
    let r = pubsub::ReceivedMessage {
        ack_id: "k".into(),
        message: Some(pubsub::PubsubMessage { ordering_key: "o".into(), ..Default::default() }),
        delivery_attempt: 2,
    };
    assert_eq!(r.encode_to_vec(), [key(1, 2), 1, b'k', key(2, 2), 3, key(5, 2), 1, b'o', key(3, 0), 2]);

    // StreamingPullResponse: subscription_properties is 4, acknowledge_confirmation 5.
    let resp = pubsub::StreamingPullResponse {
        subscription_properties: Some(pubsub::streaming_pull_response::SubscriptionProperties {
            exactly_once_delivery_enabled: true,
            message_ordering_enabled: false,
        }),
        acknowledge_confirmation: Some(pubsub::streaming_pull_response::AcknowledgeConfirmation {
            ack_ids: vec!["z".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(resp.encode_to_vec(), [key(4, 2), 2, key(1, 0), 1, key(5, 2), 3, key(1, 2), 1, b'z']);

    // Subscription.state is 19 (a two-byte key), enable_exactly_once_delivery 16.
    let s = pubsub::Subscription { enable_exactly_once_delivery: true, state: 1, ..Default::default() };
    assert_eq!(s.encode_to_vec(), [0x80, 0x01, 1, 0x98, 0x01, 1]);
}

#[test]
fn descriptor_set_lists_the_new_services() {
    let fds = prost_types::FileDescriptorSet::decode(ferrocore_proto::DESCRIPTORS).unwrap();
    let services: Vec<String> =
        fds.file.iter().flat_map(|f| f.service.iter().map(move |s| format!("{}.{}", f.package(), s.name()))).collect();
    for want in [
        "google.pubsub.v1.Publisher",
        "google.pubsub.v1.Subscriber",
        "google.iam.v1.IAMPolicy",
        "google.cloud.iot.v1.DeviceManager",
    ] {
        assert!(services.iter().any(|s| s == want), "{want} missing from DESCRIPTORS: {services:?}");
    }
    let sub = fds.file.iter().flat_map(|f| &f.service).find(|s| s.name() == "Subscriber").unwrap();
    let sp = sub.method.iter().find(|m| m.name() == "StreamingPull").unwrap();
    assert!(sp.client_streaming() && sp.server_streaming());
}

/// Guards the public paths that the server crates name; it only has to compile.
#[allow(dead_code)]
fn public_paths<S, P, I>(s: S, p: P, i: I)
where
    S: pubsub::subscriber_server::Subscriber,
    P: pubsub::publisher_server::Publisher,
    I: iam::iam_policy_server::IamPolicy,
{
    let _ = (pubsub::subscriber_server::SubscriberServer::new(s), pubsub::publisher_server::PublisherServer::new(p));
    let _ = iam::iam_policy_server::IamPolicyServer::new(i);
    let _: Option<(pubsub::subscriber_client::SubscriberClient<()>, pubsub::publisher_client::PublisherClient<()>)> =
        None;
    let _ = ferrocore_proto::r#type::Expr::default();
}
