#!/usr/bin/env bash
# Builds the instruction-counting TCG plugin: target/qemu-insn-count/libinsn_count.so.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/target/qemu-insn-count"
mkdir -p "$out"
src="$root/tools/qemu-insn-count/insn_count.c"
if [ ! -f "$out/libinsn_count.so" ] || [ "$src" -nt "$out/libinsn_count.so" ]; then
    "${CC:-gcc}" -shared -fPIC -O2 -Wall -Wextra -o "$out/libinsn_count.so" "$src"
fi
echo "$out/libinsn_count.so"
