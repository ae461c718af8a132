#!/usr/bin/env bash
# Build PgBouncer from a git tag (default pgbouncer_1_25_2, the newest release) into a cache
# directory and print the binary's path; bench/compare.sh uses it via PGBOUNCER_BIN:
#
#   PGBOUNCER_BIN="$(bash bench/build_pgbouncer.sh)" bash bench/compare.sh
#
# Source: PGBOUNCER_GIT (a clone or bare repository; default the GitHub repository), checked
# out at PGBOUNCER_TAG into $PGBOUNCER_CACHE/src-<tag> (default /tmp/pgvane-pgbouncer). Needs
# autoconf, automake, libtool, pkg-config, libevent-dev, libssl-dev (installed with apt-get
# when missing; pandoc is not needed: the man pages are skipped). A finished build is reused.
set -euo pipefail
TAG="${PGBOUNCER_TAG:-pgbouncer_1_25_2}"
GIT="${PGBOUNCER_GIT:-https://github.com/pgbouncer/pgbouncer}"
CACHE="${PGBOUNCER_CACHE:-/tmp/pgvane-pgbouncer}"
SRC="$CACHE/src-$TAG"
BIN="$SRC/pgbouncer"
log() { printf '[build_pgbouncer] %s\n' "$*" >&2; }
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
need=()
for p in autoconf automake libtool pkg-config libevent-dev libssl-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
    log "apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
mkdir -p "$CACHE"
rm -rf "$SRC"
log "checking out $TAG from $GIT"
git -c advice.detachedHead=false clone -q --depth 1 -b "$TAG" "$GIT" "$SRC" >&2
cd "$SRC"
git submodule update --init >&2 2>/dev/null || true
log "building (autogen, configure, make)"
./autogen.sh >"$CACHE/autogen.log" 2>&1
./configure --without-cares --without-pam --without-systemd >"$CACHE/configure.log" 2>&1
# The man pages need pandoc; the binary does not.
make -j"$(nproc)" pgbouncer >"$CACHE/make.log" 2>&1 || { tail -20 "$CACHE/make.log" >&2; exit 1; }
[ -x "$BIN" ] || { log "no binary at $BIN"; exit 1; }
log "$("$BIN" --version | head -1)"
echo "$BIN"
