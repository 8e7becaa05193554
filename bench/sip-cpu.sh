#!/usr/bin/env bash
# The daemon's CPU per call at a call rate, split by thread, on loopback
# only: SIPp calls an echo agent (INVITE, 200, ACK, BYE; no media) at RATE
# CPS, RUNS times CALLS calls, from the trunk's address with the flood
# guard on. Prints a markdown table for BENCHMARKS.md: per run the failed
# calls and the daemon's CPU-s per 1,000 calls, in all and on the SIP
# socket's I/O thread (`sip-udp-io`, where the UDP reader and the edge run).
# Bounded by the call count and a time limit. With PERF=1 the last run is
# recorded with `perf record -g` into $WORK/perf.data (KEEP=1 keeps it).
# Usage: bench/sip-cpu.sh [RATE] [CALLS] [RUNS]   defaults: 1000 10000 3
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${1:-1000}
CALLS=${2:-10000}
RUNS=${3:-3}
NUMBER=+14155552671
ROOT=$PWD

. bench/daemon.sh
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__RATE=$((RATE * 2))
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__BURST=$((RATE * 4))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__RATE=$((RATE * 6))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__BURST=$((RATE * 12))
start_daemon "max_calls = 20000
cps = 10000"
AGENT=$(api /v1/agents -H 'content-type: application/json' \
  -d '{"name":"echo","kind":"echo","max_duration_seconds":3600}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
api /v1/phone-numbers -H 'content-type: application/json' \
  -d "{\"number\":\"$NUMBER\",\"agent_id\":\"$AGENT\",\"trunk_id\":\"trk_bench\"}" >/dev/null
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks of the daemon's threads named $1.
thread_ticks() {
  local sum=0 t
  for t in /proc/$DAEMON/task/*; do
    if [ "$(cat "$t/comm" 2>/dev/null)" = "$1" ]; then
      sum=$((sum + $(awk '{print $14 + $15}' "$t/stat")))
    fi
  done
  echo $sum
}

echo "### CPU per call at $RATE CPS ($CALLS calls a run; INVITE, 200, ACK, BYE; echo agent)"
echo
echo "| run | failed | achieved CPS | daemon CPU-s per 1,000 calls | of which sip-udp-io |"
echo "|---:|---:|---:|---:|---:|"
for run in $(seq 1 "$RUNS"); do
  before=$(ticks "$DAEMON"); io_before=$(thread_ticks sip-udp-io)
  if [ "${PERF:-}" = 1 ] && [ "$run" = "$RUNS" ]; then
    perf record -g -F 499 -p "$DAEMON" -o "$WORK/perf.data" -- sleep $((CALLS / RATE + 3)) 2>/dev/null &
    PERF_PID=$!
  fi
  start=$(date +%s.%N)
  set +e
  timeout 120 sipp 127.0.0.1:$SIP_PORT -sf "$ROOT/bench/sipp-cps.xml" -s "$NUMBER" \
    -i 127.0.0.1 -p "$(free_port)" -r "$RATE" -m "$CALLS" -l 20000 -buff_size 4194304 \
    -timeout 100s -nostdin -trace_stat -stf cps.csv -fd 1 >/dev/null 2>&1
  set -e
  end=$(date +%s.%N)
  after=$(ticks "$DAEMON"); io_after=$(thread_ticks sip-udp-io)
  [ -n "${PERF_PID:-}" ] && wait "$PERF_PID" || true
  failed=$(awk -F';' 'NR==1 {for (i=1;i<=NF;i++) if ($i=="FailedCall(C)") c=i} END {print $c+0}' cps.csv)
  rm -f cps.csv
  printf "| %d | %d | %.0f | %.2f | %.2f |\n" "$run" "$failed" "$(calc "$CALLS / ($end - $start)")" \
    "$(calc "($after - $before) / $HZ / $CALLS * 1000")" "$(calc "($io_after - $io_before) / $HZ / $CALLS * 1000")"
  sleep 3
done
