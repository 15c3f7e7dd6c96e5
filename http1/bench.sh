#!/usr/bin/env bash
# Prints janus-http1 throughput figures (release build). usage: http1/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-http1}"
cargo run -q --release -p janus-http1 --example throughput
