#!/usr/bin/env bash
# Cost of a realtime run at every rate and speed (issue 25). Prints one JSON object.
#
#   bench/speed.sh                   every case, 3 repeats of 15 wall-seconds each
#   BENCH_WALL_SECONDS=15            wall seconds per run
#   BENCH_REPEATS=3                  runs per case (the median is reported)
#   BENCH_DEVICES=21500              fleet size
#   BENCH_CASES="s1 s10 s30 low idle"  a subset of the cases
#   BENCH_BASE_BIN=path              also run this binary (a build of the baseline), interleaved
#                                    with the current one in each repeat: the figures come out
#                                    under "base" and "current", with the ratios of each
#
# Cases (21,500 devices of the 3-field profile of bench/million.toml, null sink, realtime, default
# settings otherwise, every core):
#   s1   interval 300 ms at --speed 1   (71,667 msg/s)
#   s10  interval 3 s at --speed 10     (71,667 msg/s)
#   s30  interval 9 s at --speed 30     (71,667 msg/s)
#   low  interval 10.75 s at --speed 1  (2,000 msg/s)
#   idle interval 24 h at --speed 1     (the fleet sends nothing: the process's own CPU floor)
# Per case: msg/s, process CPU seconds (report.json `cpu_seconds`: user + system over the whole
# process), CPU per message, tick lateness p50/p99 (wall time), and the process's voluntary
# context switches per wall second (each shard wake-up that sleeps is one). The ratios compare
# the speed rows with each other and the 2,000 msg/s row with the speed-1 row.
set -euo pipefail
cd "$(dirname "$0")/.."
WALL=${BENCH_WALL_SECONDS:-15}
REPEATS=${BENCH_REPEATS:-3}
N=${BENCH_DEVICES:-21500}
CASES=${BENCH_CASES:-"s1 s10 s30 low idle"}
OUT=target/bench/speed
mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/iot-sim
BASE=${BENCH_BASE_BIN:-}
LABELS=current
if [[ -n $BASE ]]; then
  cp "$BASE" "$OUT/iot-sim-base"
  LABELS="base current"
fi
bin_of() { if [[ $1 == base ]]; then echo "$OUT/iot-sim-base"; else echo "$BIN"; fi; }

case_args() { # $1 = case -> "interval speed"
  case $1 in
    s1) echo "300ms 1" ;;
    s10) echo "3s 10" ;;
    s30) echo "9s 30" ;;
    low) echo "10750ms 1" ;;
    idle) echo "24h 1" ;;
    *) echo "unknown case $1" >&2; exit 2 ;;
  esac
}

for rep in $(seq 1 "$REPEATS"); do
  for c in $CASES; do
    read -r interval speed <<<"$(case_args "$c")"
    sed -e "s/^count = .*/count = $N/" -e "s/^interval = .*/interval = \"$interval\"/" \
      bench/million.toml > "$OUT/$c.toml"
    for label in $LABELS; do
    dir="$OUT/$label-$c-$rep"
    rm -rf "$dir"
    # The wrapper reads the child's rusage (voluntary context switches) after it exits.
    python3 - "$(bin_of "$label")" "$dir" --config "$OUT/$c.toml" --quiet --report-dir "$dir" \
      --clock realtime --speed "$speed" --duration "$((WALL * speed))s" <<'PY'
import json, os, resource, subprocess, sys
binary, d, args = sys.argv[1], sys.argv[2], sys.argv[3:]
before = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(os.path.join(d + ".log"), "w") as log:
    subprocess.run([binary] + args, check=True, stdout=log, stderr=log)
after = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"nvcsw": after.ru_nvcsw - before.ru_nvcsw,
           "nivcsw": after.ru_nivcsw - before.ru_nivcsw}, open(os.path.join(d, "csw.json"), "w"))
PY
    done
  done
done

python3 - "$OUT" "$REPEATS" "$CASES" "$WALL" "$LABELS" <<'PY'
import json, os, statistics, sys
out, repeats, cases, wall = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), int(sys.argv[4])
labels = sys.argv[5].split()
res = {"machine": {"nproc": os.cpu_count()}, "wall_seconds": wall, "repeats": repeats}
def figures(label):
  res = {"cases": {}}
  for c in cases:
    runs = []
    for rep in range(1, repeats + 1):
        d = os.path.join(out, f"{label}-{c}-{rep}")
        r = json.load(open(os.path.join(d, "report.json")))
        csw = json.load(open(os.path.join(d, "csw.json")))
        lat = r["tick_lateness_us"]
        runs.append({
            "msgs_per_s": r["msgs_per_s"],
            "cpu_seconds": r["cpu_seconds"],
            "cpu_us_per_message": r["cpu_seconds"] * 1e6 / max(r["messages"], 1),
            "lateness_p50_us": lat["p50"],
            "lateness_p99_us": lat["p99"],
            "wakeups_per_s": csw["nvcsw"] / r["wall_seconds"],
        })
    med = {k: round(statistics.median(x[k] for x in runs), 2) for k in runs[0]}
    med["runs_cpu_us_per_message"] = [round(x["cpu_us_per_message"], 2) for x in runs]
    res["cases"][c] = med
  cs = res["cases"]
  def ratio(a, b):
    if a in cs and b in cs:
        return round(cs[a]["cpu_us_per_message"] / cs[b]["cpu_us_per_message"], 2)
  res["ratios_cpu_per_message"] = {
    "s10/s1": ratio("s10", "s1"),
    "s30/s1": ratio("s30", "s1"),
    "s30/s10": ratio("s30", "s10"),
    "low/s1": ratio("low", "s1"),
  }
  return res
for label in labels:
    res[label] = figures(label)
res["targets"] = "speed rows within 1.3x; low/s1 <= 3 with p99 lateness <= 2 ms"
print(json.dumps(res, indent=2))
PY
