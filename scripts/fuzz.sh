#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/) and runs each for SECONDS (default 60), one after the other.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    # all targets when none are named
#   RUNS=10000000 scripts/fuzz.sh 1800 frame            # stop at 10M executions or 30 min
#
# Each target's working corpus is fuzz/corpus/TARGET (not committed), seeded from the committed
# fuzz/seeds/TARGET; crashes land in fuzz/artifacts/TARGET and the log in fuzz/logs/TARGET.log,
# whose last lines are libFuzzer's final stats (stat::number_of_executed_units = executions).
# Replay one input: fuzz/target/x86_64-unknown-linux-gnu/release/TARGET fuzz/artifacts/TARGET/crash-...
#
# Needs `cargo install cargo-fuzz`. cargo-fuzz passes nightly-only flags (-Zsanitizer); the
# project's toolchain is stable, so RUSTC_BOOTSTRAP=1 lets the stable compiler take them (its
# rust-std ships the sanitizer runtimes). Fuzzing is not part of CI (CI type-checks fuzz/, and
# `cargo test` replays the seeds through classifyd::fuzzing): the instrumented build of candle
# and tokenizers alone takes 20 minutes of CPU (45 on a busy two-core machine). Runs
# under `nice` so that a long run does not starve other work on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
if ! [[ $seconds =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
command -v cargo-fuzz >/dev/null || {
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
}

export RUSTC_BOOTSTRAP=1
# More codegen units build candle several times faster, for slightly slower targets.
build_flags=(--codegen-units "${FUZZ_CODEGEN_UNITS:-4}")

if [ $# -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
else
    targets=("$@")
fi

nice -n 19 cargo fuzz build "${build_flags[@]}" >&2
# Run the binaries built here rather than through `cargo fuzz run`, which rebuilds whenever a
# source file changed: a long run of several targets fuzzes one build of the code.
bin=fuzz/target/x86_64-unknown-linux-gnu/release

mkdir -p fuzz/logs
libfuzzer_flags=(
    -max_total_time="$seconds"
    -rss_limit_mb=2048
    -print_final_stats=1
)
if [ -n "${RUNS:-}" ]; then
    libfuzzer_flags+=(-runs="$RUNS")
fi

failed=()
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    mkdir -p "$corpus"
    if [ -d "fuzz/seeds/$t" ]; then
        cp -n "fuzz/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    fi
    # Key names and values the parsers look for, which random mutation rarely spells.
    dict=()
    case $t in
    config_json | tokenizer_config_json | model_dir) dict=(-dict=fuzz/dicts/json.dict) ;;
    toml_config) dict=(-dict=fuzz/dicts/toml.dict) ;;
    esac
    # A single input that takes this long (or 2 GiB) is a finding, not slowness. model_dir runs
    # eight forward passes of up to 512 tokens per input: 60 ms in a release build, about 3 s
    # under the sanitizer and coverage instrumentation, past 10 s on a busy machine.
    timeout=10
    [ "$t" = model_dir ] && timeout=60
    echo "== $t: ${seconds}s${RUNS:+ or $RUNS runs}" >&2
    mkdir -p "fuzz/artifacts/$t"
    if nice -n 19 "$bin/$t" -artifact_prefix="fuzz/artifacts/$t/" -timeout="$timeout" "${libfuzzer_flags[@]}" \
        "${dict[@]}" "$corpus" >"fuzz/logs/$t.log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" |
        grep -o '[0-9]*$' | tail -1 || true)
    echo "$t: $status, ${execs:-?} executions, corpus $(find "$corpus" -type f | wc -l) inputs" >&2
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (see fuzz/logs/ and fuzz/artifacts/)" >&2
    exit 1
fi
