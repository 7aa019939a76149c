#!/usr/bin/env bash
# The floor of one-socket-per-device MQTT sessions on this machine, without iot-sim (issue 25,
# "lighter sessions"): bench/session_floor.rs, N sessions each publishing once a second at QoS 1
# to a private Mosquitto, nothing per message beyond the wire (a templated PUBLISH, one send,
# one PUBACK read). Its CPU per message is what any such client pays here: compare with
# `BENCH_CASES=sessions bench/mqtt_sessions.sh` (the same fleet shape through iot-sim). Prints
# one JSON object per wait mode (also written to target/bench/session_floor/result.json).
#
#   BENCH_SESSIONS=19000  BENCH_THREADS=2  BENCH_SECONDS=30  BENCH_STEADY_FROM=5
#   BENCH_MODES="epoll grid"  (epoll: PUBACKs read as they arrive; grid: read on the 1 ms grid)
#   BENCH_PAYLOAD=140  (payload bytes; the sessions bench's messages are ~150 B with the topic)
#   BENCH_IOTSIM=path  (also run that iot-sim binary's `sessions` case of bench/mqtt_sessions.sh,
#                       same sessions and seconds, right after, and print its ratio to the floor)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench/session_floor
mkdir -p "$OUT"
rustc -O --edition 2021 -o "$OUT/session_floor" bench/session_floor.rs
ulimit -n "$(ulimit -Hn)"
# shellcheck source=bench/lib/mosquitto.sh
source bench/lib/mosquitto.sh
mosquitto_conf
rows=()
for mode in ${BENCH_MODES:-epoll grid}; do
  broker_up
  b0=$(cpu_ticks "$BROKER")
  row=$("$OUT/session_floor" "$PORT" "${BENCH_SESSIONS:-19000}" "${BENCH_THREADS:-2}" \
    "${BENCH_SECONDS:-30}" "${BENCH_STEADY_FROM:-5}" "$mode" "${BENCH_PAYLOAD:-140}")
  b1=$(cpu_ticks "$BROKER")
  broker_down
  rows+=("${row%\}}, \"broker_cpu_s_whole_run\": $(awk -v a="$b0" -v b="$b1" -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / t}')}")
  echo "${rows[-1]}" >&2
done
iotsim=null
if [[ -n ${BENCH_IOTSIM:-} ]]; then
  rm -f target/bench/mqtt_sessions/sessions.json
  BENCH_NO_BUILD=1 BENCH_BIN=$BENCH_IOTSIM BENCH_CASES=sessions BENCH_SESSIONS=${BENCH_SESSIONS:-19000} \
    BENCH_SECONDS=$(( ${BENCH_SECONDS:-30} + 10 )) bench/mqtt_sessions.sh > /dev/null 2>&1 || true
  iotsim=$(python3 -c '
import json, os, sys
f = "target/bench/mqtt_sessions/sessions.json"
if not os.path.exists(f):
    print("null"); sys.exit()
s = json.load(open(f))
w = s.get("steady_window", {})
print(json.dumps({"cpu_us_per_msg": w.get("cpu_us_per_msg"), "wakeups_per_s": w.get("wakeups_per_s"),
                  "latency_us_p50": s["latency_us"]["p50"], "errors": s["errors"], "lost": s["lost"]}))')
fi
(IFS=,; echo "{\"floor\": [${rows[*]}], \"iot_sim_sessions\": $iotsim, \"load_average\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}") \
  | python3 -c '
import json, sys
d = json.load(sys.stdin)
i = d["iot_sim_sessions"]
if i and i.get("cpu_us_per_msg"):
    d["iot_sim_over_floor"] = {f["mode"]: round(i["cpu_us_per_msg"] / f["cpu_us_per_msg"], 2) for f in d["floor"]}
print(json.dumps(d))' | tee "$OUT/result.json"
