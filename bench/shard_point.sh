#!/usr/bin/env bash
# Point reads through pgvane: one shard vs two shards (both shards are databases of one
# throwaway PostgreSQL, so this measures routing cost, not scale-out).
#   bench/shard_point.sh            # DURATION=8 REPEATS=2 CLIENTS=50 by default
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8}"; REPEATS="${REPEATS:-2}"; CLIENTS="${CLIENTS:-50}"
PGBIN="${PG_BIN:-$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK="$(mktemp -d /tmp/pgvane-shardbench.XXXXXX)"; chmod 755 "$WORK"
AS=(); if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK"; AS=(runuser -u postgres --); fi
PGPORT="$(free_port)"; VPORT="$(free_port)"; VPID=""
cleanup() { [ -n "$VPID" ] && kill "$VPID" 2>/dev/null; "${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
[ -x target/release/pgvane ] || cargo build --release --quiet
"${AS[@]}" "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust >/dev/null
printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nfsync = off\nmax_connections = 300\n" "$PGPORT" "$WORK" >> "$WORK/data/postgresql.conf"
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
P=(psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres)
"${P[@]}" -c "CREATE ROLE app LOGIN PASSWORD 'app-secret'"
for d in s1_0 s2_0 s2_1; do
  "${P[@]}" -c "CREATE DATABASE $d OWNER app"
  PGPASSWORD=app-secret pgbench -i -s 5 -q -h 127.0.0.1 -p "$PGPORT" -U app "$d" >/dev/null 2>&1
done
cat > "$WORK/pgvane.toml" <<CONF
[general]
listen_addr = "127.0.0.1:$VPORT"
default_pool_size = 20
[[users]]
name = "app"
password = "app-secret"
[[databases]]
name = "one"
  [[databases.shards]]
  primary = { host = "127.0.0.1", port = $PGPORT, dbname = "s1_0" }
[[databases]]
name = "two"
  [[databases.shards]]
  primary = { host = "127.0.0.1", port = $PGPORT, dbname = "s2_0" }
  [[databases.shards]]
  primary = { host = "127.0.0.1", port = $PGPORT, dbname = "s2_1" }
  [[databases.sharded_tables]]
  table = "pgbench_accounts"
  column = "aid"
  type = "integer"
CONF
target/release/pgvane --config "$WORK/pgvane.toml" > "$WORK/pgvane.log" 2>&1 & VPID=$!
sleep 0.5
printf '\\set aid random(1, 500000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n' > "$WORK/point.sql"
echo "repeat mode database tps"
for r in $(seq 1 "$REPEATS"); do for m in simple extended prepared; do for db in one two; do
  t=$(PGPASSWORD=app-secret pgbench -n -f "$WORK/point.sql" -c "$CLIENTS" -j 2 -T "$DURATION" -M "$m" -h 127.0.0.1 -p "$VPORT" -U app "$db" 2>&1 | awk '/^tps/ {print $3}')
  echo "$r $m $db $t"
done; done; done
