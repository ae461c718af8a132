#!/usr/bin/env bash
# Side-by-side benchmark: pgbench directly against PostgreSQL, through PgBouncer and through
# pgvane (read/write split off and on), plus a 10,000-connection scale test of both proxies.
# Everything runs on this machine over loopback in a temp dir and is removed at the end
# (also on Ctrl-C or failure). See bench/README.md.
#
#   bench/compare.sh                                      # full run (about an hour)
#   DURATION=3 REPEATS=1 CLIENTS="1 50" bench/compare.sh  # quick smoke run
#
# Results: bench/results/<date>.md (tables), <date>.csv (medians), <date>-runs.csv (every
# run), <date>-conn.csv (connection scale).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

# ---- knobs ------------------------------------------------------------------------------
DURATION="${DURATION:-15}"              # seconds per pgbench run
REPEATS="${REPEATS:-3}"                 # runs per (mode, clients, system); medians reported
CLIENTS="${CLIENTS:-1 50 100 500}"      # pgbench -c values
MODES="${MODES:-select-simple select-extended select-prepared tpcb-simple}"
SYSTEMS="${SYSTEMS:-direct pgbouncer pgvane pgvane-split}"
JOBS="${JOBS:-2}"                       # pgbench -j (capped at the client count)
SCALE="${SCALE:-10}"                    # pgbench -i -s
POOL_SIZE="${POOL_SIZE:-20}"            # default_pool_size of both proxies
PGVANE_WORKERS="${PGVANE_WORKERS:-0}"   # pgvane [general] workers (0 = one per core)
WARMUP="${WARMUP:-3}"                   # seconds of select-only per system before measuring (0 = off)
CONN_SCALE="${CONN_SCALE:-10000}"       # idle connections for the scale test (0 = skip it)
CONN_ACTIVE="${CONN_ACTIVE:-1000}"      # how many of them then run SELECT 1 in a loop
CONN_SECONDS="${CONN_SECONDS:-5}"       # how long the active phase lasts
CONN_SYSTEMS="${CONN_SYSTEMS:-pgbouncer pgvane}"
BUILD="${BUILD:-1}"                     # 1 = cargo build --release first; 0 = use existing binaries
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PGVANE_BIN="${PGVANE_BIN:-$TARGET_DIR/release/pgvane}"
CONN_SCALE_BIN="${CONN_SCALE_BIN:-$TARGET_DIR/release/examples/conn_scale}"
RESULTS_DIR="${RESULTS_DIR:-$ROOT/bench/results}"
KEEP_WORK="${KEEP_WORK:-0}"             # 1 = leave the temp dir (logs, configs) behind
NOFILE="${NOFILE:-30000}"               # open-files limit wanted for the proxies and the tool

PASSWORD="bench-secret"
DB="bench"
USER_NAME="bench"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for m in $MODES; do
    case "$m" in select-simple|select-extended|select-prepared|tpcb-simple|tpcb-extended|tpcb-prepared) ;;
        *) die "unknown mode '$m' (select-simple select-extended select-prepared tpcb-simple tpcb-extended tpcb-prepared)";; esac
done
for s in $SYSTEMS; do
    case "$s" in direct|pgbouncer|pgvane|pgvane-split|pgvane-cache) ;; *) die "unknown system '$s'";; esac
done
[ "$(id -u)" -eq 0 ] || die "run as root (PostgreSQL and PgBouncer are started as the postgres user with runuser)"
id postgres >/dev/null 2>&1 || die "no postgres user (apt-get install postgresql)"
has() { case " $SYSTEMS $CONN_SYSTEMS " in *" $1 "*) return 0;; esac; return 1; }
[ "$CONN_SCALE" -gt 0 ] || CONN_SYSTEMS=""

# ---- tools ------------------------------------------------------------------------------
find_pg_bin() {
    local d
    for d in "${PG_BIN:-}" "$(pg_config --bindir 2>/dev/null || true)" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/pgbench" ] && { echo "$d"; return; }
    done
    die "PostgreSQL server binaries not found (apt-get install postgresql postgresql-contrib)"
}
PGBIN="$(find_pg_bin)"
# PGBOUNCER_BIN: the PgBouncer to measure (bench/build_pgbouncer.sh builds 1.25.2 and prints
# its path); default the installed one (Debian's 1.18), installed with apt-get when missing.
PGBOUNCER_BIN="${PGBOUNCER_BIN:-}"
if has pgbouncer && [ -z "$PGBOUNCER_BIN" ]; then
    PGBOUNCER_BIN="$(command -v pgbouncer || true)"
    [ -z "$PGBOUNCER_BIN" ] && [ -x /usr/sbin/pgbouncer ] && PGBOUNCER_BIN=/usr/sbin/pgbouncer
    if [ -z "$PGBOUNCER_BIN" ]; then
        log "installing pgbouncer (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        # policy-rc.d-less containers may try to start the packaged service; we never use it.
        apt-get install -y -qq pgbouncer >/dev/null
        PGBOUNCER_BIN="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
    fi
fi
if has pgbouncer; then [ -x "$PGBOUNCER_BIN" ] || die "pgbouncer not found ($PGBOUNCER_BIN)"; fi
command -v python3 >/dev/null || die "python3 is needed for the report"

if [ "$BUILD" = 1 ]; then
    log "building pgvane and examples/conn_scale (cargo build --release)"
    cargo build --release --quiet --bin pgvane
    [ -z "$CONN_SYSTEMS" ] || cargo build --release --quiet --example conn_scale
fi
if has pgvane || has pgvane-split || has pgvane-cache; then [ -x "$PGVANE_BIN" ] || die "$PGVANE_BIN missing (BUILD=1 builds it)"; fi
[ -z "$CONN_SYSTEMS" ] || [ -x "$CONN_SCALE_BIN" ] || die "$CONN_SCALE_BIN missing (BUILD=1 builds it)"

# Open-files limit: PgBouncer and pgvane inherit it (PgBouncer through `ulimit` after
# runuser, whose pam_limits resets it). Without CAP_SYS_RESOURCE the hard limit caps it.
HARD_NOFILE="$(ulimit -Hn)"
if [ "$HARD_NOFILE" != unlimited ] && [ "$HARD_NOFILE" -lt "$NOFILE" ]; then
    log "open-files hard limit is $HARD_NOFILE (< $NOFILE wanted); using $HARD_NOFILE"
    NOFILE="$HARD_NOFILE"
fi
ulimit -n "$NOFILE" || die "cannot raise the open-files limit to $NOFILE"
if [ -n "$CONN_SYSTEMS" ] && [ "$NOFILE" -lt $((CONN_SCALE + 200)) ]; then
    log "open-files limit $NOFILE is too low for CONN_SCALE=$CONN_SCALE; lowering it to $((NOFILE - 200))"
    CONN_SCALE=$((NOFILE - 200))
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CLK_TCK="$(getconf CLK_TCK)"

# ---- temp dir and cleanup -----------------------------------------------------------------
WORK="$(mktemp -d /tmp/pgvane-bench.XXXXXX)"
chmod 755 "$WORK"
chown postgres "$WORK"
mkdir -p "$WORK/logs"
AS=(runuser -u postgres --)
PIDS=()            # processes started here (pgvane, runuser wrappers, conn_scale)
PGBOUNCER_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    local p i left
    [ -n "$PGBOUNCER_PID" ] && kill -TERM "$PGBOUNCER_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for i in $(seq 1 50); do   # up to 5 s for a clean exit, then SIGKILL
        left=0
        for p in $PGBOUNCER_PID "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    for p in $PGBOUNCER_PID "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    for d in replica primary; do
        [ -f "$WORK/$d/postmaster.pid" ] && "${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/$d" stop -m immediate >/dev/null 2>&1
    done
    if [ "$KEEP_WORK" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

wait_port() { # port seconds
    local i
    for i in $(seq 1 $(( $2 * 10 ))); do
        (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# ---- PostgreSQL ---------------------------------------------------------------------------
PG_PORT="$(free_port)"
log "PostgreSQL ($("$PGBIN/postgres" --version)) primary on 127.0.0.1:$PG_PORT, data in $WORK"
"${AS[@]}" "$PGBIN/initdb" -D "$WORK/primary" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >/dev/null
cat >> "$WORK/primary/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 600
shared_buffers = 256MB
# Benchmark only: no durability, so disk speed does not decide the tpcb-like numbers.
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 4GB
checkpoint_timeout = 30min
wal_level = replica
max_wal_senders = 5
hot_standby = on
password_encryption = 'scram-sha-256'
CONF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PG_PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE ROLE $USER_NAME LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE $DB OWNER $USER_NAME"
log "pgbench -i -s $SCALE"
"$PGBIN/pgbench" -i -q -s "$SCALE" -h "$WORK" -p "$PG_PORT" -U "$USER_NAME" "$DB" >"$WORK/pgbench-init.log" 2>&1 \
    || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
"${PSQL[@]}" -d "$DB" -c "VACUUM ANALYZE" -c "CHECKPOINT"
VERIFIER="$("${PSQL[@]}" -d postgres -At -c "SELECT rolpassword FROM pg_authid WHERE rolname = '$USER_NAME'")"
case "$VERIFIER" in SCRAM-SHA-256\$*) ;; *) die "expected a SCRAM verifier in pg_authid, got '$VERIFIER'";; esac

REPLICA_PORT=""
if has pgvane-split; then
    REPLICA_PORT="$(free_port)"
    log "streaming replica (pg_basebackup -R) on 127.0.0.1:$REPLICA_PORT"
    "${AS[@]}" "$PGBIN/pg_basebackup" -h "$WORK" -p "$PG_PORT" -U postgres -D "$WORK/replica" -R -X stream >/dev/null
    echo "port = $REPLICA_PORT" >> "$WORK/replica/postgresql.conf"
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/replica" -l "$WORK/replica.log" -w start >/dev/null
fi

# ---- PgBouncer ----------------------------------------------------------------------------
PGB_PORT=""
PGBOUNCER_VERSION="-"
if has pgbouncer; then
    PGB_PORT="$(free_port)"
    PGBOUNCER_VERSION="$("$PGBOUNCER_BIN" --version | head -1)"
    printf '"%s" "%s"\n' "$USER_NAME" "$VERIFIER" > "$WORK/userlist.txt"
    cat > "$WORK/pgbouncer.ini" <<INI
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 20000
max_db_connections = 0
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
log_connections = 0
log_disconnections = 0
INI
    chown postgres "$WORK/pgbouncer.ini" "$WORK/userlist.txt"
    chmod 600 "$WORK/userlist.txt"
    log "$PGBOUNCER_VERSION on 127.0.0.1:$PGB_PORT (ulimit -n $NOFILE)"
    "${AS[@]}" bash -c "ulimit -n $NOFILE && exec '$PGBOUNCER_BIN' '$WORK/pgbouncer.ini'" >"$WORK/pgbouncer.out" 2>&1 &
    PIDS+=($!)
    wait_port "$PGB_PORT" 20 || { cat "$WORK/pgbouncer.out" "$WORK/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer did not start"; }
    for _ in $(seq 1 50); do [ -s "$WORK/pgbouncer.pid" ] && break; sleep 0.1; done
    PGBOUNCER_PID="$(cat "$WORK/pgbouncer.pid")"
fi

# ---- pgvane -------------------------------------------------------------------------------
PGVANE_VERSION="-"
start_pgvane() { # name port split(true|false) [cache_unnamed_statements(true|false)]
    local name="$1" port="$2" split="$3" cache="${4:-false}" replicas=""
    [ "$split" = true ] && replicas="replicas = [ { host = \"127.0.0.1\", port = $REPLICA_PORT, dbname = \"$DB\" } ]"
    cat > "$WORK/$name.toml" <<CONF
[general]
listen_addr = "127.0.0.1:$port"
pool_mode = "transaction"
auth_type = "scram-sha-256"
default_pool_size = $POOL_SIZE
max_client_conn = 20000
workers = $PGVANE_WORKERS
cache_unnamed_statements = $cache

[[users]]
name = "$USER_NAME"
# The verifier copied from pg_authid, as in PgBouncer's auth_file; the plain password is
# what pgvane logs in to PostgreSQL with.
password = "$VERIFIER"
server_password = "$PASSWORD"

[[databases]]
name = "$DB"
  [databases.routing]
  read_write_split = $split
  [[databases.shards]]
  primary = { host = "127.0.0.1", port = $PG_PORT, dbname = "$DB" }
  $replicas
CONF
    "$PGVANE_BIN" --config "$WORK/$name.toml" --log-level warn >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$port" 20 || { cat "$WORK/$name.log" >&2; die "$name did not start"; }
    eval "PID_${name//-/_}=$pid"
}
PGVANE_PORT=""; PGVANE_SPLIT_PORT=""; PGVANE_CACHE_PORT=""
PID_pgvane=""; PID_pgvane_split=""; PID_pgvane_cache=""
if has pgvane || has pgvane-split || has pgvane-cache; then PGVANE_VERSION="$("$PGVANE_BIN" --version)"; fi
if has pgvane; then
    PGVANE_PORT="$(free_port)"
    log "$PGVANE_VERSION (split off) on 127.0.0.1:$PGVANE_PORT"
    start_pgvane pgvane "$PGVANE_PORT" false
fi
if has pgvane-split; then
    PGVANE_SPLIT_PORT="$(free_port)"
    log "$PGVANE_VERSION (split on, replica 127.0.0.1:$REPLICA_PORT) on 127.0.0.1:$PGVANE_SPLIT_PORT"
    start_pgvane pgvane-split "$PGVANE_SPLIT_PORT" true
fi
if has pgvane-cache; then
    PGVANE_CACHE_PORT="$(free_port)"
    log "$PGVANE_VERSION (cache_unnamed_statements on) on 127.0.0.1:$PGVANE_CACHE_PORT"
    start_pgvane pgvane-cache "$PGVANE_CACHE_PORT" false true
fi

port_of() {
    case "$1" in direct) echo "$PG_PORT";; pgbouncer) echo "$PGB_PORT";;
        pgvane) echo "$PGVANE_PORT";; pgvane-split) echo "$PGVANE_SPLIT_PORT";;
        pgvane-cache) echo "$PGVANE_CACHE_PORT";; esac
}
pid_of() {
    case "$1" in direct) echo "";; pgbouncer) echo "$PGBOUNCER_PID";;
        pgvane) echo "$PID_pgvane";; pgvane-split) echo "$PID_pgvane_split";;
        pgvane-cache) echo "$PID_pgvane_cache";; esac
}
cpu_ticks() { # pid -> utime+stime of the whole process (all threads), in clock ticks
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo ""; return; }
    sed -E 's/^.*\) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
rss_kib() { # pid -> VmRSS in KiB
    [ -n "$1" ] && [ -r "/proc/$1/status" ] || { echo ""; return; }
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}
alive() { # system -> fails the script if its proxy died
    local pid; pid="$(pid_of "$1")"
    [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || die "$1 (pid $pid) is no longer running; see its log (KEEP_WORK=1 keeps $WORK)"
}

export PGPASSWORD="$PASSWORD"

# ---- pgbench runs -------------------------------------------------------------------------
STAMP="$(date +%Y-%m-%d-%H%M%S)"
mkdir -p "$RESULTS_DIR"
RUNS_CSV="$RESULTS_DIR/$STAMP-runs.csv"
echo "repeat,mode,clients,system,status,tps,latency_mean_ms,latency_p99_ms,transactions,failed_tx,proxy_cpu_s,proxy_cpu_us_per_tx,proxy_rss_kib,connect_ms,error" > "$RUNS_CSV"

pgbench_args() { # mode -> pgbench options
    case "$1" in
        select-*) echo "-S -M ${1#select-}";;
        tpcb-*) echo "-M ${1#tpcb-}";;
    esac
}

if [ "$WARMUP" -gt 0 ]; then
    for s in $SYSTEMS; do
        log "warm-up: $s ($WARMUP s select-only, 10 clients)"
        "$PGBIN/pgbench" -n -S -M simple -c 10 -j 2 -T "$WARMUP" -h 127.0.0.1 -p "$(port_of "$s")" -U "$USER_NAME" "$DB" \
            >"$WORK/warmup-$s.log" 2>&1 || log "warm-up through $s failed: $(grep -m1 -iE 'error|fatal' "$WORK/warmup-$s.log" || true)"
    done
fi

max_clients=0
for c in $CLIENTS; do [ "$c" -gt "$max_clients" ] && max_clients=$c; done
if [ "$max_clients" -ge 200 ] && [ "$DURATION" -lt 10 ]; then
    log "note: with $max_clients clients, logging in takes ~2 s of the ${DURATION} s run (SCRAM on both ends); runs may end with 0 transactions"
fi
n_runs=0
total_runs=$(( REPEATS * $(wc -w <<<"$MODES") * $(wc -w <<<"$CLIENTS") * $(wc -w <<<"$SYSTEMS") ))
for r in $(seq 1 "$REPEATS"); do
  for mode in $MODES; do
    for c in $CLIENTS; do
      j=$(( c < JOBS ? c : JOBS ))
      for s in $SYSTEMS; do
        n_runs=$((n_runs + 1))
        alive "$s"
        tag="r${r}_${mode}_c${c}_${s}"
        prefix="$WORK/logs/$tag"
        pid="$(pid_of "$s")"
        cpu0="$(cpu_ticks "$pid")"
        rc=0
        # shellcheck disable=SC2046
        timeout --kill-after=10 $((DURATION + 120)) \
            "$PGBIN/pgbench" -n $(pgbench_args "$mode") -c "$c" -j "$j" -T "$DURATION" \
            --log --log-prefix="$prefix" -h 127.0.0.1 -p "$(port_of "$s")" -U "$USER_NAME" "$DB" \
            >"$prefix.out" 2>&1 || rc=$?
        cpu1="$(cpu_ticks "$pid")"
        rss="$(rss_kib "$pid")"
        cpu_s=""
        [ -n "$cpu0" ] && [ -n "$cpu1" ] && cpu_s="$(awk -v a="$cpu0" -v b="$cpu1" -v t="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / t}')"
        line="$(python3 "$ROOT/bench/report.py" run --out "$prefix.out" --log-prefix "$prefix" --rc "$rc" \
                --cpu-s "$cpu_s" --rss-kib "$rss" --repeat "$r" --mode "$mode" --clients "$c" --system "$s")"
        echo "$line" >> "$RUNS_CSV"
        rm -f "$prefix".[0-9]*   # per-transaction logs are large; the summary line has what we need
        log "[$n_runs/$total_runs] $mode c=$c $s: $(python3 "$ROOT/bench/report.py" brief "$line")"
      done
    done
  done
done

# ---- connection scale ---------------------------------------------------------------------
CONN_CSV="$RESULTS_DIR/$STAMP-conn.csv"
echo "system,connections,opened,open_failed,open_secs,rss_before_kib,rss_idle_kib,rss_after_active_kib,proxy_cpu_open_s,active,qps,lat_mean_ms,lat_p99_ms,query_errors,proxy_cpu_us_per_query,open_at_end,errors" > "$CONN_CSV"
for s in $CONN_SYSTEMS; do
    alive "$s"
    pid="$(pid_of "$s")"
    [ -n "$pid" ] || { log "connection scale: $s is not a proxy here, skipped"; continue; }
    out="$WORK/conn-$s.out"
    : > "$out"
    log "connection scale: $CONN_SCALE connections to $s, then $CONN_ACTIVE active for $CONN_SECONDS s"
    rss0="$(rss_kib "$pid")"; cpu0="$(cpu_ticks "$pid")"
    ACTIVE_SECS="$CONN_SECONDS" HOLD_SECS=3 HOLD_AFTER_SECS=2 \
        "$CONN_SCALE_BIN" 127.0.0.1 "$(port_of "$s")" "$USER_NAME" "$PASSWORD" "$DB" "$CONN_SCALE" "$CONN_ACTIVE" >"$out" 2>&1 &
    tool=$!
    PIDS+=("$tool")
    rss1=""; cpu1=""; rss2=""; cpu2=""
    deadline=$(( SECONDS + 600 ))
    while kill -0 "$tool" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
        if [ -z "$rss1" ] && grep -q '^HOLDING' "$out"; then
            sleep 1   # let the last logins settle
            rss1="$(rss_kib "$pid")"; cpu1="$(cpu_ticks "$pid")"
        fi
        if [ -z "$rss2" ] && grep -q '^ACTIVE_DONE' "$out"; then
            rss2="$(rss_kib "$pid")"; cpu2="$(cpu_ticks "$pid")"
        fi
        sleep 0.2
    done
    if kill -0 "$tool" 2>/dev/null; then log "conn_scale against $s timed out"; kill -TERM "$tool"; fi
    wait "$tool" || log "conn_scale against $s exited with an error (see below)"
    python3 "$ROOT/bench/report.py" conn --out "$out" --system "$s" --connections "$CONN_SCALE" \
        --rss "$rss0" "$rss1" "$rss2" --cpu "$cpu0" "$cpu1" "$cpu2" --clk-tck "$CLK_TCK" >> "$CONN_CSV"
    log "connection scale $s: $(tail -1 "$CONN_CSV")"
    grep -E ' error x|^warning|panicked' "$out" | head -5 >&2 || true
done

# ---- report -------------------------------------------------------------------------------
META="$RESULTS_DIR/$STAMP-meta.txt"
head_commit() {
    local h; h="$(cat "$ROOT/.git/HEAD" 2>/dev/null || true)"
    case "$h" in ref:\ *) cat "$ROOT/.git/${h#ref: }" 2>/dev/null || grep " ${h#ref: }\$" "$ROOT/.git/packed-refs" 2>/dev/null | cut -d' ' -f1 || true;;
        *) echo "$h";; esac
}
proxy_log_excerpt() { # file -> first error/warning lines
    [ -f "$1" ] && grep -aiE 'error|warn|fatal|panic' "$1" | head -8 | cut -c1-300 || true
}
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host_cores=$(nproc)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel=$(uname -r)"
    echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "postgres=$("$PGBIN/postgres" --version)"
    echo "pgbench=$("$PGBIN/pgbench" --version)"
    echo "pgbouncer=$PGBOUNCER_VERSION"
    echo "pgvane=$PGVANE_VERSION $(head_commit | cut -c1-12)"
    echo "duration=$DURATION"
    echo "repeats=$REPEATS"
    echo "clients=$CLIENTS"
    echo "modes=$MODES"
    echo "systems=$SYSTEMS"
    echo "jobs=$JOBS"
    echo "scale=$SCALE"
    echo "pool_size=$POOL_SIZE"
    echo "pgvane_workers=$PGVANE_WORKERS"
    echo "conn_scale=$CONN_SCALE"
    echo "conn_active=$CONN_ACTIVE"
    echo "conn_seconds=$CONN_SECONDS"
    echo "nofile=$NOFILE"
    for f in pgbouncer.log pgvane.log pgvane-split.log pgvane-cache.log; do
        proxy_log_excerpt "$WORK/$f" | sed "s|^|log_excerpt=${f%.log}: |"
    done
} > "$META"
python3 "$ROOT/bench/report.py" summary --runs "$RUNS_CSV" --conn "$CONN_CSV" --meta "$META" \
    --md "$RESULTS_DIR/$STAMP.md" --csv "$RESULTS_DIR/$STAMP.csv"
log "wrote $RESULTS_DIR/$STAMP.md and .csv (plus -runs.csv, -conn.csv, -meta.txt)"
cat "$RESULTS_DIR/$STAMP.md"
