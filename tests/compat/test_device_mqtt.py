"""Devices on the MQTT bridge, connecting as Google's cloudiot_mqtt_example.py did.

Every connection here is the sample's get_client: paho-mqtt with the full device path as client
id, user name "unused", a PyJWT token (RS256 or ES256, aud = project id) as password, and TLS
trusting a CA file (the one the server generated), on `localhost`. What the devices send is then
checked from the cloud side: the embedded topic log and the admin REST API.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import socket
import ssl
import struct
import time

import certifi
import pytest

from compat_support import (
    DEVICE_TIMEOUT_S,
    TIMESTAMP_RE,
    DeviceFixture,
    MqttDevice,
    Rest,
    assert_google_error,
    b64,
    device_with_activity,
    make_device_key,
    read_topic,
    unique,
    wait_for,
    wait_for_config_slot,
)


@pytest.fixture
def fx(rest, tmp_path) -> DeviceFixture:
    return DeviceFixture(rest, tmp_path / "keys")


@pytest.fixture
def connect(server):
    """Opens MQTT connections for a test and closes whatever is left open afterwards.

    `connect(client_id, password)` returns the MqttDevice after CONNACK; its `connack` is the
    return code. TLS on the --mqtts port unless `tls=False` (the plain --mqtt port).
    """
    opened: list[MqttDevice] = []

    def _connect(client_id: str, password: str | None, *, tls: bool = True, host: str = "localhost",
                 keepalive: int = 60, expect: int | None = 0, **kw) -> MqttDevice:
        dev = MqttDevice(
            client_id, password,
            port=server.mqtts_port if tls else server.mqtt_port,
            ca_certs=server.ca_path if tls else None,
            host=host, keepalive=keepalive, **kw,
        )
        opened.append(dev)
        rc = dev.connect()
        if expect is not None:
            assert rc == expect, f"CONNACK {rc}, expected {expect} for {client_id}"
        return dev

    yield _connect
    for dev in opened:
        dev.close()


def payloads(messages: list[dict]) -> list[bytes]:
    return [base64.b64decode(m["data"]) for m in messages]


def get_device(rest: Rest, device: dict) -> dict:
    return rest.ok(rest.get(f"v1/{device['name']}"))


# --- telemetry and state ------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm, certificate", [
    ("RS256", True), ("ES256", False),  # what generate_keys.sh makes and the samples register
    ("RS256", False), ("ES256", True),
], ids=["RSA_X509_PEM", "ES256_PEM", "RSA_PEM", "ES256_X509_PEM"])
def test_telemetry_and_state_reach_their_topics(rest, fx, connect, algorithm, certificate):
    registry = fx.create_registry()
    device, key = fx.create_device(registry, algorithm, certificate)
    dev = connect(fx.client_id(registry, device), fx.jwt(key))
    did = device["id"]

    # What the sample publishes ("{registry}/{device}-payload-{n}"), then a binary payload.
    first = f"{registry['id']}/{did}-payload-1".encode()
    binary = bytes(range(256))
    dev.publish(f"/devices/{did}/events", b"sent with qos 0", qos=0)
    dev.publish(f"/devices/{did}/events", first, qos=1)
    dev.publish(f"/devices/{did}/events/alerts", b"overheating", qos=1)
    dev.publish(f"/devices/{did}/events/rooms/kitchen", binary, qos=1)
    dev.publish(f"/devices/{did}/state", b'{"fan": "on"}', qos=1)

    telemetry = read_topic(rest, fx.topic("telemetry"), expect=3)
    # QoS 0 came first on the same connection, so it is stored before the acknowledged ones.
    assert payloads(telemetry) == [b"sent with qos 0", first, binary]
    assert [m["attributes"] for m in telemetry] == [
        fx.iot_attributes(registry, device),
        fx.iot_attributes(registry, device),
        # No config matches "rooms/kitchen": the default topic, with the subfolder as attribute.
        fx.iot_attributes(registry, device, "rooms/kitchen"),
    ]
    offsets = [int(m["offset"]) for m in telemetry]
    assert offsets == sorted(offsets) and len(set(offsets)) == 3, offsets
    for m in telemetry:
        assert TIMESTAMP_RE.match(m["publishTime"]), m

    alerts = read_topic(rest, fx.topic("alerts"), expect=1)
    assert payloads(alerts) == [b"overheating"]
    assert alerts[0]["attributes"] == fx.iot_attributes(registry, device, "alerts")

    notifications = read_topic(rest, fx.topic("state"), expect=1)
    assert payloads(notifications) == [b'{"fan": "on"}']
    assert notifications[0]["attributes"] == fx.iot_attributes(registry, device)

    states = rest.ok(rest.get(f"v1/{device['name']}/states"))["deviceStates"]
    assert [base64.b64decode(s["binaryData"]) for s in states] == [b'{"fan": "on"}']
    assert TIMESTAMP_RE.match(states[0]["updateTime"]), states

    got = device_with_activity(rest, device, "lastEventTime", "lastStateTime")
    assert base64.b64decode(got["state"]["binaryData"]) == b'{"fan": "on"}'


def test_routing_changes_apply_to_connected_devices(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    dev = connect(fx.client_id(registry, device), fx.jwt(key))
    dev.publish(f"/devices/{device['id']}/events", b"old route", qos=1)
    dev.publish(f"/devices/{device['id']}/state", b"old state route", qos=1)

    rest.ok(rest.patch(f"v1/{registry['name']}", {
        "eventNotificationConfigs": [{"pubsubTopicName": fx.topic("telemetry-v2")}],
        "stateNotificationConfig": {"pubsubTopicName": fx.topic("state-v2")},
    }, params={"updateMask": "eventNotificationConfigs,stateNotificationConfig"}))
    dev.publish(f"/devices/{device['id']}/events", b"new route", qos=1)
    dev.publish(f"/devices/{device['id']}/events/alerts", b"no alerts route any more", qos=1)
    time.sleep(1.05)  # one state per second
    dev.publish(f"/devices/{device['id']}/state", b"new state route", qos=1)

    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [b"old route"]
    assert payloads(read_topic(rest, fx.topic("telemetry-v2"), expect=2)) == [
        b"new route", b"no alerts route any more"]
    assert payloads(read_topic(rest, fx.topic("state"), expect=1)) == [b"old state route"]
    assert payloads(read_topic(rest, fx.topic("state-v2"), expect=1)) == [b"new state route"]


def test_plain_mqtt_listener_serves_the_same_bridge(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "RS256")
    dev = connect(fx.client_id(registry, device), fx.jwt(key), tls=False)
    dev.publish(f"/devices/{device['id']}/events", b"no tls", qos=1)
    telemetry = read_topic(rest, fx.topic("telemetry"), expect=1)
    assert payloads(telemetry) == [b"no tls"]
    assert telemetry[0]["attributes"] == fx.iot_attributes(registry, device)


def test_tls_1_2_as_the_sample_pins_it_and_1_3_by_address(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    cid = fx.client_id(registry, device)
    sample = connect(cid, fx.jwt(key))
    assert sample.client.socket().version() == "TLSv1.2"
    sample.disconnect()
    # A current client negotiates TLS 1.3. The generated certificate also names 127.0.0.1, so
    # connecting by address passes hostname verification.
    current = connect(cid, fx.jwt(key), host="127.0.0.1", tls_version=ssl.PROTOCOL_TLS_CLIENT)
    assert current.client.socket().version() == "TLSv1.3"
    current.publish(f"/devices/{device['id']}/events", b"tls 1.3", qos=1)
    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [b"tls 1.3"]


def test_the_server_certificate_only_verifies_against_the_generated_ca(server, fx):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    # Public roots (certifi) do not vouch for the local CA: the handshake fails on the client.
    dev = MqttDevice(fx.client_id(registry, device), fx.jwt(key), port=server.mqtts_port,
                     ca_certs=certifi.where())
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            dev.connect()
    finally:
        dev.close()


# --- the sample's get_client, packet for packet -------------------------------------------------

def test_sample_get_client_subscribes_before_the_connack(server, rest, fx):
    """get_client() connects and subscribes to config (QoS 1) and commands (QoS 0) at once,
    without waiting for CONNACK. The config must come back with no further traffic from the
    device. (Over TLS paho's packets reach the server in separate reads in practice; the test
    below sends them in one write.)"""
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "RS256")
    did = device["id"]
    rest.ok(rest.post(f"v1/{device['name']}:modifyCloudToDeviceConfig", {"binaryData": b64(b"sample config")}))

    dev = MqttDevice(fx.client_id(registry, device), fx.jwt(key), port=server.mqtts_port,
                     ca_certs=server.ca_path)
    try:
        client = dev.client
        client.connect("localhost", server.mqtts_port)
        client.subscribe(f"/devices/{did}/config", qos=1)
        client.subscribe(f"/devices/{did}/commands/#", qos=0)
        dev.start()
        assert dev.wait_connack() == 0, dev.connack
        got = dev.next_message()
        assert (got.topic, got.payload) == (f"/devices/{did}/config", b"sample config")
    finally:
        dev.close()


def _mqtt_bytes(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _mqtt_packet(first_byte: int, body: bytes) -> bytes:
    n, length = len(body), b""
    while True:
        digit, n = n & 0x7F, n >> 7
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([first_byte]) + length + body


def _read_packets(sock: socket.socket, want: set[int], timeout: float) -> list[tuple[int, bytes]]:
    """(packet type, body) of what the server sends, until every type in `want` arrived."""
    data, packets = b"", []
    deadline = time.monotonic() + timeout
    while not want <= {t for t, _ in packets}:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= 2:
            length, shift, i = 0, 0, 1
            while i < len(data) and data[i] & 0x80:
                length |= (data[i] & 0x7F) << shift
                shift, i = shift + 7, i + 1
            if i >= len(data):
                break
            length |= data[i] << shift
            if len(data) < i + 1 + length:
                break
            packets.append((data[0] >> 4, data[i + 1:i + 1 + length]))
            data = data[i + 1 + length:]
    return packets


def test_packets_sent_together_with_connect_are_served(server, rest, fx):
    """A client that does not wait for CONNACK (paho's connect() followed by subscribe() and
    publish(), as get_client does) can put everything in one TCP segment. Over the plain
    listener, paho itself hit this in 12 of 20 tries here; one write makes it certain."""
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "ES256")
    did = device["id"]
    connect_packet = _mqtt_packet(0x10, _mqtt_bytes(b"MQTT") + bytes([4, 0xC2]) + struct.pack(">H", 60)
                                  + _mqtt_bytes(fx.client_id(registry, device).encode())
                                  + _mqtt_bytes(b"unused") + _mqtt_bytes(fx.jwt(key).encode()))
    subscribe = _mqtt_packet(0x82, struct.pack(">H", 1) + _mqtt_bytes(f"/devices/{did}/config".encode()) + b"\x01")
    publish = _mqtt_packet(0x32, _mqtt_bytes(f"/devices/{did}/events".encode()) + struct.pack(">H", 2) + b"together")
    with socket.create_connection(("127.0.0.1", server.mqtt_port), timeout=DEVICE_TIMEOUT_S) as sock:
        sock.sendall(connect_packet + subscribe + publish)
        packets = _read_packets(sock, {2, 9, 3, 4}, timeout=5)
    types = [t for t, _ in packets]
    assert types[:1] == [2] and packets[0][1] == b"\x00\x00", f"no CONNACK: {packets}"
    assert (9, b"\x00\x01\x01") in packets, f"no SUBACK for the config subscription: {types}"
    assert 3 in types, f"no config PUBLISH: {types}"
    assert (4, b"\x00\x02") in packets, f"no PUBACK for the telemetry: {types}"


# --- config -------------------------------------------------------------------------------------

def test_config_arrives_on_subscribe_and_on_every_update(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "RS256")
    did = device["id"]
    modify = f"v1/{device['name']}:modifyCloudToDeviceConfig"
    rest.ok(rest.post(modify, {"binaryData": b64(b"version two")}))

    dev = connect(fx.client_id(registry, device), fx.jwt(key))
    assert dev.subscribe(f"/devices/{did}/config", qos=1) == [1]
    # The latest config comes right after SUBACK, with QoS 1 so the device acknowledges it.
    first = dev.next_message()
    assert (first.topic, first.payload, first.qos) == (f"/devices/{did}/config", b"version two", 1)

    wait_for_config_slot()
    updated = rest.ok(rest.post(modify, {"binaryData": b64(b"\x00version three\xff")}))
    assert updated["version"] == "3"
    pushed = dev.next_message()
    assert (pushed.topic, pushed.payload, pushed.qos) == (f"/devices/{did}/config", b"\x00version three\xff", 1)

    # paho acknowledges each config after on_message; the server records the time per version.
    def acked():
        versions = rest.ok(rest.get(f"v1/{device['name']}/configVersions"))["deviceConfigs"]
        by_version = {v["version"]: v for v in versions}
        return by_version if all("deviceAckTime" in by_version[v] for v in ("2", "3")) else None

    versions = wait_for(acked, "deviceAckTime on config versions 2 and 3")
    assert sorted(versions) == ["1", "2", "3"]
    assert "deviceAckTime" not in versions["1"], "version 1 was never sent to the device"
    for v in ("2", "3"):
        assert TIMESTAMP_RE.match(versions[v]["deviceAckTime"]), versions[v]
    assert versions["3"]["deviceAckTime"] >= versions["2"]["deviceAckTime"]

    got = device_with_activity(rest, device, "lastConfigAckTime", "lastConfigSendTime")
    assert got["config"]["version"] == "3"
    assert TIMESTAMP_RE.match(got["config"].get("deviceAckTime", "")), got["config"]
    dev.no_message(within=0.3)

    # Once unsubscribed, new versions are no longer pushed.
    dev.unsubscribe(f"/devices/{did}/config")
    wait_for_config_slot()
    rest.ok(rest.post(modify, {"binaryData": b64(b"version four")}))
    dev.no_message(within=0.5)


def test_a_new_device_gets_its_empty_first_config(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    dev = connect(fx.client_id(registry, device), fx.jwt(key))
    # The sample subscribes to config with QoS 1 and to commands with QoS 0, one after the other.
    assert dev.subscribe(f"/devices/{device['id']}/config", qos=1) == [1]
    assert dev.subscribe(f"/devices/{device['id']}/commands/#", qos=0) == [0]
    msg = dev.next_message()
    assert (msg.topic, msg.payload) == (f"/devices/{device['id']}/config", b"")
    wait_for(
        lambda: "deviceAckTime" in rest.ok(rest.get(f"v1/{device['name']}/configVersions"))["deviceConfigs"][0],
        "deviceAckTime on config version 1",
    )


# --- commands -----------------------------------------------------------------------------------

@pytest.mark.parametrize("qos", [1, 0], ids=["qos1", "qos0-as-in-the-sample"])
def test_commands_reach_the_subscribed_device(server, rest, fx, connect, qos):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    did = device["id"]
    send = f"v1/{device['name']}:sendCommandToDevice"

    dev = connect(fx.client_id(registry, device), fx.jwt(key))
    # Connected but not subscribed: the command is refused at once.
    err = assert_google_error(rest.post(send, {"binaryData": b64(b"too early")}), 400, "FAILED_PRECONDITION")
    assert "not subscribed to the commands topic" in err["message"], err

    assert dev.subscribe(f"/devices/{did}/commands/#", qos=qos) == [qos]

    def send_in_thread(body: dict):
        # sendCommandToDevice answers only once the device has the command, so it runs beside
        # the device, like the sample's manager script would.
        own = Rest(server.base_url, server.token)
        return pool.submit(lambda: own.post(send, body))

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        for body, topic, payload in [
            ({"binaryData": b64(b"reboot")}, f"/devices/{did}/commands", b"reboot"),
            ({"binaryData": b64(b"\x01\x02led on"), "subfolder": "settings/led"},
             f"/devices/{did}/commands/settings/led", b"\x01\x02led on"),
        ]:
            answer = send_in_thread(body)
            got = dev.next_message()
            assert (got.topic, got.payload, got.qos) == (topic, payload, qos)
            resp = answer.result(timeout=DEVICE_TIMEOUT_S + 5)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {}

    dev.unsubscribe(f"/devices/{did}/commands/#")
    err = assert_google_error(rest.post(send, {"binaryData": b64(b"too late")}), 400, "FAILED_PRECONDITION")
    assert "not subscribed to the commands topic" in err["message"], err
    dev.no_message(within=0.3)


def test_commands_to_a_disconnected_device_fail(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    dev = connect(fx.client_id(registry, device), fx.jwt(key))
    assert dev.subscribe(f"/devices/{device['id']}/commands/#", qos=1) == [1]
    dev.disconnect()
    send = f"v1/{device['name']}:sendCommandToDevice"
    # The session may take a moment to be dropped after DISCONNECT.
    wait_for(lambda: rest.post(send, {"binaryData": b64(b"x")}).status_code == 400, "the command to be refused")
    assert_google_error(rest.post(send, {"binaryData": b64(b"x")}), 400, "FAILED_PRECONDITION")


# --- refused connections ------------------------------------------------------------------------

REFUSALS = [
    ("wrong-key", 5),
    ("token-of-another-algorithm", 5),
    ("expired-token", 5),
    ("issued-in-the-future", 5),
    ("lifetime-over-24h", 5),
    ("wrong-audience", 5),
    ("unknown-device", 5),
    ("unknown-registry", 5),
    ("blocked-device", 5),
    ("expired-credential", 5),
    ("mqtt-disabled-registry", 5),
    # The same code whether the device exists or not, so refusals do not tell which devices exist.
    ("garbage-password", 5),
    ("garbage-password-for-an-unknown-device", 5),
    ("client-id-not-a-device-path", 2),
]


@pytest.mark.parametrize("case, want", REFUSALS, ids=[c for c, _ in REFUSALS])
def test_refused_connections_and_a_good_device_right_after(rest, fx, connect, tmp_path, case, want):
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "ES256")
    cid = fx.client_id(registry, device)
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    password = fx.jwt(key)

    if case == "wrong-key":
        password = fx.jwt(make_device_key(tmp_path / "other", "ES256"))
    elif case == "token-of-another-algorithm":
        password = fx.jwt(make_device_key(tmp_path / "other", "RS256"))
    elif case == "expired-token":
        # Expired an hour ago: well past the 10 minutes of clock skew IoT Core allowed.
        password = fx.jwt(key, jwt_expires_minutes=60, issued_at=now - datetime.timedelta(hours=2))
    elif case == "issued-in-the-future":
        password = fx.jwt(key, issued_at=now + datetime.timedelta(hours=1))
    elif case == "lifetime-over-24h":
        password = fx.jwt(key, jwt_expires_minutes=25 * 60)
    elif case == "wrong-audience":
        password = fx.jwt(key, audience="some-other-project")
    elif case == "unknown-device":
        cid = fx.client_id(registry, {"id": unique("nobody")})
    elif case == "unknown-registry":
        cid = fx.client_id({"id": unique("noreg")}, device)
    elif case == "blocked-device":
        blocked, blocked_key = fx.create_device(registry, "ES256", blocked=True)
        cid, password = fx.client_id(registry, blocked), fx.jwt(blocked_key)
    elif case == "expired-credential":
        old_key = make_device_key(tmp_path / "old", "ES256")
        credential = dict(old_key.credential, expirationTime="2020-01-01T00:00:00Z")
        old, _ = fx.create_device(registry, "ES256", credentials=[credential])
        cid, password = fx.client_id(registry, old), fx.jwt(old_key)
    elif case == "mqtt-disabled-registry":
        closed = fx.create_registry(mqttConfig={"mqttEnabledState": "MQTT_DISABLED"})
        shut_out, shut_out_key = fx.create_device(closed, "ES256")
        cid, password = fx.client_id(closed, shut_out), fx.jwt(shut_out_key)
    elif case == "garbage-password":
        password = "not-a-jwt"
    elif case == "garbage-password-for-an-unknown-device":
        cid, password = fx.client_id(registry, {"id": unique("nobody")}), "not-a-jwt"
    elif case == "client-id-not-a-device-path":
        cid = device["id"]
    else:
        raise AssertionError(case)

    refused = connect(cid, password, expect=None)
    assert refused.connack == want, f"{case}: CONNACK {refused.connack}, expected {want}"
    assert refused.wait_closed(), f"{case}: the server kept the refused connection open"

    # The server is none the worse: the registered device gets in at once and is served.
    good = connect(fx.client_id(registry, device), fx.jwt(key))
    good.publish(f"/devices/{device['id']}/events", f"after {case}".encode(), qos=1)
    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [f"after {case}".encode()]


def test_key_rotation_any_registered_credential_works(rest, fx, connect, tmp_path):
    """IoT Core's key rotation: up to three credentials at once, each good for a token, and a
    removed one no longer lets the device in."""
    registry = fx.create_registry()
    old_key = make_device_key(tmp_path / "rotation", "RS256")
    new_key = make_device_key(tmp_path / "rotation", "ES256")
    device = fx.rest.create_device(registry["name"], {
        "id": unique("dev"), "credentials": [old_key.credential, new_key.credential],
    })
    cid = fx.client_id(registry, device)
    connect(cid, fx.jwt(old_key)).disconnect()
    connect(cid, fx.jwt(new_key)).disconnect()

    rest.ok(rest.patch(f"v1/{device['name']}", {"credentials": [new_key.credential]},
                       params={"updateMask": "credentials"}))
    assert connect(cid, fx.jwt(old_key), expect=None).connack == 5
    dev = connect(cid, fx.jwt(new_key))
    dev.publish(f"/devices/{device['id']}/events", b"rotated", qos=1)
    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [b"rotated"]


# --- sessions -------------------------------------------------------------------------------------

def test_jwt_refresh_by_reconnecting_like_the_sample(rest, fx, connect):
    """The sample's main loop: when the token gets old it disconnects and builds a new client
    with a fresh JWT; the device then subscribes again and carries on."""
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "RS256")
    did = device["id"]
    cid = fx.client_id(registry, device)
    rest.ok(rest.post(f"v1/{device['name']}:modifyCloudToDeviceConfig", {"binaryData": b64(b"cfg")}))

    first_token = fx.jwt(key, jwt_expires_minutes=1)
    dev = connect(cid, first_token)
    assert dev.subscribe(f"/devices/{did}/config", qos=1) == [1]
    assert dev.next_message().payload == b"cfg"
    dev.publish(f"/devices/{did}/events", b"before refresh", qos=1)
    dev.disconnect()
    assert dev.closed

    second_token = fx.jwt(key, jwt_expires_minutes=20)
    assert second_token != first_token
    dev = connect(cid, second_token)
    assert dev.subscribe(f"/devices/{did}/config", qos=1) == [1]
    # The config is sent again on every subscription, even though the device acknowledged it.
    assert dev.next_message().payload == b"cfg"
    dev.publish(f"/devices/{did}/events", b"after refresh", qos=1)

    telemetry = read_topic(rest, fx.topic("telemetry"), expect=2)
    assert payloads(telemetry) == [b"before refresh", b"after refresh"]


def test_the_connection_closes_when_the_token_runs_out(rest, fx, connect):
    """The sample refreshes its JWT because the bridge drops the connection once the token has
    expired. With IoT Core's 10 minutes of clock skew, a token that expired 592 s ago is still
    good for about 8 s."""
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    exp = datetime.datetime.now(tz=datetime.timezone.utc) - datetime.timedelta(seconds=592)
    token = fx.jwt(key, jwt_expires_minutes=1, issued_at=exp - datetime.timedelta(minutes=1))
    started = time.monotonic()
    dev = connect(fx.client_id(registry, device), token)
    dev.publish(f"/devices/{device['id']}/events", b"while the token lasts", qos=1)
    assert dev.wait_closed(timeout=25), "still connected 25 s after the token ran out"
    lasted = time.monotonic() - started
    assert lasted > 4, f"closed after {lasted:.1f}s, before the token ran out"
    status = wait_for(lambda: get_device(rest, device).get("lastErrorStatus"), "lastErrorStatus")
    assert status["code"] == 16, status  # UNAUTHENTICATED


def test_a_second_connection_replaces_the_first(server, rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    cid = fx.client_id(registry, device)
    commands = f"/devices/{device['id']}/commands/#"
    old = connect(cid, fx.jwt(key))
    assert old.subscribe(commands, qos=1) == [1]
    new = connect(cid, fx.jwt(key))
    assert old.wait_closed(), "the first connection was not closed when the device reconnected"
    assert not new.closed
    new.publish(f"/devices/{device['id']}/events", b"from the new connection", qos=1)
    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [b"from the new connection"]

    # The old connection's subscription went with it: commands wait for the new one to subscribe.
    send = f"v1/{device['name']}:sendCommandToDevice"
    assert_google_error(rest.post(send, {"binaryData": b64(b"whom?")}), 400, "FAILED_PRECONDITION")
    assert new.subscribe(commands, qos=1) == [1]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        answer = pool.submit(lambda: Rest(server.base_url, server.token).post(send, {"binaryData": b64(b"you")}))
        got = new.next_message()
        assert (got.topic, got.payload) == (f"/devices/{device['id']}/commands", b"you")
        assert answer.result(timeout=DEVICE_TIMEOUT_S + 5).status_code == 200


def test_keepalive_pings_keep_the_connection_and_count_as_heartbeats(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    # paho pings after `keepalive` idle seconds; the server allows 1.5 times that.
    dev = connect(fx.client_id(registry, device), fx.jwt(key), keepalive=5)
    got = wait_for(lambda: get_device(rest, device).get("lastHeartbeatTime"), "lastHeartbeatTime", timeout=12)
    assert TIMESTAMP_RE.match(got), got
    assert not dev.closed
    dev.publish(f"/devices/{device['id']}/events", b"still here", qos=1)


@pytest.mark.parametrize("action", ["block", "delete"])
def test_blocking_or_deleting_a_connected_device_disconnects_it(rest, fx, connect, action):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    cid = fx.client_id(registry, device)
    dev = connect(cid, fx.jwt(key))
    if action == "block":
        rest.ok(rest.patch(f"v1/{device['name']}", {"blocked": True}, params={"updateMask": "blocked"}))
    else:
        rest.ok(rest.delete(f"v1/{device['name']}"))
    assert dev.wait_closed(), f"the device stayed connected after {action}"
    assert connect(cid, fx.jwt(key), expect=None).connack == 5


# --- what closes a connection ---------------------------------------------------------------------

VIOLATIONS = ["qos2-publish", "state-twice-in-a-second", "another-devices-topic", "unknown-topic"]


@pytest.mark.parametrize("case", VIOLATIONS)
def test_violations_close_the_connection(rest, fx, connect, case):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    other, _ = fx.create_device(registry)
    did = device["id"]
    dev = connect(fx.client_id(registry, device), fx.jwt(key))
    dev.publish(f"/devices/{did}/events", b"marker", qos=1)

    if case == "qos2-publish":
        dev.client.publish(f"/devices/{did}/events", b"exactly once", qos=2)
    elif case == "state-twice-in-a-second":
        dev.publish(f"/devices/{did}/state", b"first", qos=1)
        dev.client.publish(f"/devices/{did}/state", b"second", qos=1)
    elif case == "another-devices-topic":
        dev.client.publish(f"/devices/{other['id']}/events", b"spoofed", qos=1)
    elif case == "unknown-topic":
        dev.client.publish(f"/devices/{did}/somewhere", b"lost", qos=1)
    assert dev.wait_closed(), f"{case}: the connection stayed open"

    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [b"marker"]
    if case == "state-twice-in-a-second":
        states = rest.ok(rest.get(f"v1/{device['name']}/states"))["deviceStates"]
        assert [base64.b64decode(s["binaryData"]) for s in states] == [b"first"]
    # IoT Core recorded why it closed the connection on the device.
    status = wait_for(lambda: get_device(rest, device).get("lastErrorStatus"), "lastErrorStatus")
    assert status.get("code", 0) != 0 and status.get("message"), status
    if case == "state-twice-in-a-second":
        assert status["code"] == 8, status  # RESOURCE_EXHAUSTED
    # Nothing reached the other device's topic or attributes.
    assert all(m["attributes"]["deviceId"] == did for m in read_topic(rest, fx.topic("telemetry"), expect=1))

    again = connect(fx.client_id(registry, device), fx.jwt(key))
    again.publish(f"/devices/{did}/events", b"back", qos=1)


def test_more_than_100_messages_a_second_close_the_connection(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    dev = connect(fx.client_id(registry, device), fx.jwt(key))
    # 300 at once: however a one-second window falls across them, one holds more than 100.
    for n in range(300):
        dev.client.publish(f"/devices/{device['id']}/events", f"burst {n}".encode(), qos=0)
    assert dev.wait_closed(), "300 messages in a burst did not close the connection"
    status = wait_for(lambda: get_device(rest, device).get("lastErrorStatus"), "lastErrorStatus")
    assert status["code"] == 8, status  # RESOURCE_EXHAUSTED
    stored = read_topic(rest, fx.topic("telemetry"), expect=100)
    assert 100 <= len(stored) < 300, len(stored)
    assert payloads(stored) == [f"burst {n}".encode() for n in range(len(stored))]


def test_telemetry_up_to_256_kib(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    dev = connect(fx.client_id(registry, device), fx.jwt(key))
    largest = bytes(range(256)) * 1024  # 256 KiB, IoT Core's telemetry limit
    dev.publish(f"/devices/{device['id']}/events", largest, qos=1)
    dev.client.publish(f"/devices/{device['id']}/events", largest + b"!", qos=1)
    assert dev.wait_closed(), "a message over 256 KiB did not close the connection"
    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [largest]
