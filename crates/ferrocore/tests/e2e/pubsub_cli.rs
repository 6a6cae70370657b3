//! `ferrocore pubsub ...` against the real server: every verb once, as tables and as JSON, and
//! the server's refusals as one `error:` line.

use crate::cli_verbs::{Cli, rows};
use crate::harness::*;
use base64::Engine;
use serde_json::{Value, json};

/// `args` with `--project cli` after them.
fn at<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [args, &["--project", "cli"]].concat()
}

#[tokio::test]
async fn pubsub_cli_verbs_print_tables_and_json() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&s, dir.path());

    // Topics.
    let out = cli.run(&at(&["pubsub", "topics", "create", "orders"])).await.success();
    assert_eq!((out.stderr.as_str(), out.stdout.as_str()), ("Created topic [projects/cli/topics/orders].\n", ""));
    let j = cli.run(&["pubsub", "topics", "create", "projects/cli/topics/dead", "--format", "json"]).await.success();
    assert_eq!(j.json()["name"], "projects/cli/topics/dead", "a full name needs no --project");
    let out = cli.run(&at(&["pubsub", "topics", "list"])).await.success();
    assert_eq!(
        rows(&out.stdout),
        [vec!["NAME", "LABELS"], vec!["projects/cli/topics/dead"], vec!["projects/cli/topics/orders"]],
        "{}",
        out.stdout
    );
    let list = cli.run(&at(&["pubsub", "topics", "list", "--format", "json", "--limit", "1"])).await.success().json();
    assert_eq!(list, json!([{"name": "projects/cli/topics/dead", "state": "ACTIVE"}]));
    let out = cli.run(&at(&["pubsub", "topics", "describe", "orders"])).await.success();
    assert!(rows(&out.stdout).contains(&vec!["name".to_owned(), "projects/cli/topics/orders".to_owned()]));
    let out = cli.run(&at(&["pubsub", "topics", "create", "orders"])).await.failure();
    assert!(out.error().starts_with("error: ALREADY_EXISTS: "), "{}", out.stderr);

    // Subscriptions.
    let out = cli
        .run(&at(&[
            "pubsub",
            "subscriptions",
            "create",
            "orders-sub",
            "--topic",
            "orders",
            "--ack-deadline",
            "30",
            "--format",
            "json",
        ]))
        .await
        .success();
    assert_eq!(out.stderr, "Created subscription [projects/cli/subscriptions/orders-sub].\n");
    let created = out.json();
    assert_eq!((&created["topic"], &created["ackDeadlineSeconds"]), (&json!("projects/cli/topics/orders"), &json!(30)));
    cli.run(&at(&[
        "pubsub",
        "subscriptions",
        "create",
        "alarms",
        "--topic",
        "projects/cli/topics/orders",
        "--filter",
        "attributes.kind = \"alarm\"",
        "--enable-message-ordering",
        "--dead-letter-topic",
        "dead",
        "--max-delivery-attempts",
        "7",
    ]))
    .await
    .success();
    let j = cli.run(&at(&["pubsub", "subscriptions", "describe", "alarms", "--format", "json"])).await.success().json();
    assert_eq!(j["filter"], "attributes.kind = \"alarm\"");
    assert_eq!(j["enableMessageOrdering"], true);
    assert_eq!(j["deadLetterPolicy"], json!({"deadLetterTopic": "projects/cli/topics/dead", "maxDeliveryAttempts": 7}));
    let out = cli.run(&at(&["pubsub", "subscriptions", "describe", "alarms"])).await.success();
    assert!(rows(&out.stdout).contains(&vec!["deadLetterPolicy.maxDeliveryAttempts".to_owned(), "7".to_owned()]));
    let out = cli.run(&at(&["pubsub", "subscriptions", "list"])).await.success();
    assert_eq!(
        rows(&out.stdout),
        [
            vec!["NAME", "TOPIC", "ACK_DEADLINE", "FILTER"],
            vec![
                "projects/cli/subscriptions/alarms",
                "projects/cli/topics/orders",
                "10",
                "attributes.kind = \"alarm\""
            ],
            vec!["projects/cli/subscriptions/orders-sub", "projects/cli/topics/orders", "30"],
        ],
        "{}",
        out.stdout
    );
    let list = cli.run(&at(&["pubsub", "subscriptions", "list", "--format", "json"])).await.success().json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let args = at(&["pubsub", "subscriptions", "create", "bad", "--topic", "orders", "--ack-deadline", "5"]);
    let out = cli.run(&args).await.failure();
    assert!(out.error().starts_with("error: INVALID_ARGUMENT: "), "{}", out.stderr);

    // Publish.
    let out = cli
        .run(&at(&[
            "pubsub",
            "topics",
            "publish",
            "orders",
            "--message",
            "hello world",
            "--attribute",
            "kind=alarm,zone=3",
        ]))
        .await
        .success();
    let table = rows(&out.stdout);
    assert_eq!(table[0], ["MESSAGE_ID"]);
    let first_id = table[1][0].clone();
    let j = cli
        .run(&at(&["pubsub", "topics", "publish", "orders", "--message", "second", "--format", "json"]))
        .await
        .success()
        .json();
    let second_id = j["messageIds"][0].as_str().unwrap().to_owned();
    let out = cli.run(&at(&["pubsub", "topics", "publish", "orders"])).await.failure();
    assert!(out.error().contains("nothing to publish"), "{}", out.stderr);

    // Pull as a table, then acknowledge by ack id.
    let out = cli.run(&at(&["pubsub", "pull", "orders-sub", "--limit", "1"])).await.success();
    let table = rows(&out.stdout);
    assert_eq!(table[0], ["DATA", "MESSAGE_ID", "ATTRIBUTES", "ACK_ID"], "{}", out.stdout);
    assert_eq!(table[1][..3], ["hello world", first_id.as_str(), "kind=alarm,zone=3"], "{}", out.stdout);
    let ack_id = table[1][3].clone();
    let out = cli.run(&at(&["pubsub", "subscriptions", "ack", "orders-sub", "--ack-ids", &ack_id])).await.success();
    assert_eq!(out.stderr, "Acknowledged 1 message(s) on [orders-sub].\n");
    // Pull as JSON (Google's receivedMessages, data in base64), acknowledging at once.
    let j = cli
        .run(&at(&["pubsub", "subscriptions", "pull", "orders-sub", "--limit", "5", "--auto-ack", "--format", "json"]))
        .await
        .success()
        .json();
    let got = j.as_array().unwrap();
    assert_eq!(got.len(), 1, "{j}");
    assert_eq!(got[0]["message"]["messageId"], second_id.as_str());
    assert_eq!(got[0]["message"]["data"], base64::engine::general_purpose::STANDARD.encode("second"));
    assert!(got[0]["ackId"].is_string());
    let out = cli.run(&at(&["pubsub", "pull", "orders-sub", "--no-wait"])).await.success();
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", "Listed 0 items.\n"), "everything was acknowledged");
    // The filtered subscription only got the alarm.
    let j: Value =
        cli.run(&at(&["pubsub", "pull", "alarms", "--limit", "5", "--ack", "--format", "json"])).await.success().json();
    assert_eq!(j.as_array().unwrap().len(), 1, "{j}");
    assert_eq!(j[0]["message"]["attributes"]["kind"], "alarm");

    // Seek back: both messages again.
    let out = cli
        .run(&at(&["pubsub", "subscriptions", "seek", "orders-sub", "--time", "2000-01-01T00:00:00Z"]))
        .await
        .success();
    assert!(out.stderr.contains("orders-sub"), "{}", out.stderr);
    // One pull may bring fewer than are waiting while the subscription rereads the log.
    let mut ids = Vec::new();
    for _ in 0..5 {
        let j =
            cli.run(&at(&["pubsub", "pull", "orders-sub", "--limit", "5", "--format", "json"])).await.success().json();
        ids.extend(j.as_array().unwrap().iter().map(|m| m["message"]["messageId"].as_str().unwrap().to_owned()));
        if ids.len() >= 2 {
            break;
        }
    }
    ids.sort_unstable();
    let mut expected = vec![first_id, second_id];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let out = cli.run(&at(&["pubsub", "subscriptions", "seek", "orders-sub", "--time", "last week"])).await.failure();
    assert!(out.error().starts_with("error: INVALID_ARGUMENT: "), "{}", out.stderr);
    let out = cli.run(&at(&["pubsub", "subscriptions", "ack", "orders-sub", "--ack-ids", "nonsense"])).await.failure();
    assert!(out.error().starts_with("error: INVALID_ARGUMENT: "), "{}", out.stderr);

    // Delete.
    let out = cli.run(&at(&["pubsub", "subscriptions", "delete", "alarms"])).await.success();
    assert_eq!(out.stderr, "Deleted subscription [projects/cli/subscriptions/alarms].\n");
    let j = cli.run(&at(&["pubsub", "topics", "delete", "dead", "--format", "json"])).await.success().json();
    assert_eq!(j, json!({}));
    let out = cli.run(&at(&["pubsub", "topics", "describe", "dead"])).await.failure();
    assert!(out.error().starts_with("error: NOT_FOUND: "), "{}", out.stderr);
    let out = cli.run(&["pubsub", "topics", "describe", "dead"]).await.failure();
    assert!(out.error().contains("--project"), "{}", out.stderr);
    let out = cli.run(&["pubsub", "topics", "describe", "projects/cli/subscriptions/x"]).await.failure();
    assert!(out.error().contains("not a name like"), "{}", out.stderr);
    s.stop().await;
}
