"""Generate the small random mhmoe test models and the dequantization vectors.

    python3 tools/gen_test_models.py [--out tests/models]

Deterministic: numpy default_rng with fixed seeds, a fixed sample text for the BPE merges and
gguf's deterministic writer, so running it again reproduces the files byte for byte.

All models: d = 64, 2 layers, context 64, E = 4, F = 64, dense FF = 128, V = 298 (256 byte
tokens with id == byte value, 40 merges trained on SAMPLE_TEXT, then "<|bos|>" = 296 and
"<|eos|>" = 297; the bos/eos keys are written only for some models). Every model but
c_bf16_h1_k2_norm carries the tokenizer's lookup tables. See MODELS for what each file covers.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import gguf

from .bpe import build_vocab, train_merges
from .writer import MhmoeConfig, expected_tensor_shapes, write_mhmoe_gguf

SAMPLE_TEXT = (
    "The little robot woke up in the morning and looked at the sea. The sea was calm and the sky "
    "was clear. It thought about the things it had to do: sort the shells, count the boats, and "
    "then rest in the shade of the old tree. The other robots were still asleep, so the little "
    "robot walked along the shore and listened to the waves. When the sun was high, it went back "
    "to the house, where the others were starting their work. They talked about the weather, the "
    "tides and the fish in the harbour. In the evening they sat together and watched the stars "
    "come out, one after the other, until the whole sky was full of them.\n"
)
N_MERGES = 40
SPECIALS = ["<|bos|>", "<|eos|>"]


def tokenizer():
    merges = train_merges(SAMPLE_TEXT, N_MERGES)
    tokens = build_vocab(merges, SPECIALS)
    return tokens, merges


@dataclass(frozen=True)
class Spec:
    name: str
    seed: int
    qtype: str
    h: int
    k: int
    norm: bool
    nh: int = 4
    nkv: int = 4
    interval: int = 2
    router: str = "softmax"
    Fs: int = 0
    tied: bool = True
    specials: bool = False          # write bos/eos ids
    alignment: int | None = None
    overrides: dict = field(default_factory=dict)
    tables: bool = True             # write the tokenizer's lookup tables (tokenizer.mhmoe.*)
    note: str = ""


MODELS = [
    Spec("a_f32_h2_k2_gqa", 101, "F32", h=2, k=2, norm=False, nh=4, nkv=2, specials=True,
         note="f32, raw gates, GQA 4/2, tied output, bos/eos"),
    Spec("b_f16_h4_k1_untied", 102, "F16", h=4, k=1, norm=False, nh=4, nkv=4, tied=False,
         note="f16, h=4 (m=16), k=1 raw gate, MHA, untied output"),
    Spec("c_bf16_h1_k2_norm", 103, "BF16", h=1, k=2, norm=True, nh=4, nkv=1, alignment=32,
         tables=False,
         note="bf16, plain SMoE h=1, renormalized gates, MQA 4/1, explicit general.alignment=32, "
              "no tokenizer tables (the engine builds them in RAM)"),
    Spec("d_q8_0_h2_k2_gqa", 104, "Q8_0", h=2, k=2, norm=True, nh=4, nkv=2, specials=True,
         note="q8_0 everywhere (router too), renormalized, GQA 4/2, bos/eos"),
    Spec("e_q4_0_h2_k2_shexp", 105, "Q4_0", h=2, k=2, norm=False, nh=1, nkv=1, Fs=64,
         note="q4_0, raw gates, shared expert Fs=64, one attention head (hd=64)"),
    Spec("f_q8_0_h1_k1_allmoe", 106, "Q8_0", h=1, k=1, norm=True, nh=4, nkv=2, interval=1,
         note="q8_0, h=1, k=1 (gate 1.0), every layer MoE, feed_forward_length=0"),
    Spec("g_f32_xmoe_h2_k2", 107, "F32", h=2, k=2, norm=True, nh=4, nkv=2, router="xmoe",
         note="f32, X-MoE cosine router, renormalized"),
    Spec("h_mixed_h2_k3", 108, "Q8_0", h=2, k=3, norm=False, nh=4, nkv=2, Fs=32, tied=False,
         alignment=64,
         overrides={
             "token_embd.weight": "Q8_0",
             "blk.*.attn_*": "Q4_0",
             "blk.*.ffn_gate_inp.weight": "F16",
             "blk.*.ffn_head.weight": "BF16",
             "blk.*.ffn_merge.weight": "BF16",
             "blk.*.ffn_gate.weight": "Q4_0",
             "blk.*.ffn_up.weight": "Q4_0",
             "blk.*.ffn_down.weight": "F16",
             "blk.*.*_shexp.weight": "BF16",
             "output.weight": "Q4_0",
         },
         note="mixed: embd q8_0, attention q4_0, experts q8_0, router f16, head/merge bf16, "
              "dense q4_0/f16, shared expert bf16 (Fs=32), untied q4_0 output, k=3, alignment 64"),
]

D, L, CTX, E, F, FF = 64, 2, 64, 4, 64, 128
BRANCH_GAIN = 3.0


def config_for(s: Spec) -> MhmoeConfig:
    every_moe = s.interval == 1
    return MhmoeConfig(
        context_length=CTX, embedding_length=D, block_count=L,
        feed_forward_length=0 if every_moe else FF,
        head_count=s.nh, head_count_kv=s.nkv,
        expert_count=E, expert_used_count=s.k, expert_feed_forward_length=F,
        expert_weights_norm=s.norm, moe_head_count=s.h, moe_layer_interval=s.interval,
        moe_router=s.router, expert_shared_feed_forward_length=s.Fs,
    )


def _std(name: str, shape) -> float:
    fan_in = shape[-1]
    if name in ("token_embd.weight", "output.weight"):
        return 0.5
    if name.endswith("ffn_gate_inp.weight") or name.endswith("ffn_gate_inp_red.weight"):
        return 2.0 / math.sqrt(fan_in)      # decisive routing
    if re.search(r"(attn_output|ffn_down|ffn_down_exps|ffn_down_shexp|ffn_merge)\.weight$", name):
        # residual branches 3x stronger than the embedding, so that a tied output does not just
        # predict the current token again
        return BRANCH_GAIN / math.sqrt(fan_in)
    return 1.0 / math.sqrt(fan_in)


def random_weights(s: Spec, cfg: MhmoeConfig, V: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(s.seed)
    out = {}
    for name, shape in expected_tensor_shapes(cfg, V, s.tied).items():
        if len(shape) == 1:
            if name.endswith(".bias"):
                a = 0.05 * rng.standard_normal(shape)
            else:  # norm weights around 1
                a = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            a = _std(name, shape) * rng.standard_normal(shape)
        out[name] = a.astype(np.float32)
    return out


def write_model(s: Spec, out_dir: Path) -> Path:
    tokens, merges = tokenizer()
    cfg = config_for(s)
    V = len(tokens)
    w = random_weights(s, cfg, V)
    path = out_dir / f"{s.name}.gguf"
    write_mhmoe_gguf(
        path, cfg, w, tokens, merges, qtype=s.qtype, overrides=s.overrides or None,
        bos_token_id=V - 2 if s.specials else None, eos_token_id=V - 1 if s.specials else None,
        alignment=s.alignment, name=s.name, tokenizer_tables=s.tables,
    )
    return path


# ------------------------------------------------------------------------------------------------
# Dequantization vectors

def _f16_bits(rng, n):
    special = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x83FF, 0x0400, 0x8400, 0x7BFF, 0xFBFF,
               0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7E01, 0xFFFF, 0x3C00, 0xBC00, 0x3555, 0x0200]
    rnd = rng.integers(0, 1 << 16, n - len(special), dtype=np.uint32)
    return np.concatenate([np.array(special, dtype=np.uint16), rnd]).astype(np.uint16)


def _bf16_bits(rng, n):
    special = [0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80,
               0x7FC0, 0xFFC0, 0x7FC1, 0xFFFF, 0x3F80, 0xBF80, 0x4049, 0x3DCD]
    rnd = rng.integers(0, 1 << 16, n - len(special), dtype=np.uint32)
    return np.concatenate([np.array(special, dtype=np.uint16), rnd]).astype(np.uint16)


# (f16 scale bits, quants) of the crafted blocks: +-0 scales, smallest/largest subnormal, smallest
# normal, +-65504, ordinary values, signalling NaNs, combined with extreme quants. More random
# blocks follow.
def _q8_0_crafted():
    lo, hi, alt, ramp = [-128] * 32, [127] * 32, [-128, 127] * 16, list(range(-16, 16))
    return [(0x7BFF, hi), (0x7BFF, lo), (0xFBFF, hi), (0xFBFF, alt), (0x0000, alt), (0x8000, alt),
            (0x8000, ramp), (0x0001, hi), (0x0001, lo), (0x03FF, alt), (0x0400, ramp), (0xBC00, alt),
            (0x2E66, ramp), (0x1800, hi), (0x7C89, ramp), (0xFC01, alt)]


def _q4_0_crafted():
    lo, hi, alt, ramp = [0x00] * 16, [0xFF] * 16, [0x0F] * 16, [i * 17 for i in range(16)]
    return [(0x7BFF, hi), (0x7BFF, lo), (0xFBFF, alt), (0xFBFF, ramp), (0x0000, ramp), (0x8000, ramp),
            (0x8000, [0x88] * 16), (0x0001, hi), (0x0001, lo), (0x03FF, alt), (0x0400, ramp),
            (0xBC00, [0xF0] * 16), (0x2E66, ramp), (0x1800, alt), (0x7C89, ramp), (0xFC01, alt)]


def _blocks(crafted, n_blocks, rng, q_dtype, q_range):
    qbytes = 32 if q_dtype == np.int8 else 16
    blocks = np.zeros((n_blocks, 2 + qbytes), dtype=np.uint8)
    for i in range(n_blocks):
        if i < len(crafted):
            d, q = crafted[i]
        else:
            d = int(np.float16(rng.uniform(-0.05, 0.05)).view(np.uint16))
            q = rng.integers(q_range[0], q_range[1], qbytes)
        blocks[i, 0:2] = np.array([d], dtype="<u2").view(np.uint8)
        blocks[i, 2:] = np.asarray(q).astype(q_dtype).view(np.uint8)
    return blocks


def write_dequant_vectors(out_dir: Path) -> Path:
    """tests/models/dequant_vectors.gguf: for each of f16, bf16, q8_0, q4_0 a tensor of raw data
    with edge cases and `<name>.expected` (F32) = gguf.quants.dequantize of it; `f16_nan` holds
    every f16 infinity and NaN (quiet and signalling, both signs), whose payloads numpy keeps."""
    rng = np.random.default_rng(7)
    QT = gguf.GGMLQuantizationType
    path = out_dir / "dequant_vectors.gguf"
    w = gguf.GGUFWriter(str(path), "mhmoe-test")
    w.add_string("mhmoe-test.description",
                 "For each tensor NAME (f16, bf16, q8_0, q4_0; rows of 64 elements), NAME.expected "
                 "is gguf.quants.dequantize(NAME) as F32: compare bit for bit, NaN payloads and "
                 "signalling NaNs included; zero scales of both signs are included.")
    rows, cols = 4, 64
    f16 = _f16_bits(rng, rows * cols).reshape(rows, cols)
    bf16 = _bf16_bits(rng, rows * cols).reshape(rows, cols)
    # random realistic blocks from gguf's own quantizer appended to the crafted ones
    real = (0.3 * rng.standard_normal((2, cols))).astype(np.float32)
    q8 = np.concatenate([_blocks(_q8_0_crafted(), 16, rng, np.int8, (-128, 128)).reshape(8, -1),
                         gguf.quants.quantize(real, QT.Q8_0)], axis=0)
    q4 = np.concatenate([_blocks(_q4_0_crafted(), 16, rng, np.uint8, (0, 256)).reshape(8, -1),
                         gguf.quants.quantize(real, QT.Q4_0)], axis=0)
    # every f16 with an all-ones exponent: +-inf, then every NaN payload of both signs
    f16_nan = np.array([0x7C00 | m for m in range(1024)] + [0xFC00 | m for m in range(1024)],
                       dtype=np.uint16).reshape(-1, cols)
    items = [("f16", f16.view(np.uint8), QT.F16), ("f16_nan", f16_nan.view(np.uint8), QT.F16),
             ("bf16", bf16.view(np.uint8), QT.BF16),
             ("q8_0", q8, QT.Q8_0), ("q4_0", q4, QT.Q4_0)]
    for name, raw, qt in items:
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        # NaN scales raise numpy's "invalid value" warning: expected here.
        with np.errstate(invalid="ignore"):
            if qt == QT.F16:
                w.add_tensor(name, raw.view(np.float16))
                exp = gguf.quants.dequantize(raw.view(np.float16), qt)
            else:
                w.add_tensor(name, raw, raw_dtype=qt)
                exp = gguf.quants.dequantize(raw, qt)
        w.add_tensor(name + ".expected", np.ascontiguousarray(exp, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Generate the mhmoe test models.")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "models"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for s in MODELS:
        p = write_model(s, out)
        print(f"{p}  {p.stat().st_size} bytes  ({s.note})")
    p = write_dequant_vectors(out)
    print(f"{p}  {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
