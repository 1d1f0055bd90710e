#!/usr/bin/env bash
# Counts the instructions a 64 x 256 GEMV executes on emulated Cortex-M cores, scalar kernels
# against the core's ISA kernels, and prints instructions per multiply-accumulate (MAC); then the
# Q8_0 GEMV of 64 rows of 128, 512, 1024 and 2048 columns (labels ending in 64xC).
#
# Usage: tools/qemu-insn-count/run.sh [m4] [m7] [m33] [m55]   (default: m4 m55)
# Needs: tools/install-cortex-m.sh (qemu-system-arm, Rust targets, llvm-tools) and gcc.
#
# The firmware is targets/kernel-check's gemv-count program; the TCG plugin
# (insn_count.c) counts the instructions between its mark_begin and mark_end calls. Counts are
# exact and identical on every run. The "empty" interval (the marker calls alone) is
# subtracted from the others.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
plugin="$(bash "$root/tools/qemu-insn-count/build.sh")"
host="$(rustc -vV | sed -n 's/^host: //p')"
nm="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-nm"
[ -x "$nm" ] || { echo "llvm-nm missing: rustup component add llvm-tools" >&2; exit 1; }
macs=$((64 * 256))

cores=("$@")
[ ${#cores[@]} -gt 0 ] || cores=(m4 m55)
for core in "${cores[@]}"; do
    case "$core" in
    m4) board=mps2-an386 target=thumbv7em-none-eabihf cpu="" features=dsp dir=thumbv7em ;;
    m7) board=mps2-an500 target=thumbv7em-none-eabihf cpu="" features=dsp dir=thumbv7em ;;
    m33) board=mps2-an505 target=thumbv8m.main-none-eabihf cpu=cortex-m33 features=dsp dir=m33 ;;
    m55) board=mps3-an547 target=thumbv8m.main-none-eabihf cpu=cortex-m55 features=helium dir=m55 ;;
    *) echo "unknown core $core (m4, m7, m33, m55)" >&2; exit 2 ;;
    esac
    flags="-C link-arg=-Tlink.x${cpu:+ -C target-cpu=$cpu}"
    # mps2-an386 and mps2-an500 share a memory map (and so a build).
    mapboard=$board
    [ "$board" = mps2-an500 ] && mapboard=mps2-an386
    (cd "$root/targets/kernel-check" &&
        CARGO_TARGET_DIR="$root/target/cortex-m/$dir" RUSTFLAGS="$flags" KERNEL_CHECK_BOARD="$mapboard" \
            cargo build --quiet --release --bin gemv-count --target "$target" --features "$features")
    elf="$root/target/cortex-m/$dir/$target/release/gemv-count"
    begin="0x$("$nm" "$elf" | awk '$3 == "mark_begin" { print $1 }')"
    end="0x$("$nm" "$elf" | awk '$3 == "mark_end" { print $1 }')"
    log="$(mktemp)"
    out="$(timeout 120 qemu-system-arm -machine "$board" -nographic -monitor none -serial none \
        -semihosting-config enable=on,target=native \
        -plugin "$plugin,begin=$begin,end=$end" -d plugin -D "$log" -kernel "$elf")"
    echo "== $core ($board, $target${cpu:+ $cpu}, $features): $(echo "$out" | head -1)"
    echo "$out" | grep -v '^interval\|^gemv-count'
    # Pair "interval N: label" (firmware) with "insn-count interval N: count" (plugin).
    awk -v macs="$macs" '
        FNR == NR && /^insn-count interval/ { sub(":", "", $3); count[$3] = $4; next }
        FNR != NR && /^interval/ {
            n = $2; sub(":", "", n); $1 = ""; $2 = ""; label = substr($0, 3)
            if (label == "empty") { base = count[n]; next }
            c = count[n] - base
            m = macs
            # A label ending in RxC (the extra GEMV shapes) is R x C multiply-accumulates.
            if (match(label, /[0-9]+x[0-9]+$/)) {
                split(substr(label, RSTART), d, "x")
                m = d[1] * d[2]
            }
            printf "  %-26s %9d instructions  %6.3f per MAC\n", label, c, c / m
        }' "$log" <(echo "$out")
    rm -f "$log"
done
