#!/usr/bin/env bash
# The test command (README, .ci/run): installs and starts what the tests need
# (scripts/services.sh), then formatting, lints, the user guide's build and every test.
#
# scripts/test.sh --quick: the edit loop. Formatting, lints, the unit and property tests
# (cargo test --lib) and the integration tests that need no service (the modules of the one
# integration binary, tests/it/, listed in QUICK below). No root, no installs, no services.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
command -v cargo >/dev/null || { echo "cargo not found: install Rust first (rustup)" >&2; exit 1; }

# Modules of tests/it/ that run only the built binary on files (no broker, browser, container,
# Prometheus or Python; openssl makes keys): each is a test-name filter, `module::` or a test.
QUICK=(cli:: abuse_config:: deploy_config:: docs:: mqtt_tokens::bad_token_settings
    presets::config_show_ presets::azure_fills_ presets::preset_problems_
    presets::the_shipped_preset_examples)

case "${1:-}" in
--quick)
    cargo fmt --all -- --check
    cargo clippy --all-targets --quiet -- -D warnings
    cargo test --lib
    cargo test --test it -- "${QUICK[@]}"
    ;;
"")
    scripts/services.sh
    # The user guide (docs/, an mdBook) must build; tests/it/docs.rs checks its links and
    # chapters.
    MDBOOK_VERSION=0.4.52
    if [ "$(mdbook --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
        cargo install mdbook --locked --version "$MDBOOK_VERSION" --no-default-features --quiet
    fi
    mdbook build docs -d ../target/book
    cargo fmt --all -- --check
    cargo clippy --all-targets --quiet -- -D warnings
    cargo test --all-targets
    ;;
*)
    echo "usage: scripts/test.sh [--quick]" >&2
    exit 2
    ;;
esac
