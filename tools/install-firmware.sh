#!/usr/bin/env bash
# Installs what the firmware tests (tests/firmware.rs) and tools/firmware-insn-count.sh need,
# only where it is missing: qemu-system-arm and qemu-system-riscv32 (Debian packages
# qemu-system-arm and qemu-system-misc), the Rust targets of the boards (thumbv7em-none-eabihf,
# thumbv8m.main-none-eabihf, riscv32imac-unknown-none-elf), the llvm-tools component
# (llvm-size, llvm-nm) and flip-link (the real boards' linker: `cargo install flip-link`, about
# 10 s). Safe to run repeatedly; tools/test.sh calls it before the tests.
set -euo pipefail

packages=()
command -v qemu-system-arm >/dev/null 2>&1 || packages+=(qemu-system-arm)
command -v qemu-system-riscv32 >/dev/null 2>&1 || packages+=(qemu-system-misc)
if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install-firmware: installing ${packages[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    else
        echo "install-firmware: ${packages[*]} missing and cannot be installed here (not root or no apt-get)" >&2
    fi
fi

if command -v rustup >/dev/null 2>&1; then
    installed="$(rustup target list --installed)"
    for t in thumbv7em-none-eabihf thumbv8m.main-none-eabihf riscv32imac-unknown-none-elf; do
        if ! grep -qx "$t" <<<"$installed"; then
            rustup target add "$t" >/dev/null
        fi
    done
    if ! rustup component list --installed | grep -q '^llvm-tools'; then
        rustup component add llvm-tools >/dev/null
    fi
else
    echo "install-firmware: rustup not found; add the targets thumbv7em-none-eabihf, thumbv8m.main-none-eabihf and riscv32imac-unknown-none-elf yourself" >&2
fi

# The real-board crates link with flip-link (targets/*/.cargo/config.toml).
if ! command -v flip-link >/dev/null 2>&1; then
    echo "install-firmware: installing flip-link"
    cargo install flip-link --locked --quiet
fi
