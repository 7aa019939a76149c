#!/usr/bin/env bash
# Sparkplug B (issue 22): CPU per message of 10,000 devices under 100 edge nodes to Mosquitto,
# next to the JSON envelope of the same fleet over the same broker. Prints one JSON object.
#
#   bench/sparkplug.sh                 10,000 devices, 100 edge nodes, 6 fields, 10 s interval
#   BENCH_DEVICES=10000 BENCH_NODES=100
#   BENCH_SHORT=10s BENCH_LONG=60s     the two sim spans (virtual clock)
#   BENCH_ROUNDS=1                     rounds (the median of each figure is kept)
#   MQTT_URL=mqtt://127.0.0.1:1883     the broker (scripts/services.sh starts Mosquitto)
#   BIN=target/debug/iot-sim           another build (default: the release build)
#
# Method (as bench/formats.sh): each format runs the same fleet (virtual clock, --cores 1,
# [run] pin = false: the broker shares the cores) for a short and a long sim span; CPU per
# message is (cpu_long - cpu_short) / (msgs_long - msgs_short), leaving out start-up and the
# edge nodes' connects. Only iot-sim's CPU is counted, not the broker's. The envelope goes over
# the pooled connections (the default); Sparkplug over one session per edge node. Sparkplug's
# messages include its births (one NBIRTH per node, one DBIRTH per device).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${BENCH_DEVICES:-10000}
NODES=${BENCH_NODES:-100}
SHORT=${BENCH_SHORT:-10s}
LONG=${BENCH_LONG:-60s}
ROUNDS=${BENCH_ROUNDS:-1}
URL=${MQTT_URL:-mqtt://127.0.0.1:1883}
OUT=target/bench/sparkplug
mkdir -p "$OUT"
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet --bin iot-sim
  BIN=target/release/iot-sim
fi
PER=$((DEVICES / NODES))

write_fleet() { # format duration file
  {
    cat <<TOML
[run]
seed = 1
clock = "virtual"
start_time = "2026-03-14T00:00:00Z"
duration = "$2"
pin = false

[sink.mqtt]
url = "$URL"

[profiles.sensor]
protocol = "mqtt"
topic = "bench/sparkplug/{device_id}"
interval = "10s"
format = "$1"

[profiles.sensor.fields.temperature]
type = "diurnal"
baseline = 22.0
amplitude = 5.0
peak_hour = 14
noise_stddev = 0.3
decimals = 2

[profiles.sensor.fields.humidity]
type = "brownian"
start = 55.0
mean = 55.0
volatility = 0.5
mean_reversion = 0.1
min = 20.0
max = 95.0

[profiles.sensor.fields.pressure]
type = "gaussian"
mean = 1013
stddev = 2

[profiles.sensor.fields.co2]
type = "gaussian"
mean = 600
stddev = 50

[profiles.sensor.fields.door]
type = "markov"
states = ["closed", "open"]
transition_matrix = [[0.95, 0.05], [0.30, 0.70]]

[profiles.sensor.fields.fw]
type = "static"
value = "1.4.2"
TOML
    if [[ $1 == sparkplug_b ]]; then
      printf '\n[profiles.sensor.sparkplug]\ngroup_id = "bench"\nedge_node = "{labels.node}"\n'
    fi
    for n in $(seq 0 $((NODES - 1))); do
      printf '\n[[fleet]]\nprofile = "sensor"\ncount = %d\nlabels = { node = "node%03d" }\n' "$PER" "$n"
    done
  } > "$3"
}

for r in $(seq 1 "$ROUNDS"); do
  for f in envelope sparkplug_b; do
    for span in short long; do
      d=$SHORT; [[ $span == long ]] && d=$LONG
      write_fleet "$f" "$d" "$OUT/$f-$span.toml"
      "$BIN" --config "$OUT/$f-$span.toml" --cores 1 --quiet --report-dir "$OUT/$f-$span-$r" \
        > "$OUT/$f-$span-$r.txt" 2>&1
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$DEVICES" "$NODES" <<'PY'
import json, os, statistics, sys
out, rounds, devices, nodes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rep(f, span, r):
    j = json.load(open(os.path.join(out, f"{f}-{span}-{r}", "report.json")))
    return j["cpu_seconds"], j["messages"], j["runs"][0]["bytes"], j.get("errors", 0)
res = {"devices": devices, "edge_nodes": nodes, "fields": 6, "cores": 1, "sink": "mqtt (Mosquitto)",
       "clock": "virtual", "rounds": rounds, "formats": {}}
for f in ["envelope", "sparkplug_b"]:
    cpu_ns, bpm, msgs = [], [], []
    for r in range(1, rounds + 1):
        c1, m1, b1, _ = rep(f, "short", r)
        c2, m2, b2, _ = rep(f, "long", r)
        cpu_ns.append((c2 - c1) / (m2 - m1) * 1e9)
        bpm.append(b2 / m2)
        msgs.append(m2)
    res["formats"][f] = {"cpu_ns_per_msg": round(statistics.median(cpu_ns), 1),
                         "bytes_per_msg": round(statistics.median(bpm), 1),
                         "messages_long": statistics.median(msgs)}
base = res["formats"]["envelope"]["cpu_ns_per_msg"]
res["formats"]["sparkplug_b"]["cpu_ratio_to_envelope"] = round(
    res["formats"]["sparkplug_b"]["cpu_ns_per_msg"] / base, 2)
print(json.dumps(res, indent=2))
PY
