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
* `ferrocore cluster status` lists the three nodes;
* telemetry lands in one topic log shared by the nodes (JetStream streams under the cluster
  prefix, removed afterwards): devices on node 2 and node 3 each publish 25 QoS 1 events, and a
  google-cloud-pubsub StreamingPull subscriber on node 1, subscribed before they spoke, receives
  all 50 with IoT Core's attributes, as offsets 0-49 of one topic, each device's in publish order;
  a message published with PublisherClient through node 3 follows them, in that stream and in a
  second subscription (made through node 2) pulled through node 2;
* a subscription created through node 1 and served through node 2: acks made through node 2 hold
  there (nacked messages come back at once, acked ones neither then nor after the ack deadline);
* a subscription created through node 2 just after node 3 published receives only what follows
  (its start is read from the shared log, not from node 2's cached view of it).

It needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth, `psql` on PATH) and NATS on
127.0.0.1:4222; without them the module is skipped, and under CI=true it fails instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import pathlib
import secrets
import shutil
import subprocess
import warnings

import google.oauth2.credentials
import pytest
from google.api_core.client_options import ClientOptions
from google.cloud import iot_v1
from google.protobuf import field_mask_pb2

from compat_buses import ferrocore_cli, nats_available, need, port_open
from compat_pubsub import RECEIVE_TIMEOUT_S, Collector, PubsubTarget, ack_all, pull, pull_for
from compat_server import Server, launch_server
from compat_support import (
    LOCATION,
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
# QoS 1 events each device publishes in the shared-log scenario.
EVENTS_PER_DEVICE = 25
# How long a subscriber may take to receive what the devices' PUBACKs already made durable.
DELIVERY_TIMEOUT_S = 2 * RECEIVE_TIMEOUT_S


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
    # The nodes keep their topic log in JetStream (crates/cluster/src/log.rs).
    no_jetstream = nats_available(NATS)
    need(no_jetstream is None, no_jetstream or "")
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
        try:
            remove_log_streams(prefix)
        except Exception as e:  # noqa: BLE001 - leftovers on NATS are no failure of a test
            warnings.warn(f"could not remove the cluster's JetStream streams {prefix}_log_*: {e!r}")


def remove_log_streams(prefix: str) -> None:
    """Deletes the JetStream streams of the cluster's topic log (`{prefix}_log_*`), which outlive
    the nodes on the shared NATS server."""
    import nats

    async def remove():
        nc = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}", connect_timeout=3, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            for info in await js.streams_info():
                if info.config.name.startswith(f"{prefix}_log_"):
                    await js.delete_stream(info.config.name)
        finally:
            await nc.close()

    asyncio.run(remove())


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
def pubsub(nodes, project) -> list[PubsubTarget]:
    """google-cloud-pubsub clients for node 1, 2 and 3, made as back ends make them
    (PUBSUB_EMULATOR_HOST), in the module's project. The nodes run without --pubsub-anonymous, so
    every call carries the admin token as a bearer credential."""
    targets = []
    for node in nodes:
        target = PubsubTarget("ferrocore", node.grpc_address, node.base_url, token=node.token,
                              grpc_token=node.token)
        target.project = project
        targets.append(target)
    yield targets
    for target in targets:
        target.close()


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


def iot_attributes(project: str, registry: iot_v1.DeviceRegistry, device: iot_v1.Device) -> dict:
    """The attributes IoT Core put on an event it forwarded to Pub/Sub (one without subfolder)."""
    return {
        "deviceId": device.id,
        "deviceNumId": str(device.num_id),
        "deviceRegistryId": registry.id,
        "deviceRegistryLocation": LOCATION,
        "projectId": project,
    }


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
    result = ferrocore_cli("cluster", "status", "--server", node1.base_url, f"--token={node1.token}",
                           "--format", "json")
    assert result.returncode == 0, f"ferrocore cluster status failed:\n{result.stdout}\n{result.stderr}"
    listed = json.loads(result.stdout)
    assert sorted(n["nodeId"] for n in listed) == list(NODE_IDS), listed
    for n in listed:
        assert n["httpAddress"] and n["mqttAddress"] and n["lastHeartbeatTime"], n


def test_telemetry_from_every_node_reaches_a_pubsub_subscriber_on_any_node(
        nodes, pubsub, rest_iot, project, key_dir, devices):
    on_node1, on_node2, on_node3 = pubsub
    # A registry of the test's own, so that its topic holds only what this test sends.
    topic = f"projects/{project}/topics/{unique('fleet')}"
    registry = rest_iot.create_device_registry(
        parent=location_path(project),
        device_registry=iot_v1.DeviceRegistry(id=unique("reg"), event_notification_configs=[
            iot_v1.EventNotificationConfig(pubsub_topic_name=topic)]),
    )
    # The registry made the topic; back ends subscribe before any device speaks: one through node 1,
    # read there, and one through node 2, pulled there at the end.
    assert on_node1.publisher.get_topic(request={"topic": topic}).name == topic
    backend = on_node1.create_subscription(topic, prefix="backend")
    second = on_node2.create_subscription(topic, prefix="second")

    # One device on node 2 and one on node 3 publish at the same time, each waiting for every PUBACK
    # (MqttDevice.publish is the sample's wait_for_publish).
    fleet = []
    for node in (nodes[1], nodes[2]):
        device, key = new_device(rest_iot, registry, key_dir)
        fleet.append((device, connect(devices, node, project, device, key)))

    def payload(device: iot_v1.Device, i: int) -> bytes:
        return f"{device.id}/event-{i}".encode()

    def send_all(device: iot_v1.Device, dev: MqttDevice) -> None:
        for i in range(EVENTS_PER_DEVICE):
            dev.publish(f"/devices/{device.id}/events", payload(device, i), qos=1)

    with concurrent.futures.ThreadPoolExecutor(len(fleet)) as pool:
        for sent in [pool.submit(send_all, device, dev) for device, dev in fleet]:
            sent.result()

    # StreamingPull through node 1, acking each message in the callback.
    total = EVENTS_PER_DEVICE * len(fleet)
    collector = Collector()
    on_node1.stream(backend, collector)
    deliveries = collector.wait_messages(total, timeout=DELIVERY_TIMEOUT_S)
    by_id: dict = {}
    for d in deliveries:  # at-least-once: a redelivery is the same message
        assert d.content == by_id.setdefault(d.message_id, d).content, (d, by_id[d.message_id])
    # One log: message ids are the topic's offsets, 0 to 49, whichever node took the event.
    assert sorted(by_id, key=int) == [str(i) for i in range(total)]
    for device, _ in fleet:
        mine = sorted((d for d in by_id.values() if d.attributes.get("deviceId") == device.id),
                      key=lambda d: int(d.message_id))
        # Each device's events, in the order it published them, with IoT Core's attributes.
        assert [d.data for d in mine] == [payload(device, i) for i in range(EVENTS_PER_DEVICE)], device.id
        for d in mine:
            assert d.attributes == iot_attributes(project, registry, device), d
        times = [d.publish_time for d in mine]
        assert times == sorted(times), f"{device.id}: publish times out of offset order: {times}"

    # A back end publishing through node 3 appends to the same log: the second subscription, pulled
    # through node 2, gets the devices' events and then this message.
    [message_id] = on_node3.publish(topic, [(b"from a back end", {"origin": "node-3"})])
    assert message_id == str(total)
    pulled = pull(on_node2.subscriber, second, total + 1, timeout=DELIVERY_TIMEOUT_S)
    ack_all(on_node2.subscriber, second, pulled)
    pulled_by_id = {m.message.message_id: m.message for m in pulled}
    assert sorted(pulled_by_id, key=int) == [str(i) for i in range(total + 1)]
    for mid, delivery in by_id.items():
        assert (pulled_by_id[mid].data, dict(pulled_by_id[mid].attributes)) == (delivery.data, delivery.attributes)
    got = pulled_by_id[message_id]
    assert (got.data, dict(got.attributes)) == (b"from a back end", {"origin": "node-3"})
    # The stream on node 1 gets it too.
    streamed = collector.wait_messages(total + 1, timeout=DELIVERY_TIMEOUT_S)
    late = next(d for d in streamed if d.message_id == message_id)
    assert (late.data, late.attributes) == (b"from a back end", {"origin": "node-3"})


def test_a_subscription_created_on_one_node_keeps_its_acks_on_the_node_serving_it(pubsub):
    on_node1, on_node2, _ = pubsub
    topic = on_node1.create_topic("acks")
    deadline_s = 10  # the shortest ack deadline Pub/Sub allows
    subscription = on_node1.create_subscription(topic, prefix="served-by-node-2", ack_deadline_seconds=deadline_s)
    sent = [(f"reading-{i}".encode(), {"n": str(i)}) for i in range(10)]
    on_node1.publish(topic, sent)

    # Node 2 serves it: pull everything, ack half, nack (deadline 0) the other half.
    subscriber = on_node2.subscriber
    first = pull(subscriber, subscription, len(sent), timeout=DELIVERY_TIMEOUT_S)
    assert sorted(m.message.data for m in first) == sorted(data for data, _ in sent)
    acked = [m for m in first if int(m.message.attributes["n"]) % 2 == 0]
    nacked = [m for m in first if int(m.message.attributes["n"]) % 2 == 1]
    ack_all(subscriber, subscription, acked)
    subscriber.modify_ack_deadline(request={
        "subscription": subscription, "ack_ids": [m.ack_id for m in nacked], "ack_deadline_seconds": 0})

    # The nacked messages come back through node 2 at once, with their ids; the acked ones do not.
    again = pull(subscriber, subscription, len(nacked), timeout=DELIVERY_TIMEOUT_S)
    assert sorted(m.message.message_id for m in again) == sorted(m.message.message_id for m in nacked)
    ack_all(subscriber, subscription, again)

    # Nothing comes back, not even once the first deliveries' leases have run out: every ack made
    # through node 2 held. (Absence has no event to wait for; the window outlasts the deadline.)
    leftover = pull_for(subscriber, subscription, seconds=deadline_s + 2.5)
    assert leftover == [], [(m.message.message_id, m.message.data) for m in leftover]


def test_a_subscription_created_just_after_another_node_published_gets_only_what_follows(pubsub):
    on_node1, on_node2, on_node3 = pubsub
    # Three rounds, so that a refresh landing by chance between the publish and the create cannot
    # hide a wrong start position.
    for _ in range(3):
        topic = on_node1.create_topic("late")
        on_node3.publish(topic, [(f"before-{i}".encode(), {}) for i in range(5)])
        subscription = on_node2.create_subscription(topic, prefix="late")
        [after] = on_node3.publish(topic, [(b"after", {})])
        received = pull(on_node2.subscriber, subscription, 1, timeout=DELIVERY_TIMEOUT_S)
        ack_all(on_node2.subscriber, subscription, received)
        assert [(m.message.message_id, m.message.data) for m in received] == [(after, b"after")]
