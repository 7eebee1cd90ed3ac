#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (one binary,
# tests/it: real Mosquitto and Redis child processes on free ports) and doc
# tests. One module of the integration tests: `cargo nextest run --test it
# -E 'test(/^sfc::/)'`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast
else
  cargo test --workspace --all-targets --no-fail-fast
fi
cargo test --workspace --doc
