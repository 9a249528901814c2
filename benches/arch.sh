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
#
# Usage: benches/arch.sh [ROUNDS]     (default 3)
# Environment: BIN (target/release/classifyd, built if missing), TEXTS
# (benches/texts/tweets.txt), GAP_MS (50), DURATION_S (8), SHAPES (all five), DTYPES
# ("f32 int8"), PY (a python with numpy and safetensors; default: a venv made in
# target/bench-venv), MODELS (where the shapes are made; target/shapes).
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
    done
done

python3 - "$out" "$rounds" "$gap" "$shapes" "$dtypes" $peaks <<'EOF'
import json, os, statistics, sys
out, rounds, gap, shapes, dtypes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5].split()
peak = {"f32": float(sys.argv[6]), "int8": float(sys.argv[7])}
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
        p50 = statistics.median(
            json.load(open(os.path.join(out, f"{r}.{s}.{d}.json")))["runs"][0]["latency_us"]["p50"]
            for r in range(1, rounds + 1)) / 1000
        per = p50 / (macs / 1e9)
        per_gmac.setdefault(d, {})[s] = per
        base = per_gmac[d].get("bert-base")
        floor = macs / 1e9 / peak[d] * 1000 if peak.get(d) else 0
        row += [f"{p50:.1f}", f"{per:.1f}", f"{per / base:.2f}" if base else "-",
                f"{floor / p50:.0%}" if floor else "-"]
    rows.append(row)
head = ["shape", "parameters", "layer GMAC / text"]
for d in dtypes:
    head += [f"{d} p50 ms", f"{d} ms / GMAC", f"{d} vs bert-base", f"{d} of floor"]
print(f"{rounds} rounds, {gap} ms pauses, mean {mean_tokens:.1f} tokens a text; medians over "
      f"rounds; floors at {peak['f32']:.0f} GMAC/s f32 (FMA) and {peak['int8']:.0f} GMAC/s int8 (VNNI)\n")
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for row in rows:
    print("| " + " | ".join(row) + " |")
EOF
