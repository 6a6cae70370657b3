#!/usr/bin/env bash
# Ferrocore and Mosquitto side by side, with the same load generator (ferrocore-bench), the same
# connection counts and the same payloads, one after the other on this machine:
#
#   connect    TLS (and plain) connects/s; Ferrocore devices present RS256 JWTs
#   telemetry  QoS 1, 100-byte payloads, 50 devices, plain and TLS, checked at the other end
#   idle       up to ~19,000 idle connections, plain and TLS: server memory per connection
#   pubsub     device telemetry to a back end, plain and TLS: Ferrocore devices (MQTT QoS 1) → a
#              StreamingPull subscriber on the registry topic's subscription (gRPC, acks batched),
#              against Mosquitto QoS 1 publishers → one QoS 1 subscriber on bench/RUN/devices/+/events;
#              each at full speed, then again at half its own full-speed rate for the p99 latency
#   drain      (not in the default set) a backlog of DRAIN_N messages drained on ONE StreamingPull
#              stream by Google's official Rust client, Ferrocore against Google's Pub/Sub emulator
#              (builds examples/pubsub-drain with --features google-client)
#
# Each scenario gets a freshly started server (and, for Ferrocore, an empty data directory), so
# memory left over by one run does not flatter the next. Both servers use the same RSA-2048
# certificate made here with openssl (RSA-2048, or ECDSA P-256 with CERT=p256). Results: target/bench/<run>/*.json, a summary with the
# Ferrocore/Mosquitto ratios on stdout and in summary.json, and with CHARTS=1 PNG charts in
# docs/img/ (matplotlib in target/bench-venv, from scripts/bench-requirements.txt).
#
# Ferrocore runs as examples/bench-server: `ferrocore::server::run`, the code `ferrocore serve`
# runs, with two MQTT limits lifted that these scenarios exceed by design (IoT Core's 100
# messages/s per connection; the 18,000 connection cap). FERROCORE=stock runs the stock binary.
#
# Knobs (environment): DURATION (s, default 10), CONNECT_N (5000), TELEMETRY_DEVICES (50),
# PAYLOAD (100), IDLE_N (19000), SCENARIOS ("connect telemetry idle"; add pubsub, drain), CHARTS (0),
# FERROCORE (bench-server|stock), QUICK=1 (small counts, for a try), PUBSUB_STREAMS (1),
# PUBSUB_RATES ("": extra pubsub runs at these fixed msg/s, the same for both servers),
# DRAIN_N (200000), DRAIN_CLIENTS ("google tonic"), DRAIN_OUTSTANDING ("1000"), CERT (rsa|p256: the
# servers' certificate), TLS_RESUME=1 (TLS clients resume sessions: reconnects, not first connects),
# TLS_GROUPS (default|classic: the key exchanges TLS clients offer; classic = X25519, P-256, P-384
# without the hybrid post-quantum group, as device TLS stacks offer),
# FERROCORE_BIN=PATH (measure this prebuilt server instead of the fresh build, e.g. a copy of an
# earlier build for a before/after in one run), SERVERS ("mosquitto ferrocore": which to run),
# SERVER_LOG (warn: Ferrocore's FERROCORE_LOG; info is `ferrocore serve`'s default).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ "${QUICK:-0}" == 1 ]]; then
  : "${DURATION:=3}" "${CONNECT_N:=500}" "${IDLE_N:=1000}"
fi
DURATION="${DURATION:-10}"
CONNECT_N="${CONNECT_N:-5000}"
TELEMETRY_DEVICES="${TELEMETRY_DEVICES:-50}"
PAYLOAD="${PAYLOAD:-100}"
IDLE_N="${IDLE_N:-19000}"
PUBSUB_STREAMS="${PUBSUB_STREAMS:-1}"
PUBSUB_RATES="${PUBSUB_RATES:-}"
DRAIN_N="${DRAIN_N:-200000}"
DRAIN_CLIENTS="${DRAIN_CLIENTS:-google tonic}"
DRAIN_OUTSTANDING="${DRAIN_OUTSTANDING:-1000}"
SCENARIOS="${SCENARIOS:-connect telemetry idle}"
FERROCORE="${FERROCORE:-bench-server}"
# Where cargo puts its output (CARGO_TARGET_DIR, .cargo/config.toml), not necessarily target/.
target_dir="$(bash "$root/scripts/cargo-target-dir.sh")"
run="$(date -u +%Y%m%dT%H%M%SZ)"
out="$root/target/bench/$run"
work="$(mktemp -d /tmp/ferrocore-bench.XXXXXX)"
mkdir -p "$out"

log() { printf '\n== %s\n' "$*" >&2; }

log "building (release)"
cargo build --release -p ferrocore -p ferrocore-bench --bins --example bench-server
if [[ " $SCENARIOS " == *" drain "* ]]; then
  # Google's official client is heavy to build; only this scenario needs it.
  cargo build --release -p ferrocore-bench --features google-client --example pubsub-drain
fi
bench="$target_dir/release/ferrocore-bench"
if [[ -n "${FERROCORE_BIN:-}" ]]; then
  server_bin="$FERROCORE_BIN"
elif [[ "$FERROCORE" == stock ]]; then
  server_bin="$target_dir/release/ferrocore"
else
  server_bin="$target_dir/release/examples/bench-server"
fi

if ! command -v mosquitto >/dev/null 2>&1 && [[ ! -x /usr/sbin/mosquitto ]]; then
  log "installing Mosquitto from Debian"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto
fi
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

# Servers started here, stopped on exit whatever happens.
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
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

# CERT=rsa: RSA-2048 (the figures in docs/benchmarks.md); CERT=p256: ECDSA P-256, the kind of
# certificate Ferrocore generates when given none.
case "${CERT:-rsa}" in
  rsa) newkey=(-newkey rsa:2048) ;;
  p256) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
  *) echo "CERT must be rsa or p256" >&2; exit 2 ;;
esac
log "certificates (${CERT:-rsa}, the same for both servers)"
openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj "/CN=ferrocore-bench CA" \
  -keyout "$work/ca-key.pem" -out "$work/ca.pem" 2>/dev/null
openssl req "${newkey[@]}" -nodes -subj "/CN=localhost" \
  -keyout "$work/server-key.pem" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > "$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" -CAcreateserial \
  -days 2 -extfile "$work/ext.cnf" -out "$work/server.pem" 2>/dev/null
chmod 600 "$work/server-key.pem"

token="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

# start_mosquitto → sets server_pid, plain_port, tls_port
start_mosquitto() {
  plain_port=$(free_port); tls_port=$(free_port)
  cat > "$work/mosquitto.conf" <<CONF
# Written by scripts/bench-compare.sh. Unlimited queues so that the subscriber sees every message;
# a larger in-flight window than the default 20 so that one subscriber can keep up.
per_listener_settings false
allow_anonymous true
persistence false
log_dest none
user root
max_queued_messages 0
max_inflight_messages 1000
max_keepalive 65535
listener $plain_port 127.0.0.1
listener $tls_port 127.0.0.1
cafile $work/ca.pem
certfile $work/server.pem
keyfile $work/server-key.pem
CONF
  "$mosquitto_bin" -c "$work/mosquitto.conf" &
  server_pid=$!
  pids+=("$server_pid")
  wait_port "$plain_port"; wait_port "$tls_port"
  target_args=(--broker mqtt --server-pid "$server_pid")
}

# start_ferrocore → sets server_pid, plain_port, tls_port, grpc_port, target_args. The gRPC
# listener (Pub/Sub API) uses the certificate too unless GRPC_PLAIN=1, which starts the server
# without it (MQTT over TLS then uses a certificate generated in the data directory).
start_ferrocore() {
  plain_port=$(free_port); tls_port=$(free_port); http_port=$(free_port); grpc_port=$(free_port)
  local data="$work/ferrocore-data-$RANDOM"
  rm -rf "$data"
  local extra=()
  if [[ "$FERROCORE" == stock ]]; then
    extra=(serve --grpc "127.0.0.1:$grpc_port" --mqtts "127.0.0.1:$tls_port" --pubsub-anonymous
           --mqtt-messages-per-second 10000000 --mqtt-max-connections 19500)
  else
    extra=(--grpc "127.0.0.1:$grpc_port" --pubsub-anonymous --mqtts "127.0.0.1:$tls_port"
           --max-messages-per-second 10000000 --max-connections 19500)
  fi
  local cert=(--tls-cert "$work/server.pem" --tls-key "$work/server-key.pem") scheme=https
  if [[ "${GRPC_PLAIN:-0}" == 1 ]]; then cert=(); scheme=http; fi
  FERROCORE_ADMIN_TOKEN="$token" FERROCORE_LOG="${SERVER_LOG:-warn}" "$server_bin" "${extra[@]}" --data-dir "$data" \
    --http "127.0.0.1:$http_port" --mqtt "127.0.0.1:$plain_port" "${cert[@]}" > "$work/ferrocore.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  wait_port "$http_port"; wait_port "$plain_port"; wait_port "$tls_port"; wait_port "$grpc_port"
  ferrocore_data="$data"
  target_args=(--broker ferrocore --api "http://127.0.0.1:$http_port" --token "$token" --server-pid "$server_pid"
               --grpc "$scheme://127.0.0.1:$grpc_port")
}

# start_emulator → sets server_pid, emulator_port: Google's Pub/Sub emulator (in memory)
start_emulator() {
  emulator_port=$(free_port)
  local emu=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
  [[ -x "$emu" ]] || { echo "Google's Pub/Sub emulator is not installed ($emu)" >&2; return 1; }
  "$emu" --host=127.0.0.1 --port="$emulator_port" > "$work/emulator.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  wait_port "$emulator_port"
  sleep 1
}

# half_rate FILE: half the end-to-end rate a full-speed pubsub/telemetry run reached (the lower of
# the publish and the subscriber rates).
half_rate() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
rates = [r.get("msgs_per_second"), r.get("delivered_acked_per_second"),
         (r.get("verification") or {}).get("subscriber_msgs_per_second")]
rates = [x for x in rates if isinstance(x, (int, float)) and x > 0]
print(f"{min(rates) / 2:.0f}" if rates else "0")
PY
}

# bench NAME SERVER TLS ARGS... : one run on a fresh server
bench() {
  local name="$1" server="$2" tls="$3"; shift 3
  "start_$server"
  local conn=(--port "$plain_port")
  if [[ "$tls" == tls ]]; then conn=(--tls --port "$tls_port" --ca "$work/ca.pem"); fi
  if [[ "$tls" == tls && "${TLS_RESUME:-0}" == 1 ]]; then conn+=(--tls-resume); fi
  if [[ "$tls" == tls && -n "${TLS_GROUPS:-}" ]]; then conn+=(--tls-groups "$TLS_GROUPS"); fi
  log "$server $name"
  "$bench" "${target_args[@]}" "${conn[@]}" --label "$server $name" --json "$out/$server-$name.json" "$@" \
    || echo "run $server $name failed" >&2
  stop "$server_pid"
}

for server in ${SERVERS:-mosquitto ferrocore}; do
  for s in $SCENARIOS; do
    case "$s" in
      connect)
        bench connect-tls "$server" tls --alg rs256 connect --devices "$CONNECT_N"
        bench connect-plain "$server" plain --alg rs256 connect --devices "$CONNECT_N"
        ;;
      telemetry)
        for tls in plain tls; do
          bench "telemetry-$tls" "$server" "$tls" telemetry --devices "$TELEMETRY_DEVICES" --payload "$PAYLOAD" \
            --qos 1 --duration "$DURATION"
        done
        ;;
      pubsub)
        for tls in plain tls; do
          if [[ "$server" == mosquitto ]]; then
            run=(telemetry --devices "$TELEMETRY_DEVICES" --payload "$PAYLOAD" --qos 1 --sub-qos 1 --duration "$DURATION")
          else
            run=(pubsub --devices "$TELEMETRY_DEVICES" --payload "$PAYLOAD" --streams "$PUBSUB_STREAMS" --duration "$DURATION")
          fi
          plain=0; [[ "$tls" == plain ]] && plain=1
          GRPC_PLAIN=$plain bench "pubsub-$tls" "$server" "$tls" "${run[@]}"
          half=0
          [[ -f "$out/$server-pubsub-$tls.json" ]] && half=$(half_rate "$out/$server-pubsub-$tls.json")
          if [[ "$half" != 0 ]]; then
            GRPC_PLAIN=$plain bench "pubsub-$tls-half" "$server" "$tls" "${run[@]}" --rate "$half"
          fi
          for rate in $PUBSUB_RATES; do
            GRPC_PLAIN=$plain bench "pubsub-$tls-at$rate" "$server" "$tls" "${run[@]}" --rate "$rate"
          done
        done
        ;;
      drain)
        [[ "$server" == ferrocore ]] || continue
        for client in $DRAIN_CLIENTS; do
          for outstanding in $DRAIN_OUTSTANDING; do
            for target in ferrocore emulator; do
              if [[ "$target" == ferrocore ]]; then
                GRPC_PLAIN=1 start_ferrocore; endpoint="http://127.0.0.1:$grpc_port"
              else
                start_emulator || continue; endpoint="http://127.0.0.1:$emulator_port"
              fi
              log "$target drain ($client client, $outstanding outstanding)"
              FERROCORE_ADMIN_TOKEN="$token" "$target_dir/release/examples/pubsub-drain" --endpoint "$endpoint" \
                --messages "$DRAIN_N" --client "$client" --max-outstanding "$outstanding" --server-pid "$server_pid" \
                --label "$target drain $client" --json "$out/drain-$target-$client-$outstanding.json" \
                || echo "drain against $target failed" >&2
              stop "$server_pid"
            done
          done
        done
        ;;
      idle)
        for tls in plain tls; do
          bench "idle-$tls" "$server" "$tls" --source-ips 16 idle --connections "$IDLE_N" --settle 5 --hold 5
        done
        ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
  done
done

python3 "$root/scripts/bench-report.py" "$out"
# Pub/Sub: Ferrocore's pubsub scenario against Mosquitto's telemetry with a QoS 1 subscriber, and
# the one-stream drains against the emulator.
python3 - "$out" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
def load(name):
    f = d / f"{name}.json"
    return json.loads(f.read_text())["results"] if f.exists() else None
def sub_rate(r):
    return r.get("delivered_acked_per_second") or (r.get("verification") or {}).get("subscriber_msgs_per_second")
def p(r, q):
    lat = r.get("latency") if "delivered_acked" in r else (r.get("verification") or {}).get("latency")
    return (lat or {}).get(q)
def missing(r):
    return (r.get("verification") or {}).get("missing_acknowledged")
rows = []
for tls in ("plain", "tls"):
    m, f = load(f"mosquitto-pubsub-{tls}"), load(f"ferrocore-pubsub-{tls}")
    mh, fh = load(f"mosquitto-pubsub-{tls}-half"), load(f"ferrocore-pubsub-{tls}-half")
    if not (m or f):
        continue
    def row(label, mv, fv, fmt):
        ratio = f"{fv / mv:.2f}x" if (mv and fv is not None) else "-"
        show = lambda v: "-" if v is None else fmt(v)
        rows.append((f"pubsub-{tls} / {label}", show(mv), show(fv), ratio))
    g = lambda r, fn: fn(r) if r else None
    row("publish msg/s (acked)", g(m, lambda r: r["msgs_per_second"]), g(f, lambda r: r["msgs_per_second"]), lambda v: f"{v:,.0f}")
    row("subscriber msg/s", g(m, sub_rate), g(f, sub_rate), lambda v: f"{v:,.0f}")
    row("publish→receive p50 (max rate)", g(m, lambda r: p(r, "p50_us")), g(f, lambda r: p(r, "p50_us")), lambda v: f"{v / 1000:.1f} ms")
    row("publish→receive p99 (max rate)", g(m, lambda r: p(r, "p99_us")), g(f, lambda r: p(r, "p99_us")), lambda v: f"{v / 1000:.1f} ms")
    row("p99 at half rate", g(mh, lambda r: p(r, "p99_us")), g(fh, lambda r: p(r, "p99_us")), lambda v: f"{v / 1000:.1f} ms")
    for fpath in sorted(d.glob(f"ferrocore-pubsub-{tls}-at*.json")):
        rate = fpath.stem.rsplit("-at", 1)[1]
        ma, fa = load(f"mosquitto-pubsub-{tls}-at{rate}"), load(f"ferrocore-pubsub-{tls}-at{rate}")
        row(f"p50 at {int(rate):,} msg/s", g(ma, lambda r: p(r, "p50_us")), g(fa, lambda r: p(r, "p50_us")), lambda v: f"{v / 1000:.1f} ms")
        row(f"p99 at {int(rate):,} msg/s", g(ma, lambda r: p(r, "p99_us")), g(fa, lambda r: p(r, "p99_us")), lambda v: f"{v / 1000:.1f} ms")
    row("server CPU/msg", g(m, lambda r: r.get("server_cpu_us_per_message")), g(f, lambda r: r.get("server_cpu_us_per_message")), lambda v: f"{v:.2f} µs")
    row("missing (acked, not received)", g(m, missing), g(f, missing), lambda v: f"{v:,.0f}")
if rows:
    w = max(len(r[0]) for r in rows) + 2
    print(f"\n{'Pub/Sub, device → back end':<{w}} {'Mosquitto':>12} {'Ferrocore':>12} {'Ferrocore/Mosquitto':>20}")
    print("-" * (w + 47))
    for r in rows:
        print(f"{r[0]:<{w}} {r[1]:>12} {r[2]:>12} {r[3]:>20}")
drains = sorted(d.glob("drain-*.json"))
if drains:
    print(f"\n{'one-stream drain':<34} {'msg/s':>10} {'server µs/msg':>14} {'distinct':>10} {'dups':>6}")
    print("-" * 78)
    for fpath in drains:
        r = json.loads(fpath.read_text())["results"]
        us = r.get("server_cpu_us_per_message")
        print(f"{fpath.stem[6:]:<34} {r['msgs_per_second']:>10,.0f} {('-' if us is None else f'{us:.2f}'):>14} {r['distinct']:>10,} {r['duplicates']:>6}")
PY
if [[ "${CHARTS:-0}" == 1 ]]; then
  venv="$root/target/bench-venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$root/scripts/bench-requirements.txt"
  fi
  "$venv/bin/python" "$root/scripts/bench-charts.py" "$out" "$root/docs/img"
fi
echo "results in $out"
