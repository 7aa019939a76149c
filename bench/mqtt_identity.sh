#!/usr/bin/env bash
# Per-device identities (issue 23): mutual-TLS per-device sessions, each device with its own
# client certificate. Prints one JSON object (also written to target/bench/mqtt_identity/result.json).
#
#   BENCH_SESSIONS=2000   sessions of the setup cases (one shard: "per core")
#   BENCH_STEADY=10000    sessions of the steady case (1 msg/s each, QoS 1)
#   BENCH_SECONDS=40  BENCH_STEADY_AT=20  BENCH_CORES=2   (the steady case)
#   BENCH_KEY=ecdsa_p256  (or rsa_2048)
#   BENCH_CASES="null tcp generated files steady"  (a subset reruns those cases)
#
# Against a private mosquitto on a free port (never the shared one): a TLS listener with
# require_certificate true and use_identity_as_username true; its CA, the device CA and the
# server certificate are made with openssl in the output folder. Cases:
#   null       BENCH_SESSIONS idle devices (interval 1h) on the null sink: the RSS baseline
#   tcp        the same devices as per-device sessions over plain mqtt:// (no TLS): RSS per
#              session without TLS, for comparison
#   generated  the same over mqtts://, each device's certificate generated at its first connect
#              (signed by the device CA, deterministic from the seed): time until all are
#              connected, iot-sim CPU from start to all connected (setup cost per session; on
#              one shard, so sessions per CPU-second is the rate per core), RSS per session
#              over the null baseline once all are connected
#   files      the same with pre-provisioned certificates (`iot-sim certs issue` beforehand,
#              untimed; the run reads each device's files at its first connect)
#   steady     BENCH_STEADY generated-certificate sessions on BENCH_CORES shards publishing every
#              second at QoS 1: time until all connected, exact p50/p99 from intended time over
#              the steady phase (report `phases`)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_SESSIONS:-2000}
NS=${BENCH_STEADY:-10000}
SECS=${BENCH_SECONDS:-40}
STEADY_AT=${BENCH_STEADY_AT:-20}
CORES=${BENCH_CORES:-2}
KEY=${BENCH_KEY:-ecdsa_p256}
OUT=target/bench/mqtt_identity
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[[ -n ${BENCH_NO_BUILD:-} ]] || cargo build --release --quiet --bin iot-sim
BIN=${BENCH_BIN:-target/release/iot-sim}
ulimit -n "$(ulimit -Hn)"
# shellcheck source=bench/lib/mosquitto.sh
source bench/lib/mosquitto.sh
TCK=$(getconf CLK_TCK)

# The PKI: a CA that signs the broker's certificate and the devices' (openssl, never committed).
pki() {
  local d=$OUT/pki
  [[ -f $d/server.pem ]] && return 0
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$d/ca.key" \
    -out "$d/ca.pem" -days 30 -subj "/CN=iot-sim bench CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$d/server.key" \
    -out "$d/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
  echo "subjectAltName=IP:127.0.0.1" > "$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 30 -out "$d/server.pem" -extfile "$d/server.ext" 2>/dev/null
  chmod 755 "$d"; chmod 644 "$d"/*
}
pki
TLS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mosquitto_conf "listener $TLS_PORT 127.0.0.1" "cafile $OUT/pki/ca.pem" "certfile $OUT/pki/server.pem" \
  "keyfile $OUT/pki/server.key" "require_certificate true" "use_identity_as_username true"
broker_up
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$TLS_PORT") 2>/dev/null && break; sleep 0.05; done

fleet() { # $1 = case; writes $OUT/$1.toml
  local c=$1 n=$N interval=1h cores=1 sink proto=mqtt extra='connection = "per_device"' scenario=""
  local tls="url = \"mqtts://127.0.0.1:$TLS_PORT\"
ca_file = \"$OUT/pki/ca.pem\""
  local per="[sink.mqtt.per_device]
connect_rate = 50000
max_connecting = 100
keep_alive = \"300s\"
inflight = 4"
  local gen="[sink.mqtt.per_device.identity]
ca_cert = \"$OUT/pki/ca.pem\"
ca_key = \"$OUT/pki/ca.key\"
key = \"$KEY\""
  case $c in
    null) sink='[sink.null]'; proto=null; extra="" ;;
    tcp) sink="[sink.mqtt]
url = \"mqtt://127.0.0.1:$PORT\"
qos = 1
$per" ;;
    generated|issue) sink="[sink.mqtt]
$tls
qos = 1
$per
$gen" ;;
    files) sink="[sink.mqtt]
$tls
qos = 1
$per
[sink.mqtt.per_device.identity]
cert_file = \"$OUT/certs/{device_id}.pem\"
key_file = \"$OUT/certs/{device_id}.key\"" ;;
    steady) n=$NS; interval=1s; cores=$CORES
      sink="[sink.mqtt]
$tls
qos = 1
$per
$gen"
      scenario="scenario = \"steady-phases.toml\""
      cat > "$OUT/steady-phases.toml" <<EOF
name = "mqtt_identity_phases"
duration = "${SECS}s"
[[step]]
at = "0s"
phase = "connect"
[[step]]
at = "${STEADY_AT}s"
phase = "steady"
EOF
      ;;
  esac
  local duration="${SECS}s"
  [[ $c == steady ]] || duration="600s"
  cat > "$OUT/$c.toml" <<EOF
[run]
seed = 1
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"
duration = "$duration"
cores = $cores
$scenario

$sink

[[fleet]]
profile = "probe"
count = $n

[profiles.probe]
protocol = "$proto"
$extra
topic = "bench/{device_id}"
interval = "$interval"
[profiles.probe.fields.t]
type = "gaussian"
mean = 20
stddev = 1
EOF
}

run_case() { # $1 = case; prints a JSON object
  local c=$1 n=$N port=$TLS_PORT connect_s=null cpu_s=null rss=0 bcpu_s=null
  [[ $c == tcp ]] && port=$PORT
  [[ $c == steady ]] && n=$NS
  if [[ $c == files ]]; then
    fleet issue
    rm -rf "$OUT/certs"
    "$BIN" certs issue --config "$OUT/issue.toml" --out "$OUT/certs" --seed 1 > /dev/null
  fi
  fleet "$c"
  rm -rf "$OUT/$c-report"
  local t0 b0
  t0=$(date +%s.%N)
  b0=$(cpu_ticks "$BROKER")
  "$BIN" run --config "$OUT/$c.toml" --quiet --report-dir "$OUT/$c-report" > "$OUT/$c.out" 2> "$OUT/$c.log" &
  RUN=$!
  if [[ $c == null ]]; then
    sleep 3
  else
    while (( $(established "$port") < n )); do
      kill -0 $RUN 2>/dev/null || break
      sleep 0.05
    done
    local now
    now=$(date +%s.%N)
    if (( $(established "$port") >= n )); then
      connect_s=$(python3 -c "print(round($now - $t0, 2))")
      cpu_s=$(python3 -c "print(round($(cpu_ticks $RUN) / $TCK, 2))")
      bcpu_s=$(python3 -c "print(round(($(cpu_ticks "$BROKER") - $b0) / $TCK, 2))")
    fi
  fi
  sleep 1
  rss=$(awk '/^VmRSS/ {print $2 * 1024}' "/proc/$RUN/status" 2>/dev/null || echo 0)
  # A run that already ended (a zombie until `wait`) has no VmRSS line.
  rss=${rss:-0}
  if [[ $c == steady ]]; then
    wait $RUN || { cat "$OUT/$c.log" >&2; exit 1; }
  else
    kill -TERM $RUN; wait $RUN || true
  fi
  RUN=""
  python3 - "$OUT/$c-report/report.json" "$c" "$n" "$connect_s" "$cpu_s" "$rss" "$bcpu_s" <<'EOF'
import json, sys
c, n = sys.argv[2], int(sys.argv[3])
try:
    r = json.load(open(sys.argv[1]))
except OSError:
    r = {}
row = (r.get("runs") or [{}])[0]
out = {"case": c, "sessions": n, "rss_bytes_all_connected": int(sys.argv[6]),
       "sink_events": r.get("sink_events", {})}
if sys.argv[4] != "null":
    out["connect_all_s"] = float(sys.argv[4])
    out["iot_sim_cpu_s_to_all_connected"] = float(sys.argv[5])
    out["broker_cpu_s_to_all_connected"] = float(sys.argv[7])
    cpu = float(sys.argv[5])
    out["setup_per_cpu_second"] = round(n / cpu) if cpu > 0 else None
if c == "steady":
    out["messages"], out["errors"], out["dropped"] = row.get("messages"), row.get("errors"), row.get("dropped")
    for p in r.get("phases", []):
        prow = (p.get("runs") or [{}])[0]
        lat = prow.get("latency_us", {})
        out.setdefault("phases", {})[p["name"]] = {
            "messages": p.get("messages"), "errors": prow.get("errors"),
            "latency_us": {k: lat.get(k) for k in ("count", "p50", "p99", "p999", "max")}}
print(json.dumps(out))
EOF
}

for c in ${BENCH_CASES:-null tcp generated files steady}; do
  run_case "$c" > "$OUT/$c.json"
  cat "$OUT/$c.json" >&2
done
python3 - "$OUT" "$N" "$KEY" <<'EOF' | tee "$OUT/result.json"
import json, os, sys
out, n, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = {k: json.load(open(f"{out}/{k}.json")) for k in ("null", "tcp", "generated", "files", "steady")
     if os.path.exists(f"{out}/{k}.json")}
def per(case):
    if case in c and "null" in c and c[case].get("rss_bytes_all_connected"):
        return round((c[case]["rss_bytes_all_connected"] - c["null"]["rss_bytes_all_connected"]) / c[case]["sessions"])
res = {"bench": "mqtt_identity", "key": key, "cases": c, "ratios": {
    "rss_per_tls_session_bytes_over_null_generated": per("generated"),
    "rss_per_tls_session_bytes_over_null_files": per("files"),
    "rss_per_tcp_session_bytes_over_null": per("tcp"),
    "setup_per_cpu_second_generated": c.get("generated", {}).get("setup_per_cpu_second"),
    "setup_per_cpu_second_files": c.get("files", {}).get("setup_per_cpu_second"),
    "setup_cpu_generated_over_files": round(c["generated"]["iot_sim_cpu_s_to_all_connected"] / c["files"]["iot_sim_cpu_s_to_all_connected"], 2)
        if c.get("generated", {}).get("iot_sim_cpu_s_to_all_connected") and c.get("files", {}).get("iot_sim_cpu_s_to_all_connected") else None,
    "steady_connect_all_s": c.get("steady", {}).get("connect_all_s"),
    "steady_phase_latency_us": c.get("steady", {}).get("phases", {}).get("steady", {}).get("latency_us"),
}, "targets": {"rss_per_tls_session_bytes": 16384}}
print(json.dumps(res, indent=1))
EOF
