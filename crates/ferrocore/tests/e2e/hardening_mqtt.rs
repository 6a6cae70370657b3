//! Issue 10's MQTT findings against the real server on real sockets: devices that stop reading,
//! revocation of their sessions, what an unauthenticated client may hold, what a refusal
//! reveals, the packet rate, and what a shutdown keeps.

use crate::device::*;
use crate::harness::*;
use ferrocore_mqtt_codec::{ConnectReturnCode as Rc, Packet, QoS, SubAckCode};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const PROJECT: &str = "hardening";

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A registry with a telemetry topic and devices `ids`; returns (registry path, client ids).
async fn fleet(s: &TestServer, ids: &[&str]) -> (String, Vec<String>) {
    let reg = s.registry(PROJECT, "fleet").await;
    let mut client_ids = vec![];
    for id in ids {
        s.device(&reg, id, json!({})).await;
        client_ids.push(format!("{reg}/devices/{id}"));
    }
    (reg, client_ids)
}

/// Settings under which only the finding a test is about can close a stalled session.
fn patient(c: &mut ferrocore::server::Config) {
    c.mqtt.write_timeout = Duration::from_secs(60);
    c.mqtt.max_write_buffer = 64 << 20;
}

/// Connects `client_id` with a small receive buffer and subscribes to its commands at QoS 0;
/// then the device stops reading while 8 MiB of commands are sent to it: far more than the
/// socket buffers on both sides hold, so the server's writes to it are stuck.
async fn stalled(s: &TestServer, reg: &str, id: &str, tls: bool, keep_alive: u16) -> MqttClient {
    let addr = if tls { s.mqtts } else { s.mqtt };
    let tcp = tcp_from(addr, None, Some(4096)).await.unwrap();
    let mut c = if tls { MqttClient::tls_over(tcp, &s.ca_pem()).await.unwrap() } else { MqttClient::over(tcp) };
    assert_eq!(c.connect(&format!("{reg}/devices/{id}"), Some(&es256_token(PROJECT)), keep_alive).await, Rc::Accepted);
    let filter = format!("/devices/{id}/commands/#");
    assert_eq!(c.subscribe(&[(filter.as_str(), QoS::AtMostOnce)]).await, [SubAckCode::Granted(QoS::AtMostOnce)]);
    let command = json!({"binaryData": b64(&vec![0x5a; 256 * 1024])});
    let url = format!("{}/v1/{reg}/devices/{id}:sendCommandToDevice", s.base);
    let mut sends = vec![];
    for _ in 0..32 {
        let request = s.client.post(&url).bearer_auth(TOKEN).json(&command).timeout(Duration::from_secs(5));
        sends.push(tokio::spawn(request.send()));
    }
    for send in sends {
        // Whether each is answered 200 or times out depends on the build; all return.
        let _ = send.await.unwrap();
    }
    c
}

/// True once a new connection to `addr` is let in and gets CONNACK 0 for `client_id`.
async fn admitted_within(addr: SocketAddr, ca: Option<&[u8]>, client_id: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(tcp) = tokio::net::TcpStream::connect(addr).await {
            let client = match ca {
                Some(ca) => MqttClient::tls_over(tcp, ca).await.ok(),
                None => Some(MqttClient::over(tcp)),
            };
            if let Some(mut c) = client
                && c.try_connect(client_id, Some(&es256_token(PROJECT))).await == Some(Rc::Accepted)
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `lastErrorStatus` of a device once it satisfies `done`, or the device as it stands after
/// `within`.
async fn error_status_within(s: &TestServer, device: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (st, d) = s.get(device).await;
        assert_eq!(st, StatusCode::OK, "{d}");
        if done(&d["lastErrorStatus"]) || tokio::time::Instant::now() >= deadline {
            return d["lastErrorStatus"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finding 3 (probe: connection alive 8 s past its keep-alive): the keep-alive was only checked
/// between writes, and the write to a device that stopped reading never finished.
#[tokio::test]
async fn a_device_that_stops_reading_is_cut_at_its_keep_alive() {
    let s = TestServer::start_configured(|_| None, patient).await;
    let (reg, _) = fleet(&s, &["mute"]).await;
    let _mute = stalled(&s, &reg, "mute", false, 2).await;
    let status = error_status_within(&s, &format!("{reg}/devices/mute"), Duration::from_secs(6), |e| {
        e["message"].as_str().is_some_and(|m| m.contains("keep-alive"))
    })
    .await;
    assert!(status["message"].as_str().is_some_and(|m| m.contains("keep-alive expired")), "{status}");
    s.stop().await;
}

/// Findings 3 and 4 (probe: still open 5 s after blocking), over TLS: blocking a device whose
/// session is stuck writing ends the session at once. With one connection allowed, a second
/// device gets in only once the blocked one's connection is gone.
#[tokio::test]
async fn blocking_a_device_that_stopped_reading_frees_its_connection_at_once() {
    let s = TestServer::start_configured(
        |_| None,
        |c| {
            patient(c);
            c.mqtt.max_connections = 1;
        },
    )
    .await;
    let (reg, ids) = fleet(&s, &["stuck", "next"]).await;
    let _stuck = stalled(&s, &reg, "stuck", true, 60).await;
    assert!(!admitted_within(s.mqtts, Some(&s.ca_pem()), &ids[1], Duration::ZERO).await, "the one slot is taken");
    let (st, body) = s.patch(&format!("{reg}/devices/stuck?updateMask=blocked"), json!({"blocked": true})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(
        admitted_within(s.mqtts, Some(&s.ca_pem()), &ids[1], Duration::from_secs(3)).await,
        "the blocked device's connection was closed"
    );
    s.stop().await;
}

/// Finding 3 (probe: four takeovers left five sessions open): a new connection of the device
/// closes the old one even while the old one is stuck writing.
#[tokio::test]
async fn a_takeover_closes_a_connection_stuck_writing() {
    let s = TestServer::start_configured(
        |_| None,
        |c| {
            patient(c);
            c.mqtt.max_connections = 2;
        },
    )
    .await;
    let (reg, ids) = fleet(&s, &["twin", "other"]).await;
    let _old = stalled(&s, &reg, "twin", false, 60).await;
    let mut new = MqttClient::plain(s.mqtt).await;
    assert_eq!(new.connect(&ids[0], Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    assert!(admitted_within(s.mqtt, None, &ids[1], Duration::from_secs(3)).await, "the old connection was closed");
    new.send(Packet::PingReq).await;
    assert_eq!(new.recv().await, Packet::PingResp, "the new connection is served");
    s.stop().await;
}

/// Finding 6: a CONNECT announcing 100 KiB used to be buffered (any packet up to ~260 KiB was);
/// now anything over the first-packet limit is refused from its fixed header.
#[tokio::test]
async fn an_oversized_connect_is_refused_before_it_is_buffered() {
    let s = TestServer::start_configured(|_| None, |c| c.mqtt.connect_timeout = Duration::from_secs(10)).await;
    let mut c = MqttClient::plain(s.mqtt).await;
    // CONNECT, remaining length 100 KiB (variable-length encoding), then 8 KiB of it.
    c.send_raw(&[0x10, 0x80, 0x80, 0x06]).await;
    c.send_raw(&vec![0u8; 8 * 1024]).await;
    assert!(c.closed_within(Duration::from_secs(1)).await, "closed at once, not at the CONNECT deadline");
    // A real CONNECT is far below the limit: an RS256 token is answered (refused for this ES256
    // device, not for its size), an ES256 one let in.
    let (_, ids) = fleet(&s, &["small"]).await;
    let rs256 = jwt(&fixture("rsa_private.pem"), PROJECT, now(), now() + 3600);
    let mut refused = MqttClient::plain(s.mqtt).await;
    assert_eq!(refused.connect(&ids[0], Some(&rs256), 60).await, Rc::NotAuthorized);
    let mut ok = MqttClient::plain(s.mqtt).await;
    assert_eq!(ok.connect(&ids[0], Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    s.stop().await;
}

/// Finding 6 (probe: 300 unauthenticated connections took RSS from 15 MB to 95 MB): connections
/// from one source address are capped, those not yet authenticated more tightly. Loopback
/// stands in for distinct hosts with 127.0.0.2 and 127.0.0.3.
#[tokio::test]
async fn connections_per_source_address_are_capped() {
    let s = TestServer::start_configured(
        |_| None,
        |c| {
            c.mqtt.connect_timeout = Duration::from_secs(10);
            c.mqtt.max_unauthenticated_per_ip = 2;
            c.mqtt.max_connections_per_ip = 3;
        },
    )
    .await;
    let (_, ids) = fleet(&s, &["dev-1", "dev-2", "dev-3", "dev-4"]).await;
    let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
    let addr = s.mqtt;
    let from = move |ip: IpAddr| async move { MqttClient::over(tcp_from(addr, Some(ip), None).await.unwrap()) };
    let token = es256_token(PROJECT);

    let mut silent = vec![from(a).await, from(a).await];
    let mut third = from(a).await;
    assert!(third.closed_within(Duration::from_secs(1)).await, "a third unauthenticated connection from 127.0.0.2");
    assert!(!silent[0].closed_within(Duration::from_millis(100)).await, "the first two wait for their CONNECT");
    let mut elsewhere = from(b).await;
    assert_eq!(elsewhere.connect(&ids[0], Some(&token), 60).await, Rc::Accepted, "127.0.0.3 is not affected");

    // Authenticated connections leave the unauthenticated count, not the total.
    assert_eq!(silent[0].connect(&ids[1], Some(&token), 60).await, Rc::Accepted);
    assert_eq!(silent[1].connect(&ids[2], Some(&token), 60).await, Rc::Accepted);
    let mut another = from(a).await;
    assert_eq!(another.connect(&ids[3], Some(&token), 60).await, Rc::Accepted, "three from 127.0.0.2 in all");
    let mut fourth = from(a).await;
    assert!(fourth.closed_within(Duration::from_secs(1)).await, "a fourth from 127.0.0.2");
    drop(silent.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let mut again = from(a).await;
        if !again.closed_within(Duration::from_millis(200)).await {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a closed connection frees its place");
    }
    s.stop().await;
}

/// Finding 8: an existing device with a garbage token got CONNACK 4, a missing one 5, so anyone
/// could list devices. Every refused credential now gets 5, as the HTTP bridge answers 401.
#[tokio::test]
async fn connack_does_not_reveal_whether_a_device_exists() {
    let s = TestServer::start().await;
    let (reg, ids) = fleet(&s, &["real"]).await;
    let ghost = format!("{reg}/devices/ghost");
    let t = now();
    let wrong_key = jwt(&fixture("rsa_private.pem"), PROJECT, t, t + 3600);
    for password in ["garbage", "not.a.jwt", &wrong_key, &es256_token("other-project")] {
        let mut codes = vec![];
        for client_id in [&ids[0], &ghost] {
            let mut c = MqttClient::tls(s.mqtts, &s.ca_pem()).await;
            codes.push(c.connect(client_id, Some(password), 60).await);
        }
        assert_eq!(codes, [Rc::NotAuthorized, Rc::NotAuthorized], "password {password:.20}");
    }
    s.stop().await;
}

/// Finding 11: only PUBLISH and SUBSCRIBE counted against the rate (a burst of 3,000 PINGREQs
/// was accepted). Now every packet does.
#[tokio::test]
async fn every_packet_counts_against_the_rate_limit() {
    let s = TestServer::start().await;
    let (reg, ids) = fleet(&s, &["pinger"]).await;
    let mut c = MqttClient::plain(s.mqtt).await;
    assert_eq!(c.connect(&ids[0], Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    let mut burst = Vec::new();
    for _ in 0..150 {
        burst.extend_from_slice(&[0xc0, 0x00]);
    }
    c.send_raw(&burst).await;
    assert!(c.closed_within(Duration::from_secs(2)).await, "150 PINGREQs in a second close the connection");
    let status =
        error_status_within(&s, &format!("{reg}/devices/pinger"), Duration::from_secs(2), |e| e["code"] == 8).await;
    assert_eq!(status["code"], 8, "RESOURCE_EXHAUSTED: {status}");
    s.stop().await;
}

/// Finding 9 and the config acks of finding 11: what a device did just before a shutdown is in
/// the store after it, though activity (and now config acknowledgements) wait in memory for a
/// flush that, here, never comes on its own.
#[tokio::test]
async fn a_shutdown_keeps_the_last_activity_and_acknowledgements() {
    let slow_flush = |c: &mut ferrocore::server::Config| c.activity_flush_interval = Duration::from_secs(3600);
    let s = TestServer::start_configured(|_| None, slow_flush).await;
    let (reg, ids) = fleet(&s, &["last"]).await;
    let dev = format!("{reg}/devices/last");
    let mut c = MqttClient::plain(s.mqtt).await;
    assert_eq!(c.connect(&ids[0], Some(&es256_token(PROJECT)), 60).await, Rc::Accepted);
    assert_eq!(
        c.subscribe(&[("/devices/last/config", QoS::AtLeastOnce)]).await,
        [SubAckCode::Granted(QoS::AtLeastOnce)]
    );
    let Packet::Publish(config) = c.recv().await else { panic!("the current config") };
    c.send(Packet::PubAck(config.packet_id.unwrap())).await;
    c.publish_acked("/devices/last/events", b"last words").await;
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Packet::PingResp);

    let dir = s.stop_keeping_data().await;
    assert!(c.closed_within(Duration::from_secs(1)).await, "the session ended with the server");
    let s = TestServer::start_in(dir, |_| None, slow_flush).await;
    let (_, d) = s.get(&dev).await;
    for field in ["lastHeartbeatTime", "lastEventTime", "lastConfigAckTime", "lastConfigSendTime"] {
        assert!(d[field].is_string(), "{field}: {d}");
    }
    assert!(d["config"]["deviceAckTime"].is_string(), "{d}");
    let (_, m) = s.get(&format!("projects/{PROJECT}/topics/events/messages?from=earliest")).await;
    assert_eq!(m["messages"][0]["data"], b64(b"last words"), "{m}");
    s.stop().await;
}
