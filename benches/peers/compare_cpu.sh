#!/usr/bin/env bash
# Dev-only: classifyd against its peers on this machine's CPU, interleaved so that noise hits
# all of them alike. Per round: classifyd in process (`classifyd bench --model`), ONNX Runtime
# in process, PyTorch in process (batch 1, tokenization included, same texts, same threads),
# then classifyd over a Unix socket with one client. JSON lines into benches/peers/out/.
# Usage: benches/peers/compare_cpu.sh [python] [rounds] [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-python3}
rounds=${2:-5}
secs=${3:-8}
texts=benches/texts/tweets.txt
out=benches/peers/out
bin=target/release/classifyd
mkdir -p "$out"
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
[ -f "$out/sentiment-minilm.onnx" ] || "$py" benches/peers/export_onnx.py --texts "$texts"
sock=$(mktemp -u /tmp/classifyd-bench.XXXXXX.sock)
"$bin" serve --model models/sentiment-minilm --uds "$sock" 2>"$out/serve.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null || true' EXIT
until [ -S "$sock" ]; do sleep 0.05; done
: >"$out/compare.jsonl"
for r in $(seq "$rounds"); do
    "$bin" bench --model models/sentiment-minilm --texts "$texts" --duration-secs "$secs" \
        --warmup-secs 1 --quiet --json | sed "s/^{/{\"system\":\"classifyd-inprocess\",\"round\":$r,/" >>"$out/compare.jsonl"
    "$py" benches/peers/peer_latency.py ort --texts "$texts" --threads 2 --passes 1 --out "$out/ort-$r.json" >/dev/null
    "$py" benches/peers/peer_latency.py torch --texts "$texts" --threads 2 --passes 1 --out "$out/torch-$r.json" >/dev/null
    "$bin" bench --uds "$sock" --texts "$texts" --duration-secs "$secs" --warmup-secs 1 \
        --quiet --json | sed "s/^{/{\"system\":\"classifyd-uds\",\"round\":$r,/" >>"$out/compare.jsonl"
done
"$py" - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for line in open(f"{out}/compare.jsonl"):
    d = json.loads(line)
    lat = d["runs"][0]["latency_us"]
    rows.setdefault(d["system"], []).append((lat["p50"] / 1e3, lat["p99"] / 1e3))
for engine in ("ort", "torch"):
    for r in range(1, rounds + 1):
        d = json.load(open(f"{out}/{engine}-{r}.json"))
        lat = d.get("latency_ms") or d.get("latency_us")
        scale = 1.0 if "latency_ms" in d else 1e-3
        rows.setdefault(engine, []).append((lat["p50"] * scale, lat["p99"] * scale))
print(f"{'system':<22}{'p50 per round (ms)':<48}{'median p50':>11}{'median p99':>11}")
for k, v in rows.items():
    p50s = [round(a, 2) for a, _ in v]
    print(f"{k:<22}{str(p50s):<48}{statistics.median(a for a, _ in v):>11.2f}{statistics.median(b for _, b in v):>11.2f}")
PY
