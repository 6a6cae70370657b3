#!/usr/bin/env bash
# A cluster of three Ferrocore nodes against one node, side by side in one run on this machine,
# with the same load generator (`ferrocore-bench`, release build):
#
#   single     `ferrocore serve` on its embedded store and topic log (a fresh data directory,
#              plain MQTT, no gRPC, no MQTTS).
#   cluster    three `ferrocore serve` nodes on one fresh PostgreSQL database (created on
#              127.0.0.1:5432 as PGUSER, dropped afterwards) and the machine's NATS on
#              127.0.0.1:4222 (JetStream: one stream per topic, shared by the nodes), with a fresh
#              --cluster-prefix; each node has its own data directory and ports. The run waits
#              until node 1 lists all three nodes in GET /v1/cluster.
#
# On each:
#   telemetry  DEVICES devices publish 100-byte messages at QoS 1 for DURATION s, as fast as
#              PUBACKs come back (32 unacknowledged per device); in the cluster the devices are
#              spread evenly over the three nodes (device i to node i mod 3). The servers run
#              with --mqtt-messages-per-second 1000000 (the default 100/s, IoT Core's, would
#              disconnect every device). Delivery is checked after publishing (--verify after,
#              so the measured window is ingest only): every PUBACKed message must be in the
#              topic log (the cluster's is read back through node 1). Server CPU is the sum of
#              the Ferrocore processes over the window; nats-server's CPU over the same window is
#              reported apart (--other-pid): in the cluster NATS does the log's work, on one node
#              it is the NATS server's background (the machine's NATS is shared). PostgreSQL's
#              CPU (all postgres processes) is read around the whole bench command, provisioning
#              included.
#   command    sendCommandToDevice → the device's receipt, COMMANDS commands at COMMAND_RATE/s
#              round robin over COMMAND_DEVICES devices (QoS 1 subscriptions), at most
#              COMMAND_CONCURRENCY REST calls in flight. On one node; in the cluster twice: the
#              devices on node 1 and the REST calls to node 1 (same node), then the devices on
#              node 1 and the REST calls to node 2 (cross-node: node 2 asks the others over core
#              NATS, node 1 delivers and answers once the device PUBACKed).
#
# Knobs (environment): DEVICES (150), DURATION (20 s), COMMANDS (1000), COMMAND_RATE (500),
# COMMAND_DEVICES (10), COMMAND_CONCURRENCY (16), PGUSER (postgres), NATS_URL
# (nats://127.0.0.1:4222), QUICK=1 (DEVICES=30, DURATION=5, COMMANDS=300: a smoke run).
#
# Results: target/bench-cluster/<run>/: one JSON per measurement ({telemetry,command}-*.json), the
# servers' logs, loadavg-*.txt, postgres-ticks-*.txt, summary.json and summary.txt (the table
# printed at the end). Afterwards the nodes are stopped, the database dropped and the JetStream
# streams of the run's prefix (<prefix>_log_*) deleted through the JetStream API.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ "${QUICK:-0}" == 1 ]]; then
  : "${DEVICES:=30}" "${DURATION:=5}" "${COMMANDS:=300}"
fi
DEVICES="${DEVICES:-150}"
DURATION="${DURATION:-20}"
COMMANDS="${COMMANDS:-1000}"
COMMAND_RATE="${COMMAND_RATE:-500}"
COMMAND_DEVICES="${COMMAND_DEVICES:-10}"
COMMAND_CONCURRENCY="${COMMAND_CONCURRENCY:-16}"
PGUSER="${PGUSER:-postgres}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
NODES=3

target_dir="$(bash "$root/scripts/cargo-target-dir.sh")"
run="$(date -u +%Y%m%dT%H%M%SZ)"
out="$root/target/bench-cluster/$run"
work="$(mktemp -d /tmp/ferrocore-bench-cluster.XXXXXX)"
mkdir -p "$out"
tag="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
db="ferrocore_bench_cluster_$tag"
prefix="fcbench_$tag"
token="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
nats_hostport="${NATS_URL#nats://}"

log() { printf '\n== %s\n' "$*" >&2; }

# The JetStream streams whose names start with $1: listed, listed with their message count
# (`info`), or deleted (`delete`). Speaks the NATS protocol directly (no client library needed).
jetstream_streams() {
  python3 - "$nats_hostport" "$1" "${2:-list}" <<'PY'
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
start, action = sys.argv[2], sys.argv[3]
s = socket.create_connection((host, int(port)), timeout=10)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.fcbench 1\r\n')
def request(subject, payload=b""):
    s.sendall(b"PUB %s _INBOX.fcbench %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
    while True:
        line = f.readline()
        if line.startswith(b"PING"):
            s.sendall(b"PONG\r\n")
        elif line.startswith(b"MSG"):
            size = int(line.split()[-1])
            body = f.read(size + 2)[:-2]
            return json.loads(body)
        elif line.startswith(b"-ERR"):
            raise SystemExit(line.decode().strip())
        elif not line:
            raise SystemExit("NATS closed the connection")
names, offset = [], 0
while True:
    r = request("$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode())
    got = r.get("streams") or []
    names += got
    offset += len(got)
    if not got or offset >= r.get("total", 0):
        break
mine = sorted(n for n in names if n.startswith(start))
for n in mine:
    if action == "delete":
        r = request("$JS.API.STREAM.DELETE." + n)
        print(n, "deleted" if r.get("success") else f"NOT deleted: {r}")
    elif action == "info":
        r = request("$JS.API.STREAM.INFO." + n)
        print(n, (r.get("state") or {}).get("messages"))
    else:
        print(n)
PY
}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql -h 127.0.0.1 -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  jetstream_streams "${prefix}_log_" delete >&2 || echo "could not delete the streams ${prefix}_log_* on $NATS_URL" >&2
  rm -rf "$work"
}
trap cleanup EXIT

log "building (release)"
cargo build --release -p ferrocore -p ferrocore-bench --bins
server_bin="$target_dir/release/ferrocore"
bench="$target_dir/release/ferrocore-bench"

nats_pid="$(pgrep -o -x nats-server || true)"
[[ -n "$nats_pid" ]] || { echo "no nats-server running (the cluster needs NATS with JetStream at $NATS_URL)" >&2; exit 1; }
other=(--other-pid "$nats_pid")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 400); do
    if listening "$1"; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}
postgres_cpu_ticks() {
  local total=0
  for p in $(pgrep -x postgres || true); do
    [[ -r /proc/$p/stat ]] || continue
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg > "$out/loadavg-$1.txt"; echo "load average ($1): $(cat "$out/loadavg-$1.txt")" >&2; }

# start_node NAME [cluster args...] → node_pid, node_http, node_mqtt: a fresh server.
start_node() {
  local name="$1"; shift
  node_http=$(free_port); node_mqtt=$(free_port)
  FERROCORE_ADMIN_TOKEN="$token" FERROCORE_LOG=warn "$server_bin" serve --data-dir "$work/data-$name" \
    --http "127.0.0.1:$node_http" --grpc off --mqtts off --mqtt "127.0.0.1:$node_mqtt" \
    --mqtt-messages-per-second 1000000 --topic-retention-mb 8192 "$@" > "$out/server-$name.log" 2>&1 &
  node_pid=$!
  pids+=("$node_pid")
}
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# telemetry NAME PORTS PIDS: the telemetry measurement against node 1's API.
telemetry() {
  local name="$1" ports="$2" server_pids="$3" before after
  log "telemetry, $name: $DEVICES devices, QoS 1, 100 B, ${DURATION} s"
  loadavg "telemetry-$name"
  before=$(postgres_cpu_ticks)
  "$bench" --api "${api[0]}" --token "$token" --port "$ports" --server-pid "$server_pids" "${other[@]}" \
    --progress 5 --label "telemetry $name" --json "$out/telemetry-$name.json" \
    telemetry --devices "$DEVICES" --payload 100 --qos 1 --duration "$DURATION" --verify after \
    || echo "telemetry $name failed" >&2
  after=$(postgres_cpu_ticks)
  echo $(( after - before )) > "$out/postgres-ticks-telemetry-$name.txt"
}

# command NAME API PORT PIDS: the command measurement, devices on PORT, REST calls to API.
command_run() {
  local name="$1" api_url="$2" port="$3" server_pids="$4"
  log "commands, $name: $COMMANDS at $COMMAND_RATE/s over $COMMAND_DEVICES devices ($api_url, devices on MQTT port $port)"
  loadavg "command-$name"
  "$bench" --api "$api_url" --token "$token" --port "$port" --server-pid "$server_pids" "${other[@]}" \
    --progress 5 --label "command $name" --json "$out/command-$name.json" \
    command --devices "$COMMAND_DEVICES" --commands "$COMMANDS" --rate "$COMMAND_RATE" \
    --concurrency "$COMMAND_CONCURRENCY" --qos 1 \
    || echo "command $name failed" >&2
}

loadavg start
echo "run $run: DEVICES=$DEVICES DURATION=$DURATION COMMANDS=$COMMANDS COMMAND_RATE=$COMMAND_RATE" >&2

# 1. One node, embedded store and log.
log "one node (embedded store and topic log)"
start_node single
wait_port "$node_http"; wait_port "$node_mqtt"
api=("http://127.0.0.1:$node_http")
telemetry single "$node_mqtt" "$node_pid"
command_run single "${api[0]}" "$node_mqtt" "$node_pid"
stop_all

# 2. Three nodes: PostgreSQL + NATS (JetStream log).
log "three nodes (database $db, prefix $prefix)"
psql -h 127.0.0.1 -U "$PGUSER" -d postgres -qc "CREATE DATABASE $db" >/dev/null
store="postgres://$PGUSER@127.0.0.1:5432/$db"
api=(); mqtt_ports=(); node_pids=()
for i in $(seq 1 "$NODES"); do
  start_node "node$i" --store "$store" --cluster "$NATS_URL" --node-id "node$i" --cluster-prefix "$prefix"
  api+=("http://127.0.0.1:$node_http"); mqtt_ports+=("$node_mqtt"); node_pids+=("$node_pid")
  # The first node applies the schema; the others start once it listens.
  wait_port "$node_http"; wait_port "$node_mqtt"
done
for _ in $(seq 1 100); do
  n=$(curl -s -H "Authorization: Bearer $token" "${api[0]}/v1/cluster" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("nodes", [])))' 2>/dev/null || echo 0)
  [[ "$n" == "$NODES" ]] && break
  sleep 0.2
done
[[ "$n" == "$NODES" ]] || { echo "node 1 lists $n nodes, not $NODES" >&2; exit 1; }
all_ports="$(IFS=,; echo "${mqtt_ports[*]}")"
all_pids="$(IFS=,; echo "${node_pids[*]}")"
telemetry cluster "$all_ports" "$all_pids"
# JetStream's own count, independent of Ferrocore's reads of its log.
jetstream_streams "${prefix}_log_" info > "$out/jetstream-streams-telemetry-cluster.txt" || true
echo "streams of the run, messages: $(tr '\n' ' ' < "$out/jetstream-streams-telemetry-cluster.txt")" >&2
command_run cluster-same-node "${api[0]}" "${mqtt_ports[0]}" "$all_pids"
command_run cluster-cross-node "${api[1]}" "${mqtt_ports[0]}" "$all_pids"
loadavg end
stop_all

python3 - "$out" "$(getconf CLK_TCK)" <<'PY' | tee "$out/summary.txt"
import json, pathlib, sys
out, hz = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def load(name):
    f = out / f"{name}.json"
    return json.loads(f.read_text())["results"] if f.exists() else None
def get(r, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p) if isinstance(r, dict) else None
    return r
def pg_us_per(name, ops):
    f = out / f"postgres-ticks-{name}.txt"
    if not f.exists() or not ops:
        return None
    return int(f.read_text()) / hz * 1e6 / ops
summary = {"run": out.name, "loadavg_start": (out / "loadavg-start.txt").read_text().split(), "telemetry": {}, "command": {}}
for name in ("single", "cluster"):
    r = load(f"telemetry-{name}")
    acked = get(r, "acked")
    summary["telemetry"][name] = None if r is None else {
        "msgs_per_second": get(r, "msgs_per_second"), "acked": acked,
        "puback_p50_us": get(r, "latency", "p50_us"), "puback_p99_us": get(r, "latency", "p99_us"),
        "ferrocore_cpu_us_per_message": get(r, "server_cpu_us_per_message"),
        "nats_cpu_us_per_message": get(r, "other_cpu_us_per_message"),
        "postgres_cpu_us_per_message": pg_us_per(f"telemetry-{name}", acked),
        "bench_cpu_us_per_message": (get(r, "cpu", "bench_cpu_seconds") or 0) * 1e6 / max(1, acked or 0),
        "missing": get(r, "verification", "missing_acknowledged"), "duplicates": get(r, "verification", "duplicates"),
        "device_errors": get(r, "errors", "count"), "sent": get(r, "sent"),
        "found": get(r, "verification", "found"),
        "verify_seconds": get(r, "verification", "seconds_after_publishing"),
    }
js = out / "jetstream-streams-telemetry-cluster.txt"
if js.exists() and summary["telemetry"].get("cluster"):
    counts = [int(l.split()[1]) for l in js.read_text().splitlines() if len(l.split()) == 2 and l.split()[1].isdigit()]
    summary["telemetry"]["cluster"]["jetstream_messages"] = sum(counts) if counts else None
for name in ("single", "cluster-same-node", "cluster-cross-node"):
    r = load(f"command-{name}")
    summary["command"][name] = None if r is None else {
        "commands": get(r, "commands"), "received": get(r, "received"),
        "p50_us": get(r, "latency", "p50_us"), "p99_us": get(r, "latency", "p99_us"),
        "rest_p50_us": get(r, "rest_latency", "p50_us"), "rest_p99_us": get(r, "rest_latency", "p99_us"),
        "errors": get(r, "errors", "count"), "seconds": get(r, "seconds"),
    }
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

def n(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)
def ms(v):
    return "-" if v is None else f"{v / 1000:.2f}"
t = summary["telemetry"]
print(f"run {out.name}, load average at start {' '.join(summary['loadavg_start'])}")
print(f"\n{'telemetry, QoS 1, 100 B':40}{'one node':>16}{'three nodes':>16}{'3 / 1':>8}")
rows = [("msg/s (PUBACKed)", "msgs_per_second", n), ("PUBACK p50 ms", "puback_p50_us", ms),
        ("PUBACK p99 ms", "puback_p99_us", ms), ("Ferrocore CPU µs/msg (all nodes)", "ferrocore_cpu_us_per_message", lambda v: n(v, "{:.1f}")),
        ("nats-server CPU µs/msg", "nats_cpu_us_per_message", lambda v: n(v, "{:.1f}")),
        ("postgres CPU µs/msg (whole command)", "postgres_cpu_us_per_message", lambda v: n(v, "{:.1f}")),
        ("bench CPU µs/msg", "bench_cpu_us_per_message", lambda v: n(v, "{:.1f}")),
        ("missing / duplicates", None, None), ("device errors", "device_errors", n)]
for label, key, f in rows:
    vals = []
    for name in ("single", "cluster"):
        s = t[name]
        if s is None:
            vals.append("failed")
        elif key is None:
            vals.append(f"{n(s['missing'])} / {n(s['duplicates'])}")
        else:
            vals.append(f(s[key]))
    ratio = ""
    if key in ("msgs_per_second", "puback_p50_us", "puback_p99_us", "ferrocore_cpu_us_per_message") and t["single"] and t["cluster"] \
            and t["single"][key] and t["cluster"][key] is not None:
        ratio = f"{t['cluster'][key] / t['single'][key]:.2f}"
    print(f"{label:40}{vals[0]:>16}{vals[1]:>16}{ratio:>8}")
c = summary["command"]
for name in ("single", "cluster"):
    s = t[name]
    if s:
        extra = f", JetStream holds {n(s.get('jetstream_messages'))}" if "jetstream_messages" in s else ""
        print(f"{name}: sent {n(s['sent'])}, PUBACKed {n(s['acked'])}, found in the log {n(s['found'])} "
              f"(read back in {n(s['verify_seconds'], '{:.1f}')} s){extra}")
print(f"\n{'commands, QoS 1':40}{'one node':>16}{'same node':>16}{'cross-node':>16}")
for label, f in (("sent / received", lambda s: f"{n(s['commands'])} / {n(s['received'])}"),
                 ("send → device p50 ms", lambda s: ms(s["p50_us"])), ("send → device p99 ms", lambda s: ms(s["p99_us"])),
                 ("REST call p50 ms", lambda s: ms(s["rest_p50_us"])), ("REST call p99 ms", lambda s: ms(s["rest_p99_us"])),
                 ("REST errors", lambda s: n(s["errors"]))):
    print(f"{label:40}" + "".join(f"{('failed' if c[k] is None else f(c[k])):>16}" for k in ("single", "cluster-same-node", "cluster-cross-node")))
print(f"\nresults: {out}")
PY
