#!/usr/bin/env bash
# Makes the folder scripts/gpu-check.sh runs from on a GPU machine (docs/GPU.md):
#
#   scripts/gpu-bundle.sh [--build] [--self-contained] [--binary PATH] [--out DIR]
#
#   --build           build the CUDA binary first (scripts/cuda-toolchain.sh, then cargo)
#   --self-contained  also copy the fixtures, the default model and the two scripts, for a
#                     machine that gets the bundle alone; without it (the default) the bundle
#                     is used from inside a copy of the checkout, which already holds them
#   --binary PATH     the `--features cuda` binary (default: the release binary in the CUDA
#                     target directory, $CLASSIFYD_CUDA_TARGET_DIR or ~/.cache/classifyd/cuda-target)
#   --out DIR         where to write it (default: gpu-bundle/ in the checkout, git-ignored)
#
# The bundle: classifyd.xz (debug info stripped; xz -9, or classifyd.gz where there is no xz),
# texts.txt (the bench texts), manifest.json (git revision, compute capability of the kernels,
# sizes, sha256).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

build=false
self_contained=false
target_dir=${CLASSIFYD_CUDA_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/classifyd/cuda-target}
binary=
out=$ROOT/gpu-bundle
while (($#)); do
    case $1 in
    --build) build=true ;;
    --self-contained) self_contained=true ;;
    --binary) binary=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu-bundle: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
binary=${binary:-$target_dir/release/classifyd}
say() { echo "gpu-bundle: $*" >&2; }

if $build; then
    eval "$(scripts/cuda-toolchain.sh)"
    say "building with CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP into $target_dir"
    CARGO_TARGET_DIR=$target_dir cargo build --release --locked --features cuda --bin classifyd
fi
[[ -x $binary ]] || { say "no binary at $binary (give --build or --binary)"; exit 1; }
if ! readelf -d "$binary" | grep -q 'NEEDED.*libcuda\.so\.1'; then
    say "$binary does not link libcuda.so.1: not a --features cuda build"
    exit 1
fi
# The PTX candle embeds names its target, e.g. `.target sm_90a`.
cap=$(grep -a -o -m 1 -E '\.target sm_[0-9]+a?' "$binary" | head -n 1 | sed 's/.*sm_//') || true
[[ -n $cap ]] || { say "cannot tell which GPU architecture $binary was built for"; exit 1; }

rm -rf "$out"
mkdir -p "$out"
objcopy --strip-debug "$binary" "$out/classifyd"
sha=$(sha256sum "$out/classifyd" | cut -d' ' -f1)
unpacked=$(stat -c %s "$out/classifyd")
# xz halves what gzip leaves (the kernels' PTX is text); gpu-check.sh reads either.
if command -v xz >/dev/null; then
    xz -9 -T0 "$out/classifyd"
    packed=$out/classifyd.xz
else
    gzip -9 "$out/classifyd"
    packed=$out/classifyd.gz
fi
if [[ -f benches/texts/tweets.txt ]]; then
    cp benches/texts/tweets.txt "$out/texts.txt"
else
    python3 -c 'import json,sys; [print(c["text"]) for c in json.load(open(sys.argv[1]))["cases"][:300]]' \
        tests/fixtures/sentiment-minilm-heldout/golden.json >"$out/texts.txt"
fi
if $self_contained; then
    mkdir -p "$out/models"
    cp -r tests/fixtures "$out/fixtures"
    cp -r models/sentiment-minilm "$out/models/"
    cp scripts/gpu-check.sh benches/peers/torch_gpu_peer.py "$out/"
fi
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo true || echo false)
cat >"$out/manifest.json" <<EOF
{"git_rev": "$rev", "dirty": $dirty, "compute_cap": "$cap", "binary_sha256": "$sha", "binary_bytes": $unpacked, "packed": "$(basename "$packed")", "packed_bytes": $(stat -c %s "$packed"), "self_contained": $self_contained, "made": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
EOF
total=$(du -sb "$out" | cut -f1)
say "$out: $((total / 1024 / 1024)) MiB (binary $((unpacked / 1024 / 1024)) MiB unpacked, sm_$cap, $rev)"
if ! $self_contained; then
    tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)
    say "with the checkout's tracked files: $(((total + tree) / 1024 / 1024)) MiB (the device tool carries 64 MiB at most)"
fi
