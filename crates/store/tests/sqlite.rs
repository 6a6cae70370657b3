//! The SQLite backend against the conformance suite, plus what only a file-backed store can show.

use ferrocore_store::sqlite::SqliteStore;
use ferrocore_store::{Store, conformance};

#[tokio::test]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("ferrocore.db")).await.unwrap();
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn sqlite_passes_the_pubsub_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("ferrocore.db")).await.unwrap();
    conformance::run_pubsub(&store).await;
}

#[tokio::test]
async fn sqlite_passes_the_sinks_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("ferrocore.db")).await.unwrap();
    conformance::run_sinks(&store).await;
}

#[tokio::test]
async fn sqlite_passes_the_iam_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("ferrocore.db")).await.unwrap();
    conformance::run_iam(&store).await;
}

#[tokio::test]
async fn iam_records_survive_reopening() {
    use ferrocore_store::IamStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferrocore.db");
    let store = SqliteStore::open(&path).await.unwrap();
    conformance::run_iam(&store).await;
    let tokens = store.list_api_tokens().await.unwrap();
    let accounts = store.list_service_accounts().await.unwrap();
    let keys = store.list_service_account_keys().await.unwrap();
    assert!(!tokens.is_empty() && !accounts.is_empty() && !keys.is_empty(), "the suite leaves records behind");
    store.close().await;
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.list_api_tokens().await.unwrap(), tokens);
    assert_eq!(store.list_service_accounts().await.unwrap(), accounts);
    assert_eq!(store.list_service_account_keys().await.unwrap(), keys);
    assert_eq!(store.server_secret("conformance-a", b"after reopening").await.unwrap(), b"first");
}

#[tokio::test]
async fn data_and_schema_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferrocore.db");
    let store = SqliteStore::open(&path).await.unwrap();
    conformance::run_all(&store).await;
    let parent =
        ferrocore_model::LocationName::parse_field("parent", "projects/conf-reg/locations/us-central1").unwrap();
    let before = store.list_registries(&parent, None, 100).await.unwrap();
    store.close().await;
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.list_registries(&parent, None, 100).await.unwrap(), before);
}

/// A database from before Pub/Sub: its registries' topics exist once the migration ran.
#[tokio::test]
async fn migration_creates_the_topics_existing_registries_name() {
    use ferrocore_store::PubsubStore;
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferrocore.db");
    {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(include_str!("../migrations/sqlite/0001_initial.sql")).execute(&mut conn).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 0);
             INSERT INTO registries (project, location, id, event_configs, state_topic, mqtt_state, http_state, log_level, credentials)
             VALUES ('old', 'us-central1', 'reg',
                     '[{\"subfolder_matches\":\"\",\"pubsub_topic_name\":\"projects/old/topics/telemetry\"},{\"subfolder_matches\":\"x\",\"pubsub_topic_name\":\"projects/other/topics/sub-x\"}]',
                     'projects/old/topics/state', 1, 1, 0, '[]');",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    for name in ["projects/old/topics/telemetry", "projects/other/topics/sub-x", "projects/old/topics/state"] {
        let topic = ferrocore_model::pubsub::TopicName::parse("t", name).unwrap();
        let found = store.get_topic(&topic).await.unwrap();
        assert!(found.is_some(), "{name} exists after the migration");
    }
    let other =
        store.list_topics(ferrocore_store::pubsub::Page { project: "other", after: None, limit: 10 }).await.unwrap();
    assert_eq!(other.len(), 1, "the project column is the topic's own project");
}
