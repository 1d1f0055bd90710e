#!/usr/bin/env python3
"""Perplexity of an mhmoe GGUF on a text file with the numpy reference (no torch).

Same tokenization (bpe.py with the GGUF's own vocabulary) and the same windowing as
tools/perplexity_torch.py and the Rust perplexity example: non-overlapping windows of
context_length tokens, each starting fresh at position 0, every token after the first predicted.
The reference runs token by token with FORMAT.md's arithmetic (Q8_0 activations for quantized
weights), so its numbers are what the engine should reproduce. About 12 ms/token for the demo.

Usage: python3 tools/perplexity_gguf.py models/mhmoe-demo-q8_0.gguf [--text models/heldout-sample.txt]
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

from perplexity_torch import load_vocab, perplexity, tokenize  # noqa: E402  (numpy-only helpers)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--text", default=os.path.join(REPO, "models", "heldout-sample.txt"))
    ap.add_argument("--max-tokens", type=int, default=0, help="only the first N tokens (0 = all)")
    a = ap.parse_args(argv)
    from mhmoe_tools.reference import Reference
    ref = Reference(a.model)
    tokens, merges = load_vocab(gguf_path=a.model)
    with open(a.text, "rb") as f:
        data = f.read()
    ids = tokenize(data, tokens, merges)
    if a.max_tokens:
        ids = ids[: a.max_tokens]

    def nll(w):
        ref.reset()
        s = 0.0
        for pos in range(len(w) - 1):
            logits = ref.forward(w[pos], pos).astype(np.float64)
            mx = logits.max()
            s += mx + math.log(np.exp(logits - mx).sum()) - logits[w[pos + 1]]
        return s

    n, nats, ppl = perplexity(nll, ids, ref.ctx)
    res = {"model": os.path.basename(a.model), "text": os.path.basename(a.text), "tokens": len(ids),
           "predicted": n, "nats_per_token": round(nats, 4), "perplexity": round(ppl, 3)}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
