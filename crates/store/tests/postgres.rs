//! The PostgreSQL backend against the conformance suites, plus what a store with many writers
//! must show: data and schema survive reopening, a newer schema is refused, and conditional
//! writes racing each other on one row still have a single winner.
//!
//! Each test creates a database of its own on the server at 127.0.0.1:5432 (as `$PGUSER`, else
//! `postgres`, with trust authentication) and drops it at the end, also when the test fails.
//! Without a reachable server the tests are skipped, except under `CI=true`, where they fail.

use ferrocore_model::{DeviceId, DeviceState, NumId, Timestamp};
use ferrocore_store::postgres::PostgresStore;
use ferrocore_store::{
    BindOutcome, ConfigUpdate, DeviceLogEntry, DeviceLogQuery, DeviceQuery, GatewayFilter, IamStore, LogSeverity,
    MAX_GATEWAYS_PER_DEVICE, Store, StoreError, conformance,
};
use sqlx::{Connection, PgConnection};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

use ferrocore_store::conformance::{new_device, registry};
use ferrocore_store::postgres::testing::TestDatabase as TestDb;

trait TestDbExt {
    async fn open(&self) -> PostgresStore;
    /// A plain connection, to look under the store.
    async fn connect(&self) -> PgConnection;
}

impl TestDbExt for TestDb {
    async fn open(&self) -> PostgresStore {
        PostgresStore::open(&self.url()).await.unwrap()
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url()).await.unwrap()
    }
}

/// The test's database, or a skipped test.
macro_rules! test_db {
    () => {
        match TestDb::create().await {
            Some(db) => db,
            None => return,
        }
    };
}

#[tokio::test]
async fn postgres_passes_the_conformance_suite() {
    let db = test_db!();
    let store = db.open().await;
    // Device logs included: run_all ends with them.
    conformance::run_all(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_passes_the_pubsub_conformance_suite() {
    let db = test_db!();
    let store = db.open().await;
    conformance::run_pubsub(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_passes_the_sinks_conformance_suite() {
    let db = test_db!();
    let store = db.open().await;
    conformance::run_sinks(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_passes_the_iam_conformance_suite() {
    let db = test_db!();
    let store = db.open().await;
    conformance::run_iam(&store).await;
    store.close().await;
}

async fn migrations_applied(db: &TestDb) -> Vec<(i64, i64)> {
    let mut conn = db.connect().await;
    let rows = sqlx::query_as("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    rows
}

#[tokio::test]
async fn data_and_schema_survive_reopening() {
    let db = test_db!();
    let store = db.open().await;
    conformance::run_all(&store).await;
    conformance::run_iam(&store).await;
    let parent = registry("conf-reg", "any").name.parent;
    let registries = store.list_registries(&parent, None, 100).await.unwrap();
    let tokens = store.list_api_tokens().await.unwrap();
    let keys = store.list_service_account_keys().await.unwrap();
    assert!(!registries.is_empty() && !tokens.is_empty() && !keys.is_empty(), "the suites leave records behind");
    let migrations = migrations_applied(&db).await;
    assert!(!migrations.is_empty(), "the schema version is recorded");
    store.close().await;
    drop(store);

    let store = db.open().await;
    assert_eq!(migrations_applied(&db).await, migrations, "reopening applies no migration again");
    assert_eq!(store.list_registries(&parent, None, 100).await.unwrap(), registries);
    assert_eq!(store.list_api_tokens().await.unwrap(), tokens);
    assert_eq!(store.list_service_account_keys().await.unwrap(), keys);
    assert_eq!(store.server_secret("conformance-a", b"after reopening").await.unwrap(), b"first");
    store.close().await;
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let db = test_db!();
    let store = db.open().await;
    store.close().await;
    drop(store);
    let mut conn = db.connect().await;
    sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (1000000, 0)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    let Err(StoreError::Backend(message)) = PostgresStore::open(&db.url()).await else {
        panic!("a database of a later version must not be opened");
    };
    assert!(
        message.starts_with("the database schema is version 1000000, newer than this binary's ")
            && message.ends_with("; upgrade Ferrocore"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_not_a_hang() {
    let started = std::time::Instant::now();
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let Err(StoreError::Backend(message)) = PostgresStore::open("postgres://postgres@127.0.0.1:1/ferrocore").await
    else {
        panic!("no server, no store");
    };
    assert!(message.contains("cannot connect to PostgreSQL"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Runs `n` copies of `f` at once on the shared store and returns their results in task order.
async fn race<T, F, Fut>(store: &Arc<PostgresStore>, n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<PostgresStore>, usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let mut set = JoinSet::new();
    for i in 0..n {
        let fut = f(Arc::clone(store), i);
        set.spawn(async move { (i, fut.await) });
    }
    let mut results = set.join_all().await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_config_updates_of_one_version_apply_once() {
    let db = test_db!();
    let store = Arc::new(db.open().await);
    let r = registry("race-cfg", "reg");
    store.create_registry(&r).await.unwrap();
    let dev = store.create_device(new_device(&r.name, "dev", false)).await.unwrap().num_id;

    let outcomes = race(&store, 8, move |s, i| async move {
        s.modify_config(dev, Some(1), format!("from task {i}").as_bytes(), Timestamp(i as i64)).await.unwrap()
    })
    .await;
    let applied: Vec<_> = outcomes.iter().filter(|o| matches!(o, ConfigUpdate::Applied(_))).collect();
    assert_eq!(applied.len(), 1, "exactly one writer wins version 2: {outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(o, ConfigUpdate::Applied(c) if c.version == 2)
            || *o == ConfigUpdate::VersionMismatch { current: 2 }),
        "the others see the version that moved: {outcomes:?}"
    );
    let versions: Vec<i64> = store.list_config_versions(dev, 100).await.unwrap().iter().map(|c| c.version).collect();
    assert_eq!(versions, [2, 1]);

    // Unconditional updates all apply, each with a version of its own, and history stays trimmed.
    let outcomes =
        race(&store, 12, move |s, _| async move { s.modify_config(dev, None, b"x", Timestamp(0)).await.unwrap() })
            .await;
    let mut given: Vec<i64> = outcomes
        .iter()
        .map(|o| match o {
            ConfigUpdate::Applied(c) => c.version,
            other => panic!("an unconditional update applies: {other:?}"),
        })
        .collect();
    given.sort_unstable();
    assert_eq!(given, (3..=14).collect::<Vec<_>>());
    let versions: Vec<i64> = store.list_config_versions(dev, 100).await.unwrap().iter().map(|c| c.version).collect();
    assert_eq!(versions, (5..=14).rev().collect::<Vec<_>>(), "ten newest kept");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_binds_keep_the_limits() {
    let db = test_db!();
    let store = Arc::new(db.open().await);
    let r = registry("race-bind", "reg");
    store.create_registry(&r).await.unwrap();
    let dev = store.create_device(new_device(&r.name, "dev", false)).await.unwrap().num_id;
    let gw = store.create_device(new_device(&r.name, "gw-main", true)).await.unwrap().num_id;

    let outcomes = race(&store, 8, move |s, _| async move { s.bind(gw, dev).await.unwrap() }).await;
    assert_eq!(outcomes.iter().filter(|o| **o == BindOutcome::Bound).count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| **o == BindOutcome::AlreadyBound).count(), 7, "{outcomes:?}");
    assert!(store.unbind(gw, dev).await.unwrap());

    // More gateways than a device may have, all binding it at once.
    let extra = 4;
    let mut gateways = Vec::new();
    for i in 0..MAX_GATEWAYS_PER_DEVICE as usize + extra {
        gateways.push(store.create_device(new_device(&r.name, &format!("gw-{i:02}"), true)).await.unwrap().num_id);
    }
    let gateways = Arc::new(gateways);
    let outcomes = race(&store, gateways.len(), {
        let gateways = Arc::clone(&gateways);
        move |s, i| {
            let g = gateways[i];
            async move { s.bind(g, dev).await.unwrap() }
        }
    })
    .await;
    let bound = outcomes.iter().filter(|o| **o == BindOutcome::Bound).count();
    assert_eq!(bound, MAX_GATEWAYS_PER_DEVICE as usize, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| **o == BindOutcome::DeviceFull).count(), extra, "{outcomes:?}");
    let query = DeviceQuery {
        registry: r.name.clone(),
        device_ids: vec![],
        num_ids: vec![],
        gateway: GatewayFilter::GatewaysOf(dev),
        after: None,
        id_prefix: None,
        limit: 100,
    };
    assert_eq!(store.list_devices(&query).await.unwrap().len(), MAX_GATEWAYS_PER_DEVICE as usize);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_succeed_once() {
    let db = test_db!();
    let store = Arc::new(db.open().await);
    let r = registry("race-create", "reg");
    let outcomes = race(&store, 6, {
        let r = r.clone();
        move |s, _| {
            let r = r.clone();
            async move { s.create_registry(&r).await }
        }
    })
    .await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    assert!(outcomes.iter().all(|o| matches!(o, Ok(()) | Err(StoreError::AlreadyExists))), "{outcomes:?}");

    let outcomes = race(&store, 6, {
        let name = r.name.clone();
        move |s, _| {
            let d = new_device(&name, "dev", false);
            async move { s.create_device(d).await.map(|d| d.num_id) }
        }
    })
    .await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    assert!(outcomes.iter().all(|o| matches!(o, Ok(_) | Err(StoreError::AlreadyExists))), "{outcomes:?}");
    let num = outcomes.into_iter().find_map(Result::ok).unwrap();
    assert!((1_000_000_000_000_000..9_000_000_000_000_000).contains(&num.0), "16 digits: {num:?}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_state_batches_keep_the_ten_newest() {
    let db = test_db!();
    let store = Arc::new(db.open().await);
    let r = registry("race-state", "reg");
    store.create_registry(&r).await.unwrap();
    let dev = store.create_device(new_device(&r.name, "dev", false)).await.unwrap().num_id;
    // Many small batches from several tasks, interleaved: each trims with the others in flight.
    let (tasks, rounds) = (8, 8);
    race(&store, tasks, move |s, i| async move {
        for round in 0..rounds {
            let t = (round * tasks + i) as i64;
            let batch = [(dev, DeviceState { update_time: Timestamp(t), binary_data: vec![i as u8] })];
            s.record_states(&batch).await.unwrap();
        }
    })
    .await;
    let times: Vec<i64> = store.list_states(dev, 100).await.unwrap().iter().map(|s| s.update_time.0).collect();
    let newest = (tasks * rounds) as i64;
    assert_eq!(times, (newest - 10..newest).rev().collect::<Vec<_>>(), "exactly the ten newest of all batches");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_log_appends_are_numbered_in_commit_order() {
    let db = test_db!();
    let store = Arc::new(db.open().await);
    let reg = registry("race-logs", "reg").name;
    let per_task = 50;
    let seqs = race(&store, 8, {
        let reg = reg.clone();
        move |s, i| {
            let entries: Vec<DeviceLogEntry> = (0..per_task)
                .map(|j| DeviceLogEntry {
                    seq: 0,
                    time: Timestamp(j),
                    received: Timestamp(0),
                    registry: reg.clone(),
                    device_id: DeviceId::parse_field("id", &format!("dev-{i}")).unwrap(),
                    device_num_id: NumId(i as u64),
                    severity: LogSeverity::Info,
                    event_type: "PUBLISH".into(),
                    payload: format!(r#"{{"n":{j}}}"#),
                })
                .collect();
            async move { s.append_device_logs(&entries, Timestamp(1)).await.unwrap() }
        }
    })
    .await;
    for batch in &seqs {
        assert_eq!(batch.len(), per_task as usize);
        assert!(batch.windows(2).all(|w| w[1] == w[0] + 1), "a batch gets consecutive numbers: {batch:?}");
    }
    let listed = store.list_device_logs(&DeviceLogQuery::registry(reg, 1000)).await.unwrap();
    let mut all: Vec<u64> = seqs.concat();
    all.sort_unstable();
    assert_eq!(listed.iter().map(|e| e.seq).collect::<Vec<_>>(), all, "every entry, once, in number order");
    store.close().await;
}
