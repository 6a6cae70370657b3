"""Devices on the HTTP bridge, calling it as Google's cloudiot_http_example.py did.

The sample posts JSON with snake_case fields and URL-safe base64 to
`{base}/projects/P/locations/L/registries/R/devices/D:publishEvent` (and `:setState`), reads
`.../devices/D/config?local_version=N`, and sends its JWT as `authorization: Bearer`, with
`requests`. Here the base is the server's own `/v1` on the --http port; no admin token is sent.
"""

from __future__ import annotations

import base64
import datetime
import json
import time

import pytest
import requests

from compat_support import (
    LOCATION,
    DeviceFixture,
    assert_google_error,
    b64,
    device_with_activity,
    make_device_key,
    read_topic,
    unique,
    wait_for_config_slot,
)

ALGORITHMS = ("RS256", "ES256")
HTTP_TIMEOUT_S = 15

# Bytes whose standard base64 holds '+' and '/', so the URL-safe alphabet the sample uses matters.
URL_SAFE_MATTERS = b"\xfb\xff\xbf\xfe binary"


@pytest.fixture
def fx(rest, tmp_path) -> DeviceFixture:
    return DeviceFixture(rest, tmp_path / "keys")


@pytest.fixture
def base_url(server) -> str:
    return f"{server.base_url}/v1"


# The sample's two functions, kept to its shape: the message is bytes here so binary payloads can
# be sent, `sub_folder` is optional, and every call has a timeout.

def publish_message(message: bytes, message_type: str, base_url: str, project_id: str, cloud_region: str,
                    registry_id: str, device_id: str, jwt_token: str | None,
                    sub_folder: str | None = None) -> requests.Response:
    headers = {"content-type": "application/json", "cache-control": "no-cache"}
    if jwt_token is not None:
        headers["authorization"] = f"Bearer {jwt_token}"
    url_suffix = "publishEvent" if message_type == "event" else "setState"
    publish_url = "{}/projects/{}/locations/{}/registries/{}/devices/{}:{}".format(
        base_url, project_id, cloud_region, registry_id, device_id, url_suffix
    )
    msg_bytes = base64.urlsafe_b64encode(message)
    if message_type == "event":
        body = {"binary_data": msg_bytes.decode("ascii")}
        if sub_folder is not None:
            body["sub_folder"] = sub_folder
    else:
        body = {"state": {"binary_data": msg_bytes.decode("ascii")}}
    return requests.post(publish_url, data=json.dumps(body), headers=headers, timeout=HTTP_TIMEOUT_S)


def get_config(version, message_type: str, base_url: str, project_id: str, cloud_region: str,
               registry_id: str, device_id: str, jwt_token: str | None) -> requests.Response:
    headers = {"content-type": "application/json", "cache-control": "no-cache"}
    if jwt_token is not None:
        headers["authorization"] = f"Bearer {jwt_token}"
    basepath = "{}/projects/{}/locations/{}/registries/{}/devices/{}/"
    template = basepath + "config?local_version={}"
    config_url = template.format(base_url, project_id, cloud_region, registry_id, device_id, version)
    return requests.get(config_url, headers=headers, timeout=HTTP_TIMEOUT_S)


class HttpDevice:
    """One registered device and the arguments the sample passes around for it."""

    def __init__(self, fx: DeviceFixture, base_url: str, registry: dict, device: dict, key):
        self.fx, self.base_url, self.registry, self.device, self.key = fx, base_url, registry, device, key

    def args(self, jwt_token):
        return (self.base_url, self.fx.project, LOCATION, self.registry["id"], self.device["id"], jwt_token)

    def token(self, **kw) -> str:
        return self.fx.jwt(self.key, **kw)

    def event(self, message: bytes, jwt_token=None, sub_folder=None) -> requests.Response:
        token = self.token() if jwt_token is None else jwt_token
        return publish_message(message, "event", *self.args(token), sub_folder=sub_folder)

    def state(self, message: bytes, jwt_token=None) -> requests.Response:
        return publish_message(message, "state", *self.args(self.token() if jwt_token is None else jwt_token))

    def config(self, version, jwt_token=None) -> requests.Response:
        return get_config(version, "config", *self.args(self.token() if jwt_token is None else jwt_token))


def new_device(fx: DeviceFixture, base_url: str, algorithm: str = "ES256", **registry_extra) -> HttpDevice:
    registry = fx.create_registry(**registry_extra)
    device, key = fx.create_device(registry, algorithm)
    return HttpDevice(fx, base_url, registry, device, key)


def attributes(d: HttpDevice, subfolder: str | None = None) -> dict:
    attrs = {
        "deviceId": d.device["id"],
        "deviceNumId": d.device["numId"],
        "deviceRegistryId": d.registry["id"],
        "deviceRegistryLocation": LOCATION,
        "projectId": d.fx.project,
    }
    if subfolder:
        attrs["subFolder"] = subfolder
    return attrs


def payloads(messages: list[dict]) -> list[bytes]:
    return [base64.b64decode(m["data"]) for m in messages]


def ok_empty(resp: requests.Response) -> None:
    assert resp.status_code == 200, f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text}"
    assert resp.json() == {}


# --- publishEvent and setState ------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_publish_event_and_set_state_like_the_sample(rest, fx, base_url, algorithm):
    d = new_device(fx, base_url, algorithm)
    sample_text = f"{d.registry['id']}/{d.device['id']}-payload-1".encode()
    ok_empty(d.event(sample_text))
    ok_empty(d.event(URL_SAFE_MATTERS))
    ok_empty(d.event(b"too hot", sub_folder="alerts"))
    # subfolderMatches is an exact match: "alerts/critical" takes the default route.
    ok_empty(d.event(b"critical", sub_folder="alerts/critical"))
    ok_empty(d.state(b'{"door": "open"}'))

    telemetry = read_topic(rest, fx.topic("telemetry"), expect=3)
    assert payloads(telemetry) == [sample_text, URL_SAFE_MATTERS, b"critical"]
    assert [m["attributes"] for m in telemetry] == [attributes(d), attributes(d), attributes(d, "alerts/critical")]
    alerts = read_topic(rest, fx.topic("alerts"), expect=1)
    assert payloads(alerts) == [b"too hot"]
    assert alerts[0]["attributes"] == attributes(d, "alerts")

    notifications = read_topic(rest, fx.topic("state"), expect=1)
    assert payloads(notifications) == [b'{"door": "open"}']
    assert notifications[0]["attributes"] == attributes(d)
    states = rest.ok(rest.get(f"v1/{d.device['name']}/states"))["deviceStates"]
    assert [base64.b64decode(s["binaryData"]) for s in states] == [b'{"door": "open"}']

    device_with_activity(rest, d.device, "lastEventTime", "lastStateTime")


def test_camel_case_and_standard_base64_are_accepted_too(rest, fx, base_url):
    # Google's front end took both spellings of field names and both base64 alphabets.
    d = new_device(fx, base_url)
    url = f"{base_url}/projects/{fx.project}/locations/{LOCATION}/registries/{d.registry['id']}/devices/{d.device['id']}"
    headers = {"authorization": f"Bearer {d.token()}", "content-type": "application/json"}
    body = {"binaryData": base64.b64encode(URL_SAFE_MATTERS).decode(), "subFolder": "alerts"}
    ok_empty(requests.post(f"{url}:publishEvent", json=body, headers=headers, timeout=HTTP_TIMEOUT_S))
    alerts = read_topic(rest, fx.topic("alerts"), expect=1)
    assert payloads(alerts) == [URL_SAFE_MATTERS]
    assert alerts[0]["attributes"] == attributes(d, "alerts")


def test_state_at_most_once_a_second(rest, fx, base_url):
    d = new_device(fx, base_url)
    ok_empty(d.state(b"one"))
    assert_google_error(d.state(b"two"), 429, "RESOURCE_EXHAUSTED")
    time.sleep(1.1)
    ok_empty(d.state(b"three"))
    states = rest.ok(rest.get(f"v1/{d.device['name']}/states"))["deviceStates"]
    # Newest first.
    assert [base64.b64decode(s["binaryData"]) for s in states] == [b"three", b"one"]


def test_payload_size_limits(rest, fx, base_url):
    # IoT Core's limits: 256 KiB of telemetry, 64 KiB of state.
    d = new_device(fx, base_url)
    largest_event = bytes(range(256)) * 1024
    ok_empty(d.event(largest_event))
    assert_google_error(d.event(largest_event + b"!"), 400, "INVALID_ARGUMENT")
    largest_state = b"s" * (64 * 1024)
    assert_google_error(d.state(largest_state + b"!"), 400, "INVALID_ARGUMENT")
    ok_empty(d.state(largest_state))
    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [largest_event]
    states = rest.ok(rest.get(f"v1/{d.device['name']}/states"))["deviceStates"]
    assert [base64.b64decode(s["binaryData"]) for s in states] == [largest_state]


# --- config -------------------------------------------------------------------------------------

def test_get_config_with_local_version(rest, fx, base_url):
    d = new_device(fx, base_url, "RS256")
    resp = d.config(0)
    assert resp.status_code == 200, resp.text
    first = resp.json()
    assert first["version"] == "1"
    assert base64.b64decode(first.get("binaryData", "")) == b""

    modify = f"v1/{d.device['name']}:modifyCloudToDeviceConfig"
    rest.ok(rest.post(modify, {"binaryData": b64(b"v2")}))
    wait_for_config_slot()
    rest.ok(rest.post(modify, {"binaryData": b64(URL_SAFE_MATTERS)}))

    for local in (0, 1, 2):
        resp = d.config(local)
        assert resp.status_code == 200, f"local_version={local}: {resp.status_code} {resp.text}"
        body = resp.json()
        assert body["version"] == "3", (local, body)
        # Bytes fields come back in standard base64, as in all of Google's JSON.
        assert base64.b64decode(body["binaryData"], validate=True) == URL_SAFE_MATTERS, body
    # Up to date: Google documented data only for newer versions, so only the version is checked.
    resp = d.config(3)
    assert resp.status_code == 200 and resp.json()["version"] == "3", resp.text

    # A device claiming a version the cloud never made is told so.
    err = assert_google_error(d.config(4), 400, "OUT_OF_RANGE")
    assert "4" in err["message"], err
    assert_google_error(d.config(1000), 400, "OUT_OF_RANGE")

    # Google's JSON transcoding also took the camelCase query parameter.
    url = (f"{base_url}/projects/{fx.project}/locations/{LOCATION}/registries/{d.registry['id']}"
           f"/devices/{d.device['id']}/config")
    resp = requests.get(url, params={"localVersion": 2}, headers={"authorization": f"Bearer {d.token()}"},
                        timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200 and resp.json()["version"] == "3", resp.text

    device_with_activity(rest, d.device, "lastConfigSendTime")


# --- refusals -----------------------------------------------------------------------------------

BAD_TOKENS = ["missing", "garbage", "wrong-key", "wrong-audience", "expired", "another-devices-token",
              "admin-token"]


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_bad_jwt_is_401_on_every_device_call(server, rest, fx, base_url, tmp_path, case):
    d = new_device(fx, base_url)
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    if case == "missing":
        token = None
    elif case == "garbage":
        token = "not.a.jwt"
    elif case == "wrong-key":
        token = fx.jwt(make_device_key(tmp_path / "other", "ES256"))
    elif case == "wrong-audience":
        token = d.token(audience=unique("proj"))
    elif case == "expired":
        token = d.token(jwt_expires_minutes=60, issued_at=now - datetime.timedelta(hours=2))
    elif case == "another-devices-token":
        _, other_key = fx.create_device(d.registry, "ES256")
        token = fx.jwt(other_key)
    elif case == "admin-token":
        token = server.token
    else:
        raise AssertionError(case)

    def call(resp: requests.Response) -> None:
        assert_google_error(resp, 401, "UNAUTHENTICATED")

    args = d.args(token)
    call(publish_message(b"refused", "event", *args))
    call(publish_message(b"refused", "state", *args))
    call(get_config(0, "config", *args))

    # Nothing got through: the device's first accepted message is the only one stored.
    ok_empty(d.event(b"accepted"))
    assert payloads(read_topic(rest, fx.topic("telemetry"), expect=1)) == [b"accepted"]
    assert rest.ok(rest.get(f"v1/{d.device['name']}/states")).get("deviceStates", []) == []


def test_http_disabled_registry_refuses_devices(fx, base_url):
    d = new_device(fx, base_url, httpConfig={"httpEnabledState": "HTTP_DISABLED"})
    assert_google_error(d.event(b"x"), 401, "UNAUTHENTICATED")
    assert_google_error(d.state(b"x"), 401, "UNAUTHENTICATED")
    assert_google_error(d.config(0), 401, "UNAUTHENTICATED")


def test_a_device_jwt_does_not_open_the_admin_api(fx, base_url):
    d = new_device(fx, base_url)
    headers = {"authorization": f"Bearer {d.token()}"}
    resp = requests.get(f"{base_url}/{d.device['name']}", headers=headers, timeout=HTTP_TIMEOUT_S)
    assert_google_error(resp, 401, "UNAUTHENTICATED")
    resp = requests.post(f"{base_url}/{d.device['name']}:modifyCloudToDeviceConfig", headers=headers,
                         json={"binaryData": b64(b"self-made config")}, timeout=HTTP_TIMEOUT_S)
    assert_google_error(resp, 401, "UNAUTHENTICATED")
