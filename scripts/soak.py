#!/usr/bin/env python3
"""The soak driver that scripts/soak.sh runs next to ferrocore-bench: mixed, bounded load on a
Ferrocore server on loopback, abusive clients, a sample of the server's resources every minute,
and at the end a check that nothing acknowledged was lost.

Standard library only (plus the `openssl` command, for the devices' RS256 key and tokens), so it
runs wherever the server does. What it does, all at once, for --minutes:

* devices: --devices MQTT devices (half over TLS), each connecting, subscribing to its config and
  commands, publishing QoS 1 telemetry (and now and then QoS 0 and state), acknowledging what it
  receives, and disconnecting after a random lifetime to connect again (connect/disconnect churn);
* control: config pushes and commands to those devices, and API calls (get, list, patch, config
  versions, create and delete a scratch device), over REST;
* subscriber: a Pub/Sub subscription on the devices' telemetry topic, pulled and acknowledged over
  REST;
* abusers: half-sent HTTP requests, bodies that never arrive or are too large, TCP connections to
  the gRPC port that never send the HTTP/2 preface, MQTT connections that never send CONNECT,
  oversized CONNECTs, and an authenticated MQTT device that stops reading while large commands
  are sent to it (one that also goes silent, one that keeps pinging); each is expected to be cut
  by the server (except the pinging device, whose keep-alive holds), and how long that took is
  recorded;
* monitor: the server's RSS, open files, sockets and threads from /proc, and the sockets on its
  ports that it closed but the kernel still holds, every --sample seconds.

At the end: every QoS 1 message a device had PUBACKed must be in the topic log and must have
reached the subscription. The report goes to stdout and, as JSON, to --report.
"""

import argparse
import base64
import json
import os
import random
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

PROJECT = "soak"
REGISTRY = "soak"
TOPIC = f"projects/{PROJECT}/topics/soak-telemetry"
STATE_TOPIC = f"projects/{PROJECT}/topics/soak-state"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/soak-sub"
LOCATION = "us-central1"


def log(msg):
    print(f"soak {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class Stats:
    """Counters shared by every thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.durations = {}  # name -> list of seconds (time until the server cut an abuser)
        self.errors = {}  # name -> up to 5 samples

    def add(self, name, n=1):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def time(self, name, seconds):
        with self.lock:
            self.durations.setdefault(name, []).append(seconds)

    def error(self, name, text):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1
            samples = self.errors.setdefault(name, [])
            if len(samples) < 5:
                samples.append(str(text)[:300])

    def snapshot(self):
        with self.lock:
            return dict(self.counts)


STATS = Stats()
# Set when the load stops, and when the subscriber may stop pulling.
STOP = threading.Event()
FINISH = threading.Event()


# --- REST --------------------------------------------------------------------------------------


class Api:
    def __init__(self, base, token):
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}/v1/{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else {})
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"raw": raw[:200].decode(errors="replace")}

    def registry_path(self):
        return f"projects/{PROJECT}/locations/{LOCATION}/registries/{REGISTRY}"

    def device_path(self, device):
        return f"{self.registry_path()}/devices/{device}"


# --- keys and tokens -----------------------------------------------------------------------------


class Keys:
    """One RSA key pair for every soak device; RS256 tokens signed with `openssl dgst`."""

    def __init__(self, workdir):
        self.private = os.path.join(workdir, "soak_rsa_private.pem")
        public = os.path.join(workdir, "soak_rsa_public.pem")
        if not os.path.exists(self.private):
            subprocess.run(
                ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", self.private],
                check=True,
                capture_output=True,
            )
        subprocess.run(["openssl", "pkey", "-in", self.private, "-pubout", "-out", public], check=True, capture_output=True)
        self.public_pem = open(public).read()

    def token(self, lifetime=23 * 3600):
        b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
        now = int(time.time())
        header = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        claims = b64(json.dumps({"iat": now - 60, "exp": now + lifetime, "aud": PROJECT}).encode())
        signing_input = header + b"." + claims
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.private], input=signing_input, check=True, capture_output=True
        ).stdout
        return (signing_input + b"." + b64(sig)).decode()


# --- MQTT 3.1.1, just enough -----------------------------------------------------------------------


def varint(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect_packet(client_id, password, keep_alive=60):
    var = mqtt_string("MQTT") + bytes([4, 0xC2]) + struct.pack(">H", keep_alive)
    return packet(0x10, var + mqtt_string(client_id) + mqtt_string("unused") + mqtt_string(password))


def subscribe_packet(pid, topics):
    body = struct.pack(">H", pid) + b"".join(mqtt_string(t) + bytes([q]) for t, q in topics)
    return packet(0x82, body)


def publish_packet(topic, payload, qos, pid=None):
    body = mqtt_string(topic) + (struct.pack(">H", pid) if qos else b"") + payload
    return packet(0x30 | (qos << 1), body)


def read_packet(sock):
    """(first byte, body) or None at the end of the stream."""
    head = sock.recv(1)
    if not head:
        return None
    n, shift = 0, 0
    while True:
        b = sock.recv(1)
        if not b:
            return None
        n |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    body = bytearray()
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return head[0], bytes(body)


def open_socket(addr, tls_ca=None, source=None, timeout=10, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        # Before connecting, so the window the server sees stays this small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    if source:
        sock.bind((source, 0))
    sock.connect(addr)
    if tls_ca:
        ctx = ssl.create_default_context(cafile=tls_ca)
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    return sock


def parse_packet(buf):
    """Takes one whole packet off the front of `buf`: (first byte, body), or None if `buf` does
    not hold one yet."""
    if len(buf) < 2:
        return None
    n, shift, i = 0, 0, 1
    while True:
        if i >= len(buf):
            return None
        b = buf[i]
        n |= (b & 0x7F) << shift
        shift += 7
        i += 1
        if not b & 0x80:
            break
        if i > 4:
            raise ValueError("malformed remaining length")
    if len(buf) < i + n:
        return None
    first, body = buf[0], bytes(buf[i : i + n])
    del buf[: i + n]
    return first, body


class Device(threading.Thread):
    """A well-behaved device that comes and goes. One thread per device and no other thread on
    its socket (an SSL socket must not be read and written from two threads at once)."""

    def __init__(self, index, args, keys, acked, api):
        super().__init__(daemon=True, name=f"device-{index}")
        self.index = index
        self.id = f"soak-dev-{index}"
        self.args = args
        self.keys = keys
        self.acked = acked  # (set of PUBACKed payload ids, its lock)
        self.api = api
        self.tls = index % 2 == 1
        self.source = f"127.0.1.{index % 250 + 1}"
        self.connected = threading.Event()
        self.seq = 0

    def run(self):
        while not STOP.is_set():
            try:
                self.session()
            except (OSError, ssl.SSLError, ValueError) as e:
                STATS.error("device_session_errors", f"{self.id}: {e!r}")
            self.connected.clear()
            STOP.wait(random.uniform(0.5, 3))

    def session(self):
        addr = ("127.0.0.1", self.args.mqtts_port if self.tls else self.args.mqtt_port)
        sock = open_socket(addr, self.args.ca if self.tls else None, self.source)
        buf = bytearray()
        inflight = {}  # packet id -> payload id
        state = {"connack": None}

        def send(data):
            sock.settimeout(10)
            sock.sendall(data)

        def handle(first, body):
            kind = first >> 4
            if kind == 2:  # CONNACK
                state["connack"] = body[1]
            elif kind == 4:  # PUBACK
                ident = inflight.pop(struct.unpack(">H", body[:2])[0], None)
                if ident is not None:
                    with self.acked[1]:
                        self.acked[0].add(ident)
                    STATS.add("telemetry_qos1_acked")
            elif kind == 3:  # PUBLISH from the server: a config or a command
                qos = (first >> 1) & 3
                tlen = struct.unpack(">H", body[:2])[0]
                topic = body[2 : 2 + tlen].decode()
                if qos:
                    send(bytes([0x40, 2]) + body[2 + tlen : 4 + tlen])
                STATS.add("configs_received" if topic.endswith("/config") else "commands_received")

        def pump(timeout):
            """Reads what arrives within `timeout` and handles it; False once the server closed."""
            sock.settimeout(max(timeout, 0.001))
            try:
                data = sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                return True
            if not data:
                return False
            buf.extend(data)
            while (p := parse_packet(buf)) is not None:
                handle(*p)
            return True

        try:
            send(connect_packet(self.api.device_path(self.id), self.keys.token(), keep_alive=60))
            deadline = time.monotonic() + 15
            while state["connack"] is None and time.monotonic() < deadline:
                if not pump(deadline - time.monotonic()):
                    break
            if state["connack"] != 0:
                STATS.error("device_connect_failures", f"{self.id}: CONNACK {state['connack']}")
                return
            STATS.add("device_connects")
            send(subscribe_packet(1, [(f"/devices/{self.id}/config", 1), (f"/devices/{self.id}/commands/#", 1)]))
            self.connected.set()
            lifetime = time.monotonic() + random.uniform(20, 90)
            pid, next_publish, last_state = 1, time.monotonic(), time.monotonic()
            alive = True
            while alive and not STOP.is_set() and time.monotonic() < lifetime:
                alive = pump(min(0.2, max(0.0, next_publish - time.monotonic())))
                now = time.monotonic()
                if not alive or now < next_publish:
                    continue
                next_publish = now + 1 / self.args.device_rate
                self.seq += 1
                ident = f"{self.id}:{self.seq}:{random.getrandbits(32):08x}"
                if self.seq % 7 == 0:
                    send(publish_packet(f"/devices/{self.id}/events", b"q0 " + ident.encode(), 0))
                    STATS.add("telemetry_qos0_sent")
                else:
                    # Telemetry uses packet ids 1..60000; the state message its own, above.
                    pid = pid % 60000 + 1
                    inflight[pid] = ident
                    send(publish_packet(f"/devices/{self.id}/events", ident.encode(), 1, pid))
                    STATS.add("telemetry_qos1_sent")
                if now - last_state > 10:
                    last_state = now
                    send(publish_packet(f"/devices/{self.id}/state", f"state {self.seq}".encode(), 1, 60001))
                    STATS.add("states_sent")
            if not alive:
                STATS.error("device_cut_by_server", self.id)
            # Wait briefly for the last PUBACKs, then leave politely.
            deadline = time.monotonic() + 5
            while alive and inflight and time.monotonic() < deadline:
                alive = pump(0.1)
            if inflight:
                STATS.add("telemetry_qos1_unacked_at_disconnect", len(inflight))
            if alive:
                send(bytes([0xE0, 0]))
                STATS.add("device_disconnects")
        finally:
            self.connected.clear()
            try:
                sock.close()
            except OSError:
                pass


# --- back-end load -------------------------------------------------------------------------------


def control(api, devices, rng):
    """Config pushes, commands and API calls at a bounded pace."""
    n = 0
    while not STOP.wait(0.25):
        n += 1
        dev = rng.choice(devices)
        try:
            what = n % 8
            if what in (0, 4):
                data = base64.b64encode(f"config {n}".encode()).decode()
                st, body = api.call("POST", f"{api.device_path(dev.id)}:modifyCloudToDeviceConfig", {"binaryData": data})
                STATS.add("config_pushes_ok" if st == 200 else "config_pushes_failed")
                if st != 200:
                    STATS.error("config_push_errors", f"{st} {body}")
            elif what in (1, 5):
                if not dev.connected.is_set():
                    continue
                data = base64.b64encode(f"command {n}".encode()).decode()
                st, body = api.call("POST", f"{api.device_path(dev.id)}:sendCommandToDevice", {"binaryData": data})
                if st == 200:
                    STATS.add("commands_ok")
                else:
                    # A device may leave between the check and the call: FAILED_PRECONDITION is fine.
                    status = body.get("error", {}).get("status", "") if isinstance(body, dict) else ""
                    STATS.add("commands_refused_" + (status or str(st)).lower())
            elif what == 2:
                st, _ = api.call("GET", f"{api.device_path(dev.id)}")
                STATS.add("api_calls_ok" if st == 200 else "api_calls_failed")
            elif what == 3:
                st, _ = api.call("GET", f"{api.registry_path()}/devices?pageSize=50&fieldMask=lastEventTime")
                STATS.add("api_calls_ok" if st == 200 else "api_calls_failed")
            elif what == 6:
                st, _ = api.call("GET", f"{api.device_path(dev.id)}/configVersions?numVersions=5")
                STATS.add("api_calls_ok" if st == 200 else "api_calls_failed")
                st, _ = api.call(
                    "PATCH", f"{api.device_path(dev.id)}?updateMask=metadata", {"metadata": {"soak": str(n)}}
                )
                STATS.add("api_calls_ok" if st == 200 else "api_calls_failed")
            else:
                scratch = f"soak-scratch-{n}"
                st, _ = api.call("POST", f"{api.registry_path()}/devices", {"id": scratch})
                st2, _ = api.call("DELETE", api.device_path(scratch))
                STATS.add("api_calls_ok" if (st, st2) == (200, 200) else "api_calls_failed", 2)
        except (OSError, ValueError) as e:
            STATS.error("control_errors", repr(e))


def subscriber(api, received):
    """Pulls the subscription and acknowledges, like a back end would, until FINISH."""
    while not FINISH.is_set():
        try:
            st, body = api.call("POST", f"{SUBSCRIPTION}:pull", {"maxMessages": 500}, timeout=40)
            if st != 200:
                STATS.error("pull_errors", f"{st} {body}")
                time.sleep(1)
                continue
            msgs = body.get("receivedMessages", [])
            if not msgs:
                continue
            with received[1]:
                for m in msgs:
                    received[0].add(base64.b64decode(m["message"].get("data", "")).decode(errors="replace"))
            st, body = api.call("POST", f"{SUBSCRIPTION}:acknowledge", {"ackIds": [m["ackId"] for m in msgs]})
            STATS.add("pubsub_pulled", len(msgs))
            if st != 200:
                STATS.error("ack_errors", f"{st} {body}")
        except (OSError, ValueError) as e:
            STATS.error("pull_errors", repr(e))
            time.sleep(1)


# --- abusive clients -------------------------------------------------------------------------------


def hold_until_cut(name, addr, first_bytes, source, limit):
    """Opens a connection, sends `first_bytes`, then waits for the server to close it (up to
    `limit` seconds); records how long that took, or that it never happened."""
    try:
        sock = socket.create_connection(addr, timeout=10, source_address=(source, 0))
    except OSError as e:
        STATS.error(f"abuse_{name}_connect_failed", repr(e))
        return
    started = time.monotonic()

    def cut():
        STATS.time(f"abuse_{name}_cut_after_s", time.monotonic() - started)
        STATS.add(f"abuse_{name}_cut")

    try:
        if first_bytes:
            try:
                sock.sendall(first_bytes)
            except OSError:
                return cut()
        sock.settimeout(1)
        while time.monotonic() - started < limit and not STOP.is_set():
            try:
                if not sock.recv(65536):
                    return cut()
            except socket.timeout:
                continue
            except OSError:
                return cut()
        if not STOP.is_set():
            STATS.add(f"abuse_{name}_never_cut")
    finally:
        sock.close()


def abuser_loop(name, concurrency, make, pause):
    """Keeps `concurrency` abusive connections of one kind going until the end."""

    def worker(i):
        while not STOP.is_set():
            make(i)
            STOP.wait(pause)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"abuse-{name}-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    return threads


def last_error(api, dev):
    """The device's lastErrorTime and lastErrorStatus message: how a client that does not read
    learns that the server cut it (the server's FIN waits behind what it could not deliver)."""
    st, d = api.call("GET", api.device_path(dev))
    if st != 200:
        return None, None
    return d.get("lastErrorTime"), (d.get("lastErrorStatus") or {}).get("message", "")


def stuck_device(args, keys, api):
    """An authenticated device that stops reading while 200 KiB commands are sent to it. Its
    receive buffer is tiny, so the kernel holds little of what is sent to it. Two kinds in turn:

    * silent: it also stops sending, with eight commands on their way; the server must cut it
      (keep-alive, write deadline or its bound on waiting output), or it would hold the session
      and what it buffered forever;
    * pinging: it keeps sending PINGREQs (under the rate limit), so its keep-alive holds; the
      server keeps one command in flight to it, the others time out, and it may stay connected.
      Only recorded, not a failure: the server's memory for it stays bounded either way.
    """
    n = 0
    while not STOP.is_set():
        n += 1
        dev = f"soak-stuck-{n % 3}"
        kind = "silent" if n % 2 else "pinging"
        try:
            error_before, _ = last_error(api, dev)
            sock = open_socket(("127.0.0.1", args.mqtt_port), None, "127.0.2.201", rcvbuf=2048)
            sock.sendall(connect_packet(api.device_path(dev), keys.token(), keep_alive=20))
            p = read_packet(sock)
            if not p or p[0] >> 4 != 2 or p[1][1] != 0:
                STATS.error("abuse_stuck_device_refused", repr(p))
                sock.close()
                STOP.wait(5)
                continue
            sock.sendall(subscribe_packet(1, [(f"/devices/{dev}/commands/#", 1)]))
            read_packet(sock)  # the SUBACK: commands are refused until it is out
            started = time.monotonic()
            done = threading.Event()

            def commands(count):
                for _ in range(count):
                    if STOP.is_set() or done.is_set():
                        return
                    data = base64.b64encode(os.urandom(200 * 1024)).decode()
                    try:
                        st, _ = api.call(
                            "POST", f"{api.device_path(dev)}:sendCommandToDevice", {"binaryData": data}, timeout=90
                        )
                        STATS.add(f"abuse_stuck_{kind}_command_answers_{st}")
                    except OSError:
                        pass

            threads, per = (8, 1) if kind == "silent" else (2, 3)
            cmd_threads = [threading.Thread(target=commands, args=(per,), daemon=True) for _ in range(threads)]
            for t in cmd_threads:
                t.start()
            sock.settimeout(2)
            cut, checked = None, 0.0
            # From here on nothing is read.
            while time.monotonic() - started < (120 if kind == "silent" else 150) and not STOP.is_set():
                if kind == "pinging":
                    try:
                        sock.sendall(bytes([0xC0, 0]) * 10)
                    except OSError:
                        pass  # the server is gone; its reason is read below
                if time.monotonic() - checked >= 1:
                    checked = time.monotonic()
                    when, why = last_error(api, dev)
                    if when and when != error_before:
                        cut = why
                        break
                time.sleep(0.25)
            done.set()
            if cut is not None:
                STATS.time(f"abuse_stuck_mqtt_{kind}_cut_after_s", time.monotonic() - started)
                STATS.add(f"abuse_stuck_mqtt_{kind}_cut")
                STATS.add(f"abuse_stuck_{kind}_reason: {cut.split(':')[0][:60]}")
                # Like a real stuck client, keep the socket (and its closed window) a while: what
                # the server could not deliver stays in its kernel until the kernel gives up,
                # unless the server reset the connection. The monitor's "lingering" shows it.
                STOP.wait(60)
                STATS.add("abuse_stuck_lingering_seen_60s_after_cut", lingering())
            elif not STOP.is_set():
                STATS.add("abuse_stuck_mqtt_silent_never_cut" if kind == "silent" else "stuck_mqtt_pinging_held")
            sock.close()
            for t in cmd_threads:
                t.join(100)
        except (OSError, ssl.SSLError, ValueError) as e:
            STATS.error("abuse_stuck_errors", repr(e))
        STOP.wait(5)


def start_abusers(args, keys, api):
    http = ("127.0.0.1", args.http_port)
    grpc = ("127.0.0.1", args.grpc_port)
    mqtt = ("127.0.0.1", args.mqtt_port)
    src = lambda i: f"127.0.2.{i % 200 + 1}"
    abuser_loop(
        "half_sent_http_header",
        args.abusers,
        lambda i: hold_until_cut(
            "half_sent_http_header", http, b"GET /v1/projects/p/locations/l/registries HTTP/1.1\r\nHost: x\r\n", src(i), 120
        ),
        1,
    )
    # A body announced and never sent: cut at the body deadline.
    abuser_loop(
        "http_body_never_sent",
        max(1, args.abusers // 4),
        lambda i: hold_until_cut(
            "http_body_never_sent",
            http,
            b"POST /v1/projects/p/locations/l/registries HTTP/1.1\r\nHost: x\r\nContent-Length: 524288\r\n\r\n" + b"{" * 100,
            src(i + 50),
            180,
        ),
        1,
    )
    # A body larger than the limit: refused at once.
    abuser_loop(
        "http_body_too_large",
        1,
        lambda i: hold_until_cut(
            "http_body_too_large",
            http,
            b"POST /v1/projects/p/locations/l/registries HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n" + b"{" * 100,
            "127.0.2.251",
            60,
        ),
        2,
    )
    abuser_loop(
        "grpc_no_preface", max(1, args.abusers // 2), lambda i: hold_until_cut("grpc_no_preface", grpc, b"", src(i + 100), 120), 1
    )
    abuser_loop(
        "mqtt_no_connect", max(1, args.abusers // 4), lambda i: hold_until_cut("mqtt_no_connect", mqtt, b"", src(i + 150), 120), 1
    )
    # A CONNECT announcing 256 KiB, of which 20 KiB arrive: refused at the first-packet limit.
    oversized = bytes([0x10]) + varint(256 * 1024) + mqtt_string("MQTT") + bytes([4, 0xC2, 0, 60]) + b"x" * (20 * 1024)
    abuser_loop("oversized_connect", 1, lambda i: hold_until_cut("oversized_connect", mqtt, oversized, "127.0.2.250", 60), 5)
    threading.Thread(target=stuck_device, args=(args, keys, api), daemon=True, name="abuse-stuck").start()


# --- the server's resources ----------------------------------------------------------------------


SERVER_PORTS = set()


def lingering():
    """Sockets on the server's ports that the process has closed but the kernel still holds
    (FIN-WAIT-1/2, CLOSING, LAST-ACK): output that never reached a client that stopped reading
    stays in kernel memory until the kernel gives up on it."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    port = int(parts[1].rsplit(":", 1)[1], 16)
                    if port in SERVER_PORTS and parts[3] in ("04", "05", "09", "0B"):
                        n += 1
        except OSError:
            pass
    return n


def sample(pid):
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.strip()
    fds = os.listdir(f"/proc/{pid}/fd")
    sockets = 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                sockets += 1
        except OSError:
            pass
    return {
        "t": time.time(),
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "hwm_mb": int(status["VmHWM"].split()[0]) / 1024,
        "fds": len(fds),
        "sockets": sockets,
        "threads": int(status["Threads"]),
        "lingering": lingering(),
    }


def monitor(pid, every, samples, started):
    while True:
        try:
            s = sample(pid)
        except OSError:
            return
        s["minute"] = round((s["t"] - started) / 60, 1)
        s["counts"] = STATS.snapshot()
        samples.append(s)
        c = s["counts"]
        log(
            f"min {s['minute']:5.1f}  rss {s['rss_mb']:6.1f} MB  fds {s['fds']:4d}  sockets {s['sockets']:4d}  "
            f"threads {s['threads']:3d}  lingering {s['lingering']:3d}  | qos1 acked {c.get('telemetry_qos1_acked', 0)}  pulled {c.get('pubsub_pulled', 0)}  "
            f"configs {c.get('configs_received', 0)}  commands {c.get('commands_received', 0)}  "
            f"api {c.get('api_calls_ok', 0)}  connects {c.get('device_connects', 0)}"
        )
        if STOP.wait(every):
            return


# --- end-of-run checks ----------------------------------------------------------------------------


def read_log(api):
    """Every payload in the telemetry topic, from the earliest offset."""
    ids, offset = set(), 0
    while True:
        st, body = api.call("GET", f"{TOPIC}/messages?offset={offset}&maxMessages=1000")
        if st != 200:
            raise RuntimeError(f"reading the log failed: {st} {body}")
        msgs = body.get("messages", [])
        for m in msgs:
            ids.add(base64.b64decode(m.get("data", "")).decode(errors="replace"))
        nxt = int(body.get("nextOffset", offset))
        if not msgs or nxt == offset:
            return ids, nxt
        offset = nxt


def setup(api, keys, devices):
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    st, body = api.call(
        "POST",
        f"{parent}/registries",
        {"id": REGISTRY, "eventNotificationConfigs": [{"pubsubTopicName": TOPIC}], "stateNotificationConfig": {"pubsubTopicName": STATE_TOPIC}},
    )
    if st not in (200, 409):
        raise RuntimeError(f"registry create: {st} {body}")
    st, body = api.call("PUT", SUBSCRIPTION, {"topic": TOPIC, "ackDeadlineSeconds": 60})
    if st not in (200, 409):
        raise RuntimeError(f"subscription create: {st} {body}")
    cred = [{"publicKey": {"format": "RSA_PEM", "key": keys.public_pem}}]
    ids = [f"soak-dev-{i}" for i in range(devices)] + [f"soak-stuck-{i}" for i in range(3)]
    for dev in ids:
        st, body = api.call("POST", f"{api.registry_path()}/devices", {"id": dev, "credentials": cred})
        if st not in (200, 409):
            raise RuntimeError(f"device create: {st} {body}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--mqtt-port", type=int, required=True)
    ap.add_argument("--mqtts-port", type=int, required=True)
    ap.add_argument("--ca", required=True, help="the server's CA (PEM), for MQTT over TLS")
    ap.add_argument("--token", required=True, help="the admin token")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--devices", type=int, default=12)
    ap.add_argument("--device-rate", type=float, default=2.0, help="messages per second per device")
    ap.add_argument("--abusers", type=int, default=40, help="half-sent HTTP requests held at once (other abusers scale)")
    ap.add_argument("--sample", type=float, default=60, help="seconds between resource samples")
    ap.add_argument("--report", required=True)
    args = ap.parse_args()

    api = Api(f"http://127.0.0.1:{args.http_port}", args.token)
    SERVER_PORTS.update({args.http_port, args.grpc_port, args.mqtt_port, args.mqtts_port})
    keys = Keys(args.workdir)
    setup(api, keys, args.devices)
    started = time.time()
    samples = []
    baseline = sample(args.server_pid)
    log(f"baseline: rss {baseline['rss_mb']:.1f} MB, fds {baseline['fds']}, threads {baseline['threads']}")

    acked = (set(), threading.Lock())
    received = (set(), threading.Lock())
    devices = [Device(i, args, keys, acked, api) for i in range(args.devices)]
    for d in devices:
        d.start()
    threading.Thread(target=control, args=(api, devices, random.Random(7)), daemon=True).start()
    sub = threading.Thread(target=subscriber, args=(api, received), daemon=True)
    sub.start()
    start_abusers(args, keys, api)
    mon = threading.Thread(target=monitor, args=(args.server_pid, args.sample, samples, started), daemon=True)
    mon.start()

    try:
        STOP.wait(args.minutes * 60)
    except KeyboardInterrupt:
        log("interrupted; checking what ran so far")
    STOP.set()
    log("load stopped; waiting for devices to disconnect")
    for d in devices:
        d.join(30)
    mon.join(5)

    # Everything acknowledged must be in the log and reach the subscription.
    with acked[1]:
        acked_ids = set(acked[0])
    log_ids, next_offset = read_log(api)
    missing_log = acked_ids - log_ids
    deadline = time.time() + 60
    while time.time() < deadline:
        with received[1]:
            missing_sub = acked_ids - received[0]
        if not missing_sub:
            break
        time.sleep(1)
    FINISH.set()

    # After the load: let the server's timeouts close what the abusers left, then look again.
    time.sleep(15)
    after = sample(args.server_pid)
    counts = STATS.snapshot()
    cut = {
        k: {
            "count": len(v),
            "median_s": round(statistics.median(v), 1),
            "max_s": round(max(v), 1),
        }
        for k, v in STATS.durations.items()
    }
    report = {
        "minutes": args.minutes,
        "baseline": baseline,
        "samples": samples,
        "after_load": after,
        "counts": counts,
        "errors": STATS.errors,
        "abusers_cut": cut,
        "verification": {
            "qos1_acked": len(acked_ids),
            "in_log": len(acked_ids) - len(missing_log),
            "missing_from_log": len(missing_log),
            "missing_from_log_sample": sorted(missing_log)[:10],
            "log_records": len(log_ids),
            "log_next_offset": next_offset,
            "missing_from_subscription": len(missing_sub),
            "missing_from_subscription_sample": sorted(missing_sub)[:10],
        },
    }
    with open(args.report, "w") as f:
        json.dump(report, f, indent=1)
    v = report["verification"]
    log(
        f"verification: {v['qos1_acked']} QoS 1 messages PUBACKed; {v['missing_from_log']} missing from the log, "
        f"{v['missing_from_subscription']} missing from the subscription"
    )
    never = {k: n for k, n in counts.items() if k.endswith("_never_cut")}
    if never:
        log(f"abusive connections the server never cut: {never}")
    ok = not missing_log and not missing_sub and not never
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
