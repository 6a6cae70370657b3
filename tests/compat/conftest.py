"""Session fixtures: one real Ferrocore server for the whole suite.

The binary comes from $FERROCORE_BIN (scripts/compat-tests.sh sets it). The server gets a fresh
data directory, loopback ports picked by the OS (HTTP, gRPC, MQTT over TLS and plain MQTT), and a
random admin token. No TLS certificate is given, so the server makes its own CA in the data
directory (`Server.ca_path`), which the device tests trust. Starting a server is
compat_server.launch_server, which tests that need servers of their own call as well.
"""

from __future__ import annotations

import os
import pathlib
import secrets
from typing import Sequence

import pytest

from compat_server import STARTUP_TIMEOUT_S, Server, launch_server  # noqa: F401 (re-exported)
from compat_support import Rest

# The clients under test (requests, httplib2, gRPC) honour proxy variables; loopback must bypass them.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var, ""), "127.0.0.1", "localhost"]))

# Flags of the session server beyond its data directory and listeners. `--pubsub-anonymous` lets
# Pub/Sub calls without credentials through, as google-cloud-pubsub sends none in emulator mode
# (PUBSUB_EMULATOR_HOST); the other APIs still need the admin token.
SESSION_SERVER_ARGS = ("--pubsub-anonymous",)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """The server every test talks to, with a random admin token from the environment."""
    data_dir = tmp_path_factory.mktemp("ferrocore-data")
    log_path = tmp_path_factory.mktemp("ferrocore-log") / "server.log"
    srv = launch_server(data_dir, log_path, secrets.token_urlsafe(32), SESSION_SERVER_ARGS)
    _SESSION_SERVER["server"] = srv
    yield srv
    _SESSION_SERVER.clear()
    srv.stop()


@pytest.fixture(scope="session")
def rest(server) -> Rest:
    """Raw HTTP client carrying the admin token."""
    return Rest(server.base_url, server.token)


@pytest.fixture(scope="session")
def anon_rest(server) -> Rest:
    """Raw HTTP client without any Authorization header."""
    return Rest(server.base_url, None)


# The running server, so the report hook below can reach it.
_SESSION_SERVER: dict = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # When a test fails, attach the end of the server log: many failures are explained there.
    outcome = yield
    report = outcome.get_result()
    srv = _SESSION_SERVER.get("server")
    if report.when == "call" and report.failed and srv is not None:
        report.sections.append(("ferrocore log (tail)", srv.log_tail(2000)))


@pytest.fixture
def launch(tmp_path):
    """Starts extra servers for tests about the server process itself; all are stopped afterwards.

    `launch(data_dir, token, extra_args=(...), ports=old.ports)`: see compat_server.launch_server.
    """
    started: list[Server] = []

    def _launch(data_dir: pathlib.Path, token: str | None = None, *, extra_args: Sequence[str] = (),
                ports: Sequence[int] | None = None) -> Server:
        srv = launch_server(data_dir, tmp_path / "server.log", token, extra_args, ports)
        started.append(srv)
        return srv

    yield _launch
    for srv in started:
        srv.stop()
