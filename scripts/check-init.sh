#!/usr/bin/env bash
# `microdcs init` end to end, as a plant developer uses it: creates an app
# in a temporary directory with path dependencies on this checkout, and
#   1. `microdcs recipe check` accepts its recipe and `microdcs config
#      check` its deploy configuration; `kubectl kustomize` renders its
#      deploy/base and kubernetes-validate accepts it (each when installed);
#   2. it is formatted (`cargo fmt --check`) and `cargo clippy --all-targets
#      -- -D warnings` is clean on it;
#   3. `cargo test` passes (its station against real Mosquitto and Redis).
# The app gets this checkout's Cargo.lock (same dependency versions) and
# builds into this checkout's target directory, so nothing already built
# for the workspace is built again. Keeps the app with KEEP=1.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$repo/$CARGO_TARGET_DIR" ;; esac

work="$(mktemp -d "${TMPDIR:-/tmp}/microdcs-init.XXXXXX")"
if [ "${KEEP:-}" = 1 ]; then
  echo "keeping $work"
else
  trap 'rm -rf "$work"' EXIT
fi

cargo build --manifest-path "$repo/Cargo.toml" --bin microdcs
microdcs="$CARGO_TARGET_DIR/debug/microdcs"
app="$work/plant-check"

"$microdcs" init "$app" --microdcs-path "$repo"
cp "$repo/Cargo.lock" "$app/"
cd "$app"

echo "-- recipe and configuration"
"$microdcs" recipe check recipes/inspect-part.json
"$microdcs" config check --config deploy/base/plant-check.toml >/dev/null
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/base > "$work/deploy.yaml"
  # Strict schema validation as scripts/check-deploy.sh does, when its
  # validator is installed.
  if python3 -m kubernetes_validate --version >/dev/null 2>&1; then
    python3 -m kubernetes_validate --strict --quiet -k 1.32.0 "$work/deploy.yaml"
  fi
fi
echo "-- fmt and clippy"
cargo fmt --check
cargo clippy --all-targets -- -D warnings
echo "-- test"
cargo test
echo "init OK"
