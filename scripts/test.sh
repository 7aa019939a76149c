#!/usr/bin/env bash
# The test command (README, .ci/run): formatting, lints, then every test.
# The network-sink tests need Mosquitto on 127.0.0.1:1883 and RabbitMQ on 127.0.0.1:5672
# (guest/guest), and libcoap's coap-server and python3 installed: .ci/run checks and starts them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
