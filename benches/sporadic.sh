#!/usr/bin/env bash
# One request at a time over the Unix socket, back to back and with a pause before each, for
# several daemons side by side: each round starts every configuration in turn, measures its idle
# CPU (utime+stime from /proc/PID/stat over IDLE_S seconds, after it is READY and has served a
# first burst), then runs `classifyd bench --gap-ms 0` and `--gap-ms GAP`. Rounds interleave the
# configurations so that a noisy neighbour hurts all of them alike; the summary is the median
# over rounds of each figure.
#
# Usage: benches/sporadic.sh ROUNDS 'label|BIN|serve flags' ...
#   e.g. benches/sporadic.sh 3 'spin 0|target/release/classifyd|--spin-us 0' \
#            'default|target/release/classifyd|' 'busy-poll|target/release/classifyd|--busy-poll'
# Two other kinds of configuration run in the same rounds, for the peers the daemon is measured
# against (both in process, tokenization included, the same texts and pauses):
#   'label|BIN|in-process [flags]'   `BIN bench --model MODEL [flags]` (classifyd without a
#                            socket; e.g. 'in-process --dtype int8');
#   'label|ort:FILE.onnx|'   benches/peers/peer_latency.py ort on that graph, with $PY (a
#                            python with onnxruntime and tokenizers) and $ORT_THREADS (2).
# Environment: MODEL (models/sentiment-minilm), TEXTS (benches/texts/tweets.txt), GAP_MS (50),
# DURATION_S (15), IDLE_S (10), CLIENT (the binary that runs `bench`: the first config's),
# KEEP_TSV (a path to keep the raw per-round results at), PAIRS ('a=b,c=d': also print the
# median over rounds of p50(a) / p50(b), per gap, for those labels).
# Before and after each load it measures how far apart CPUs 0 and 1 are (benches/pingpong.c,
# built with cc when there is one): a cache-line round trip of ~60 ns or ~350 ns on the VM these
# figures come from, which sets the speed of a two-thread forward pass. The summary counts each
# configuration's loads that ran close (both under 200 ns) and far (both over), and PAIRS also
# gives the median ratio over the rounds where both loads of the pair ran close, and far.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1
shift
model=${MODEL:-models/sentiment-minilm}
texts=${TEXTS:-benches/texts/tweets.txt}
gap=${GAP_MS:-50}
duration=${DURATION_S:-15}
idle=${IDLE_S:-10}
client=${CLIENT:-$(echo "$1" | cut -d'|' -f2)}
dir=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
tick=$(getconf CLK_TCK)
results=$dir/results.tsv
pingpong=""
if [ "$(nproc)" -ge 2 ] && command -v cc >/dev/null &&
    cc -O2 -pthread benches/pingpong.c -o "$dir/pingpong" 2>/dev/null; then
    pingpong=$dir/pingpong
fi
# The cache-line round trip between CPUs 0 and 1 in ns, or - when it cannot be measured.
distance() { if [ -n "$pingpong" ]; then "$pingpong"; else echo -; fi; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One line of results from `classifyd bench --json` (bench) or peer_latency.py (peer) output.
record() {
    python3 - "$@" >>"$results" <<'EOF'
import json, sys
kind, path, label, gap, idle, before, after = sys.argv[1:]
dist = "-" if "-" in (before, after) else f"{before}/{after}"
doc = json.load(open(path))
if kind == "peer":
    l, inf, ok = doc["latency_us"], 0, doc["requests"]
else:
    runs = doc["runs"] if isinstance(doc, dict) and "runs" in doc else doc
    r = runs[0]
    l, ok = r["latency_us"], r["ok"]
    inf = (r.get("server_us") or {}).get("inference") or 0  # none in process
print("\t".join(map(str, [label, gap, l["p50"], l["p99"], l["max"], inf, ok, idle, dist])))
EOF
}

for round in $(seq "$rounds"); do
    for config in "$@"; do
        IFS='|' read -r label bin flags <<<"$config"
        if [[ $bin == ort:* ]]; then
            # One pass over the texts per load: about as many requests as the daemon's runs.
            for g in 0 "$gap"; do
                dist=$(distance)
                "${PY:-python3}" benches/peers/peer_latency.py ort --onnx "${bin#ort:}" \
                    --texts "$texts" --threads "${ORT_THREADS:-2}" --passes 1 --gap-ms "$g" \
                    --out "$dir/peer.json" 2>/dev/null
                record peer "$dir/peer.json" "$label" "$g" 0 "$dist" "$(distance)"
            done
            echo "round $round: $label done" >&2
            continue
        fi
        if [[ $flags == in-process* ]]; then
            for g in 0 "$gap"; do
                dist=$(distance)
                # shellcheck disable=SC2086 # the flags after in-process are words
                "$bin" bench --model "$model" --texts "$texts" --gap-ms "$g" ${flags#in-process} \
                    --duration-secs "$duration" --warmup-secs 2 --quiet --json >"$dir/bench.json"
                record bench "$dir/bench.json" "$label" "$g" 0 "$dist" "$(distance)"
            done
            echo "round $round: $label done" >&2
            continue
        fi
        sock=$dir/s.sock
        # The log too: a stale ready line from the last daemon would pass the wait below.
        rm -f "$sock" "$dir/log"
        # shellcheck disable=SC2086 # the flags are words
        "$bin" serve --model "$model" --uds "$sock" --log-format json $flags 2>"$dir/log" &
        pid=$!
        until grep -q '"startup_ms"' "$dir/log" 2>/dev/null; do
            kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
            sleep 0.05
        done
        "$client" bench --uds "$sock" --texts "$texts" --duration-secs 2 --warmup-secs 0 --quiet >/dev/null
        sleep 1
        t0=$(cpu_ticks "$pid")
        sleep "$idle"
        t1=$(cpu_ticks "$pid")
        idle_pct=$(awk -v d=$((t1 - t0)) -v hz="$tick" -v s="$idle" 'BEGIN {printf "%.2f", 100 * d / hz / s}')
        for g in 0 "$gap"; do
            dist=$(distance)
            "$client" bench --uds "$sock" --texts "$texts" --gap-ms "$g" --duration-secs "$duration" \
                --warmup-secs 2 --quiet --json >"$dir/bench.json"
            record bench "$dir/bench.json" "$label" "$g" "$idle_pct" "$dist" "$(distance)"
        done
        kill -TERM "$pid"
        wait "$pid" || true
        pid=""
        echo "round $round: $label done" >&2
    done
done

[ -n "${KEEP_TSV:-}" ] && cp "$results" "$KEEP_TSV"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
echo "CPU: $cpu, $(nproc) CPUs; $rounds rounds, ${duration} s per load; medians over rounds"
python3 - "$results" "${PAIRS:-}" <<'EOF'
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
order, data, modes = [], {}, {}
def mode(dist):
    """close, far, or None (mixed, or not measured)."""
    if dist == "-":
        return None
    far = [float(d) > 200 for d in dist.split("/")]
    return "far" if all(far) else "close" if not any(far) else None
for label, gap, p50, p99, mx, inf, ok, idle, dist in rows:
    if label not in order:
        order.append(label)
    data.setdefault((label, gap), []).append((float(p50), float(p99), float(mx), float(inf), float(idle)))
    modes.setdefault((label, gap), []).append(mode(dist))
gaps = sorted({g for _, g in data}, key=float)
print(f"| config | gap ms | p50 ms | p99 ms | max ms | server inference ms | idle CPU % | loads close / far / mixed |")
print("|---|---|---|---|---|---|---|---|")
for label in order:
    for g in gaps:
        v = data.get((label, g))
        if not v:
            continue
        m = [st.median(c) for c in zip(*v)]
        ms = modes[(label, g)]
        f = " / ".join(str(ms.count(x)) for x in ("close", "far", None))
        print(f"| {label} | {g} | {m[0]/1000:.2f} | {m[1]/1000:.2f} | {m[2]/1000:.2f} | {m[3]/1000:.2f} | {m[4]:.2f} | {f} |")
for pair in filter(None, sys.argv[2].split(",")):
    a, b = pair.split("=")
    for g in gaps:
        ra, rb = data.get((a, g)), data.get((b, g))
        if ra and rb:
            ratios = [x[0] / y[0] for x, y in zip(ra, rb)]
            each = ", ".join(f"{r:.2f}" for r in ratios)
            line = f"p50 {a} / {b}, gap {g} ms: median {st.median(ratios):.2f} (rounds: {each})"
            for m in ("close", "far"):
                same = [r for r, x, y in zip(ratios, modes[(a, g)], modes[(b, g)]) if x == y == m]
                if same:
                    line += f"; both {m}: {st.median(same):.2f} ({len(same)})"
            print(line)
EOF
