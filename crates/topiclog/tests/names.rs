//! Topic names the log must store however long their directory names would get: every name
//! `ferrocore_model::pubsub::TopicName` accepts appends, survives a reopen under the same name,
//! and reads back; names that fit keep their percent-encoded directories.

use bytes::Bytes;
use ferrocore_model::pubsub::TopicName;
use ferrocore_topiclog::{LogConfig, NewRecord, ReadFrom, TopicLog};
use std::path::Path;

/// In the future (2096), so that the background retention task never expires these records.
const T0: i64 = 4_000_000_000_000_000_000;

fn rec(i: usize) -> NewRecord {
    NewRecord {
        timestamp_nanos: T0 + i as i64,
        attributes: vec![("i".into(), i.to_string())],
        payload: Bytes::from(format!("m{i}")),
    }
}

/// The directories directly under `dir`, by name.
fn dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_longest_names_append_reopen_and_read_back() {
    // 255 characters, almost all of them percent-encoded to three bytes each.
    let id = format!("a{}bc", "~+%".repeat(84));
    assert_eq!(id.len(), 255);
    let long_topic = format!("projects/p1/topics/{id}");
    let long_project = format!("projects/{}/topics/{id}", "é.".repeat(85));
    let short = "projects/p1/topics/a.b~c+d%e";
    let names = [long_topic.as_str(), long_project.as_str(), short];
    for name in names {
        TopicName::parse("topic", name).unwrap_or_else(|e| panic!("the model accepts {name}: {e}"));
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig { segment_bytes: 256, ..LogConfig::new(dir.path()) };
    let log = TopicLog::open(cfg.clone()).await.expect("open");
    for (n, name) in names.iter().enumerate() {
        let records: Vec<NewRecord> = (0..(5 + n)).map(rec).collect();
        let offsets = log.append(name, records).await.unwrap_or_else(|e| panic!("append to {name}: {e}"));
        assert_eq!(offsets.len(), 5 + n);
    }
    let infos = log.topics();
    assert_eq!(infos.len(), 3);
    log.close().await;

    // On disk: the short project and the short topic keep their percent-encoded names; the
    // others are hashed, each no longer than a file name may be.
    assert_eq!(dirs(&dir.path().join("p1")).len(), 2);
    assert!(dirs(&dir.path().join("p1")).contains(&"a%2Eb%7Ec%2Bd%25e".to_owned()));
    for project in dirs(dir.path()) {
        assert!(project.len() <= 255, "{project}");
        for topic in dirs(&dir.path().join(&project)) {
            assert!(topic.len() <= 255, "{topic}");
        }
    }

    let log = TopicLog::open(cfg).await.expect("reopen");
    assert_eq!(log.topics(), infos, "recovery finds every topic under its own name");
    for (n, name) in names.iter().enumerate() {
        let r = log.read(name, ReadFrom::Earliest, 100, usize::MAX, None).await.expect("read");
        assert_eq!(r.records.len(), 5 + n, "{name}");
        for (i, record) in r.records.iter().enumerate() {
            assert_eq!(record.payload, Bytes::from(format!("m{i}")));
            assert_eq!(record.attributes, vec![("i".to_owned(), i.to_string())]);
        }
        assert_eq!(log.offset_at_time(name, T0 + 2).await.expect("seek"), 2);
    }
    // And the topics keep going where they stopped.
    assert_eq!(log.append(&long_topic, vec![rec(5)]).await.expect("append"), vec![5]);
    log.close().await;
}

#[tokio::test]
async fn the_log_refuses_exactly_what_the_model_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = TopicLog::open(LogConfig::new(dir.path())).await.expect("open");
    let names = [
        format!("projects/p/topics/a{}", "~".repeat(254)),
        format!("projects/p/topics/a{}", "~".repeat(255)),
        format!("projects/{}/topics/abc", ":".repeat(255)),
        format!("projects/{}/topics/abc", ":".repeat(256)),
        "projects/p/topics/goog-x".to_owned(),
        "projects/p/topics/Goog".to_owned(),
        "projects/p/topics/9abc".to_owned(),
        "projects/p q/topics/abc".to_owned(),
        "projects/p/topics/abc".to_owned(),
    ];
    for name in &names {
        let model = TopicName::parse("topic", name);
        let log_result = log.append(name, vec![rec(0)]).await;
        assert_eq!(log_result.is_ok(), model.is_ok(), "{name}: log {log_result:?}, model {model:?}");
        if let (Err(log_err), Err(model_err)) = (&log_result, &model) {
            assert_eq!(log_err.to_string(), model_err.message, "the log explains it as the model does");
        }
    }
    log.close().await;
}
