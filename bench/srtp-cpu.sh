#!/usr/bin/env bash
# The daemon's CPU per concurrent call with SRTP and without, on loopback
# only: bench/srtp-load.py holds CALLS calls to an echo agent (20 ms PCMU
# frames each way, the echo agent sending every frame back), first with
# plain RTP, then with SRTP (SDES, AES_CM_128_HMAC_SHA1_80: the daemon
# unprotects every frame and protects its echo). The trunk has
# `srtp = "optional"`, so one daemon serves both. Prints a markdown table
# for BENCHMARKS.md: the daemon's CPU in percent of one core over SECONDS
# with every call up, and per call. Bounded by the call count and time
# limits. Needs pylibsrtp (pip) for the load's own SRTP.
# Usage: bench/srtp-cpu.sh [CALLS] [SECONDS]   defaults: 500 20
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${1:-500}
SECONDS_UP=${2:-20}
NUMBER=+14155552671
ROOT=$PWD
python3 -c 'import pylibsrtp' 2>/dev/null || pip install --quiet pylibsrtp

. bench/daemon.sh
start_daemon "max_calls = 5000
cps = 1000
[media]
srtp = \"optional\""
AGENT=$(api /v1/agents -H 'content-type: application/json' \
  -d '{"name":"echo","kind":"echo","max_duration_seconds":3600}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
api /v1/phone-numbers -H 'content-type: application/json' \
  -d "{\"number\":\"$NUMBER\",\"agent_id\":\"$AGENT\",\"trunk_id\":\"trk_bench\"}" >/dev/null
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
nproc_=$(nproc)

echo "### CPU per concurrent call, plain RTP and SRTP ($CALLS echo calls, ${SECONDS_UP} s with all up, $nproc_ cores)"
echo
echo "| media | calls | daemon CPU (% of a core) | per call (% of a core) | load generator CPU (% of a core) |"
echo "|---|---:|---:|---:|---:|"
for mode in plain srtp; do
  # exec: LOAD_PID is the generator itself (it gives up by itself after 120 s).
  coproc LOAD { exec python3 "$ROOT/bench/srtp-load.py" "$SIP_PORT" "$NUMBER" "$CALLS" "$SECONDS_UP" "$mode" 50; }
  LOAD_PID_=$LOAD_PID
  read -r line <&"${LOAD[0]}" || { echo "| $mode | load failed | | | |"; continue; }
  [ "$line" = ready ] || { echo "| $mode | load said: $line | | | |"; continue; }
  before=$(ticks "$DAEMON"); load_before=$(ticks "$LOAD_PID_"); start=$(date +%s.%N)
  read -r line <&"${LOAD[0]}" || true
  after=$(ticks "$DAEMON"); load_after=$(ticks "$LOAD_PID_" 2>/dev/null || echo "$load_before"); end=$(date +%s.%N)
  wait "$LOAD_PID_" 2>/dev/null || true
  elapsed=$(calc "$end - $start")
  cpu=$(calc "($after - $before) / $HZ / $elapsed * 100")
  load=$(calc "($load_after - $load_before) / $HZ / $elapsed * 100")
  printf '| %s | %d | %.1f | %.3f | %.1f |\n' "$mode" "$CALLS" "$cpu" "$(calc "$cpu / $CALLS")" "$load"
  # The calls' ends drain before the next mode.
  sleep 3
done
drops=$(curl -s "http://$API/metrics" | awk '/^agentline_srtp_auth_failures_total/ {
  r = $1; sub(/.*reason="/, "", r); sub(/".*/, "", r); n[r] += $NF; s += $NF }
  END { printf "%d (", s + 0; sep = ""; for (r in n) { printf "%s%s %d", sep, r, n[r]; sep = ", " } printf ")" }')
echo
echo "SRTP packets dropped during the run: $drops"
