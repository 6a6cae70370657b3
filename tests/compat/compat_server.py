"""Starting and stopping real Ferrocore server processes for the compatibility suite.

conftest.py uses `launch_server` for the session server and for the `launch` fixture; test modules
that need a server of their own with a longer life than one test (a module-scoped fixture, say)
call it directly. The binary comes from $FERROCORE_BIN.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Sequence

import pytest

from compat_support import REPO_ROOT

STARTUP_TIMEOUT_S = 30.0

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
    # Flags given to `ferrocore serve` beyond the data directory and the listeners.
    extra_args: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        """Root of the REST API, without a trailing slash."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        """host:port of the plaintext (h2c) gRPC API, as grpc.insecure_channel takes it."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def ports(self) -> tuple[int, int, int, int]:
        """(http, grpc, mqtts, mqtt), as `launch_server(ports=...)` takes them."""
        return (self.http_port, self.grpc_port, self.mqtts_port, self.mqtt_port)

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

    def kill(self) -> None:
        """SIGKILL at once, as a crash would end the server: no shutdown code runs."""
        if self.process.poll() is None:
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


def free_port() -> int:
    """One loopback port nobody listens on right now (for other servers the suite starts)."""
    return _free_ports(1)[0]


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


def launch_server(data_dir: pathlib.Path, log_path: pathlib.Path, token: str | None,
                  extra_args: Sequence[str] = (), ports: Sequence[int] | None = None) -> Server:
    """Starts `ferrocore serve` on loopback ports and waits until /healthz answers 200.

    With `token=None` no admin token is configured, so the server uses (or creates)
    `<data_dir>/admin-token`; `Server.token` is then read from that file. `extra_args` are added
    to the command line (e.g. `--pubsub-anonymous`). `ports` (http, grpc, mqtts, mqtt) reuses the
    ports of an earlier server, e.g. `old.ports` for a restart; by default the OS picks fresh ones.
    """
    binary = _server_binary()
    http_port, grpc_port, mqtts_port, mqtt_port = ports if ports is not None else _free_ports(4)

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
        *extra_args,
    ]
    # Output goes to a file, not a pipe: a chatty server must never block on a full pipe.
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    srv = Server(process, http_port, grpc_port, mqtts_port, mqtt_port, token or "", data_dir, log_path,
                 tuple(extra_args))

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
