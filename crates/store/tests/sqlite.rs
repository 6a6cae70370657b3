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
