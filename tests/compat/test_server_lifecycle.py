"""The server process as an operator meets it: the generated admin token, the listeners it
announces, and restarts.

These tests start their own servers (the `launch` fixture) on private data directories.
"""

from __future__ import annotations

import base64
import secrets
import stat
import time

import pytest
from google.api_core import exceptions as gexc

from compat_support import (
    Rest,
    assert_google_error,
    fresh_project,
    grpc_client,
    location_path,
    rsa_public_pem,
    unique,
)


def test_admin_token_is_generated_once_and_kept(launch, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    first = launch(data_dir)  # no token configured: the server writes <data-dir>/admin-token
    token_file = data_dir / "admin-token"
    assert len(first.token) >= 16
    mode = stat.S_IMODE(token_file.stat().st_mode)
    assert mode & 0o077 == 0, f"admin-token is readable by others (mode {oct(mode)})"

    parent = location_path(fresh_project())
    assert Rest(first.base_url, first.token).get(f"v1/{parent}/registries").status_code == 200
    assert_google_error(Rest(first.base_url, None).get(f"v1/{parent}/registries"), 401, "UNAUTHENTICATED")
    first.stop()

    second = launch(data_dir)
    assert second.token == first.token, "the generated token changed across a restart"
    assert Rest(second.base_url, second.token).get(f"v1/{parent}/registries").status_code == 200


def test_configured_token_wins_over_the_file(launch, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    generated = launch(data_dir)
    generated.stop()
    configured = secrets.token_urlsafe(24)
    srv = launch(data_dir, configured)
    parent = location_path(fresh_project())
    assert Rest(srv.base_url, configured).get(f"v1/{parent}/registries").status_code == 200
    resp = Rest(srv.base_url, generated.token).get(f"v1/{parent}/registries")
    assert_google_error(resp, 401, "UNAUTHENTICATED")


def test_everything_survives_a_restart(launch, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    token = secrets.token_urlsafe(32)
    parent = location_path(fresh_project())

    srv = launch(data_dir, token)
    rest = Rest(srv.base_url, token)
    reg = rest.create_registry(parent, {"id": unique("reg"), "logLevel": "INFO"})
    gw = rest.create_device(reg["name"], {"id": unique("gw"), "gatewayConfig": {"gatewayType": "GATEWAY"}})
    dev = rest.create_device(reg["name"], {
        "id": unique("dev"),
        "credentials": [{"publicKey": {"format": "RSA_PEM", "key": rsa_public_pem()}}],
        "metadata": {"k": "v"},
    })
    rest.ok(rest.post(f"v1/{dev['name']}:modifyCloudToDeviceConfig",
                      {"binaryData": base64.b64encode(b"kept").decode()}))
    rest.ok(rest.post(f"v1/{reg['name']}:bindDeviceToGateway", {"gatewayId": gw["id"], "deviceId": dev["id"]}))
    before = rest.ok(rest.get(f"v1/{dev['name']}"))
    srv.stop()

    srv = launch(data_dir, token)
    rest = Rest(srv.base_url, token)
    assert rest.ok(rest.get(f"v1/{reg['name']}")) == reg
    after = rest.ok(rest.get(f"v1/{reg['name']}/devices/{dev['id']}"))
    assert after == before
    assert after["config"]["version"] == "2"
    assert base64.b64decode(after["config"]["binaryData"]) == b"kept"
    versions = rest.ok(rest.get(f"v1/{dev['name']}/configVersions"))["deviceConfigs"]
    assert [v["version"] for v in versions] == ["2", "1"]
    bound = rest.ok(rest.get(f"v1/{reg['name']}/devices",
                             params={"gatewayListOptions.associationsGatewayId": gw["id"]}))
    assert [d["id"] for d in bound["devices"]] == [dev["id"]]
    # Numeric ids are never handed out twice, restart or not.
    new = rest.create_device(reg["name"], {"id": unique("dev")})
    assert new["numId"] not in (gw["numId"], dev["numId"])


def test_every_listener_is_announced_and_grpc_serves_the_same_data(launch, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    token = secrets.token_urlsafe(32)
    srv = launch(data_dir, token)
    wanted = (
        f"ferrocore listening http=127.0.0.1:{srv.http_port} grpc={srv.grpc_address}"
        f" mqtts=127.0.0.1:{srv.mqtts_port} mqtt=127.0.0.1:{srv.mqtt_port}"
    )
    deadline = time.monotonic() + 5
    while wanted not in srv.log_path.read_text(errors="replace").splitlines():
        assert time.monotonic() < deadline, f"no line {wanted!r} in the output:\n{srv.log_tail()}"
        time.sleep(0.05)

    rest = Rest(srv.base_url, token)
    reg = rest.create_registry(location_path(fresh_project()), {"id": unique("reg")})
    client = grpc_client(srv.grpc_address, token)
    anon = grpc_client(srv.grpc_address, None)
    try:
        got = client.get_device_registry(name=reg["name"])
        assert (got.id, got.name) == (reg["id"], reg["name"])
        with pytest.raises(gexc.Unauthenticated):
            anon.get_device_registry(name=reg["name"])
    finally:
        client.transport.close()
        anon.transport.close()
