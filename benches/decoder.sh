#!/usr/bin/env bash
# Decoder classifier at Qwen3-0.6B's shape, batch 1 on ~30-token texts, tokenization included:
# classifyd in process (`classifyd bench --model`, f32) against PyTorch + transformers (f32),
# in the same run, alternating, ROUNDS times; each with a 50 ms pause before every request
# (GAP_MS) and back to back. Peak RSS of each process from /usr/bin/time. Issue #15's target:
# classifyd's p50 <= 0.7x PyTorch's.
#
#   benches/decoder.sh            # makes the model (~1.2 GB, git-ignored) on the first run
#   ROUNDS=3 THREADS=2 GAP_MS=50 PY=/work/venv/bin/python benches/decoder.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
GAP_MS=${GAP_MS:-50}
OUT=benches/peers/out
MODEL=$OUT/qwen3-0.6b-shape
TEXTS=$OUT/qwen3-texts.txt
BIN=${BIN:-target/release/classifyd}
mkdir -p "$OUT"
[[ -f $MODEL/model.safetensors ]] || "$PY" benches/peers/decoder_peer.py make "$MODEL"
[[ -f $TEXTS ]] || "$PY" benches/peers/decoder_peer.py texts "$TEXTS"
[[ -x $BIN ]] || cargo build --release --bin classifyd
n=$(wc -l <"$TEXTS")
lscpu | grep -E "Model name|^CPU\(s\)" >&2 || true

ours() { # gap_ms
    local secs=$(( n * (300 + $1) / 1000 + 5 ))
    /usr/bin/time -f "%M" -o "$OUT/ours.rss" "$BIN" bench --model "$MODEL" --dtype f32 \
        --no-weights-cache --concurrency 1 --gap-ms "$1" --duration-secs "$secs" \
        --warmup-secs 3 --texts "$TEXTS" --json 2>/dev/null |
        "$PY" -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]; l=r["latency_us"]; print(l["p50"], l["p99"], r["ok"])'
    echo "rss_mib $(( $(cat "$OUT/ours.rss") / 1024 ))"
}
theirs() { # gap_ms
    OMP_NUM_THREADS=$THREADS "$PY" benches/peers/decoder_peer.py torch "$MODEL" "$TEXTS" \
        --threads "$THREADS" --gap-ms "$1" 2>/dev/null |
        "$PY" -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_us"]; print(l["p50"], l["p99"], r["n"]); print("rss_mib", r["max_rss_mib"])'
}
for round in $(seq "$ROUNDS"); do
    for gap in "$GAP_MS" 0; do
        echo "round $round gap ${gap}ms classifyd: $(ours "$gap" | tr '\n' ' ')"
        echo "round $round gap ${gap}ms pytorch:   $(theirs "$gap" | tr '\n' ' ')"
    done
done
