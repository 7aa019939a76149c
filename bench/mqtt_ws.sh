#!/usr/bin/env bash
# CPU per message of MQTT over WebSocket (ws://) next to plain MQTT (mqtt://), pooled
# connections, at 20,000 msg/s (issue 23; target: ws <= 1.3x mqtt). Prints one JSON object
# (also written to target/bench/mqtt_ws/result.json).
#
#   BENCH_SECONDS=20     length of each run (realtime clock)
#   BENCH_QOS=0          QoS of both runs
#   BENCH_DEVICES=10000  devices; each publishes every BENCH_DEVICES/20000 s (20,000 msg/s)
#   BENCH_BIN=path       the iot-sim binary (default target/release/iot-sim, built first unless
#                        BENCH_NO_BUILD is set)
#
# Broker: a private mosquitto (bench/lib/mosquitto.sh) with its plain listener and a websockets
# listener beside it, so both runs hit the same broker process and configuration. CPU = utime +
# stime of the whole iot-sim process (wait4: start-up, connecting and the report included, the
# same for both), divided by the messages the report counts as sent. The runs alternate
# mqtt, ws, mqtt, ws and each figure is the lower of its two runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${BENCH_SECONDS:-20}
QOS=${BENCH_QOS:-0}
DEVICES=${BENCH_DEVICES:-10000}
OUT=target/bench/mqtt_ws
mkdir -p "$OUT"
BIN=${BENCH_BIN:-target/release/iot-sim}
if [[ -z ${BENCH_BIN:-} && -z ${BENCH_NO_BUILD:-} ]]; then
  cargo build --release --quiet --bin iot-sim
fi
INTERVAL_MS=$((DEVICES / 20))
# shellcheck source=bench/lib/mosquitto.sh
source bench/lib/mosquitto.sh
WS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mosquitto_conf "listener $WS_PORT 127.0.0.1" "protocol websockets"
broker_up
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$WS_PORT") 2>/dev/null && break; sleep 0.05; done

fleet() { # $1 = url
  cat <<TOML
[run]
seed = 11
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"
duration = "${SECS}s"

[sink.mqtt]
url = "$1"
qos = $QOS
pool_size = 4

[[fleet]]
profile = "bench"
count = $DEVICES

[profiles.bench]
protocol = "mqtt"
topic = "bench/{device_id}"
interval = "${INTERVAL_MS}ms"
[profiles.bench.fields.temperature]
type = "gaussian"
mean = 22.0
stddev = 2.0
TOML
}

one() { # $1 = name, $2 = url: prints "cpu_s messages"
  fleet "$2" > "$OUT/$1.toml"
  rm -rf "$OUT/$1-report"
  LOG="$OUT/$1.log" python3 - "$BIN" run --config "$OUT/$1.toml" --cores 2 --quiet --report-dir "$OUT/$1-report" <<'PY'
import json, os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=open(os.environ["LOG"], "w"))
_, status, ru = os.wait4(p.pid, 0)
if status != 0:
    sys.exit(f"iot-sim exited with {status}")
r = json.load(open(sys.argv[sys.argv.index("--report-dir") + 1] + "/report.json"))
print(ru.ru_utime + ru.ru_stime, r["runs"][0]["messages"])
PY
}

declare -A BEST
for round in 1 2; do
  for case in mqtt ws; do
    if [[ $case == mqtt ]]; then url="mqtt://127.0.0.1:$PORT"; else url="ws://127.0.0.1:$WS_PORT/mqtt"; fi
    read -r cpu msgs < <(one "$case-$round" "$url")
    us=$(python3 -c "print(round($cpu * 1e6 / $msgs, 3))")
    echo "  $case round $round: ${cpu}s CPU, $msgs messages, $us us/msg" >&2
    if [[ -z ${BEST[$case]:-} ]] || python3 -c "import sys; sys.exit(0 if $us < ${BEST[$case]} else 1)"; then
      BEST[$case]=$us
    fi
  done
done
python3 - "${BEST[mqtt]}" "${BEST[ws]}" "$SECS" "$QOS" <<'PY' | tee "$OUT/result.json"
import json, sys
mqtt, ws, secs, qos = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ratio = round(ws / mqtt, 3)
print(json.dumps({"rate_msg_s": 20000, "seconds": secs, "qos": qos,
                  "mqtt_cpu_us_per_msg": mqtt, "ws_cpu_us_per_msg": ws,
                  "ws_over_mqtt": ratio, "target_1_3x": "pass" if ratio <= 1.3 else "fail"}))
PY
