#!/usr/bin/env bash
# Runs only the chaos test (tests/it/sfc_chaos.rs): jobs on three real
# `microdcs run` replicas while replicas are SIGKILLed and replaced, the
# broker and Redis restarted. `scripts/test.sh` runs it at its CI size; this
# is the knob for longer runs and other seeds:
#
#   scripts/chaos.sh                      # CI size, fixed seed
#   scripts/chaos.sh --jobs 5000 --seed 7
#   scripts/chaos.sh --faults replica     # only some kinds of fault (replica,broker,redis)
#
# A failure prints the seed, the fault timeline and the failing jobs'
# command history; the replicas' logs are kept (path in the message).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 [--jobs N] [--seed S] [--faults replica,broker,redis]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) [ $# -ge 2 ] || usage; export CHAOS_JOBS="$2"; shift 2 ;;
    --seed) [ $# -ge 2 ] || usage; export CHAOS_SEED="$2"; shift 2 ;;
    --faults) [ $# -ge 2 ] || usage; export CHAOS_FAULTS="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done

scripts/setup.sh
test=sfc_chaos::chaos_jobs_survive_killed_replicas_and_broker_and_redis_restarts
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --test it --no-capture -- --exact "$test"
else
  cargo test --test it -- --exact "$test" --nocapture
fi
