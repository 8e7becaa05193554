#!/usr/bin/env bash
# One daemon on PostgreSQL (the server on this machine), loopback only.
# Prints markdown tables for BENCHMARKS.md:
#   1. call rate: for each offered rate, SIPp (bench/sipp-cps.xml: INVITE,
#      200, ACK, BYE; echo agent; no media, no webhook endpoint) places
#      SECONDS worth of calls against a daemon on a fresh database; failed
#      calls (every offered call that did not complete, also those SIPp
#      never got to), achieved rate (completed calls over SIPp's own clock,
#      first call to last, so SIPp's start-up is not counted), mean INVITE
#      to 200, and CPU seconds per 1,000 completed calls of the daemon and
#      of PostgreSQL (/proc/PID/stat user+system of the daemon, and of the
#      server processes serving that database: its backends, plus the WAL
#      writer, checkpointer and background writer, which work for every
#      database: run it on an idle server); the highest rate with no failed
#      call and the achieved rate within 5% of the offered one is the
#      issue's "CPS with no failed call";
#   2. call webhooks at WEBHOOK_RATE calls a second (examples/webhook_bench
#      --mode calls: one enabled endpoint, a receiver in the bench process
#      verifying every signature), each event timed from its created_at to
#      its arrival; the percentiles rank every delivery the daemon created,
#      one that never arrived as slower than all (printed "> 60000"), so
#      the p99 is the issue's "created->arrival p99 at 1,000 CPS".
# Every load is bounded by a call count and a time limit; every database
# made is dropped.
#
#   bench/pg-load.sh [RATES] [SECONDS] [WEBHOOK_RATE]
#     defaults: "500 1000 1500 2000" 10 1000
#   BIN=path/to/agentline  measures that binary (for example main's) instead
#     of building this checkout; EXAMPLE=path/to/webhook_bench likewise.
#   WEBHOOKS_TOML="concurrency = 256; batch_size = 200": settings added to
#     the daemon's [webhooks] for the webhook run (`;` separates lines).
#   AGENTLINE_BENCH_PG: admin URL (default postgres://postgres:postgres@127.0.0.1:5432/postgres),
#     or `private`: a PostgreSQL cluster of its own (bench/pg-private.sh),
#     whose CPU is all the bench's, and whose pg_stat_statements gives,
#     after each table, what the calls cost in statements: every statement
#     executed per 1,000 calls (the daemon's round trips to the server).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RATES=${1:-"500 1000 1500 2000"}
SECONDS_=${2:-10}
WEBHOOK_RATE=${3:-1000}
PG=${AGENTLINE_BENCH_PG:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
PRIVATE=
if [ "$PG" = private ]; then
  . bench/pg-private.sh
  PRIVATE=1
fi
NUMBER=+14155552671
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin agentline --example webhook_bench
  BIN=$TARGET/release/agentline
  EXAMPLE=${EXAMPLE:-$TARGET/release/examples/webhook_bench}
fi
EXAMPLE=${EXAMPLE:-$TARGET/release/examples/webhook_bench}
# The daemon runs in a directory of its own: absolute paths.
BIN=$(realpath "$BIN")
EXAMPLE=$(realpath "$EXAMPLE")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
calc() { awk "BEGIN {print ($*)}"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
psql_() { psql "$PG" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
# The server processes that work for database $1: its backends, and the
# WAL writer (shared by every database; idle unless something writes).
pg_pids() {
  psql_ "SELECT pid FROM pg_stat_activity WHERE datname = '$1'
         OR backend_type IN ('walwriter', 'checkpointer', 'background writer')"
}
# Sum of the ticks of the pids in $1 (a file of "pid ticks" lines written
# before) now, counting a pid that was not there before from zero.
pg_ticks_since() {
  local total=0 pid t before now
  now=$(pg_pids "$2")
  for pid in $now; do
    t=$(ticks "$pid")
    before=$(awk -v p="$pid" '$1 == p {print $2}' "$1")
    total=$((total + t - ${before:-0}))
  done
  # A backend that exited during the run took its CPU time with it.
  for pid in $(awk '{print $1}' "$1"); do
    echo "$now" | grep -qx "$pid" ||
      echo "warning: PostgreSQL process $pid exited during the run; its CPU is not counted" >&2
  done
  echo "$total"
}

# The trunk's flood limits sized for the highest offered rate (as
# bench/sip-load.sh does): this measures the daemon and the store.
top=$(echo "$RATES $WEBHOOK_RATE" | tr ' ' '\n' | sort -n | tail -1)
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__RATE=$((top * 2))
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__BURST=$((top * 4))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__RATE=$((top * 6))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__BURST=$((top * 12))

WORK=$(mktemp -d)
DAEMON=
DB=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  [ -n "$DB" ] && psql_ "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  DAEMON=; DB=
}
trap 'cleanup; rm -rf "$WORK"; [ -z "$PRIVATE" ] || pg_private_stop' EXIT
[ -z "$PRIVATE" ] || pg_private_start
# CPU is read from /proc: the server must run on this machine.
# (The WAL writer lives as long as the server; a psql's backend does not.)
[ -r "/proc/$(psql_ "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'")/stat" ] || {
  echo "PostgreSQL at $PG is not on this machine (its WAL writer is not in /proc)" >&2
  exit 1
}

# A daemon on a fresh database; sets DB, API, SIP_PORT, KEY, DAEMON.
start_daemon() {
  DB=agentline_pgload_$(date +%s%N)
  psql_ "CREATE DATABASE $DB"
  API=127.0.0.1:$(free_port)
  SIP_PORT=$(free_port)
  rm -rf "$WORK/run" && mkdir -p "$WORK/run/profiles"
  cat > "$WORK/run/agentline.toml" <<TOML
[api]
listen = "$API"
rate_limit_per_minute = 100000
[sip]
listen = "127.0.0.1:$SIP_PORT"
rtp_ports = "30000-39999"
[store]
url = "${PG%/*}/$DB"
[profiles]
dir = "$WORK/run/profiles"
[log]
level = "warn"
[shutdown]
drain_seconds = 5
TOML
  cat > "$WORK/run/profiles/bench.toml" <<TOML
name = "bench"
[inbound]
allow = ["127.0.0.1/32"]
[limits]
max_calls = 20000
cps = 10000
TOML
  # In the run directory: a daemon without a node_id keeps a generated
  # one in its data directory (the working directory).
  KEY=$(cd "$WORK/run" && "$BIN" --config agentline.toml keys create --name bench --rate-limit 100000 2>/dev/null)
  (cd "$WORK/run" && exec "$BIN" --config agentline.toml run 2> daemon.log) &
  DAEMON=$!
  for _ in $(seq 1 300); do curl -sf "http://$API/ready" >/dev/null && break; sleep 0.1; done
  curl -sf "http://$API/ready" >/dev/null || { echo "daemon not ready:" >&2; cat "$WORK/run/daemon.log" >&2; exit 1; }
  local agent
  agent=$(curl -s "http://$API/v1/agents" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
    -d '{"name":"echo","kind":"echo","max_duration_seconds":3600}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -s "http://$API/v1/phone-numbers" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
    -d "{\"number\":\"$NUMBER\",\"agent_id\":\"$agent\",\"trunk_id\":\"trk_bench\"}" >/dev/null
}

HZ=$(getconf CLK_TCK)
echo "### Call rate, one node on PostgreSQL (INVITE, 200, ACK, BYE; echo agent; no media; no endpoint)"
echo
echo "| offered CPS | calls | failed | achieved CPS | mean INVITE to 200 ms | daemon CPU-s per 1,000 calls | PostgreSQL CPU-s per 1,000 calls |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
best=0
for rate in $RATES; do
  start_daemon
  calls=$((rate * SECONDS_))
  sleep 1
  for pid in $(pg_pids "$DB"); do echo "$pid $(ticks "$pid")"; done > "$WORK/pg.before"
  before=$(ticks "$DAEMON")
  [ -z "$PRIVATE" ] || pg_private_reset
  t0=$(date +%s.%N)
  set +e
  (cd "$WORK" && timeout 120 sipp 127.0.0.1:$SIP_PORT -sf "$ROOT/bench/sipp-cps.xml" -s "$NUMBER" \
    -i 127.0.0.1 -p "$(free_port)" -r "$rate" -m "$calls" -l 20000 -buff_size 4194304 \
    -timeout 100s -nostdin -trace_stat -stf cps.csv -fd 1 >/dev/null 2>&1)
  set -e
  t1=$(date +%s.%N)
  after=$(ticks "$DAEMON")
  pg=$(pg_ticks_since "$WORK/pg.before" "$DB")
  # The last row of SIPp's statistics: completed calls, and its clock from
  # the start of the traffic (StartTime) to then (CurrentTime), each
  # "date<TAB>time<TAB>epoch".
  ok=$(awk -F';' 'NR==1 {for (i=1;i<=NF;i++) if ($i=="SuccessfulCall(C)") c=i} END {print $c+0}' "$WORK/cps.csv")
  span=$(awk -F';' 'END {split($1, s, "\t"); split($3, n, "\t"); print n[3] - s[3]}' "$WORK/cps.csv")
  failed=$((calls - ok))
  setup=$(awk -F';' 'NR==1 {for (i=1;i<=NF;i++) if ($i=="ResponseTime1(C)") c=i}
    END {split($c, t, ":"); printf "%.1f", ((t[1] * 60 + t[2]) * 60 + t[3]) * 1000 + t[4] / 1000}' "$WORK/cps.csv")
  rm -f "$WORK/cps.csv"
  per=$((ok > 0 ? ok : 1))
  cpu=$(calc "($after - $before) / $HZ / $per * 1000")
  pgcpu=$(calc "$pg / $HZ / $per * 1000")
  # SIPp's clock; the wall clock around it if the file has no usable row.
  achieved=$(calc "($span > 0) ? $ok / $span : $ok / ($t1 - $t0)")
  printf "| %d | %d | %d | %.0f | %s | %.2f | %.2f |\n" "$rate" "$calls" "$failed" "$achieved" "$setup" "$cpu" "$pgcpu"
  [ "$failed" -eq 0 ] && awk "BEGIN {exit !($achieved >= 0.95 * $rate)}" && best=$rate
  if [ -n "$PRIVATE" ]; then
    # Settle: the calls' last transitions and the deliveries of none.
    sleep 2
    { echo; echo "#### Statements at $rate CPS ($ok calls)"; echo; pg_private_statements "$per"; } >> "$WORK/statements.md"
  fi
  cleanup
  sleep 2
done
echo
echo "Highest offered rate sustained (no failed call, achieved within 5% of offered): **$best CPS**."
[ -z "$PRIVATE" ] || [ ! -e "$WORK/statements.md" ] || cat "$WORK/statements.md"
echo
echo "### Call webhooks at $WEBHOOK_RATE CPS on PostgreSQL (one endpoint; created to arrival)"
echo
echo "| store | offered CPS | calls | answered | failed | mean INVITE to 200 ms | call events delivered/made | created→arrival p50 ms | p99 ms | max ms | bad signatures |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
[ -z "$PRIVATE" ] || pg_private_reset
"$EXAMPLE" --mode calls --backend postgres --rate "$WEBHOOK_RATE" --seconds "$SECONDS_" \
  --binary "$BIN" --pg-admin "$PG" --webhooks-toml "${WEBHOOKS_TOML:-}"
if [ -n "$PRIVATE" ]; then
  echo
  echo "#### Statements with the endpoint ($((WEBHOOK_RATE * SECONDS_)) calls offered; the bench's set-up included)"
  echo
  pg_private_statements "$((WEBHOOK_RATE * SECONDS_))"
fi
