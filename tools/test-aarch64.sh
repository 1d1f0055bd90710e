#!/usr/bin/env bash
# Runs the kernel conformance tests (tests/conformance.rs) for aarch64 under qemu-user, twice:
#   QEMU_CPU=cortex-a53   (NEON, no dot-product extension): MHMOE_REQUIRE_ISAS=neon
#   QEMU_CPU=neoverse-n1  (NEON + dotprod/SDOT):             MHMOE_REQUIRE_ISAS=neon,neon-dotprod
# so both aarch64 kernel sets are checked bit for bit against the scalar specification, including
# the whole-model logits of every test model. Installs what is missing first (qemu-user, the
# aarch64 cross linker and libc, the Rust target). Takes a few minutes cold, under a minute warm.
#
#   bash tools/test-aarch64.sh            # both CPUs
#   bash tools/test-aarch64.sh --no-install
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
[ "${1:-}" = "--no-install" ] && install=0

if [ "$install" -eq 1 ]; then
    if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
        echo "==> installing qemu-user and the aarch64 cross toolchain (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends \
            qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
    fi
    rustup target add aarch64-unknown-linux-gnu >/dev/null
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# A separate target directory: the host build's artifacts are not rebuilt or invalidated.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_AARCH64:-target/aarch64-qemu}"

echo "==> building the aarch64 conformance test"
timeout 900 cargo test --target aarch64-unknown-linux-gnu --test conformance --no-run

status=0
run() {
    local cpu=$1 require=$2
    echo
    echo "==> QEMU_CPU=$cpu MHMOE_REQUIRE_ISAS=$require"
    if ! QEMU_CPU=$cpu MHMOE_REQUIRE_ISAS=$require timeout 900 \
        cargo test --target aarch64-unknown-linux-gnu --test conformance; then
        echo "FAILED: aarch64 conformance on $cpu"
        status=1
    fi
}
run cortex-a53 neon
run neoverse-n1 neon,neon-dotprod
exit $status
