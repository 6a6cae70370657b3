"""Helpers for the Pub/Sub tests: Google's Pub/Sub emulator as an oracle, google-cloud-pubsub clients
made the way back ends make them (PUBSUB_EMULATOR_HOST), and waits on what a subscriber received.

Back ends point the official client at Ferrocore exactly as at Google's emulator: they set
PUBSUB_EMULATOR_HOST=host:port, and the library then opens a plaintext (h2c) gRPC channel with
anonymous credentials. The library reads the variable when a client is constructed, so
`PubsubTarget` sets it around the construction of each client.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import os
import pathlib
import shutil
import subprocess
import threading
import time
from typing import Callable, Iterable

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from compat_server import free_port
from compat_support import Rest, bearer_interceptor, fresh_project, grpc_channel, unique

# How long a wait for messages may take before the test fails instead of hanging.
RECEIVE_TIMEOUT_S = 20.0

# How long a test watches for messages that must not come. Absence has no condition to wait on,
# so this is a fixed window; it is well above the time either server takes to deliver at once.
QUIET_S = 2.5

# --- Google's Pub/Sub emulator ------------------------------------------------------------------

# Where the Debian package google-cloud-cli-pubsub-emulator puts its launcher (a shell script that
# execs Java 17). $PUBSUB_EMULATOR_LAUNCHER overrides it.
DEFAULT_EMULATOR_LAUNCHER = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
EMULATOR_STARTUP_TIMEOUT_S = 60.0


@dataclasses.dataclass
class Emulator:
    process: subprocess.Popen
    port: int
    log_path: pathlib.Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The emulator serves Google's REST mapping on the same port as gRPC."""
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError as e:
            return f"<could not read {self.log_path}: {e}>"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def emulator_launcher() -> pathlib.Path | None:
    """The emulator's launcher, or None (with the reason in `missing_emulator_reason`)."""
    path = pathlib.Path(os.environ.get("PUBSUB_EMULATOR_LAUNCHER", DEFAULT_EMULATOR_LAUNCHER))
    if path.is_file() and os.access(path, os.X_OK) and (shutil.which("java") or os.environ.get("JAVA_HOME")):
        return path
    return None


def missing_emulator_reason() -> str:
    path = os.environ.get("PUBSUB_EMULATOR_LAUNCHER", DEFAULT_EMULATOR_LAUNCHER)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return (f"Google's Pub/Sub emulator is not installed: no launcher at {path} (Debian package "
                f"google-cloud-cli-pubsub-emulator; or set PUBSUB_EMULATOR_LAUNCHER)")
    return "Google's Pub/Sub emulator needs Java, and no `java` is on PATH (nor JAVA_HOME set)"


def start_emulator(log_path: pathlib.Path) -> Emulator:
    """Starts `cloud-pubsub-emulator --host=127.0.0.1 --port=P` and waits until its REST side answers.

    Skips the calling test when the emulator is not installed.
    """
    launcher = emulator_launcher()
    if launcher is None:
        pytest.skip(missing_emulator_reason())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PUBSUB_EMULATOR_HOST"}
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [str(launcher), "--host=127.0.0.1", f"--port={port}"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    emu = Emulator(process, port, log_path)
    session = requests.Session()
    session.trust_env = False
    deadline = time.monotonic() + EMULATOR_STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"the Pub/Sub emulator exited with status {process.returncode}:\n{emu.log_tail()}",
                        pytrace=False)
        try:
            if session.get(f"{emu.base_url}/v1/projects/ready-check/topics", timeout=2).status_code == 200:
                return emu
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            emu.stop()
            pytest.fail(f"the Pub/Sub emulator did not answer within {EMULATOR_STARTUP_TIMEOUT_S:.0f}s:\n"
                        f"{emu.log_tail()}", pytrace=False)
        time.sleep(0.2)


# --- clients ------------------------------------------------------------------------------------

@contextlib.contextmanager
def emulator_host(address: str):
    """PUBSUB_EMULATOR_HOST=address in the process environment for the duration of the block."""
    old = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = address
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = old


class PubsubTarget:
    """One Pub/Sub server as a back end sees it: its gRPC address, a REST client, a project of its
    own and google-cloud-pubsub clients made with PUBSUB_EMULATOR_HOST.

    With `token`, the gRPC clients send `authorization: Bearer TOKEN` on every call (through a
    transport on an intercepted channel, since emulator mode sends no credentials of its own) and
    the REST client sends it too.
    """

    def __init__(self, name: str, grpc_address: str, base_url: str, token: str | None = None,
                 grpc_token: str | None = None):
        self.name = name
        self.grpc_address = grpc_address
        self.base_url = base_url
        self.rest = Rest(base_url, token)
        self.grpc_token = grpc_token
        self.project = fresh_project()
        self._publishers: list[pubsub_v1.PublisherClient] = []
        self._subscribers: list[pubsub_v1.SubscriberClient] = []
        self._futures: list = []
        self._publisher = None
        self._subscriber = None

    @property
    def is_ferrocore(self) -> bool:
        return self.name == "ferrocore"

    @property
    def is_emulator(self) -> bool:
        return self.name == "emulator"

    # clients
    def new_publisher(self, **kwargs) -> pubsub_v1.PublisherClient:
        with emulator_host(self.grpc_address):
            if self.grpc_token is not None:
                channel = grpc_channel(self.grpc_address, bearer_interceptor(self.grpc_token))
                kwargs["transport"] = PublisherGrpcTransport(channel=channel)
            client = pubsub_v1.PublisherClient(**kwargs)
        self._publishers.append(client)
        return client

    def new_subscriber(self, **kwargs) -> pubsub_v1.SubscriberClient:
        with emulator_host(self.grpc_address):
            if self.grpc_token is not None:
                channel = grpc_channel(self.grpc_address, bearer_interceptor(self.grpc_token))
                kwargs["transport"] = SubscriberGrpcTransport(channel=channel)
            client = pubsub_v1.SubscriberClient(**kwargs)
        self._subscribers.append(client)
        return client

    @property
    def publisher(self) -> pubsub_v1.PublisherClient:
        if self._publisher is None:
            self._publisher = self.new_publisher()
        return self._publisher

    @property
    def subscriber(self) -> pubsub_v1.SubscriberClient:
        if self._subscriber is None:
            self._subscriber = self.new_subscriber()
        return self._subscriber

    # names and resources
    def topic_path(self, prefix: str = "topic") -> str:
        return f"projects/{self.project}/topics/{unique(prefix)}"

    def subscription_path(self, prefix: str = "sub") -> str:
        return f"projects/{self.project}/subscriptions/{unique(prefix)}"

    def create_topic(self, prefix: str = "topic") -> str:
        name = self.topic_path(prefix)
        got = self.publisher.create_topic(request={"name": name})
        assert got.name == name, got
        return name

    def create_subscription(self, topic: str, prefix: str = "sub", **fields):
        """Creates a subscription with the extra Subscription `fields`; returns its name."""
        name = self.subscription_path(prefix)
        got = self.subscriber.create_subscription(request={"name": name, "topic": topic, **fields})
        assert (got.name, got.topic) == (name, topic), got
        return name

    def publish(self, topic: str, messages: Iterable[tuple[bytes, dict]]) -> list[str]:
        """Publishes (data, attributes) pairs through the batching client; returns the message ids."""
        futures = [self.publisher.publish(topic, data, **attrs) for data, attrs in messages]
        return [f.result(timeout=RECEIVE_TIMEOUT_S) for f in futures]

    def stream(self, subscription: str, collector: "Collector", *, max_messages: int = 100,
               subscriber: pubsub_v1.SubscriberClient | None = None):
        """subscribe() with FlowControl, as a back end calls it; the future is cancelled at teardown."""
        flow = pubsub_v1.types.FlowControl(max_messages=max_messages)
        future = (subscriber or self.subscriber).subscribe(subscription, callback=collector, flow_control=flow)
        collector.future = future
        self._futures.append(future)
        return future

    def close(self) -> None:
        for future in self._futures:
            future.cancel()
        for future in self._futures:
            try:
                future.result(timeout=10)
            except Exception:  # noqa: BLE001 - the stream's own end is not what is tested here
                pass
        for pub in self._publishers:
            try:
                pub.stop()
            except Exception:  # noqa: BLE001 - stopping twice, or a publisher that failed
                pass
            pub.transport.close()
        for sub in self._subscribers:
            sub.close()


# --- receiving ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Delivery:
    """One delivery of a message to a streaming subscriber's callback."""

    message_id: str
    ack_id: str
    data: bytes
    attributes: dict
    ordering_key: str
    delivery_attempt: int | None
    publish_time: datetime.datetime
    received_at: float  # time.monotonic()

    @property
    def content(self) -> tuple[bytes, frozenset]:
        """(data, attributes) in a hashable form, for comparing sets of messages."""
        return (self.data, frozenset(self.attributes.items()))


def content(data: bytes, attributes: dict) -> tuple[bytes, frozenset]:
    return (data, frozenset(attributes.items()))


def ack(message, delivery: Delivery) -> None:
    message.ack()


class Collector:
    """The callback a test passes to subscribe(): records every delivery, then lets `decide`
    (ack by default) settle the message. Waits fail fast if the streaming pull ends."""

    def __init__(self, decide: Callable[[object, Delivery], None] = ack):
        self.decide = decide
        self.future = None
        self._cond = threading.Condition()
        self.deliveries: list[Delivery] = []

    def __call__(self, message) -> None:
        delivery = Delivery(
            message.message_id, message.ack_id, bytes(message.data), dict(message.attributes),
            message.ordering_key, message.delivery_attempt, message.publish_time, time.monotonic(),
        )
        with self._cond:
            self.deliveries.append(delivery)
            self._cond.notify_all()
        self.decide(message, delivery)

    def snapshot(self) -> list[Delivery]:
        with self._cond:
            return list(self.deliveries)

    def counts(self) -> collections.Counter:
        """How often each message id was delivered."""
        return collections.Counter(d.message_id for d in self.snapshot())

    def duplicates(self) -> dict[str, int]:
        return {mid: n for mid, n in self.counts().items() if n > 1}

    def wait(self, predicate: Callable[[list[Delivery]], bool], what: str,
             timeout: float = RECEIVE_TIMEOUT_S) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(self.deliveries):
                    return list(self.deliveries)
                if self.future is not None and self.future.done():
                    raise AssertionError(
                        f"the streaming pull ended while waiting for {what}: {self.future.exception()!r}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; got {len(self.deliveries)} "
                        f"deliveries: {[(d.message_id, d.data[:40]) for d in self.deliveries][:50]}"
                    )
                self._cond.wait(min(left, 0.25))

    def wait_messages(self, count: int, timeout: float = RECEIVE_TIMEOUT_S) -> list[Delivery]:
        """Waits until `count` distinct messages have arrived; returns all deliveries so far."""
        return self.wait(lambda ds: len({d.message_id for d in ds}) >= count, f"{count} messages", timeout)

    def quiet(self, seconds: float = QUIET_S) -> list[Delivery]:
        """Watches for `seconds` and returns what arrived meanwhile (usually expected: nothing)."""
        before = len(self.snapshot())
        time.sleep(seconds)
        if self.future is not None and self.future.done():
            raise AssertionError(f"the streaming pull ended: {self.future.exception()!r}")
        return self.snapshot()[before:]


def pull(subscriber: pubsub_v1.SubscriberClient, subscription: str, count: int,
         timeout: float = RECEIVE_TIMEOUT_S) -> list:
    """Synchronous Pull until at least `count` ReceivedMessages came (a Pull may return fewer)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"pulled {len(got)} of {count} messages from {subscription} within {timeout}s: "
                f"{[(m.message.message_id, m.message.data[:40]) for m in got]}"
            )
        got.extend(_pull_once(subscriber, subscription, count - len(got), left))
    return got


def pull_for(subscriber: pubsub_v1.SubscriberClient, subscription: str, seconds: float = QUIET_S) -> list:
    """Everything a synchronous Pull returns within `seconds` (usually expected: nothing)."""
    got: list = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0.2:
        got.extend(_pull_once(subscriber, subscription, 100, left))
    return got


def _pull_once(subscriber, subscription: str, max_messages: int, left: float) -> list:
    # A server may answer an empty Pull at once or hold it open until the call's deadline; both are
    # allowed, so a deadline is no failure here and an empty answer is followed by a short pause.
    try:
        resp = subscriber.pull(
            request={"subscription": subscription, "max_messages": max(1, max_messages)},
            timeout=max(0.5, min(5.0, left)),
        )
    except gexc.DeadlineExceeded:
        return []
    if not resp.received_messages:
        time.sleep(0.05)
    return list(resp.received_messages)


def ack_all(subscriber: pubsub_v1.SubscriberClient, subscription: str, received: Iterable) -> None:
    ack_ids = [m.ack_id for m in received]
    if ack_ids:
        subscriber.acknowledge(request={"subscription": subscription, "ack_ids": ack_ids})
