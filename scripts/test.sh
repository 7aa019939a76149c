#!/usr/bin/env bash
# The test command (README, .ci/run): formatting, lints, then every test.
# The engine's tests need no broker; network-sink tests (a later issue) will check their
# services in .ci/run before this runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
