"""Independent numpy reference of the mhmoe forward pass, written from FORMAT.md.

It reads the GGUF with `gguf.GGUFReader` (metadata and tensor table) but decodes every tensor
from its raw bytes itself (F32, F16, BF16, Q8_0, Q4_0 in ggml's block layouts), and checks that
decoding against `gguf.quants.dequantize` (`check_decoding`).

Arithmetic follows FORMAT.md in float32, including the prescribed accumulation orders:
* float dot products: 8 lanes (element i -> lane i % 8), mul and add rounded separately, then
  the tree (l, l+4), (l, l+2), (0, 1);
* Q8_0/Q4_0 matrices: the activation is quantized like ggml's `quantize_row_q8_0`, integer block
  sums, `sumi * (f32(dw) * f32(dx))` accumulated with block b in lane b % 8, same tree;
* softmax / attention / gate sums sequential in index (or choice) order.
exp, cos and sin are evaluated in float64 (Python's `math`, i.e. the C libm, not numpy's SIMD
ufuncs, so the result does not depend on the CPU) and rounded to float32; RoPE's angle
theta = pos * base^(-2j/hd) is computed in float64 too. FORMAT.md leaves the f32 recipe of these
open, and the engine's libm may differ by an ulp, so float models agree with the engine to about
1e-6 relative while Q8_0/Q4_0 models (whose activation quantization absorbs such ulps) usually
agree bit for bit. Routing (softmax in f32, top-k by p,
ties to the lower expert index) is exactly FORMAT.md's.

CLI: python3 -m mhmoe_tools.reference MODEL.gguf [--prompt 1,2,3] [--steps N]
"""

from __future__ import annotations

import argparse
import math
import re
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

F32 = np.float32

__all__ = ["Reference", "decode_tensor", "check_decoding", "quantize_q8_0", "dot8", "generate"]


# ------------------------------------------------------------------------------------------------
# Tensor decoding from raw bytes

class Weight:
    """A matrix [rows, cols]: either float (`f`, float32) or block-quantized (`qw` int8
    [rows, nblocks, 32] and `dw` float32 [rows, nblocks])."""

    def __init__(self, qtype: QT, f=None, qw=None, dw=None):
        self.qtype = qtype
        self.f = f
        self.qw = qw
        self.dw = dw

    @property
    def quantized(self) -> bool:
        return self.qw is not None

    @property
    def rows(self) -> int:
        return (self.qw if self.quantized else self.f).shape[0]

    def dequant(self) -> np.ndarray:
        if not self.quantized:
            return self.f
        vals = self.dw[:, :, None] * self.qw.astype(F32)
        return vals.reshape(self.qw.shape[0], -1)

    def row(self, i: int) -> np.ndarray:
        if not self.quantized:
            return self.f[i]
        return (self.dw[i][:, None] * self.qw[i].astype(F32)).reshape(-1)

    def slice_rows(self, a: int, b: int) -> "Weight":
        if self.quantized:
            return Weight(self.qtype, qw=self.qw[a:b], dw=self.dw[a:b])
        return Weight(self.qtype, f=self.f[a:b])


def _f16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return bits.view("<f2").astype(F32)


def decode_tensor(raw: np.ndarray, qtype: QT, n_elems: int, cols: int) -> Weight:
    """Decode raw little-endian tensor bytes into a Weight of shape [n_elems / cols, cols]."""
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    rows = n_elems // cols
    if qtype == QT.F32:
        return Weight(qtype, f=raw.view("<f4").astype(F32).reshape(rows, cols))
    if qtype == QT.F16:
        return Weight(qtype, f=_f16_bits_to_f32(raw.view("<u2")).reshape(rows, cols))
    if qtype == QT.BF16:
        u = raw.view("<u2").astype(np.uint32) << np.uint32(16)
        return Weight(qtype, f=u.view(F32).reshape(rows, cols))
    if cols % 32:
        raise ValueError(f"{qtype.name} tensor with ne0={cols} not a multiple of 32")
    nb = cols // 32
    if qtype == QT.Q8_0:
        blocks = raw.reshape(rows, nb, 34)
        d = _f16_bits_to_f32(np.ascontiguousarray(blocks[:, :, 0:2]).reshape(-1).view("<u2"))
        qs = np.ascontiguousarray(blocks[:, :, 2:34]).view(np.int8)
        return Weight(qtype, qw=qs.reshape(rows, nb, 32), dw=d.reshape(rows, nb))
    if qtype == QT.Q4_0:
        blocks = raw.reshape(rows, nb, 18)
        d = _f16_bits_to_f32(np.ascontiguousarray(blocks[:, :, 0:2]).reshape(-1).view("<u2"))
        qs = blocks[:, :, 2:18].astype(np.int16)
        lo = (qs & 0x0F) - 8      # elements 0..15
        hi = (qs >> 4) - 8        # elements 16..31
        q = np.concatenate([lo, hi], axis=2).astype(np.int8)
        return Weight(qtype, qw=q, dw=d.reshape(rows, nb))
    raise ValueError(f"unsupported tensor type {qtype.name}")


def _raw_bytes(reader: gguf.GGUFReader, t) -> np.ndarray:
    return np.asarray(reader.data[t.data_offset:t.data_offset + t.n_bytes], dtype=np.uint8)


def check_decoding(path) -> list[str]:
    """Decode every tensor of a GGUF with `decode_tensor` and compare bit for bit (NaN payloads
    included) with gguf.quants.dequantize. Returns a list of mismatch descriptions (empty = ok)."""
    reader = gguf.GGUFReader(str(path))
    problems = []
    for t in reader.tensors:
        if t.tensor_type not in (QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0):
            problems.append(f"{t.name}: unsupported type {t.tensor_type.name}")
            continue
        cols = int(t.shape[0])
        mine = decode_tensor(_raw_bytes(reader, t), t.tensor_type, int(t.n_elements), cols).dequant()
        ref = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=F32).reshape(-1, cols)
        if mine.shape != ref.shape or not np.array_equal(mine.view(np.uint32), ref.view(np.uint32)):
            bad = int(np.sum(mine.view(np.uint32) != ref.view(np.uint32))) if mine.shape == ref.shape else -1
            problems.append(f"{t.name} ({t.tensor_type.name}): {bad} elements differ from gguf.quants.dequantize")
    return problems


# ------------------------------------------------------------------------------------------------
# Kernels (float32, FORMAT.md order)

def _tree8(acc: np.ndarray) -> np.ndarray:
    s = acc[..., 0:4] + acc[..., 4:8]
    t = s[..., 0:2] + s[..., 2:4]
    return t[..., 0] + t[..., 1]


def dot8(W: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Row-wise float32 dot products of W [R, n] with x [n], 8-lane order of FORMAT.md."""
    W = np.asarray(W, dtype=F32)
    x = np.asarray(x, dtype=F32)
    n = x.shape[0]
    acc = np.zeros(W.shape[:-1] + (8,), dtype=F32)
    for c in range(0, n, 8):
        w = min(8, n - c)
        acc[..., :w] = acc[..., :w] + W[..., c:c + w] * x[c:c + w]
    return _tree8(acc)


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C roundf on float32 values (exact: v - trunc(v) is representable)."""
    v = np.asarray(v, dtype=F32)
    r = np.trunc(v)
    r = r + (np.abs(v - r) >= F32(0.5)).astype(F32) * np.sign(v)
    return r


def quantize_q8_0(x: np.ndarray):
    """ggml quantize_row_q8_0: returns (q int8 [nb, 32], d float32 [nb] = f32(f16(amax/127)))."""
    xb = np.asarray(x, dtype=F32).reshape(-1, 32)
    amax = np.max(np.abs(xb), axis=1)
    d = amax / F32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)
    q = round_half_away(xb * inv[:, None]).astype(np.int8)
    return q, d.astype(np.float16).astype(F32)


def qdot(W: Weight, x: np.ndarray) -> np.ndarray:
    qx, dx = quantize_q8_0(x)
    sumi = np.einsum("rbj,bj->rb", W.qw.astype(np.int32), qx.astype(np.int32))
    terms = sumi.astype(F32) * (W.dw * dx[None, :])
    nb = terms.shape[1]
    acc = np.zeros((terms.shape[0], 8), dtype=F32)
    for b in range(nb):
        acc[:, b % 8] = acc[:, b % 8] + terms[:, b]
    return _tree8(acc)


def matvec(W: Weight, x: np.ndarray) -> np.ndarray:
    return qdot(W, x) if W.quantized else dot8(W.f, x)


def _map64(fn, x) -> np.ndarray:
    """Apply a float64 `math` function elementwise and round to float32. `math` (the C libm)
    rather than numpy's ufuncs, whose SIMD variants may differ in the last bit between CPUs."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([fn(v) for v in x.reshape(-1).tolist()], dtype=np.float64).astype(F32).reshape(x.shape)


def _exp(v: float) -> float:
    return math.exp(min(v, 100.0))  # exp(100) is already +inf in float32


def exp32(x) -> np.ndarray:
    """float32 exp: exact exp of the float32 input, rounded to float32."""
    return _map64(_exp, np.asarray(x, dtype=F32))


def silu(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=F32)
    return z / (F32(1) + exp32(-z))


def seq_sum(v) -> F32:
    s = F32(0)
    for e in v:
        s = F32(s + e)
    return s


def softmax(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=F32)
    e = exp32(v - np.max(v))
    return e / seq_sum(e)


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: F32) -> np.ndarray:
    ss = dot8(x[None, :], x)[0]
    mean = ss / F32(x.shape[0])
    inv = F32(1) / np.sqrt(F32(mean + eps))
    return (x * inv) * w


# ------------------------------------------------------------------------------------------------
# Model

_U32_KEYS = ["context_length", "embedding_length", "block_count", "feed_forward_length",
             "attention.head_count", "attention.head_count_kv", "expert_count", "expert_used_count",
             "expert_feed_forward_length", "moe.head_count", "moe.layer_interval"]


_RESERVED = re.compile(
    r"^(token_embd\.weight|output_norm\.weight|output\.weight|blk\.\d+\.(attn_(norm|q|k|v|output)\.weight|"
    r"ffn_(norm|gate|up|down|gate_inp|gate_inp_red|gate_exps|up_exps|down_exps|gate_shexp|up_shexp|down_shexp)"
    r"\.weight|ffn_(head|merge)\.(weight|bias)))$")


class Reference:
    """Loads an mhmoe GGUF; `forward(token, pos)` returns the f32 logits and updates the KV cache.
    Call `reset()` to start a new sequence. `route_log` collects, per MoE routing decision, the gap
    p[k-th chosen] - p[best unchosen] (0 gaps mean a tie decided by index)."""

    def __init__(self, path, self_test: bool = True):
        self.path = str(path)
        if self_test:
            problems = check_decoding(self.path)
            if problems:
                raise ValueError("block decoding self-test failed: " + "; ".join(problems))
        r = gguf.GGUFReader(self.path)
        self.reader = r

        def field(key, default=None, required=True):
            f = r.get_field(key)
            if f is None:
                if required:
                    raise ValueError(f"missing metadata {key}")
                return default
            return f.contents()

        arch = field("general.architecture")
        if arch != "mhmoe":
            raise ValueError(f"architecture {arch!r} is not mhmoe")
        md = {k: int(field("mhmoe." + k)) for k in _U32_KEYS}
        self.ctx = md["context_length"]
        self.d = md["embedding_length"]
        self.L = md["block_count"]
        self.FF = md["feed_forward_length"]
        self.nh = md["attention.head_count"]
        self.nkv = md["attention.head_count_kv"]
        self.E = md["expert_count"]
        self.k = md["expert_used_count"]
        self.F = md["expert_feed_forward_length"]
        self.h = md["moe.head_count"]
        self.interval = md["moe.layer_interval"]
        self.eps = F32(field("mhmoe.attention.layer_norm_rms_epsilon"))
        self.base = F32(field("mhmoe.rope.freq_base"))
        self.norm_gates = bool(field("mhmoe.expert_weights_norm"))
        self.Fs = int(field("mhmoe.expert_shared_feed_forward_length", 0, required=False))
        self.router = field("mhmoe.moe.router")
        if self.router not in ("softmax", "xmoe"):
            raise ValueError(f"unknown router {self.router!r}")
        self.tokens = field("tokenizer.ggml.tokens")
        self.merges = field("tokenizer.ggml.merges")
        self.V = len(self.tokens)
        self.hd = self.d // self.nh
        self.m = self.d // self.h
        assert self.d % self.nh == 0 and self.hd % 2 == 0 and self.nh % self.nkv == 0
        assert self.d % self.h == 0 and 1 <= self.k <= self.E

        self.t = {}
        self.used: set[str] = set()
        for t in r.tensors:
            cols = int(t.shape[0])
            dims = tuple(int(x) for x in t.shape.tolist())
            self.t[t.name] = (dims, decode_tensor(_raw_bytes(r, t), t.tensor_type, int(t.n_elements), cols))

        d, V = self.d, self.V
        self.embd = self._mat("token_embd.weight", (d, V))
        self.out_norm = self._vec("output_norm.weight", d)
        self.out = self._mat("output.weight", (d, V)) if "output.weight" in self.t else self.embd
        self.layers = [self._layer(i) for i in range(self.L)]
        # FORMAT.md: unused tensors are an error only if their name is one the format defines
        for name in self.t:
            if name not in self.used and _RESERVED.match(name):
                raise ValueError(f"tensor {name} is not used by this configuration")
        self.reset()

    # --- loading helpers
    def _get(self, name, dims):
        self.used.add(name)
        if name not in self.t:
            raise ValueError(f"missing tensor {name}")
        got, w = self.t[name]
        if got != tuple(dims):
            raise ValueError(f"{name}: dims {got}, expected {tuple(dims)}")
        return w

    def _mat(self, name, dims) -> Weight:
        return self._get(name, dims)

    def _vec(self, name, n) -> np.ndarray:
        w = self._get(name, (n,))
        if w.qtype != QT.F32:
            raise ValueError(f"{name}: 1-D tensors must be F32")
        return w.f.reshape(-1)

    def _experts(self, name, dims) -> list[Weight]:
        w = self._get(name, dims)
        per = dims[1]
        return [w.slice_rows(e * per, (e + 1) * per) for e in range(dims[2])]

    def is_moe(self, i) -> bool:
        return (i + 1) % self.interval == 0

    def _layer(self, i):
        d, hd, m, E, F = self.d, self.hd, self.m, self.E, self.F
        p = f"blk.{i}."
        ly = {
            "attn_norm": self._vec(p + "attn_norm.weight", d),
            "wq": self._mat(p + "attn_q.weight", (d, self.nh * hd)),
            "wk": self._mat(p + "attn_k.weight", (d, self.nkv * hd)),
            "wv": self._mat(p + "attn_v.weight", (d, self.nkv * hd)),
            "wo": self._mat(p + "attn_output.weight", (self.nh * hd, d)),
            "ffn_norm": self._vec(p + "ffn_norm.weight", d),
            "moe": self.is_moe(i),
        }
        if not ly["moe"]:
            ly["gate"] = self._mat(p + "ffn_gate.weight", (d, self.FF))
            ly["up"] = self._mat(p + "ffn_up.weight", (d, self.FF))
            ly["down"] = self._mat(p + "ffn_down.weight", (self.FF, d))
            return ly
        if self.h > 1:
            ly["head_w"] = self._mat(p + "ffn_head.weight", (d, d))
            ly["head_b"] = self._vec(p + "ffn_head.bias", d)
            ly["merge_w"] = self._mat(p + "ffn_merge.weight", (d, d))
            ly["merge_b"] = self._vec(p + "ffn_merge.bias", d)
        if self.router == "softmax":
            ly["wr"] = self._mat(p + "ffn_gate_inp.weight", (m, E))
        else:
            ly["wred"] = self._mat(p + "ffn_gate_inp_red.weight", (m, 16))
            we = self._mat(p + "ffn_gate_inp.weight", (16, E)).dequant()
            # row norm: sqrt of the 8-lane dot of the row with itself, floored at 1e-4
            norms = np.array([np.sqrt(dot8(we[e][None, :], we[e])[0]) for e in range(E)], dtype=F32)
            denom = np.maximum(norms, F32(1e-4)).astype(F32)
            ly["we_norm"] = (we / denom[:, None]).astype(F32)
        ly["gate_e"] = self._experts(p + "ffn_gate_exps.weight", (m, F, E))
        ly["up_e"] = self._experts(p + "ffn_up_exps.weight", (m, F, E))
        ly["down_e"] = self._experts(p + "ffn_down_exps.weight", (F, m, E))
        if self.Fs > 0:
            ly["gate_sh"] = self._mat(p + "ffn_gate_shexp.weight", (d, self.Fs))
            ly["up_sh"] = self._mat(p + "ffn_up_shexp.weight", (d, self.Fs))
            ly["down_sh"] = self._mat(p + "ffn_down_shexp.weight", (self.Fs, d))
        return ly

    # --- state
    def reset(self):
        self.kc = np.zeros((self.L, self.ctx, self.nkv, self.hd), dtype=F32)
        self.vc = np.zeros((self.L, self.ctx, self.nkv, self.hd), dtype=F32)
        self.route_log: list[float] = []
        self.expert_hits = np.zeros((self.L, self.E), dtype=np.int64)

    # --- blocks
    def _rope(self, z: np.ndarray, pos: int) -> np.ndarray:
        hd, half = self.hd, self.hd // 2
        j = np.arange(half, dtype=np.float64)
        theta = [pos * math.pow(float(self.base), -2.0 * jj / hd) for jj in j.tolist()]
        c, s = _map64(math.cos, theta), _map64(math.sin, theta)
        z = z.reshape(-1, hd)
        u, w = z[:, :half], z[:, half:]
        return np.concatenate([u * c - w * s, u * s + w * c], axis=1).reshape(-1)

    def _attention(self, li, ly, a, pos):
        hd = self.hd
        q = self._rope(matvec(ly["wq"], a), pos).reshape(self.nh, hd)
        k = self._rope(matvec(ly["wk"], a), pos).reshape(self.nkv, hd)
        v = matvec(ly["wv"], a).reshape(self.nkv, hd)
        self.kc[li, pos] = k
        self.vc[li, pos] = v
        group = self.nh // self.nkv
        scale = F32(math.sqrt(hd))
        out = np.zeros((self.nh, hd), dtype=F32)
        for n in range(self.nh):
            g = n // group
            scores = dot8(self.kc[li, :pos + 1, g, :], q[n]) / scale
            att = softmax(scores)
            acc = np.zeros(hd, dtype=F32)
            for p_ in range(pos + 1):
                acc = acc + att[p_] * self.vc[li, p_, g]
            out[n] = acc
        return matvec(ly["wo"], out.reshape(-1))

    @staticmethod
    def _swiglu(gate: Weight, up: Weight, down: Weight, x: np.ndarray) -> np.ndarray:
        return matvec(down, silu(matvec(gate, x)) * matvec(up, x))

    def _moe(self, li, ly, b):
        m, k = self.m, self.k
        xh = (matvec(ly["head_w"], b) + ly["head_b"]) if self.h > 1 else b
        outs = []
        for j in range(self.h):
            s = xh[j * m:(j + 1) * m]
            if self.router == "softmax":
                logits = matvec(ly["wr"], s)
            else:
                z = matvec(ly["wred"], s)
                logits = dot8(ly["we_norm"], z)
            p = softmax(logits)
            order = sorted(range(self.E), key=lambda e: (-float(p[e]), e))
            chosen = order[:k]
            if k < self.E:
                self.route_log.append(float(p[order[k - 1]]) - float(p[order[k]]))
            gates = [p[e] for e in chosen]
            if self.norm_gates:
                tot = seq_sum(gates)
                gates = [F32(g / tot) for g in gates]
            o = np.zeros(m, dtype=F32)
            for g, e in zip(gates, chosen):
                self.expert_hits[li, e] += 1
                y = self._swiglu(ly["gate_e"][e], ly["up_e"][e], ly["down_e"][e], s)
                o = o + F32(g) * y
            outs.append(o)
        cat = np.concatenate(outs).astype(F32)
        out = (matvec(ly["merge_w"], cat) + ly["merge_b"]) if self.h > 1 else cat
        if self.Fs > 0:
            out = out + self._swiglu(ly["gate_sh"], ly["up_sh"], ly["down_sh"], b)
        return out

    def forward(self, token: int, pos: int) -> np.ndarray:
        if not 0 <= token < self.V:
            raise ValueError(f"token {token} out of range")
        if not 0 <= pos < self.ctx:
            raise ValueError(f"position {pos} outside the context")
        x = self.embd.row(token).astype(F32).copy()
        for li, ly in enumerate(self.layers):
            a = rmsnorm(x, ly["attn_norm"], self.eps)
            x = x + self._attention(li, ly, a, pos)
            b = rmsnorm(x, ly["ffn_norm"], self.eps)
            if ly["moe"]:
                x = x + self._moe(li, ly, b)
            else:
                x = x + self._swiglu(ly["gate"], ly["up"], ly["down"], b)
        return matvec(self.out, rmsnorm(x, self.out_norm, self.eps))


def generate(ref: Reference, prompt: list[int], steps: int):
    """Feed `prompt`, then greedy-decode `steps` tokens (argmax, ties to the lowest id).
    Returns (tokens, logits [len(tokens) - 1, V], margins of the greedy picks)."""
    ref.reset()
    tokens = list(prompt)
    logits_all = []
    margins = []
    n_total = len(prompt) + steps
    for pos in range(n_total - 1):
        logits = ref.forward(tokens[pos], pos)
        logits_all.append(logits)
        if pos >= len(prompt) - 1:
            nxt = int(np.argmax(logits))
            top2 = np.sort(logits.astype(np.float64))[-2:]
            margins.append(float(top2[1] - top2[0]))
            tokens.append(nxt)
    return tokens, np.stack(logits_all).astype(F32), margins


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", default="1,2,3")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    ref = Reference(args.model)
    prompt = [int(x) for x in args.prompt.split(",") if x]
    toks, _, margins = generate(ref, prompt, args.steps)
    print("tokens:", " ".join(map(str, toks)))
    print(f"min greedy margin: {min(margins):.4f}")
    if ref.route_log:
        print(f"min routing gap: {min(ref.route_log):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
