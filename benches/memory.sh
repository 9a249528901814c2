#!/usr/bin/env bash
# Memory and start-up of `classifyd serve` with and without the weights cache, side by side.
# Each round starts every configuration in turn, waits for READY (`startup_ms` on its ready
# line), sends a short burst of requests so the daemon is in its serving state, then reads
# /proc/PID/smaps_rollup: Private_Dirty (memory only this process holds), the file-backed
# Shared/Private_Clean pages (the mapped cache), Rss and Pss. A second daemon on the same model
# and cache then starts beside the first, to show what it adds. Prints one line per run and the
# medians per configuration.
#
# Usage: benches/memory.sh ROUNDS 'label|BIN|serve flags' ...
#   e.g. benches/memory.sh 5 'private|target/release/classifyd|--no-weights-cache' \
#            'cached|target/release/classifyd|--cache-dir /tmp/cc'
# The first round of a cached configuration writes its cache (unless it is already there):
# start-up medians are over the later rounds. Environment: MODEL (models/sentiment-minilm),
# TEXTS (benches/texts/tweets.txt), CLIENT (the binary that runs `bench`: the first config's).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1
shift
model=${MODEL:-models/sentiment-minilm}
texts=${TEXTS:-benches/texts/tweets.txt}
client=${CLIENT:-$(echo "$1" | cut -d'|' -f2)}
dir=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT
results=$dir/results.tsv

start() { # start LOG SOCK BIN FLAGS... -> pid on stdout once ready
    local log=$1 sock=$2 bin=$3
    shift 3
    # The log too: a stale ready line from the last daemon would pass the wait below.
    rm -f "$sock" "$log"
    # stdout elsewhere: this function runs inside $(...), which waits for its stdout to close.
    "$bin" serve --model "$model" --uds "$sock" --log-format json "$@" >/dev/null 2>"$log" &
    local pid=$!
    until grep -q '"startup_ms"' "$log" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.005
    done
    echo "$pid"
}
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/smaps_rollup"; }
burst() { # a short burst of requests on SOCK, so the daemon is in its serving state
    "$client" bench --uds "$1" --texts "$texts" --concurrency 1 --duration-secs 2 \
        --warmup-secs 0 >/dev/null 2>"$dir/bench.err" || { cat "$dir/bench.err" >&2; exit 1; }
}

for round in $(seq "$rounds"); do
    for config in "$@"; do
        IFS='|' read -r label bin flags <<<"$config"
        # shellcheck disable=SC2086 # the flags are words
        pid=$(start "$dir/a.log" "$dir/a.sock" "$bin" $flags)
        pids+=("$pid")
        startup=$(grep -o '"startup_ms":[0-9]*' "$dir/a.log" | cut -d: -f2)
        burst "$dir/a.sock"
        pd=$(kb "$pid" Private_Dirty) rss=$(kb "$pid" Rss) pss=$(kb "$pid" Pss)
        clean=$(( $(kb "$pid" Shared_Clean) + $(kb "$pid" Private_Clean) ))
        # shellcheck disable=SC2086
        pid2=$(start "$dir/b.log" "$dir/b.sock" "$bin" $flags)
        pids+=("$pid2")
        burst "$dir/b.sock"
        pss2=$(kb "$pid2" Pss) pd2=$(kb "$pid2" Private_Dirty)
        kill -TERM "$pid" "$pid2"
        wait "$pid" "$pid2" 2>/dev/null || true
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$round" "$startup" \
            "$pd" "$clean" "$rss" "$pss" "$pd2" "$pss2" >>"$results"
        printf '%-12s round %s: startup %4s ms, Private_Dirty %6s kB, file-backed clean %6s kB, Rss %6s kB, Pss %6s kB; second daemon Private_Dirty %6s kB, Pss %6s kB\n' \
            "$label" "$round" "$startup" "$pd" "$clean" "$rss" "$pss" "$pd2" "$pss2"
    done
done

echo "== medians (start-up over rounds 2.., memory over all rounds; MiB)"
for config in "$@"; do
    IFS='|' read -r label _ <<<"$config"
    awk -F'\t' -v l="$label" '
        function med(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
            return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
        }
        $1 == l { n++; pd[n] = $4 / 1024; cl[n] = $5 / 1024; rss[n] = $6 / 1024; pss[n] = $7 / 1024
                  pd2[n] = $8 / 1024; pss2[n] = $9 / 1024; if ($2 > 1) { m++; st[m] = $3 } }
        END {
            printf "%-12s startup %s ms | Private_Dirty %.1f | file-backed clean %.1f | Rss %.1f | Pss %.1f | second daemon Private_Dirty %.1f, Pss %.1f\n",
                l, m ? med(st, m) : "n/a", med(pd, n), med(cl, n), med(rss, n), med(pss, n), med(pd2, n), med(pss2, n)
        }' "$results"
done
