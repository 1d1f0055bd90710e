#!/usr/bin/env bash
# Runs the Miri subset: the scalar kernels, quantization, the sampler and the tokenizer's decoder
# and table building (library unit tests), and tests/miri.rs (GGUF parsing of a real model and damaged copies, the
# unsafe buffer carving of src/state.rs and src/file.rs, the tokenizer and forward steps on the
# scalar kernels against the golden logits) plus the parse-time regression tests. Installs the
# nightly toolchain and its miri and rust-src components if missing. About 4-5 minutes on two
# cores, most of it building the dependencies for Miri the first time.
#
#   bash tools/miri.sh            # the subset
#   MIRIFLAGS=... bash tools/miri.sh   # extra Miri flags (added to the ones below)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
installed=$(rustup component list --toolchain nightly --installed)
if ! grep -q '^miri' <<<"$installed" || ! grep -q '^rust-src' <<<"$installed"; then
    rustup component add miri rust-src --toolchain nightly
fi
cargo +nightly miri setup >/dev/null

# Isolation off: the golden logits are read from tests/golden. Strict provenance: the casts in
# State::new and StateBuffer must not invent pointers from integers.
export MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-strict-provenance ${MIRIFLAGS:-}"
# Miri keeps its own target directory (target/miri) apart from the normal build. libm's x86
# `sqrtf` is inline assembly, which Miri cannot run: use its portable version (IEEE square root
# is correctly rounded either way, so the results are the same bits).
features=(--features libm/force-soft-floats)

echo "==> miri: library unit tests (subset)"
cargo +nightly miri test "${features[@]}" --lib -- \
    kernels::scalar:: \
    quant:: \
    sampler::tests::bad_ \
    sampler::tests::greedy_ \
    sampler::tests::neg_inf_ \
    sampler::tests::pcg32_matches \
    sampler::tests::pinned_ \
    sampler::tests::scratch_ \
    sampler::tests::top_k_1_ \
    tokenizer::tests::byte_unicode_ \
    tokenizer::tests::decoder_replaces_ \
    tokenizer::tests::decoder_joins_ \
    tokenizer::tests::workspace_len_

echo "==> miri: tests/miri.rs and tests/regressions.rs (parse-time checks)"
cargo +nightly miri test "${features[@]}" --test miri --test regressions -- \
    --skip saved_fuzz_inputs_replay_cleanly
echo "miri: ok"
