#!/usr/bin/env bash
# Hardening benchmarks of issue 15. Prints one JSON object with every case.
#
#   bench/hardening.sh                      all cases
#   BENCH_ONLY=churn|streams|selector|profiles   one case
#   BENCH_CYCLES=30 BENCH_COUNT=50000       churn: spawn/stop cycles and devices per cycle
#   BENCH_STREAMS=2000 BENCH_UNREAD_S=20    streams: unread StreamTelemetry calls, seconds
#   BENCH_SELECTOR_DEVICES=1000000          selector: devices with distinct labels
#
# churn:    `iot-sim serve` (empty, 2 shards); RSS idle, after each of 30 "spawn 50,000, stop
#           all" cycles, and over 500 "spawn one device with its own profile, stop it" calls.
# streams:  `iot-sim serve --config bench/streams.toml` (10,000 devices, 1 s interval); RSS and
#           GetRuntimeStatus latency with no stream and with 2,000 unread streams.
# selector: `iot-sim serve` (empty, 2 shards); 1M devices spawned with distinct zone labels;
#           GetFleetStatus with the largest selector the limits allow against a one-value one,
#           and a one-value call made while the large one runs.
# profiles: bench/profiles.sh (peak RSS per profile, 1 vs 1,000 vs 4,000 profiles).
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY=${BENCH_ONLY:-all}
CYCLES=${BENCH_CYCLES:-30}
COUNT=${BENCH_COUNT:-50000}
STREAMS=${BENCH_STREAMS:-2000}
UNREAD=${BENCH_UNREAD_S:-20}
SELN=${BENCH_SELECTOR_DEVICES:-1000000}
OUT=target/bench/hardening
mkdir -p "$OUT"
cargo build --release --quiet --bin iot-sim --example hardening_bench
BIN=target/release/iot-sim
EX=target/release/examples/hardening_bench
PID=""
trap '[[ -n $PID ]] && kill $PID 2>/dev/null; wait 2>/dev/null || true' EXIT

serve() { # args: extra flags; sets ADDR and PID
  : > "$OUT/serve.log"
  "$BIN" serve --cores 2 --grpc 127.0.0.1:0 --quiet "$@" 2> "$OUT/serve.log" &
  PID=$!
  ADDR=""
  for _ in $(seq 1 600); do
    ADDR=$(sed -n 's/^grpc: listening on //p' "$OUT/serve.log" | head -1)
    [[ -n $ADDR ]] && return 0
    kill -0 $PID 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "serve did not start" >&2
  exit 1
}

stop() {
  kill -TERM $PID
  for _ in $(seq 1 200); do kill -0 $PID 2>/dev/null || break; sleep 0.1; done
  kill -0 $PID 2>/dev/null && { echo "serve did not stop on SIGTERM within 20 s" >&2; kill -9 $PID; }
  wait $PID 2>/dev/null || true
  PID=""
}

echo '{}' > "$OUT/all.json"
add() { # $1 = key, $2 = file with JSON
  python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); a[sys.argv[2]]=json.load(open(sys.argv[3])); json.dump(a,open(sys.argv[1],"w"))' \
    "$OUT/all.json" "$1" "$2"
}

if [[ $ONLY == all || $ONLY == churn ]]; then
  serve
  "$EX" churn "$ADDR" "$CYCLES" "$COUNT" > "$OUT/churn.json"
  stop
  add churn "$OUT/churn.json"
fi
if [[ $ONLY == all || $ONLY == streams ]]; then
  serve --config bench/streams.toml
  "$EX" streams "$ADDR" "$STREAMS" "$UNREAD" > "$OUT/streams.json"
  T0=$(date +%s%N)
  stop
  T1=$(date +%s%N)
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["sigterm_to_exit_ms"]=round((int(sys.argv[3])-int(sys.argv[2]))/1e6); json.dump(d,open(sys.argv[1],"w"))' \
    "$OUT/streams.json" "$T0" "$T1"
  add streams "$OUT/streams.json"
fi
if [[ $ONLY == all || $ONLY == selector ]]; then
  serve
  "$EX" selector "$ADDR" "$SELN" > "$OUT/selector.json"
  stop
  add selector "$OUT/selector.json"
fi
if [[ $ONLY == all || $ONLY == profiles ]]; then
  BIN=$BIN bench/profiles.sh > "$OUT/profiles.json"
  add profiles "$OUT/profiles.json"
fi
python3 -c 'import json,sys,os; a=json.load(open(sys.argv[1])); a["machine"]={"nproc": os.cpu_count()}; print(json.dumps(a, indent=2))' "$OUT/all.json"
