"""Pub/Sub v1 as back ends use it: the official google-cloud-pubsub client, pointed at the server
with PUBSUB_EMULATOR_HOST, reading device telemetry that Ferrocore writes to its topic log.

Generic scenarios run against two servers (the `backend` fixture): Ferrocore, and Google's own
Pub/Sub emulator as an oracle for what the client and the API do. Where the emulator departs from
Google's documented behaviour, the test says so in a comment and asserts that part on Ferrocore
only. Ferrocore-only tests (IoT telemetry, registry topics, IAM, a crash, the anonymous flag, seeking
before a subscription existed) use the `ferrocore` fixture.

The session server runs with `--pubsub-anonymous`: the library sends no credentials in emulator
mode. A second server without the flag checks that Pub/Sub then needs the admin token.
"""

from __future__ import annotations

import base64
import datetime
import secrets
import time

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher import PublisherClient as GapicPublisherClient
from google.pubsub_v1.types import PubsubMessage

from compat_pubsub import (
    QUIET_S,
    RECEIVE_TIMEOUT_S,
    Collector,
    PubsubTarget,
    ack_all,
    content,
    pull,
    pull_for,
    start_emulator,
)
from compat_server import launch_server
from compat_support import (
    LOCATION,
    TIMESTAMP_RE,
    DeviceFixture,
    MqttDevice,
    Rest,
    assert_google_error,
    b64,
    read_topic,
    unique,
)

# Every test has a hard limit; the slow ones (ack deadlines, lease extension, a restart) say more.
pytestmark = pytest.mark.timeout(60)

PUBSUB_ANONYMOUS = "--pubsub-anonymous"

# What Google's Cloud IoT samples granted on a registry's topic so that IoT Core could publish.
CLOUD_IOT_PUBLISHER = "serviceAccount:cloud-iot@system.gserviceaccount.com"


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory):
    """Google's Pub/Sub emulator (in memory), started once when a test asks for it."""
    emu = start_emulator(tmp_path_factory.mktemp("pubsub-emulator") / "emulator.log")
    yield emu
    emu.stop()


@pytest.fixture(params=["ferrocore", "emulator"])
def backend(request) -> PubsubTarget:
    """The server a generic scenario runs against, with a project of the test's own."""
    if request.param == "ferrocore":
        srv = request.getfixturevalue("server")
        target = PubsubTarget("ferrocore", srv.grpc_address, srv.base_url, token=srv.token)
    else:
        emu = request.getfixturevalue("pubsub_emulator")
        target = PubsubTarget("emulator", emu.address, emu.base_url)
    yield target
    target.close()


@pytest.fixture
def ferrocore(server) -> PubsubTarget:
    """The session server, for the Ferrocore-only tests."""
    target = PubsubTarget("ferrocore", server.grpc_address, server.base_url, token=server.token)
    yield target
    target.close()


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory):
    """A server of this module's own WITHOUT --pubsub-anonymous: Pub/Sub needs the admin token."""
    data_dir = tmp_path_factory.mktemp("ferrocore-locked-data")
    log_path = tmp_path_factory.mktemp("ferrocore-locked-log") / "server.log"
    srv = launch_server(data_dir, log_path, secrets.token_urlsafe(32))
    yield srv
    srv.stop()


@pytest.fixture
def mqtt_connect(server):
    """Connects devices the way Google's MQTT sample did (TLS, JWT password); closes them afterwards."""
    opened: list[MqttDevice] = []

    def _connect(fx: DeviceFixture, registry: dict, device: dict, key) -> MqttDevice:
        dev = MqttDevice(fx.client_id(registry, device), fx.jwt(key),
                         port=server.mqtts_port, ca_certs=server.ca_path)
        opened.append(dev)
        assert dev.connect() == 0, f"CONNACK {dev.connack} for {device['id']}"
        return dev

    yield _connect
    for dev in opened:
        dev.close()


# --- small helpers ------------------------------------------------------------------------------

def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def raw_publish(publisher: pubsub_v1.PublisherClient, topic: str, messages: list[PubsubMessage]):
    """One Publish request exactly as given, past the client's batching and retries (for the limits:
    an error must surface as the server gave it)."""
    return GapicPublisherClient.publish(publisher, request={"topic": topic, "messages": messages},
                                        retry=None, timeout=60)


def rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- topics and subscriptions -------------------------------------------------------------------

def test_topic_create_get_list_delete(backend):
    pub = backend.publisher
    name = backend.topic_path()
    created = pub.create_topic(request={"name": name, "labels": {"team": "iot"}})
    assert created.name == name
    assert dict(created.labels) == {"team": "iot"}
    got = pub.get_topic(request={"topic": name})
    assert (got.name, dict(got.labels)) == (name, {"team": "iot"})

    with pytest.raises(gexc.AlreadyExists):
        pub.create_topic(request={"name": name})

    other = backend.create_topic()
    project = f"projects/{backend.project}"
    assert sorted(t.name for t in pub.list_topics(request={"project": project})) == sorted([name, other])
    # Page by page, as the pager follows next_page_token.
    paged = [t.name for t in pub.list_topics(request={"project": project, "page_size": 1})]
    assert sorted(paged) == sorted([name, other])

    pub.delete_topic(request={"topic": name})
    with pytest.raises(gexc.NotFound):
        pub.get_topic(request={"topic": name})
    with pytest.raises(gexc.NotFound):
        pub.delete_topic(request={"topic": name})
    assert [t.name for t in pub.list_topics(request={"project": project})] == [other]
    # The name is free again.
    assert pub.create_topic(request={"name": name}).name == name


def test_subscription_create_get_list_update_delete(backend):
    pub, sub = backend.publisher, backend.subscriber
    topic = backend.create_topic()
    name = backend.subscription_path()
    created = sub.create_subscription(request={"name": name, "topic": topic})
    assert (created.name, created.topic) == (name, topic)
    assert created.ack_deadline_seconds == 10  # the default
    assert not created.enable_message_ordering and not created.filter
    got = sub.get_subscription(request={"subscription": name})
    assert (got.name, got.topic, got.ack_deadline_seconds) == (name, topic, 10)

    with pytest.raises(gexc.AlreadyExists):
        sub.create_subscription(request={"name": name, "topic": topic})

    second = backend.create_subscription(topic, ack_deadline_seconds=30)
    assert sub.get_subscription(request={"subscription": second}).ack_deadline_seconds == 30
    project = f"projects/{backend.project}"
    assert sorted(s.name for s in sub.list_subscriptions(request={"project": project})) == sorted([name, second])
    assert sorted(pub.list_topic_subscriptions(request={"topic": topic})) == sorted([name, second])

    updated = sub.update_subscription(request={
        "subscription": {"name": name, "ack_deadline_seconds": 42, "labels": {"ignored": "not in the mask"}},
        "update_mask": {"paths": ["ack_deadline_seconds"]},
    })
    assert (updated.ack_deadline_seconds, dict(updated.labels)) == (42, {})
    again = sub.get_subscription(request={"subscription": name})
    assert (again.topic, again.ack_deadline_seconds, dict(again.labels)) == (topic, 42, {})
    if backend.is_ferrocore:
        # Emulator quirk: it refuses "labels" in a subscription's update mask, which Google allows.
        updated = sub.update_subscription(request={
            "subscription": {"name": name, "labels": {"owner": "backend"}},
            "update_mask": {"paths": ["labels"]},
        })
        assert (updated.ack_deadline_seconds, dict(updated.labels)) == (42, {"owner": "backend"})

    sub.delete_subscription(request={"subscription": name})
    with pytest.raises(gexc.NotFound):
        sub.get_subscription(request={"subscription": name})
    with pytest.raises(gexc.NotFound):
        sub.delete_subscription(request={"subscription": name})
    assert list(pub.list_topic_subscriptions(request={"topic": topic})) == [second]


def test_invalid_resource_names_are_invalid_argument(backend):
    pub, sub = backend.publisher, backend.subscriber
    project = f"projects/{backend.project}"
    # Ids are 3-255 characters: a letter first, then letters, digits and -_.~+%; not "goog...".
    longest = "t" + "x" * 254
    assert pub.create_topic(request={"name": f"{project}/topics/{longest}"}).name == f"{project}/topics/{longest}"
    for bad in ("ab", "1topic", "goog-topic", "has space", "t" + "x" * 255, "slash/inside"):
        with pytest.raises(gexc.InvalidArgument):
            pub.create_topic(request={"name": f"{project}/topics/{bad}"})
    topic = backend.create_topic()
    for bad in ("ab", "9sub", "goog-sub"):
        with pytest.raises(gexc.InvalidArgument):
            sub.create_subscription(request={"name": f"{project}/subscriptions/{bad}", "topic": topic})


def test_ack_deadline_bounds(backend):
    sub = backend.subscriber
    topic = backend.create_topic()
    assert sub.get_subscription(
        request={"subscription": backend.create_subscription(topic, ack_deadline_seconds=0)}
    ).ack_deadline_seconds == 10  # 0 means the default
    for ok in (10, 600):
        name = backend.create_subscription(topic, ack_deadline_seconds=ok)
        assert sub.get_subscription(request={"subscription": name}).ack_deadline_seconds == ok
    with pytest.raises(gexc.InvalidArgument):
        sub.create_subscription(request={"name": backend.subscription_path(), "topic": topic,
                                         "ack_deadline_seconds": 601})
    if backend.is_ferrocore:
        # Emulator quirk: it accepts and keeps deadlines below 10 s (5, 9); Google documents 10 as
        # the minimum, which Ferrocore enforces.
        for low in (5, 9):
            with pytest.raises(gexc.InvalidArgument):
                sub.create_subscription(request={"name": backend.subscription_path(), "topic": topic,
                                                 "ack_deadline_seconds": low})

    name = backend.create_subscription(topic)
    with pytest.raises(gexc.InvalidArgument):
        sub.update_subscription(request={"subscription": {"name": name, "ack_deadline_seconds": 601},
                                         "update_mask": {"paths": ["ack_deadline_seconds"]}})
    assert sub.get_subscription(request={"subscription": name}).ack_deadline_seconds == 10

    # ModifyAckDeadline takes 0..600 for a real ack id.
    backend.publish(topic, [(b"deadline", {})])
    [received] = pull(sub, name, 1)
    if backend.is_ferrocore:
        # Emulator quirk: it accepts 601 here (it checks only the ack id); Google's limit is 600.
        with pytest.raises(gexc.InvalidArgument):
            sub.modify_ack_deadline(request={"subscription": name, "ack_ids": [received.ack_id],
                                             "ack_deadline_seconds": 601})
    sub.modify_ack_deadline(request={"subscription": name, "ack_ids": [received.ack_id],
                                     "ack_deadline_seconds": 600})
    ack_all(sub, name, [received])


def test_missing_topics_and_subscriptions_are_not_found(backend):
    pub, sub = backend.publisher, backend.subscriber
    missing_topic = backend.topic_path("missing")
    with pytest.raises(gexc.NotFound):
        pub.publish(missing_topic, b"nobody listens").result(timeout=RECEIVE_TIMEOUT_S)
    with pytest.raises(gexc.NotFound):
        sub.create_subscription(request={"name": backend.subscription_path(), "topic": missing_topic})

    missing_sub = backend.subscription_path("missing")
    with pytest.raises(gexc.NotFound):
        sub.get_subscription(request={"subscription": missing_sub})
    with pytest.raises(gexc.NotFound):
        sub.pull(request={"subscription": missing_sub, "max_messages": 1}, timeout=10)
    with pytest.raises(gexc.NotFound):
        sub.update_subscription(request={"subscription": {"name": missing_sub, "ack_deadline_seconds": 20},
                                         "update_mask": {"paths": ["ack_deadline_seconds"]}})
    with pytest.raises(gexc.NotFound):
        sub.seek(request={"subscription": missing_sub, "time": now_utc()})
    # A streaming pull of a missing subscription ends for good with NOT_FOUND.
    future = backend.stream(missing_sub, Collector())
    with pytest.raises(gexc.NotFound):
        future.result(timeout=RECEIVE_TIMEOUT_S)


# --- publish and receive ------------------------------------------------------------------------

def test_publish_and_streaming_subscribe_deliver_every_message_once(backend):
    topic = backend.create_topic()
    name = backend.create_subscription(topic)
    sent = [(f"reading {n}".encode(), {"seq": str(n), "kind": "even" if n % 2 == 0 else "odd"}) for n in range(40)]
    sent += [
        (bytes(range(256)), {"binary": "yes"}),
        (b"", {"only": "attributes"}),  # no data: an attribute is enough
        (b"empty attribute value", {"empty": ""}),
        ("grüße".encode(), {"unicode": "größe ✓"}),
    ]
    before = now_utc()
    ids = backend.publish(topic, sent)
    after = now_utc()
    assert len(set(ids)) == len(sent), f"message ids are not unique: {ids}"

    collector = Collector()
    backend.stream(name, collector, max_messages=5)  # flow control: at most 5 outstanding
    deliveries = collector.wait_messages(len(sent))
    assert {d.content for d in deliveries} == {content(d, a) for d, a in sent}
    expected_ids = {content(d, a): mid for (d, a), mid in zip(sent, ids)}
    for d in deliveries:
        assert d.message_id == expected_ids[d.content], d
        assert d.delivery_attempt is None, d  # only set with a dead-letter policy
        slack = datetime.timedelta(seconds=5)
        assert before - slack <= d.publish_time <= after + slack, (d.publish_time, before, after)
    # Every message was acked at once, so none may come again.
    collector.quiet()
    assert collector.duplicates() == {}, "redelivered although acked in time"


def test_a_subscription_sees_only_what_is_published_after_it_exists(backend):
    topic = backend.create_topic()
    backend.publish(topic, [(b"before the subscription", {})])
    name = backend.create_subscription(topic)
    backend.publish(topic, [(b"after the subscription", {})])
    collector = Collector()
    backend.stream(name, collector)
    collector.wait_messages(1)
    collector.quiet()
    assert [d.data for d in collector.snapshot()] == [b"after the subscription"]


def test_every_subscription_gets_its_own_copy(backend):
    topic = backend.create_topic()
    first, second = backend.create_subscription(topic), backend.create_subscription(topic)
    sent = [(f"fan-out {n}".encode(), {}) for n in range(10)]
    backend.publish(topic, sent)
    # The first subscription acks; the second one nacks every message once. Neither disturbs the other.
    nacked: set[str] = set()

    def nack_once(message, delivery):
        if delivery.message_id in nacked:
            message.ack()
        else:
            nacked.add(delivery.message_id)
            message.nack()

    acking, nacking = Collector(), Collector(nack_once)
    backend.stream(first, acking)
    backend.stream(second, nacking)
    acking.wait_messages(10)
    nacking.wait(lambda ds: len(nacking.counts()) == 10 and all(n >= 2 for n in nacking.counts().values()),
                 "every message twice on the nacking subscription")
    assert {d.data for d in acking.snapshot()} == {d for d, _ in sent}
    assert {d.data for d in nacking.snapshot()} == {d for d, _ in sent}
    acking.quiet(1.0)
    assert acking.duplicates() == {}


def test_nack_redelivers_at_once_with_a_new_ack_id_and_the_same_message_id(backend):
    topic = backend.create_topic()
    # A long ack deadline: a redelivery within seconds comes from the nack, not from the deadline.
    name = backend.create_subscription(topic, ack_deadline_seconds=60)
    seen: set[str] = set()

    def nack_first(message, delivery):
        if delivery.message_id in seen:
            message.ack()
        else:
            seen.add(delivery.message_id)
            message.nack()

    collector = Collector(nack_first)
    backend.stream(name, collector)
    ids = backend.publish(topic, [(f"nack me {n}".encode(), {"n": str(n)}) for n in range(3)])
    collector.wait(lambda ds: len(ds) >= 6, "each message twice", timeout=RECEIVE_TIMEOUT_S)
    collector.quiet()
    deliveries = collector.snapshot()
    assert sorted(collector.counts().items()) == sorted((i, 2) for i in ids), collector.counts()
    for mid in ids:
        first, again = [d for d in deliveries if d.message_id == mid]
        assert first.ack_id != again.ack_id, "a redelivery needs a new ack id"
        assert (first.data, first.attributes) == (again.data, again.attributes)
        assert again.received_at - first.received_at < 10, "a nacked message must come again at once"


def test_sync_pull_acknowledge_and_modify_ack_deadline(backend):
    sub = backend.subscriber
    topic = backend.create_topic()
    name = backend.create_subscription(topic, ack_deadline_seconds=60)
    ids = backend.publish(topic, [(f"pulled {n}".encode(), {"n": str(n)}) for n in range(5)])
    received = pull(sub, name, 5)
    assert sorted(m.message.message_id for m in received) == sorted(ids)
    assert len({m.ack_id for m in received}) == 5
    for m in received:
        assert m.message.attributes["n"] == m.message.data.decode().split()[-1]
        assert m.delivery_attempt == 0

    nacked, extended, rest = received[0], received[1], received[2:]
    sub.modify_ack_deadline(request={"subscription": name, "ack_ids": [nacked.ack_id], "ack_deadline_seconds": 0})
    sub.modify_ack_deadline(request={"subscription": name, "ack_ids": [extended.ack_id], "ack_deadline_seconds": 120})
    [again] = pull(sub, name, 1)
    assert again.message.message_id == nacked.message.message_id
    assert again.ack_id != nacked.ack_id
    ack_all(sub, name, [again, extended, *rest])
    assert pull_for(sub, name) == []


@pytest.mark.timeout(90)
def test_unacked_messages_come_back_after_the_deadline_acked_ones_do_not(backend):
    sub = backend.subscriber
    topic = backend.create_topic()
    name = backend.create_subscription(topic, ack_deadline_seconds=10)
    backend.publish(topic, [(b"acked", {}), (b"forgotten", {})])
    received = {m.message.data: m for m in pull(sub, name, 2)}
    ack_all(sub, name, [received[b"acked"]])
    started = time.monotonic()
    [again] = pull(sub, name, 1, timeout=40)
    waited = time.monotonic() - started
    assert again.message.data == b"forgotten"
    assert again.message.message_id == received[b"forgotten"].message.message_id
    assert waited > 7, f"redelivered after {waited:.1f}s, before the 10 s ack deadline ran out"
    ack_all(sub, name, [again])
    assert pull_for(sub, name) == []


@pytest.mark.timeout(120)
def test_a_long_callback_keeps_its_lease_and_gets_no_duplicate(backend):
    topic = backend.create_topic()
    name = backend.create_subscription(topic, ack_deadline_seconds=10)

    def slow(message, delivery):
        time.sleep(25)  # 2.5 ack deadlines: the client must extend the lease meanwhile
        message.ack()

    collector = Collector(slow)
    backend.stream(name, collector, max_messages=1)
    backend.publish(topic, [(b"takes a while", {})])
    collector.wait_messages(1)
    started = time.monotonic()
    while time.monotonic() - started < 28:  # the callback's 25 s, and a little more
        assert len(collector.snapshot()) == 1, f"duplicate while the callback ran: {collector.counts()}"
        time.sleep(0.5)
    collector.quiet()
    assert collector.counts() == {collector.snapshot()[0].message_id: 1}


def test_malformed_ack_ids_are_rejected_and_stale_ones_ignored(backend):
    sub = backend.subscriber
    topic = backend.create_topic()
    name = backend.create_subscription(topic)
    with pytest.raises(gexc.InvalidArgument):
        sub.acknowledge(request={"subscription": name, "ack_ids": ["this is not an ack id"]})
    with pytest.raises(gexc.InvalidArgument):
        sub.modify_ack_deadline(request={"subscription": name, "ack_ids": ["this is not an ack id"],
                                         "ack_deadline_seconds": 30})
    backend.publish(topic, [(b"ack me twice", {})])
    [received] = pull(sub, name, 1)
    ack_all(sub, name, [received])
    # The same ack id again, after the ack: accepted quietly (no exactly-once delivery here).
    ack_all(sub, name, [received])
    sub.modify_ack_deadline(request={"subscription": name, "ack_ids": [received.ack_id], "ack_deadline_seconds": 0})
    assert pull_for(sub, name) == [], "a stale nack brought an acked message back"


# --- subscription options -----------------------------------------------------------------------

FILTER_MESSAGES = [
    (b"a", {"deviceId": "a"}),
    (b"a-kind", {"deviceId": "a", "kind": "x"}),
    (b"dev-1", {"deviceId": "dev-1"}),
    (b"dev-2-kind", {"deviceId": "dev-2", "kind": "y"}),
    (b"devx", {"deviceId": "devx"}),
    (b"no attributes", {}),
]

FILTERS = {
    'attributes.deviceId = "a"': {b"a", b"a-kind"},
    'hasPrefix(attributes.deviceId, "dev-")': {b"dev-1", b"dev-2-kind"},
    # A missing attribute is not equal to "a", so NOT lets it through.
    'NOT attributes.deviceId = "a"': {b"dev-1", b"dev-2-kind", b"devx", b"no attributes"},
    "attributes:kind": {b"a-kind", b"dev-2-kind"},
    '(attributes.deviceId = "a" AND attributes:kind) OR attributes.deviceId = "dev-1"': {b"a-kind", b"dev-1"},
    'attributes.deviceId = "a" OR hasPrefix(attributes.deviceId, "dev-")': {b"a", b"a-kind", b"dev-1", b"dev-2-kind"},
}


def test_filters_deliver_only_matching_messages(backend):
    sub = backend.subscriber
    topic = backend.create_topic()
    collectors = {}
    for expression in FILTERS:
        name = backend.create_subscription(topic, filter=expression)
        assert sub.get_subscription(request={"subscription": name}).filter == expression
        collectors[expression] = Collector()
        backend.stream(name, collectors[expression])
    backend.publish(topic, FILTER_MESSAGES)
    for expression, wanted in FILTERS.items():
        collectors[expression].wait(lambda ds, w=wanted: w <= {d.data for d in ds}, f"{expression}: {wanted}")
    time.sleep(QUIET_S)
    for expression, wanted in FILTERS.items():
        got = {d.data for d in collectors[expression].snapshot()}
        if backend.is_ferrocore:
            # Emulator quirk: it stores the filter but delivers every message regardless.
            assert got == wanted, f"{expression}: got {sorted(got)}, wanted {sorted(wanted)}"
        else:
            assert wanted <= got
    if backend.is_ferrocore:
        # Emulator quirk: it accepts any filter text; Google refuses a malformed one.
        with pytest.raises(gexc.InvalidArgument):
            sub.create_subscription(request={"name": backend.subscription_path(), "topic": topic,
                                             "filter": 'attributes.deviceId = '})


def test_ordering_keys_keep_publish_order(backend):
    topic = backend.create_topic()
    name = backend.create_subscription(topic, enable_message_ordering=True)
    assert backend.subscriber.get_subscription(request={"subscription": name}).enable_message_ordering
    ordered = backend.new_publisher(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    keys = ("device-a", "device-b", "device-c")
    futures = [
        ordered.publish(topic, f"{key} #{n}".encode(), ordering_key=key, n=str(n))
        for n in range(30) for key in keys  # interleaved across keys
    ]
    for f in futures:
        f.result(timeout=RECEIVE_TIMEOUT_S)

    collector = Collector()
    backend.stream(name, collector)
    collector.wait_messages(len(futures))
    deliveries = collector.snapshot()
    for key in keys:
        got = [d.data for d in deliveries if d.ordering_key == key]
        assert got == [f"{key} #{n}".encode() for n in range(30)], f"{key} out of order: {got}"
    assert collector.duplicates() == {}


def test_dead_letter_policy_moves_a_repeatedly_nacked_message(backend):
    sub = backend.subscriber
    topic, dead_topic = backend.create_topic(), backend.create_topic("dead")
    dead_sub = backend.create_subscription(dead_topic, prefix="dead")
    # Too few attempts. Emulator: OUT_OF_RANGE; both are HTTP 400, so either class is accepted.
    with pytest.raises((gexc.InvalidArgument, gexc.OutOfRange)):
        sub.create_subscription(request={
            "name": backend.subscription_path(), "topic": topic,
            "dead_letter_policy": {"dead_letter_topic": dead_topic, "max_delivery_attempts": 4},
        })
    name = backend.create_subscription(
        topic, dead_letter_policy={"dead_letter_topic": dead_topic, "max_delivery_attempts": 5}, ack_deadline_seconds=60,
    )
    policy = sub.get_subscription(request={"subscription": name}).dead_letter_policy
    assert (policy.dead_letter_topic, policy.max_delivery_attempts) == (dead_topic, 5)

    always_nack = Collector(lambda message, delivery: message.nack())
    dead = Collector()
    backend.stream(name, always_nack)
    backend.stream(dead_sub, dead)
    [mid] = backend.publish(topic, [(b"poison", {"deviceId": "dev-7"})])
    [dead_letter] = dead.wait_messages(1)
    assert dead_letter.data == b"poison"
    # Pub/Sub adds CloudPubSubDeadLetterSource* attributes; the original ones are kept.
    assert dead_letter.attributes.items() >= {"deviceId": "dev-7"}.items(), dead_letter.attributes
    always_nack.quiet()
    attempts = [d.delivery_attempt for d in always_nack.snapshot() if d.message_id == mid]
    assert attempts == [1, 2, 3, 4, 5], attempts


def test_seek_to_a_time_redelivers_retained_acked_messages(backend):
    sub = backend.subscriber
    topic = backend.create_topic()
    name = backend.create_subscription(topic, retain_acked_messages=True)
    assert sub.get_subscription(request={"subscription": name}).retain_acked_messages
    backend.publish(topic, [(f"early {n}".encode(), {}) for n in range(3)])
    time.sleep(0.3)  # a gap between the two batches' publish times; there is no condition to wait on
    backend.publish(topic, [(f"late {n}".encode(), {}) for n in range(3)])
    first = pull(sub, name, 6)
    ack_all(sub, name, first)
    times = {m.message.data: m.message.publish_time for m in first}
    assert pull_for(sub, name, 1.0) == []

    early_end = max(t for d, t in times.items() if d.startswith(b"early"))
    late_start = min(t for d, t in times.items() if d.startswith(b"late"))
    assert late_start > early_end, times
    # To a time between the batches: the late ones come again.
    sub.seek(request={"subscription": name, "time": early_end + (late_start - early_end) / 2})
    again = pull(sub, name, 3)
    assert sorted(m.message.data for m in again) == [b"late 0", b"late 1", b"late 2"]
    ack_all(sub, name, again)
    assert pull_for(sub, name) == []

    # To a time before the first: all six.
    sub.seek(request={"subscription": name, "time": min(times.values()) - datetime.timedelta(milliseconds=100)})
    everything = pull(sub, name, 6)
    assert sorted(m.message.data for m in everything) == sorted(times)
    # To a time after the last: every message counts as acknowledged, unacked ones included.
    sub.seek(request={"subscription": name, "time": max(times.values()) + datetime.timedelta(milliseconds=100)})
    assert pull_for(sub, name) == []


def test_publish_request_limits(backend):
    pub = backend.publisher
    topic = backend.create_topic()  # no subscription: nothing here is read back
    msg = PubsubMessage

    assert len(raw_publish(pub, topic, [msg(data=b"x")] * 1000).message_ids) == 1000
    with pytest.raises(gexc.InvalidArgument):
        raw_publish(pub, topic, [msg(data=b"x")] * 1001)
    with pytest.raises(gexc.InvalidArgument):
        raw_publish(pub, topic, [msg()])  # neither data nor attributes

    at_limits = msg(data=b"x", attributes={
        **{f"a{n:02d}": "v" for n in range(98)},
        "k" * 256: "v",
        "long-value": "v" * 1024,
    })
    assert len(at_limits.attributes) == 100
    assert len(raw_publish(pub, topic, [at_limits]).message_ids) == 1
    if backend.is_ferrocore:
        # Emulator quirk: it accepts all of these; Google's quotas refuse them.
        over = {
            "101 attributes": msg(data=b"x", attributes={f"a{n:03d}": "v" for n in range(101)}),
            "257-byte key": msg(data=b"x", attributes={"k" * 257: "v"}),
            "1025-byte value": msg(data=b"x", attributes={"k": "v" * 1025}),
            # Over 10 MB whether MB means 10^6 or 2^20 bytes: refused by Pub/Sub, not by gRPC's
            # frame limit (RESOURCE_EXHAUSTED would tell that the server never read the request).
            "request over 10 MB": msg(data=b"m" * (10 * 1024 * 1024 + 1)),
        }
        for what, message in over.items():
            try:
                raw_publish(pub, topic, [message])
            except gexc.InvalidArgument:
                continue
            except gexc.GoogleAPICallError as e:
                raise AssertionError(f"{what}: expected INVALID_ARGUMENT, got {e!r}") from e
            raise AssertionError(f"{what}: accepted")


@pytest.mark.timeout(90)
def test_a_5_mb_message_is_accepted(backend):
    """Pub/Sub takes messages up to 10 MB, beyond gRPC's customary 4 MiB frame limit. (The Python
    subscriber in emulator mode keeps gRPC's 4 MiB receive limit, so it is not read back here.)"""
    topic = backend.create_topic()
    [mid] = raw_publish(backend.publisher, topic, [PubsubMessage(data=b"m" * 5_000_000)]).message_ids
    assert mid
    # The server is none the worse: the topic takes and delivers ordinary messages after it.
    name = backend.create_subscription(topic)
    [after] = backend.publish(topic, [(b"after the big one", {})])
    [m] = pull(backend.subscriber, name, 1)
    assert (m.message.message_id, m.message.data) == (after, b"after the big one")
    ack_all(backend.subscriber, name, [m])


# --- REST ---------------------------------------------------------------------------------------
# Google's HTTP mapping of the same API. The emulator serves it on its gRPC port; Ferrocore on its
# HTTP port, where these requests carry the admin token.

def test_rest_topic_and_subscription_lifecycle(backend):
    rest = backend.rest
    topic, name = backend.topic_path(), backend.subscription_path()
    created = rest.ok(rest.request("PUT", f"v1/{topic}", json_body={"labels": {"team": "iot"}}))
    assert (created["name"], created["labels"]) == (topic, {"team": "iot"})
    assert rest.ok(rest.get(f"v1/{topic}")) == created
    assert [t["name"] for t in rest.ok(rest.get(f"v1/projects/{backend.project}/topics"))["topics"]] == [topic]

    sub = rest.ok(rest.request("PUT", f"v1/{name}", json_body={"topic": topic, "ackDeadlineSeconds": 20}))
    assert (sub["name"], sub["topic"], sub["ackDeadlineSeconds"]) == (name, topic, 20)
    assert rest.ok(rest.get(f"v1/{name}")) == sub
    listed = rest.ok(rest.get(f"v1/projects/{backend.project}/subscriptions"))["subscriptions"]
    assert [s["name"] for s in listed] == [name]
    assert rest.ok(rest.get(f"v1/{topic}/subscriptions")) == {"subscriptions": [name]}

    patched = rest.ok(rest.patch(f"v1/{name}", {
        "subscription": {"ackDeadlineSeconds": 30}, "updateMask": "ackDeadlineSeconds",
    }))
    assert (patched["name"], patched["ackDeadlineSeconds"]) == (name, 30)
    assert rest.ok(rest.get(f"v1/{name}"))["ackDeadlineSeconds"] == 30
    if backend.is_ferrocore:
        # Emulator quirk: "labels" is refused in a subscription's update mask; Google allows it.
        patched = rest.ok(rest.patch(f"v1/{name}", {
            "subscription": {"labels": {"owner": "backend"}}, "updateMask": "labels",
        }))
        assert (patched["ackDeadlineSeconds"], patched["labels"]) == (30, {"owner": "backend"})

    assert rest.ok(rest.delete(f"v1/{name}")) == {}
    assert_google_error(rest.get(f"v1/{name}"), 404, "NOT_FOUND")
    assert rest.ok(rest.get(f"v1/{topic}/subscriptions")).get("subscriptions", []) == []
    assert rest.ok(rest.delete(f"v1/{topic}")) == {}
    assert_google_error(rest.get(f"v1/{topic}"), 404, "NOT_FOUND")
    assert rest.ok(rest.get(f"v1/projects/{backend.project}/topics")).get("topics", []) == []


def rest_pull(rest: Rest, name: str, count: int, timeout: float = RECEIVE_TIMEOUT_S) -> list[dict]:
    """Pulls until `count` messages came. A server may hold a pull open while it has nothing to
    give (the emulator does, for ~30 s, sometimes even right after a nack or a seek): each pull
    gets a few seconds, and one still open then counts as empty and is asked again."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"pulled {len(got)} of {count} over REST: {got}"
        try:
            resp = rest.session.post(f"{rest.base_url}/v1/{name}:pull", json={"maxMessages": count - len(got)},
                                     timeout=min(5.0, left))
        except requests.Timeout:
            continue
        batch = rest.ok(resp).get("receivedMessages", [])
        got.extend(batch)
        if not batch:
            time.sleep(0.05)
    return got


def rest_pull_for(rest: Rest, name: str, seconds: float = QUIET_S) -> list[dict]:
    """Everything REST pulls return within `seconds`. A server may hold an empty pull open (the
    emulator does, for ~30 s), so a pull still open when the window closes counts as empty."""
    got: list[dict] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0.2:
        try:
            resp = rest.session.post(f"{rest.base_url}/v1/{name}:pull", json={"maxMessages": 100}, timeout=left)
        except requests.Timeout:
            break
        got.extend(rest.ok(resp).get("receivedMessages", []))
    return got


def test_rest_publish_pull_acknowledge_modify_and_seek(backend):
    rest = backend.rest
    # Google's emulator sometimes holds pulls open for ~30 s before it delivers (after a publish,
    # a nack or a seek), so the oracle gets a longer wait than Ferrocore.
    oracle = backend.name != "ferrocore"
    wait = 30.0 if oracle else RECEIVE_TIMEOUT_S
    topic, name = backend.topic_path(), backend.subscription_path()
    rest.ok(rest.request("PUT", f"v1/{topic}", json_body={}))
    rest.ok(rest.request("PUT", f"v1/{name}", json_body={
        "topic": topic, "ackDeadlineSeconds": 60, "retainAckedMessages": True,
    }))
    seek_back_to = now_utc() - datetime.timedelta(milliseconds=500)
    sent = [
        (b"first", {"deviceId": "dev-1"}),
        (bytes(range(256)), {"deviceId": "dev-2", "subFolder": "raw"}),
        (b"", {"only": "attributes"}),
    ]
    published = rest.ok(rest.post(f"v1/{topic}:publish", {"messages": [
        {"data": b64(d), "attributes": a} if d else {"attributes": a} for d, a in sent
    ]}))
    ids = published["messageIds"]
    assert len(ids) == 3 and len(set(ids)) == 3 and all(isinstance(i, str) for i in ids), published

    received = rest_pull(rest, name, 3, timeout=wait)
    by_id = {m["message"]["messageId"]: m for m in received}
    assert set(by_id) == set(ids)
    for mid, (data, attrs) in zip(ids, sent):
        message = by_id[mid]["message"]
        assert base64.b64decode(message.get("data", "")) == data
        assert message["attributes"] == attrs
        assert TIMESTAMP_RE.match(message["publishTime"]), message
        assert by_id[mid]["ackId"]

    # A nack brings the first one back at once, with a new ack id.
    first = by_id[ids[0]]
    assert rest.ok(rest.post(f"v1/{name}:modifyAckDeadline", {"ackIds": [first["ackId"]], "ackDeadlineSeconds": 0})) == {}
    [again] = rest_pull(rest, name, 1, timeout=wait)
    assert again["message"]["messageId"] == ids[0] and again["ackId"] != first["ackId"]
    ack_ids = [again["ackId"]] + [by_id[i]["ackId"] for i in ids[1:]]
    assert rest.ok(rest.post(f"v1/{name}:acknowledge", {"ackIds": ack_ids})) == {}
    assert rest_pull_for(rest, name) == []

    # Seek back (the subscription retains acked messages): all three again.
    assert rest.ok(rest.post(f"v1/{name}:seek", {"time": rfc3339(seek_back_to)})) == {}
    try:
        replayed = rest_pull(rest, name, 3, timeout=wait)
    except AssertionError:
        if not oracle:
            raise
        # Seen in about one run in five: the emulator then redelivers nothing for minutes. The
        # Ferrocore variant of this test checks the replay strictly.
        pytest.skip("Google's emulator did not redeliver after the seek within 30 s")
    assert sorted(m["message"]["messageId"] for m in replayed) == sorted(ids)
    rest.ok(rest.post(f"v1/{name}:acknowledge", {"ackIds": [m["ackId"] for m in replayed]}))


def test_rest_errors_are_google_json_errors(backend):
    rest = backend.rest
    project = f"projects/{backend.project}"
    topic = backend.topic_path()
    assert_google_error(rest.request("PUT", f"v1/{project}/topics/ab", json_body={}), 400, "INVALID_ARGUMENT")
    assert_google_error(rest.get(f"v1/{topic}"), 404, "NOT_FOUND")
    assert_google_error(rest.post(f"v1/{topic}:publish", {"messages": [{"data": b64(b"x")}]}), 404, "NOT_FOUND")
    assert_google_error(rest.request("PUT", f"v1/{backend.subscription_path()}", json_body={"topic": topic}),
                        404, "NOT_FOUND")
    rest.ok(rest.request("PUT", f"v1/{topic}", json_body={}))
    assert_google_error(rest.request("PUT", f"v1/{topic}", json_body={}), 409, "ALREADY_EXISTS")
    assert_google_error(rest.request("PUT", f"v1/{backend.subscription_path()}",
                                     json_body={"topic": topic, "ackDeadlineSeconds": 601}), 400, "INVALID_ARGUMENT")
    name = backend.subscription_path()
    rest.ok(rest.request("PUT", f"v1/{name}", json_body={"topic": topic}))
    assert_google_error(rest.request("PUT", f"v1/{name}", json_body={"topic": topic}), 409, "ALREADY_EXISTS")
    assert_google_error(rest.post(f"v1/{name}:acknowledge", {"ackIds": ["this is not an ack id"]}),
                        400, "INVALID_ARGUMENT")
    assert_google_error(rest.post(f"v1/{backend.subscription_path()}:pull", {"maxMessages": 1}), 404, "NOT_FOUND")


# --- Ferrocore only: authentication ---------------------------------------------------------------

@pytest.mark.timeout(90)
def test_without_the_anonymous_flag_pubsub_needs_the_admin_token(locked_server):
    srv = locked_server
    authed = PubsubTarget("ferrocore", srv.grpc_address, srv.base_url, token=srv.token, grpc_token=srv.token)
    anon = PubsubTarget("ferrocore", srv.grpc_address, srv.base_url)
    wrong = PubsubTarget("ferrocore", srv.grpc_address, srv.base_url, token="not-the-token",
                         grpc_token="not-the-token")
    anon.project = wrong.project = authed.project
    try:
        topic = authed.create_topic()
        name = authed.create_subscription(topic)

        for client in (anon, wrong):
            calls = {
                "CreateTopic": lambda: client.publisher.create_topic(request={"name": client.topic_path()}),
                "GetTopic": lambda: client.publisher.get_topic(request={"topic": topic}),
                "ListTopics": lambda: list(client.publisher.list_topics(request={"project": f"projects/{client.project}"})),
                "GetSubscription": lambda: client.subscriber.get_subscription(request={"subscription": name}),
                "Pull": lambda: client.subscriber.pull(request={"subscription": name, "max_messages": 1}, timeout=10),
                "GetIamPolicy": lambda: client.publisher.get_iam_policy(request={"resource": topic}),
            }
            for method, call in calls.items():
                with pytest.raises(gexc.Unauthenticated):
                    call()
            with pytest.raises(gexc.Unauthenticated):
                client.publisher.publish(topic, b"refused").result(timeout=RECEIVE_TIMEOUT_S)
            # A streaming pull refused with UNAUTHENTICATED ends subscribe() for good.
            with pytest.raises(gexc.Unauthenticated):
                client.stream(name, Collector()).result(timeout=RECEIVE_TIMEOUT_S)
            assert_google_error(client.rest.request("PUT", f"v1/{client.topic_path()}", json_body={}),
                                401, "UNAUTHENTICATED")
            assert_google_error(client.rest.post(f"v1/{name}:pull", {"maxMessages": 1}), 401, "UNAUTHENTICATED")

        # With `authorization: Bearer <admin token>` everything works, streaming included.
        collector = Collector()
        authed.stream(name, collector)
        [mid] = authed.publish(topic, [(b"with the token", {"k": "v"})])
        [delivery] = collector.wait_messages(1)
        assert (delivery.message_id, delivery.data, delivery.attributes) == (mid, b"with the token", {"k": "v"})
        rest_topic = authed.topic_path()
        assert authed.rest.ok(authed.rest.request("PUT", f"v1/{rest_topic}", json_body={}))["name"] == rest_topic
        assert authed.publisher.get_topic(request={"topic": rest_topic}).name == rest_topic
    finally:
        for target in (authed, anon, wrong):
            target.close()


# --- Ferrocore only: IAM ----------------------------------------------------------------------------
# Emulator quirk: it starts with "IAM integration is disabled" and has no IAM policies to compare.

def test_iam_policies_on_topics_and_subscriptions(ferrocore):
    pub, sub = ferrocore.publisher, ferrocore.subscriber
    topic = ferrocore.create_topic()
    name = ferrocore.create_subscription(topic)

    # As Google's IoT samples did before creating a registry: let IoT Core publish to the topic.
    policy = pub.get_iam_policy(request={"resource": topic})
    assert list(policy.bindings) == []
    policy.bindings.add(role="roles/pubsub.publisher", members=[CLOUD_IOT_PUBLISHER])
    stored = pub.set_iam_policy(request={"resource": topic, "policy": policy})
    assert [(b.role, list(b.members)) for b in stored.bindings] == [("roles/pubsub.publisher", [CLOUD_IOT_PUBLISHER])]
    assert stored.etag, "a stored policy carries an etag"
    fetched = pub.get_iam_policy(request={"resource": topic})
    assert (list(fetched.bindings), fetched.etag) == (list(stored.bindings), stored.etag)

    fetched.bindings.add(role="roles/pubsub.viewer", members=["user:operator@example.com"])
    changed = pub.set_iam_policy(request={"resource": topic, "policy": fetched})
    assert changed.etag != stored.etag, "the etag must change with the policy"
    assert {b.role for b in pub.get_iam_policy(request={"resource": topic}).bindings} == {
        "roles/pubsub.publisher", "roles/pubsub.viewer"}

    wanted = ["pubsub.topics.publish", "pubsub.topics.get"]
    granted = pub.test_iam_permissions(request={"resource": topic, "permissions": wanted})
    # Anonymous Pub/Sub access is switched on for this server, so the caller holds every permission.
    assert sorted(granted.permissions) == sorted(wanted)

    sub_policy = sub.get_iam_policy(request={"resource": name})
    sub_policy.bindings.add(role="roles/pubsub.subscriber", members=["serviceAccount:backend@example.iam.gserviceaccount.com"])
    sub_stored = sub.set_iam_policy(request={"resource": name, "policy": sub_policy})
    sub_fetched = sub.get_iam_policy(request={"resource": name})
    assert [(b.role, list(b.members)) for b in sub_fetched.bindings] == [
        ("roles/pubsub.subscriber", ["serviceAccount:backend@example.iam.gserviceaccount.com"])]
    assert sub_fetched.etag == sub_stored.etag
    granted = sub.test_iam_permissions(request={"resource": name, "permissions": ["pubsub.subscriptions.consume"]})
    assert list(granted.permissions) == ["pubsub.subscriptions.consume"]

    with pytest.raises(gexc.NotFound):
        pub.get_iam_policy(request={"resource": ferrocore.topic_path("missing")})


# --- Ferrocore only: Cloud IoT registries and devices ---------------------------------------------

def test_registry_notification_topics_exist_in_pubsub_at_once(ferrocore, rest, tmp_path):
    fx = DeviceFixture(rest, tmp_path / "keys")
    ferrocore.project = fx.project
    pub = ferrocore.publisher
    registry = fx.create_registry()
    topics = [fx.topic("alerts"), fx.topic("telemetry"), fx.topic("state")]
    for topic in topics:
        assert pub.get_topic(request={"topic": topic}).name == topic
        with pytest.raises(gexc.AlreadyExists):
            pub.create_topic(request={"name": topic})
    listed = {t.name for t in pub.list_topics(request={"project": f"projects/{fx.project}"})}
    assert listed == set(topics)

    # A topic named by an update of the registry exists at once too.
    rest.ok(rest.patch(f"v1/{registry['name']}", {
        "eventNotificationConfigs": [{"pubsubTopicName": fx.topic("telemetry-v2")}],
    }, params={"updateMask": "eventNotificationConfigs"}))
    assert pub.get_topic(request={"topic": fx.topic("telemetry-v2")}).name == fx.topic("telemetry-v2")

    # These topics are Ferrocore's topic log: what Publish writes, the log's reader sees.
    [mid] = ferrocore.publish(fx.topic("telemetry"), [(b"from a back end", {"origin": "pubsub"})])
    logged = read_topic(rest, fx.topic("telemetry"), expect=1)
    assert [(base64.b64decode(m["data"]), m["attributes"]) for m in logged] == [
        (b"from a back end", {"origin": "pubsub"})]


def test_topic_and_subscription_first_then_a_registry_naming_the_topic(ferrocore, rest, tmp_path, mqtt_connect):
    """The order of Google's IoT quickstart: topic, IAM grant for IoT Core, subscription, then the
    registry; a device's telemetry then reaches the subscription."""
    fx = DeviceFixture(rest, tmp_path / "keys")
    ferrocore.project = fx.project
    pub = ferrocore.publisher
    topic = fx.topic(unique("events"))
    pub.create_topic(request={"name": topic})
    policy = pub.get_iam_policy(request={"resource": topic})
    policy.bindings.add(role="roles/pubsub.publisher", members=[CLOUD_IOT_PUBLISHER])
    pub.set_iam_policy(request={"resource": topic, "policy": policy})
    name = ferrocore.create_subscription(topic)
    collector = Collector()
    ferrocore.stream(name, collector)

    registry = fx.rest.create_registry(f"projects/{fx.project}/locations/{LOCATION}", {
        "id": unique("reg"), "eventNotificationConfigs": [{"pubsubTopicName": topic}],
    })
    with pytest.raises(gexc.AlreadyExists):
        pub.create_topic(request={"name": topic})
    device, key = fx.create_device(registry, "ES256")
    dev = mqtt_connect(fx, registry, device, key)
    dev.publish(f"/devices/{device['id']}/events", b"first light", qos=1)
    [delivery] = collector.wait_messages(1)
    assert (delivery.data, delivery.attributes) == (b"first light", fx.iot_attributes(registry, device))
    # The grant made before the registry is still there.
    assert [(b.role, list(b.members)) for b in pub.get_iam_policy(request={"resource": topic}).bindings] == [
        ("roles/pubsub.publisher", [CLOUD_IOT_PUBLISHER])]


@pytest.mark.timeout(90)
def test_device_telemetry_and_state_reach_streaming_subscribers(ferrocore, rest, tmp_path, mqtt_connect):
    fx = DeviceFixture(rest, tmp_path / "keys")
    ferrocore.project = fx.project
    registry = fx.create_registry()  # subfolder "alerts" -> alerts; other events -> telemetry; state -> state
    subscriptions = {
        "telemetry": ferrocore.create_subscription(fx.topic("telemetry"), prefix="telemetry"),
        "telemetry-second": ferrocore.create_subscription(fx.topic("telemetry"), prefix="telemetry2"),
        "alerts": ferrocore.create_subscription(fx.topic("alerts"), prefix="alerts"),
        "state": ferrocore.create_subscription(fx.topic("state"), prefix="state"),
    }
    collectors = {what: Collector() for what in subscriptions}
    for what, name in subscriptions.items():
        ferrocore.stream(name, collectors[what])

    expected: dict[str, set] = {"telemetry": set(), "alerts": set(), "state": set()}
    for algorithm in ("RS256", "ES256"):  # what generate_keys.sh made: RSA_X509_PEM and ES256_PEM
        device, key = fx.create_device(registry, algorithm)
        did = device["id"]
        dev = mqtt_connect(fx, registry, device, key)
        for n in range(3):
            data = f"{registry['id']}/{did}-payload-{n}".encode()
            dev.publish(f"/devices/{did}/events", data, qos=1)
            expected["telemetry"].add(content(data, fx.iot_attributes(registry, device)))
        binary = bytes(range(256)) + did.encode()
        dev.publish(f"/devices/{did}/events/rooms/kitchen", binary, qos=1)
        expected["telemetry"].add(content(binary, fx.iot_attributes(registry, device, "rooms/kitchen")))
        alert = f"{did} overheating".encode()
        dev.publish(f"/devices/{did}/events/alerts", alert, qos=1)
        expected["alerts"].add(content(alert, fx.iot_attributes(registry, device, "alerts")))
        state = f'{{"device": "{did}", "fan": "on"}}'.encode()
        dev.publish(f"/devices/{did}/state", state, qos=1)
        expected["state"].add(content(state, fx.iot_attributes(registry, device)))

    for what, collector in collectors.items():
        wanted = expected[what.removesuffix("-second")]
        collector.wait_messages(len(wanted))
    for what, collector in collectors.items():
        collector.quiet(1.0)
    for what, collector in collectors.items():
        wanted = expected[what.removesuffix("-second")]
        deliveries = collector.snapshot()
        assert {d.content for d in deliveries} == wanted, what
        # At-least-once allows duplicates, but every message here was acked at once: count them.
        assert collector.duplicates() == {}, f"{what}: duplicates {collector.duplicates()}"
        assert len(deliveries) == len(wanted), what


def test_seek_before_a_subscription_existed_replays_older_messages(ferrocore):
    """Ferrocore-only: any subscription can seek back into the topic log, even to before it was
    created (Google and its emulator keep only what a subscription itself retained)."""
    sub = ferrocore.subscriber
    topic = ferrocore.create_topic()
    start = now_utc() - datetime.timedelta(seconds=1)
    older = ferrocore.publish(topic, [(f"older {n}".encode(), {}) for n in range(3)])
    name = ferrocore.create_subscription(topic)
    assert pull_for(sub, name, 1.0) == []
    sub.seek(request={"subscription": name, "time": start})
    replayed = pull(sub, name, 3)
    assert sorted(m.message.message_id for m in replayed) == sorted(older)
    ack_all(sub, name, replayed)
    [newer] = ferrocore.publish(topic, [(b"newer", {})])
    [m] = pull(sub, name, 1)
    assert m.message.message_id == newer
    ack_all(sub, name, [m])
    assert pull_for(sub, name) == []


# --- Ferrocore only: a crash ------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_unacked_messages_survive_kill_9_and_acked_ones_stay_acked(launch, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    token = secrets.token_urlsafe(32)
    srv = launch(data_dir, token, extra_args=[PUBSUB_ANONYMOUS])
    before = PubsubTarget("ferrocore", srv.grpc_address, srv.base_url, token=token)
    try:
        topic = before.create_topic()
        name = before.create_subscription(topic, ack_deadline_seconds=10)
        untouched = before.create_subscription(topic, prefix="untouched")
        config = before.subscriber.get_subscription(request={"subscription": name})
        sent = [(f"survivor {n}".encode(), {"n": str(n)}) for n in range(20)]
        ids = before.publish(topic, sent)
        received = {m.message.message_id: m for m in pull(before.subscriber, name, 20)}
        assert set(received) == set(ids)
        acked, unacked = set(ids[:10]), set(ids[10:])
        ack_all(before.subscriber, name, [received[i] for i in acked])
        # Ferrocore documents that acks of the last second before a crash may be lost.
        time.sleep(1.5)
    finally:
        before.close()
    srv.kill()

    srv = launch(data_dir, token, extra_args=[PUBSUB_ANONYMOUS])
    after = PubsubTarget("ferrocore", srv.grpc_address, srv.base_url, token=token)
    after.project = before.project
    try:
        got = after.subscriber.get_subscription(request={"subscription": name})
        assert (got.name, got.topic, got.ack_deadline_seconds) == (config.name, config.topic, 10)
        listed = {s.name for s in after.subscriber.list_subscriptions(request={"project": f"projects/{after.project}"})}
        assert listed == {name, untouched}

        collector, everything = Collector(), Collector()
        after.stream(name, collector)
        after.stream(untouched, everything)
        # Leases may have been kept across the restart: allow for the 10 s deadline to run out.
        collector.wait(lambda ds: unacked <= {d.message_id for d in ds}, "every unacked message again", timeout=45)
        everything.wait_messages(20, timeout=30)
        collector.quiet()
        seen = {d.message_id for d in collector.snapshot()}
        assert not seen & acked, f"acked before the crash, delivered again: {sorted(seen & acked)}"
        by_id = dict(zip(ids, sent))
        for d in collector.snapshot():
            assert content(*by_id[d.message_id]) == d.content, d
        assert {d.message_id for d in everything.snapshot()} == set(ids)
        # Publishing goes on with fresh message ids.
        [fresh] = after.publish(topic, [(b"after the crash", {})])
        assert fresh not in ids
        collector.wait(lambda ds: fresh in {d.message_id for d in ds}, "the message published after the restart")
    finally:
        after.close()
