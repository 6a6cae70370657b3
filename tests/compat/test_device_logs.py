"""Device activity logs, read the way an IoT Core operator read Cloud Logging.

A paho-mqtt device (as Google's mqtt_example connects it: TLS, its PyJWT token) connects to a
registry logging at DEBUG, publishes and disconnects; the registry's logs are then read with
`requests` from `GET .../registries/R/logs`, whose answer has Cloud Logging's `entries.list` shape
(`entries` of LogEntry, `nextPageToken`) and entries in IoT Core's `device_activity` shape.
"""

from __future__ import annotations

import pytest
import requests

from compat_support import LOCATION, DeviceFixture, MqttDevice, wait_for


@pytest.fixture
def fx(rest, tmp_path) -> DeviceFixture:
    return DeviceFixture(rest, tmp_path / "keys")


def read_logs(server, registry: dict, **params) -> dict:
    resp = requests.get(
        f"{server.base_url}/v1/{registry['name']}/logs",
        params=params,
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def event_types(entries: list[dict]) -> list[str]:
    return [e["jsonPayload"]["eventType"] for e in entries]


def test_a_paho_device_connect_publish_and_disconnect_are_logged(server, fx):
    registry = fx.create_registry(logLevel="DEBUG")
    device, key = fx.create_device(registry, "RS256")
    dev = MqttDevice(fx.client_id(registry, device), fx.jwt(key), port=server.mqtts_port, ca_certs=server.ca_path)
    assert dev.connect() == 0
    dev.publish(f"/devices/{device['id']}/events", b"hello logs", qos=1)
    dev.disconnect()

    def logged():
        entries = read_logs(server, registry, deviceId=device["id"]).get("entries", [])
        return entries if "DISCONNECT" in event_types(entries) else None

    entries = wait_for(logged, "the device's DISCONNECT in the activity log")
    assert event_types(entries) == ["CONNECT", "PUBLISH", "DISCONNECT"]
    connect, publish, disconnect = entries
    assert connect["logName"] == f"projects/{fx.project}/logs/cloudiot.googleapis.com%2Fdevice_activity"
    assert connect["resource"] == {
        "type": "cloudiot_device",
        "labels": {
            "device_num_id": device["numId"],
            "device_registry_id": registry["id"],
            "location": LOCATION,
            "project_id": fx.project,
        },
    }
    assert connect["severity"] == "INFO" and publish["severity"] == "DEBUG"
    assert len({e["insertId"] for e in entries}) == 3
    for entry in entries:
        payload = entry["jsonPayload"]
        assert payload["protocol"] == "MQTT"
        assert payload["deviceId"] == device["id"]
        assert payload["serviceName"] == "cloudiot.googleapis.com"
        assert payload["clientIp"] == "127.0.0.1"
        assert entry["timestamp"].endswith("Z") and entry["receiveTimestamp"].endswith("Z")
    assert publish["jsonPayload"]["mqttTopic"] == f"/devices/{device['id']}/events"
    assert publish["jsonPayload"]["status"] == {"code": 0, "description": "OK"}
    assert disconnect["jsonPayload"]["disconnectType"] == "CLIENT"

    # Paging as entries.list pages: one entry at a time, following nextPageToken.
    token, paged = "", []
    while True:
        page = read_logs(server, registry, deviceId=device["id"], pageSize=1, pageToken=token)
        if not page.get("entries"):
            break
        paged += page["entries"]
        token = page["nextPageToken"]
    assert [e["insertId"] for e in paged] == [e["insertId"] for e in entries]

    assert event_types(read_logs(server, registry, minSeverity="INFO")["entries"]) == ["CONNECT", "DISCONNECT"]


def test_bad_page_tokens_and_unknown_registries_are_refused(server, fx):
    registry = fx.create_registry(logLevel="INFO")
    headers = {"Authorization": f"Bearer {server.token}"}
    resp = requests.get(f"{server.base_url}/v1/{registry['name']}/logs", params={"pageToken": "nonsense"},
                        headers=headers, timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"]["status"] == "INVALID_ARGUMENT"
    ghost = registry["name"].rsplit("/", 1)[0] + "/ghost-registry"
    resp = requests.get(f"{server.base_url}/v1/{ghost}/logs", headers=headers, timeout=30)
    assert resp.status_code == 404
    assert resp.json()["error"]["status"] == "NOT_FOUND"
