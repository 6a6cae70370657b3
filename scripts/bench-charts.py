#!/usr/bin/env python3
"""PNG charts from one bench-compare run (the JSON files in DIR) into OUT_DIR.

Usage: bench-charts.py DIR OUT_DIR   (needs matplotlib: scripts/bench-requirements.txt)
"""
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"mosquitto": "#8c8c8c", "ferrocore": "#c8553d"}
NAMES = {"mosquitto": "Mosquitto", "ferrocore": "Ferrocore"}


def load(d):
    docs = {}
    for f in sorted(pathlib.Path(d).glob("*.json")):
        if f.name == "summary.json":
            continue
        server, _, scenario = f.stem.partition("-")
        docs[(server, scenario)] = json.loads(f.read_text())
    return docs


def get(docs, server, scenario, *path):
    cur = docs.get((server, scenario), {}).get("results", {})
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def grouped(ax, groups, values, unit, fmt="{:,.0f}"):
    width = 0.38
    for i, server in enumerate(("mosquitto", "ferrocore")):
        xs = [g + (i - 0.5) * width for g in range(len(groups))]
        vs = [values[server][j] or 0 for j in range(len(groups))]
        bars = ax.bar(xs, vs, width, label=NAMES[server], color=COLORS[server])
        for b, v in zip(bars, vs):
            ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(unit)
    top = max([v or 0 for s in values for v in values[s]] + [1])
    ax.set_ylim(0, top * 1.25)
    ax.legend(frameon=False, loc="upper center", ncol=2)
    ax.spines[["top", "right"]].set_visible(False)


def save(fig, out, name):
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    print(f"wrote {out / name}")


def main():
    docs = load(sys.argv[1])
    out = pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    servers = ("mosquitto", "ferrocore")

    # Telemetry: throughput and server CPU per message.
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    groups = ["plain TCP", "TLS"]
    scen = ["telemetry-plain", "telemetry-tls"]
    grouped(a, groups, {s: [get(docs, s, x, "msgs_per_second") for x in scen] for s in servers}, "acknowledged msg/s")
    a.set_title("Telemetry QoS 1, 100 B, 50 devices")
    grouped(b, groups, {s: [get(docs, s, x, "server_cpu_us_per_message") for x in scen] for s in servers},
            "server CPU µs per message", "{:.1f}")
    b.set_title("Server CPU per acknowledged message")
    save(fig, out, "bench-telemetry.png")

    # Telemetry latency percentiles.
    fig, ax = plt.subplots(figsize=(10, 4))
    groups = ["plain p50", "plain p99", "TLS p50", "TLS p99"]
    vals = {s: [(get(docs, s, sc, "latency", q) or 0) / 1000 for sc in scen for q in ("p50_us", "p99_us")]
            for s in servers}
    vals = {s: [v[0], v[1], v[2], v[3]] for s, v in vals.items()}
    grouped(ax, groups, vals, "ms", "{:.1f}")
    ax.set_title("Publish → PUBACK latency at maximum rate (32 in flight per device)")
    save(fig, out, "bench-telemetry-latency.png")

    # Connects.
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    scen = ["connect-tls", "connect-plain"]
    grouped(a, ["TLS", "plain TCP"], {s: [get(docs, s, x, "connects_per_second") for x in scen] for s in servers},
            "connects/s")
    a.set_title("Connects/s (Ferrocore: RS256 JWT per device)")
    grouped(b, ["TLS", "plain TCP"], {s: [get(docs, s, x, "server_cpu_us_per_connect") for x in scen] for s in servers},
            "server CPU µs per connect")
    b.set_title("Server CPU per connect")
    save(fig, out, "bench-connect.png")

    # Idle memory: per connection, and RSS along the way.
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    scen = ["idle-plain", "idle-tls"]
    grouped(a, ["plain TCP", "TLS"],
            {s: [(get(docs, s, x, "server_bytes_per_connection") or 0) / 1000 for x in scen] for s in servers},
            "KB per idle connection", "{:.2f}")
    n = get(docs, "ferrocore", "idle-plain", "connected") or get(docs, "mosquitto", "idle-plain", "connected")
    a.set_title(f"Server memory per idle connection ({n:,} connections)" if n else "Server memory per idle connection")
    for s in servers:
        for x, style in zip(scen, ("-", "--")):
            curve = get(docs, s, x, "rss_curve") or []
            if curve:
                b.plot([c for c, _ in curve], [k / 1024 for _, k in curve], style, color=COLORS[s],
                       label=f"{NAMES[s]} {'TLS' if 'tls' in x else 'plain'}")
    b.set_xlabel("connections open")
    b.set_ylabel("server RSS (MiB)")
    b.set_title("Server RSS while connections open")
    b.legend(frameon=False, fontsize=8)
    b.spines[["top", "right"]].set_visible(False)
    save(fig, out, "bench-idle.png")


if __name__ == "__main__":
    main()
