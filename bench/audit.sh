#!/usr/bin/env bash
# Delivery-audit benchmarks (issue 12) against a private Mosquitto (unlimited queues, free
# port) and the local RabbitMQ (127.0.0.1:5672, guest/guest). Prints one JSON object.
#
#   bench/audit.sh
#   BENCH_DEVICES=1000000    fleet size of the consumer cases (one message each)
#   BENCH_RATE_SECONDS=10    length of the steady realtime latency cases
#   BENCH_ONLY=consumer|latency|values
#
# 1. Consumer throughput at 1M devices, MQTT QoS 1 and AMQP: every device sends one message
#    (virtual clock, interval = duration = 10 s), the in-run auditor consumes them. Baseline in
#    the same script: the identical run without [audit] (what the run costs without the
#    auditor: wall, CPU, peak RSS). Figures: consumed msg/s on the auditor's one thread (msg/s
#    per core), its CPU per message, audit state per device and the RSS difference per device.
# 2. End-to-end latency (arrival at the auditor - intended send time) of a steady 20,000 msg/s
#    QoS 1 run through Mosquitto (100k devices every 5 s) and of a 5,000 msg/s run through
#    RabbitMQ with publisher confirms; beside the sink's own latency (intended -> PUBACK /
#    confirm) measured in the same run as the baseline.
# 3. verify = "values" (BENCH_ONLY=values): the MQTT consumer case with the field values
#    recomputed from the seed, against the same in-run audit with verify = "envelope" in the
#    same script run (the baseline): auditor CPU per message and state bytes per device.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${BENCH_DEVICES:-1000000}
RATE_S=${BENCH_RATE_SECONDS:-10}
ONLY=${BENCH_ONLY:-all}
OUT=target/bench/audit
mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/iot-sim
export IOT_SIM_AMQP_USERNAME=guest IOT_SIM_AMQP_PASSWORD=guest

fleet() { # $1 protocol, $2 sink lines, $3 devices, $4 interval, $5 clock, $6 duration, $7 root, $8 audit lines ("" = none)
  cat <<TOML
[run]
seed = 12
clock = "$5"
duration = "$6"

[sink.$1]
$2

$( [[ -n "$8" ]] && printf '[audit]\n%s\n' "$8" )

[[fleet]]
profile = "bench"
count = $3

[profiles.bench]
protocol = "$1"
topic = "$7/{device_id}/t"
interval = "$4"
seq = true
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
TOML
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PORT=$(free_port)
printf "listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n" "$PORT" > "$OUT/mosquitto.conf"
mosquitto -c "$OUT/mosquitto.conf" > /dev/null 2>&1 &
MOSQ=$!
trap 'kill $MOSQ 2>/dev/null || true' EXIT
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

run() { # $1 name, $2 toml
  echo "$2" > "$OUT/$1.toml"
  "$BIN" --config "$OUT/$1.toml" --quiet --cores 2 --report-dir "$OUT/$1" > "$OUT/$1.log" 2>&1 || true
}

consumer_case() { # $1 protocol, $2 sink lines, $3 audit lines
  local root="bench-audit-$1-$$"
  run "$1_base" "$(fleet "$1" "$2" "$DEVICES" 10s virtual 10s "$root" "")"
  run "$1_audit" "$(fleet "$1" "$2" "$DEVICES" 10s virtual 10s "$root" "$3")"
  python3 - "$OUT/$1_base/report.json" "$OUT/$1_audit/report.json" "$1" "$DEVICES" <<'PY'
import json, sys
b = json.load(open(sys.argv[1])); a = json.load(open(sys.argv[2])); au = a["audit"]; n = int(sys.argv[4])
c = au["consumed"]
print(json.dumps({
  "case": "audit_consumer", "protocol": sys.argv[3], "devices": n,
  "baseline_without_audit": {"messages": b["messages"], "wall_s": b["wall_seconds"], "cpu_s": b["cpu_seconds"], "peak_rss_bytes": b["peak_rss_bytes"]},
  "with_audit": {"messages": a["messages"], "wall_s": a["wall_seconds"], "cpu_s": a["cpu_seconds"], "peak_rss_bytes": a["peak_rss_bytes"]},
  "auditor": {"consumed": c, "received": au["received"], "lost": au["lost"], "duplicated": au["duplicated"], "reordered": au["reordered"],
              "consume_s": au["consume_seconds"], "msgs_per_s_per_core": round(c / au["consume_seconds"]) if au["consume_seconds"] else None,
              "cpu_s": au["consumer_cpu_seconds"], "cpu_us_per_msg": round(au["consumer_cpu_seconds"] * 1e6 / max(c, 1), 2),
              "msgs_per_cpu_second": round(c / au["consumer_cpu_seconds"]) if au["consumer_cpu_seconds"] else None,
              "state_bytes_per_device": au["state_bytes"] / n,
              "rss_bytes_per_device_vs_baseline": round((a["peak_rss_bytes"] - b["peak_rss_bytes"]) / n, 1)},
  "ratios": {"wall_with_over_without": round(a["wall_seconds"] / b["wall_seconds"], 3), "cpu_with_over_without": round(a["cpu_seconds"] / b["cpu_seconds"], 3)},
}))
PY
}

latency_case() { # $1 protocol, $2 sink lines, $3 devices, $4 label
  local root="bench-audit-lat-$1-$$"
  run "$1_latency" "$(fleet "$1" "$2" "$3" 5s realtime "${RATE_S}s" "$root" "qos = 1")"
  python3 - "$OUT/$1_latency/report.json" "$4" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); au = r["audit"]; row = r["runs"][0]
print(json.dumps({
  "case": "audit_e2e_latency", "label": sys.argv[2], "msgs_per_s": row["msgs_per_s"],
  "auditor": {"received": au["received"], "expected": au["expected"], "lost": au["lost"], "duplicated": au["duplicated"], "reordered": au["reordered"],
              "e2e_latency_us": au["e2e_latency_us"], "cpu_us_per_msg": round(au["consumer_cpu_seconds"] * 1e6 / max(au["consumed"], 1), 2)},
  "baseline_sink_latency_us": row["latency_us"],
  "ratio_e2e_p99_over_sink_p99": round(au["e2e_latency_us"]["p99"] / max(row["latency_us"]["p99"], 1), 3) if au["e2e_latency_us"] else None,
}))
PY
}

values_case() { # $1 sink lines, $2 audit lines (without verify)
  local root="bench-audit-values-$$"
  run "values_base" "$(fleet mqtt "$1" "$DEVICES" 10s virtual 10s "$root" "$2
verify = \"envelope\"")"
  run "values_on" "$(fleet mqtt "$1" "$DEVICES" 10s virtual 10s "$root" "$2
verify = \"values\"")"
  python3 - "$OUT/values_base/report.json" "$OUT/values_on/report.json" "$DEVICES" <<'PY'
import json, sys
b = json.load(open(sys.argv[1])); a = json.load(open(sys.argv[2])); n = int(sys.argv[3])
def side(r):
    au = r["audit"]; c = au["consumed"]
    return {"consumed": c, "received": au["received"], "lost": au["lost"],
            "cpu_s": au["consumer_cpu_seconds"], "cpu_us_per_msg": round(au["consumer_cpu_seconds"] * 1e6 / max(c, 1), 2),
            "state_bytes_per_device": au["state_bytes"] / n, "peak_rss_bytes": r["peak_rss_bytes"],
            "values": au.get("values"), "values_corrupted": au.get("values_corrupted")}
sb, sa = side(b), side(a)
print(json.dumps({
  "case": "audit_verify_values", "protocol": "mqtt", "devices": n, "fields": "diurnal with noise + brownian (2 generator slots)",
  "baseline_verify_envelope": sb, "verify_values": sa,
  "ratios": {"cpu_per_msg_values_over_envelope": round(sa["cpu_us_per_msg"] / max(sb["cpu_us_per_msg"], 1e-9), 3),
             "state_bytes_values_over_envelope": round(sa["state_bytes_per_device"] / sb["state_bytes_per_device"], 3),
             "rss_bytes_per_device_values_minus_envelope": round((a["peak_rss_bytes"] - b["peak_rss_bytes"]) / n, 1)},
}))
PY
}

cases=()
if [[ $ONLY == values ]]; then
  cases+=("$(values_case "url = \"mqtt://127.0.0.1:$PORT\"
qos = 1
pool_size = 2
inflight = 1000
queue_size = 20000" "url = \"mqtt://127.0.0.1:$PORT\"
qos = 1
grace = \"30s\"")")
fi
if [[ $ONLY == all || $ONLY == consumer ]]; then
  cases+=("$(consumer_case mqtt "url = \"mqtt://127.0.0.1:$PORT\"
qos = 1
pool_size = 2
inflight = 1000
queue_size = 20000" "url = \"mqtt://127.0.0.1:$PORT\"
qos = 1
grace = \"30s\"")")
  cases+=("$(consumer_case amqp "url = \"amqp://127.0.0.1:5672/%2f\"
exchange = \"bench-audit-$$\"
confirm_window = 2000" "source = \"amqp\"
grace = \"30s\"")")
fi
if [[ $ONLY == all || $ONLY == latency ]]; then
  cases+=("$(latency_case mqtt "url = \"mqtt://127.0.0.1:$PORT\"
qos = 1
pool_size = 4
inflight = 1000" 100000 "mosquitto QoS 1, 20,000 msg/s (100k devices every 5 s)")")
  cases+=("$(latency_case amqp "url = \"amqp://127.0.0.1:5672/%2f\"
exchange = \"bench-audit-lat-$$\"
confirm_window = 2000" 25000 "RabbitMQ with publisher confirms, 5,000 msg/s (25k devices every 5 s)")")
fi
printf '{"machine": {"nproc": %s}, "cases": [%s]}\n' "$(nproc)" "$(IFS=,; echo "${cases[*]}")" | python3 -m json.tool
