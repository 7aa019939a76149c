#!/usr/bin/env bash
# Payload formats (issue 22): CPU per message, msg/s and bytes per message of every format
# (protobuf: the message in $OUT/sensor.proto, written below),
# against the envelope, in one run of this script. Prints one JSON object.
#
#   bench/formats.sh                  100K devices, 6 fields, 10 s interval, 1 core, null sink
#   BENCH_DEVICES=100000              devices; BENCH_LONG=120s / BENCH_SHORT=10s the two runs
#   BENCH_ROUNDS=3                    rounds (the median of each figure is kept)
#   BENCH_FORMATS="envelope template" the formats (the envelope first: it is the baseline);
#                                     template_minijinja is the same template with a leading
#                                     comment, which keeps it off the fast path (same bytes)
#   BIN=target/debug/iot-sim          another build (default: the release build)
#
# Method: each format runs the same fleet (virtual clock, null sink, --cores 1) twice, for a
# short and a long sim span; CPU per message is (cpu_long - cpu_short) / (msgs_long -
# msgs_short), which leaves out the cost of building 100K devices and of starting up. The
# formats are interleaved within each round so that drift in the machine hits all alike.
# Bytes per message come from the report's per-profile byte count. Targets: built-in formats
# within 1.5x of the envelope's CPU per message, a template within 2x.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${BENCH_DEVICES:-100000}
SHORT=${BENCH_SHORT:-10s}
LONG=${BENCH_LONG:-120s}
ROUNDS=${BENCH_ROUNDS:-3}
OUT=target/bench/formats
mkdir -p "$OUT"
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet --bin iot-sim
  BIN=target/release/iot-sim
fi

TEMPLATE='{"ts": {{ timestamp_ms }}, "values": {"temperature": {{ fields.temperature }}, "humidity": {{ fields.humidity }}, "pressure": {{ fields.pressure }}, "co2": {{ fields.co2 }}, "door": {{ fields.door|tojson }}, "fw": {{ fields.fw|tojson }}}}'
FORMATS=${BENCH_FORMATS:-"envelope flat cbor senml senml_cbor protobuf template template_minijinja"}

# The protobuf message of the sensor profile: id, Timestamp, seq, labels and the 6 fields.
cat > "$OUT/sensor.proto" <<'PROTO'
syntax = "proto3";
package bench.v1;
import "google/protobuf/timestamp.proto";
enum Door { DOOR_UNSPECIFIED = 0; closed = 1; open = 2; }
message Sensor {
  string device_id = 1;
  string device_type = 2;
  google.protobuf.Timestamp timestamp = 3;
  uint64 seq = 4;
  map<string, string> labels = 5;
  double temperature = 10;
  double humidity = 11;
  double pressure = 12;
  double co2 = 13;
  Door door = 14;
  string fw = 15;
}
PROTO

write_fleet() { # format duration file
  local extra="" format=$1
  if [[ $1 == template ]]; then extra="template = '$TEMPLATE'"; fi
  if [[ $1 == protobuf ]]; then extra=$'proto_file = "sensor.proto"\nmessage = "bench.v1.Sensor"'; fi
  # The same output through minijinja's interpreter: a comment is not on the fast path.
  if [[ $1 == template_minijinja ]]; then format=template; extra="template = '{# interpreted #}$TEMPLATE'"; fi
  cat > "$3" <<TOML
[run]
seed = 1
clock = "virtual"
start_time = "2026-03-14T00:00:00Z"
duration = "$2"

[sink.null]

[[fleet]]
profile = "sensor"
count = $DEVICES
labels = { site = "berlin" }

[profiles.sensor]
protocol = "null"
interval = "10s"
seq = true
format = "$format"
$extra

[profiles.sensor.fields.temperature]
type = "diurnal"
baseline = 22.0
amplitude = 5.0
peak_hour = 14
noise_stddev = 0.3
decimals = 2
unit = "Cel"

[profiles.sensor.fields.humidity]
type = "brownian"
start = 55.0
mean = 55.0
volatility = 0.5
mean_reversion = 0.1
min = 20.0
max = 95.0
unit = "%RH"

[profiles.sensor.fields.pressure]
type = "gaussian"
mean = 1013
stddev = 2
unit = "hPa"

[profiles.sensor.fields.co2]
type = "gaussian"
mean = 600
stddev = 50
unit = "ppm"

[profiles.sensor.fields.door]
type = "markov"
states = ["closed", "open"]
transition_matrix = [[0.95, 0.05], [0.30, 0.70]]

[profiles.sensor.fields.fw]
type = "static"
value = "1.4.2"
TOML
}

for r in $(seq 1 "$ROUNDS"); do
  for f in $FORMATS; do
    for span in short long; do
      d=$SHORT; [[ $span == long ]] && d=$LONG
      write_fleet "$f" "$d" "$OUT/$f-$span.toml"
      "$BIN" --config "$OUT/$f-$span.toml" --cores 1 --quiet --report-dir "$OUT/$f-$span-$r" \
        > "$OUT/$f-$span-$r.txt" 2>&1
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$DEVICES" $FORMATS <<'PY'
import json, os, statistics, sys
out, rounds, devices, formats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def rep(f, span, r):
    j = json.load(open(os.path.join(out, f"{f}-{span}-{r}", "report.json")))
    row = j["runs"][0]
    return j["cpu_seconds"], j["messages"], row["bytes"]
res = {"devices": devices, "fields": 6, "cores": 1, "sink": "null", "clock": "virtual",
       "rounds": rounds, "formats": {}}
for f in formats:
    cpu_ns, mps, bpm = [], [], []
    for r in range(1, rounds + 1):
        c1, m1, b1 = rep(f, "short", r)
        c2, m2, b2 = rep(f, "long", r)
        per = (c2 - c1) / (m2 - m1)
        cpu_ns.append(per * 1e9)
        mps.append(1 / per)
        bpm.append(b2 / m2)
    res["formats"][f] = {"cpu_ns_per_msg": round(statistics.median(cpu_ns), 1),
                         "msgs_per_cpu_s": round(statistics.median(mps)),
                         "bytes_per_msg": round(statistics.median(bpm), 1)}
base = res["formats"]["envelope"]["cpu_ns_per_msg"]
for f, v in res["formats"].items():
    v["cpu_ratio_to_envelope"] = round(v["cpu_ns_per_msg"] / base, 2)
    target = 2.0 if f.startswith("template") else 1.5
    v["target"] = target
    v["within_target"] = v["cpu_ratio_to_envelope"] <= target
print(json.dumps(res, indent=2))
PY
