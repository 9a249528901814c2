#!/usr/bin/env python3
"""The Python client's per-request overhead over the daemon's own time, for sequential short texts.

For each request: overhead = the round trip the caller sees (time.perf_counter_ns around
`classify`) minus the server's `timings.total_us` (its time from reading the request to
replying). What is left is the client (building the request, protobuf, syscalls, decoding the
results into Python objects) plus the socket and the server's own framing outside total_us.
The same difference for the Rust client (`classifyd bench --concurrency 1`, means only) is
printed beside it as the floor that the transport alone costs.

    python clients/python/bench/overhead.py                      # starts target/debug/classifyd
    CLASSIFYD_BIN=target/release/classifyd python clients/python/bench/overhead.py --json
    python clients/python/bench/overhead.py --socket /run/classifyd/classifyd.sock   # a running daemon

Reports numbers; asserts nothing. The goal in issue #18: median overhead <= 100 us.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "clients" / "python" / "tests"))

from daemon import DEFAULT_MODEL, Daemon, binary, dev_pki  # noqa: E402

from classifyd import AsyncClient, Client, Results  # noqa: E402

TEXTS = [
    "what a wonderful film",
    "a dull, tedious film",
    "great acting, weak plot",
    "I loved it",
    "not worth the ticket",
    "the best film of the year",
    "boring from start to finish",
    "a charming little movie",
]


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def summary(rtt: list[float], total: list[float]) -> dict[str, Any]:
    over = [a - b for a, b in zip(rtt, total)]
    return {
        "requests": len(rtt),
        "rtt_us": {"p50": pct(rtt, 50), "p90": pct(rtt, 90), "p99": pct(rtt, 99), "mean": statistics.fmean(rtt)},
        "server_total_us": {"p50": pct(total, 50), "mean": statistics.fmean(total)},
        "overhead_us": {
            "p50": pct(over, 50),
            "p90": pct(over, 90),
            "p99": pct(over, 99),
            "mean": statistics.fmean(over),
        },
    }


def run_sync(c: Client, n: int, warmup: int) -> dict[str, Any]:
    rtt: list[float] = []
    total: list[float] = []
    clock = time.perf_counter_ns
    for i in range(warmup + n):
        t = TEXTS[i % len(TEXTS)]
        t0 = clock()
        rs = c.classify([t])
        dt = (clock() - t0) / 1000
        if i >= warmup:
            rtt.append(dt)
            total.append(rs.timings.total_us)
    return summary(rtt, total)


def run_async(make: Callable[[], AsyncClient], n: int, warmup: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        rtt: list[float] = []
        total: list[float] = []
        clock = time.perf_counter_ns
        async with make() as c:
            for i in range(warmup + n):
                t0 = clock()
                rs: Results = await c.classify([TEXTS[i % len(TEXTS)]])
                dt = (clock() - t0) / 1000
                if i >= warmup:
                    rtt.append(dt)
                    total.append(rs.timings.total_us)
        return summary(rtt, total)

    return asyncio.run(main())


def rust_baseline(socket: str, seconds: float) -> Optional[dict[str, Any]]:
    """`classifyd bench --uds --concurrency 1`: the Rust client on the same daemon (means)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(TEXTS) + "\n")
    try:
        out = subprocess.run(
            [str(binary()), "bench", "--uds", socket, "--concurrency", "1", "--duration-secs", str(seconds),
             "--warmup-secs", "1", "--texts", f.name, "--json", "--quiet"],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as e:
        print(f"rust baseline skipped: {e}", file=sys.stderr)
        return None
    finally:
        os.unlink(f.name)
    run = json.loads(out.stdout)["runs"][0]
    mean_rtt, mean_total = run["latency_us"]["mean"], run["server_us"]["total"]
    return {
        "requests": run["ok"],
        "rtt_us": {"p50": run["latency_us"]["p50"], "mean": mean_rtt},
        "server_total_us": {"mean": mean_total},
        "overhead_us": {"mean": mean_rtt - mean_total},
    }


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--socket", help="a running daemon's socket (else one is started)")
    ap.add_argument("-n", type=int, default=2000, help="measured requests per client and round")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every client, interleaved; medians are reported")
    ap.add_argument("--no-quic", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    started: list[Any] = []
    quic_addr = pki = None
    if args.socket:
        sock = args.socket
    else:
        tmp = Path(tempfile.mkdtemp(prefix="classifyd-bench-"))
        pki = None if args.no_quic else dev_pki(tmp / "pki")
        d = Daemon(args.model, quic_pki=pki)
        started.append(d)
        sock, quic_addr = d.socket, d.quic_addr

    clients: dict[str, Callable[[], dict[str, Any]]] = {
        "Client (unix)": lambda: run_sync(Client(sock), args.n, args.warmup),
        "AsyncClient (unix)": lambda: run_async(lambda: AsyncClient(sock), args.n, args.warmup),
    }
    if quic_addr and pki:
        ca, cert, key = pki / "ca.pem", pki / "client.pem", pki / "client-key.pem"
        clients["Client.quic"] = lambda: run_sync(Client.quic(quic_addr, ca=ca, cert=cert, key=key), args.n, args.warmup)
        clients["AsyncClient.quic"] = lambda: run_async(
            lambda: AsyncClient.quic(quic_addr, ca=ca, cert=cert, key=key), args.n, args.warmup
        )
    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in clients}
    rounds["Rust client (classifyd bench, unix)"] = []
    try:
        for _ in range(args.rounds):
            for name, fn in clients.items():
                rounds[name].append(fn())
            rust = rust_baseline(sock, max(2.0, args.n / 2000))
            if rust:
                rounds["Rust client (classifyd bench, unix)"].append(rust)
    finally:
        for d in started:
            d.stop()

    def med(rs: list[dict[str, Any]], key: str, stat: str) -> Optional[float]:
        xs = [r[key][stat] for r in rs if stat in r[key]]
        return statistics.median(xs) if xs else None

    report = {
        "cpu": cpu(),
        "python": platform.python_version(),
        "binary": str(binary()),
        "model": str(args.model) if not args.socket else sock,
        "rounds": args.rounds,
        "per_round_requests": args.n,
        "results": {
            name: {
                f"{key}.{stat}": med(rs, key, stat)
                for key in ("overhead_us", "rtt_us", "server_total_us")
                for stat in ("p50", "p90", "p99", "mean")
                if med(rs, key, stat) is not None
            }
            for name, rs in rounds.items()
            if rs
        },
        "raw": rounds,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"cpu: {report['cpu']}; python {report['python']}; binary {report['binary']}")
    print(f"{args.rounds} rounds x {args.n} sequential requests of one short text; medians of the rounds (us)")
    print(f"{'client':40} {'overhead p50':>12} {'p90':>8} {'p99':>8} {'mean':>8} {'rtt p50':>9} {'server p50':>11}")
    for name, r in report["results"].items():
        def f(k: str) -> str:
            v = r.get(k)
            return f"{v:8.1f}" if v is not None else f"{'-':>8}"

        print(
            f"{name:40} {f('overhead_us.p50'):>12} {f('overhead_us.p90')} {f('overhead_us.p99')} "
            f"{f('overhead_us.mean')} {f('rtt_us.p50'):>9} {f('server_total_us.p50'):>11}"
        )
    print("overhead by round (p50, or the mean where only that is known):")
    for name, rs in rounds.items():
        by = [r["overhead_us"].get("p50", r["overhead_us"]["mean"]) for r in rs]
        print(f"  {name:38} " + ", ".join(f"{v:.0f}" for v in by))


if __name__ == "__main__":
    main()
