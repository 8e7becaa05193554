#!/usr/bin/env bash
# Benchmarks the campaign contact import: builds the release binary, starts
# the daemon on a throwaway SQLite store (and on a throwaway PostgreSQL
# database when one answers at $AGENTLINE_BENCH_PG_URL), imports $ROWS
# generated contacts in one `POST /v1/campaigns/{id}/contacts` (text/csv),
# and prints a markdown table: store, rows, seconds, rows/s.
#
# Loopback only, free ports, every wait bounded; the daemons and databases
# it made are removed on exit. Usage: bench/campaign-import.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${1:-100000}
PG_URL=${AGENTLINE_BENCH_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
TARGET=${CARGO_TARGET_DIR:-target}
BIN="$TARGET/release/agentline"

cargo build --release --locked --quiet
WORK=$(mktemp -d)
DAEMON=""
PG_DB=""
cleanup() {
    if [ -n "$DAEMON" ]; then
        kill "$DAEMON" 2>/dev/null || true
        wait "$DAEMON" 2>/dev/null || true
    fi
    if [ -n "$PG_DB" ]; then
        psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { # $1: tcp or udp
    python3 -c 'import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1"
}

json_field() { # $1: field; reads a JSON object on stdin
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# Distinct, valid North American numbers: +1 212 200 0000 onwards.
awk -v n="$ROWS" 'BEGIN {
    print "number,first_name"
    for (i = 0; i < n; i++) printf "+1212%07d,Contact %d\n", 2000000 + i, i
}' >"$WORK/contacts.csv"

mkdir -p "$WORK/sip-profiles"
cat >"$WORK/sip-profiles/carrier-a.toml" <<'TOML'
name = "carrier-a"
[inbound]
allow = ["127.0.0.1/32"]
[outbound]
proxy = "127.0.0.1:5080"
caller_id = "+14155550100"
TOML

# Runs one import against the store at $2 and prints its table row.
bench() { # $1: label, $2: store URL
    local api sip cfg key base start end agent campaign report inserted
    api=$(free_port tcp)
    sip=$(free_port udp)
    cfg="$WORK/agentline-$1.toml"
    cat >"$cfg" <<TOML
[api]
listen = "127.0.0.1:$api"
[sip]
listen = "127.0.0.1:$sip"
[store]
url = "$2"
[profiles]
dir = "$WORK/sip-profiles"
[log]
level = "warn"
[shutdown]
drain_seconds = 5
TOML
    key=$("$BIN" --config "$cfg" keys create --name bench --rate-limit 100000 2>/dev/null)
    "$BIN" --config "$cfg" run >"$WORK/daemon-$1.log" 2>&1 &
    DAEMON=$!
    base="http://127.0.0.1:$api"
    for _ in $(seq 1 300); do
        curl -sf --max-time 1 "$base/ready" >/dev/null && break
        sleep 0.1
    done
    curl -sf --max-time 1 "$base/ready" >/dev/null || {
        echo "the daemon on $1 did not become ready:" >&2
        cat "$WORK/daemon-$1.log" >&2
        exit 1
    }
    agent=$(curl -sf --max-time 10 "$base/v1/agents" -H "Authorization: Bearer $key" \
        -H 'content-type: application/json' -d '{"name": "bench", "kind": "echo"}' | json_field id)
    campaign=$(curl -sf --max-time 10 "$base/v1/campaigns" -H "Authorization: Bearer $key" \
        -H 'content-type: application/json' \
        -d "{\"name\": \"bench\", \"agent_id\": \"$agent\", \"caller_number\": \"+14155550100\",
             \"trunk_ids\": [\"trk_carrier-a\"]}" | json_field id)
    start=$(date +%s.%N)
    report=$(curl -sf --max-time 900 "$base/v1/campaigns/$campaign/contacts" \
        -H "Authorization: Bearer $key" -H 'content-type: text/csv' \
        --data-binary @"$WORK/contacts.csv")
    end=$(date +%s.%N)
    inserted=$(json_field inserted <<<"$report")
    if [ "$inserted" != "$ROWS" ]; then
        echo "$1: $inserted of $ROWS rows inserted: $report" >&2
        exit 1
    fi
    kill "$DAEMON"
    wait "$DAEMON" 2>/dev/null || true
    DAEMON=""
    awk -v s="$1" -v n="$ROWS" -v a="$start" -v b="$end" \
        'BEGIN { t = b - a; printf "| %s | %d | %.2f | %.0f |\n", s, n, t, n / t }'
}

echo "| store | rows | seconds | rows/s |"
echo "|---|---:|---:|---:|"
bench sqlite "sqlite://$WORK/agentline.db"
if psql "$PG_URL" -qtc 'SELECT 1' >/dev/null 2>&1; then
    PG_DB="agentline_bench_$$"
    psql "$PG_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
    bench postgres "${PG_URL%/*}/$PG_DB"
else
    echo "(PostgreSQL not reachable at $PG_URL: skipped)" >&2
fi
