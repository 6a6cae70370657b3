"""Shared helpers for the compatibility suite: ids, keys, a thin JSON-over-HTTP client, error
checks that work for both transports of google-cloud-iot, its gRPC client, and devices that
connect the way Google's device samples do (PyJWT, paho-mqtt, requests).

Test modules import this directly (pytest puts this folder on sys.path); the server itself is
started by the session fixture in conftest.py.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import datetime
import functools
import json
import pathlib
import queue
import re
import ssl
import threading
import time
import uuid
from typing import Any, NamedTuple

import grpc
import jwt
import paho.mqtt.client as mqtt
import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import iot_v1
from google.cloud.iot_v1.services.device_manager.transports import DeviceManagerGrpcTransport
from google.rpc import error_details_pb2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
AUTH_FIXTURES = REPO_ROOT / "crates" / "auth" / "tests" / "fixtures"

# IoT Core allowed one config update per second per device, measured from the last one accepted
# (RESOURCE_EXHAUSTED beyond it, which Google's clients retry). Tests that update the same
# device's config again wait this long first.
CONFIG_UPDATE_INTERVAL_S = 1.05


def wait_for_config_slot() -> None:
    """Waits until the same device's config may be updated again (one update per second)."""
    time.sleep(CONFIG_UPDATE_INTERVAL_S)

# IoT Core only ever had these regions; use one of them so a stricter server still accepts it.
LOCATION = "us-central1"

# RFC 3339 in UTC with a literal Z, optional fraction of up to nanoseconds.
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


def unique(prefix: str) -> str:
    """A fresh resource id; ids must start with a letter, which the prefix guarantees."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def location_path(project: str) -> str:
    return f"projects/{project}/locations/{LOCATION}"


def fresh_project() -> str:
    """A project nobody else in the session uses, so registry lists see only this test's data."""
    return unique("proj")


def fixture_text(name: str) -> str:
    return (AUTH_FIXTURES / name).read_text()


# --- device keys -------------------------------------------------------------------------------

def _public_pem(key) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@functools.lru_cache(maxsize=None)
def _rsa_key(n: int) -> str:
    return _public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@functools.lru_cache(maxsize=None)
def _ec_key(n: int) -> str:
    return _public_pem(ec.generate_private_key(ec.SECP256R1()))


def rsa_public_pem(n: int = 0) -> str:
    """An RSA-2048 public key (`-----BEGIN PUBLIC KEY-----`), for RSA_PEM. Same key for the same `n`."""
    return _rsa_key(n)


def ec_public_pem(n: int = 0) -> str:
    """A P-256 public key, for ES256_PEM. Same key for the same `n`."""
    return _ec_key(n)


@functools.lru_cache(maxsize=None)
def ec_p384_public_pem() -> str:
    """A P-384 key: not ES256, so the server must refuse it as ES256_PEM."""
    return _public_pem(ec.generate_private_key(ec.SECP384R1()))


@functools.lru_cache(maxsize=None)
def self_signed_cert_pem(kind: str) -> str:
    """A self-signed certificate around a fresh RSA ("rsa") or P-256 ("ec") key."""
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, f"compat-{kind}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


GARBAGE_KEY = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PUBLIC KEY-----\n"


def same_pem(a: str, b: str) -> bool:
    """PEM text compared without caring about trailing whitespace or line-ending style."""
    norm = lambda s: "\n".join(line.strip() for line in s.strip().splitlines())  # noqa: E731
    return norm(a) == norm(b)


# --- raw HTTP ---------------------------------------------------------------------------------

class Rest:
    """A tiny client for the v1 REST API that returns `requests.Response` objects untouched."""

    def __init__(self, base_url: str, token: str | None):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # never route loopback traffic through a proxy
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | str | None = None,
                params: Any = None, headers: dict | None = None) -> requests.Response:
        url = f"{self.base_url}/{path.lstrip('/')}"
        hdrs = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        return self.session.request(method, url, data=data, params=params, headers=hdrs, timeout=30)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, json_body=body if body is not None else {}, **kw)

    def patch(self, path, body, **kw):
        return self.request("PATCH", path, json_body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # Helpers that must succeed: they fail the test with the server's answer otherwise.
    def ok(self, resp: requests.Response) -> dict:
        assert resp.status_code == 200, (
            f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text}"
        )
        return resp.json()

    def create_registry(self, parent: str, body: dict) -> dict:
        return self.ok(self.post(f"v1/{parent}/registries", body))

    def create_device(self, registry_name: str, body: dict) -> dict:
        return self.ok(self.post(f"v1/{registry_name}/devices", body))


def assert_google_error(resp: requests.Response, code: int, status: str) -> dict:
    """Checks Google's JSON error envelope and returns its `error` object."""
    assert resp.status_code == code, f"expected HTTP {code} {status}, got {resp.status_code}: {resp.text}"
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {resp.text!r}")
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"not Google's error shape: {body}"
    err = body["error"]
    assert err.get("code") == code, err
    assert err.get("status") == status, err
    assert isinstance(err.get("message"), str) and err["message"], err
    return err


# --- google-api-core errors -------------------------------------------------------------------

# Canonical status name -> HTTP status (google/rpc/code.proto), for the statuses the suite expects.
HTTP_FOR_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
}

# What google-api-core raises for an HTTP status over REST. It picks the class from the HTTP
# status alone (from_http_response -> from_http_status), so a 400 is always BadRequest and a 409
# always Conflict, never their gRPC-flavoured subclasses InvalidArgument, FailedPrecondition or
# AlreadyExists; those only come from the gRPC transport. The canonical status is in the body.
API_CORE_CLASS_FOR_HTTP = {
    400: gexc.BadRequest,
    401: gexc.Unauthorized,
    403: gexc.Forbidden,
    404: gexc.NotFound,
    409: gexc.Conflict,
    429: gexc.TooManyRequests,
    501: gexc.MethodNotImplemented,
}


# What google-api-core raises for a canonical status over gRPC: from_grpc_error picks the class
# from the gRPC status code, so there the specific classes do appear. InvalidArgument and
# FailedPrecondition subclass BadRequest, AlreadyExists subclasses Conflict, Unauthenticated
# subclasses Unauthorized, and each class's `code` is still the HTTP status of its REST twin.
API_CORE_CLASS_FOR_GRPC_STATUS = {
    "INVALID_ARGUMENT": gexc.InvalidArgument,
    "FAILED_PRECONDITION": gexc.FailedPrecondition,
    "OUT_OF_RANGE": gexc.OutOfRange,
    "UNAUTHENTICATED": gexc.Unauthenticated,
    "PERMISSION_DENIED": gexc.PermissionDenied,
    "NOT_FOUND": gexc.NotFound,
    "ALREADY_EXISTS": gexc.AlreadyExists,
    "ABORTED": gexc.Aborted,
    "RESOURCE_EXHAUSTED": gexc.ResourceExhausted,
    "UNIMPLEMENTED": gexc.MethodNotImplemented,
}

TRANSPORTS = ("rest", "grpc")


@dataclasses.dataclass(frozen=True)
class ErrorReport:
    """What the server said about a failed call, read from the wire of either transport."""

    status: str  # canonical status name, e.g. "NOT_FOUND"
    message: str  # the server's message, without google-api-core's "METHOD url: " prefix
    field_violations: tuple[tuple[str, str], ...]  # (field, description) of google.rpc.BadRequest


def error_report(err: gexc.GoogleAPICallError) -> ErrorReport:
    """Reads status, message and field violations from a google-api-core exception.

    Over REST they come from the JSON error body (`exc.details` holds its `details` as dicts);
    over gRPC from the call's status and grpc-status-details-bin (`exc.details` holds the
    unpacked protos).
    """
    resp = err.response
    if isinstance(resp, requests.Response):
        body = resp.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"not Google's error shape: {body}"
        error = body["error"]
        violations = tuple(
            (v.get("field"), v.get("description"))
            for d in error.get("details", ())
            if d.get("@type") == "type.googleapis.com/google.rpc.BadRequest"
            for v in d.get("fieldViolations", ())
        )
        return ErrorReport(error.get("status"), error.get("message"), violations)
    if isinstance(resp, grpc.Call):
        violations = tuple(
            (v.field, v.description)
            for d in err.details
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        )
        return ErrorReport(resp.code().name, resp.details(), violations)
    raise AssertionError(f"{type(err).__name__} carries no server response: {err!r}")


@contextlib.contextmanager
def expect_error(status: str, transport: str = "rest"):
    """Expects the wrapped GAPIC call to fail with the canonical `status`.

    Over REST: the class google-api-core chose from the HTTP status, the HTTP code, and the
    `error.status` of the JSON body. Over gRPC: the specific class for the status, and the status
    code of the call itself. In both cases `exc.code` is the HTTP status of the canonical code and
    there is a message. Yields pytest's ExceptionInfo.
    """
    assert transport in TRANSPORTS, transport
    code = HTTP_FOR_STATUS[status]
    with pytest.raises(gexc.GoogleAPICallError) as info:
        yield info
    err = info.value
    wanted = API_CORE_CLASS_FOR_HTTP[code] if transport == "rest" else API_CORE_CLASS_FOR_GRPC_STATUS[status]
    assert isinstance(err, wanted), f"expected {wanted.__name__} ({status}), got {type(err).__name__}: {err}"
    assert err.code == code, f"expected HTTP {code} ({status}), got {err.code}: {err}"
    if transport == "grpc":
        assert isinstance(err.response, grpc.Call), f"not a gRPC failure: {err!r}"
        assert err.grpc_status_code == grpc.StatusCode[status], err
    report = error_report(err)
    assert report.status == status, f"expected {status}: {report}"
    assert err.message and report.message, "the error carries no message"


# --- gRPC -------------------------------------------------------------------------------------

class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """grpc.ClientCallDetails with replaceable fields (grpc ships no public constructor)."""


class MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata entries to every call, whatever its shape."""

    def __init__(self, *entries: tuple[str, str]):
        self.entries = list(entries)

    def _details(self, details):
        metadata = list(details.metadata or ()) + self.entries
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def bearer_interceptor(token: str) -> MetadataInterceptor:
    """The admin credential the way the gRPC API takes it: `authorization: Bearer TOKEN`."""
    return MetadataInterceptor(("authorization", f"Bearer {token}"))


def grpc_channel(address: str, *interceptors) -> grpc.Channel:
    """A plaintext (h2c) channel to `address`, through `interceptors` (the first is outermost).

    The HTTP proxy support of gRPC core is switched off: loopback traffic must never leave.
    """
    channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
    return grpc.intercept_channel(channel, *interceptors) if interceptors else channel


def grpc_client(address: str, token: str | None, *interceptors) -> iot_v1.DeviceManagerClient:
    """A google-cloud-iot client on its gRPC transport, built the way the server's docs say.

    With `token=None` no authorization metadata is sent. Extra `interceptors` run after the one
    that adds the token, so they see the metadata actually sent.
    """
    chain = ([bearer_interceptor(token)] if token is not None else []) + list(interceptors)
    channel = grpc_channel(address, *chain)
    return iot_v1.DeviceManagerClient(transport=DeviceManagerGrpcTransport(channel=channel))


# --- devices, the way Google's device samples connect ------------------------------------------
#
# python-docs-samples' iot/api-client/mqtt_example/cloudiot_mqtt_example.py and
# http_example/cloudiot_http_example.py: keys made as generate_keys.sh makes them, a JWT from
# PyJWT with iat/exp/aud, paho-mqtt over TLS with the full device path as client id, user name
# "unused" and the JWT as password; over HTTP, requests with the JWT as a Bearer token.

# How long any device-side wait may take before the test fails instead of hanging.
DEVICE_TIMEOUT_S = 10.0

# paho 2.x reports an MQTT 3.1.1 CONNACK code as an MQTT 5 reason code; this maps it back
# through paho's own table (5 "not authorized" arrives as 135, 4 as 134, 2 as 133...).
_CONNACK_FOR_REASON = {
    mqtt.convert_connack_rc_to_reason_code(code).value: int(code) for code in mqtt.ConnackCode
}


@dataclasses.dataclass(frozen=True)
class DeviceKey:
    """A device's key pair as generate_keys.sh leaves it: the private key in a PEM file, and the
    `credentials[]` entry that registers its public half."""

    algorithm: str  # "RS256" or "ES256", as the samples' --algorithm takes it
    private_key_file: pathlib.Path
    credential: dict


def _self_signed(key) -> str:
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "unused")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# The credential format of each (algorithm, wrapped in a certificate?) pair.
CREDENTIAL_FORMATS = {
    ("RS256", True): "RSA_X509_PEM",
    ("RS256", False): "RSA_PEM",
    ("ES256", True): "ES256_X509_PEM",
    ("ES256", False): "ES256_PEM",
}


def make_device_key(directory: pathlib.Path, algorithm: str, certificate: bool | None = None) -> DeviceKey:
    """A fresh key pair written to `directory`, by default as generate_keys.sh makes it:

    * RS256: `openssl req -x509 -nodes -newkey rsa:2048 -subj /CN=unused` -> a PKCS#8 private key
      and a self-signed certificate, registered as RSA_X509_PEM;
    * ES256: `openssl ecparam -genkey -name prime256v1 -noout` -> a SEC1 private key, and
      `openssl ec -pubout` -> its public key, registered as ES256_PEM.

    `certificate` picks the other form: a bare RSA_PEM key, or an ES256_X509_PEM certificate.
    """
    if certificate is None:
        certificate = algorithm == "RS256"
    if algorithm == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_format = serialization.PrivateFormat.PKCS8
    elif algorithm == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
        private_format = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        raise ValueError(f"unknown algorithm {algorithm}")
    private_pem = key.private_bytes(serialization.Encoding.PEM, private_format, serialization.NoEncryption())
    public = _self_signed(key) if certificate else _public_pem(key)
    credential = {"publicKey": {"format": CREDENTIAL_FORMATS[(algorithm, certificate)], "key": public}}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{algorithm.lower()}_private_{uuid.uuid4().hex[:8]}.pem"
    path.write_bytes(private_pem)
    return DeviceKey(algorithm, path, credential)


def create_jwt(project_id: str, private_key_file: pathlib.Path, algorithm: str, jwt_expires_minutes: int = 20,
               *, issued_at: datetime.datetime | None = None, audience: str | None = None) -> str:
    """The samples' create_jwt: iat now, exp `jwt_expires_minutes` later, aud the project id.

    `issued_at` and `audience` let a test make the tokens a device should not get in with.
    """
    iat = issued_at or datetime.datetime.now(tz=datetime.timezone.utc)
    token = {
        "iat": iat,
        "exp": iat + datetime.timedelta(minutes=jwt_expires_minutes),
        "aud": project_id if audience is None else audience,
    }
    with open(private_key_file) as f:
        private_key = f.read()
    return jwt.encode(token, private_key, algorithm=algorithm)


def b64(data: bytes) -> str:
    """Standard base64, as the admin API's bytes fields take it."""
    return base64.b64encode(data).decode()


@dataclasses.dataclass
class Received:
    topic: str
    payload: bytes
    qos: int


class MqttDevice:
    """One MQTT connection made as the sample's get_client makes it, with paho's network loop on
    its own thread (loop_start) so that waits with timeouts are possible.

    paho never reconnects on its own here (reconnect_on_failure=False): each connection a test
    makes is one it asked for. A refused or dropped connection ends the network thread.
    """

    def __init__(self, client_id: str, password: str | None, *, port: int, ca_certs: pathlib.Path | str | None,
                 host: str = "localhost", keepalive: int = 60, tls_version: int = ssl.PROTOCOL_TLSv1_2):
        self.client_id = client_id
        self.connack: int | None = None
        self.messages: queue.Queue[Received] = queue.Queue()
        self._connack_event = threading.Event()
        self._closed_event = threading.Event()
        self._subacks: dict[int, list[int]] = {}
        self._suback_cond = threading.Condition()
        self._unsubacks: set[int] = set()
        self._started = False

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        client.username_pw_set(username="unused", password=password)
        if ca_certs is not None:
            # The sample pins TLS 1.2 this way; `tls_version` lets a test use a current default.
            client.tls_set(ca_certs=str(ca_certs), tls_version=tls_version)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        self.client = client
        self._host, self._port, self._keepalive = host, port, keepalive

    # paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = _CONNACK_FOR_REASON.get(reason_code.value, reason_code.value)
        self._connack_event.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._closed_event.set()
        self._connack_event.set()  # a connection closed before CONNACK ends that wait too

    def _on_message(self, client, userdata, message):
        self.messages.put(Received(message.topic, bytes(message.payload), message.qos))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._suback_cond:
            self._subacks[mid] = [rc.value for rc in reason_codes]
            self._suback_cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self._suback_cond:
            self._unsubacks.add(mid)
            self._suback_cond.notify_all()

    # what tests call
    def connect(self, timeout: float = DEVICE_TIMEOUT_S) -> int | None:
        """Connects and waits for CONNACK; returns its return code (0 accepted), or None when the
        server closed the connection without one. A refused connection is cleaned up."""
        self.client.connect(self._host, self._port, keepalive=self._keepalive)
        self.start()
        if not self._connack_event.wait(timeout):
            self.close()
            raise AssertionError(f"no CONNACK within {timeout}s for {self.client_id}")
        if self.connack != 0:
            # The server closes a refused connection; the network thread ends by itself.
            self._closed_event.wait(timeout)
            self.close()
        return self.connack

    def start(self) -> None:
        """Starts paho's network thread, for a test that called `client.connect` itself."""
        self._started = True
        self.client.loop_start()

    def wait_connack(self, timeout: float = DEVICE_TIMEOUT_S) -> int | None:
        assert self._connack_event.wait(timeout), f"no CONNACK within {timeout}s for {self.client_id}"
        return self.connack

    def subscribe(self, topic: str, qos: int, timeout: float = DEVICE_TIMEOUT_S) -> list[int]:
        """Subscribes and returns the SUBACK return codes (granted QoS, or 128 for a failure)."""
        rc, mid = self.client.subscribe(topic, qos=qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe({topic}) not sent: {mqtt.error_string(rc)}"
        deadline = time.monotonic() + timeout
        with self._suback_cond:
            while mid not in self._subacks:
                left = deadline - time.monotonic()
                assert left > 0, f"no SUBACK for {topic} within {timeout}s"
                self._suback_cond.wait(left)
            return self._subacks.pop(mid)

    def unsubscribe(self, topic: str, timeout: float = DEVICE_TIMEOUT_S) -> None:
        rc, mid = self.client.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe({topic}) not sent: {mqtt.error_string(rc)}"
        deadline = time.monotonic() + timeout
        with self._suback_cond:
            while mid not in self._unsubacks:
                left = deadline - time.monotonic()
                assert left > 0, f"no UNSUBACK for {topic} within {timeout}s"
                self._suback_cond.wait(left)

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = DEVICE_TIMEOUT_S):
        """Publishes and, for QoS 1, waits for the PUBACK (the sample's wait_for_publish)."""
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=timeout)
        assert info.is_published(), f"{topic}: not acknowledged within {timeout}s (qos {qos})"
        return info

    def next_message(self, timeout: float = DEVICE_TIMEOUT_S) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s") from None

    def no_message(self, within: float) -> None:
        try:
            extra = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message: {extra}")

    def wait_closed(self, timeout: float = DEVICE_TIMEOUT_S) -> bool:
        """True once the connection is gone (closed by either side)."""
        return self._closed_event.wait(timeout)

    @property
    def closed(self) -> bool:
        return self._closed_event.is_set()

    def disconnect(self, timeout: float = DEVICE_TIMEOUT_S) -> None:
        """A clean DISCONNECT, as the sample does before reconnecting with a new token."""
        if not self._closed_event.is_set():
            self.client.disconnect()
            self._closed_event.wait(timeout)
        self.close()

    def close(self) -> None:
        """Disconnects if still connected and stops the network thread; safe to call more than once."""
        if not self._started:
            # No network thread (connect() failed, or a test never started it): nothing to wait for.
            self.client.disconnect()
            return
        if not self._closed_event.is_set():
            self.client.disconnect()
            self._closed_event.wait(DEVICE_TIMEOUT_S)
        self.client.loop_stop()
        self._started = False


class DeviceFixture:
    """Registries and devices for the device-side tests, created through the admin REST API.

    Every registry lives in a project of its own, so its telemetry topics (projects/P/topics/T)
    hold only what the test sent.
    """

    def __init__(self, rest: Rest, key_dir: pathlib.Path):
        self.rest = rest
        self.key_dir = key_dir
        self.project = fresh_project()

    def topic(self, short: str) -> str:
        return f"projects/{self.project}/topics/{short}"

    def client_id(self, registry: dict, device: dict) -> str:
        """The MQTT client id Google's samples use: the device's full path, with its string id."""
        return f"projects/{self.project}/locations/{LOCATION}/registries/{registry['id']}/devices/{device['id']}"

    def iot_attributes(self, registry: dict, device: dict, subfolder: str | None = None) -> dict:
        """The attributes IoT Core put on every message it forwarded to Pub/Sub."""
        attrs = {
            "deviceId": device["id"],
            "deviceNumId": device["numId"],
            "deviceRegistryId": registry["id"],
            "deviceRegistryLocation": LOCATION,
            "projectId": self.project,
        }
        if subfolder:
            attrs["subFolder"] = subfolder
        return attrs

    def create_registry(self, **extra) -> dict:
        """A registry routing subfolder "alerts" to topic `alerts`, everything else to `telemetry`,
        and states to `state`, as an IoT Core user would have set it up."""
        body = {
            "id": unique("reg"),
            "eventNotificationConfigs": [
                {"subfolderMatches": "alerts", "pubsubTopicName": self.topic("alerts")},
                {"pubsubTopicName": self.topic("telemetry")},
            ],
            "stateNotificationConfig": {"pubsubTopicName": self.topic("state")},
        }
        body.update(extra)
        return self.rest.create_registry(location_path(self.project), body)

    def create_device(self, registry: dict, algorithm: str = "ES256", certificate: bool | None = None,
                      **extra) -> tuple[dict, DeviceKey]:
        key = make_device_key(self.key_dir, algorithm, certificate)
        body = {"id": unique("dev"), "credentials": [key.credential]}
        body.update(extra)
        return self.rest.create_device(registry["name"], body), key

    def jwt(self, key: DeviceKey, **kw) -> str:
        return create_jwt(self.project, key.private_key_file, key.algorithm, **kw)


def read_topic(rest: Rest, topic: str, *, expect: int, timeout: float = DEVICE_TIMEOUT_S) -> list[dict]:
    """All messages of a topic of the embedded log, oldest first, once at least `expect` are there.

    Messages acknowledged to a device are stored already; the wait is for QoS 0 and for what the
    server forwards on its own (state notifications).
    """
    deadline = time.monotonic() + timeout
    while True:
        resp = rest.get(f"v1/{topic}/messages", params={"from": "earliest", "maxMessages": 1000})
        if resp.status_code == 200:
            messages = resp.json().get("messages", [])
            if len(messages) >= expect or time.monotonic() > deadline:
                return messages
        elif resp.status_code != 404 or time.monotonic() > deadline:
            raise AssertionError(f"reading {topic}: {resp.status_code} {resp.text}")
        time.sleep(0.1)


def wait_for(predicate, what: str, timeout: float = DEVICE_TIMEOUT_S, interval: float = 0.1):
    """Polls `predicate` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def device_with_activity(rest: Rest, device: dict, *fields: str) -> dict:
    """The device, asserting each output-only activity field in `fields` (lastEventTime, ...) is set.

    The server batches these times in memory and writes them once a second, but every read
    overlays what it has seen and not yet stored, so a single read right after the traffic must
    already show them.
    """
    got = rest.ok(rest.get(f"v1/{device['name']}"))
    missing = [f for f in fields if not TIMESTAMP_RE.match(got.get(f, ""))]
    assert not missing, f"{missing} not set on {device['name']}: {got}"
    return got


# --- recording what google-cloud-iot sent and got -------------------------------------------

class Exchange(NamedTuple):
    """One call as the server answered it."""

    status: str  # canonical status name, or "OK"
    authorization: str | None  # the credential the client sent
    http_status: int | None = None  # REST only
    body: Any = None  # REST only: the JSON body (or text)


class GrpcExchangeRecorder(grpc.UnaryUnaryClientInterceptor):
    """Appends an Exchange to `seen` for every unary call (all of DeviceManager's are unary)."""

    def __init__(self, seen: list[Exchange]):
        self.seen = seen

    def intercept_unary_unary(self, continuation, client_call_details, request):
        sent = dict(client_call_details.metadata or ())
        outcome = continuation(client_call_details, request)
        self.seen.append(Exchange(outcome.code().name, sent.get("authorization")))
        return outcome


def record_rest_exchanges(client: iot_v1.DeviceManagerClient, seen: list[Exchange]) -> None:
    """Appends an Exchange to `seen` for every HTTP exchange of `client`."""

    def hook(resp, *args, **kwargs):
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            status = body["error"].get("status")
        else:
            status = "OK" if resp.status_code == 200 else f"HTTP {resp.status_code}"
        seen.append(Exchange(status, resp.request.headers.get("Authorization"), resp.status_code, body))

    client._transport._session.hooks["response"].append(hook)  # a google.auth AuthorizedSession
