#!/usr/bin/env bash
# Streaming replica of $PRIMARY_HOST: on first start, clone it with pg_basebackup -R (which
# writes standby.signal and primary_conninfo), then run postgres as a hot standby.
set -euo pipefail
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -q -h "$PRIMARY_HOST" -p 5432 -U "$POSTGRES_USER"; do
    echo "waiting for $PRIMARY_HOST"; sleep 1
  done
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 0700 "$PGDATA"
  PGPASSWORD="$POSTGRES_PASSWORD" gosu postgres pg_basebackup \
    -h "$PRIMARY_HOST" -p 5432 -U "$POSTGRES_USER" -D "$PGDATA" -R -X stream -c fast
fi
exec gosu postgres postgres -c hot_standby=on
