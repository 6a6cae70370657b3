"""Identity and access (docs/iam.md) with Google's own clients, unchanged.

* API tokens made with `ferrocore tokens create`, one per Cloud IoT role, used as plain bearer
  tokens by google-cloud-iot over REST and gRPC against every DeviceManager method: allowed as the
  role table says, PERMISSION_DENIED (403) otherwise, with nothing changed by a refused call.
* Registry IAM policies (setIamPolicy with the admin token) granting a token's principal a role on
  one registry, and testIamPermissions answering the subset a caller holds.
* Service accounts and key files made with `ferrocore service-accounts`, used as Google's
  libraries use them: google-auth's token endpoint flow (the discovery client), self-signed JWTs
  (the GAPIC clients google-cloud-iot and google-cloud-pubsub, over REST and over gRPC on TLS).
* Refusals: forged and expired credentials, deleted accounts and keys.
* The back end of Google's end-to-end sample (cloudiot_pubsub_example_server.py) driven by a
  Ferrocore key file alone, with an MQTT device on the other end.

Token tests use the session server. The service-account tests use a server of this module's own,
serving gRPC over TLS with a certificate made here (gRPC call credentials need a secure channel),
and without --pubsub-anonymous, so every Pub/Sub call must carry a credential.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import ipaddress
import json
import os
import re
import secrets
import subprocess
import threading
import time
from typing import Any, Callable

import google.auth.exceptions
import google.auth.transport.grpc
import google.oauth2.credentials
import grpc
import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import iot_v1, pubsub_v1
from google.cloud.iot_v1.services.device_manager.transports import DeviceManagerGrpcTransport
from google.iam.v1 import policy_pb2
from google.oauth2 import service_account
from google.protobuf import field_mask_pb2
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport
from googleapiclient import discovery
from googleapiclient.errors import HttpError

import compat_support
from compat_server import _server_binary, launch_server
from compat_support import (
    TRANSPORTS,
    DeviceFixture,
    Exchange,
    GrpcExchangeRecorder,
    MqttDevice,
    Rest,
    assert_google_error,
    b64,
    error_report,
    fresh_project,
    grpc_client,
    location_path,
    record_rest_exchanges,
    unique,
    wait_for_config_slot,
)

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

# --- roles and permissions (docs/iam.md) ----------------------------------------------------------

VIEWER = {"cloudiot.registries.get", "cloudiot.registries.list", "cloudiot.devices.get", "cloudiot.devices.list"}
DEVICE_CONTROLLER = VIEWER | {"cloudiot.devices.updateConfig", "cloudiot.devices.sendCommand"}
PROVISIONER = DEVICE_CONTROLLER | {
    "cloudiot.devices.create", "cloudiot.devices.delete", "cloudiot.devices.update",
    "cloudiot.devices.bindGateway", "cloudiot.devices.unbindGateway",
}
EDITOR = PROVISIONER | {"cloudiot.registries.create", "cloudiot.registries.delete", "cloudiot.registries.update"}
ADMIN = EDITOR | {"cloudiot.registries.getIamPolicy", "cloudiot.registries.setIamPolicy"}

ROLE_PERMISSIONS = {
    "roles/cloudiot.viewer": VIEWER,
    "roles/cloudiot.deviceController": DEVICE_CONTROLLER,
    "roles/cloudiot.provisioner": PROVISIONER,
    "roles/cloudiot.editor": EDITOR,
    "roles/cloudiot.admin": ADMIN,
}

# The permission each DeviceManager method needs; None: testIamPermissions, which needs none.
METHOD_PERMISSION = {
    "list_device_registries": "cloudiot.registries.list",
    "create_device_registry": "cloudiot.registries.create",
    "get_device_registry": "cloudiot.registries.get",
    "update_device_registry": "cloudiot.registries.update",
    "delete_device_registry": "cloudiot.registries.delete",
    "get_iam_policy": "cloudiot.registries.getIamPolicy",
    "set_iam_policy": "cloudiot.registries.setIamPolicy",
    "test_iam_permissions": None,
    "bind_device_to_gateway": "cloudiot.devices.bindGateway",
    "unbind_device_from_gateway": "cloudiot.devices.unbindGateway",
    "list_devices": "cloudiot.devices.list",
    "create_device": "cloudiot.devices.create",
    "get_device": "cloudiot.devices.get",
    "list_device_config_versions": "cloudiot.devices.get",
    "list_device_states": "cloudiot.devices.get",
    "update_device": "cloudiot.devices.update",
    "delete_device": "cloudiot.devices.delete",
    "modify_cloud_to_device_config": "cloudiot.devices.updateConfig",
    "send_command_to_device": "cloudiot.devices.sendCommand",
}

# What testIamPermissions is asked on a registry: the permissions that apply to a registry and its
# devices (registries.list and .create are checked on the project).
REGISTRY_PERMISSIONS = sorted(ADMIN - {"cloudiot.registries.list", "cloudiot.registries.create"})


def test_every_device_manager_method_is_covered():
    """The table above names every method google-cloud-iot has, so a new one cannot go unchecked."""
    methods = {
        name for name in dir(iot_v1.DeviceManagerClient)
        if not name.startswith("_") and callable(getattr(iot_v1.DeviceManagerClient, name))
        and name not in ("from_service_account_file", "from_service_account_info", "from_service_account_json",
                         "get_mtls_endpoint_and_cert_source", "get_transport_class")
        and not name.endswith("_path") and not name.startswith("parse_") and not name.startswith("common_")
    }
    assert methods == set(METHOD_PERMISSION), methods ^ set(METHOD_PERMISSION)


# --- the CLI ---------------------------------------------------------------------------------------

def cli(srv, *args: str, project: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `ferrocore ARGS --server URL --token ADMIN [--project P]` against `srv`.

    Settings from the caller's shell (FERROCORE_*) are not passed on: only the flags count.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROCORE_")}
    # `--token=VALUE`: a random token may begin with '-', which a separate argument would make
    # look like a flag.
    argv = [str(_server_binary()), *args, "--server", srv.base_url, f"--token={srv.token}"]
    if project is not None:
        argv += ["--project", project]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(args)} -> exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


TOKEN_RE = re.compile(r"^fct_[A-Za-z0-9_-]{43}$")


def create_token(srv, project: str, principal: str, role: str, registry: str | None = None) -> str:
    """`ferrocore tokens create`: the token, printed alone on stdout."""
    args = ["tokens", "create", "--principal", principal, "--role", role]
    if registry is not None:
        args += ["--registry", registry]
    proc = cli(srv, *args, project=project)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and TOKEN_RE.match(lines[0]), f"not one token line: {proc.stdout!r}"
    return lines[0]


# --- google-cloud-iot clients with a bearer token -----------------------------------------------

def token_client(srv, transport: str, token: str, seen: list | None = None) -> iot_v1.DeviceManagerClient:
    """google-cloud-iot presenting `token`: over REST as google-auth credentials holding just the
    token, over gRPC as `authorization` metadata on a plaintext channel."""
    if transport == "rest":
        client = iot_v1.DeviceManagerClient(
            transport="rest",
            client_options=ClientOptions(api_endpoint=srv.base_url),
            credentials=google.oauth2.credentials.Credentials(token=token),
        )
        if seen is not None:
            record_rest_exchanges(client, seen)
        return client
    return grpc_client(srv.grpc_address, token, *([GrpcExchangeRecorder(seen)] if seen is not None else []))


@pytest.fixture
def clients():
    """Builds clients for a test and closes them afterwards: `clients(client)` registers one."""
    made = []

    def register(c):
        made.append(c)
        return c

    yield register
    for c in made:
        try:
            c.transport.close()
        except Exception:  # noqa: BLE001 - a client whose channel is gone already
            pass


# Over REST a 401 makes google-auth try to refresh the credentials first; a token-only credential
# cannot, so the caller sees google-auth's RefreshError, or api_core's Unauthorized (see test_gapic).
REST_AUTH_FAILURES = (gexc.Unauthorized, google.auth.exceptions.GoogleAuthError)


def expect_unauthenticated(transport: str):
    if transport == "rest":
        return pytest.raises(REST_AUTH_FAILURES)
    return compat_support.expect_error("UNAUTHENTICATED", transport=transport)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


GATEWAY = {"gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"}}
NON_GATEWAY = {"gatewayConfig": {"gatewayType": "NON_GATEWAY"}}


@dataclasses.dataclass
class World:
    """What the admin sets up in a fresh project before a token is tried on it."""

    project: str
    parent: str
    registry: str  # full name
    spare_registry: str  # empty; the one registry deletes are tried on
    device: str
    doomed_device: str  # the one device deletes are tried on
    gateway_id: str
    leaf_id: str  # unbound: the one binds are tried with
    bound_leaf_id: str  # bound by the admin: the one unbinds are tried with


def make_world(rest: Rest) -> World:
    project = fresh_project()
    parent = location_path(project)
    registry = rest.create_registry(parent, {"id": unique("reg")})["name"]
    spare = rest.create_registry(parent, {"id": unique("spare")})["name"]
    device = rest.create_device(registry, {"id": unique("dev")})["name"]
    doomed = rest.create_device(registry, {"id": unique("doomed")})["name"]
    gateway = rest.create_device(registry, {"id": unique("gw"), **GATEWAY})["id"]
    leaf = rest.create_device(registry, {"id": unique("leaf"), **NON_GATEWAY})["id"]
    bound = rest.create_device(registry, {"id": unique("bound"), **NON_GATEWAY})["id"]
    rest.ok(rest.post(f"v1/{registry}:bindDeviceToGateway", {"gatewayId": gateway, "deviceId": bound}))
    return World(project, parent, registry, spare, device, doomed, gateway, leaf, bound)


def gateway_devices(rest: Rest, w: World) -> set[str]:
    got = rest.ok(rest.get(f"v1/{w.registry}/devices",
                           params={"gatewayListOptions.associationsGatewayId": w.gateway_id}))
    return {d["id"] for d in got.get("devices", [])}


def method_calls(client: iot_v1.DeviceManagerClient, w: World) -> dict[str, Callable[[], Any]]:
    """One call of every DeviceManager method on `w`, the way users write them."""
    return {
        "list_device_registries": lambda: list(client.list_device_registries(parent=w.parent)),
        "create_device_registry": lambda: client.create_device_registry(
            parent=w.parent, device_registry=iot_v1.DeviceRegistry(id=unique("new"))),
        "get_device_registry": lambda: client.get_device_registry(name=w.registry),
        "update_device_registry": lambda: client.update_device_registry(
            device_registry=iot_v1.DeviceRegistry(name=w.registry, log_level=iot_v1.LogLevel.INFO),
            update_mask=mask("log_level")),
        "delete_device_registry": lambda: client.delete_device_registry(name=w.spare_registry),
        "get_iam_policy": lambda: client.get_iam_policy(resource=w.registry),
        "set_iam_policy": lambda: client.set_iam_policy(request={
            "resource": w.registry,
            "policy": {"bindings": [{"role": "roles/cloudiot.viewer", "members": ["user:auditor@example.com"]}]},
        }),
        "test_iam_permissions": lambda: client.test_iam_permissions(
            resource=w.registry, permissions=REGISTRY_PERMISSIONS),
        "bind_device_to_gateway": lambda: client.bind_device_to_gateway(
            parent=w.registry, gateway_id=w.gateway_id, device_id=w.leaf_id),
        "unbind_device_from_gateway": lambda: client.unbind_device_from_gateway(
            parent=w.registry, gateway_id=w.gateway_id, device_id=w.bound_leaf_id),
        "list_devices": lambda: list(client.list_devices(parent=w.registry)),
        "create_device": lambda: client.create_device(parent=w.registry, device=iot_v1.Device(id=unique("new"))),
        "get_device": lambda: client.get_device(name=w.device),
        "list_device_config_versions": lambda: client.list_device_config_versions(name=w.device),
        "list_device_states": lambda: client.list_device_states(name=w.device),
        "update_device": lambda: client.update_device(
            device=iot_v1.Device(name=w.device, metadata={"touched": "yes"}), update_mask=mask("metadata")),
        "delete_device": lambda: client.delete_device(name=w.doomed_device),
        "modify_cloud_to_device_config": lambda: client.modify_cloud_to_device_config(
            name=w.device, binary_data=b"from a token", retry=None),
        "send_command_to_device": lambda: client.send_command_to_device(name=w.device, binary_data=b"cmd"),
    }


# --- 1. API tokens, one per role, against every method ------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("role", sorted(ROLE_PERMISSIONS))
def test_role_tokens_against_every_method(server, rest, clients, role, transport):
    w = make_world(rest)
    held = ROLE_PERMISSIONS[role]
    token = create_token(server, w.project, f"user:{unique('ops')}@example.com", role)
    seen: list[Exchange] = []
    client = clients(token_client(server, transport, token, seen))

    outcomes = {}
    for method, call in method_calls(client, w).items():
        permission = METHOD_PERMISSION[method]
        if permission is None or permission in held:
            if method == "send_command_to_device":
                # Allowed, and then refused for what it is: the device is not connected.
                with compat_support.expect_error("FAILED_PRECONDITION", transport=transport):
                    call()
                outcomes[method] = "allowed"
                continue
            try:
                outcomes[method] = call()
            except gexc.GoogleAPICallError as e:
                pytest.fail(f"{role} may call {method} ({permission}), yet: {type(e).__name__}: {e}")
        else:
            with compat_support.expect_error("PERMISSION_DENIED", transport=transport) as exc:
                call()
            report = error_report(exc.value)
            assert f"Permission '{permission}' denied on resource" in report.message, (method, report)
            outcomes[method] = "denied"

    # Every request carried the token, and each answer was one of the ones expected.
    assert seen and all(e.authorization == f"Bearer {token}" for e in seen), seen
    assert {e.status for e in seen} <= {"OK", "PERMISSION_DENIED", "FAILED_PRECONDITION"}, seen

    granted = set(outcomes["test_iam_permissions"].permissions)
    assert granted == held & set(REGISTRY_PERMISSIONS), granted ^ (held & set(REGISTRY_PERMISSIONS))
    if "cloudiot.registries.getIamPolicy" in held:
        assert [(b.role, list(b.members)) for b in outcomes["set_iam_policy"].bindings] == [
            ("roles/cloudiot.viewer", ["user:auditor@example.com"])]
        policy = rest.ok(rest.post(f"v1/{w.registry}:getIamPolicy", {}))
        assert policy["bindings"] == [{"role": "roles/cloudiot.viewer", "members": ["user:auditor@example.com"]}]

    # What the admin sees afterwards: allowed calls took effect, refused ones changed nothing.
    def exists(name: str) -> bool:
        status = rest.get(f"v1/{name}").status_code
        assert status in (200, 404), status
        return status == 200

    assert exists(w.spare_registry) == ("cloudiot.registries.delete" not in held)
    assert exists(w.doomed_device) == ("cloudiot.devices.delete" not in held)
    device = rest.ok(rest.get(f"v1/{w.device}"))
    assert (device.get("metadata") == {"touched": "yes"}) == ("cloudiot.devices.update" in held)
    assert device["config"]["version"] == ("2" if "cloudiot.devices.updateConfig" in held else "1")
    registry = rest.ok(rest.get(f"v1/{w.registry}"))
    assert (registry.get("logLevel") == "INFO") == ("cloudiot.registries.update" in held)
    bound = gateway_devices(rest, w)
    assert (w.leaf_id in bound) == ("cloudiot.devices.bindGateway" in held)
    assert (w.bound_leaf_id in bound) == ("cloudiot.devices.unbindGateway" not in held)
    registries = rest.ok(rest.get(f"v1/{w.parent}/registries")).get("deviceRegistries", [])
    created = [r for r in registries if r["id"].startswith("new-")]
    assert len(created) == (1 if "cloudiot.registries.create" in held else 0), registries
    devices = rest.ok(rest.get(f"v1/{w.registry}/devices")).get("devices", [])
    assert len([d for d in devices if d["id"].startswith("new-")]) == (1 if "cloudiot.devices.create" in held else 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_registry_token_is_refused_on_other_registries(server, rest, clients, transport):
    w = make_world(rest)
    other = rest.create_registry(w.parent, {"id": unique("other")})["name"]
    other_device = rest.create_device(other, {"id": unique("dev")})["name"]
    registry_id = w.registry.rsplit("/", 1)[1]
    # --registry takes an id, completed with --project and the default region.
    token = create_token(server, w.project, f"user:{unique('fleet')}@example.com", "roles/cloudiot.provisioner",
                         registry=registry_id)
    listed = json.loads(cli(server, "tokens", "list", "--format", "json", project=w.project).stdout)
    [entry] = [t for t in listed if t["role"] == "roles/cloudiot.provisioner"]
    assert entry["registry"] == w.registry, entry

    client = clients(token_client(server, transport, token))
    assert client.get_device_registry(name=w.registry).name == w.registry
    assert client.get_device(name=w.device).name == w.device
    client.create_device(parent=w.registry, device=iot_v1.Device(id=unique("mine")))

    expect = functools.partial(compat_support.expect_error, "PERMISSION_DENIED", transport=transport)
    with expect():
        client.get_device_registry(name=other)
    with expect():
        list(client.list_devices(parent=other))
    with expect():
        client.get_device(name=other_device)
    with expect():
        client.create_device(parent=other, device=iot_v1.Device(id=unique("theirs")))
    with expect():
        client.delete_device(name=other_device)
    # Listing and creating registries are checked on the project, which the token has no role on.
    with expect():
        list(client.list_device_registries(parent=w.parent))
    with expect():
        client.create_device_registry(parent=w.parent, device_registry=iot_v1.DeviceRegistry(id=unique("reg")))
    # A registry that does not exist gets the same answer as one that does: nothing is revealed.
    with expect() as exc:
        client.get_device_registry(name=f"{w.parent}/registries/{unique('ghost')}")
    assert "(or it may not exist)" in error_report(exc.value).message
    # The same registry id in another project is another registry.
    with expect():
        client.get_device_registry(name=w.registry.replace(w.project, fresh_project()))
    assert rest.get(f"v1/{other_device}").status_code == 200
    assert rest.ok(rest.get(f"v1/{other}/devices")).get("devices", []) != []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tokens_list_shows_no_token_and_revoke_refuses_at_once(server, rest, clients, transport):
    project = fresh_project()
    registry = rest.create_registry(location_path(project), {"id": unique("reg")})["name"]
    principal = f"serviceAccount:{unique('ingest')}@example.iam.gserviceaccount.com"
    token = create_token(server, project, principal, "roles/cloudiot.deviceController")
    spare = create_token(server, project, "user:other@example.com", "roles/cloudiot.viewer")

    table = cli(server, "tokens", "list", project=project).stdout
    as_json = cli(server, "tokens", "list", "--format", "json", project=project).stdout
    raw = rest.get(f"v1/projects/{project}/tokens")
    for text in (table, as_json, raw.text):
        assert token not in text and spare not in text, text
        assert token[4:12] not in text, "no part of a token's secret is shown"
    assert table.splitlines()[0].split() == ["ID", "PRINCIPAL", "ROLE", "REGISTRY", "CREATED"], table
    items = json.loads(as_json)
    assert sorted(t["principal"] for t in items) == sorted([principal, "user:other@example.com"])
    assert all("token" not in t and t["id"] in table for t in items), items
    assert {t["id"] for t in items} == {t["id"] for t in rest.ok(raw)["tokens"]}
    [mine] = [t for t in items if t["principal"] == principal]
    assert mine["role"] == "roles/cloudiot.deviceController" and not mine.get("registry"), mine

    seen: list[Exchange] = []
    client = clients(token_client(server, transport, token, seen))
    assert client.get_device_registry(name=registry).name == registry

    cli(server, "tokens", "revoke", mine["id"], project=project)
    seen.clear()
    with expect_unauthenticated(transport):
        client.get_device_registry(name=registry)
    assert seen and all(e.status == "UNAUTHENTICATED" for e in seen), seen
    if transport == "rest":
        assert all(e.http_status == 401 for e in seen), seen
    assert_google_error(Rest(server.base_url, token).get(f"v1/{registry}"), 401, "UNAUTHENTICATED")
    remaining = json.loads(cli(server, "tokens", "list", "--format", "json", project=project).stdout)
    assert [t["principal"] for t in remaining] == ["user:other@example.com"]
    # The other token is untouched.
    assert Rest(server.base_url, spare).get(f"v1/{registry}").status_code == 200
    # Revoking again: the token is gone.
    again = cli(server, "tokens", "revoke", mine["id"], project=project, check=False)
    assert again.returncode == 1 and again.stderr.startswith("error: NOT_FOUND"), again.stderr


def test_tokens_cli_output_and_errors(server, rest):
    project = fresh_project()
    registry = rest.create_registry(location_path(project), {"id": unique("reg")})["name"]
    made = json.loads(cli(server, "tokens", "create", "--principal", "user:json@example.com", "--role",
                          "roles/cloudiot.viewer", "--registry", registry, "--format", "json",
                          project=project).stdout)
    assert TOKEN_RE.match(made["token"]), made
    assert (made["principal"], made["role"], made["registry"]) == (
        "user:json@example.com", "roles/cloudiot.viewer", registry)
    assert made["id"] and made["id"] not in made["token"], made
    assert Rest(server.base_url, made["token"]).get(f"v1/{registry}").status_code == 200

    bad_role = cli(server, "tokens", "create", "--principal", "user:x@example.com", "--role", "roles/owner",
                   project=project, check=False)
    assert bad_role.returncode == 1 and bad_role.stdout == "", bad_role
    assert bad_role.stderr.startswith("error: INVALID_ARGUMENT") and len(bad_role.stderr.splitlines()) == 1, bad_role
    no_project = cli(server, "tokens", "list", check=False)
    assert no_project.returncode == 1 and "--project" in no_project.stderr, no_project
    # The CLI's other verbs take an API token as --token, with that token's permissions.
    viewer = create_token(server, project, "user:cli@example.com", "roles/cloudiot.viewer")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROCORE_")}
    base = [str(_server_binary()), "registries"]
    flags = ["--server", server.base_url, f"--token={viewer}", "--project", project, "--format", "json"]
    listed = subprocess.run([*base, "list", *flags], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [r["name"] for r in json.loads(listed.stdout)] == [registry]
    refused = subprocess.run([*base, "create", unique("reg"), *flags], env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and refused.stderr.startswith("error: PERMISSION_DENIED: Permission "), refused
    # Only the owner manages tokens: a token, whatever its role, cannot make one.
    admin_token = create_token(server, project, "user:boss@example.com", "roles/cloudiot.admin")
    resp = Rest(server.base_url, admin_token).post(
        f"v1/projects/{project}/tokens", {"principal": "user:x@example.com", "role": "roles/cloudiot.admin"})
    assert_google_error(resp, 403, "PERMISSION_DENIED")


# --- 2. registry IAM policies --------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_registry_policy_grants_a_principal_a_role_there_only(server, rest, clients, transport):
    w = make_world(rest)
    other = rest.create_registry(w.parent, {"id": unique("other")})["name"]
    principal = f"user:{unique('analyst')}@example.com"
    # The token's own role gives no Cloud IoT permission at all.
    token = create_token(server, w.project, principal, "roles/pubsub.viewer")
    client = clients(token_client(server, transport, token))
    admin = clients(token_client(server, transport, server.token))
    expect_denied = functools.partial(compat_support.expect_error, "PERMISSION_DENIED", transport=transport)

    with expect_denied():
        client.get_device_registry(name=w.registry)
    assert list(client.test_iam_permissions(resource=w.registry, permissions=REGISTRY_PERMISSIONS).permissions) == []

    current = admin.get_iam_policy(resource=w.registry)
    policy = policy_pb2.Policy(
        bindings=[policy_pb2.Binding(role="roles/cloudiot.viewer", members=[principal])], etag=current.etag)
    admin.set_iam_policy(request={"resource": w.registry, "policy": policy})

    # At once: a viewer on this registry and its devices...
    assert client.get_device_registry(name=w.registry).name == w.registry
    assert w.device in {d.name for d in client.list_devices(parent=w.registry)}
    assert client.get_device(name=w.device).name == w.device
    granted = client.test_iam_permissions(resource=w.registry, permissions=REGISTRY_PERMISSIONS).permissions
    assert sorted(granted) == sorted(VIEWER & set(REGISTRY_PERMISSIONS))
    # ...and nothing more,
    with expect_denied():
        client.modify_cloud_to_device_config(name=w.device, binary_data=b"no", retry=None)
    with expect_denied():
        client.delete_device(name=w.device)
    with expect_denied():
        client.get_iam_policy(resource=w.registry)
    # nor anywhere else.
    with expect_denied():
        client.get_device_registry(name=other)
    with expect_denied():
        list(client.list_device_registries(parent=w.parent))
    assert list(client.test_iam_permissions(resource=other, permissions=REGISTRY_PERMISSIONS).permissions) == []

    # allAuthenticatedUsers on the other registry: every caller with a credential, this one too.
    admin.set_iam_policy(request={"resource": other, "policy": {"bindings": [
        {"role": "roles/cloudiot.deviceController", "members": ["allAuthenticatedUsers"]}]}})
    granted = client.test_iam_permissions(resource=other, permissions=REGISTRY_PERMISSIONS).permissions
    assert sorted(granted) == sorted(DEVICE_CONTROLLER & set(REGISTRY_PERMISSIONS))
    assert client.get_device_registry(name=other).name == other
    # ...but still not an anonymous caller.
    assert_google_error(Rest(server.base_url, None).get(f"v1/{other}"), 401, "UNAUTHENTICATED")

    # Removing the binding takes the access away at once.
    admin.set_iam_policy(request={"resource": w.registry, "policy": {"bindings": []}})
    with expect_denied():
        client.get_device_registry(name=w.registry)

    # A viewer token on the project answers testIamPermissions with the viewer's subset.
    viewer = clients(token_client(server, transport, create_token(
        server, w.project, f"user:{unique('viewer')}@example.com", "roles/cloudiot.viewer")))
    granted = viewer.test_iam_permissions(resource=w.registry, permissions=REGISTRY_PERMISSIONS).permissions
    assert sorted(granted) == sorted(VIEWER & set(REGISTRY_PERMISSIONS))


@pytest.mark.parametrize("document", ["packaged", "served"])
def test_iam_methods_through_the_discovery_client(server, rest, document):
    """What the IoT Core manager sample's get_iam_policy / set_iam_policy did, with the discovery
    document packaged in google-api-python-client and with the one the server serves."""
    project = fresh_project()
    name = rest.create_registry(location_path(project), {"id": unique("reg")})["name"]
    member = f"user:{unique('ana')}@example.com"
    credentials = google.oauth2.credentials.Credentials(token=server.token)
    if document == "packaged":
        svc = discovery.build("cloudiot", "v1", static_discovery=True, cache_discovery=False,
                              client_options={"api_endpoint": f"{server.base_url}/"}, credentials=credentials)
    else:
        svc = discovery.build("cloudiot", "v1", discoveryServiceUrl=f"{server.base_url}/$discovery/rest?version=v1",
                              static_discovery=False, cache_discovery=False, credentials=credentials)
    try:
        registries = svc.projects().locations().registries()
        for method in ("getIamPolicy", "setIamPolicy", "testIamPermissions"):
            assert hasattr(registries, method), f"the {document} discovery document has no registries.{method}"
        empty = registries.getIamPolicy(resource=name, body={}).execute()
        assert empty.get("bindings", []) == [] and empty["etag"], empty
        body = {"policy": {"bindings": [{"members": [member], "role": "roles/cloudiot.viewer"}]}}
        stored = registries.setIamPolicy(resource=name, body=body).execute()
        assert stored["bindings"] == body["policy"]["bindings"] and stored["etag"] != empty["etag"], stored
        assert registries.getIamPolicy(resource=name, body={}).execute() == stored
        stale = {"policy": {"bindings": [], "etag": empty["etag"]}}
        with pytest.raises(HttpError) as exc:
            registries.setIamPolicy(resource=name, body=stale).execute()
        assert exc.value.resp.status == 409
        assert json.loads(exc.value.content)["error"]["status"] == "ABORTED"
        asked = ["cloudiot.devices.get", "cloudiot.registries.setIamPolicy"]
        granted = registries.testIamPermissions(resource=name, body={"permissions": asked}).execute()
        assert sorted(granted["permissions"]) == sorted(asked)
    finally:
        svc.close()


def test_deleting_a_registry_deletes_its_policy(server, rest, clients):
    project = fresh_project()
    parent = location_path(project)
    rid = unique("reg")
    name = rest.create_registry(parent, {"id": rid})["name"]
    principal = f"user:{unique('ana')}@example.com"
    token = create_token(server, project, principal, "roles/pubsub.viewer")
    rest.ok(rest.post(f"v1/{name}:setIamPolicy", {"policy": {"bindings": [
        {"role": "roles/cloudiot.viewer", "members": [principal]}]}}))
    assert Rest(server.base_url, token).get(f"v1/{name}").status_code == 200
    rest.ok(rest.delete(f"v1/{name}"))
    rest.create_registry(parent, {"id": rid})
    assert rest.ok(rest.post(f"v1/{name}:getIamPolicy", {})).get("bindings", []) == []
    assert_google_error(Rest(server.base_url, token).get(f"v1/{name}"), 403, "PERMISSION_DENIED")


# --- service accounts: a server of this module's own, gRPC over TLS ------------------------------

@dataclasses.dataclass
class Tls:
    ca_path: Any
    cert_path: Any
    key_path: Any

    @property
    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem)


def make_tls(directory) -> Tls:
    """A CA and a server certificate it signs, for localhost and 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Ferrocore compat test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tls = Tls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    tls.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    tls.key_path.touch(mode=0o600)
    tls.key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return tls


@dataclasses.dataclass
class SaServer:
    srv: Any
    tls: Tls

    @property
    def base_url(self) -> str:
        return self.srv.base_url

    @property
    def token(self) -> str:
        return self.srv.token

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.srv.grpc_port}"

    @property
    def rest(self) -> Rest:
        return Rest(self.srv.base_url, self.srv.token)


@pytest.fixture(scope="module")
def sa_server(tmp_path_factory) -> SaServer:
    tls = make_tls(tmp_path_factory.mktemp("iam-tls"))
    data_dir = tmp_path_factory.mktemp("ferrocore-iam-data")
    log_path = tmp_path_factory.mktemp("ferrocore-iam-log") / "server.log"
    srv = launch_server(data_dir, log_path, secrets.token_urlsafe(32),
                        ("--tls-cert", str(tls.cert_path), "--tls-key", str(tls.key_path)))
    yield SaServer(srv, tls)
    srv.stop()


@pytest.fixture
def sa_log(request, sa_server):
    """Prints the end of this module's server log when the test failed (pytest shows it under
    "Captured stdout teardown"); the session's report hook knows only the session server."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        print(f"--- ferrocore (test_iam module server) log ---\n{sa_server.srv.log_tail(4000)}")


@dataclasses.dataclass
class Account:
    project: str
    account_id: str
    email: str
    key_path: Any
    key_id: str
    key: dict  # the key file's JSON

    @property
    def member(self) -> str:
        return f"serviceAccount:{self.email}"


def create_account(sa: SaServer, tmp_path, roles: list[str], *, project: str | None = None,
                   registry: str | None = None) -> Account:
    """`service-accounts create` and `keys create --out`, the way an operator makes a key file."""
    project = project or fresh_project()
    account_id = unique("sa")
    args = ["service-accounts", "create", account_id]
    for role in roles:
        args += ["--role", role]
    if registry is not None:
        args += ["--registry", registry]
    cli(sa, *args, "--display-name", "compat back end", project=project)
    account = new_key(sa, tmp_path, project, account_id)
    return account


def new_key(sa: SaServer, tmp_path, project: str, account_id: str) -> Account:
    path = tmp_path / f"{account_id}-{unique('key')}.json"
    proc = cli(sa, "service-accounts", "keys", "create", account_id, "--out", str(path), project=project)
    assert proc.stdout == "", "the key goes to the file only"
    key = json.loads(path.read_text())
    assert key["private_key_id"] in proc.stderr, proc.stderr
    return Account(project, account_id, f"{account_id}@{project}.iam.gserviceaccount.com", path,
                   key["private_key_id"], key)


def sa_file_credentials(account: Account, **kw) -> service_account.Credentials:
    return service_account.Credentials.from_service_account_file(str(account.key_path), **kw)


def discovery_client(sa: SaServer, credentials):
    """google-api-python-client built from the server's discovery document, as Google's samples did."""
    return discovery.build(
        "cloudiot", "v1",
        discoveryServiceUrl=f"{sa.base_url}/$discovery/rest?version=v1",
        static_discovery=False, cache_discovery=False, credentials=credentials,
    )


def gapic_rest(sa: SaServer, credentials, seen: list | None = None) -> iot_v1.DeviceManagerClient:
    client = iot_v1.DeviceManagerClient(
        transport="rest", credentials=credentials, client_options=ClientOptions(api_endpoint=sa.base_url))
    if seen is not None:
        record_rest_exchanges(client, seen)
    return client


def gapic_grpc(sa: SaServer, credentials) -> iot_v1.DeviceManagerClient:
    """The gRPC transport as DeviceManagerClient builds it (self-signed JWTs on), on TLS to the
    module server: only the CA to trust is ours."""
    transport = DeviceManagerGrpcTransport(
        host=sa.grpc_target, credentials=credentials,
        ssl_channel_credentials=sa.tls.channel_credentials(), always_use_jwt_access=True,
    )
    return iot_v1.DeviceManagerClient(transport=transport)


def pubsub_clients(sa: SaServer, credentials) -> tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]:
    """google-cloud-pubsub clients with the key's credentials and the API endpoint of the server;
    the transports are the library's own, given the CA to trust."""
    assert "PUBSUB_EMULATOR_HOST" not in os.environ
    options = {"api_endpoint": sa.grpc_target}
    pub = pubsub_v1.PublisherClient(
        credentials=credentials, client_options=options,
        transport=functools.partial(PublisherGrpcTransport, ssl_channel_credentials=sa.tls.channel_credentials()))
    sub = pubsub_v1.SubscriberClient(
        credentials=credentials, client_options=options,
        transport=functools.partial(SubscriberGrpcTransport, ssl_channel_credentials=sa.tls.channel_credentials()))
    return pub, sub


@pytest.fixture
def grpc_authorizations(monkeypatch) -> list[tuple[str, str | None]]:
    """(service URL, authorization) of every gRPC call google-auth's metadata plugin authorizes."""
    seen: list[tuple[str, str | None]] = []
    original = google.auth.transport.grpc.AuthMetadataPlugin._get_authorization_headers

    def spy(self, context):
        headers = original(self, context)
        seen.append((context.service_url, dict(headers).get("authorization")))
        return headers

    monkeypatch.setattr(google.auth.transport.grpc.AuthMetadataPlugin, "_get_authorization_headers", spy)
    return seen


def self_signed_claims(authorization: str | None, account: Account) -> dict:
    """Checks that an Authorization value is a JWT the account's key signed (AIP-4111), not an
    access token from the token endpoint; returns its claims."""
    assert authorization and authorization.startswith("Bearer eyJ"), authorization
    token = authorization.removeprefix("Bearer ")
    assert token.count(".") == 2, token
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header.get("kid") == account.key_id, header
    public = serialization.load_pem_private_key(account.key["private_key"].encode(), None).public_key()
    claims = jwt.decode(token, public, algorithms=["RS256"], options={"verify_aud": False})
    assert claims["iss"] == account.email and claims["sub"] == account.email, claims
    assert claims["exp"] - claims["iat"] <= 3600, claims
    return claims


def admin_setup(sa: SaServer, project: str) -> tuple[str, str]:
    """A registry with one device, made with the admin token; (registry, device) names."""
    rest = sa.rest
    registry = rest.create_registry(location_path(project), {"id": unique("reg")})["name"]
    device = rest.create_device(registry, {"id": unique("dev")})["name"]
    return registry, device


# --- 3. service accounts and key files, with Google's libraries ---------------------------------

def test_service_account_cli_and_key_file(sa_server, sa_log, tmp_path):
    sa = sa_server
    project = fresh_project()
    account = create_account(sa, tmp_path, ["roles/cloudiot.viewer", "roles/pubsub.subscriber"], project=project)

    assert (account.key_path.stat().st_mode & 0o777) == 0o600
    key = account.key
    assert key["type"] == "service_account"
    assert key["project_id"] == project
    assert key["client_email"] == account.email
    assert key["token_uri"] == f"{sa.base_url}/token"
    assert key["client_id"]
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----"), "PKCS #8 PEM"
    private = serialization.load_pem_private_key(key["private_key"].encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048

    # An existing file is kept unless --force, and no key is made for nothing.
    before = account.key_path.read_bytes()
    refused = cli(sa, "service-accounts", "keys", "create", account.account_id, "--out", str(account.key_path),
                  project=project, check=False)
    assert refused.returncode == 1 and "already exists" in refused.stderr and "--force" in refused.stderr, refused
    assert account.key_path.read_bytes() == before
    keys = json.loads(cli(sa, "service-accounts", "keys", "list", account.account_id, "--format", "json",
                          project=project).stdout)
    assert [k["name"].rsplit("/", 1)[1] for k in keys] == [account.key_id], keys
    assert all("privateKeyData" not in k for k in keys)
    cli(sa, "service-accounts", "keys", "create", account.account_id, "--out", str(account.key_path), "--force",
        project=project)
    assert account.key_path.read_bytes() != before and (account.key_path.stat().st_mode & 0o777) == 0o600
    table = cli(sa, "service-accounts", "keys", "list", account.email, project=project).stdout
    assert table.splitlines()[0].split() == ["KEY_ID", "ALGORITHM", "CREATED"] and len(table.splitlines()) == 3

    # describe and list, by id and by email (the email names its project).
    described = json.loads(cli(sa, "service-accounts", "describe", account.email, "--format", "json").stdout)
    assert described["email"] == account.email
    assert described["name"] == f"projects/{project}/serviceAccounts/{account.email}"
    assert sorted(described["roles"]) == ["roles/cloudiot.viewer", "roles/pubsub.subscriber"]
    assert described["displayName"] == "compat back end"
    listed = json.loads(cli(sa, "service-accounts", "list", "--format", "json", project=project).stdout)
    assert [a["email"] for a in listed] == [account.email]
    table = cli(sa, "service-accounts", "list", project=project).stdout
    assert account.email in table and "roles/cloudiot.viewer" in table
    assert key["private_key"].splitlines()[1] not in table

    # Service accounts are the owner's business only.
    viewer_token = create_token(sa, project, "user:v@example.com", "roles/cloudiot.admin")
    assert_google_error(Rest(sa.base_url, viewer_token).get(f"v1/projects/{project}/serviceAccounts"),
                        403, "PERMISSION_DENIED")
    missing = cli(sa, "service-accounts", "describe", unique("nobody"), project=project, check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND"), missing


def test_key_file_with_the_discovery_client_goes_through_the_token_endpoint(sa_server, sa_log, tmp_path):
    sa = sa_server
    account = create_account(sa, tmp_path, ["roles/cloudiot.deviceController"])
    registry, device = admin_setup(sa, account.project)

    credentials = sa_file_credentials(account, scopes=[CLOUD_PLATFORM])
    assert credentials.token is None
    svc = discovery_client(sa, credentials)
    devices = svc.projects().locations().registries().devices()
    try:
        got = devices.get(name=device).execute()
        assert got["name"] == device
        assert credentials.token and credentials.token.startswith("fca."), credentials.token
        assert credentials.expiry is not None
        changed = devices.modifyCloudToDeviceConfig(
            name=device, body={"binaryData": base64.b64encode(b"fan on").decode()}).execute()
        assert changed["version"] == "2"
        listed = svc.projects().locations().registries().list(parent=location_path(account.project)).execute()
        assert [r["name"] for r in listed["deviceRegistries"]] == [registry]

        with pytest.raises(HttpError) as exc:
            devices.delete(name=device).execute()
        assert exc.value.resp.status == 403
        assert json.loads(exc.value.content)["error"]["status"] == "PERMISSION_DENIED"
    finally:
        svc.close()
    # The same access token works as a plain bearer token, with the account's permissions.
    assert Rest(sa.base_url, credentials.token).get(f"v1/{device}").status_code == 200
    assert_google_error(Rest(sa.base_url, credentials.token).delete(f"v1/{device}"), 403, "PERMISSION_DENIED")
    assert_google_error(Rest(sa.base_url, credentials.token).post(f"v1/{registry}:getIamPolicy", {}),
                        403, "PERMISSION_DENIED")


def test_token_endpoint_answers_as_rfc_7523_says(sa_server, sa_log, tmp_path):
    sa = sa_server
    account = create_account(sa, tmp_path, ["roles/cloudiot.viewer"])
    registry, _ = admin_setup(sa, account.project)
    session = requests.Session()
    session.trust_env = False

    def grant(assertion: str) -> requests.Response:
        return session.post(account.key["token_uri"], data={"grant_type": JWT_BEARER, "assertion": assertion},
                            timeout=30)

    now = int(time.time())
    for aud in (GOOGLE_TOKEN_URI, account.key["token_uri"]):
        ok = grant(sign(account, {"iss": account.email, "scope": CLOUD_PLATFORM, "aud": aud,
                                  "iat": now, "exp": now + 3600}))
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["token_type"] == "Bearer" and body["access_token"].startswith("fca."), body
        assert 0 < int(body["expires_in"]) <= 3600, body
        assert Rest(sa.base_url, body["access_token"]).get(f"v1/{registry}").status_code == 200

    refusals = {
        "expired": {"iss": account.email, "aud": GOOGLE_TOKEN_URI, "iat": now - 7200, "exp": now - 3600},
        "too long": {"iss": account.email, "aud": GOOGLE_TOKEN_URI, "iat": now, "exp": now + 7200},
        "other issuer": {"iss": f"x{account.email}", "aud": GOOGLE_TOKEN_URI, "iat": now, "exp": now + 600},
        "other audience": {"iss": account.email, "aud": "https://example.com/token", "iat": now, "exp": now + 600},
    }
    for what, claims in refusals.items():
        resp = grant(sign(account, claims))
        assert resp.status_code == 400, (what, resp.status_code, resp.text)
        assert resp.json()["error"] == "invalid_grant", (what, resp.text)
    resp = session.post(account.key["token_uri"], data={"grant_type": "client_credentials"}, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] in ("unsupported_grant_type", "invalid_request"), resp.text


def sign(account: Account, claims: dict, key_pem: str | None = None) -> str:
    """A JWT signed as google-auth signs it: RS256 with the key file's private key and its id."""
    return jwt.encode(claims, key_pem or account.key["private_key"], algorithm="RS256",
                      headers={"kid": account.key_id})


def test_key_file_with_gapic_rest_sends_a_self_signed_jwt(sa_server, sa_log, tmp_path, clients):
    sa = sa_server
    account = create_account(sa, tmp_path, ["roles/cloudiot.deviceController"])
    registry, device = admin_setup(sa, account.project)
    seen: list[Exchange] = []
    client = clients(gapic_rest(sa, sa_file_credentials(account), seen))

    assert client.get_device(name=device).name == device
    assert [d.name for d in client.list_devices(parent=registry)] == [device]
    assert client.modify_cloud_to_device_config(name=device, binary_data=b"on").version == 2
    with compat_support.expect_error("PERMISSION_DENIED", transport="rest"):
        client.delete_device(name=device)
    with compat_support.expect_error("PERMISSION_DENIED", transport="rest"):
        client.create_device(parent=registry, device=iot_v1.Device(id=unique("dev")))

    assert [e.status for e in seen] == ["OK", "OK", "OK", "PERMISSION_DENIED", "PERMISSION_DENIED"], seen
    for e in seen:
        claims = self_signed_claims(e.authorization, account)
        assert claims.get("aud") == "https://cloudiot.googleapis.com/" or "scope" in claims, claims
    assert sa.rest.get(f"v1/{device}").status_code == 200


def test_key_file_with_gapic_grpc_over_tls(sa_server, sa_log, tmp_path, clients, grpc_authorizations):
    sa = sa_server
    account = create_account(sa, tmp_path, ["roles/cloudiot.provisioner"])
    registry, device = admin_setup(sa, account.project)
    client = clients(gapic_grpc(sa, sa_file_credentials(account)))

    assert client.get_device(name=device).name == device
    made = client.create_device(parent=registry, device=iot_v1.Device(id=unique("dev")))
    client.delete_device(name=made.name)
    with compat_support.expect_error("PERMISSION_DENIED", transport="grpc"):
        client.delete_device_registry(name=registry)
    with compat_support.expect_error("PERMISSION_DENIED", transport="grpc"):
        client.get_iam_policy(resource=registry)
    granted = client.test_iam_permissions(resource=registry, permissions=REGISTRY_PERMISSIONS).permissions
    assert sorted(granted) == sorted(PROVISIONER & set(REGISTRY_PERMISSIONS))

    assert len(grpc_authorizations) >= 6, grpc_authorizations
    for url, authorization in grpc_authorizations:
        claims = self_signed_claims(authorization, account)
        assert claims.get("aud") == "https://cloudiot.googleapis.com/", claims
    assert sa.rest.get(f"v1/{registry}").status_code == 200


def test_key_file_with_pubsub_clients(sa_server, sa_log, tmp_path, grpc_authorizations):
    sa = sa_server
    account = create_account(sa, tmp_path, ["roles/pubsub.subscriber"])
    rest = sa.rest
    topic = f"projects/{account.project}/topics/{unique('topic')}"
    subscription = f"projects/{account.project}/subscriptions/{unique('sub')}"
    rest.ok(rest.request("PUT", f"v1/{topic}", json_body={}))
    rest.ok(rest.request("PUT", f"v1/{subscription}", json_body={"topic": topic}))
    [mid] = rest.ok(rest.post(f"v1/{topic}:publish", {"messages": [{"data": b64(b"reading 1")}]}))["messageIds"]

    publisher, subscriber = pubsub_clients(sa, sa_file_credentials(account))
    try:
        received = []
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            received = list(subscriber.pull(request={"subscription": subscription, "max_messages": 10},
                                            timeout=15).received_messages)
        assert [(m.message.message_id, m.message.data) for m in received] == [(mid, b"reading 1")]
        subscriber.acknowledge(request={"subscription": subscription, "ack_ids": [received[0].ack_id]})

        with pytest.raises(gexc.PermissionDenied):
            publisher.publish(topic, b"not allowed").result(timeout=20)
        with pytest.raises(gexc.PermissionDenied):
            subscriber.delete_subscription(request={"subscription": subscription})
        with pytest.raises(gexc.PermissionDenied):
            publisher.create_topic(request={"name": f"projects/{account.project}/topics/{unique('t')}"})
    finally:
        publisher.transport.close()
        subscriber.close()

    # Acknowledged: nothing is left for the admin to pull.
    left = rest.ok(rest.post(f"v1/{subscription}:pull", {"maxMessages": 10, "returnImmediately": True}))
    assert left.get("receivedMessages", []) == [], left
    assert grpc_authorizations, "no call went through google-auth's metadata plugin"
    for url, authorization in grpc_authorizations:
        claims = self_signed_claims(authorization, account)
        assert claims.get("aud") == "https://pubsub.googleapis.com/", claims


# --- 4. refusals ------------------------------------------------------------------------------------

def forge(account: Account, directory) -> Account:
    """The same key file with another RSA key in it: same email, same key id."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    forged = dict(account.key, private_key=pem)
    path = directory / f"forged-{unique('key')}.json"
    path.write_text(json.dumps(forged))
    return dataclasses.replace(account, key_path=path, key=forged)


def test_a_forged_key_file_is_refused(sa_server, sa_log, tmp_path, clients):
    sa = sa_server
    account = create_account(sa, tmp_path, ["roles/cloudiot.admin"])
    registry, device = admin_setup(sa, account.project)
    forged = forge(account, tmp_path)

    # The token endpoint: 400 invalid_grant, which google-auth raises as a RefreshError.
    now = int(time.time())
    resp = requests.post(account.key["token_uri"], timeout=30, data={"grant_type": JWT_BEARER, "assertion": sign(
        forged, {"iss": forged.email, "scope": CLOUD_PLATFORM, "aud": GOOGLE_TOKEN_URI, "iat": now, "exp": now + 600})})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text
    svc = discovery_client(sa, sa_file_credentials(forged, scopes=[CLOUD_PLATFORM]))
    try:
        with pytest.raises(google.auth.exceptions.RefreshError) as exc:
            svc.projects().locations().registries().get(name=registry).execute()
        assert "invalid_grant" in str(exc.value)
    finally:
        svc.close()

    # Self-signed JWTs: 401 over REST, UNAUTHENTICATED over gRPC.
    seen: list[Exchange] = []
    rest_client = clients(gapic_rest(sa, sa_file_credentials(forged), seen))
    with pytest.raises(REST_AUTH_FAILURES):
        rest_client.get_device(name=device)
    assert seen and all((e.status, e.http_status) == ("UNAUTHENTICATED", 401) for e in seen), seen
    grpc_client_ = clients(gapic_grpc(sa, sa_file_credentials(forged)))
    with compat_support.expect_error("UNAUTHENTICATED", transport="grpc"):
        grpc_client_.get_device(name=device)

    # The genuine file still works on both.
    assert clients(gapic_rest(sa, sa_file_credentials(account))).get_device(name=device).name == device
    assert clients(gapic_grpc(sa, sa_file_credentials(account))).get_device(name=device).name == device


def test_expired_or_overlong_self_signed_jwts_are_refused(sa_server, sa_log, tmp_path):
    sa = sa_server
    account = create_account(sa, tmp_path, ["roles/cloudiot.viewer"])
    registry, _ = admin_setup(sa, account.project)
    now = int(time.time())
    aud = "https://cloudiot.googleapis.com/"

    def call(claims: dict, key_pem: str | None = None) -> requests.Response:
        return Rest(sa.base_url, sign(account, claims, key_pem)).get(f"v1/{registry}")

    base = {"iss": account.email, "sub": account.email, "aud": aud}
    assert call({**base, "iat": now, "exp": now + 3600}).status_code == 200
    assert call({"iss": account.email, "sub": account.email, "scope": CLOUD_PLATFORM,
                 "iat": now, "exp": now + 3600}).status_code == 200
    # Five minutes of clock skew are allowed either way.
    assert call({**base, "iat": now + 120, "exp": now + 1800}).status_code == 200
    refused = {
        "expired an hour ago": {**base, "iat": now - 7200, "exp": now - 3600},
        "expired beyond the skew": {**base, "iat": now - 3000, "exp": now - 600},
        "lives two hours": {**base, "iat": now, "exp": now + 7200},
        "issued in the future": {**base, "iat": now + 1800, "exp": now + 3000},
        "another issuer": {**base, "iss": "someone@else.iam.gserviceaccount.com", "iat": now, "exp": now + 600},
        "another audience": {**base, "aud": "https://example.com/", "iat": now, "exp": now + 600},
    }
    for what, claims in refused.items():
        resp = call(claims)
        assert resp.status_code == 401, (what, resp.status_code, resp.text)
        assert_google_error(resp, 401, "UNAUTHENTICATED")
    # Signed by another key under the account's key id, or not signed at all.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    assert_google_error(call({**base, "iat": now, "exp": now + 600}, other), 401, "UNAUTHENTICATED")
    unsigned = jwt.encode({**base, "iat": now, "exp": now + 600}, None, algorithm="none",
                          headers={"kid": account.key_id})
    assert_google_error(Rest(sa.base_url, unsigned).get(f"v1/{registry}"), 401, "UNAUTHENTICATED")


def test_deleting_the_account_refuses_its_clients_at_once(sa_server, sa_log, tmp_path, clients):
    sa = sa_server
    account = create_account(sa, tmp_path, ["roles/cloudiot.viewer"])
    registry, device = admin_setup(sa, account.project)

    token_creds = sa_file_credentials(account, scopes=[CLOUD_PLATFORM])
    svc = discovery_client(sa, token_creds)
    seen: list[Exchange] = []
    jwt_client = clients(gapic_rest(sa, sa_file_credentials(account), seen))
    grpc_jwt_client = clients(gapic_grpc(sa, sa_file_credentials(account)))
    try:
        assert svc.projects().locations().registries().get(name=registry).execute()["name"] == registry
        assert token_creds.token.startswith("fca.")
        assert jwt_client.get_device(name=device).name == device
        assert grpc_jwt_client.get_device(name=device).name == device

        cli(sa, "service-accounts", "delete", account.account_id, project=account.project)

        assert_google_error(Rest(sa.base_url, token_creds.token).get(f"v1/{registry}"), 401, "UNAUTHENTICATED")
        # The discovery client retries a 401 once with a new token, which the endpoint refuses.
        with pytest.raises((HttpError, google.auth.exceptions.RefreshError)) as exc:
            svc.projects().locations().registries().get(name=registry).execute()
        if isinstance(exc.value, HttpError):
            assert exc.value.resp.status == 401
        else:
            assert "invalid_grant" in str(exc.value)
        seen.clear()
        with pytest.raises(REST_AUTH_FAILURES):
            jwt_client.get_device(name=device)
        assert seen and all((e.status, e.http_status) == ("UNAUTHENTICATED", 401) for e in seen), seen
        with compat_support.expect_error("UNAUTHENTICATED", transport="grpc"):
            grpc_jwt_client.get_device(name=device)
    finally:
        svc.close()
    gone = cli(sa, "service-accounts", "describe", account.email, check=False)
    assert gone.returncode == 1 and gone.stderr.startswith("error: NOT_FOUND"), gone
    # A new account of the same name does not bring the old key back.
    cli(sa, "service-accounts", "create", account.account_id, "--role", "roles/cloudiot.viewer",
        project=account.project)
    with pytest.raises(REST_AUTH_FAILURES):
        jwt_client.get_device(name=device)


def test_deleting_a_key_refuses_what_it_signed_at_once(sa_server, sa_log, tmp_path, clients):
    sa = sa_server
    first = create_account(sa, tmp_path, ["roles/cloudiot.viewer"])
    second = new_key(sa, tmp_path, first.project, first.account_id)
    assert second.key_id != first.key_id and second.email == first.email
    registry, device = admin_setup(sa, first.project)

    token_creds = sa_file_credentials(first, scopes=[CLOUD_PLATFORM])
    svc = discovery_client(sa, token_creds)
    first_jwt = clients(gapic_rest(sa, sa_file_credentials(first)))
    second_jwt = clients(gapic_rest(sa, sa_file_credentials(second)))
    second_grpc = clients(gapic_grpc(sa, sa_file_credentials(second)))
    try:
        assert svc.projects().locations().registries().get(name=registry).execute()["name"] == registry
        assert first_jwt.get_device(name=device).name == device
        assert second_jwt.get_device(name=device).name == device

        cli(sa, "service-accounts", "keys", "delete", first.account_id, first.key_id, project=first.project)

        assert_google_error(Rest(sa.base_url, token_creds.token).get(f"v1/{registry}"), 401, "UNAUTHENTICATED")
        with pytest.raises((HttpError, google.auth.exceptions.RefreshError)):
            svc.projects().locations().registries().get(name=registry).execute()
        with pytest.raises(REST_AUTH_FAILURES):
            first_jwt.get_device(name=device)
        # The account's other key is untouched.
        assert second_jwt.get_device(name=device).name == device
        assert second_grpc.get_device(name=device).name == device
    finally:
        svc.close()
    keys = json.loads(cli(sa, "service-accounts", "keys", "list", first.account_id, "--format", "json",
                          project=first.project).stdout)
    assert [k["name"].rsplit("/", 1)[1] for k in keys] == [second.key_id], keys


# --- 5. Google's end-to-end sample: the back end, with a Ferrocore key file ------------------------

def test_end_to_end_sample_back_end_with_a_key_file(sa_server, sa_log, tmp_path):
    """What cloudiot_pubsub_example_server.py does: a discovery client from a key file, a streaming
    subscriber on the registry's telemetry subscription, and on each {"temperature": T} a config
    {"fan_on": bool} sent to the device that reported it."""
    sa = sa_server
    fx = DeviceFixture(sa.rest, tmp_path / "keys")
    registry = fx.create_registry()
    device, key = fx.create_device(registry, "RS256")
    subscription = f"projects/{fx.project}/subscriptions/{unique('e2e')}"
    sa.rest.ok(sa.rest.request("PUT", f"v1/{subscription}", json_body={"topic": fx.topic("telemetry")}))
    account = create_account(sa, tmp_path, ["roles/cloudiot.deviceController", "roles/pubsub.subscriber"],
                             project=fx.project)

    # The back end, from the key file alone.
    credentials = sa_file_credentials(account).with_scopes([CLOUD_PLATFORM])
    service = discovery_client(sa, credentials)
    lock = threading.Lock()
    failures: list[BaseException] = []
    handled: list[dict] = []

    def update_device_config(project_id, region, registry_id, device_id, data):
        if data["temperature"] < 0:
            config = {"fan_on": False}
        elif data["temperature"] > 10:
            config = {"fan_on": True}
        else:
            return
        body = {"version_to_update": 0,
                "binary_data": base64.b64encode(json.dumps(config).encode("utf-8")).decode("ascii")}
        name = f"projects/{project_id}/locations/{region}/registries/{registry_id}/devices/{device_id}"
        with lock:
            service.projects().locations().registries().devices().modifyCloudToDeviceConfig(
                name=name, body=body).execute()

    def callback(message):
        try:
            data = json.loads(message.data.decode("utf-8"))
            attrs = message.attributes
            # Recorded before the config goes out: the device may see the config (and the test
            # check this list) before this callback would get past the API call.
            handled.append(data)
            update_device_config(attrs["projectId"], attrs["deviceRegistryLocation"], attrs["deviceRegistryId"],
                                 attrs["deviceId"], data)
            message.ack()
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            failures.append(e)
            message.nack()

    _, subscriber = pubsub_clients(sa, sa_file_credentials(account))
    future = subscriber.subscribe(subscription, callback=callback)

    mqtt = MqttDevice(fx.client_id(registry, device), fx.jwt(key), port=sa.srv.mqtts_port, ca_certs=sa.tls.ca_path)
    try:
        assert mqtt.connect() == 0, f"CONNACK {mqtt.connack}"
        config_topic = f"/devices/{device['id']}/config"
        assert mqtt.subscribe(config_topic, 1) == [1]
        first = mqtt.next_message()
        assert first.topic == config_topic and first.payload == b"", first

        mqtt.publish(f"/devices/{device['id']}/events", json.dumps({"temperature": 31}).encode())
        got = mqtt.next_message(timeout=20)
        assert failures == [], failures
        assert got.topic == config_topic and json.loads(got.payload) == {"fan_on": True}, got

        wait_for_config_slot()
        mqtt.publish(f"/devices/{device['id']}/events", json.dumps({"temperature": -4}).encode())
        got = mqtt.next_message(timeout=20)
        assert failures == [], failures
        assert json.loads(got.payload) == {"fan_on": False}, got
        assert handled == [{"temperature": 31}, {"temperature": -4}]
    finally:
        mqtt.close()
        future.cancel()
        try:
            future.result(timeout=10)
        except Exception:  # noqa: BLE001 - a cancelled stream's own end
            pass
        subscriber.close()
        service.close()

    assert credentials.token.startswith("fca."), "the discovery client got its token from POST /token"
    configs = sa.rest.ok(sa.rest.get(f"v1/{device['name']}/configVersions"))["deviceConfigs"]
    assert [c["version"] for c in configs] == ["3", "2", "1"]
    assert [json.loads(base64.b64decode(c["binaryData"])) for c in configs[:2]] == [
        {"fan_on": False}, {"fan_on": True}]
