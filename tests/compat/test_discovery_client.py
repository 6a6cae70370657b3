"""google-api-python-client (discovery based) against Ferrocore.

This is how Google's own IoT Core samples (manager.py) and gcloud-era scripts talked to the API:
`discovery.build("cloudiot", "v1")` with the discovery document that ships inside the package,
JSON bodies in lowerCamel with enum names, and `googleapiclient.errors.HttpError` on failure.
The calls below follow the samples' request shapes closely.
"""

from __future__ import annotations

import base64
import json
import os

import google.oauth2.credentials
import googleapiclient
import httplib2
import pytest
from googleapiclient import discovery
from googleapiclient.errors import HttpError

from compat_support import (
    fresh_project,
    location_path,
    rsa_public_pem,
    ec_public_pem,
    same_pem,
    self_signed_cert_pem,
    unique,
    wait_for_config_slot,
)


def build(server, **auth):
    return discovery.build(
        "cloudiot",
        "v1",
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": f"{server.base_url}/"},
        **auth,
    )


@pytest.fixture(scope="module")
def cloudiot(server):
    # google-auth credentials holding just an access token: google-auth-httplib2 sends it as
    # `Authorization: Bearer <token>` on every request.
    svc = build(server, credentials=google.oauth2.credentials.Credentials(token=server.token))
    yield svc
    svc.close()


@pytest.fixture
def registries(cloudiot):
    return cloudiot.projects().locations().registries()


@pytest.fixture
def parent() -> str:
    return location_path(fresh_project())


def http_error(call) -> HttpError:
    with pytest.raises(HttpError) as exc:
        call.execute()
    return exc.value


def error_body(err: HttpError) -> dict:
    return json.loads(err.content)["error"]


def b64url(data: bytes) -> str:
    # What Google's Python samples sent for binaryData.
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64decode_std(text: str) -> bytes:
    # Responses carry proto3 JSON bytes: standard alphabet, padded.
    return base64.b64decode(text, validate=True)


def test_static_discovery_document_is_shipped():
    doc = os.path.join(os.path.dirname(googleapiclient.__file__), "discovery_cache", "documents", "cloudiot.v1.json")
    with open(doc) as f:
        meta = json.load(f)
    assert meta["name"] == "cloudiot" and meta["version"] == "v1"


def test_without_credentials_the_server_answers_401(server, parent):
    anon = build(server, http=httplib2.Http(proxy_info=None))
    err = http_error(anon.projects().locations().registries().list(parent=parent))
    assert err.resp.status == 401
    assert error_body(err)["status"] == "UNAUTHENTICATED"


def test_registry_lifecycle_and_pagination(registries, parent):
    project = parent.split("/")[1]
    ids = sorted(unique(f"reg{i}") for i in range(5))
    for rid in ids:
        body = {
            "id": rid,
            "eventNotificationConfigs": [{"pubsubTopicName": f"projects/{project}/topics/telemetry"}],
            "stateNotificationConfig": {"pubsubTopicName": f"projects/{project}/topics/state"},
            "mqttConfig": {"mqttEnabledState": "MQTT_ENABLED"},
            "httpConfig": {"httpEnabledState": "HTTP_ENABLED"},
        }
        created = registries.create(parent=parent, body=body).execute()
        assert created["id"] == rid
        assert created["name"] == f"{parent}/registries/{rid}"
        assert created["mqttConfig"] == {"mqttEnabledState": "MQTT_ENABLED"}
        assert created["httpConfig"] == {"httpEnabledState": "HTTP_ENABLED"}
        assert created["eventNotificationConfigs"] == body["eventNotificationConfigs"]

    got = registries.get(name=f"{parent}/registries/{ids[0]}").execute()
    assert got["stateNotificationConfig"] == {"pubsubTopicName": f"projects/{project}/topics/state"}

    # list / list_next, the way the discovery client pages.
    seen, pages = [], 0
    request = registries.list(parent=parent, pageSize=2)
    while request is not None:
        response = request.execute()
        page = response.get("deviceRegistries", [])
        assert len(page) <= 2
        seen += [r["id"] for r in page]
        pages += 1
        request = registries.list_next(previous_request=request, previous_response=response)
    assert seen == ids
    assert pages >= 3

    name = f"{parent}/registries/{ids[1]}"
    patched = registries.patch(
        name=name,
        updateMask="mqttConfig.mqttEnabledState,logLevel",
        body={"mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"}, "logLevel": "ERROR"},
    ).execute()
    assert patched["mqttConfig"] == {"mqttEnabledState": "MQTT_DISABLED"}
    assert patched["logLevel"] == "ERROR"
    assert patched["httpConfig"] == {"httpEnabledState": "HTTP_ENABLED"}
    # Masks may also use proto (snake_case) paths, as Terraform did.
    patched = registries.patch(
        name=name,
        updateMask="http_config.http_enabled_state,state_notification_config.pubsub_topic_name",
        body={"httpConfig": {"httpEnabledState": "HTTP_DISABLED"},
              "stateNotificationConfig": {"pubsubTopicName": f"projects/{project}/topics/state2"}},
    ).execute()
    assert patched["httpConfig"] == {"httpEnabledState": "HTTP_DISABLED"}
    assert patched["stateNotificationConfig"]["pubsubTopicName"] == f"projects/{project}/topics/state2"
    assert registries.get(name=name).execute() == patched

    # Deletes answer with an empty object.
    for rid in ids:
        assert registries.delete(name=f"{parent}/registries/{rid}").execute() == {}
    assert registries.list(parent=parent).execute().get("deviceRegistries", []) == []


def test_http_errors_carry_status_and_message(registries, parent):
    rid = unique("reg")
    registries.create(parent=parent, body={"id": rid}).execute()

    err = http_error(registries.create(parent=parent, body={"id": rid}))
    assert err.resp.status == 409
    assert error_body(err)["status"] == "ALREADY_EXISTS"
    assert rid in err.reason  # HttpError shows the server's message

    missing = f"{parent}/registries/{unique('missing')}"
    err = http_error(registries.get(name=missing))
    assert err.resp.status == 404
    body = error_body(err)
    assert body["status"] == "NOT_FOUND" and body["code"] == 404
    assert err.reason == body["message"] and body["message"]

    err = http_error(registries.create(parent=parent, body={"id": "1bad"}))
    assert err.resp.status == 400
    assert error_body(err)["status"] == "INVALID_ARGUMENT"

    err = http_error(registries.devices().get(name=f"{parent}/registries/{rid}/devices/{unique('ghost')}"))
    assert err.resp.status == 404

    err = http_error(registries.patch(name=f"{parent}/registries/{rid}", updateMask="id", body={"id": "other"}))
    assert err.resp.status == 400


def test_device_flow_like_the_manager_sample(registries, parent):
    reg_name = registries.create(parent=parent, body={"id": unique("reg")}).execute()["name"]
    devices = registries.devices()

    # create_rs256_device: an RSA certificate
    cert = self_signed_cert_pem("rsa")
    rs = devices.create(
        parent=reg_name,
        body={"id": unique("rs256"), "credentials": [{"publicKey": {"format": "RSA_X509_PEM", "key": cert}}]},
    ).execute()
    assert rs["credentials"][0]["publicKey"]["format"] == "RSA_X509_PEM"
    assert same_pem(rs["credentials"][0]["publicKey"]["key"], cert)
    assert isinstance(rs["numId"], str) and rs["numId"].isdigit()
    assert rs["name"] == f"{reg_name}/devices/{rs['numId']}"

    # create_es256_device: a bare P-256 key, plus metadata
    es = devices.create(
        parent=reg_name,
        body={
            "id": unique("es256"),
            "credentials": [{"publicKey": {"format": "ES256_PEM", "key": ec_public_pem()}}],
            "metadata": {"building": "b1", "floor": "3"},
        },
    ).execute()
    assert es["metadata"] == {"building": "b1", "floor": "3"}

    # create_unauth_device: no credentials at all
    unauth = devices.create(parent=reg_name, body={"id": unique("unauth")}).execute()
    assert "credentials" not in unauth or unauth["credentials"] == []

    # get_device by string id and numeric id
    got = devices.get(name=f"{reg_name}/devices/{es['id']}").execute()
    assert got["numId"] == es["numId"] and got["id"] == es["id"]
    assert got["config"]["version"] == "1"
    assert devices.get(name=f"{reg_name}/devices/{es['numId']}").execute() == got
    only_meta = devices.get(name=got["name"], fieldMask="metadata").execute()
    assert only_meta["metadata"] == {"building": "b1", "floor": "3"}
    assert "credentials" not in only_meta

    # list_devices with paging and a field mask
    listed, request = [], devices.list(parent=reg_name, pageSize=2, fieldMask="config,gatewayConfig")
    while request is not None:
        response = request.execute()
        listed += response.get("devices", [])
        request = devices.list_next(previous_request=request, previous_response=response)
    assert sorted(d["id"] for d in listed) == sorted([rs["id"], es["id"], unauth["id"]])
    assert all(d["config"]["version"] == "1" for d in listed)
    picked = devices.list(parent=reg_name, deviceIds=[rs["id"], unauth["id"]]).execute()["devices"]
    assert sorted(d["id"] for d in picked) == sorted([rs["id"], unauth["id"]])
    picked = devices.list(parent=reg_name, deviceNumIds=[es["numId"]]).execute()["devices"]
    assert [d["id"] for d in picked] == [es["id"]]

    # patch_es256_auth / patch_rsa256_auth: replace credentials; then block via updateMask
    patched = devices.patch(
        name=f"{reg_name}/devices/{unauth['id']}",
        updateMask="credentials",
        body={"credentials": [{"publicKey": {"format": "RSA_PEM", "key": rsa_public_pem()}}]},
    ).execute()
    assert [c["publicKey"]["format"] for c in patched["credentials"]] == ["RSA_PEM"]
    blocked = devices.patch(name=patched["name"], updateMask="blocked", body={"blocked": True}).execute()
    assert blocked["blocked"] is True
    assert len(blocked["credentials"]) == 1

    # set_config: urlsafe base64 data and an integer versionToUpdate, as the sample sent them
    payload = b"\xfb\xff\xfe config \x00"  # encodes to '+' and '/' in standard base64
    assert "-" in b64url(payload) and "_" in b64url(payload)
    cfg = devices.modifyCloudToDeviceConfig(
        name=f"{reg_name}/devices/{es['id']}", body={"versionToUpdate": 1, "binaryData": b64url(payload)}
    ).execute()
    assert cfg["version"] == "2"
    assert b64decode_std(cfg["binaryData"]) == payload
    wait_for_config_slot()
    cfg = devices.modifyCloudToDeviceConfig(
        name=f"{reg_name}/devices/{es['numId']}", body={"versionToUpdate": "0", "binaryData": b64url(b"three")}
    ).execute()
    assert cfg["version"] == "3"
    err = http_error(devices.modifyCloudToDeviceConfig(
        name=f"{reg_name}/devices/{es['id']}", body={"versionToUpdate": 2, "binaryData": b64url(b"stale")}
    ))
    assert err.resp.status == 400
    assert error_body(err)["status"] == "FAILED_PRECONDITION"

    # get_config_versions: newest first
    versions = devices.configVersions().list(name=f"{reg_name}/devices/{es['id']}").execute()["deviceConfigs"]
    assert [v["version"] for v in versions] == ["3", "2", "1"]
    assert b64decode_std(versions[0]["binaryData"]) == b"three"
    assert b64decode_std(versions[1]["binaryData"]) == payload
    two = devices.configVersions().list(name=f"{reg_name}/devices/{es['id']}", numVersions=2).execute()
    assert [v["version"] for v in two["deviceConfigs"]] == ["3", "2"]

    # get_state: nothing reported yet
    states = devices.states().list(name=f"{reg_name}/devices/{es['id']}", numStates=5).execute()
    assert states.get("deviceStates", []) == []

    # send_command: no device is connected
    err = http_error(devices.sendCommandToDevice(
        name=f"{reg_name}/devices/{es['id']}", body={"binaryData": b64url(b"cmd")}
    ))
    assert err.resp.status == 400
    assert error_body(err)["status"] == "FAILED_PRECONDITION"
    assert "is not subscribed to the commands topic" in err.reason

    # delete_device, then delete_registry
    for d in (rs, es, unauth):
        assert devices.delete(name=f"{reg_name}/devices/{d['id']}").execute() == {}
    err = http_error(devices.get(name=f"{reg_name}/devices/{es['id']}"))
    assert err.resp.status == 404
    assert registries.delete(name=reg_name).execute() == {}


def test_gateway_binding_like_the_gateway_sample(registries, parent):
    reg_name = registries.create(parent=parent, body={"id": unique("reg")}).execute()["name"]
    devices = registries.devices()
    gateway = devices.create(
        parent=reg_name,
        body={
            "id": unique("gateway"),
            "credentials": [{"publicKey": {"format": "RSA_X509_PEM", "key": self_signed_cert_pem("rsa")}}],
            "gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"},
        },
    ).execute()
    assert gateway["gatewayConfig"]["gatewayType"] == "GATEWAY"
    assert gateway["gatewayConfig"]["gatewayAuthMethod"] == "ASSOCIATION_ONLY"
    # The sample's create_device wrote this body with proto (snake_case) field names.
    device = devices.create(
        parent=reg_name,
        body={"id": unique("bound"), "gateway_config": {"gateway_type": "NON_GATEWAY",
                                                        "gateway_auth_method": "ASSOCIATION_ONLY"}},
    ).execute()
    assert device["gatewayConfig"] == {"gatewayType": "NON_GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"}

    assert registries.bindDeviceToGateway(
        parent=reg_name, body={"gatewayId": gateway["id"], "deviceId": device["id"]}
    ).execute() == {}

    bound = devices.list(parent=reg_name, gatewayListOptions_associationsGatewayId=gateway["id"]).execute()
    assert [d["id"] for d in bound["devices"]] == [device["id"]]
    gateways = devices.list(parent=reg_name, gatewayListOptions_associationsDeviceId=device["numId"]).execute()
    assert [d["id"] for d in gateways["devices"]] == [gateway["id"]]
    only_gw = devices.list(parent=reg_name, gatewayListOptions_gatewayType="GATEWAY").execute()
    assert [d["id"] for d in only_gw["devices"]] == [gateway["id"]]

    assert registries.unbindDeviceFromGateway(
        parent=reg_name, body={"gatewayId": gateway["numId"], "deviceId": device["id"]}
    ).execute() == {}
    after = devices.list(parent=reg_name, gatewayListOptions_associationsGatewayId=gateway["id"]).execute()
    assert after.get("devices", []) == []

    err = http_error(registries.unbindDeviceFromGateway(
        parent=reg_name, body={"gatewayId": gateway["id"], "deviceId": device["id"]}
    ))
    assert err.resp.status == 404
    assert error_body(err)["status"] == "NOT_FOUND"

    # A registry that still holds devices cannot be deleted.
    err = http_error(registries.delete(name=reg_name))
    assert err.resp.status == 400
    assert error_body(err)["status"] == "FAILED_PRECONDITION"


def test_discovery_document_served_by_the_server(server):
    # Google's samples (get_client in the IoT manager, gateway and end-to-end samples) built
    # their client from a URL rather than the packaged document:
    #   discovery.build("cloudiotcore", "v1", discoveryServiceUrl=".../$discovery/rest?version=v1")
    # Pointed at Ferrocore, that URL must serve the cloudiot v1 document with its rootUrl naming
    # the server itself, without needing credentials (the library fetches it unauthenticated).
    url = f"{server.base_url}/$discovery/rest?version=v1"
    svc = discovery.build(
        "cloudiotcore",
        "v1",
        discoveryServiceUrl=url,
        static_discovery=False,
        cache_discovery=False,
        credentials=google.oauth2.credentials.Credentials(token=server.token),
    )
    parent = location_path(fresh_project())
    registries = svc.projects().locations().registries()
    rid = unique("reg")
    created = registries.create(parent=parent, body={"id": rid}).execute()
    assert created["name"] == f"{parent}/registries/{rid}"
    assert [r["id"] for r in registries.list(parent=parent).execute()["deviceRegistries"]] == [rid]
