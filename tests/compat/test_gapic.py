"""google-cloud-iot 2.9.2 (the GAPIC client) against Ferrocore, over both of its transports.

This is the client most Python users of IoT Core ended up on. Every test runs once per transport
(the `transport` fixture), and both runs must satisfy the same assertions:

* "rest": the REST transport sends `$alt=json;enum-encoding=int`, writes enums as integers,
  serialises FieldMasks in lowerCamel and always sends `updateMask` on updates, so the tests
  exercise those quirks as a side effect.
* "grpc": the gRPC transport on a plaintext (h2c) channel whose interceptor adds
  `authorization: Bearer TOKEN` metadata; messages go out in binary, FieldMasks in snake_case.

The transports legitimately differ in how a failure surfaces. Over REST, google-api-core picks the
exception class from the HTTP status alone, so a 400 arrives as BadRequest (not InvalidArgument /
FailedPrecondition) and a 409 as Conflict (not AlreadyExists); over gRPC the class follows the
status code, so the specific class arrives. The `expect_error` fixture checks the class that is
right for the transport, the HTTP-equivalent `code`, and the canonical status the server sent (in
the JSON body or as the gRPC status). A refused token differs as well; see the authentication
tests.
"""

from __future__ import annotations

import functools

import google.auth.exceptions
import google.oauth2.credentials
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import iot_v1
from google.iam.v1 import policy_pb2
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

import compat_support
from compat_support import (
    GARBAGE_KEY,
    GrpcExchangeRecorder,
    TRANSPORTS,
    ec_p384_public_pem,
    ec_public_pem,
    error_report,
    fresh_project,
    grpc_client,
    location_path,
    record_rest_exchanges,
    rsa_public_pem,
    same_pem,
    self_signed_cert_pem,
    unique,
    wait_for_config_slot,
)


def make_client(server, transport: str, token: str | None, seen: list | None = None) -> iot_v1.DeviceManagerClient:
    """A client on `transport` presenting the admin `token`; None presents no credential at all.

    With `seen`, every exchange is recorded there as an Exchange.
    """
    if transport == "rest":
        credentials = AnonymousCredentials() if token is None else google.oauth2.credentials.Credentials(token=token)
        client = iot_v1.DeviceManagerClient(
            transport="rest",
            client_options=ClientOptions(api_endpoint=server.base_url),
            credentials=credentials,
        )
        if seen is not None:
            record_rest_exchanges(client, seen)
        return client
    assert transport == "grpc", transport
    # The recorder comes after the token interceptor, so it sees the metadata actually sent.
    recorders = [GrpcExchangeRecorder(seen)] if seen is not None else []
    return grpc_client(server.grpc_address, token, *recorders)


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def client(server, transport) -> iot_v1.DeviceManagerClient:
    c = make_client(server, transport, server.token)
    yield c
    c.transport.close()


@pytest.fixture
def other_client(server, transport):
    """Builds further clients on the transport under test; they are closed after the test."""
    made = []

    def build(token: str | None, seen: list | None = None) -> iot_v1.DeviceManagerClient:
        c = make_client(server, transport, token, seen)
        made.append(c)
        return c

    yield build
    for c in made:
        c.transport.close()


@pytest.fixture
def expect_error(transport):
    """`compat_support.expect_error` for the transport under test: `with expect_error("NOT_FOUND"):`."""
    return functools.partial(compat_support.expect_error, transport=transport)


@pytest.fixture
def parent() -> str:
    return location_path(fresh_project())


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def rsa_cred(n: int = 0) -> iot_v1.DeviceCredential:
    return iot_v1.DeviceCredential(
        public_key=iot_v1.PublicKeyCredential(format=iot_v1.PublicKeyFormat.RSA_PEM, key=rsa_public_pem(n))
    )


def ec_cred(n: int = 0) -> iot_v1.DeviceCredential:
    return iot_v1.DeviceCredential(
        public_key=iot_v1.PublicKeyCredential(format=iot_v1.PublicKeyFormat.ES256_PEM, key=ec_public_pem(n))
    )


def new_registry(client, parent: str, **fields) -> iot_v1.DeviceRegistry:
    return client.create_device_registry(
        parent=parent, device_registry=iot_v1.DeviceRegistry(id=unique("reg"), **fields)
    )


def new_device(client, registry: iot_v1.DeviceRegistry, device_id: str | None = None, **fields) -> iot_v1.Device:
    return client.create_device(parent=registry.name, device=iot_v1.Device(id=device_id or unique("dev"), **fields))


GATEWAY = iot_v1.GatewayConfig(
    gateway_type=iot_v1.GatewayType.GATEWAY, gateway_auth_method=iot_v1.GatewayAuthMethod.ASSOCIATION_ONLY
)
NON_GATEWAY = iot_v1.GatewayConfig(gateway_type=iot_v1.GatewayType.NON_GATEWAY)


# --- authentication ----------------------------------------------------------------------------

def test_bearer_token_is_sent(server, other_client, parent):
    seen = []
    client = other_client(server.token, seen)
    assert list(client.list_device_registries(parent=parent)) == []
    assert [(e.status, e.authorization) for e in seen] == [("OK", f"Bearer {server.token}")]


# Over REST a 401 makes google.auth's AuthorizedSession try to refresh the credentials before
# giving up, so the caller sees the refresh failure (a google.auth error) rather than an api_core
# exception. Over gRPC no credentials object is involved (the token is plain metadata), so the
# UNAUTHENTICATED status arrives directly as google-api-core's Unauthenticated. Either way, the
# recorded exchanges show what the server itself answered.
REST_AUTH_FAILURES = (gexc.Unauthorized, google.auth.exceptions.GoogleAuthError)


@pytest.fixture
def expect_refused(transport, expect_error):
    """A context manager for a call the server refuses for its credential."""

    def refused():
        if transport == "rest":
            return pytest.raises(REST_AUTH_FAILURES)
        return expect_error("UNAUTHENTICATED")

    return refused


def assert_refused_as_unauthenticated(transport, seen):
    assert seen, "no request reached the server"
    for e in seen:
        assert e.status == "UNAUTHENTICATED", seen
        if transport == "rest":
            assert e.http_status == 401, e
            assert e.body["error"]["code"] == 401, e


def test_missing_credentials_are_unauthenticated(transport, other_client, expect_refused, parent):
    seen = []
    anon = other_client(None, seen)
    with expect_refused():
        anon.get_device_registry(name=f"{parent}/registries/whatever")
    assert_refused_as_unauthenticated(transport, seen)
    assert all(e.authorization is None for e in seen)


def test_wrong_token_is_unauthenticated(server, transport, client, other_client, expect_refused, parent):
    seen = []
    wrong = other_client(server.token + "x", seen)
    with expect_refused():
        list(wrong.list_device_registries(parent=parent))
    with expect_refused():
        wrong.create_device_registry(parent=parent, device_registry=iot_v1.DeviceRegistry(id=unique("reg")))
    assert_refused_as_unauthenticated(transport, seen)
    assert all(e.authorization == f"Bearer {server.token}x" for e in seen)
    assert list(client.list_device_registries(parent=parent)) == []


# --- registries --------------------------------------------------------------------------------

def test_registry_create_get_update_delete(client, parent, expect_error):
    project = parent.split("/")[1]
    rid = unique("reg")
    wanted = iot_v1.DeviceRegistry(
        id=rid,
        event_notification_configs=[
            iot_v1.EventNotificationConfig(
                subfolder_matches="alerts", pubsub_topic_name=f"projects/{project}/topics/alerts"
            ),
            iot_v1.EventNotificationConfig(pubsub_topic_name=f"projects/{project}/topics/events"),
        ],
        state_notification_config=iot_v1.StateNotificationConfig(
            pubsub_topic_name=f"projects/{project}/topics/state"
        ),
        mqtt_config=iot_v1.MqttConfig(mqtt_enabled_state=iot_v1.MqttState.MQTT_ENABLED),
        http_config=iot_v1.HttpConfig(http_enabled_state=iot_v1.HttpState.HTTP_DISABLED),
        log_level=iot_v1.LogLevel.INFO,
    )
    created = client.create_device_registry(parent=parent, device_registry=wanted)
    assert created.id == rid
    assert created.name == f"{parent}/registries/{rid}"
    assert [(c.subfolder_matches, c.pubsub_topic_name) for c in created.event_notification_configs] == [
        ("alerts", f"projects/{project}/topics/alerts"),
        ("", f"projects/{project}/topics/events"),
    ]
    assert created.state_notification_config.pubsub_topic_name == f"projects/{project}/topics/state"
    assert created.mqtt_config.mqtt_enabled_state == iot_v1.MqttState.MQTT_ENABLED
    assert created.http_config.http_enabled_state == iot_v1.HttpState.HTTP_DISABLED
    assert created.log_level == iot_v1.LogLevel.INFO

    fetched = client.get_device_registry(name=created.name)
    assert fetched == created

    with expect_error("ALREADY_EXISTS") as exc:
        client.create_device_registry(parent=parent, device_registry=iot_v1.DeviceRegistry(id=rid))
    assert exc.value.code == 409

    # Only masked fields change: mqtt_config is in the body but not in the mask.
    updated = client.update_device_registry(
        device_registry=iot_v1.DeviceRegistry(
            name=created.name,
            http_config=iot_v1.HttpConfig(http_enabled_state=iot_v1.HttpState.HTTP_ENABLED),
            mqtt_config=iot_v1.MqttConfig(mqtt_enabled_state=iot_v1.MqttState.MQTT_DISABLED),
            log_level=iot_v1.LogLevel.DEBUG,
        ),
        update_mask=mask("http_config.http_enabled_state", "log_level"),
    )
    assert updated.http_config.http_enabled_state == iot_v1.HttpState.HTTP_ENABLED
    assert updated.log_level == iot_v1.LogLevel.DEBUG
    assert updated.mqtt_config.mqtt_enabled_state == iot_v1.MqttState.MQTT_ENABLED
    assert len(updated.event_notification_configs) == 2

    # A repeated field in the mask is replaced wholesale.
    replaced = client.update_device_registry(
        device_registry=iot_v1.DeviceRegistry(
            name=created.name,
            event_notification_configs=[
                iot_v1.EventNotificationConfig(pubsub_topic_name=f"projects/{project}/topics/only")
            ],
        ),
        update_mask=mask("event_notification_configs"),
    )
    assert [c.pubsub_topic_name for c in replaced.event_notification_configs] == [
        f"projects/{project}/topics/only"
    ]
    again = client.get_device_registry(name=created.name)
    assert again == replaced
    assert again.log_level == iot_v1.LogLevel.DEBUG

    client.delete_device_registry(name=created.name)
    with expect_error("NOT_FOUND"):
        client.get_device_registry(name=created.name)
    with expect_error("NOT_FOUND"):
        client.delete_device_registry(name=created.name)


def test_registry_update_rejects_immutable_and_empty_masks(client, parent, expect_error):
    reg = new_registry(client, parent)
    with expect_error("INVALID_ARGUMENT"):
        client.update_device_registry(
            device_registry=iot_v1.DeviceRegistry(name=reg.name, log_level=iot_v1.LogLevel.ERROR),
            update_mask=mask(),
        )
    with expect_error("INVALID_ARGUMENT"):
        client.update_device_registry(
            device_registry=iot_v1.DeviceRegistry(name=reg.name, id="other-id"), update_mask=mask("id")
        )
    assert client.get_device_registry(name=reg.name) == reg


def test_registry_invalid_ids(client, parent, expect_error):
    for bad in ("1bad", "ab", "goog-reserved", "has space", "x" * 256):
        with expect_error("INVALID_ARGUMENT"):
            client.create_device_registry(parent=parent, device_registry=iot_v1.DeviceRegistry(id=bad))
    with expect_error("INVALID_ARGUMENT"):
        client.create_device_registry(
            parent=parent,
            device_registry=iot_v1.DeviceRegistry(
                id=unique("reg"),
                event_notification_configs=[iot_v1.EventNotificationConfig(pubsub_topic_name="not-a-topic")],
            ),
        )
    assert list(client.list_device_registries(parent=parent)) == []


def test_list_registries_pages_through_everything_once(client, parent):
    ids = sorted(f"reg-{i}-{unique('x')}" for i in range(5))
    for rid in reversed(ids):  # create out of order: the listing must still be stable
        client.create_device_registry(parent=parent, device_registry=iot_v1.DeviceRegistry(id=rid))

    pager = client.list_device_registries(request={"parent": parent, "page_size": 2})
    pages = list(pager.pages)
    assert len(pages) >= 3
    assert all(len(p.device_registries) <= 2 for p in pages)
    assert all(p.next_page_token for p in pages[:-1])
    assert pages[-1].next_page_token == ""
    seen = [r.id for p in pages for r in p.device_registries]
    assert seen == ids

    # Plain iteration (what users write) gives the same, and the default page holds all five.
    assert [r.id for r in client.list_device_registries(request={"parent": parent, "page_size": 2})] == ids
    first = client.list_device_registries(parent=parent)
    assert [r.id for r in first.device_registries] == ids
    assert first.next_page_token == ""
    for r in first.device_registries:
        assert r.name == f"{parent}/registries/{r.id}"


def test_registry_not_found(client, parent, expect_error):
    with expect_error("NOT_FOUND") as exc:
        client.get_device_registry(name=f"{parent}/registries/{unique('missing')}")
    assert exc.value.code == 404
    with expect_error("NOT_FOUND"):
        client.create_device(
            parent=f"{parent}/registries/{unique('missing')}", device=iot_v1.Device(id=unique("dev"))
        )


def test_delete_registry_with_devices_fails(client, parent, expect_error):
    reg = new_registry(client, parent)
    dev = new_device(client, reg)
    with expect_error("FAILED_PRECONDITION"):
        client.delete_device_registry(name=reg.name)
    assert client.get_device_registry(name=reg.name) == reg
    client.delete_device(name=dev.name)
    client.delete_device_registry(name=reg.name)
    with expect_error("NOT_FOUND"):
        client.get_device_registry(name=reg.name)


# --- devices -----------------------------------------------------------------------------------

def test_create_and_get_device_with_keys_and_metadata(client, parent):
    reg = new_registry(client, parent)
    did = unique("dev")
    created = client.create_device(
        parent=reg.name,
        device=iot_v1.Device(
            id=did,
            credentials=[rsa_cred(), ec_cred()],
            metadata={"owner": "alice", "site": "lab-1"},
        ),
    )
    assert created.id == did
    assert created.num_id > 0
    # Google always names a device by its numeric id in responses.
    assert created.name == f"{reg.name}/devices/{created.num_id}"
    formats = [c.public_key.format for c in created.credentials]
    assert formats == [iot_v1.PublicKeyFormat.RSA_PEM, iot_v1.PublicKeyFormat.ES256_PEM]
    assert same_pem(created.credentials[0].public_key.key, rsa_public_pem())
    assert same_pem(created.credentials[1].public_key.key, ec_public_pem())
    assert dict(created.metadata) == {"owner": "alice", "site": "lab-1"}
    assert created.blocked is False
    # Creation counts as config version 1 with empty data.
    assert created.config.version == 1
    assert created.config.binary_data == b""

    by_id = client.get_device(name=f"{reg.name}/devices/{did}")
    by_num = client.get_device(name=f"{reg.name}/devices/{created.num_id}")
    assert by_id == by_num
    assert by_id.id == did and by_id.num_id == created.num_id and by_id.name == created.name
    assert dict(by_id.metadata) == {"owner": "alice", "site": "lab-1"}
    assert len(by_id.credentials) == 2

    # A read mask limits what comes back.
    partial = client.get_device(request={"name": by_id.name, "field_mask": mask("metadata", "blocked")})
    assert dict(partial.metadata) == {"owner": "alice", "site": "lab-1"}
    assert len(partial.credentials) == 0
    assert "config" not in partial


def test_create_device_with_certificates_and_initial_config(client, parent):
    reg = new_registry(client, parent)
    dev = new_device(
        client,
        reg,
        credentials=[
            iot_v1.DeviceCredential(
                public_key=iot_v1.PublicKeyCredential(
                    format=iot_v1.PublicKeyFormat.RSA_X509_PEM, key=self_signed_cert_pem("rsa")
                )
            ),
            iot_v1.DeviceCredential(
                public_key=iot_v1.PublicKeyCredential(
                    format=iot_v1.PublicKeyFormat.ES256_X509_PEM, key=self_signed_cert_pem("ec")
                )
            ),
        ],
        config=iot_v1.DeviceConfig(binary_data=b"\x00initial\xff"),
        log_level=iot_v1.LogLevel.ERROR,
    )
    assert [c.public_key.format for c in dev.credentials] == [
        iot_v1.PublicKeyFormat.RSA_X509_PEM,
        iot_v1.PublicKeyFormat.ES256_X509_PEM,
    ]
    assert dev.config.version == 1
    assert dev.config.binary_data == b"\x00initial\xff"
    assert dev.log_level == iot_v1.LogLevel.ERROR
    got = client.get_device(name=dev.name)
    assert got.config.binary_data == b"\x00initial\xff"


def test_create_device_rejects_bad_input(client, parent, expect_error):
    reg = new_registry(client, parent)

    def create(**fields):
        return client.create_device(parent=reg.name, device=iot_v1.Device(**fields))

    with expect_error("INVALID_ARGUMENT") as exc:
        create(id="1bad")
    assert exc.value.code == 400
    for bad_id in ("goog-device", "d", "bad/id", "y" * 256):
        with expect_error("INVALID_ARGUMENT"):
            create(id=bad_id)

    def key(fmt, pem):
        return iot_v1.DeviceCredential(public_key=iot_v1.PublicKeyCredential(format=fmt, key=pem))

    bad_credential_sets = {
        "garbage RSA key": [key(iot_v1.PublicKeyFormat.RSA_PEM, GARBAGE_KEY)],
        "garbage ES256 key": [key(iot_v1.PublicKeyFormat.ES256_PEM, "not a pem at all")],
        "EC key declared RSA": [key(iot_v1.PublicKeyFormat.RSA_PEM, ec_public_pem())],
        "RSA key declared ES256": [key(iot_v1.PublicKeyFormat.ES256_PEM, rsa_public_pem())],
        "P-384 key as ES256": [key(iot_v1.PublicKeyFormat.ES256_PEM, ec_p384_public_pem())],
        "bare key declared certificate": [key(iot_v1.PublicKeyFormat.RSA_X509_PEM, rsa_public_pem())],
        "unspecified format": [key(iot_v1.PublicKeyFormat.UNSPECIFIED_PUBLIC_KEY_FORMAT, rsa_public_pem())],
        "four credentials": [rsa_cred(0), rsa_cred(1), ec_cred(0), ec_cred(1)],
    }
    for label, creds in bad_credential_sets.items():
        with expect_error("INVALID_ARGUMENT"):
            create(id=unique("dev"), credentials=creds)
            pytest.fail(f"credentials with {label} were accepted")

    with expect_error("INVALID_ARGUMENT"):
        create(id=unique("dev"), metadata={"1bad-key": "v"})
    # A device's config may only be given at version 0 on create.
    with expect_error("INVALID_ARGUMENT"):
        create(id=unique("dev"), config=iot_v1.DeviceConfig(version=5, binary_data=b"x"))

    # Nothing of the above was created.
    assert list(client.list_devices(parent=reg.name)) == []

    # Three credentials is the limit, not over it.
    ok = create(id=unique("dev"), credentials=[rsa_cred(0), ec_cred(0), rsa_cred(1)])
    assert len(ok.credentials) == 3

    with expect_error("ALREADY_EXISTS") as exc:
        create(id=ok.id)
    assert exc.value.code == 409


def test_device_not_found(client, parent, expect_error):
    reg = new_registry(client, parent)
    missing = f"{reg.name}/devices/{unique('ghost')}"
    with expect_error("NOT_FOUND") as exc:
        client.get_device(name=missing)
    assert exc.value.code == 404
    with expect_error("NOT_FOUND"):
        client.get_device(name=f"{reg.name}/devices/987654321012345")
    with expect_error("NOT_FOUND"):
        client.delete_device(name=missing)
    with expect_error("NOT_FOUND"):
        client.modify_cloud_to_device_config(name=missing, binary_data=b"x")
    with expect_error("NOT_FOUND"):
        client.list_device_config_versions(name=missing)
    with expect_error("NOT_FOUND"):
        client.update_device(device=iot_v1.Device(name=missing, blocked=True), update_mask=mask("blocked"))


def test_device_in_other_registry_is_not_visible(client, parent, expect_error):
    reg_a = new_registry(client, parent)
    reg_b = new_registry(client, parent)
    dev = new_device(client, reg_a)
    with expect_error("NOT_FOUND"):
        client.get_device(name=f"{reg_b.name}/devices/{dev.id}")
    with expect_error("NOT_FOUND"):
        client.get_device(name=f"{reg_b.name}/devices/{dev.num_id}")
    # The same string id may be reused in another registry, with a different numeric id.
    twin = new_device(client, reg_b, device_id=dev.id)
    assert twin.num_id != dev.num_id


def test_list_devices_pager_filters_and_field_mask(client, parent):
    reg = new_registry(client, parent)
    gateway = new_device(client, reg, device_id="a-gateway", gateway_config=GATEWAY)
    others = [
        new_device(client, reg, device_id=f"b-device-{i}", credentials=[rsa_cred()], metadata={"n": str(i)})
        for i in range(4)
    ]
    everything = [gateway] + others

    pager = client.list_devices(request={"parent": reg.name, "page_size": 2})
    pages = list(pager.pages)
    assert len(pages) >= 3
    assert all(len(p.devices) <= 2 for p in pages)
    listed = [d for p in pages for d in p.devices]
    assert sorted(d.id for d in listed) == sorted(d.id for d in everything)
    assert len({d.num_id for d in listed}) == len(everything)
    by_id = {d.id: d for d in everything}
    for d in listed:
        assert d.num_id == by_id[d.id].num_id
        # Without a field mask a list carries identifiers only.
        assert len(d.credentials) == 0 and len(d.metadata) == 0
        assert "config" not in d

    # With a mask, as Google's samples ask before checking gateway_type.
    masked = list(client.list_devices(request={"parent": reg.name, "field_mask": mask("config", "gateway_config")}))
    assert len(masked) == len(everything)
    for d in masked:
        assert d.num_id == by_id[d.id].num_id
        assert d.config.version == 1
        assert len(d.metadata) == 0
        is_gateway = d.gateway_config.gateway_type == iot_v1.GatewayType.GATEWAY
        assert is_gateway == (d.id == gateway.id), d
    gw = next(d for d in masked if d.id == gateway.id)
    assert gw.gateway_config.gateway_auth_method == iot_v1.GatewayAuthMethod.ASSOCIATION_ONLY

    meta = list(client.list_devices(request={"parent": reg.name, "field_mask": mask("metadata")}))
    assert {d.id: dict(d.metadata) for d in meta} == {
        gateway.id: {},
        **{o.id: {"n": str(i)} for i, o in enumerate(others)},
    }

    picked = list(client.list_devices(request={"parent": reg.name, "device_ids": [others[0].id, others[2].id]}))
    assert sorted(d.id for d in picked) == sorted([others[0].id, others[2].id])
    picked = list(client.list_devices(request={"parent": reg.name, "device_num_ids": [others[1].num_id]}))
    assert [d.id for d in picked] == [others[1].id]


def test_gateways_bind_unbind_and_list_options(client, parent, expect_error):
    reg = new_registry(client, parent)
    gw = new_device(client, reg, device_id=unique("gw"), gateway_config=GATEWAY)
    gw2 = new_device(client, reg, device_id=unique("gw"), gateway_config=GATEWAY)
    d1 = new_device(client, reg, gateway_config=NON_GATEWAY)
    d2 = new_device(client, reg, gateway_config=NON_GATEWAY)
    plain = new_device(client, reg)  # no gateway_config: a non-gateway device

    def ids(**options) -> set[str]:
        req = {"parent": reg.name, "gateway_list_options": iot_v1.GatewayListOptions(**options)}
        return {d.id for d in client.list_devices(request=req)}

    assert ids(gateway_type=iot_v1.GatewayType.GATEWAY) == {gw.id, gw2.id}
    assert ids(gateway_type=iot_v1.GatewayType.NON_GATEWAY) == {d1.id, d2.id, plain.id}
    assert ids(associations_gateway_id=gw.id) == set()

    client.bind_device_to_gateway(parent=reg.name, gateway_id=gw.id, device_id=d1.id)
    # Either id form works for both sides.
    client.bind_device_to_gateway(parent=reg.name, gateway_id=str(gw.num_id), device_id=str(d2.num_id))
    client.bind_device_to_gateway(parent=reg.name, gateway_id=gw2.id, device_id=d1.id)

    assert ids(associations_gateway_id=gw.id) == {d1.id, d2.id}
    assert ids(associations_gateway_id=str(gw.num_id)) == {d1.id, d2.id}
    assert ids(associations_device_id=d1.id) == {gw.id, gw2.id}
    assert ids(associations_device_id=str(d2.num_id)) == {gw.id}

    client.unbind_device_from_gateway(parent=reg.name, gateway_id=gw.id, device_id=d1.id)
    assert ids(associations_gateway_id=gw.id) == {d2.id}
    assert ids(associations_device_id=d1.id) == {gw2.id}
    with expect_error("NOT_FOUND"):
        client.unbind_device_from_gateway(parent=reg.name, gateway_id=gw.id, device_id=d1.id)

    with expect_error("NOT_FOUND"):
        client.bind_device_to_gateway(parent=reg.name, gateway_id=gw.id, device_id=unique("ghost"))
    with expect_error("NOT_FOUND"):
        client.bind_device_to_gateway(parent=reg.name, gateway_id=unique("ghost"), device_id=d1.id)
    # Only a non-gateway device can be bound to a gateway.
    with pytest.raises(gexc.BadRequest) as exc:
        client.bind_device_to_gateway(parent=reg.name, gateway_id=d1.id, device_id=d2.id)
    assert exc.value.code == 400
    with pytest.raises(gexc.BadRequest) as exc:
        client.bind_device_to_gateway(parent=reg.name, gateway_id=gw.id, device_id=gw2.id)
    assert exc.value.code == 400
    assert ids(associations_gateway_id=gw.id) == {d2.id}


def test_update_device_fields(client, parent, expect_error):
    reg = new_registry(client, parent)
    dev = new_device(client, reg, credentials=[rsa_cred()], metadata={"a": "1", "b": "2"})

    blocked = client.update_device(
        device=iot_v1.Device(name=dev.name, blocked=True, metadata={"ignored": "x"}), update_mask=mask("blocked")
    )
    assert blocked.blocked is True
    assert dict(blocked.metadata) == {"a": "1", "b": "2"}  # not in the mask, so untouched
    assert blocked.num_id == dev.num_id and blocked.name == dev.name

    # blocked=False is proto3's default, so the client omits it from the body: the mask alone
    # must reset it.
    unblocked = client.update_device(device=iot_v1.Device(name=dev.name, blocked=False), update_mask=mask("blocked"))
    assert unblocked.blocked is False

    # Maps in a mask are replaced, not merged; the device can be named by its numeric id.
    by_num = f"{reg.name}/devices/{dev.num_id}"
    remapped = client.update_device(
        device=iot_v1.Device(name=by_num, metadata={"c": "3"}), update_mask=mask("metadata")
    )
    assert dict(remapped.metadata) == {"c": "3"}

    rekeyed = client.update_device(
        device=iot_v1.Device(name=dev.name, credentials=[ec_cred(), ec_cred(1)]), update_mask=mask("credentials")
    )
    assert [c.public_key.format for c in rekeyed.credentials] == [iot_v1.PublicKeyFormat.ES256_PEM] * 2

    leveled = client.update_device(
        device=iot_v1.Device(name=dev.name, log_level=iot_v1.LogLevel.DEBUG), update_mask=mask("log_level")
    )
    assert leveled.log_level == iot_v1.LogLevel.DEBUG

    cleared = client.update_device(device=iot_v1.Device(name=dev.name), update_mask=mask("metadata"))
    assert dict(cleared.metadata) == {}

    final = client.get_device(name=dev.name)
    assert final.blocked is False
    assert dict(final.metadata) == {}
    assert [c.public_key.format for c in final.credentials] == [iot_v1.PublicKeyFormat.ES256_PEM] * 2
    assert final.log_level == iot_v1.LogLevel.DEBUG

    # Invalid updates change nothing.
    with expect_error("INVALID_ARGUMENT"):
        client.update_device(device=iot_v1.Device(name=dev.name, blocked=True), update_mask=mask())
    with expect_error("INVALID_ARGUMENT"):
        client.update_device(device=iot_v1.Device(name=dev.name, id="renamed"), update_mask=mask("id"))
    with expect_error("INVALID_ARGUMENT"):
        client.update_device(
            device=iot_v1.Device(name=dev.name, config=iot_v1.DeviceConfig(binary_data=b"x")),
            update_mask=mask("config"),
        )
    with expect_error("INVALID_ARGUMENT"):
        client.update_device(
            device=iot_v1.Device(name=dev.name, credentials=[iot_v1.DeviceCredential(
                public_key=iot_v1.PublicKeyCredential(format=iot_v1.PublicKeyFormat.RSA_PEM, key=GARBAGE_KEY))]),
            update_mask=mask("credentials"),
        )
    assert client.get_device(name=dev.name) == final


def test_gateway_type_is_fixed_but_auth_method_is_mutable(client, parent, expect_error):
    reg = new_registry(client, parent)
    gw = new_device(client, reg, gateway_config=GATEWAY)
    changed = client.update_device(
        device=iot_v1.Device(
            name=gw.name,
            gateway_config=iot_v1.GatewayConfig(
                gateway_auth_method=iot_v1.GatewayAuthMethod.ASSOCIATION_AND_DEVICE_AUTH_TOKEN
            ),
        ),
        update_mask=mask("gateway_config.gateway_auth_method"),
    )
    assert changed.gateway_config.gateway_type == iot_v1.GatewayType.GATEWAY
    assert changed.gateway_config.gateway_auth_method == iot_v1.GatewayAuthMethod.ASSOCIATION_AND_DEVICE_AUTH_TOKEN
    with expect_error("INVALID_ARGUMENT"):
        client.update_device(
            device=iot_v1.Device(
                name=gw.name, gateway_config=iot_v1.GatewayConfig(gateway_type=iot_v1.GatewayType.NON_GATEWAY)
            ),
            update_mask=mask("gateway_config.gateway_type"),
        )
    assert client.get_device(name=gw.name).gateway_config.gateway_type == iot_v1.GatewayType.GATEWAY


def test_cloud_to_device_config_versions(client, parent, expect_error):
    reg = new_registry(client, parent)
    dev = new_device(client, reg)

    v2 = client.modify_cloud_to_device_config(name=dev.name, binary_data=b"second")
    assert v2.version == 2
    assert v2.binary_data == b"second"
    assert v2.cloud_update_time.timestamp() > 0
    assert "device_ack_time" not in v2

    # Compare-and-set against the current version succeeds...
    wait_for_config_slot()
    v3 = client.modify_cloud_to_device_config(
        request={"name": dev.name, "version_to_update": 2, "binary_data": b"third"}
    )
    assert v3.version == 3
    assert v3.cloud_update_time >= v2.cloud_update_time
    # ...and against a stale one fails without changing anything.
    with expect_error("FAILED_PRECONDITION") as exc:
        client.modify_cloud_to_device_config(
            request={"name": dev.name, "version_to_update": 2, "binary_data": b"lost update"}
        )
    assert exc.value.code == 400

    # The numeric id addresses the same device.
    by_num = f"{reg.name}/devices/{dev.num_id}"
    wait_for_config_slot()
    v4 = client.modify_cloud_to_device_config(name=by_num, binary_data=b"")
    assert v4.version == 4 and v4.binary_data == b""

    history = client.list_device_config_versions(name=dev.name).device_configs
    assert [c.version for c in history] == [4, 3, 2, 1]
    assert [c.binary_data for c in history] == [b"", b"third", b"second", b""]
    assert [c.version for c in client.list_device_config_versions(
        request={"name": by_num, "num_versions": 2}).device_configs] == [4, 3]

    current = client.get_device(name=dev.name)
    assert current.config.version == 4
    assert current.config.binary_data == b""


def test_config_history_keeps_ten_versions(client, parent):
    reg = new_registry(client, parent)
    dev = new_device(client, reg)
    for i in range(2, 14):
        if i > 2:
            wait_for_config_slot()
        client.modify_cloud_to_device_config(name=dev.name, binary_data=f"v{i}".encode())
    history = client.list_device_config_versions(name=dev.name).device_configs
    assert [c.version for c in history] == list(range(13, 3, -1))
    assert history[0].binary_data == b"v13"


def test_states_empty_and_commands_need_a_subscriber(client, parent, expect_error):
    reg = new_registry(client, parent)
    dev = new_device(client, reg)
    assert list(client.list_device_states(name=dev.name).device_states) == []
    assert list(client.list_device_states(request={"name": dev.name, "num_states": 3}).device_states) == []
    assert "state" not in client.get_device(name=dev.name)

    with expect_error("FAILED_PRECONDITION") as exc:
        client.send_command_to_device(name=dev.name, binary_data=b"reboot")
    assert exc.value.code == 400
    assert "is not subscribed to the commands topic" in exc.value.message
    with expect_error("FAILED_PRECONDITION"):
        client.send_command_to_device(
            request={"name": f"{reg.name}/devices/{dev.num_id}", "binary_data": b"x", "subfolder": "sub/a"}
        )
    with expect_error("NOT_FOUND"):
        client.send_command_to_device(name=f"{reg.name}/devices/{unique('ghost')}", binary_data=b"x")


def test_delete_device_by_id_and_by_numeric_id(client, parent, expect_error):
    reg = new_registry(client, parent)
    a = new_device(client, reg)
    b = new_device(client, reg)
    client.delete_device(name=f"{reg.name}/devices/{a.id}")
    client.delete_device(name=f"{reg.name}/devices/{b.num_id}")
    for d in (a, b):
        with expect_error("NOT_FOUND"):
            client.get_device(name=f"{reg.name}/devices/{d.id}")
        with expect_error("NOT_FOUND"):
            client.get_device(name=f"{reg.name}/devices/{d.num_id}")
    assert list(client.list_devices(parent=reg.name)) == []
    # The id is free again, and the new device gets a new numeric id.
    again = new_device(client, reg, device_id=a.id)
    assert again.num_id not in (a.num_id, b.num_id)
    client.delete_device(name=again.name)
    client.delete_device_registry(name=reg.name)


# --- error details and IAM policies ----------------------------------------------------------

def test_invalid_argument_names_the_field(client, transport, parent, expect_error):
    reg = new_registry(client, parent)
    with expect_error("INVALID_ARGUMENT") as exc:
        client.create_device(parent=reg.name, device=iot_v1.Device(id="1bad"))
    report = error_report(exc.value)
    assert [field for field, _ in report.field_violations] == ["device.id"], report
    assert all(description for _, description in report.field_violations), report
    # What google-api-core itself exposes as `details`: over gRPC the google.rpc.BadRequest
    # unpacked from grpc-status-details-bin, over REST the JSON `details` entries.
    details = exc.value.details
    if transport == "grpc":
        bad_requests = [d for d in details if isinstance(d, error_details_pb2.BadRequest)]
        assert [v.field for d in bad_requests for v in d.field_violations] == ["device.id"], details
    else:
        assert [
            v["field"]
            for d in details
            if d.get("@type") == "type.googleapis.com/google.rpc.BadRequest"
            for v in d["fieldViolations"]
        ] == ["device.id"], details
    # A status without a field to blame carries no violation.
    with expect_error("NOT_FOUND") as exc:
        client.get_device(name=f"{reg.name}/devices/{unique('ghost')}")
    assert error_report(exc.value).field_violations == ()


def test_iam_policy_get_set_and_test_permissions(client, parent, expect_error):
    reg = new_registry(client, parent)

    # A fresh registry has an empty policy, with an etag to write it back with.
    empty = client.get_iam_policy(resource=reg.name)
    assert list(empty.bindings) == []
    assert empty.etag, "a policy always carries an etag"

    viewer = policy_pb2.Binding(role="roles/cloudiot.viewer", members=["user:ana@example.com"])
    stored = client.set_iam_policy(
        request={"resource": reg.name, "policy": policy_pb2.Policy(bindings=[viewer], etag=empty.etag)}
    )
    assert [(b.role, list(b.members)) for b in stored.bindings] == [("roles/cloudiot.viewer", ["user:ana@example.com"])]
    assert stored.etag and stored.etag != empty.etag, "the etag changes with the policy"
    fetched = client.get_iam_policy(resource=reg.name)
    assert (list(fetched.bindings), fetched.etag) == (list(stored.bindings), stored.etag)

    # A write based on an older read is refused, and changes nothing.
    stale = policy_pb2.Policy(
        bindings=[policy_pb2.Binding(role="roles/cloudiot.admin", members=["user:mallory@example.com"])],
        etag=empty.etag,
    )
    with expect_error("ABORTED") as exc:
        client.set_iam_policy(request={"resource": reg.name, "policy": stale}, retry=None)
    assert exc.value.code == 409
    assert client.get_iam_policy(resource=reg.name) == fetched

    # The current etag, or none at all, writes.
    editor = policy_pb2.Binding(role="roles/cloudiot.editor", members=["serviceAccount:ci@p.iam.gserviceaccount.com"])
    both = client.set_iam_policy(
        request={"resource": reg.name, "policy": policy_pb2.Policy(bindings=[viewer, editor], etag=fetched.etag)}
    )
    assert {b.role for b in both.bindings} == {"roles/cloudiot.viewer", "roles/cloudiot.editor"}
    cleared = client.set_iam_policy(request={"resource": reg.name, "policy": policy_pb2.Policy(bindings=[])})
    assert list(cleared.bindings) == [] and cleared.etag not in (both.etag, fetched.etag)

    # The owner (the admin token) holds every permission asked about.
    asked = ["cloudiot.devices.get", "cloudiot.devices.updateConfig", "cloudiot.registries.setIamPolicy"]
    granted = client.test_iam_permissions(resource=reg.name, permissions=asked)
    assert sorted(granted.permissions) == sorted(asked)

    ghost = f"{parent}/registries/{unique('ghost')}"
    with expect_error("NOT_FOUND"):
        client.get_iam_policy(resource=ghost)
    with expect_error("NOT_FOUND"):
        client.set_iam_policy(request={"resource": ghost, "policy": policy_pb2.Policy(bindings=[viewer])})
    # Nothing else about the registry changed.
    assert client.get_device_registry(name=reg.name) == reg


# --- the reference's rules (issue 12) ------------------------------------------------------------

def test_config_updates_are_limited_to_one_per_second_per_device(client, parent, expect_error):
    reg = new_registry(client, parent)
    dev = new_device(client, reg)
    client.modify_cloud_to_device_config(name=dev.name, binary_data=b"first")
    # Google's clients retry RESOURCE_EXHAUSTED on this call; without the retry it shows.
    with expect_error("RESOURCE_EXHAUSTED") as exc:
        client.modify_cloud_to_device_config(name=dev.name, binary_data=b"too soon", retry=None)
    assert exc.value.code == 429
    # A stale version is told as such whatever the rate.
    with expect_error("FAILED_PRECONDITION"):
        client.modify_cloud_to_device_config(
            request={"name": dev.name, "version_to_update": 1, "binary_data": b"stale"}, retry=None
        )
    wait_for_config_slot()
    assert client.modify_cloud_to_device_config(name=dev.name, binary_data=b"later", retry=None).version == 3


def test_a_gateway_with_bound_devices_is_deleted_once_they_are_unbound(client, parent, expect_error):
    reg = new_registry(client, parent)
    gateway = new_device(client, reg, gateway_config=GATEWAY)
    leaf = new_device(client, reg, gateway_config=NON_GATEWAY)
    client.bind_device_to_gateway(parent=reg.name, gateway_id=gateway.id, device_id=leaf.id)
    with expect_error("FAILED_PRECONDITION") as exc:
        client.delete_device(name=gateway.name)
    assert exc.value.code == 400
    assert client.get_device(name=gateway.name).id == gateway.id
    client.unbind_device_from_gateway(parent=reg.name, gateway_id=gateway.id, device_id=leaf.id)
    client.delete_device(name=gateway.name)
    with expect_error("NOT_FOUND"):
        client.get_device(name=gateway.name)
