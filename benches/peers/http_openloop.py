#!/usr/bin/env python3
"""Dev-only open-loop HTTP load driver for the peer server (benches/peers/http_server.py).

For each offered rate, requests are scheduled in advance (Poisson or constant arrivals) for
--duration seconds and handed, at their scheduled time, to a pool of --connections keep-alive
HTTP/1.1 connections (a minimal client on asyncio streams, uvloop when installed). Latency is
measured FROM THE SCHEDULED SEND TIME to the end of the response, so time spent waiting for a
free connection, or for the driver itself, counts (no coordinated omission). A request not
answered within --timeout of its scheduled time is an error (TIMEOUT), as are non-200 answers
(HTTP_<code>) and broken connections (CONNECTION).

POST body: {"text": <line of --texts>} in file order, round robin. Output: JSON in the schema
of `classifyd bench --json` ({"target", "runs": [{"mode": "open", "offered_rps", ...}]}), to
stdout or --out; a table on stderr.

Usage: http_openloop.py [--url http://127.0.0.1:8000/classify] [--rates 20,50,100,150,200]
                        [--duration 10] [--connections 64] [--arrivals poisson|constant]
"""
import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerlib import ROOT, percentiles, read_texts  # noqa: E402


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, host, port, path):
        self.host, self.port = host, port
        self.head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.reader = self.writer = None

    async def request(self, body: bytes):
        message = self.head + str(len(body)).encode() + b"\r\n\r\n" + body
        for attempt in (0, 1):
            fresh = self.writer is None or self.reader.at_eof()
            if fresh:
                self.close()
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(message)
                status_line = await self.reader.readline()
                if not status_line:
                    raise ConnectionError("closed by server")
                break
            except (ConnectionError, OSError):
                # A kept-alive connection the server closed while idle (uvicorn's keep-alive
                # timeout is 5 s): reconnect and send again once, as HTTP client pools do.
                self.close()
                if fresh or attempt:
                    raise
        status = int(status_line.split(b" ", 2)[1])
        headers = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get(b"content-length", b"0"))
        payload = await self.reader.readexactly(n) if n else b""
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, headers, payload

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def schedule(rate, duration, arrivals, rng):
    """Offsets in seconds from the start of the run."""
    if arrivals == "constant":
        return [i / rate for i in range(int(rate * duration))]
    out, t = [], rng.expovariate(rate)
    while t < duration:
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def run_rate(args, bodies, rate, rng):
    loop = asyncio.get_running_loop()
    offsets = schedule(rate, args.duration, args.arrivals, rng)
    queue = asyncio.Queue()
    latencies, errors = [], Counter()
    server = {"tokenize": [], "inference": [], "total": []}
    last_done = [0.0]
    conns = [Connection(args.host, args.port, args.path) for _ in range(args.connections)]
    # Open the connections before the clock starts, as a keep-alive client pool would be.
    await asyncio.gather(*(c.request(bodies[0]) for c in conns))
    start = loop.time() + 0.05

    async def worker(conn):
        while True:
            item = await queue.get()
            if item is None:
                return
            i, scheduled = item
            remaining = scheduled + args.timeout - loop.time()
            if remaining <= 0:
                errors["TIMEOUT"] += 1
                continue
            try:
                status, headers, _ = await asyncio.wait_for(
                    conn.request(bodies[i % len(bodies)]), remaining)
            except asyncio.TimeoutError:
                errors["TIMEOUT"] += 1
                conn.close()
                continue
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                errors["CONNECTION"] += 1
                conn.close()
                continue
            done = loop.time()
            last_done[0] = max(last_done[0], done)
            if status != 200:
                errors[f"HTTP_{status}"] += 1
                continue
            latencies.append((done - scheduled) * 1e6)
            for key in server:
                v = headers.get(b"x-" + key.encode() + b"-us")
                if v is not None:
                    server[key].append(int(v))

    workers = [asyncio.create_task(worker(c)) for c in conns]
    cpu0, lag = time.process_time(), []
    for i, off in enumerate(offsets):
        at = start + off
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.append((loop.time() - at) * 1e6)
        queue.put_nowait((i, at))
    for _ in conns:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    for c in conns:
        c.close()
    elapsed = max(args.duration, last_done[0] - start)
    cpu = time.process_time() - cpu0
    mean = lambda xs: round(sum(xs) / len(xs), 1) if xs else None  # noqa: E731
    return {
        "mode": "open", "concurrency": None, "offered_rps": rate, "duration_s": args.duration,
        "sent": len(offsets), "ok": len(latencies), "errors": dict(errors),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "latency_us": percentiles(latencies),
        "server_us": {"queue": None, "tokenize": mean(server["tokenize"]),
                      "inference": mean(server["inference"]), "total": mean(server["total"])},
        "mean_batch_size": None,
        "arrival": args.arrivals, "connections": args.connections,
        # Self-checks: the driver's CPU use over the run (% of one core) and how late it handed
        # requests out against their schedule (included in latency_us).
        "dispatch_lag_us": {"p99": percentiles(lag)["p99"], "max": percentiles(lag)["max"]},
        "driver": {"cpu_pct": round(100 * cpu / elapsed, 1), "loadavg_1m": os.getloadavg()[0]},
    }


async def sweep(args):
    texts = read_texts(args.texts)
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    rng = random.Random(args.seed)
    # Warm-up: a few sequential requests (the server's first calls are slow).
    warm = Connection(args.host, args.port, args.path)
    for b in bodies[:20]:
        await warm.request(b)
    warm.close()
    runs = []
    print(f"{'offered':>8} {'achieved':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'p99.9 ms':>9} {'max ms':>8}  errors", file=sys.stderr)
    for rate in args.rates:
        r = await run_rate(args, bodies, rate, rng)
        runs.append(r)
        l = r["latency_us"]
        ms = lambda v: f"{v / 1e3:8.2f}" if v is not None else "       -"  # noqa: E731
        print(f"{rate:8g} {r['throughput_rps']:9.1f} {ms(l['p50'])} {ms(l['p90'])} "
              f"{ms(l['p99'])} {ms(l['p999'])} {ms(l['max'])}  {r['errors'] or ''}  "
              f"(driver cpu {r['driver']['cpu_pct']}%, dispatch lag p99 "
              f"{ms(r['dispatch_lag_us']['p99'])} ms, load {os.getloadavg()[0]:.1f})",
              file=sys.stderr, flush=True)
        await asyncio.sleep(args.pause)
    return runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000/classify")
    ap.add_argument("--target", help="name in the JSON (default: the URL)")
    ap.add_argument("--texts", type=Path, default=ROOT / "benches/texts/tweets.txt")
    ap.add_argument("--rates", default="20,50,100,150,200",
                    help="comma-separated offered rates, requests/s")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson")
    ap.add_argument("--timeout", type=float, default=5.0,
                    help="seconds from the scheduled send time before a request counts as lost")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds between rates")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    u = urlsplit(args.url)
    args.host, args.port, args.path = u.hostname, u.port or 80, u.path or "/"
    args.rates = [float(r) for r in args.rates.split(",")]
    try:
        import uvloop
        runs = uvloop.run(sweep(args))
    except ImportError:
        runs = asyncio.run(sweep(args))
    result = {"target": args.target or args.url, "runs": runs}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
