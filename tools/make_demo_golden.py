#!/usr/bin/env python3
"""Golden output of the shipped demo model from the independent numpy reference.

Writes tests/golden/demo.txt: the prompt's token ids (encoded by tools/mhmoe_tools/bpe.py), the
greedy continuation (argmax, ties to the lowest id) and the final logits as f32 bit patterns.
tests/demo.rs checks the Rust engine against it.

    python3 tools/make_demo_golden.py [--model models/mhmoe-demo-q8_0.gguf] [--steps 32]
"""
import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from mhmoe_tools.bpe import Tokenizer  # noqa: E402
from mhmoe_tools.reference import Reference  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPT = "It is a truth universally acknowledged"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models/mhmoe-demo-q8_0.gguf"))
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "tests/golden/demo.txt"))
    a = ap.parse_args()
    ref = Reference(a.model)
    prompt = Tokenizer(ref.tokens, ref.merges).encode(PROMPT.encode())
    logits = None
    pos = 0
    for t in prompt:
        logits = ref.forward(t, pos)
        pos += 1
    gen = []
    for _ in range(a.steps):
        nxt = int(np.argmax(logits))  # numpy's argmax returns the first maximum
        gen.append(nxt)
        logits = ref.forward(nxt, pos)
        pos += 1
    bits = np.asarray(logits, dtype=np.float32).view(np.uint32)
    with open(a.out, "w") as f:
        f.write(f"# {pathlib.Path(a.model).name}: prompt {PROMPT!r}; made by tools/make_demo_golden.py\n")
        f.write("prompt " + " ".join(map(str, prompt)) + "\n")
        f.write("greedy " + " ".join(map(str, gen)) + "\n")
        f.write("final_logits " + " ".join(f"{b:08x}" for b in bits) + "\n")
    print(f"wrote {a.out}: {len(prompt)} prompt tokens, {len(gen)} greedy tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
