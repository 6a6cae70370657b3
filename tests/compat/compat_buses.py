"""Helpers for the sink tests (test_sinks.py): the external systems `ferrocore serve --sink` forwards
to, read back with each system's own Python client, and devices that feed the topics.

* Services: NATS JetStream (127.0.0.1:4222), RabbitMQ (127.0.0.1:5672, guest/guest) and Redis
  (127.0.0.1:6379) shared with the machine; private `nats-server` and `redis-server` processes on
  free ports for the outage tests; Google's Pub/Sub emulator (started once per session); a webhook
  receiver (http.server) of the test's own. A missing service skips its test, or fails it when
  CI=true (`need`).
* Readers turn what each system holds into `Forwarded` records, so that one check
  (`check_forwarded`) compares them with what the embedded topic log holds.
* `Fleet`: a registry with two devices (RS256 with a certificate, ES256) connected over MQTT/TLS as
  Google's sample connects, publishing QoS 1 telemetry with and without subfolders.

`FailureLogs` attaches the log of every Ferrocore server a failed sink test started to its report.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import http.server
import json
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
from typing import Callable, Iterable

import pytest

from compat_server import Server, free_port, launch_server
from compat_support import DeviceFixture, MqttDevice, Rest, unique

# How long a wait for forwarded messages (or a sink state) may take before the test fails.
FORWARD_TIMEOUT_S = 30.0

SHARED_NATS = ("127.0.0.1", 4222)
SHARED_RABBITMQ = ("127.0.0.1", 5672)
SHARED_REDIS = ("127.0.0.1", 6379)


def need(ok: bool, reason: str) -> None:
    """Skips the test when `ok` is false; under CI (CI=true) that is a failure instead."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], object], what: str, timeout: float = FORWARD_TIMEOUT_S,
               interval: float = 0.05, explain: Callable[[], str] | None = None):
    """Polls `predicate` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


# --- Ferrocore servers with sinks ---------------------------------------------------------------

# Servers the running test started, for the failure report.
_STARTED: list[Server] = []


def start_ferrocore(tmp_path: pathlib.Path, sinks: Iterable[str], *, data_dir: pathlib.Path | None = None,
                    token: str | None = None, ports=None, extra_args: Iterable[str] = ()) -> Server:
    """`ferrocore serve --sink ...` on fresh (or the given) data directory and ports."""
    if data_dir is None:
        data_dir = tmp_path / unique("data")
        data_dir.mkdir()
    args = [a for entry in sinks for a in ("--sink", entry)] + list(extra_args)
    srv = launch_server(data_dir, tmp_path / "ferrocore.log", token or unique("token"), args, ports)
    _STARTED.append(srv)
    return srv


def rest_of(srv: Server) -> Rest:
    return Rest(srv.base_url, srv.token)


def sinks_of(srv: Server) -> list[dict]:
    """GET /v1/sinks with the admin token."""
    rest = rest_of(srv)
    return rest.ok(rest.get("v1/sinks"))["sinks"]


def the_sink(srv: Server) -> dict:
    sinks = sinks_of(srv)
    assert len(sinks) == 1, f"expected one sink: {sinks}"
    return sinks[0]


def ferrocore_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs the ferrocore binary (a client command) without FERROCORE_* settings from the shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROCORE_") or k == "FERROCORE_BIN"}
    env["NO_COLOR"] = "1"
    binary = os.environ.get("FERROCORE_BIN") or "ferrocore"
    return subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def read_log(srv: Server, topic: str, expect: int, timeout: float = 10.0) -> list[dict]:
    """Every message of a topic of the embedded log (up to 1000), once at least `expect` are there."""
    rest = rest_of(srv)
    deadline = time.monotonic() + timeout
    while True:
        resp = rest.get(f"v1/{topic}/messages", params={"from": "earliest", "maxMessages": 1000})
        if resp.status_code == 200:
            messages = resp.json().get("messages", [])
            if len(messages) >= expect:
                return messages
        elif resp.status_code != 404:
            raise AssertionError(f"reading {topic}: {resp.status_code} {resp.text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic} holds fewer than {expect} messages: {resp.status_code} {resp.text[:500]}")
        time.sleep(0.1)


def wait_caught_up(srv: Server, ends: dict[str, int], timeout: float = FORWARD_TIMEOUT_S) -> dict:
    """Waits until the one sink's cursor of every topic in `ends` (topic -> next offset of the log)
    is there and nothing lags; returns the sink's status then."""
    last: dict = {}

    def caught_up():
        sink = the_sink(srv)
        last["sink"] = sink
        cursor = sink.get("cursor", {})
        done = all(cursor.get(t) == str(n) for t, n in ends.items()) and sink.get("lagMessages") == "0"
        return sink if done else None

    return wait_until(caught_up, f"the sink to forward up to {ends}", timeout,
                      explain=lambda: f"last status: {json.dumps(last.get('sink'), indent=1)}")


# --- the report hook ------------------------------------------------------------------------------

def stop_started_servers() -> None:
    """Stops every server `start_ferrocore` started (test_sinks.py calls it after each test)."""
    for srv in _STARTED:
        srv.stop()
    _STARTED.clear()


class FailureLogs:
    """A pytest plugin (test_sinks.py registers it for its tests): a failed test's report gets the
    end of the log of each Ferrocore server it started. conftest.py's own hook only knows the
    session server."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if report.when == "call" and report.failed:
            for i, srv in enumerate(_STARTED):
                report.sections.append((f"ferrocore log #{i + 1} ({srv.log_path}) (tail)", srv.log_tail(4000)))


# --- what arrived -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Forwarded:
    """One message as an external system holds it, in arrival order."""

    topic: str  # the Ferrocore topic it came from (ferrocoreTopic)
    offset: int  # ferrocoreOffset
    data: bytes
    attributes: dict  # the metadata carrying the attributes (headers, fields, attributes)
    where: str = ""  # the subject, routing key, stream key, path or Pub/Sub topic it went to
    extra: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)


def to_forwarded(data: bytes, attributes: dict, where: str = "", **extra) -> Forwarded:
    topic = attributes.get("ferrocoreTopic")
    offset = attributes.get("ferrocoreOffset")
    assert topic is not None and offset is not None and offset.isdigit(), (
        f"forwarded message lacks ferrocoreTopic/ferrocoreOffset: {attributes} {data[:60]!r}"
    )
    return Forwarded(topic, int(offset), data, dict(attributes), where, dict(extra))


def expected_attributes(message: dict, topic: str) -> dict:
    """What a forwarded message of the log must carry: its stored attributes plus Ferrocore's two."""
    return {**message.get("attributes", {}), "ferrocoreTopic": topic, "ferrocoreOffset": message["offset"]}


def check_forwarded(got: list[Forwarded], log: dict[str, list[dict]], *, ordered: bool = True,
                    duplicates_allowed: Callable[[str, int], bool] = lambda topic, offset: False) -> dict:
    """Checks what a system holds against what the embedded log holds (topic -> its messages).

    Every log message arrived, with the same body and with its attributes plus ferrocoreTopic and
    ferrocoreOffset, and nothing else arrived. With `ordered`, each topic's messages arrived in log
    order. A message may arrive more than once only where `duplicates_allowed(topic, offset)`: then
    the copies are identical and the first arrivals are still in order. Returns topic -> offsets
    that arrived twice or more.
    """
    by_topic: dict[str, list[Forwarded]] = collections.defaultdict(list)
    for f in got:
        by_topic[f.topic].append(f)
    unknown = set(by_topic) - set(log)
    assert not unknown, f"messages from topics that were not expected: {unknown}"
    repeated: dict[str, list[int]] = {}
    for topic, messages in log.items():
        want = {int(m["offset"]): m for m in messages}
        arrived = by_topic.get(topic, [])
        counts = collections.Counter(f.offset for f in arrived)
        missing = sorted(set(want) - set(counts))
        assert not missing, f"{topic}: {len(missing)} of {len(want)} messages never arrived: offsets {missing[:50]}"
        extra = sorted(set(counts) - set(want))
        assert not extra, f"{topic}: messages arrived that the log does not hold: offsets {extra[:50]}"
        twice = sorted(o for o, n in counts.items() if n > 1)
        bad = [o for o in twice if not duplicates_allowed(topic, o)]
        assert not bad, f"{topic}: offsets arrived more than once: {[(o, counts[o]) for o in bad[:50]]}"
        if twice:
            repeated[topic] = twice
        for f in arrived:
            m = want[f.offset]
            assert f.data == base64.b64decode(m["data"]), (
                f"{topic} offset {f.offset}: body {f.data[:80]!r} != payload {base64.b64decode(m['data'])[:80]!r}"
            )
            assert f.attributes == expected_attributes(m, topic), (
                f"{topic} offset {f.offset}: metadata {f.attributes} != {expected_attributes(m, topic)}"
            )
        if ordered:
            firsts = list(dict.fromkeys(f.offset for f in arrived))
            assert firsts == sorted(firsts), f"{topic}: arrived out of order: {firsts}"
            if not twice:
                assert [f.offset for f in arrived] == sorted(want), f"{topic}: {[f.offset for f in arrived]}"
    return repeated


# --- devices ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Sent:
    device_id: str
    topic: str  # the Ferrocore topic the registry routes it to
    subfolder: str | None
    payload: bytes


class Fleet:
    """One registry (subfolder "alerts" -> topic `alerts`, everything else -> `telemetry`) with two
    devices, RS256 (RSA_X509_PEM) and ES256 (ES256_PEM), connected over MQTT/TLS."""

    def __init__(self, srv: Server, key_dir: pathlib.Path, project: str):
        self.srv = srv
        self.fx = DeviceFixture(rest_of(srv), key_dir)
        self.fx.project = self.project = project
        self.registry = self.fx.create_registry()
        self.devices = [self.fx.create_device(self.registry, "RS256"), self.fx.create_device(self.registry, "ES256")]
        self.connections: list[MqttDevice] = []
        self.sent: list[Sent] = []
        self.sequence = 0
        self._lock = threading.Lock()

    @property
    def telemetry(self) -> str:
        return self.fx.topic("telemetry")

    @property
    def alerts(self) -> str:
        return self.fx.topic("alerts")

    @property
    def topics(self) -> tuple[str, str]:
        return (self.telemetry, self.alerts)

    def connect(self, srv: Server | None = None) -> None:
        """Connects every device (again, after a restart: `srv` is the new server)."""
        self.close()
        if srv is not None:
            self.srv = srv
            self.fx.rest = rest_of(srv)
        for device, key in self.devices:
            dev = MqttDevice(self.fx.client_id(self.registry, device), self.fx.jwt(key),
                             port=self.srv.mqtts_port, ca_certs=self.srv.ca_path)
            self.connections.append(dev)
            rc = dev.connect()
            assert rc == 0, f"CONNACK {rc} for {device['id']}"

    def close(self) -> None:
        for dev in self.connections:
            dev.close()
        self.connections = []

    def next_message(self, device: dict) -> tuple[str, str | None, bytes]:
        """(MQTT topic, subfolder, payload) of the next message: every 5th goes to subfolder
        "alerts" (topic alerts), every 5th other one to "rooms/kitchen" (telemetry, with subFolder),
        the rest to the plain events topic. Payloads are unique and not valid UTF-8."""
        with self._lock:
            n = self.sequence
            self.sequence += 1
        subfolder = {1: "alerts", 3: "rooms/kitchen"}.get(n % 5)
        payload = f"{device['id']}#{n}:".encode() + bytes([0x00, 0xFF, n % 256, 0x80])
        mqtt_topic = f"/devices/{device['id']}/events" + (f"/{subfolder}" if subfolder else "")
        return mqtt_topic, subfolder, payload

    def routed_to(self, subfolder: str | None) -> str:
        return self.alerts if subfolder == "alerts" else self.telemetry

    def publish(self, per_device: int, timeout: float = 15.0) -> list[Sent]:
        """Publishes `per_device` QoS 1 messages from every device (pipelined, each device on its
        own connection) and waits for every PUBACK; returns what was acknowledged."""
        pending = []
        for (device, _), dev in zip(self.devices, self.connections):
            for _ in range(per_device):
                mqtt_topic, subfolder, payload = self.next_message(device)
                info = dev.client.publish(mqtt_topic, payload, qos=1)
                pending.append((info, Sent(device["id"], self.routed_to(subfolder), subfolder, payload)))
        deadline = time.monotonic() + timeout
        acked = []
        for info, sent in pending:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            assert info.is_published(), f"no PUBACK within {timeout}s for {sent}"
            acked.append(sent)
        self.sent.extend(acked)
        return acked

    def publish_continuously(self, per_second: float = 40) -> "Publishing":
        """Every device publishes QoS 1 messages one after another (each once the previous one was
        acknowledged, at most `per_second`) on a thread of its own, until `Publishing.finish()`."""
        return Publishing(self, per_second)

    def counts(self) -> dict[str, int]:
        """Topic -> how many messages were acknowledged into it."""
        out = {t: 0 for t in self.topics}
        for s in self.sent:
            out[s.topic] += 1
        return out

    def log(self, srv: Server | None = None) -> dict[str, list[dict]]:
        """Each topic's messages in the embedded log, checked against what was acknowledged: every
        acknowledged message is there once, with IoT Core's attributes, each device's in the order
        it sent them."""
        srv = srv or self.srv
        out = {}
        for topic, n in self.counts().items():
            messages = read_log(srv, topic, n) if n else []
            out[topic] = messages
            stored = [(base64.b64decode(m["data"]), m) for m in messages]
            for device, _ in self.devices:
                mine = [s for s in self.sent if s.topic == topic and s.device_id == device["id"]]
                theirs = [(d, m) for d, m in stored if m.get("attributes", {}).get("deviceId") == device["id"]]
                acked = [s.payload for s in mine]
                in_log = [d for d, _ in theirs]
                # Unacknowledged messages (a kill -9 in between) may be there too; acknowledged
                # ones must all be, in order.
                positions = {d: i for i, d in enumerate(in_log)}
                assert all(p in positions for p in acked), (
                    f"{topic}: acknowledged messages of {device['id']} missing from the log: "
                    f"{[p for p in acked if p not in positions][:10]}"
                )
                assert [positions[p] for p in acked] == sorted(positions[p] for p in acked), f"{topic}: order"
                for s in mine:
                    _, m = theirs[positions[s.payload]]
                    assert m["attributes"] == self.fx.iot_attributes(self.registry, device, s.subfolder), m
        return out

    def ends(self, log: dict[str, list[dict]]) -> dict[str, int]:
        """Topic -> the offset after its last message (what a caught-up cursor says)."""
        return {t: (int(ms[-1]["offset"]) + 1) for t, ms in log.items() if ms}


def _published(info) -> bool:
    """Whether paho has the PUBACK; a publish paho refused (no connection) never will."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


class Publishing:
    """The threads of `Fleet.publish_continuously`. A device stops when its connection is gone (a
    server killed under it); what was sent and never acknowledged is counted, not recorded."""

    pause: float

    def __init__(self, fleet: Fleet, per_second: float):
        self.fleet = fleet
        # The bridge disconnects a device that sends more than 100 packets in a second.
        self.pause = 1.0 / per_second
        self.stop = threading.Event()
        self.acked: list[Sent] = []
        self.unacked = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(device, dev), daemon=True)
            for (device, _), dev in zip(fleet.devices, fleet.connections)
        ]
        for t in self.threads:
            t.start()

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _run(self, device: dict, dev: MqttDevice) -> None:
        while not self.stop.wait(self.pause) and not dev.closed:
            mqtt_topic, subfolder, payload = self.fleet.next_message(device)
            try:
                info = dev.client.publish(mqtt_topic, payload, qos=1)
            except Exception as e:  # noqa: BLE001 - the connection went away under paho
                self.errors.append(repr(e))
                return
            deadline = time.monotonic() + 10
            while not _published(info) and not dev.closed and time.monotonic() < deadline:
                time.sleep(0.002)
            if not _published(info):
                with self._lock:
                    self.unacked += 1
                if not dev.closed:
                    self.errors.append(f"{device['id']}: no PUBACK within 10 s on an open connection")
                return
            with self._lock:
                self.acked.append(Sent(device["id"], self.fleet.routed_to(subfolder), subfolder, payload))

    def finish(self) -> list[Sent]:
        """Stops the devices, adds what was acknowledged to the fleet's record and returns it."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        assert not any(t.is_alive() for t in self.threads), "a publishing thread did not stop"
        self.fleet.sent.extend(self.acked)
        return self.acked


# --- NATS JetStream (nats-py) --------------------------------------------------------------------

def nats_available(address=SHARED_NATS) -> str | None:
    """None when a JetStream-enabled NATS answers at `address`, else why not."""
    if not port_open(*address):
        return f"no NATS server at {address[0]}:{address[1]}"
    try:
        asyncio.run(_nats_account_info(address))
    except Exception as e:  # noqa: BLE001 - any failure means the tests cannot use it
        return f"NATS at {address[0]}:{address[1]} has no JetStream: {e!r}"
    return None


async def _nats_account_info(address):
    import nats

    nc = await nats.connect(f"nats://{address[0]}:{address[1]}", connect_timeout=2, max_reconnect_attempts=0)
    try:
        return await nc.jetstream().account_info()
    finally:
        await nc.close()


class NatsReader:
    """Reads JetStream streams with nats-py (one connection per call)."""

    def __init__(self, address=SHARED_NATS):
        self.url = f"nats://{address[0]}:{address[1]}"

    async def _with_js(self, fn):
        import nats

        nc = await nats.connect(self.url, connect_timeout=3, max_reconnect_attempts=0)
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()

    def message_count(self, stream: str) -> int | None:
        """How many messages the stream holds, or None when it does not exist."""
        import nats.js.errors

        async def count(js):
            try:
                return (await js.stream_info(stream)).state.messages
            except nats.js.errors.NotFoundError:
                return None

        return asyncio.run(self._with_js(count))

    def when_stream_has(self, stream: str, count: int, action: Callable[[], None], timeout: float = 30.0) -> int:
        """Polls the stream on one connection (every few ms) and runs `action` the moment it holds
        at least `count` messages; returns how many it held then."""
        import nats.js.errors

        async def watch(js):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    held = (await js.stream_info(stream)).state.messages
                except nats.js.errors.NotFoundError:
                    held = 0
                if held >= count:
                    action()
                    return held
                if time.monotonic() > deadline:
                    raise AssertionError(f"stream {stream} held {held} < {count} messages after {timeout}s")
                await asyncio.sleep(0.002)

        return asyncio.run(self._with_js(watch))

    def stream_config(self, stream: str):
        """The stream's configuration (nats.js.api.StreamConfig)."""
        async def info(js):
            return (await js.stream_info(stream)).config

        return asyncio.run(self._with_js(info))

    def read(self, stream: str, subject: str) -> list[Forwarded]:
        """Every message of the stream, through an ephemeral pull consumer, in stream order."""
        from nats.js import api

        async def read_all(js):
            total = (await js.stream_info(stream)).state.messages
            config = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL,
                                        inactive_threshold=30.0)
            sub = await js.pull_subscribe(subject, stream=stream, config=config)
            got = []
            try:
                while len(got) < total:
                    try:
                        got.extend(await sub.fetch(batch=min(256, total - len(got)), timeout=2))
                    except asyncio.TimeoutError:
                        break
            finally:
                await sub.unsubscribe()
            return got

        out = []
        for msg in asyncio.run(self._with_js(read_all)):
            headers = dict(msg.headers or {})
            attrs = {k: v for k, v in headers.items() if not k.lower().startswith("nats-")}
            out.append(to_forwarded(bytes(msg.data), attrs, msg.subject, msg_id=headers.get("Nats-Msg-Id"),
                                    sequence=msg.metadata.sequence.stream))
        return out

    def delete_stream(self, stream: str) -> None:
        import nats.js.errors

        async def delete(js):
            try:
                await js.delete_stream(stream)
            except nats.js.errors.NotFoundError:
                pass

        with contextlib.suppress(Exception):
            asyncio.run(self._with_js(delete))


def nats_server_binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None
    )


def redis_server_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/sbin/redis-server", "/usr/bin/redis-server") if os.access(p, os.X_OK)), None
    )


class Daemon:
    """A server process of the test's own on a fixed port, which can be stopped and started again
    on the same port (and, for NATS, the same store directory)."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: pathlib.Path,
                 ready: Callable[[], bool]):
        self.name, self.argv, self.port, self.log_path, self.ready = name, argv, port, log_path, ready
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not (port_open("127.0.0.1", self.port, 0.5) and self.ready()):
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.name} not ready on port {self.port} within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # The port is closed once the process is gone.
        wait_until(lambda: not port_open("127.0.0.1", self.port, 0.2), f"{self.name} to release its port", 10)

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError as e:
            return f"<no log: {e}>"


def private_nats(tmp_path: pathlib.Path) -> Daemon:
    binary = nats_server_binary()
    need(binary is not None, "nats-server is not installed (Debian package nats-server)")
    port = free_port()
    store = tmp_path / "nats-store"
    store.mkdir(exist_ok=True)
    argv = [binary, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)]
    return Daemon("nats-server", argv, port, tmp_path / "nats-server.log",
                  lambda: nats_available(("127.0.0.1", port)) is None)


def private_redis(tmp_path: pathlib.Path) -> Daemon:
    binary = redis_server_binary()
    need(binary is not None, "redis-server is not installed (Debian package redis-server)")
    port = free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir(exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--daemonize", "no"]
    return Daemon("redis-server", argv, port, tmp_path / "redis-server.log",
                  lambda: redis_available(("127.0.0.1", port)) is None)


# --- RabbitMQ (pika) ----------------------------------------------------------------------------

def rabbitmq_available(address=SHARED_RABBITMQ) -> str | None:
    if not port_open(*address):
        return f"no RabbitMQ at {address[0]}:{address[1]}"
    import pika

    try:
        pika.BlockingConnection(_pika_params(address)).close()
    except Exception as e:  # noqa: BLE001
        return f"RabbitMQ at {address[0]}:{address[1]} refuses guest/guest: {e!r}"
    return None


def _pika_params(address):
    import pika

    return pika.ConnectionParameters(host=address[0], port=address[1], virtual_host="/",
                                     credentials=pika.PlainCredentials("guest", "guest"),
                                     connection_attempts=1, socket_timeout=5, blocked_connection_timeout=10)


class AmqpQueue:
    """A direct exchange of the test's own (auto-deleted with its last binding) and a queue bound to
    it with the given routing keys; the queue expires 10 minutes after its last use, should a test
    die before deleting it."""

    def __init__(self, routing_keys: Iterable[str], address=SHARED_RABBITMQ):
        import pika

        self.address = address
        self.exchange = unique("sinks-x")
        self.queue = unique("sinks-q")
        self.connection = pika.BlockingConnection(_pika_params(address))
        ch = self.channel = self.connection.channel()
        ch.exchange_declare(self.exchange, exchange_type="direct", durable=False, auto_delete=True)
        ch.queue_declare(self.queue, durable=True, arguments={"x-expires": 600_000})
        for key in routing_keys:
            ch.queue_bind(self.queue, self.exchange, routing_key=key)

    def depth(self) -> int:
        return self.channel.queue_declare(self.queue, passive=True).method.message_count

    def read(self) -> list[Forwarded]:
        """Everything in the queue, in queue order (basic_get until empty), acknowledged."""
        out = []
        while True:
            method, props, body = self.channel.basic_get(self.queue, auto_ack=False)
            if method is None:
                return out
            raw = dict(props.headers or {})
            headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
            out.append(to_forwarded(body, headers, method.routing_key, exchange=method.exchange,
                                    message_id=props.message_id, timestamp=props.timestamp,
                                    delivery_mode=props.delivery_mode, raw_headers=raw))
            self.channel.basic_ack(method.delivery_tag)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.queue_delete(self.queue)
        with contextlib.suppress(Exception):
            self.connection.close()


# --- Redis (redis-py) ---------------------------------------------------------------------------

def redis_available(address=SHARED_REDIS) -> str | None:
    if not port_open(*address):
        return f"no Redis at {address[0]}:{address[1]}"
    import redis

    try:
        redis.Redis(host=address[0], port=address[1], socket_timeout=3).ping()
    except Exception as e:  # noqa: BLE001
        return f"Redis at {address[0]}:{address[1]} does not answer PING: {e!r}"
    return None


def redis_read(key: str, address=SHARED_REDIS, db: int = 0) -> list[Forwarded]:
    """XRANGE KEY - +: every entry, in stream order; field `data` is the body, the rest attributes."""
    import redis

    client = redis.Redis(host=address[0], port=address[1], db=db, socket_timeout=5)
    try:
        out = []
        for entry_id, raw in client.xrange(key, "-", "+"):
            fields = {k.decode(): v for k, v in raw.items()}
            names = list(fields)
            data = fields.pop("data", None)
            assert data is not None, f"entry {entry_id} of {key} has no data field: {fields}"
            out.append(to_forwarded(data, {k: v.decode() for k, v in fields.items()}, key, entry_id=entry_id,
                                    fields=names))
        return out
    finally:
        client.close()


def redis_delete(*keys: str, address=SHARED_REDIS, db: int = 0) -> None:
    import redis

    with contextlib.suppress(Exception):
        client = redis.Redis(host=address[0], port=address[1], db=db, socket_timeout=3)
        client.delete(*keys)
        client.close()


# --- webhook receiver ---------------------------------------------------------------------------

@dataclasses.dataclass
class Push:
    path: str
    headers: dict  # lower-cased names
    body: bytes
    status: int  # what the receiver answered


class WebhookReceiver:
    """An HTTP/1.1 server that records every POST and answers 204, or 503 while `failing`. `stop()`
    closes the listener and every open connection; `start()` listens on the same port again."""

    def __init__(self):
        self.port = free_port()
        self.failing = False
        self.pushes: list[Push] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)

            def finish(self):
                with receiver._lock:
                    receiver._connections.discard(self.connection)
                super().finish()

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = 503 if receiver.failing else 204
                with receiver._lock:
                    receiver.pushes.append(Push(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        self._server = None

    def accepted(self) -> list[Push]:
        with self._lock:
            return [p for p in self.pushes if 200 <= p.status < 300]

    def all(self) -> list[Push]:
        with self._lock:
            return list(self.pushes)

    def forwarded(self) -> list[Forwarded]:
        """The accepted pushes, decoded from Pub/Sub's push format."""
        out = []
        for p in self.accepted():
            envelope = json.loads(p.body)
            message = envelope["message"]
            out.append(to_forwarded(base64.b64decode(message["data"]), message.get("attributes", {}), p.path,
                                    envelope=envelope, headers=p.headers))
        return out


# --- Google's Pub/Sub emulator ------------------------------------------------------------------

@pytest.fixture(scope="session")
def sinks_pubsub_emulator(tmp_path_factory):
    """Google's Pub/Sub emulator for the sink tests, started once when a test asks for it."""
    from compat_pubsub import emulator_launcher, missing_emulator_reason, start_emulator

    need(emulator_launcher() is not None, missing_emulator_reason())
    emu = start_emulator(tmp_path_factory.mktemp("sinks-pubsub-emulator") / "emulator.log")
    yield emu
    emu.stop()

