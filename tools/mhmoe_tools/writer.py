"""Write (and read back) mhmoe GGUF files, as specified in FORMAT.md.

Typical use (e.g. from an exporter of a trained PyTorch model)::

    from mhmoe_tools.writer import MhmoeConfig, write_mhmoe_gguf

    cfg = MhmoeConfig(context_length=512, embedding_length=256, block_count=4,
                      feed_forward_length=1024, head_count=4, head_count_kv=4,
                      expert_count=8, expert_used_count=2, expert_feed_forward_length=256,
                      expert_weights_norm=False, moe_head_count=4, moe_layer_interval=2)
    tensors = {"token_embd.weight": emb,                 # [V, d]
               "blk.0.attn_q.weight": wq, ...,           # [n_out, n_in] like torch.nn.Linear
               "blk.1.ffn_gate_exps.weight": w1,         # [E, F, m]
               ...}
    write_mhmoe_gguf("model.gguf", cfg, {k: t.detach().float().numpy() ...}, tokens, merges,
                     qtype="Q8_0", overrides={"blk.*.ffn_gate_inp.weight": "F32"})

Tensors are given in natural numpy shape: a linear layer `y = W x` is `[n_out, n_in]` (exactly a
`torch.nn.Linear.weight`), stacked experts are `[E, n_out, n_in]`, 1-D tensors are `[n]`. GGUF
stores the reversed dimension list (`ne0 = n_in` first), which `gguf.GGUFWriter` does for us.

Weight types: "F32", "F16", "BF16", "Q8_0", "Q4_0" (strings or `gguf.GGMLQuantizationType`).
* 1-D tensors (norms, biases) are always written as F32, whatever was requested.
* Q8_0 / Q4_0 need the input width (last numpy axis, GGUF `ne0`) to be a multiple of 32. A
  matrix that does not satisfy this is written with the `fallback` type instead (default "F32";
  "F16" or "BF16" also work). Example: with d = 64 and h = 4 MoE heads the experts' input width
  m = 16 cannot be block-quantized; the xmoe expert embeddings `ffn_gate_inp` (ne0 = 16) never can.
* F16 is numpy's float16 cast (round to nearest even); BF16, Q8_0 and Q4_0 use
  `gguf.quants.quantize` (ggml's reference rounding).

Metadata: every key of FORMAT.md is written with FORMAT.md's name and type (optional ones only
when they are set: `general.alignment` when `alignment` is given, bos/eos when given;
`mhmoe.expert_shared_feed_forward_length` is always written). `tokenizer.ggml.merges` must be
non-empty because gguf 0.19's writer refuses empty arrays. The tokenizer's precomputed lookup
tables (`tokenizer.mhmoe.*`, see `make_tokenizer_tables`) are written unless `tokenizer_tables=False`:
with them the engine's tokenizer needs no RAM for tables (they stay in flash with the model).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

__all__ = [
    "MhmoeConfig", "MhmoeFile", "write_mhmoe_gguf", "add_metadata", "read_mhmoe_gguf", "expected_tensor_shapes",
    "parse_qtype", "QTYPES", "ARCH", "make_tokenizer_tables", "TOKENIZER_TABLE_KEYS",
]

ARCH = "mhmoe"
QTYPES = {"F32": QT.F32, "F16": QT.F16, "BF16": QT.BF16, "Q8_0": QT.Q8_0, "Q4_0": QT.Q4_0}
_BLOCK_TYPES = (QT.Q8_0, QT.Q4_0)

QTypeLike = Union[str, QT]


def parse_qtype(t: QTypeLike) -> QT:
    """"q8_0" / "Q8_0" / GGMLQuantizationType.Q8_0 -> GGMLQuantizationType.Q8_0 (supported ones only)."""
    if isinstance(t, QT):
        q = t
    else:
        key = str(t).upper()
        if key not in QTYPES:
            raise ValueError(f"unsupported weight type {t!r}; use one of {sorted(QTYPES)}")
        q = QTYPES[key]
    if q not in QTYPES.values():
        raise ValueError(f"unsupported weight type {q.name}")
    return q


@dataclass(frozen=True)
class MhmoeConfig:
    """Hyper-parameters of an mhmoe model; field names follow the metadata keys (FORMAT.md)."""

    context_length: int              # mhmoe.context_length
    embedding_length: int            # d
    block_count: int                 # L
    feed_forward_length: int         # dense SwiGLU hidden width (0 only if every layer is MoE)
    head_count: int                  # nh
    head_count_kv: int               # nkv
    expert_count: int                # E
    expert_used_count: int           # k
    expert_feed_forward_length: int  # F
    expert_weights_norm: bool        # renormalize the top-k gates
    moe_head_count: int              # h (1 = plain SMoE, no head/merge)
    moe_layer_interval: int          # layer i is MoE iff (i + 1) % interval == 0
    moe_router: str = "softmax"      # "softmax" or "xmoe"
    expert_shared_feed_forward_length: int = 0  # Fs, 0 = no shared expert
    layer_norm_rms_epsilon: float = 1e-5
    rope_freq_base: float = 10000.0

    # derived -------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.embedding_length // self.head_count

    @property
    def moe_head_dim(self) -> int:
        """m = d / h, the sub-token width the experts and the router see."""
        return self.embedding_length // self.moe_head_count

    def is_moe_layer(self, i: int) -> bool:
        return (i + 1) % self.moe_layer_interval == 0

    def validate(self) -> None:
        d, nh, nkv = self.embedding_length, self.head_count, self.head_count_kv
        problems = []
        if min(self.context_length, d, self.block_count, nh, nkv) < 1:
            problems.append("context_length, embedding_length, block_count, head counts must be >= 1")
        if nh >= 1 and (d % nh or (d // nh) % 2):
            problems.append("d % nh must be 0 and hd = d/nh even")
        if nkv >= 1 and nh % nkv:
            problems.append("nh % nkv must be 0")
        if self.expert_count < 1 or not 1 <= self.expert_used_count <= self.expert_count:
            problems.append("need E >= 1 and 1 <= k <= E")
        if self.moe_head_count < 1 or d % self.moe_head_count:
            problems.append("need h >= 1 and d % h == 0")
        if self.moe_layer_interval < 1:
            problems.append("moe_layer_interval must be >= 1")
        if self.moe_router not in ("softmax", "xmoe"):
            problems.append("moe_router must be 'softmax' or 'xmoe'")
        has_dense = any(not self.is_moe_layer(i) for i in range(self.block_count))
        if has_dense and self.feed_forward_length < 1:
            problems.append("feed_forward_length must be > 0 when some layer is dense")
        has_moe = any(self.is_moe_layer(i) for i in range(self.block_count))
        if has_moe and self.expert_feed_forward_length < 1:
            problems.append("expert_feed_forward_length must be > 0")
        if self.expert_shared_feed_forward_length < 0:
            problems.append("expert_shared_feed_forward_length must be >= 0")
        if problems:
            raise ValueError("invalid MhmoeConfig: " + "; ".join(problems))


XMOE_DIM = 16  # width of the X-MoE routing space (FORMAT.md)


def expected_tensor_shapes(cfg: MhmoeConfig, vocab_size: int, tied_output: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, in numpy shape (reversed GGUF dims), in canonical file order."""
    d, V = cfg.embedding_length, vocab_size
    hd = cfg.head_dim
    qd, kvd = cfg.head_count * hd, cfg.head_count_kv * hd
    m, E, F, Fs = cfg.moe_head_dim, cfg.expert_count, cfg.expert_feed_forward_length, cfg.expert_shared_feed_forward_length
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (V, d)}
    for i in range(cfg.block_count):
        p = f"blk.{i}."
        shapes[p + "attn_norm.weight"] = (d,)
        shapes[p + "attn_q.weight"] = (qd, d)
        shapes[p + "attn_k.weight"] = (kvd, d)
        shapes[p + "attn_v.weight"] = (kvd, d)
        shapes[p + "attn_output.weight"] = (d, qd)
        shapes[p + "ffn_norm.weight"] = (d,)
        if not cfg.is_moe_layer(i):
            FF = cfg.feed_forward_length
            shapes[p + "ffn_gate.weight"] = (FF, d)
            shapes[p + "ffn_up.weight"] = (FF, d)
            shapes[p + "ffn_down.weight"] = (d, FF)
            continue
        if cfg.moe_head_count > 1:
            shapes[p + "ffn_head.weight"] = (d, d)
            shapes[p + "ffn_head.bias"] = (d,)
        if cfg.moe_router == "softmax":
            shapes[p + "ffn_gate_inp.weight"] = (E, m)
        else:
            shapes[p + "ffn_gate_inp_red.weight"] = (XMOE_DIM, m)
            shapes[p + "ffn_gate_inp.weight"] = (E, XMOE_DIM)
        shapes[p + "ffn_gate_exps.weight"] = (E, F, m)
        shapes[p + "ffn_up_exps.weight"] = (E, F, m)
        shapes[p + "ffn_down_exps.weight"] = (E, m, F)
        if Fs > 0:
            shapes[p + "ffn_gate_shexp.weight"] = (Fs, d)
            shapes[p + "ffn_up_shexp.weight"] = (Fs, d)
            shapes[p + "ffn_down_shexp.weight"] = (d, Fs)
        if cfg.moe_head_count > 1:
            shapes[p + "ffn_merge.weight"] = (d, d)
            shapes[p + "ffn_merge.bias"] = (d,)
    shapes["output_norm.weight"] = (d,)
    if not tied_output:
        shapes["output.weight"] = (V, d)
    return shapes


_RESERVED = re.compile(
    r"^(token_embd\.weight|output_norm\.weight|output\.weight|blk\.\d+\.(attn_(norm|q|k|v|output)\.weight|"
    r"ffn_(norm|gate|up|down|gate_inp|gate_inp_red|gate_exps|up_exps|down_exps|gate_shexp|up_shexp|down_shexp)\.weight|"
    r"ffn_(head|merge)\.(weight|bias)))$")


def _choose_type(name: str, arr: np.ndarray, qtype: QT, overrides, fallback: QT) -> QT:
    if arr.ndim == 1:
        return QT.F32
    t = qtype
    if overrides is not None:
        if callable(overrides):
            r = overrides(name)
            if r is not None:
                t = parse_qtype(r)
        else:
            for pattern, r in overrides.items():
                if fnmatch.fnmatchcase(name, pattern):
                    t = parse_qtype(r)
                    break
    if t in _BLOCK_TYPES and arr.shape[-1] % 32 != 0:
        t = fallback
    return t


def _encode(arr: np.ndarray, t: QT) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if t == QT.F32:
        return arr
    if t == QT.F16:
        return arr.astype(np.float16)
    return gguf.quants.quantize(arr, t)


TOKENIZER_TABLE_KEYS = (
    "tokenizer.mhmoe.token_offsets",
    "tokenizer.mhmoe.sorted_ids",
    "tokenizer.mhmoe.merge_table",
    "tokenizer.mhmoe.byte_tokens",
)


def make_tokenizer_tables(tokens: Sequence[str], merges: Sequence[str]) -> dict[str, list[int]]:
    """The tokenizer's lookup tables (FORMAT.md, `tokenizer.mhmoe.*`), each a list of u32:

    * `token_offsets` (V + 1): byte offset of token i's GGUF string (its u64 length, then its
      UTF-8 bytes) from the first element of `tokenizer.ggml.tokens`; the last entry is the size
      of all the elements.
    * `sorted_ids` (V): the token ids in increasing order of their strings' UTF-8 bytes.
    * `merge_table` (4 M): `left, right, rank, merged` for every merge ("left right" of rank
      `rank`, `merged` the token left + right), sorted by (left, right).
    * `byte_tokens` (256): the id of the single-byte token of each byte.

    Raises ValueError for a vocabulary the engine would reject (repeated tokens, a missing
    single-byte token, a merge that is not two tokens whose concatenation is a token, a
    repeated merge, more than 4 GiB of token strings).
    """
    from .bpe import bytes_to_unicode

    enc = [t.encode("utf-8") for t in tokens]
    offsets = [0]
    for b in enc:
        offsets.append(offsets[-1] + 8 + len(b))
    if offsets[-1] >= 1 << 32:
        raise ValueError("the token strings exceed 4 GiB")
    ids = {t: i for i, t in enumerate(tokens)}
    if len(ids) != len(tokens):
        raise ValueError("two tokens have the same string")
    sorted_ids = sorted(range(len(tokens)), key=lambda i: enc[i])
    table = []
    for rank, m in enumerate(merges):
        left, sep, right = m.partition(" ")
        if not sep or not left or not right or " " in right:
            raise ValueError(f"merge {rank} ({m!r}) is not two tokens separated by one space")
        try:
            table.append((ids[left], ids[right], rank, ids[left + right]))
        except KeyError as e:
            raise ValueError(f"merge {rank} ({m!r}): {e.args[0]!r} is not a token") from None
    table.sort()
    for a, b in zip(table, table[1:]):
        if a[:2] == b[:2]:
            raise ValueError(f"merges {a[2]} and {b[2]} join the same pair of tokens")
    b2u = bytes_to_unicode()
    try:
        byte_tokens = [ids[b2u[b]] for b in range(256)]
    except KeyError as e:
        raise ValueError(f"the single-byte token {e.args[0]!r} is missing") from None
    return dict(zip(TOKENIZER_TABLE_KEYS, (offsets, sorted_ids, [v for e in table for v in e], byte_tokens)))


def add_metadata(
    w: gguf.GGUFWriter,
    config: MhmoeConfig,
    tokens: Sequence[str],
    merges: Sequence[str],
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    alignment: int | None = None,
    arch: str = ARCH,
    name: str | None = None,
    tokenizer_tables: bool = True,
) -> None:
    """Add every FORMAT.md metadata key of `config` and the tokenizer to a fresh `GGUFWriter`
    (what `write_mhmoe_gguf` writes; `gen_model.py` uses it to stream tensors to the file),
    with the tokenizer's lookup tables unless `tokenizer_tables` is False."""
    if alignment is not None:
        w.add_custom_alignment(int(alignment))
    if name:
        w.add_string("general.name", name)
    c = config
    w.add_uint32(f"{arch}.context_length", c.context_length)
    w.add_uint32(f"{arch}.embedding_length", c.embedding_length)
    w.add_uint32(f"{arch}.block_count", c.block_count)
    w.add_uint32(f"{arch}.feed_forward_length", c.feed_forward_length)
    w.add_uint32(f"{arch}.attention.head_count", c.head_count)
    w.add_uint32(f"{arch}.attention.head_count_kv", c.head_count_kv)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.layer_norm_rms_epsilon)
    w.add_float32(f"{arch}.rope.freq_base", c.rope_freq_base)
    w.add_uint32(f"{arch}.expert_count", c.expert_count)
    w.add_uint32(f"{arch}.expert_used_count", c.expert_used_count)
    w.add_uint32(f"{arch}.expert_feed_forward_length", c.expert_feed_forward_length)
    w.add_bool(f"{arch}.expert_weights_norm", bool(c.expert_weights_norm))
    w.add_uint32(f"{arch}.expert_shared_feed_forward_length", c.expert_shared_feed_forward_length)
    w.add_uint32(f"{arch}.moe.head_count", c.moe_head_count)
    w.add_uint32(f"{arch}.moe.layer_interval", c.moe_layer_interval)
    w.add_string(f"{arch}.moe.router", c.moe_router)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "mhmoe-space")
    w.add_array("tokenizer.ggml.tokens", list(tokens))
    w.add_array("tokenizer.ggml.merges", list(merges))
    if bos_token_id is not None:
        w.add_uint32("tokenizer.ggml.bos_token_id", int(bos_token_id))
    if eos_token_id is not None:
        w.add_uint32("tokenizer.ggml.eos_token_id", int(eos_token_id))
    if tokenizer_tables:
        for key, values in make_tokenizer_tables(tokens, merges).items():
            w.add_key_value(key, values, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32)


def write_mhmoe_gguf(
    path: str | Path,
    config: MhmoeConfig,
    tensors: Mapping[str, np.ndarray],
    tokens: Sequence[str],
    merges: Sequence[str],
    qtype: QTypeLike = "F32",
    overrides: Mapping[str, QTypeLike] | Callable[[str], QTypeLike | None] | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    fallback: QTypeLike = "F32",
    alignment: int | None = None,
    arch: str = ARCH,
    allow_extra: bool = False,
    name: str | None = None,
    tokenizer_tables: bool = True,
) -> dict[str, str]:
    """Write an mhmoe GGUF file. Returns {tensor name: written type name}.

    path:      output file.
    config:    `MhmoeConfig`.
    tensors:   name -> float array in numpy shape (see module doc); `output.weight` absent means
               the output is tied to `token_embd.weight`. Shapes are checked against the config.
    tokens:    V token strings in GPT-2 byte-to-unicode form (see `bpe.py`); V = token_embd rows.
    merges:    "left right" strings in rank order (non-empty).
    qtype:     default type for matrices ("F32", "F16", "BF16", "Q8_0", "Q4_0").
    overrides: per-tensor types, either {fnmatch pattern: type} (first match wins, e.g.
               {"blk.*.attn_*": "Q4_0"}) or a function name -> type or None (= use `qtype`).
    fallback:  type used for a matrix whose input width is not a multiple of 32 when a block
               type was requested (default "F32").
    alignment: write `general.alignment` (power of two) and align tensor data to it; None = key
               absent and the GGUF default of 32.
    allow_extra: accept tensors that are not part of the model (they must not use a reserved name).
    name:      optional `general.name` (not read by the engine).
    tokenizer_tables: write the tokenizer's lookup tables (`make_tokenizer_tables`).
    """
    config.validate()
    qtype_, fallback_ = parse_qtype(qtype), parse_qtype(fallback)
    if fallback_ in _BLOCK_TYPES:
        raise ValueError("fallback must be F32, F16 or BF16")
    if "token_embd.weight" not in tensors:
        raise ValueError("token_embd.weight is required")
    V = int(np.shape(tensors["token_embd.weight"])[0])
    if len(tokens) != V:
        raise ValueError(f"{len(tokens)} tokens but token_embd.weight has {V} rows")
    if len(merges) == 0:
        raise ValueError("at least one merge is required (gguf's writer cannot write an empty array)")
    for tid in (bos_token_id, eos_token_id):
        if tid is not None and not 0 <= tid < V:
            raise ValueError(f"special token id {tid} out of range")

    tied = "output.weight" not in tensors
    want = expected_tensor_shapes(config, V, tied)
    missing = [n for n in want if n not in tensors]
    if missing:
        raise ValueError(f"missing tensors: {missing}")
    for n, shape in want.items():
        if tuple(np.shape(tensors[n])) != shape:
            raise ValueError(f"{n}: shape {tuple(np.shape(tensors[n]))}, expected {shape}")
    extra = sorted(n for n in tensors if n not in want)
    bad = [n for n in extra if _RESERVED.match(n)]
    if bad:
        raise ValueError(f"tensors with reserved names that this config does not use: {bad}")
    if extra and not allow_extra:
        raise ValueError(f"unexpected tensors (pass allow_extra=True to keep them): {extra}")

    w = gguf.GGUFWriter(str(path), arch)
    add_metadata(w, config, tokens, merges, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                 alignment=alignment, arch=arch, name=name, tokenizer_tables=tokenizer_tables)

    written: dict[str, str] = {}
    for n in list(want) + extra:
        arr = np.asarray(tensors[n], dtype=np.float32)
        t = _choose_type(n, arr, qtype_, overrides, fallback_)
        data = _encode(arr, t)
        if t in (QT.F32, QT.F16):
            w.add_tensor(n, data)
        else:
            w.add_tensor(n, data, raw_dtype=t)
        written[n] = t.name
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


# ------------------------------------------------------------------------------------------------
# Reading back (used by requantize). The numpy reference (reference.py) has its own reader.

def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.get_field(key)
    if f is None:
        if default is None:
            raise KeyError(f"missing metadata key {key}")
        return default
    return f.contents()


@dataclass
class MhmoeFile:
    """Contents of an mhmoe GGUF as read by `read_mhmoe_gguf`."""

    config: MhmoeConfig
    tensors: dict          # name -> float32 array (dequantized, numpy shape)
    types: dict            # name -> type name ("F32", "Q8_0", ...)
    tokens: list
    merges: list
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    alignment: int | None = None  # general.alignment if present
    name: str | None = None       # general.name if present
    tokenizer_tables: bool = False  # the tokenizer.mhmoe.* tables are present


def read_mhmoe_gguf(path: str | Path) -> MhmoeFile:
    """Read an mhmoe GGUF written by `write_mhmoe_gguf` (or any file following FORMAT.md)."""
    r = gguf.GGUFReader(str(path))
    arch = _field(r, "general.architecture")
    keys = {
        "head_count": "attention.head_count", "head_count_kv": "attention.head_count_kv",
        "layer_norm_rms_epsilon": "attention.layer_norm_rms_epsilon",
        "rope_freq_base": "rope.freq_base", "moe_head_count": "moe.head_count",
        "moe_layer_interval": "moe.layer_interval", "moe_router": "moe.router",
    }
    kw = {}
    for fl in fields(MhmoeConfig):
        default = 0 if fl.name == "expert_shared_feed_forward_length" else None
        kw[fl.name] = _field(r, f"{arch}.{keys.get(fl.name, fl.name)}", default)
    kw["expert_weights_norm"] = bool(kw["expert_weights_norm"])
    tensors: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        tensors[t.name] = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        types[t.name] = t.tensor_type.name

    def optional(key):
        f = r.get_field(key)
        return None if f is None else int(f.contents())

    return MhmoeFile(
        config=MhmoeConfig(**kw), tensors=tensors, types=types,
        tokens=_field(r, "tokenizer.ggml.tokens"), merges=_field(r, "tokenizer.ggml.merges"),
        bos_token_id=optional("tokenizer.ggml.bos_token_id"),
        eos_token_id=optional("tokenizer.ggml.eos_token_id"),
        alignment=optional("general.alignment"),
        name=None if r.get_field("general.name") is None else r.get_field("general.name").contents(),
        tokenizer_tables=any(r.get_field(k) is not None for k in TOKENIZER_TABLE_KEYS),
    )
