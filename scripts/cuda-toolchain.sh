#!/usr/bin/env bash
# Installs a CUDA 13.0 build toolchain for `cargo build --features cuda` from PyPI wheels into a
# cache directory outside the checkout, and prints the environment to build with:
#
#     eval "$(scripts/cuda-toolchain.sh)"
#     cargo build --release --locked --features cuda --bin classifyd
#
# Needs python3 with pip (or $PIP), gcc, and network access on the first run only; later runs find
# the marker file and only print the environment. No GPU and no driver are needed to build.
#
# Pinned to CUDA 13.0 (the versions PyTorch 2.11+cu130 pins): the GPU machines run driver 580
# (CUDA 13.0), which refuses PTX from a newer nvcc.
#
# The wheels ship no libcuda.so (it belongs to the driver). A link-only stub is generated from the
# driver symbols cudarc declares, each returning CUDA_ERROR_STUB_LIBRARY (34), into <cache>/stub/.
# It is put on LIBRARY_PATH (link time) only: never ship it, never put it on LD_LIBRARY_PATH or an
# RPATH. The binary loads the real libcuda.so.1 of the driver at run time.
#
# Environment:
#   CLASSIFYD_CUDA_HOME  cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/classifyd/cuda-13.0)
#   CUDA_COMPUTE_CAP     GPU architecture to compile the kernels for (default 80: compute 80 PTX,
#                        which the driver compiles for the A100, RTX 4090, H100 and H200 at first
#                        use; 90 gives sm_90a, for the H100/H200 alone)
#   PIP                  pip command (default: /work/venv/bin/pip if present, else python3 -m pip)
# Progress goes to stderr; only `export` lines go to stdout.
set -euo pipefail

CACHE="${CLASSIFYD_CUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/classifyd/cuda-13.0}"
CAP="${CUDA_COMPUTE_CAP:-80}"

# name==version, all from PyPI; the layout they share is nvidia/cu13/{bin,include,lib,nvvm}.
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-runtime==13.0.96
    nvidia-cublas==13.1.0.3
    nvidia-cuda-nvrtc==13.0.88
    nvidia-curand==10.4.0.35
)
# Unversioned link names the wheels lack: name -> soname in lib/.
LINKS=(cudart:libcudart.so.13 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13
    nvrtc:libnvrtc.so.13 curand:libcurand.so.10)
# Bump when the layout or the stub's generation changes, to force a redo.
LAYOUT=1
REPO=$(cd "$(dirname "$0")/.." && pwd)
CUDARC=$(awk '/^name = "cudarc"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$REPO/Cargo.lock" 2>/dev/null)
CUDARC=${CUDARC:-0.19.10}

log() { echo "cuda-toolchain: $*" >&2; }
die() { echo "cuda-toolchain: error: $*" >&2; exit 1; }

ROOT="$CACHE/site/nvidia/cu13"
STUB="$CACHE/stub"
# Each part is redone only when its marker's text differs.
WHEELS_MARKER="$CACHE/.installed"
WHEELS_TEXT="layout=$LAYOUT ${WHEELS[*]}"
STUB_MARKER="$STUB/.generated"
STUB_TEXT="layout=$LAYOUT cudarc=$CUDARC"

install_wheels() {
    local pip
    if [[ -n "${PIP:-}" ]]; then
        read -r -a pip <<<"$PIP"
    elif [[ -x /work/venv/bin/pip ]]; then
        pip=(/work/venv/bin/pip)
    else
        pip=(python3 -m pip)
    fi
    log "installing CUDA 13.0 wheels into $CACHE (about 1.2 GB, once)"
    rm -rf "$CACHE/site.tmp"
    mkdir -p "$CACHE"
    "${pip[@]}" install --quiet --no-deps --no-compile --disable-pip-version-check \
        --target "$CACHE/site.tmp" "${WHEELS[@]}" >&2 ||
        die "pip install failed (network? pip: ${pip[*]})"
    rm -rf "$CACHE/site"
    mv "$CACHE/site.tmp" "$CACHE/site"

    [[ -x "$ROOT/bin/nvcc" ]] || die "no nvcc at $ROOT/bin/nvcc after install"
    local entry name soname
    for entry in "${LINKS[@]}"; do
        name="${entry%%:*}"
        soname="${entry#*:}"
        [[ -e "$ROOT/lib/$soname" ]] || die "missing $ROOT/lib/$soname"
        ln -sfn "$soname" "$ROOT/lib/lib$name.so"
    done
    "$ROOT/bin/nvcc" --version >/dev/null 2>&1 || die "$ROOT/bin/nvcc does not run"
    echo "$WHEELS_TEXT" >"$WHEELS_MARKER"
}

# The driver API bindings of the cudarc that Cargo.lock pins; nothing (and success) when they
# are not downloaded yet: under pipefail a failed `ls` would otherwise end the script here,
# before the `cargo fetch` below.
find_cudarc() {
    { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$CUDARC"/src/driver/sys/mod.rs \
        2>/dev/null || true; } | tail -n 1
}

# Link-only libcuda stub: every driver entry point cudarc declares, each returning
# CUDA_ERROR_STUB_LIBRARY (34). The signatures do not matter to the linker.
make_stub() {
    command -v gcc >/dev/null || die "gcc is needed (nvcc's host compiler and the libcuda stub)"
    local sys
    sys=$(find_cudarc)
    if [[ -z "$sys" ]]; then
        # A default build never downloads cudarc (it is behind the `cuda` feature); fetch does.
        log "cudarc $CUDARC sources not in the cargo registry yet: cargo fetch --locked"
        (cd "$REPO" && cargo fetch --locked >&2) || die "cargo fetch failed"
        sys=$(find_cudarc)
    fi
    [[ -n "$sys" ]] || die "cudarc $CUDARC sources not found in ${CARGO_HOME:-$HOME/.cargo}/registry"
    rm -rf "$STUB.tmp"
    mkdir -p "$STUB.tmp"
    {
        echo "/* Generated by scripts/cuda-toolchain.sh from $sys: LINK-ONLY stub, never load it. */"
        grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | sed 's/^pub unsafe fn //' | sort -u |
            sed 's/.*/int &(void) { return 34; }/'
    } >"$STUB.tmp/libcuda_stub.c"
    local n
    n=$(grep -c 'return 34' "$STUB.tmp/libcuda_stub.c")
    ((n > 100)) || die "only $n driver symbols found in $sys"
    gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$STUB.tmp/libcuda.so" \
        "$STUB.tmp/libcuda_stub.c" >&2 || die "could not build the libcuda stub"
    echo "$STUB_TEXT" >"$STUB.tmp/.generated"
    rm -rf "$STUB"
    mv "$STUB.tmp" "$STUB"
    log "libcuda stub with $n symbols in $STUB (link time only)"
}

if [[ -f "$WHEELS_MARKER" && "$(cat "$WHEELS_MARKER")" == "$WHEELS_TEXT" ]]; then
    log "CUDA 13.0 wheels already in $CACHE"
else
    install_wheels
fi
if [[ ! -f "$STUB_MARKER" || "$(cat "$STUB_MARKER")" != "$STUB_TEXT" ]]; then
    make_stub
fi

q() { printf '%q' "$1"; }
cat <<EOF
export CUDA_HOME=$(q "$ROOT")
export CUDA_ROOT=$(q "$ROOT")
export CUDA_PATH=$(q "$ROOT")
export NVCC=$(q "$ROOT/bin/nvcc")
export PATH=$(q "$ROOT/bin"):"\$PATH"
export CUDA_COMPUTE_CAP=$(q "$CAP")
export LIBRARY_PATH=$(q "$ROOT/lib:$STUB")\${LIBRARY_PATH:+:\$LIBRARY_PATH}
export CLASSIFYD_CUDA_STUB=$(q "$STUB")
EOF
