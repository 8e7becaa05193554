#!/usr/bin/env bash
# The three-node cluster's call rate through Kamailio's dispatcher, as the
# reference deployment runs it (deploy/cluster/kamailio.cfg, the nodes'
# [cluster] settings of deploy/cluster/node-*.toml) and as tests/cluster.rs
# builds it: three daemons on distinct loopback addresses (127.0.0.2 to
# 127.0.0.4), one fresh PostgreSQL database (the server on this machine),
# Kamailio on 127.0.0.1 with the three as its dispatcher set, SIPp on
# 127.0.0.1 as the carrier (bench/sipp-cluster-cps.xml: INVITE, 200, ACK,
# BYE along the Record-Route set; echo agent; no media; no webhook
# endpoint). Loopback only.
#
# For each offered rate, SECONDS worth of calls on a fresh cluster; prints
# a markdown table for BENCHMARKS.md: failed calls (every offered call that
# did not complete, also those SIPp never got to), achieved rate (completed
# calls over SIPp's own clock, first call to last), mean INVITE to 200, the
# calls each node answered, and CPU seconds per 1,000 completed calls of
# each daemon, of Kamailio (all its processes) and of PostgreSQL (the
# backends of that database, the WAL writer, checkpointer and background
# writer: run it on an idle server), from /proc/PID/stat user+system. The
# highest rate with no failed call and the achieved rate within 5% of the
# offered one is the cluster's CPS. Every load is bounded by a call count
# and a time limit; every process started is stopped and every database
# made is dropped.
#
#   bench/cluster-cps.sh [RATES] [SECONDS]
#     defaults: "200 400 600" 10
#   BIN=path/to/agentline    measures that binary instead of building this
#                            checkout (release)
#   KAMAILIO_CHILDREN=N      Kamailio's UDP workers (default 4, as the
#                            reference deployment); SIPp tolerates a 180
#                            that a parallel worker forwards after the 200
#   AGENTLINE_BENCH_PG       admin URL (default postgres://postgres:postgres@127.0.0.1:5432/postgres),
#                            or `private`: a PostgreSQL cluster of its own
#                            (bench/pg-private.sh), whose CPU is all the bench's
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RATES=${1:-"200 400 600"}
SECONDS_=${2:-10}
PG=${AGENTLINE_BENCH_PG:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
CHILDREN=${KAMAILIO_CHILDREN:-4}
PRIVATE=
if [ "$PG" = private ]; then
  . bench/pg-private.sh
  PRIVATE=1
  trap 'pg_private_stop' EXIT
  pg_private_start
fi
NUMBER=+14155552671
NODES=3
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin agentline
  BIN=$TARGET/release/agentline
fi
# The daemons run in directories of their own: an absolute path.
BIN=$(realpath "$BIN")
for tool in sipp kamailio psql curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (scripts/test installs it)" >&2; exit 1; }
done
MPATH=
for p in /usr/lib/x86_64-linux-gnu/kamailio/modules/ /usr/lib/kamailio/modules/; do
  [ -e "$p/dispatcher.so" ] && MPATH=$p && break
done
[ -n "$MPATH" ] || { echo "Kamailio's dispatcher module is missing" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
calc() { awk "BEGIN {print ($*)}"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(ticks "$p"))); done; echo "$t"; }
psql_() { psql "$PG" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
pg_pids() {
  psql_ "SELECT pid FROM pg_stat_activity WHERE datname = '$1'
         OR backend_type IN ('walwriter', 'checkpointer', 'background writer')"
}
# Ticks of database $2's server processes since the "pid ticks" file $1.
pg_ticks_since() {
  local total=0 pid t before now
  now=$(pg_pids "$2")
  for pid in $now; do
    t=$(ticks "$pid")
    before=$(awk -v p="$pid" '$1 == p {print $2}' "$1")
    total=$((total + t - ${before:-0}))
  done
  for pid in $(awk '{print $1}' "$1"); do
    echo "$now" | grep -qx "$pid" ||
      echo "warning: PostgreSQL process $pid exited during the run; its CPU is not counted" >&2
  done
  echo "$total"
}
# The processes of Kamailio's process group (its main process and workers).
kamailio_pids() { ps -eo pid=,pgid= | awk -v g="$1" '$2 == g {print $1}'; }
# (The WAL writer lives as long as the server; a psql's backend does not.)
[ -r "/proc/$(psql_ "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'")/stat" ] || {
  echo "PostgreSQL at $PG is not on this machine (its WAL writer is not in /proc)" >&2
  exit 1
}

# All INVITEs come from one source (Kamailio): the trunk's flood limits
# sized for the highest offered rate, as bench/pg-load.sh does.
top=$(echo "$RATES" | tr ' ' '\n' | sort -n | tail -1)
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__RATE=$((top * 2))
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__BURST=$((top * 4))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__RATE=$((top * 8))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__BURST=$((top * 16))

WORK=$(mktemp -d)
DAEMONS=()
KAMAILIO=
DB=
cleanup() {
  local pid
  for pid in "${DAEMONS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${DAEMONS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$KAMAILIO" ]; then
    kill -TERM -- "-$KAMAILIO" 2>/dev/null || true
    sleep 0.5
    kill -KILL -- "-$KAMAILIO" 2>/dev/null || true
    wait "$KAMAILIO" 2>/dev/null || true
  fi
  [ -n "$DB" ] && psql_ "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  DAEMONS=(); KAMAILIO=; DB=
}
trap 'cleanup; rm -rf "$WORK"; [ -z "$PRIVATE" ] || pg_private_stop' EXIT

# Three daemons on a fresh database and Kamailio in front of them; sets
# DB, DAEMONS, APIS, KAMAILIO, KPORT.
start_cluster() {
  DB=agentline_clustercps_$(date +%s%N)
  psql_ "CREATE DATABASE $DB"
  rm -rf "$WORK/run" && mkdir -p "$WORK/run/profiles"
  cat > "$WORK/run/profiles/carrier.toml" <<TOML
name = "carrier"
[inbound]
# Kamailio (127.0.0.1) relays the carrier's INVITEs and probes the nodes.
allow = ["127.0.0.0/8"]
[limits]
max_calls = 20000
cps = 10000
TOML
  APIS=()
  local list="" i api sip dir
  for i in $(seq 0 $((NODES - 1))); do
    api=127.0.0.1:$(free_port)
    sip=127.0.0.$((i + 2)):$(free_udp)
    dir=$WORK/run/node-$i
    mkdir -p "$dir"
    cat > "$dir/agentline.toml" <<TOML
[api]
listen = "$api"
rate_limit_per_minute = 100000
[sip]
listen = "$sip"
rtp_ports = "$((30000 + i * 3000))-$((32999 + i * 3000))"
[store]
url = "${PG%/*}/$DB"
[profiles]
dir = "$WORK/run/profiles"
[log]
level = "warn"
[cluster]
node_id = "node-$i"
heartbeat_seconds = 2
grace_seconds = 10
trunk_lease_seconds = 15
[shutdown]
drain_seconds = 5
TOML
    if [ "$i" -eq 0 ]; then
      KEY=$("$BIN" --config "$dir/agentline.toml" keys create --name bench --rate-limit 100000 2>/dev/null)
    fi
    (cd "$dir" && exec "$BIN" --config agentline.toml run 2> daemon.log) &
    DAEMONS+=($!)
    APIS+=("$api")
    list+="1 sip:$sip 0 0"$'\n'
    for _ in $(seq 1 300); do curl -sf "http://$api/ready" >/dev/null && break; sleep 0.1; done
    curl -sf "http://$api/ready" >/dev/null || { echo "node-$i not ready:" >&2; cat "$dir/daemon.log" >&2; exit 1; }
  done
  local agent
  agent=$(curl -s "http://${APIS[0]}/v1/agents" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
    -d '{"name":"echo","kind":"echo","max_duration_seconds":3600}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -sf "http://${APIS[0]}/v1/phone-numbers" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
    -d "{\"number\":\"$NUMBER\",\"agent_id\":\"$agent\",\"trunk_id\":\"trk_carrier\"}" >/dev/null
  printf '%s' "$list" > "$WORK/run/dispatcher.list"
  KPORT=$(free_udp)
  mkdir -p "$WORK/run/kamailio"
  # Its own process group (setsid), stopped as a whole by cleanup.
  setsid kamailio -f "$ROOT/deploy/cluster/kamailio.cfg" \
    -A "LISTEN=udp:127.0.0.1:$KPORT" -A "DISPATCHER_LIST=\"$WORK/run/dispatcher.list\"" \
    -A "MPATH=\"$MPATH\"" -A "CHILDREN=$CHILDREN" \
    -DD -E -m 256 -M 16 -Y "$WORK/run/kamailio" -P "$WORK/run/kamailio/kamailio.pid" \
    </dev/null >/dev/null 2> "$WORK/run/kamailio.log" &
  KAMAILIO=$!
  # Two probe rounds (2 s each) until every node is in the set.
  sleep 5
  kill -0 "$KAMAILIO" 2>/dev/null || { echo "Kamailio did not start:" >&2; cat "$WORK/run/kamailio.log" >&2; exit 1; }
}

HZ=$(getconf CLK_TCK)
echo "### Three nodes on PostgreSQL behind Kamailio's dispatcher (INVITE, 200, ACK, BYE; echo agent; no media; no endpoint)"
echo
echo "| offered CPS | calls | failed | achieved CPS | mean INVITE to 200 ms | calls per node | daemons CPU-s per 1,000 calls (each; sum) | Kamailio CPU-s per 1,000 calls | PostgreSQL CPU-s per 1,000 calls |"
echo "|---:|---:|---:|---:|---:|---|---|---:|---:|"
best=0
for rate in $RATES; do
  start_cluster
  calls=$((rate * SECONDS_))
  for pid in $(pg_pids "$DB"); do echo "$pid $(ticks "$pid")"; done > "$WORK/pg.before"
  kpids=$(kamailio_pids "$KAMAILIO")
  # shellcheck disable=SC2086
  kbefore=$(sum_ticks $kpids)
  dbefore=()
  for pid in "${DAEMONS[@]}"; do dbefore+=("$(ticks "$pid")"); done
  t0=$(date +%s.%N)
  set +e
  (cd "$WORK" && timeout $((SECONDS_ + 110)) sipp "127.0.0.1:$KPORT" -sf "$ROOT/bench/sipp-cluster-cps.xml" \
    -s "$NUMBER" -i 127.0.0.1 -p "$(free_udp)" -r "$rate" -m "$calls" -l 20000 -buff_size 4194304 \
    -default_behaviors all,-abortunexp -timeout $((SECONDS_ + 100))s -nostdin \
    -trace_stat -stf cps.csv -fd 1 -trace_err -error_file errors.log >/dev/null 2>&1)
  set -e
  t1=$(date +%s.%N)
  dcpu=()
  for i in "${!DAEMONS[@]}"; do dcpu+=($(($(ticks "${DAEMONS[$i]}") - dbefore[i]))); done
  # shellcheck disable=SC2086
  kcpu=$(($(sum_ticks $kpids) - kbefore))
  pg=$(pg_ticks_since "$WORK/pg.before" "$DB")
  ok=$(awk -F';' 'NR==1 {for (i=1;i<=NF;i++) if ($i=="SuccessfulCall(C)") c=i} END {print $c+0}' "$WORK/cps.csv")
  span=$(awk -F';' 'END {split($1, s, "\t"); split($3, n, "\t"); print n[3] - s[3]}' "$WORK/cps.csv")
  setup=$(awk -F';' 'NR==1 {for (i=1;i<=NF;i++) if ($i=="ResponseTime1(C)") c=i}
    END {split($c, t, ":"); printf "%.1f", ((t[1] * 60 + t[2]) * 60 + t[3]) * 1000 + t[4] / 1000}' "$WORK/cps.csv")
  rm -f "$WORK/cps.csv"
  failed=$((calls - ok))
  if [ "$failed" -gt 0 ] && [ -s "$WORK/errors.log" ]; then
    # What went wrong, by kind (Call-IDs and times stripped), to stderr.
    echo "SIPp at $rate CPS, $failed failed; its errors by kind:" >&2
    grep -o 'Call-Id: [^,]*, .*' "$WORK/errors.log" | sed 's/^Call-Id: [^,]*, //; s/[0-9][0-9.]*/N/g' |
      sort | uniq -c | sort -rn | head -5 >&2
  fi
  rm -f "$WORK/errors.log"
  per=$((ok > 0 ? ok : 1))
  achieved=$(calc "($span > 0) ? $ok / $span : $ok / ($t1 - $t0)")
  # The calls each node answered, once their ends are written.
  for _ in $(seq 1 50); do
    done_=$(psql "${PG%/*}/$DB" -qAtX -c "SELECT COUNT(*) FROM calls WHERE ended_at IS NOT NULL")
    [ "$done_" -ge "$ok" ] && break
    sleep 0.2
  done
  spread=$(psql "${PG%/*}/$DB" -qAtX -F ' ' -c \
    "SELECT node, COUNT(*) FROM calls WHERE status = 'completed' GROUP BY node ORDER BY node" |
    awk '{printf "%s%s", (NR > 1 ? " / " : ""), $2}')
  each=""
  sum=0
  for t in "${dcpu[@]}"; do
    each+="$( [ -n "$each" ] && echo " / ")$(printf "%.2f" "$(calc "$t / $HZ / $per * 1000")")"
    sum=$((sum + t))
  done
  printf "| %d | %d | %d | %.0f | %s | %s | %s; %.2f | %.2f | %.2f |\n" "$rate" "$calls" "$failed" \
    "$achieved" "$setup" "$spread" "$each" "$(calc "$sum / $HZ / $per * 1000")" \
    "$(calc "$kcpu / $HZ / $per * 1000")" "$(calc "$pg / $HZ / $per * 1000")"
  [ "$failed" -eq 0 ] && awk "BEGIN {exit !($achieved >= 0.95 * $rate)}" && best=$rate
  cleanup
  sleep 2
done
echo
echo "Highest offered rate sustained by the cluster (no failed call, achieved within 5% of offered): **$best CPS**."
