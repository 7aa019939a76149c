#!/usr/bin/env bash
# Creates (once) a Python venv under target/ with grpcio and grpcio-tools, then generates the
# simulator.v1 Python client from proto/ into $1 (default target/python-gen).
#
# Idempotent: the venv is reused while tests/python/requirements.txt is unchanged (a stamp file
# holds its hash), so a second run only regenerates the stubs (about a second). Any failure
# (no python3, pip cannot reach PyPI, protoc errors) exits non-zero with the reason.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/python-venv"
gen="${1:-$target/python-gen}"
req="$root/tests/python/requirements.txt"
python="${PYTHON:-python3}"

command -v "$python" >/dev/null || { echo "setup_venv: $python not found" >&2; exit 1; }
mkdir -p "$target"
exec 9>"$target/python-venv.lock"
flock 9 2>/dev/null || true

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup_venv: creating $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$req"
  echo "$want" > "$venv/.stamp"
fi

rm -rf "$gen"
mkdir -p "$gen"
# grpc_tools.protoc adds the well-known types (google/protobuf/*.proto) to the include path.
"$venv/bin/python" -m grpc_tools.protoc -I "$root/proto" --python_out="$gen" --grpc_python_out="$gen" \
  "$root"/proto/simulator/v1/*.proto
echo "$venv/bin/python"
