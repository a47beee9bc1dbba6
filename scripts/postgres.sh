#!/usr/bin/env bash
# Start (or stop) a throw-away PostgreSQL server on 127.0.0.1 for the store's contract tests.
#   eval "$(bash scripts/postgres.sh start)"   # prints: export PRUNETUNE_TEST_POSTGRES_URL=...
#   bash scripts/postgres.sh stop
#   PRUNETUNE_PG_OPTS="-c max_connections=200" bash scripts/postgres.sh start   # extra server options
# Installs Debian's postgresql when missing (as root). initdb refuses root, so the
# server runs as the 'postgres' user in a fresh data directory with trust auth on loopback.
set -euo pipefail
PORT=${PRUNETUNE_PG_PORT:-54329}
DIR=${PRUNETUNE_PG_DIR:-/tmp/prunetune-pg}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "${1:-start}" in
  start)
    if [ -z "$BIN" ]; then
      [ "$(id -u)" = 0 ] || { echo "postgresql is not installed and we are not root" >&2; exit 1; }
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } >&2
      BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    if [ -f "$DIR/postmaster.pid" ]; then as_pg "$BIN/pg_ctl" -D "$DIR" stop -m fast >&2 || true; fi
    rm -rf "$DIR" && mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$DIR"
    as_pg "$BIN/initdb" -D "$DIR" -U postgres --auth=trust -E UTF8 >/dev/null
    as_pg "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off ${PRUNETUNE_PG_OPTS:-}" start >&2
    echo "export PRUNETUNE_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
    ;;
  stop)
    [ -n "$BIN" ] && [ -f "$DIR/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DIR" stop -m fast >&2 || true
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
