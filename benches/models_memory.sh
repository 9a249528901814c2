#!/usr/bin/env bash
# Memory by number of models (issue #32): one daemon serving 1, 2 and 3 models against as many
# daemons of one model each, every model a copy of MODEL (so each has a cache file of its own
# and nothing is shared but what a daemon shares itself). After start-up and 20 requests to each
# model: Private_Dirty (what the processes cost on their own: heap, stacks, scratch), Pss (all
# of it, shared pages split between sharers) and Rss, summed over the daemons, in MiB.
#
#   benches/models_memory.sh
#
# Environment: BIN (default target/release/classifyd), MODEL (default models/sentiment-minilm).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/classifyd}
MODEL=${MODEL:-models/sentiment-minilm}
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    rm -rf "$dir"
}
trap cleanup EXIT
for m in m1 m2 m3; do
    mkdir -p "$dir/$m"
    cp -r "$MODEL"/. "$dir/$m/"
done

# serve, stop, memory.
# shellcheck source=benches/daemons.sh
source benches/daemons.sh

# 20 requests to model $2 (empty: the default) of the daemon on $1.
exercise() {
    local name=()
    [[ -n $2 ]] && name=(--name "$2")
    for i in $(seq 20); do echo "text number $i about a film we saw"; done |
        "$BIN" classify --uds "$1" "${name[@]}" --quiet >/dev/null
}

for n in 1 2 3; do
    args=()
    for i in $(seq "$n"); do args+=(--model "m$i=$dir/m$i"); done
    pid=$(serve "$dir/one.sock" "${args[@]}")
    pids+=("$pid")
    for i in $(seq "$n"); do exercise "$dir/one.sock" "m$i"; done
    read -r d p r < <(memory "$pid")
    echo "{\"models\":$n,\"setup\":\"one daemon\",\"private_dirty_mib\":$d,\"pss_mib\":$p,\"rss_mib\":$r}"
    stop "$pid"
    several=()
    for i in $(seq "$n"); do
        several+=("$(serve "$dir/d$i.sock" --model "$dir/m$i")")
    done
    pids+=("${several[@]}")
    for i in $(seq "$n"); do exercise "$dir/d$i.sock" ""; done
    read -r d p r < <(memory "${several[@]}")
    echo "{\"models\":$n,\"setup\":\"$n daemons\",\"private_dirty_mib\":$d,\"pss_mib\":$p,\"rss_mib\":$r}"
    stop "${several[@]}"
done
