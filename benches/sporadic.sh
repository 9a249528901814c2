#!/usr/bin/env bash
# One request at a time over the Unix socket, back to back and with a pause before each, for
# several daemons side by side: each round starts every configuration in turn, measures its idle
# CPU (utime+stime from /proc/PID/stat over IDLE_S seconds, after it is READY and has served a
# first burst), then runs `classifyd bench --gap-ms 0` and `--gap-ms GAP`. Rounds interleave the
# configurations so that a noisy neighbour hurts all of them alike; the summary is the median
# over rounds of each figure.
#
# Usage: benches/sporadic.sh ROUNDS 'label|BIN|serve flags' ...
#   e.g. benches/sporadic.sh 3 'spin 0|target/release/classifyd|--spin-us 0' \
#            'default|target/release/classifyd|' 'busy-poll|target/release/classifyd|--busy-poll'
# Environment: MODEL (models/sentiment-minilm), TEXTS (benches/texts/tweets.txt), GAP_MS (50),
# DURATION_S (15), IDLE_S (10), CLIENT (the binary that runs `bench`: the first config's).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1
shift
model=${MODEL:-models/sentiment-minilm}
texts=${TEXTS:-benches/texts/tweets.txt}
gap=${GAP_MS:-50}
duration=${DURATION_S:-15}
idle=${IDLE_S:-10}
client=${CLIENT:-$(echo "$1" | cut -d'|' -f2)}
dir=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
tick=$(getconf CLK_TCK)
results=$dir/results.tsv

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for round in $(seq "$rounds"); do
    for config in "$@"; do
        IFS='|' read -r label bin flags <<<"$config"
        sock=$dir/s.sock
        rm -f "$sock"
        # shellcheck disable=SC2086 # the flags are words
        "$bin" serve --model "$model" --uds "$sock" --log-format json $flags 2>"$dir/log" &
        pid=$!
        until grep -q '"startup_ms"' "$dir/log" 2>/dev/null; do
            kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
            sleep 0.05
        done
        "$client" bench --uds "$sock" --texts "$texts" --duration-secs 2 --warmup-secs 0 --quiet >/dev/null
        sleep 1
        t0=$(cpu_ticks "$pid")
        sleep "$idle"
        t1=$(cpu_ticks "$pid")
        idle_pct=$(awk -v d=$((t1 - t0)) -v hz="$tick" -v s="$idle" 'BEGIN {printf "%.2f", 100 * d / hz / s}')
        for g in 0 "$gap"; do
            "$client" bench --uds "$sock" --texts "$texts" --gap-ms "$g" --duration-secs "$duration" \
                --warmup-secs 2 --quiet --json >"$dir/bench.json"
            python3 - "$dir/bench.json" "$label" "$g" "$idle_pct" >>"$results" <<'EOF'
import json, sys
path, label, gap, idle = sys.argv[1:]
doc = json.load(open(path))
runs = doc["runs"] if isinstance(doc, dict) and "runs" in doc else doc
r = runs[0]
l, s = r["latency_us"], r["server_us"]
print("\t".join(map(str, [label, gap, l["p50"], l["p99"], l["max"], s["inference"], r["ok"], idle])))
EOF
        done
        kill -TERM "$pid"
        wait "$pid" || true
        pid=""
        echo "round $round: $label done" >&2
    done
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
echo "CPU: $cpu, $(nproc) CPUs; $rounds rounds, ${duration} s per load; medians over rounds"
python3 - "$results" <<'EOF'
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
order, data = [], {}
for label, gap, p50, p99, mx, inf, ok, idle in rows:
    if label not in order:
        order.append(label)
    data.setdefault((label, gap), []).append((float(p50), float(p99), float(mx), float(inf), float(idle)))
gaps = sorted({g for _, g in data}, key=float)
print(f"| config | gap ms | p50 ms | p99 ms | max ms | server inference ms | idle CPU % |")
print("|---|---|---|---|---|---|---|")
for label in order:
    for g in gaps:
        v = data.get((label, g))
        if not v:
            continue
        m = [st.median(c) for c in zip(*v)]
        print(f"| {label} | {g} | {m[0]/1000:.2f} | {m[1]/1000:.2f} | {m[2]/1000:.2f} | {m[3]/1000:.2f} | {m[4]:.2f} |")
EOF
