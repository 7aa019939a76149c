#!/usr/bin/env bash
# The test command (README, .ci/run): installs and starts what the tests need
# (scripts/services.sh), then formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
command -v cargo >/dev/null || { echo "cargo not found: install Rust first (rustup)" >&2; exit 1; }
scripts/services.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
