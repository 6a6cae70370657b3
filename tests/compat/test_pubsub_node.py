"""Pub/Sub back ends written in Node: Google's official `@google-cloud/pubsub` client, unchanged,
pointed at the server with PUBSUB_EMULATOR_HOST.

The back end is tests/compat/node/backend.mjs, one scenario per run, which prints one JSON line
with what it saw and what the client sent over the wire (see that file and node/wire.mjs). The
client version is pinned in tests/compat/node/package.json and package-lock.json; `npm ci` installs
it once per session into tests/compat/node/node_modules, which is kept between runs and reinstalled
only when the lock file or the Node version changes (like scripts/compat-tests.sh does for the
venv).

The generic scenarios run against Ferrocore and against Google's Pub/Sub emulator as an oracle:
each must pass on both. Node 5.x opens five StreamingPull streams per subscription, so these also
check that the server shares one subscription's backlog among concurrent streams. Without `node`
and `npm` the module is skipped, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from compat_pubsub import PubsubTarget, start_emulator
from compat_support import LOCATION, REPO_ROOT, TIMESTAMP_RE, DeviceFixture, MqttDevice

# npm ci may run inside the first test of the session; the scenarios themselves take seconds.
pytestmark = pytest.mark.timeout(300)

NODE_DIR = REPO_ROOT / "tests" / "compat" / "node"
BACKEND = NODE_DIR / "backend.mjs"
CLIENT_PACKAGE = "@google-cloud/pubsub"
# The oldest Node the pinned client supports (its package.json `engines`).
MIN_NODE_MAJOR = 18
NPM_CI_TIMEOUT_S = 240
# What a scenario may take before the back end gives up by itself (it then still prints its JSON
# and closes its client); the test waits a little longer for the process to end.
SCENARIO_TIMEOUT_S = 60.0
PROCESS_GRACE_S = 45.0
# Written into node_modules after a successful `npm ci`: what that install was made from.
STAMP_NAME = ".ferrocore-install-stamp"

# The client's default streamingOptions.maxStreams.
NODE_STREAMS = 5


def cannot_run(reason: str):
    """Skips, or fails under CI=true: the Node compatibility tests must not pass silently in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"Node compatibility tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"Node compatibility tests skipped: {reason}")


# --- the Node project -----------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """One finished run of backend.mjs."""

    argv: list[str]
    returncode: int
    result: dict
    stderr: str

    def explain(self) -> str:
        brief = {k: v for k, v in self.result.items() if k not in ("wire", "messages")}
        return (f"node {' '.join(self.argv)} exited {self.returncode}\n"
                f"result: {json.dumps(brief, indent=1)[:6000]}\n"
                f"wire: {json.dumps(self.result.get('wire'))[:4000]}\n"
                f"stderr (tail): {self.stderr[-3000:]}")

    def assert_ok(self) -> dict:
        assert self.result.get("ok") is True and self.returncode == 0, self.explain()
        return self.result

    @property
    def streaming_pull(self) -> dict:
        return self.result["wire"]["streamingPull"]

    @property
    def rpcs(self) -> dict:
        return self.result["wire"]["rpcs"]


@dataclasses.dataclass
class NodeBackend:
    node: str
    client_version: str

    def start(self, scenario: str, endpoint: str, *args: str, target: str = "ferrocore",
              timeout: float = SCENARIO_TIMEOUT_S) -> tuple[subprocess.Popen, list[str]]:
        """Starts one scenario with PUBSUB_EMULATOR_HOST=endpoint, as a user's back end runs."""
        argv = [str(BACKEND), scenario, "--target", target, "--timeout", str(timeout), *args]
        env = dict(os.environ)
        env["PUBSUB_EMULATOR_HOST"] = endpoint
        env.pop("NODE_OPTIONS", None)  # nothing from the caller's shell changes the client
        # In emulator mode the client still asks google-auth-library for the universe domain, which
        # pings the GCE metadata server (169.254.169.254, metadata.google.internal) and logs a
        # MetadataLookupWarning when there is none. The documented switch turns that probe off so
        # that the tests never leave loopback; the client code itself is unchanged.
        env.setdefault("METADATA_SERVER_DETECTION", "none")
        proc = subprocess.Popen([self.node, *argv], cwd=NODE_DIR, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return proc, argv

    def finish(self, started: tuple[subprocess.Popen, list[str]],
               timeout: float = SCENARIO_TIMEOUT_S) -> Outcome:
        proc, argv = started
        try:
            stdout, stderr = proc.communicate(timeout=timeout + PROCESS_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise AssertionError(f"node {' '.join(argv)} did not end within {timeout + PROCESS_GRACE_S:.0f}s "
                                 f"although it has a timeout of its own\nstderr: {stderr[-3000:]}")
        for line in reversed(stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    result = json.loads(line)
                except ValueError:
                    break
                return Outcome(argv, proc.returncode, result, stderr)
        raise AssertionError(f"node {' '.join(argv)} exited {proc.returncode} without a JSON result\n"
                             f"stdout: {stdout[-2000:]}\nstderr: {stderr[-3000:]}")

    def run(self, scenario: str, endpoint: str, *args: str, target: str = "ferrocore",
            timeout: float = SCENARIO_TIMEOUT_S) -> Outcome:
        return self.finish(self.start(scenario, endpoint, *args, target=target, timeout=timeout), timeout)


def _install_stamp(node: str) -> str:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((NODE_DIR / name).read_bytes())
    digest.update(version.encode())
    return digest.hexdigest()


def _npm_ci(npm: str, node: str) -> None:
    """`npm ci` unless node_modules was installed from the same lock file and Node version."""
    stamp_path = NODE_DIR / "node_modules" / STAMP_NAME
    want = _install_stamp(node)
    # Two pytest sessions on one checkout must not install into the same node_modules at once.
    lock_path = pathlib.Path(tempfile.gettempdir()) / (
        "ferrocore-compat-node-" + hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:16] + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if stamp_path.is_file() and stamp_path.read_text().strip() == want:
                return
            env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false",
                       npm_config_audit="false")
            try:
                done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                                      env=env, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                cannot_run(f"`npm ci` in {NODE_DIR} took over {NPM_CI_TIMEOUT_S}s")
            if done.returncode != 0:
                cannot_run(f"`npm ci` in {NODE_DIR} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            stamp_path.write_text(want + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def node_backend() -> NodeBackend:
    """Node and npm from PATH, with the pinned client installed into tests/compat/node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        cannot_run(f"{'node' if not node else 'npm'} is not on PATH (Node >= {MIN_NODE_MAJOR} with npm is needed)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        cannot_run(f"cannot tell the version of {node} ({version!r})")
    if major < MIN_NODE_MAJOR:
        cannot_run(f"{node} is {version}; {CLIENT_PACKAGE} needs Node >= {MIN_NODE_MAJOR}")
    _npm_ci(npm, node)
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"][CLIENT_PACKAGE]
    installed = json.loads((NODE_DIR / "node_modules" / CLIENT_PACKAGE / "package.json").read_text())["version"]
    assert installed == pinned, f"{CLIENT_PACKAGE} {installed} is installed, package.json pins {pinned}"
    return NodeBackend(node, installed)


# --- servers ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_oracle_emulator(tmp_path_factory):
    """Google's Pub/Sub emulator for this module (skips when it is not installed)."""
    emu = start_emulator(tmp_path_factory.mktemp("node-pubsub-emulator") / "emulator.log")
    yield emu
    emu.stop()


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # "ferrocore" or "emulator"; backend.mjs takes it as --target
    endpoint: str  # host:port for PUBSUB_EMULATOR_HOST


@pytest.fixture(params=["ferrocore", "emulator"])
def target(request) -> Target:
    if request.param == "ferrocore":
        return Target("ferrocore", request.getfixturevalue("server").grpc_address)
    return Target("emulator", request.getfixturevalue("node_oracle_emulator").address)


def assert_streams_stayed_open(outcome: Outcome, subscription: str) -> None:
    """The client opened its five streams once, with the subscription, and none ended meanwhile
    (a stream the server ends is reopened by the client and would show as a sixth)."""
    sp = outcome.streaming_pull
    assert (sp["opened"], sp["maxConcurrent"]) == (NODE_STREAMS, NODE_STREAMS), outcome.explain()
    ended = [s for s in sp["streams"] if s["status"] is not None]
    assert ended == [], f"streams ended while the scenario ran: {ended}\n{outcome.explain()}"
    assert {s["firstRequest"]["subscription"] for s in sp["streams"]} == {subscription}, outcome.explain()


def assert_rpcs_succeeded(outcome: Outcome, *names: str) -> None:
    for name in names:
        entry = outcome.rpcs.get(name)
        assert entry and entry["errors"] == {}, f"{name}: {entry}\n{outcome.explain()}"


# --- generic scenarios, on Ferrocore and on Google's emulator --------------------------------------

def test_roundtrip_five_streams_share_one_subscription(node_backend, target):
    count = 500
    outcome = node_backend.run("roundtrip", target.endpoint, "--count", str(count), target=target.name)
    r = outcome.assert_ok()
    assert r["clientVersion"] == node_backend.client_version
    assert (r["published"], r["distinctIds"], r["received"], r["deliveries"]) == (count, count, count, count), r
    assert (r["missing"], r["duplicates"], r["contentMismatches"], r["badPublishTimes"]) == (0, {}, 0, 0), r
    sample = r["sample"]
    assert sample["attributes"]["seq"] == "1" and TIMESTAMP_RE.match(sample["publishTime"]), sample
    assert_streams_stayed_open(outcome, r["subscription"])
    # Node 5 acks and extends leases with unary calls, never inside the stream.
    assert_rpcs_succeeded(outcome, "Publish", "Acknowledge", "ModifyAckDeadline")
    assert outcome.rpcs["Acknowledge"]["ids"] >= count, outcome.explain()
    assert sum(s["inStreamAckIds"] for s in outcome.streaming_pull["streams"]) == 0
    assert sum(s["messages"] for s in outcome.streaming_pull["streams"]) == count, outcome.explain()


def test_nack_redelivers_with_the_same_message_id(node_backend, target):
    outcome = node_backend.run("nack", target.endpoint, target=target.name)
    r = outcome.assert_ok()
    assert len(r["messages"]) == 3, r
    for m in r["messages"]:
        assert (m["deliveries"], m["ackIdChanged"]) == (2, True), m
        assert m["redeliveredAfterMs"] < 10_000, m
    assert_streams_stayed_open(outcome, r["subscription"])
    # The nack is a unary ModifyAckDeadline with 0 seconds.
    assert_rpcs_succeeded(outcome, "Acknowledge", "ModifyAckDeadline")
    assert outcome.result["wire"]["modAckDeadlineSeconds"].get("0", 0) >= 3, outcome.explain()


def test_flow_control_limits_the_handler_and_everything_is_acked(node_backend, target):
    outcome = node_backend.run("flow", target.endpoint, "--count", "60", target=target.name)
    r = outcome.assert_ok()
    assert r["maxInHandler"] <= r["maxMessages"] == 10, r
    assert (r["received"], r["deliveries"], r["acked"], r["missing"], r["duplicates"]) == (60, 60, 60, 0, {}), r
    assert_streams_stayed_open(outcome, r["subscription"])
    streams = outcome.streaming_pull["streams"]
    assert {s["firstRequest"]["maxOutstandingMessages"] for s in streams} == {10}, outcome.explain()
    if target.name == "ferrocore":
        # Each stream asked for at most 10 outstanding messages. `maxOutstanding` is a lower bound of
        # what the server had outstanding on a stream when a response came (see node/wire.mjs), so
        # it must stay within 10. Emulator quirk: it ignores max_outstanding_messages and sends the
        # whole backlog on one stream at once (60 here).
        over = [(s["index"], s["maxOutstanding"]) for s in streams if s["maxOutstanding"] > 10]
        assert over == [], f"streams past max_outstanding_messages: {over}\n{outcome.explain()}"


def test_error_codes(node_backend, target):
    outcome = node_backend.run("errors", target.endpoint, target=target.name)
    r = outcome.assert_ok()
    codes = {what: got["code"] for what, got in r["results"].items()}
    expected = {
        "createExistingTopic": 6,  # ALREADY_EXISTS
        "publishToMissingTopic": 5,  # NOT_FOUND
        "subscriptionWithAckDeadline5": 3,  # INVALID_ARGUMENT
        "subscriptionWithAckDeadline601": 3,
        "subscriptionOnMissingTopic": 5,
        "getMissingSubscription": 5,
    }
    if target.name == "emulator" and codes["subscriptionWithAckDeadline5"] is None:
        # Emulator quirk: it accepts ack deadlines below 10 s; Google documents 10..600, and
        # Ferrocore keeps to that. backend.mjs reports the difference instead of failing.
        expected["subscriptionWithAckDeadline5"] = None
        assert r["quirks"] == ["accepts ackDeadlineSeconds 5 (Google documents 10..600)"], r
    else:
        assert r["quirks"] == [], r
    assert codes == expected, r
    assert all(got["message"] for got in r["results"].values() if got["code"] is not None), r


# --- IoT Core telemetry to a Node back end (Ferrocore only) ----------------------------------------

def test_device_telemetry_reaches_a_node_backend(server, rest, node_backend, tmp_path):
    fx = DeviceFixture(rest, tmp_path / "keys")
    registry = fx.create_registry()  # subfolder "alerts" -> alerts; other events -> telemetry
    # The back end's subscription, made the way its operator would: with the Python client.
    admin = PubsubTarget("ferrocore", server.grpc_address, server.base_url, token=server.token)
    admin.project = fx.project
    try:
        subscription = admin.create_subscription(fx.topic("telemetry"), prefix="node-backend")
    finally:
        admin.close()

    devices = [fx.create_device(registry, algorithm) for algorithm in ("RS256", "ES256")]
    expected: list[tuple[bytes, dict]] = []
    connections: list[MqttDevice] = []
    backend = None
    try:
        for device, key in devices:
            dev = MqttDevice(
                f"projects/{fx.project}/locations/{LOCATION}/registries/{registry['id']}/devices/{device['id']}",
                fx.jwt(key), port=server.mqtts_port, ca_certs=server.ca_path,
            )
            connections.append(dev)
            assert dev.connect() == 0, f"CONNACK {dev.connack} for {device['id']}"

        def send(n: int, payload: bytes, subfolder: str | None = None, *, reaches_telemetry: bool = True):
            dev, (device, _) = connections[n], devices[n]
            suffix = f"/{subfolder}" if subfolder else ""
            dev.publish(f"/devices/{device['id']}/events{suffix}", payload, qos=1)
            if reaches_telemetry:
                expected.append((payload, fx.iot_attributes(registry, device, subfolder)))

        # Telemetry waiting in the subscription before the back end starts...
        for n, (device, _) in enumerate(devices):
            send(n, f"{registry['id']}/{device['id']}-payload-1".encode())
            send(n, bytes(range(256)) + device["id"].encode(), "rooms/kitchen")
            send(n, f"{device['id']} overheating".encode(), "alerts", reaches_telemetry=False)
            connections[n].publish(f"/devices/{device['id']}/state", b'{"fan": "on"}', qos=1)
        # ...and telemetry sent while it runs. The count is known in advance: two more per device.
        total = len(expected) + 2 * len(devices)
        backend = node_backend.start("iot", server.grpc_address, "--subscription", subscription,
                                     "--count", str(total))
        for n, (device, _) in enumerate(devices):
            for i in (2, 3):
                send(n, f"{registry['id']}/{device['id']}-payload-{i}".encode())
        assert len(expected) == total
        outcome = node_backend.finish(backend)
        backend = None
    finally:
        if backend is not None:
            backend[0].kill()
            backend[0].communicate()
        for dev in connections:
            dev.close()

    r = outcome.assert_ok()
    assert (r["received"], r["deliveries"], r["duplicates"]) == (total, total, {}), outcome.explain()
    got = [(base64.b64decode(m["data"]), m["attributes"]) for m in r["messages"]]
    as_set = lambda pairs: {(data, frozenset(attrs.items())) for data, attrs in pairs}  # noqa: E731
    assert as_set(got) == as_set(expected), f"got {got}\nexpected {expected}"
    assert len({m["id"] for m in r["messages"]}) == total
    for m in r["messages"]:
        assert TIMESTAMP_RE.match(m["publishTime"]), m
    assert_streams_stayed_open(outcome, subscription)
    assert_rpcs_succeeded(outcome, "Acknowledge", "ModifyAckDeadline")
