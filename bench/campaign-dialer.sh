#!/usr/bin/env bash
# The campaign dialer's overhead per call: the same $CALLS outbound calls at
# $CPS new calls per second, once dialled by a campaign and once placed one
# by one through `POST /v1/calls`, each on a fresh daemon (release build,
# SQLite) against SIPp's built-in UAS (answers; the echo agent hangs up after
# 1 s). For each it measures the daemon's CPU time (user + system, from
# /proc) from the start to the last call's end, and prints a markdown table:
# mode, calls, wall seconds, daemon CPU seconds, CPU ms per call; the
# difference per call is the dialer's overhead (claims with leases, attempt
# rows, outcomes, retry decisions, stats).
#
# Loopback only, free ports, every wait bounded; what it starts is stopped
# on exit. Usage: bench/campaign-dialer.sh [CALLS] [CPS]  (default 1000 50)
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${1:-1000}
CPS=${2:-50}
CALLER=+14155550100
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BIN="$TARGET/release/agentline"

command -v sipp >/dev/null || { echo "sipp missing: apt-get install sip-tester" >&2; exit 1; }
cargo build --release --locked --quiet
WORK=$(mktemp -d)
DAEMON=""
SIPP=""
cleanup() {
    for p in $DAEMON $SIPP; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { # $1: tcp or udp
    python3 -c 'import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1"
}
HZ=$(getconf CLK_TCK)

# One run; prints its table row. $1: campaign or api.
bench() {
    local mode=$1 api sip uas cfg key base t0 c0 t1 c1
    api=$(free_port tcp)
    sip=$(free_port udp)
    uas=$(free_port udp)
    mkdir -p "$WORK/$mode/profiles"
    cfg="$WORK/$mode/agentline.toml"
    cat >"$cfg" <<TOML
[api]
listen = "127.0.0.1:$api"
rate_limit_per_minute = 100000
[sip]
listen = "127.0.0.1:$sip"
rtp_ports = "30000-39999"
[store]
url = "sqlite://$WORK/$mode/agentline.db"
[profiles]
dir = "$WORK/$mode/profiles"
[log]
level = "warn"
[campaigns]
max_concurrent_calls = 1000
poll_ms = 100
[shutdown]
drain_seconds = 5
TOML
    cat >"$WORK/$mode/profiles/callee.toml" <<TOML
name = "callee"
[inbound]
allow = ["127.0.0.1/32"]
[outbound]
proxy = "127.0.0.1:$uas"
[limits]
max_calls = 5000
cps = 1000
TOML
    (cd "$WORK/$mode" && exec sipp -sn uas -i 127.0.0.1 -p "$uas" \
        -mi 127.0.0.1 -mp "$(free_port udp)" -nostdin -timeout 600s \
        -buff_size 4194304 >/dev/null 2>&1) &
    SIPP=$!
    key=$("$BIN" --config "$cfg" keys create --name bench --rate-limit 100000 2>/dev/null)
    "$BIN" --config "$cfg" run >"$WORK/$mode/daemon.log" 2>&1 &
    DAEMON=$!
    base="http://127.0.0.1:$api"
    for _ in $(seq 1 300); do
        curl -sf --max-time 1 "$base/ready" >/dev/null && break
        sleep 0.1
    done
    # The driver: provisions, then places the calls (or starts the
    # campaign), waits until every call has completed, and prints the wall
    # time and the daemon's CPU ticks at both edges: "t0 c0 t1 c1".
    python3 - "$mode" "$base" "$key" "$CALLS" "$CPS" "$CALLER" "$DAEMON" <<'PY'
import json, sys, time, urllib.request

mode, base, key, calls, cps, caller, pid = sys.argv[1:]
calls, cps = int(calls), float(cps)

def req(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(base + path, data=data, method=method, headers={
        "Authorization": "Bearer " + key, "content-type": "application/json"})
    with urllib.request.urlopen(r, timeout=30) as resp:
        return json.load(resp)

def cpu():
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

agent = req("POST", "/v1/agents", {"name": "bench", "kind": "echo", "max_duration_seconds": 1})
req("POST", "/v1/phone-numbers", {"number": caller, "agent_id": agent["id"], "trunk_id": "trk_callee"})
numbers = [f"+1212{2000000 + i:07d}" for i in range(calls)]
if mode == "campaign":
    c = req("POST", "/v1/campaigns", {
        "name": "bench", "agent_id": agent["id"], "caller_number": caller,
        "trunk_ids": ["trk_callee"], "max_concurrent_calls": 1000, "calls_per_second": cps,
        "schedule": {"start_time": "00:00", "end_time": "23:59"}})
    for i in range(0, calls, 1000):
        req("POST", f"/v1/campaigns/{c['id']}/contacts",
            {"contacts": [{"number": n, "timezone": "UTC"} for n in numbers[i:i + 1000]]})
t0, c0 = time.time(), cpu()
if mode == "campaign":
    req("POST", f"/v1/campaigns/{c['id']}/start")
else:
    for i, n in enumerate(numbers):
        # Paced: call i goes at t0 + i / cps.
        delay = t0 + i / cps - time.time()
        if delay > 0:
            time.sleep(delay)
        req("POST", "/v1/calls", {"from": caller, "to": n})
# Bounded: the calls need CALLS / CPS seconds plus their 1 s; allow 3x + 60 s.
deadline = time.time() + 3 * calls / cps + 60
while time.time() < deadline:
    page = req("GET", "/v1/calls?limit=1&status=completed")
    if page["total"] >= calls:
        break
    time.sleep(0.2)
else:
    sys.exit(f"{mode}: only {page['total']} of {calls} calls completed in time")
t1, c1 = time.time(), cpu()
print(t0, c0, t1, c1)
PY
}

row() { # $1: mode, then "t0 c0 t1 c1" on stdin
    read -r t0 c0 t1 c1
    awk -v m="$1" -v n="$CALLS" -v a="$t0" -v b="$t1" -v c="$c0" -v d="$c1" -v hz="$HZ" \
        'BEGIN { cpu = (d - c) / hz; printf "| %s | %d | %.1f | %.2f | %.2f |\n", m, n, b - a, cpu, 1000 * cpu / n }'
}

stop() {
    kill "$DAEMON" "$SIPP" 2>/dev/null || true
    wait "$DAEMON" "$SIPP" 2>/dev/null || true
    DAEMON=""
    SIPP=""
}

echo "| mode | calls | wall s | daemon CPU s | CPU ms/call |"
echo "|---|---:|---:|---:|---:|"
api_row=$(bench api | row "POST /v1/calls at $CPS/s")
stop
campaign_row=$(bench campaign | row "campaign at $CPS/s")
stop
echo "$api_row"
echo "$campaign_row"
awk -v a="$api_row" -v b="$campaign_row" 'BEGIN {
    split(a, x, "|"); split(b, y, "|");
    printf "\ndialer overhead: %.2f ms of daemon CPU per call\n", y[6] - x[6] }'
