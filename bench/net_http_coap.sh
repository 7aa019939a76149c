#!/usr/bin/env bash
# HTTP and CoAP sink benchmarks (issue 3, item 3). Prints one JSON object.
#
# Cases, each against a local server started here:
#   http_b1   HTTP, one message per request    (examples/http_bench_server.rs)
#   http_b50  HTTP, JSON arrays of 50 messages (same server)
#   coap_con  CoAP confirmable POSTs           (libcoap's coap-server, dynamic resources)
# Each case runs twice:
#   saturate  virtual clock: the sink paces the clock, so msg/s is the most it delivers;
#             latency there includes the wait in the sink's queue (closed loop).
#   steady    realtime clock at a fixed offered rate (BENCH_RATE msg/s, open loop): latency
#             p50/p99/p999 from each message's intended send time to its completion.
#
#   BENCH_CORES=2  BENCH_RATE=5000  BENCH_SECONDS=10  BENCH_VIRTUAL_MESSAGES=200000
set -euo pipefail
cd "$(dirname "$0")/.."
CORES=${BENCH_CORES:-2}
RATE=${BENCH_RATE:-5000}
SECS=${BENCH_SECONDS:-10}
VMSG=${BENCH_VIRTUAL_MESSAGES:-200000}
OUT=target/bench/net_http_coap
mkdir -p "$OUT"
cargo build --release --quiet --bin iot-sim --example http_bench_server
BIN=target/release/iot-sim
COAP_SERVER=$(command -v coap-server || command -v coap-server-notls || command -v coap-server-openssl || true)
[[ -n $COAP_SERVER ]] || { echo "coap-server not found (apt-get install -y libcoap3-bin)" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# HTTP server: prints its port first.
target/release/examples/http_bench_server 0 1 > "$OUT/http_server.txt" &
pids+=($!)
for _ in $(seq 50); do [[ -s $OUT/http_server.txt ]] && break; sleep 0.1; done
HTTP_PORT=$(head -1 "$OUT/http_server.txt")
COAP_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$COAP_SERVER" -A 127.0.0.1 -p "$COAP_PORT" -d 1000000 > /dev/null 2>&1 &
pids+=($!)
sleep 0.5

fleet() { # $1 = file, $2 = protocol, $3 = devices, $4 = sink table
  cat > "$1" <<TOML
[run]
seed = 1
start_time = "2026-03-14T08:00:00Z"

$4

[[fleet]]
profile = "meter"
count = $3

[profiles.meter]
protocol = "$2"
topic = "meters/{device_id}/telemetry"
interval = "1s"
[profiles.meter.fields.power]
type = "gaussian"
mean = 100.0
stddev = 5.0
[profiles.meter.fields.voltage]
type = "brownian"
start = 230.0
volatility = 0.5
mean_reversion = 0.1
TOML
}

bench_case() { # $1 = name, $2 = protocol, $3 = sink table
  local name=$1 proto=$2 sink=$3
  # saturate: VMSG messages over 10 virtual seconds
  fleet "$OUT/$name-saturate.toml" "$proto" $((VMSG / 10)) "$sink"
  "$BIN" --config "$OUT/$name-saturate.toml" --quiet --cores "$CORES" --clock virtual --duration 10s \
    --report-dir "$OUT/$name-saturate" > "$OUT/$name-saturate.txt" 2>&1 || echo "$name saturate failed" >&2
  # steady: RATE msg/s for SECS wall seconds
  fleet "$OUT/$name-steady.toml" "$proto" "$RATE" "$sink"
  "$BIN" --config "$OUT/$name-steady.toml" --quiet --cores "$CORES" --clock realtime --duration "${SECS}s" \
    --report-dir "$OUT/$name-steady" > "$OUT/$name-steady.txt" 2>&1 || echo "$name steady failed" >&2
}

bench_case http_b1 http "[sink.http]
endpoint = \"http://127.0.0.1:$HTTP_PORT/ingest\"
concurrency = 64
queue_size = 20000"
bench_case http_b50 http "[sink.http]
endpoint = \"http://127.0.0.1:$HTTP_PORT/ingest\"
batch_size = 50
batch_linger = \"20ms\"
concurrency = 16
queue_size = 20000"
bench_case coap_con coap "[sink.coap]
url = \"coap://127.0.0.1:$COAP_PORT\"
confirmable = true
max_inflight = 64
queue_size = 20000"

python3 - "$OUT" "$CORES" "$RATE" "$SECS" <<'PY'
import json, os, sys
out, cores, rate, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rep(name):
    p = os.path.join(out, name, "report.json")
    return json.load(open(p)) if os.path.exists(p) else None
def row(r):
    rows = [x for x in r["runs"] if x["sink"] in ("http", "coap")]
    return rows[0] if rows else None
res = {"machine": {"nproc": os.cpu_count()}, "cores": cores, "steady_offered_msgs_per_s": rate, "steady_seconds": secs}
for case in ("http_b1", "http_b50", "coap_con"):
    c = {}
    s, t = rep(case + "-saturate"), rep(case + "-steady")
    if s and row(s):
        x = row(s)
        c["saturate"] = {
            "messages": x["messages"], "errors": x["errors"], "dropped": x["dropped"],
            "wall_seconds": round(s["wall_seconds"], 3),
            "msgs_per_s": round(x["messages"] / s["wall_seconds"]) if s["wall_seconds"] else None,
            "cpu_us_per_msg": round(s["cpu_seconds"] * 1e6 / x["messages"], 2) if x["messages"] else None,
            "latency_us_p99_closed_loop": x["latency_us"]["p99"],
            "service_us_p99": x["service_us"]["p99"],
        }
    if t and row(t):
        x = row(t)
        c["steady"] = {
            "messages": x["messages"], "errors": x["errors"], "dropped": x["dropped"],
            "msgs_per_s": round(x["messages"] / t["wall_seconds"]) if t["wall_seconds"] else None,
            "latency_us": {k: x["latency_us"][k] for k in ("p50", "p99", "p999", "max")},
            "service_us_p99": x["service_us"]["p99"],
            "error_kinds": x["error_kinds"],
        }
    res[case] = c
print(json.dumps(res, indent=2))
PY
