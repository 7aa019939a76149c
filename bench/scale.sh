#!/usr/bin/env bash
# Scaling by shard count, runnable on any machine: shard counts beyond the machine's cores are
# oversubscribed (threads share cores), which leaves the engine's per-shard work constant and
# shows what the shard-to-shard parts cost per shard before anyone has a 16-core box.
#
#   bench/scale.sh
#   BENCH_SHARDS="1 2 4 8 16 32 64"   shard counts (default)
#   BENCH_DEVICES=1000000             fleet (bench/million.toml's 3-field profile, null sink)
#   BENCH_SPAN=2m                     virtual-clock run length (sim time)
#   BENCH_CONTROL=1                   also time gRPC control fan-out per shard count (0: skip)
#   BENCH_CONTROL_DEVICES=100000      fleet of the control case (bench/grpc_million.toml)
#
# Prints one JSON object:
# - `virtual`: per shard count, msg/s, msg/s per shard, the ratio to one shard, wall seconds
#   to build the fleet (`spawn_seconds`: every shard builds its devices, then they meet), and
#   the end-of-run wall time not spent ticking (`finish_seconds`: the process's wall time
#   minus the report's run wall time: joining the shards, merging their figures into one
#   report, writing it).
# - `control`: per shard count, `iot-sim serve` in realtime with BENCH_CONTROL_DEVICES devices,
#   and the wall time of each call of bench/grpc_control.rs (SpawnDevices of 10,000 specs,
#   StopDevices, InjectFault and ClearFaults by label selector on the whole fleet,
#   GetFleetStatus): each fans out to every shard and merges their replies.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${BENCH_SHARDS:-1 2 4 8 16 32 64}
N=${BENCH_DEVICES:-1000000}
SPAN=${BENCH_SPAN:-2m}
CONTROL=${BENCH_CONTROL:-1}
CN=${BENCH_CONTROL_DEVICES:-100000}
OUT=target/bench/scale
mkdir -p "$OUT"
cargo build --release --quiet --bin iot-sim --example grpc_bench
BIN=target/release/iot-sim
sed "s/^count = .*/count = $N/" bench/million.toml > "$OUT/fleet.toml"
half=$((CN / 2))
sed "s/^count = .*/count = $half/; s|^report_dir = .*|report_dir = \"$OUT/control-report\"|" \
  bench/grpc_million.toml > "$OUT/control.toml"

echo "[" > "$OUT/virtual.json"
first=1
for s in $SHARDS; do
  t0=$(date +%s%N)
  "$BIN" --config "$OUT/fleet.toml" --quiet --report-dir "$OUT/v$s" --cores "$s" \
    --clock virtual --duration "$SPAN" > "$OUT/v$s.txt" 2>&1
  t1=$(date +%s%N)
  [[ $first == 1 ]] || echo "," >> "$OUT/virtual.json"
  first=0
  python3 - "$OUT/v$s/report.json" "$s" "$t0" "$t1" >> "$OUT/virtual.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s, t0, t1 = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
process_s = (t1 - t0) / 1e9
print(json.dumps({
    "shards": s, "pinned_shards": r.get("pinned_shards"), "messages": r["messages"],
    "msgs_per_s": r["msgs_per_s"], "msgs_per_s_per_shard": round(r["msgs_per_s"] / s, 1),
    "spawn_seconds": r["spawn_seconds"], "run_wall_seconds": r["wall_seconds"],
    "finish_seconds": round(process_s - r["wall_seconds"] - r["spawn_seconds"], 3),
    "peak_rss_bytes": r["peak_rss_bytes"], "cpu_seconds": r["cpu_seconds"],
}))
EOF
done
echo "]" >> "$OUT/virtual.json"

echo "[" > "$OUT/control.json"
if [[ $CONTROL == 1 ]]; then
  first=1
  for s in $SHARDS; do
    "$BIN" serve --config "$OUT/control.toml" --cores "$s" --grpc 127.0.0.1:0 --quiet \
      > "$OUT/serve-$s.out" 2> "$OUT/serve-$s.log" &
    pid=$!
    addr=""
    for _ in $(seq 1 600); do
      addr=$(sed -n 's/^grpc: listening on //p' "$OUT/serve-$s.log" | head -1)
      [[ -n $addr ]] && break
      kill -0 $pid 2>/dev/null || { cat "$OUT/serve-$s.log" >&2; exit 1; }
      sleep 0.1
    done
    [[ -n $addr ]] || { echo "serve did not start" >&2; kill $pid; exit 1; }
    target/release/examples/grpc_bench "$addr" "$CN" 10000 "zone in (a,b)" > "$OUT/c$s.json"
    kill -TERM $pid; wait $pid 2>/dev/null || true
    [[ $first == 1 ]] || echo "," >> "$OUT/control.json"
    first=0
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["shards"]=int(sys.argv[2]); print(json.dumps(d))' \
      "$OUT/c$s.json" "$s" >> "$OUT/control.json"
  done
fi
echo "]" >> "$OUT/control.json"

python3 - "$OUT/virtual.json" "$OUT/control.json" "$N" "$SPAN" "$CN" <<'EOF'
import json, os, sys
v, c = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
one = next((x["msgs_per_s"] for x in v if x["shards"] == 1), None)
for x in v:
    x["ratio_to_one_shard"] = round(x["msgs_per_s"] / one, 3) if one else None
print(json.dumps({
    "machine": {"nproc": os.cpu_count()},
    "devices": int(sys.argv[3]), "span": sys.argv[4], "control_devices": int(sys.argv[5]),
    "virtual": v, "control": c,
}, indent=2))
EOF
