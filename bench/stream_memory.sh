#!/usr/bin/env bash
# Memory of unread telemetry streams on a busy machine (issue 25). Prints one JSON object.
#
#   bench/stream_memory.sh                       5 runs with 2 CPU hogs (`yes`) beside
#   BENCH_RUNS=5 BENCH_HOGS=2                    runs, hogs (0 = an idle machine)
#   BENCH_STREAMS=200 BENCH_UNREAD_S=8           unread StreamTelemetry calls, seconds
#   BIN=... EX=...                               another build (a baseline) of iot-sim and of
#                                                the hardening_bench example
#
# Each run serves tests/abuse_fleet.toml (200 devices, 3 fields, 100 ms: 6,000 points/s into
# each stream) as tests/it/abuse_grpc.rs does, opens the streams and never reads them
# (`hardening_bench streams`), and samples the runtime's /proc/PID/smaps every 0.2 s
# (bench/lib/arenas.py): RSS growth over idle against the points budget, and where the peak
# sits (glibc's main heap, its thread arenas, other anonymous mappings).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${BENCH_RUNS:-5}
HOGS=${BENCH_HOGS:-2}
STREAMS=${BENCH_STREAMS:-200}
UNREAD=${BENCH_UNREAD_S:-8}
OUT=target/bench/stream_memory
mkdir -p "$OUT"
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet --bin iot-sim --example hardening_bench
  BIN=target/release/iot-sim
fi
EX=${EX:-target/release/examples/hardening_bench}
PID=""
WATCH=""
HOGPIDS=()
trap 'kill $PID $WATCH ${HOGPIDS[@]} 2>/dev/null; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 "$HOGS"); do
  yes > /dev/null &
  HOGPIDS+=($!)
done
echo '[]' > "$OUT/runs.json"
for r in $(seq 1 "$RUNS"); do
  : > "$OUT/serve.log"
  "$BIN" serve --cores 2 --grpc 127.0.0.1:0 --quiet --config tests/abuse_fleet.toml \
    > "$OUT/serve.out" 2> "$OUT/serve.log" &
  PID=$!
  ADDR=""
  for _ in $(seq 1 600); do
    ADDR=$(sed -n 's/^grpc: listening on //p' "$OUT/serve.log" | head -1)
    [[ -n $ADDR ]] && break
    kill -0 $PID 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
    sleep 0.1
  done
  python3 bench/lib/arenas.py --watch $PID > "$OUT/peak-$r.json" &
  WATCH=$!
  "$EX" streams "$ADDR" "$STREAMS" "$UNREAD" > "$OUT/streams-$r.json"
  kill -TERM $WATCH
  wait $WATCH || true
  WATCH=""
  kill -TERM $PID
  wait $PID 2>/dev/null || true
  PID=""
  python3 - "$OUT/runs.json" "$OUT/streams-$r.json" "$OUT/peak-$r.json" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))
s = json.load(open(sys.argv[2]))
peak = json.load(open(sys.argv[3]))
budget = s["stream_budget_bytes"]
runs.append({
    "idle_rss_mib": round(s["idle_rss_bytes"] / 2**20, 1),
    "rss_growth_mib": round(s["rss_growth_bytes"] / 2**20, 1),
    "peak_growth_over_budget": round((peak["total_mib"] * 2**20 - s["idle_rss_bytes"]) / budget, 2),
    "within_bound": s["rss_growth_within_budget"],
    "points_dropped": s["points_dropped_total"],
    "peak": peak,
})
json.dump(runs, open(sys.argv[1], "w"))
PY
done
python3 - "$OUT/runs.json" "$HOGS" "$STREAMS" "$UNREAD" "$BIN" <<'PY'
import json, os, sys
runs = json.load(open(sys.argv[1]))
print(json.dumps({
    "binary": sys.argv[5], "hogs": int(sys.argv[2]), "streams": int(sys.argv[3]),
    "unread_s": int(sys.argv[4]), "load_average": os.getloadavg()[0],
    "budget_mib": 256, "runs": runs,
}, indent=1))
PY
