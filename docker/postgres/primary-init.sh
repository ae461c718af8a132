#!/usr/bin/env bash
# Runs once when the primary's data directory is created (docker-entrypoint-initdb.d):
# lets the replicas stream WAL. The `app` role is the image's superuser, so it may replicate.
set -euo pipefail
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
