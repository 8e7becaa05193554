#!/usr/bin/env bash
# SIP and RTP load against a real daemon with SIPp, on loopback only.
# Prints markdown tables for BENCHMARKS.md:
#   1. call rate: the highest calls per second sustained with no failed call
#      (INVITE, 200, ACK, BYE; echo agent; 10 s of calls per rate), SIPp's
#      mean INVITE to 200, and the daemon's CPU per 1,000 calls;
#   2. concurrent calls with G.711 RTP both ways (SIPp streams in, the echo
#      agent streams back): the daemon's CPU% (of one core) and RSS, the
#      loss the daemon saw on the way in, and the loss on the way out in a
#      5 s capture of what the daemon sent (dumpcap, bench/rtp-gaps.py).
# Every load is bounded by a call count and a time limit.
# Usage: bench/sip-load.sh [RATES] [CONCURRENCY] [HOLD_SECONDS]
#   defaults: "250 500 1000 1500 2000" "100 500 1000" 20
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${1:-"250 500 1000 1500 2000"}
LEVELS=${2:-"100 500 1000"}
HOLD=${3:-20}
NUMBER=+14155552671

. bench/daemon.sh
# The trunk's flood limits (issue 14's SIP edge; default 1,000 INVITEs a
# second per trunk source) sized for the highest offered rate, as an
# operator would for a carrier of that size: this measures the daemon, not
# the throttle.
top=$(echo "$RATES" | tr ' ' '\n' | sort -n | tail -1)
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__RATE=$((top * 2))
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__BURST=$((top * 4))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__RATE=$((top * 6))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__BURST=$((top * 12))
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
metric() { # sum of a metric's samples whose line matches $2
  curl -s "http://$API/metrics" | awk -v m="$1" -v f="${2:-}" '$1 ~ "^"m && index($0, f) {s += $NF} END {printf "%.0f", s}'
}

start_daemon "max_calls = 20000
cps = 10000"
AGENT=$(api /v1/agents -H 'content-type: application/json' \
  -d '{"name":"echo","kind":"echo","max_duration_seconds":3600}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
api /v1/phone-numbers -H 'content-type: application/json' \
  -d "{\"number\":\"$NUMBER\",\"agent_id\":\"$AGENT\",\"trunk_id\":\"trk_bench\"}" >/dev/null
HZ=$(getconf CLK_TCK)

echo "### Call rate (INVITE, 200, ACK, BYE; echo agent; no media)"
echo
echo "| offered CPS | calls | failed | achieved CPS | mean INVITE to 200 ms | daemon CPU-s per 1,000 calls |"
echo "|---:|---:|---:|---:|---:|---:|"
best=0
for rate in $RATES; do
  calls=$((rate * 10))
  before=$(ticks $DAEMON)
  start=$(date +%s.%N)
  set +e
  timeout 120 sipp 127.0.0.1:$SIP_PORT -sf "$OLDPWD/bench/sipp-cps.xml" -s "$NUMBER" \
    -i 127.0.0.1 -p "$(free_port)" -r "$rate" -m "$calls" -l 20000 -buff_size 4194304 \
    -timeout 100s -nostdin -trace_stat -stf cps.csv -fd 1 >/dev/null 2>&1
  set -e
  end=$(date +%s.%N)
  after=$(ticks $DAEMON)
  failed=$(awk -F';' 'NR==1 {for (i=1;i<=NF;i++) if ($i=="FailedCall(C)") c=i} END {print $c+0}' cps.csv)
  # SIPp's running mean of INVITE to 200 (rtd), as HH:MM:SS:microseconds:
  # it grows when the daemon falls behind the offered rate.
  setup=$(awk -F';' 'NR==1 {for (i=1;i<=NF;i++) if ($i=="ResponseTime1(C)") c=i}
    END {split($c, t, ":"); printf "%.1f", ((t[1] * 60 + t[2]) * 60 + t[3]) * 1000 + t[4] / 1000}' cps.csv)
  rm -f cps.csv
  cpu=$(calc "($after - $before) / $HZ / $calls * 1000")
  achieved=$(calc "$calls / ($end - $start)")
  printf "| %d | %d | %d | %.0f | %s | %.2f |\n" "$rate" "$calls" "$failed" "$achieved" "$setup" "$cpu"
  # Sustained: no failed call, and the calls kept pace with the offer.
  [ "$failed" -eq 0 ] && awk "BEGIN {exit !($achieved >= 0.95 * $rate)}" && best=$rate
  sleep 2
done
echo
echo "Highest offered rate sustained (no failed call, achieved within 5% of offered): **$best CPS**."
echo
# Finished SIP transactions linger 32 s (RFC 3261 Timer J, RFC 6026
# Timer L) and the daemon hands freed heap back every 30 s: wait out both.
busy=$(rss_mb $DAEMON)
sleep 65
echo "Daemon RSS: $busy MB right after the rate runs, $(rss_mb $DAEMON) MB after 65 s idle."
echo

echo "### Concurrent calls with G.711 RTP both ways (echo agent, ${HOLD} s per call)"
echo
echo "| calls | daemon CPU % (of one core) | daemon RSS MB | RTP packets in | lost in (daemon) | loss in % | packets out (capture) | lost out (capture) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
sox -n -r 8000 -c 1 -t ul tone.ul synth 2 sine 440 vol 0.5
sed "s#@RTP_FILE@#$WORK/tone.ul#" "$OLDPWD/bench/sipp-media.xml" > media.xml
for n in $LEVELS; do
  in_before=$(metric agentline_rtp_packets_total 'direction="in"')
  lost_before=$(metric agentline_rtp_packets_lost_total)
  MP=$(free_port)
  set +e
  timeout $((HOLD + 120)) sipp 127.0.0.1:$SIP_PORT -sf media.xml -s "$NUMBER" -i 127.0.0.1 \
    -p "$(free_port)" -mp "$MP" -r 200 -l "$n" -m "$n" -d $((HOLD * 1000)) \
    -buff_size 4194304 -timeout $((HOLD + 100))s -nostdin >/dev/null 2>&1 &
  SIPP=$!
  set -e
  # Measure in the middle of the hold, once every call is up.
  sleep $(( n / 200 + 3 ))
  before=$(ticks $DAEMON); t0=$(date +%s.%N)
  sleep $(( HOLD / 2 ))
  after=$(ticks $DAEMON); t1=$(date +%s.%N)
  rss=$(rss_mb $DAEMON)
  # What the daemon sent SIPp (its RTP ports, not SIPp's own stream), after
  # the CPU window so that the capture costs the measurement nothing.
  out="n/a n/a"
  if timeout 5 dumpcap -q -P -i lo -w "$WORK/out.pcap" \
       -f "udp and src portrange 30000-39999 and not src port $MP and not src port $((MP + 2))" \
       2>/dev/null; [ -s "$WORK/out.pcap" ]; then
    out=$(python3 "$OLDPWD/bench/rtp-gaps.py" "$WORK/out.pcap" | awk '{print $2, $4}')
    rm -f "$WORK/out.pcap"
  fi
  wait $SIPP || true
  cpu=$(calc "($after - $before) / $HZ / ($t1 - $t0) * 100")
  in_after=$(metric agentline_rtp_packets_total 'direction="in"')
  lost_after=$(metric agentline_rtp_packets_lost_total)
  pkts=$((in_after - in_before)); lost=$((lost_after - lost_before))
  pct=$(calc "($pkts + $lost) > 0 ? $lost * 100 / ($pkts + $lost) : 0")
  printf "| %d | %.0f | %s | %d | %d | %.3f | %s | %s |\n" "$n" "$cpu" "$rss" "$pkts" "$lost" "$pct" $out
  sleep 3
done
