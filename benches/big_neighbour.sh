#!/usr/bin/env bash
# A sporadic client next to a big one (issue #16): the second client's latency with 50 ms pauses
# before each request, and /healthz, first on an idle daemon, then while another client keeps
# sending the largest requests the limits allow (64 inputs of ~512 tokens, back to back).
#
#   benches/big_neighbour.sh [seconds per phase, default 20]
#
# Environment: BIN (default target/release/classifyd), MODEL (default models/sentiment-minilm),
# TEXTS (default benches/texts/tweets.txt). Prints one JSON object per phase and a summary.
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
BIN=${BIN:-target/release/classifyd}
MODEL=${MODEL:-models/sentiment-minilm}
TEXTS=${TEXTS:-benches/texts/tweets.txt}
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve --model "$MODEL" --uds "$dir/s.sock" --metrics-addr "127.0.0.1:$port" \
    2>"$dir/serve.log" &
pids+=($!)
for _ in $(seq 600); do
    grep -q ready "$dir/serve.log" 2>/dev/null && [[ -S $dir/s.sock ]] && break
    sleep 0.05
done

# 64 texts of about 512 tokens each: tweets joined until ~2,600 characters.
python3 - "$TEXTS" "$dir/big.txt" <<'EOF'
import sys
tweets = [l.strip() for l in open(sys.argv[1]) if l.strip()]
out, i = [], 0
for _ in range(64):
    t = ""
    while len(t) < 2600:
        t += tweets[i % len(tweets)] + " "
        i += 1
    out.append(t.strip())
open(sys.argv[2], "w").write("\n".join(out) + "\n")
EOF

# /healthz every 50 ms for the phase, latency per probe in ms, to a JSON line.
probe() {
    python3 - "$port" "$1" <<'EOF'
import http.client, json, statistics, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
lat, end = [], time.monotonic() + secs
while time.monotonic() < end:
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/healthz")
    ok = c.getresponse().status == 200
    c.close()
    lat.append((time.perf_counter() - t0) * 1e3 if ok else float("inf"))
    time.sleep(0.05)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(json.dumps({"probes": len(lat), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": lat[-1]}))
EOF
}

sporadic() {
    "$BIN" bench --uds "$dir/s.sock" --gap-ms 50 --texts "$TEXTS" --warmup-secs 2 \
        --duration-secs "$SECS" --quiet --json
}

echo "== idle daemon" >&2
probe "$((SECS + 2))" >"$dir/health-idle.json" &
hp=$!
sporadic >"$dir/idle.json"
wait "$hp"

echo "== next to a client sending 64 x 512-token requests back to back" >&2
"$BIN" bench --uds "$dir/s.sock" --concurrency 1 --inputs-per-request 64 --texts "$dir/big.txt" \
    --warmup-secs 0 --duration-secs "$((SECS + 8))" --quiet --json >"$dir/big.json" &
bp=$!
pids+=($bp)
sleep 3
probe "$((SECS + 2))" >"$dir/health-loaded.json" &
hp=$!
sporadic >"$dir/loaded.json"
wait "$hp"
wait "$bp" || true

python3 - "$dir" <<'EOF'
import json, os, sys
d = sys.argv[1]
load = lambda f: json.load(open(os.path.join(d, f)))
run = lambda doc: doc["runs"][0]
idle, loaded, big = run(load("idle.json")), run(load("loaded.json")), run(load("big.json"))
hi, hl = load("health-idle.json"), load("health-loaded.json")
lat = lambda r, p: r["latency_us"][p] / 1000
out = {
    "sporadic_idle_ms": {p: lat(idle, p) for p in ("p50", "p90", "p99", "max")},
    "sporadic_loaded_ms": {p: lat(loaded, p) for p in ("p50", "p90", "p99", "max")},
    "p99_ratio": lat(loaded, "p99") / lat(idle, "p99"),
    "p50_ratio": lat(loaded, "p50") / lat(idle, "p50"),
    "big_requests": {"ok": big["ok"], "p50_ms": lat(big, "p50"), "p99_ms": lat(big, "p99")},
    "healthz_idle": hi,
    "healthz_loaded": hl,
}
print(json.dumps(out, indent=1))
EOF
