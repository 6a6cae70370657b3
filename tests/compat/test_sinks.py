"""`ferrocore serve --sink 'TOPICS=URL'`: device telemetry forwarded from the embedded topic log to
NATS JetStream, RabbitMQ, Redis Streams, a webhook and Google's Pub/Sub emulator, read back with
each system's own Python client (nats-py, pika, redis-py, http.server, google-cloud-pubsub).

Every test starts Ferrocore servers of its own (compat_buses.start_ferrocore) with its sink, a
project, registry and devices of its own, and a fresh stream/subject/exchange/queue/key/topic, so
no run sees another's data. What arrived is compared with what the embedded log holds
(compat_buses.check_forwarded): every message, its body, IoT Core's attributes plus ferrocoreTopic
and ferrocoreOffset, and the order per topic.

Services: NATS (JetStream) on 127.0.0.1:4222, RabbitMQ on 127.0.0.1:5672 (guest/guest), Redis on
127.0.0.1:6379, `nats-server` and `redis-server` binaries for private instances, and Google's Pub/Sub
emulator. A missing one skips its tests, or fails them under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import time

import pytest
from nats.js.api import StorageType

from compat_buses import (
    SHARED_NATS,
    AmqpQueue,
    FailureLogs,
    Fleet,
    Forwarded,
    NatsReader,
    WebhookReceiver,
    check_forwarded,
    ferrocore_cli,
    nats_available,
    need,
    private_nats,
    private_redis,
    rabbitmq_available,
    redis_available,
    redis_delete,
    redis_read,
    rest_of,
    sinks_pubsub_emulator,  # noqa: F401 - a fixture
    start_ferrocore,
    stop_started_servers,
    the_sink,
    to_forwarded,
    wait_caught_up,
    wait_until,
)
from compat_pubsub import PubsubTarget, ack_all, pull, pull_for
from compat_server import free_port
from compat_support import TIMESTAMP_RE, b64, fresh_project, unique

PER_DEVICE = 50


@pytest.fixture(scope="module", autouse=True)
def _failure_logs(request):
    """Failed tests of this module report the logs of the Ferrocore servers they started."""
    plugin = FailureLogs()
    request.config.pluginmanager.register(plugin, "compat-buses-failure-logs")
    yield
    request.config.pluginmanager.unregister(plugin)


@pytest.fixture(autouse=True)
def _servers_stopped_after_each_test():
    yield
    stop_started_servers()


# --- the destinations, one class per kind ---------------------------------------------------------

class Bus:
    """One sink destination as a test sets it up and reads it back."""

    kind = ""
    ordered = True  # whether the system keeps each topic's order
    url = ""  # the sink URL (with {project} and {topic})
    redacted = ""  # how /v1/sinks must show it

    def received(self) -> list[Forwarded]:
        """Everything that arrived so far, in arrival order."""
        raise NotImplementedError

    def check_details(self, got: list[Forwarded], project: str) -> None:
        """Checks what only this kind carries (subjects, message ids, headers, ...)."""

    def stop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NatsBus(Bus):
    """Subject iot.{project}.{topic}, each topic its own stream `?stream=PREFIX_{topic}`, which
    Ferrocore creates; shared 4222 by default, or a private nats-server."""

    kind = "nats"

    def __init__(self, tmp_path: pathlib.Path, private: bool = False):
        self.daemon = None
        if private:
            self.daemon = private_nats(tmp_path)
            self.daemon.start()
            address = ("127.0.0.1", self.daemon.port)
        else:
            reason = nats_available(SHARED_NATS)
            need(reason is None, reason or "")
            address = SHARED_NATS
        self.reader = NatsReader(address)
        self.port = address[1]
        self.prefix = unique("sinks").replace("-", "_")
        self.url = f"nats://{address[0]}:{address[1]}/iot.{{project}}.{{topic}}?stream={self.prefix}_{{topic}}"
        self.redacted = self.url
        self.topics: set[str] = set()

    def stream(self, topic_id: str) -> str:
        return f"{self.prefix}_{topic_id}"

    def expect_topics(self, *topic_ids: str) -> None:
        self.topics.update(topic_ids)

    def received(self) -> list[Forwarded]:
        out = []
        for t in sorted(self.topics):
            if self.reader.message_count(self.stream(t)) is not None:
                out.extend(self.reader.read(self.stream(t), ">"))
        return out

    def count(self) -> int:
        return sum(self.reader.message_count(self.stream(t)) or 0 for t in self.topics)

    def check_details(self, got, project):
        for f in got:
            topic_id = f.topic.rsplit("/", 1)[1]
            assert f.where == f"iot.{project}.{topic_id}", f
            assert f.extra["msg_id"] == f"{f.topic}:{f.offset}", f.extra
        for t in self.topics:
            # Made by Ferrocore (?stream=): file-backed, over the subject.
            config = self.reader.stream_config(self.stream(t))
            assert config.subjects == [f"iot.{project}.{t}"], config
            assert config.storage == StorageType.FILE, config
        # Stream order is arrival order.
        for t in self.topics:
            seqs = [f.extra["sequence"] for f in got if f.topic.endswith(f"/{t}")]
            assert seqs == sorted(seqs), seqs

    def stop(self):
        self.daemon.stop()

    def start(self):
        self.daemon.start()

    def close(self):
        for t in self.topics:
            self.reader.delete_stream(self.stream(t))
        if self.daemon is not None:
            self.daemon.stop()


class AmqpBus(Bus):
    """A direct exchange of the test's own, routing_key={topic}, one queue bound to both keys."""

    kind = "amqp"

    def __init__(self, tmp_path: pathlib.Path):
        reason = rabbitmq_available()
        need(reason is None, reason or "")
        self.queue = AmqpQueue(["telemetry", "alerts"])
        self.url = f"amqp://guest:guest@127.0.0.1:5672/%2F?exchange={self.queue.exchange}&routing_key={{topic}}"
        self.redacted = f"amqp://guest:****@127.0.0.1:5672/%2F?exchange={self.queue.exchange}&routing_key={{topic}}"
        self.got: list[Forwarded] = []
        self.started = time.time()

    def received(self):
        self.got.extend(self.queue.read())
        return list(self.got)

    def check_details(self, got, project):
        now = time.time()
        for f in got:
            assert f.where == f.topic.rsplit("/", 1)[1], f  # routing key {topic}
            assert f.extra["exchange"] == self.queue.exchange, f.extra
            assert f.extra["message_id"] == f"{f.topic}:{f.offset}", f.extra
            assert f.extra["delivery_mode"] == 2, f"not persistent: {f.extra}"
            assert all(isinstance(v, str) for v in f.extra["raw_headers"].values()), f"not string headers: {f.extra}"
            ts = f.extra["timestamp"]
            assert isinstance(ts, int) and self.started - 60 <= ts <= now + 60, f"timestamp {ts}"

    def close(self):
        self.queue.close()


class RedisBus(Bus):
    """XADD to key sinks:{project}:{topic} (with maxlen), on the shared Redis or a private one."""

    kind = "redis"

    def __init__(self, tmp_path: pathlib.Path, private: bool = False):
        self.daemon = None
        if private:
            self.daemon = private_redis(tmp_path)
            self.daemon.start()
            self.address = ("127.0.0.1", self.daemon.port)
        else:
            self.address = ("127.0.0.1", 6379)
            reason = redis_available(self.address)
            need(reason is None, reason or "")
        self.port = self.address[1]
        self.prefix = unique("sinks")
        self.url = f"redis://{self.address[0]}:{self.address[1]}/0?stream={self.prefix}:{{project}}:{{topic}}&maxlen=100000"
        self.redacted = self.url
        self.keys: set[str] = set()

    def expect_keys(self, project: str, *topic_ids: str) -> None:
        self.keys.update(f"{self.prefix}:{project}:{t}" for t in topic_ids)

    def received(self):
        out = []
        for key in sorted(self.keys):
            out.extend(redis_read(key, self.address))
        return out

    def check_details(self, got, project):
        for f in got:
            assert f.where == f"{self.prefix}:{project}:{f.topic.rsplit('/', 1)[1]}", f
            # `data`, and one field per attribute, nothing else.
            assert sorted(f.extra["fields"]) == sorted(["data", *f.attributes]), f.extra

    def stop(self):
        self.daemon.stop()

    def start(self):
        self.daemon.start()

    def close(self):
        if self.daemon is not None:
            self.daemon.stop()
        else:
            redis_delete(*self.keys, address=self.address)


class WebhookBus(Bus):
    """A local http.server; path /push/{topic}, token_file for a bearer token, one own parameter."""

    kind = "webhook"

    def __init__(self, tmp_path: pathlib.Path):
        self.receiver = WebhookReceiver()
        self.receiver.start()
        self.port = self.receiver.port
        self.token = unique("hook-token")
        self.token_file = tmp_path / "hook-token.txt"
        self.token_file.write_text(self.token + "\n")
        self.url = f"{self.receiver.base_url}/push/{{topic}}?token_file={self.token_file}&src=ferrocore"
        self.redacted = self.url

    def received(self):
        return self.receiver.forwarded()

    def check_details(self, got, project):
        for f in got:
            topic_id = f.topic.rsplit("/", 1)[1]
            # token_file is Ferrocore's own parameter: not sent; the others are.
            assert f.where == f"/push/{topic_id}?src=ferrocore", f.where
            headers = f.extra["headers"]
            assert headers.get("authorization") == f"Bearer {self.token}", headers
            assert headers.get("content-type", "").startswith("application/json"), headers
            envelope = f.extra["envelope"]
            message = envelope["message"]
            assert message["messageId"] == message["message_id"] == str(f.offset), message
            assert message["publishTime"] == message["publish_time"], message
            assert TIMESTAMP_RE.match(message["publishTime"]), message
            assert isinstance(envelope.get("subscription"), str) and envelope["subscription"].startswith(
                f"projects/{project}/subscriptions/"), envelope

    def stop(self):
        self.receiver.stop()

    def start(self):
        self.receiver.start()

    def close(self):
        self.receiver.stop()


class PubsubBus(Bus):
    """Google's emulator: topics telemetry and alerts of a project of the test's own, each with a
    subscription; the URL names them with {topic}. Pub/Sub keeps no order without ordering keys."""

    kind = "pubsub"
    ordered = False

    def __init__(self, emulator):
        self.target = PubsubTarget("emulator", emulator.address, emulator.base_url)
        self.project = self.target.project
        self.subscriptions = {}
        for topic_id in ("telemetry", "alerts"):
            topic = f"projects/{self.project}/topics/{topic_id}"
            self.target.publisher.create_topic(request={"name": topic})
            self.subscriptions[topic_id] = self.target.create_subscription(topic, ack_deadline_seconds=60)
        self.url = f"pubsub://{emulator.address}/projects/{self.project}/topics/{{topic}}"
        self.redacted = self.url
        self.got: list[Forwarded] = []

    def received(self):
        for topic_id, sub in self.subscriptions.items():
            msgs = pull_for(self.target.subscriber, sub, 0.3)
            ack_all(self.target.subscriber, sub, msgs)
            for m in msgs:
                self.got.append(to_forwarded(bytes(m.message.data), dict(m.message.attributes), topic_id,
                                             message_id=m.message.message_id))
        return list(self.got)

    def check_details(self, got, project):
        for f in got:
            assert f.where == f.topic.rsplit("/", 1)[1], f

    def close(self):
        self.target.close()


@pytest.fixture
def make_bus(request, tmp_path):
    """make_bus(kind, private=False) -> a Bus, closed (streams, queues, keys removed) afterwards."""
    made: list[Bus] = []

    def _make(kind: str, private: bool = False) -> Bus:
        if kind == "nats":
            bus = NatsBus(tmp_path, private)
        elif kind == "amqp":
            bus = AmqpBus(tmp_path)
        elif kind == "redis":
            bus = RedisBus(tmp_path, private)
        elif kind == "webhook":
            bus = WebhookBus(tmp_path)
        elif kind == "pubsub":
            bus = PubsubBus(request.getfixturevalue("sinks_pubsub_emulator"))
        else:
            raise ValueError(kind)
        made.append(bus)
        return bus

    yield _make
    for bus in made:
        bus.close()


def register_names(bus: Bus, project: str) -> None:
    """Tells the bus which per-topic streams or keys this project's topics map to."""
    if isinstance(bus, NatsBus):
        bus.expect_topics("telemetry", "alerts")
    elif isinstance(bus, RedisBus):
        bus.expect_keys(project, "telemetry", "alerts")


def wait_received(bus: Bus, count: int, timeout: float = 30.0) -> list[Forwarded]:
    """Waits until at least `count` messages arrived at `bus`; returns all of them."""
    last: dict = {"got": []}

    def enough():
        last["got"] = bus.received()
        return len(last["got"]) >= count

    wait_until(enough, f"{count} messages at the {bus.kind} sink", timeout, interval=0.1,
               explain=lambda: f"got {len(last['got'])}")
    return last["got"]


def check_sink_status(srv, bus: Bus, project: str, log: dict[str, list[dict]], forwarded: int, *,
                      check_url: bool = True) -> dict:
    """GET /v1/sinks, and `ferrocore sinks list --format json` saying the same: the sink, state
    ok, the cursor of each topic at its message count, no lag, the URL without secrets (and, with
    `check_url`, exactly `bus.redacted`)."""
    sink = the_sink(srv)
    assert isinstance(sink.get("name"), str) and sink["name"], sink
    assert sink["topics"] == f"projects/{project}/topics/*", sink
    if check_url:
        assert sink["url"] == bus.redacted, sink
    assert sink["state"] == "ok", sink
    assert sink["cursor"] == {t: str(len(ms)) for t, ms in log.items()}, sink
    assert (sink["lagMessages"], sink["lagSeconds"]) == ("0", 0), sink
    assert (sink["forwardedMessages"], sink["lostMessages"], sink["rejectedMessages"]) == (
        str(forwarded), "0", "0"), sink
    for secret in ("guest:guest", getattr(bus, "token", "never-in-a-url")):
        assert secret not in json.dumps(sink), f"{secret!r} shows in /v1/sinks: {sink}"

    cli = ferrocore_cli("sinks", "list", "--format", "json", "--server", srv.base_url, f"--token={srv.token}")
    assert cli.returncode == 0, cli.stderr
    listed = json.loads(cli.stdout)
    assert listed == [sink], f"ferrocore sinks list --format json: {cli.stdout}\n/v1/sinks: {sink}"
    table = ferrocore_cli("sinks", "list", "--server", srv.base_url, f"--token={srv.token}")
    assert table.returncode == 0, table.stderr
    assert sink["name"] in table.stdout and " ok " in f" {table.stdout} ", table.stdout
    return sink


# --- 1 and 2: every kind end to end, and its status ---------------------------------------------

@pytest.mark.parametrize("kind", ["nats", "amqp", "redis", "webhook", "pubsub"])
def test_device_telemetry_reaches_the_sink_with_its_attributes_in_order(kind, make_bus, tmp_path):
    bus = make_bus(kind)
    project = fresh_project()
    register_names(bus, project)
    srv = start_ferrocore(tmp_path, [f"projects/{project}/topics/*={bus.url}"])
    fleet = Fleet(srv, tmp_path / "keys", project)
    fleet.connect()
    fleet.publish(PER_DEVICE)
    log = fleet.log()
    total = sum(len(ms) for ms in log.values())
    assert total == 2 * PER_DEVICE
    assert any(m["attributes"].get("subFolder") == "rooms/kitchen" for m in log[fleet.telemetry])
    assert all(m["attributes"].get("subFolder") == "alerts" for m in log[fleet.alerts]) and log[fleet.alerts]

    wait_caught_up(srv, fleet.ends(log))
    got = wait_received(bus, total)
    check_forwarded(got, log, ordered=bus.ordered)
    bus.check_details(got, project)
    # Each device's payloads arrive in the order it sent them (subsets of the topic order).
    if bus.ordered:
        for topic in fleet.topics:
            for device, _ in fleet.devices:
                sent = [s.payload for s in fleet.sent if s.topic == topic and s.device_id == device["id"]]
                arrived = [f.data for f in got if f.topic == topic and f.attributes["deviceId"] == device["id"]]
                assert arrived == sent, f"{topic} {device['id']}"
    if kind == "pubsub":
        # Nothing more comes: every message once.
        assert bus.received() == got
    # The AMQP URL's redaction has a test of its own (below).
    check_sink_status(srv, bus, project, log, total, check_url=kind != "amqp")


def test_sinks_list_shows_state_cursor_and_lag_and_the_url_without_its_password(make_bus, tmp_path):
    """/v1/sinks and `ferrocore sinks list --format json` for an AMQP sink, whose URL holds a
    password (guest:guest): shown as guest:****, every other part of the URL as configured (the
    exchange, and routing_key={topic}, which is no secret)."""
    bus = make_bus("amqp")
    project = fresh_project()
    srv = start_ferrocore(tmp_path, [f"projects/{project}/topics/*={bus.url}"])
    fleet = Fleet(srv, tmp_path / "keys", project)
    fleet.connect()
    fleet.publish(10)
    log = fleet.log()
    wait_caught_up(srv, fleet.ends(log))
    total = sum(len(ms) for ms in log.values())
    assert len(wait_received(bus, total)) == total
    sink = check_sink_status(srv, bus, project, log, total, check_url=False)
    assert "guest:****@" in sink["url"] and "guest:guest" not in sink["url"], sink
    assert sink["url"] == bus.redacted, "only the password is hidden"


# --- 3: the destination goes away and comes back ------------------------------------------------

@pytest.mark.parametrize("kind", ["nats", "redis", "webhook"])
def test_a_destination_outage_delays_but_loses_nothing(kind, make_bus, tmp_path):
    bus = make_bus(kind, private=True) if kind != "webhook" else make_bus(kind)
    project = fresh_project()
    register_names(bus, project)
    srv = start_ferrocore(tmp_path, [f"projects/{project}/topics/*={bus.url}"])
    fleet = Fleet(srv, tmp_path / "keys", project)
    fleet.connect()

    first = fleet.publish(10)
    log = fleet.log()
    wait_caught_up(srv, fleet.ends(log))
    before = wait_received(bus, len(first))
    outage: list = []

    if kind == "webhook":
        # An answer other than 2xx is a failure too: the message is sent again later.
        bus.receiver.failing = True
        outage += fleet.publish(3)
        sink = wait_until(lambda: (s := the_sink(srv))["state"] == "retrying" and s, "state retrying after 503")
        assert "503" in sink.get("lastError", ""), sink
        assert sink["lagMessages"] == str(len(outage)), sink

    bus.stop()
    if kind == "webhook":
        bus.receiver.failing = False  # once back, it takes everything
    started = time.monotonic()
    outage += fleet.publish(10)
    assert time.monotonic() - started < 5, "PUBACKs slowed down while the destination was down"
    sink = wait_until(
        lambda: (s := the_sink(srv))["state"] == "retrying" and s["lagMessages"] == str(len(outage)) and s,
        f"state retrying with {len(outage)} messages of lag", timeout=30,
        explain=lambda: json.dumps(the_sink(srv)),
    )
    if kind == "webhook":
        # Not the 503 any more: nobody listens.
        sink = wait_until(lambda: "503" not in (s := the_sink(srv)).get("lastError", "503") and s,
                          "a connection error in lastError", timeout=15, explain=lambda: json.dumps(the_sink(srv)))
    assert sink.get("lastError"), sink
    assert any(t in sink["lastError"] for t in fleet.topics), f"lastError names no topic: {sink}"
    assert str(bus.port) in sink["lastError"] or kind == "webhook", f"lastError names no server: {sink}"
    down_error = sink["lastError"]
    lag = int(sink["lagMessages"])
    more = fleet.publish(10)
    outage += more
    sink = wait_until(lambda: (s := the_sink(srv))["lagMessages"] == str(lag + len(more)) and s,
                      "the lag to grow by what was published", timeout=10,
                      explain=lambda: json.dumps(the_sink(srv)))
    assert sink["state"] == "retrying" and sink["lagSeconds"] > 0, sink
    outage_offsets = set()
    log_during = fleet.log()
    for topic, ms in log_during.items():
        for m in ms:
            if base64.b64decode(m["data"]) in {s.payload for s in outage}:
                outage_offsets.add((topic, int(m["offset"])))

    bus.start()
    log = fleet.log()
    wait_caught_up(srv, fleet.ends(log), timeout=45)
    sink = the_sink(srv)
    assert sink["state"] == "ok", sink
    total = sum(len(ms) for ms in log.values())
    after = bus.received()
    if kind == "redis":
        # A restarted Redis (--save "") starts empty: what arrived before the stop, then after.
        got = before + after
    else:
        got = after
    dups_ok = (lambda topic, offset: False) if kind == "nats" else (lambda topic, offset: (topic, offset) in outage_offsets)
    repeated = check_forwarded(got, log, duplicates_allowed=dups_ok)
    if kind == "nats":
        assert len(got) == total, "JetStream de-duplicates by Nats-Msg-Id: every message exactly once"
    print(f"{kind}: {total} messages, re-sent offsets: {repeated}; lastError while down: {down_error}")


# --- 4: kill -9 in the middle of the stream ------------------------------------------------------

def test_kill_9_mid_stream_forwards_every_acknowledged_message_exactly_once(make_bus, tmp_path):
    bus = make_bus("nats")
    project = fresh_project()
    register_names(bus, project)
    sinks = [f"projects/{project}/topics/*={bus.url}"]
    srv = start_ferrocore(tmp_path, sinks)
    fleet = Fleet(srv, tmp_path / "keys", project)
    fleet.connect()

    publishing = fleet.publish_continuously(per_second=40)
    try:
        # The forwarder finds the new topic within a second of its first message, so its first
        # batch carries a backlog: the kill comes the moment that batch starts landing in
        # JetStream, while the devices keep publishing.
        wait_until(lambda: publishing.count() >= 20, "devices publishing", timeout=10)

        def kill():
            assert not any(d.closed for d in fleet.connections), "a device lost its connection before the kill"
            srv.kill()

        in_nats_at_kill = bus.reader.when_stream_has(bus.stream("telemetry"), 1, kill)
    finally:
        acked = publishing.finish()
    assert not any("no PUBACK" in e for e in publishing.errors), publishing.errors
    in_nats_after_kill = bus.count()

    srv = start_ferrocore(tmp_path, sinks, data_dir=srv.data_dir, token=srv.token, ports=srv.ports)
    fleet.connect(srv)
    fleet.publish(20)
    # Every acknowledged message survived the kill in the log (Fleet.log checks), and the log's
    # messages all reach the stream, once each, in order.
    log = fleet.log(srv)
    wait_caught_up(srv, fleet.ends(log))
    got = bus.received()
    check_forwarded(got, log)
    total = sum(len(ms) for ms in log.values())
    assert len(got) == total
    assert len({f.extra["msg_id"] for f in got}) == total
    print(f"kill -9 after {len(acked)} acknowledged ({publishing.unacked} unacknowledged), "
          f"{in_nats_at_kill} in the telemetry stream at the kill, {in_nats_after_kill} in both streams "
          f"after it; {total} in the end")


# --- 5: bad --sink entries -----------------------------------------------------------------------

def serve_with(tmp_path: pathlib.Path, args: list[str], env_extra: dict | None = None,
               timeout: float = 15) -> tuple[subprocess.CompletedProcess, float]:
    """`ferrocore serve` with `args`, expected to exit by itself; returns it and how long it took."""
    binary = os.environ.get("FERROCORE_BIN") or "ferrocore"
    data_dir = tmp_path / unique("data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROCORE_")}
    env.update({"FERROCORE_ADMIN_TOKEN": unique("token"), "NO_COLOR": "1", **(env_extra or {})})
    ports = [free_port() for _ in range(4)]
    argv = [binary, "serve", "--data-dir", str(data_dir), "--http", f"127.0.0.1:{ports[0]}",
            "--grpc", f"127.0.0.1:{ports[1]}", "--mqtts", f"127.0.0.1:{ports[2]}", "--mqtt", f"127.0.0.1:{ports[3]}",
            *args]
    started = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"ferrocore serve {args} still running after {timeout}s: {e.stderr}") from None
    return done, time.monotonic() - started


@pytest.mark.parametrize("entry, problem", [
    ("projects/x*/topics/*=nats://127.0.0.1:4222/s", ["projects/x*/topics/*", "*"]),
    ("projects/*/topics/*=ftp://h/x", ["ftp"]),
    ("nonsense", ["nonsense", "TOPICS=URL"]),
    ("projects/*/topics/*=http://127.0.0.1:9/hook?token_file={missing}", ["token_file", "{missing}"]),
    ("projects/*/topics/*=http://127.0.0.1:9/hook?token_file={directory}", ["token_file", "{directory}"]),
], ids=["partial-wildcard", "unknown-scheme", "not-topics-equals-url", "missing-token-file", "token-file-is-a-directory"])
def test_a_bad_sink_stops_the_server_at_start_naming_the_problem(entry, problem, tmp_path):
    paths = {"missing": str(tmp_path / "no-such-token"), "directory": str(tmp_path)}
    entry = entry.format(**paths)
    done, took = serve_with(tmp_path, ["--sink", entry])
    assert done.returncode != 0, f"ferrocore serve --sink {entry!r} exited 0:\n{done.stderr}"
    assert took < 10, took
    assert "--sink" in done.stderr, done.stderr
    for word in problem:
        assert word.format(**paths) in done.stderr, f"{word!r} not in the error:\n{done.stderr}"


def test_a_bad_sink_in_the_environment_stops_the_server_too(tmp_path):
    done, _ = serve_with(tmp_path, [], {"FERROCORE_SINKS": "projects/*/topics/*=nats://127.0.0.1:4222/s nonsense"})
    assert done.returncode != 0, done.stderr
    assert "--sink" in done.stderr and "nonsense" in done.stderr, done.stderr


def publish_rest(srv, topic: str, count: int, tag: str) -> list[tuple[bytes, dict]]:
    """Creates `topic` in Ferrocore (if needed) and publishes `count` messages through its Pub/Sub REST API."""
    rest = rest_of(srv)
    resp = rest.request("PUT", f"v1/{topic}", json_body={})
    assert resp.status_code in (200, 409), resp.text
    messages = [(f"{tag}-{i}".encode(), {"n": str(i), "tag": tag}) for i in range(count)]
    rest.ok(rest.post(f"v1/{topic}:publish", {"messages": [{"data": b64(d), "attributes": a} for d, a in messages]}))
    return messages


def test_an_unreachable_broker_is_no_start_failure_but_retrying(tmp_path):
    closed = free_port()
    project = fresh_project()
    srv = start_ferrocore(tmp_path, [f"projects/{project}/topics/*=nats://127.0.0.1:{closed}/s"])
    assert srv.process.poll() is None
    topic = f"projects/{project}/topics/readings"
    publish_rest(srv, topic, 3, "unreachable")
    sink = wait_until(lambda: (s := the_sink(srv))["state"] == "retrying" and s, "state retrying", timeout=15,
                      explain=lambda: json.dumps(the_sink(srv)))
    assert str(closed) in sink.get("lastError", "") and topic in sink["lastError"], sink
    assert sink["lagMessages"] == "3" and sink["cursor"] == {topic: "0"}, sink
    assert sink["forwardedMessages"] == "0", sink
    assert rest_of(srv).get("healthz").status_code == 200


# --- 6: a Pub/Sub topic that does not exist yet --------------------------------------------------

def test_a_missing_pubsub_topic_is_retried_until_it_exists(tmp_path, sinks_pubsub_emulator, monkeypatch):
    emulator = sinks_pubsub_emulator
    target = PubsubTarget("emulator", emulator.address, emulator.base_url)
    try:
        gtopic = f"projects/{target.project}/topics/{unique('missing')}"
        project = fresh_project()
        # Each failed attempt is logged (at debug level), so the test can create the topic right
        # after one, well before the next.
        monkeypatch.setenv("FERROCORE_LOG", "info,ferrocore_sinks=debug")
        srv = start_ferrocore(tmp_path, [f"projects/{project}/topics/*=pubsub://{emulator.address}/{gtopic}"])
        topic = f"projects/{project}/topics/readings"
        sent = publish_rest(srv, topic, 5, "late-topic")

        sink = wait_until(lambda: (s := the_sink(srv))["state"] == "retrying" and s, "state retrying", timeout=20,
                          explain=lambda: json.dumps(the_sink(srv)))
        assert "does not exist" in sink.get("lastError", "") and gtopic in sink["lastError"], sink
        assert sink["lagMessages"] == "5", sink

        def failures() -> int:
            return sum(1 for line in srv.log_tail(10_000_000).splitlines() if "failing" in line and gtopic in line)

        # The back-off doubles from 100 ms: after five failures the next try is 1.6 s away. The
        # topic and its subscription are created right after a failure, so no try falls between
        # the two (a message published to a topic without subscriptions is gone).
        try:
            wait_until(lambda: failures() >= 5, "five failed attempts in the log", timeout=10, interval=0.02)
            seen = failures()
            wait_until(lambda: failures() > seen, "the next failed attempt", timeout=10, interval=0.02)
        except AssertionError:
            pass  # attempts not logged one by one: create the topic all the same
        attempts = failures()
        target.publisher.create_topic(request={"name": gtopic})
        subscription = target.create_subscription(gtopic, ack_deadline_seconds=60)
        print(f"created {gtopic} after {attempts} failed attempts")

        received = pull(target.subscriber, subscription, len(sent), timeout=45)
        ack_all(target.subscriber, subscription, received)
        got = {(bytes(m.message.data), frozenset(m.message.attributes.items())) for m in received}
        want = {(d, frozenset({**a, "ferrocoreTopic": topic, "ferrocoreOffset": str(i)}.items()))
                for i, (d, a) in enumerate(sent)}
        assert got == want
        sink = wait_caught_up(srv, {topic: len(sent)})
        assert sink["state"] == "ok", sink
    finally:
        target.close()
