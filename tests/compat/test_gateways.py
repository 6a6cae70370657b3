"""Gateways, the way Google's gateway samples drove them.

python-docs-samples' mqtt_example/cloudiot_mqtt_example.py (listen_for_messages,
send_data_from_bound_device, attach_device, detach_device) and its test: manager.py makes a gateway
(`gatewayConfig.gatewayType` GATEWAY, ASSOCIATION_ONLY) and a device without credentials, and binds
them; the gateway connects with paho-mqtt and its own PyJWT token, publishes
`{"authorization" : ""}` to `/devices/D/attach`, subscribes to the device's config and its own
errors topic (QoS 0), publishes for the device, and finally `{}` to `/devices/D/detach`. The
sample's error test attaches `invalid_device_id` and looks for GATEWAY_ATTACHMENT_ERROR on the
errors topic. Here the binding goes through google-cloud-iot's REST transport, the cloud side
(config, command, device) through the same client, and HTTP `gatewayInfo` through requests.
"""

from __future__ import annotations

import base64
import json

import google.oauth2.credentials
import pytest
import requests
from google.api_core.client_options import ClientOptions
from google.cloud import iot_v1

from compat_support import (
    LOCATION,
    DeviceFixture,
    MqttDevice,
    assert_google_error,
    b64,
    read_topic,
    unique,
)


@pytest.fixture
def fx(rest, tmp_path) -> DeviceFixture:
    return DeviceFixture(rest, tmp_path / "keys")


@pytest.fixture(scope="module")
def iot(server) -> iot_v1.DeviceManagerClient:
    """google-cloud-iot on its REST transport, as an IoT Core back end ran it."""
    client = iot_v1.DeviceManagerClient(
        transport="rest",
        client_options=ClientOptions(api_endpoint=server.base_url),
        credentials=google.oauth2.credentials.Credentials(token=server.token),
    )
    yield client
    client.transport.close()


@pytest.fixture
def connect(server):
    """Opens MQTT connections (TLS, as the sample's get_client) and closes them afterwards."""
    opened: list[MqttDevice] = []

    def _connect(client_id: str, password: str) -> MqttDevice:
        dev = MqttDevice(client_id, password, port=server.mqtts_port, ca_certs=server.ca_path)
        opened.append(dev)
        assert dev.connect() == 0, f"CONNACK refused for {client_id}"
        return dev

    yield _connect
    for dev in opened:
        dev.close()


def create_gateway(fx: DeviceFixture, registry: dict, auth_method: str = "ASSOCIATION_ONLY"):
    """manager.create_gateway: an RS256 device with a certificate, marked as a gateway."""
    return fx.create_device(registry, "RS256", gatewayConfig={
        "gatewayType": "GATEWAY", "gatewayAuthMethod": auth_method})


def create_bound_device(fx: DeviceFixture, iot, registry: dict, gateway: dict) -> dict:
    """manager.create_device (no credentials, ASSOCIATION_ONLY as the sample sets it) and
    manager.bind_device_to_gateway."""
    device = fx.rest.create_device(registry["name"], {
        "id": unique("dev"),
        "gatewayConfig": {"gatewayType": "NON_GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"},
    })
    iot.bind_device_to_gateway(request={
        "parent": registry["name"], "gateway_id": gateway["id"], "device_id": device["id"]})
    return device


# The sample's own functions, to their payloads.

def attach_device(client: MqttDevice, device_id: str, auth: str) -> None:
    attach_payload = '{{"authorization" : "{}"}}'.format(auth)
    client.publish(f"/devices/{device_id}/attach", attach_payload.encode(), qos=1)


def detach_device(client: MqttDevice, device_id: str) -> None:
    client.publish(f"/devices/{device_id}/detach", b"{}", qos=1)


def next_on(dev: MqttDevice, topic: str):
    message = dev.next_message()
    assert message.topic == topic, f"expected a message on {topic}, got {message}"
    return message


def gateway_error(dev: MqttDevice, gateway: dict) -> dict:
    message = next_on(dev, f"/devices/{gateway['id']}/errors")
    assert message.qos == 0
    return json.loads(message.payload)


def test_the_sample_gateway_flow(rest, fx, iot, connect):
    registry = fx.create_registry()
    gateway, key = create_gateway(fx, registry)
    device = create_bound_device(fx, iot, registry, gateway)
    did, gid = device["id"], gateway["id"]

    gw = connect(fx.client_id(registry, gateway), fx.jwt(key))
    # get_client subscribes to the gateway's own config (QoS 1) and commands (QoS 0).
    assert gw.subscribe(f"/devices/{gid}/config", 1) == [1]
    next_on(gw, f"/devices/{gid}/config")
    assert gw.subscribe(f"/devices/{gid}/commands/#", 0) == [0]
    attach_device(gw, did, "")  # returns once the server acknowledged the attach
    # listen_for_messages: the device's config, the gateway's errors ("QoS must be 0").
    assert gw.subscribe(f"/devices/{gid}/errors", 0) == [0]
    assert gw.subscribe(f"/devices/{did}/config", 1) == [1]
    assert next_on(gw, f"/devices/{did}/config").payload == b""

    # send_data_from_bound_device: the gateway's state, then the device's, at the default QoS 0;
    # and telemetry for the device at QoS 1.
    gw.publish(f"/devices/{gid}/state", b"Starting gateway", qos=0)
    gw.publish(f"/devices/{did}/state", f"{did} : {registry['id']}/{gid}-{did}-payload-1".encode(), qos=0)
    gw.publish(f"/devices/{did}/events", b"for the device", qos=1)
    telemetry = read_topic(rest, fx.topic("telemetry"), expect=1)
    assert [base64.b64decode(m["data"]) for m in telemetry] == [b"for the device"]
    assert telemetry[0]["attributes"] == fx.iot_attributes(registry, device)
    states = read_topic(rest, fx.topic("state"), expect=2)
    assert [m["attributes"]["deviceId"] for m in states] == [gid, did]
    assert states[1]["attributes"] == fx.iot_attributes(registry, device)

    # The cloud side reaches the device through its gateway: a new config, and a command.
    iot.modify_cloud_to_device_config(request={"name": device["name"], "binary_data": b"brightness=7"})
    assert next_on(gw, f"/devices/{did}/config").payload == b"brightness=7"
    assert gw.subscribe(f"/devices/{did}/commands/#", 1) == [1]
    iot.send_command_to_device(request={"name": device["name"], "binary_data": b"me want cookies"})
    command = next_on(gw, f"/devices/{did}/commands")
    assert command.payload == b"me want cookies"

    # The device shows the gateway it was last reached through.
    got = iot.get_device(request={"name": device["name"]})
    assert got.gateway_config.last_accessed_gateway_id == gid
    assert got.gateway_config.last_accessed_gateway_time is not None

    # The sample's error test: attaching an unknown device is reported on the errors topic, and
    # the connection stays (no PUBACK for the attach).
    info = gw.client.publish("/devices/invalid_device_id/attach", '{"authorization" : ""}', qos=1)
    error = gateway_error(gw, gateway)
    assert error["error_type"] == "GATEWAY_ATTACHMENT_ERROR", error
    assert error["device_id"] == "invalid_device_id"
    assert not info.is_published()
    assert not gw.closed

    detach_device(gw, did)
    # Detached: publishing for it is reported, not acknowledged.
    gw.client.publish(f"/devices/{did}/events", b"too late", qos=1)
    error = gateway_error(gw, gateway)
    assert error["error_type"] == "GATEWAY_DEVICE_NOT_FOUND", error
    assert error["mqtt_message_info"]["topic"] == f"/devices/{did}/events"
    gw.disconnect()


@pytest.mark.parametrize("auth_method", ["DEVICE_AUTH_TOKEN_ONLY", "ASSOCIATION_AND_DEVICE_AUTH_TOKEN"])
def test_attach_with_the_devices_own_jwt(rest, fx, iot, connect, auth_method):
    """The gateway forwards the device's own PyJWT token in the attach payload."""
    registry = fx.create_registry()
    gateway, gw_key = create_gateway(fx, registry, auth_method)
    device, dev_key = fx.create_device(registry, "ES256")
    iot.bind_device_to_gateway(request={
        "parent": registry["name"], "gateway_id": gateway["id"], "device_id": device["id"]})
    gw = connect(fx.client_id(registry, gateway), fx.jwt(gw_key))
    assert gw.subscribe(f"/devices/{gateway['id']}/errors", 0) == [0]

    # Without a token, or with the gateway's own, the attach is refused.
    for auth in ("", fx.jwt(gw_key)):
        gw.client.publish(f"/devices/{device['id']}/attach", json.dumps({"authorization": auth}), qos=1)
        assert gateway_error(gw, gateway)["error_type"] == "GATEWAY_ATTACHMENT_ERROR"
    attach_device(gw, device["id"], fx.jwt(dev_key))
    gw.publish(f"/devices/{device['id']}/events/alerts", b"attached with its own token", qos=1)
    alerts = read_topic(rest, fx.topic("alerts"), expect=1)
    assert alerts[0]["attributes"] == fx.iot_attributes(registry, device, "alerts")


def test_http_gateway_info_both_ways(server, rest, fx, iot):
    """cloudiot_http_example.py's requests, with `gatewayInfo` in the body or the query."""
    base = f"{server.base_url}/v1"
    registry = fx.create_registry()
    gateway, gw_key = create_gateway(fx, registry)
    device, dev_key = fx.create_device(registry, "RS256")
    iot.bind_device_to_gateway(request={
        "parent": registry["name"], "gateway_id": gateway["id"], "device_id": device["id"]})
    path = f"projects/{fx.project}/locations/{LOCATION}/registries/{registry['id']}/devices"

    def call(method, device_id, token, body=None, params=None) -> requests.Response:
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json",
                   "cache-control": "no-cache"}
        url = f"{base}/{path}/{device_id}" + ("/config" if method == "GET" else ":" + body.pop("_verb"))
        data = None if body is None else json.dumps(body)
        return requests.request(method, url, data=data, params=params, headers=headers, timeout=15)

    # delegatedDeviceId: the gateway's path and token, for its bound device.
    ok = call("POST", gateway["id"], fx.jwt(gw_key), {
        "_verb": "publishEvent", "binary_data": base64.urlsafe_b64encode(b"relayed").decode(),
        "gateway_info": {"delegated_device_id": device["id"]}})
    assert (ok.status_code, ok.json()) == (200, {}), ok.text
    ok = call("POST", gateway["id"], fx.jwt(gw_key), {
        "_verb": "setState", "state": {"binary_data": b64(b"relayed state")},
        "gatewayInfo": {"delegatedDeviceId": device["id"]}})
    assert ok.status_code == 200, ok.text
    cfg = call("GET", gateway["id"], fx.jwt(gw_key), params={
        "local_version": 0, "gatewayInfo.delegatedDeviceId": device["id"]})
    assert cfg.status_code == 200 and cfg.json()["version"] == "1", cfg.text

    # gatewayId: the device's path and token, through its gateway.
    ok = call("POST", device["id"], fx.jwt(dev_key), {
        "_verb": "publishEvent", "binaryData": b64(b"through"), "gatewayInfo": {"gatewayId": gateway["id"]}})
    assert ok.status_code == 200, ok.text
    cfg = call("GET", device["id"], fx.jwt(dev_key), params={"gatewayInfo.gatewayId": gateway["id"]})
    assert cfg.status_code == 200, cfg.text

    telemetry = read_topic(rest, fx.topic("telemetry"), expect=2)
    assert [base64.b64decode(m["data"]) for m in telemetry] == [b"relayed", b"through"]
    assert all(m["attributes"] == fx.iot_attributes(registry, device) for m in telemetry)
    states = rest.ok(rest.get(f"v1/{device['name']}/states"))["deviceStates"]
    assert base64.b64decode(states[0]["binaryData"]) == b"relayed state"
    assert iot.get_device(request={"name": device["name"]}).gateway_config.last_accessed_gateway_id == gateway["id"]

    # A device that is not bound may not be spoken for.
    stranger, stranger_key = fx.create_device(registry, "ES256")
    refused = call("POST", gateway["id"], fx.jwt(gw_key), {
        "_verb": "publishEvent", "binaryData": b64(b"no"), "gatewayInfo": {"delegatedDeviceId": stranger["id"]}})
    assert_google_error(refused, 403, "PERMISSION_DENIED")
    refused = call("POST", stranger["id"], fx.jwt(stranger_key), {
        "_verb": "publishEvent", "binaryData": b64(b"no"), "gatewayInfo": {"gatewayId": gateway["id"]}})
    assert_google_error(refused, 403, "PERMISSION_DENIED")
    assert len(read_topic(rest, fx.topic("telemetry"), expect=2, timeout=0.5)) == 2
