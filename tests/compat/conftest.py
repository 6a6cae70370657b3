"""Session fixtures: one real Ferrocore server for the whole suite.

The binary comes from $FERROCORE_BIN (scripts/compat-tests.sh sets it). The server gets a fresh
data directory, loopback ports picked by the OS (HTTP, gRPC, MQTT over TLS and plain MQTT), and a
random admin token. No TLS certificate is given, so the server makes its own CA in the data
directory (`Server.ca_path`), which the device tests trust.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from compat_support import REPO_ROOT, Rest

STARTUP_TIMEOUT_S = 30.0

# The clients under test (requests, httplib2) honour proxy variables; loopback must bypass them.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var, ""), "127.0.0.1", "localhost"]))

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass
class Server:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    mqtts_port: int
    mqtt_port: int
    token: str
    data_dir: pathlib.Path
    log_path: pathlib.Path

    @property
    def base_url(self) -> str:
        """Root of the REST API, without a trailing slash."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        """host:port of the plaintext (h2c) gRPC API, as grpc.insecure_channel takes it."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def ca_path(self) -> pathlib.Path:
        """The local CA the server generates when no --tls-cert is given; devices trust it."""
        return self.data_dir / "tls" / "ca.pem"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the server has not exited within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, limit: int = 8000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<could not read {self.log_path}: {e}>"
        return text[-limit:]


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all are bound, so the OS cannot hand out one port twice.
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _server_binary() -> pathlib.Path:
    configured = os.environ.get("FERROCORE_BIN")
    if configured:
        path = pathlib.Path(configured)
    else:
        path = REPO_ROOT / "target" / "debug" / "ferrocore"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"Ferrocore server binary not found at {path}; set FERROCORE_BIN or run scripts/compat-tests.sh",
            pytrace=False,
        )
    return path


def _healthz_status(port: int) -> int | None:
    try:
        with _NO_PROXY_OPENER.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def launch_server(data_dir: pathlib.Path, log_path: pathlib.Path, token: str | None) -> Server:
    """Starts `ferrocore serve` on fresh loopback ports and waits until /healthz answers 200.

    With `token=None` no admin token is configured, so the server uses (or creates)
    `<data_dir>/admin-token`; `Server.token` is then read from that file.
    """
    binary = _server_binary()
    http_port, grpc_port, mqtts_port, mqtt_port = _free_ports(4)

    # Settings the caller's shell may carry (FERROCORE_ADMIN_TOKEN_FILE, FERROCORE_MQTT, ...) would
    # change what is tested; only the log filter is passed through.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROCORE_") or k == "FERROCORE_LOG"}
    if token is not None:
        env["FERROCORE_ADMIN_TOKEN"] = token
    env.setdefault("RUST_BACKTRACE", "1")
    env["NO_COLOR"] = "1"  # plain log text in failure reports
    argv = [
        str(binary), "serve",
        "--data-dir", str(data_dir),
        "--http", f"127.0.0.1:{http_port}",
        "--grpc", f"127.0.0.1:{grpc_port}",
        "--mqtts", f"127.0.0.1:{mqtts_port}",
        "--mqtt", f"127.0.0.1:{mqtt_port}",
    ]
    # Output goes to a file, not a pipe: a chatty server must never block on a full pipe.
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    srv = Server(process, http_port, grpc_port, mqtts_port, mqtt_port, token or "", data_dir, log_path)

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_status = None
    while True:
        if process.poll() is not None:
            pytest.fail(
                f"ferrocore exited with status {process.returncode} before becoming healthy.\n"
                f"command: {' '.join(argv)}\n--- server output ---\n{srv.log_tail()}",
                pytrace=False,
            )
        last_status = _healthz_status(http_port)
        if last_status == 200:
            break
        if time.monotonic() > deadline:
            srv.stop()
            pytest.fail(
                f"ferrocore did not answer 200 on /healthz within {STARTUP_TIMEOUT_S:.0f}s "
                f"(last status: {last_status}).\ncommand: {' '.join(argv)}\n"
                f"--- server output ---\n{srv.log_tail()}",
                pytrace=False,
            )
        time.sleep(0.1)

    if token is None:
        token_file = data_dir / "admin-token"
        assert token_file.is_file(), f"no admin token configured, yet {token_file} was not written"
        srv.token = token_file.read_text().strip()
    return srv


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """The server every test talks to, with a random admin token from the environment."""
    data_dir = tmp_path_factory.mktemp("ferrocore-data")
    log_path = tmp_path_factory.mktemp("ferrocore-log") / "server.log"
    srv = launch_server(data_dir, log_path, secrets.token_urlsafe(32))
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
    """Starts extra servers for tests about the server process itself; all are stopped afterwards."""
    started: list[Server] = []

    def _launch(data_dir: pathlib.Path, token: str | None = None) -> Server:
        srv = launch_server(data_dir, tmp_path / "server.log", token)
        started.append(srv)
        return srv

    yield _launch
    for srv in started:
        srv.stop()
