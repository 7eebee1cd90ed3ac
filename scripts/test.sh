#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (real Mosquitto and
# Redis child processes on free ports) and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast
else
  cargo test --workspace --all-targets --no-fail-fast
fi
cargo test --workspace --doc
