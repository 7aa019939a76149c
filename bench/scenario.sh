#!/usr/bin/env bash
# Scenario benchmarks of issue 7. Prints one JSON object.
#
#   bench/scenario.sh                 both cases
#   BENCH_ONLY=realtime|virtual       one case
#   BENCH_CORES=2                     shards
#
# realtime: bench/scenario_million.toml (1,000,000 devices, 5 s interval, null sink, ~200k msg/s)
#   for 60 s, twice: without a scenario (baseline) and with bench/scenario_load.toml (a
#   disconnect on 100,000 devices at 20 s, 100,000 devices spawned at 40 s). Tick lateness p50,
#   p99, p99.9 and max of both runs, and the steps' own lateness.
# virtual: sim seconds per wall second of scenarios/ramp_up.toml (on bench/ramp_fleet.toml: its
#   profile on the null sink) and scenarios/diurnal_week.toml (as shipped, file sink).
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY=${BENCH_ONLY:-all}
CORES=${BENCH_CORES:-2}
OUT=target/bench/scenario
mkdir -p "$OUT"
cargo build --release --quiet --bin iot-sim
BIN=$PWD/target/release/iot-sim

if [[ $ONLY == all || $ONLY == realtime ]]; then
  "$BIN" --config bench/scenario_million.toml --duration 60s --cores "$CORES" --quiet \
    --report-dir "$OUT/baseline" > "$OUT/baseline.txt" 2>&1
  "$BIN" scenario run bench/scenario_load.toml --config bench/scenario_million.toml \
    --cores "$CORES" --quiet --report-dir "$OUT/load" > "$OUT/load.txt" 2>&1
fi
if [[ $ONLY == all || $ONLY == virtual ]]; then
  "$BIN" scenario run scenarios/ramp_up.toml --config bench/ramp_fleet.toml --clock virtual \
    --cores "$CORES" --quiet --report-dir "$OUT/ramp_up" > "$OUT/ramp_up.txt" 2>&1
  (cd "$OUT" && "$BIN" scenario run "$OLDPWD/scenarios/diurnal_week.toml" --clock virtual \
    --cores "$CORES" --quiet --report-dir diurnal_week > diurnal_week.txt 2>&1)
fi

python3 - "$OUT" "$CORES" <<'PY'
import json, os, sys
out, cores = sys.argv[1], int(sys.argv[2])
def rep(name):
    p = os.path.join(out, name, "report.json")
    return json.load(open(p)) if os.path.exists(p) else None
res = {"cores": cores, "machine": {"nproc": os.cpu_count()}}
b, l = rep("baseline"), rep("load")
if b and l:
    keep = lambda p: {k: p[k] for k in ("count", "p50", "p99", "p999", "max")}
    bl, ll = b["tick_lateness_us"], l["tick_lateness_us"]
    res["realtime_1m_devices"] = {
        "wall_seconds": [b["wall_seconds"], l["wall_seconds"]],
        "messages": [b["messages"], l["messages"]],
        "tick_lateness_us_baseline": keep(bl),
        "tick_lateness_us_with_scenario": keep(ll),
        "p99_ratio": round(ll["p99"] / max(bl["p99"], 1), 2),
        "max_ratio": round(ll["max"] / max(bl["max"], 1), 2),
        "step_lateness_us": l["scenario"]["step_lateness_us"],
        "devices_at_end": l["devices"],
    }
for name in ("ramp_up", "diurnal_week"):
    r = rep(name)
    if r:
        res[name] = {
            "sim_seconds": r["sim_seconds"],
            "wall_seconds": r["wall_seconds"],
            "sim_seconds_per_wall_second": r["sim_speed_ratio"],
            "messages": r["messages"],
            "msgs_per_s": r["msgs_per_s"],
            "thresholds_passed": all(t["passed"] for t in r["thresholds"]),
        }
print(json.dumps(res, indent=2))
PY
