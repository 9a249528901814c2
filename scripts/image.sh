#!/usr/bin/env bash
# Builds the container images with podman (deploy/image/):
#   registry.example.com/classifyd:<version>        the daemon: the release binary and the few
#                                                   libraries it links, /etc/passwd with uid 10001,
#                                                   a default /etc/classifyd/classifyd.toml; no
#                                                   shell, no model
#   registry.example.com/classifyd-model-sentiment-minilm:<version>
#                                                   the default model alone, for an `image:` volume
# then checks them the way this machine allows: `podman run` where it works, and always from
# the exported root filesystem (podman create + export), the binary run there with chroot as
# uid 10001, with an empty environment, the model image's files where the DaemonSet mounts them.
# The DaemonSets name the first image: retag it for your registry and push (docs/DEPLOY.md).
#
#   scripts/image.sh                 # build and check
#   IMAGE_REGISTRY=reg.example.org/ml scripts/image.sh
#
# Why podman: `podman build` works from a Containerfile without a daemon and as the user, and
# the images are plain OCI images. The base is `scratch`: the binary needs glibc's libc, libm,
# libgcc_s and the loader, copied from this machine at the paths `ldd` gives.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "image: FAILED: $*" >&2
    exit 1
}
say() { echo "image: $*" >&2; }

if ! command -v podman >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman >/dev/null
fi

version=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "classifyd"))')
registry=${IMAGE_REGISTRY:-registry.example.com}
image=$registry/classifyd:$version
model_image=$registry/classifyd-model-sentiment-minilm:$version

if [ -n "${CLASSIFYD_BIN:-}" ]; then
    bin=$CLASSIFYD_BIN
else
    cargo build --release --locked --bin classifyd >&2
    target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    bin=$target/release/classifyd
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/classifyd-image.XXXXXX")
containers=()
cleanup() {
    for c in "${containers[@]}"; do podman rm -f "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# ---- the daemon's root filesystem ------------------------------------------------------------
ctx=$work/ctx
rootfs=$ctx/rootfs
install -d "$rootfs/usr/bin" "$rootfs/etc/classifyd" "$rootfs/var/lib/classifyd"
install -d -m 1777 "$rootfs/tmp"
install -d "$rootfs/run"
install -d -m 0750 "$ctx/rundir"
cp "$bin" "$rootfs/usr/bin/classifyd"
strip --strip-debug "$rootfs/usr/bin/classifyd"
# Each library at the path the loader looks in on this machine; the loader itself at the path
# written in the binary (PT_INTERP).
ldd "$bin" | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' | while read -r lib; do
    install -D -m 0644 "$(readlink -f "$lib")" "$rootfs$lib"
done
interp=$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[ -f "$rootfs$interp" ] || fail "the loader $interp was not copied"
chmod 0755 "$rootfs$interp"
printf 'root:x:0:0:root:/:/nonexistent\nclassifyd:x:10001:10001:classifyd:/:/nonexistent\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nclassifyd:x:10001:\n' >"$rootfs/etc/group"
install -m 0644 systemd/classifyd.toml "$rootfs/etc/classifyd/classifyd.toml"
cp deploy/image/Containerfile "$ctx/Containerfile"

labels=(
    --label "org.opencontainers.image.title=classifyd"
    --label "org.opencontainers.image.version=$version"
    --label "org.opencontainers.image.licenses=Apache-2.0"
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
)
say "building $image"
podman build --quiet "${labels[@]}" -t "$image" -f "$ctx/Containerfile" "$ctx" >/dev/null || fail "podman build"

# ---- the model image -------------------------------------------------------------------------
mctx=$work/model-ctx
install -d "$mctx/model"
cp models/sentiment-minilm/* "$mctx/model/"
chmod 0644 "$mctx/model"/*
cp deploy/image/Containerfile.model "$mctx/Containerfile"
say "building $model_image"
podman build --quiet "${labels[@]}" -t "$model_image" -f "$mctx/Containerfile" "$mctx" >/dev/null ||
    fail "podman build (model)"

# ---- check: the exported root, as the pod would run it ---------------------------------------
export_root() { # IMAGE DIR
    local c
    c=$(podman create "$1" /none) || fail "podman create $1"
    containers+=("$c")
    install -d "$2"
    podman export "$c" | tar -x -C "$2" || fail "podman export $1"
}
root=$work/root
export_root "$image" "$root"
for shell in bin/sh usr/bin/sh bin/bash bin/busybox; do
    [ ! -e "$root/$shell" ] || fail "the image has a shell: /$shell"
done
# The model volume, where the DaemonSet mounts it.
export_root "$model_image" "$root/var/lib/classifyd/model"
[ -f "$root/var/lib/classifyd/model/model.safetensors" ] || fail "the model image has no model.safetensors"

say "classifying from the exported root (chroot, uid 10001, empty environment)"
answer=$(env -i "$(command -v chroot)" --userspec=10001:10001 "$root" \
    /usr/bin/classifyd classify --model /var/lib/classifyd/model --no-weights-cache "what a wonderful film") ||
    fail "classify in the exported root"
echo "$answer" | grep -q '"label": *"POSITIVE"' || fail "unexpected answer: $answer"
say "answer: $answer"

# And the image's own command: serve with the image's config, then classify over its socket.
env -i "$(command -v chroot)" --userspec=10001:10001 "$root" /usr/bin/classifyd serve \
    --config /etc/classifyd/classifyd.toml --no-weights-cache 2>"$work/serve.log" &
daemon=$!
for _ in $(seq 1 600); do
    [ -S "$root/run/classifyd/classifyd.sock" ] && break
    kill -0 "$daemon" 2>/dev/null || { cat "$work/serve.log" >&2; fail "the image's serve exited"; }
    sleep 0.1
done
answer=$(env -i "$(command -v chroot)" --userspec=10001:10001 "$root" \
    /usr/bin/classifyd classify --uds /run/classifyd/classifyd.sock "a dull, tedious film") ||
    { kill "$daemon"; fail "classify over the image's socket"; }
kill -TERM "$daemon"
wait "$daemon" || fail "serve did not exit 0 on SIGTERM"
echo "$answer" | grep -q '"label": *"NEGATIVE"' || fail "unexpected answer: $answer"

# `podman run`, where this machine allows it (some sandboxes refuse its setrlimit).
if out=$(podman run --rm --network none -v "$root/var/lib/classifyd/model:/var/lib/classifyd/model:ro" \
    "$image" classify --model /var/lib/classifyd/model --no-weights-cache "what a wonderful film" 2>&1); then
    echo "$out" | grep -q '"label": *"POSITIVE"' || fail "podman run answered: $out"
    say "podman run: ok"
else
    say "podman run is refused here ($(echo "$out" | tail -1)); checked from the exported root only"
fi

size() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.1f MiB", $1 / 1048576}'; }
say "ok: $image ($(size "$image")), $model_image ($(size "$model_image"))"
echo "$image"
echo "$model_image"
