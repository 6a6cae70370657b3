#!/usr/bin/env python3
"""Reads the JSON files of one bench-compare run and prints Ferrocore/Mosquitto ratios.

Usage: bench-report.py DIR   (DIR holds <server>-<scenario>.json; writes DIR/summary.json)
Standard library only.
"""
import json
import pathlib
import sys

# (scenario, label, path in results, unit, scale, higher is better)
METRICS = [
    ("connect-tls", "connects/s", ["connects_per_second"], "/s", 1, True),
    ("connect-tls", "connect p99", ["latency", "p99_us"], "ms", 1e-3, False),
    ("connect-tls", "server CPU/connect", ["server_cpu_us_per_connect"], "µs", 1, False),
    ("connect-plain", "connects/s", ["connects_per_second"], "/s", 1, True),
    ("connect-plain", "server CPU/connect", ["server_cpu_us_per_connect"], "µs", 1, False),
    ("telemetry-plain", "acked msg/s", ["msgs_per_second"], "/s", 1, True),
    ("telemetry-plain", "publish→PUBACK p50", ["latency", "p50_us"], "ms", 1e-3, False),
    ("telemetry-plain", "publish→PUBACK p99", ["latency", "p99_us"], "ms", 1e-3, False),
    ("telemetry-plain", "server CPU/msg", ["server_cpu_us_per_message"], "µs", 1, False),
    ("telemetry-plain", "missing (acked, not found)", ["verification", "missing_acknowledged"], "", 1, False),
    ("telemetry-tls", "acked msg/s", ["msgs_per_second"], "/s", 1, True),
    ("telemetry-tls", "publish→PUBACK p50", ["latency", "p50_us"], "ms", 1e-3, False),
    ("telemetry-tls", "publish→PUBACK p99", ["latency", "p99_us"], "ms", 1e-3, False),
    ("telemetry-tls", "server CPU/msg", ["server_cpu_us_per_message"], "µs", 1, False),
    ("telemetry-tls", "missing (acked, not found)", ["verification", "missing_acknowledged"], "", 1, False),
    ("idle-plain", "connections held", ["still_open"], "", 1, True),
    ("idle-plain", "server KB/connection", ["server_bytes_per_connection"], "KB", 1e-3, False),
    ("idle-tls", "connections held", ["still_open"], "", 1, True),
    ("idle-tls", "server KB/connection", ["server_bytes_per_connection"], "KB", 1e-3, False),
]


def dig(doc, path):
    cur = doc.get("results", {})
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur if isinstance(cur, (int, float)) else None


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "/s" or (unit == "" and abs(v) >= 100):
        return f"{v:,.0f}"
    return f"{v:,.2f}"


def main():
    d = pathlib.Path(sys.argv[1])
    docs = {}
    for f in sorted(d.glob("*.json")):
        if f.name == "summary.json":
            continue
        server, _, scenario = f.stem.partition("-")
        docs[(server, scenario)] = json.loads(f.read_text())
    rows = []
    for scenario, label, path, unit, scale, higher in METRICS:
        m = docs.get(("mosquitto", scenario))
        fc = docs.get(("ferrocore", scenario))
        if m is None and fc is None:
            continue
        mv = dig(m, path) if m else None
        fv = dig(fc, path) if fc else None
        mv = mv * scale if mv is not None else None
        fv = fv * scale if fv is not None else None
        ratio = fv / mv if (mv and fv is not None) else None
        rows.append({"scenario": scenario, "metric": label, "unit": unit, "mosquitto": mv, "ferrocore": fv,
                     "ratio": ratio, "higher_is_better": higher})
    w = max((len(r["scenario"]) + len(r["metric"]) for r in rows), default=20) + 3
    print(f"\n{'scenario / metric':<{w}} {'Mosquitto':>12} {'Ferrocore':>12} {'Ferrocore/Mosquitto':>20}")
    print("-" * (w + 47))
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        name = f"{r['scenario']} / {r['metric']}"
        unit = f" {r['unit']}" if r["unit"] not in ("", "/s") else ""
        print(f"{name:<{w}} {fmt(r['mosquitto'], r['unit']) + unit:>12} {fmt(r['ferrocore'], r['unit']) + unit:>12} {ratio:>20}")
    machine = next(iter(docs.values()), {}).get("machine", {})
    (d / "summary.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"\nmachine: {machine.get('cpus')} x {machine.get('cpu_model')}, kernel {machine.get('kernel')}")


if __name__ == "__main__":
    main()
