#!/usr/bin/env bash
# Checks the Debian package that scripts/package-deb.sh built, for real:
#  1. lintian: no error and no warning that debian/lintian-overrides does not explain;
#  2. the file list equals debian/files.txt (what the package installs, sorted);
#  3. installed with dpkg into a throwaway Debian root (mmdebstrap: minbase, its dependencies, made
#     once and kept as a tarball outside the clone), with its maintainer scripts run there:
#     the account exists, the units are enabled and not started, the conffile is registered,
#     the model link is in place;
#  4. `systemd-analyze verify` has nothing to say about the installed units;
#  5. the installed binary, as the installed account, serves the installed default model from
#     the installed config (only the socket moved to a temporary directory), and answers;
#  6. an upgrade (the same package again), a remove (config, state and cache stay) and a purge
#     (they go).
#
#   scripts/check-deb.sh target/debian/classifyd_0.1.0-1_amd64.deb
#
# Runs as root (chroot, mounts). The root is unpacked under $TMPDIR and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(realpath "${1:?usage: $0 PACKAGE.deb}")

fail() {
    echo "check-deb: FAILED: $*" >&2
    exit 1
}
say() { echo "check-deb: $*" >&2; }

need=()
command -v lintian >/dev/null || need+=(lintian)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---- 1. lintian ------------------------------------------------------------------------------
# The overrides ship in the package (usr/share/lintian/overrides/classifyd), each with its
# reason; --fail-on warning makes any other warning fail this check.
say "lintian"
lintian --fail-on error,warning --info --display-level '>=warning' "$deb" || fail "lintian"

# ---- 2. the file list ------------------------------------------------------------------------
say "file list"
if ! dpkg-deb --contents "$deb" | awk '{print $6}' | sed -e 's|^\./|/|' -e 's|/$||' |
    grep -v -e '^$' -e '^/$' | sort | diff -u debian/files.txt -; then
    fail "the package's files differ from debian/files.txt (- expected, + built)"
fi

# ---- 3. install into a throwaway root --------------------------------------------------------
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
cache=${CLASSIFYD_DEB_ROOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/classifyd}
# The packages the root holds besides minbase: the package's dependencies, and man-db so that
# `systemd-analyze verify` checks the units' Documentation= against the installed man pages.
include=systemd,procps,man-db
base=$cache/deb-root-$codename-$(echo "$include" | md5sum | cut -c1-8).tar
if [ ! -s "$base" ]; then
    say "making the $codename root (mmdebstrap, once per machine)"
    mkdir -p "$cache"
    # The host's own apt sources, so the root comes from where this machine's packages come.
    sources=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -s "$f" ] && sources+=("$f")
    done
    mmdebstrap --quiet --mode=root --variant=minbase --include="$include" "$codename" "${base%.tar}.partial.tar" "${sources[@]}" ||
        fail "mmdebstrap"
    mv "${base%.tar}.partial.tar" "$base"
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/classifyd-deb-root.XXXXXX")
daemon=""
cleanup() {
    if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; fi
    umount "$root/proc" 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT
tar -xf "$base" -C "$root"
mount -t proc proc "$root/proc"
chroot=$(command -v chroot)
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$chroot" "$root" "$@"; }
cp "$deb" "$root/tmp/classifyd.deb"

say "dpkg -i (maintainer scripts run in the root)"
in_root dpkg -i /tmp/classifyd.deb || fail "dpkg -i"
in_root dpkg-query -W -f '${Status}\n' classifyd | grep -qx 'install ok installed' || fail "not installed"

in_root getent passwd classifyd >/dev/null || fail "no classifyd account (systemd-sysusers)"
in_root getent group classifyd >/dev/null || fail "no classifyd group"
for link in multi-user.target.wants/classifyd.service sockets.target.wants/classifyd.socket; do
    [ -L "$root/etc/systemd/system/$link" ] || fail "not enabled: $link"
done
# Nothing may be running: the root has no systemd, and the scripts must not have started the
# daemon by hand either.
for proc in /proc/[0-9]*; do
    if [ "$(readlink "$proc/root" 2>/dev/null)" = "$root" ]; then
        fail "a process runs in the root after the install: $(tr '\0' ' ' <"$proc/cmdline")"
    fi
done
in_root dpkg-query -W -f '${Conffiles}\n' classifyd | grep -q '^ /etc/classifyd/classifyd.toml ' ||
    fail "/etc/classifyd/classifyd.toml is not a conffile"
[ "$(readlink "$root/var/lib/classifyd/model")" = /usr/share/classifyd/models/sentiment-minilm ] ||
    fail "/var/lib/classifyd/model does not link the default model (systemd-tmpfiles)"
owner=$(in_root stat -c '%U:%G %a' /var/lib/classifyd)
[ "$owner" = "classifyd:classifyd 750" ] || fail "/var/lib/classifyd is $owner, not classifyd:classifyd 750"

# ---- 4. the installed units ------------------------------------------------------------------
say "systemd-analyze verify"
units=$(in_root dpkg -L classifyd | grep -E '/systemd/system/classifyd@?\.(service|socket)$')
[ "$(echo "$units" | wc -l)" = 3 ] || fail "expected three installed units (the template too), found: $units"
# shellcheck disable=SC2086
out=$(in_root env SYSTEMD_COLORS=0 systemd-analyze verify $units 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify said: $out"

# ---- 5. the installed daemon serves the installed model ------------------------------------
say "serving the installed model"
# What the unit's CacheDirectory= and a socket directory would give it.
install -d -m 0750 -o "$(in_root id -u classifyd)" -g "$(in_root id -g classifyd)" \
    "$root/var/cache/classifyd" "$root/tmp/check"
env -i PATH=/usr/bin:/bin CACHE_DIRECTORY=/var/cache/classifyd "$chroot" --userspec=classifyd:classifyd "$root" \
    /usr/bin/classifyd serve --config /etc/classifyd/classifyd.toml --uds /tmp/check/classifyd.sock \
    2>"$root/tmp/check.log" &
daemon=$!
for _ in $(seq 1 600); do
    [ -S "$root/tmp/check/classifyd.sock" ] && break
    kill -0 "$daemon" 2>/dev/null || { cat "$root/tmp/check.log" >&2; fail "the daemon exited"; }
    sleep 0.1
done
[ -S "$root/tmp/check/classifyd.sock" ] || fail "no socket after 60 s"
answer=$(env -i PATH=/usr/bin:/bin "$chroot" --userspec=classifyd:classifyd "$root" \
    /usr/bin/classifyd classify --uds /tmp/check/classifyd.sock "what a wonderful film") ||
    fail "classify over the socket"
echo "$answer" | grep -q '"label": *"POSITIVE"' || fail "unexpected answer: $answer"
say "answer: $(echo "$answer" | tr -d '\n' | tr -s ' ')"
kill -TERM "$daemon"
wait "$daemon" || fail "the daemon did not exit 0 on SIGTERM"
daemon=""
[ -n "$(ls -A "$root/var/cache/classifyd")" ] || fail "the daemon wrote no weights cache"

# ---- 6. upgrade, remove, purge ---------------------------------------------------------------
say "upgrade, remove, purge"
in_root dpkg -i /tmp/classifyd.deb || fail "dpkg -i over the installed package"
in_root dpkg -r classifyd || fail "dpkg -r"
[ ! -e "$root/usr/bin/classifyd" ] || fail "remove left /usr/bin/classifyd"
[ -f "$root/etc/classifyd/classifyd.toml" ] || fail "remove deleted the config"
[ -d "$root/var/cache/classifyd" ] || fail "remove deleted the cache"
[ -d "$root/var/lib/classifyd" ] || fail "remove deleted the state directory"
in_root dpkg -P classifyd || fail "dpkg -P"
for gone in /etc/classifyd /var/cache/classifyd /var/lib/classifyd; do
    [ ! -e "$root$gone" ] || fail "purge left $gone"
done
for link in multi-user.target.wants/classifyd.service sockets.target.wants/classifyd.socket; do
    [ ! -e "$root/etc/systemd/system/$link" ] || fail "purge left $link"
done

say "ok: $(basename "$deb"), $(du -k "$deb" | cut -f1) KiB"
