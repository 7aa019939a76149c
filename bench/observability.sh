#!/usr/bin/env bash
# Observability benchmarks of issue 8. Prints one JSON object (also written to
# target/bench/observability.json).
#
#   bench/observability.sh                  both cases
#   BENCH_SPAN=5m       virtual sim time per run of the overhead case (default 5m = 60M msgs)
#   BENCH_PAIRS=3       off/on pairs, run alternately (the ratio is taken per pair)
#   BENCH_DEVICES=1000000
#   BENCH_ONLY=overhead|scrape|summary   (summary: only re-read the last run's outputs)
#   BENCH_BIN=path      use this binary instead of building target/release/iot-sim
#
# overhead: virtual-clock msg/s on 1 core with 1M devices (bench/million.toml), admin server
#   off vs on and scraped every second (curl), alternating off/on so drift hits both alike.
#   Besides wall-clock msg/s, the process's CPU time per message (report.json cpu_seconds /
#   messages): on a shared machine wall time swings with the neighbours' load, CPU time much
#   less (both include the 1M-device spawn, the same in both runs).
# scrape:   time and size of GET /metrics with 1M devices in 50 device types (20k each),
#   scraped every second during a virtual run.
set -euo pipefail
cd "$(dirname "$0")/.."
SPAN=${BENCH_SPAN:-5m}
PAIRS=${BENCH_PAIRS:-3}
N=${BENCH_DEVICES:-1000000}
ONLY=${BENCH_ONLY:-all}
OUT=target/bench/observability
mkdir -p "$OUT"
if [[ -z ${BENCH_BIN:-} && $ONLY != summary ]]; then cargo build --release --quiet; fi
BIN=${BENCH_BIN:-$PWD/target/release/iot-sim}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Scrapes http://$1/metrics every second until the process $2 ends; one line per scrape:
# "seconds bytes".
scraper() {
  local addr=$1 pid=$2 log=$3
  : > "$log"
  while kill -0 "$pid" 2>/dev/null; do
    curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "http://$addr/metrics" >> "$log" 2>/dev/null || true
    sleep 1
  done
}

run_off() { # $1 = name, $2 = fleet file
  "$BIN" --config "$2" --quiet --cores 1 --clock virtual --duration "$SPAN" --report-dir "$OUT/$1" > "$OUT/$1.txt" 2>&1
}

run_on() { # $1 = name, $2 = fleet file, $3 = duration
  local port; port=$(free_port)
  "$BIN" --config "$2" --quiet --cores 1 --clock virtual --duration "$3" --report-dir "$OUT/$1" \
    --admin "127.0.0.1:$port" > "$OUT/$1.txt" 2>&1 &
  local pid=$!
  scraper "127.0.0.1:$port" "$pid" "$OUT/$1.scrapes" &
  local spid=$!
  wait "$pid"
  wait "$spid" || true
}

if [[ $ONLY == all || $ONLY == overhead ]]; then
  sed "s/^count = .*/count = $N/" bench/million.toml > "$OUT/million.toml"
  for i in $(seq 1 "$PAIRS"); do
    run_off "off_$i" "$OUT/million.toml"
    run_on "on_$i" "$OUT/million.toml" "$SPAN"
  done
fi
if [[ $ONLY == all || $ONLY == scrape ]]; then
  python3 - "$N" > "$OUT/types50.toml" <<'PY'
import sys
n = int(sys.argv[1]); per = n // 50
print('[run]\nseed = 1\nclock = "virtual"\nstart_time = "2026-03-14T00:00:00Z"\n')
for i in range(50):
    print(f'[[fleet]]\nprofile = "type{i:02}"\ncount = {per}\n')
    print(f'[profiles.type{i:02}]\nprotocol = "null"\ninterval = "5s"\n')
    print(f'[profiles.type{i:02}.fields.v]\ntype = "gaussian"\nmean = {i}\nstddev = 1\n')
PY
  run_on types50 "$OUT/types50.toml" "${BENCH_SCRAPE_SPAN:-3m}"
fi

SUMMARY=$ONLY
[[ $ONLY == summary ]] && SUMMARY=all
python3 - "$OUT" "$N" "$PAIRS" "$SUMMARY" "$SPAN" <<'PY' | tee target/bench/observability.json
import json, os, statistics, sys
out, n, pairs, only, span = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def rep(name):
    return json.load(open(os.path.join(out, name, "report.json")))
def scrapes(name):
    rows = [l.split() for l in open(os.path.join(out, name + ".scrapes")) if l.strip()]
    return [(float(t), int(b)) for t, b in rows if int(b) > 0]
res = {"devices": n, "machine": {"nproc": os.cpu_count()}}
if only in ("all", "overhead"):
    runs = []
    cpu_ns = lambda r: r["cpu_seconds"] / r["messages"] * 1e9
    for i in range(1, pairs + 1):
        off, on = rep(f"off_{i}"), rep(f"on_{i}")
        s = scrapes(f"on_{i}")
        runs.append({
            "off_msgs_per_s": round(off["msgs_per_s"]),
            "on_msgs_per_s": round(on["msgs_per_s"]),
            "wall_on_over_off": round(on["msgs_per_s"] / off["msgs_per_s"], 4),
            "off_cpu_ns_per_msg": round(cpu_ns(off), 1),
            "on_cpu_ns_per_msg": round(cpu_ns(on), 1),
            "cpu_on_over_off": round(cpu_ns(on) / cpu_ns(off), 4),
            "scrapes_during_on": len(s),
        })
    wall = [r["wall_on_over_off"] for r in runs]
    cpu = [r["cpu_on_over_off"] for r in runs]
    res["overhead"] = {
        "sim_span": span,
        "cores": 1,
        "messages_per_run": rep("off_1")["messages"],
        "pairs": runs,
        "median_wall_msgs_per_s_on_over_off": statistics.median(wall),
        "median_cpu_per_msg_on_over_off": statistics.median(cpu),
        "cpu_slowdown_percent": round((statistics.median(cpu) - 1) * 100, 2),
        "target": "admin on and scraped every second < 3% slower",
    }
if only in ("all", "scrape"):
    s = scrapes("types50")
    r = rep("types50")
    times = sorted(t for t, _ in s)
    res["scrape_50_types"] = {
        "devices": r["devices"],
        "device_types": 50,
        "scrapes": len(s),
        "seconds_median": statistics.median(times) if times else None,
        "seconds_max": max(times) if times else None,
        "bytes": max(b for _, b in s) if s else None,
        "run_msgs_per_s": round(r["msgs_per_s"]),
    }
    if only == "all":
        one = [x for i in range(1, pairs + 1) for x in scrapes(f"on_{i}")]
        res["scrape_1_type"] = {
            "scrapes": len(one),
            "seconds_median": statistics.median(t for t, _ in one) if one else None,
            "bytes": max(b for _, b in one) if one else None,
        }
print(json.dumps(res, indent=2))
PY
