"""Shared helpers for the compatibility suite: ids, keys and a thin JSON-over-HTTP client.

Test modules import this directly (pytest puts this folder on sys.path); the server itself is
started by the session fixture in conftest.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import re
import uuid
from typing import Any

import pytest
import requests
from google.api_core import exceptions as gexc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
AUTH_FIXTURES = REPO_ROOT / "crates" / "auth" / "tests" / "fixtures"

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
    import datetime

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
}


@contextlib.contextmanager
def expect_error(status: str):
    """Expects the wrapped GAPIC call to fail with the canonical `status`.

    Checks the exception class google-api-core chose, its HTTP code, and the `error.status` of the
    JSON body the server sent. Yields pytest's ExceptionInfo.
    """
    code = HTTP_FOR_STATUS[status]
    with pytest.raises(gexc.GoogleAPICallError) as info:
        yield info
    err = info.value
    assert isinstance(err, API_CORE_CLASS_FOR_HTTP[code]), f"expected {status}, got {type(err).__name__}: {err}"
    assert err.code == code, f"expected HTTP {code} ({status}), got {err.code}: {err}"
    body = err.response.json() if err.response is not None else {}
    assert body.get("error", {}).get("status") == status, f"expected {status}: {body}"
    assert err.message, "the error carries no message"
