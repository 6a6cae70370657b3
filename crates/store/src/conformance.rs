//! The behaviour every [`Store`] backend must show.
//!
//! A backend's tests call [`run_all`] on a fresh store. Each check works in its own project, so
//! the checks share one store without seeing each other's data.

use crate::{
    BindOutcome, ConfigUpdate, DeviceQuery, DeviceUpdate, GatewayFilter, NewDevice, RegistryDelete, Store, StoreError,
};
use ferrocore_model::{
    DeviceActivity, DeviceCredential, DeviceId, DeviceName, DeviceRef, DeviceState, EventNotificationConfig,
    GatewayAuthMethod, GatewayType, HttpState, LocationId, LocationName, LogLevel, MqttState, NumId, ProjectId,
    PublicKey, PublicKeyFormat, Registry, RegistryId, RegistryName, StateNotificationConfig, Status, Timestamp,
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
}

fn location(project: &str) -> LocationName {
    LocationName {
        project: ProjectId::parse_field("p", project).unwrap(),
        location: LocationId::parse_field("l", "us-central1").unwrap(),
    }
}

fn registry(project: &str, id: &str) -> Registry {
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

fn new_device(reg: &RegistryName, id: &str, gateway: bool) -> NewDevice {
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

    // Numeric ids are unique across registries, and a device is only found in its own registry.
    let r2 = registry("conf-dev", "reg-two");
    store.create_registry(&r2).await.unwrap();
    let d2 = store.create_device(new_device(&r2.name, "dev-1", false)).await.unwrap();
    assert_ne!(d2.num_id, created.num_id);
    assert!(store.get_device(&r2.name.device(DeviceRef::Num(created.num_id))).await.unwrap().is_none());

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
