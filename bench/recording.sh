#!/usr/bin/env bash
# Recording and fork load against a real daemon with SIPp, on loopback only.
# Prints a markdown table for BENCHMARKS.md: concurrent G.711 calls both
# ways (SIPp streams a tone in, the echo agent streams it back), first
# unrecorded, then every call recorded (dual WAV), then a smaller set
# recorded with a fork to a WebSocket listener that reads everything.
# Per row, measured over the middle of the hold: the daemon's CPU (CPU-s
# per second, and % of one core), its disk write rate (/proc/PID/io
# write_bytes) and the recordings directory's growth, the RTP loss the
# daemon saw on the way in and the loss in a 5 s capture of what it sent
# (dumpcap, bench/rtp-gaps.py), and the tap frames the recorder and the
# forks lost (agentline_media_tap_dropped_frames_total).
# Every load is bounded by a call count and a time limit.
# Usage: bench/recording.sh [CALLS] [FORK_CALLS] [HOLD_SECONDS]
#   defaults: 500 100 20. BENCH_PROFILE=debug runs the debug build (a
#   quick check that the script works; numbers only from release).
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${1:-500}
FORKS=${2:-100}
HOLD=${3:-20}

. bench/daemon.sh
# Recordings on the disk the machine writes to (never a tmpfs, where
# write_bytes stays 0); the fork listener on loopback, which the outbound
# policy refuses unless told.
RECDIR=$(mktemp -d -p /var/tmp agentline-bench-rec.XXXXXX)
export AGENTLINE_RECORDINGS__DIR=$RECDIR
export AGENTLINE_NET__ALLOWED_NETWORKS='["127.0.0.0/8"]'
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
written() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }
dir_bytes() { du -sb "$RECDIR" | awk '{print $1}'; }
metric() { # sum of a metric's samples whose line matches $2
  curl -s "http://$API/metrics" | awk -v m="$1" -v f="${2:-}" '$1 ~ "^"m && index($0, f) {s += $NF} END {printf "%.0f", s}'
}
id_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }

start_daemon "max_calls = 20000
cps = 10000"
trap 'kill $DAEMON $LISTENER 2>/dev/null || true; rm -rf "$RECDIR"; [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT

# The fork's listener: accepts every WebSocket and reads every message.
LPORT=$(free_port)
python3 - "$LPORT" > listener.log 2>&1 <<'PY' &
import asyncio, sys
import websockets

async def drain(ws):
    async for _ in ws:
        pass

async def main():
    async with websockets.serve(drain, "127.0.0.1", int(sys.argv[1]), max_queue=None):
        await asyncio.Future()

asyncio.run(main())
PY
LISTENER=$!

agent() { # name, extra JSON fields
  api /v1/agents -H 'content-type: application/json' \
    -d "{\"name\":\"$1\",\"kind\":\"echo\",\"max_duration_seconds\":3600$2}" | id_of
}
number() { # number, agent
  api /v1/phone-numbers -H 'content-type: application/json' \
    -d "{\"number\":\"$1\",\"agent_id\":\"$2\",\"trunk_id\":\"trk_bench\"}" >/dev/null
}
PLAIN=+14155552671
RECORDED=+14155552672
FORKED=+14155552673
number $PLAIN "$(agent plain '')"
number $RECORDED "$(agent recorded ',"recording":{"enabled":true,"channels":"dual"}')"
number $FORKED "$(agent forked ",\"recording\":{\"enabled\":true},\"streams\":[{\"url\":\"ws://127.0.0.1:$LPORT/listen\",\"track\":\"both\"}]")"
HZ=$(getconf CLK_TCK)

sox -n -r 8000 -c 1 -t ul tone.ul synth 2 sine 700 vol 0.5
sed "s#@RTP_FILE@#$WORK/tone.ul#" "$OLDPWD/bench/sipp-media.xml" > media.xml

echo "### Recorded calls: G.711 both ways, echo agent, ${HOLD} s per call"
echo
echo "| calls | recorded | forks | daemon CPU-s per s | CPU % of one core | disk write MB/s (write_bytes) | recordings MB/s | RTP in | lost in | packets out (capture) | lost out (capture) | tap frames dropped (recorder / fork) |"
echo "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
row() { # label-recorded, label-forks, number, calls
  local n=$4
  local in_before lost_before rec_before fork_before
  in_before=$(metric agentline_rtp_packets_total 'direction="in"')
  lost_before=$(metric agentline_rtp_packets_lost_total)
  rec_before=$(metric agentline_media_tap_dropped_frames_total 'consumer="recorder"')
  fork_before=$(metric agentline_media_tap_dropped_frames_total 'consumer="fork"')
  MP=$(free_port)
  set +e
  timeout $((HOLD + 120)) sipp 127.0.0.1:$SIP_PORT -sf media.xml -s "$3" -i 127.0.0.1 \
    -p "$(free_port)" -mp "$MP" -r 200 -l "$n" -m "$n" -d $((HOLD * 1000)) \
    -buff_size 4194304 -timeout $((HOLD + 100))s -nostdin >/dev/null 2>&1 &
  SIPP=$!
  set -e
  # Measure in the middle of the hold, once every call is up.
  sleep $(( n / 200 + 3 ))
  local before after t0 t1 w0 w1 d0 d1
  before=$(ticks $DAEMON); w0=$(written $DAEMON); d0=$(dir_bytes); t0=$(date +%s.%N)
  sleep $(( HOLD / 2 ))
  after=$(ticks $DAEMON); w1=$(written $DAEMON); d1=$(dir_bytes); t1=$(date +%s.%N)
  local out="n/a n/a"
  if timeout 5 dumpcap -q -P -i lo -w "$WORK/out.pcap" \
       -f "udp and src portrange 30000-39999 and not src port $MP and not src port $((MP + 2))" \
       2>/dev/null; [ -s "$WORK/out.pcap" ]; then
    out=$(python3 "$OLDPWD/bench/rtp-gaps.py" "$WORK/out.pcap" | awk '{print $2, $4}')
    rm -f "$WORK/out.pcap"
  fi
  wait $SIPP || true
  local cpu cpu_pct wrate drate in_after lost_after pkts lost rec_drop fork_drop
  cpu=$(calc "($after - $before) / $HZ / ($t1 - $t0)")
  cpu_pct=$(calc "$cpu * 100")
  wrate=$(calc "($w1 - $w0) / ($t1 - $t0) / 1000000")
  drate=$(calc "($d1 - $d0) / ($t1 - $t0) / 1000000")
  in_after=$(metric agentline_rtp_packets_total 'direction="in"')
  lost_after=$(metric agentline_rtp_packets_lost_total)
  pkts=$((in_after - in_before)); lost=$((lost_after - lost_before))
  rec_drop=$(( $(metric agentline_media_tap_dropped_frames_total 'consumer="recorder"') - rec_before ))
  fork_drop=$(( $(metric agentline_media_tap_dropped_frames_total 'consumer="fork"') - fork_before ))
  printf "| %d | %s | %s | %.2f | %.0f | %.2f | %.2f | %d | %d | %s | %s | %d / %d |\n" \
    "$n" "$1" "$2" "$cpu" "$cpu_pct" "$wrate" "$drate" "$pkts" "$lost" $out "$rec_drop" "$fork_drop"
  # The files of this row go before the next (they are not what is measured).
  sleep 3
  find "$RECDIR" -name '*.wav' -delete
}
row no no $PLAIN "$CALLS"
row "dual" no $RECORDED "$CALLS"
row no no $PLAIN "$FORKS"
row "dual" "1 (both tracks)" $FORKED "$FORKS"
echo
echo "A recorded dual call writes 32,000 bytes of PCM a second (8 kHz, 16-bit, two channels): the recordings' growth is that times the calls."
