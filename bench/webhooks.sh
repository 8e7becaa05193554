#!/usr/bin/env bash
# Webhook delivery benchmark: sustained signed deliveries/s from the outbox to
# a loopback receiver, and enqueue-to-first-attempt latency, on SQLite and
# PostgreSQL. Not a test: it prints a markdown table for BENCHMARKS.md.
#
#   bench/webhooks.sh [EVENTS] [RATE] [SECONDS] [CALL_RATES]
#
# EVENTS (default 20000) are queued and drained for throughput; RATE events/s
# (default 200) for SECONDS (default 10) are sent through the API for latency.
# Then, for each of CALL_RATES (default "200 500"), SIPp calls an echo agent
# at that many calls per second for SECONDS and every call lifecycle webhook
# is timed from its created_at to its arrival (a second table).
# PostgreSQL is taken from AGENTLINE_BENCH_PG (default
# postgres://postgres@127.0.0.1:5432/postgres); a throwaway database is made
# and dropped. Only 127.0.0.1 is used; every loop is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-20000}
RATE=${2:-200}
SECONDS_=${3:-10}
CALL_RATES=${4:-"200 500"}
PG=${AGENTLINE_BENCH_PG:-postgres://postgres@127.0.0.1:5432/postgres}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin agentline --example webhook_bench
echo "| store | delivered | deliveries/s | enqueue/s (fill) | latency samples | enqueue→first attempt p50 ms | p99 ms | bad signatures |"
echo "|---|---|---|---|---|---|---|---|"
for backend in sqlite postgres; do
  "$TARGET/release/examples/webhook_bench" --backend "$backend" --events "$EVENTS" \
    --rate "$RATE" --seconds "$SECONDS_" --binary "$TARGET/release/agentline" --pg-admin "$PG"
done
echo
echo "Call lifecycle webhooks under call load (INVITE, 200, ACK, BYE; echo agent):"
echo
echo "| store | offered CPS | calls | answered | failed | mean INVITE to 200 ms | call events delivered/made | created→arrival p50 ms | p99 ms | max ms | bad signatures |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for backend in sqlite postgres; do
  for rate in $CALL_RATES; do
    "$TARGET/release/examples/webhook_bench" --mode calls --backend "$backend" --rate "$rate" \
      --seconds "$SECONDS_" --binary "$TARGET/release/agentline" --pg-admin "$PG"
  done
done
