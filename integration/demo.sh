#!/usr/bin/env bash
# pgvane demo: a throwaway local PostgreSQL (a primary, a streaming replica and two shard
# databases) with pgvane in front of it. Prints how to connect; Ctrl-C stops everything.
#
#   integration/demo.sh            # build (release) and run
#   DEMO_PORT=6432 integration/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_PORT="${DEMO_PORT:-6432}"
ADMIN_METRICS_PORT="${ADMIN_METRICS_PORT:-9930}"

find_pg_bin() {
    for d in "${PG_BIN:-}" "$(pg_config --bindir 2>/dev/null || true)" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return; }
    done
    echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2
    exit 1
}
PGBIN="$(find_pg_bin)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WORK="$(mktemp -d /tmp/pgvane-demo.XXXXXX)"
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$WORK"
    AS=(runuser -u postgres --)
fi
PRIMARY_PORT="$(free_port)"
REPLICA_PORT="$(free_port)"
PIDS=()
cleanup() {
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -d "$WORK/replica" ] && "${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/replica" stop -m immediate >/dev/null 2>&1 || true
    [ -d "$WORK/primary" ] && "${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/primary" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "== building pgvane (release)"
cargo build --release --quiet

echo "== starting PostgreSQL primary on 127.0.0.1:$PRIMARY_PORT"
"${AS[@]}" "$PGBIN/initdb" -D "$WORK/primary" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
cat >> "$WORK/primary/postgresql.conf" <<CONF
port = $PRIMARY_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_senders = 5
hot_standby = on
CONF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null
PSQL=("$PGBIN/psql" -X -q -h 127.0.0.1 -U postgres)
"${PSQL[@]}" -p "$PRIMARY_PORT" -c "CREATE ROLE app LOGIN SUPERUSER PASSWORD 'app-secret'" \
    -c "CREATE DATABASE app OWNER app" -c "CREATE DATABASE shop_0 OWNER app" -c "CREATE DATABASE shop_1 OWNER app"

echo "== starting a streaming replica on 127.0.0.1:$REPLICA_PORT"
"${AS[@]}" "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -D "$WORK/replica" -R -X stream -c fast >/dev/null
cat >> "$WORK/replica/postgresql.conf" <<CONF
port = $REPLICA_PORT
CONF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/replica" -l "$WORK/replica.log" -w start >/dev/null

cat > "$WORK/pgvane.toml" <<CONF
[general]
listen_addr = "127.0.0.1:$DEMO_PORT"
pool_mode = "transaction"
default_pool_size = 20
admin_users = ["app"]
metrics_addr = "127.0.0.1:$ADMIN_METRICS_PORT"

[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "app"
  [[databases.shards]]
  primary = { host = "127.0.0.1", port = $PRIMARY_PORT, dbname = "app" }
  replicas = [ { host = "127.0.0.1", port = $REPLICA_PORT, dbname = "app" } ]

[[databases]]
name = "shop"
  [[databases.shards]]
  primary = { host = "127.0.0.1", port = $PRIMARY_PORT, dbname = "shop_0" }
  [[databases.shards]]
  primary = { host = "127.0.0.1", port = $PRIMARY_PORT, dbname = "shop_1" }
  [[databases.sharded_tables]]
  table = "orders"
  column = "customer_id"
  type = "bigint"
CONF

echo "== starting pgvane on 127.0.0.1:$DEMO_PORT (config: $WORK/pgvane.toml)"
./target/release/pgvane --config "$WORK/pgvane.toml" &
PIDS+=($!)
for _ in $(seq 1 50); do
    (echo > "/dev/tcp/127.0.0.1/$DEMO_PORT") 2>/dev/null && break
    sleep 0.1
done

cat <<MSG

pgvane is running. Connect with:

  PGPASSWORD=app-secret psql -h 127.0.0.1 -p $DEMO_PORT -U app app      # primary + replica
  PGPASSWORD=app-secret psql -h 127.0.0.1 -p $DEMO_PORT -U app shop     # two shards
  PGPASSWORD=app-secret psql -h 127.0.0.1 -p $DEMO_PORT -U app pgvane   # admin console (SHOW POOLS;)
  curl -s http://127.0.0.1:$ADMIN_METRICS_PORT/metrics                    # Prometheus metrics

Try in app:   SELECT inet_server_port(), pg_is_in_recovery();   -- a read: the replica
              CREATE TABLE t(x int); INSERT INTO t VALUES (1);    -- writes: the primary
              EXPLAIN ROUTE SELECT * FROM t;
Press Ctrl-C to stop and remove everything.
MSG
wait
