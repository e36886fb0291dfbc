#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the store tests (installing Debian's
# postgresql package if needed) and print `export FUSION_TEST_POSTGRES_URL=...` for eval.
# Usage: eval "$(scripts/postgres.sh)"; stop with: scripts/postgres.sh stop
set -euo pipefail
PGPORT=${FUSION_PGPORT:-55432}
PGDATA=${FUSION_PGDATA:-/tmp/fusion-postgres}
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "installing postgresql" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
fi
BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "${1:-}" = stop ]; then
  as_pg "$BIN/pg_ctl" -D "$PGDATA" -m fast stop >&2 || true
  exit 0
fi
if [ ! -f "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  [ "$(id -u)" = 0 ] && chown postgres "$PGDATA"
  as_pg "$BIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
fi
if ! as_pg "$BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
  as_pg "$BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDATA" start >&2
fi
as_pg psql -q -h "$PGDATA" -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1 >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fusion') THEN
    CREATE ROLE fusion LOGIN CREATEDB PASSWORD 'fusion-test-secret';
  END IF;
END \$\$;
-- lets the tests' DROP DATABASE ... WITH (FORCE) end an autovacuum worker still in the database
GRANT pg_signal_backend TO fusion;
SQL
echo "export FUSION_TEST_POSTGRES_URL=postgresql+psycopg://fusion:fusion-test-secret@127.0.0.1:$PGPORT/postgres"
