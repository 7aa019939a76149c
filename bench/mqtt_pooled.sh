#!/usr/bin/env bash
# Pooled-mode MQTT throughput (issue 11), next to mqtt-benchmark 0.2.4 and mosquitto_pub in the
# same run. Prints one JSON object (also written to target/bench/mqtt_pooled/result.json).
#
#   BENCH_MSGS=400000        messages per throughput case (every publisher sends this many)
#   BENCH_REPS=3             rounds of the throughput cases; the summary is the median per case
#   BENCH_STEADY_SECONDS=30  length of each steady case (its CPU window excludes 5 s at the start
#                            and 3 s at the end)
#   BENCH_STEADY_SLACKS="0ms 5ms"  [run] timer_slack of the steady cases: each slack runs the
#                            null sink, QoS 0 and QoS 1 (the target is judged on each)
#   BENCH_PIN=true           iot-sim's [run] pin (false: shard threads not pinned, which helps
#                            when the broker shares the 2 cores; mqtt-benchmark is never pinned)
#   BENCH_CASES="throughput steady"   a subset runs only those (the summary reads the other
#                            cases' last results from target/bench/mqtt_pooled/runs; "none" only
#                            prints the summary again)
#   BENCH_BIN=path           the iot-sim binary (default target/release/iot-sim, built first
#                            unless BENCH_NO_BUILD is set)
#   BENCH_LABEL="..."        a free-text label written into the JSON (e.g. which engine)
#   BENCH_INFLIGHT=100       iot-sim's [sink.mqtt] inflight (100 = rumqttc's default, which
#                            mqtt-benchmark uses)
#
# Broker: a private mosquitto per case (fresh counters), on a free port, with
# set_tcp_nodelay true, max_queued_messages 0 and max_inflight_messages 0 (both unlimited),
# persistence false, max_connections -1, sys_interval 1. Never the shared one on 1883.
#
# Delivered = the broker's `$SYS/broker/publish/messages/received` after the publisher exited,
# once it stopped moving (see settled_received). It counts the PUBLISH packets the broker
# accepted, from every publisher alike, at no cost during the run: a subscriber would make the
# broker forward every message and take CPU from the publisher on this 2-core box, and
# mosquitto_sub itself falls behind at QoS 0. It matters: mqtt-benchmark counts a message as
# sent when it is in rumqttc's request channel and exits without waiting for its last PUBACKs
# (up to ~2% of 40,000 QoS 1 messages never reached the broker).
#
# Throughput cases (each round runs them in this order: iot-sim, mqtt-benchmark, mosquitto_pub,
# iot-sim on the null sink at QoS 0, then the first three at QoS 1):
#   iot-sim         pooled [sink.mqtt], 2 shards x pool_size 4 = 8 connections, virtual clock
#                   (as fast as the sink takes it), 10,000 devices of the 3-field profile every
#                   1 s for BENCH_MSGS / 10,000 sim-seconds: it generates and encodes every payload
#   mqtt-benchmark  `cargo install mqtt-benchmark --version 0.2.4 --locked` into
#                   target/bench/tools; 8 clients (-C 8) x BENCH_MSGS/8 (-s), payload (-P) of
#                   iot-sim's mean payload size (report bytes / messages of the first iot-sim run)
#   mosquitto_pub   one process (BENCH_MOSQ_PUB_PROCS=8: 8 at once, BENCH_MSGS/8 each), messages of
#                   the same size: QoS 0 with `-l` (lines from a file); QoS 1 with `--repeat` (its
#                   lossless loop, one message in flight: `-l` at QoS 1 drops lines when its
#                   queue is full). One process is its natural use: several on 2 cores spin
#                   against each other (8 at QoS 1: 164 µs CPU per message, one: 21 µs)
#   iot-sim-null-sink  the same iot-sim fleet on the null sink: the simulator's own CPU per
#                   message (generation + encoding), so that the sink's share can be told apart
# Per run: wall time (process start to exit, the same clock for all three: it includes start-up,
# connecting and, for iot-sim, building the fleet and writing the report), CPU seconds of the
# publisher processes (utime + stime from wait4), messages sent (the tool's own count) and
# delivered (broker), msg/s, CPU µs per delivered message, and the broker's CPU per message
# (/proc/PID/stat of mosquitto over the run and the settle).
#
# Steady cases: 10,000 pooled devices every 500 ms = 20,000 msg/s, realtime clock, QoS 0 and
# QoS 1, BENCH_STEADY_SECONDS long: CPU per message over a window from 5 s after start to 3 s
# before the end (/proc/PID/stat read at both ends, divided by the 20,000 msg/s schedule times
# the window, valid while the run kept the schedule; the /metrics counter as a cross-check),
# latency p50/p99 from the report (whole run).
#
# The summary holds the median of each figure over the rounds (each figure on its own).
# Ratios are iot-sim / mqtt-benchmark of the medians (and per round, with their median); the
# pass/fail lines use the ratios of the medians. The issue's targets are printed as
# pass/fail, not asserted (CPU per message ratio <= 1.0, delivered rate ratio >= 0.95, steady
# QoS 0 <= 2.5 µs CPU per message).
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${BENCH_MSGS:-400000}
REPS=${BENCH_REPS:-3}
STEADY_S=${BENCH_STEADY_SECONDS:-30}
CASES=${BENCH_CASES:-throughput steady}
SLACKS=${BENCH_STEADY_SLACKS:-0ms 5ms}
PIN=${BENCH_PIN:-true}
INFLIGHT=${BENCH_INFLIGHT:-100}
PUB_PROCS=${BENCH_MOSQ_PUB_PROCS:-1}
LABEL=${BENCH_LABEL:-}
CORES=2
POOL=4
CONNS=$((CORES * POOL))
DEVICES=10000
OUT=target/bench/mqtt_pooled
TOOLS=target/bench/tools
mkdir -p "$OUT/runs"
if (( MSGS % DEVICES != 0 || MSGS % CONNS != 0 )); then
  echo "BENCH_MSGS: must be a multiple of $DEVICES, got $MSGS" >&2
  exit 2
fi
if (( PUB_PROCS < 1 || MSGS % PUB_PROCS != 0 )); then
  echo "BENCH_MOSQ_PUB_PROCS: must be at least 1 and divide BENCH_MSGS ($MSGS), got $PUB_PROCS" >&2
  exit 2
fi
if (( STEADY_S < 12 )); then
  echo "BENCH_STEADY_SECONDS: must be at least 12 (5 s start-up + window + 3 s), got $STEADY_S" >&2
  exit 2
fi
BIN=${BENCH_BIN:-target/release/iot-sim}
if [[ -z ${BENCH_BIN:-} && -z ${BENCH_NO_BUILD:-} ]]; then
  cargo build --release --quiet --bin iot-sim
fi

# mqtt-benchmark 0.2.4 (its --version prints a stale "0.1.1"; cargo's install list has the truth).
MB=$TOOLS/bin/mqtt-benchmark
if ! cargo install --list --root "$TOOLS" 2>/dev/null | grep -q '^mqtt-benchmark v0.2.4:'; then
  cargo install mqtt-benchmark --version 0.2.4 --locked --root "$TOOLS" --quiet \
    || cargo install mqtt-benchmark --version 0.2.4 --root "$TOOLS" --quiet
fi

ulimit -n "$(ulimit -Hn)"
TCK=$(getconf CLK_TCK)
# shellcheck source=bench/lib/mosquitto.sh
source bench/lib/mosquitto.sh
mosquitto_conf "max_inflight_messages 0" "sys_interval 1"
# PUBLISH packets the broker has received, once the count stopped moving. mosquitto refreshes
# $SYS every 2 s with sys_interval 1 (it waits for more than the interval), and publishes a
# counter only when it changed, so this follows `$SYS/broker/uptime` (new every refresh) and
# takes the counter as of the latest refresh when it equals the expected count ($1) or stayed the
# same over a whole refresh (at most ~60 s).
settled_received() {
  { timeout 60 mosquitto_sub -h 127.0.0.1 -p "$PORT" -v -t '$SYS/broker/uptime' \
    -t '$SYS/broker/publish/messages/received' 2>/dev/null || true; } | python3 -c '
import sys
expected, cur, seen = int(sys.argv[1]), 0, []
for line in sys.stdin:
    topic, _, value = line.strip().partition(" ")
    if topic.endswith("/uptime"):
        seen.append(cur)
        # seen[0] is as of the retained (old) values; from seen[1] on, a refresh has passed.
        if len(seen) >= 2 and cur >= expected or len(seen) >= 3 and seen[-1] == seen[-2]:
            break
    else:
        cur = int(value)
print(cur)
sys.stdout.flush()
' "$1"
}

fleet() { # $1 = qos (or "null": the null sink), $2 = clock, $3 = interval, $4 = duration, $5 = timer_slack
  local sink proto=mqtt
  sink="[sink.mqtt]
url = \"mqtt://127.0.0.1:$PORT\"
qos = $1
pool_size = $POOL
inflight = $INFLIGHT"
  [[ $1 == null ]] && { sink="[sink.null]"; proto=null; }
  cat <<TOML
[run]
seed = 11
clock = "$2"
start_time = "2026-03-14T00:00:00Z"
duration = "$4"
timer_slack = "${5:-0ms}"
pin = $PIN

$sink

[[fleet]]
profile = "bench"
count = $DEVICES

[profiles.bench]
protocol = "$proto"
topic = "bench/{device_id}"
interval = "$3"
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

# Runs the commands of the JSON list $2 ([[argv...], stdin file or "", log file] each) all at
# once and writes {wall_s, cpu_s, user_s, sys_s, rc} of them together to $1. CPU comes from
# wait4 on each process, so it is the publisher's own (and its children's), not the broker's.
measure() {
  python3 - "$1" "$2" <<'PY'
import json, os, subprocess, sys, time
out, specs = sys.argv[1], json.loads(sys.argv[2])
t0 = time.monotonic()
procs = {}
for argv, stdin, log in specs:
    p = subprocess.Popen(argv, stdin=open(stdin) if stdin else subprocess.DEVNULL,
                         stdout=open(log, "w"), stderr=subprocess.STDOUT)
    procs[p.pid] = p
user = system = 0.0
rc = 0
while procs:
    pid, status, ru = os.wait4(-1, 0)
    p = procs.pop(pid, None)
    if p is None:
        continue
    p.returncode = os.waitstatus_to_exitcode(status)
    rc = rc or p.returncode
    user += ru.ru_utime
    system += ru.ru_stime
wall = time.monotonic() - t0
json.dump({"wall_s": round(wall, 3), "cpu_s": round(user + system, 3), "user_s": round(user, 3),
           "sys_s": round(system, 3), "rc": rc}, open(out, "w"))
PY
}

PAYLOAD_FILE=$OUT/payload.txt
payload_from() { # $1 = report.json: writes a payload of iot-sim's mean payload size
  python3 - "$1" "$PAYLOAD_FILE" <<'PY'
import json, sys
row = json.load(open(sys.argv[1]))["runs"][0]
n = round(row["bytes"] / max(row["messages"], 1))
# ASCII, no newline inside (mosquitto_pub -l sends one message per line): the broker's work
# depends on the size, not the content.
open(sys.argv[2], "w").write(("{\"payload\":\"" + "x" * n)[:n - 2] + "\"}")
PY
}

# One throughput run: $1 = tool, $2 = qos, $3 = round. Writes $OUT/runs/$1-q$2-r$3.json.
throughput_run() {
  local tool=$1 q=$2 r=$3 name="$1-q$2-r$3" specs sent="null" self_rate="null" b0 b1 got
  broker_up
  case $tool in
    iot-sim|iot-sim-null-sink)
      if [[ $tool == iot-sim ]]; then fleet "$q" virtual 1s "$((MSGS / DEVICES))s"
      else fleet null virtual 1s "$((MSGS / DEVICES))s"; fi > "$OUT/$name.toml"
      rm -rf "$OUT/$name-report"
      specs=$(python3 -c 'import json,sys; print(json.dumps([[sys.argv[1:-1], "", sys.argv[-1]]]))' \
        "$BIN" run --config "$OUT/$name.toml" --cores "$CORES" --quiet --report-dir "$OUT/$name-report" \
        "$OUT/$name.log")
      ;;
    mqtt-benchmark)
      specs=$(python3 -c 'import json,sys; print(json.dumps([[sys.argv[1:-1], "", sys.argv[-1]]]))' \
        "$MB" -b "127.0.0.1:$PORT" -q "$q" -C "$CONNS" -s "$((MSGS / CONNS))" \
        -P "$(cat "$PAYLOAD_FILE")" -t bench/mqttbenc -c "mb-r$r" "$OUT/$name.log")
      ;;
    mosquitto_pub)
      (( q == 0 )) && { yes "$(cat "$PAYLOAD_FILE")" | head -n "$((MSGS / PUB_PROCS))" > "$OUT/lines.txt" || true; }
      specs=$(python3 - "$q" "$PORT" "$PUB_PROCS" "$((MSGS / PUB_PROCS))" "$PAYLOAD_FILE" "$OUT/lines.txt" "$OUT/$name" <<'PY'
import json, sys
q, port, conns, per, payload_file, lines, name = sys.argv[1:]
payload = open(payload_file).read()
specs = []
for i in range(int(conns)):
    base = ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", q, "-t", f"bench/mosqpub-{i}",
            "-i", f"mp-{i}"]
    if q == "0":
        specs.append([base + ["-l"], lines, f"{name}-{i}.log"])
    else:
        specs.append([base + ["-m", payload, "--repeat", per], "", f"{name}-{i}.log"])
print(json.dumps(specs))
PY
)
      ;;
  esac
  b0=$(cpu_ticks "$BROKER")
  measure "$OUT/runs/$name.measure.json" "$specs"
  got=$(settled_received "$MSGS")
  b1=$(cpu_ticks "$BROKER")
  broker_down
  case $tool in
    iot-sim|iot-sim-null-sink)
      [[ $tool == iot-sim-null-sink || -f $PAYLOAD_FILE ]] || payload_from "$OUT/$name-report/report.json"
      sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["messages"])' "$OUT/$name-report/report.json")
      self_rate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["msgs_per_s"])' "$OUT/$name-report/report.json")
      ;;
    mqtt-benchmark)
      # "8 client, total: N, duration: S (sec), avg speed: R (msg/sec)": N counts messages
      # handed to rumqttc's request channel, not acknowledged ones; S excludes start-up.
      sent=$(sed -n 's/.* total: \([0-9]*\),.*/\1/p' "$OUT/$name.log" | tail -1)
      self_rate=$(sed -n 's/.*avg speed: \([0-9.]*\).*/\1/p' "$OUT/$name.log" | tail -1)
      ;;
  esac
  python3 - "$OUT/runs/$name.measure.json" "$tool" "$q" "$r" "$MSGS" "${sent:-null}" "${self_rate:-null}" \
    "$got" "$b0" "$b1" "$TCK" "$PAYLOAD_FILE" > "$OUT/runs/$name.json" <<'PY'
import json, os, sys
m = json.load(open(sys.argv[1]))
tool, q, r, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sent = None if sys.argv[6] == "null" else int(sys.argv[6])
self_rate = None if sys.argv[7] == "null" else float(sys.argv[7])
got, b0, b1, tck = int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10]), int(sys.argv[11])
wall = m["wall_s"]
print(json.dumps({
    "tool": tool, "qos": q, "round": r, "messages": n,
    "payload_bytes": os.path.getsize(sys.argv[12]) if os.path.exists(sys.argv[12]) else None,
    "sent": sent, "delivered": got, "rc": m["rc"],
    "wall_s": wall,
    "sent_msgs_per_s": round(sent / wall) if sent is not None else None,
    "delivered_msgs_per_s": round(got / wall),
    "self_reported_msgs_per_s": round(self_rate) if self_rate is not None else None,
    "cpu_s": m["cpu_s"], "user_s": m["user_s"], "sys_s": m["sys_s"],
    # Per delivered message; the null sink delivers nothing, so per message it generated.
    "cpu_us_per_msg": round(m["cpu_s"] * 1e6 / got, 3) if got else
        round(m["cpu_s"] * 1e6 / sent, 3) if tool == "iot-sim-null-sink" and sent else None,
    "broker_cpu_us_per_msg": round((b1 - b0) / tck * 1e6 / got, 3) if got else None,
}))
PY
  echo "  $name: $(cat "$OUT/runs/$name.json")" >&2
}

steady_run() { # $1 = qos (or null), $2 = timer_slack; writes $OUT/runs/steady-q$1-slack$2.json
  local q=$1 slack=$2 name="steady-q$1-slack$2" a c1 c2 m1 m2 t1 t2 got b0 b1
  broker_up
  fleet "$q" realtime 500ms "${STEADY_S}s" "$slack" > "$OUT/$name.toml"
  rm -rf "$OUT/$name-report"
  b0=$(cpu_ticks "$BROKER")
  "$BIN" run --config "$OUT/$name.toml" --cores "$CORES" --quiet --admin 127.0.0.1:0 \
    --report-dir "$OUT/$name-report" > "$OUT/$name.out" 2> "$OUT/$name.log" &
  RUN=$!
  sleep 5
  a=$(sed -n 's|.*admin: listening on http://\([^ ]*\).*|\1|p' "$OUT/$name.log" | head -1)
  sent_ok() { # messages completed so far, from /metrics
    [[ -n $a ]] || { echo null; return; }
    curl -s --max-time 5 "http://$a/metrics" \
      | awk '/^iot_sim_messages_sent_total\{/ && /status="ok"/ {s += $NF} END {print s + 0}'
  }
  t1=$(date +%s.%N); c1=$(cpu_ticks $RUN); m1=$(sent_ok)
  sleep $((STEADY_S - 8))
  t2=$(date +%s.%N); c2=$(cpu_ticks $RUN); m2=$(sent_ok)
  wait $RUN || { cat "$OUT/$name.log" >&2; exit 1; }
  RUN=""
  if [[ $q == null ]]; then
    got=0
  else
    got=$(settled_received "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["messages"])' "$OUT/$name-report/report.json")")
  fi
  b1=$(cpu_ticks "$BROKER")
  broker_down
  python3 - "$OUT/$name-report/report.json" "$q" "$c1" "$c2" "$m1" "$m2" "$t1" "$t2" "$TCK" "$got" \
    "$b0" "$b1" "$slack" > "$OUT/runs/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); row = r["runs"][0]; l = row["latency_us"]
q = sys.argv[2] if sys.argv[2] == "null" else int(sys.argv[2]); c1, c2 = int(sys.argv[3]), int(sys.argv[4])
m1 = None if sys.argv[5] == "null" else int(sys.argv[5])
m2 = None if sys.argv[6] == "null" else int(sys.argv[6])
t1, t2, tck, got = float(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
b0, b1 = int(sys.argv[11]), int(sys.argv[12])
window_s = t2 - t1
# Messages in the window: the fleet's schedule (10,000 devices every 500 ms = 20,000/s), valid
# while the run kept it (keeps_schedule: completed rate within 1% of it, nothing dropped). The
# /metrics counter is only a cross-check: each shard refreshes it once a second, so it is off
# by up to a second of one shard's messages at either end of the window.
msgs = round(20000 * window_s)
metrics = m2 - m1 if m1 is not None and m2 is not None else None
print(json.dumps({
    "case": "steady", "qos": q, "timer_slack": sys.argv[13], "devices": 10000, "interval_ms": 500, "target_msgs_per_s": 20000,
    "seconds": r["wall_seconds"], "messages": row["messages"], "delivered": got,
    "errors": row["errors"], "dropped": row["dropped"], "msgs_per_s": row["msgs_per_s"],
    "keeps_schedule": row["msgs_per_s"] >= 0.99 * 20000 and row["dropped"] == 0 and row["errors"] == 0,
    "window_s": round(window_s, 2), "window_messages": msgs,
    "window_msgs_per_s_metrics": round(metrics / window_s) if metrics is not None else None,
    "cpu_s_window": round((c2 - c1) / tck, 3),
    "cpu_us_per_msg": round((c2 - c1) / tck * 1e6 / msgs, 3),
    "cpu_us_per_msg_whole_run": round(r["cpu_seconds"] * 1e6 / max(row["messages"], 1), 3),
    "broker_cpu_us_per_msg_whole_run": round((b1 - b0) / tck * 1e6 / got, 3) if got else None,
    "latency_us": {k: l[k] for k in ("p50", "p90", "p99", "p999", "max")},
    "tick_lateness_us_p99": r["tick_lateness_us"]["p99"],
}))
PY
  echo "  $name: $(cat "$OUT/runs/$name.json")" >&2
}

if [[ " $CASES " == *" throughput "* ]]; then
  rm -f "$OUT"/runs/*-q?-r*.json "$PAYLOAD_FILE"
  for r in $(seq 1 "$REPS"); do
    for q in 0 1; do
      for tool in iot-sim mqtt-benchmark mosquitto_pub; do
        throughput_run "$tool" "$q" "$r"
      done
      (( q == 0 )) && throughput_run iot-sim-null-sink 0 "$r"
    done
  done
fi
if [[ " $CASES " == *" steady "* ]]; then
  rm -f "$OUT"/runs/steady-*.json
  for slack in $SLACKS; do
    steady_run null "$slack"
    steady_run 0 "$slack"
    steady_run 1 "$slack"
  done
fi

python3 - "$OUT" "$MSGS" "$REPS" "$STEADY_S" "$LABEL" "$INFLIGHT" "$("$BIN" --version 2>/dev/null || echo unknown)" \
  "$(mosquitto -h 2>/dev/null | head -1)" "$PUB_PROCS" <<'PY' | tee "$OUT/result.json"
import glob, json, os, statistics, sys
out, msgs, reps, steady_s, label, inflight, version, broker, pub_procs = sys.argv[1:10]
runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/runs/*.json")) if not f.endswith(".measure.json")]
tp = [x for x in runs if "tool" in x]
def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None
keys = ("wall_s", "sent", "delivered", "sent_msgs_per_s", "delivered_msgs_per_s",
        "self_reported_msgs_per_s", "cpu_s", "cpu_us_per_msg", "broker_cpu_us_per_msg")
summary = {}
for q in (0, 1):
    for tool in ("iot-sim", "mqtt-benchmark", "mosquitto_pub", "iot-sim-null-sink"):
        rs = [x for x in tp if x["tool"] == tool and x["qos"] == q]
        if rs:
            summary.setdefault(f"qos{q}", {})[tool] = dict(
                {k: med(x[k] for x in rs) for k in keys}, rounds=len(rs),
                payload_bytes=rs[0]["payload_bytes"], failed_rounds=sum(1 for x in rs if x["rc"]))
def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None
ratios, targets = {}, {}
for q, s in summary.items():
    i, mb, mp = s.get("iot-sim"), s.get("mqtt-benchmark"), s.get("mosquitto_pub")
    if i and mb:
        # Per round too: a round's iot-sim and mqtt-benchmark runs are seconds apart, so their
        # ratio drifts less with the machine's load than the ratio of medians.
        qn = int(q[3:])
        rounds = sorted({x["round"] for x in tp if x["qos"] == qn})
        def run(tool, r):
            return next((x for x in tp if x["tool"] == tool and x["qos"] == qn and x["round"] == r), None)
        per_round = []
        for r in rounds:
            a, b = run("iot-sim", r), run("mqtt-benchmark", r)
            if a and b:
                per_round.append({"round": r,
                                  "cpu_per_msg": ratio(a["cpu_us_per_msg"], b["cpu_us_per_msg"]),
                                  "delivered_rate": ratio(a["delivered_msgs_per_s"], b["delivered_msgs_per_s"])})
        cpu = ratio(i["cpu_us_per_msg"], mb["cpu_us_per_msg"])
        rate = ratio(i["delivered_msgs_per_s"], mb["delivered_msgs_per_s"])
        ratios[q] = {"cpu_per_msg_iot_sim_over_mqtt_benchmark": cpu,
                     "delivered_rate_iot_sim_over_mqtt_benchmark": rate,
                     "per_round_iot_sim_over_mqtt_benchmark": per_round,
                     "per_round_median_cpu_per_msg": med(x["cpu_per_msg"] for x in per_round),
                     "per_round_median_delivered_rate": med(x["delivered_rate"] for x in per_round)}
        targets[f"{q}_cpu_per_msg_ratio_le_1.0"] = "pass" if cpu is not None and cpu <= 1.0 else "fail"
        targets[f"{q}_delivered_rate_ratio_ge_0.95"] = "pass" if rate is not None and rate >= 0.95 else "fail"
    nul = summary["qos0"].get("iot-sim-null-sink") if "qos0" in summary else None
    if i and nul and i["cpu_us_per_msg"] is not None and nul["cpu_us_per_msg"] is not None:
        # The simulator's own cost (generate + encode, the null sink's whole CPU per message)
        # and what the MQTT sink adds on top of it.
        ratios.setdefault(q, {}).update({
            "iot_sim_generate_encode_cpu_us_per_msg": nul["cpu_us_per_msg"],
            "iot_sim_mqtt_sink_cpu_us_per_msg": round(i["cpu_us_per_msg"] - nul["cpu_us_per_msg"], 3)})
    if i and mp:
        ratios.setdefault(q, {}).update({
            "cpu_per_msg_iot_sim_over_mosquitto_pub": ratio(i["cpu_us_per_msg"], mp["cpu_us_per_msg"]),
            "delivered_rate_iot_sim_over_mosquitto_pub": ratio(i["delivered_msgs_per_s"], mp["delivered_msgs_per_s"])})
# Steady cases by timer_slack, then "qos<N>" or "null_sink"; the target is judged per slack.
steady = {}
for x in runs:
    if x.get("case") == "steady":
        name = "null_sink" if x["qos"] == "null" else f"qos{x['qos']}"
        steady.setdefault(f"slack_{x.get('timer_slack', '0ms')}", {})[name] = x
for slack, cases in steady.items():
    q0, nul = cases.get("qos0"), cases.get("null_sink")
    if q0 and nul and q0["cpu_us_per_msg"] is not None and nul["cpu_us_per_msg"] is not None:
        cases["qos0_mqtt_sink_over_null_cpu_us_per_msg"] = round(q0["cpu_us_per_msg"] - nul["cpu_us_per_msg"], 3)
    if q0:
        c = q0["cpu_us_per_msg"]
        targets[f"steady_qos0_cpu_us_per_msg_le_2.5_{slack}"] = "pass" if c is not None and c <= 2.5 else "fail"
res = {
    "bench": "mqtt_pooled", "label": label, "iot_sim_version": version, "broker": broker,
    "settings": {"messages": int(msgs), "rounds": int(reps), "shards": 2, "pool_size": 4,
                 "connections": 8, "iot_sim_inflight": int(inflight),
                 "mosquitto_pub_processes": int(pub_procs), "devices": 10000,
                 "iot_sim_pin": os.environ.get("BENCH_PIN", "true"),
                 "steady_seconds": int(steady_s), "nproc": os.cpu_count()},
    "median": summary, "ratios": ratios, "steady": steady, "targets": targets,
    "runs": tp,
}
print(json.dumps(res, indent=1))
PY
