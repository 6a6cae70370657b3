#!/usr/bin/env bash
# Device search and paging on a registry of 1,000,000 devices (the web console's device list):
# `devices.list` pages of 50 with and without `deviceIdPrefix`, at the start, middle and end of
# the registry, and 100 pages deep into a prefix; 200 requests each over one kept-alive
# connection, reporting p50 and p99.
#
#   scripts/bench-device-search.sh [BINARY]     (default: the release build, else the debug one)
#
# The devices are written straight into the SQLite file with one INSERT ... SELECT (the API
# would take most of an hour to create a million): the server is started once to create the
# schema, a registry and a template device, stopped, filled, and started again. Needs sqlite3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$(bash "$root/scripts/cargo-target-dir.sh")"
bin="${1:-}"
if [[ -z "$bin" ]]; then
    bin="$target/release/ferrocore"
    [[ -x "$bin" ]] || bin="$target/debug/ferrocore"
fi
command -v sqlite3 >/dev/null || { echo "error: sqlite3 is needed (apt-get install sqlite3)" >&2; exit 1; }
dir="$(mktemp -d)"
trap 'pkill -f -- "--data-dir $dir/data" || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
serve() {
    "$bin" serve --data-dir "$dir/data" --http "127.0.0.1:$port" --grpc off --mqtts off >"$dir/log" 2>&1 &
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.2; done
    echo "error: the server did not start" >&2; cat "$dir/log" >&2; exit 1
}
stop() { pkill -f -- "--data-dir $dir/data"; sleep 1; }
serve
token="$(cat "$dir/data/admin-token")"
api="http://127.0.0.1:$port/v1/projects/p/locations/l/registries"
curl -sf -H "Authorization: Bearer $token" -X POST "$api" -d '{"id":"big"}' >/dev/null
curl -sf -H "Authorization: Bearer $token" -X POST "$api/big/devices" -d '{"id":"template-0"}' >/dev/null
stop
bash "$root/scripts/fill-devices.sh" "$dir/data/ferrocore.db" template-0 0 999999 \
    "CASE WHEN i % 10 = 0 THEN printf('valve-%07d', i) ELSE printf('meter-%07d', i) END"
serve
echo "binary: $bin; devices in the registry: $(sqlite3 "$dir/data/ferrocore.db" 'SELECT count(*) FROM devices')"
PORT="$port" TOKEN="$token" python3 - <<'PY'
import http.client, json, os, statistics, time, urllib.parse
conn = http.client.HTTPConnection("127.0.0.1", int(os.environ["PORT"]))
headers = {"Authorization": "Bearer " + os.environ["TOKEN"]}
path = "/v1/projects/p/locations/l/registries/big/devices?"
def get(params):
    conn.request("GET", path + urllib.parse.urlencode(params), headers=headers)
    r = conn.getresponse(); body = r.read()
    assert r.status == 200, body
    return json.loads(body)
def run(params, n=200):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); get(params); ts.append(time.perf_counter() - t)
    ts.sort()
    return statistics.median(ts) * 1000, ts[int(n * .99) - 1] * 1000
token = ""
for _ in range(100):
    token = get({"pageSize": 50, "deviceIdPrefix": "meter-0", "pageToken": token})["nextPageToken"]
for label, p in [("first page, no prefix", {"pageSize": 50}),
                 ("prefix near the start (meter-00)", {"pageSize": 50, "deviceIdPrefix": "meter-00"}),
                 ("prefix mid-registry (meter-05)", {"pageSize": 50, "deviceIdPrefix": "meter-05"}),
                 ("prefix near the end (valve-0999)", {"pageSize": 50, "deviceIdPrefix": "valve-0999"}),
                 ("prefix matching nothing (zzz)", {"pageSize": 50, "deviceIdPrefix": "zzz"}),
                 ("page 101 of prefix meter-0", {"pageSize": 50, "deviceIdPrefix": "meter-0", "pageToken": token})]:
    p50, p99 = run(p)
    print(f"{label:36s} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
PY
