#!/usr/bin/env bash
# Instructions per token of the demo firmware (targets/) on emulated Cortex-M cores, counted
# exactly with the TCG plugin of tools/qemu-insn-count: the firmware calls mark_begin/mark_end
# around each generated token's forward pass (demo_fw::generate), the plugin counts the
# instructions executed in between. The first interval is empty (the markers' own cost) and is
# subtracted. Each board runs twice: with the build's ISA kernels and with the scalar ones
# (`isa=scalar` on the semihosting command line; same binary).
#
# Usage: tools/firmware-insn-count.sh [board...]   (default: mps2-an386 mps3-an547; any
# emulated board crate works, riscv32-virt too)
# Needs: tools/install-firmware.sh (QEMU, Rust targets, llvm-tools) and gcc.
# Counts are identical on every run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
plugin="$(bash "$root/tools/qemu-insn-count/build.sh")"
host="$(rustc -vV | sed -n 's/^host: //p')"
nm="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-nm"
[ -x "$nm" ] || { echo "llvm-nm missing: rustup component add llvm-tools" >&2; exit 1; }

boards=("$@")
[ ${#boards[@]} -gt 0 ] || boards=(mps2-an386 mps3-an547)
for board in "${boards[@]}"; do
    dir="$root/targets/$board"
    [ -f "$dir/.cargo/config.toml" ] || { echo "no board crate targets/$board" >&2; exit 2; }
    target="$(sed -n 's/^target = "\(.*\)"/\1/p' "$dir/.cargo/config.toml" | head -1)"
    # The runner's QEMU program and machine options (the words before -nographic).
    runner="$(sed -n 's/^runner = "\(qemu-system-.*\) -nographic .*/\1/p' "$dir/.cargo/config.toml" | head -1)"
    [ -n "$runner" ] || { echo "targets/$board is not an emulated board" >&2; exit 2; }
    read -r -a qemu <<<"$runner"
    machine="$(sed -n 's/.*-machine \([^ ]*\).*/\1/p' <<<"$runner")"
    # Build as tests/firmware.rs does: in the crate directory, no inherited flags.
    (cd "$dir" && env -u RUSTFLAGS -u CARGO_BUILD_TARGET -u CARGO_ENCODED_RUSTFLAGS \
        CARGO_TARGET_DIR="$root/target/firmware" cargo build --quiet --release -j 2)
    elf="$root/target/firmware/$target/release/$board"
    begin="0x$("$nm" "$elf" | awk '$3 == "mark_begin" { print $1 }')"
    end="0x$("$nm" "$elf" | awk '$3 == "mark_end" { print $1 }')"
    for kernels in isa scalar; do
        args="enable=on,target=native"
        [ "$kernels" = scalar ] && args="$args,arg=fw,arg=isa=scalar"
        log="$(mktemp)"
        out="$(timeout 300 "${qemu[@]}" -nographic -monitor none \
            -serial none -semihosting-config "$args" \
            -plugin "$plugin,begin=$begin,end=$end" -d plugin -D "$log" -kernel "$elf")"
        echo "$out" | grep -q '^demo-fw ok' || { echo "$out" >&2; rm -f "$log"; exit 1; }
        isa="$(echo "$out" | sed -n 's/^demo-fw .* isa=\([^ ]*\) .*/\1/p')"
        prompt="$(echo "$out" | awk '/^prompt-ids/ { print NF - 1 }')"
        if [ "$kernels" = isa ]; then
            echo "== $board ($machine, $target, $(echo "$out" | sed -n 's/^demo-fw board=[^ ]* //p'))"
            printf '  %-14s %12s %12s %12s %12s\n' kernels "pos $prompt" mean min max
        fi
        awk -v isa="$isa" '
            /^insn-count interval/ {
                sub(":", "", $3)
                if ($3 == 0) { base = $4; next }
                c = $4 - base; n++; sum += c
                if (n == 1) { first = c; min = c; max = c }
                if (c < min) min = c
                if (c > max) max = c
            }
            END { printf "  %-14s %12d %12d %12d %12d   (%d tokens)\n", isa, first, sum / n, min, max, n }
        ' "$log"
        rm -f "$log"
        [ "$isa" != scalar ] || break # a scalar-only build: nothing to compare
    done
done
