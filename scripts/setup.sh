#!/usr/bin/env bash
# Installs what microdcs needs on a fresh Debian/Ubuntu machine, skipping what
# is already there: mosquitto (+ clients, used by tests), redis-server and
# faketime (a test runs a replica whose wall clock is a minute off), and
# python3 with oteltest (a real OTLP receiver for the trace export test)
# and asyncua (the OPC UA client of the `opcua::` tests).
# The Rust toolchain itself is expected (rustup); cargo-nextest is optional.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/sbin/redis-server ] || need+=(redis-server)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root or sudo to install ${need[*]}" >&2; exit 1; }
    sudo_cmd="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -q
  $sudo_cmd apt-get install -y -q --no-install-recommends "${need[@]}"
  # The packages start system services on the standard ports; microdcs tests
  # and the demo start their own instances on free ports and do not need them.
fi

# The OTLP receiver of `traces::microdcs_run_exports_a_jobs_trace_over_otlp`
# (the test is skipped, saying so, without it).
if ! python3 -c 'import oteltest.sink' >/dev/null 2>&1; then
  echo "setup: installing oteltest (pip)"
  python3 -m pip install --user -q oteltest || python3 -m pip install --user -q --break-system-packages oteltest
fi

# The OPC UA client of the `opcua::` tests (Python asyncua; the tests are
# skipped, saying so, without it, and fail under CI).
if ! python3 -c 'import asyncua' >/dev/null 2>&1; then
  echo "setup: installing asyncua (pip)"
  python3 -m pip install --user -q asyncua==2.1.0 || python3 -m pip install --user -q --break-system-packages asyncua==2.1.0
fi

# The independent MessagePack-RPC client of the `msgpack::` tests.
if ! python3 -c 'import msgpack' >/dev/null 2>&1; then
  echo "setup: installing msgpack (pip)"
  python3 -m pip install --user -q msgpack || python3 -m pip install --user -q --break-system-packages msgpack
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
echo "setup: mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}'), $(redis-server --version | awk '{print $3}'), $(cargo --version)"
