#!/usr/bin/env bash
# Ferrocore's external sinks (`--sink`), per kind of destination, side by side in one run:
#
#   ceiling        the destination on its own: ferrocore-bench sink-ceiling publishes 100-byte
#                  messages with the client crate Ferrocore uses (async-nats, lapin, redis,
#                  reqwest, google-cloud-pubsub) as fast as the destination confirms them, with
#                  the pipelining Ferrocore's destination uses (batches of 4096 confirmed before
#                  the next, NATS with at most 1024 PubAcks outstanding; Redis: pipelines of 4096;
#                  webhook: one POST at a time to the bench's receiver). Twice: the bare
#                  payload, and the payload with Ferrocore's metadata (like for like).
#   direct         the same client publishing directly while 50 devices publish at full speed to a
#                  Ferrocore without sinks: the destination's ceiling on a machine as busy as when
#                  Ferrocore forwards (DIRECT=0 skips it).
#   forward        Ferrocore (examples/bench-server --sink 'projects/*/topics/*=URL') forwarding
#                  device telemetry: 50 devices publish QoS 1 at full speed for DURATION s while
#                  the destination's own count and GET /v1/sinks are sampled every second. The
#                  bench then waits up to 3 x DURATION s for the sink to drain what is left.
#   rate           devices at TARGET_FRACTION (0.8) of the ceiling with Ferrocore's metadata (like
#                  for like: the messages Ferrocore must send), with the sink and without
#                  (the same rate, a server without sinks): does the sink keep up with bounded
#                  lag, and is the PUBACK latency the same? When the devices cannot publish that
#                  fast (Redis), at TARGET_FRACTION of what they reach without a sink instead.
#   catchup        the destination is unavailable for OUTAGE (60) s while devices publish at
#                  min(that rate, CATCHUP_MAX_RATE): NATS and Redis on a server of their own that
#                  starts only then, RabbitMQ's exchange and Pub/Sub's topic created only then,
#                  the webhook receiver answering 503 until then. Devices stop, the destination
#                  comes back, and the catch-up is timed from the first message delivered to lag 0,
#                  with the server's CPU per forwarded message (forwarding alone).
#
# Every run gets a fresh server (a new data directory) and fresh streams, exchanges + queues, keys
# and topics, removed afterwards. Results: target/bench/<run>/*.json, a summary table on stdout
# and target/bench/<run>/sinks-summary.json.
#
# Needs the local services the sinks forward to: NATS with JetStream on 127.0.0.1:4222, RabbitMQ on
# 5672 (guest/guest), Redis on 6379 (scripts/services.sh starts them when down), and for pubsub
# Google's Pub/Sub emulator (/usr/lib/google-cloud-sdk/platform/pubsub-emulator), started here on a
# free port.
#
# Knobs (environment): SINKS ("nats amqp redis webhook pubsub"), DURATION (s per measurement,
# default 20), OUTAGE (60), DEVICES (50), PAYLOAD (100), TARGET_FRACTION (0.8), CATCHUP_MAX_RATE
# (20000 msg/s), DIRECT (1), QUICK=1 (DURATION=5, OUTAGE=10: a smoke run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ "${QUICK:-0}" == 1 ]]; then
  : "${DURATION:=5}" "${OUTAGE:=10}"
fi
DURATION="${DURATION:-20}"
OUTAGE="${OUTAGE:-60}"
SINKS="${SINKS:-nats amqp redis webhook pubsub}"
DEVICES="${DEVICES:-50}"
PAYLOAD="${PAYLOAD:-100}"
TARGET_FRACTION="${TARGET_FRACTION:-0.8}"
CATCHUP_MAX_RATE="${CATCHUP_MAX_RATE:-20000}"
DIRECT="${DIRECT:-1}"
target_dir="$(bash "$root/scripts/cargo-target-dir.sh")"
run="$(date -u +%Y%m%dT%H%M%SZ)"
out="$root/target/bench/$run"
work="$(mktemp -d /tmp/ferrocore-bench-sinks.XXXXXX)"
mkdir -p "$out"

log() { printf '\n== %s\n' "$*" >&2; }

log "building (release)"
cargo build --release -p ferrocore-bench --bins --example bench-server
bench="$target_dir/release/ferrocore-bench"
server_bin="$target_dir/release/examples/bench-server"

pids=()
dests=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # Whatever a failed run left behind at the destinations.
  for d in "${dests[@]}"; do "$bench" sink-admin teardown --dest "$d" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

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
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=()
  for p in "${pids[@]}"; do [[ "$p" != "$1" ]] && keep+=("$p"); done
  pids=("${keep[@]}")
}

need_services=0
for k in $SINKS; do
  case "$k" in
    nats) listening 4222 || need_services=1 ;;
    amqp) listening 5672 || need_services=1 ;;
    redis) listening 6379 || need_services=1 ;;
    webhook|pubsub) ;;
    *) echo "unknown sink kind $k (nats amqp redis webhook pubsub)" >&2; exit 2 ;;
  esac
done
if [[ "$need_services" == 1 ]]; then
  log "starting the local services"
  bash "$root/scripts/services.sh"
fi

emulator_port=""
emulator_pid=""
if [[ " $SINKS " == *" pubsub "* ]]; then
  emu=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
  [[ -x "$emu" ]] || { echo "Google's Pub/Sub emulator is not installed ($emu)" >&2; exit 1; }
  emulator_port=$(free_port)
  log "starting Google's Pub/Sub emulator on $emulator_port"
  "$emu" --host=127.0.0.1 --port="$emulator_port" > "$work/emulator.log" 2>&1 &
  emulator_pid=$!
  pids+=("$emulator_pid")
  wait_port "$emulator_port"
  sleep 2
  # The launcher script execs java, or runs it as a child.
  emulator_pid="$(pgrep -P "$emulator_pid" java || echo "$emulator_pid")"
fi

token="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
tag="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"

# dest_url KIND NAME [PORT]: a fresh destination named after this run.
dest_url() {
  local kind="$1" name="fcb$tag$2" port="${3:-}"
  case "$kind" in
    nats) echo "nats://127.0.0.1:${port:-4222}/ferrocore.bench.$name?stream=${name^^}" ;;
    amqp) echo "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=$name&routing_key=telemetry" ;;
    redis) echo "redis://127.0.0.1:${port:-6379}?stream=$name" ;;
    webhook) echo "http://127.0.0.1:$(free_port)/push/$name" ;;
    pubsub) echo "pubsub://127.0.0.1:$emulator_port/projects/ferrocore-bench/topics/$name" ;;
  esac
}

# dest_pid KIND: the destination's server process, for its CPU time.
dest_pid() {
  local p=""
  case "$1" in
    nats) p="$(pgrep -o -x nats-server || true)" ;;
    amqp) p="$(pgrep -o -x beam.smp || true)" ;;
    redis) p="$(pgrep -o -x redis-server || true)" ;;
    pubsub) p="$emulator_pid" ;;
  esac
  if [[ -n "$p" ]]; then echo "--dest-pid $p"; fi
}

# start_ferrocore [URL] → server_pid, target_args: a fresh server, with a sink to URL if given.
start_ferrocore() {
  local http_port mqtt_port sink=()
  http_port=$(free_port); mqtt_port=$(free_port)
  if [[ -n "${1:-}" ]]; then sink=(--sink "projects/*/topics/*=$1"); fi
  local data="$work/ferrocore-data-$RANDOM$RANDOM"
  FERROCORE_ADMIN_TOKEN="$token" "$server_bin" --data-dir "$data" --http "127.0.0.1:$http_port" \
    --mqtt "127.0.0.1:$mqtt_port" --max-messages-per-second 10000000 --max-connections 19500 \
    --topic-retention-mb 16384 "${sink[@]}" > "$work/ferrocore.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  wait_port "$http_port"; wait_port "$mqtt_port"
  target_args=(--broker ferrocore --api "http://127.0.0.1:$http_port" --token "$token" --server-pid "$server_pid"
               --port "$mqtt_port" --progress 5)
}

# forward NAME [URL] ARGS...: a sink-forward run on a fresh server (with a sink to URL unless "").
forward() {
  local name="$1" url="$2"; shift 2
  start_ferrocore "$url"
  log "$name"
  local d=()
  if [[ -n "$url" ]]; then d=(--dest "$url"); fi
  "$bench" "${target_args[@]}" --label "$name" --json "$out/$name.json" sink-forward "${d[@]}" \
    --devices "$DEVICES" --payload "$PAYLOAD" "$@" || echo "run $name failed" >&2
  stop "$server_pid"
}

# json FILE EXPR: a value from a result file (python expression over r = results), or empty.
json() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null || true
import json, sys
try:
    r = json.load(open(sys.argv[1]))["results"]
    v = eval(sys.argv[2], {"r": r})
    print("" if v is None else v)
except Exception:
    pass
PY
}

log "baseline: no sink, devices at full speed"
forward baseline-full "" --duration "$DURATION"
device_max="$(json "$out/baseline-full.json" 'round(r["msgs_per_second"])')"

for kind in $SINKS; do
  # 1. The destination alone: bare payload, then with Ferrocore's metadata. First 5 s not
  # counted, so that a JIT (the emulator's) or a cold cache does not weigh on the first figure.
  url="$(dest_url "$kind" cw)"; dests+=("$url")
  log "$kind warm-up (not counted)"
  "$bench" --progress 0 sink-ceiling --dest "$url" --duration 5 --payload "$PAYLOAD" --metadata ferrocore >/dev/null \
    || echo "$kind warm-up failed" >&2
  for meta in none ferrocore; do
    url="$(dest_url "$kind" "c$meta")"; dests+=("$url")
    log "$kind ceiling ($meta metadata)"
    # shellcheck disable=SC2046
    "$bench" --progress 5 --label "$kind ceiling $meta" --json "$out/$kind-ceiling-$meta.json" sink-ceiling \
      --dest "$url" --duration "$DURATION" --payload "$PAYLOAD" --metadata "$meta" $(dest_pid "$kind") \
      || echo "$kind ceiling failed" >&2
  done
  # Like for like: the same messages Ferrocore sends (its attributes as the system's metadata).
  ceiling="$(json "$out/$kind-ceiling-ferrocore.json" 'round(r["msgs_per_second"])')"
  [[ -n "$ceiling" ]] || ceiling="$(json "$out/$kind-ceiling-none.json" 'round(r["msgs_per_second"])')"

  # 2. The same client directly, under the device load.
  if [[ "$DIRECT" == 1 ]]; then
    url="$(dest_url "$kind" d)"; dests+=("$url")
    # shellcheck disable=SC2046
    forward "$kind-direct" "" --dest "$url" --direct --duration "$DURATION" $(dest_pid "$kind")
  fi

  # 3. Ferrocore forwarding, devices at full speed.
  url="$(dest_url "$kind" f)"; dests+=("$url")
  "$bench" sink-admin setup --dest "$url" >/dev/null
  # shellcheck disable=SC2046
  forward "$kind-forward" "$url" --duration "$DURATION" --drain-timeout $((3 * DURATION)) $(dest_pid "$kind")

  # 4. Devices at TARGET_FRACTION of the ceiling, with and without the sink.
  rate=""
  if [[ -n "$ceiling" && -n "$device_max" ]]; then
    rate="$(python3 -c "print(round(min($ceiling, $device_max) * $TARGET_FRACTION))")"
  fi
  if [[ -n "$rate" ]]; then
    forward "$kind-baseline-rate" "" --rate "$rate" --duration "$DURATION"
    url="$(dest_url "$kind" r)"; dests+=("$url")
    "$bench" sink-admin setup --dest "$url" >/dev/null
    # shellcheck disable=SC2046
    forward "$kind-forward-rate" "$url" --rate "$rate" --duration "$DURATION" --drain-timeout $((3 * DURATION)) \
      $(dest_pid "$kind")
  else
    log "$kind: no ceiling or no device rate measured; no fixed-rate runs"
  fi

  # 5. Catch-up after an outage.
  crate="$(python3 -c "c=${ceiling:-0}*$TARGET_FRACTION; print(round(min(c, $CATCHUP_MAX_RATE)) if c > 0 else $CATCHUP_MAX_RATE)")"
  outage=(--outage "$OUTAGE" --rate "$crate")
  case "$kind" in
    nats)
      p=$(free_port); mkdir -p "$work/nats-outage"
      url="$(dest_url nats o "$p")"
      outage+=(--outage-server "nats-server -a 127.0.0.1 -p $p -js -sd $work/nats-outage") ;;
    redis)
      p=$(free_port)
      url="$(dest_url redis o "$p")"
      outage+=(--outage-server "redis-server --port $p --bind 127.0.0.1 --save '' --appendonly no") ;;
    *)
      url="$(dest_url "$kind" o)"; dests+=("$url")
      # Absent until the outage ends: no exchange, no topic (the webhook answers 503 meanwhile).
      "$bench" sink-admin teardown --dest "$url" >/dev/null 2>&1 || true ;;
  esac
  forward "$kind-catchup" "$url" "${outage[@]}"
done

python3 - "$out" "$SINKS" "$TARGET_FRACTION" <<'PY'
import json, pathlib, sys
d, kinds, fraction = pathlib.Path(sys.argv[1]), sys.argv[2].split(), float(sys.argv[3])
def load(name):
    f = d / f"{name}.json"
    if not f.exists():
        return None
    doc = json.loads(f.read_text())
    return dict(doc["results"], params=doc.get("params"))
def get(r, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p) if isinstance(r, dict) else None
    return r
def ratio(a, b):
    return a / b if (a is not None and b) else None
base = load("baseline-full")
summary = {"run": d.name, "target_fraction": fraction, "baseline_full": {
    "device_msgs_per_second": get(base, "msgs_per_second"),
    "puback_p50_us": get(base, "latency", "p50_us"), "puback_p99_us": get(base, "latency", "p99_us"),
    "server_cpu_us_per_message": get(base, "server_cpu_us_per_message")}, "kinds": {}}
for k in kinds:
    c0, c1, di = load(f"{k}-ceiling-none"), load(f"{k}-ceiling-ferrocore"), load(f"{k}-direct")
    fw, br, fr, cu = load(f"{k}-forward"), load(f"{k}-baseline-rate"), load(f"{k}-forward-rate"), load(f"{k}-catchup")
    ceiling = get(c0, "msgs_per_second")
    fwd = get(fw, "destination_msgs_per_second")
    s = {
        "ceiling_msgs_per_second": ceiling,
        "ceiling_with_metadata_msgs_per_second": get(c1, "msgs_per_second"),
        "ceiling_under_device_load_msgs_per_second": get(di, "direct_msgs_per_second"),
        "destination_cpu_us_per_message_ceiling": get(c0, "destination_cpu_us_per_message"),
        "full_speed": {
            "device_msgs_per_second": get(fw, "msgs_per_second"),
            "forward_msgs_per_second": fwd,
            "ratio_to_ceiling": ratio(fwd, ceiling),
            "ratio_to_ceiling_with_metadata": ratio(fwd, get(c1, "msgs_per_second")),
            "ratio_to_ceiling_under_device_load": ratio(fwd, get(di, "direct_msgs_per_second")),
            "max_lag_messages": get(fw, "max_lag_messages"), "max_lag_seconds": get(fw, "max_lag_seconds"),
            "lag_growth_per_second": get(fw, "lag_growth_per_second_second_half"),
            "drain_seconds": get(fw, "drain_seconds"),
            "puback_p50_us": get(fw, "latency", "p50_us"), "puback_p99_us": get(fw, "latency", "p99_us"),
            "server_cpu_us_per_forwarded": get(fw, "server_cpu_us_per_forwarded"),
            "server_cpu_us_per_message": get(fw, "server_cpu_us_per_message"),
            "missing_at_destination": get(fw, "missing_at_destination"),
        },
        "at_rate": None if fr is None else {
            "target_msgs_per_second": get(fr, "params", "rate"),
            "device_msgs_per_second": get(fr, "msgs_per_second"),
            "forward_msgs_per_second": get(fr, "destination_msgs_per_second"),
            "ratio_to_ceiling": ratio(get(fr, "destination_msgs_per_second"), ceiling),
            "ratio_to_ceiling_with_metadata": ratio(get(fr, "destination_msgs_per_second"), get(c1, "msgs_per_second")),
            "forwarded_per_offered": ratio(get(fr, "destination_msgs_per_second"), get(fr, "msgs_per_second")),
            "max_lag_messages": get(fr, "max_lag_messages"), "max_lag_seconds": get(fr, "max_lag_seconds"),
            "lag_growth_per_second": get(fr, "lag_growth_per_second_second_half"),
            "puback_p50_us": get(fr, "latency", "p50_us"), "puback_p99_us": get(fr, "latency", "p99_us"),
            "puback_p50_us_without_sink": get(br, "latency", "p50_us"),
            "puback_p99_us_without_sink": get(br, "latency", "p99_us"),
            "server_cpu_us_per_message": get(fr, "server_cpu_us_per_message"),
            "server_cpu_us_per_message_without_sink": get(br, "server_cpu_us_per_message"),
            "missing_at_destination": get(fr, "missing_at_destination"),
        },
        "catchup": None if cu is None else dict(get(cu, "catchup") or {}, device_msgs_per_second=get(cu, "msgs_per_second"),
                                                missing_at_destination=get(cu, "missing_at_destination"),
                                                ratio_to_ceiling=ratio(get(cu, "catchup", "catchup_msgs_per_second"), ceiling),
                                                ratio_to_ceiling_with_metadata=ratio(get(cu, "catchup", "catchup_msgs_per_second"), get(c1, "msgs_per_second"))),
    }
    summary["kinds"][k] = s
(d / "sinks-summary.json").write_text(json.dumps(summary, indent=2) + "\n")

def n(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)
def ms(v):
    return "-" if v is None else f"{v / 1000:.1f}"
rows = [
    ("ceiling msg/s (bare 100 B)", lambda s: n(s["ceiling_msgs_per_second"])),
    ("ceiling msg/s (Ferrocore's metadata)", lambda s: n(s["ceiling_with_metadata_msgs_per_second"])),
    ("ceiling msg/s under device load", lambda s: n(s["ceiling_under_device_load_msgs_per_second"])),
    ("full speed: device msg/s", lambda s: n(s["full_speed"]["device_msgs_per_second"])),
    ("full speed: Ferrocore forward msg/s", lambda s: n(s["full_speed"]["forward_msgs_per_second"])),
    ("  / ceiling (bare)", lambda s: n(s["full_speed"]["ratio_to_ceiling"], "{:.2f}")),
    ("  / ceiling (metadata)", lambda s: n(s["full_speed"]["ratio_to_ceiling_with_metadata"], "{:.2f}")),
    ("  / ceiling under device load", lambda s: n(s["full_speed"]["ratio_to_ceiling_under_device_load"], "{:.2f}")),
    ("full speed: max lag msgs / s", lambda s: f'{n(s["full_speed"]["max_lag_messages"])} / {n(s["full_speed"]["max_lag_seconds"], "{:.1f}")}'),
    ("full speed: drained after (s)", lambda s: n(s["full_speed"]["drain_seconds"], "{:.1f}")),
    ("full speed: server µs / PUBACKed msg", lambda s: n(s["full_speed"]["server_cpu_us_per_message"], "{:.1f}")),
    (f"at {fraction:g} x ceiling (metadata): target msg/s", lambda s: n((s["at_rate"] or {}).get("target_msgs_per_second"))),
    ("  device msg/s (PUBACKed)", lambda s: n((s["at_rate"] or {}).get("device_msgs_per_second"))),
    ("  forward msg/s", lambda s: n((s["at_rate"] or {}).get("forward_msgs_per_second"))),
    ("  / ceiling (metadata)", lambda s: n((s["at_rate"] or {}).get("ratio_to_ceiling_with_metadata"), "{:.2f}")),
    ("  forwarded / offered", lambda s: n((s["at_rate"] or {}).get("forwarded_per_offered"), "{:.2f}")),
    ("  max lag msgs / s", lambda s: "-" if not s["at_rate"] else f'{n(s["at_rate"]["max_lag_messages"])} / {n(s["at_rate"]["max_lag_seconds"], "{:.1f}")}'),
    ("  PUBACK p50/p99 ms, sink", lambda s: "-" if not s["at_rate"] else f'{ms(s["at_rate"]["puback_p50_us"])} / {ms(s["at_rate"]["puback_p99_us"])}'),
    ("  PUBACK p50/p99 ms, no sink", lambda s: "-" if not s["at_rate"] else f'{ms(s["at_rate"]["puback_p50_us_without_sink"])} / {ms(s["at_rate"]["puback_p99_us_without_sink"])}'),
    ("  server µs/msg, sink / none", lambda s: "-" if not s["at_rate"] else f'{n(s["at_rate"]["server_cpu_us_per_message"], "{:.1f}")} / {n(s["at_rate"]["server_cpu_us_per_message_without_sink"], "{:.1f}")}'),
    ("catch-up: backlog msgs", lambda s: n((s["catchup"] or {}).get("backlog_messages"))),
    ("catch-up: first delivery after (s)", lambda s: n((s["catchup"] or {}).get("first_delivery_after_seconds"), "{:.1f}")),
    ("catch-up: msg/s", lambda s: n((s["catchup"] or {}).get("catchup_msgs_per_second"))),
    ("  / ceiling (metadata)", lambda s: n((s["catchup"] or {}).get("ratio_to_ceiling_with_metadata"), "{:.2f}")),
    ("catch-up: server µs / forwarded", lambda s: n((s["catchup"] or {}).get("server_cpu_us_per_forwarded"), "{:.1f}")),
    ("missing at the destination", lambda s: ", ".join(n(x) for x in (s["full_speed"]["missing_at_destination"], (s["at_rate"] or {}).get("missing_at_destination"), (s["catchup"] or {}).get("missing_at_destination")))),
]
w = max(len(r[0]) for r in rows) + 2
ks = list(summary["kinds"])
print(f"\n{'sinks, 100 B, ' + str(len(ks)) + ' kinds':<{w}}" + "".join(f"{k:>19}" for k in ks))
print("-" * (w + 19 * len(ks)))
for label, f in rows:
    print(f"{label:<{w}}" + "".join(f"{f(summary['kinds'][k]):>19}" for k in ks))
b = summary["baseline_full"]
print(f"\nno sink, full speed: {n(b['device_msgs_per_second'])} msg/s, PUBACK p50/p99 {ms(b['puback_p50_us'])} / {ms(b['puback_p99_us'])} ms, "
      f"{n(b['server_cpu_us_per_message'], '{:.1f}')} µs server CPU per message")
print(f"summary: {d / 'sinks-summary.json'}")
PY
echo "results in $out"
