#!/usr/bin/env bash
# Per-device MQTT sessions (issue 11). Prints one JSON object (also written to
# target/bench/mqtt_sessions/result.json).
#
#   BENCH_SESSIONS=19000  BENCH_SECONDS=40  BENCH_CORES=2  BENCH_STEADY_AT=15
#   BENCH_MAX_CONNECTING=N  (per-device `max_connecting`; unset: the default, 100)
#   BENCH_CONNECT_RATE=5000  (per-device `connect_rate`)
#   BENCH_PIN=false  ([run] pin: shards left unpinned; default: pinned, one per core)
#   BENCH_CASES="null pooled sessions storm"  (a subset reruns those cases; the summary reads the
#   other cases' last results from target/bench/mqtt_sessions/)
#   BENCH_STORM_RUNS=1  (the storm case this many times in a row; their figures in storm-runs.json)
#   BENCH_BIN=path  (the iot-sim binary; default target/release/iot-sim, built unless
#   BENCH_NO_BUILD is set)
#
# Against a private mosquitto (free port, max_connections -1, set_tcp_nodelay true; never the
# shared one on 1883), BENCH_SESSIONS devices each publishing every second at QoS 1.
# The null, pooled and sessions runs carry a scenario with two phases: "connect" from 0 s and
# "steady" from BENCH_STEADY_AT s (sim time = wall time from the run start) to the end. Every
# message counts in the phase of its intended time (report.json `phases`), so the steady figures
# are exact HDR percentiles of every message produced in the steady phase, nothing left out;
# whatever was still queued from the connect phase delays them and shows. CPU per message is
# measured in a window inside the steady phase (1 s after it starts, to 2 s before the end), for
# iot-sim and for the broker, beside the whole machine's busy share (other work on it). Each
# case also counts the kernel's listen-queue drops (SYNs a full backlog dropped). Cases:
#   null      the same fleet on the null sink: the baseline for memory and CPU
#   pooled    the same fleet through the pooled MQTT sink (4 connections per shard, rumqttc)
#   sessions  every device its own session, connect_rate 5000/s, sockets bound round-robin to
#             127.0.0.2 and 127.0.0.3: time until all are connected (established sockets
#             counted with `ss` every 100 ms), RSS over the null baseline per session, CPU per
#             message in the steady window (from /proc/PID/stat), latency per phase from
#             intended time (report), source addresses the sockets used
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
STEADY_AT=${BENCH_STEADY_AT:-15}
MAXC=${BENCH_MAX_CONNECTING:-}
RATE=${BENCH_CONNECT_RATE:-5000}
CORES=${BENCH_CORES:-2}
OUT=target/bench/mqtt_sessions
mkdir -p "$OUT"
[[ -n ${BENCH_NO_BUILD:-} || -n ${BENCH_BIN:-} ]] || cargo build --release --quiet --bin iot-sim
BIN=${BENCH_BIN:-target/release/iot-sim}
ulimit -n "$(ulimit -Hn)"
# shellcheck source=bench/lib/mosquitto.sh
source bench/lib/mosquitto.sh
mosquitto_conf
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
connect_rate = $RATE
keep_alive = \"60s\"
inflight = 4
queue_size = 100
source_addresses = [\"127.0.0.2\", \"127.0.0.3\"]${MAXC:+
max_connecting = $MAXC}" ; proto=mqtt ; profile_extra='connection = "per_device"' ;;
  esac
  local scenario=""
  if [[ $1 == null || $1 == pooled || $1 == sessions ]]; then
    scenario="scenario = \"$1-phases.toml\""
    cat > "$OUT/$1-phases.toml" <<EOF
name = "mqtt_sessions_phases"
duration = "${SECS}s"
[[step]]
at = "0s"
phase = "connect"
[[step]]
at = "${STEADY_AT}s"
phase = "steady"
EOF
  fi
  cat > "$OUT/$1.toml" <<EOF
[run]
seed = 1
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"
duration = "${SECS}s"
${BENCH_PIN:+pin = $BENCH_PIN}
$scenario

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

# The kernel's counts of SYNs dropped at a full listen queue (ListenOverflows, ListenDrops): on
# this machine's whole network stack, so other users' load counts too.
listen_drops() {
  awk '/^TcpExt:/ { if (!h) { for (i = 2; i <= NF; i++) n[i] = $i; h = 1 }
    else for (i = 2; i <= NF; i++) if (n[i] == "ListenOverflows" || n[i] == "ListenDrops") printf "%s ", $i }' /proc/net/netstat
}
# TCP counters of the whole network stack that tell where connects wait (SYNs sent again,
# TIME_WAIT sockets met by a new SYN, cookies): "name=value" pairs of /proc/net/netstat.
tcp_counters() {
  awk '/^TcpExt:/ { if (!h) { for (i = 2; i <= NF; i++) n[i] = $i; h = 1 }
    else for (i = 2; i <= NF; i++) if (n[i] ~ /^(TCPSynRetrans|TW|TWRecycled|TWKilled|PAWSEstab|PAWSTimewait|SyncookiesSent|TCPReqQFullDoCookies|TCPACKSkippedTimeWait|TCPChallengeACK|ListenOverflows|ListenDrops)$/) printf "%s=%s ", n[i], $i }' /proc/net/netstat
}
# Busy and total ticks of the whole machine (/proc/stat: all but idle and iowait are busy).
machine_ticks() { awk '/^cpu / {t=0; for (i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat; }
TCK=$(getconf CLK_TCK)
# Voluntary context switches of every thread of a process (each sleep that slept is one).
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }

scrape() { # $1 = file: the run's /metrics now (admin address from its log)
  local a
  a=$(sed -n 's|.*admin: listening on http://\([^ ]*\).*|\1|p' "$OUT/$c.log" | head -1)
  [[ -n $a ]] && curl -s --max-time 5 "http://$a/metrics" > "$1" || true
}

run_case() { # $1 = case; prints a JSON object on stdout
  local c=$1 t0 connect_s="null" storm_s="null" cpu1 cpu2 sources="{}" now
  fleet "$c"
  rm -rf "$OUT/$c-report"
  local drops0
  drops0=$(listen_drops)
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
    local down down_ns e syn at10="null" max_syn=0 tcp0
    down=$(date +%s.%N)
    down_ns=$(date +%s%N)
    tcp0=$(tcp_counters)
    broker_up
    # Until every session is back: sessions up 10 s after the restart (the target: all), and
    # the most sockets seen at once in SYN-SENT towards the broker.
    while :; do
      e=$(established)
      (( e >= N )) && break
      kill -0 $RUN 2>/dev/null || break
      syn=$(ss -Htn state syn-sent "( dport = :$PORT )" | wc -l)
      (( syn > max_syn )) && max_syn=$syn
      [[ $at10 == null ]] && (( $(date +%s%N) - down_ns >= 10000000000 )) && at10=$e
      sleep 0.1
    done
    now=$(date +%s.%N)
    (( $(established) >= N )) && storm_s=$(python3 -c "print(round($now - $down, 2))")
    [[ $at10 == null && $storm_s != null ]] && at10=$N
    echo "{\"up_10s_after_restart\": $at10, \"max_syn_sent\": $max_syn, \"tcp_before\": \"$tcp0\", \"tcp_after\": \"$(tcp_counters)\"}" > "$OUT/$c.storm-extra.json"
    cpu1=0; cpu2=0
  else
    # Steady window: from 1 s into the steady phase to 2 s before the end (sim time 0 is a
    # little after t0, so the window stays inside the phase).
    local win_s=$(( SECS - STEADY_AT - 3 ))
    (( win_s >= 1 )) || { echo "BENCH_SECONDS must exceed BENCH_STEADY_AT + 3" >&2; exit 2; }
    python3 -c "import time; time.sleep(max(0.0, $t0 + $STEADY_AT + 1 - time.time()))"
    scrape "$OUT/$c.m1"
    cpu1=$(cpu_ticks $RUN); bcpu1=$(cpu_ticks $BROKER); read -r mb1 mt1 < <(machine_ticks); sw1=$(switches $RUN)
    sleep "$win_s"
    cpu2=$(cpu_ticks $RUN); bcpu2=$(cpu_ticks $BROKER); read -r mb2 mt2 < <(machine_ticks); sw2=$(switches $RUN)
    scrape "$OUT/$c.m2"
  fi
  wait $RUN || { cat "$OUT/$c.log" >&2; exit 1; }
  RUN=""
  local drops1
  drops1=$(listen_drops)
  python3 - "$OUT/$c-report/report.json" "$c" "$connect_s" "$storm_s" "$cpu1" "$cpu2" "$TCK" "$N" "$sources" "$idle_rss" "$OUT/$c.m1" "$OUT/$c.m2" \
    "${win_s:-0}" "${bcpu1:-0}" "${bcpu2:-0}" "${mb1:-0} ${mt1:-0} ${mb2:-0} ${mt2:-0}" "$STEADY_AT" "$drops0" "$drops1" \
    "$(( ${sw2:-0} - ${sw1:-0} ))" <<'EOF'
import json, os, re, sys
r = json.load(open(sys.argv[1]))
c, connect_s, storm_s = sys.argv[2], sys.argv[3], sys.argv[4]
cpu1, cpu2, tck, n = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
win_s, bcpu1, bcpu2 = int(sys.argv[13]), int(sys.argv[14]), int(sys.argv[15])
mb1, mt1, mb2, mt2 = (int(x) for x in sys.argv[16].split())
row = r["runs"][0]
ev = {k: v for k, v in r.get("sink_events", {}).items()}
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
def count(path):
    # Messages completed so far (the latency histogram's count, every label set).
    if not os.path.exists(path):
        return None
    return sum(int(float(m.group(1))) for m in re.finditer(
        r'^iot_sim_publish_latency_seconds_count(?:\{[^}]*\})? (\S+)', open(path).read(), re.M))
if cpu2 > cpu1 > 0 and win_s > 0:
    # Each device publishes once a second: n messages produced per second of the window.
    cpu_s = (cpu2 - cpu1) / tck
    done = (count(sys.argv[12]) or 0) - (count(sys.argv[11]) or 0)
    out["steady_window"] = {
        "starts_s": int(sys.argv[17]) + 1, "seconds": win_s,
        "produced": n * win_s, "completed": done,
        "cpu_us_per_msg": round(cpu_s * 1e6 / (win_s * n), 2),
        "cpu_us_per_completed_msg": round(cpu_s * 1e6 / done, 2) if done > 0 else None,
        "iot_sim_cores": round(cpu_s / win_s, 3),
        "broker_cores": round((bcpu2 - bcpu1) / tck / win_s, 3),
        "machine_busy_share": round((mb2 - mb1) / (mt2 - mt1), 3) if mt2 > mt1 else None,
        # Sleeps that slept, every thread of iot-sim: its wake-ups per second.
        "wakeups_per_s": round(int(sys.argv[20]) / win_s),
    }
    out["steady_cpu_us_per_msg"] = out["steady_window"]["cpu_us_per_msg"]
d0, d1 = [int(x) for x in sys.argv[18].split()], [int(x) for x in sys.argv[19].split()]
if len(d0) == 2 and len(d1) == 2:
    out["kernel_listen_overflows"] = d1[0] - d0[0]
    out["kernel_listen_drops"] = d1[1] - d0[1]
if c in ("sessions", "idle", "storm"):
    out["max_connecting"] = int(os.environ.get("BENCH_MAX_CONNECTING") or 100)
    out["connect_rate"] = int(os.environ.get("BENCH_CONNECT_RATE") or 5000)
if connect_s != "null":
    out["connect_all_s"] = float(connect_s)
    out["source_addresses_seen"] = json.loads(sys.argv[9])
if storm_s != "null":
    out["storm_back_all_s"] = float(storm_s)
extra = os.path.join(os.path.dirname(sys.argv[11]), "storm.storm-extra.json")
if c == "storm" and os.path.exists(extra):
    x = json.load(open(extra))
    out["storm_up_10s_after_restart"] = x["up_10s_after_restart"]
    out["storm_max_syn_sent"] = x["max_syn_sent"]
    a = dict(kv.split("=") for kv in x["tcp_before"].split())
    b = dict(kv.split("=") for kv in x["tcp_after"].split())
    # Whole machine, from the restart until every session was back (or the run ended).
    out["storm_tcp_counters"] = {k: int(b[k]) - int(a[k]) for k in a if k in b}
if int(sys.argv[10]) > 0:
    out["rss_bytes_all_connected"] = int(sys.argv[10])
# Scenario phases (exact HDR percentiles over every message whose intended time is in the phase).
ph = {}
for p in r.get("phases", []):
    prow = (p.get("runs") or [{}])[0]
    lat = prow.get("latency_us", {})
    ph[p["name"]] = {
        "messages": p.get("messages"),
        "errors": prow.get("errors"), "dropped": prow.get("dropped"),
        "latency_us": {k: lat.get(k) for k in ("count", "p50", "p99", "p999", "max")},
    }
if ph:
    out["phases"] = ph
print(json.dumps(out))
EOF
}

for c in ${BENCH_CASES:-null pooled sessions idle storm}; do
  if [[ $c == storm ]] && (( ${BENCH_STORM_RUNS:-1} > 1 )); then
    # BENCH_STORM_RUNS=N: the storm case N times (a fresh broker each time); storm.json is the
    # last, storm-runs.json lists every run's time back and sessions up 10 s after the restart.
    for i in $(seq 1 "$BENCH_STORM_RUNS"); do
      broker_down; broker_up
      rm -f "$OUT/storm.storm-extra.json"
      run_case storm > "$OUT/storm-$i.json"
      cp "$OUT/storm-$i.json" "$OUT/storm.json"
      echo "  storm run $i: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ("storm_back_all_s", "storm_up_10s_after_restart", "lost", "storm_max_syn_sent")})' "$OUT/storm-$i.json")" >&2
    done
    python3 - "$OUT" "$BENCH_STORM_RUNS" "$N" <<'EOF' | tee "$OUT/storm-runs.json"
import json, sys
out, k, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = [json.load(open(f"{out}/storm-{i}.json")) for i in range(1, k + 1)]
back = [r.get("storm_back_all_s") for r in runs]
print(json.dumps({
    "storm_runs": k, "sessions": n,
    "back_all_s": back,
    "up_10s_after_restart": [r.get("storm_up_10s_after_restart") for r in runs],
    "all_back_within_10s": sum(1 for b in back if b is not None and b <= 10),
    "lost": [r["lost"] for r in runs], "errors": [r["errors"] for r in runs], "dropped": [r["dropped"] for r in runs],
    "max_syn_sent": [r.get("storm_max_syn_sent") for r in runs],
    "tcp_counters": [r.get("storm_tcp_counters") for r in runs],
}))
EOF
    continue
  fi
  run_case "$c" > "$OUT/$c.json"
done
missing=""
for c in null pooled sessions idle storm; do
  [[ -f $OUT/$c.json ]] || missing="$missing $c"
done
if [[ -n $missing ]]; then
  # A subset run on a checkout without the other cases' last results: the per-case JSON is
  # written ($OUT/CASE.json); the summary needs every case.
  echo "no summary: no results yet for:$missing (run them with BENCH_CASES)" >&2
  exit 0
fi
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
        "steady_phase_latency_us_sessions": s.get("phases", {}).get("steady", {}).get("latency_us"),
        "steady_phase_latency_us_pooled": p.get("phases", {}).get("steady", {}).get("latency_us"),
        "steady_phase_latency_us_null": b.get("phases", {}).get("steady", {}).get("latency_us"),
        "steady_window_broker_cores_sessions": s.get("steady_window", {}).get("broker_cores"),
        "steady_window_broker_cores_pooled": p.get("steady_window", {}).get("broker_cores"),
        "connect_errors_sessions": s["sink_events"].get("mqtt.session_connect_error", 0),
        "max_connecting_sessions": s.get("max_connecting"),
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
