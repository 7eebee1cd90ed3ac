#!/usr/bin/env bash
# Runs the station demo: installs mosquitto/redis-server if missing,
# then starts a station with its own local mosquitto and redis-server child
# processes (free loopback ports, removed on exit) and a scripted MES.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --quiet --example station_demo "$@"
