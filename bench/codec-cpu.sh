#!/usr/bin/env bash
# The daemon's CPU per concurrent call with media, per codec, on loopback
# only: CALLS calls to the echo agent (INVITE, 200, ACK, 20 ms RTP both
# ways, BYE), each offering only one codec (PCMU, G.722, Opus), placed by
# examples/codec_load.rs (SIPp plays only G.711 pcaps) with the daemon's own
# encoders. Once every call is up, the daemon's CPU is read over WINDOW
# seconds. Prints a markdown table for BENCHMARKS.md: calls up and failed,
# the daemon's CPU (100% = one core), CPU per call, and the share of our
# packets that came back (the echo: 1.0 when nothing is lost). Bounded by
# the call count and their length.
# Usage: bench/codec-cpu.sh [CALLS] [WINDOW]   defaults: 500 20
#   BENCH_BIN and BENCH_CLIENT: a daemon and a codec_load already built
#   (e.g. to compare two builds with the same load generator)
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${1:-500}
WINDOW=${2:-20}
NUMBER=+14155552671
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

if [ -n "${BENCH_CLIENT:-}" ]; then
  LOAD=$BENCH_CLIENT
else
  cargo build --release --quiet --example codec_load
  LOAD=$TARGET/release/examples/codec_load
fi
. bench/daemon.sh
# The trunk speaks all three; each call offers one.
start_daemon 'max_calls = 20000
cps = 10000
[media]
codecs = ["PCMU", "G722", "OPUS"]'
AGENT=$(api /v1/agents -H 'content-type: application/json' \
  -d '{"name":"echo","kind":"echo","max_duration_seconds":3600}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
api /v1/phone-numbers -H 'content-type: application/json' \
  -d "{\"number\":\"$NUMBER\",\"agent_id\":\"$AGENT\",\"trunk_id\":\"trk_bench\"}" >/dev/null

echo "### CPU per concurrent call by codec ($CALLS echo calls with 20 ms RTP both ways; daemon CPU over ${WINDOW} s)"
echo
echo "| codec | calls | up | failed | daemon CPU | CPU per call | echo returned |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for codec in pcmu g722 opus; do
  timeout $((WINDOW + 120)) "$LOAD" --sip "127.0.0.1:$SIP_PORT" \
    --number "$NUMBER" --pid "$DAEMON" --codec "$codec" --calls "$CALLS" \
    --seconds $((WINDOW + CALLS / 100 + 10)) --window "$WINDOW" 2>>"$WORK/load.err"
  sleep 3
done
if [ -s "$WORK/load.err" ]; then
  echo; echo "Failed calls (first lines):"; head -5 "$WORK/load.err"
fi
