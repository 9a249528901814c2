#!/usr/bin/env bash
# Dev-only: batch-1 latency with tokenization for (a) PyTorch + transformers and (b) ONNX Runtime,
# back to back on the same texts and thread count, JSON into benches/peers/out/.
# Usage: benches/peers/run_peers.sh [python] [threads] [tag]
#   e.g. benches/peers/run_peers.sh /work/venv/bin/python 2 run1
# Exports the model to benches/peers/out/sentiment-minilm.onnx first if it is not there
# (and checks ORT's logits against PyTorch's on the texts).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-python3}
threads=${2:-2}
tag=${3:-$(date -u +%Y%m%dT%H%M%SZ)}
texts=benches/texts/tweets.txt
out=benches/peers/out
mkdir -p "$out"
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads TOKENIZERS_PARALLELISM=false
[ -f "$out/sentiment-minilm.onnx" ] || "$py" benches/peers/export_onnx.py --texts "$texts"
for engine in torch ort; do
    "$py" benches/peers/peer_latency.py "$engine" --texts "$texts" --threads "$threads" \
        --out "$out/latency-$engine-$tag.json"
done
