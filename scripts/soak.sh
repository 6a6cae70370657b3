#!/usr/bin/env bash
# Soak test (not run in CI): the release server on loopback under bounded, mixed load for an hour,
# its resources sampled every minute, and at the end a check that nothing acknowledged was lost.
#
#   scripts/soak.sh                 # one hour
#   SOAK_MINUTES=10 scripts/soak.sh
#
# Load, all at once for SOAK_MINUTES:
#   * ferrocore-bench telemetry: SOAK_TELEMETRY_DEVICES devices over TLS, QoS 1 at
#     SOAK_TELEMETRY_RATE msg/s in all; afterwards every PUBACKed message is looked up in the log;
#   * ferrocore-bench telemetry at QoS 0 (SOAK_QOS0_RATE msg/s, plain MQTT);
#   * ferrocore-bench pubsub: devices publishing SOAK_PUBSUB_RATE msg/s, a StreamingPull
#     subscriber acknowledging; afterwards every PUBACKed message must have been delivered;
#   * ferrocore-bench command: SOAK_COMMAND_RATE commands/s to subscribed devices;
#   * scripts/soak.py: SOAK_DEVICES devices that connect and disconnect again and again, publish
#     QoS 0/1 telemetry and state and acknowledge configs and commands; config pushes, commands and
#     API calls; a Pub/Sub subscription pulled and acknowledged over REST; abusive clients
#     (half-sent HTTP requests, bodies that never come, gRPC connections without the HTTP/2
#     preface, MQTT connections without CONNECT, oversized CONNECTs, a device that stops reading);
#     and the server's RSS, open files, sockets and threads every SOAK_SAMPLE_SECONDS.
# At the end the server gets SIGTERM and must exit cleanly within its shutdown deadline.
#
# Everything stays on 127.0.0.0/8. Output: SOAK_DIR (default TARGET_DIR/soak/DATE) holds the
# server's log, each tool's JSON and report.md, which is also printed. The exit status is non-zero
# when anything acknowledged was lost, an abusive connection was never cut, or shutdown failed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

MINUTES="${SOAK_MINUTES:-60}"
SAMPLE_SECONDS="${SOAK_SAMPLE_SECONDS:-60}"
TELEMETRY_DEVICES="${SOAK_TELEMETRY_DEVICES:-20}"
TELEMETRY_RATE="${SOAK_TELEMETRY_RATE:-150}"
QOS0_RATE="${SOAK_QOS0_RATE:-50}"
PUBSUB_RATE="${SOAK_PUBSUB_RATE:-50}"
COMMAND_RATE="${SOAK_COMMAND_RATE:-2}"
DEVICES="${SOAK_DEVICES:-12}"
ABUSERS="${SOAK_ABUSERS:-40}"
target_dir="$(bash scripts/cargo-target-dir.sh)"
out="${SOAK_DIR:-$target_dir/soak/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
seconds="$(python3 -c "print(max(30, int(float('$MINUTES') * 60)))")"

log() { echo "soak.sh $(date +%H:%M:%S) $*" >&2; }

log "building the release server and ferrocore-bench"
cargo build --release --quiet -p ferrocore -p ferrocore-bench --bins
server_bin="$target_dir/release/ferrocore"
bench_bin="$target_dir/release/ferrocore-bench"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port); grpc_port=$(free_port); mqtt_port=$(free_port); mqtts_port=$(free_port)
data="$out/data"
token="soak-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

log "starting the server (data in $data)"
FERROCORE_ADMIN_TOKEN="$token" "$server_bin" serve --data-dir "$data" \
    --http "127.0.0.1:$http_port" --grpc "127.0.0.1:$grpc_port" \
    --mqtt "127.0.0.1:$mqtt_port" --mqtts "127.0.0.1:$mqtts_port" >"$out/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
    sleep 0.1
done
curl -fs "http://127.0.0.1:$http_port/healthz" >/dev/null || { log "the server did not become ready"; exit 1; }

common=(--api "http://127.0.0.1:$http_port" --grpc "http://127.0.0.1:$grpc_port" --data-dir "$data"
        --token "$token" --server-pid "$server_pid" --progress 0 --project soak-bench)
bench() {
    local name="$1"; shift
    "$bench_bin" "${common[@]}" --json "$out/bench-$name.json" "$@" >"$out/bench-$name.log" 2>&1
}

log "load for $MINUTES minutes: bench telemetry, QoS 0, pubsub, commands; soak.py devices, back end, abusers"
bench_pids=()
bench telemetry --tls --port "$mqtts_port" --label soak-qos1 \
    telemetry --devices "$TELEMETRY_DEVICES" --qos 1 --rate "$TELEMETRY_RATE" --duration "$seconds" --verify after &
bench_pids+=($!)
bench qos0 --port "$mqtt_port" --label soak-qos0 \
    telemetry --devices 5 --qos 0 --rate "$QOS0_RATE" --duration "$seconds" --verify off &
bench_pids+=($!)
bench pubsub --port "$mqtt_port" --label soak-pubsub \
    pubsub --devices 10 --rate "$PUBSUB_RATE" --duration "$seconds" &
bench_pids+=($!)
commands="$(python3 -c "print(max(1, int(float('$COMMAND_RATE') * $seconds)))")"
bench command --port "$mqtt_port" --label soak-command \
    command --devices 5 --commands "$commands" --rate "$COMMAND_RATE" --concurrency 4 &
bench_pids+=($!)
pids+=("${bench_pids[@]}")

driver_rc=0
python3 scripts/soak.py --minutes "$MINUTES" --server-pid "$server_pid" \
    --http-port "$http_port" --grpc-port "$grpc_port" --mqtt-port "$mqtt_port" --mqtts-port "$mqtts_port" \
    --ca "$data/tls/ca.pem" --token "$token" --workdir "$out" --devices "$DEVICES" --abusers "$ABUSERS" \
    --sample "$SAMPLE_SECONDS" --report "$out/soak.json" 2> >(tee "$out/soak.log" >&2) || driver_rc=$?

bench_rc=0
for p in "${bench_pids[@]}"; do wait "$p" || bench_rc=$?; done
log "load over (driver exit $driver_rc, bench exit $bench_rc)"

# A clean stop: SIGTERM, then the process must be gone within its shutdown deadline (10 s) and a
# margin, having exited 0.
shutdown_start=$(date +%s.%N)
kill -TERM "$server_pid"
shutdown_rc=0
for _ in $(seq 1 200); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$server_pid" 2>/dev/null; then
    log "the server was still running 20 s after SIGTERM"
    shutdown_rc=124
    kill -KILL "$server_pid" || true
fi
wait "$server_pid" || shutdown_rc=$?
shutdown_seconds="$(python3 -c "import time; print(round(time.time() - $shutdown_start, 2))")"

python3 - "$out" "$shutdown_seconds" "$shutdown_rc" "$driver_rc" "$bench_rc" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
shutdown_s, shutdown_rc, driver_rc, bench_rc = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
soak = json.loads((out / "soak.json").read_text()) if (out / "soak.json").exists() else {}
def bench(name):
    f = out / f"bench-{name}.json"
    return json.loads(f.read_text())["results"] if f.exists() else None
lines = [f"# Soak run: {soak.get('minutes', '?')} minutes", ""]
lines += ["| minute | RSS MB | peak RSS MB | open files | sockets | threads | closed, in kernel | QoS 1 acked (soak.py) | pulled | configs | commands | API calls |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
rows = [dict(soak["baseline"], minute=0, counts={})] if soak else []
rows += soak.get("samples", [])
if soak:
    rows.append(dict(soak["after_load"], minute="after", counts=rows[-1]["counts"] if rows else {}))
for s in rows:
    c = s.get("counts", {})
    lines.append(f"| {s['minute']} | {s['rss_mb']:.1f} | {s['hwm_mb']:.1f} | {s['fds']} | {s['sockets']} | {s['threads']} | {s.get('lingering', '-')} | "
                 f"{c.get('telemetry_qos1_acked', 0)} | {c.get('pubsub_pulled', 0)} | {c.get('configs_received', 0)} | "
                 f"{c.get('commands_received', 0)} | {c.get('api_calls_ok', 0)} |")
lines.append("")
v = soak.get("verification", {})
lines.append(f"* soak.py devices: {v.get('qos1_acked', '?')} QoS 1 messages PUBACKed; {v.get('missing_from_log', '?')} missing "
             f"from the log, {v.get('missing_from_subscription', '?')} missing from the REST subscription; "
             f"{soak.get('counts', {}).get('device_connects', '?')} connects.")
t = bench("telemetry")
if t:
    ver = t.get("verification", {})
    lines.append(f"* bench telemetry (TLS, QoS 1): {t.get('acked')} PUBACKed of {t.get('sent')} sent; "
                 f"{ver.get('missing_acknowledged')} missing from the log, {ver.get('duplicates')} duplicates.")
q = bench("qos0")
if q:
    lines.append(f"* bench telemetry (QoS 0): {q.get('sent')} sent.")
p = bench("pubsub")
if p:
    ver = p.get("verification", {})
    lines.append(f"* bench pubsub: {p.get('acked')} PUBACKed; {p.get('delivered_acked')} delivered and acknowledged over "
                 f"StreamingPull; {ver.get('missing_acknowledged')} missing, {ver.get('duplicates')} duplicates.")
c = bench("command")
if c:
    lines.append(f"* bench command: {c.get('received')} of {c.get('commands')} commands received; errors {c.get('errors')}.")
for name, d in sorted(soak.get("abusers_cut", {}).items()):
    lines.append(f"* {name.replace('_cut_after_s', '')}: {d['count']} cut, median {d['median_s']} s, max {d['max_s']} s.")
stuck = {k: n for k, n in soak.get("counts", {}).items() if "stuck" in k and not k.endswith("_cut")}
if stuck:
    lines.append(f"* devices that stop reading (commands answered, pinging ones held to the end): {stuck}.")
never = {k: n for k, n in soak.get("counts", {}).items() if k.endswith("_never_cut")}
lines.append(f"* abusive connections never cut: {never or 'none'}.")
errs = soak.get("errors", {})
if errs:
    lines.append(f"* driver-side errors: " + "; ".join(f"{k} x{soak['counts'].get(k, '?')} (e.g. {v[0]})" for k, v in errs.items()))
lines.append(f"* SIGTERM: exited {shutdown_rc} after {shutdown_s} s.")
lines.append(f"* exit statuses: soak.py {driver_rc}, bench {bench_rc}.")
(out / "report.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY

log "report: $out/report.md"
if ((driver_rc != 0 || bench_rc != 0 || shutdown_rc != 0)); then
    exit 1
fi
