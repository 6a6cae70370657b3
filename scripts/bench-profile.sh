#!/usr/bin/env bash
# Profiles Ferrocore (release build, examples/bench-server) under one bench scenario with perf,
# and prints the hottest functions (self time) and the inclusive cost of the main subsystems.
#
#   scripts/bench-profile.sh telemetry-plain|telemetry-tls|connect-plain|connect-tls [SECONDS]
#   scripts/bench-profile.sh sink-nats|sink-nats-catchup|sink-redis|sink-redis-catchup [SECONDS]
#
# sink-nats: the server forwards to NATS JetStream (`--sink 'projects/*/topics/*=nats://…'`, a
# fresh stream on NATS_URL's server, 127.0.0.1:4222 by default) while 50 devices publish at full
# speed; sink-nats-catchup: the same, profiled once devices stopped, while the sink works off the
# backlog alone (forwarding only). sink-redis[-catchup]: the same toward Redis Streams (a fresh
# stream key on REDIS_URL's server, redis://127.0.0.1:6379 by default).
#
# Needs perf (Debian: linux-perf; installed here if missing) and root or perf_event_paranoid <= 1.
# Writes target/bench/profile-<scenario>.{data,txt}.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scenario="${1:?scenario: telemetry-plain|telemetry-tls|connect-plain|connect-tls|sink-nats|sink-nats-catchup|sink-redis|sink-redis-catchup}"
seconds="${2:-5}"
# Where cargo puts its output (CARGO_TARGET_DIR, .cargo/config.toml), not necessarily target/.
target_dir="$(bash "$root/scripts/cargo-target-dir.sh")"
out="$root/target/bench"
mkdir -p "$out"
command -v perf >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf; }
cargo build --release -p ferrocore-bench --bins --example bench-server
bench="$target_dir/release/ferrocore-bench"
work="$(mktemp -d /tmp/ferrocore-profile.XXXXXX)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port); plain=$(free_port); tls=$(free_port)
token="profile-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
sink=()
case "$scenario" in
  sink-*)
    tag="FCPROF$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
    case "$scenario" in
      sink-redis*) sink_url="${REDIS_URL:-redis://127.0.0.1:6379}?stream=$tag" ;;
      *) sink_url="${NATS_URL:-nats://127.0.0.1:4222}/ferrocore.profile.$tag?stream=$tag" ;;
    esac
    "$bench" sink-admin setup --dest "$sink_url"
    sink=(--sink "projects/*/topics/*=$sink_url" --topic-retention-mb 8192)
    ;;
esac
FERROCORE_ADMIN_TOKEN="$token" "$target_dir/release/examples/bench-server" --data-dir "$work/data" \
  --http "127.0.0.1:$http" --mqtt "127.0.0.1:$plain" --mqtts "127.0.0.1:$tls" \
  --max-messages-per-second 10000000 --max-connections 19500 "${sink[@]}" > "$work/server.log" 2>&1 &
pid=$!
cleanup() {
  kill $pid 2>/dev/null; wait $pid 2>/dev/null
  if [[ -n "${sink_url:-}" ]]; then "$bench" sink-admin teardown --dest "$sink_url" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 100); do [[ -f "$work/data/tls/ca.pem" ]] && break; sleep 0.1; done
sleep 0.5
progress=0
[[ "$scenario" == sink-* ]] && progress=1
common=(--api "http://127.0.0.1:$http" --token "$token" --server-pid "$pid" --progress "$progress")
case "$scenario" in
  telemetry-plain) args=(--port "$plain" telemetry --devices 50 --duration $((seconds + 6))) ;;
  telemetry-tls) args=(--tls --data-dir "$work/data" --port "$tls" telemetry --devices 50 --duration $((seconds + 6))) ;;
  connect-plain) args=(--alg rs256 --port "$plain" connect --devices 40000) ;;
  connect-tls) args=(--alg rs256 --tls --data-dir "$work/data" --port "$tls" connect --devices 12000) ;;
  sink-nats|sink-redis) args=(--port "$plain" sink-forward --dest "$sink_url" --keep --duration $((seconds + 4))) ;;
  # Devices publish for 10 s (a backlog of several hundred thousand messages), then the profile
  # covers the sink working it off alone.
  sink-nats-catchup|sink-redis-catchup) args=(--port "$plain" sink-forward --dest "$sink_url" --keep --duration 10) ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
"$bench" "${common[@]}" "${args[@]}" > "$work/bench.out" 2>&1 &
bench_pid=$!
# Let provisioning finish and the load settle: wait for the first connections or messages.
case "$scenario" in
  connect-*) until grep -q '^' <(ss -Htn state established "( sport = :$plain or sport = :$tls )" 2>/dev/null | head -1); do sleep 0.05; done ;;
  # The sink scenario prints a line per second once devices publish.
  sink-nats|sink-redis) until grep -q '^\[sink\]' "$work/bench.out" 2>/dev/null; do sleep 0.1; done ;;
  sink-*-catchup) until grep -q '^\[sink\]' "$work/bench.out" 2>/dev/null; do sleep 0.1; done; sleep 10 ;;
  *) sleep 3 ;;
esac
sleep 1
perf record -F 999 -g --call-graph dwarf,16384 -p "$pid" -o "$out/profile-$scenario.data" -- sleep "$seconds" 2>/dev/null
wait "$bench_pid" || true
cat "$work/bench.out" | sed -n '/^---/,$p'
{
  echo "# self time, top 40"
  perf report -i "$out/profile-$scenario.data" --no-children --sort symbol --stdio --percent-limit 0.7 -g none 2>/dev/null \
    | grep -v '^$' | head -60
  echo "# inclusive time (children), top 60"
  perf report -i "$out/profile-$scenario.data" --children --sort symbol --stdio --percent-limit 2 -g none 2>/dev/null \
    | grep -v '^$' | head -80
} > "$out/profile-$scenario.txt"
echo "profile: $out/profile-$scenario.txt"
