# Sourced by the PostgreSQL benches: a private PostgreSQL cluster of this
# machine's server binaries in a temporary directory, on a free loopback
# port, with pg_stat_statements loaded, so that a bench can count the
# statements a call costs and read the CPU of a server that serves nothing
# else (the machine's shared server also works for other clients: its WAL
# writer and checkpointer are shared by every database).
#
#   pg_private_start   sets PG (admin URL) and PG_PRIVATE_DIR; the cluster
#                      is stopped and removed by pg_private_stop (call it
#                      from the bench's EXIT trap).
#   pg_private_reset   zeroes pg_stat_statements.
#   pg_private_statements CALLS
#                      prints a markdown table: every statement run since
#                      the reset in any database but `postgres` (those of
#                      databases dropped since count too), executions and rows per 1,000
#                      calls, and server time per 1,000 calls (lock waits
#                      included), most executed first; those run less than
#                      once per 1,000 calls (the migrations, the API's
#                      set-up) have no line but count in the total.
#
# Needs the Debian package postgresql (its binaries in
# /usr/lib/postgresql/VERSION/bin) and runs the server as the user
# `postgres` when run as root (the server refuses root).

pg_private_start() {
  local bin port
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$bin/initdb" ] || { echo "no PostgreSQL server binaries (Debian package postgresql)" >&2; return 1; }
  PG_PRIVATE_DIR=$(mktemp -d /tmp/agentline-pg.XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local as=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$PG_PRIVATE_DIR"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$PG_PRIVATE_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
  cat >> "$PG_PRIVATE_DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$PG_PRIVATE_DIR'
max_connections = 300
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
pg_stat_statements.max = 5000
CONF
  "${as[@]}" "$bin/pg_ctl" -D "$PG_PRIVATE_DIR/data" -l "$PG_PRIVATE_DIR/server.log" -w start >/dev/null
  PG_PRIVATE_BIN=$bin
  PG=postgres://postgres@127.0.0.1:$port/postgres
  psql "$PG" -qAtX -c "CREATE EXTENSION pg_stat_statements" >/dev/null
}

pg_private_stop() {
  [ -n "${PG_PRIVATE_DIR:-}" ] || return 0
  local as=()
  [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
  "${as[@]}" "$PG_PRIVATE_BIN/pg_ctl" -D "$PG_PRIVATE_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_PRIVATE_DIR"
  PG_PRIVATE_DIR=
}

pg_private_reset() {
  psql "$PG" -qAtX -c "SELECT pg_stat_statements_reset()" >/dev/null
}

pg_private_statements() {
  local calls=$1
  echo "| statement | executions per 1,000 calls | rows per 1,000 calls | server ms per 1,000 calls |"
  echo "|---|---:|---:|---:|"
  psql "$PG" -qAtX -F '|' -v calls="$calls" <<'SQL'
WITH s AS (
  SELECT regexp_replace(regexp_replace(query, '\s+', ' ', 'g'), '^(.{110}).*$', '\1…') AS q,
         sum(s.calls) AS n, sum(s.rows) AS r, sum(s.total_exec_time) AS ms
  FROM pg_stat_statements s
  WHERE s.dbid <> (SELECT oid FROM pg_database WHERE datname = 'postgres')
  GROUP BY 1)
SELECT '| `' || replace(q, '|', '\|') || '` | ' || round(n * 1000.0 / :calls, 1) || ' | '
       || round(r * 1000.0 / :calls, 1) || ' | ' || round((ms * 1000.0 / :calls)::numeric, 1) || ' |'
FROM s WHERE n * 1000.0 / :calls >= 1 ORDER BY n DESC, q;
SELECT '| **total** | **' || round(sum(n) * 1000.0 / :calls, 1) || '** | '
       || round(sum(r) * 1000.0 / :calls, 1) || ' | ' || round((sum(ms) * 1000.0 / :calls)::numeric, 1) || ' |'
FROM (SELECT sum(s.calls) AS n, sum(s.rows) AS r, sum(s.total_exec_time) AS ms
      FROM pg_stat_statements s
      WHERE s.dbid <> (SELECT oid FROM pg_database WHERE datname = 'postgres')) t;
SQL
}
