"""Convert an h = 1 mhmoe model to llama.cpp's `llama` architecture (for side-by-side benchmarks).

    python3 -m mhmoe_tools.to_llama IN.gguf OUT.gguf        (from tools/)

What it takes: `mhmoe.moe.head_count = 1` (plain SMoE: no head/merge linears), every layer MoE
(`layer_interval = 1`), the softmax router, no shared expert and renormalized top-k gates
(`expert_weights_norm = true`): that is exactly the MoE of llama.cpp's `llama` architecture
(Mixtral style: softmax over all experts, top-k, gates renormalized, SwiGLU experts). Anything
else is refused with the reason.

Tensors keep their names (they already follow llama.cpp's) and their bytes: every Q8_0 / Q4_0 /
F16 / F32 block passes through unchanged. The one change is the order of the rows of
`attn_q` and `attn_k`: mhmoe applies RoPE in rotate-half form (pairs `(j, j + hd/2)`, NEOX style)
while `llama` pairs neighbours `(2j, 2j + 1)` with the same frequency `base^(-2j/hd)`. Within each
head, row `j` moves to `2j` and row `j + hd/2` to `2j + 1` (the permutation llama.cpp's Hugging
Face converter applies): q and k are permuted alike, so every score q . k, and with it the model,
is unchanged.

Metadata: `llama.*` keys from the mhmoe ones (`feed_forward_length` is the expert width F, which
is what `llama` sizes its expert tensors by; `rope.dimension_count` = hd), and the same byte-level
BPE vocabulary as `tokenizer.ggml.model = "gpt2"` with llama.cpp's `default` pre-tokenizer (the
benchmark feeds token ids, so the pre-tokenizer does not matter).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import gguf

__all__ = ["convert", "permute_rope_rows", "unsupported_reasons"]


def _field(r: gguf.GGUFReader, key: str, default=None):
    f = r.get_field(key)
    if f is None:
        if default is None:
            raise KeyError(f"missing metadata key {key}")
        return default
    return f.contents()


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a [n_heads * hd, ...] matrix (any row layout: floats or block bytes) from
    rotate-half order to interleaved order: in each head, row j -> 2j, row j + hd/2 -> 2j + 1."""
    rows = w.shape[0]
    hd = rows // n_heads
    return (w.reshape(n_heads, 2, hd // 2, *w.shape[1:])
             .swapaxes(1, 2)
             .reshape(w.shape))


def unsupported_reasons(r: gguf.GGUFReader) -> list[str]:
    why = []
    if _field(r, "general.architecture") != "mhmoe":
        why.append("not an mhmoe model")
        return why
    if _field(r, "mhmoe.moe.head_count") != 1:
        why.append("moe.head_count must be 1 (llama has no head/merge linears)")
    if _field(r, "mhmoe.moe.layer_interval") != 1:
        why.append("every layer must be MoE (moe.layer_interval = 1)")
    if _field(r, "mhmoe.moe.router") != "softmax":
        why.append("the router must be softmax")
    if _field(r, "mhmoe.expert_shared_feed_forward_length", 0) != 0:
        why.append("no shared expert (llama's graph has none)")
    if not _field(r, "mhmoe.expert_weights_norm"):
        why.append("gates must be renormalized (expert_weights_norm = true), as llama's MoE does")
    return why


def convert(src: str, dst: str) -> dict:
    """Write `dst`; returns {tensor name: type name}. Raises ValueError if unsupported."""
    r = gguf.GGUFReader(src)
    why = unsupported_reasons(r)
    if why:
        raise ValueError(f"{src}: cannot convert to llama: " + "; ".join(why))
    g = lambda k, d=None: _field(r, f"mhmoe.{k}", d)  # noqa: E731
    d, nh, nkv = g("embedding_length"), g("attention.head_count"), g("attention.head_count_kv")
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    V = int(emb.shape[1])

    w = gguf.GGUFWriter(dst, "llama")
    w.add_string("general.name", "mhmoe-converted")
    w.add_uint32("llama.context_length", g("context_length"))
    w.add_uint32("llama.embedding_length", d)
    w.add_uint32("llama.block_count", g("block_count"))
    w.add_uint32("llama.feed_forward_length", g("expert_feed_forward_length"))
    w.add_uint32("llama.attention.head_count", nh)
    w.add_uint32("llama.attention.head_count_kv", nkv)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", float(g("attention.layer_norm_rms_epsilon")))
    w.add_float32("llama.rope.freq_base", float(g("rope.freq_base")))
    w.add_uint32("llama.rope.dimension_count", d // nh)
    w.add_uint32("llama.expert_count", g("expert_count"))
    w.add_uint32("llama.expert_used_count", g("expert_used_count"))
    w.add_uint32("llama.vocab_size", V)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", list(_field(r, "tokenizer.ggml.tokens")))
    w.add_array("tokenizer.ggml.merges", list(_field(r, "tokenizer.ggml.merges")))
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        f = r.get_field(key)
        if f is not None:
            w.add_uint32(key, int(f.contents()))
    w.add_bool("tokenizer.ggml.add_bos_token", False)

    types = {}
    for t in r.tensors:
        data = t.data  # numpy view of the file: floats for F32/F16, bytes (rows x row bytes) for blocks
        if t.name.endswith("attn_q.weight"):
            data = permute_rope_rows(np.asarray(data), nh)
        elif t.name.endswith("attn_k.weight"):
            data = permute_rope_rows(np.asarray(data), nkv)
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
        types[t.name] = t.tensor_type.name
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return types


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Convert an h = 1 mhmoe model to llama.cpp's llama architecture.")
    ap.add_argument("src")
    ap.add_argument("dst")
    a = ap.parse_args(argv)
    try:
        types = convert(a.src, a.dst)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{a.dst}: {len(types)} tensors ({', '.join(sorted(set(types.values())))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
