#!/usr/bin/env bash
# The daemon's RSS during and after a sustained call rate (issue 14: target
# under 300 MB at 3,000 CPS for 60 s), on loopback only. SIPp calls an echo
# agent (INVITE, 200, ACK, BYE; no media) at RATE CPS for SECONDS from the
# trunk's address with the flood guard on; the daemon's RSS and the calls
# started so far are sampled every 5 s while the calls run and every 10 s
# for IDLE seconds after (finished transactions keep their last response
# for 32 s, RFC 3261 Timer J). Prints a markdown table for BENCHMARKS.md.
# Bounded by a call count and a time limit.
# Usage: bench/sip-rss.sh [RATE] [SECONDS] [IDLE]   defaults: 3000 60 60
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${1:-3000}
SECONDS_LOAD=${2:-60}
IDLE=${3:-60}
NUMBER=+14155552671
ROOT=$PWD

. bench/daemon.sh
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
# The kernel's high-water mark of the RSS: the peak between samples too.
hwm_mb() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
metric() { # sum of a metric's samples (metrics need the key)
  api /metrics | awk -v m="$1" 'index($1, m) == 1 {s += $NF} END {printf "%.0f", s}'
}
# The trunk's flood limits sized for the offered rate, as an operator
# would for a carrier of that size (the defaults allow 1,000 INVITEs/s).
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__RATE=$((RATE * 2))
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__BURST=$((RATE * 4))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__RATE=$((RATE * 6))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__BURST=$((RATE * 12))

start_daemon "max_calls = 50000
cps = 100000"
AGENT=$(api /v1/agents -H 'content-type: application/json' \
  -d '{"name":"echo","kind":"echo","max_duration_seconds":3600}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
api /v1/phone-numbers -H 'content-type: application/json' \
  -d "{\"number\":\"$NUMBER\",\"agent_id\":\"$AGENT\",\"trunk_id\":\"trk_bench\"}" >/dev/null

COUNT=$((RATE * SECONDS_LOAD))
echo "### RSS during and after $RATE CPS offered for $SECONDS_LOAD s ($COUNT calls, guard on)"
echo
# refused: INVITEs the edge refused for overload (503 or dropped);
# backlog: SIP messages queued for the runtime (sip.flood.max_receive_backlog).
sample() {
  printf "| %d | %s | %s | %s | %s | %s |\n" "$1" "$2" "$(metric agentline_calls_started_total)" \
    "$(metric 'agentline_sip_requests_rejected_total{reason="overload"}')" \
    "$(metric agentline_sip_receive_backlog)" "$3"
}
echo "| t s | phase | calls started | INVITEs refused | receive backlog | daemon RSS MB |"
echo "|---:|---|---:|---:|---:|---:|"
sample 0 before "$(rss_mb "$DAEMON")"
set +e
timeout $((SECONDS_LOAD * 3 + 60)) sipp 127.0.0.1:$SIP_PORT -sf "$ROOT/bench/sipp-cps.xml" -s "$NUMBER" \
  -i 127.0.0.1 -p "$(free_port)" -r "$RATE" -m "$COUNT" -l 20000 -buff_size 4194304 \
  -timeout $((SECONDS_LOAD * 3 + 50))s -nostdin -trace_stat -stf cps.csv -fd 1 >/dev/null 2>&1 &
SIPP=$!
set -e
t0=$(date +%s)
peak=0
while kill -0 $SIPP 2>/dev/null; do
  sleep 5
  rss=$(rss_mb "$DAEMON"); [ "$rss" -gt "$peak" ] && peak=$rss
  sample $(( $(date +%s) - t0 )) calls "$rss"
done
wait $SIPP || true
t1=$(date +%s)
hwm=$(hwm_mb "$DAEMON"); [ "$hwm" -gt "$peak" ] && peak=$hwm
failed=$(awk -F';' 'NR==1 {for (i=1;i<=NF;i++) if ($i=="FailedCall(C)") c=i} END {print $c+0}' cps.csv)
for _ in $(seq 1 $((IDLE / 10))); do
  sleep 10
  rss=$(rss_mb "$DAEMON")
  sample $(( $(date +%s) - t0 )) idle "$rss"
done
echo
echo "$COUNT calls offered, $failed failed, achieved $(calc "$COUNT / ($t1 - $t0)") CPS;" \
  "peak RSS while the calls ran (VmHWM): **$peak MB**; after $IDLE s idle: $(rss_mb "$DAEMON") MB."
