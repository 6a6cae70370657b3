"""`GET /metrics` read as Prometheus reads it: parsed with prometheus_client's own text-format
parser after paho-mqtt devices (as Google's cloudiot_mqtt_example.py connects) and REST calls
made a known load, and checked counter by counter.
"""

from __future__ import annotations

import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from compat_server import free_port
from compat_support import DeviceFixture, MqttDevice, Rest

MESSAGES = 5
PAYLOAD = b'{"temperature": 21.5}'
STATE = b'{"fan": "on"}'


def scrape(url: str, **kw) -> tuple[str, dict]:
    resp = requests.get(url, timeout=10, **kw)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    families = {}
    for family in text_string_to_metric_families(resp.text):
        assert family.name not in families, f"{family.name} twice"
        families[family.name] = family.type
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, key
            samples[key] = s.value
    # The types Prometheus will see (prometheus_client names counters without `_total`).
    assert families["ferrocore_mqtt_connects"] == "counter"
    assert families["ferrocore_mqtt_connections"] == "gauge"
    assert families["ferrocore_mqtt_puback_latency_seconds"] == "histogram"
    assert families["ferrocore_api_request_duration_seconds"] == "histogram"
    return resp.text, samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_by_what_paho_devices_and_rest_calls_did(server, rest: Rest, tmp_path):
    fx = DeviceFixture(rest, tmp_path / "keys")
    registry = fx.create_registry()
    devices = [fx.create_device(registry) for _ in range(2)]
    url = f"{server.base_url}/metrics"
    _, before = scrape(url)  # from loopback: no token

    opened = []
    try:
        for device, key in devices:
            dev = MqttDevice(fx.client_id(registry, device), fx.jwt(key), port=server.mqtts_port,
                             ca_certs=server.ca_path, host="localhost")
            opened.append(dev)
            assert dev.connect() == 0
            for _ in range(MESSAGES):
                dev.publish(f"/devices/{device['id']}/events", PAYLOAD, qos=1)
            dev.publish(f"/devices/{device['id']}/state", STATE, qos=1)
        _, during = scrape(url)
        assert value(during, "ferrocore_mqtt_connections", protocol="mqtts") \
            == value(before, "ferrocore_mqtt_connections", protocol="mqtts") + len(devices)
    finally:
        for dev in opened:
            dev.close()

    assert rest.get(f"v1/{devices[0][0]['name']}").status_code == 200
    assert rest.get(f"v1/{registry['name']}/devices/no-such-device").status_code == 404

    text, after = scrape(url)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    sent = len(devices) * MESSAGES
    assert delta("ferrocore_mqtt_connects_total", protocol="mqtts") == len(devices)
    assert delta("ferrocore_device_messages_received_total", bridge="mqtt", kind="telemetry") == sent
    assert delta("ferrocore_device_received_bytes_total", bridge="mqtt", kind="telemetry") == sent * len(PAYLOAD)
    assert delta("ferrocore_device_messages_received_total", bridge="mqtt", kind="state") == len(devices)
    assert delta("ferrocore_mqtt_puback_latency_seconds_count") == sent + len(devices)
    assert delta("ferrocore_mqtt_puback_latency_seconds_bucket", le="+Inf") == sent + len(devices)
    # The registry routes states to a topic too: both reach the log (state notifications are
    # forwarded after the PUBACK, so they may take a moment).
    deadline = time.monotonic() + 10
    while delta("ferrocore_topiclog_appended_records_total") < sent + len(devices) and time.monotonic() < deadline:
        time.sleep(0.05)
        _, after = scrape(url)
    assert delta("ferrocore_topiclog_appended_records_total") == sent + len(devices)
    assert delta("ferrocore_api_requests_total", protocol="rest", method="DeviceManager.GetDevice", code="200") == 1
    assert delta("ferrocore_api_requests_total", protocol="rest", method="DeviceManager.GetDevice", code="404") == 1
    for device, _ in devices:
        assert device["id"] not in text
    assert registry["id"] not in text and fx.project not in text


def test_the_metrics_listener_serves_without_a_token(launch, tmp_path):
    port = free_port()
    srv = launch(tmp_path / "data", "metrics-test-token-0123456789", extra_args=["--metrics", f"127.0.0.1:{port}"])
    _, samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert [v for (name, _), v in samples.items() if name == "ferrocore_build_info"] == [1.0]
    # Only /metrics there.
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 404
    # The --http listener from loopback needs no token either; the admin API still does.
    assert requests.get(f"{srv.base_url}/metrics", timeout=10).status_code == 200
    assert requests.get(f"{srv.base_url}/v1/sinks", timeout=10).status_code == 401
