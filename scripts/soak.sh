#!/usr/bin/env bash
# Soak: `classifyd serve` on the default model under `classifyd bench` open-loop load at 80 % of
# the capacity measured at the start, for DURATION seconds (default 600), with mixed inputs
# (the 300 tweets plus long multi-sentence texts) and a SIGHUP reload every RELOAD_EVERY seconds.
# Samples the daemon's RSS and open file descriptors every 10 s. Passes when: zero errors, RSS
# after warm-up (the sample at 60 s) grows by at most 5 %, and the fd count is flat.
# Usage: scripts/soak.sh [DURATION] [OUTDIR]     (needs target/release/classifyd)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-600}
out=${2:-benches/peers/out/soak}
reload_every=${RELOAD_EVERY:-150}
bin=target/release/classifyd
mkdir -p "$out"
dir=$(mktemp -d)
sock=$dir/soak.sock
trap 'kill $daemon 2>/dev/null || true; rm -rf "$dir"' EXIT

# Mixed inputs: short tweets, and every tenth line a long text of ten tweets joined (~250 tokens).
awk '{print} NR % 10 == 0 {long = ""; for (i = 0; i < 10; i++) long = long " " $0; print long}' \
    benches/texts/tweets.txt >"$dir/mixed.txt"

"$bin" serve --model models/sentiment-minilm --uds "$sock" 2>"$out/serve.log" &
daemon=$!
until [ -S "$sock" ]; do kill -0 $daemon; sleep 0.1; done

capacity=$("$bin" bench --uds "$sock" --texts "$dir/mixed.txt" --concurrency 8 --duration-secs 10 \
    --warmup-secs 2 --quiet --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["throughput_rps"])')
rate=$(python3 -c "print(round(0.8 * $capacity, 1))")
echo "soak: capacity $capacity req/s (closed loop, 8 clients); open loop at $rate req/s for $duration s"

"$bin" bench --uds "$sock" --texts "$dir/mixed.txt" --rate "$rate" --duration-secs "$duration" \
    --warmup-secs 0 --quiet --json >"$out/bench.json" &
load=$!

echo "t_s,rss_kib,fds" >"$out/samples.csv"
start=$SECONDS
next_reload=$reload_every
while kill -0 $load 2>/dev/null; do
    t=$((SECONDS - start))
    rss=$(awk '/^VmRSS:/ {print $2}' /proc/$daemon/status)
    fds=$(ls /proc/$daemon/fd | wc -l)
    echo "$t,$rss,$fds" >>"$out/samples.csv"
    if [ "$t" -ge "$next_reload" ] && [ "$t" -lt "$duration" ]; then
        kill -HUP $daemon
        echo "soak: reload at ${t}s"
        next_reload=$((next_reload + reload_every))
    fi
    sleep 10
done
wait $load || true

python3 - "$out" <<'PY'
import csv, json, sys
out = sys.argv[1]
rows = [(int(r["t_s"]), int(r["rss_kib"]), int(r["fds"])) for r in csv.DictReader(open(f"{out}/samples.csv"))]
run = json.load(open(f"{out}/bench.json"))["runs"][0]
base = next((r for r in rows if r[0] >= 60), rows[0])
last = rows[-1]
growth = (last[1] - base[1]) / base[1] * 100
# The first sample is taken before the load generator connects and the last may come after it
# has gone: the fd count is judged while the load runs.
fds = [r[2] for r in rows[1:-1]] or [r[2] for r in rows]
errors = sum(run["errors"].values())
summary = {
    "offered_rps": run["offered_rps"], "sent": run["sent"], "ok": run["ok"], "errors": run["errors"],
    "p50_ms": run["latency_us"]["p50"] / 1e3, "p99_ms": run["latency_us"]["p99"] / 1e3,
    "rss_mib_at_60s": round(base[1] / 1024, 1), "rss_mib_last": round(last[1] / 1024, 1),
    "rss_mib_max": round(max(r[1] for r in rows) / 1024, 1),
    "rss_growth_pct": round(growth, 2), "fds_min": min(fds), "fds_max": max(fds), "samples": len(rows),
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary))
ok = errors == 0 and growth <= 5.0 and max(fds) - min(fds) <= 2
print("soak:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
