# Sourced by the benchmarks that drive SIP at a daemon of their own: builds
# the release binary (BENCH_PROFILE=debug: the debug one; BENCH_BIN: a
# binary already built), starts it on free
# loopback ports with SQLite in a temporary directory and one trunk "bench" allowing 127.0.0.1, and leaves
# BIN, WORK (the current directory from then on), API, SIP_PORT, KEY and
# DAEMON set. The daemon and WORK go away on exit (KEEP=1 keeps WORK).
# $1: the trunk's [limits] lines.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
calc() { awk "BEGIN {print ($*)}"; }
# Authenticated API request: path, then curl's own arguments.
api() { curl -s "http://$API$1" -H "Authorization: Bearer $KEY" "${@:2}"; }

start_daemon() {
  # BENCH_PROFILE=debug: the debug build, to check a script quickly (its
  # numbers are not the ones to publish); BENCH_BIN: a binary already built.
  if [ -n "${BENCH_BIN:-}" ]; then
    BIN=$BENCH_BIN
  elif [ "${BENCH_PROFILE:-release}" = debug ]; then
    cargo build --quiet
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/agentline
  else
    cargo build --release --quiet
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/agentline
  fi
  WORK=$(mktemp -d)
  trap 'kill $DAEMON 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT
  API=127.0.0.1:$(free_port)
  SIP_PORT=$(free_port)
  mkdir -p "$WORK/profiles"
  cat > "$WORK/agentline.toml" <<TOML
[api]
listen = "$API"
rate_limit_per_minute = 100000
# The benchmarks read the daemon's counters; loopback only.
metrics_open = true
[sip]
listen = "127.0.0.1:$SIP_PORT"
rtp_ports = "30000-39999"
[store]
url = "sqlite://$WORK/agentline.db"
[profiles]
dir = "$WORK/profiles"
[log]
level = "warn"
[shutdown]
drain_seconds = 5
TOML
  cat > "$WORK/profiles/bench.toml" <<TOML
name = "bench"
[inbound]
allow = ["127.0.0.1/32"]
[limits]
$1
TOML
  cd "$WORK"
  KEY=$("$BIN" --config agentline.toml keys create --name bench --rate-limit 100000 2>/dev/null)
  "$BIN" --config agentline.toml run 2> daemon.log &
  DAEMON=$!
  for _ in $(seq 1 100); do curl -sf "http://$API/ready" >/dev/null && break; sleep 0.1; done
}
