"""PyTorch MH-MoE decoder exactly as FORMAT.md / MHMOE.md describe (training side).

Pre-norm decoder: x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x)); final RMSNorm; tied output.
Attention: no biases, RoPE rotate-half (base 10000) on every q/k head, grouped-query attention.
FFN: dense bias-free SwiGLU, or (layer i with (i+1) % moe_interval == 0) an MH-MoE layer:
head linear (+bias) -> h contiguous sub-tokens of width m = d/h -> per sub-token softmax router
over all E experts (f32) -> top-k (raw gates unless norm_topk) -> bias-free SwiGLU experts on
m-wide vectors, gate-weighted sum -> concat -> merge linear (+bias). h = 1: no head/merge (SMoE).
Experts are dispatched by sorting the (sub-token, choice) pairs by expert and gathering, so each
expert only runs on the sub-tokens routed to it.

Parameter names map 1:1 to GGUF tensor names (see `gguf_tensors`).
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 2048
    context_length: int = 256
    d: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    h: int = 4                 # MH-MoE heads (1 = plain SMoE)
    n_experts: int = 8
    top_k: int = 2
    expert_ff: int = 128       # F
    dense_ff: int = 256        # FF (non-MoE layers)
    moe_interval: int = 2
    norm_topk: bool = False
    rope_base: float = 10000.0
    eps: float = 1e-5
    aux_coef: float = 0.01     # Switch-style load-balancing loss coefficient

    def is_moe(self, i):
        return (i + 1) % self.moe_interval == 0

    @property
    def m(self):
        return self.d // self.h

    @property
    def head_dim(self):
        return self.d // self.n_heads

    def validate(self):
        assert self.d % self.n_heads == 0 and self.head_dim % 2 == 0
        assert self.n_heads % self.n_kv_heads == 0
        assert self.d % self.h == 0 and 1 <= self.top_k <= self.n_experts
        for w in (self.d, self.m, self.expert_ff) + ((self.dense_ff,) if self.dense_ff else ()):
            assert w % 32 == 0, "matrix input widths must be multiples of 32 (got %d)" % w
        if any(not self.is_moe(i) for i in range(self.n_layers)):
            assert self.dense_ff > 0
        return self

    def to_dict(self):
        return asdict(self)


def param_counts(cfg):
    """(total weights, active weights per token) counting every tensor element, matching the
    GGUF tensors. 'Active' counts a token's attention, dense FFN, head/merge, router, and k experts
    per sub-token (h*k expert applications), embedding row and tied output matrix."""
    d, V, m = cfg.d, cfg.vocab_size, cfg.m
    hd = cfg.head_dim
    total = V * d + d  # embedding (tied output) + output norm
    active = V * d + d
    for i in range(cfg.n_layers):
        attn = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2 + 2 * d
        total += attn
        active += attn
        if cfg.is_moe(i):
            hm = (2 * d * d + 2 * d) if cfg.h > 1 else 0
            router = m * cfg.n_experts
            expert = 3 * m * cfg.expert_ff
            total += hm + router + cfg.n_experts * expert
            active += hm + router + cfg.h * cfg.top_k * expert
        else:
            total += 3 * d * cfg.dense_ff
            active += 3 * d * cfg.dense_ff
    return total, active


def estimate_gguf_bytes(cfg, quant="q8_0", tokens=None, merges=None):
    """Upper-ish estimate of the GGUF file size: matrices at `quant`, 1-D tensors f32, plus the
    tokenizer metadata and per-tensor headers."""
    per = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}[quant]
    size = 0
    for name, shape in gguf_shapes(cfg):
        n = 1
        for s in shape:
            n *= s
        size += n * 4 if len(shape) == 1 else math.ceil(n * per)
        size += 32 + len(name) + 8 * len(shape) + 16 + 31  # header + alignment padding
    if tokens is not None:
        size += sum(8 + len(t.encode("utf-8")) for t in tokens)
        size += sum(8 + len(mm.encode("utf-8")) for mm in merges)
    else:
        size += 52000
    return int(size) + 2048  # other metadata keys


def gguf_shapes(cfg):
    """(GGUF name, numpy shape (outermost first)) for every tensor of the model."""
    d, V, m, E, Fx = cfg.d, cfg.vocab_size, cfg.m, cfg.n_experts, cfg.expert_ff
    hd = cfg.head_dim
    out = [("token_embd.weight", (V, d)), ("output_norm.weight", (d,))]
    for i in range(cfg.n_layers):
        p = "blk.%d." % i
        out += [(p + "attn_norm.weight", (d,)), (p + "attn_q.weight", (cfg.n_heads * hd, d)),
                (p + "attn_k.weight", (cfg.n_kv_heads * hd, d)),
                (p + "attn_v.weight", (cfg.n_kv_heads * hd, d)),
                (p + "attn_output.weight", (d, cfg.n_heads * hd)), (p + "ffn_norm.weight", (d,))]
        if cfg.is_moe(i):
            if cfg.h > 1:
                out += [(p + "ffn_head.weight", (d, d)), (p + "ffn_head.bias", (d,)),
                        (p + "ffn_merge.weight", (d, d)), (p + "ffn_merge.bias", (d,))]
            out += [(p + "ffn_gate_inp.weight", (E, m)), (p + "ffn_gate_exps.weight", (E, Fx, m)),
                    (p + "ffn_up_exps.weight", (E, Fx, m)), (p + "ffn_down_exps.weight", (E, m, Fx))]
        else:
            out += [(p + "ffn_gate.weight", (cfg.dense_ff, d)), (p + "ffn_up.weight", (cfg.dense_ff, d)),
                    (p + "ffn_down.weight", (d, cfg.dense_ff))]
    return out


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(cfg, T, device):
    hd = cfg.head_dim
    j = torch.arange(hd // 2, dtype=torch.float64, device=device)
    inv = cfg.rope_base ** (-2.0 * j / hd)
    ang = torch.arange(T, dtype=torch.float64, device=device)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(z, cos, sin):
    # z: (B, H, T, hd); rotate-half pairs (z[j], z[j + hd/2])
    half = z.shape[-1] // 2
    u, w = z[..., :half], z[..., half:]
    return torch.cat([u * cos - w * sin, u * sin + w * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q = nn.Linear(cfg.d, cfg.n_heads * hd, bias=False)
        self.k = nn.Linear(cfg.d, cfg.n_kv_heads * hd, bias=False)
        self.v = nn.Linear(cfg.d, cfg.n_kv_heads * hd, bias=False)
        self.o = nn.Linear(cfg.n_heads * hd, cfg.d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        c = self.cfg
        hd = c.head_dim
        q = self.q(x).view(B, T, c.n_heads, hd).transpose(1, 2)
        k = self.k(x).view(B, T, c.n_kv_heads, hd).transpose(1, 2)
        v = self.v(x).view(B, T, c.n_kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if c.n_kv_heads != c.n_heads:
            rep = c.n_heads // c.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, c.n_heads * hd))


class DenseFFN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate = nn.Linear(cfg.d, cfg.dense_ff, bias=False)
        self.up = nn.Linear(cfg.d, cfg.dense_ff, bias=False)
        self.down = nn.Linear(cfg.dense_ff, cfg.d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x)), None


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        m, E, Fx = cfg.m, cfg.n_experts, cfg.expert_ff
        if cfg.h > 1:
            self.head = nn.Linear(cfg.d, cfg.d, bias=True)
            self.merge = nn.Linear(cfg.d, cfg.d, bias=True)
        self.router = nn.Linear(m, E, bias=False)
        # GGUF layout: gate/up (E, F, m), down (E, m, F)
        self.w_gate = nn.Parameter(torch.empty(E, Fx, m))
        self.w_up = nn.Parameter(torch.empty(E, Fx, m))
        self.w_down = nn.Parameter(torch.empty(E, m, Fx))
        self.last_counts = None
        self.last_topi = None

    def forward(self, x):
        c = self.cfg
        shp = x.shape
        xh = self.head(x) if c.h > 1 else x
        s = xh.reshape(-1, c.m)                      # (N*h, m), sub-token j of a token is row j
        logits = self.router(s).float()
        p = torch.softmax(logits, dim=-1)
        topv, topi = torch.topk(p, c.top_k, dim=-1)  # descending
        if c.norm_topk:
            topv = topv / topv.sum(-1, keepdim=True)
        n = s.shape[0]
        flat_e = topi.reshape(-1)
        order = torch.argsort(flat_e, stable=True)
        counts = torch.bincount(flat_e, minlength=c.n_experts)
        rows = order // c.top_k                      # sub-token of each sorted assignment
        xs = s[rows]
        gates = topv.reshape(-1)[order].to(s.dtype)
        out = torch.zeros_like(s)
        start = 0
        cl = counts.tolist()
        pieces = []
        for e in range(c.n_experts):
            ne = cl[e]
            if ne == 0:
                continue
            xe = xs[start:start + ne]
            he = F.silu(xe @ self.w_gate[e].t()) * (xe @ self.w_up[e].t())
            pieces.append(he @ self.w_down[e].t())
            start += ne
        ys = torch.cat(pieces, 0) * gates[:, None]
        out = out.index_add(0, rows, ys)
        out = out.reshape(shp)
        if c.h > 1:
            out = self.merge(out)
        # Switch-style load balancing: E * sum_e f_e * P_e, f_e = share of the n*k assignments
        f = counts.float() / float(n * c.top_k)
        P = p.mean(0)
        aux = c.n_experts * torch.sum(f * P)
        self.last_counts = counts.detach()
        self.last_topi = topi.detach()
        return out, aux


class Block(nn.Module):
    def __init__(self, cfg, i):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d, cfg.eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d, cfg.eps)
        self.ffn = MoE(cfg) if cfg.is_moe(i) else DenseFFN(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        y, aux = self.ffn(self.ffn_norm(x))
        return x + y, aux


class MHMoEModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg.validate()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d, cfg.eps)
        self._rope = None
        self.reset_parameters()

    def reset_parameters(self):
        std = 0.02
        resid_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("norm.weight"):
                    nn.init.ones_(p)
                else:
                    nn.init.zeros_(p)
            elif name.endswith(("attn.o.weight", "ffn.down.weight", "w_down", "merge.weight")):
                nn.init.normal_(p, 0.0, resid_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def rope(self, T, device):
        if self._rope is None or self._rope[0].shape[0] < T or self._rope[0].device != device:
            self._rope = rope_tables(self.cfg, max(T, self.cfg.context_length), device)
        cos, sin = self._rope
        return cos[:T], sin[:T]

    def forward(self, idx):
        B, T = idx.shape
        cos, sin = self.rope(T, idx.device)
        x = self.embed(idx)
        aux_total = x.new_zeros(())
        for blk in self.blocks:
            x, aux = blk(x, cos, sin)
            if aux is not None:
                aux_total = aux_total + aux
        x = self.norm(x)
        logits = x @ self.embed.weight.t()
        return logits, aux_total

    def gguf_tensors(self):
        """{GGUF name: float32 numpy array in GGUF (outermost-first) shape}."""
        c = self.cfg
        sd = {k: v.detach().float().cpu().numpy() for k, v in self.state_dict().items()}
        out = {"token_embd.weight": sd["embed.weight"], "output_norm.weight": sd["norm.weight"]}
        for i in range(c.n_layers):
            p, q = "blk.%d." % i, "blocks.%d." % i
            out[p + "attn_norm.weight"] = sd[q + "attn_norm.weight"]
            out[p + "attn_q.weight"] = sd[q + "attn.q.weight"]
            out[p + "attn_k.weight"] = sd[q + "attn.k.weight"]
            out[p + "attn_v.weight"] = sd[q + "attn.v.weight"]
            out[p + "attn_output.weight"] = sd[q + "attn.o.weight"]
            out[p + "ffn_norm.weight"] = sd[q + "ffn_norm.weight"]
            if c.is_moe(i):
                if c.h > 1:
                    out[p + "ffn_head.weight"] = sd[q + "ffn.head.weight"]
                    out[p + "ffn_head.bias"] = sd[q + "ffn.head.bias"]
                    out[p + "ffn_merge.weight"] = sd[q + "ffn.merge.weight"]
                    out[p + "ffn_merge.bias"] = sd[q + "ffn.merge.bias"]
                out[p + "ffn_gate_inp.weight"] = sd[q + "ffn.router.weight"]
                out[p + "ffn_gate_exps.weight"] = sd[q + "ffn.w_gate"]
                out[p + "ffn_up_exps.weight"] = sd[q + "ffn.w_up"]
                out[p + "ffn_down_exps.weight"] = sd[q + "ffn.w_down"]
            else:
                out[p + "ffn_gate.weight"] = sd[q + "ffn.gate.weight"]
                out[p + "ffn_up.weight"] = sd[q + "ffn.up.weight"]
                out[p + "ffn_down.weight"] = sd[q + "ffn.down.weight"]
        shapes = dict(gguf_shapes(c))
        assert set(shapes) == set(out), set(shapes) ^ set(out)
        for k, v in out.items():
            assert tuple(v.shape) == tuple(shapes[k]), (k, v.shape, shapes[k])
        return out
