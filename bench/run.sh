#!/usr/bin/env bash
# Engine benchmarks of issue 2. Prints one JSON object with every figure.
#
#   bench/run.sh                 all three cases
#   BENCH_SPAN=1h bench/run.sh   the full 720M-message virtual run (default 10m = 120M)
#   BENCH_RT_SECONDS=60          realtime case length (wall seconds, default 60)
#   BENCH_DEVICES=1000000        fleet size (default 1M)
#   BENCH_ONLY=spawn|virtual|realtime   run one case
#
# Each case runs the release binary on bench/million.toml (3-field profile, null sink) with the
# count and run settings rewritten, and reads the figures back from report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SPAN=${BENCH_SPAN:-10m}
RT=${BENCH_RT_SECONDS:-60}
N=${BENCH_DEVICES:-1000000}
ONLY=${BENCH_ONLY:-all}
OUT=target/bench
mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/iot-sim

fleet() { # $1 = count, $2 = file
  sed "s/^count = .*/count = $1/" bench/million.toml > "$2"
}

run() { # $1 = name, $2 = count, rest = flags
  local name=$1 count=$2; shift 2
  fleet "$count" "$OUT/$name.toml"
  "$BIN" --config "$OUT/$name.toml" --quiet --report-dir "$OUT/$name" "$@" > "$OUT/$name.txt" 2>&1
}

if [[ $ONLY == all || $ONLY == spawn ]]; then
  run spawn_base 1 --cores 1 --clock virtual --duration 1ms
  run spawn_1 "$N" --cores 1 --clock virtual --duration 1ms
  run spawn_2 "$N" --cores 2 --clock virtual --duration 1ms
fi
if [[ $ONLY == all || $ONLY == virtual ]]; then
  run virtual_1 "$N" --cores 1 --clock virtual --duration "$SPAN"
  run virtual_2 "$N" --cores 2 --clock virtual --duration "$SPAN"
fi
if [[ $ONLY == all || $ONLY == realtime ]]; then
  run realtime_2 "$N" --cores 2 --clock realtime --duration "${RT}s"
fi

python3 - "$OUT" "$N" "$ONLY" <<'PY'
import json, os, sys
out, n, only = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def rep(name):
    p = os.path.join(out, name, "report.json")
    return json.load(open(p)) if os.path.exists(p) else None
res = {"devices": n, "machine": {"nproc": os.cpu_count()}}
b, s1, s2 = rep("spawn_base"), rep("spawn_1"), rep("spawn_2")
if only in ("all", "spawn") and b and s1:
    res["spawn"] = {
        "spawn_seconds_1_core": s1["spawn_seconds"],
        "spawn_seconds_2_cores": s2["spawn_seconds"] if s2 else None,
        "peak_rss_bytes": s1["peak_rss_bytes"],
        "baseline_peak_rss_bytes": b["peak_rss_bytes"],
        "bytes_per_device": round((s1["peak_rss_bytes"] - b["peak_rss_bytes"]) / n, 1),
        "target": "<= 200 B/device, spawn <= 1 s",
    }
v1, v2 = rep("virtual_1"), rep("virtual_2")
if only in ("all", "virtual") and v1 and v2:
    res["virtual_null"] = {
        "sim_seconds": v1["sim_seconds"],
        "messages": v1["messages"],
        "msgs_per_s_1_core": v1["msgs_per_s"],
        "msgs_per_s_2_cores": v2["msgs_per_s"],
        "scaling_2_over_1": round(v2["msgs_per_s"] / v1["msgs_per_s"], 2),
        "ns_per_message_per_core_1": round(1e9 / v1["msgs_per_s"], 1),
        "cpu_ns_per_message_1": round(v1["cpu_seconds"] * 1e9 / v1["messages"], 1),
        "cpu_ns_per_message_2": round(v2["cpu_seconds"] * 1e9 / v2["messages"], 1),
        "sim_speed_ratio_2_cores": v2["sim_speed_ratio"],
        "target": ">= 2.5M msg/s per core, >= 1.8x from 1 to 2 cores",
    }
r = rep("realtime_2")
if only in ("all", "realtime") and r:
    lat = r["tick_lateness_us"]
    res["realtime_null"] = {
        "wall_seconds": r["wall_seconds"],
        "messages": r["messages"],
        "msgs_per_s": r["msgs_per_s"],
        "tick_lateness_us": {k: lat[k] for k in ("p50", "p90", "p99", "p999", "max")},
        "cpu_seconds": r["cpu_seconds"],
        "cpu_share_of_2_cores": round(r["cpu_seconds"] / r["wall_seconds"] / 2, 3),
        "cpu_ns_per_message": round(r["cpu_seconds"] * 1e9 / max(r["messages"], 1), 1),
        "target": "tick lateness p99 <= 1 ms",
    }
print(json.dumps(res, indent=2))
PY
