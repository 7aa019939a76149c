#!/usr/bin/env bash
# gRPC control benchmark of issue 4. Prints one JSON object (see bench/grpc_control.rs).
#
#   bench/grpc_control.sh                  1,000,000 fleet devices on 2 shards, spawn 100,000
#   BENCH_SPAWN=100000 BENCH_CORES=2       spawn count, shard count
#   BIN=... EX=...                         another build (a baseline) of iot-sim and grpc_bench
#
# Starts `iot-sim serve --config bench/grpc_million.toml` (realtime, null sink), waits until it
# ticks, then times each call (SpawnDevices of BENCH_SPAWN specs in one request, StopDevices
# of them, InjectFault and ClearFaults by label selector on the whole fleet, GetFleetStatus)
# and reads the shards' largest tick lateness during each call and during an idle window of
# the same runtime before it.
set -euo pipefail
cd "$(dirname "$0")/.."
SPAWN=${BENCH_SPAWN:-100000}
CORES=${BENCH_CORES:-2}
OUT=target/bench/grpc
mkdir -p "$OUT"
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet --bin iot-sim --example grpc_bench
  BIN=target/release/iot-sim
fi
EX=${EX:-target/release/examples/grpc_bench}
IOT_SIM_LOG=${IOT_SIM_LOG:-info} "$BIN" serve --config bench/grpc_million.toml --cores "$CORES" --grpc 127.0.0.1:0 --quiet \
  2> "$OUT/serve.log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
ADDR=""
for _ in $(seq 1 600); do
  ADDR=$(sed -n 's/^grpc: listening on //p' "$OUT/serve.log" | head -1)
  [[ -n $ADDR ]] && break
  kill -0 $PID 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n $ADDR ]] || { echo "serve did not start" >&2; exit 1; }
# The bench prints its JSON; then where the runtime's memory sits (bench/lib/arenas.py).
"$EX" "$ADDR" 1000000 "$SPAWN" "zone in (a,b)" > "$OUT/calls.json"
python3 bench/lib/arenas.py $PID > "$OUT/arenas.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["memory_after"]=json.load(open(sys.argv[2])); d["binary"]=sys.argv[3]; print(json.dumps(d, indent=2))' \
  "$OUT/calls.json" "$OUT/arenas.json" "$BIN"
