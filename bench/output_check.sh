#!/usr/bin/env bash
# Output check of an engine change: two builds run bench/output_check.toml (3,500 devices on the
# file sink: labels with a quote and a non-ASCII value, numbers from 1e-10 to 1e20, `seq`, a
# `decimals` field, a run across midnight; virtual clock, seed 7) with --cores 1 and 2, each in
# a directory of its own, and every telemetry file is compared byte for byte. Prints one JSON
# object; exits 1 if any file differs or is missing.
#
#   bench/output_check.sh BASE_BIN NEW_BIN
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: bench/output_check.sh BASE_BIN NEW_BIN}
NEW=${2:?usage: bench/output_check.sh BASE_BIN NEW_BIN}
OUT=target/bench/output_check
rm -rf "$OUT"
for side in base new; do
  bin=$BASE; [[ $side == new ]] && bin=$NEW
  bin=$(realpath "$bin")
  for cores in 1 2; do
    dir="$OUT/$side-$cores"
    mkdir -p "$dir"
    cp bench/output_check.toml "$dir/"
    (cd "$dir" && "$bin" --config output_check.toml --quiet --cores "$cores" > run.txt 2>&1)
  done
done
python3 - "$OUT" <<'PY'
import filecmp, json, os, sys
out = sys.argv[1]
files, same = [], True
for cores in (1, 2):
    b, n = f"{out}/base-{cores}/out", f"{out}/new-{cores}/out"
    names = sorted(f for f in os.listdir(b) if f.endswith(".jsonl"))
    if names != sorted(f for f in os.listdir(n) if f.endswith(".jsonl")) or not names:
        same = False
    for f in names:
        eq = os.path.exists(f"{n}/{f}") and filecmp.cmp(f"{b}/{f}", f"{n}/{f}", shallow=False)
        same &= eq
        files.append({"cores": cores, "file": f, "bytes": os.path.getsize(f"{b}/{f}"), "identical": eq})
print(json.dumps({"identical": same, "files": files}, indent=2))
sys.exit(0 if same else 1)
PY
