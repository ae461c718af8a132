#!/usr/bin/env bash
# PostgreSQL 15's own regression suite (src/test/regress, parallel_schedule, as
# `make installcheck-parallel` runs it) against a throwaway PostgreSQL 15: once directly, then
# through pgvane in session mode and in transaction mode. Prints one summary line per run:
#
#   direct: N of M tests failed
#   pgvane session mode: N of M tests failed
#   pgvane transaction mode: N of M tests failed
#
#   bash integration/pg_regress.sh
#   PGVANE_REGRESS_MODES="transaction" bash integration/pg_regress.sh   # some runs only
#
# Slow (a few minutes per run) and outside `cargo test`. Everything it fetches and builds is
# cached in $PGVANE_REGRESS_CACHE (default /tmp/pgvane-regress): the postgresql-15 Debian
# source package of the installed server's version, regress.so built from its regress.c, and
# each run's regression.diffs / regression.out / pgvane log (regression-<mode>.diffs, ...).
#
# Each run gets a fresh cluster (initdb -E UTF8 --locale=C, max_prepared_transactions = 2 as
# pg_regress's temp instance has) and, for the pgvane runs, a fresh pgvane. The database
# `regression` is created by pg_regress itself directly against PostgreSQL (its own DROP/CREATE
# DATABASE + ALTER DATABASE ... SET lc_messages etc.); the pgvane runs then run the tests with
# --use-existing through pgvane (auth_type = "trust", one [[users]] entry for the superuser that
# pg_regress logs in as, one [[databases]] entry for `regression`). The suite never logs in as
# any other role (its regress_* roles are used through SET ROLE / SET SESSION AUTHORIZATION, and
# its \c reconnects keep user and database).
#
# Environment: PG_BIN (default /usr/lib/postgresql/15/bin), PGVANE_BIN (default: cargo build
# --release and target/release/pgvane), PGVANE_REGRESS_CACHE, PGVANE_REGRESS_MODES (any of
# "direct session transaction"), PGVANE_REGRESS_POOL_SIZE (default 40),
# PGVANE_REGRESS_TIMEOUT (seconds per run, default 1800), PGVANE_REGRESS_GENERAL (extra lines
# for pgvane's [general] section, e.g. "server_close_on_library_load = true").
#
# Exit status: 0 when every run finished (whatever it counted), 1 when a run could not finish
# (setup failure, timeout, pg_regress error).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

PG_MAJOR=15
PGBIN="${PG_BIN:-/usr/lib/postgresql/$PG_MAJOR/bin}"
CACHE="${PGVANE_REGRESS_CACHE:-/tmp/pgvane-regress}"
MODES="${PGVANE_REGRESS_MODES:-direct session transaction}"
POOL_SIZE="${PGVANE_REGRESS_POOL_SIZE:-40}"
RUN_TIMEOUT="${PGVANE_REGRESS_TIMEOUT:-1800}"
DBUSER=postgres

log() { echo "[pg_regress.sh] $*" >&2; }
die() { log "$*"; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

[ -x "$PGBIN/postgres" ] && [ -x "$PGBIN/initdb" ] && [ -x "$PGBIN/pg_ctl" ] \
    || die "PostgreSQL $PG_MAJOR server binaries not in $PGBIN (apt-get install postgresql-$PG_MAJOR, or set PG_BIN)"
"$PGBIN/postgres" --version | grep -q "PostgreSQL) $PG_MAJOR\." \
    || die "$PGBIN/postgres is not PostgreSQL $PG_MAJOR: $("$PGBIN/postgres" --version)"
PG_CONFIG="$PGBIN/pg_config"
[ -x "$PG_CONFIG" ] || PG_CONFIG="$(command -v pg_config || true)"

# The installed server's Debian package version: the suite is fetched at exactly that version.
PKG_VERSION="$(dpkg-query -W -f='${Version}' "postgresql-$PG_MAJOR" 2>/dev/null || true)"
[ -n "$PKG_VERSION" ] || die "postgresql-$PG_MAJOR is not installed as a Debian package (dpkg-query found nothing)"

# ---------------------------------------------------------------------------------------------
# Packages: pg_regress (postgresql-client-15), server headers (postgresql-server-dev-15, pinned to
# the server's version so that installing it never upgrades the running server), dpkg-dev.
apt_updated=0
apt_update_once() { [ "$apt_updated" = 1 ] || { apt-get update -qq >/dev/null; apt_updated=1; }; }
apt_install() {
    is_root && command -v apt-get >/dev/null || die "missing packages; install them first: apt-get install $*"
    apt_update_once
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}
PGXS_DIR="/usr/lib/postgresql/$PG_MAJOR/lib/pgxs"
[ -n "$PG_CONFIG" ] && PGXS_DIR="$(dirname "$(dirname "$("$PG_CONFIG" --pgxs)")")"
PG_REGRESS="$PGXS_DIR/test/regress/pg_regress"
[ -x "$PG_REGRESS" ] || apt_install "postgresql-client-$PG_MAJOR=$PKG_VERSION"
[ -x "$PG_REGRESS" ] || die "pg_regress not found at $PG_REGRESS"
SERVER_INC="$("$PG_CONFIG" --includedir-server)"
[ -f "$SERVER_INC/postgres.h" ] || apt_install "postgresql-server-dev-$PG_MAJOR=$PKG_VERSION"
command -v dpkg-source >/dev/null || apt_install dpkg-dev
command -v make >/dev/null && command -v gcc >/dev/null || apt_install make gcc
command -v python3 >/dev/null || die "python3 is needed (free ports)"

# ---------------------------------------------------------------------------------------------
# The suite: `apt-get source postgresql-15=<server version>` (deb-src lines are added for the
# configured Debian repositories when apt has none).
mkdir -p "$CACHE"
chmod 755 "$CACHE"
SRC="$CACHE/postgresql-$PKG_VERSION"
REGRESS_DIR="$SRC/src/test/regress"

add_deb_src() {
    is_root || die "no deb-src repository for postgresql-$PG_MAJOR; add deb-src lines to apt's sources (as root)"
    python3 - >/etc/apt/sources.list.d/pgvane-deb-src.list <<'PY'
import glob, re
out = []
def add(line):
    if line not in out:
        out.append(line)
# One-line format (sources.list, *.list).
for f in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    if f.endswith("pgvane-deb-src.list"):
        continue
    try:
        lines = open(f).read().splitlines()
    except OSError:
        continue
    for line in lines:
        s = line.strip()
        if s.startswith("deb ") and "debian" in s:
            add("deb-src " + s[4:])
# deb822 format (*.sources).
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(f).read()):
        fields = {}
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#") or line[0] in " \t":
                continue
            k, _, v = line.partition(":")
            fields[k.strip().lower()] = v.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        uris = fields.get("uris", "").split()
        if not any("debian" in u for u in uris):
            continue
        signed = fields.get("signed-by", "")
        opt = f"[signed-by={signed}] " if signed.startswith("/") else ""
        for u in uris:
            for suite in fields.get("suites", "").split():
                add(f"deb-src {opt}{u} {suite} {fields.get('components', '')}".rstrip())
print("\n".join(out))
PY
    [ -s /etc/apt/sources.list.d/pgvane-deb-src.list ] || die "no Debian repository configured for apt"
    log "added deb-src lines: /etc/apt/sources.list.d/pgvane-deb-src.list"
    apt-get update -qq >/dev/null
    apt_updated=1
}

# The source versions apt knows (read whole: `grep -q` on a pipe would fail under pipefail).
src_versions() { apt-cache showsrc "postgresql-$PG_MAJOR" 2>/dev/null | awk '/^Version:/ {print $2}' || true; }
if [ ! -f "$REGRESS_DIR/parallel_schedule" ]; then
    if ! src_versions | grep -qxF "$PKG_VERSION"; then
        is_root && apt_update_once
        [ -n "$(src_versions)" ] || add_deb_src
    fi
    src_versions | grep -qxF "$PKG_VERSION" \
        || die "the source of postgresql-$PG_MAJOR $PKG_VERSION (the installed server) is not available from apt"
    DL="$CACHE/download"
    rm -rf "$DL" "$SRC"
    mkdir -p "$DL"
    log "fetching the postgresql-$PG_MAJOR $PKG_VERSION source package into $CACHE"
    (cd "$DL" && apt-get source -qq --download-only "postgresql-$PG_MAJOR=$PKG_VERSION" >/dev/null 2>&1) \
        || die "apt-get source postgresql-$PG_MAJOR=$PKG_VERSION failed"
    # (apt has checked the files against the signed Release; gpgv's "no public key" for the
    # .dsc itself goes to the log.)
    (cd "$DL" && dpkg-source -x ./*.dsc "$SRC" >"$CACHE/dpkg-source.log" 2>&1) \
        || { cat "$CACHE/dpkg-source.log" >&2; die "dpkg-source -x failed"; }
    rm -rf "$DL" "$CACHE"/postgresql-"$PG_MAJOR"_*.orig.tar.*
fi
[ -f "$REGRESS_DIR/parallel_schedule" ] || die "no $REGRESS_DIR/parallel_schedule"

# ---------------------------------------------------------------------------------------------
# --dlpath: regress.so (built from the suite's regress.c with PGXS), autoinc.so and refint.so
# (contrib/spi, shipped with the server; built from the source when missing).
LIBDIR="$CACHE/lib-$PKG_VERSION"
if [ ! -f "$LIBDIR/regress.so" ] || [ ! -f "$LIBDIR/autoinc.so" ] || [ ! -f "$LIBDIR/refint.so" ]; then
    log "building regress.so"
    rm -rf "$LIBDIR"
    mkdir -p "$LIBDIR/build"
    cp "$REGRESS_DIR/regress.c" "$LIBDIR/build/"
    printf 'MODULES = regress\nPGXS := $(shell $(PG_CONFIG) --pgxs)\ninclude $(PGXS)\n' >"$LIBDIR/build/Makefile"
    make -s -C "$LIBDIR/build" PG_CONFIG="$PG_CONFIG" with_llvm=no >"$LIBDIR/build.log" 2>&1 \
        || { cat "$LIBDIR/build.log" >&2; die "building regress.so failed"; }
    cp "$LIBDIR/build/regress.so" "$LIBDIR/"
    PKGLIB="$("$PG_CONFIG" --pkglibdir)"
    for m in autoinc refint; do
        if [ -f "$PKGLIB/$m.so" ]; then
            cp "$PKGLIB/$m.so" "$LIBDIR/"
        else
            mkdir -p "$LIBDIR/spi"
            cp "$SRC/contrib/spi/$m.c" "$LIBDIR/spi/"
            printf 'MODULES = %s\nPGXS := $(shell $(PG_CONFIG) --pgxs)\ninclude $(PGXS)\n' "$m" >"$LIBDIR/spi/Makefile"
            make -s -C "$LIBDIR/spi" PG_CONFIG="$PG_CONFIG" with_llvm=no >>"$LIBDIR/build.log" 2>&1 \
                || { cat "$LIBDIR/build.log" >&2; die "building $m.so failed"; }
            cp "$LIBDIR/spi/$m.so" "$LIBDIR/"
            rm -f "$LIBDIR/spi/Makefile" "$LIBDIR/spi/$m.c"
        fi
    done
fi
chmod -R a+rX "$CACHE"

# ---------------------------------------------------------------------------------------------
# pgvane.
case " $MODES " in *" session "*|*" transaction "*) NEED_PGVANE=1 ;; *) NEED_PGVANE=0 ;; esac
if [ "$NEED_PGVANE" = 1 ]; then
    if [ -n "${PGVANE_BIN:-}" ]; then
        VANE="$PGVANE_BIN"
    else
        log "building pgvane (cargo build --release)"
        cargo build --release --quiet
        VANE="$ROOT/target/release/pgvane"
    fi
    [ -x "$VANE" ] || die "no pgvane binary at $VANE"
fi

# ---------------------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WORK="$(mktemp -d /tmp/pgvane-regress-run.XXXXXX)"
chmod 755 "$WORK"
AS=()
if is_root; then
    chown postgres "$WORK"
    AS=(runuser -u postgres --)
fi
PGDATA_DIR=""
PG_PID=""
VANE_PID=""
stop_pgvane() {
    if [ -n "$VANE_PID" ]; then
        kill -TERM "$VANE_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$VANE_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$VANE_PID" 2>/dev/null || true
        wait "$VANE_PID" 2>/dev/null || true
        VANE_PID=""
    fi
}
stop_postgres() {
    if [ -n "$PGDATA_DIR" ] && [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA_DIR" stop -m fast -t 30 >/dev/null 2>&1 \
            || "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA_DIR" stop -m immediate >/dev/null 2>&1 || true
    fi
    # The postmaster by its pid, should pg_ctl have failed.
    if [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; then
        kill -QUIT "$PG_PID" 2>/dev/null || true
    fi
    PG_PID=""
    PGDATA_DIR=""
}
cleanup() {
    trap - EXIT INT TERM
    stop_pgvane
    stop_postgres
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_postgres() { # $1 = name
    PGDATA_DIR="$WORK/$1/data"
    PG_PORT="$(free_port)"
    "${AS[@]}" mkdir -p "$WORK/$1"
    "${AS[@]}" "$PGBIN/initdb" -D "$PGDATA_DIR" -U "$DBUSER" --auth=trust -E UTF8 --locale=C -N >"$WORK/$1/initdb.log" 2>&1 \
        || { cat "$WORK/$1/initdb.log" >&2; die "initdb failed"; }
    # pg_regress's temp-instance settings (max_prepared_transactions = 2, so prepared_xacts runs
    # its full test), plus loopback-only listening; fsync off for speed.
    "${AS[@]}" tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_prepared_transactions = 2
fsync = off
lc_messages = 'C'
log_autovacuum_min_duration = 0
log_checkpoints = on
log_line_prefix = '%m %b[%p] %q%a '
log_lock_waits = on
log_temp_files = 128kB
CONF
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$WORK/$1/postgres.log" -w -t 60 start >/dev/null \
        || { cat "$WORK/$1/postgres.log" >&2; die "PostgreSQL did not start"; }
    PG_PID="$(head -1 "$PGDATA_DIR/postmaster.pid")"
}

start_pgvane() { # $1 = pool mode
    VANE_PORT="$(free_port)"
    CONF="$WORK/pgvane-$1.toml"
    cat >"$CONF" <<CONF
[general]
listen_addr = "127.0.0.1:$VANE_PORT"
pool_mode = "$1"
auth_type = "trust"
default_pool_size = $POOL_SIZE
max_client_conn = 1000
${PGVANE_REGRESS_GENERAL:-}

[[users]]
name = "$DBUSER"

[[databases]]
name = "regression"

[[databases.shards]]
primary = { host = "127.0.0.1", port = $PG_PORT, dbname = "regression" }
CONF
    cp "$CONF" "$CACHE/pgvane-$1.toml"
    RUST_LOG="${RUST_LOG:-warn}" "$VANE" --config "$CONF" >"$CACHE/pgvane-$1.log" 2>&1 &
    VANE_PID=$!
    for _ in $(seq 1 100); do
        if "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$VANE_PORT" -U "$DBUSER" -d regression -At -c 'SELECT 1' >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$VANE_PID" 2>/dev/null || { cat "$CACHE/pgvane-$1.log" >&2; die "pgvane exited"; }
        sleep 0.2
    done
    cat "$CACHE/pgvane-$1.log" >&2
    die "pgvane did not accept connections on 127.0.0.1:$VANE_PORT"
}

# pg_regress as `make installcheck-parallel` runs it (--max-concurrent-tests=20); its output dir
# is $CACHE/run-<mode> (results/, regression.diffs, regression.out).
run_pg_regress() { # $1 = outdir, $2 = port, rest = extra options
    local out="$1" port="$2"
    shift 2
    rm -rf "$out"
    mkdir -p "$out"
    is_root && chown postgres "$out"
    "${AS[@]}" timeout -k 30 "$RUN_TIMEOUT" "$PG_REGRESS" \
        --inputdir="$REGRESS_DIR" --outputdir="$out" --bindir="$PGBIN" --dlpath="$LIBDIR" \
        --max-concurrent-tests=20 --host=127.0.0.1 --port="$port" --user="$DBUSER" "$@"
}

summary() { # $1 = pg_regress stdout file -> "N of M tests failed[...]"
    local line
    line="$(grep -E '^ (All [0-9]+ tests passed|[0-9]+ of [0-9]+ tests (passed|failed))' "$1" | tail -1 | sed 's/^ *//; s/\. *$//')"
    case "$line" in
        All*) echo "0 of $(echo "$line" | awk '{print $2}') tests failed" ;;
        *"tests passed, "*) # "P of T tests passed, I failed test(s) ignored"
            echo "$line" | awk '{print "0 of " $3 " tests failed (" $7 " ignored failure(s))"}' ;;
        "") return 1 ;;
        *) echo "$line" ;;
    esac
}

RESULTS=()
STATUS=0
for mode in $MODES; do
    case "$mode" in
        direct) label="direct" ;;
        session | transaction) label="pgvane $mode mode" ;;
        *) die "unknown mode '$mode' (direct, session, transaction)" ;;
    esac
    log "== $label"
    start_postgres "$mode"
    out="$CACHE/run-$mode"
    rc=0
    if [ "$mode" = direct ]; then
        run_pg_regress "$out" "$PG_PORT" --schedule="$REGRESS_DIR/parallel_schedule" \
            >"$CACHE/regression-$mode.stdout" 2>&1 || rc=$?
    else
        # DROP/CREATE DATABASE regression (and its ALTER DATABASE ... SET lc_messages, ...) by
        # pg_regress itself, directly against PostgreSQL: a pg_regress run with no tests.
        run_pg_regress "$WORK/createdb-$mode" "$PG_PORT" >"$WORK/createdb-$mode.log" 2>&1 \
            || { cat "$WORK/createdb-$mode.log" >&2; die "creating the regression database failed"; }
        start_pgvane "$mode"
        run_pg_regress "$out" "$VANE_PORT" --use-existing --schedule="$REGRESS_DIR/parallel_schedule" \
            >"$CACHE/regression-$mode.stdout" 2>&1 || rc=$?
        stop_pgvane
    fi
    cp "$WORK/$mode/postgres.log" "$CACHE/postgres-$mode.log" 2>/dev/null || true
    stop_postgres
    for f in regression.diffs regression.out; do
        rm -f "$CACHE/${f/./-$mode.}"
        [ -f "$out/$f" ] && cp "$out/$f" "$CACHE/${f/./-$mode.}"
    done
    if line="$(summary "$CACHE/regression-$mode.stdout")"; then
        RESULTS+=("$label: $line")
    else
        finished="$(grep -cE '\.\.\. +(ok|FAILED|failed \(ignored\))' "$CACHE/regression-$mode.stdout" || true)"
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            RESULTS+=("$label: timed out after ${RUN_TIMEOUT}s ($finished tests had finished)")
        else
            RESULTS+=("$label: pg_regress exited with $rc without a summary ($finished tests had finished; see $CACHE/regression-$mode.stdout)")
        fi
        STATUS=1
    fi
    log "$label: ${RESULTS[-1]#*: } (diffs: $CACHE/regression-$mode.diffs)"
done

printf '%s\n' "${RESULTS[@]}"
exit "$STATUS"
