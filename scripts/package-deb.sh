#!/usr/bin/env bash
# Builds the Debian package: the release binary, its man pages, then cargo-deb with the layout
# in Cargo.toml ([package.metadata.deb]). Prints the .deb's path on stdout.
#
#   scripts/package-deb.sh                      # -> target/debian/classifyd_<version>-1_amd64.deb
#   CARGO_TARGET_DIR=/some/dir scripts/package-deb.sh
#   sudo apt install ./target/debian/classifyd_0.1.0-1_amd64.deb
#
# Why cargo-deb rather than dpkg-deb by hand: it generates the maintainer-script snippets from
# debhelper's own templates (dh_installsystemd, dh_installsysusers, dh_installtmpfiles), marks
# /etc as conffiles, strips, computes the shared-library dependencies, writes md5sums and the
# copyright file, all from one table, with no debian/rules build to maintain. debian/ holds only
# our own additions to the maintainer scripts (restart on upgrade, purge).
# scripts/check-deb.sh checks the result: lintian, an install into a throwaway root, the units,
# and the installed daemon serving the installed model.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qF "$cargo_deb_version"; then
    echo "installing cargo-deb $cargo_deb_version (about 2 minutes, once per machine)" >&2
    cargo install --locked cargo-deb --version "$cargo_deb_version" >&2
fi
# cargo-deb asks dpkg-shlibdeps (dpkg-dev) for the binary's library dependencies.
if ! command -v dpkg-shlibdeps >/dev/null; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpkg-dev >&2
fi

cargo build --release --locked --bin classifyd >&2
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

# Man pages from the command line's own definition (clap_mangen), one per subcommand. Under
# target/release/ so that cargo-deb finds them wherever the target directory is.
man=$target/release/man
rm -rf "$man"
"$target/release/classifyd" manpages --out "$man" >&2
gzip -9n "$man"/*.1

cargo deb --no-build --strip --locked --output "$target/debian" >&2
ls -t "$target"/debian/classifyd_*.deb | head -1
