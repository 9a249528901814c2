#!/usr/bin/env python3
"""Dev-only: RSS (and reloads) over time from scripts/soak.sh runs, one line per run.

Usage: plot_soak.py OUTDIR[=LABEL] [OUTDIR[=LABEL] ...] [--out docs/img/soak_rss.png]
Each OUTDIR holds the soak's samples.csv (t_s, rss_kib, fds); the reloads every 150 s are
marked as the script makes them (RELOAD_EVERY).
"""
import argparse
import csv
import os
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default="docs/img/soak_rss.png")
    ap.add_argument("--reload-every", type=int, default=int(os.environ.get("RELOAD_EVERY", 150)))
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(8, 4))
    end = 0
    for spec in args.runs:
        path, _, label = spec.partition("=")
        rows = list(csv.DictReader(open(Path(path) / "samples.csv")))
        t = [int(r["t_s"]) for r in rows]
        rss = [int(r["rss_kib"]) / 1024 for r in rows]
        end = max(end, t[-1])
        ax.plot(t, rss, marker=".", label=label or path)
    for x in range(args.reload_every, end, args.reload_every):
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
    ax.axvline(60, color="black", linestyle="--", linewidth=1)
    ax.text(62, ax.get_ylim()[1], " end of warm-up (baseline)", va="top", fontsize=8)
    ax.set_xlabel("seconds (dotted: SIGHUP reload)")
    ax.set_ylabel("RSS, MiB")
    ax.set_title("classifyd serve under open-loop load at 80 % of capacity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
