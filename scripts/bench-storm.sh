#!/usr/bin/env bash
# A reconnect storm: STORM_N devices (19,000 by default) connect to Ferrocore and stay connected;
# the server is then stopped and started again on the same data directory and ports, and every
# device reconnects as soon as its connection drops, with backoff like device firmware
# (ferrocore-bench's `storm` scenario). Reports the time until all are back, the connect latency
# (p50/p99), and every failed attempt by cause (CONNACK code, TCP refused while the server was
# down, timeouts, TLS errors).
#
#   scripts/bench-storm.sh            # 19,000 TLS devices, RS256 JWTs, the default P-256 certificate
#   STORM_N=2000 scripts/bench-storm.sh
#
# Knobs (environment): STORM_N (19000), TLS (1; 0 for plain MQTT), ALG (rs256|es256), CERT
# (p256: the certificate Ferrocore generates; rsa: an RSA-2048 one made with openssl),
# DOWN_SECONDS (1: how long the server stays down), FIRST_JITTER_MS (0: every device tries at
# once), NO_BUILD=1 and BIN_DIR (use binaries already built), BACKOFF_MIN_MS (500), BACKOFF_MAX_MS (30000), ATTEMPT_TIMEOUT (10 s), STOP (term: the
# server is stopped with SIGTERM; kill: SIGKILL, as a crash).
#
# The server runs as examples/bench-server with the connection cap raised to 19,500 (the default
# 18,000 is below the fleet). Each process here may open at most 20,000 files, so the server
# and the generator (separate processes) each hold at most ~19,900 connections.
# Results: target/bench/storm-<run>.json and a table on stdout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
STORM_N="${STORM_N:-19000}"
TLS="${TLS:-1}"
ALG="${ALG:-rs256}"
CERT="${CERT:-p256}"
DOWN_SECONDS="${DOWN_SECONDS:-1}"
FIRST_JITTER_MS="${FIRST_JITTER_MS:-0}"
BACKOFF_MIN_MS="${BACKOFF_MIN_MS:-500}"
BACKOFF_MAX_MS="${BACKOFF_MAX_MS:-30000}"
ATTEMPT_TIMEOUT="${ATTEMPT_TIMEOUT:-10}"

target_dir="$(bash "$root/scripts/cargo-target-dir.sh")"
[[ "${NO_BUILD:-0}" == 1 ]] || cargo build --release -p ferrocore-bench --bins --example bench-server
# BIN_DIR: binaries built elsewhere (ferrocore-bench and bench-server), with NO_BUILD=1.
bench="${BIN_DIR:-$target_dir/release}/ferrocore-bench"
server_bin="${BIN_DIR:-$target_dir/release/examples}/bench-server"
run="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$root/target/bench"
out="$root/target/bench/storm-$run.json"
work="$(mktemp -d /tmp/ferrocore-storm.XXXXXX)"
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 400); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}
http=$(free_port); plain=$(free_port); tls=$(free_port)
token="storm-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
data="$work/data"
cert=()
if [[ "$CERT" == rsa ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ferrocore-bench CA" \
    -keyout "$work/ca-key.pem" -out "$work/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$work/server-key.pem" -out "$work/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > "$work/ext.cnf"
  openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$work/ext.cnf" -out "$work/server.pem" 2>/dev/null
  chmod 600 "$work/server-key.pem"
  cert=(--tls-cert "$work/server.pem" --tls-key "$work/server-key.pem")
fi

server_pid=""
start_server() {
  FERROCORE_ADMIN_TOKEN="$token" FERROCORE_LOG=warn "$server_bin" --data-dir "$data" --http "127.0.0.1:$http" \
    --mqtt "127.0.0.1:$plain" --mqtts "127.0.0.1:$tls" --max-connections 19500 "${cert[@]}" \
    >> "$work/server.log" 2>&1 &
  server_pid=$!
  echo "$server_pid" > "$work/server.pid"
}
bench_pid=""
cleanup() {
  [[ -n "$bench_pid" ]] && kill "$bench_pid" 2>/dev/null
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_server
wait_port "$http"; wait_port "$plain"; wait_port "$tls"
# The listeners are bound before the server writes its generated certificate.
for _ in $(seq 1 200); do [[ -f "$data/tls/ca.pem" ]] && break; sleep 0.05; done
sleep 0.5
conn=(--port "$plain")
if [[ "$TLS" == 1 ]]; then
  ca="$data/tls/ca.pem"; [[ "$CERT" == rsa ]] && ca="$work/ca.pem"
  conn=(--tls --port "$tls" --ca "$ca")
fi
"$bench" --api "http://127.0.0.1:$http" --token "$token" --alg "$ALG" --source-ips 16 "${conn[@]}" \
  --label "storm $STORM_N $([[ $TLS == 1 ]] && echo "tls $CERT" || echo plain) $ALG" --json "$out" \
  storm --devices "$STORM_N" --ready-file "$work/ready" --server-pid-file "$work/server.pid" \
  --first-jitter-ms "$FIRST_JITTER_MS" --backoff-min-ms "$BACKOFF_MIN_MS" --backoff-max-ms "$BACKOFF_MAX_MS" \
  --attempt-timeout "$ATTEMPT_TIMEOUT" &
bench_pid=$!
until [[ -e "$work/ready" ]]; do
  kill -0 "$bench_pid" 2>/dev/null || { wait "$bench_pid"; exit 1; }
  sleep 0.2
done
echo "== all $STORM_N connected; restarting the server (down for ${DOWN_SECONDS} s)" >&2
# SIGTERM (a clean restart) by default; STOP=kill for a crash (SIGKILL). A clean stop that takes
# over 30 s is ended with SIGKILL too.
if [[ "${STOP:-term}" == kill ]]; then kill -9 "$server_pid"; else kill "$server_pid"; fi
for _ in $(seq 1 300); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
kill -9 "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true
sleep "$DOWN_SECONDS"
start_server
wait "$bench_pid"
bench_pid=""
echo "results in $out"
