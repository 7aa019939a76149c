#!/usr/bin/env bash
# Trace replay throughput and memory (issue 24): a generated CSV of N rows (default 10
# million: 100 sensors in turn, one row per millisecond, two numeric fields) replayed under
# the virtual clock to the null sink on one core. Prints one JSON object:
#   rows_per_s        rows replayed per wall second of the run (report.json wall_seconds)
#   rows_per_s_total  the same over the whole process, the loader's pre-pass included
#   peak_rss_bytes    the process's peak RSS (/usr/bin/time), whatever the trace's size
#
#   bench/replay.sh                    10,000,000 rows
#   BENCH_ROWS=1000000 bench/replay.sh a short setting
#   BIN=target/debug/iot-sim           another build (default: the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${BENCH_ROWS:-10000000}
SENSORS=${BENCH_SENSORS:-100}
OUT=target/bench/replay
mkdir -p "$OUT"
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet --bin iot-sim
  BIN=target/release/iot-sim
fi

TRACE="$OUT/trace-$ROWS.csv"
if [[ ! -s $TRACE ]]; then
  awk -v rows="$ROWS" -v sensors="$SENSORS" 'BEGIN {
    print "ts,sensor,temperature,pressure"
    for (i = 0; i < rows; i++) {
      printf "%d,s%d,%.2f,%.3f\n", 1700000000000 + i, i % sensors, 20 + (i % 997) / 100, 1 + (i % 389) / 1000
    }
  }' > "$TRACE.tmp"
  mv "$TRACE.tmp" "$TRACE"
fi
# The run lasts the trace's span (one row per ms) plus a second.
SPAN_S=$(( ROWS / 1000 + 1 ))
cat > "$OUT/fleet.toml" <<TOML
[run]
seed = 1
clock = "virtual"
start_time = "2026-03-14T00:00:00Z"
duration = "${SPAN_S}s"
[sink.null]
[profiles.rec]
protocol = "null"
[profiles.rec.replay]
file = "$(realpath "$TRACE")"
time = "ts"
device = "sensor"
[[fleet]]
profile = "rec"
TOML

/usr/bin/time -f "%e %M" -o "$OUT/time.txt" \
  "$BIN" --config "$OUT/fleet.toml" --cores 1 --quiet --report-dir "$OUT/report" > "$OUT/run.txt" 2>&1

python3 - "$OUT" "$ROWS" "$TRACE" <<'PY'
import json, os, sys
out, rows, trace = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r = json.load(open(os.path.join(out, "report", "report.json")))
total_s, max_kb = open(os.path.join(out, "time.txt")).read().split()[-2:]
total_s = float(total_s)
print(json.dumps({
    "rows": rows,
    "trace_bytes": os.path.getsize(trace),
    "messages": r["messages"],
    "run_wall_s": r["wall_seconds"],
    "rows_per_s": round(r["messages"] / r["wall_seconds"]),
    "process_wall_s": total_s,
    "rows_per_s_total": round(r["messages"] / total_s),
    "peak_rss_bytes": int(max_kb) * 1024,
    "report_peak_rss_bytes": r["peak_rss_bytes"],
}, indent=2))
PY
