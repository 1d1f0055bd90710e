#!/usr/bin/env bash
# Installs what the Cortex-M kernel tests (tests/cortex_m.rs) and the instruction counter
# (tools/qemu-insn-count/) need, only where it is missing: qemu-system-arm (Debian package),
# the Rust targets of the emulated boards and the llvm-tools component (llvm-size, llvm-objdump).
# Safe to run repeatedly; tools/test.sh calls it before the tests.
set -euo pipefail

if ! command -v qemu-system-arm >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-cortex-m: installing qemu-system-arm"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-arm >/dev/null
    else
        echo "install-cortex-m: qemu-system-arm is missing and cannot be installed here (not root or no apt-get)" >&2
    fi
fi

if command -v rustup >/dev/null 2>&1; then
    installed=$(rustup target list --installed)
    for t in thumbv6m-none-eabi thumbv7em-none-eabihf thumbv8m.main-none-eabihf; do
        if ! grep -qx "$t" <<<"$installed"; then
            rustup target add "$t" >/dev/null
        fi
    done
    if ! rustup component list --installed | grep -q '^llvm-tools'; then
        rustup component add llvm-tools >/dev/null
    fi
else
    echo "install-cortex-m: rustup not found; add the targets thumbv7em-none-eabihf and thumbv8m.main-none-eabihf yourself" >&2
fi
