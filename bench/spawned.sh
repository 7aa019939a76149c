#!/usr/bin/env bash
# Spawned fleets against the same fleet from a file (issue 25): two builds alternately, in one
# sitting, on the 3-field profile of bench/million.toml, null sink, one shard. Prints one JSON
# object (also target/bench/spawned/result.json):
#
#   file      BENCH_DEVICES devices from the fleet file, virtual clock, BENCH_SPAN: the
#             reference (each build once)
#   scenario  one device from the file and BENCH_DEVICES - 1 spawned by a scenario step at 0 s,
#             virtual clock, BENCH_SPAN: messages per CPU-second, CPU per message, peak RSS
#   grpc      `iot-sim serve --cores 1`, BENCH_GRPC_DEVICES devices (1 s interval) spawned with
#             `iot-sim spawn` (SpawnDevices), realtime; after 3 s, a BENCH_WINDOW-second window:
#             CPU per message (/proc/PID/stat, messages from /metrics), then RSS and where it sits
#             (bench/lib/arenas.py)
#
#   bench/spawned.sh BASE_BIN NEW_BIN
#   BENCH_DEVICES=1000000 BENCH_SPAN=2m BENCH_GRPC_DEVICES=200000 BENCH_WINDOW=20 BENCH_REPS=2
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: bench/spawned.sh BASE_BIN NEW_BIN}
NEW=${2:?usage: bench/spawned.sh BASE_BIN NEW_BIN}
N=${BENCH_DEVICES:-1000000}
SPAN=${BENCH_SPAN:-2m}
G=${BENCH_GRPC_DEVICES:-200000}
WIN=${BENCH_WINDOW:-20}
REPS=${BENCH_REPS:-2}
OUT=target/bench/spawned
mkdir -p "$OUT"
sed "s/^count = .*/count = $N/; /^report_dir/d" bench/million.toml > "$OUT/file.toml"
sed "s/^count = .*/count = 1/; /^report_dir/d; s|^clock = \"virtual\"|&\nscenario = \"spawn.toml\"|" \
  bench/million.toml > "$OUT/scenario.toml"
cat > "$OUT/spawn.toml" <<EOF
name = "spawned"
duration = "$SPAN"
[[step]]
at = "0s"
spawn = { profile = "sensor", count = $((N - 1)) }
EOF
# The fleet's profile as a profile file, one message a second.
awk '/^\[profiles\.sensor\]/ {f = 1; next} f' bench/million.toml \
  | sed 's/^\[profiles\.sensor\./[/; s/^interval = .*/interval = "1s"/' > "$OUT/sensor.toml"

virtual() { # $1 = label, $2 = binary, $3 = config: messages per CPU-second, CPU ns/msg, peak RSS
  rm -rf "$OUT/$1"
  "$2" --config "$OUT/$3.toml" --quiet --report-dir "$OUT/$1" --cores 1 --clock virtual \
    --duration "$SPAN" > "$OUT/$1.txt" 2>&1
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1]+"/report.json"))
print(round(r["messages"]/r["cpu_seconds"]), round(r["cpu_seconds"]*1e9/max(r["messages"],1),1), r["peak_rss_bytes"])' "$OUT/$1"
}

grpc() { # $1 = label, $2 = binary: CPU ns/msg in the window, msg/s, RSS bytes, arena MiB, spawn s
  local pid addr adm t0 t1 c0 c1 m0 m1
  "$2" serve --cores 1 --grpc 127.0.0.1:0 --admin 127.0.0.1:0 --quiet > "$OUT/$1.out" 2> "$OUT/$1.log" &
  pid=$!
  for _ in $(seq 1 100); do
    addr=$(sed -n 's/^grpc: listening on //p' "$OUT/$1.log" | head -1)
    adm=$(sed -n 's|.*admin: listening on http://\([^ ]*\).*|\1|p' "$OUT/$1.log" | head -1)
    [[ -n $addr && -n $adm ]] && break
    sleep 0.1
  done
  [[ -n $addr ]] || { kill $pid; echo "serve did not start" >&2; exit 1; }
  t0=$(date +%s.%N)
  "$2" spawn -r "$addr" -p "$OUT/sensor.toml" -n "$G" > "$OUT/$1.spawn" 2>&1
  t1=$(date +%s.%N)
  sleep 3
  msgs() { curl -s "http://$adm/metrics" | awk '/^iot_sim_shard_messages_total/ {s += $2} END {printf "%d", s}'; }
  c0=$(awk '{print $14 + $15}' "/proc/$pid/stat"); m0=$(msgs)
  sleep "$WIN"
  c1=$(awk '{print $14 + $15}' "/proc/$pid/stat"); m1=$(msgs)
  python3 bench/lib/arenas.py "$pid" > "$OUT/$1.arenas.json"
  local rss
  rss=$(awk '/^VmRSS/ {print $2 * 1024}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c 'import json,sys
c0,c1,m0,m1,tck,win=(float(x) for x in sys.argv[1:7])
a=json.load(open(sys.argv[8]))
print(round((c1-c0)/tck*1e9/max(1,m1-m0),1), round((m1-m0)/win), sys.argv[7], a["arenas_mib"], round(float(sys.argv[10])-float(sys.argv[9]),2))' \
    "$c0" "$c1" "$m0" "$m1" "$(getconf CLK_TCK)" "$WIN" "$rss" "$OUT/$1.arenas.json" "$t0" "$t1"
}

rows=()
for side in base new; do
  bin=$BASE; [[ $side == new ]] && bin=$NEW
  read -r mps ns rss < <(virtual "file-$side" "$bin" file)
  rows+=("{\"case\": \"file\", \"build\": \"$side\", \"msgs_per_cpu_s\": $mps, \"cpu_ns_per_msg\": $ns, \"peak_rss_bytes\": $rss}")
done
for rep in $(seq 1 "$REPS"); do
  for side in base new; do
    bin=$BASE; [[ $side == new ]] && bin=$NEW
    read -r mps ns rss < <(virtual "scenario-$side-$rep" "$bin" scenario)
    rows+=("{\"case\": \"scenario\", \"build\": \"$side\", \"msgs_per_cpu_s\": $mps, \"cpu_ns_per_msg\": $ns, \"peak_rss_bytes\": $rss}")
    read -r ns mps rss arenas spawn_s < <(grpc "grpc-$side-$rep" "$bin")
    rows+=("{\"case\": \"grpc\", \"build\": \"$side\", \"cpu_ns_per_msg\": $ns, \"msgs_per_s\": $mps, \"rss_bytes\": $rss, \"arenas_mib\": $arenas, \"spawn_s\": $spawn_s}")
    echo "${rows[-2]}" >&2
    echo "${rows[-1]}" >&2
  done
done
(IFS=,; echo "[${rows[*]}]") | tee "$OUT/rows.json" | python3 -c '
import json, statistics, sys
rows = json.load(sys.stdin)
n, g, span = (sys.argv[i] for i in (1, 2, 3))
def med(case, build, k):
    v = [r[k] for r in rows if r["case"] == case and r["build"] == build]
    return statistics.median(v) if v else None
out = {"devices": int(n), "grpc_devices": int(g), "span": span, "runs": rows, "medians": {}, "ratios_new_over_base": {}}
for case, keys in (("file", ("msgs_per_cpu_s", "cpu_ns_per_msg", "peak_rss_bytes")),
                   ("scenario", ("msgs_per_cpu_s", "cpu_ns_per_msg", "peak_rss_bytes")),
                   ("grpc", ("cpu_ns_per_msg", "msgs_per_s", "rss_bytes", "arenas_mib", "spawn_s"))):
    for k in keys:
        b, w = med(case, "base", k), med(case, "new", k)
        out["medians"][f"{case}.{k}"] = {"base": b, "new": w}
        if b:
            out["ratios_new_over_base"][f"{case}.{k}"] = round(w / b, 3)
# Spawned against the file fleet, per build (virtual clock, messages per CPU-second).
for side in ("base", "new"):
    f, s = med("file", side, "msgs_per_cpu_s"), med("scenario", side, "msgs_per_cpu_s")
    out[f"scenario_over_file_{side}"] = round(s / f, 3)
print(json.dumps(out, indent=1))' "$N" "$G" "$SPAN" | tee "$OUT/result.json"
