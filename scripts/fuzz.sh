#!/usr/bin/env bash
# Fuzzes the input handling (fuzz/fuzz_targets/*) with cargo-fuzz/libFuzzer:
# builds every target once, then runs each for SECONDS (default 60).
#
#   scripts/fuzz.sh [SECONDS]            all targets
#   FUZZ_TARGETS="recipe command_id" scripts/fuzz.sh 30
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`). Without them it fails, unless FUZZ_OPTIONAL=1 (CI), which
# turns that into a message and exit 0. A crash stops the run (exit non-zero)
# with the input under fuzz/artifacts/<target>/; reproduce it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
#
# The seed corpus in fuzz/corpus/<target>/ is only read; what the fuzzer
# finds goes to $FUZZ_WORK/corpus/<target>/ (default target/fuzz-corpus,
# kept between runs so later runs start from there).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 [SECONDS]  (seconds per target, default 60)" >&2
    exit 2
fi

unavailable() {
    if [ "${FUZZ_OPTIONAL:-0}" = 1 ]; then
        echo "fuzz: SKIPPED: $1 (FUZZ_OPTIONAL=1)"
        exit 0
    fi
    echo "fuzz: $1" >&2
    echo "fuzz: install with: rustup toolchain install nightly && cargo install cargo-fuzz --locked" >&2
    echo "fuzz: (set FUZZ_OPTIONAL=1 to skip instead of failing)" >&2
    exit 1
}

export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null 2>&1 || unavailable "cargo is not installed"
cargo +nightly --version >/dev/null 2>&1 || unavailable "the nightly toolchain is not installed"
cargo +nightly fuzz --version >/dev/null 2>&1 || unavailable "cargo-fuzz is not installed"

# Fuzz builds use sanitizer flags: their own target directory, so they
# never invalidate the normal build's.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}"
work="${FUZZ_WORK:-$PWD/target/fuzz-corpus}"

all_targets=$(cargo +nightly fuzz list)
targets="${FUZZ_TARGETS:-$all_targets}"

echo "== fuzz: build ($(echo $targets | wc -w) targets)"
start=$(date +%s)
cargo +nightly fuzz build
echo "fuzz: build took $(( $(date +%s) - start )) s"

for t in $targets; do
    echo "== fuzz: $t for ${seconds} s"
    mkdir -p "$work/$t" "fuzz/corpus/$t"
    start=$(date +%s)
    # -rss_limit_mb: an input that makes the parser allocate without bound
    # is a finding too. The first corpus directory receives new inputs.
    set +e
    cargo +nightly fuzz run "$t" "$work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        2>&1 | grep --line-buffered -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)'
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: $t FAILED (exit $rc; the input is under fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    echo "fuzz: $t ran $(( $(date +%s) - start )) s"
done
echo "fuzz: OK"
