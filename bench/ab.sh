#!/usr/bin/env bash
# A/B of two builds on the engine case of bench/run.sh: bench/million.toml (3-field profile,
# null sink), virtual clock, 1 core. The two binaries run alternately, BENCH_REPS times each,
# in one sitting, so machine noise falls on both; prints one JSON object with every run's
# msg/s and peak RSS and the median ratio new / base.
#
#   bench/ab.sh BASE_BIN NEW_BIN
#   BENCH_DEVICES=1000000 BENCH_SPAN=5m BENCH_REPS=3 bench/ab.sh ...
#
# Build the two sides first, e.g. `git worktree add --detach ../ab-base OLD && (cd ../ab-base &&
# cargo build --release)` and the same for the new commit.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: bench/ab.sh BASE_BIN NEW_BIN}
NEW=${2:?usage: bench/ab.sh BASE_BIN NEW_BIN}
N=${BENCH_DEVICES:-1000000}
SPAN=${BENCH_SPAN:-5m}
REPS=${BENCH_REPS:-3}
OUT=target/bench/ab
mkdir -p "$OUT"
sed "s/^count = .*/count = $N/" bench/million.toml > "$OUT/fleet.toml"

one() { # $1 = side, $2 = binary, $3 = rep
  local dir="$OUT/$1-$3"
  "$2" --config "$OUT/fleet.toml" --quiet --report-dir "$dir" --cores 1 --clock virtual \
    --duration "$SPAN" > "$dir.txt" 2>&1
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["msgs_per_s"], r["peak_rss_bytes"])' \
    "$dir/report.json"
}

base=() new=() base_rss=() new_rss=()
for rep in $(seq 1 "$REPS"); do
  read -r m r < <(one base "$BASE" "$rep"); base+=("$m"); base_rss+=("$r")
  read -r m r < <(one new "$NEW" "$rep"); new+=("$m"); new_rss+=("$r")
done

python3 - "$N" "$SPAN" "${base[*]}" "${new[*]}" "${base_rss[*]}" "${new_rss[*]}" <<'EOF'
import json, statistics, sys
n, span = int(sys.argv[1]), sys.argv[2]
b, nw = [float(x) for x in sys.argv[3].split()], [float(x) for x in sys.argv[4].split()]
br, nr = [int(x) for x in sys.argv[5].split()], [int(x) for x in sys.argv[6].split()]
print(json.dumps({
    "devices": n, "span": span, "cores": 1, "clock": "virtual",
    "base_msgs_per_s": b, "new_msgs_per_s": nw,
    "base_peak_rss_bytes": br, "new_peak_rss_bytes": nr,
    "median_ratio_new_over_base": round(statistics.median(nw) / statistics.median(b), 3),
    "rss_ratio_new_over_base": round(statistics.median(nr) / statistics.median(br), 3),
}, indent=2))
EOF
