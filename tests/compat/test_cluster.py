"""Three Ferrocore nodes as one cluster (docs/cluster.md), driven with the official clients.

The nodes share a fresh PostgreSQL database (`--store postgres://...`) and meet on the local NATS
server under a random `--cluster-prefix`; each has its own data directory, listeners and CA, and
all take the same admin token. The module checks, as a user would see it:

* registries and devices created through one node (google-cloud-iot over REST on node 1, over
  gRPC on node 3) are read through the others;
* a device on node 2 (paho-mqtt over TLS, config and commands at QoS 1) gets the commands sent
  through node 1 and node 3, and a command to a device connected nowhere is FAILED_PRECONDITION
  over both transports;
* a config set through node 3 reaches the device on node 2, and its acknowledgement shows as
  `device_ack_time` through node 1;
* one connection per device cluster-wide: connecting to node 3 ends the session on node 2, and
  blocking the device through node 1 ends the one on node 3;
* `ferrocore cluster status` lists the three nodes.

It needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth, `psql` on PATH) and NATS on
127.0.0.1:4222; without them the module is skipped, and under CI=true it fails instead.
"""

from __future__ import annotations

import json
import pathlib
import secrets
import shutil
import subprocess

import google.oauth2.credentials
import pytest
from google.api_core.client_options import ClientOptions
from google.cloud import iot_v1
from google.protobuf import field_mask_pb2

from compat_buses import ferrocore_cli, need, port_open
from compat_server import Server, launch_server
from compat_support import (
    DeviceKey,
    MqttDevice,
    Rest,
    create_jwt,
    expect_error,
    fresh_project,
    grpc_client,
    location_path,
    make_device_key,
    unique,
    wait_for,
)

POSTGRES = ("127.0.0.1", 5432)
NATS = ("127.0.0.1", 4222)
NODE_IDS = ("node-1", "node-2", "node-3")

# Nodes announce themselves every 2 s; all three should hear each other well within this.
MEMBERSHIP_TIMEOUT_S = 20.0
# How long a session the cluster ends (takeover, blocking) may take to close.
SESSION_END_TIMEOUT_S = 5.0


# --- PostgreSQL -----------------------------------------------------------------------------------

def psql(sql: str) -> subprocess.CompletedProcess:
    """Runs one statement as user postgres on the `postgres` database (trust auth)."""
    return subprocess.run(
        ["psql", "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h", POSTGRES[0], "-p", str(POSTGRES[1]),
         "-U", "postgres", "-d", "postgres", "-c", sql],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def database() -> str:
    """A fresh, empty PostgreSQL database for this module's cluster; dropped afterwards."""
    need(shutil.which("psql") is not None, "psql is not on PATH")
    need(port_open(*POSTGRES), f"PostgreSQL is not reachable on {POSTGRES[0]}:{POSTGRES[1]}")
    need(port_open(*NATS), f"NATS is not reachable on {NATS[0]}:{NATS[1]}")
    name = f"ferrocore_cluster_{secrets.token_hex(6)}"
    created = psql(f'CREATE DATABASE "{name}"')
    need(created.returncode == 0, f"cannot create a PostgreSQL database: {created.stderr.strip()}")
    yield name
    # The nodes are stopped by now; FORCE ends any connection a killed node left behind.
    dropped = psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert dropped.returncode == 0, f"dropping {name}: {dropped.stderr}"


# --- the cluster ----------------------------------------------------------------------------------

class NodeLogsOnFailure:
    """A pytest plugin registered while the cluster runs: a failed test's report gets the end of
    every node's log (conftest.py's own hook only knows the session server)."""

    def __init__(self, nodes: list[Server]):
        self.nodes = nodes

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if report.when == "call" and report.failed:
            for node_id, node in zip(NODE_IDS, self.nodes):
                report.sections.append((f"{node_id} log ({node.log_path}) (tail)", node.log_tail(4000)))


def cluster_nodes(node: Server) -> list[dict]:
    """`GET /v1/cluster` on one node, with the admin token: the nodes it hears from."""
    rest = Rest(node.base_url, node.token)
    return rest.ok(rest.get("v1/cluster"))["nodes"]


@pytest.fixture(scope="module")
def nodes(database, tmp_path_factory, request) -> list[Server]:
    """node-1, node-2 and node-3 on one store and one NATS prefix, once each lists all three."""
    token = secrets.token_urlsafe(32)
    prefix = f"compat{secrets.token_hex(6)}"  # letters and digits only
    base = tmp_path_factory.mktemp("cluster")
    started: list[Server] = []
    plugin = NodeLogsOnFailure(started)
    request.config.pluginmanager.register(plugin, "cluster-node-logs")
    try:
        for node_id in NODE_IDS:
            data_dir = base / node_id  # its own admin files, topic log and CA
            data_dir.mkdir(mode=0o700)  # as tmp_path_factory makes its own
            started.append(launch_server(
                data_dir, base / f"{node_id}.log", token,
                ("--store", f"postgres://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{database}",
                 "--cluster", f"nats://{NATS[0]}:{NATS[1]}",
                 "--node-id", node_id,
                 "--cluster-prefix", prefix),
            ))
        for node_id, node in zip(NODE_IDS, started):
            wait_for(lambda node=node: sorted(n["nodeId"] for n in cluster_nodes(node)) == list(NODE_IDS),
                     f"{node_id} to hear from all three nodes", timeout=MEMBERSHIP_TIMEOUT_S)
        yield started
    finally:
        for node in started:
            node.stop()
        request.config.pluginmanager.unregister(plugin)


@pytest.fixture(scope="module")
def rest_iot(nodes) -> iot_v1.DeviceManagerClient:
    """google-cloud-iot on its REST transport, pointed at node 1."""
    client = iot_v1.DeviceManagerClient(
        transport="rest",
        client_options=ClientOptions(api_endpoint=nodes[0].base_url),
        credentials=google.oauth2.credentials.Credentials(token=nodes[0].token),
    )
    yield client
    client.transport.close()


@pytest.fixture(scope="module")
def grpc_iot(nodes) -> iot_v1.DeviceManagerClient:
    """google-cloud-iot on its gRPC transport, pointed at node 3."""
    client = grpc_client(nodes[2].grpc_address, nodes[2].token)
    yield client
    client.transport.close()


@pytest.fixture(scope="module")
def project() -> str:
    return fresh_project()


@pytest.fixture(scope="module")
def registry(rest_iot, project) -> iot_v1.DeviceRegistry:
    """A registry sending telemetry to topic `telemetry`, created through node 1 over REST."""
    return rest_iot.create_device_registry(
        parent=location_path(project),
        device_registry=iot_v1.DeviceRegistry(
            id=unique("reg"),
            event_notification_configs=[
                iot_v1.EventNotificationConfig(pubsub_topic_name=f"projects/{project}/topics/telemetry")
            ],
        ),
    )


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("cluster-keys")


@pytest.fixture
def devices():
    """Collects the MqttDevice connections a test opens, and closes them after it."""
    opened: list[MqttDevice] = []
    yield opened
    for dev in opened:
        dev.close()


# --- helpers --------------------------------------------------------------------------------------

def new_device(client: iot_v1.DeviceManagerClient, registry: iot_v1.DeviceRegistry,
               key_dir: pathlib.Path) -> tuple[iot_v1.Device, DeviceKey]:
    """A device with a fresh ES256 key, created through `client`."""
    key = make_device_key(key_dir, "ES256")
    device = client.create_device(
        parent=registry.name,
        device=iot_v1.Device(
            id=unique("dev"),
            credentials=[iot_v1.DeviceCredential(public_key=iot_v1.PublicKeyCredential(
                format=iot_v1.PublicKeyFormat.ES256_PEM, key=key.credential["publicKey"]["key"]))],
        ),
    )
    return device, key


def connect(devices: list, node: Server, project: str, device: iot_v1.Device, key: DeviceKey) -> MqttDevice:
    """Connects the device to `node` the way Google's MQTT sample does: TLS trusting that node's
    own CA, the full device path with its string id as client id, a fresh JWT as password."""
    # The API names a device by its numeric id (projects/P/.../devices/NUM_ID); the sample does not.
    registry_name = device.name.rsplit("/devices/", 1)[0]
    client_id = f"{registry_name}/devices/{device.id}"
    dev = MqttDevice(client_id, create_jwt(project, key.private_key_file, key.algorithm),
                     port=node.mqtts_port, ca_certs=node.ca_path)
    devices.append(dev)
    assert dev.connect() == 0, f"{device.id} refused by {node.base_url}: CONNACK {dev.connack}"
    return dev


def subscribe_like_the_sample(dev: MqttDevice, device: iot_v1.Device) -> None:
    """Subscribes to config and commands at QoS 1, and takes the config pushed on subscribing."""
    assert dev.subscribe(f"/devices/{device.id}/config", qos=1) == [1]
    first = dev.next_message()
    assert first.topic == f"/devices/{device.id}/config", first
    assert dev.subscribe(f"/devices/{device.id}/commands/#", qos=1) == [1]


def connected_on(node: Server, device: iot_v1.Device) -> bool:
    """Ferrocore's `GET .../devices/D/connection` on `node`: does the device hold a session there?"""
    rest = Rest(node.base_url, node.token)
    return rest.ok(rest.get(f"v1/{device.name}/connection"))["connected"]


# --- scenarios ------------------------------------------------------------------------------------

def test_resources_created_on_one_node_are_read_on_the_others(rest_iot, grpc_iot, registry, project, key_dir):
    # Through node 1 (REST): a device in the registry made there; node 3 (gRPC) reads both.
    dev1, _ = new_device(rest_iot, registry, key_dir)
    assert grpc_iot.get_device_registry(name=registry.name).event_notification_configs[0].pubsub_topic_name \
        == f"projects/{project}/topics/telemetry"
    assert grpc_iot.get_device(name=dev1.name).num_id == dev1.num_id

    # Through node 3 (gRPC): a registry of its own and a device in each; node 1 (REST) reads them.
    other = grpc_iot.create_device_registry(
        parent=location_path(project),
        device_registry=iot_v1.DeviceRegistry(id=unique("reg"), event_notification_configs=[
            iot_v1.EventNotificationConfig(pubsub_topic_name=f"projects/{project}/topics/other")]),
    )
    dev3, _ = new_device(grpc_iot, registry, key_dir)
    dev3b, _ = new_device(grpc_iot, other, key_dir)
    assert rest_iot.get_device(name=dev3.name).num_id == dev3.num_id
    assert rest_iot.get_device(name=dev3b.name).num_id == dev3b.num_id
    listed = {r.id for r in rest_iot.list_device_registries(parent=location_path(project))}
    assert {registry.id, other.id} <= listed
    assert {d.id for d in rest_iot.list_devices(parent=registry.name)} >= {dev1.id, dev3.id}


def test_commands_reach_a_device_on_another_node(nodes, rest_iot, grpc_iot, registry, project, key_dir, devices):
    device, key = new_device(rest_iot, registry, key_dir)
    dev = connect(devices, nodes[1], project, device, key)
    subscribe_like_the_sample(dev, device)

    # sendCommandToDevice answers once the device acknowledged; paho acknowledges on its own thread.
    for client, payload in [(rest_iot, b"reboot via node-1"), (grpc_iot, b"reboot via node-3")]:
        answer = client.send_command_to_device(name=device.name, binary_data=payload)
        assert answer == iot_v1.SendCommandToDeviceResponse()
        got = dev.next_message()
        assert (got.topic, got.payload, got.qos) == (f"/devices/{device.id}/commands", payload, 1)

    grpc_iot.send_command_to_device(name=device.name, binary_data=b"led on", subfolder="settings/led")
    got = dev.next_message()
    assert (got.topic, got.payload) == (f"/devices/{device.id}/commands/settings/led", b"led on")

    # A device connected to no node: FAILED_PRECONDITION, whichever node and transport is asked.
    # (Over REST google-api-core raises BadRequest, the class of HTTP 400; over gRPC FailedPrecondition.)
    idle, _ = new_device(rest_iot, registry, key_dir)
    with expect_error("FAILED_PRECONDITION", "rest"):
        rest_iot.send_command_to_device(name=idle.name, binary_data=b"anyone?")
    with expect_error("FAILED_PRECONDITION", "grpc"):
        grpc_iot.send_command_to_device(name=idle.name, binary_data=b"anyone?")
    dev.no_message(within=0.3)


def test_config_reaches_a_device_on_another_node_and_its_ack_is_seen_everywhere(
        nodes, rest_iot, grpc_iot, registry, project, key_dir, devices):
    device, key = new_device(rest_iot, registry, key_dir)
    dev = connect(devices, nodes[1], project, device, key)
    subscribe_like_the_sample(dev, device)

    config = grpc_iot.modify_cloud_to_device_config(name=device.name, binary_data=b"brightness=7")
    got = dev.next_message()
    assert (got.topic, got.payload, got.qos) == (f"/devices/{device.id}/config", b"brightness=7", 1)

    def acknowledged():
        versions = rest_iot.list_device_config_versions(name=device.name).device_configs
        return next((c for c in versions if c.version == config.version and "device_ack_time" in c), None)

    acked = wait_for(acknowledged, f"device_ack_time on config version {config.version} through node-1")
    assert acked.binary_data == b"brightness=7"


def test_one_session_per_device_across_the_cluster(nodes, rest_iot, registry, project, key_dir, devices):
    device, key = new_device(rest_iot, registry, key_dir)
    on_node2 = connect(devices, nodes[1], project, device, key)
    subscribe_like_the_sample(on_node2, device)
    assert connected_on(nodes[1], device)

    # The same device connects to node 3: node 2 ends its session.
    on_node3 = connect(devices, nodes[2], project, device, key)
    assert on_node2.wait_closed(SESSION_END_TIMEOUT_S), "node-2 kept the session node-3 took over"
    assert not on_node3.closed, "the new session on node-3 was closed"
    wait_for(lambda: connected_on(nodes[2], device) and not connected_on(nodes[1], device),
             "the connection endpoint to show the device on node-3 only", timeout=SESSION_END_TIMEOUT_S)

    # Blocking it through node 1 ends the session on node 3.
    rest_iot.update_device(device=iot_v1.Device(name=device.name, blocked=True),
                           update_mask=field_mask_pb2.FieldMask(paths=["blocked"]))
    assert on_node3.wait_closed(SESSION_END_TIMEOUT_S), "node-3 kept the session of a blocked device"
    wait_for(lambda: not connected_on(nodes[2], device), "node-3 to drop the blocked device",
             timeout=SESSION_END_TIMEOUT_S)


def test_cluster_status_lists_every_node(nodes):
    node1 = nodes[0]
    result = ferrocore_cli("cluster", "status", "--server", node1.base_url, "--token", node1.token,
                           "--format", "json")
    assert result.returncode == 0, f"ferrocore cluster status failed:\n{result.stdout}\n{result.stderr}"
    listed = json.loads(result.stdout)
    assert sorted(n["nodeId"] for n in listed) == list(NODE_IDS), listed
    for n in listed:
        assert n["httpAddress"] and n["mqttAddress"] and n["lastHeartbeatTime"], n
