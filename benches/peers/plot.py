#!/usr/bin/env python3
"""Dev-only: latency percentiles against offered load from rate-sweep JSON files, one line per
system: `classifyd bench --json` output and benches/peers/http_openloop.py output (same schema:
{"target", "runs": [{"mode", "offered_rps", "latency_us": {"p50", "p99", ...}, ...}]}).

Open-loop runs are placed at their offered_rps; closed-loop runs (offered_rps null) at their
achieved throughput_rps, with a hollow marker. Runs with errors are marked with an x.

Usage: plot.py RESULT.json [RESULT.json ...] [--label NAME ...] [--out benches/peers/latency_vs_load.png]
       [--slo-ms 10] [--title TEXT]
"""
import argparse
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def series(runs, key):
    """(x, y_ms, has_errors, closed) per run with a value, sorted by x."""
    pts = []
    for r in runs:
        y = (r.get("latency_us") or {}).get(key)
        x = r.get("offered_rps")
        closed = x is None
        if closed:
            x = r.get("throughput_rps")
        if x is None or y is None:
            continue
        errs = sum((r.get("errors") or {}).values())
        pts.append((x, y / 1e3, errs > 0, closed))
    return sorted(pts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--label", action="append", default=[],
                    help="legend name per file, in order (default: the file's target)")
    ap.add_argument("--out", type=Path, default=ROOT / "benches/peers/latency_vs_load.png")
    ap.add_argument("--slo-ms", type=float, default=10.0, help="horizontal line; 0 for none")
    ap.add_argument("--logx", action="store_true", help="log-scale offered load")
    ap.add_argument("--title", default="Latency against offered load (CPU, batch of one text per request)")
    a = ap.parse_args()

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, path in enumerate(a.files):
        data = json.loads(path.read_text())
        name = a.label[n] if n < len(a.label) else data.get("target", path.stem)
        color = colors[n % len(colors)]
        for key, style in (("p99", "-"), ("p50", "--")):
            pts = series(data.get("runs", []), key)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, style, color=color, label=f"{name} {key}", linewidth=1.6)
            for x, y, err, closed in pts:
                ax.plot([x], [y], "x" if err else "o", color=color, markersize=6 if err else 4,
                        markerfacecolor="none" if closed else color)
    if a.slo_ms > 0:
        ax.axhline(a.slo_ms, color="grey", linewidth=0.8, linestyle=":")
        ax.annotate(f"{a.slo_ms:g} ms", (0.01, a.slo_ms), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 3), fontsize=8, color="grey")
    ax.set_yscale("log")
    if a.logx:
        ax.set_xscale("log")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(a.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.text(0.99, 0.01, "x: run had errors; hollow: closed loop at achieved rate",
             ha="right", fontsize=7, color="grey")
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
