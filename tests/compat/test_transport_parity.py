"""One scenario, run through google-cloud-iot's REST transport and its gRPC transport, compared.

The server promises that both APIs serve the same RPCs with the same results and errors. Here the
same table of calls runs twice, once per transport, each in a project of its own; every step's
outcome is reduced to a comparable tree and the two trees must be equal:

* a response becomes its protobuf fields as sent (only the fields present, so an empty message
  that is present differs from an absent one), enums by name;
* an error becomes (canonical status, the server's message, its BadRequest field violations).

The registry and device ids are the same in both runs, so only what cannot be equal is masked:
the project id (and the names containing it), the random numeric device ids, and the timestamps
the server takes from its clock. Those are checked before they are masked: present on both sides
(the trees must match), and within the run, which a timestamp rendered in local time instead of
UTC would not be. Timestamps that are data (a credential's expiration, a certificate's validity)
are compared exactly. Over REST the JSON text of every timestamp must also be RFC 3339 in UTC
("Z"). Each step is its own test, so a discrepancy names the step where it shows.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import re
import time
from typing import Any, Callable

import google.oauth2.credentials
import proto
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import iot_v1
from google.protobuf import field_mask_pb2
from google.protobuf.descriptor import FieldDescriptor

from compat_support import (
    GARBAGE_KEY,
    TIMESTAMP_RE,
    TRANSPORTS,
    Rest,
    assert_google_error,
    ec_public_pem,
    error_report,
    fresh_project,
    grpc_client,
    location_path,
    rsa_public_pem,
    self_signed_cert_pem,
    unique,
    wait_for_config_slot,
)

# Chosen once for the module and used by both runs; the runs differ only by project.
REGISTRY_ID = unique("parity")
GATEWAY_ID = "gateway-1"
DEVICE_ID = "device-1"
MISSING_ID = "no-such-device"
PERCENT_ID = "pct%2Fslash"

# Expected outcome of a step: OK, a canonical status name, or ANY_BAD_REQUEST (either status
# that maps to HTTP 400; the REST suite does not pin which one some checks use).
OK = "OK"
ANY_BAD_REQUEST = ("INVALID_ARGUMENT", "FAILED_PRECONDITION")

# How far a server timestamp may lie outside the span of the run, in seconds.
CLOCK_SLACK_S = 5.0

# Timestamp fields the server fills from its clock: masked after checking. Any other timestamp
# (DeviceCredential.expiration_time, X509CertificateDetails.start_time/expiry_time) is data and
# is compared exactly.
SERVER_CLOCK_FIELDS = frozenset({
    "cloud_update_time", "device_ack_time", "update_time", "last_heartbeat_time", "last_event_time",
    "last_state_time", "last_config_ack_time", "last_config_send_time", "last_error_time",
    "last_accessed_gateway_time",
})

# A credential expiry with a fraction of a second, to see it kept to the microsecond.
KEY_EXPIRY = datetime.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def key(fmt: iot_v1.PublicKeyFormat, pem: str) -> iot_v1.DeviceCredential:
    return iot_v1.DeviceCredential(public_key=iot_v1.PublicKeyCredential(format=fmt, key=pem))


# --- one run of the scenario -------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """What one step produced on one transport."""

    result: Any = None  # canonical tree of the response (None for Empty)
    error: tuple | None = None  # (status, message, field violations), masked
    crash: str | None = None  # an exception that is not a google-api-core call error
    problems: list[str] = dataclasses.field(default_factory=list)  # timestamp checks that failed
    json_times: int = 0  # REST only: timestamps checked in the raw JSON bodies

    @property
    def status(self) -> str:
        if self.crash is not None:
            return "CRASH"
        return self.error[0] if self.error is not None else OK

    def comparable(self) -> dict:
        if self.crash is not None:
            return {"crash": self.crash}
        if self.error is not None:
            status, message, violations = self.error
            return {
                "error": {
                    "status": status,
                    "message": message,
                    "field_violations": [{"field": f, "description": d} for f, d in violations],
                }
            }
        return {"ok": self.result}


class Run:
    """The scenario's state on one transport: its client, names, numeric ids and raw REST bodies."""

    def __init__(self, transport: str, connect: Callable[[Run], iot_v1.DeviceManagerClient]):
        self.transport = transport
        self.connect = connect  # builds a client on this run's transport
        self.project = fresh_project()
        self.parent = location_path(self.project)
        self.registry = f"{self.parent}/registries/{REGISTRY_ID}"
        self.num_ids: dict[str, int] = {}  # label -> numeric id the server gave that device
        self.saved: dict[str, Any] = {}  # values later steps need (a page token)
        self.rest_bodies: list[Any] = []  # JSON bodies of the current step's HTTP exchanges
        self.started = time.time()
        self.problems: list[str] = []
        self.client = connect(self)

    def device(self, device_id: str) -> str:
        return f"{self.registry}/devices/{device_id}"

    def by_num(self, label: str) -> str:
        return f"{self.registry}/devices/{self.num_ids[label]}"

    # Masking of what must differ between runs.
    def mask_text(self, s: str) -> str:
        s = s.replace(self.project, "<project>")
        for label, num in self.num_ids.items():
            s = re.sub(rf"(?<!\d){num}(?!\d)", f"<numId:{label}>", s)
        return s

    def mask_num(self, n: int):
        for label, num in self.num_ids.items():
            if n == num:
                return f"<numId:{label}>"
        return n

    def check_timestamp(self, seconds: int, nanos: int, where: str) -> None:
        t = seconds + nanos / 1e9
        if not self.started - CLOCK_SLACK_S <= t <= time.time() + CLOCK_SLACK_S:
            self.problems.append(
                f"{where}: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t))} is not within this run "
                "(not UTC?)"
            )


def canonical(run: Run, message) -> Any:
    """The comparable tree of a response message (proto-plus or raw protobuf)."""
    if message is None:
        return None
    pb = type(message).pb(message) if isinstance(message, proto.Message) else message
    return _message(run, pb, type(message).__name__)


def _timestamp(run: Run, pb, field_name: str, where: str) -> str:
    if not 0 <= pb.nanos < 1_000_000_000:
        run.problems.append(f"{where}: nanos out of range: {pb.nanos}")
        return f"<invalid timestamp {pb.seconds}s {pb.nanos}ns>"
    if field_name in SERVER_CLOCK_FIELDS:
        run.check_timestamp(pb.seconds, pb.nanos, where)
        return "<timestamp>"
    return pb.ToJsonString()


def _message(run: Run, pb, where: str):
    out = {}
    # ListFields: exactly the fields present on the wire, in field-number order.
    for field, value in pb.ListFields():
        at = f"{where}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {
                run.mask_text(k): _value(run, value_field, v, f"{at}[{k!r}]") for k, v in value.items()
            }
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            out[field.name] = [_value(run, field, v, f"{at}[{i}]") for i, v in enumerate(value)]
        else:
            out[field.name] = _value(run, field, value, at)
    return out


def _value(run: Run, field, value, where: str):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return _timestamp(run, value, field.name, where)
        return _message(run, value, where)
    if field.type == FieldDescriptor.TYPE_ENUM:
        named = field.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    if field.type == FieldDescriptor.TYPE_STRING:
        return run.mask_text(value)
    if field.name in ("num_id", "device_num_ids"):
        return run.mask_num(value)
    return value


def check_rest_json_times(run: Run, step: str) -> int:
    """Over REST every timestamp is RFC 3339 text; Google's mapping writes it in UTC with a Z.

    Returns how many timestamps the step's JSON bodies held.
    """
    checked = 0

    def walk(node, where):
        nonlocal checked
        if isinstance(node, dict):
            for k, v in node.items():
                if k.endswith("Time") and isinstance(v, str):
                    checked += 1
                    if not TIMESTAMP_RE.match(v):
                        run.problems.append(f"{step}: REST {where}.{k} = {v!r} is not RFC 3339 UTC")
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    for body in run.rest_bodies:
        walk(body, "body")
    return checked


# --- the scenario ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    call: Callable[[Run], Any]
    expect: str | tuple = OK
    remember: str | None = None  # label under which a created device's numeric id is kept
    # Run on a client of its own. For calls the REST server answers before it has read the
    # request body: it then closes the connection without `Connection: close`, and the client's
    # next call on that pooled connection may fail, which would blame the wrong step (see
    # test_wire.py::test_an_early_error_does_not_silently_drop_the_connection).
    own_client: bool = False
    # Refused before the request reaches the shared service: by REST's JSON parser (which knows
    # the enum) or by a transport's size limit. Each transport words that refusal its own way, so
    # only the outcome is compared, not the message.
    transport_level: bool = False


def first_page(pager):
    return next(iter(pager.pages))


def _create_registry(r: Run):
    topic = f"projects/{r.project}/topics"
    return r.client.create_device_registry(
        parent=r.parent,
        device_registry=iot_v1.DeviceRegistry(
            id=REGISTRY_ID,
            event_notification_configs=[
                iot_v1.EventNotificationConfig(subfolder_matches="alerts", pubsub_topic_name=f"{topic}/alerts"),
                iot_v1.EventNotificationConfig(pubsub_topic_name=f"{topic}/events"),
            ],
            state_notification_config=iot_v1.StateNotificationConfig(pubsub_topic_name=f"{topic}/state"),
            mqtt_config=iot_v1.MqttConfig(mqtt_enabled_state=iot_v1.MqttState.MQTT_ENABLED),
            http_config=iot_v1.HttpConfig(http_enabled_state=iot_v1.HttpState.HTTP_DISABLED),
            log_level=iot_v1.LogLevel.INFO,
        ),
    )


def _create_ca_registry(r: Run):
    # A registry with a CA certificate only admits X.509 device credentials, so it is a second one.
    return r.client.create_device_registry(
        parent=r.parent,
        device_registry=iot_v1.DeviceRegistry(
            id=f"{REGISTRY_ID}-ca",
            credentials=[
                iot_v1.RegistryCredential(
                    public_key_certificate=iot_v1.PublicKeyCertificate(
                        format=iot_v1.PublicKeyCertificateFormat.X509_CERTIFICATE_PEM,
                        certificate=self_signed_cert_pem("rsa"),
                    )
                )
            ],
        ),
    )


def _create_gateway(r: Run):
    return r.client.create_device(
        parent=r.registry,
        device=iot_v1.Device(
            id=GATEWAY_ID,
            credentials=[
                iot_v1.DeviceCredential(
                    public_key=iot_v1.PublicKeyCredential(format=iot_v1.PublicKeyFormat.RSA_PEM, key=rsa_public_pem()),
                    expiration_time=KEY_EXPIRY,
                ),
                key(iot_v1.PublicKeyFormat.ES256_PEM, ec_public_pem()),
            ],
            metadata={"owner": "alice", "site": "lab-1"},
            gateway_config=iot_v1.GatewayConfig(
                gateway_type=iot_v1.GatewayType.GATEWAY,
                gateway_auth_method=iot_v1.GatewayAuthMethod.ASSOCIATION_ONLY,
            ),
            log_level=iot_v1.LogLevel.DEBUG,
        ),
    )


def _create_device(r: Run):
    return r.client.create_device(
        parent=r.registry,
        device=iot_v1.Device(
            id=DEVICE_ID,
            credentials=[key(iot_v1.PublicKeyFormat.ES256_PEM, ec_public_pem(1))],
            gateway_config=iot_v1.GatewayConfig(gateway_type=iot_v1.GatewayType.NON_GATEWAY),
            config=iot_v1.DeviceConfig(binary_data=b"\x00boot\xff"),
        ),
    )


def _list_page_one(r: Run):
    page = first_page(r.client.list_devices(request={"parent": r.registry, "page_size": 1}))
    r.saved["page_token"] = page.next_page_token
    return page


def _list_page_two(r: Run):
    req = {"parent": r.registry, "page_size": 1, "page_token": r.saved.get("page_token", "")}
    return first_page(r.client.list_devices(request=req))


def _list_by_gateway(r: Run):
    options = iot_v1.GatewayListOptions(associations_gateway_id=GATEWAY_ID)
    return first_page(r.client.list_devices(request={"parent": r.registry, "gateway_list_options": options}))


def _list_by_device(r: Run):
    options = iot_v1.GatewayListOptions(associations_device_id=str(r.num_ids["device"]))
    return first_page(r.client.list_devices(request={"parent": r.registry, "gateway_list_options": options}))


STEPS = [
    Step("create registry", _create_registry),
    Step("get registry", lambda r: r.client.get_device_registry(name=r.registry)),
    Step("create registry with a CA certificate", _create_ca_registry),
    Step("list registries", lambda r: first_page(r.client.list_device_registries(parent=r.parent))),
    Step(
        "delete the registry with a CA certificate",
        lambda r: r.client.delete_device_registry(name=f"{r.registry}-ca"),
    ),
    Step("create gateway with RSA and ES256 keys", _create_gateway, remember="gateway"),
    Step("create non-gateway device with initial config", _create_device, remember="device"),
    Step("get device by id", lambda r: r.client.get_device(name=r.device(GATEWAY_ID))),
    Step("get device by numeric id", lambda r: r.client.get_device(name=r.by_num("gateway"))),
    Step(
        "get device with field_mask",
        lambda r: r.client.get_device(
            request={"name": r.device(GATEWAY_ID), "field_mask": mask("metadata", "blocked", "gateway_config")}
        ),
    ),
    Step(
        "get device with field_mask of config and credentials",
        lambda r: r.client.get_device(
            request={"name": r.device(DEVICE_ID), "field_mask": mask("config", "credentials", "last_heartbeat_time")}
        ),
    ),
    Step("list devices", lambda r: first_page(r.client.list_devices(parent=r.registry))),
    Step(
        "list devices with field_mask",
        lambda r: first_page(
            r.client.list_devices(
                request={"parent": r.registry, "field_mask": mask("config", "gateway_config", "metadata")}
            )
        ),
    ),
    Step("list devices, first page of one", _list_page_one),
    Step("list devices, second page of one", _list_page_two),
    Step(
        "update device: blocked",
        lambda r: r.client.update_device(
            device=iot_v1.Device(name=r.device(DEVICE_ID), blocked=True, metadata={"ignored": "x"}),
            update_mask=mask("blocked"),
        ),
    ),
    Step(
        "update device: metadata, by numeric id",
        lambda r: r.client.update_device(
            device=iot_v1.Device(name=r.by_num("gateway"), metadata={"owner": "bob"}),
            update_mask=mask("metadata"),
        ),
    ),
    Step(
        "update device: unblock with the mask alone",
        lambda r: r.client.update_device(
            device=iot_v1.Device(name=r.device(DEVICE_ID), blocked=False), update_mask=mask("blocked")
        ),
    ),
    Step(
        "modify config",
        lambda r: r.client.modify_cloud_to_device_config(name=r.device(DEVICE_ID), binary_data=b"\x01one"),
    ),
    Step(
        "modify config with a stale version_to_update",
        lambda r: r.client.modify_cloud_to_device_config(
            request={"name": r.device(DEVICE_ID), "version_to_update": 1, "binary_data": b"lost"}
        ),
        expect="FAILED_PRECONDITION",
    ),
    Step(
        "modify config with the current version_to_update",
        # One config update per second per device: wait out the one before.
        lambda r: (wait_for_config_slot(), r.client.modify_cloud_to_device_config(
            request={"name": r.by_num("device"), "version_to_update": 2, "binary_data": b""}
        ))[1],
    ),
    Step("list config versions", lambda r: r.client.list_device_config_versions(name=r.device(DEVICE_ID))),
    Step(
        "list config versions, num_versions=2",
        lambda r: r.client.list_device_config_versions(request={"name": r.by_num("device"), "num_versions": 2}),
    ),
    Step("get device after config changes", lambda r: r.client.get_device(name=r.device(DEVICE_ID))),
    Step("list states", lambda r: r.client.list_device_states(name=r.device(DEVICE_ID))),
    Step(
        "list states, num_states=3",
        lambda r: r.client.list_device_states(request={"name": r.device(DEVICE_ID), "num_states": 3}),
    ),
    Step(
        "send command to an unsubscribed device",
        lambda r: r.client.send_command_to_device(name=r.device(DEVICE_ID), binary_data=b"reboot"),
        expect="FAILED_PRECONDITION",
    ),
    Step(
        "send command with subfolder, by numeric id",
        lambda r: r.client.send_command_to_device(
            request={"name": r.by_num("device"), "binary_data": b"x", "subfolder": "sub/a"}
        ),
        expect="FAILED_PRECONDITION",
    ),
    Step(
        "bind device to gateway",
        lambda r: r.client.bind_device_to_gateway(parent=r.registry, gateway_id=GATEWAY_ID, device_id=DEVICE_ID),
    ),
    Step("list devices bound to the gateway", _list_by_gateway),
    Step("list gateways of the device, by numeric id", _list_by_device),
    Step(
        "bind a gateway to a gateway",
        lambda r: r.client.bind_device_to_gateway(parent=r.registry, gateway_id=DEVICE_ID, device_id=GATEWAY_ID),
        expect=ANY_BAD_REQUEST,
    ),
    Step(
        "bind a missing device",
        lambda r: r.client.bind_device_to_gateway(parent=r.registry, gateway_id=GATEWAY_ID, device_id=MISSING_ID),
        expect="NOT_FOUND",
    ),
    Step(
        "unbind device from gateway, by numeric ids",
        lambda r: r.client.unbind_device_from_gateway(
            parent=r.registry, gateway_id=str(r.num_ids["gateway"]), device_id=str(r.num_ids["device"])
        ),
    ),
    Step(
        "unbind again",
        lambda r: r.client.unbind_device_from_gateway(
            parent=r.registry, gateway_id=GATEWAY_ID, device_id=DEVICE_ID
        ),
        expect="NOT_FOUND",
    ),
    # Errors.
    Step("get a missing device", lambda r: r.client.get_device(name=r.device(MISSING_ID)), expect="NOT_FOUND"),
    Step(
        "get a missing numeric id",
        lambda r: r.client.get_device(name=r.device("987654321012345")),
        expect="NOT_FOUND",
    ),
    Step(
        "get a missing registry",
        lambda r: r.client.get_device_registry(name=f"{r.parent}/registries/no-such-registry"),
        expect="NOT_FOUND",
    ),
    Step(
        "modify config of a missing device",
        lambda r: r.client.modify_cloud_to_device_config(name=r.device(MISSING_ID), binary_data=b"x"),
        expect="NOT_FOUND",
    ),
    Step(
        "create a duplicate registry",
        lambda r: r.client.create_device_registry(
            parent=r.parent, device_registry=iot_v1.DeviceRegistry(id=REGISTRY_ID)
        ),
        expect="ALREADY_EXISTS",
    ),
    Step(
        "create a duplicate device",
        lambda r: r.client.create_device(parent=r.registry, device=iot_v1.Device(id=GATEWAY_ID)),
        expect="ALREADY_EXISTS",
    ),
    Step(
        "create a device with a bad id",
        lambda r: r.client.create_device(parent=r.registry, device=iot_v1.Device(id="1bad")),
        expect="INVALID_ARGUMENT",
    ),
    Step(
        "create a registry with a bad id",
        lambda r: r.client.create_device_registry(parent=r.parent, device_registry=iot_v1.DeviceRegistry(id="ab")),
        expect="INVALID_ARGUMENT",
    ),
    Step(
        "create a device with a bad key",
        lambda r: r.client.create_device(
            parent=r.registry,
            device=iot_v1.Device(id="bad-key", credentials=[key(iot_v1.PublicKeyFormat.RSA_PEM, GARBAGE_KEY)]),
        ),
        expect="INVALID_ARGUMENT",
    ),
    Step(
        "create a device with an RSA key declared ES256",
        lambda r: r.client.create_device(
            parent=r.registry,
            device=iot_v1.Device(id="bad-key", credentials=[key(iot_v1.PublicKeyFormat.ES256_PEM, rsa_public_pem())]),
        ),
        expect="INVALID_ARGUMENT",
    ),
    Step(
        "get device with an unknown field in field_mask",
        lambda r: r.client.get_device(request={"name": r.device(DEVICE_ID), "field_mask": mask("no_such_field")}),
        expect="INVALID_ARGUMENT",
    ),
    Step(
        "update device with an empty update_mask",
        lambda r: r.client.update_device(
            device=iot_v1.Device(name=r.device(DEVICE_ID), blocked=True), update_mask=mask()
        ),
        expect="INVALID_ARGUMENT",
    ),
    Step(
        "update an immutable device field",
        lambda r: r.client.update_device(
            device=iot_v1.Device(name=r.device(DEVICE_ID), id="renamed"), update_mask=mask("id")
        ),
        expect="INVALID_ARGUMENT",
    ),
    Step(
        "update registry with an empty update_mask",
        lambda r: r.client.update_device_registry(
            device_registry=iot_v1.DeviceRegistry(name=r.registry, log_level=iot_v1.LogLevel.ERROR),
            update_mask=mask(),
        ),
        expect="INVALID_ARGUMENT",
    ),
    Step(
        "update registry: log_level and http_config",
        lambda r: r.client.update_device_registry(
            device_registry=iot_v1.DeviceRegistry(
                name=r.registry,
                log_level=iot_v1.LogLevel.DEBUG,
                http_config=iot_v1.HttpConfig(http_enabled_state=iot_v1.HttpState.HTTP_ENABLED),
                mqtt_config=iot_v1.MqttConfig(mqtt_enabled_state=iot_v1.MqttState.MQTT_DISABLED),
            ),
            update_mask=mask("log_level", "http_config.http_enabled_state"),
        ),
    ),
    Step(
        "create a device with an unknown log_level number",
        lambda r: r.client.create_device(parent=r.registry, device=iot_v1.Device(id="enum-probe", log_level=99)),
        expect="INVALID_ARGUMENT",
        transport_level=True,
    ),
    Step(
        "list devices with an unknown gateway_type number",
        lambda r: first_page(
            r.client.list_devices(
                request={"parent": r.registry, "gateway_list_options": iot_v1.GatewayListOptions(gateway_type=7)}
            )
        ),
        expect="INVALID_ARGUMENT",
    ),
    # IAM policies (docs/iam.md). A policy that was never set is empty with Google's etag for it;
    # a stored policy's etag is the server's own, so only refusals are compared after a write.
    Step("get_iam_policy of a registry without a policy", lambda r: r.client.get_iam_policy(resource=r.registry)),
    Step(
        "get_iam_policy of a missing registry",
        lambda r: r.client.get_iam_policy(resource=f"{r.parent}/registries/{MISSING_ID}"),
        expect="NOT_FOUND",
    ),
    Step(
        "set_iam_policy with an etag that is not the policy's",
        lambda r: r.client.set_iam_policy(
            request={"resource": r.registry, "policy": {"bindings": [], "etag": b"stale-etag"}}, retry=None
        ),
        expect="ABORTED",
    ),
    Step(
        "test_iam_permissions with the admin token",
        lambda r: r.client.test_iam_permissions(
            resource=r.registry, permissions=["cloudiot.devices.get", "cloudiot.registries.setIamPolicy"]
        ),
    ),
    Step(
        "send a command larger than the request size limit",
        lambda r: r.client.send_command_to_device(name=r.device(DEVICE_ID), binary_data=b"x" * 2_000_000),
        # The transports may refuse it at different layers; the statuses must still agree.
        expect=("INVALID_ARGUMENT", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED"),
        own_client=True,
        transport_level=True,
    ),
    # IoT Core ids may contain '%'. Over REST the client puts the id into the URL path as is; the
    # HTTP mapping rule for a multi-segment variable like {name=projects/*/.../devices/*} says the
    # server decodes it "except %2F and %2f are left unchanged", so the id must survive the trip.
    Step(
        "create a device whose id contains %2F",
        lambda r: r.client.create_device(parent=r.registry, device=iot_v1.Device(id=PERCENT_ID)),
        remember="percent",
    ),
    Step("get a device whose id contains %2F", lambda r: r.client.get_device(name=r.device(PERCENT_ID))),
    Step("delete the device whose id contains %2F, by numeric id",
         lambda r: r.client.delete_device(name=r.by_num("percent"))),
    Step(
        "delete a registry that still has devices",
        lambda r: r.client.delete_device_registry(name=r.registry),
        expect="FAILED_PRECONDITION",
    ),
    Step("delete device", lambda r: r.client.delete_device(name=r.device(DEVICE_ID))),
    Step("get the deleted device", lambda r: r.client.get_device(name=r.by_num("device")), expect="NOT_FOUND"),
    Step("delete gateway, by numeric id", lambda r: r.client.delete_device(name=r.by_num("gateway"))),
    Step("list devices of the emptied registry", lambda r: first_page(r.client.list_devices(parent=r.registry))),
    Step("delete registry", lambda r: r.client.delete_device_registry(name=r.registry)),
    Step("delete registry again", lambda r: r.client.delete_device_registry(name=r.registry), expect="NOT_FOUND"),
]

assert len({s.name for s in STEPS}) == len(STEPS), "step names must be unique"


def run_scenario(run: Run) -> dict[str, Outcome]:
    outcomes = {}
    for step in STEPS:
        run.rest_bodies.clear()
        run.problems = []
        outcome = Outcome()
        shared = run.client
        if step.own_client:
            run.client = run.connect(run)
        try:
            response = step.call(run)
        except gexc.GoogleAPICallError as e:
            try:
                report = error_report(e)
            except Exception as bad:  # an error the suite cannot read is itself a finding
                outcome.crash = f"unreadable {type(e).__name__}: {e} ({bad!r})"
            else:
                violations = tuple((run.mask_text(f), run.mask_text(d)) for f, d in report.field_violations)
                outcome.error = (report.status, run.mask_text(report.message), violations)
        except Exception as e:  # noqa: BLE001 - recorded and reported by the step's test
            outcome.crash = f"{type(e).__name__}: {e}"
        else:
            if step.remember and isinstance(response, iot_v1.Device):
                run.num_ids[step.remember] = response.num_id
            outcome.result = canonical(run, response)
        finally:
            if step.own_client:
                run.client.transport.close()
                run.client = shared
        if run.transport == "rest":
            outcome.json_times = check_rest_json_times(run, step.name)
        outcome.problems = list(run.problems)
        outcomes[step.name] = outcome
    return outcomes


def connect(server, run: Run) -> iot_v1.DeviceManagerClient:
    """A client on `run`'s transport carrying the admin token; over REST it keeps the raw bodies."""
    if run.transport == "grpc":
        return grpc_client(server.grpc_address, server.token)
    client = iot_v1.DeviceManagerClient(
        transport="rest",
        client_options=ClientOptions(api_endpoint=server.base_url),
        credentials=google.oauth2.credentials.Credentials(token=server.token),
    )

    def keep_body(resp, *args, **kwargs):
        try:
            run.rest_bodies.append(resp.json())
        except ValueError:
            run.rest_bodies.append(resp.text)

    client._transport._session.hooks["response"].append(keep_body)  # a google.auth AuthorizedSession
    return client


@pytest.fixture(scope="module")
def outcomes(server) -> dict[str, dict[str, Outcome]]:
    """transport -> step name -> Outcome, for the whole scenario on each transport."""
    results = {}
    for transport in TRANSPORTS:
        run = Run(transport, functools.partial(connect, server))
        try:
            results[transport] = run_scenario(run)
        finally:
            run.client.transport.close()
    return results


def differences(a, b, where: str = "") -> list[str]:
    """Paths at which two canonical trees differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            at = f"{where}.{k}" if where else str(k)
            if k not in a:
                out.append(f"{at}: absent over REST, {b[k]!r} over gRPC")
            elif k not in b:
                out.append(f"{at}: {a[k]!r} over REST, absent over gRPC")
            else:
                out.extend(differences(a[k], b[k], at))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where or '<value>'}: {a!r} over REST, {b!r} over gRPC"]


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_step_is_the_same_over_rest_and_grpc(outcomes, step):
    rest, grpc_ = outcomes["rest"][step.name], outcomes["grpc"][step.name]
    failures = []
    for transport, outcome in (("rest", rest), ("grpc", grpc_)):
        wanted = step.expect if isinstance(step.expect, tuple) else (step.expect,)
        if outcome.status not in wanted:
            failures.append(f"{transport}: expected {' or '.join(wanted)}, got {outcome.comparable()!r}")
        failures.extend(f"{transport}: {p}" for p in outcome.problems)
    diff = [] if step.transport_level else differences(rest.comparable(), grpc_.comparable())
    if diff:
        failures.append("REST and gRPC disagree:\n  " + "\n  ".join(diff))
    assert not failures, f"step {step.name!r}:\n" + "\n".join(failures)


def test_scenario_exercised_what_it_claims(outcomes):
    """Guards the comparison against vacuity: the masked trees still carry the substance."""
    for transport in TRANSPORTS:
        o = outcomes[transport]
        registry = o["create registry with a CA certificate"].result
        x509 = registry["credentials"][0]["public_key_certificate"]["x509_details"]
        assert x509["start_time"].endswith("Z") and x509["public_key_type"] == "RSA", registry
        gateway = o["create gateway with RSA and ES256 keys"].result
        assert gateway["credentials"][0]["expiration_time"] == "2031-05-06T07:08:09.123456Z", gateway
        assert gateway["id"] == GATEWAY_ID and gateway["num_id"] == "<numId:gateway>", gateway
        assert [c["public_key"]["format"] for c in gateway["credentials"]] == ["RSA_PEM", "ES256_PEM"], gateway
        assert gateway["metadata"] == {"owner": "alice", "site": "lab-1"}, gateway
        assert gateway["gateway_config"]["gateway_type"] == "GATEWAY", gateway
        assert gateway["name"] == f"projects/<project>/locations/us-central1/registries/{REGISTRY_ID}/devices/<numId:gateway>"
        assert gateway["config"]["cloud_update_time"] == "<timestamp>", gateway
        modified = o["modify config"].result
        assert modified["version"] == 2 and modified["cloud_update_time"] == "<timestamp>", modified
        if transport == "rest":
            # The raw JSON was really looked at: three versions, three cloudUpdateTime values.
            assert o["list config versions"].json_times == 3, o["list config versions"]
        versions = o["list config versions"].result["device_configs"]
        assert [v["version"] for v in versions] == [3, 2, 1], versions
        assert all(v["cloud_update_time"] == "<timestamp>" for v in versions), versions
        stale = o["modify config with a stale version_to_update"].error
        assert stale[0] == "FAILED_PRECONDITION" and stale[1], stale
        bad_id = o["create a device with a bad id"].error
        assert [field for field, _ in bad_id[2]] == ["device.id"], bad_id


def test_a_missing_token_is_refused_alike(server):
    """Both APIs refuse a call without the admin token as UNAUTHENTICATED, before looking at it.

    The messages are not compared: each names the place the token goes on its own transport (the
    `Authorization` header, or `authorization` metadata).
    """
    name = f"{location_path(fresh_project())}/registries/{REGISTRY_ID}"
    rest = Rest(server.base_url, None)
    error = assert_google_error(rest.get(f"v1/{name}"), 401, "UNAUTHENTICATED")
    anon = grpc_client(server.grpc_address, None)
    try:
        with pytest.raises(gexc.Unauthenticated) as exc:
            anon.get_device_registry(name=name)
    finally:
        anon.transport.close()
    report = error_report(exc.value)
    assert report.status == error["status"] == "UNAUTHENTICATED"
    assert report.message and error["message"]
    assert report.field_violations == () and "details" not in error
