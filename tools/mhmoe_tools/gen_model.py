"""Random-weight mhmoe models of any size, for benchmarks.

    python3 tools/gen_model.py OUT.gguf --dim 1024 --layers 8 --heads 16 --kv-heads 16 \\
        --moe-heads 1 --experts 8 --top-k 2 --expert-ff 2816 --vocab 2048 --ctx 512 \\
        --type Q8_0 [--seed 0]

Writes a model in the format of FORMAT.md (every layer MoE unless `--moe-interval` > 1) and
prints its size and the weight bytes one decoded token reads (`bytes_per_token`).

Speed: the tensors are streamed to the file one chunk at a time (at most about 64 MB in memory),
and Q8_0 / Q4_0 tensors are not quantized from floats: their blocks are made directly, random
quants (uniform bytes) with an f16 scale chosen so that each weight has the standard deviation
asked for (`std` below; the block scales vary by +-50% around it). A 600 MB Q8_0 model takes a
few seconds. F16 and F32 tensors are Gaussian. Weights follow `std = 1/sqrt(fan_in)`, as the test
models do: the router `2/sqrt(fan_in)` for decisive routing, the matrices that end a residual
branch `3/sqrt(fan_in)`, embeddings 0.5, norm weights 1 +- 0.1, biases 0.05. The residual stream
grows by a few units per layer and every activation stays finite.

The tokenizer (required by `TokenizerBuf`, not by `Model`) is the 256 byte tokens, up to 40
merges learned from a fixed sentence, then filler tokens `<|unused_N|>` up to `--vocab` (>= 257).

Gates are renormalized over the top k by default (`--raw-gates` turns that off), which is what
llama.cpp's `llama` architecture computes, so an h = 1 model can be converted for it
(`tools/llama_compare.py`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

from .bpe import build_vocab, train_merges
from .writer import XMOE_DIM, MhmoeConfig, add_metadata, expected_tensor_shapes, parse_qtype

SAMPLE_TEXT = (
    "The little robot woke up in the morning and looked at the sea. The sea was calm and the sky "
    "was clear. It thought about the things it had to do: sort the shells, count the boats, and "
    "then rest in the shade of the old tree.\n"
)
MAX_MERGES = 40
CHUNK_BYTES = 64 << 20

# bytes of one row of n elements (n a multiple of 32 for the block types)
_BYTES = {QT.F32: lambda n: 4 * n, QT.F16: lambda n: 2 * n,
          QT.Q8_0: lambda n: n // 32 * 34, QT.Q4_0: lambda n: n // 32 * 18}
# root mean square of the dequantized quant values of uniform random bytes: Q8_0 int8 in
# [-128, 127] (var (256^2 - 1)/12, mean -1/2), Q4_0 nibble - 8 in [-8, 7] (var (16^2 - 1)/12, mean -1/2)
_QRMS = {QT.Q8_0: math.sqrt((256 ** 2 - 1) / 12 + 0.25), QT.Q4_0: math.sqrt((16 ** 2 - 1) / 12 + 0.25)}


def tokenizer(vocab_size: int) -> tuple[list[str], list[str]]:
    """Byte tokens, up to 40 merges, fillers: exactly `vocab_size` (>= 257) tokens."""
    if vocab_size < 257:
        raise ValueError("--vocab must be at least 257 (256 byte tokens and one merge)")
    merges = train_merges(SAMPLE_TEXT, min(MAX_MERGES, vocab_size - 256))
    tokens = build_vocab(merges)
    tokens += [f"<|unused_{i}|>" for i in range(vocab_size - len(tokens))]
    return tokens, merges


BRANCH_GAIN = 3.0
_BRANCH_OUT = ("attn_output.weight", "ffn_down.weight", "ffn_down_exps.weight", "ffn_down_shexp.weight",
               "ffn_merge.weight")


def weight_std(name: str, shape: tuple[int, ...]) -> float:
    """As the test models (gen_test_models.py): residual branches 3x stronger than the
    embedding, so that the tied output does not just predict the current token again."""
    if name in ("token_embd.weight", "output.weight"):
        return 0.5
    if name.endswith("ffn_gate_inp.weight") or name.endswith("ffn_gate_inp_red.weight"):
        return 2.0 / math.sqrt(shape[-1])
    if name.endswith(_BRANCH_OUT):
        return BRANCH_GAIN / math.sqrt(shape[-1])
    return 1.0 / math.sqrt(shape[-1])


@dataclass(frozen=True)
class Plan:
    config: MhmoeConfig
    vocab_size: int
    tied: bool
    shapes: dict     # name -> numpy shape
    types: dict      # name -> QT

    def nbytes(self, name: str) -> int:
        shape = self.shapes[name]
        return _BYTES[self.types[name]](shape[-1]) * int(np.prod(shape[:-1], dtype=np.int64))

    def row_bytes(self, name: str) -> int:
        return _BYTES[self.types[name]](self.shapes[name][-1])


def plan(config: MhmoeConfig, vocab_size: int, qtype="Q8_0", router_type="F32", tied=True,
         fallback="F16") -> Plan:
    """Tensor shapes and types. Matrices use `qtype`, except routers (`router_type`) and block
    types on widths that are not a multiple of 32 (`fallback`); 1-D tensors are F32."""
    config.validate()
    if vocab_size < 257:
        raise ValueError("--vocab must be at least 257 (256 byte tokens and one merge)")
    q, rq, fb = parse_qtype(qtype), parse_qtype(router_type), parse_qtype(fallback)
    for t in (q, rq, fb):
        if t not in _BYTES:
            raise ValueError(f"gen_model writes F32, F16, Q8_0 and Q4_0, not {t.name}")
    shapes = expected_tensor_shapes(config, vocab_size, tied)
    types = {}
    for n, s in shapes.items():
        if len(s) == 1:
            t = QT.F32
        elif n.endswith("ffn_gate_inp.weight") or n.endswith("ffn_gate_inp_red.weight"):
            t = rq
        else:
            t = q
        if t in _QRMS and s[-1] % 32:
            t = fb
        types[n] = t
    return Plan(config, vocab_size, tied, shapes, types)


def plan_of_file(path) -> Plan:
    """The Plan (shapes, types) of an existing mhmoe file, e.g. to compute its `active_bytes`."""
    r = gguf.GGUFReader(str(path))
    arch = r.get_field("general.architecture").contents()
    if arch != "mhmoe":
        raise ValueError(f"{path}: architecture {arch!r}, not mhmoe")
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape.tolist())) for t in r.tensors}
    types = {t.name: t.tensor_type for t in r.tensors}
    for n, t in types.items():
        if t not in _BYTES:
            raise ValueError(f"{n}: type {t.name} is not counted here")
    g = lambda k, d=None: r.get_field("mhmoe." + k).contents() if r.get_field("mhmoe." + k) is not None else d  # noqa: E731
    cfg = MhmoeConfig(
        context_length=g("context_length"), embedding_length=g("embedding_length"),
        block_count=g("block_count"), feed_forward_length=g("feed_forward_length"),
        head_count=g("attention.head_count"), head_count_kv=g("attention.head_count_kv"),
        expert_count=g("expert_count"), expert_used_count=g("expert_used_count"),
        expert_feed_forward_length=g("expert_feed_forward_length"),
        expert_weights_norm=bool(g("expert_weights_norm")), moe_head_count=g("moe.head_count"),
        moe_layer_interval=g("moe.layer_interval"), moe_router=g("moe.router"),
        expert_shared_feed_forward_length=g("expert_shared_feed_forward_length", 0))
    return Plan(cfg, shapes["token_embd.weight"][0], "output.weight" not in shapes, shapes, types)


def active_bytes(p: Plan) -> dict:
    """Weight bytes read to decode one token, by part. With h > 1 the experts a token reads
    depend on the routing: `experts` is the expected count if each sub-token picks its k experts
    uniformly at random, E (1 - (1 - k/E)^h), and `experts_max` the bound min(E, h k)."""
    c = p.config
    E, k, h = c.expert_count, c.expert_used_count, c.moe_head_count
    part = {"embedding_row": p.row_bytes("token_embd.weight"), "attention": 0, "norms": 0,
            "router": 0, "head_merge": 0, "experts": 0, "experts_max": 0, "shared_expert": 0,
            "dense_ffn": 0}
    n_expected = E * (1 - (1 - k / E) ** h)
    n_max = min(E, h * k)
    for i in range(c.block_count):
        b = f"blk.{i}."
        part["norms"] += p.nbytes(b + "attn_norm.weight") + p.nbytes(b + "ffn_norm.weight")
        part["attention"] += sum(p.nbytes(b + f"attn_{x}.weight") for x in "qkvo" if x != "o")
        part["attention"] += p.nbytes(b + "attn_output.weight")
        if not c.is_moe_layer(i):
            part["dense_ffn"] += sum(p.nbytes(b + f"ffn_{x}.weight") for x in ("gate", "up", "down"))
            continue
        for n in ("ffn_gate_inp.weight", "ffn_gate_inp_red.weight"):
            if b + n in p.shapes:
                part["router"] += p.nbytes(b + n)
        for n in ("ffn_head.weight", "ffn_head.bias", "ffn_merge.weight", "ffn_merge.bias"):
            if b + n in p.shapes:
                part["head_merge"] += p.nbytes(b + n)
        one = sum(p.nbytes(b + f"ffn_{x}_exps.weight") for x in ("gate", "up", "down")) // E
        part["experts"] += round(one * n_expected)
        part["experts_max"] += one * n_max
        for n in ("ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight"):
            if b + n in p.shapes:
                part["shared_expert"] += p.nbytes(b + n)
    part["norms"] += p.nbytes("output_norm.weight")
    part["output"] = p.nbytes("token_embd.weight" if p.tied else "output.weight")
    part["total"] = sum(v for key, v in part.items() if key != "experts_max")
    part["total_max"] = part["total"] - part["experts"] + part["experts_max"]
    return part


def _chunks(name: str, shape: tuple[int, ...], t: QT, rng: np.random.Generator):
    """Yield the tensor's bytes in pieces of whole rows."""
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    n = shape[-1]
    rb = _BYTES[t](n)
    step = max(1, CHUNK_BYTES // rb)
    std = weight_std(name, shape)
    for r0 in range(0, rows, step):
        r = min(step, rows - r0)
        if len(shape) == 1:
            if name.endswith(".bias"):
                a = 0.05 * rng.standard_normal(n, dtype=np.float32)
            else:
                a = 1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)
            yield a.astype(np.float32)
        elif t in (QT.F32, QT.F16):
            a = rng.standard_normal((r, n), dtype=np.float32) * np.float32(std)
            yield a.astype(np.float16 if t == QT.F16 else np.float32)
        else:
            nb = r * (n // 32)
            qbytes = 32 if t == QT.Q8_0 else 16
            blocks = np.empty((nb, 2 + qbytes), dtype=np.uint8)
            blocks[:, 2:] = rng.integers(0, 256, (nb, qbytes), dtype=np.uint8)
            scale = (std / _QRMS[t]) * (0.5 + rng.random(nb, dtype=np.float32))
            blocks[:, :2] = scale.astype(np.float16).view(np.uint8).reshape(nb, 2)
            yield blocks


def write_model(path, p: Plan, seed: int = 0, name: str | None = None) -> int:
    """Write the planned model with random weights; returns the file size."""
    tokens, merges = tokenizer(p.vocab_size)
    w = gguf.GGUFWriter(str(path), "mhmoe")
    add_metadata(w, p.config, tokens, merges, name=name)
    for n, shape in p.shapes.items():
        t = p.types[n]
        dtype = {QT.F32: np.float32, QT.F16: np.float16}.get(t, np.uint8)
        # shape passed as GGUF expects from add_tensor: numpy shape, or the byte shape for blocks
        s = tuple(shape) if dtype is not np.uint8 else tuple(shape[:-1]) + (_BYTES[t](shape[-1]),)
        w.add_tensor_info(n, s, np.dtype(dtype), p.nbytes(n), raw_dtype=None if dtype is not np.uint8 else t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    rng = np.random.default_rng(seed)
    for n, shape in p.shapes.items():
        w.write_padding(fout, fout.tell())
        written = 0
        for chunk in _chunks(n, shape, p.types[n], rng):
            chunk.tofile(fout)
            written += chunk.nbytes
        assert written == p.nbytes(n), (n, written, p.nbytes(n))
        w.write_padding(fout, written)
    fout.flush()
    size = fout.tell()
    w.close()
    return size


def config_from_args(a) -> MhmoeConfig:
    return MhmoeConfig(
        context_length=a.ctx, embedding_length=a.dim, block_count=a.layers,
        feed_forward_length=a.ff, head_count=a.heads, head_count_kv=a.kv_heads,
        expert_count=a.experts, expert_used_count=a.top_k, expert_feed_forward_length=a.expert_ff,
        expert_weights_norm=not a.raw_gates, moe_head_count=a.moe_heads,
        moe_layer_interval=a.moe_interval, moe_router=a.router,
        expert_shared_feed_forward_length=a.shared_ff, rope_freq_base=a.rope_base,
        layer_norm_rms_epsilon=a.eps,
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Write a random-weight mhmoe model for benchmarks.")
    ap.add_argument("out")
    ap.add_argument("--dim", type=int, default=1024, help="d, embedding width")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16, help="attention heads")
    ap.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    ap.add_argument("--moe-heads", type=int, default=1, help="h; > 1 adds head and merge linears")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--expert-ff", type=int, default=2816)
    ap.add_argument("--shared-ff", type=int, default=0, help="shared expert width (0 = none)")
    ap.add_argument("--moe-interval", type=int, default=1, help="layer i is MoE iff (i+1) %% interval == 0")
    ap.add_argument("--ff", type=int, default=0, help="dense FFN width (needed when --moe-interval > 1)")
    ap.add_argument("--router", choices=["softmax", "xmoe"], default="softmax")
    ap.add_argument("--raw-gates", action="store_true", help="do not renormalize the top-k gates")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--rope-base", type=float, default=10000.0)
    ap.add_argument("--eps", type=float, default=1e-5)
    ap.add_argument("--type", default="Q8_0", help="matrices: Q8_0, Q4_0, F16 or F32")
    ap.add_argument("--router-type", default="F32", help="router matrices (default F32)")
    ap.add_argument("--untied-output", action="store_true", help="write output.weight")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if a.kv_heads is None:
        a.kv_heads = a.heads
    try:
        p = plan(config_from_args(a), a.vocab, a.type, a.router_type, tied=not a.untied_output)
    except ValueError as e:
        print(f"gen_model: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    size = write_model(a.out, p, seed=a.seed)
    dt = time.perf_counter() - t0
    act = active_bytes(p)
    weights = sum(p.nbytes(n) for n in p.shapes)
    print(f"{a.out}: {size} bytes ({size / 1e6:.1f} MB) in {dt:.1f} s; weights {weights} bytes")
    detail = ", ".join(f"{k} {v}" for k, v in act.items() if k not in ("total", "total_max", "experts_max") and v)
    print(f"bytes_per_token: {act['total']}  ({detail})")
    if a.moe_heads > 1:
        print(f"bytes_per_token_max: {act['total_max']}  (all min(E, h k) = "
              f"{min(a.experts, a.moe_heads * a.top_k)} experts read; bytes_per_token assumes "
              f"uniform random routing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
