//! The behaviour every [`Store`] backend must show.
//!
//! A backend's tests call [`run_all`] on a fresh store. Each check works in its own project, so
//! the checks share one store without seeing each other's data.

use crate::{
    BindOutcome, ConfigUpdate, DeviceQuery, DeviceUpdate, GatewayFilter, NewDevice, RegistryDelete, Store, StoreError,
};
use ferrocore_model::{
    ConfigAck, DeviceActivity, DeviceCredential, DeviceId, DeviceName, DeviceRef, DeviceState, EventNotificationConfig,
    GatewayAccess, GatewayAuthMethod, GatewayType, HttpState, LocationId, LocationName, LogLevel, MqttState, NumId,
    ProjectId, PublicKey, PublicKeyFormat, Registry, RegistryId, RegistryName, StateNotificationConfig, Status,
    Timestamp,
};
use std::collections::BTreeMap;

/// Runs every check; panics with the failing check's message.
pub async fn run_all(store: &dyn Store) {
    registries(store).await;
    devices(store).await;
    listing(store).await;
    configs(store).await;
    states_and_activity(store).await;
    bindings(store).await;
    device_logs(store).await;
}

/// Fixtures the backends' own tests build on too: `projects/P/locations/us-central1`.
pub fn location(project: &str) -> LocationName {
    LocationName {
        project: ProjectId::parse_field("p", project).unwrap(),
        location: LocationId::parse_field("l", "us-central1").unwrap(),
    }
}

/// A registry with one telemetry topic (`projects/p/topics/events`), MQTT enabled.
pub fn registry(project: &str, id: &str) -> Registry {
    Registry {
        name: RegistryName { parent: location(project), registry: RegistryId::parse_field("id", id).unwrap() },
        event_notification_configs: vec![EventNotificationConfig {
            subfolder_matches: String::new(),
            pubsub_topic_name: "projects/p/topics/events".into(),
        }],
        state_notification_config: None,
        mqtt_state: MqttState::Enabled,
        http_state: HttpState::Unspecified,
        log_level: LogLevel::Info,
        credentials: vec![],
    }
}

/// A device with one ES256 key, metadata and an initial config; a gateway when `gateway`.
pub fn new_device(reg: &RegistryName, id: &str, gateway: bool) -> NewDevice {
    NewDevice {
        registry: reg.clone(),
        id: DeviceId::parse_field("id", id).unwrap(),
        credentials: vec![DeviceCredential {
            public_key: PublicKey { format: PublicKeyFormat::Es256Pem, key: "KEY".into() },
            expiration_time: Some(Timestamp::from_unix_seconds(2_000_000_000)),
        }],
        blocked: false,
        log_level: LogLevel::Unspecified,
        metadata: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        gateway_type: if gateway { GatewayType::Gateway } else { GatewayType::NonGateway },
        gateway_auth_method: GatewayAuthMethod::Unspecified,
        config_data: b"initial".to_vec(),
        created: Timestamp::from_unix_seconds(1_700_000_000),
    }
}

fn name(reg: &RegistryName, id: &str) -> DeviceName {
    reg.device(DeviceRef::parse_field("d", id).unwrap())
}

async fn registries(store: &dyn Store) {
    let mut r = registry("conf-reg", "reg-a");
    store.create_registry(&r).await.unwrap();
    assert!(matches!(store.create_registry(&r).await, Err(StoreError::AlreadyExists)), "duplicate registry");
    assert_eq!(store.get_registry(&r.name).await.unwrap().as_ref(), Some(&r), "registry round trip");
    // The same id elsewhere is another registry.
    store.create_registry(&registry("conf-reg-other", "reg-a")).await.unwrap();

    for id in ["reg-c", "reg-b", "reg-d"] {
        store.create_registry(&registry("conf-reg", id)).await.unwrap();
    }
    let page = store.list_registries(&location("conf-reg"), None, 2).await.unwrap();
    let ids: Vec<_> = page.iter().map(|r| r.name.registry.to_string()).collect();
    assert_eq!(ids, ["reg-a", "reg-b"], "first page in id order");
    let page = store.list_registries(&location("conf-reg"), Some(&page[1].name.registry), 10).await.unwrap();
    let ids: Vec<_> = page.iter().map(|r| r.name.registry.to_string()).collect();
    assert_eq!(ids, ["reg-c", "reg-d"], "keyset continues after the last id");

    r.state_notification_config = Some(StateNotificationConfig { pubsub_topic_name: "projects/p/topics/st".into() });
    r.mqtt_state = MqttState::Disabled;
    r.event_notification_configs.clear();
    store.update_registry(&r).await.unwrap();
    assert_eq!(store.get_registry(&r.name).await.unwrap().as_ref(), Some(&r), "update replaces fields");
    let missing = registry("conf-reg", "reg-zzz");
    assert!(matches!(store.update_registry(&missing).await, Err(StoreError::NotFound)));

    store.create_device(new_device(&r.name, "dev-1", false)).await.unwrap();
    assert_eq!(store.delete_registry(&r.name).await.unwrap(), RegistryDelete::NotEmpty, "non-empty registry kept");
    let d = store.get_device(&name(&r.name, "dev-1")).await.unwrap().unwrap();
    store.delete_device(d.num_id).await.unwrap();
    assert_eq!(store.delete_registry(&r.name).await.unwrap(), RegistryDelete::Deleted);
    assert_eq!(store.delete_registry(&r.name).await.unwrap(), RegistryDelete::NotFound);
    assert!(store.get_registry(&r.name).await.unwrap().is_none());
}

async fn devices(store: &dyn Store) {
    let r = registry("conf-dev", "reg");
    store.create_registry(&r).await.unwrap();
    let created = store.create_device(new_device(&r.name, "dev-1", false)).await.unwrap();
    assert_eq!(created.config.version, 1, "config starts at version 1");
    assert_eq!(created.config.binary_data, b"initial");
    assert!(matches!(store.create_device(new_device(&r.name, "dev-1", false)).await, Err(StoreError::AlreadyExists)));
    let other = registry("conf-dev", "reg-missing");
    assert!(matches!(store.create_device(new_device(&other.name, "dev-1", false)).await, Err(StoreError::NotFound)));

    let by_id = store.get_device(&name(&r.name, "dev-1")).await.unwrap().unwrap();
    assert_eq!(by_id, created, "read back equals what create returned");
    let by_num = store.get_device(&r.name.device(DeviceRef::Num(created.num_id))).await.unwrap().unwrap();
    assert_eq!(by_num, created, "numeric id resolves");
    for how in [name(&r.name, "dev-1"), r.name.device(DeviceRef::Num(created.num_id))] {
        let login = store.get_device_login(&how).await.unwrap();
        assert_eq!(login, Some(crate::DeviceLogin::from(created.clone())), "login read of {how}");
    }
    assert!(store.get_device_login(&name(&r.name, "dev-absent")).await.unwrap().is_none());

    // Numeric ids are unique across registries, and a device is only found in its own registry.
    let r2 = registry("conf-dev", "reg-two");
    store.create_registry(&r2).await.unwrap();
    let d2 = store.create_device(new_device(&r2.name, "dev-1", false)).await.unwrap();
    assert_ne!(d2.num_id, created.num_id);
    assert!(store.get_device(&r2.name.device(DeviceRef::Num(created.num_id))).await.unwrap().is_none());
    assert!(store.get_device_login(&r2.name.device(DeviceRef::Num(created.num_id))).await.unwrap().is_none());

    let update = DeviceUpdate {
        credentials: vec![],
        blocked: true,
        log_level: LogLevel::Debug,
        metadata: BTreeMap::new(),
        gateway_auth_method: GatewayAuthMethod::AssociationOnly,
    };
    store.update_device(created.num_id, &update).await.unwrap();
    let d = store.get_device(&name(&r.name, "dev-1")).await.unwrap().unwrap();
    assert!(d.blocked && d.credentials.is_empty() && d.metadata.is_empty());
    let login = store.get_device_login(&name(&r.name, "dev-1")).await.unwrap().unwrap();
    assert_eq!(login, crate::DeviceLogin::from(d.clone()), "the login read sees the update");
    assert_eq!(
        (d.log_level, d.gateway_config.gateway_auth_method),
        (LogLevel::Debug, GatewayAuthMethod::AssociationOnly)
    );
    assert_eq!(d.config, created.config, "update leaves config alone");

    store.delete_device(created.num_id).await.unwrap();
    assert!(store.get_device(&name(&r.name, "dev-1")).await.unwrap().is_none());
    assert!(matches!(store.delete_device(created.num_id).await, Err(StoreError::NotFound)));
    assert!(matches!(store.update_device(created.num_id, &update).await, Err(StoreError::NotFound)));
}

fn query(reg: &RegistryName) -> DeviceQuery {
    DeviceQuery {
        registry: reg.clone(),
        device_ids: vec![],
        num_ids: vec![],
        gateway: GatewayFilter::All,
        after: None,
        id_prefix: None,
        limit: 100,
    }
}

async fn listing(store: &dyn Store) {
    let r = registry("conf-list", "reg");
    store.create_registry(&r).await.unwrap();
    let mut nums = BTreeMap::new();
    for id in ["dev-c", "dev-a", "gw-1", "dev-b", "gw-2"] {
        let d = store.create_device(new_device(&r.name, id, id.starts_with("gw"))).await.unwrap();
        nums.insert(id, d.num_id);
    }
    let ids = |v: Vec<ferrocore_model::Device>| v.into_iter().map(|d| d.id.to_string()).collect::<Vec<_>>();

    assert_eq!(ids(store.list_devices(&query(&r.name)).await.unwrap()), ["dev-a", "dev-b", "dev-c", "gw-1", "gw-2"]);
    let mut q = query(&r.name);
    q.limit = 2;
    q.after = Some(DeviceId::parse_field("id", "dev-b").unwrap());
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["dev-c", "gw-1"], "keyset page");

    let prefix = |p: &str| Some(p.to_owned());
    let mut q = query(&r.name);
    q.id_prefix = prefix("dev");
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["dev-a", "dev-b", "dev-c"], "prefix");
    q.after = Some(DeviceId::parse_field("id", "dev-a").unwrap());
    q.limit = 1;
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["dev-b"], "prefix and keyset page");
    let mut q = query(&r.name);
    q.id_prefix = prefix("gw-2");
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["gw-2"], "a whole id is its own prefix");
    q.id_prefix = prefix("gw-");
    q.gateway = GatewayFilter::All;
    q.device_ids = vec![DeviceId::parse_field("id", "dev-a").unwrap(), DeviceId::parse_field("id", "gw-1").unwrap()];
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["gw-1"], "prefix and ids combine");
    let mut q = query(&r.name);
    q.id_prefix = prefix("Dev");
    assert!(store.list_devices(&q).await.unwrap().is_empty(), "ids are case-sensitive");
    q.id_prefix = prefix("g");
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["gw-1", "gw-2"], "one character is a prefix too");

    let mut q = query(&r.name);
    q.device_ids = vec![DeviceId::parse_field("id", "dev-c").unwrap()];
    q.num_ids = vec![nums["gw-2"], NumId(42)];
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["dev-c", "gw-2"], "id filters are a union");

    let mut q = query(&r.name);
    q.gateway = GatewayFilter::GatewaysOnly;
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["gw-1", "gw-2"]);
    q.gateway = GatewayFilter::NonGatewaysOnly;
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["dev-a", "dev-b", "dev-c"]);

    assert_eq!(store.bind(nums["gw-1"], nums["dev-a"]).await.unwrap(), BindOutcome::Bound);
    assert_eq!(store.bind(nums["gw-1"], nums["dev-c"]).await.unwrap(), BindOutcome::Bound);
    assert_eq!(store.bind(nums["gw-2"], nums["dev-a"]).await.unwrap(), BindOutcome::Bound);
    q.gateway = GatewayFilter::BoundTo(nums["gw-1"]);
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["dev-a", "dev-c"]);
    q.gateway = GatewayFilter::GatewaysOf(nums["dev-a"]);
    assert_eq!(ids(store.list_devices(&q).await.unwrap()), ["gw-1", "gw-2"]);

    let other = registry("conf-list", "empty");
    store.create_registry(&other).await.unwrap();
    assert!(store.list_devices(&query(&other.name)).await.unwrap().is_empty(), "lists are per registry");
}

async fn configs(store: &dyn Store) {
    let r = registry("conf-cfg", "reg");
    store.create_registry(&r).await.unwrap();
    let d = store.create_device(new_device(&r.name, "dev", false)).await.unwrap();
    let t = |s: i64| Timestamp::from_unix_seconds(1_700_000_000 + s);

    let ConfigUpdate::Applied(c2) = store.modify_config(d.num_id, Some(1), b"two", t(1)).await.unwrap() else {
        panic!("matching version must apply");
    };
    assert_eq!((c2.version, c2.cloud_update_time, c2.device_ack_time), (2, Some(t(1)), None));
    assert_eq!(
        store.modify_config(d.num_id, Some(1), b"stale", t(2)).await.unwrap(),
        ConfigUpdate::VersionMismatch { current: 2 },
        "a stale version is refused"
    );
    for i in 3..=14 {
        assert!(matches!(store.modify_config(d.num_id, None, b"x", t(i)).await.unwrap(), ConfigUpdate::Applied(_)));
    }
    let versions: Vec<i64> =
        store.list_config_versions(d.num_id, 100).await.unwrap().iter().map(|c| c.version).collect();
    assert_eq!(versions, (5..=14).rev().collect::<Vec<_>>(), "ten newest, newest first");
    assert_eq!(store.list_config_versions(d.num_id, 3).await.unwrap().len(), 3);

    let got = store.get_device(&name(&r.name, "dev")).await.unwrap().unwrap();
    assert_eq!((got.config.version, got.config.binary_data.as_slice()), (14, b"x".as_slice()));

    store.ack_config(d.num_id, 14, t(100)).await.unwrap();
    let got = store.get_device(&name(&r.name, "dev")).await.unwrap().unwrap();
    assert_eq!(got.config.device_ack_time, Some(t(100)));
    assert_eq!(got.activity.last_config_ack_time, Some(t(100)));

    // Acknowledgements batched with the rest of the activity mark their versions.
    let acks = DeviceActivity {
        last_config_ack_time: Some(t(102)),
        config_acks: vec![ConfigAck { version: 13, time: t(101) }, ConfigAck { version: 12, time: t(102) }],
        ..Default::default()
    };
    store.record_activity(&[(d.num_id, acks)]).await.unwrap();
    let acked: Vec<(i64, Option<Timestamp>)> =
        store.list_config_versions(d.num_id, 3).await.unwrap().iter().map(|c| (c.version, c.device_ack_time)).collect();
    assert_eq!(acked, [(14, Some(t(100))), (13, Some(t(101))), (12, Some(t(102)))]);
    let got = store.get_device(&name(&r.name, "dev")).await.unwrap().unwrap();
    assert_eq!(got.activity.last_config_ack_time, Some(t(102)));

    assert!(matches!(store.modify_config(NumId(7), None, b"x", t(1)).await, Err(StoreError::NotFound)));
}

async fn states_and_activity(store: &dyn Store) {
    let r = registry("conf-state", "reg");
    store.create_registry(&r).await.unwrap();
    let d = store.create_device(new_device(&r.name, "dev", false)).await.unwrap();
    let t = |s: i64| Timestamp::from_unix_seconds(1_700_000_000 + s);

    let batch: Vec<_> = (0..12)
        .map(|i| (d.num_id, DeviceState { update_time: t(i), binary_data: vec![i as u8] }))
        .chain([(NumId(99), DeviceState { update_time: t(0), binary_data: vec![] })])
        .collect();
    store.record_states(&batch).await.unwrap();
    let states = store.list_states(d.num_id, 100).await.unwrap();
    assert_eq!(states.len(), 10, "ten kept");
    assert_eq!(states[0].binary_data, vec![11u8], "newest first");
    let got = store.get_device(&name(&r.name, "dev")).await.unwrap().unwrap();
    assert_eq!(got.state.map(|s| s.update_time), Some(t(11)), "device.state is the latest");

    let a = DeviceActivity {
        last_heartbeat_time: Some(t(5)),
        last_event_time: Some(t(6)),
        last_error_time: Some(t(7)),
        last_error_status: Some(Status { code: 9, message: "first".into() }),
        ..Default::default()
    };
    let older = DeviceActivity {
        last_heartbeat_time: Some(t(1)),
        last_state_time: Some(t(2)),
        last_error_time: Some(t(3)),
        last_error_status: Some(Status { code: 3, message: "older".into() }),
        ..Default::default()
    };
    store.record_activity(&[(d.num_id, a), (NumId(99), DeviceActivity::default())]).await.unwrap();
    store.record_activity(&[(d.num_id, older)]).await.unwrap();
    let got = store.get_device(&name(&r.name, "dev")).await.unwrap().unwrap().activity;
    assert_eq!(got.last_heartbeat_time, Some(t(5)), "a later value is never overwritten by an earlier one");
    assert_eq!(got.last_event_time, Some(t(6)));
    assert_eq!(got.last_state_time, Some(t(2)), "absent values leave others alone");
    assert_eq!(got.last_error_time, Some(t(7)));
    assert_eq!(got.last_error_status.map(|s| s.message), Some("first".to_owned()));

    // The latest gateway access wins, whatever order the batches come in.
    let access = |gw: &str, at: i64| DeviceActivity {
        gateway_access: Some(GatewayAccess { gateway_id: DeviceId::parse_field("g", gw).unwrap(), time: t(at) }),
        ..Default::default()
    };
    store.record_activity(&[(d.num_id, access("gw-late", 9))]).await.unwrap();
    store.record_activity(&[(d.num_id, access("gw-early", 8)), (d.num_id, DeviceActivity::default())]).await.unwrap();
    let got = store.get_device(&name(&r.name, "dev")).await.unwrap().unwrap();
    assert_eq!(got.gateway_config.last_accessed_gateway_id, "gw-late");
    assert_eq!(got.gateway_config.last_accessed_gateway_time, Some(t(9)));
    assert_eq!(got.activity.gateway_access, None, "stored devices carry it in gateway_config");
}

async fn bindings(store: &dyn Store) {
    let r = registry("conf-bind", "reg");
    store.create_registry(&r).await.unwrap();
    let gw = store.create_device(new_device(&r.name, "gw-main", true)).await.unwrap();
    let dev = store.create_device(new_device(&r.name, "dev", false)).await.unwrap();
    assert_eq!(store.bind(gw.num_id, dev.num_id).await.unwrap(), BindOutcome::Bound);
    assert_eq!(store.bind(gw.num_id, dev.num_id).await.unwrap(), BindOutcome::AlreadyBound);
    assert!(store.unbind(gw.num_id, dev.num_id).await.unwrap());
    assert!(!store.unbind(gw.num_id, dev.num_id).await.unwrap(), "second unbind finds nothing");

    for i in 0..crate::MAX_GATEWAYS_PER_DEVICE {
        let g = store.create_device(new_device(&r.name, &format!("gw-{i}"), true)).await.unwrap();
        assert_eq!(store.bind(g.num_id, dev.num_id).await.unwrap(), BindOutcome::Bound);
    }
    assert_eq!(store.bind(gw.num_id, dev.num_id).await.unwrap(), BindOutcome::DeviceFull, "10 gateways at most");

    // Deleting a device removes its bindings.
    store.delete_device(dev.num_id).await.unwrap();
    let mut q = query(&r.name);
    q.gateway = GatewayFilter::BoundTo(gw.num_id);
    assert!(store.list_devices(&q).await.unwrap().is_empty());
}

/// The behaviour every [`crate::PubsubStore`] backend must show. Works in projects of its own.
pub async fn run_pubsub<S: Store + crate::PubsubStore>(store: &S) {
    pubsub_topics(store).await;
    pubsub_subscriptions(store).await;
    pubsub_registry_topics(store).await;
    pubsub_iam(store).await;
}

mod ps {
    pub use ferrocore_model::pubsub::*;
}

fn ps_topic(name: &str) -> ps::Topic {
    ps::Topic {
        name: ps::TopicName::parse("t", name).unwrap(),
        labels: BTreeMap::from([("env".to_owned(), "test".to_owned())]),
        message_retention_seconds: Some(3600),
        origin: ps::TopicOrigin::Created,
    }
}

fn ps_subscription(name: &str, topic: &str) -> ps::Subscription {
    ps::Subscription {
        name: ps::SubscriptionName::parse("s", name).unwrap(),
        topic: Some(ps::TopicName::parse("t", topic).unwrap()),
        ack_deadline_seconds: 10,
        retain_acked_messages: false,
        message_retention_seconds: 604_800,
        labels: BTreeMap::new(),
        enable_message_ordering: true,
        expiration_ttl_seconds: None,
        filter: "attributes:deviceId".into(),
        dead_letter_policy: Some(ps::DeadLetterPolicy {
            dead_letter_topic: ps::TopicName::parse("t", topic).unwrap(),
            max_delivery_attempts: 5,
        }),
        retry_policy: Some(ps::RetryPolicy { minimum_backoff_seconds: 1, maximum_backoff_seconds: 60 }),
        detached: false,
        created: Timestamp::from_unix_seconds(1_700_000_000),
    }
}

async fn pubsub_topics<S: crate::PubsubStore>(store: &S) {
    use crate::pubsub::Page;
    let mut t = ps_topic("projects/conf-ps/topics/alpha");
    store.create_topic(&t).await.unwrap();
    assert!(matches!(store.create_topic(&t).await, Err(StoreError::AlreadyExists)), "duplicate topic");
    assert_eq!(store.get_topic(&t.name).await.unwrap().as_ref(), Some(&t), "topic round trip");
    for id in ["gamma", "beta", "delta"] {
        store.create_topic(&ps_topic(&format!("projects/conf-ps/topics/{id}"))).await.unwrap();
    }
    store.create_topic(&ps_topic("projects/conf-ps-other/topics/alpha")).await.unwrap();
    let page = store.list_topics(Page { project: "conf-ps", after: None, limit: 2 }).await.unwrap();
    let ids: Vec<_> = page.iter().map(|t| t.name.id().to_owned()).collect();
    assert_eq!(ids, ["alpha", "beta"], "topics in name order, one project");
    let rest = store.list_topics(Page { project: "conf-ps", after: Some(&page[1].name), limit: 10 }).await.unwrap();
    let ids: Vec<_> = rest.iter().map(|t| t.name.id().to_owned()).collect();
    assert_eq!(ids, ["delta", "gamma"], "keyset continues");
    t.labels.clear();
    t.message_retention_seconds = None;
    store.update_topic(&t).await.unwrap();
    assert_eq!(store.get_topic(&t.name).await.unwrap().as_ref(), Some(&t), "update replaces labels and retention");
    let missing = ps_topic("projects/conf-ps/topics/missing");
    assert!(matches!(store.update_topic(&missing).await, Err(StoreError::NotFound)));
    assert!(store.delete_topic(&t.name).await.unwrap());
    assert!(!store.delete_topic(&t.name).await.unwrap(), "second delete finds nothing");
    assert!(store.get_topic(&t.name).await.unwrap().is_none());
}

async fn pubsub_subscriptions<S: crate::PubsubStore>(store: &S) {
    use crate::pubsub::Page;
    let topic = ps_topic("projects/conf-sub/topics/events");
    store.create_topic(&topic).await.unwrap();
    let sub = ps_subscription("projects/conf-sub/subscriptions/s-a", "projects/conf-sub/topics/events");
    let cursor = ps::SubscriptionCursor { floor: 7, acked: vec![] };
    store.create_subscription(&sub, &cursor).await.unwrap();
    assert!(matches!(store.create_subscription(&sub, &cursor).await, Err(StoreError::AlreadyExists)));
    let orphan = ps_subscription("projects/conf-sub/subscriptions/s-x", "projects/conf-sub/topics/nope");
    assert!(
        matches!(store.create_subscription(&orphan, &cursor).await, Err(StoreError::NotFound)),
        "a subscription needs its topic"
    );
    assert_eq!(store.get_subscription(&sub.name).await.unwrap(), Some((sub.clone(), cursor.clone())));
    for id in ["s-c", "s-b"] {
        let s = ps_subscription(&format!("projects/conf-sub/subscriptions/{id}"), "projects/conf-sub/topics/events");
        store.create_subscription(&s, &cursor).await.unwrap();
    }
    let page = store.list_subscriptions(Page { project: "conf-sub", after: None, limit: 2 }).await.unwrap();
    let ids: Vec<_> = page.iter().map(|s| s.name.id().to_owned()).collect();
    assert_eq!(ids, ["s-a", "s-b"]);
    let names = store.list_topic_subscriptions(&topic.name, Some(&page[0].name), 10).await.unwrap();
    let ids: Vec<_> = names.iter().map(|n| n.id().to_owned()).collect();
    assert_eq!(ids, ["s-b", "s-c"], "a topic's subscriptions, after a name");

    // Cursors are saved in batches, and a batch naming a deleted subscription still saves the rest.
    let saved = ps::SubscriptionCursor { floor: 12, acked: vec![(14, 16), (20, 21)] };
    let gone = ps::SubscriptionName::parse("s", "projects/conf-sub/subscriptions/gone").unwrap();
    store.save_cursors(&[(sub.name.clone(), saved.clone()), (gone, saved.clone())]).await.unwrap();
    assert_eq!(store.get_subscription(&sub.name).await.unwrap().unwrap().1, saved, "cursor saved");

    let mut changed = sub.clone();
    changed.ack_deadline_seconds = 60;
    changed.filter.clear();
    store.update_subscription(&changed).await.unwrap();
    let (read, read_cursor) = store.get_subscription(&sub.name).await.unwrap().unwrap();
    assert_eq!(read, changed, "settings replaced");
    assert_eq!(read_cursor, saved, "an update keeps the cursor");

    // Deleting the topic detaches its subscriptions; they stay.
    assert!(store.delete_topic(&topic.name).await.unwrap());
    let (detached, _) = store.get_subscription(&sub.name).await.unwrap().unwrap();
    assert_eq!(detached.topic, None, "topic cleared on its deletion");
    assert!(store.delete_subscription(&sub.name).await.unwrap());
    assert!(!store.delete_subscription(&sub.name).await.unwrap());
    assert!(store.get_subscription(&sub.name).await.unwrap().is_none());
}

async fn pubsub_registry_topics<S: Store + crate::PubsubStore>(store: &S) {
    let mut r = registry("conf-regtop", "reg");
    r.event_notification_configs = vec![EventNotificationConfig {
        subfolder_matches: String::new(),
        pubsub_topic_name: "projects/conf-regtop/topics/telemetry".into(),
    }];
    r.state_notification_config =
        Some(StateNotificationConfig { pubsub_topic_name: "projects/conf-regtop/topics/state".into() });
    store.create_registry(&r).await.unwrap();
    for id in ["telemetry", "state"] {
        let name = ps::TopicName::parse("t", &format!("projects/conf-regtop/topics/{id}")).unwrap();
        let t = store.get_topic(&name).await.unwrap().expect("a registry creates the topics it names");
        assert_eq!(t.origin, ps::TopicOrigin::Registry);
    }
    // A topic created first keeps its origin and labels when a registry names it later.
    let first = ps_topic("projects/conf-regtop/topics/created-first");
    store.create_topic(&first).await.unwrap();
    r.event_notification_configs
        .push(EventNotificationConfig { subfolder_matches: "sub".into(), pubsub_topic_name: first.name.to_string() });
    store.update_registry(&r).await.unwrap();
    assert_eq!(store.get_topic(&first.name).await.unwrap().as_ref(), Some(&first));
}

async fn pubsub_iam<S: crate::PubsubStore>(store: &S) {
    let resource = "projects/conf-iam/topics/t1";
    assert!(store.get_iam_policy(resource).await.unwrap().is_none());
    let policy = ps::IamPolicy {
        version: 1,
        bindings: vec![ps::IamBinding {
            role: "roles/pubsub.publisher".into(),
            members: vec!["serviceAccount:cloud-iot@system.gserviceaccount.com".into()],
            condition: None,
        }],
        etag: vec![1, 2, 3],
    };
    store.set_iam_policy(resource, &policy).await.unwrap();
    assert_eq!(store.get_iam_policy(resource).await.unwrap(), Some(policy.clone()));
    let replaced = ps::IamPolicy { bindings: vec![], etag: vec![4], ..policy };
    store.set_iam_policy(resource, &replaced).await.unwrap();
    assert_eq!(store.get_iam_policy(resource).await.unwrap(), Some(replaced));
    store.delete_iam_policy(resource).await.unwrap();
    assert!(store.get_iam_policy(resource).await.unwrap().is_none());
}

/// The behaviour every [`crate::SinkStore`] backend must show. Uses sink names of its own.
pub async fn run_sinks<S: crate::SinkStore>(store: &S) {
    use crate::sinks::SinkCursor;
    let cursor =
        |sink: &str, topic: &str, next_offset| SinkCursor { sink: sink.into(), topic: topic.into(), next_offset };
    let (created, cursors) = store.open_sink("conformance-a", Timestamp(1_000)).await.unwrap();
    assert_eq!((created, cursors), (Timestamp(1_000), vec![]));
    // A sink keeps the time it was first seen.
    let (created, _) = store.open_sink("conformance-a", Timestamp(9_000)).await.unwrap();
    assert_eq!(created, Timestamp(1_000));
    store.open_sink("conformance-b", Timestamp(2_000)).await.unwrap();

    store.save_sink_cursors(&[]).await.unwrap();
    store
        .save_sink_cursors(&[
            cursor("conformance-a", "projects/p/topics/t2", 5),
            cursor("conformance-a", "projects/p/topics/t1", 7),
            cursor("conformance-b", "projects/p/topics/t1", 3),
        ])
        .await
        .unwrap();
    // The last write wins: a sink whose topic log was replaced follows it back.
    store
        .save_sink_cursors(&[
            cursor("conformance-a", "projects/p/topics/t1", 6),
            cursor("conformance-a", "projects/p/topics/t2", 9),
        ])
        .await
        .unwrap();
    let (_, a) = store.open_sink("conformance-a", Timestamp(9_000)).await.unwrap();
    assert_eq!(
        a,
        vec![cursor("conformance-a", "projects/p/topics/t1", 6), cursor("conformance-a", "projects/p/topics/t2", 9)]
    );
    let (created, b) = store.open_sink("conformance-b", Timestamp(9_000)).await.unwrap();
    assert_eq!((created, b), (Timestamp(2_000), vec![cursor("conformance-b", "projects/p/topics/t1", 3)]));
}

/// Device log entries: appended in order, read oldest first per registry with filters and a
/// keyset, pruned by age and by row cap.
async fn device_logs(store: &dyn Store) {
    use crate::{DeviceLogEntry, DeviceLogQuery, LogSeverity};
    let reg = registry("conformance-logs", "reg").name;
    let other = registry("conformance-logs", "other").name;
    let entry = |reg: &RegistryName, device: &str, n: u64, severity, event: &str, time: i64| DeviceLogEntry {
        seq: 0,
        time: Timestamp(time),
        received: Timestamp(0),
        registry: reg.clone(),
        device_id: DeviceId::parse_field("id", device).unwrap(),
        device_num_id: NumId(n),
        severity,
        event_type: event.into(),
        payload: format!(r#"{{"eventType":"{event}"}}"#),
    };
    let query = |reg: &RegistryName| DeviceLogQuery::registry(reg.clone(), 100);
    assert!(store.append_device_logs(&[], Timestamp(1)).await.unwrap().is_empty());
    let seqs = store
        .append_device_logs(
            &[
                entry(&reg, "dev-1", 1, LogSeverity::Info, "CONNECT", 1_000),
                entry(&reg, "dev-1", 1, LogSeverity::Debug, "PUBLISH", 2_000),
                entry(&other, "dev-9", 9, LogSeverity::Info, "CONNECT", 2_500),
                entry(&reg, "dev-2", 2, LogSeverity::Error, "PUBLISH", 3_000),
            ],
            Timestamp(5_000),
        )
        .await
        .unwrap();
    store
        .append_device_logs(&[entry(&reg, "dev-1", 1, LogSeverity::Info, "DISCONNECT", 4_000)], Timestamp(6_000))
        .await
        .unwrap();

    let all = store.list_device_logs(&query(&reg)).await.unwrap();
    let events: Vec<&str> = all.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(events, ["CONNECT", "PUBLISH", "PUBLISH", "DISCONNECT"], "one registry's, oldest first");
    assert_eq!(seqs.len(), 4, "a sequence number per entry");
    assert_eq!([seqs[0], seqs[1], seqs[3]], [all[0].seq, all[1].seq, all[2].seq], "in the entries' order");
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "sequence numbers increase");
    assert_eq!(all[0].received, Timestamp(5_000));
    assert_eq!(all[3].received, Timestamp(6_000));
    assert_eq!(all[1].payload, r#"{"eventType":"PUBLISH"}"#);
    assert_eq!(
        (all[2].device_id.as_str(), all[2].device_num_id, all[2].severity),
        ("dev-2", NumId(2), LogSeverity::Error)
    );

    let mut q = query(&reg);
    q.device_id = Some(DeviceId::parse_field("id", "dev-1").unwrap());
    assert_eq!(store.list_device_logs(&q).await.unwrap().len(), 3, "by device");
    let mut q = query(&reg);
    q.min_severity = Some(LogSeverity::Info);
    assert_eq!(store.list_device_logs(&q).await.unwrap().len(), 3, "DEBUG left out");
    q.min_severity = Some(LogSeverity::Error);
    assert_eq!(store.list_device_logs(&q).await.unwrap().len(), 1);
    let mut q = query(&reg);
    q.event_type = Some("PUBLISH".into());
    assert_eq!(store.list_device_logs(&q).await.unwrap().len(), 2, "by event type");
    let mut q = query(&reg);
    q.start_time = Some(Timestamp(3_000));
    assert_eq!(store.list_device_logs(&q).await.unwrap().len(), 2, "from a time on");
    let mut q = query(&reg);
    q.limit = 2;
    let page = store.list_device_logs(&q).await.unwrap();
    assert_eq!(page.len(), 2);
    q.after = Some(page[1].seq);
    let rest = store.list_device_logs(&q).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), ["PUBLISH", "DISCONNECT"], "keyset");

    // Age first: the two oldest of the store go (one in each registry's time range)...
    let gone = store.prune_device_logs(Timestamp(2_001), u64::MAX).await.unwrap();
    assert!(gone >= 2, "entries older than the cut are deleted ({gone})");
    let left = store.list_device_logs(&query(&reg)).await.unwrap();
    assert_eq!(left.iter().map(|e| e.time.0).collect::<Vec<_>>(), [3_000, 4_000]);
    assert_eq!(store.list_device_logs(&query(&other)).await.unwrap().len(), 1);
    // ...then the cap keeps the newest.
    store.prune_device_logs(Timestamp(0), 1).await.unwrap();
    let left = store.list_device_logs(&query(&reg)).await.unwrap();
    assert_eq!(left.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), ["DISCONNECT"]);
    assert!(store.list_device_logs(&query(&other)).await.unwrap().is_empty());
}

/// The behaviour every [`crate::IamStore`] backend must show. Its records are all in project
/// `conformance-iam` (and secrets named `conformance-*`), and it only looks at those, so it can
/// share a store; it leaves some behind for a backend's reopen test.
pub async fn run_iam<S: crate::IamStore>(store: &S) {
    iam_tokens(store).await;
    iam_service_accounts(store).await;
    iam_server_secrets(store).await;
}

const IAM_PROJECT: &str = "conformance-iam";

fn iam_token(id: &str, hash_byte: u8, time: i64, registry: Option<&str>) -> crate::iam::ApiTokenRecord {
    crate::iam::ApiTokenRecord {
        id: id.into(),
        hash: [hash_byte; 32],
        principal: format!("user:{id}@example.com"),
        role: "roles/cloudiot.provisioner".into(),
        project: IAM_PROJECT.into(),
        registry: registry.map(Into::into),
        create_time: Timestamp(time),
    }
}

async fn iam_own_tokens<S: crate::IamStore>(store: &S) -> Vec<crate::iam::ApiTokenRecord> {
    store.list_api_tokens().await.unwrap().into_iter().filter(|t| t.project == IAM_PROJECT).collect()
}

/// API tokens: unique by id and by hash, listed by creation time then id, deleted once.
async fn iam_tokens<S: crate::IamStore>(store: &S) {
    let reg = "projects/conformance-iam/locations/us-central1/registries/reg";
    let late_b = iam_token("00000000000000bb", 1, 2_000, None);
    let early = iam_token("00000000000000cc", 2, 1_000, Some(reg));
    let late_a = iam_token("00000000000000aa", 3, 2_000, None);
    for t in [&late_b, &early, &late_a] {
        store.create_api_token(t).await.unwrap();
    }
    assert_eq!(iam_own_tokens(store).await, [early.clone(), late_a.clone(), late_b.clone()], "by time, then id");

    let same_id = iam_token(&late_a.id, 9, 3_000, None);
    assert!(matches!(store.create_api_token(&same_id).await, Err(StoreError::AlreadyExists)), "id taken");
    let same_hash = iam_token("00000000000000dd", 3, 3_000, None);
    assert!(matches!(store.create_api_token(&same_hash).await, Err(StoreError::AlreadyExists)), "hash taken");
    assert_eq!(iam_own_tokens(store).await.len(), 3, "a refused token is not stored");

    assert!(store.delete_api_token(&late_b.id).await.unwrap());
    assert!(!store.delete_api_token(&late_b.id).await.unwrap(), "already gone");
    assert!(!store.delete_api_token("ffffffffffffffff").await.unwrap(), "never existed");
    // Its hash is free again.
    store.create_api_token(&iam_token("00000000000000ee", 1, 4_000, None)).await.unwrap();
    let ids: Vec<String> = iam_own_tokens(store).await.into_iter().map(|t| t.id).collect();
    assert_eq!(ids, ["00000000000000cc", "00000000000000aa", "00000000000000ee"]);
    assert_eq!(iam_own_tokens(store).await[0].registry.as_deref(), Some(reg), "registry round trip");
}

fn iam_account(name: &str, roles: &[&str], registry: Option<&str>, time: i64) -> crate::iam::ServiceAccountRecord {
    crate::iam::ServiceAccountRecord {
        email: format!("{name}@{IAM_PROJECT}.iam.gserviceaccount.com"),
        project: IAM_PROJECT.into(),
        account_id: name.into(),
        unique_id: format!("1{:020}", time),
        display_name: format!("The {name} account"),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        registry: registry.map(Into::into),
        create_time: Timestamp(time),
    }
}

fn iam_key(email: &str, key_id: &str, time: i64) -> crate::iam::ServiceAccountKeyRecord {
    crate::iam::ServiceAccountKeyRecord {
        email: email.into(),
        key_id: key_id.into(),
        public_key_der: format!("der of {key_id}").into_bytes(),
        create_time: Timestamp(time),
    }
}

async fn iam_own_accounts<S: crate::IamStore>(store: &S) -> Vec<crate::iam::ServiceAccountRecord> {
    store.list_service_accounts().await.unwrap().into_iter().filter(|a| a.project == IAM_PROJECT).collect()
}

async fn iam_own_keys<S: crate::IamStore>(store: &S) -> Vec<crate::iam::ServiceAccountKeyRecord> {
    let domain = format!("@{IAM_PROJECT}.iam.gserviceaccount.com");
    store.list_service_account_keys().await.unwrap().into_iter().filter(|k| k.email.ends_with(&domain)).collect()
}

/// Service accounts and their keys: unique emails and key ids, keys only on existing accounts,
/// deleting an account deletes its keys.
async fn iam_service_accounts<S: crate::IamStore>(store: &S) {
    let reg = "projects/conformance-iam/locations/us-central1/registries/reg";
    let ingest = iam_account("ingest", &["roles/cloudiot.viewer", "roles/pubsub.subscriber"], None, 2_000);
    let admin = iam_account("admin-bot", &["roles/cloudiot.admin"], Some(reg), 3_000);
    let bare = iam_account("bare-acct", &[], None, 1_000);
    for a in [&ingest, &admin, &bare] {
        store.create_service_account(a).await.unwrap();
    }
    assert_eq!(iam_own_accounts(store).await, [admin.clone(), bare.clone(), ingest.clone()], "by email");
    let again = iam_account("ingest", &["roles/cloudiot.admin"], Some(reg), 9_000);
    assert!(matches!(store.create_service_account(&again).await, Err(StoreError::AlreadyExists)));
    assert_eq!(iam_own_accounts(store).await[2], ingest, "the first account stays as it was");

    let missing = format!("nobody@{IAM_PROJECT}.iam.gserviceaccount.com");
    let k = |email: &str, id: &str, time| iam_key(email, id, time);
    assert!(
        matches!(store.add_service_account_key(&k(&missing, &"0".repeat(40), 1)).await, Err(StoreError::NotFound)),
        "no key without its account"
    );
    let (k1, k2, k3) = ("1".repeat(40), "2".repeat(40), "3".repeat(40));
    store.add_service_account_key(&k(&ingest.email, &k2, 2_000)).await.unwrap();
    store.add_service_account_key(&k(&ingest.email, &k1, 1_000)).await.unwrap();
    store.add_service_account_key(&k(&admin.email, &k3, 5_000)).await.unwrap();
    assert!(matches!(
        store.add_service_account_key(&k(&ingest.email, &k1, 7_000)).await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(
        matches!(store.add_service_account_key(&k(&bare.email, &k1, 7_000)).await, Err(StoreError::AlreadyExists)),
        "key ids are unique across accounts"
    );
    assert_eq!(
        iam_own_keys(store).await,
        [k(&admin.email, &k3, 5_000), k(&ingest.email, &k1, 1_000), k(&ingest.email, &k2, 2_000)],
        "by email, then creation time"
    );

    assert!(!store.delete_service_account_key(&admin.email, &k1).await.unwrap(), "another account's key");
    assert!(store.delete_service_account_key(&ingest.email, &k1).await.unwrap());
    assert!(!store.delete_service_account_key(&ingest.email, &k1).await.unwrap(), "already gone");
    assert_eq!(iam_own_keys(store).await.len(), 2);

    assert!(store.delete_service_account(&ingest.email).await.unwrap());
    assert!(!store.delete_service_account(&ingest.email).await.unwrap(), "already gone");
    assert!(!store.delete_service_account(&missing).await.unwrap(), "never existed");
    assert_eq!(iam_own_keys(store).await, [k(&admin.email, &k3, 5_000)], "its keys went with it");
    assert!(
        matches!(store.add_service_account_key(&k(&ingest.email, &k1, 8_000)).await, Err(StoreError::NotFound)),
        "a deleted account takes no keys"
    );
    // Re-created under the same email, it has none of the old keys, and their ids are free.
    store.create_service_account(&ingest).await.unwrap();
    assert_eq!(iam_own_keys(store).await.len(), 1);
    store.add_service_account_key(&k(&ingest.email, &k2, 9_000)).await.unwrap();
    assert_eq!(iam_own_accounts(store).await, [admin, bare, ingest], "roles and registries round trip");
}

/// Server secrets: the first value stored under a name is the one every caller gets.
async fn iam_server_secrets<S: crate::IamStore>(store: &S) {
    assert_eq!(store.server_secret("conformance-a", b"first").await.unwrap(), b"first");
    assert_eq!(store.server_secret("conformance-a", b"second").await.unwrap(), b"first", "kept, not replaced");
    assert_eq!(store.server_secret("conformance-b", b"other").await.unwrap(), b"other", "one per name");
    let (x, y, z) = tokio::join!(
        store.server_secret("conformance-race", b"x"),
        store.server_secret("conformance-race", b"y"),
        store.server_secret("conformance-race", b"z"),
    );
    let (x, y, z) = (x.unwrap(), y.unwrap(), z.unwrap());
    assert!(x == y && y == z, "concurrent callers agree");
    assert!([&b"x"[..], b"y", b"z"].contains(&x.as_slice()), "and get one of the candidates");
}
