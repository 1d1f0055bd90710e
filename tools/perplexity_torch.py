#!/usr/bin/env python3
"""Perplexity of a trained PyTorch checkpoint on a text file, windowed like the Rust example.

The text (default models/heldout-sample.txt) is tokenized with tools/mhmoe_tools/bpe.py using the
vocabulary in --vocab (tokens + merges JSON from train_tokenizer.py) or the one embedded in a GGUF
(--gguf), so the ids are exactly what the engine sees. The ids are cut into non-overlapping
windows of context_length tokens (the last window may be shorter; a window of one token predicts
nothing); each window starts fresh at position 0 and every token after the first in a window is
predicted. Reported: number of predicted tokens, mean negative log-likelihood (nats/token) and
perplexity = exp(nats/token).

Usage:
  python3 tools/perplexity_torch.py --ckpt /work/data/runs/mhmoe/final.pt [--text models/heldout-sample.txt]
"""
import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
REPO = os.path.dirname(HERE)


def load_vocab(vocab_path=None, gguf_path=None):
    if gguf_path:
        from gguf import GGUFReader
        r = GGUFReader(gguf_path)

        def strings(key):
            f = r.fields[key]
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    with open(vocab_path, encoding="utf-8") as f:
        j = json.load(f)
    return j["tokens"], j["merges"]


def tokenize(text_bytes, tokens, merges):
    from mhmoe_tools.bpe import Tokenizer
    return Tokenizer(tokens, merges).encode(text_bytes)


def windows(ids, T):
    return [ids[i:i + T] for i in range(0, len(ids), T) if len(ids[i:i + T]) >= 2]


def perplexity(logprob_fn, ids, T):
    """logprob_fn(window ids) -> sum of -log p(token_t | tokens_<t) for t >= 1 of that window."""
    nll, n = 0.0, 0
    for w in windows(ids, T):
        nll += logprob_fn(w)
        n += len(w) - 1
    return n, nll / n, math.exp(nll / n)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True, help="final.pt / ckpt.pt from tools/train.py")
    ap.add_argument("--text", default=os.path.join(REPO, "models", "heldout-sample.txt"))
    ap.add_argument("--vocab", default="/work/data/tokenizer/vocab.json")
    ap.add_argument("--gguf", default=None, help="take the tokenizer from this GGUF instead")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    import torch
    from mhmoe_model import Config, MHMoEModel
    torch.set_num_threads(a.threads)
    ck = torch.load(a.ckpt, map_location="cpu", weights_only=False)
    cfg = Config(**ck["config"])
    model = MHMoEModel(cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    tokens, merges = load_vocab(a.vocab, a.gguf)
    with open(a.text, "rb") as f:
        data = f.read()
    ids = tokenize(data, tokens, merges)

    from mhmoe_model import MoE
    moes = [(i, b.ffn) for i, b in enumerate(model.blocks) if isinstance(b.ffn, MoE)]
    distinct = {i: [0, 0] for i, _ in moes}          # sum of distinct experts per token, tokens
    load = {i: np.zeros(cfg.n_experts) for i, _ in moes}

    @torch.no_grad()
    def nll(w):
        x = torch.tensor(w, dtype=torch.long)[None]
        logits, _ = model(x[:, :-1])
        for i, moe in moes:
            ti = moe.last_topi.reshape(-1, cfg.h * cfg.top_k).numpy()
            distinct[i][0] += sum(len(set(r)) for r in ti.tolist())
            distinct[i][1] += ti.shape[0]
            load[i] += np.bincount(ti.reshape(-1), minlength=cfg.n_experts)
        lp = torch.log_softmax(logits.double(), -1)[0]
        return -lp.gather(1, x[0, 1:, None]).sum().item()

    n, nats, ppl = perplexity(nll, ids, cfg.context_length)
    res = {"text": os.path.basename(a.text), "bytes": len(data), "tokens": len(ids),
           "bytes_per_token": round(len(data) / len(ids), 4), "context": cfg.context_length,
           "predicted": n, "nats_per_token": round(nats, 4), "perplexity": round(ppl, 3)}
    res["expert_activation"] = {
        "blk.%d" % i: {"distinct_experts_per_token": round(distinct[i][0] / distinct[i][1], 3),
                       "fraction_of_E": round(distinct[i][0] / distinct[i][1] / cfg.n_experts, 3),
                       "load_share": [round(v, 3) for v in (load[i] / load[i].sum()).tolist()]}
        for i, _ in moes}
    if a.json:
        print(json.dumps(res))
    else:
        print("%s: %d bytes, %d tokens (%.3f bytes/token), %d windows of %d, %d predicted tokens"
              % (res["text"], len(data), len(ids), res["bytes_per_token"],
                 len(windows(ids, cfg.context_length)), cfg.context_length, n))
        print("nats/token %.4f  perplexity %.3f" % (nats, ppl))
        for k, v in res["expert_activation"].items():
            print("%s: %.2f distinct experts per token (%.1f%% of E), load %s"
                  % (k, v["distinct_experts_per_token"], 100 * v["fraction_of_E"], v["load_share"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
