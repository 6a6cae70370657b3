#!/usr/bin/env bash
# The admin API on each store backend, one after the other on this machine with the same load
# generator: `ferrocore serve` on the embedded SQLite store, then on PostgreSQL (a fresh database
# on the local server at 127.0.0.1:5432, dropped afterwards), each running `ferrocore-bench api`:
# devices.create and devices.get with 32 requests in flight, then list pages on a registry of
# LIST_DEVICES devices. Prints each backend's rates and server CPU, and PostgreSQL/SQLite ratios.
# PostgreSQL's own CPU is not in the server CPU figures (it is another process): the report adds
# it from /proc for the postgres processes of the run.
#
# Knobs (environment): CREATES (5000), GETS (50000), LIST_DEVICES (0), CONCURRENCY (32),
# PGUSER (postgres). Results: target/bench/<run>/store-{sqlite,postgres}.json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
CREATES="${CREATES:-5000}"
GETS="${GETS:-50000}"
LIST_DEVICES="${LIST_DEVICES:-0}"
CONCURRENCY="${CONCURRENCY:-32}"
PGUSER="${PGUSER:-postgres}"
target_dir="$(bash "$root/scripts/cargo-target-dir.sh")"
run="$(date -u +%Y%m%dT%H%M%SZ)"
out="$root/target/bench/$run"
work="$(mktemp -d /tmp/ferrocore-bench-store.XXXXXX)"
mkdir -p "$out"
db="ferrocore_bench_$RANDOM$RANDOM"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -h 127.0.0.1 -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building (release)" >&2
cargo build --release -p ferrocore -p ferrocore-bench --bins --quiet
server_bin="$target_dir/release/ferrocore"
bench="$target_dir/release/ferrocore-bench"
token="bench-admin-token-$RANDOM$RANDOM$RANDOM"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
postgres_cpu_ticks() {
  local total=0
  for p in $(pgrep -x postgres || true); do
    [[ -r /proc/$p/stat ]] || continue
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}

run_one() { # name, --store value
  local name=$1 store=$2 http
  http=$(free_port)
  FERROCORE_ADMIN_TOKEN="$token" FERROCORE_LOG=warn "$server_bin" serve --data-dir "$work/data-$name" \
    --store "$store" --http "127.0.0.1:$http" --grpc off --mqtts off > "$work/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_port "$http" || { echo "the $name server did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
  local before after
  before=$(postgres_cpu_ticks)
  "$bench" --api "http://127.0.0.1:$http" --token "$token" --server-pid "$pid" --label "store $name" \
    --json "$out/store-$name.json" api --creates "$CREATES" --gets "$GETS" --concurrency "$CONCURRENCY" \
    --list-devices "$LIST_DEVICES" >&2
  after=$(postgres_cpu_ticks)
  echo $(( after - before )) > "$out/postgres-ticks-$name.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "== SQLite" >&2
run_one sqlite sqlite
echo "== PostgreSQL (database $db)" >&2
psql -h 127.0.0.1 -U "$PGUSER" -d postgres -qc "CREATE DATABASE $db" >/dev/null
run_one postgres "postgres://$PGUSER@127.0.0.1:5432/$db"

python3 - "$out" "$(getconf CLK_TCK)" "$CREATES" "$GETS" <<'PY'
import json, pathlib, sys
out, hz, creates, gets = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = {}
for name in ("sqlite", "postgres"):
    r = json.load(open(out / f"store-{name}.json"))["results"]
    pg_s = int((out / f"postgres-ticks-{name}.txt").read_text()) / hz
    rows[name] = (r, pg_s)
def phase(r, key):
    return r.get(key) or {}
print(f"{'':28}{'SQLite':>14}{'PostgreSQL':>14}{'PG/SQLite':>11}")
for key, label in (("create", "devices.create /s"), ("get", "devices.get /s")):
    a, b = phase(rows["sqlite"][0], key), phase(rows["postgres"][0], key)
    if not a or not b:
        continue
    ra, rb = a["per_second"], b["per_second"]
    print(f"{label:28}{ra:14,.0f}{rb:14,.0f}{rb / ra:11.2f}")
    pa, pb = a["latency"].get("p99_us"), b["latency"].get("p99_us")
    if pa is not None and pb is not None:
        print(f"{'  p99 ms':28}{pa / 1000:14.1f}{pb / 1000:14.1f}")
    ca, cb = a.get("server_cpu_us_per_op"), b.get("server_cpu_us_per_op")
    if ca is not None and cb is not None:
        print(f"{'  Ferrocore CPU µs/op':28}{ca:14.0f}{cb:14.0f}")
pg_total = rows["postgres"][1]
print(f"PostgreSQL server CPU during the PostgreSQL run: {pg_total:.1f} s "
      f"({pg_total * 1e6 / max(1, creates + gets):.0f} µs per create/get)")
print(f"results: {out}")
PY
