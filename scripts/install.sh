#!/usr/bin/env bash
# Installs georep where the systemd units expect it: scripts/install.sh [PREFIX] (default
# /usr/local; DESTDIR=... stages into a package root).
#   PREFIX/bin/georep                                 the release binary, stripped
#   PREFIX/share/man/man1/georep*.1                   man pages (from the clap definitions)
#   PREFIX/share/bash-completion/completions/georep   and zsh, fish completions
#   PREFIX/lib/systemd/system/georep@.service         and georep-serve.service
#   PREFIX/share/doc/georep/                          README and docs/*.md
# GEOREP_BIN=path installs that binary instead of building one (packaging, tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${1:-/usr/local}
case $PREFIX in /*) ;; *) echo "install: PREFIX must be an absolute path, not $PREFIX" >&2; exit 2 ;; esac
ROOT=${DESTDIR:-}$PREFIX
BIN=${GEOREP_BIN:-}
if [ -z "$BIN" ]; then
    command -v cargo >/dev/null || { echo "install: cargo is required (install Rust with rustup)" >&2; exit 1; }
    echo "== building georep (release: a few minutes on 2 cores the first time, seconds after)"
    cargo build --release --locked
    BIN=target/release/georep
fi
[ -x "$BIN" ] || { echo "install: $BIN is not an executable" >&2; exit 1; }

echo "== installing into $ROOT"
install -d "$ROOT/bin" "$ROOT/share/man/man1" "$ROOT/share/bash-completion/completions" \
    "$ROOT/share/zsh/site-functions" "$ROOT/share/fish/vendor_completions.d" \
    "$ROOT/lib/systemd/system" "$ROOT/share/doc/georep"
install -m 0755 "$BIN" "$ROOT/bin/georep"
if command -v strip >/dev/null; then
    strip --strip-unneeded "$ROOT/bin/georep"
else
    echo "install: strip not found (binutils): the binary is installed unstripped" >&2
fi
"$ROOT/bin/georep" man-pages "$ROOT/share/man/man1"
"$ROOT/bin/georep" completions bash > "$ROOT/share/bash-completion/completions/georep"
"$ROOT/bin/georep" completions zsh > "$ROOT/share/zsh/site-functions/_georep"
"$ROOT/bin/georep" completions fish > "$ROOT/share/fish/vendor_completions.d/georep.fish"
# The units name the binary by its installed path.
for unit in conf/systemd/*.service; do
    sed "s|/usr/local/bin/georep|$PREFIX/bin/georep|g; s|/usr/local/share/doc/georep|$PREFIX/share/doc/georep|g" \
        "$unit" > "$ROOT/lib/systemd/system/$(basename "$unit")"
    chmod 0644 "$ROOT/lib/systemd/system/$(basename "$unit")"
done
install -m 0644 README.md docs/*.md "$ROOT/share/doc/georep/"

echo "installed georep $("$ROOT/bin/georep" --version | cut -d' ' -f2) ($(du -h "$ROOT/bin/georep" | cut -f1)) into $ROOT"
echo "next: man georep; georep create --help; systemctl daemon-reload after installing units"
