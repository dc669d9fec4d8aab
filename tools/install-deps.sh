#!/usr/bin/env bash
# Installs dseek's build and test dependencies from Debian packages (skips what is present);
# clang and libclang-rt-dev are for `make fuzz` (libFuzzer).
set -eu
pkgs="build-essential pkg-config libopenblas-dev libcjson-dev libpcre2-dev python3-numpy nodejs npm clang libclang-rt-dev"
missing=""
for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"; done
# nodejs/npm may come from elsewhere (a node install outside Debian's): accept working commands
if command -v node >/dev/null && command -v npm >/dev/null; then missing=$(echo "$missing" | sed 's/\bnodejs\b//; s/\bnpm\b//'); fi
missing=$(echo $missing)
[ -z "$missing" ] && exit 0
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
echo "installing:$missing" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
