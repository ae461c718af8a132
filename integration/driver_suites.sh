#!/usr/bin/env bash
# Rerun PostgreSQL drivers' own test suites directly against PostgreSQL and through pgvane in
# session and in transaction mode; print per driver the pass/fail counts per mode and the tests
# that pass directly but fail through pgvane.
#
#   bash integration/driver_suites.sh                    # psycopg node-postgres asyncpg
#   bash integration/driver_suites.sh asyncpg            # one driver
#   MODES="direct transaction" bash integration/driver_suites.sh psycopg
#
# Environment:
#   PGVANE_BIN     pgvane binary (default target/release/pgvane; build it first)
#   PG_BIN         PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)
#   WORK           where sources, venvs, logs and results go (default /tmp/pgvane-driver-suites;
#                  kept between runs so venvs and npm installs are reused)
#   TEST_TIMEOUT   seconds per test (pytest-timeout) or per node-postgres test file (default 60)
#   PSYCOPG_VERSION (3.3.4), ASYNCPG_VERSION (0.32.0): released versions installed from PyPI
#   PSYCOPG_SRC    psycopg source tree at tag $PSYCOPG_VERSION (its tests are not on PyPI);
#                  default $WORK/src/psycopg, cloned from GitHub when missing
#   NODE_PG_SRC    node-postgres source tree (default $WORK/src/node-postgres, cloned at
#                  $NODE_PG_REF, default pg@8.23.0, when missing); npm install runs when needed
# asyncpg's tests come from its PyPI sdist; its tests that start clusters of their own (standby,
# target_session_attrs) fail in every mode when run as root. Results: $WORK/results/<driver>-<mode>.tsv
# (test, pass|fail|skip), logs in $WORK/logs.
set -euo pipefail
cd "$(dirname "$0")/.."

PGVANE_BIN="$(realpath "${PGVANE_BIN:-target/release/pgvane}")"
[ -x "$PGVANE_BIN" ] || { echo "pgvane binary $PGVANE_BIN not found (cargo build --release)" >&2; exit 1; }
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL binaries not found (set PG_BIN)" >&2; exit 1; }
WORK="${WORK:-/tmp/pgvane-driver-suites}"
TEST_TIMEOUT="${TEST_TIMEOUT:-60}"
PSYCOPG_VERSION="${PSYCOPG_VERSION:-3.3.4}"
ASYNCPG_VERSION="${ASYNCPG_VERSION:-0.32.0}"
PSYCOPG_SRC="${PSYCOPG_SRC:-$WORK/src/psycopg}"
NODE_PG_SRC="${NODE_PG_SRC:-$WORK/src/node-postgres}"
NODE_PG_REF="${NODE_PG_REF:-pg@8.23.0}"
MODES="${MODES:-direct session transaction}"
DRIVERS=("$@"); [ ${#DRIVERS[@]} -gt 0 ] || DRIVERS=(psycopg node-postgres asyncpg)
for d in "${DRIVERS[@]}"; do
    case "$d" in psycopg|node-postgres|asyncpg) ;; *) echo "unknown driver $d" >&2; exit 2 ;; esac
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$WORK/src" "$WORK/logs" "$WORK/results"
RUN="$(mktemp -d /tmp/pgvane-drivers-run.XXXXXX)"   # this run's cluster and configs
chmod 755 "$RUN"; chown postgres "$RUN"
PG_PORT="$(free_port)"; VANE_PORT="$(free_port)"
PG_PID=""; VANE_PID=""
stop_pgvane() {
    if [ -n "$VANE_PID" ]; then kill "$VANE_PID" 2>/dev/null || true; wait "$VANE_PID" 2>/dev/null || true; fi
    VANE_PID=""
}
stop_pg() {
    if [ -n "$PG_PID" ]; then
        kill -INT "$PG_PID" 2>/dev/null || true
        for _ in $(seq 300); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    PG_PID=""
}
cleanup() {
    trap - EXIT INT TERM
    stop_pgvane; stop_pg
    rm -rf "$RUN"
}
trap cleanup EXIT INT TERM

# --- PostgreSQL, a new cluster for each suite run so that no run sees another's leftovers ---
# (databases or roles a suite failed to drop). Every test user is a superuser.
start_pg() {
    rm -rf "$RUN/pg"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$RUN/pg" -U postgres --auth=trust -E UTF8 \
        --locale=C.UTF-8 >"$RUN/initdb.log"
    cat >>"$RUN/pg/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$RUN'
max_connections = 300
max_prepared_transactions = 10
CONF
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$RUN/pg" -l "$RUN/postgresql.log" -w start >/dev/null
    PG_PID="$(head -1 "$RUN/pg/postmaster.pid")"
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "CREATE ROLE psy LOGIN SUPERUSER" -c "CREATE DATABASE psy_test OWNER psy" \
        -c "CREATE ROLE np LOGIN SUPERUSER" -c "CREATE DATABASE np_test OWNER np"
}

# --- pgvane: one config per mode listing every user and database the suites use -------------
# (pooluser: asyncpg's pool tests; ashesh: psycopg's test_change_password creates it)
USERS=(postgres psy np pooluser ashesh)
DBS=(postgres template1 psy_test np_test testdb asyncpg_intro_test)
write_config() { # mode -> path
    local f="$RUN/pgvane-$1.toml" u d
    printf '[general]\nlisten_addr = "127.0.0.1:%s"\npool_mode = "%s"\nauth_type = "trust"\n' "$VANE_PORT" "$1" >"$f"
    printf 'default_pool_size = 20\nadmin_users = ["postgres"]\n' >>"$f"
    for u in "${USERS[@]}"; do printf '\n[[users]]\nname = "%s"\n' "$u" >>"$f"; done
    for d in "${DBS[@]}"; do
        printf '\n[[databases]]\nname = "%s"\n\n[[databases.shards]]\n' "$d" >>"$f"
        printf 'primary = { host = "127.0.0.1", port = %s, dbname = "%s" }\n' "$PG_PORT" "$d" >>"$f"
    done
    echo "$f"
}
start_pgvane() { # mode driver
    local cfg; cfg="$(write_config "$1")"
    RUST_LOG="${RUST_LOG:-info}" "$PGVANE_BIN" --config "$cfg" >"$WORK/logs/pgvane-$2-$1.log" 2>&1 &
    VANE_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$VANE_PORT") 2>/dev/null && return
        kill -0 "$VANE_PID" 2>/dev/null || break; sleep 0.1
    done
    echo "pgvane did not start, see $WORK/logs/pgvane-$2-$1.log" >&2; exit 1
}

# junit XML -> "test<TAB>pass|fail|skip" lines
junit_tsv() {
    [ -s "$1" ] || { echo "no test results in $1 (see ${1%.xml}.out)" >&2; return; }
    python3 - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
for tc in ET.parse(sys.argv[1]).iter("testcase"):
    st = "pass"
    for child in tc:
        if child.tag in ("failure", "error"): st = "fail"; break
        if child.tag == "skipped": st = "skip"
    print(f"{tc.get('classname')}::{tc.get('name')}\t{st}")
PY
}
venv() { # dir packages... -> ensures a venv with these packages
    [ -x "$1/bin/python" ] || python3 -m venv "$1"
    "$1/bin/pip" install -q --disable-pip-version-check "${@:2}" >"$WORK/logs/pip-$(basename "$1").log" 2>&1 ||
        { echo "pip install failed, see $WORK/logs/pip-$(basename "$1").log" >&2; exit 1; }
}

# --- per-driver setup and one run: run_<driver> mode port -> $WORK/results/<driver>-<mode>.tsv
setup_psycopg() {
    if [ ! -d "$PSYCOPG_SRC/tests" ]; then
        git clone -q --depth 1 -b "$PSYCOPG_VERSION" https://github.com/psycopg/psycopg "$PSYCOPG_SRC"
    fi
    venv "$WORK/venv-psycopg" "psycopg[binary,pool,test]==$PSYCOPG_VERSION" pytest-timeout
}
run_psycopg() {
    local out="$WORK/logs/psycopg-$1"
    (cd "$PSYCOPG_SRC" && rm -rf .pytest_cache && "$WORK/venv-psycopg/bin/pytest" tests \
        -m "not slow" -p no:randomly --timeout "$TEST_TIMEOUT" -q -rfE \
        --test-dsn "host=127.0.0.1 port=$2 user=psy dbname=psy_test" \
        --junitxml="$out.xml" >"$out.out" 2>&1) || true
    junit_tsv "$out.xml" >"$WORK/results/psycopg-$1.tsv"
}

setup_node-postgres() {
    if [ ! -d "$NODE_PG_SRC/packages/pg/test/integration" ]; then
        git clone -q --depth 1 -b "$NODE_PG_REF" https://github.com/brianc/node-postgres "$NODE_PG_SRC"
    fi
    if [ ! -d "$NODE_PG_SRC/node_modules" ] || [ ! -d "$NODE_PG_SRC/packages/pg-protocol/dist" ]; then
        (cd "$NODE_PG_SRC" && npm install && npx tsc --build) >"$WORK/logs/npm-install.log" 2>&1
    fi
}
run_node-postgres() {
    local out="$WORK/logs/node-postgres-$1" res="$WORK/results/node-postgres-$1.tsv" f rc
    rm -rf "$out"; mkdir -p "$out"; : >"$res"
    (cd "$NODE_PG_SRC/packages/pg"; while read -r f; do
        rc=0
        PATH="$PG_BIN:$PATH" PGHOST=127.0.0.1 PGPORT="$2" PGUSER=np PGDATABASE=np_test PGPASSWORD= \
            PGTESTNOSSL=1 timeout "$TEST_TIMEOUT" node "$f" postgres:// >"$out/${f//\//__}.log" 2>&1 || rc=$?
        printf '%s\t%s\n' "${f#test/integration/}" "$([ $rc -eq 0 ] && echo pass || echo fail)" >>"$res"
    done < <(find test/integration -name '*-tests.js' | sort))
}

setup_asyncpg() {
    local sd="$WORK/src/asyncpg-$ASYNCPG_VERSION"
    if [ ! -d "$sd/tests" ]; then
        python3 -m pip download -q --no-deps --no-binary :all: -d "$WORK/src" "asyncpg==$ASYNCPG_VERSION"
        tar -xzf "$WORK/src/asyncpg-$ASYNCPG_VERSION.tar.gz" -C "$WORK/src"
    fi
    # Run the tests from a copy outside the sdist so that they import the installed wheel.
    rm -rf "$WORK/asyncpg-tests"; mkdir -p "$WORK/asyncpg-tests"; cp -r "$sd/tests" "$WORK/asyncpg-tests/"
    venv "$WORK/venv-asyncpg" "asyncpg==$ASYNCPG_VERSION" pytest pytest-timeout distro
}
run_asyncpg() {
    # asyncpg's _testbase uses the running server named by PGHOST/PGPORT/PGUSER/PGDATABASE
    # (pg_cluster.RunningCluster) instead of starting a temporary cluster.
    local out="$WORK/logs/asyncpg-$1"
    (cd "$WORK/asyncpg-tests" && PATH="$PG_BIN:$PATH" PGHOST=127.0.0.1 PGPORT="$2" PGUSER=postgres \
        PGDATABASE=postgres "$WORK/venv-asyncpg/bin/pytest" tests -p no:cacheprovider \
        --import-mode=importlib --tb=short --timeout "$TEST_TIMEOUT" -q -rfE \
        --junitxml="$out.xml" >"$out.out" 2>&1) || true
    junit_tsv "$out.xml" >"$WORK/results/asyncpg-$1.tsv"
}

# --- run everything, then summarise ---------------------------------------------------------
for d in "${DRIVERS[@]}"; do
    echo "== $d: setup"; "setup_$d"
    for m in $MODES; do
        echo "== $d: $m (PostgreSQL $PG_BIN on port $PG_PORT, pgvane on $VANE_PORT)"
        start_pg
        if [ "$m" = direct ]; then "run_$d" direct "$PG_PORT"
        else start_pgvane "$m" "$d"; "run_$d" "$m" "$VANE_PORT"; stop_pgvane; fi
        stop_pg; cp "$RUN/postgresql.log" "$WORK/logs/postgresql-$d-$m.log"
    done
done

echo
echo "================ summary (results in $WORK/results) ================"
for d in "${DRIVERS[@]}"; do
    line=""
    for m in $MODES; do
        r="$WORK/results/$d-$m.tsv"
        line+="$m: $(awk -F'\t' '$2=="pass"{p++} $2=="fail"{f++} END{printf "%d passed %d failed", p, f}' "$r") / "
    done
    echo "$d: ${line% / }"
    for m in $MODES; do
        [ "$m" = direct ] && continue
        [ -f "$WORK/results/$d-direct.tsv" ] || continue
        only="$(awk -F'\t' 'NR==FNR { if ($2=="pass") ok[$1]=1; next } $2=="fail" && ($1 in ok) { print "    " $1 }' \
            "$WORK/results/$d-direct.tsv" "$WORK/results/$d-$m.tsv")"
        echo "  pass directly, fail in $m mode: $(printf '%s' "$only" | grep -c . || true)"
        [ -n "$only" ] && echo "$only"
    done
done
