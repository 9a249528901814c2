#!/usr/bin/env bash
# Dev-only: the engine's criterion bench and PyTorch on the same ids, back to back in one run, so
# the figures share the machine's state. Usage: benches/peers/compare_forward.sh [python]
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-python3}
cargo bench --bench forward -- --noplot forward 2>&1 | grep -E '^forward|time:'
RAYON_NUM_THREADS= "$py" benches/peers/torch_forward.py "$(nproc)"
