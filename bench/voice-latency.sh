#!/usr/bin/env bash
# Per-turn latency of the voice agent on the embedded default (PocketSphinx 5
# and flite), against a real daemon, on loopback only. SIPp callers stream a
# sentence in flite's kal voice, then 5 s of silence, in a loop; a scripted
# agent answers every turn. Prints markdown tables for BENCHMARKS.md:
#   1. per stage, from the end of the caller's speech: STT final text, the
#      brain's first token, TTS first audio, first RTP packet out (p50, p99
#      over every answered turn, read from the stored transcripts);
#   2. the daemon's own share (RTP in to STT push, TTS frame to RTP out),
#      p50 and p99 from the Prometheus histograms (bucket upper bounds);
#   3. CPU per concurrent conversation (daemon plus its engine processes).
# Every load is bounded: CALLS calls of SECONDS each, one SIPp run.
# Usage: bench/voice-latency.sh [CALLS] [SECONDS]   defaults: 6 95 (54 turns or more)
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${1:-6}
HOLD=${2:-95}
NUMBER=+14155552671

. bench/daemon.sh
# CPU ticks of the daemon and of its children it has reaped (the engines).
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }

start_daemon "max_calls = 1000"
AGENT=$(api /v1/agents -H 'content-type: application/json' -d '{
  "name": "clinic", "kind": "voice", "max_duration_seconds": 3600,
  "script": {"start": "main", "greeting": "Hello, this is the clinic.",
    "fallback": "Sorry, could you say that again?",
    "slots": {"day": {"pattern": "\\b(monday|tuesday|wednesday|thursday|friday)\\b"}},
    "states": {"main": {"intents": [{"name": "book", "keywords": ["appointment"],
      "reply": "Your appointment is booked for {day}."}]}}}}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
api /v1/phone-numbers -H 'content-type: application/json' \
  -d "{\"number\":\"$NUMBER\",\"agent_id\":\"$AGENT\",\"trunk_id\":\"trk_bench\"}" >/dev/null

flite -voice kal -t "I would like to book an appointment for Tuesday." -o kal.wav
sox kal.wav -r 8000 -c 1 -t ul turn.ul pad 2 5
sed "s#@RTP_FILE@#$WORK/turn.ul#" "$OLDPWD/bench/sipp-media.xml" > media.xml
HZ=$(getconf CLK_TCK)
before=$(ticks $DAEMON); t0=$(date +%s.%N)
timeout $((HOLD + CALLS + 60)) sipp 127.0.0.1:$SIP_PORT -sf media.xml -s "$NUMBER" -i 127.0.0.1 \
  -p "$(free_port)" -mp "$(free_port)" -r 1 -l "$CALLS" -m "$CALLS" -d $((HOLD * 1000)) \
  -timeout $((HOLD + CALLS + 30))s -nostdin >/dev/null 2>&1 || echo "(some SIPp calls failed)"
# Transcripts are stored as each call ends.
sleep 3
after=$(ticks $DAEMON); t1=$(date +%s.%N)

echo "### Voice agent turn latency (embedded STT and TTS, scripted brain; $CALLS calls of $HOLD s)"
echo
api "/v1/calls?limit=100" > calls.json
python3 - "$API" "$KEY" <<'PY'
import json, sys, urllib.request
api, key = sys.argv[1], sys.argv[2]
def get(path):
    req = urllib.request.Request(f"http://{api}{path}", headers={"Authorization": f"Bearer {key}"})
    return json.load(urllib.request.urlopen(req))
def q(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] if values else None
stages = ["stt_final_ms", "llm_first_token_ms", "tts_first_audio_ms", "first_rtp_ms"]
rows = {s: [] for s in stages}
share = []
turns = 0
for call in json.load(open("calls.json"))["items"]:
    for t in get(f"/v1/calls/{call['id']}/transcript")["turns"]:
        lat = t.get("latency") or {}
        if t["speaker"] == "agent" and lat.get("stt_final_ms") is not None:
            turns += 1
            for s in stages:
                if lat.get(s) is not None:
                    rows[s].append(lat[s])
            if lat.get("first_rtp_ms") is not None and lat.get("tts_first_audio_ms") is not None:
                share.append(lat["first_rtp_ms"] - lat["tts_first_audio_ms"])
print(f"{turns} answered turns.\n")
print("| from the end of the caller's speech to | p50 ms | p99 ms | turns |")
print("|---|---:|---:|---:|")
names = {"stt_final_ms": "STT final text", "llm_first_token_ms": "brain's first token",
         "tts_first_audio_ms": "TTS first audio", "first_rtp_ms": "first RTP packet out"}
for s in stages:
    print(f"| {names[s]} | {q(rows[s], 0.5)} | {q(rows[s], 0.99)} | {len(rows[s])} |")
print()
metrics = urllib.request.urlopen(f"http://{api}/metrics").read().decode()
buckets = {}
for line in metrics.splitlines():
    if line.startswith("agentline_agent_pipeline_overhead_seconds_bucket"):
        path = line.split('path="')[1].split('"')[0]
        le = line.split('le="')[1].split('"')[0]
        buckets.setdefault(path, []).append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
print("| the daemon's own share | p50 at most (ms) | p99 at most (ms) | samples |")
print("|---|---:|---:|---:|")
for path, b in sorted(buckets.items()):
    b.sort()
    total = b[-1][1]
    def upper(p):
        return next((le for le, n in b if n >= p * total), float("inf"))
    print(f"| {path} | {upper(0.5) * 1000:g} | {upper(0.99) * 1000:g} | {total:.0f} |")
print()
print(f"TTS first audio to first RTP packet, per turn from the transcripts: "
      f"p50 {q(share, 0.5)} ms, p99 {q(share, 0.99)} ms ({len(share)} turns).")
PY
echo
cpu=$(calc "($after - $before) / $HZ / ($t1 - $t0) * 100 / $CALLS")
printf "CPU per concurrent conversation (daemon and its engine processes, %% of one core): %.1f\n" "$cpu"
