#!/usr/bin/env bash
# Memory per profile (issue 15): peak RSS of a fleet file with P profiles of one device each,
# against a baseline of one profile, in the same run of this script. Prints one JSON object.
#
#   bench/profiles.sh                 P = 1 (baseline), 1000, 4000 on 2 shards
#   BENCH_PROFILES="1 1000 4000"      the profile counts; BENCH_CORES=2 the shard count
#   BIN=target/debug/iot-sim          another build (default: the release build)
#
# Each case is a 2 s virtual run on the null sink; the figure is the report's peak_rss_bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${BENCH_PROFILES:-"1 1000 4000"}
CORES=${BENCH_CORES:-2}
OUT=target/bench/profiles
mkdir -p "$OUT"
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet --bin iot-sim
  BIN=target/release/iot-sim
fi

for p in $COUNTS; do
  python3 - "$p" > "$OUT/p$p.toml" <<'PY'
import sys
n = int(sys.argv[1])
print('[run]\nseed = 1\nclock = "virtual"\nstart_time = "2026-03-14T00:00:00Z"\nduration = "2s"\n')
for i in range(n):
    print(f'[[fleet]]\nprofile = "p{i}"\ncount = 1\n')
for i in range(n):
    print(f'[profiles.p{i}]\nprotocol = "null"\ninterval = "1s"\n'
          f'[profiles.p{i}.fields.t]\ntype = "gaussian"\nmean = {i}\nstddev = 1\n')
PY
  "$BIN" --config "$OUT/p$p.toml" --cores "$CORES" --quiet --report-dir "$OUT/p$p" \
    > "$OUT/p$p.txt" 2>&1
done

python3 - "$OUT" "$CORES" $COUNTS <<'PY'
import json, os, sys
out, cores, counts = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3:]]
rss = {p: json.load(open(os.path.join(out, f"p{p}", "report.json")))["peak_rss_bytes"] for p in counts}
base = counts[0]
res = {"cores": cores, "baseline_profiles": base, "baseline_peak_rss_bytes": rss[base], "cases": []}
for p in counts[1:]:
    res["cases"].append({
        "profiles": p,
        "peak_rss_bytes": rss[p],
        "bytes_per_profile": round((rss[p] - rss[base]) / (p - base)),
        "ratio_to_baseline": round(rss[p] / rss[base], 2),
    })
print(json.dumps(res, indent=2))
PY
