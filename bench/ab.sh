#!/usr/bin/env bash
# A/B of two builds on the engine case of bench/run.sh: bench/million.toml (3-field profile,
# null sink), virtual clock. The two binaries run alternately, BENCH_REPS times each, in one
# sitting, so machine noise falls on both; prints one JSON object with every run's msg/s, CPU
# per message and peak RSS, each build's bytes per device, and the median ratios new / base.
#
#   bench/ab.sh BASE_BIN NEW_BIN
#   BENCH_DEVICES=1000000 BENCH_SPAN=5m BENCH_REPS=3 BENCH_CORES=1 bench/ab.sh ...
#
# Bytes per device: each build once more with a `--duration 1ms` run of the fleet and of one
# device (peak RSS difference / devices, as the `spawn` case of bench/run.sh measures it).
# Build the two sides first, e.g. `git worktree add --detach ../ab-base OLD && (cd ../ab-base &&
# cargo build --release)` and the same for the new commit.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: bench/ab.sh BASE_BIN NEW_BIN}
NEW=${2:?usage: bench/ab.sh BASE_BIN NEW_BIN}
N=${BENCH_DEVICES:-1000000}
SPAN=${BENCH_SPAN:-5m}
REPS=${BENCH_REPS:-3}
CORES=${BENCH_CORES:-1}
OUT=target/bench/ab
mkdir -p "$OUT"
sed "s/^count = .*/count = $N/" bench/million.toml > "$OUT/fleet.toml"
sed "s/^count = .*/count = 1/" bench/million.toml > "$OUT/one.toml"

figures() { # $1 = report dir: msg/s, CPU ns per message, peak RSS, spawn seconds
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1]+"/report.json"))
print(r["msgs_per_s"], round(r["cpu_seconds"]*1e9/max(r["messages"],1),1), r["peak_rss_bytes"], r["spawn_seconds"])' "$1"
}

one() { # $1 = side, $2 = binary, $3 = rep
  local dir="$OUT/$1-$3"
  "$2" --config "$OUT/fleet.toml" --quiet --report-dir "$dir" --cores "$CORES" --clock virtual \
    --duration "$SPAN" > "$dir.txt" 2>&1
  figures "$dir"
}

per_device() { # $1 = side, $2 = binary: bytes per device and spawn seconds
  "$2" --config "$OUT/fleet.toml" --quiet --report-dir "$OUT/$1-spawn" --cores "$CORES" \
    --clock virtual --duration 1ms > "$OUT/$1-spawn.txt" 2>&1
  "$2" --config "$OUT/one.toml" --quiet --report-dir "$OUT/$1-one" --cores "$CORES" \
    --clock virtual --duration 1ms > "$OUT/$1-one.txt" 2>&1
  read -r _ _ fleet spawn < <(figures "$OUT/$1-spawn")
  read -r _ _ single _ < <(figures "$OUT/$1-one")
  python3 -c 'import sys; print(round((int(sys.argv[1]) - int(sys.argv[2])) / int(sys.argv[3]), 1))' \
    "$fleet" "$single" "$N"
  echo "$spawn"
}

base=() new=() base_cpu=() new_cpu=() base_rss=() new_rss=()
for rep in $(seq 1 "$REPS"); do
  read -r m c r _ < <(one base "$BASE" "$rep"); base+=("$m"); base_cpu+=("$c"); base_rss+=("$r")
  read -r m c r _ < <(one new "$NEW" "$rep"); new+=("$m"); new_cpu+=("$c"); new_rss+=("$r")
done
mapfile -t base_dev < <(per_device base "$BASE")
mapfile -t new_dev < <(per_device new "$NEW")

python3 - "$N" "$SPAN" "$CORES" "${base[*]}" "${new[*]}" "${base_cpu[*]}" "${new_cpu[*]}" \
  "${base_rss[*]}" "${new_rss[*]}" "${base_dev[*]}" "${new_dev[*]}" <<'PY'
import json, statistics, sys
n, span, cores = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
fl = lambda s: [float(x) for x in s.split()]
b, nw, bc, nc = fl(sys.argv[4]), fl(sys.argv[5]), fl(sys.argv[6]), fl(sys.argv[7])
br, nr = [int(x) for x in sys.argv[8].split()], [int(x) for x in sys.argv[9].split()]
bd, nd = fl(sys.argv[10]), fl(sys.argv[11])
med = statistics.median
print(json.dumps({
    "devices": n, "span": span, "cores": cores, "clock": "virtual",
    "base_msgs_per_s": b, "new_msgs_per_s": nw,
    "base_cpu_ns_per_message": bc, "new_cpu_ns_per_message": nc,
    "base_peak_rss_bytes": br, "new_peak_rss_bytes": nr,
    "base_bytes_per_device": bd[0], "new_bytes_per_device": nd[0],
    "base_spawn_seconds": bd[1], "new_spawn_seconds": nd[1],
    "median_ratio_new_over_base": round(med(nw) / med(b), 3),
    "cpu_per_message_ratio_new_over_base": round(med(nc) / med(bc), 3),
    "rss_ratio_new_over_base": round(med(nr) / med(br), 3),
}, indent=2))
PY
