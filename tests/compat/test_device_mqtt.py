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
import ssl

import certifi
import pytest

from compat_support import (
    DEVICE_TIMEOUT_S,
    LOCATION,
    TIMESTAMP_RE,
    DeviceFixture,
    MqttDevice,
    Rest,
    assert_google_error,
    b64,
    make_device_key,
    read_topic,
    unique,
    wait_for,
)

ALGORITHMS = ("RS256", "ES256")


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


def client_id(fx: DeviceFixture, registry: dict, device: dict) -> str:
    """The sample's client id: the device's full path, with its string id."""
    return f"projects/{fx.project}/locations/{LOCATION}/registries/{registry['id']}/devices/{device['id']}"


def attributes(fx: DeviceFixture, registry: dict, device: dict, subfolder: str | None = None) -> dict:
    """The attributes IoT Core put on every message it forwarded to Pub/Sub."""
    attrs = {
        "deviceId": device["id"],
        "deviceNumId": device["numId"],
        "deviceRegistryId": registry["id"],
        "deviceRegistryLocation": LOCATION,
        "projectId": fx.project,
    }
    if subfolder:
        attrs["subFolder"] = subfolder
    return attrs


def payloads(messages: list[dict]) -> list[bytes]:
    return [base64.b64decode(m["data"]) for m in messages]


def get_device(rest: Rest, device: dict) -> dict:
    return rest.ok(rest.get(f"v1/{device['name']}"))


# --- telemetry and state ------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_telemetry_and_state_reach_their_topics(rest, fx, connect, algorithm):
    registry = fx.create_registry()
    device, key = fx.create_device(registry, algorithm)
    dev = connect(client_id(fx, registry, device), fx.jwt(key))
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
        attributes(fx, registry, device),
        attributes(fx, registry, device),
        # No config matches "rooms/kitchen": the default topic, with the subfolder as attribute.
        attributes(fx, registry, device, "rooms/kitchen"),
    ]
    offsets = [int(m["offset"]) for m in telemetry]
    assert offsets == sorted(offsets) and len(set(offsets)) == 3, offsets
    for m in telemetry:
        assert TIMESTAMP_RE.match(m["publishTime"]), m

    alerts = read_topic(rest, fx.topic("alerts"), expect=1)
    assert payloads(alerts) == [b"overheating"]
    assert alerts[0]["attributes"] == attributes(fx, registry, device, "alerts")

    notifications = read_topic(rest, fx.topic("state"), expect=1)
    assert payloads(notifications) == [b'{"fan": "on"}']
    assert notifications[0]["attributes"] == attributes(fx, registry, device)

    states = rest.ok(rest.get(f"v1/{device['name']}/states"))["deviceStates"]
    assert [base64.b64decode(s["binaryData"]) for s in states] == [b'{"fan": "on"}']
    assert TIMESTAMP_RE.match(states[0]["updateTime"]), states

    got = get_device(rest, device)
    assert base64.b64decode(got["state"]["binaryData"]) == b'{"fan": "on"}'
    for field in ("lastEventTime", "lastStateTime"):
        assert TIMESTAMP_RE.match(got.get(field, "")), f"{field} not set: {got}"


def test_plain_mqtt_listener_serves_the_same_bridge(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "RS256")
    dev = connect(client_id(fx, registry, device), fx.jwt(key), tls=False)
    dev.publish(f"/devices/{device['id']}/events", b"no tls", qos=1)
    telemetry = read_topic(rest, fx.topic("telemetry"), expect=1)
    assert payloads(telemetry) == [b"no tls"]
    assert telemetry[0]["attributes"] == attributes(fx, registry, device)


def test_tls_1_3_and_an_ip_address_work_too(rest, fx, connect):
    # The sample pins TLS 1.2; a current client negotiates 1.3. The generated certificate also
    # names 127.0.0.1, so connecting by address passes hostname verification.
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    dev = connect(client_id(fx, registry, device), fx.jwt(key), host="127.0.0.1",
                  tls_version=ssl.PROTOCOL_TLS_CLIENT)
    dev.publish(f"/devices/{device['id']}/events", b"tls 1.3", qos=1)
    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [b"tls 1.3"]


def test_the_server_certificate_only_verifies_against_the_generated_ca(server, fx):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    # Public roots (certifi) do not vouch for the local CA: the handshake fails on the client.
    dev = MqttDevice(client_id(fx, registry, device), fx.jwt(key), port=server.mqtts_port,
                     ca_certs=certifi.where())
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            dev.connect()
    finally:
        dev.close()


# --- config -------------------------------------------------------------------------------------

def test_config_arrives_on_subscribe_and_on_every_update(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "RS256")
    did = device["id"]
    modify = f"v1/{device['name']}:modifyCloudToDeviceConfig"
    rest.ok(rest.post(modify, {"binaryData": b64(b"version two")}))

    dev = connect(client_id(fx, registry, device), fx.jwt(key))
    assert dev.subscribe(f"/devices/{did}/config", qos=1) == [1]
    # The latest config comes right after SUBACK, with QoS 1 so the device acknowledges it.
    first = dev.next_message()
    assert (first.topic, first.payload, first.qos) == (f"/devices/{did}/config", b"version two", 1)

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

    got = get_device(rest, device)
    assert got["config"]["version"] == "3"
    assert TIMESTAMP_RE.match(got["config"].get("deviceAckTime", "")), got["config"]
    assert TIMESTAMP_RE.match(got.get("lastConfigAckTime", "")), got
    assert TIMESTAMP_RE.match(got.get("lastConfigSendTime", "")), got
    dev.no_message(within=0.5)


def test_a_new_device_gets_its_empty_first_config(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    dev = connect(client_id(fx, registry, device), fx.jwt(key))
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

    dev = connect(client_id(fx, registry, device), fx.jwt(key))
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
    dev = connect(client_id(fx, registry, device), fx.jwt(key))
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
    ("garbage-password", 4),
    ("client-id-not-a-device-path", 2),
]


@pytest.mark.parametrize("case, want", REFUSALS, ids=[c for c, _ in REFUSALS])
def test_refused_connections_and_a_good_device_right_after(rest, fx, connect, tmp_path, case, want):
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "ES256")
    cid = client_id(fx, registry, device)
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
        cid = client_id(fx, registry, {"id": unique("nobody")})
    elif case == "unknown-registry":
        cid = client_id(fx, {"id": unique("noreg")}, device)
    elif case == "blocked-device":
        blocked, blocked_key = fx.create_device(registry, "ES256", blocked=True)
        cid, password = client_id(fx, registry, blocked), fx.jwt(blocked_key)
    elif case == "expired-credential":
        old_key = make_device_key(tmp_path / "old", "ES256")
        credential = dict(old_key.credential, expirationTime="2020-01-01T00:00:00Z")
        old, _ = fx.create_device(registry, "ES256", credentials=[credential])
        cid, password = client_id(fx, registry, old), fx.jwt(old_key)
    elif case == "mqtt-disabled-registry":
        closed = fx.create_registry(mqttConfig={"mqttEnabledState": "MQTT_DISABLED"})
        shut_out, shut_out_key = fx.create_device(closed, "ES256")
        cid, password = client_id(fx, closed, shut_out), fx.jwt(shut_out_key)
    elif case == "garbage-password":
        password = "not-a-jwt"
    elif case == "client-id-not-a-device-path":
        cid = device["id"]
    else:
        raise AssertionError(case)

    refused = connect(cid, password, expect=None)
    assert refused.connack == want, f"{case}: CONNACK {refused.connack}, expected {want}"
    assert refused.wait_closed(), f"{case}: the server kept the refused connection open"

    # The server is none the worse: the registered device gets in at once and is served.
    good = connect(client_id(fx, registry, device), fx.jwt(key))
    good.publish(f"/devices/{device['id']}/events", f"after {case}".encode(), qos=1)
    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [f"after {case}".encode()]


# --- sessions -------------------------------------------------------------------------------------

def test_jwt_refresh_by_reconnecting_like_the_sample(rest, fx, connect):
    """The sample's main loop: when the token gets old it disconnects and builds a new client
    with a fresh JWT; the device then subscribes again and carries on."""
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "RS256")
    did = device["id"]
    cid = client_id(fx, registry, device)
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


def test_a_second_connection_replaces_the_first(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    cid = client_id(fx, registry, device)
    old = connect(cid, fx.jwt(key))
    new = connect(cid, fx.jwt(key))
    assert old.wait_closed(), "the first connection was not closed when the device reconnected"
    assert not new.closed
    new.publish(f"/devices/{device['id']}/events", b"from the new connection", qos=1)
    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [b"from the new connection"]


def test_keepalive_pings_keep_the_connection_and_count_as_heartbeats(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    # paho pings after `keepalive` idle seconds; the server allows 1.5 times that.
    dev = connect(client_id(fx, registry, device), fx.jwt(key), keepalive=5)
    got = wait_for(lambda: get_device(rest, device).get("lastHeartbeatTime"), "lastHeartbeatTime", timeout=12)
    assert TIMESTAMP_RE.match(got), got
    assert not dev.closed
    dev.publish(f"/devices/{device['id']}/events", b"still here", qos=1)


# --- what closes a connection ---------------------------------------------------------------------

VIOLATIONS = ["qos2-publish", "state-twice-in-a-second", "another-devices-topic", "unknown-topic"]


@pytest.mark.parametrize("case", VIOLATIONS)
def test_violations_close_the_connection(rest, fx, connect, case):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    other, _ = fx.create_device(registry)
    did = device["id"]
    dev = connect(client_id(fx, registry, device), fx.jwt(key))
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

    again = connect(client_id(fx, registry, device), fx.jwt(key))
    again.publish(f"/devices/{did}/events", b"back", qos=1)


def test_more_than_100_messages_a_second_close_the_connection(rest, fx, connect):
    registry = fx.create_registry()
    device, key = fx.create_device(registry)
    dev = connect(client_id(fx, registry, device), fx.jwt(key))
    # 300 at once: however a one-second window falls across them, one holds more than 100.
    for n in range(300):
        dev.client.publish(f"/devices/{device['id']}/events", f"burst {n}".encode(), qos=0)
    assert dev.wait_closed(), "300 messages in a burst did not close the connection"
    status = wait_for(lambda: get_device(rest, device).get("lastErrorStatus"), "lastErrorStatus")
    assert status["code"] == 8, status  # RESOURCE_EXHAUSTED
    stored = read_topic(rest, fx.topic("telemetry"), expect=100)
    assert 100 <= len(stored) < 300, len(stored)
    assert payloads(stored) == [f"burst {n}".encode() for n in range(len(stored))]
