#!/usr/bin/env bash
# Accuracy and speed of the embedded speech engines on telephone audio: flite
# voices kal, awb, rms and slt speak 15 short task sentences, the audio goes
# through G.711 µ-law at 8 kHz, and the PocketSphinx 5 recognizer hears it
# exactly as a call feeds it (20 ms frames, paced in real time, one stream per
# voice). Not a test: it prints markdown tables for BENCHMARKS.md (word errors,
# end-of-turn→final latency, real-time factors, and the daemon's own cost per
# 20 ms frame on the STT and TTS paths); misheard sentences go to stderr.
#
#   bench/stt-accuracy.sh [--fast]
#
# Takes about four minutes paced; --fast skips the pacing. Needs flite and
# `pip install pocketsphinx==5.1.1` (scripts/test installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --example stt_accuracy
"$TARGET/release/examples/stt_accuracy" "$@"
