#!/usr/bin/env bash
# Runs the janus-http1 fuzz targets for a while.
#   usage: http1/fuzz/run.sh [seconds-per-target=30] [target...]   (targets: server client differential)
#   env:   JANUS_FUZZ_TOOLCHAIN=stable  force stable + RUSTC_BOOTSTRAP=1 even if nightly exists
# Uses `cargo +nightly fuzz` when a nightly toolchain exists, else stable with
# RUSTC_BOOTSTRAP=1. Exits 0 with a SKIP message when cargo-fuzz or a usable toolchain is
# missing (install: cargo install cargo-fuzz). New interesting inputs go to a scratch corpus
# (the checked-in corpus/ stays as committed); crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-30}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then targets=(server client differential); fi

skip() { echo "SKIP: http1 fuzz: $*"; exit 0; }

command -v cargo >/dev/null 2>&1 || skip "cargo not found"
cargo fuzz --version >/dev/null 2>&1 || skip "cargo-fuzz not installed (cargo install cargo-fuzz)"

# JANUS_FUZZ_TOOLCHAIN=stable forces the RUSTC_BOOTSTRAP path (to test it where nightly exists).
toolchain=()
if [ "${JANUS_FUZZ_TOOLCHAIN:-}" != stable ] && cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
    echo "http1 fuzz: using the nightly toolchain"
elif RUSTC_BOOTSTRAP=1 rustc -Z help >/dev/null 2>&1; then
    export RUSTC_BOOTSTRAP=1
    echo "http1 fuzz: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1"
else
    skip "no nightly toolchain and RUSTC_BOOTSTRAP=1 does not work with this rustc"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-http1}/fuzz"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

status=0
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    echo "== fuzz target $t for ${secs}s (seed corpus: corpus/$t, $(ls "corpus/$t" | wc -l) files)"
    if ! cargo "${toolchain[@]}" fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=4096 -print_final_stats=1 2>&1 | tee "$scratch/$t.log" \
        | grep -E "^#[0-9]+.*(pulse|DONE)|SUMMARY|panicked|ERROR|stat::"; then
        :
    fi
    if grep -qE "ERROR: libFuzzer|panicked|SUMMARY: " "$scratch/$t.log"; then
        echo "FAIL: fuzz target $t found a crash (see fuzz/artifacts/$t/)"
        status=1
    fi
    runs=$(grep -E "^stat::number_of_executed_units" "$scratch/$t.log" | awk '{print $2}' | tail -1)
    rate=$(grep -E "^stat::average_exec_per_sec" "$scratch/$t.log" | awk '{print $2}' | tail -1)
    echo "== $t: ${runs:-?} execs, ${rate:-?} execs/s"
done
exit "$status"
