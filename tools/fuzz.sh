#!/usr/bin/env bash
# Fuzzes mhmoe with cargo fuzz (libFuzzer, nightly toolchain, AddressSanitizer, debug assertions
# and overflow checks on). Installs cargo-fuzz and the nightly toolchain if missing, seeds the
# corpora from tests/models (copied at run time into fuzz/corpus/, which git ignores), then runs
# every target for a bounded time. See FUZZING.md for the targets and the recorded long run.
#
#   bash tools/fuzz.sh                 # bounded run: 18 s per target, about 90 s of fuzzing
#   bash tools/fuzz.sh --long          # the long campaign of FUZZING.md: 300 s per target
#   bash tools/fuzz.sh --time 60 tokenizer sampler   # chosen targets, 60 s each
#   bash tools/fuzz.sh --runs 10000000 --time 7200 gguf_parse   # stop at 10 M executions
#
# Exit status 1 if any target found a crash, a timeout or an out-of-memory input; the input is
# saved in fuzz/artifacts/<target>/ and the log in fuzz/logs/<target>.log. Reproduce one with
#   cargo +nightly fuzz run -a <target> fuzz/artifacts/<target>/<file>
# and turn it into a test in tests/regressions.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

per_target=18
runs=()
all_targets=(gguf_parse model_load forward_steps tokenizer sampler)
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --long) per_target=300 ;;
        --time) per_target=$2; shift ;;
        --runs) runs=(-runs="$2"); shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

# ---- tools ----
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# ---- seed corpora (from the test models; small text and sampler seeds written here) ----
# The real GGUF files of tests/real_gguf.rs (tools/fetch-real-gguf.sh), when they are there, seed
# the GGUF targets too: their first 64 KiB, and a copy cut small by tools/fuzz_seeds.py (the same
# metadata with arrays of at most 256 elements, the same tensor table with one row per tensor).
real_cache="${MHMOE_GGUF_CACHE:-$HOME/.cache/mhmoe-gguf}"
real_seeds=fuzz/real-seeds
make_real_seeds() {
    mkdir -p "$real_seeds"
    for f in "$real_cache"/*.gguf; do
        [ -f "$f" ] || continue
        local b
        b=$(basename "$f" .gguf)
        [ -f "$real_seeds/$b-head64k.bin" ] || head -c 65536 "$f" >"$real_seeds/$b-head64k.bin"
        if [ ! -f "$real_seeds/$b-small.gguf" ]; then
            python3 tools/fuzz_seeds.py "$f" "$real_seeds/$b-small.gguf" ||
                echo "fuzz.sh: no small seed from $f" >&2
        fi
    done
}

seed() {
    local t=$1 dir=fuzz/corpus/$1
    mkdir -p "$dir"
    case "$t" in
        gguf_parse|model_load|forward_steps)
            for f in tests/models/*.gguf models/*.gguf; do
                [ -f "$f" ] || continue
                # The shipped models (~1 MB) only seed the parser and the loader.
                if [ "$t" = forward_steps ] && [ "$(wc -c <"$f")" -gt 600000 ]; then continue; fi
                cp -n "$f" "$dir/seed-$(basename "$f")"
            done
            if [ "$t" != forward_steps ]; then
                for f in "$real_seeds"/*; do
                    [ -f "$f" ] && cp -n "$f" "$dir/seed-real-$(basename "$f")"
                done
            fi
            ;;
        tokenizer)
            # Only the metadata matters here: the first 64 KiB of each model with its tensor
            # count set to 0 (the tensor infos and data left behind are ignored as trailing
            # bytes), behind the odd mode byte.
            for f in tests/models/*.gguf models/*.gguf "$real_seeds"/*-small.gguf; do
                [ -f "$f" ] || continue
                { printf '\001'; head -c 8 "$f"; printf '\000\000\000\000\000\000\000\000'
                  head -c 65552 "$f" | tail -c +17; } >"$dir/seed-gguf-$(basename "$f")"
            done
            printf '\000It is a truth universally acknowledged, that a single man' >"$dir/seed-text-0"
            printf '\000  double  spaces\tand\nnewlines \303\251\360\237\230\200 \377\376 ' >"$dir/seed-text-1"
            printf '\000aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' >"$dir/seed-text-2"
            if [ -f models/heldout-sample.txt ]; then
                { printf '\000'; head -c 2048 models/heldout-sample.txt; } >"$dir/seed-text-heldout"
            fi
            ;;
        sampler)
            # temperature 0.8, top_k 5, top_p 0.9, seed, then 8 logits (one -inf)
            printf '\315\314\114\077\005\146\146\146\077\052\000\000\000\000\000\200\077\000\000\000\100\000\000\200\377\000\000\100\100\000\000\200\277\000\000\000\000\000\000\040\101\000\000\040\101' >"$dir/seed-0"
            # greedy, top_k 0, top_p 1
            printf '\000\000\000\000\000\000\000\200\077\001\000\000\000\000\000\200\077\000\000\000\100' >"$dir/seed-1"
            ;;
    esac
}

make_real_seeds

# ---- build once, then run each target ----
flags=(--debug-assertions)
cargo +nightly fuzz build "${flags[@]}"

mkdir -p fuzz/logs
failed=()
summary=()
for t in "${targets[@]}"; do
    seed "$t"
    mkdir -p "fuzz/artifacts/$t"
    log=fuzz/logs/$t.log
    echo "==> fuzz $t: ${per_target}s"
    case "$t" in
        tokenizer) max_len=70000 ;;
        sampler) max_len=4096 ;;
        forward_steps) max_len=600000 ;;
        *) max_len=1200000 ;;
    esac
    start=$(date +%s)
    if cargo +nightly fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$per_target" -max_len="$max_len" -rss_limit_mb=1024 -timeout=10 \
        -dict=fuzz/gguf.dict -print_final_stats=1 "${runs[@]}" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        tail -n 40 "$log"
    fi
    secs=$(($(date +%s) - start))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE '(cov|ft): [0-9]+' | tr '\n' ' ' || true)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    summary+=("$(printf '%-14s %-6s %10s execs  %4ss  %s corpus %s' "$t" "$status" "${execs:-?}" "$secs" "$cov" "$corpus")")
done

echo
echo "fuzz summary (${per_target}s per target; logs in fuzz/logs/, crashes in fuzz/artifacts/):"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}"
    exit 1
fi
