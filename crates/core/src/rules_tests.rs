//! Unit tests of the reference's rules as the core enforces them (issue 12, point 4): the config
//! rate limit on a moved clock, gateway deletion with bound devices, and which changes end a
//! device's live sessions.

use crate::clock::{Clock, ManualClock};
use crate::devices::DeviceInput;
use crate::presence::SessionLink;
use crate::registries::{RegistryFields, RegistryInput};
use crate::testing::Fixture;
use crate::{Code, Settings};
use ferrocore_model::{
    DeviceCredential, GatewayType, MqttState, PublicKey, PublicKeyCertificateFormat, PublicKeyFormat,
    RegistryCredential, Timestamp,
};
use std::sync::Arc;
use std::time::Duration;

const EC_PUBLIC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../auth/tests/fixtures/ec_public.pem"));
const RSA_PUBLIC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../auth/tests/fixtures/rsa_public.pem"));
const CA_CERT: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../auth/tests/fixtures/ca_cert.pem"));

fn credential(format: PublicKeyFormat, key: &str) -> DeviceCredential {
    DeviceCredential { public_key: PublicKey { format, key: key.into() }, expiration_time: None }
}

/// True once the session was told to close.
fn closed(link: &SessionLink) -> bool {
    link.is_ended()
}

#[tokio::test]
async fn config_updates_are_limited_to_one_per_second_per_device() {
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let f = Fixture::with_clock(Settings::default(), clock.clone()).await;
    let other = f
        .core
        .create_device(&f.device.registry, DeviceInput { id: "other".into(), ..Default::default() })
        .await
        .unwrap();

    assert_eq!(f.core.modify_config(&f.name(), 0, b"a".to_vec()).await.unwrap().version, 2);
    let refused = f.core.modify_config(&f.name(), 0, b"b".to_vec()).await.unwrap_err();
    assert_eq!(refused.code, Code::ResourceExhausted);
    assert!(refused.message.contains("at most once per second"), "{}", refused.message);
    f.core.modify_config(&other.name(), 0, b"x".to_vec()).await.expect("each device has its own limit");

    clock.advance(Duration::from_millis(999));
    let refused = f.core.modify_config(&f.name(), 0, b"b".to_vec()).await.unwrap_err();
    assert_eq!(refused.code, Code::ResourceExhausted, "999 ms after the last accepted update");
    clock.advance(Duration::from_millis(1));
    // A refused write (version mismatch) gives its slot back.
    let mismatch = f.core.modify_config(&f.name(), 7, b"b".to_vec()).await.unwrap_err();
    assert_eq!(mismatch.code, Code::FailedPrecondition);
    assert_eq!(f.core.modify_config(&f.name(), 2, b"b".to_vec()).await.unwrap().version, 3);
    let versions = f.core.list_config_versions(&f.name(), 0).await.unwrap();
    assert_eq!(versions.iter().map(|c| c.version).collect::<Vec<_>>(), [3, 2, 1], "refused updates left no trace");
}

#[tokio::test]
async fn a_gateway_with_bound_devices_cannot_be_deleted_until_they_are_unbound() {
    let f = Fixture::new(Settings::default()).await;
    let reg = f.device.registry.clone();
    let gateway = f
        .core
        .create_device(
            &reg,
            DeviceInput { id: "gw-1".into(), gateway_type: GatewayType::Gateway, ..Default::default() },
        )
        .await
        .unwrap();
    f.core.bind_device_to_gateway(&reg, "gw-1", "dev").await.unwrap();

    let refused = f.core.delete_device(&gateway.name()).await.unwrap_err();
    assert_eq!(refused.code, Code::FailedPrecondition);
    assert!(refused.message.contains("unbind"), "{}", refused.message);
    f.core.get_device(&gateway.name()).await.expect("still there");

    f.core.unbind_device_from_gateway(&reg, "gw-1", "dev").await.unwrap();
    f.core.delete_device(&gateway.name()).await.expect("deleted once unbound");

    // A bound device (not a gateway) is deleted with its bindings, as before.
    let gateway = f
        .core
        .create_device(
            &reg,
            DeviceInput { id: "gw-2".into(), gateway_type: GatewayType::Gateway, ..Default::default() },
        )
        .await
        .unwrap();
    f.core.bind_device_to_gateway(&reg, "gw-2", "dev").await.unwrap();
    f.core.delete_device(&f.name()).await.expect("a bound device can be deleted");
    f.core.delete_device(&gateway.name()).await.expect("its binding went with it");
}

#[tokio::test]
async fn replacing_credentials_ends_the_session_and_other_patches_do_not() {
    let f = Fixture::new(Settings::default()).await;
    let creds = vec![credential(PublicKeyFormat::Es256Pem, EC_PUBLIC)];
    let input = DeviceInput { credentials: creds.clone(), ..Default::default() };
    f.core.update_device(&f.name(), input.clone(), "credentials").await.unwrap();

    let link = f.core.presence().attach(f.device.num_id);
    f.core.update_device(&f.name(), input.clone(), "credentials").await.unwrap();
    assert!(!closed(&link), "the same credentials again change nothing");
    f.core.update_device(&f.name(), input.clone(), "metadata,log_level").await.unwrap();
    assert!(!closed(&link), "other fields leave the session");

    let rotated = DeviceInput {
        credentials: vec![credential(PublicKeyFormat::RsaPem, RSA_PUBLIC), creds[0].clone()],
        ..Default::default()
    };
    f.core.update_device(&f.name(), rotated, "credentials").await.unwrap();
    assert!(closed(&link), "replaced credentials end the session");
    assert!(!f.core.presence().is_connected(f.device.num_id));
}

#[tokio::test]
async fn disabling_mqtt_ends_the_registry_sessions_and_a_ca_change_does_not() {
    let f = Fixture::new(Settings::default()).await;
    let reg = f.device.registry.clone();
    let link = f.core.presence().attach(f.device.num_id);

    let ca = RegistryCredential {
        format: PublicKeyCertificateFormat::X509CertificatePem,
        certificate: CA_CERT.into(),
        x509_details: None,
    };
    let with_ca =
        RegistryInput { fields: RegistryFields { credentials: vec![ca], ..Default::default() }, ..Default::default() };
    f.core.update_registry(&reg, with_ca, "credentials").await.unwrap();
    assert!(!closed(&link), "a registry CA change leaves existing devices connected");
    f.core.update_registry(&reg, RegistryInput::default(), "credentials").await.unwrap();
    assert!(!closed(&link), "so does removing the CA");

    let enabled = RegistryInput {
        fields: RegistryFields { mqtt_state: MqttState::Enabled, ..Default::default() },
        ..Default::default()
    };
    f.core.update_registry(&reg, enabled, "mqtt_config").await.unwrap();
    assert!(!closed(&link), "enabling an enabled bridge changes nothing");

    let disabled = RegistryInput {
        fields: RegistryFields { mqtt_state: MqttState::Disabled, ..Default::default() },
        ..Default::default()
    };
    f.core.update_registry(&reg, disabled, "mqtt_config").await.unwrap();
    assert!(closed(&link), "disabling MQTT ends the session");
}

#[tokio::test]
async fn deleting_a_device_ends_its_session() {
    let f = Fixture::new(Settings::default()).await;
    let link = f.core.presence().attach(f.device.num_id);
    f.core.delete_device(&f.name()).await.unwrap();
    assert!(closed(&link));
}

#[tokio::test]
async fn state_reports_are_limited_to_one_per_second_on_the_injected_clock() {
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let f = Fixture::with_clock(Settings::default(), clock.clone()).await;
    let dev = f.authenticated();
    f.core.report_state(&dev, bytes::Bytes::from_static(b"on")).await.unwrap();
    let refused = f.core.report_state(&dev, bytes::Bytes::from_static(b"off")).await.unwrap_err();
    assert_eq!(refused.code, Code::ResourceExhausted);
    clock.advance(Duration::from_secs(1));
    f.core.report_state(&dev, bytes::Bytes::from_static(b"off")).await.unwrap();
    assert!(clock.now() > Timestamp(0));
}
