#!/usr/bin/env bash
# Deployment figures (issue 10; README "Deployment"). Prints one JSON object.
#
#   bench/deploy.sh          (as root: podman; ~3 min after the release build)
#   BENCH_RT_SECONDS=30      length of each capacity run (wall seconds)
#   BENCH_DEVICES=1000000    devices per "pod" (5 s interval: N/5 msg/s)
#
# 1. The image: the Dockerfile's runtime stage with the release binary (target `runtime-prebuilt`,
#    base from deploy/container/base-image.sh), its size next to the base image's.
# 2. Start to ready (/readyz 200) of `serve --cores 2`: in the container vs the same binary on
#    the host (baseline, same run).
# 3. One pod's capacity: bench/million.toml (3-field profile, null sink) realtime on 2 cores,
#    in the container vs on the host: msg/s, tick lateness, CPU per message, peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
RT=${BENCH_RT_SECONDS:-30}
N=${BENCH_DEVICES:-1000000}
OUT=target/bench/deploy
IMAGE=localhost/iot-sim:bench
FLAGS=(--network host --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
mkdir -p "$OUT/ctx" "$OUT/config" "$OUT/data"
chmod 0777 "$OUT/data"
cargo build --release --quiet --bin iot-sim
BIN=target/release/iot-sim
deploy/container/base-image.sh target/container >/dev/null
cp "$BIN" "$OUT/ctx/iot-sim"
strip "$OUT/ctx/iot-sim" 2>/dev/null || true
podman --runtime runc build -q --pull=never --format docker "${FLAGS[@]}" \
  --target runtime-prebuilt -f Dockerfile -t "$IMAGE" "$OUT/ctx" >/dev/null
image_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_bytes=$(podman image inspect --format '{{.Size}}' docker.io/library/debian:bookworm-slim)
binary_bytes=$(stat -c %s "$OUT/ctx/iot-sim")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
wait_ready() { # $1 = admin port; prints seconds since $2
  for _ in $(seq 1 600); do
    if python3 - "$1" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
PY
    sleep 0.02
  done
  python3 -c "print(round($(now) - $2, 3))"
}

# 2. start to ready, empty runtime, 3 tries each, the median.
ready_host=(); ready_ctr=()
for i in 1 2 3; do
  p=$(free_port); t0=$(now)
  "$BIN" serve --cores 2 --grpc "127.0.0.1:$(free_port)" --admin "127.0.0.1:$p" --quiet \
    --report-dir "$OUT/data/host-ready" >/dev/null 2>&1 & pid=$!
  ready_host+=("$(wait_ready "$p" "$t0")"); kill -TERM $pid; wait $pid || true
  p=$(free_port); t0=$(now)
  podman --runtime runc run -d --rm --name "iot-sim-bench-$$" "${FLAGS[@]}" -v "$PWD/$OUT/data:/data" \
    "$IMAGE" serve --cores 2 --grpc "127.0.0.1:$(free_port)" --admin "127.0.0.1:$p" --quiet >/dev/null 2>&1
  # (podman logs "unable to get systemd connection" for the HEALTHCHECK timer where there is
  # no systemd: harmless, the health check itself is `iot-sim probe`.)
  ready_ctr+=("$(wait_ready "$p" "$t0")"); podman stop -t 10 "iot-sim-bench-$$" >/dev/null 2>&1
done
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }

# 3. capacity: the same fleet, realtime, on the host and in the container.
sed "s/^count = .*/count = $N/" bench/million.toml > "$OUT/config/fleet.toml"
"$BIN" --config "$OUT/config/fleet.toml" --quiet --cores 2 --clock realtime --duration "${RT}s" \
  --report-dir "$OUT/data/host" >/dev/null 2>&1
podman --runtime runc run --rm "${FLAGS[@]}" -v "$PWD/$OUT/config:/config:ro" -v "$PWD/$OUT/data:/data" \
  "$IMAGE" run --config /config/fleet.toml --quiet --cores 2 --clock realtime --duration "${RT}s" \
  --report-dir /data/container >/dev/null 2>&1

python3 - "$OUT" "$image_bytes" "$base_bytes" "$binary_bytes" "$N" "$(median "${ready_host[@]}")" \
  "$(median "${ready_ctr[@]}")" "${ready_host[*]}" "${ready_ctr[*]}" <<'PY'
import json, sys
out, image, base, binary, n, rh, rc, all_h, all_c = sys.argv[1:]
def case(name):
    r = json.load(open(f"{out}/data/{name}/report.json"))
    return {"messages": r["messages"], "wall_seconds": r["wall_seconds"],
            "msgs_per_s": r["msgs_per_s"], "errors": r["errors"], "dropped": r["dropped"],
            "tick_lateness_us": r["tick_lateness_us"], "cpu_seconds": r["cpu_seconds"],
            "cpu_ns_per_message": round(r["cpu_seconds"] * 1e9 / max(r["messages"], 1), 1),
            "peak_rss_bytes": r["peak_rss_bytes"],
            "rss_bytes_per_device": round(r["peak_rss_bytes"] / int(n), 1)}
h, c = case("host"), case("container")
print(json.dumps({
  "machine": {"nproc": 2, "note": "shared by five engineers' builds and tests"},
  "image": {"image_bytes": int(image), "base_image_bytes": int(base), "binary_bytes": int(binary),
            "base": "debian bookworm minbase from debootstrap (trimmed), stands in for bookworm-slim"},
  "start_to_ready_s": {"host_median": float(rh), "container_median": float(rc),
                       "ratio_container_over_host": round(float(rc) / float(rh), 2),
                       "host_runs": all_h.split(), "container_runs": all_c.split()},
  "pod_capacity": {"devices": int(n), "interval_s": 5, "cores": 2, "sink": "null",
                   "host": h, "container": c,
                   "ratio_msgs_per_s_container_over_host": round(c["msgs_per_s"] / h["msgs_per_s"], 3),
                   "ratio_cpu_per_message_container_over_host": round(c["cpu_ns_per_message"] / h["cpu_ns_per_message"], 3)},
}, indent=2))
PY
