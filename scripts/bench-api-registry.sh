#!/usr/bin/env bash
# devices.get and devices.list on a large registry (1,000,000 devices by default), 32 in flight,
# with the gets spread over the whole registry: `ferrocore-bench api --prefilled` against the
# release examples/bench-server.
#
#   scripts/bench-api-registry.sh [DEVICES] [GETS] [-- extra ferrocore-bench api arguments]
#
# Creating a million devices through the API takes ~8 minutes (one fsync per create), so only
# d0000000 is created through the API (with an ES256 key, as the bench's creates have); the
# server is then stopped, d0000001 up to DEVICES are written straight into the SQLite file as
# copies of it (credentials and config included) with one INSERT ... SELECT, and the server is
# started again on the same data directory. Needs sqlite3. Writes target/bench/api-registry.json.
# BENCH_BIN_DIR=DIR runs DIR/ferrocore-bench and DIR/bench-server instead of building them (to
# compare two builds).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
devices="${1:-1000000}"
gets="${2:-200000}"
shift $(( $# < 2 ? $# : 2 ))
[[ "${1:-}" == "--" ]] && shift
command -v sqlite3 >/dev/null || { echo "error: sqlite3 is needed (apt-get install sqlite3)" >&2; exit 1; }
if [[ -n "${BENCH_BIN_DIR:-}" ]]; then
    bench="$BENCH_BIN_DIR/ferrocore-bench"
    server="$BENCH_BIN_DIR/bench-server"
else
    target_dir="$(bash "$root/scripts/cargo-target-dir.sh")"
    cargo build --release -p ferrocore-bench --bins --example bench-server
    bench="$target_dir/release/ferrocore-bench"
    server="$target_dir/release/examples/bench-server"
fi
work="$(mktemp -d /tmp/ferrocore-api-registry.XXXXXX)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
registry=big
pid=""
start() {
    FERROCORE_ADMIN_TOKEN="$token" "$server" --data-dir "$work/data" --http "127.0.0.1:$port" >>"$work/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.2; done
    echo "error: the server did not start" >&2; cat "$work/server.log" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
cleanup() { [[ -n "$pid" ]] && stop; rm -rf "$work"; }
trap cleanup EXIT
common=(--api "http://127.0.0.1:$port" --token "$token" --registry "$registry" --progress 0)
start
"$bench" "${common[@]}" api --creates 1 --gets 0 >/dev/null
stop
fill_started=$(date +%s.%N)
bash "$root/scripts/fill-devices.sh" "$work/data/ferrocore.db" d0000000 1 "$((devices - 1))" "printf('d%07d', i)"
echo "filled $(sqlite3 "$work/data/ferrocore.db" 'SELECT count(*) FROM devices') devices in $(python3 -c "import time; print(round(time.time() - $fill_started))") s"
start
mkdir -p "$root/target/bench"
"$bench" "${common[@]}" --server-pid "$pid" --json "${BENCH_JSON:-$root/target/bench/api-registry.json}" \
    api --creates 0 --gets "$gets" --concurrency 32 --list-devices "$devices" --prefilled "$@"
