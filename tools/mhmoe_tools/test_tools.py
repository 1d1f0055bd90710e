"""Checks of the Python tooling. Run: python3 tools/check.py (or, from tools/,
python3 -m unittest mhmoe_tools.test_tools)."""

from __future__ import annotations

import filecmp
import math
import struct
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

from . import bpe, gen_model, gen_test_models, make_goldens, reference, to_llama, writer
from .requantize import requantize

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "tests" / "models"
GOLDEN_DIR = ROOT / "tests" / "golden"
MODEL_NAMES = [s.name for s in gen_test_models.MODELS]

# FORMAT.md metadata keys and their GGUF types (required ones marked True)
FORMAT_KEYS = {
    "general.architecture": (VT.STRING, True),
    "general.alignment": (VT.UINT32, False),
    "mhmoe.context_length": (VT.UINT32, True),
    "mhmoe.embedding_length": (VT.UINT32, True),
    "mhmoe.block_count": (VT.UINT32, True),
    "mhmoe.feed_forward_length": (VT.UINT32, True),
    "mhmoe.attention.head_count": (VT.UINT32, True),
    "mhmoe.attention.head_count_kv": (VT.UINT32, True),
    "mhmoe.attention.layer_norm_rms_epsilon": (VT.FLOAT32, True),
    "mhmoe.rope.freq_base": (VT.FLOAT32, True),
    "mhmoe.expert_count": (VT.UINT32, True),
    "mhmoe.expert_used_count": (VT.UINT32, True),
    "mhmoe.expert_feed_forward_length": (VT.UINT32, True),
    "mhmoe.expert_weights_norm": (VT.BOOL, True),
    "mhmoe.expert_shared_feed_forward_length": (VT.UINT32, False),
    "mhmoe.moe.head_count": (VT.UINT32, True),
    "mhmoe.moe.layer_interval": (VT.UINT32, True),
    "mhmoe.moe.router": (VT.STRING, True),
    "tokenizer.ggml.model": (VT.STRING, True),
    "tokenizer.ggml.pre": (VT.STRING, True),
    "tokenizer.ggml.tokens": (VT.ARRAY, True),
    "tokenizer.ggml.merges": (VT.ARRAY, True),
    "tokenizer.ggml.bos_token_id": (VT.UINT32, False),
    "tokenizer.ggml.eos_token_id": (VT.UINT32, False),
    "tokenizer.mhmoe.token_offsets": (VT.ARRAY, False),
    "tokenizer.mhmoe.sorted_ids": (VT.ARRAY, False),
    "tokenizer.mhmoe.merge_table": (VT.ARRAY, False),
    "tokenizer.mhmoe.byte_tokens": (VT.ARRAY, False),
}


def model_path(name: str) -> Path:
    return MODELS_DIR / f"{name}.gguf"


# ------------------------------------------------------------------------------------------------
# A second, deliberately plain forward pass in float64 (weights from gguf.quants.dequantize,
# activations quantized with gguf.quants.quantize where the weight is Q8_0/Q4_0). It shares no
# code with reference.py, so the two checking each other catches slips in either.

def naive_logits(path: Path, tokens: list[int]) -> np.ndarray:
    r = gguf.GGUFReader(str(path))
    md = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}
    W, T = {}, {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        W[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape)
        T[t.name] = t.tensor_type
    d, L = md["mhmoe.embedding_length"], md["mhmoe.block_count"]
    nh, nkv = md["mhmoe.attention.head_count"], md["mhmoe.attention.head_count_kv"]
    E, k, h = md["mhmoe.expert_count"], md["mhmoe.expert_used_count"], md["mhmoe.moe.head_count"]
    eps, base = md["mhmoe.attention.layer_norm_rms_epsilon"], md["mhmoe.rope.freq_base"]
    interval, router = md["mhmoe.moe.layer_interval"], md["mhmoe.moe.router"]
    renorm, Fs = md["mhmoe.expert_weights_norm"], md.get("mhmoe.expert_shared_feed_forward_length", 0)
    hd, m = d // nh, d // h

    def lin(name, x, e=None):
        w = W[name] if e is None else W[name][e]
        if T[name] in (QT.Q8_0, QT.Q4_0):
            q = gguf.quants.quantize(x.astype(np.float32)[None, :], QT.Q8_0)
            x = gguf.quants.dequantize(q, QT.Q8_0).astype(np.float64)[0]
        return w @ x

    def norm(x, w):
        return x / math.sqrt(np.mean(x * x) + eps) * w

    def silu(z):
        return z / (1 + np.exp(-z))

    def rope(z, pos):
        z = z.reshape(-1, hd).copy()
        half = hd // 2
        th = pos * base ** (-2 * np.arange(half) / hd)
        u, w = z[:, :half].copy(), z[:, half:].copy()
        z[:, :half], z[:, half:] = u * np.cos(th) - w * np.sin(th), u * np.sin(th) + w * np.cos(th)
        return z

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    out_w = "output.weight" if "output.weight" in W else "token_embd.weight"
    K = [[] for _ in range(L)]
    Vc = [[] for _ in range(L)]
    logits = []
    for pos, tok in enumerate(tokens):
        x = W["token_embd.weight"][tok].copy()
        for i in range(L):
            p = f"blk.{i}."
            a = norm(x, W[p + "attn_norm.weight"])
            q = rope(lin(p + "attn_q.weight", a), pos)
            K[i].append(rope(lin(p + "attn_k.weight", a), pos))
            Vc[i].append(lin(p + "attn_v.weight", a).reshape(nkv, hd))
            att = np.zeros((nh, hd))
            for n in range(nh):
                g = n // (nh // nkv)
                ks = np.stack([kk[g] for kk in K[i]])
                vs = np.stack([vv[g] for vv in Vc[i]])
                att[n] = softmax(ks @ q[n] / math.sqrt(hd)) @ vs
            x = x + lin(p + "attn_output.weight", att.reshape(-1))
            b = norm(x, W[p + "ffn_norm.weight"])
            if (i + 1) % interval:
                x = x + lin(p + "ffn_down.weight", silu(lin(p + "ffn_gate.weight", b)) * lin(p + "ffn_up.weight", b))
                continue
            xh = lin(p + "ffn_head.weight", b) + W[p + "ffn_head.bias"] if h > 1 else b
            o = np.zeros(d)
            for j in range(h):
                s = xh[j * m:(j + 1) * m]
                if router == "softmax":
                    lg = lin(p + "ffn_gate_inp.weight", s)
                else:
                    we = W[p + "ffn_gate_inp.weight"]
                    we = we / np.maximum(np.linalg.norm(we, axis=1), 1e-4)[:, None]
                    lg = we @ lin(p + "ffn_gate_inp_red.weight", s)
                pr = softmax(lg)
                top = sorted(range(E), key=lambda e_: (-pr[e_], e_))[:k]
                gates = pr[top] / pr[top].sum() if renorm else pr[top]
                for g, e in zip(gates, top):
                    y = lin(p + "ffn_down_exps.weight",
                            silu(lin(p + "ffn_gate_exps.weight", s, e)) * lin(p + "ffn_up_exps.weight", s, e), e)
                    o[j * m:(j + 1) * m] += g * y
            out = lin(p + "ffn_merge.weight", o) + W[p + "ffn_merge.bias"] if h > 1 else o
            if Fs:
                out = out + lin(p + "ffn_down_shexp.weight",
                                silu(lin(p + "ffn_gate_shexp.weight", b)) * lin(p + "ffn_up_shexp.weight", b))
            x = x + out
        logits.append(lin(out_w, norm(x, W["output_norm.weight"])))
    return np.stack(logits)


# ------------------------------------------------------------------------------------------------

class CommittedFiles(unittest.TestCase):
    def test_models_regenerate_byte_for_byte(self):
        with tempfile.TemporaryDirectory() as tmp:
            for s in gen_test_models.MODELS:
                gen_test_models.write_model(s, Path(tmp))
            gen_test_models.write_dequant_vectors(Path(tmp))
            for name in MODEL_NAMES + ["dequant_vectors"]:
                with self.subTest(name=name):
                    self.assertTrue(filecmp.cmp(Path(tmp) / f"{name}.gguf", model_path(name), shallow=False),
                                    f"{name}.gguf differs from a fresh generation")

    def test_goldens_regenerate_byte_for_byte(self):
        with tempfile.TemporaryDirectory() as tmp:
            make_goldens.make_all(MODELS_DIR, Path(tmp), verbose=False)
            names = [f"{n}.golden" for n in MODEL_NAMES] + ["tokenizer_cases.txt", "summary.txt"]
            for fn in names:
                with self.subTest(file=fn):
                    self.assertTrue(filecmp.cmp(Path(tmp) / fn, GOLDEN_DIR / fn, shallow=False),
                                    f"{fn} differs from a fresh run of make_goldens")

    def test_no_stray_files(self):
        want = {f"{n}.gguf" for n in MODEL_NAMES} | {"dequant_vectors.gguf"}
        self.assertEqual({p.name for p in MODELS_DIR.glob("*.gguf")}, want)
        want = {f"{n}.golden" for n in MODEL_NAMES}
        self.assertEqual({p.name for p in GOLDEN_DIR.glob("*.golden")}, want)


class GgufFiles(unittest.TestCase):
    def test_every_file_loads_and_decodes_like_gguf(self):
        for p in sorted(MODELS_DIR.glob("*.gguf")):
            with self.subTest(file=p.name):
                r = gguf.GGUFReader(str(p))
                self.assertGreater(len(r.tensors), 0)
                self.assertEqual(reference.check_decoding(p), [])

    def test_metadata_keys_and_types(self):
        for name in MODEL_NAMES:
            r = gguf.GGUFReader(str(model_path(name)))
            for key, (vt, required) in FORMAT_KEYS.items():
                with self.subTest(model=name, key=key):
                    f = r.get_field(key)
                    if f is None:
                        self.assertFalse(required, f"missing {key}")
                        continue
                    self.assertEqual(f.types[0], vt)
                    if vt == VT.ARRAY:
                        elem = VT.UINT32 if key.startswith("tokenizer.mhmoe.") else VT.STRING
                        self.assertEqual(f.types[-1], elem)
            self.assertEqual(r.get_field("general.architecture").contents(), "mhmoe")
            self.assertEqual(r.get_field("tokenizer.ggml.pre").contents(), "mhmoe-space")
            for t in r.tensors:
                if len(t.shape) == 1:
                    self.assertEqual(t.tensor_type, QT.F32, t.name)

    def test_weight_types_as_specified(self):
        def types(name):
            return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(model_path(name))).tensors}
        self.assertEqual(set(types("a_f32_h2_k2_gqa").values()), {"F32"})
        self.assertEqual(set(types("b_f16_h4_k1_untied").values()), {"F16", "F32"})
        self.assertEqual(set(types("c_bf16_h1_k2_norm").values()), {"BF16", "F32"})
        self.assertEqual(set(types("e_q4_0_h2_k2_shexp").values()), {"Q4_0", "F32"})
        t = types("h_mixed_h2_k3")
        self.assertEqual(t["token_embd.weight"], "Q8_0")
        self.assertEqual(t["blk.0.attn_q.weight"], "Q4_0")
        self.assertEqual(t["blk.1.ffn_gate_exps.weight"], "Q8_0")
        self.assertEqual(t["blk.1.ffn_gate_inp.weight"], "F16")
        self.assertEqual(set(t.values()), {"F32", "F16", "BF16", "Q8_0", "Q4_0"})

    def test_dequant_vectors(self):
        r = gguf.GGUFReader(str(MODELS_DIR / "dequant_vectors.gguf"))
        ts = {t.name: t for t in r.tensors}
        for name, qt in [("f16", QT.F16), ("bf16", QT.BF16), ("q8_0", QT.Q8_0), ("q4_0", QT.Q4_0)]:
            with self.subTest(name=name):
                t, e = ts[name], ts[name + ".expected"]
                self.assertEqual(t.tensor_type, qt)
                self.assertEqual(e.tensor_type, QT.F32)
                raw = np.asarray(r.data[t.data_offset:t.data_offset + t.n_bytes])
                mine = reference.decode_tensor(raw, qt, int(t.n_elements), int(t.shape[0])).dequant()
                exp = np.asarray(e.data, dtype=np.float32).reshape(mine.shape)
                self.assertTrue(np.array_equal(mine.view(np.uint32), exp.view(np.uint32)))
        # the edge cases are really there
        self.assertTrue(np.isnan(ts["f16.expected"].data).any() and np.isinf(ts["f16.expected"].data).any())
        self.assertTrue(np.isnan(ts["bf16.expected"].data).any() and np.isinf(ts["bf16.expected"].data).any())
        q8 = np.asarray(ts["q8_0.expected"].data)
        self.assertIn(65504.0 * 127, q8)
        self.assertTrue(np.signbit(q8[q8 == 0]).any() and (~np.signbit(q8[q8 == 0])).any())


class Kernels(unittest.TestCase):
    def test_round_half_away_from_zero(self):
        v = np.array([0.5, -0.5, 1.5, -1.5, 2.5, 0.49999997, -0.49999997, 126.5, -126.5, 0.0, 3.0],
                     dtype=np.float32)
        self.assertEqual(reference.round_half_away(v).tolist(),
                         [1, -1, 2, -2, 3, 0, -0.0, 127, -127, 0, 3])

    def test_activation_quantization_matches_ggml(self):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((50, 64)).astype(np.float32) * rng.uniform(1e-3, 100, (50, 1)).astype(np.float32)
        x[0, :32] = 0.0
        x[1, :32] = np.float32(127.0)
        x[1, 5] = np.float32(63.5)
        x[2, :32] = np.linspace(-127, 127, 32).astype(np.float32) * np.float32(0.49999997 / 63.5)
        for row in x:
            q, dx = reference.quantize_q8_0(row)
            ggml = gguf.quants.quantize(row, QT.Q8_0).reshape(-1, 34)
            self.assertTrue(np.array_equal(q, ggml[:, 2:].view(np.int8)))
            self.assertTrue(np.array_equal(dx, ggml[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)))

    def test_dot8_and_qdot_close_to_float64(self):
        rng = np.random.default_rng(1)
        w = rng.standard_normal((5, 96)).astype(np.float32)
        x = rng.standard_normal(96).astype(np.float32)
        self.assertTrue(np.allclose(reference.dot8(w, x), w.astype(np.float64) @ x, atol=1e-4))
        w13 = w[:, :13]  # tail shorter than 8 lanes
        self.assertTrue(np.allclose(reference.dot8(w13, x[:13]), w13.astype(np.float64) @ x[:13], atol=1e-5))
        for qt in (QT.Q8_0, QT.Q4_0):
            raw = gguf.quants.quantize(w, qt)
            W = reference.decode_tensor(raw, qt, w.size, 96)
            xq = gguf.quants.dequantize(gguf.quants.quantize(x, QT.Q8_0), QT.Q8_0).astype(np.float64)
            expect = W.dequant().astype(np.float64) @ xq
            self.assertTrue(np.allclose(reference.matvec(W, x), expect, rtol=1e-5, atol=1e-5))


class Tokenizer(unittest.TestCase):
    def setUp(self):
        self.tokens, self.merges = gen_test_models.tokenizer()
        self.tok = bpe.Tokenizer(self.tokens, self.merges)

    def test_byte_map(self):
        m = bpe.bytes_to_unicode()
        self.assertEqual(len(set(m.values())), 256)
        self.assertEqual(m[0x20], "\u0120")
        self.assertEqual(m[ord("a")], "a")

    def test_pretokenize(self):
        self.assertEqual(bpe.pretokenize(b"a bc  d"), [b"a", b" bc", b" ", b" d"])
        self.assertEqual(bpe.pretokenize(b" x"), [b" x"])
        self.assertEqual(bpe.pretokenize(b""), [])
        self.assertEqual(bpe.pretokenize(b"a\nb c"), [b"a\nb", b" c"])

    def test_round_trip(self):
        rng = np.random.default_rng(3)
        samples = make_goldens.TOKENIZER_CASES + [gen_test_models.SAMPLE_TEXT]
        samples += [bytes(rng.integers(0, 256, int(n)).astype(np.uint8)) for n in rng.integers(0, 40, 30)]
        for s in samples:
            data = s.encode("utf-8") if isinstance(s, str) else s
            self.assertEqual(self.tok.decode(self.tok.encode(data)), data)

    def test_merges_used_and_rank_order(self):
        ids = self.tok.encode(" the robot")
        self.assertEqual([self.tokens[i] for i in ids], ["\u0120the", "\u0120robot"])
        # leftmost first on equal rank, lowest rank first
        t = bpe.Tokenizer(bpe.build_vocab(["a a", "aa a"]), ["a a", "aa a"])
        self.assertEqual(t.encode("aaa"), [257])           # (aa)a, then (aaa)
        self.assertEqual(t.encode("aaaa"), [256, 256])     # leftmost "a a" first: (aa)(aa)
        t = bpe.Tokenizer(bpe.build_vocab(["a a", "b a"]), ["a a", "b a"])
        self.assertEqual(t.encode("baa"), [97 + 1, 256])   # rank beats position: b(aa)
        t = bpe.Tokenizer(bpe.build_vocab(["b c", "a b"]), ["b c", "a b"])
        self.assertEqual(t.encode("abc"), [97, 256])

    def test_cases_file(self):
        lines = [ln for ln in (GOLDEN_DIR / "tokenizer_cases.txt").read_text().splitlines()
                 if ln and not ln.startswith("#")]
        self.assertEqual(len(lines), len(make_goldens.TOKENIZER_CASES))
        for ln in lines:
            f = ln.split(" ")
            data = b"" if f[0] == "-" else bytes.fromhex(f[0])
            ids = [int(x) for x in f[1:]]
            self.assertEqual(self.tok.encode(data), ids)
            self.assertEqual(self.tok.decode(ids), data)


    def test_lookup_tables(self):
        """writer.make_tokenizer_tables against a plain recomputation, the tables stored in the
        test models, and the vocabularies it must refuse."""
        t = writer.make_tokenizer_tables(self.tokens, self.merges)
        self.assertEqual(list(t), list(writer.TOKENIZER_TABLE_KEYS))
        offsets, sorted_ids, table, byte_tokens = t.values()
        V, M = len(self.tokens), len(self.merges)
        self.assertEqual((len(offsets), len(sorted_ids), len(table), len(byte_tokens)), (V + 1, V, 4 * M, 256))
        for i, tok in enumerate(self.tokens):
            self.assertEqual(offsets[i + 1] - offsets[i], 8 + len(tok.encode("utf-8")))
        strings = [self.tokens[i].encode("utf-8") for i in sorted_ids]
        self.assertEqual(sorted(sorted_ids), list(range(V)))
        self.assertTrue(all(a < b for a, b in zip(strings, strings[1:])))
        entries = [table[i:i + 4] for i in range(0, len(table), 4)]
        self.assertEqual(entries, sorted(entries))
        for left, right, rank, merged in entries:
            self.assertEqual(self.merges[rank], f"{self.tokens[left]} {self.tokens[right]}")
            self.assertEqual(self.tokens[merged], self.tokens[left] + self.tokens[right])
        self.assertEqual(byte_tokens, list(range(256)))  # the test vocabulary's byte tokens
        for name in MODEL_NAMES:
            r = gguf.GGUFReader(str(model_path(name)))
            spec = next(s for s in gen_test_models.MODELS if s.name == name)
            with self.subTest(model=name):
                for key, want in t.items():
                    f = r.get_field(key)
                    if not spec.tables:
                        self.assertIsNone(f)
                        continue
                    self.assertEqual([int(v) for v in f.contents()], want)
        bad = [
            (self.tokens + [self.tokens[260]], self.merges),                 # a repeated token
            ([t for t in self.tokens if t != "a"], []),                      # no byte token "a"
            (self.tokens, self.merges + ["Ġt"]),                        # no space
            (self.tokens, self.merges + ["x Ġxyz"]),                    # unknown right token
            (self.tokens, self.merges + ["x y"]),                            # "xy" is no token
            (self.tokens, self.merges + [self.merges[0]]),                   # repeated merge
        ]
        for tokens, merges in bad:
            with self.assertRaises(ValueError):
                writer.make_tokenizer_tables(tokens, merges)


class Goldens(unittest.TestCase):
    def test_format_and_greedy(self):
        for name in MODEL_NAMES:
            with self.subTest(model=name):
                V, n_prompt, tokens, logits = make_goldens.read_golden(GOLDEN_DIR / f"{name}.golden")
                self.assertEqual((n_prompt, len(tokens)), (6, 40))
                self.assertEqual(tokens[:6], make_goldens.PROMPTS[name])
                self.assertEqual(V, len(gen_test_models.tokenizer()[0]))
                self.assertTrue(max(tokens) < V and np.isfinite(logits).all())
                for p in range(n_prompt - 1, len(tokens) - 1):
                    self.assertEqual(int(np.argmax(logits[p])), tokens[p + 1])
                    top2 = np.sort(logits[p])[-2:]
                    self.assertGreaterEqual(top2[1] - top2[0], make_goldens.MIN_MARGIN)

    def test_reference_agrees_with_naive_float64(self):
        # Float models agree to ~1e-5. In models with Q8_0/Q4_0 weights an activation element
        # close to a rounding boundary of the Q8_0 activation quantization can round differently
        # in float64 than in float32; such a flip moves the logits by up to a few 1e-2 from then
        # on, so there only most positions must agree tightly.
        for name in MODEL_NAMES:
            with self.subTest(model=name):
                _, _, tokens, logits = make_goldens.read_golden(GOLDEN_DIR / f"{name}.golden")
                naive = naive_logits(model_path(name), tokens[:-1])
                err = np.max(np.abs(naive - logits), axis=1)
                self.assertTrue((naive.argmax(1)[5:] == np.array(tokens[6:])).all())
                types = {t.tensor_type for t in gguf.GGUFReader(str(model_path(name))).tensors}
                if types & {QT.Q8_0, QT.Q4_0}:
                    self.assertLess(float(err.max()), 0.1)
                    self.assertGreaterEqual(float(np.mean(err < 1e-4)), 0.75, err)
                else:
                    self.assertLess(float(err.max()), 1e-4)


class Writer(unittest.TestCase):
    def test_requantize(self):
        src = model_path("a_f32_h2_k2_gqa")
        with tempfile.TemporaryDirectory() as tmp:
            same = Path(tmp) / "same.gguf"
            requantize(src, same, "F32")
            self.assertTrue(filecmp.cmp(src, same, shallow=False))
            # The tokenizer tables: kept as the input has them, or added / dropped on request,
            # with nothing else changed (c_bf16 is the test model without them).
            bare, plain = Path(tmp) / "bare.gguf", model_path("c_bf16_h1_k2_norm")
            requantize(src, bare, "F32", tokenizer_tables=False)
            self.assertFalse(writer.read_mhmoe_gguf(bare).tokenizer_tables)
            self.assertTrue(writer.read_mhmoe_gguf(src).tokenizer_tables)
            self.assertLess(bare.stat().st_size, src.stat().st_size)
            requantize(bare, same, "F32", tokenizer_tables=True)
            self.assertTrue(filecmp.cmp(src, same, shallow=False))
            requantize(plain, same, "BF16")
            self.assertTrue(filecmp.cmp(plain, same, shallow=False))
            for t in ("F16", "BF16", "Q8_0", "Q4_0"):
                out = Path(tmp) / f"{t}.gguf"
                written = requantize(src, out, t)
                self.assertEqual({v for k, v in written.items() if k.endswith(".weight") and "norm" not in k}, {t})
                back = writer.read_mhmoe_gguf(out)
                orig = writer.read_mhmoe_gguf(src)
                self.assertEqual(back.config, orig.config)
                self.assertEqual((back.tokens, back.merges, back.bos_token_id), (orig.tokens, orig.merges, orig.bos_token_id))
                self.assertEqual(reference.check_decoding(out), [])
                ref = reference.Reference(out)
                self.assertEqual(ref.forward(5, 0).shape, (ref.V,))
            # fallback: m = 16 experts cannot be block-quantized
            out = Path(tmp) / "b_q8.gguf"
            written = requantize(model_path("b_f16_h4_k1_untied"), out, "Q8_0")
            self.assertEqual(written["blk.1.ffn_gate_exps.weight"], "F32")
            self.assertEqual(written["blk.1.ffn_down_exps.weight"], "Q8_0")

    def test_writer_rejects_bad_input(self):
        f = writer.read_mhmoe_gguf(model_path("a_f32_h2_k2_gqa"))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "x.gguf"
            t = dict(f.tensors)
            del t["blk.1.ffn_merge.bias"]
            with self.assertRaises(ValueError):
                writer.write_mhmoe_gguf(out, f.config, t, f.tokens, f.merges)
            t = dict(f.tensors)
            t["blk.0.attn_k.weight"] = t["blk.0.attn_k.weight"].T.copy()
            with self.assertRaises(ValueError):
                writer.write_mhmoe_gguf(out, f.config, t, f.tokens, f.merges)
            t = dict(f.tensors)
            t["blk.0.ffn_head.weight"] = t["blk.1.ffn_head.weight"]  # reserved name, unused here
            with self.assertRaises(ValueError):
                writer.write_mhmoe_gguf(out, f.config, t, f.tokens, f.merges, allow_extra=True)
            with self.assertRaises(ValueError):
                writer.write_mhmoe_gguf(out, f.config, f.tensors, f.tokens[:-1], f.merges)


def _gen(argv):
    """gen_model's command line, its output captured; returns (exit code, output)."""
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = gen_model.main(argv)
    return code, buf.getvalue()


def _gen_args(out, **kw):
    base = dict(dim=64, layers=2, heads=4, experts=4, top_k=2, expert_ff=64, vocab=300, ctx=32, type="Q8_0")
    base.update(kw)
    args = [str(out)]
    for k, v in base.items():
        flag = "--" + k.replace("_", "-")
        args += [flag] if v is True else [flag, str(v)]
    return args


class GenModel(unittest.TestCase):
    """tools/gen_model.py: random-weight models of any size (tiny ones here)."""

    CASES = [  # (gen_model options, expected type of the experts' gate matrix)
        (dict(), "Q8_0"),
        (dict(moe_heads=2, type="Q4_0", kv_heads=2), "Q4_0"),               # m = 32
        (dict(moe_heads=4, type="Q8_0", top_k=1, raw_gates=True), "F16"),   # m = 16: F16 fallback
        (dict(type="F16", router="xmoe", moe_interval=2, ff=96, shared_ff=32, untied_output=True), "F16"),
    ]

    def test_models_load_and_run_in_the_reference(self):
        with tempfile.TemporaryDirectory() as tmp:
            for i, (opts, expert_type) in enumerate(self.CASES):
                out = Path(tmp) / f"m{i}.gguf"
                args = gen_model.parser().parse_args(_gen_args(out, **opts))
                args.kv_heads = args.kv_heads or args.heads
                p = gen_model.plan(gen_model.config_from_args(args), args.vocab, args.type,
                                   args.router_type, tied=not args.untied_output)
                size = gen_model.write_model(out, p, seed=i)
                self.assertEqual(size, out.stat().st_size)
                f = writer.read_mhmoe_gguf(out)
                self.assertAlmostEqual(f.config.layer_norm_rms_epsilon, 1e-5, places=12)
                self.assertEqual(dataclasses_replace(f.config, layer_norm_rms_epsilon=1e-5), p.config)
                self.assertEqual(len(f.tokens), 300)
                layer = "blk.1." if opts.get("moe_interval", 1) == 2 else "blk.0."
                self.assertEqual(f.types[layer + "ffn_gate_exps.weight"], expert_type)
                self.assertEqual({n: t.name for n, t in p.types.items()}, f.types)
                r = gguf.GGUFReader(str(out))
                self.assertEqual({t.name: int(t.n_bytes) for t in r.tensors}, {n: p.nbytes(n) for n in p.shapes})
                self.assertEqual(gen_model.active_bytes(gen_model.plan_of_file(out)), gen_model.active_bytes(p))
                ref = reference.Reference(out)  # also checks block decoding against gguf
                for pos, tok in enumerate([1, 2, 299, 7]):
                    logits = ref.forward(tok, pos)
                    self.assertTrue(np.all(np.isfinite(logits)))
                    self.assertLess(float(np.abs(logits).max()), 1e3)
                # tokenizer the engine accepts: byte tokens, merges valid, unique tokens
                self.assertEqual(len(set(f.tokens)), len(f.tokens))
                for mrg in f.merges:
                    a, b = mrg.split(" ")
                    self.assertIn(a + b, f.tokens)

    def test_deterministic_and_scaled(self):
        with tempfile.TemporaryDirectory() as tmp:
            a, b, c = (Path(tmp) / n for n in ("a.gguf", "b.gguf", "c.gguf"))
            code, printed = _gen(_gen_args(a, dim=128, expert_ff=256) + ["--seed", "3"])
            self.assertEqual(code, 0)
            self.assertIn("bytes_per_token: ", printed)
            self.assertEqual(_gen(_gen_args(b, dim=128, expert_ff=256) + ["--seed", "3"])[0], 0)
            self.assertEqual(_gen(_gen_args(c, dim=128, expert_ff=256) + ["--seed", "4"])[0], 0)
            self.assertTrue(filecmp.cmp(a, b, shallow=False))
            self.assertFalse(filecmp.cmp(a, c, shallow=False))
            f = writer.read_mhmoe_gguf(a)
            for name in ("blk.0.attn_q.weight", "blk.0.ffn_down_exps.weight", "token_embd.weight",
                         "blk.1.ffn_gate_inp.weight"):
                w = f.tensors[name]
                want = gen_model.weight_std(name, w.shape)
                self.assertLess(abs(float(w.std()) / want - 1), 0.1, name)

    def test_bytes_per_token(self):
        # h = 1, d = 64, Q8_0 (68 bytes a row of 64), tied output, router F32, V = 300, E = 4, k = 2, F = 64
        args = gen_model.parser().parse_args(_gen_args("x.gguf"))
        args.kv_heads = args.heads
        p = gen_model.plan(gen_model.config_from_args(args), 300)
        b = gen_model.active_bytes(p)
        row = 68
        per_layer = 4 * 64 * row + 4 * 64 * 4 + 2 * (2 * 64 * row + 64 * (64 // 32 * 34)) + 2 * 64 * 4
        self.assertEqual(b["total"], row + 2 * per_layer + 64 * 4 + 300 * row)
        self.assertEqual(b["total"], b["total_max"])
        p2 = gen_model.plan(dataclasses_replace(p.config, moe_head_count=2), 300)
        b2 = gen_model.active_bytes(p2)
        self.assertEqual(b2["experts_max"], 2 * 4 * 3 * 32 * 64 * 34 // 32)  # min(E, h k) = 4 experts, 2 layers
        self.assertLess(b2["experts"], b2["experts_max"])

    def test_refuses_bad_dimensions(self):
        with tempfile.TemporaryDirectory() as tmp:
            self.assertEqual(_gen(_gen_args(Path(tmp) / "x.gguf", vocab=200))[0], 2)
            self.assertEqual(_gen(_gen_args(Path(tmp) / "x.gguf", moe_heads=3))[0], 2)


def dataclasses_replace(obj, **kw):
    import dataclasses
    return dataclasses.replace(obj, **kw)


def _rope_half(z, pos, base):
    hd = z.shape[-1]
    j = np.arange(hd // 2)
    th = pos * base ** (-2.0 * j / hd)
    u, w = z[..., :hd // 2], z[..., hd // 2:]
    return np.concatenate([u * np.cos(th) - w * np.sin(th), u * np.sin(th) + w * np.cos(th)], axis=-1)


def _rope_interleaved(z, pos, base):
    hd = z.shape[-1]
    j = np.arange(hd // 2)
    th = pos * base ** (-2.0 * j / hd)
    u, w = z[..., 0::2], z[..., 1::2]
    out = np.empty_like(z)
    out[..., 0::2] = u * np.cos(th) - w * np.sin(th)
    out[..., 1::2] = u * np.sin(th) + w * np.cos(th)
    return out


class ToLlama(unittest.TestCase):
    """tools/mhmoe_tools/to_llama.py: the h = 1 model as llama.cpp's `llama` architecture."""

    def test_permutation_keeps_every_attention_score(self):
        rng = np.random.default_rng(0)
        nh, hd, d = 3, 8, 16
        Wq, Wk = rng.standard_normal((nh * hd, d)), rng.standard_normal((nh * hd, d))
        Pq, Pk = to_llama.permute_rope_rows(Wq, nh), to_llama.permute_rope_rows(Wk, nh)
        x1, x2 = rng.standard_normal(d), rng.standard_normal(d)
        for p1, p2 in ((0, 0), (5, 2), (17, 9)):
            q = _rope_half((Wq @ x1).reshape(nh, hd), p1, 10000.0)
            k = _rope_half((Wk @ x2).reshape(nh, hd), p2, 10000.0)
            q2 = _rope_interleaved((Pq @ x1).reshape(nh, hd), p1, 10000.0)
            k2 = _rope_interleaved((Pk @ x2).reshape(nh, hd), p2, 10000.0)
            np.testing.assert_allclose((q * k).sum(-1), (q2 * k2).sum(-1), rtol=1e-10, atol=1e-10)

    def test_convert_passes_blocks_through(self):
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "m.gguf", Path(tmp) / "llama.gguf"
            self.assertEqual(_gen(_gen_args(src, heads=4, kv_heads=2))[0], 0)
            to_llama.convert(str(src), str(dst))
            a, b = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(dst))
            self.assertEqual(b.get_field("general.architecture").contents(), "llama")
            self.assertEqual(b.get_field("llama.feed_forward_length").contents(), 64)
            self.assertEqual(b.get_field("llama.rope.dimension_count").contents(), 16)
            self.assertEqual(b.get_field("llama.expert_used_count").contents(), 2)
            self.assertEqual(b.get_field("tokenizer.ggml.tokens").contents(), a.get_field("tokenizer.ggml.tokens").contents())
            self.assertEqual([t.name for t in a.tensors], [t.name for t in b.tensors])
            for x, y in zip(a.tensors, b.tensors):
                self.assertEqual((x.tensor_type, list(x.shape)), (y.tensor_type, list(y.shape)))
                want = np.asarray(x.data)
                if x.name.endswith("attn_q.weight"):
                    want = to_llama.permute_rope_rows(want, 4)
                elif x.name.endswith("attn_k.weight"):
                    want = to_llama.permute_rope_rows(want, 2)
                self.assertTrue(np.array_equal(want.view(np.uint8), np.asarray(y.data).view(np.uint8)), x.name)

    def test_refuses_what_llama_cannot_compute(self):
        with tempfile.TemporaryDirectory() as tmp:
            for opts in (dict(moe_heads=2), dict(raw_gates=True), dict(moe_interval=2, ff=64)):
                src = Path(tmp) / "m.gguf"
                self.assertEqual(_gen(_gen_args(src, **opts))[0], 0)
                with self.assertRaises(ValueError):
                    to_llama.convert(str(src), str(Path(tmp) / "l.gguf"))


class LlamaCompare(unittest.TestCase):
    """tools/llama_compare.py's driver with both engines replaced by fakes (no llama.cpp here)."""

    def test_interleaves_and_reports_medians(self):
        import contextlib
        import importlib.util
        import io
        import json
        spec = importlib.util.spec_from_file_location("llama_compare", ROOT / "tools" / "llama_compare.py")
        lc = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lc)
        calls = []

        def fake_mhmoe(bench, model, t, a):
            calls.append(("mhmoe", t))
            return {"threads": t, "decode_tok_s": 10.0 * t + len(calls), "prompt_tok_s": 100.0 * t,
                    "bytes_per_token": 5, "bandwidth_gb_s": 1.0, "roofline_pct": 50.0}

        def fake_llama(model, t, a):
            calls.append(("llama", t))
            return {"threads": t, "decode_tok_s": 20.0 * t, "prompt_tok_s": 400.0 * t,
                    "decode_tok_s_wall": 19.0, "prompt_tok_s_wall": 390.0}

        lc.run_mhmoe, lc.run_llama = fake_mhmoe, fake_llama
        lc.build_bench = lambda: Path("bench")
        lc.ensure_llama_model = lambda m, l_: Path("llama.gguf")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(lc.main(["m.gguf", "--rounds", "3", "--threads", "1,2", "--json"]), 0)
        self.assertEqual(calls, [("mhmoe", 1), ("llama", 1), ("mhmoe", 2), ("llama", 2)] * 3)
        rows = [json.loads(x) for x in buf.getvalue().splitlines()]
        self.assertEqual([r["threads"] for r in rows], [1, 2])
        # mhmoe decode at 1 thread was 11, 15, 19 (10 + call count): median 15, llama 20
        self.assertEqual(rows[0]["mhmoe_decode_tok_s"], 15.0)
        self.assertEqual(rows[0]["ratio_decode_tok_s"], 0.75)
        self.assertEqual(rows[1]["ratio_prompt_tok_s"], 0.25)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(lc.main(["m.gguf", "--rounds", "1", "--threads", "2"]), 0)
        self.assertIn("| 2 | ", buf.getvalue())


def run(verbosity: int = 1) -> int:
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=verbosity, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped)
    print(f"tools: {passed} passed, {failed} failed")
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(run())
