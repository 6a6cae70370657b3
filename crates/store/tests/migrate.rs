//! `migrate_to_postgres`: a SQLite store filled through the store traits with every kind of record
//! reads back the same, through the same traits, from the PostgreSQL database it was copied into;
//! a second copy into that database is refused; new writes there neither collide with copied keys
//! nor reuse sequence numbers; a wrong source or a value that does not fit leaves PostgreSQL as it
//! was.
//!
//! The tests that need PostgreSQL skip without it (see `postgres::testing`), except under CI.

use ferrocore_model::pubsub::{
    DeadLetterPolicy, IamBinding, IamPolicy, RetryPolicy, Subscription, SubscriptionCursor, SubscriptionName, Topic,
    TopicName, TopicOrigin,
};
use ferrocore_model::{
    ConfigAck, DeviceActivity, DeviceCredential, DeviceId, DeviceName, DeviceRef, DeviceState, EventNotificationConfig,
    GatewayAccess, GatewayAuthMethod, GatewayType, HttpState, LocationId, LocationName, LogLevel, MqttState, NumId,
    ProjectId, PublicKey, PublicKeyCertificateFormat, PublicKeyFormat, Registry, RegistryCredential, RegistryId,
    RegistryName, StateNotificationConfig, Status, Timestamp, X509Details,
};
use ferrocore_store::iam::{ApiTokenRecord, ServiceAccountKeyRecord, ServiceAccountRecord};
use ferrocore_store::migrate_to_postgres::{SQLITE_SCHEMA_VERSION, TABLES, copy_sqlite_to_postgres};
use ferrocore_store::postgres::PostgresStore;
use ferrocore_store::postgres::testing::TestDatabase;
use ferrocore_store::pubsub::Page;
use ferrocore_store::sinks::SinkCursor;
use ferrocore_store::sqlite::SqliteStore;
use ferrocore_store::{
    Backend, DeviceLogEntry, DeviceLogQuery, DeviceQuery, DeviceUpdate, GatewayFilter, IamStore, LogSeverity,
    NewDevice, PubsubStore, SinkStore, Store,
};
use sqlx::{Connection, PgConnection, SqliteConnection};
use std::collections::BTreeMap;
use std::path::Path;

/// Nanosecond times that are not whole seconds, so that any rounding shows.
// Fixtures of their own (not conformance's): every device, registry and time differs, in a
// location other than the default, so a column copied into the wrong place shows.
fn t(n: i64) -> Timestamp {
    Timestamp(1_700_000_000_123_456_789 + n * 1_000_000_007)
}

fn location(project: &str) -> LocationName {
    LocationName {
        project: ProjectId::parse_field("p", project).unwrap(),
        location: LocationId::parse_field("l", "europe-west1").unwrap(),
    }
}

fn registry(project: &str, id: &str) -> Registry {
    Registry {
        name: RegistryName { parent: location(project), registry: RegistryId::parse_field("id", id).unwrap() },
        event_notification_configs: vec![EventNotificationConfig {
            subfolder_matches: String::new(),
            pubsub_topic_name: format!("projects/{project}/topics/events"),
        }],
        state_notification_config: None,
        mqtt_state: MqttState::Enabled,
        http_state: HttpState::Unspecified,
        log_level: LogLevel::Info,
        credentials: vec![],
    }
}

fn new_device(reg: &RegistryName, id: &str, gateway: bool) -> NewDevice {
    NewDevice {
        registry: reg.clone(),
        id: DeviceId::parse_field("id", id).unwrap(),
        credentials: vec![DeviceCredential {
            public_key: PublicKey { format: PublicKeyFormat::Es256Pem, key: format!("KEY OF {id}") },
            expiration_time: Some(t(9_000)),
        }],
        blocked: false,
        log_level: LogLevel::Unspecified,
        metadata: BTreeMap::from([("model".to_owned(), format!("m-{id}"))]),
        gateway_type: if gateway { GatewayType::Gateway } else { GatewayType::NonGateway },
        gateway_auth_method: if gateway { GatewayAuthMethod::AssociationOnly } else { GatewayAuthMethod::Unspecified },
        config_data: format!("initial {id}").into_bytes(),
        created: t(0),
    }
}

fn log_entry(reg: &RegistryName, device: &str, num: NumId, event: &str, time: Timestamp) -> DeviceLogEntry {
    DeviceLogEntry {
        seq: 0,
        time,
        received: Timestamp(0),
        registry: reg.clone(),
        device_id: DeviceId::parse_field("id", device).unwrap(),
        device_num_id: num,
        severity: if event == "ERROR" { LogSeverity::Error } else { LogSeverity::Info },
        event_type: event.into(),
        payload: format!(r#"{{"eventType":"{event}","device":"{device}"}}"#),
    }
}

/// What [`fill`] made, for [`snapshot`] to read back.
#[derive(Default)]
struct Fixture {
    locations: Vec<LocationName>,
    registries: Vec<RegistryName>,
    /// Every device, with its registry.
    devices: Vec<(RegistryName, DeviceId, NumId)>,
    gateways: Vec<NumId>,
    projects: Vec<&'static str>,
    topics: Vec<TopicName>,
    subscriptions: Vec<SubscriptionName>,
    policies: Vec<String>,
    secrets: Vec<&'static str>,
    sinks: Vec<&'static str>,
    /// The highest device log sequence number ever given (some were pruned since).
    last_log_seq: u64,
}

/// Fills a store with every kind of record the server keeps.
async fn fill(store: &SqliteStore) -> Fixture {
    let mut f = Fixture { projects: vec!["mig-a", "mig-b"], ..Default::default() };
    f.locations = vec![location("mig-a"), location("mig-b")];

    // Registries: one with everything set, one plain, one in another project.
    let mut fleet = registry("mig-a", "fleet");
    fleet.state_notification_config =
        Some(StateNotificationConfig { pubsub_topic_name: "projects/mig-a/topics/state".into() });
    fleet.event_notification_configs.push(EventNotificationConfig {
        subfolder_matches: "alerts".into(),
        pubsub_topic_name: "projects/mig-a/topics/alerts".into(),
    });
    fleet.http_state = HttpState::Disabled;
    fleet.log_level = LogLevel::Debug;
    fleet.credentials = vec![RegistryCredential {
        format: PublicKeyCertificateFormat::X509CertificatePem,
        certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        x509_details: Some(X509Details {
            issuer: "CN=ca".into(),
            subject: "CN=ca".into(),
            start_time: Some(t(-100)),
            expiry_time: Some(t(100_000)),
            signature_algorithm: "SHA256-ECDSA".into(),
            public_key_type: "EC".into(),
        }),
    }];
    let backup = registry("mig-a", "backup");
    let mut other = registry("mig-b", "fleet");
    other.mqtt_state = MqttState::Disabled;
    for r in [&fleet, &backup, &other] {
        store.create_registry(r).await.unwrap();
        f.registries.push(r.name.clone());
    }

    // Devices: two gateways, devices bound to them, a blocked one, the same id in another registry.
    let mut create = async |reg: &RegistryName, id: &str, gateway: bool| {
        let d = store.create_device(new_device(reg, id, gateway)).await.unwrap();
        f.devices.push((reg.clone(), d.id.clone(), d.num_id));
        if gateway {
            f.gateways.push(d.num_id);
        }
        d.num_id
    };
    let gw1 = create(&fleet.name, "gw-1", true).await;
    let gw2 = create(&fleet.name, "gw-2", true).await;
    let dev1 = create(&fleet.name, "dev-1", false).await;
    let dev2 = create(&fleet.name, "dev-2", false).await;
    let dev3 = create(&backup.name, "dev-3", false).await;
    let elsewhere = create(&other.name, "dev-1", false).await;
    store
        .update_device(
            dev2,
            &DeviceUpdate {
                credentials: vec![],
                blocked: true,
                log_level: LogLevel::Error,
                metadata: BTreeMap::from([("site".to_owned(), "north".to_owned()), ("floor".into(), "3".into())]),
                gateway_auth_method: GatewayAuthMethod::AssociationAndDeviceAuthToken,
            },
        )
        .await
        .unwrap();
    for (gw, dev) in [(gw1, dev1), (gw1, dev2), (gw2, dev1)] {
        store.bind(gw, dev).await.unwrap();
    }

    // Config history beyond what is kept, acknowledgements, states beyond what is kept.
    for v in 2..=13 {
        store.modify_config(dev1, None, format!("config {v}").as_bytes(), t(v)).await.unwrap();
    }
    store.modify_config(elsewhere, Some(1), &[0, 1, 2, 255], t(20)).await.unwrap();
    store.ack_config(dev1, 13, t(30)).await.unwrap();
    let states: Vec<_> = (0..12)
        .map(|i| (dev1, DeviceState { update_time: t(40 + i), binary_data: vec![i as u8, 0xff] }))
        .chain([(dev3, DeviceState { update_time: t(41), binary_data: b"only".to_vec() })])
        .collect();
    store.record_states(&states).await.unwrap();

    // Activity: every time, an error status, an acknowledgement, a gateway access.
    store
        .record_activity(&[
            (
                dev1,
                DeviceActivity {
                    last_heartbeat_time: Some(t(50)),
                    last_event_time: Some(t(51)),
                    last_state_time: Some(t(52)),
                    last_config_ack_time: Some(t(53)),
                    last_config_send_time: Some(t(54)),
                    last_error_time: Some(t(55)),
                    last_error_status: Some(Status { code: 9, message: "the device said no".into() }),
                    config_acks: vec![ConfigAck { version: 12, time: t(53) }],
                    gateway_access: Some(GatewayAccess {
                        gateway_id: DeviceId::parse_field("g", "gw-1").unwrap(),
                        time: t(56),
                    }),
                },
            ),
            (dev3, DeviceActivity { last_heartbeat_time: Some(t(57)), ..Default::default() }),
        ])
        .await
        .unwrap();

    // Device logs in two batches; pruning by age then takes the newest-numbered entry (its event
    // is the oldest), so the highest number ever given is above every number left.
    let first = store
        .append_device_logs(
            &[
                log_entry(&fleet.name, "dev-1", dev1, "CONNECT", t(60)),
                log_entry(&fleet.name, "dev-1", dev1, "PUBLISH", t(61)),
                log_entry(&other.name, "dev-1", elsewhere, "CONNECT", t(62)),
            ],
            t(63),
        )
        .await
        .unwrap();
    let second = store
        .append_device_logs(
            &[
                log_entry(&fleet.name, "dev-2", dev2, "ERROR", t(64)),
                log_entry(&fleet.name, "dev-1", dev1, "DISCONNECT", t(-500)),
            ],
            t(65),
        )
        .await
        .unwrap();
    assert_eq!(store.prune_device_logs(t(-400), u64::MAX).await.unwrap(), 1);
    f.last_log_seq = *second.last().unwrap();
    assert!(f.last_log_seq > first[2] + 1, "{first:?} {second:?}");

    // Pub/Sub: a topic of its own, a subscription with a cursor, one whose topic was deleted.
    let orders = Topic {
        name: TopicName::parse("t", "projects/mig-a/topics/orders").unwrap(),
        labels: BTreeMap::from([("team".to_owned(), "ops".to_owned())]),
        message_retention_seconds: Some(86_400),
        origin: TopicOrigin::Created,
    };
    let doomed = Topic {
        name: TopicName::parse("t", "projects/mig-b/topics/doomed").unwrap(),
        labels: BTreeMap::new(),
        message_retention_seconds: None,
        origin: TopicOrigin::Created,
    };
    for topic in [&orders, &doomed] {
        store.create_topic(topic).await.unwrap();
    }
    let subscription = |name: &str, topic: &Topic| Subscription {
        name: SubscriptionName::parse("s", name).unwrap(),
        topic: Some(topic.name.clone()),
        ack_deadline_seconds: 30,
        retain_acked_messages: true,
        message_retention_seconds: 3_600,
        labels: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        enable_message_ordering: true,
        expiration_ttl_seconds: Some(86_400 * 31),
        filter: "attributes:deviceId".into(),
        dead_letter_policy: Some(DeadLetterPolicy { dead_letter_topic: topic.name.clone(), max_delivery_attempts: 7 }),
        retry_policy: Some(RetryPolicy { minimum_backoff_seconds: 2, maximum_backoff_seconds: 120 }),
        detached: false,
        created: t(70),
    };
    let orders_sub = subscription("projects/mig-a/subscriptions/orders-sub", &orders);
    let orphan = subscription("projects/mig-b/subscriptions/orphan", &doomed);
    store.create_subscription(&orders_sub, &SubscriptionCursor { floor: 3, acked: vec![] }).await.unwrap();
    store.create_subscription(&orphan, &SubscriptionCursor { floor: 0, acked: vec![] }).await.unwrap();
    let cursor = SubscriptionCursor { floor: 12, acked: vec![(14, 16), (20, 21)] };
    store.save_cursors(&[(orders_sub.name.clone(), cursor)]).await.unwrap();
    assert!(store.delete_topic(&doomed.name).await.unwrap());
    f.topics = vec![
        orders.name.clone(),
        doomed.name.clone(),
        TopicName::parse("t", "projects/mig-a/topics/events").unwrap(),
        TopicName::parse("t", "projects/mig-a/topics/state").unwrap(),
        TopicName::parse("t", "projects/mig-b/topics/events").unwrap(),
    ];
    f.subscriptions = vec![orders_sub.name.clone(), orphan.name.clone()];

    // IAM policies on a topic and on a registry.
    let policy = |role: &str, member: &str, etag: u8| IamPolicy {
        version: 1,
        bindings: vec![IamBinding { role: role.into(), members: vec![member.into()], condition: None }],
        etag: vec![etag, 0, 7],
    };
    store
        .set_iam_policy(orders.name.as_str(), &policy("roles/pubsub.subscriber", "user:ana@example.com", 1))
        .await
        .unwrap();
    let reg_resource = "projects/mig-a/locations/europe-west1/registries/fleet";
    store.set_iam_policy(reg_resource, &policy("roles/cloudiot.viewer", "user:bo@example.com", 2)).await.unwrap();
    f.policies = vec![orders.name.to_string(), reg_resource.into(), "projects/mig-a/topics/none".into()];

    // Identities: tokens (one on a registry), a service account with two keys, server secrets.
    for (id, byte, registry) in [("00000000000000aa", 1u8, None), ("00000000000000bb", 2, Some(reg_resource))] {
        store
            .create_api_token(&ApiTokenRecord {
                id: id.into(),
                hash: [byte; 32],
                principal: format!("user:{id}@example.com"),
                role: "roles/cloudiot.provisioner".into(),
                project: "mig-a".into(),
                registry: registry.map(Into::into),
                create_time: t(80 + i64::from(byte)),
            })
            .await
            .unwrap();
    }
    let email = "ingest@mig-a.iam.gserviceaccount.com";
    store
        .create_service_account(&ServiceAccountRecord {
            email: email.into(),
            project: "mig-a".into(),
            account_id: "ingest".into(),
            unique_id: "104000000000000000001".into(),
            display_name: "Ingest".into(),
            roles: vec!["roles/cloudiot.viewer".into(), "roles/pubsub.subscriber".into()],
            registry: None,
            create_time: t(85),
        })
        .await
        .unwrap();
    for (key_id, at) in [("k1", 86), ("k2", 87)] {
        store
            .add_service_account_key(&ServiceAccountKeyRecord {
                email: email.into(),
                key_id: key_id.into(),
                public_key_der: [b"\x30\x82\x01\x22".as_slice(), key_id.as_bytes()].concat(),
                create_time: t(at),
            })
            .await
            .unwrap();
    }
    for (name, value) in [("token-signing", b"\x00\x01 signing secret \xff".as_slice()), ("other", b"o".as_slice())] {
        assert_eq!(store.server_secret(name, value).await.unwrap(), value);
    }
    f.secrets = vec!["token-signing", "other"];

    // Sinks: one with cursors, one without.
    store.open_sink("nats-out", t(90)).await.unwrap();
    store.open_sink("idle", t(91)).await.unwrap();
    store
        .save_sink_cursors(&[
            SinkCursor { sink: "nats-out".into(), topic: "projects/mig-a/topics/events".into(), next_offset: 1_234 },
            SinkCursor { sink: "nats-out".into(), topic: "projects/mig-a/topics/orders".into(), next_offset: 7 },
        ])
        .await
        .unwrap();
    f.sinks = vec!["nats-out", "idle"];
    f
}

fn query(registry: &RegistryName, gateway: GatewayFilter) -> DeviceQuery {
    DeviceQuery {
        registry: registry.clone(),
        device_ids: vec![],
        num_ids: vec![],
        gateway,
        after: None,
        id_prefix: None,
        limit: 1000,
    }
}

/// Everything a client could read of the fixture's records, each read labelled.
async fn snapshot<S: Backend>(s: &S, f: &Fixture) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut put = |label: String, value: String| out.push((label, value));
    for l in &f.locations {
        put(format!("list_registries {l:?}"), format!("{:?}", s.list_registries(l, None, 100).await.unwrap()));
    }
    for r in &f.registries {
        put(format!("get_registry {r}"), format!("{:?}", s.get_registry(r).await.unwrap()));
        for filter in [GatewayFilter::All, GatewayFilter::GatewaysOnly, GatewayFilter::NonGatewaysOnly] {
            let label = format!("list_devices {r} {filter:?}");
            put(label, format!("{:?}", s.list_devices(&query(r, filter)).await.unwrap()));
        }
        for &(ref reg, _, num) in f.devices.iter().filter(|(reg, _, _)| reg == r) {
            let label = format!("list_devices {reg} GatewaysOf {num:?}");
            put(label, format!("{:?}", s.list_devices(&query(r, GatewayFilter::GatewaysOf(num))).await.unwrap()));
        }
        for &gw in &f.gateways {
            let label = format!("list_devices {r} BoundTo {gw:?}");
            put(label, format!("{:?}", s.list_devices(&query(r, GatewayFilter::BoundTo(gw))).await.unwrap()));
        }
        let logs = s.list_device_logs(&DeviceLogQuery::registry(r.clone(), 1000)).await.unwrap();
        put(format!("list_device_logs {r}"), format!("{logs:?}"));
    }
    for (r, id, num) in &f.devices {
        let by_id: DeviceName = r.device(DeviceRef::parse_field("d", id.as_str()).unwrap());
        let by_num: DeviceName = r.device(DeviceRef::Num(*num));
        let got = s.get_device(&by_id).await.unwrap();
        assert_eq!(got.as_ref().map(|d| d.num_id), Some(*num), "numeric id of {id}");
        put(format!("get_device {r}/{id}"), format!("{got:?}"));
        put(format!("get_device {r}/{num:?}"), format!("{:?}", s.get_device(&by_num).await.unwrap()));
        put(format!("list_config_versions {num:?}"), format!("{:?}", s.list_config_versions(*num, 100).await.unwrap()));
        put(format!("list_states {num:?}"), format!("{:?}", s.list_states(*num, 100).await.unwrap()));
    }
    for p in &f.projects {
        let topics = s.list_topics(Page { project: p, after: None, limit: 100 }).await.unwrap();
        put(format!("list_topics {p}"), format!("{topics:?}"));
        let subs = s.list_subscriptions(Page { project: p, after: None, limit: 100 }).await.unwrap();
        put(format!("list_subscriptions {p}"), format!("{subs:?}"));
    }
    for topic in &f.topics {
        put(format!("get_topic {topic}"), format!("{:?}", s.get_topic(topic).await.unwrap()));
        let subs = s.list_topic_subscriptions(topic, None, 100).await.unwrap();
        put(format!("list_topic_subscriptions {topic}"), format!("{subs:?}"));
    }
    for sub in &f.subscriptions {
        put(format!("get_subscription {sub}"), format!("{:?}", s.get_subscription(sub).await.unwrap()));
    }
    for resource in &f.policies {
        put(format!("get_iam_policy {resource}"), format!("{:?}", s.get_iam_policy(resource).await.unwrap()));
    }
    put("list_api_tokens".into(), format!("{:?}", s.list_api_tokens().await.unwrap()));
    put("list_service_accounts".into(), format!("{:?}", s.list_service_accounts().await.unwrap()));
    put("list_service_account_keys".into(), format!("{:?}", s.list_service_account_keys().await.unwrap()));
    // Existing secrets and sinks: what is stored comes back, the new candidate is ignored.
    for name in &f.secrets {
        let value = s.server_secret(name, b"a candidate that must lose").await.unwrap();
        put(format!("server_secret {name}"), format!("{value:?}"));
    }
    for sink in &f.sinks {
        put(format!("open_sink {sink}"), format!("{:?}", s.open_sink(sink, Timestamp(i64::MAX)).await.unwrap()));
    }
    out
}

fn assert_same(expected: &[(String, String)], got: &[(String, String)]) {
    for (e, g) in expected.iter().zip(got) {
        assert_eq!(e.0, g.0, "the same reads in the same order");
        assert_eq!(e.1, g.1, "{} differs", e.0);
    }
    assert_eq!(expected.len(), got.len());
}

/// A filled SQLite store, closed, and what it holds.
async fn filled(dir: &Path) -> (std::path::PathBuf, Fixture, Vec<(String, String)>) {
    let path = dir.join("ferrocore.db");
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let fixture = fill(&sqlite).await;
    let before = snapshot(&sqlite, &fixture).await;
    sqlite.close().await;
    (path, fixture, before)
}

#[tokio::test]
async fn migrate_copies_every_record_so_that_reads_are_unchanged() {
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (path, fixture, before) = filled(dir.path()).await;

    let mut told = Vec::new();
    let report =
        copy_sqlite_to_postgres(&path, &db.url(), |table, rows| told.push((table.to_owned(), rows))).await.unwrap();
    assert_eq!(told, report.tables, "progress tells each table once, in order");
    let tables: Vec<&str> = report.tables.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tables, TABLES, "every table, in foreign-key order");
    for (table, rows) in [
        ("registries", 3),
        ("devices", 6),
        ("device_configs", 10 + 1 + 1 + 1 + 1 + 2),
        ("device_states", 11),
        ("gateway_bindings", 3),
        ("device_logs", 4),
        ("pubsub_subscriptions", 2),
        ("iam_policies", 2),
        ("api_tokens", 2),
        ("service_accounts", 1),
        ("service_account_keys", 2),
        ("server_secrets", 2),
        ("sinks", 2),
        ("sink_cursors", 2),
    ] {
        assert_eq!(report.table(table), Some(rows), "{table}: {report:?}");
    }
    assert!(report.table("pubsub_topics").is_some_and(|n| n >= 5), "{report:?}");

    let pg = PostgresStore::open(&db.url()).await.unwrap();
    let after = snapshot(&pg, &fixture).await;
    assert_same(&before, &after);
    // The SQLite file is left as it was.
    let sqlite = SqliteStore::open(&path).await.unwrap();
    assert_same(&before, &snapshot(&sqlite, &fixture).await);
    sqlite.close().await;

    // A second migrate into the now filled database is refused and changes nothing.
    let err = copy_sqlite_to_postgres(&path, &db.url(), |_, _| panic!("nothing is copied")).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("already holds Ferrocore data") && text.contains("empty database"), "{text}");
    assert_same(&before, &snapshot(&pg, &fixture).await);

    // Writes go on from the copy: a new registry (its generated key past the copied ones), a
    // device in a copied registry, device log entries numbered above every number ever given.
    let fresh = registry("mig-a", "after");
    pg.create_registry(&fresh).await.unwrap();
    assert!(pg.get_registry(&fresh.name).await.unwrap().is_some());
    let reg = &fixture.registries[0];
    let created = pg.create_device(new_device(reg, "dev-new", false)).await.unwrap();
    assert!(fixture.devices.iter().all(|(_, _, n)| *n != created.num_id));
    let got = pg.get_device(&reg.device(DeviceRef::Num(created.num_id))).await.unwrap().unwrap();
    assert_eq!(got, created);
    let gw1 = fixture.gateways[0];
    assert_eq!(pg.bind(gw1, created.num_id).await.unwrap(), ferrocore_store::BindOutcome::Bound);
    let seqs =
        pg.append_device_logs(&[log_entry(reg, "dev-new", created.num_id, "CONNECT", t(100))], t(100)).await.unwrap();
    assert!(seqs[0] > fixture.last_log_seq, "{seqs:?} after {}", fixture.last_log_seq);
    let logs = pg.list_device_logs(&DeviceLogQuery::registry(reg.clone(), 1000)).await.unwrap();
    assert_eq!(logs.last().map(|e| e.seq), Some(seqs[0]), "new entries come after the copied ones");
    pg.close().await;
}

#[tokio::test]
async fn migrate_of_an_empty_store_copies_nothing_and_leaves_the_sequences_alone() {
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferrocore.db");
    SqliteStore::open(&path).await.unwrap().close().await;
    let report = copy_sqlite_to_postgres(&path, &db.url(), |_, _| {}).await.unwrap();
    assert_eq!(report.rows(), 0, "{report:?}");
    assert_eq!(report.tables.len(), TABLES.len());
    let pg = PostgresStore::open(&db.url()).await.unwrap();
    let reg = registry("mig-empty", "reg");
    pg.create_registry(&reg).await.unwrap();
    let d = pg.create_device(new_device(&reg.name, "dev", false)).await.unwrap();
    let seqs = pg.append_device_logs(&[log_entry(&reg.name, "dev", d.num_id, "CONNECT", t(1))], t(1)).await.unwrap();
    assert_eq!(seqs, [1]);
    pg.close().await;
}

#[tokio::test]
async fn migrate_refuses_a_value_that_does_not_fit_and_writes_nothing() {
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = filled(dir.path()).await;
    // A severity beyond PostgreSQL's `integer`, in the last rows of a late table: everything
    // before it was already written in the transaction.
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("UPDATE device_logs SET severity = 5000000000 WHERE seq = (SELECT MAX(seq) FROM device_logs)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let err = copy_sqlite_to_postgres(&path, &db.url(), |_, _| {}).await.unwrap_err().to_string();
    assert!(err.contains("device_logs.severity") && err.contains("5000000000"), "{err}");
    let mut pg = PgConnection::connect(&db.url()).await.unwrap();
    for table in TABLES {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&mut pg)
            .await
            .unwrap();
        assert_eq!(rows, 0, "{table} holds nothing after the failed copy");
    }
    pg.close().await.unwrap();
}

#[tokio::test]
async fn migrate_refuses_a_sqlite_schema_other_than_the_binarys_before_touching_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferrocore.db");
    SqliteStore::open(&path).await.unwrap().close().await;
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let version: i64 =
        sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations").fetch_one(&mut conn).await.unwrap();
    assert_eq!(version, SQLITE_SCHEMA_VERSION, "SQLITE_SCHEMA_VERSION is the newest SQLite migration");
    sqlx::query("DELETE FROM schema_migrations WHERE version = ?").bind(version).execute(&mut conn).await.unwrap();

    // Nothing listens on port 1: the refusal comes before any connection.
    let nowhere = "postgres://nobody@127.0.0.1:1/nothing";
    let err = copy_sqlite_to_postgres(&path, nowhere, |_, _| {}).await.unwrap_err().to_string();
    assert!(err.contains(&format!("schema version {}", version - 1)), "{err}");
    assert!(err.contains("start the server on it once with this binary"), "{err}");

    sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0), (?, 0)")
        .bind(version)
        .bind(version + 1)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let err = copy_sqlite_to_postgres(&path, nowhere, |_, _| {}).await.unwrap_err().to_string();
    assert!(err.contains("newer than this binary's"), "{err}");

    let missing = dir.path().join("elsewhere").join("ferrocore.db");
    let err = copy_sqlite_to_postgres(&missing, nowhere, |_, _| {}).await.unwrap_err().to_string();
    assert!(err.contains("there is no SQLite database at"), "{err}");
    assert!(!missing.exists(), "nothing is created");
}
