#!/usr/bin/env python3
"""Export a tools/train.py checkpoint to mhmoe GGUF files (FORMAT.md) and verify them.

For every requested type (F32, F16, Q8_0, Q4_0) this writes PREFIX-<type>.gguf with
tools/mhmoe_tools/writer.py (with the tokenizer's lookup tables unless --no-tokenizer-tables),
then checks:
  * the file loads in gguf.GGUFReader and writer.read_mhmoe_gguf gives back the config, the
    tokenizer and (F32) bit-identical tensors;
  * the Q8_0 file fits the byte budget (--q8-limit, default 1.1 MiB = 1,153,433 bytes);
  * the numpy reference (tools/mhmoe_tools/reference.py) run token by token on the first
    --verify-tokens tokens of the held-out sample gives logits close to PyTorch's
    (max |diff| and greedy agreement are printed; F32 must agree to --f32-tol).

Usage:
  python3 tools/export.py --ckpt /work/data/runs/mhmoe/final.pt --prefix models/mhmoe-demo \
      --types f32,q8_0 --name mhmoe-demo
"""
import argparse
import dataclasses
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
REPO = os.path.dirname(HERE)

Q8_LIMIT = 1153433


def writer_config(cfg):
    from mhmoe_tools.writer import MhmoeConfig
    return MhmoeConfig(
        context_length=cfg.context_length, embedding_length=cfg.d, block_count=cfg.n_layers,
        feed_forward_length=cfg.dense_ff, head_count=cfg.n_heads, head_count_kv=cfg.n_kv_heads,
        expert_count=cfg.n_experts, expert_used_count=cfg.top_k,
        expert_feed_forward_length=cfg.expert_ff, expert_weights_norm=bool(cfg.norm_topk),
        moe_head_count=cfg.h, moe_layer_interval=cfg.moe_interval, moe_router="softmax",
        expert_shared_feed_forward_length=0, layer_norm_rms_epsilon=cfg.eps,
        rope_freq_base=cfg.rope_base)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--prefix", required=True, help="output path prefix, e.g. models/mhmoe-demo")
    ap.add_argument("--types", default="f32,f16,q8_0,q4_0")
    ap.add_argument("--vocab", default="/work/data/tokenizer/vocab.json")
    ap.add_argument("--name", default=None, help="general.name")
    ap.add_argument("--text", default=os.path.join(REPO, "models", "heldout-sample.txt"))
    ap.add_argument("--verify-tokens", type=int, default=8, help="0 = skip the reference comparison")
    ap.add_argument("--f32-tol", type=float, default=2e-3)
    ap.add_argument("--q8-limit", type=int, default=Q8_LIMIT)
    ap.add_argument("--no-tokenizer-tables", action="store_true",
                    help="leave out the tokenizer's lookup tables (tokenizer.mhmoe.*, about 46 KB for "
                         "a 2048-token vocabulary); the engine then builds them in RAM")
    a = ap.parse_args(argv)

    import torch
    from mhmoe_model import Config, MHMoEModel
    from mhmoe_tools.writer import read_mhmoe_gguf, write_mhmoe_gguf
    from mhmoe_tools.bpe import Tokenizer
    import gguf

    torch.set_num_threads(1)
    ck = torch.load(a.ckpt, map_location="cpu", weights_only=False)
    cfg = Config(**ck["config"])
    model = MHMoEModel(cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    tensors = model.gguf_tensors()
    with open(a.vocab, encoding="utf-8") as f:
        vj = json.load(f)
    tokens, merges = vj["tokens"], vj["merges"]
    wcfg = writer_config(cfg)

    ids = []
    if a.verify_tokens:
        with open(a.text, "rb") as f:
            ids = Tokenizer(tokens, merges).encode(f.read())[: a.verify_tokens]
        with torch.no_grad():
            torch_logits = model(torch.tensor(ids)[None])[0][0].double().numpy()

    ok = True
    report = {}
    for t in [s.strip().upper() for s in a.types.split(",") if s.strip()]:
        path = "%s-%s.gguf" % (a.prefix, t.lower())
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        types = write_mhmoe_gguf(path, wcfg, tensors, tokens, merges, qtype=t, name=a.name,
                                 tokenizer_tables=not a.no_tokenizer_tables)
        size = os.path.getsize(path)
        r = gguf.GGUFReader(path)
        assert r.get_field("general.architecture").contents() == "mhmoe"
        back = read_mhmoe_gguf(path)
        f32 = lambda c: dataclasses.replace(c, layer_norm_rms_epsilon=float(np.float32(c.layer_norm_rms_epsilon)),
                                            rope_freq_base=float(np.float32(c.rope_freq_base)))
        assert f32(back.config) == f32(wcfg), (back.config, wcfg)
        assert list(back.tokens) == tokens and list(back.merges) == merges
        if t == "F32":
            for n, arr in tensors.items():
                assert np.array_equal(back.tensors[n], arr.astype(np.float32)), n
        entry = {"path": path, "bytes": size, "types": sorted(set(types.values()))}
        if t == "Q8_0" and a.q8_limit and size > a.q8_limit:
            print("ERROR: %s is %d bytes > %d" % (path, size, a.q8_limit))
            ok = False
        if ids:
            from mhmoe_tools.reference import Reference
            ref = Reference(path)
            ref.reset()
            ref_logits = np.stack([ref.forward(tok, pos) for pos, tok in enumerate(ids)]).astype(np.float64)
            diff = np.abs(ref_logits - torch_logits)
            entry["max_abs_logit_diff_vs_torch"] = float(diff.max())
            entry["mean_abs_logit_diff_vs_torch"] = float(diff.mean())
            entry["greedy_agreement"] = float(np.mean(ref_logits.argmax(-1) == torch_logits.argmax(-1)))
            if t == "F32" and diff.max() > a.f32_tol:
                print("ERROR: F32 reference differs from PyTorch by %.3g" % diff.max())
                ok = False
        report[t] = entry
        print(json.dumps({t: entry}), flush=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
