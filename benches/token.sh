#!/usr/bin/env bash
# Token classification (NER) at the default model's size: a BertForTokenClassification with
# all-MiniLM-L6-v2's fine-tuned body and a random 9-label head, batch 1 on the bench tweets,
# tokenization and entity grouping included. classifyd in process (`classifyd bench --model`,
# f32, aggregation simple) against transformers' token-classification pipeline (aggregation
# simple) and against bare PyTorch (tokenizer + forward + argmax, no grouping), in the same run,
# alternating, ROUNDS times; with a 50 ms pause before every request (GAP_MS) and back to back.
# Peak RSS of each process.
#
#   benches/token.sh             # makes the model (~90 MB, git-ignored) on the first run
#   ROUNDS=2 THREADS=2 GAP_MS=50 N=300 PY=/work/venv/bin/python benches/token.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
GAP_MS=${GAP_MS:-50}
N=${N:-300}
OUT=benches/peers/out
MODEL=$OUT/ner-minilm
TEXTS=$OUT/ner-texts.txt
BIN=${BIN:-target/release/classifyd}
mkdir -p "$OUT"
[[ -f $MODEL/model.safetensors ]] || "$PY" benches/peers/token_peer.py make "$MODEL"
head -n "$N" benches/texts/tweets.txt >"$TEXTS"
[[ -x $BIN ]] || cargo build --release --bin classifyd
lscpu | grep -E "Model name|^CPU\(s\)" >&2 || true

ours() { # gap_ms
    local secs=$(( N * (10 + $1) / 1000 + 3 ))
    /usr/bin/time -f "%M" -o "$OUT/ours.rss" "$BIN" bench --model "$MODEL" --dtype f32 \
        --no-weights-cache --concurrency 1 --gap-ms "$1" --duration-secs "$secs" \
        --warmup-secs 2 --texts "$TEXTS" --json 2>/dev/null |
        "$PY" -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]; l=r["latency_us"]; print(l["p50"], l["p99"], r["ok"])'
    echo "rss_mib $(( $(cat "$OUT/ours.rss") / 1024 ))"
}
theirs() { # gap_ms mode
    OMP_NUM_THREADS=$THREADS "$PY" benches/peers/token_peer.py torch "$MODEL" "$TEXTS" \
        --threads "$THREADS" --gap-ms "$1" --mode "$2" 2>/dev/null |
        "$PY" -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_us"]; print(l["p50"], l["p99"], r["n"]); print("rss_mib", r["max_rss_mib"])'
}
for round in $(seq "$ROUNDS"); do
    for gap in "$GAP_MS" 0; do
        echo "round $round gap ${gap}ms classifyd:        $(ours "$gap" | tr '\n' ' ')"
        echo "round $round gap ${gap}ms torch pipeline:   $(theirs "$gap" pipeline | tr '\n' ' ')"
        echo "round $round gap ${gap}ms torch bare model: $(theirs "$gap" model | tr '\n' ' ')"
    done
done
