#!/usr/bin/env bash
# Cold start of `classifyd serve`: process start to READY (load, warm-up, bind), as the daemon
# itself reports it (`startup_ms` on its ready line), N times; prints each and the median.
# Usage: benches/cold_start.sh [MODEL_DIR] [N]    (needs target/release/classifyd)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/sentiment-minilm}
n=${2:-5}
bin=target/release/classifyd
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
runs=()
for i in $(seq "$n"); do
    sock=$dir/s$i.sock
    t0=$(date +%s%N)
    "$bin" serve --model "$model" --uds "$sock" --log-format json 2>"$dir/log$i" &
    pid=$!
    until grep -q '"startup_ms"' "$dir/log$i" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { cat "$dir/log$i" >&2; exit 1; }
        sleep 0.01
    done
    t1=$(date +%s%N)
    kill -TERM "$pid"; wait "$pid" || true
    ms=$(grep -o '"startup_ms":[0-9]*' "$dir/log$i" | cut -d: -f2)
    echo "run $i: startup_ms $ms (seen by this script after $(( (t1 - t0) / 1000000 )) ms)"
    runs+=("$ms")
done
printf '%s\n' "${runs[@]}" | sort -n | awk '{a[NR]=$1} END {print "median startup_ms", a[int((NR+1)/2)]}'
