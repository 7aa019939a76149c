#!/usr/bin/env bash
# The bare cost of a thread's sleep and wake-up on this machine, without iot-sim (issue 25,
# "idle fleets are cheap by default"): what any realtime shard pays per wake-up, whatever its
# timer. Prints one JSON object: per mechanism and period, CPU µs per wake-up from the thread's
# scheduler run time (/proc/thread-self/schedstat) and from getrusage, and how late it woke.
#
#   bench/wake.sh            3 wall-seconds per case
#   BENCH_WALL_SECONDS=10    longer cases
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench/wake
mkdir -p "$OUT"
rustc -O --edition 2021 -o "$OUT/wake" bench/wake.rs
"$OUT/wake" "${BENCH_WALL_SECONDS:-3}"
