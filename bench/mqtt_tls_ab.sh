#!/usr/bin/env bash
# CPU per message over mqtts:// of two builds, alternately in one sitting (the before/after of
# a change to the TLS path). Prints one line per run.
#
#   bench/mqtt_tls_ab.sh BASE_BIN NEW_BIN
#   BENCH_REPS=3   rounds; each round runs both builds on both cases
#
# A private Mosquitto (bench/lib/mosquitto.sh) with a TLS listener that requires a client
# certificate (the PKI and 2,000 device certificates of bench/mqtt_identity.sh, made first by
# its `files` case when missing). Cases, 1 shard, QoS 1, realtime, 30 s runs:
#   pooled      2,000 devices every 100 ms (20,000 msg/s) over the pooled connections, which
#               present device 0's certificate
#   per_device  2,000 per-device sessions with their own (pre-provisioned) certificates, every
#               200 ms (10,000 msg/s)
# Figure: process CPU (utime + stime from /proc) over a 15 s window from 10 s into the run (after
# the connect ramp), and the run's messages and errors from its report.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: bench/mqtt_tls_ab.sh BASE_BIN NEW_BIN}
NEW=${2:?usage: bench/mqtt_tls_ab.sh BASE_BIN NEW_BIN}
REPS=${BENCH_REPS:-3}
ID=target/bench/mqtt_identity
if [[ ! -f $ID/certs/manifest.csv ]]; then
  BENCH_BIN=$NEW BENCH_NO_BUILD=1 BENCH_CASES=files bench/mqtt_identity.sh > /dev/null
fi
ID=$(cd "$ID" && pwd)
OUT=target/bench/mqtt_tls_ab
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ulimit -n "$(ulimit -Hn)"
# shellcheck source=bench/lib/mosquitto.sh
source bench/lib/mosquitto.sh
TCK=$(getconf CLK_TCK)
mosquitto_conf "cafile $ID/pki/ca.pem" "certfile $ID/pki/server.pem" \
  "keyfile $ID/pki/server.key" "require_certificate true" "use_identity_as_username true"
# The TLS options follow the one listener line: it takes TLS only.
broker_up

fleet() { # $1 = case
  local conn interval pooled_id=""
  if [[ $1 == pooled ]]; then
    conn=pooled; interval=100ms
    pooled_id="client_cert = \"$ID/certs/probe-0000.pem\"
client_key = \"$ID/certs/probe-0000.key\""
  else
    conn=per_device; interval=200ms
  fi
  cat > "$OUT/$1.toml" <<T
[run]
seed = 1
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"
duration = "30s"
cores = 1

[sink.mqtt]
url = "mqtts://127.0.0.1:$PORT"
ca_file = "$ID/pki/ca.pem"
qos = 1
$pooled_id

[sink.mqtt.per_device]
connect_rate = 50000
max_connecting = 100

[sink.mqtt.per_device.identity]
cert_file = "$ID/certs/{device_id}.pem"
key_file = "$ID/certs/{device_id}.key"

[[fleet]]
profile = "probe"
count = 2000

[profiles.probe]
protocol = "mqtt"
connection = "$conn"
topic = "bench/{device_id}"
interval = "$interval"
[profiles.probe.fields.t]
type = "gaussian"
mean = 20
stddev = 1
T
}
fleet pooled
fleet per_device

for rep in $(seq 1 "$REPS"); do
  for side in base new; do
    bin=$BASE; [[ $side == new ]] && bin=$NEW
    for c in pooled per_device; do
      rm -rf "$OUT/report"
      "$bin" run --config "$OUT/$c.toml" --quiet --report-dir "$OUT/report" > /dev/null 2> "$OUT/$c.log" &
      RUN=$!
      sleep 10
      t0=$(cpu_ticks $RUN)
      sleep 15
      t1=$(cpu_ticks $RUN)
      wait $RUN
      RUN=""
      python3 - "$OUT/report/report.json" "$rep" "$side" "$c" "$t0" "$t1" "$TCK" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
rep, side, c, t0, t1, tck = sys.argv[2:]
cpu = (float(t1) - float(t0)) / float(tck)
rate = 20000 if c == "pooled" else 10000
print(json.dumps({"round": int(rep), "build": side, "case": c, "cpu_s_15s": round(cpu, 2),
                  "cpu_us_per_msg": round(cpu / (15 * rate) * 1e6, 2),
                  "messages": r["messages"], "errors": r["errors"]}))
PY
    done
  done
done
