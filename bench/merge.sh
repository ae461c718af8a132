#!/usr/bin/env bash
# Cost of cross-shard merging: pgbench over 4 shards (databases of one throwaway PostgreSQL,
# so this measures pgvane's merge, not scale-out) against the same rows in one database.
# Queries: a fan-out ORDER BY ... LIMIT 10 (streaming merge), a GROUP BY with 50 groups
# (finishing query), count(*) (finishing query), and one key lookup for reference. Prints
# per query and system the median tps of REPEATS runs, and pgvane's CPU time per statement
# and per partial row it merged (utime+stime of the pgvane process over the runs).
#   bench/merge.sh                 # DURATION=8 REPEATS=3 CLIENTS=8 ROWS=200000
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8}"; REPEATS="${REPEATS:-3}"; CLIENTS="${CLIENTS:-8}"; ROWS="${ROWS:-200000}"
MODE="${MODE:-simple}"
PGBIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
VANE="${PGVANE_BIN:-target/release/pgvane}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK="$(mktemp -d /tmp/pgvane-mergebench.XXXXXX)"; chmod 755 "$WORK"
AS=(); if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK"; AS=(runuser -u postgres --); fi
PGPORT="$(free_port)"; VPORT="$(free_port)"; VPID=""
cleanup() { [ -n "$VPID" ] && kill "$VPID" 2>/dev/null; "${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
[ -x "$VANE" ] || cargo build --release --quiet
"${AS[@]}" "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust >/dev/null
printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nfsync = off\nmax_connections = 300\n" "$PGPORT" "$WORK" >> "$WORK/data/postgresql.conf"
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
P=(psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres)
"${P[@]}" -c "CREATE ROLE app LOGIN PASSWORD 'app-secret'"
SCHEMA="CREATE TABLE orders(customer_id bigint, id bigint, amount int, region int, PRIMARY KEY (customer_id, id));"
for d in one s0 s1 s2 s3; do "${P[@]}" -c "CREATE DATABASE $d OWNER app"; "${P[@]}" -d "$d" -c "$SCHEMA" -c "ALTER TABLE orders OWNER TO app"; done
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
  primary = { host = "127.0.0.1", port = $PGPORT, dbname = "one" }
[[databases]]
name = "four"
$(for i in 0 1 2 3; do printf '  [[databases.shards]]\n  primary = { host = "127.0.0.1", port = %s, dbname = "s%s" }\n' "$PGPORT" "$i"; done)
  [[databases.sharded_tables]]
  table = "orders"
  column = "customer_id"
  type = "bigint"
CONF
"$VANE" --config "$WORK/pgvane.toml" > "$WORK/pgvane.log" 2>&1 & VPID=$!
sleep 0.5
# The same rows in the single database and, placed by pgvane, in the 4 shards.
GEN="SELECT (g % 5000)::bigint, g::bigint, (g * 37) % 1000, g % 50 FROM generate_series(1, $ROWS) g"
"${P[@]}" -d one -c "INSERT INTO orders $GEN"
for i in 0 1 2 3; do
  "${P[@]}" -d "s$i" -c "CREATE TABLE hp (customer_id bigint) PARTITION BY HASH (customer_id); CREATE TABLE hp_x PARTITION OF hp FOR VALUES WITH (MODULUS 4, REMAINDER $i)" \
    -c "INSERT INTO orders SELECT * FROM ($GEN) r(c, i, a, g) WHERE satisfies_hash_partition('hp'::regclass, 4, $i, c)" -c "ANALYZE orders"
done
"${P[@]}" -d one -c "ANALYZE orders"
declare -A SQL=(
  [order_limit]="SELECT customer_id, id, amount FROM orders ORDER BY amount DESC, id LIMIT 10;"
  [group_by]="SELECT region, count(*), sum(amount), avg(amount) FROM orders GROUP BY region;"
  [count]="SELECT count(*) FROM orders;"
  [key_lookup]="\\set c random(1, 4999)
SELECT id, amount FROM orders WHERE customer_id = :c;"
)
# Partial rows pgvane merges per statement (4 shards): 10 each, 50 groups each, 1 each, 0.
declare -A PARTIAL=([order_limit]=40 [group_by]=200 [count]=4 [key_lookup]=0)
cpu() { awk '{print $14 + $15}' "/proc/$VPID/stat"; }
TICK="$(getconf CLK_TCK)"
echo "query system median_tps pgvane_cpu_us_per_stmt pgvane_cpu_us_per_merged_row"
for q in order_limit group_by count key_lookup; do
  printf '%s\n' "${SQL[$q]}" > "$WORK/$q.sql"
  for sys in one four; do
    tps=(); c0=$(cpu); n=0
    for r in $(seq 1 "$REPEATS"); do
      out=$(PGPASSWORD=app-secret pgbench -n -f "$WORK/$q.sql" -c "$CLIENTS" -j 2 -T "$DURATION" -M "$MODE" -h 127.0.0.1 -p "$VPORT" -U app "$sys" 2>&1)
      tps+=("$(awk '/^tps/ {print $3}' <<<"$out")")
      n=$((n + $(awk '/number of transactions actually processed/ {print $NF}' <<<"$out" | cut -d/ -f1)))
    done
    c1=$(cpu)
    med=$(printf '%s\n' "${tps[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    us=$(awk -v d=$((c1 - c0)) -v t="$TICK" -v n="$n" 'BEGIN {printf "%.1f", d / t * 1e6 / (n ? n : 1)}')
    rows=$([ "$sys" = four ] && echo "${PARTIAL[$q]}" || echo 0)
    per_row=$(awk -v u="$us" -v r="$rows" 'BEGIN {if (r > 0) printf "%.2f", u / r; else print "-"}')
    echo "$q $sys $med $us $per_row"
  done
done
