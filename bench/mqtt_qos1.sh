#!/usr/bin/env bash
# QoS 1 at full speed (issue 25): iot-sim's pooled MQTT sink against mqtt-benchmark 0.2.4, both
# with 4 connections, into a private Mosquitto that has a QoS 1 subscriber counting what
# arrives (as a real deployment has a consumer). Prints one JSON object (also written to
# target/bench/mqtt_qos1/result.json).
#
#   BENCH_MSGS=200000     messages per run (a multiple of 10,000)
#   BENCH_REPS=3          rounds; each round runs every publisher once, in turn
#   BENCH_BASE_BIN=path   a second iot-sim binary (e.g. a release build of main) run in the same
#                         rounds: the before/after of one sitting
#   BENCH_BIN=path        the iot-sim binary (default target/release/iot-sim, built first unless
#                         BENCH_NO_BUILD is set)
#   BENCH_PIN=false       iot-sim's [run] pin
#   BENCH_INFLIGHT=100    iot-sim's [sink.mqtt] inflight (rumqttc's default, which
#                         mqtt-benchmark uses)
#
# Per run: a fresh broker (bench/lib/mosquitto.sh: set_tcp_nodelay, unlimited queues), then
# `mosquitto_sub -q 1 -t 'bench/#'` subscribed, then the publisher:
#   iot-sim         `--cores 1`, [sink.mqtt] pool_size 4, qos 1, virtual clock (as fast as the
#                   sink takes it), 10,000 devices of the 3-field profile of mqtt_pooled.sh every
#                   1 s for BENCH_MSGS / 10,000 sim-seconds (it generates and encodes every payload)
#   mqtt-benchmark  -C 4 clients x BENCH_MSGS/4 (-s), QoS 1, payload (-P) of iot-sim's mean
#                   payload size (installed by mqtt_pooled.sh's recipe into target/bench/tools)
# Figures: wall time (process start to exit), publisher CPU (utime + stime from wait4: the whole
# process), delivered = messages the subscriber received (counted once it stopped receiving),
# delivered msg/s = delivered / publisher wall time, CPU µs per delivered message, and the
# broker's and the subscriber's CPU per message. The summary holds the median of each figure
# per publisher and the ratios iot-sim / mqtt-benchmark (targets: rate >= 0.95, CPU per message
# <= 1.0), printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${BENCH_MSGS:-200000}
REPS=${BENCH_REPS:-3}
PIN=${BENCH_PIN:-false}
INFLIGHT=${BENCH_INFLIGHT:-100}
DEVICES=10000
CONNS=4
OUT=target/bench/mqtt_qos1
TOOLS=target/bench/tools
mkdir -p "$OUT/runs"
rm -f "$OUT"/runs/*.json
if (( MSGS % DEVICES != 0 )); then
  echo "BENCH_MSGS: must be a multiple of $DEVICES, got $MSGS" >&2
  exit 2
fi
BIN=${BENCH_BIN:-target/release/iot-sim}
if [[ -z ${BENCH_BIN:-} && -z ${BENCH_NO_BUILD:-} ]]; then
  cargo build --release --quiet --bin iot-sim
fi
BASE=${BENCH_BASE_BIN:-}
MB=$TOOLS/bin/mqtt-benchmark
if ! cargo install --list --root "$TOOLS" 2>/dev/null | grep -q '^mqtt-benchmark v0.2.4:'; then
  cargo install mqtt-benchmark --version 0.2.4 --locked --root "$TOOLS" --quiet \
    || cargo install mqtt-benchmark --version 0.2.4 --root "$TOOLS" --quiet
fi
ulimit -n "$(ulimit -Hn)"
TCK=$(getconf CLK_TCK)
# shellcheck source=bench/lib/mosquitto.sh
source bench/lib/mosquitto.sh
mosquitto_conf "max_inflight_messages 0"
SUB=""
trap '[[ -n $SUB ]] && kill $SUB 2>/dev/null; [[ -n $RUN ]] && kill $RUN 2>/dev/null; [[ -n $BROKER ]] && kill $BROKER 2>/dev/null; wait 2>/dev/null || true' EXIT

fleet() {
  cat <<TOML
[run]
seed = 11
clock = "virtual"
start_time = "2026-03-14T00:00:00Z"
duration = "$((MSGS / DEVICES))s"
pin = $PIN

[sink.mqtt]
url = "mqtt://127.0.0.1:$PORT"
qos = 1
pool_size = $CONNS
inflight = $INFLIGHT

[[fleet]]
profile = "bench"
count = $DEVICES

[profiles.bench]
protocol = "mqtt"
topic = "bench/{device_id}"
interval = "1s"
[profiles.bench.fields.temperature]
type = "diurnal"
baseline = 22.0
amplitude = 5.0
peak_hour = 14
noise_stddev = 0.3
[profiles.bench.fields.humidity]
type = "brownian"
start = 55.0
volatility = 0.5
mean_reversion = 0.1
[profiles.bench.fields.pressure]
type = "gaussian"
mean = 1013.0
stddev = 2.0
TOML
}

PAYLOAD_FILE=$OUT/payload.txt
rm -f "$PAYLOAD_FILE"

# Lines the subscriber wrote, once the count stopped moving for 2 s (or reached $1).
settled_count() {
  local n last=-1 still=0
  while :; do
    n=$(wc -l < "$OUT/sub.txt")
    (( n >= $1 )) && break
    if (( n == last )); then
      still=$((still + 1)); (( still >= 20 )) && break
    else
      still=0; last=$n
    fi
    sleep 0.1
  done
  echo "$n"
}

one_run() { # $1 = publisher (iot-sim, iot-sim-base, mqtt-benchmark), $2 = round
  local who=$1 r=$2 name="$1-r$2" argv s0 s1 b0 b1 got
  broker_up
  mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -t 'bench/#' -i "sub-$name" > "$OUT/sub.txt" &
  SUB=$!
  # Subscribed before the publisher starts (mosquitto_sub subscribes as it connects).
  sleep 0.3
  case $who in
    iot-sim|iot-sim-base)
      local bin=$BIN
      [[ $who == iot-sim-base ]] && bin=$BASE
      fleet > "$OUT/$name.toml"
      rm -rf "$OUT/$name-report"
      argv=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' \
        "$bin" run --config "$OUT/$name.toml" --cores 1 --quiet --report-dir "$OUT/$name-report")
      ;;
    mqtt-benchmark)
      argv=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' \
        "$MB" -b "127.0.0.1:$PORT" -q 1 -C "$CONNS" -s "$((MSGS / CONNS))" \
        -P "$(cat "$PAYLOAD_FILE")" -t bench/mqttbenc -c "mb-r$r")
      ;;
  esac
  b0=$(cpu_ticks "$BROKER"); s0=$(cpu_ticks "$SUB")
  python3 - "$OUT/runs/$name.measure.json" "$argv" "$OUT/$name.log" <<'PY'
import json, os, subprocess, sys, time
out, argv, log = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
t0 = time.monotonic()
p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(log, "w"), stderr=subprocess.STDOUT)
_, status, ru = os.wait4(p.pid, 0)
wall = time.monotonic() - t0
json.dump({"wall_s": round(wall, 3), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
           "user_s": round(ru.ru_utime, 3), "sys_s": round(ru.ru_stime, 3),
           "rc": os.waitstatus_to_exitcode(status)}, open(out, "w"))
PY
  got=$(settled_count "$MSGS")
  b1=$(cpu_ticks "$BROKER"); s1=$(cpu_ticks "$SUB")
  kill "$SUB" 2>/dev/null || true; wait "$SUB" 2>/dev/null || true; SUB=""
  broker_down
  if [[ $who == iot-sim && ! -f $PAYLOAD_FILE ]]; then
    python3 - "$OUT/$name-report/report.json" "$PAYLOAD_FILE" <<'PY'
import json, sys
row = json.load(open(sys.argv[1]))["runs"][0]
n = round(row["bytes"] / max(row["messages"], 1))
open(sys.argv[2], "w").write(("{\"payload\":\"" + "x" * n)[:n - 2] + "\"}")
PY
  fi
  python3 - "$OUT/runs/$name.measure.json" "$who" "$r" "$MSGS" "$got" "$b0" "$b1" "$s0" "$s1" "$TCK" \
    > "$OUT/runs/$name.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
who, r, n, got = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
b0, b1, s0, s1, tck = (int(x) for x in sys.argv[6:11])
print(json.dumps({
    "publisher": who, "round": r, "messages": n, "delivered": got, "rc": m["rc"],
    "wall_s": m["wall_s"], "delivered_msgs_per_s": round(got / m["wall_s"]),
    "cpu_s": m["cpu_s"], "user_s": m["user_s"], "sys_s": m["sys_s"],
    "cpu_us_per_msg": round(m["cpu_s"] * 1e6 / got, 3) if got else None,
    "broker_cpu_us_per_msg": round((b1 - b0) / tck * 1e6 / got, 3) if got else None,
    "subscriber_cpu_us_per_msg": round((s1 - s0) / tck * 1e6 / got, 3) if got else None,
}))
PY
  echo "  $name: $(cat "$OUT/runs/$name.json")" >&2
}

for r in $(seq 1 "$REPS"); do
  one_run iot-sim "$r"
  [[ -n $BASE ]] && one_run iot-sim-base "$r"
  one_run mqtt-benchmark "$r"
done

python3 - "$OUT" "$MSGS" "$REPS" "$(uptime)" <<'PY' | tee "$OUT/result.json"
import glob, json, statistics, sys
out, msgs, reps, load = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/runs/*-r*.json")) if not f.endswith(".measure.json")]
def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None
keys = ("wall_s", "delivered", "delivered_msgs_per_s", "cpu_s", "cpu_us_per_msg",
        "broker_cpu_us_per_msg", "subscriber_cpu_us_per_msg")
summary = {w: {k: med([x[k] for x in runs if x["publisher"] == w]) for k in keys}
           for w in sorted({x["publisher"] for x in runs})}
mb = summary.get("mqtt-benchmark", {})
ratios = {}
for w in ("iot-sim", "iot-sim-base"):
    s = summary.get(w)
    if s and mb.get("delivered_msgs_per_s") and mb.get("cpu_us_per_msg"):
        ratios[w] = {
            "rate_over_mqtt_benchmark": round(s["delivered_msgs_per_s"] / mb["delivered_msgs_per_s"], 3),
            "cpu_per_msg_over_mqtt_benchmark": round(s["cpu_us_per_msg"] / mb["cpu_us_per_msg"], 3),
        }
res = {"bench": "mqtt_qos1", "messages": msgs, "rounds": reps, "connections": 4, "load_at_end": load.strip(),
       "summary": summary, "ratios": ratios,
       "targets": {"rate_over_mqtt_benchmark": ">= 0.95", "cpu_per_msg_over_mqtt_benchmark": "<= 1.0"},
       "met": {w: {"rate": v["rate_over_mqtt_benchmark"] >= 0.95,
                   "cpu": v["cpu_per_msg_over_mqtt_benchmark"] <= 1.0} for w, v in ratios.items()},
       "runs": runs}
print(json.dumps(res, indent=1))
PY
