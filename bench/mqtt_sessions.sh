#!/usr/bin/env bash
# Per-device MQTT sessions (issue 11). Prints one JSON object (also written to
# target/bench/mqtt_sessions/result.json).
#
#   BENCH_SESSIONS=19000  BENCH_SECONDS=40  BENCH_CORES=2
#   BENCH_CASES="null pooled sessions storm"  (a subset reruns those cases; the summary reads the
#   other cases' last results from target/bench/mqtt_sessions/)
#
# Against a private mosquitto (free port, max_connections -1, set_tcp_nodelay true; never the
# shared one on 1883), BENCH_SESSIONS devices each publishing every second at QoS 1:
#   null      the same fleet on the null sink: the baseline for memory and CPU
#   pooled    the same fleet through the pooled MQTT sink (4 connections per shard, rumqttc)
#   sessions  every device its own session, connect_rate 5000/s, sockets bound round-robin to
#             127.0.0.2 and 127.0.0.3: time until all are connected (established sockets
#             counted with `ss` every 100 ms), RSS over the null baseline per session, CPU per
#             message in a steady 5 s window (from /proc/PID/stat), latency from intended time
#             (report), source addresses the sockets used
#   idle      the sessions fleet with interval = "1h" (sessions start with the process, so the
#             fleet connects before its devices publish; ~1% publish within the run): RSS once
#             every session is connected, over the null baseline, per idle session
#   storm     the same, with the broker killed after everything connected and restarted 2 s
#             later: time until every session is back, messages lost (published - delivered -
#             errors - dropped, and errors/dropped themselves)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_SESSIONS:-19000}
SECS=${BENCH_SECONDS:-40}
CORES=${BENCH_CORES:-2}
OUT=target/bench/mqtt_sessions
mkdir -p "$OUT"
[[ -n ${BENCH_NO_BUILD:-} ]] || cargo build --release --quiet --bin iot-sim
BIN=target/release/iot-sim
ulimit -n "$(ulimit -Hn)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$OUT/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
max_connections -1
set_tcp_nodelay true
max_queued_messages 0
persistence false
EOF
BROKER=""
RUN=""
trap '[[ -n $RUN ]] && kill $RUN 2>/dev/null; [[ -n $BROKER ]] && kill $BROKER 2>/dev/null; wait 2>/dev/null || true' EXIT
broker_up() {
  mosquitto -c "$OUT/mosquitto.conf" > "$OUT/mosquitto.log" 2>&1 &
  BROKER=$!
  for _ in $(seq 1 100); do
    (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "mosquitto did not start" >&2
  exit 1
}
broker_up

fleet() { # $1 = case name; writes $OUT/$1.toml
  local sink profile_extra="" interval=1s
  case $1 in
    null) sink='[sink.null]' ; proto=null ;;
    pooled) sink="[sink.mqtt]
url = \"mqtt://127.0.0.1:$PORT\"
qos = 1
pool_size = 4
queue_size = 100000" ; proto=mqtt ;;
    *) [[ $1 == idle ]] && interval=1h
       sink="[sink.mqtt]
url = \"mqtt://127.0.0.1:$PORT\"
qos = 1
backoff_initial = \"100ms\"
backoff_max = \"2s\"
[sink.mqtt.per_device]
connect_rate = 5000
keep_alive = \"60s\"
inflight = 4
queue_size = 100
source_addresses = [\"127.0.0.2\", \"127.0.0.3\"]" ; proto=mqtt ; profile_extra='connection = "per_device"' ;;
  esac
  cat > "$OUT/$1.toml" <<EOF
[run]
seed = 1
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"
duration = "${SECS}s"

$sink

[[fleet]]
profile = "probe"
count = $N

[profiles.probe]
protocol = "$proto"
$profile_extra
topic = "bench/{device_id}"
interval = "$interval"
[profiles.probe.fields.t]
type = "gaussian"
mean = 20
stddev = 1
EOF
}

established() { ss -Htn state established "( dport = :$PORT )" | wc -l; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
TCK=$(getconf CLK_TCK)

scrape() { # $1 = file: the run's /metrics now (admin address from its log)
  local a
  a=$(sed -n 's|.*admin: listening on http://\([^ ]*\).*|\1|p' "$OUT/$c.log" | head -1)
  [[ -n $a ]] && curl -s --max-time 5 "http://$a/metrics" > "$1" || true
}

run_case() { # $1 = case; prints a JSON object on stdout
  local c=$1 t0 connect_s="null" storm_s="null" cpu1 cpu2 sources="{}" now
  fleet "$c"
  rm -rf "$OUT/$c-report"
  t0=$(date +%s.%N)
  "$BIN" run --config "$OUT/$c.toml" --cores "$CORES" --quiet --admin 127.0.0.1:0 --report-dir "$OUT/$c-report" > "$OUT/$c.out" 2> "$OUT/$c.log" &
  RUN=$!
  local idle_rss=0
  rm -f "$OUT/$c.m1" "$OUT/$c.m2"
  if [[ $c == sessions || $c == storm || $c == idle ]]; then
    while (( $(established) < N )); do
      kill -0 $RUN 2>/dev/null || break
      sleep 0.1
    done
    now=$(date +%s.%N)
    # null when the run ended before every session was up at the same time.
    (( $(established) >= N )) && connect_s=$(python3 -c "print(round($now - $t0, 2))")
    idle_rss=$(awk '/^VmRSS/ {print $2 * 1024}' "/proc/$RUN/status" 2>/dev/null || echo 0)
    sources=$(ss -Htn state established "( dport = :$PORT )" | awk '{split($3,a,":"); print a[1]}' | sort | uniq -c \
      | python3 -c 'import sys,json; print(json.dumps({l.split()[1]: int(l.split()[0]) for l in sys.stdin}))')
  else
    sleep 5
  fi
  if [[ $c == storm ]]; then
    sleep 2
    kill $BROKER; wait $BROKER 2>/dev/null || true
    sleep 2
    local down
    down=$(date +%s.%N)
    broker_up
    while (( $(established) < N )); do
      kill -0 $RUN 2>/dev/null || break
      sleep 0.1
    done
    now=$(date +%s.%N)
    (( $(established) >= N )) && storm_s=$(python3 -c "print(round($now - $down, 2))")
    cpu1=0; cpu2=0
  else
    # Steady window: 2 s after everything connected, 5 s long.
    sleep 2
    scrape "$OUT/$c.m1"
    cpu1=$(cpu_ticks $RUN); sleep 5; cpu2=$(cpu_ticks $RUN)
    scrape "$OUT/$c.m2"
  fi
  wait $RUN || { cat "$OUT/$c.log" >&2; exit 1; }
  RUN=""
  python3 - "$OUT/$c-report/report.json" "$c" "$connect_s" "$storm_s" "$cpu1" "$cpu2" "$TCK" "$N" "$sources" "$idle_rss" "$OUT/$c.m1" "$OUT/$c.m2" <<'EOF'
import json, os, re, sys
r = json.load(open(sys.argv[1]))
c, connect_s, storm_s = sys.argv[2], sys.argv[3], sys.argv[4]
cpu1, cpu2, tck, n = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
row = r["runs"][0]
ev = {k: v for k, v in r.get("sink_events", {}).items()}
steady_cpu_s = (cpu2 - cpu1) / tck
out = {
    "case": c,
    "sessions": n,
    "published": row.get("published"), "delivered": row["messages"],
    "errors": row["errors"], "dropped": row["dropped"],
    "lost": row.get("published", 0) - row["messages"] - row["errors"] - row["dropped"],
    "peak_rss_bytes": r["peak_rss_bytes"], "cpu_seconds_total": r["cpu_seconds"],
    "latency_us": {k: row["latency_us"].get(k) for k in ("p50", "p99", "p999", "max")},
    "sink_events": ev,
}
if cpu2 > cpu1 > 0:
    # Each device publishes once a second: n messages per second in the window.
    out["steady_cpu_us_per_msg"] = round(steady_cpu_s * 1e6 / (5 * n), 2)
if connect_s != "null":
    out["connect_all_s"] = float(connect_s)
    out["source_addresses_seen"] = json.loads(sys.argv[9])
if storm_s != "null":
    out["storm_back_all_s"] = float(storm_s)
if int(sys.argv[10]) > 0:
    out["rss_bytes_all_connected"] = int(sys.argv[10])
def buckets(path):
    b = {}
    if os.path.exists(path):
        for m in re.finditer(r'^iot_sim_publish_latency_seconds_bucket\{le="([^"]+)"[^}]*\} (\d+)', open(path).read(), re.M):
            le = float("inf") if m.group(1) in ("+Inf", "1.7976931348623157e308") else float(m.group(1))
            b[le] = b.get(le, 0) + int(m.group(2))
    return b
b1, b2 = buckets(sys.argv[11]), buckets(sys.argv[12])
if b2:
    # Steady window (the 5 s CPU window, after every session connected): latency of the messages
    # completed in it, from /metrics histogram deltas: the upper bound of the bucket holding
    # each percentile (buckets 1, 2.5, 5, 10, 25 ms ...), not an exact figure.
    d = sorted((le, b2[le] - b1.get(le, 0)) for le in b2)
    total = d[-1][1]
    def q(f):
        for le, c in d:
            if c >= f * total:
                return None if le == float("inf") else le * 1e6
    out["steady_latency_us_bucket_bound"] = {"count": total, "p50": q(0.5), "p99": q(0.99), "p999": q(0.999)} \
        if total > 0 else {"count": 0}
print(json.dumps(out))
EOF
}

for c in ${BENCH_CASES:-null pooled sessions idle storm}; do
  run_case "$c" > "$OUT/$c.json"
done
python3 - "$OUT" "$N" <<'EOF' | tee "$OUT/result.json"
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
c = {k: json.load(open(f"{out}/{k}.json")) for k in ("null", "pooled", "sessions", "idle", "storm")}
s, b, p, i = c["sessions"], c["null"], c["pooled"], c["idle"]
res = {
    "bench": "mqtt_sessions", "sessions": n, "qos": 1, "interval_s": 1,
    "cases": c,
    "ratios": {
        "rss_per_session_bytes_over_null": round((s["peak_rss_bytes"] - b["peak_rss_bytes"]) / n),
        "rss_per_idle_session_bytes_over_null": round((i["rss_bytes_all_connected"] - b["peak_rss_bytes"]) / n)
            if i.get("rss_bytes_all_connected") else None,
        "steady_latency_us_bucket_bound_sessions": s.get("steady_latency_us_bucket_bound"),
        "steady_latency_us_bucket_bound_pooled": p.get("steady_latency_us_bucket_bound"),
        "connect_all_s_idle": i.get("connect_all_s"),
        "steady_cpu_us_per_msg_sessions": s.get("steady_cpu_us_per_msg"),
        "steady_cpu_us_per_msg_pooled": p.get("steady_cpu_us_per_msg"),
        "steady_cpu_us_per_msg_null": b.get("steady_cpu_us_per_msg"),
        "cpu_sessions_over_pooled": round(s["steady_cpu_us_per_msg"] / p["steady_cpu_us_per_msg"], 2)
            if s.get("steady_cpu_us_per_msg") and p.get("steady_cpu_us_per_msg") else None,
        "connect_all_s": s.get("connect_all_s"),
        "storm_back_all_s": c["storm"].get("storm_back_all_s"),
        "storm_lost": c["storm"]["lost"], "storm_errors": c["storm"]["errors"], "storm_dropped": c["storm"]["dropped"],
    },
    "targets": {"rss_per_session_bytes": 8192, "latency_p99_us": 10000, "storm_lost": 0},
}
print(json.dumps(res, indent=1))
EOF
