#!/usr/bin/env bash
# The GPU check (issue #6), run ON the GPU machine with only a prebuilt `--features cuda` binary,
# the fixtures and the default model: no Rust toolchain and no network needed there.
#
#   scripts/gpu-check.sh [BUNDLE]        (BUNDLE made by scripts/gpu-bundle.sh; default gpu-bundle/)
#
# Steps, each under its own time limit (the whole run stays under 5 minutes):
#   1. the GPU (nvidia-smi), the library path (PyTorch's site-packages nvidia/cu13/lib), and a
#      probe that opens the device; without a usable GPU it stops here, exit 2, one clear line;
#      then one forward pass alone (the driver compiles and caches the kernels' PTX);
#   2. parity on every fixture, F32 / F16 / BF16, against the golden logits of transformers, in
#      one `classifyd parity` process per dtype (a fixture that overruns is named as such):
#      F32 within 1e-3, F16/BF16 within 5e-2 and the same argmax;
#   3. `classifyd serve` on CUDA (default dtype, F16) over a Unix socket and `classifyd bench`:
#      batch-1 latency at one client, then a closed-loop concurrency sweep;
#   4. PyTorch + transformers on the same GPU and texts (benches/peers/torch_gpu_peer.py);
#   5. a JSON summary: $OUT/gpu-check.json (OUT defaults to BUNDLE/out), plus the logs.
# Exit: 0 all passed, 1 a check failed, 2 no usable GPU (or a broken bundle).
#
# The bundle holds classifyd.xz (or .gz, or a plain classifyd), texts.txt and manifest.json, and,
# when made with --self-contained, fixtures/, models/sentiment-minilm/ and the two scripts; what
# it lacks is taken from the checkout around this script.
#
# Environment: PYTHON (default python3: the one with torch), CLASSIFYD_CUDA_LIB (the directory
# holding libcublas.so.13 etc., instead of PyTorch's), CHECK_DEVICE (default cuda; `cpu` runs
# the same steps against a CPU binary, to try this script on a machine without a GPU; there,
# PARITY_LIMIT=N keeps the first N cases of each fixture), F32_TOL / F16_TOL / BF16_TOL (the
# parity tolerances, default 1e-3 / 5e-2 / 5e-2).
set -uo pipefail

T0=$SECONDS
here=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$here/.." && pwd) # the checkout (scripts/..), for what the bundle lacks
if compgen -G "$here/classifyd*" >/dev/null; then
    BUNDLE=${1:-$here} # this script inside a self-contained bundle
else
    BUNDLE=${1:-$ROOT/gpu-bundle}
fi
BUNDLE=$(cd "$BUNDLE" 2>/dev/null && pwd) || { echo "gpu-check: FAILED: no bundle at ${1:-$ROOT/gpu-bundle} (make it with scripts/gpu-bundle.sh)" >&2; exit 2; }
OUT=${OUT:-$BUNDLE/out}
PY=${PYTHON:-python3}
DEVICE=${CHECK_DEVICE:-cuda}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Seconds a step may take: its own limit, or what is left of the 285 s budget if that is less.
lim() {
    local left=$((285 - (SECONDS - T0)))
    if ((left < $1)); then echo $((left > 5 ? left : 5)); else echo "$1"; fi
}
say() { echo "gpu-check [$((SECONDS - T0))s]: $*" >&2; }
# The summary is assembled from small JSON files in $WORK/parts at the end (or at a failure).
mkdir -p "$WORK/parts"
part() { printf '%s\n' "$2" >"$WORK/parts/$1.json"; }
summarize() { # $1: status word
    "$PY" - "$WORK/parts" "$1" "$((SECONDS - T0))" >"$OUT/gpu-check.json" <<'EOF'
import json, os, sys
parts, status, secs = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {"status": status, "seconds": secs}
for name in sorted(os.listdir(parts)):
    with open(os.path.join(parts, name)) as f:
        text = f.read().strip()
    try:
        out[name[:-5]] = json.loads(text) if text else None
    except ValueError:
        out[name[:-5]] = {"unparsed": text[-2000:]}
print(json.dumps(out, indent=1))
EOF
}
fail() { # $1: exit code, $2: one line
    echo "gpu-check: FAILED: $2" >&2
    part failure "$("$PY" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$2")"
    summarize "$([[ $1 == 2 ]] && echo no_gpu || echo failed)"
    echo "gpu-check: summary in $OUT/gpu-check.json" >&2
    exit "$1"
}
find_in() { # first existing path among the arguments
    local p
    for p in "$@"; do [[ -e $p ]] && { echo "$p"; return 0; }; done
    return 1
}

command -v "$PY" >/dev/null || { echo "gpu-check: FAILED: no $PY" >&2; exit 2; }

# ---- the bundle -----------------------------------------------------------------------------
FIXTURES=$(find_in "$BUNDLE/fixtures" "$ROOT/tests/fixtures") || fail 2 "no fixtures in $BUNDLE or $ROOT/tests"
MODEL=$(find_in "$BUNDLE/models/sentiment-minilm" "$ROOT/models/sentiment-minilm") || fail 2 "no default model"
TEXTS=$(find_in "$BUNDLE/texts.txt" "$ROOT/benches/texts/tweets.txt") || fail 2 "no texts file"
PEER=$(find_in "$BUNDLE/torch_gpu_peer.py" "$ROOT/benches/peers/torch_gpu_peer.py") || fail 2 "no torch_gpu_peer.py"
BIN=$WORK/classifyd
if [[ -f $BUNDLE/classifyd.xz ]]; then
    "$PY" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' \
        "$BUNDLE/classifyd.xz" "$BIN" || fail 2 "cannot unpack $BUNDLE/classifyd.xz"
elif [[ -f $BUNDLE/classifyd.gz ]]; then
    gzip -dc "$BUNDLE/classifyd.gz" >"$BIN" || fail 2 "cannot unpack $BUNDLE/classifyd.gz"
elif [[ -f $BUNDLE/classifyd ]]; then
    cp "$BUNDLE/classifyd" "$BIN"
else
    fail 2 "no classifyd binary in $BUNDLE"
fi
chmod +x "$BIN"
if [[ -f $BUNDLE/manifest.json ]]; then part bundle "$(cat "$BUNDLE/manifest.json")"; fi
BUILT_CAP=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("compute_cap",""))' \
    "$BUNDLE/manifest.json" 2>/dev/null || true)

# Whether kernels built for capability $1 (`80`, `89`, `90a`) load on a GPU of capability $2.
cap_runs() {
    local built=$1 gpu=$2
    if [[ $built == *a ]]; then
        [[ ${built%a} == "$gpu" ]]
    else
        ((built <= gpu))
    fi
}

# ---- 1. the GPU, the libraries, a probe ------------------------------------------------------
say "bundle $BUNDLE, device $DEVICE, output $OUT"
if [[ $DEVICE == cuda* ]]; then
    gpu_line=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
        --format=csv,noheader 2>&1 | head -n 1) || gpu_line="nvidia-smi failed: $gpu_line"
    if ! command -v nvidia-smi >/dev/null; then gpu_line="nvidia-smi not found"; fi
    say "GPU: $gpu_line"
    part gpu "$("$PY" -c '
import json, sys
f = [x.strip() for x in sys.argv[1].split(",")]
if len(f) == 4 and not sys.argv[1].startswith("nvidia-smi"):
    print(json.dumps({"name": f[0], "driver": f[1], "memory": f[2], "compute_cap": f[3]}))
else:
    print(json.dumps({"error": sys.argv[1]}))' "$gpu_line")"

    # The CUDA runtime libraries the binary links (cudart, cuBLAS, cuBLASLt, cuRAND, NVRTC), from
    # PyTorch's site-packages; libcuda.so.1 comes from the driver.
    if [[ -z ${CLASSIFYD_CUDA_LIB:-} ]]; then
        CLASSIFYD_CUDA_LIB=$("$PY" - 2>/dev/null <<'EOF'
import os
import nvidia
for p in list(nvidia.__path__):
    d = os.path.join(p, "cu13", "lib")
    if os.path.exists(os.path.join(d, "libcublas.so.13")):
        print(d)
        break
EOF
        ) || true
    fi
    if [[ -n ${CLASSIFYD_CUDA_LIB:-} ]]; then
        export LD_LIBRARY_PATH=$CLASSIFYD_CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        say "CUDA libraries from $CLASSIFYD_CUDA_LIB"
    else
        say "no nvidia/cu13/lib found through $PY; relying on the system library path"
    fi
    missing=$(ldd "$BIN" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
    if [[ $missing == *libcuda.so.1* ]]; then
        fail 2 "no NVIDIA GPU driver here (libcuda.so.1 not found; nvidia-smi: $gpu_line)"
    elif [[ -n $missing ]]; then
        fail 2 "CUDA runtime libraries not found: ${missing% } (looked in ${CLASSIFYD_CUDA_LIB:-the system path}; set CLASSIFYD_CUDA_LIB)"
    fi
    gpu_cap=$(echo "$gpu_line" | awk -F', ' 'NF == 4 {gsub(/\./, "", $4); print $4}')
    # The binary is CUDA 13.0 (cudarc, nvcc): drivers before 580 refuse its PTX. The daemon
    # says the same at start (engine::device); here it is the first line, before any probe.
    driver=$(echo "$gpu_line" | awk -F', ' 'NF == 4 {print $2}')
    if [[ $driver =~ ^([0-9]+)\. ]] && ((BASH_REMATCH[1] < 580)); then
        fail 2 "NVIDIA driver $driver is older than 580, the first with CUDA 13.0, which this binary needs: install driver 580 or later"
    fi
    # PTX for compute N runs on any GPU of capability N or later (the driver compiles it);
    # an arch-specific build (sm_90a) runs on that capability alone.
    if [[ -n $BUILT_CAP && -n $gpu_cap ]] && ! cap_runs "$BUILT_CAP" "$gpu_cap"; then
        fail 2 "the binary's kernels are for compute capability $BUILT_CAP, this GPU is $gpu_cap: rebuild with CUDA_COMPUTE_CAP=80 (any GPU from the A100 on) or $gpu_cap (docs/GPU.md)"
    fi
fi
# The probe loads the model onto the device. With compute 80 PTX the driver compiles each kernel
# module for this GPU as it is first loaded (the casts, here) unless ~/.nv/ComputeCache has it:
# seconds per module on a cold cache, so the probe gets as long as the first pass below.
t=$SECONDS
if ! probe=$(timeout "$(lim 120)" "$BIN" inspect --json --model "$MODEL" --device "$DEVICE" 2>&1); then
    fail 2 "no usable GPU: $(echo "$probe" | tail -n 1 | sed 's/^classifyd: error: //')${gpu_line:+ (nvidia-smi: $gpu_line)}"
fi
part probe "$probe"
part probe_time "{\"seconds\": $((SECONDS - t))}"
say "device opened in $((SECONDS - t)) s: $probe"
# One forward pass alone first: the driver compiles the kernels' PTX for this GPU when a module
# is first loaded and caches the result, so the parallel parity runs below find it compiled.
export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}
t=$SECONDS
if ! first=$(timeout "$(lim 120)" "$BIN" classify --model "$MODEL" --device "$DEVICE" --dtype f32 \
    "the first forward pass loads every kernel module" 2>&1); then
    fail 1 "the first forward pass failed: $(echo "$first" | tail -n 1)"
fi
part first_forward "{\"seconds\": $((SECONDS - t))}"
say "first forward pass (kernel JIT) in $((SECONDS - t)) s"
# Tensors one pass creates on the device (kernel launches and views; docs/GPU.md) and those it
# uploads from the host, and the attention chunk sized from the free memory: the CPU's F16
# counts are the same code path, this checks them on CUDA.
if ops=$(timeout 60 "$BIN" inspect --json --ops 16 --model "$MODEL" --device "$DEVICE" 2>/dev/null); then
    part ops "$ops"
    say "ops per pass: $(echo "$ops" | grep -o -E '"(tensors|uploads)_per_forward":[0-9]*|"attention_chunk_mib":[0-9]*' | tr '\n' ' ')"
fi

# ---- 2. parity ------------------------------------------------------------------------------
say "parity on every fixture in f32, f16, bf16"
timeout "$(lim 120)" "$PY" - "$BIN" "$FIXTURES" "$MODEL" "$DEVICE" "$WORK/parity" \
    >"$WORK/parts/parity.json" <<'EOF'
import concurrent.futures as cf
import json, os, subprocess, sys

binary, fixtures, default_model, device, work = sys.argv[1:6]
os.makedirs(work, exist_ok=True)
TOL = {"f32": float(os.environ.get("F32_TOL", "1e-3")),
       "f16": float(os.environ.get("F16_TOL", "5e-2")),
       "bf16": float(os.environ.get("BF16_TOL", "5e-2"))}
TIMEOUT = 110      # one dtype's process, all fixtures
# PARITY_LIMIT=N keeps N cases per fixture: only for trying the script on a CPU.
LIMIT = int(os.environ.get("PARITY_LIMIT", "0"))

def argmax(v):
    return max(range(len(v)), key=lambda i: v[i])

def torch_error(name):
    """PyTorch's own error at each reduced dtype against its F32, from the fixture's half.json:
    {dtype: (mean, max)}. Ours may be 2x its max (tests/engine/half.rs holds the CPU to the
    same), and a label is a toss when its F32 margin is under 4x its mean."""
    path = os.path.join(fixtures, name, "half.json")
    if not os.path.exists(path):
        return {}
    half = json.load(open(path))
    out = {}
    for dtype, key in (("f16", "float16"), ("bf16", "bfloat16")):
        diffs = [abs(a - b) for r, w in zip(half[key], half["float32"]) for a, b in zip(r, w)]
        if diffs:
            out[dtype] = (sum(diffs) / len(diffs), max(diffs))
    return out

TORCH = {}
jobs = []  # (fixture, dtype, kind, model dir, cases)
for name in sorted(os.listdir(fixtures)):
    path = os.path.join(fixtures, name, "golden.json")
    if not os.path.exists(path):
        continue
    TORCH[name] = torch_error(name)
    golden = json.load(open(path))
    model = os.path.join(fixtures, name) if "model" not in golden else default_model
    # Cases a model must refuse (a text of no tokens) are not classified here; the CPU tests
    # check the refusal.
    cases = [c for c in golden["cases"] if not c.get("refused")]
    # Sorted by length so the batches of 64 are padded little (the held-out split).
    cases = sorted(cases[:LIMIT] if LIMIT else cases, key=lambda c: len(c["input_ids"]))
    for dtype in TOL:
        for kind in ("text", "pair"):
            sel = [c for c in cases if (c.get("text_pair") is not None) == (kind == "pair")]
            if sel:
                jobs.append((name, dtype, kind, model, sel))

# One fixture's load and inputs (classifyd parity --job-timeout-secs); PARITY_JOB_TIMEOUT=0
# tries the timeout report.
JOB_TIMEOUT = int(os.environ.get("PARITY_JOB_TIMEOUT", "60"))

def run_dtype(dtype):
    """One `classifyd parity` process for every job at `dtype`: {job key: (lines, error)}.
    A job with no answer line (the process stopped, or an earlier job timed out) gets the
    reason as its error, so a timeout is reported by fixture."""
    mine = [j for j in jobs if j[1] == dtype]
    key = lambda j: f"{j[0]}.{j[2]}"
    feed = "".join(json.dumps({"id": key(j), "model": j[3],
                               "inputs": [[c["text"]] + ([c["text_pair"]] if j[2] == "pair" else [])
                                          for c in j[4]]}) + "\n" for j in mine)
    cmd = [binary, "parity", "--device", device, "--dtype", dtype,
           "--job-timeout-secs", str(JOB_TIMEOUT)]
    try:
        p = subprocess.run(cmd, input=feed.encode(), capture_output=True, timeout=TIMEOUT)
        stdout, stderr = p.stdout, p.stderr
        why = "after an earlier fixture's timeout" if p.returncode == 3 else f"exit {p.returncode}"
    except subprocess.TimeoutExpired as e:
        stdout, stderr, why = e.stdout or b"", e.stderr or b"", f"killed after {TIMEOUT} s"
    with open(os.path.join(work, f"{dtype}.stderr"), "wb") as f:
        f.write(stderr)
    answered = {}
    for l in stdout.decode(errors="replace").splitlines():
        try:
            line = json.loads(l)
        except ValueError:
            continue
        answered[line.get("id")] = line
    last = stderr.decode(errors="replace").strip().splitlines()[-1:]
    why = ": ".join([why] + last)
    out = {}
    for j in mine:
        line = answered.get(key(j))
        if line is None:
            out[key(j)] = (j, None, [f"not run: the {dtype} process stopped ({why})"])
        elif "error" in line:
            out[key(j)] = (j, None, [line["error"]])
        else:
            out[key(j)] = (j, line["answers"], None)
    return out

def outcomes():
    with cf.ThreadPoolExecutor(max_workers=len(TOL)) as pool:
        for per_dtype in pool.map(run_dtype, TOL):
            yield from per_dtype.values()

results = {}
ok_all = True
for job, lines, err in outcomes():
    name, dtype, kind, model, cases = job
    r = results.setdefault(name, {}).setdefault(dtype, {"cases": 0, "max_abs": 0.0,
                                                         "argmax_mismatch": 0, "errors": []})
    if err is not None:
        r["errors"].append(f"{kind}: {err[0]}")
        continue
    if len(lines) != len(cases):
        r["errors"].append(f"{kind}: {len(lines)} answers for {len(cases)} inputs")
        continue
    for c, got in zip(cases, lines):
        r["cases"] += 1
        if "error" in got:
            r["errors"].append(f"{c['text'][:40]!r}: {got['error']}")
            continue
        # A token-classification fixture: one row of logits per token, each its own label.
        if "token_logits" in c:
            pairs = list(zip(got.get("token_logits", []), c["token_logits"]))
            if len(pairs) != len(c["token_logits"]):
                r["errors"].append(f"{c['text'][:40]!r}: {len(pairs)} token rows")
                continue
        else:
            pairs = [(got["logits"], c["logits"])]
        for have, want in pairs:
            d = max(abs(a - b) for a, b in zip(have, want))
            if d != d:  # NaN
                d = float("inf")
            r["max_abs"] = max(r["max_abs"], d)
            # A label whose top two F32 logits are under 0.05 apart (or 4x PyTorch's own
            # mean error at the dtype) is a toss at F16/BF16 (tests/engine skips the same).
            top = sorted(want, reverse=True)
            toss = max(0.05, 4 * TORCH[name].get(dtype, (0.0, 0.0))[0])
            clear = len(top) < 2 or top[0] - top[1] >= toss
            if dtype != "f32" and clear and argmax(have) != argmax(want):
                r["argmax_mismatch"] += 1
for name, per in results.items():
    for dtype, r in per.items():
        # At F16/BF16, the fixed tolerance or twice PyTorch's own max error at that dtype,
        # whichever is larger: a token fixture's ~50 rows per text err far more than one row.
        tol = max(TOL[dtype], 2 * TORCH[name].get(dtype, (0.0, 0.0))[1])
        r["tolerance"] = tol
        r["errors"] = r["errors"][:5]
        r["pass"] = (not r["errors"] and r["cases"] > 0 and r["max_abs"] <= tol
                     and r["argmax_mismatch"] == 0)
        ok_all &= r["pass"]
        print(f"  {name:26} {dtype:5} n={r['cases']:<5} max|Δ|={r['max_abs']:.2e} "
              f"argmax≠{r['argmax_mismatch']} {'ok' if r['pass'] else 'FAIL ' + ('; '.join(r['errors']) or 'tolerance ' + f'{tol:.3g}')}",
              file=sys.stderr)
print(json.dumps({"pass": ok_all, "fixtures": results}))
EOF
parity_rc=$?
PARITY_PASS=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["pass"])' "$WORK/parts/parity.json" 2>/dev/null || echo False)
[[ $parity_rc == 0 ]] || say "parity step broke (exit $parity_rc)"
say "parity: $([[ $PARITY_PASS == True ]] && echo passed || echo FAILED)"

# ---- 3. serve + bench -----------------------------------------------------------------------
SOCK=$WORK/classifyd.sock
say "serve on $DEVICE, bench over $SOCK"
"$BIN" --log-format json serve --model "$MODEL" --device "$DEVICE" --uds "$SOCK" >"$OUT/serve.log" 2>&1 &
SERVER_PID=$!
ready_by=$((SECONDS + $(lim 60)))
while ((SECONDS < ready_by)); do
    [[ -S $SOCK ]] && grep -q '"ready"' "$OUT/serve.log" && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.5
done
BENCH_OK=false
if [[ -S $SOCK ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    say "ready: $(grep -m1 '"ready"' "$OUT/serve.log" | cut -c1-300)"
    if timeout "$(lim 30)" "$BIN" bench --uds "$SOCK" --concurrency 1 --duration-secs 10 --warmup-secs 2 \
        --texts "$TEXTS" --json >"$WORK/parts/bench_batch1.json" 2>"$WORK/bench1.err" &&
        timeout "$(lim 40)" "$BIN" bench --uds "$SOCK" --concurrency 4,16,64 --duration-secs 5 \
            --warmup-secs 1 --texts "$TEXTS" --json >"$WORK/parts/bench_sweep.json" 2>"$WORK/bench2.err"; then
        BENCH_OK=true
        "$PY" - "$WORK/parts/bench_batch1.json" "$WORK/parts/bench_sweep.json" <<'EOF' >&2
import json, sys
for path in sys.argv[1:]:
    for r in json.load(open(path)).get("runs", []):
        l = r.get("latency_us", {})
        print(f"  c={r.get('concurrency')}: {r.get('throughput_rps', 0):.0f} req/s, "
              f"p50 {l.get('p50')} us, p99 {l.get('p99')} us, mean batch {r.get('mean_batch_size')}, "
              f"errors {r.get('errors')}")
EOF
    else
        say "bench FAILED: $(tail -n 1 "$WORK"/bench*.err 2>/dev/null | tail -n 1)"
        cp "$WORK"/bench*.err "$OUT/" 2>/dev/null
    fi
else
    say "serve FAILED to become ready: $(tail -n 1 "$OUT/serve.log")"
fi
if [[ -n $SERVER_PID ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=
fi

# ---- 4. the PyTorch peer --------------------------------------------------------------------
PEER_OK=false
if [[ $DEVICE == cuda* ]]; then
    say "PyTorch peer on the same GPU and texts"
    if HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 \
        timeout "$(lim 90)" "$PY" "$PEER" --model "$MODEL" --texts "$TEXTS" --dtype fp16 --seconds 4 \
        >"$WORK/parts/torch_peer.json" 2>"$OUT/torch_peer.err"; then
        PEER_OK=true
        say "torch: $(head -c 400 "$WORK/parts/torch_peer.json")"
    else
        say "PyTorch peer FAILED: $(tail -n 1 "$OUT/torch_peer.err")"
    fi
fi

# ---- 5. summary -----------------------------------------------------------------------------
part steps "{\"parity\": $([[ $PARITY_PASS == True ]] && echo true || echo false), \"bench\": $BENCH_OK, \"torch_peer\": $PEER_OK}"
if [[ $PARITY_PASS == True && $BENCH_OK == true ]]; then status=passed; rc=0; else status=failed; rc=1; fi
summarize "$status"
say "$status; summary in $OUT/gpu-check.json"
exit $rc
