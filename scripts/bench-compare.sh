#!/usr/bin/env bash
# Ferrocore and Mosquitto side by side, with the same load generator (ferrocore-bench), the same
# connection counts and the same payloads, one after the other on this machine:
#
#   connect    TLS (and plain) connects/s; Ferrocore devices present RS256 JWTs
#   telemetry  QoS 1, 100-byte payloads, 50 devices, plain and TLS, checked at the other end
#   idle       up to ~19,000 idle connections, plain and TLS: server memory per connection
#
# Each scenario gets a freshly started server (and, for Ferrocore, an empty data directory), so
# memory left over by one run does not flatter the next. Both servers use the same RSA-2048
# certificate made here with openssl. Results: target/bench/<run>/*.json, a summary with the
# Ferrocore/Mosquitto ratios on stdout and in summary.json, and with CHARTS=1 PNG charts in
# docs/img/ (matplotlib in target/bench-venv, from scripts/bench-requirements.txt).
#
# Ferrocore runs as examples/bench-server: `ferrocore::server::run`, the code `ferrocore serve`
# runs, with two MQTT limits lifted that these scenarios exceed by design (IoT Core's 100
# messages/s per connection; the 18,000 connection cap). FERROCORE=stock runs the stock binary.
#
# Knobs (environment): DURATION (s, default 10), CONNECT_N (5000), TELEMETRY_DEVICES (50),
# PAYLOAD (100), IDLE_N (19000), SCENARIOS ("connect telemetry idle"), CHARTS (0),
# FERROCORE (bench-server|stock), QUICK=1 (small counts, for a try).
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
SCENARIOS="${SCENARIOS:-connect telemetry idle}"
FERROCORE="${FERROCORE:-bench-server}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
run="$(date -u +%Y%m%dT%H%M%SZ)"
out="$root/target/bench/$run"
work="$(mktemp -d /tmp/ferrocore-bench.XXXXXX)"
mkdir -p "$out"

log() { printf '\n== %s\n' "$*" >&2; }

log "building (release)"
cargo build --release -p ferrocore -p ferrocore-bench --example bench-server
bench="$target_dir/release/ferrocore-bench"
if [[ "$FERROCORE" == stock ]]; then
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

log "certificates (RSA-2048, the same for both servers)"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ferrocore-bench CA" \
  -keyout "$work/ca-key.pem" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
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

# start_ferrocore → sets server_pid, plain_port, tls_port, target_args
start_ferrocore() {
  plain_port=$(free_port); tls_port=$(free_port); http_port=$(free_port)
  local data="$work/ferrocore-data-$RANDOM"
  rm -rf "$data"
  local extra=()
  if [[ "$FERROCORE" == stock ]]; then
    extra=(serve --grpc off --mqtts "127.0.0.1:$tls_port")
  else
    extra=(--mqtts "127.0.0.1:$tls_port" --max-messages-per-second 10000000 --max-connections 19500)
  fi
  FERROCORE_ADMIN_TOKEN="$token" FERROCORE_LOG=warn "$server_bin" "${extra[@]}" --data-dir "$data" \
    --http "127.0.0.1:$http_port" --mqtt "127.0.0.1:$plain_port" \
    --tls-cert "$work/server.pem" --tls-key "$work/server-key.pem" > "$work/ferrocore.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  wait_port "$http_port"; wait_port "$plain_port"; wait_port "$tls_port"
  target_args=(--broker ferrocore --api "http://127.0.0.1:$http_port" --token "$token" --server-pid "$server_pid")
}

# bench NAME SERVER TLS ARGS... : one run on a fresh server
bench() {
  local name="$1" server="$2" tls="$3"; shift 3
  "start_$server"
  local conn=(--port "$plain_port")
  if [[ "$tls" == tls ]]; then conn=(--tls --port "$tls_port" --ca "$work/ca.pem"); fi
  log "$server $name"
  "$bench" "${target_args[@]}" "${conn[@]}" --label "$server $name" --json "$out/$server-$name.json" "$@" \
    || echo "run $server $name failed" >&2
  stop "$server_pid"
}

for server in mosquitto ferrocore; do
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
if [[ "${CHARTS:-0}" == 1 ]]; then
  venv="$root/target/bench-venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$root/scripts/bench-requirements.txt"
  fi
  "$venv/bin/python" "$root/scripts/bench-charts.py" "$out" "$root/docs/img"
fi
echo "results in $out"
