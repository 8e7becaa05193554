#!/usr/bin/env bash
# The daemon's CPU and memory per concurrent web call: N browser-less
# WebRTC clients (examples/web_call_client: str0m + libopus, one process,
# loopback only) each start a web call with a publishable key, connect
# (ICE, DTLS-SRTP), send 20 ms Opus frames of silence, and receive the
# echo agent's audio (Opus encode and decode, SRTP both ways, the media
# session and an idle agent per call). Once every call is up, the daemon's
# CPU is measured over a window; the clients count the agent's packets
# lost by RTP sequence. Prints a markdown table for BENCHMARKS.md.
# Bounded: at most 1000 calls, each lasting TALK seconds plus the ramp.
# The clients run on the same machine (their CPU is not counted).
# Usage: bench/web-calls.sh [CALLS...]   default: 50 200
#   TALK=20 (seconds of media per call once all are up), RAMP_MS=20
#   (between call starts), BENCH_PROFILE=debug (a debug build, to try it),
#   BENCH_BIN and BENCH_CLIENT (a daemon and a web_call_client already
#   built, e.g. to compare two builds with the same client)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 0 ]; then COUNTS=("$@"); else COUNTS=(50 200); fi
TALK=${TALK:-20}
RAMP_MS=${RAMP_MS:-20}
ROOT=$PWD
ORIGIN=http://127.0.0.1:1

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
. bench/daemon.sh
export AGENTLINE_WEBRTC__MAX_CALLS=2000
export AGENTLINE_WEBRTC__MAX_CALLS_PER_KEY=2000
export AGENTLINE_WEBRTC__REQUESTS_PER_ADDRESS_PER_MINUTE=100000
export AGENTLINE_WEBRTC__MAX_DURATION_SECONDS=3600
profile=${BENCH_PROFILE:-release}
cargo_profile=$profile; [ "$profile" = debug ] && cargo_profile=dev
if [ -n "${BENCH_CLIENT:-}" ]; then
  CLIENT=$BENCH_CLIENT
else
  (cd "$ROOT" && cargo build --profile "$cargo_profile" --quiet --example web_call_client)
  CLIENT=${CARGO_TARGET_DIR:-$ROOT/target}/$profile/examples/web_call_client
fi
start_daemon ""
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
AGENT=$(api /v1/agents -H 'content-type: application/json' \
  -d '{"name":"echo","kind":"echo","max_duration_seconds":3600}' | json '["id"]')
PK=$(api /v1/publishable-keys -H 'content-type: application/json' \
  -d "{\"name\":\"bench\",\"agent_ids\":[\"$AGENT\"],\"origins\":[\"$ORIGIN\"],
       \"rate_limit_per_minute\":100000,\"max_concurrent_calls\":2000}" | json '["secret"]')
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

echo "### CPU per concurrent web call ($profile build; Opus + DTLS-SRTP both ways, echo agent; $(nproc) cores, clients on the same machine)"
echo
echo "| calls | connected | daemon CPU % (of one core) | CPU % per call | RSS MiB | RSS MiB per call | agent packets lost |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for n in "${COUNTS[@]}"; do
  [ "$n" -le 1000 ] || { echo "at most 1000 calls" >&2; exit 64; }
  base_rss=$(rss_kb "$DAEMON")
  "$CLIENT" "http://$API" "$ORIGIN" "$PK" "$AGENT" "$n" "$TALK" "$RAMP_MS" > client.json 2> client.log &
  CLIENT_PID=$!
  # Every call is up once the ramp is over (plus room to connect); the
  # first call hangs up TALK seconds after the last one started.
  sleep "$(calc "$n * $RAMP_MS / 1000 + 4")"
  window=$((TALK - 6)); [ "$window" -ge 3 ] || window=3
  before=$(ticks "$DAEMON"); t0=$(date +%s.%N)
  sleep "$window"
  after=$(ticks "$DAEMON"); t1=$(date +%s.%N)
  rss=$(rss_kb "$DAEMON")
  timeout $((TALK + n * RAMP_MS / 1000 + 60)) tail --pid=$CLIENT_PID -f /dev/null || kill "$CLIENT_PID"
  wait "$CLIENT_PID" || true
  connected=$(json '["connected"]' < client.json)
  opus_in=$(json '["opus_in"]' < client.json)
  lost=$(json '["lost"]' < client.json)
  cpu=$(calc "($after - $before) / $HZ / ($t1 - $t0) * 100")
  printf "| %d | %d | %.1f | %.3f | %.1f | %.2f | %d of %d (%.3f %%) |\n" "$n" "$connected" "$cpu" \
    "$(calc "$cpu / $n")" "$(calc "$rss / 1024")" "$(calc "($rss - $base_rss) / 1024 / $n")" \
    "$lost" "$((opus_in + lost))" "$(calc "$lost * 100 / ($opus_in + $lost + 1)")"
  if [ "$connected" -lt "$n" ]; then
    echo "not every call connected: $(json '["errors"]' < client.json)" >&2
  fi
  sleep 5
done
