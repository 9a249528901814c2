#!/usr/bin/env bash
# The base shapes people fine-tune, side by side (issue 31): random-weight bert-base,
# distilbert-base, deberta-v3-base, modernbert-base and a Qwen3-0.6B-shaped decoder classifier
# (benches/peers/make_shape.py, never committed; the decoder's is 1.8 GB), each timed in process (`classifyd bench --model`, tokenization included, one
# request at a time with a GAP_MS pause before each) in f32 and int8. Rounds interleave every
# shape and dtype, so a noisy neighbour hurts all alike; the table has each figure's median
# over rounds, the weight multiply-adds per text (every layer matmul at the texts' mean token
# count, from `inspect --weights`), the time per weight-GMAC, that time against bert-base's,
# and the share of the machine's floor each p50 reaches: those multiply-adds at the FMA peak
# (f32) or the VNNI peak (int8) of all CPUs, measured by benches/peak.c before the rounds.
# With ORT_PY (a python with torch, transformers, onnx, onnxscript and onnxruntime), each shape
# is also exported to ONNX fp32 and ONNX Runtime's per-channel dynamic int8
# (benches/peers/export_shape.py) and timed in the same rounds, in process with tokenization
# (benches/peers/peer_latency.py ort, 2 threads), and the table gives our p50 over theirs.
#
# Usage: benches/arch.sh [ROUNDS]     (default 3)
# Environment: BIN (target/release/classifyd, built if missing), TEXTS
# (benches/texts/tweets.txt), GAP_MS (50), DURATION_S (8), SHAPES (all five), DTYPES
# ("f32 int8"), PY (a python with numpy and safetensors; default: a venv made in
# target/bench-venv), MODELS (where the shapes are made; target/shapes), N_TEXTS (the first
# 100 texts: ONNX Runtime's runs go through them once, classifyd's cycle for DURATION_S),
# ORT_PY (unset: no ONNX Runtime columns).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
bin=${BIN:-target/release/classifyd}
texts=${TEXTS:-benches/texts/tweets.txt}
gap=${GAP_MS:-50}
duration=${DURATION_S:-8}
shapes=${SHAPES:-bert-base distilbert-base deberta-v3-base modernbert-base qwen3-0.6b}
dtypes=${DTYPES:-f32 int8}
models=${MODELS:-target/shapes}
say() { echo "arch: $*" >&2; }

[[ -x $bin ]] || cargo build --release --locked --bin classifyd
if [[ -z ${PY:-} ]]; then
    PY=target/bench-venv/bin/python
    if ! "$PY" -c 'import numpy, safetensors' 2>/dev/null; then
        say "making target/bench-venv (numpy, safetensors)"
        python3 -m venv target/bench-venv
        "$PY" -m pip install -q numpy safetensors
    fi
fi
for s in $shapes; do
    [[ -f $models/$s/model.safetensors ]] || "$PY" benches/peers/make_shape.py "$s" "$models/$s"
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
head -n "${N_TEXTS:-100}" "$texts" >"$out/texts.txt"
texts=$out/texts.txt
peers=""
if [[ -n ${ORT_PY:-} ]]; then
    peers="ort-f32 ort-int8"
    for s in $shapes; do
        [[ -f $models/$s/onnx/model-int8-pc.onnx ]] ||
            "$ORT_PY" benches/peers/export_shape.py "$models/$s" "$models/$s/onnx/model" ||
            say "$s: no ONNX export, so no ONNX Runtime figures for it"
    done
fi
if [[ -n ${ORT_PY:-} ]]; then
    # The same computation as transformers', or the timings compare nothing.
    "$ORT_PY" benches/peers/shape_parity.py "$bin" "$models" "$texts" 20 $shapes 2>/dev/null
fi
onnx_of() { # shape peer
    case $2 in ort-f32) echo "$models/$1/onnx/model.onnx" ;; *) echo "$models/$1/onnx/model-int8-pc.onnx" ;; esac
}
# Every layer matmul's k × n, and the texts' mean token count.
for s in $shapes; do
    "$bin" inspect --json --weights --dtype int8 --model "$models/$s" >"$out/$s.inspect.json"
done
"$bin" classify --model "$models/bert-base" --fields tokens --quiet <"$texts" >"$out/tokens.jsonl" 2>/dev/null ||
    "$bin" classify --model "$models/$(echo "$shapes" | cut -d' ' -f1)" --fields tokens --quiet <"$texts" >"$out/tokens.jsonl"

# The machine's multiply-add peaks (GMAC/s, all CPUs): the floor columns.
peaks="0 0"
if command -v cc >/dev/null && cc -O3 -pthread benches/peak.c -o "$out/peak" 2>/dev/null; then
    peaks=$("$out/peak")
    say "peaks (GMAC/s, f32 int8): $peaks"
fi

for r in $(seq "$rounds"); do
    for s in $shapes; do
        for d in $dtypes; do
            "$bin" bench --model "$models/$s" --dtype "$d" --texts "$texts" --gap-ms "$gap" \
                --duration-secs "$duration" --warmup-secs 2 --json --quiet >"$out/$r.$s.$d.json"
            say "round $r $s $d: p50 $(grep -o '"p50":[0-9]*' "$out/$r.$s.$d.json" | head -1 | cut -d: -f2) us"
        done
        for p in $peers; do
            [[ -f $(onnx_of "$s" "$p") ]] || continue
            "$ORT_PY" benches/peers/peer_latency.py ort --onnx "$(onnx_of "$s" "$p")" \
                --texts "$texts" --gap-ms "$gap" --passes 1 --threads 2 --out "$out/$r.$s.$p.json" >/dev/null
            say "round $r $s $p: p50 $(grep -o '"p50": [0-9.]*' "$out/$r.$s.$p.json" | head -1 | cut -d' ' -f2) us"
        done
    done
done

python3 - "$out" "$rounds" "$gap" "$shapes" "$dtypes" $peaks "$peers" <<'EOF'
import json, os, statistics, sys
out, rounds, gap, shapes, dtypes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5].split()
peak = {"f32": float(sys.argv[6]), "int8": float(sys.argv[7])}
peers = sys.argv[8].split()
def median_p50(name):
    return statistics.median(
        (lambda d: d["runs"][0]["latency_us"]["p50"] if "runs" in d else d["latency_us"]["p50"])(
            json.load(open(os.path.join(out, f"{r}.{name}.json"))))
        for r in range(1, rounds + 1)) / 1000
tokens = [json.loads(l)["tokens"] for l in open(os.path.join(out, "tokens.jsonl"))]
mean_tokens = sum(tokens) / len(tokens)
def in_layer(names):
    return all(".layer." in n or ".layers." in n for n in names)
rows, per_gmac = [], {}
for s in shapes:
    info = json.load(open(os.path.join(out, f"{s}.inspect.json")))
    macs = sum(m["k"] * m["n"] for m in info["matmuls"] if in_layer(m["names"])) * mean_tokens
    row = [s, f"{info['parameters'] / 1e6:.0f} M", f"{macs / 1e9:.2f}"]
    for d in dtypes:
        p50 = median_p50(f"{s}.{d}")
        per = p50 / (macs / 1e9)
        per_gmac.setdefault(d, {})[s] = per
        base = per_gmac[d].get("bert-base")
        floor = macs / 1e9 / peak[d] * 1000 if peak.get(d) else 0
        row += [f"{p50:.1f}", f"{per:.1f}", f"{per / base:.2f}" if base else "-",
                f"{floor / p50:.0%}" if floor else "-"]
        peer = {"f32": "ort-f32", "int8": "ort-int8"}.get(d)
        if peer in peers:
            try:
                theirs = median_p50(f"{s}.{peer}")
                row += [f"{theirs:.1f}", f"{p50 / theirs:.2f}"]
            except FileNotFoundError:
                row += ["-", "-"]
    rows.append(row)
head = ["shape", "parameters", "layer GMAC / text"]
for d in dtypes:
    head += [f"{d} p50 ms", f"{d} ms / GMAC", f"{d} vs bert-base", f"{d} of floor"]
    if {"f32": "ort-f32", "int8": "ort-int8"}.get(d) in peers:
        head += [f"ORT {d} p50 ms" if d == "f32" else "ORT int8 (per channel) p50 ms", f"{d} ours / ORT"]
print(f"{rounds} rounds, {gap} ms pauses, mean {mean_tokens:.1f} tokens a text; medians over "
      f"rounds; floors at {peak['f32']:.0f} GMAC/s f32 (FMA) and {peak['int8']:.0f} GMAC/s int8 (VNNI)\n")
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for row in rows:
    print("| " + " | ".join(row) + " |")
EOF
