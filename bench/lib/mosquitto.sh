# Sourced by the MQTT benchmarks: a private Mosquitto on a free port of 127.0.0.1 (never the
# shared one on 1883), started and stopped per case. Needs OUT (the script's output folder).
#   PORT                      the free port (set when sourced)
#   mosquitto_conf [LINE...]  writes $OUT/mosquitto.conf: no connection limit, TCP_NODELAY,
#                             unlimited queues, no persistence, plus the given lines
#   broker_up / broker_down   start it (BROKER = its pid, log in $OUT/mosquitto.log) / stop it
#   cpu_ticks PID             utime + stime of a process, in clock ticks
#   established [PORT]        TCP connections established to PORT (default: the broker's)
# The EXIT trap kills RUN (the script's iot-sim, if it sets it) and BROKER.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BROKER=""
RUN=""
trap '[[ -n $RUN ]] && kill $RUN 2>/dev/null; [[ -n $BROKER ]] && kill $BROKER 2>/dev/null; wait 2>/dev/null || true' EXIT

mosquitto_conf() {
  cat > "$OUT/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
max_connections -1
set_tcp_nodelay true
max_queued_messages 0
persistence false
CONF
  (( $# == 0 )) || printf '%s\n' "$@" >> "$OUT/mosquitto.conf"
}

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

broker_down() {
  kill "$BROKER" 2>/dev/null || true
  wait "$BROKER" 2>/dev/null || true
  BROKER=""
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

established() { ss -Htn state established "( dport = :${1:-$PORT} )" | wc -l; }
