#!/usr/bin/env bash
# The test command (README, .ci/run): installs and starts what the tests need
# (scripts/services.sh), then formatting, lints, the user guide's build and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
command -v cargo >/dev/null || { echo "cargo not found: install Rust first (rustup)" >&2; exit 1; }
scripts/services.sh
# The user guide (docs/, an mdBook) must build; tests/docs.rs checks its links and chapters.
MDBOOK_VERSION=0.4.52
if [ "$(mdbook --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
  cargo install mdbook --locked --version "$MDBOOK_VERSION" --no-default-features --quiet
fi
mdbook build docs -d ../target/book
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
