#!/usr/bin/env bash
# Two models in one daemon against two daemons of one model each, on the same cores (issue #32).
#
#   benches/models.sh [rounds, default 3] [seconds per run, default 15]
#
# Each round, interleaved so that both setups see the same machine:
#   one   one daemon serving a=MODEL_A and b=MODEL_B (its default thread settings);
#   two   two daemons, one model each (their default thread settings, so each has its own
#         engine threads on the same cores).
# In each setup: a and b each get a sporadic client (one request, then a 50 ms pause), both at
# once: the p50/p99 of each; the daemons' CPU time over 10 s idle; their memory after the runs
# (Private_Dirty and Pss of smaps_rollup, summed over the daemons). Then, in one daemon only,
# a flood on a (8 clients back to back) while b's sporadic client runs, against b's sporadic
# client alone: b's p99 under a's flood.
#
# Environment: BIN (default target/release/classifyd), MODEL_A, MODEL_B (default
# models/sentiment-minilm for both, served from two copies so that nothing is shared but what
# the daemon shares itself), TEXTS (default benches/texts/tweets.txt). Prints one JSON line
# per measurement and a summary with medians over the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-15}
BIN=${BIN:-target/release/classifyd}
MODEL_A=${MODEL_A:-models/sentiment-minilm}
MODEL_B=${MODEL_B:-models/sentiment-minilm}
TEXTS=${TEXTS:-benches/texts/tweets.txt}
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    sleep 0.5
    rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir/a" "$dir/b"
cp -r "$MODEL_A"/. "$dir/a/"
cp -r "$MODEL_B"/. "$dir/b/"

# serve, stop, cpu, memory.
# shellcheck source=benches/daemons.sh
source benches/daemons.sh

# Sporadic client on socket $1 naming model $2 (may be empty): its JSON run.
sporadic() {
    local name=()
    [[ -n $2 ]] && name=(--name "$2")
    "$BIN" bench --uds "$1" "${name[@]}" --concurrency 1 --gap-ms 50 --warmup-secs 2 \
        --duration-secs "$SECS" --texts "$TEXTS" --quiet --json
}

p50p99() {
    python3 -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]["latency_us"]; print(r["p50"], r["p99"])'
}

# b's sporadic client on the daemon at $1 while 8 clients send to a back to back: b's run in
# flooded.json, the flood's in flood.json.
flooded() {
    "$BIN" bench --uds "$1" --name a --concurrency 8 --warmup-secs 1 \
        --duration-secs "$((SECS + 3))" --texts "$TEXTS" --quiet --json > "$dir/flood.json" &
    local jf=$!
    sleep 1
    sporadic "$1" b > "$dir/flooded.json"
    wait "$jf"
}

measure() {
    local setup=$1 round=$2 sock_a=$3 sock_b=$4 name_a=$5 name_b=$6
    shift 6
    local s0 s1
    s0=$(cpu "$@")
    sporadic "$sock_a" "$name_a" > "$dir/ra.json" &
    local ja=$!
    sporadic "$sock_b" "$name_b" > "$dir/rb.json"
    wait "$ja"
    s1=$(cpu "$@")
    read -r a50 a99 < <(p50p99 < "$dir/ra.json")
    read -r b50 b99 < <(p50p99 < "$dir/rb.json")
    # The daemons' CPU per request over the sporadic runs (warm-up included), in ms: what each
    # request costs, spinning after it included.
    local sent per
    sent=$(python3 -c 'import json,sys; print(sum(json.load(open(f))["runs"][0]["sent"] for f in sys.argv[1:]))' "$dir/ra.json" "$dir/rb.json")
    per=$(python3 -c "print(round(($s1 - $s0) * 1000 / max($sent, 1), 3))")
    local c0 c1
    c0=$(cpu "$@")
    sleep 10
    c1=$(cpu "$@")
    local idle dirty pss
    idle=$(python3 -c "print(round(($c1 - $c0) / 10 * 100, 2))")
    read -r dirty pss _ < <(memory "$@")
    echo "{\"setup\":\"$setup\",\"round\":$round,\"a_p50_us\":$a50,\"a_p99_us\":$a99,\"b_p50_us\":$b50,\"b_p99_us\":$b99,\"cpu_ms_per_request\":$per,\"idle_cpu_pct\":$idle,\"private_dirty_mib\":$dirty,\"pss_mib\":$pss}" | tee -a "$dir/results.jsonl"
}

for round in $(seq "$ROUNDS"); do
    pid=$(serve "$dir/one.sock" --model "a=$dir/a" --model "b=$dir/b")
    pids+=("$pid")
    measure one "$round" "$dir/one.sock" "$dir/one.sock" a b "$pid"
    # b's sporadic client alone, then under a flood on a.
    sporadic "$dir/one.sock" b > "$dir/alone.json"
    flooded "$dir/one.sock"
    read -r _ alone99 < <(p50p99 < "$dir/alone.json")
    read -r _ flooded99 < <(p50p99 < "$dir/flooded.json")
    flood_rps=$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["runs"][0]["throughput_rps"],1))' < "$dir/flood.json")
    echo "{\"setup\":\"flood\",\"round\":$round,\"b_alone_p99_us\":$alone99,\"b_flooded_p99_us\":$flooded99,\"a_flood_rps\":$flood_rps}" | tee -a "$dir/results.jsonl"
    stop "$pid"

    # The same flood when b is of the high class: b's requests go before a's queued ones.
    printf '[models.a]\npath = "%s"\n[models.b]\npath = "%s"\npriority = "high"\n' \
        "$dir/a" "$dir/b" > "$dir/high.toml"
    pid=$(serve "$dir/high.sock" --config "$dir/high.toml")
    pids+=("$pid")
    flooded "$dir/high.sock"
    read -r _ high99 < <(p50p99 < "$dir/flooded.json")
    echo "{\"setup\":\"flood-high\",\"round\":$round,\"b_flooded_p99_us\":$high99}" | tee -a "$dir/results.jsonl"
    stop "$pid"

    pa=$(serve "$dir/a.sock" --model "$dir/a")
    pb=$(serve "$dir/b.sock" --model "$dir/b")
    pids+=("$pa" "$pb")
    measure two "$round" "$dir/a.sock" "$dir/b.sock" "" "" "$pa" "$pb"
    stop "$pa" "$pb"
done

python3 - "$dir/results.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda setup, key: statistics.median(r[key] for r in rows if r["setup"] == setup)
print("== medians over rounds (µs, %, MiB)")
for key in ["a_p50_us", "a_p99_us", "b_p50_us", "b_p99_us", "cpu_ms_per_request", "idle_cpu_pct", "private_dirty_mib", "pss_mib"]:
    one, two = med("one", key), med("two", key)
    ratio = one / two if two else float("nan")
    print(f"{key:17} one daemon {one:10.1f}   two daemons {two:10.1f}   one/two {ratio:5.2f}")
alone, flooded = med("flood", "b_alone_p99_us"), med("flood", "b_flooded_p99_us")
high = med("flood-high", "b_flooded_p99_us")
print(f"b p99 alone {alone:.0f} µs, under a's flood {flooded:.0f} µs ({flooded / alone:.2f}x), "
      f"with b of the high class {high:.0f} µs ({high / alone:.2f}x); "
      f"a's flood {med('flood', 'a_flood_rps'):.0f} req/s")
EOF
