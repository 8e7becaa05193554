#!/usr/bin/env bash
# Coverage-guided fuzzing of every `agentline::fuzz` target with libFuzzer,
# on the stable toolchain: the `fuzz/` crate is built with the
# sanitizer-coverage passes that `cargo fuzz -s none` uses (stable rustc
# flags; no sanitizer, which would need nightly), and each target runs
# from the committed seed corpus (tests/data/fuzz/TARGET/, and the RFC 4475
# messages for SIP) for SECONDS. Prints a markdown table for BENCHMARKS.md:
# target, executions, seconds, executions per second, coverage (libFuzzer's
# features), corpus size, crashes. A crash leaves its input in
# target/fuzz/artifacts/TARGET/ and fails the script: make it a corpus file
# and a test next to the fix.
# Runs on one core, bounded by SECONDS per target.
# Usage: bench/fuzz.sh [SECONDS] [TARGETS]
#   defaults: 30 "every target"
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-30}
TARGETS=${2:-$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^agentline-fuzz$')}
OUT=${FUZZ_TARGET_DIR:-$PWD/target/fuzz}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

# libFuzzer's hooks: inline 8-bit counters, the PC table, comparison
# tracing; `--cfg fuzzing` as cargo-fuzz sets it. The crate's profile keeps
# debug assertions and overflow checks on. `--target` keeps these flags
# off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
CARGO_TARGET_DIR="$OUT/build" cargo build -q --release --manifest-path fuzz/Cargo.toml \
  --target "$TRIPLE" --bins

echo "| target | executions | seconds | exec/s | coverage | corpus | crashes |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
failed=0
for target in $TARGETS; do
  corpus="$OUT/corpus/$target"
  artifacts="$OUT/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  seeds=(tests/data/fuzz/"$target")
  [ "$target" = sip_datagram ] && seeds+=(tests/data/rfc4475)
  log="$OUT/$target.log"
  start=$(date +%s.%N)
  # Stops at the first crash; -timeout and -rss_limit_mb turn a hang or a
  # runaway allocation into one.
  "$OUT/build/$TRIPLE/release/$target" "$corpus" "${seeds[@]}" \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || true
  end=$(date +%s.%N)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  crashes=$(find "$artifacts" -type f | wc -l)
  [ "$crashes" -gt 0 ] && failed=1
  awk -v t="$target" -v r="${runs:-0}" -v s="$start" -v e="$end" -v c="${cov:-0}" \
    -v n="$(find "$corpus" -type f | wc -l)" -v x="$crashes" \
    'BEGIN {d = e - s; printf "| %s | %d | %.0f | %.0f | %d | %d | %d |\n", t, r, d, r / d, c, n, x}'
done
if [ "$failed" = 1 ]; then
  echo "crashes: inputs in $OUT/artifacts/, logs in $OUT/*.log" >&2
  exit 1
fi
