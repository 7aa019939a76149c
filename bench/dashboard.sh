#!/usr/bin/env bash
# Dashboard and HTML report benchmarks of issue 9. Prints one JSON object (also written to
# target/bench/dashboard.json).
#
#   bench/dashboard.sh
#   BENCH_SPAN=2m          virtual sim time per run of the clients case (1M devices every 5 s
#                          = 200k msg per sim-s)
#   BENCH_PAIRS=2          none/five pairs, run alternately (the ratio is taken per pair)
#   BENCH_DEVICES=1000000
#   BENCH_ONLY=clients|report
#   BENCH_BIN=path         use this binary instead of building target/release/iot-sim
#
# clients: virtual-clock msg/s on 1 core with 1M devices (bench/million.toml) and the admin
#   server on, with no dashboard client vs five clients doing what the page does: each polls
#   /api/v1/overview and /api/v1/history every second, pages /api/v1/devices (20 a page)
#   every 5 s and holds one SSE telemetry stream of every device open
#   (/api/v1/telemetry/stream). Wall msg/s and CPU seconds per million messages (the process's
#   own CPU: on a shared machine wall time swings with the neighbours' load, CPU much less).
# report: a one-hour virtual run of 1M devices (interval 60 s: 60M messages), then the size of
#   report.json and report.html and the time to render and write report.html (the run logs it).
set -euo pipefail
cd "$(dirname "$0")/.."
SPAN=${BENCH_SPAN:-2m}
PAIRS=${BENCH_PAIRS:-2}
N=${BENCH_DEVICES:-1000000}
ONLY=${BENCH_ONLY:-all}
OUT=target/bench/dashboard
mkdir -p "$OUT"
if [[ -z ${BENCH_BIN:-} ]]; then cargo build --release --quiet --bin iot-sim; fi
BIN=${BENCH_BIN:-$PWD/target/release/iot-sim}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One dashboard client against http://$1 until the process $2 ends.
client() {
  local addr=$1 pid=$2 log=$3 i=0
  # The stream ends just before the admin request deadline (10 s); EventSource reconnects after
  # 300 ms, and so does this loop.
  ( : > "$log.sse"
    while kill -0 "$pid" 2>/dev/null; do
      curl -s -N --max-time 60 "http://$addr/api/v1/telemetry/stream" >> "$log.sse" 2>/dev/null || true
      sleep 0.3
    done ) &
  local sse=$!
  : > "$log"
  while kill -0 "$pid" 2>/dev/null; do
    curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "http://$addr/api/v1/overview" >> "$log" 2>/dev/null || true
    curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "http://$addr/api/v1/history" >> "$log" 2>/dev/null || true
    if (( i % 5 == 0 )); then curl -s -o /dev/null "http://$addr/api/v1/devices?limit=20" 2>/dev/null || true; fi
    i=$((i + 1))
    sleep 1
  done
  kill "$sse" 2>/dev/null || true
}

run_case() { # $1 = name, $2 = clients
  local port; port=$(free_port)
  "$BIN" --config "$OUT/million.toml" --quiet --cores 1 --clock virtual --duration "$SPAN" \
    --report-dir "$OUT/$1" --admin "127.0.0.1:$port" > "$OUT/$1.txt" 2>&1 &
  local pid=$! pids=()
  for c in $(seq 1 "$2"); do
    ( for _ in $(seq 1 600); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.2; done
      client "127.0.0.1:$port" "$pid" "$OUT/$1.client$c" ) &
    pids+=($!)
  done
  wait "$pid"
  for p in "${pids[@]}"; do wait "$p" || true; done
}

if [[ $ONLY == all || $ONLY == clients ]]; then
  sed "s/^count = .*/count = $N/" bench/million.toml > "$OUT/million.toml"
  for i in $(seq 1 "$PAIRS"); do
    run_case "none$i" 0
    run_case "five$i" 5
  done
fi

if [[ $ONLY == all || $ONLY == report ]]; then
  sed -e "s/^count = .*/count = $N/" -e 's/^interval = .*/interval = "60s"/' bench/million.toml > "$OUT/hour.toml"
  "$BIN" --config "$OUT/hour.toml" --quiet --cores 1 --clock virtual --duration 1h \
    --report-dir "$OUT/hour" > "$OUT/hour.txt" 2>&1
fi

python3 - "$OUT" "$PAIRS" "$ONLY" <<'PY'
import json, os, re, sys, glob
out, pairs, only = sys.argv[1], int(sys.argv[2]), sys.argv[3]
res = {"bench": "dashboard", "machine": f"{os.cpu_count()} cores, shared"}
def rep(name):
    return json.load(open(f"{out}/{name}/report.json"))
if only in ("all", "clients"):
    rows = []
    for i in range(1, pairs + 1):
        a, b = rep(f"none{i}"), rep(f"five{i}")
        polls = []
        for f in glob.glob(f"{out}/five{i}.client*"):
            if f.endswith(".sse"):
                continue
            for line in open(f):
                t, size = line.split()
                polls.append((float(t), int(float(size))))
        sse = sum(os.path.getsize(f) for f in glob.glob(f"{out}/five{i}.client*.sse"))
        cpu = lambda r: r["cpu_seconds"] / max(r["messages"], 1) * 1e6
        rows.append({
            "none_msgs_per_s": a["msgs_per_s"], "five_msgs_per_s": b["msgs_per_s"],
            "msgs_per_s_ratio_five_over_none": round(b["msgs_per_s"] / a["msgs_per_s"], 3),
            "none_cpu_s_per_million_msgs": round(cpu(a), 3), "five_cpu_s_per_million_msgs": round(cpu(b), 3),
            "cpu_ratio_five_over_none": round(cpu(b) / cpu(a), 3),
            "polls": len(polls),
            "poll_ms_mean": round(1000 * sum(p[0] for p in polls) / max(len(polls), 1), 2),
            "poll_ms_max": round(1000 * max((p[0] for p in polls), default=0), 2),
            "poll_bytes_max": max((p[1] for p in polls), default=0),
            "sse_bytes_received_all_clients": sse,
            "messages": [a["messages"], b["messages"]],
        })
    res["clients"] = {"devices": rep("none1")["devices"], "cores": 1, "clock": "virtual",
                      "sim_seconds": rep("none1")["sim_seconds"], "pairs": rows}
if only in ("all", "report"):
    r = rep("hour")
    log = open(f"{out}/hour.txt").read()
    m = re.search(r"report.html: (\d+) bytes, rendered and written in ([\d.]+) ms", log)
    res["report"] = {"devices": r["devices"], "sim_seconds": r["sim_seconds"], "messages": r["messages"],
                     "wall_seconds": r["wall_seconds"], "timeline_points": len(r["timeline"]["t_s"]),
                     "report_json_bytes": os.path.getsize(f"{out}/hour/report.json"),
                     "report_html_bytes": int(m.group(1)) if m else None,
                     "report_html_ms": float(m.group(2)) if m else None}
print(json.dumps(res, indent=2))
open(f"{out}.json", "w").write(json.dumps(res, indent=2) + "\n")
PY
