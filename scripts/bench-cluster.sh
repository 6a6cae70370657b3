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
#   idle       (not in the default phases: PHASES="telemetry commands idle", or PHASES=idle alone)
#              idle MQTT-over-TLS connections, on fresh servers started for it with an MQTTS
#              listener (each node its own generated P-256 CA, DATA_DIR/tls/ca.pem): one node
#              holding IDLE_PER_NODE, then three fresh nodes (another fresh database and prefix)
#              holding IDLE_PER_NODE each, 3 × 16,700 = 50,100 by default. A process here may open
#              at most 20,000 files (the hard limit, which cannot be raised), so one
#              `ferrocore-bench idle` process per node: three at once, each with its node's REST
#              API, MQTTS port, CA and pid (its RSS growth / its connections), spread over
#              IDLE_SOURCE_IPS source addresses. They move in step (`idle --barrier DIR`): all
#              provision their devices, then all connect at the same moment, then all hold while
#              the script reads the nodes' RSS and node 1's GET /v1/cluster (each node's own count
#              of its connections), then all check (PINGREQ) and close. Reported per node: RSS
#              before → after, KB per connection, connect time, errors; and the total held and the
#              time from the common start to the last connect.
#
# Knobs (environment): PHASES ("telemetry commands"; add idle), DEVICES (150), DURATION (20 s),
# COMMANDS (1000), COMMAND_RATE (500), COMMAND_DEVICES (10), COMMAND_CONCURRENCY (16),
# IDLE_PER_NODE (16700), IDLE_CONCURRENCY (64 connects in flight per bench process),
# IDLE_SETTLE (5 s after the last connect before reading memory), IDLE_SOURCE_IPS (16), PGUSER
# (postgres), NATS_URL (nats://127.0.0.1:4222), QUICK=1 (DEVICES=30, DURATION=5, COMMANDS=300,
# IDLE_PER_NODE=1000: a smoke run).
#
# Results: target/bench-cluster/<run>/: one JSON per measurement ({telemetry,command,idle}-*.json),
# the bench processes' reports and logs (idle-*.txt, idle-*.log), the servers' logs, loadavg-*.txt,
# postgres-ticks-*.txt, the idle snapshots (idle-*-held.json: RSS, GET /v1/cluster, sockstat),
# summary.json and summary.txt (the tables printed at the end). Afterwards the nodes are stopped,
# the databases dropped and the JetStream streams of the run's prefixes (<prefix>_log_*) deleted
# through the JetStream API.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ "${QUICK:-0}" == 1 ]]; then
  : "${DEVICES:=30}" "${DURATION:=5}" "${COMMANDS:=300}" "${IDLE_PER_NODE:=1000}"
fi
PHASES="${PHASES:-telemetry commands}"
for p in $PHASES; do
  case "$p" in telemetry|commands|idle) ;; *) echo "unknown phase $p (telemetry, commands, idle)" >&2; exit 2 ;; esac
done
has_phase() { [[ " $PHASES " == *" $1 "* ]]; }
IDLE_PER_NODE="${IDLE_PER_NODE:-16700}"
IDLE_CONCURRENCY="${IDLE_CONCURRENCY:-64}"
IDLE_SETTLE="${IDLE_SETTLE:-5}"
IDLE_SOURCE_IPS="${IDLE_SOURCE_IPS:-16}"
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
# The idle phase's cluster: fresh nodes on a database and prefix of their own.
db_idle="${db}_idle"
prefix_idle="${prefix}_idle"
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
  for d in "$db" "$db_idle"; do
    psql -h 127.0.0.1 -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true
  done
  for p in "$prefix" "$prefix_idle"; do
    jetstream_streams "${p}_log_" delete >&2 || echo "could not delete the streams ${p}_log_* on $NATS_URL" >&2
  done
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

# start_node NAME [cluster args...] → node_pid, node_http, node_mqtt, node_mqtts (with NODE_TLS=1:
# an MQTT-over-TLS listener too, its certificate from the CA the node generates in its data
# directory, node_ca), node_data: a fresh server.
start_node() {
  local name="$1"; shift
  node_http=$(free_port); node_mqtt=$(free_port); node_mqtts=off
  node_data="$work/data-$name"; node_ca="$node_data/tls/ca.pem"
  local mqtts=off
  if [[ "${NODE_TLS:-0}" == 1 ]]; then node_mqtts=$(free_port); mqtts="127.0.0.1:$node_mqtts"; fi
  FERROCORE_ADMIN_TOKEN="$token" FERROCORE_LOG=warn "$server_bin" serve --data-dir "$node_data" \
    --http "127.0.0.1:$node_http" --grpc off --mqtts "$mqtts" --mqtt "127.0.0.1:$node_mqtt" \
    --mqtt-messages-per-second 1000000 --topic-retention-mb 8192 "$@" > "$out/server-$name.log" 2>&1 &
  node_pid=$!
  pids+=("$node_pid")
}
# wait_node: the last started node listens on all its ports.
wait_node() {
  wait_port "$node_http"; wait_port "$node_mqtt"
  if [[ "$node_mqtts" != off ]]; then
    wait_port "$node_mqtts"
    # The generated CA file can appear after the listener answers.
    for _ in $(seq 1 200); do [[ -s "$node_ca" ]] && break; sleep 0.05; done
    [[ -s "$node_ca" ]] || { echo "no CA file $node_ca" >&2; return 1; }
  fi
}
# start_cluster DB PREFIX NAME [node args...] → api, mqtt_ports, node_pids, tls_ports, cas: NODES fresh nodes on
# a fresh database DB, once node 1 lists them all in GET /v1/cluster.
start_cluster() {
  local cdb="$1" cprefix="$2" name="$3" n i; shift 3
  psql -h 127.0.0.1 -U "$PGUSER" -d postgres -qc "CREATE DATABASE $cdb" >/dev/null
  local store="postgres://$PGUSER@127.0.0.1:5432/$cdb"
  api=(); mqtt_ports=(); node_pids=(); tls_ports=(); cas=()
  for i in $(seq 1 "$NODES"); do
    start_node "$name$i" --store "$store" --cluster "$NATS_URL" --node-id "node$i" --cluster-prefix "$cprefix" "$@"
    api+=("http://127.0.0.1:$node_http"); mqtt_ports+=("$node_mqtt"); node_pids+=("$node_pid")
    tls_ports+=("$node_mqtts"); cas+=("$node_ca")
    # The first node applies the schema; the others start once it listens.
    wait_node
  done
  for _ in $(seq 1 100); do
    n=$(curl -s -H "Authorization: Bearer $token" "${api[0]}/v1/cluster" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("nodes", [])))' 2>/dev/null || echo 0)
    [[ "$n" == "$NODES" ]] && break
    sleep 0.2
  done
  [[ "$n" == "$NODES" ]] || { echo "node 1 lists $n nodes, not $NODES" >&2; exit 1; }
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

# proc_alive PID: the process runs (not a zombie).
proc_alive() { [[ -r /proc/$1/stat ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
# barrier_wait DIR MARK K PIDS...: until K bench processes created DIR/MARK.*; fails if one of
# PIDS ended first.
barrier_wait() {
  local dir="$1" mark="$2" k="$3" p; shift 3
  while :; do
    (( $(find "$dir" -name "$mark.*" | wc -l) >= k )) && return 0
    for p in "$@"; do
      if ! proc_alive "$p"; then echo "bench process $p ended before '$mark'" >&2; return 1; fi
    done
    sleep 0.1
  done
}
# machine_snapshot FILE [API]: the time, the servers' RSS (idle_pid), sockstat, meminfo, and with
# API node 1's GET /v1/cluster (each node's own count of its connections, as of its last heartbeat).
machine_snapshot() {
  local f="$1" api_url="${2:-}" cluster="null" rss="" p
  for p in "${idle_pid[@]}"; do rss+="$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo null),"; done
  if [[ -n "$api_url" ]]; then
    cluster=$(curl -s -H "Authorization: Bearer $token" "$api_url/v1/cluster" || echo null)
    [[ -n "$cluster" ]] || cluster=null
  fi
  python3 - "$f" "$(date +%s%3N)" "[${rss%,}]" "$cluster" <<'PY'
import json, sys
f, ms, rss, cluster = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
sock = {}
for line in open("/proc/net/sockstat"):
    k, _, v = line.partition(":")
    it = v.split()
    sock[k] = dict(zip(it[::2], map(int, it[1::2])))
mem = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/meminfo")}
json.dump({"unix_ms": ms, "server_rss_kib": rss, "cluster": cluster, "sockstat": sock,
           "meminfo_kib": {k: mem.get(k) for k in ("MemAvailable", "Slab", "SUnreclaim")},
           "loadavg": open("/proc/loadavg").read().split()[:3]}, open(f, "w"), indent=1)
PY
}
# idle_run NAME [API]: one `ferrocore-bench idle` per entry of idle_api/idle_tls/idle_ca/idle_pid,
# all at once, in step through a barrier directory; with API, node 1's GET /v1/cluster is kept.
idle_run() {
  local name="$1" cluster_api="${2:-}" k=${#idle_api[@]} dir="$work/barrier-$1" bpids=() i p
  mkdir -p "$dir"
  log "idle, $name: $k × $IDLE_PER_NODE TLS connections, $IDLE_CONCURRENCY connects in flight per process"
  loadavg "idle-$name"
  for i in $(seq 0 $((k - 1))); do
    "$bench" --api "${idle_api[i]}" --token "$token" --tls --port "${idle_tls[i]}" --ca "${idle_ca[i]}" \
      --server-pid "${idle_pid[i]}" --source-ips "$IDLE_SOURCE_IPS" --progress 5 \
      --label "idle $name node$((i + 1))" --json "$out/idle-$name-node$((i + 1)).json" \
      idle --connections "$IDLE_PER_NODE" --concurrency "$IDLE_CONCURRENCY" --settle "$IDLE_SETTLE" \
      --hold "$IDLE_SETTLE" --barrier "$dir" > "$out/idle-$name-node$((i + 1)).txt" 2> "$out/idle-$name-node$((i + 1)).log" &
    bpids+=("$!"); pids+=("$!")
  done
  barrier_wait "$dir" provisioned "$k" "${bpids[@]}" || true
  echo "all $k provisioned; connecting" >&2
  machine_snapshot "$out/idle-$name-before.json"
  touch "$dir/go"
  barrier_wait "$dir" held "$k" "${bpids[@]}" || true
  # One heartbeat (2 s) and a little: GET /v1/cluster then has every node's count as of now.
  sleep 2.5
  machine_snapshot "$out/idle-$name-held.json" "$cluster_api"
  echo "all $k connected and settled: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); c=d["cluster"]; print("servers count", [n.get("connections") for n in c["nodes"]] if c else "-", "RSS MiB", [round(r/1024) for r in d["server_rss_kib"] if r])' "$out/idle-$name-held.json")" >&2
  touch "$dir/release"
  for p in "${bpids[@]}"; do wait "$p" || echo "idle bench process $p ($name) failed" >&2; done
  local keep=()
  for p in "${pids[@]}"; do [[ " ${bpids[*]} " == *" $p "* ]] || keep+=("$p"); done
  pids=("${keep[@]}")
  for i in $(seq 1 "$k"); do cat "$out/idle-$name-node$i.txt" >&2 || true; done
}
# Above this a node needs its connection cap raised (stock default 18,000).
idle_cap=()
if (( IDLE_PER_NODE > 17900 )); then idle_cap=(--mqtt-max-connections $(( IDLE_PER_NODE + 100 ))); fi

loadavg start
echo "run $run: PHASES=\"$PHASES\" DEVICES=$DEVICES DURATION=$DURATION COMMANDS=$COMMANDS COMMAND_RATE=$COMMAND_RATE IDLE_PER_NODE=$IDLE_PER_NODE" >&2

# 1. One node, embedded store and log.
if has_phase telemetry || has_phase commands; then
  log "one node (embedded store and topic log)"
  start_node single
  wait_node
  api=("http://127.0.0.1:$node_http")
  if has_phase telemetry; then telemetry single "$node_mqtt" "$node_pid"; fi
  if has_phase commands; then command_run single "${api[0]}" "$node_mqtt" "$node_pid"; fi
  stop_all
fi
if has_phase idle; then
  log "one node, TLS listener (embedded store and topic log)"
  NODE_TLS=1 start_node idle-single "${idle_cap[@]}"
  wait_node
  idle_api=("http://127.0.0.1:$node_http"); idle_tls=("$node_mqtts"); idle_ca=("$node_ca"); idle_pid=("$node_pid")
  idle_run single
  stop_all
fi

# 2. Three nodes: PostgreSQL + NATS (JetStream log).
if has_phase telemetry || has_phase commands; then
  log "three nodes (database $db, prefix $prefix)"
  start_cluster "$db" "$prefix" node
  all_ports="$(IFS=,; echo "${mqtt_ports[*]}")"
  all_pids="$(IFS=,; echo "${node_pids[*]}")"
  if has_phase telemetry; then
    telemetry cluster "$all_ports" "$all_pids"
    # JetStream's own count, independent of Ferrocore's reads of its log.
    jetstream_streams "${prefix}_log_" info > "$out/jetstream-streams-telemetry-cluster.txt" || true
    echo "streams of the run, messages: $(tr '\n' ' ' < "$out/jetstream-streams-telemetry-cluster.txt")" >&2
  fi
  if has_phase commands; then
    command_run cluster-same-node "${api[0]}" "${mqtt_ports[0]}" "$all_pids"
    command_run cluster-cross-node "${api[1]}" "${mqtt_ports[0]}" "$all_pids"
  fi
  stop_all
fi
if has_phase idle; then
  log "three nodes, TLS listeners (database $db_idle, prefix $prefix_idle)"
  NODE_TLS=1 start_cluster "$db_idle" "$prefix_idle" idle-node "${idle_cap[@]}"
  idle_api=("${api[@]}"); idle_tls=("${tls_ports[@]}"); idle_ca=("${cas[@]}"); idle_pid=("${node_pids[@]}")
  idle_run cluster "${api[0]}"
  stop_all
fi
loadavg end

python3 - "$out" "$(getconf CLK_TCK)" "$PHASES" <<'PY' | tee "$out/summary.txt"
import json, pathlib, sys
out, hz, phases = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()
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
def idle_summary(name):
    nodes = []
    for i in range(1, 4):
        r = load(f"idle-{name}-node{i}")
        if r is None:
            if (out / f"idle-{name}-node{i}.log").exists():
                nodes.append(None)
            continue
        nodes.append({
            "connected": r.get("connected"), "failed": get(r, "failed", "count"), "still_open": r.get("still_open"),
            "connect_seconds": r.get("connect_seconds"),
            "connects_per_second": (r.get("connected") or 0) / r["connect_seconds"] if r.get("connect_seconds") else None,
            "rss_mib_before": (r.get("server_rss_kib_before") or 0) / 1024, "rss_mib_after": (r.get("server_rss_kib_after") or 0) / 1024,
            "server_kb_per_connection": None if r.get("server_bytes_per_connection") is None else r["server_bytes_per_connection"] / 1000,
            "bench_kb_per_connection": None if r.get("bench_bytes_per_connection") is None else r["bench_bytes_per_connection"] / 1000,
            "server_cpu_us_per_connect": r.get("server_cpu_us_per_connect"),
            "connect_started_unix_ms": r.get("connect_started_unix_ms"), "connect_finished_unix_ms": r.get("connect_finished_unix_ms"),
            "check_started_unix_ms": r.get("check_started_unix_ms"),
            "failure_samples": get(r, "failed", "samples"),
        })
    if not nodes:
        return None
    ok = [x for x in nodes if x]
    held = out / f"idle-{name}-held.json"
    before = out / f"idle-{name}-before.json"
    held = json.loads(held.read_text()) if held.exists() else None
    before = json.loads(before.read_text()) if before.exists() else None
    starts = [x["connect_started_unix_ms"] for x in ok if x["connect_started_unix_ms"]]
    ends = [x["connect_finished_unix_ms"] for x in ok if x["connect_finished_unix_ms"]]
    checks = [x["check_started_unix_ms"] for x in ok if x["check_started_unix_ms"]]
    s = {"nodes": nodes,
         "connected": sum(x["connected"] or 0 for x in ok), "failed": sum(x["failed"] or 0 for x in ok),
         "still_open": sum(x["still_open"] or 0 for x in ok),
         "connect_all_seconds": (max(ends) - min(starts)) / 1000 if starts and ends else None,
         "start_spread_ms": (max(starts) - min(starts)) if starts else None,
         "all_held_at_once": bool(ends and checks and max(ends) < min(checks)),
         "servers_count_held": None, "server_rss_mib_held": None}
    if s["connect_all_seconds"]:
        s["connects_per_second"] = s["connected"] / s["connect_all_seconds"]
    if held:
        c = held.get("cluster")
        if c:
            s["servers_count_held"] = {n.get("nodeId"): n.get("connections") for n in c.get("nodes", [])}
        s["server_rss_mib_held"] = [None if r is None else r / 1024 for r in held.get("server_rss_kib", [])]
        s["loadavg_held"] = held.get("loadavg")
        if before:
            tb, th = before["sockstat"].get("TCP", {}), held["sockstat"].get("TCP", {})
            s["machine"] = {
                "tcp_sockets_delta": th.get("inuse", 0) - tb.get("inuse", 0),
                "tcp_mem_pages_delta": th.get("mem", 0) - tb.get("mem", 0),
                "slab_mib_delta": (held["meminfo_kib"]["Slab"] - before["meminfo_kib"]["Slab"]) / 1024,
                "memavailable_mib_delta": (held["meminfo_kib"]["MemAvailable"] - before["meminfo_kib"]["MemAvailable"]) / 1024,
            }
    return s
summary["idle"] = {name: idle_summary(name) for name in ("single", "cluster")}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

def n(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)
def ms(v):
    return "-" if v is None else f"{v / 1000:.2f}"
t = summary["telemetry"]
print(f"run {out.name}, phases {' '.join(phases)}, load average at start {' '.join(summary['loadavg_start'])}")
if "telemetry" in phases:
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
if "commands" in phases:
  print(f"\n{'commands, QoS 1':40}{'one node':>16}{'same node':>16}{'cross-node':>16}")
  for label, f in (("sent / received", lambda s: f"{n(s['commands'])} / {n(s['received'])}"),
                   ("send → device p50 ms", lambda s: ms(s["p50_us"])), ("send → device p99 ms", lambda s: ms(s["p99_us"])),
                   ("REST call p50 ms", lambda s: ms(s["rest_p50_us"])), ("REST call p99 ms", lambda s: ms(s["rest_p99_us"])),
                   ("REST errors", lambda s: n(s["errors"]))):
      print(f"{label:40}" + "".join(f"{('failed' if c[k] is None else f(c[k])):>16}" for k in ("single", "cluster-same-node", "cluster-cross-node")))
for name, label in (("single", "one node"), ("cluster", "three nodes")):
    s = summary["idle"].get(name)
    if s is None:
        continue
    print(f"\nidle TLS connections, {label}: {s['connected']:,} connected, {s['still_open']:,} still open at the end, "
          f"{s['failed']:,} failed; all connected in {n(s['connect_all_seconds'], '{:.1f}')} s "
          f"({n(s.get('connects_per_second'))}/s, starts within {n(s['start_spread_ms'])} ms)"
          + ("" if name == "single" else f"; all held at once: {'yes' if s['all_held_at_once'] else 'NO'}"))
    print(f"{'node':6}{'connected':>11}{'failed':>8}{'open':>8}{'connect s':>11}{'RSS before → after MiB':>26}{'KB/conn':>9}{'µs CPU/conn':>13}{'bench KB/conn':>15}")
    for i, x in enumerate(s["nodes"], 1):
        if x is None:
            print(f"{i:<6}failed (see idle-{name}-node{i}.log)")
            continue
        print(f"{i:<6}{n(x['connected']):>11}{n(x['failed']):>8}{n(x['still_open']):>8}{n(x['connect_seconds'], '{:.1f}'):>11}"
              f"{x['rss_mib_before']:>15.1f} → {x['rss_mib_after']:>7.1f}{n(x['server_kb_per_connection'], '{:.2f}'):>9}"
              f"{n(x['server_cpu_us_per_connect']):>13}{n(x['bench_kb_per_connection'], '{:.2f}'):>15}")
        for e in (x.get("failure_samples") or [])[:3]:
            print(f"      e.g. {e}")
    if s.get("servers_count_held"):
        print(f"the nodes' own count (GET /v1/cluster while all held): {s['servers_count_held']}")
    if s.get("machine"):
        m = s["machine"]
        print(f"machine while held, against before connecting: TCP sockets {m['tcp_sockets_delta']:+,}, TCP buffer pages "
              f"{m['tcp_mem_pages_delta']:+,}, slab {m['slab_mib_delta']:+.0f} MiB, MemAvailable {m['memavailable_mib_delta']:+.0f} MiB; "
              f"load average {' '.join(s.get('loadavg_held') or [])}")
print(f"\nresults: {out}")
PY
