#!/usr/bin/env bash
# The SIP edge under load, on loopback only. Prints markdown for
# BENCHMARKS.md:
#   1. call rate with the flood guard on and off (INVITE, 200, ACK, BYE from
#      the trunk's address; echo agent; no media): failed calls, achieved
#      rate, mean INVITE to 200;
#   2. the daemon's RSS during and after RATE CPS for SECONDS (guard on):
#      the peak while the calls run and the value after 40 s idle (finished
#      transactions linger 32 s, RFC 3261 timer J);
#   3. the amplification factor of each stranger probe (bytes back over
#      bytes sent, from 127.0.0.2, which no trunk allows, within 5 s), in
#      the default mode and in `reject` mode.
# Every load is bounded by a call count and a time limit.
# Usage: bench/sip-edge.sh [RATE] [SECONDS]   defaults: 3000 60
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${1:-3000}
SECONDS_LOAD=${2:-60}
NUMBER=+14155552671

. bench/daemon.sh
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

provision() {
  AGENT=$(api /v1/agents -H 'content-type: application/json' \
    -d '{"name":"echo","kind":"echo","max_duration_seconds":3600}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  api /v1/phone-numbers -H 'content-type: application/json' \
    -d "{\"number\":\"$NUMBER\",\"agent_id\":\"$AGENT\",\"trunk_id\":\"trk_bench\"}" >/dev/null
}

# Runs $2 calls at $1 CPS; prints "failed achieved_cps mean_setup_ms".
calls() {
  local rate=$1 count=$2 start end
  start=$(date +%s.%N)
  set +e
  timeout $((count / rate + 60)) sipp 127.0.0.1:$SIP_PORT -sf "$ROOT/bench/sipp-cps.xml" -s "$NUMBER" \
    -i 127.0.0.1 -p "$(free_port)" -r "$rate" -m "$count" -l 20000 -buff_size 4194304 \
    -timeout $((count / rate + 50))s -nostdin -trace_stat -stf cps.csv -fd 1 >/dev/null 2>&1
  set -e
  end=$(date +%s.%N)
  awk -F';' -v n="$count" -v t="$(calc "$end - $start")" '
    NR==1 {for (i=1;i<=NF;i++) {if ($i=="FailedCall(C)") f=i; if ($i=="ResponseTime1(C)") r=i}}
    END {split($r, x, ":"); printf "%d %.0f %.1f\n", $f, n / t, ((x[1]*60 + x[2])*60 + x[3])*1000 + x[4]/1000}' cps.csv
  rm -f cps.csv
}

ROOT=$PWD
LIMITS="max_calls = 50000
cps = 100000"
# The trunk's own flood limits sized for the offered rate, as an operator
# would for a carrier of that size (the defaults allow 1,000 INVITEs/s).
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__RATE=$((RATE * 2))
export AGENTLINE_SIP__FLOOD__TRUNK__INVITE__BURST=$((RATE * 4))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__RATE=$((RATE * 6))
export AGENTLINE_SIP__FLOOD__TRUNK__OTHER__BURST=$((RATE * 12))

echo "### Call rate with the flood guard on and off ($((RATE)) CPS offered, 10 s)"
echo
echo "| guard | calls | failed | achieved CPS | mean INVITE to 200 ms |"
echo "|---|---:|---:|---:|---:|"
for guard in on off; do
  if [ "$guard" = off ]; then export AGENTLINE_SIP__FLOOD__ENABLED=false; fi
  start_daemon "$LIMITS"
  provision
  read -r failed achieved setup < <(calls "$RATE" $((RATE * 10)))
  printf "| %s | %d | %d | %s | %s |\n" "$guard" $((RATE * 10)) "$failed" "$achieved" "$setup"
  kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
  cd "$ROOT"; rm -rf "$WORK"
  unset AGENTLINE_SIP__FLOOD__ENABLED
done
echo

echo "### RSS during and after $RATE CPS for $SECONDS_LOAD s (guard on)"
echo
start_daemon "$LIMITS"
provision
base=$(rss_mb "$DAEMON")
peak=$base
calls "$RATE" $((RATE * SECONDS_LOAD)) > load.out &
LOAD=$!
while kill -0 $LOAD 2>/dev/null; do
  now=$(rss_mb "$DAEMON"); [ "$now" -gt "$peak" ] && peak=$now
  sleep 1
done
read -r failed achieved setup < load.out
sleep 40
echo "| calls | failed | achieved CPS | RSS before MB | peak RSS during MB | RSS 40 s after MB |"
echo "|---:|---:|---:|---:|---:|---:|"
printf "| %d | %d | %s | %s | %s | %s |\n" $((RATE * SECONDS_LOAD)) "$failed" "$achieved" "$base" "$peak" "$(rss_mb "$DAEMON")"
echo

echo "### Amplification factor of stranger probes (from 127.0.0.2; bytes back / bytes sent)"
echo
probe() { # $1: mode label
  python3 - "$SIP_PORT" "$1" <<'PY'
import socket, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
target = ("127.0.0.1", port)
def req(method, user, tag, cid, ua="probe"):
    t = ";tag=x1" if tag else ""
    return (f"{method} sip:{user}@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5099;branch=z9hG4bK{cid};rport\r\n"
            f"From: <sip:a@127.0.0.2>;tag=1\r\nTo: <sip:{user}@127.0.0.1>{t}\r\nCall-ID: {cid}\r\nCSeq: 1 {method}\r\n"
            f"Contact: <sip:a@127.0.0.2:5099>\r\nMax-Forwards: 70\r\nUser-Agent: {ua}\r\nContent-Length: 0\r\n\r\n").encode()
probes = [
    ("INVITE to our number", req("INVITE", "+14155552671", False, "a1")),
    ("INVITE to our number, To tag", req("INVITE", "+14155552671", True, "a2")),
    ("INVITE to a missing number", req("INVITE", "+19995550000", False, "a3")),
    ("BYE, To tag", req("BYE", "+14155552671", True, "a4")),
    ("OPTIONS", req("OPTIONS", "x", False, "a5")),
    ("REGISTER", req("REGISTER", "x", False, "a6")),
    ("OPTIONS as friendly-scanner", req("OPTIONS", "x", False, "a7", "friendly-scanner")),
    ("garbage", b"\x00\x01hello\r\n\r\n"),
]
for name, data in probes:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.2", 0))
    s.sendto(data, target)
    s.settimeout(0.2)
    back, n, end = 0, 0, time.time() + 5
    while time.time() < end:
        try:
            b, _ = s.recvfrom(65536); back += len(b); n += 1
        except socket.timeout:
            pass
    print(f"| {mode} | {name} | {len(data)} | {n} | {back} | {back / len(data):.2f} |")
PY
}
echo "| mode | probe | bytes sent | datagrams back | bytes back | factor |"
echo "|---|---|---:|---:|---:|---:|"
probe drop
kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
cd "$ROOT"; rm -rf "$WORK"
export AGENTLINE_SIP__UNKNOWN_SOURCE=reject
start_daemon "$LIMITS"
provision
probe reject
