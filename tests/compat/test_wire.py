"""Wire-level checks of the REST API with plain HTTP (requests).

These pin down the JSON conventions that the official clients depend on without saying so:
Google's error envelope, proto3 JSON parsing rules (both field-name spellings, enum names and
numbers, int64 as strings, base64 variants), the method-override header, and pagination defaults.
"""

from __future__ import annotations

import base64
import concurrent.futures
import socket

import pytest

from compat_support import (
    TIMESTAMP_RE,
    Rest,
    assert_google_error,
    ec_public_pem,
    fixture_text,
    self_signed_cert_pem,
    fresh_project,
    location_path,
    rsa_public_pem,
    unique,
    wait_for_config_slot,
)

INT_ENUMS = {"$alt": "json;enum-encoding=int"}


@pytest.fixture
def parent() -> str:
    return location_path(fresh_project())


@pytest.fixture
def registry(rest, parent) -> dict:
    return rest.create_registry(parent, {"id": unique("reg")})


def v1(name: str) -> str:
    return f"v1/{name}"


# --- authentication ----------------------------------------------------------------------------

def test_healthz_needs_no_token(anon_rest):
    assert anon_rest.get("healthz").status_code == 200


def test_requests_without_a_token_are_401(anon_rest, parent):
    assert_google_error(anon_rest.get(v1(f"{parent}/registries")), 401, "UNAUTHENTICATED")
    resp = anon_rest.post(v1(f"{parent}/registries"), {"id": unique("reg")})
    assert_google_error(resp, 401, "UNAUTHENTICATED")
    assert resp.headers.get("Content-Type", "").startswith("application/json")


@pytest.mark.parametrize(
    "header",
    ["Bearer wrong-token-0123456789", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "{token}x", "Bearer {token}x",
     "Bearer x{token}"],
)
def test_wrong_credentials_are_401(server, parent, header):
    rest = Rest(server.base_url, None)
    header = header.format(token=server.token)
    resp = rest.get(v1(f"{parent}/registries"), headers={"Authorization": header})
    assert_google_error(resp, 401, "UNAUTHENTICATED")


def _read_response(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """Reads one HTTP/1.1 response with a Content-Length body: (status line, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.decode().split(":", 1) for ln in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return status, headers, body


@pytest.mark.parametrize(
    "path, with_token, status",
    [
        ("registries/{reg}:getIamPolicy", True, b"404"),  # the registry does not exist
        ("registries/{reg}:noSuchVerb", True, b"404"),
        ("registries", False, b"401"),  # no token
    ],
)
def test_an_early_error_does_not_silently_drop_the_connection(server, parent, path, with_token, status):
    """An answer sent before the request body has arrived must leave the connection usable, or
    say `Connection: close`.

    Otherwise a keep-alive client (requests, under google-cloud-iot's REST transport) sends its
    next call into a connection the server has already closed and fails with a connection error.
    The body is held back until the answer is in, which makes the timing deterministic.
    """
    body = b'{"options": {}}'
    target = f"/v1/{parent}/{path.format(reg=unique('reg'))}"
    auth = f"Authorization: Bearer {server.token}\r\n" if with_token else ""
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(head)
        # A server may answer before the body arrives, or wait for it; both are fine as long as the
        # connection stays usable afterwards (or the server says it will close it).
        sock.settimeout(0.5)
        try:
            early = sock.recv(65536, socket.MSG_PEEK)
        except socket.timeout:
            early = b""
        sock.settimeout(10)
        if not early:
            sock.sendall(body)
        first_status, headers, _ = _read_response(sock)
        assert first_status.split()[1] == status, first_status
        if "close" in headers.get("connection", "").lower():
            return  # announced: the client will not reuse the connection
        try:
            if early:
                sock.sendall(body)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            second_status, _, _ = _read_response(sock)
        except (OSError, AssertionError) as e:
            pytest.fail(
                f"the server answered {first_status.decode()} without `Connection: close`, then closed the "
                f"connection; the next request on it failed: {e!r}"
            )
        assert second_status.split()[1] == b"200", second_status


def test_nothing_is_created_without_a_token(anon_rest, rest, parent):
    rid = unique("reg")
    assert anon_rest.post(v1(f"{parent}/registries"), {"id": rid}).status_code == 401
    assert_google_error(rest.get(v1(f"{parent}/registries/{rid}")), 404, "NOT_FOUND")


# --- JSON parsing ------------------------------------------------------------------------------

def test_snake_case_field_names_are_accepted(rest, parent):
    project = parent.split("/")[1]
    reg = rest.create_registry(parent, {
        "id": unique("reg"),
        "event_notification_configs": [
            {"subfolder_matches": "alerts", "pubsub_topic_name": f"projects/{project}/topics/alerts"}
        ],
        "state_notification_config": {"pubsub_topic_name": f"projects/{project}/topics/state-topic"},
        "mqtt_config": {"mqtt_enabled_state": "MQTT_DISABLED"},
        "log_level": "INFO",
    })
    # Output always uses lowerCamel names.
    assert reg["eventNotificationConfigs"] == [
        {"subfolderMatches": "alerts", "pubsubTopicName": f"projects/{project}/topics/alerts"}
    ]
    assert reg["stateNotificationConfig"] == {"pubsubTopicName": f"projects/{project}/topics/state-topic"}
    assert reg["mqttConfig"] == {"mqttEnabledState": "MQTT_DISABLED"}
    assert reg["logLevel"] == "INFO"

    dev = rest.create_device(reg["name"], {
        "id": unique("dev"),
        "credentials": [{"public_key": {"format": "RSA_PEM", "key": rsa_public_pem()}}],
        "gateway_config": {"gateway_type": "GATEWAY", "gateway_auth_method": "ASSOCIATION_ONLY"},
        "log_level": "DEBUG",
    })
    assert dev["credentials"][0]["publicKey"]["format"] == "RSA_PEM"
    assert dev["gatewayConfig"]["gatewayType"] == "GATEWAY"
    assert dev["logLevel"] == "DEBUG"

    cfg = rest.ok(rest.post(v1(f"{dev['name']}:modifyCloudToDeviceConfig"),
                            {"binary_data": base64.b64encode(b"snake").decode(), "version_to_update": "1"}))
    assert cfg["version"] == "2"
    assert base64.b64decode(cfg["binaryData"]) == b"snake"

    patched = rest.ok(rest.patch(v1(dev["name"]), {"blocked": True}, params={"update_mask": "blocked"}))
    assert patched["blocked"] is True


def test_enum_numbers_are_accepted(rest, parent):
    # What the GAPIC REST transport sends: numbers for enums, and $alt=json;enum-encoding=int.
    reg = rest.ok(rest.post(
        v1(f"{parent}/registries"),
        {"id": unique("reg"), "mqttConfig": {"mqttEnabledState": 2}, "httpConfig": {"httpEnabledState": 1},
         "logLevel": 40},
        params=INT_ENUMS,
    ))
    # Either spelling is valid proto3 JSON for a client that asked for int enums.
    assert reg["mqttConfig"]["mqttEnabledState"] in ("MQTT_DISABLED", 2)
    assert reg["httpConfig"]["httpEnabledState"] in ("HTTP_ENABLED", 1)
    assert reg["logLevel"] in ("DEBUG", 40)
    # Without the parameter the answer uses names.
    plain = rest.ok(rest.get(v1(reg["name"])))
    assert plain["mqttConfig"] == {"mqttEnabledState": "MQTT_DISABLED"}
    assert plain["httpConfig"] == {"httpEnabledState": "HTTP_ENABLED"}
    assert plain["logLevel"] == "DEBUG"

    # PublicKeyFormat numbers are not in declaration order: RSA_PEM=3, ES256_PEM=2.
    dev = rest.ok(rest.post(
        v1(f"{reg['name']}/devices"),
        {"id": unique("dev"),
         "credentials": [{"publicKey": {"format": 3, "key": rsa_public_pem()}},
                         {"publicKey": {"format": 2, "key": ec_public_pem()}}],
         "gatewayConfig": {"gatewayType": 1, "gatewayAuthMethod": 3},
         "logLevel": 20},
        params=INT_ENUMS,
    ))
    got = rest.ok(rest.get(v1(dev["name"])))
    assert [c["publicKey"]["format"] for c in got["credentials"]] == ["RSA_PEM", "ES256_PEM"]
    assert got["gatewayConfig"]["gatewayType"] == "GATEWAY"
    assert got["gatewayConfig"]["gatewayAuthMethod"] == "ASSOCIATION_AND_DEVICE_AUTH_TOKEN"
    assert got["logLevel"] == "ERROR"

    # Enum numbers in query strings too.
    other = rest.create_device(reg["name"], {"id": unique("dev")})
    listed = rest.ok(rest.get(v1(f"{reg['name']}/devices"),
                              params={"gatewayListOptions.gatewayType": "1", **INT_ENUMS}))
    assert [d["id"] for d in listed["devices"]] == [dev["id"]]
    listed = rest.ok(rest.get(v1(f"{reg['name']}/devices"),
                              params={"gatewayListOptions.gatewayType": "NON_GATEWAY"}))
    assert [d["id"] for d in listed["devices"]] == [other["id"]]


def test_unknown_enum_values_are_rejected(rest, parent):
    resp = rest.post(v1(f"{parent}/registries"), {"id": unique("reg"), "logLevel": "LOUD"})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")
    resp = rest.post(v1(f"{parent}/registries"), {"id": unique("reg"), "mqttConfig": {"mqttEnabledState": "ON"}})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")


def test_method_override_header_turns_post_into_patch(rest, registry):
    dev = rest.create_device(registry["name"], {"id": unique("dev"), "metadata": {"k": "v"}})
    resp = rest.post(v1(dev["name"]), {"blocked": True}, params={"updateMask": "blocked"},
                     headers={"X-HTTP-Method-Override": "PATCH"})
    patched = rest.ok(resp)
    assert patched["blocked"] is True
    assert patched["metadata"] == {"k": "v"}
    assert rest.ok(rest.get(v1(dev["name"])))["blocked"] is True

    resp = rest.post(v1(registry["name"]), {"logLevel": "ERROR"}, params={"updateMask": "logLevel"},
                     headers={"X-HTTP-Method-Override": "PATCH"})
    assert rest.ok(resp)["logLevel"] == "ERROR"


def test_unknown_json_fields_are_rejected(rest, parent, registry):
    resp = rest.post(v1(f"{parent}/registries"), {"id": unique("reg"), "bogusField": 1})
    err = assert_google_error(resp, 400, "INVALID_ARGUMENT")
    assert "bogusField" in err["message"]
    resp = rest.post(v1(f"{registry['name']}/devices"),
                     {"id": unique("dev"), "gatewayConfig": {"gatewayType": "GATEWAY", "colour": "red"}})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")
    # Nothing was created by the refused requests.
    listed = rest.ok(rest.get(v1(f"{registry['name']}/devices")))
    assert listed.get("devices", []) == []


@pytest.mark.parametrize(
    "raw",
    ['{"id": ', "not json", '["a", "list"]', '{"id": "dup", "id": 5}', "", '{"id": "x"} trailing'],
    ids=["truncated", "text", "array", "wrong-type-dup", "empty-body", "trailing-garbage"],
)
def test_malformed_json_is_400(rest, parent, raw):
    # (An empty body fails either as bad JSON or for lack of an id: 400 both ways.)
    resp = rest.request("POST", v1(f"{parent}/registries"), data=raw, headers={"Content-Type": "application/json"})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")


def test_wrongly_typed_fields_are_400(rest, registry):
    for body in ({"id": unique("dev"), "blocked": "yes"},
                 {"id": unique("dev"), "metadata": ["a"]},
                 {"id": 12345},
                 {"id": unique("dev"), "credentials": {"publicKey": {}}}):
        resp = rest.post(v1(f"{registry['name']}/devices"), body)
        assert_google_error(resp, 400, "INVALID_ARGUMENT")


# --- output conventions ------------------------------------------------------------------------

def test_int64_fields_are_strings_and_timestamps_are_utc(rest, registry):
    dev = rest.create_device(registry["name"], {"id": unique("dev")})
    assert isinstance(dev["numId"], str) and dev["numId"].isdigit() and int(dev["numId"]) > 0
    assert dev["name"] == f"{registry['name']}/devices/{dev['numId']}"
    assert dev["config"]["version"] == "1"
    assert TIMESTAMP_RE.match(dev["config"]["cloudUpdateTime"]), dev["config"]

    # versionToUpdate may be a JSON number or a string.
    cfg = rest.ok(rest.post(v1(f"{dev['name']}:modifyCloudToDeviceConfig"),
                            {"versionToUpdate": 1, "binaryData": base64.b64encode(b"a").decode()}))
    assert cfg["version"] == "2"
    assert TIMESTAMP_RE.match(cfg["cloudUpdateTime"]), cfg
    assert "deviceAckTime" not in cfg
    wait_for_config_slot()
    cfg = rest.ok(rest.post(v1(f"{dev['name']}:modifyCloudToDeviceConfig"),
                            {"versionToUpdate": "2", "binaryData": base64.b64encode(b"b").decode()}))
    assert cfg["version"] == "3"

    history = rest.ok(rest.get(v1(f"{dev['name']}/configVersions")))["deviceConfigs"]
    assert [c["version"] for c in history] == ["3", "2", "1"]
    for c in history:
        assert TIMESTAMP_RE.match(c["cloudUpdateTime"]), c

    listed = rest.ok(rest.get(v1(f"{registry['name']}/devices")))["devices"]
    # Without a fieldMask a list carries the identifiers only.
    assert listed == [{"id": dev["id"], "name": dev["name"], "numId": dev["numId"]}]

    # numeric ids filter the list as strings in the query, the way clients send uint64.
    filtered = rest.ok(rest.get(v1(f"{registry['name']}/devices"), params={"deviceNumIds": dev["numId"]}))
    assert [d["id"] for d in filtered["devices"]] == [dev["id"]]


def test_version_mismatch_is_failed_precondition(rest, registry):
    dev = rest.create_device(registry["name"], {"id": unique("dev")})
    resp = rest.post(v1(f"{dev['name']}:modifyCloudToDeviceConfig"),
                     {"versionToUpdate": "7", "binaryData": base64.b64encode(b"x").decode()})
    assert_google_error(resp, 400, "FAILED_PRECONDITION")
    assert rest.ok(rest.get(v1(dev["name"])))["config"]["version"] == "1"


@pytest.mark.parametrize("encode", [
    lambda b: base64.b64encode(b).decode(),
    lambda b: base64.b64encode(b).decode().rstrip("="),
    lambda b: base64.urlsafe_b64encode(b).decode(),
    lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="),
], ids=["std-padded", "std-unpadded", "url-padded", "url-unpadded"])
def test_bytes_accept_every_base64_flavour(rest, registry, encode):
    payload = b"\xfb\xef\xff\x00\x10"  # needs '+' / '/' (or '-' / '_') and padding
    dev = rest.create_device(registry["name"], {"id": unique("dev")})
    cfg = rest.ok(rest.post(v1(f"{dev['name']}:modifyCloudToDeviceConfig"), {"binaryData": encode(payload)}))
    # Output is standard, padded base64.
    assert cfg["binaryData"] == base64.b64encode(payload).decode()


def test_bad_base64_is_invalid_argument(rest, registry):
    dev = rest.create_device(registry["name"], {"id": unique("dev")})
    resp = rest.post(v1(f"{dev['name']}:modifyCloudToDeviceConfig"), {"binaryData": "not*base64!"})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")


def test_deletes_answer_an_empty_object(rest, parent):
    reg = rest.create_registry(parent, {"id": unique("reg")})
    dev = rest.create_device(reg["name"], {"id": unique("dev")})
    assert rest.ok(rest.delete(v1(f"{reg['name']}/devices/{dev['numId']}"))) == {}
    assert rest.ok(rest.delete(v1(reg["name"]))) == {}


def test_standard_query_parameters_are_tolerated(rest, registry):
    params = {"alt": "json", "prettyPrint": "false", "$.xgafv": "2", "quotaUser": "someone"}
    got = rest.ok(rest.get(v1(registry["name"]), params=params))
    assert got["id"] == registry["id"]


# --- request validation -----------------------------------------------------------------------

def test_patch_requires_an_update_mask(rest, registry):
    dev = rest.create_device(registry["name"], {"id": unique("dev")})
    assert_google_error(rest.patch(v1(dev["name"]), {"blocked": True}), 400, "INVALID_ARGUMENT")
    assert_google_error(rest.patch(v1(registry["name"]), {"logLevel": "INFO"}), 400, "INVALID_ARGUMENT")
    err = assert_google_error(
        rest.patch(v1(dev["name"]), {"blocked": True}, params={"updateMask": "lastHeartbeatTime"}),
        400, "INVALID_ARGUMENT",
    )
    assert err["message"]
    # proto3 JSON may omit a false bool.
    assert rest.ok(rest.get(v1(dev["name"]))).get("blocked", False) is False


def test_server_set_fields_are_refused_on_create(rest, parent, registry):
    resp = rest.post(v1(f"{parent}/registries"), {"id": unique("reg"), "name": f"{parent}/registries/x"})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")
    resp = rest.post(v1(f"{registry['name']}/devices"), {"id": unique("dev"), "numId": "42"})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")


def test_duplicate_and_missing_resources(rest, parent):
    rid = unique("reg")
    reg = rest.create_registry(parent, {"id": rid})
    err = assert_google_error(rest.post(v1(f"{parent}/registries"), {"id": rid}), 409, "ALREADY_EXISTS")
    assert rid in err["message"]
    dev = rest.create_device(reg["name"], {"id": unique("dev")})
    assert_google_error(rest.post(v1(f"{reg['name']}/devices"), {"id": dev["id"]}), 409, "ALREADY_EXISTS")
    assert_google_error(rest.get(v1(f"{reg['name']}/devices/{unique('ghost')}")), 404, "NOT_FOUND")
    assert_google_error(rest.get(v1(f"{parent}/registries/{unique('ghost')}")), 404, "NOT_FOUND")
    assert_google_error(rest.delete(v1(reg["name"])), 400, "FAILED_PRECONDITION")


def test_send_command_without_subscriber(rest, registry):
    dev = rest.create_device(registry["name"], {"id": unique("dev")})
    resp = rest.post(v1(f"{dev['name']}:sendCommandToDevice"),
                     {"binaryData": base64.b64encode(b"go").decode(), "subfolder": "motor"})
    err = assert_google_error(resp, 400, "FAILED_PRECONDITION")
    assert "is not subscribed to the commands topic" in err["message"]


def test_unbinding_a_pair_that_is_not_bound_is_404(rest, registry):
    gw = rest.create_device(registry["name"], {"id": unique("gw"), "gatewayConfig": {"gatewayType": "GATEWAY"}})
    dev = rest.create_device(registry["name"], {"id": unique("dev")})
    resp = rest.post(v1(f"{registry['name']}:unbindDeviceFromGateway"), {"gatewayId": gw["id"], "deviceId": dev["id"]})
    assert_google_error(resp, 404, "NOT_FOUND")
    assert rest.ok(rest.post(v1(f"{registry['name']}:bindDeviceToGateway"),
                             {"gatewayId": gw["id"], "deviceId": dev["id"]})) == {}
    assert rest.ok(rest.post(v1(f"{registry['name']}:unbindDeviceFromGateway"),
                             {"gatewayId": gw["numId"], "deviceId": dev["numId"]})) == {}


# --- pagination --------------------------------------------------------------------------------

def test_default_page_size_is_100(rest, registry):
    created = [rest.create_device(registry["name"], {"id": f"dev-{i:03d}"})["id"] for i in range(101)]
    first = rest.ok(rest.get(v1(f"{registry['name']}/devices")))
    assert len(first["devices"]) == 100
    assert first.get("nextPageToken")
    second = rest.ok(rest.get(v1(f"{registry['name']}/devices"), params={"pageToken": first["nextPageToken"]}))
    assert len(second["devices"]) == 1
    assert not second.get("nextPageToken")
    assert sorted(d["id"] for d in first["devices"] + second["devices"]) == created

    # pageSize 0 means the default; a large page holds everything.
    zero = rest.ok(rest.get(v1(f"{registry['name']}/devices"), params={"pageSize": 0}))
    assert len(zero["devices"]) == 100
    big = rest.ok(rest.get(v1(f"{registry['name']}/devices"), params={"pageSize": 500}))
    assert len(big["devices"]) == 101 and not big.get("nextPageToken")


def test_garbage_page_token_is_invalid_argument(rest, parent, registry):
    resp = rest.get(v1(f"{parent}/registries"), params={"pageToken": "definitely-not-a-token"})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")
    resp = rest.get(v1(f"{registry['name']}/devices"), params={"pageToken": "!!!"})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")


# --- credentials -------------------------------------------------------------------------------

def test_credential_expiration_time_is_normalised_to_utc(rest, registry):
    dev = rest.create_device(registry["name"], {
        "id": unique("dev"),
        "credentials": [{"publicKey": {"format": "ES256_PEM", "key": ec_public_pem()},
                         "expirationTime": "2031-01-01T01:30:00+01:30"}],
    })
    assert dev["credentials"][0]["expirationTime"] == "2031-01-01T00:00:00Z"
    resp = rest.post(v1(f"{registry['name']}/devices"), {
        "id": unique("dev"),
        "credentials": [{"publicKey": {"format": "ES256_PEM", "key": ec_public_pem()},
                         "expirationTime": "next tuesday"}],
    })
    assert_google_error(resp, 400, "INVALID_ARGUMENT")


def test_registry_ca_certificates_gate_device_credentials(rest, parent):
    ca = fixture_text("ca_cert.pem")
    reg = rest.create_registry(parent, {
        "id": unique("reg"),
        "credentials": [{"publicKeyCertificate": {"format": "X509_CERTIFICATE_PEM", "certificate": ca}}],
    })
    cert = reg["credentials"][0]["publicKeyCertificate"]
    assert cert["format"] == "X509_CERTIFICATE_PEM"
    details = cert["x509Details"]  # output only, computed by the server
    assert "Ferrocore Test RSA CA" in details["subject"]
    assert "Ferrocore Test RSA CA" in details["issuer"]
    assert TIMESTAMP_RE.match(details["startTime"]) and TIMESTAMP_RE.match(details["expiryTime"]), details
    assert details["startTime"] < details["expiryTime"]
    assert details["signatureAlgorithm"] and details["publicKeyType"], details

    # With a CA on the registry, new device credentials must be certificates it signed.
    signed = rest.create_device(reg["name"], {
        "id": unique("dev"),
        "credentials": [{"publicKey": {"format": "ES256_X509_PEM", "key": fixture_text("device_signed_by_ca.pem")}}],
    })
    assert signed["credentials"][0]["publicKey"]["format"] == "ES256_X509_PEM"
    for key in ({"format": "ES256_X509_PEM", "key": self_signed_cert_pem("ec")},
                {"format": "ES256_PEM", "key": ec_public_pem()},
                {"format": "RSA_X509_PEM", "key": ca}):
        resp = rest.post(v1(f"{reg['name']}/devices"), {"id": unique("dev"), "credentials": [{"publicKey": key}]})
        assert_google_error(resp, 400, "INVALID_ARGUMENT")

    # Registry certificates are replaced through the mask; existing devices are unaffected.
    patched = rest.ok(rest.patch(v1(reg["name"]), {"credentials": []}, params={"updateMask": "credentials"}))
    assert patched.get("credentials", []) == []
    assert rest.ok(rest.get(v1(signed["name"])))["credentials"] == signed["credentials"]
    rest.create_device(reg["name"], {
        "id": unique("dev"), "credentials": [{"publicKey": {"format": "ES256_PEM", "key": ec_public_pem()}}],
    })

    resp = rest.post(v1(f"{parent}/registries"), {
        "id": unique("reg"),
        "credentials": [{"publicKeyCertificate": {"format": "X509_CERTIFICATE_PEM", "certificate": "junk"}}],
    })
    assert_google_error(resp, 400, "INVALID_ARGUMENT")


# --- limits and concurrency --------------------------------------------------------------------

def test_config_payload_limit_is_64_kib(rest, registry):
    dev = rest.create_device(registry["name"], {"id": unique("dev")})
    at_limit = base64.b64encode(b"\x01" * 64 * 1024).decode()
    cfg = rest.ok(rest.post(v1(f"{dev['name']}:modifyCloudToDeviceConfig"), {"binaryData": at_limit}))
    assert cfg["version"] == "2"
    over = base64.b64encode(b"\x01" * (64 * 1024 + 1)).decode()
    resp = rest.post(v1(f"{dev['name']}:modifyCloudToDeviceConfig"), {"binaryData": over})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")
    assert rest.ok(rest.get(v1(dev["name"])))["config"]["version"] == "2"


def test_concurrent_compare_and_set_lets_exactly_one_writer_win(server, rest, registry):
    dev = rest.create_device(registry["name"], {"id": unique("dev")})
    writers = 8

    def attempt(i: int):
        own = Rest(server.base_url, server.token)
        return own.post(v1(f"{dev['name']}:modifyCloudToDeviceConfig"),
                        {"versionToUpdate": "1", "binaryData": base64.b64encode(f"writer {i}".encode()).decode()})

    with concurrent.futures.ThreadPoolExecutor(max_workers=writers) as pool:
        responses = list(pool.map(attempt, range(writers)))
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) == 1, [(r.status_code, r.text) for r in responses]
    for r in responses:
        # A loser finds the version moved on, or, racing the winner's write, the device's one
        # config update per second taken.
        if r.status_code == 429:
            assert_google_error(r, 429, "RESOURCE_EXHAUSTED")
        elif r.status_code != 200:
            assert_google_error(r, 400, "FAILED_PRECONDITION")
    current = rest.ok(rest.get(v1(dev["name"])))["config"]
    assert current["version"] == "2"
    assert current["binaryData"] == winners[0].json()["binaryData"]


def test_concurrent_creates_of_one_id_make_one_device(server, rest, registry):
    did = unique("dev")
    attempts = 8

    def attempt(_):
        return Rest(server.base_url, server.token).post(v1(f"{registry['name']}/devices"), {"id": did})

    with concurrent.futures.ThreadPoolExecutor(max_workers=attempts) as pool:
        responses = list(pool.map(attempt, range(attempts)))
    assert sum(r.status_code == 200 for r in responses) == 1, [(r.status_code, r.text) for r in responses]
    for r in responses:
        if r.status_code != 200:
            assert_google_error(r, 409, "ALREADY_EXISTS")
    listed = rest.ok(rest.get(v1(f"{registry['name']}/devices")))["devices"]
    assert [d["id"] for d in listed] == [did]
