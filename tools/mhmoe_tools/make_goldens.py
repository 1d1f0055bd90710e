"""Run the numpy reference on the test models and write the golden files.

    python3 tools/make_goldens.py [--models tests/models] [--out tests/golden]
    python3 tools/make_goldens.py --search     # look for new prompts (prints them, writes nothing)

tests/golden/<model>.golden, little-endian:
    u32 magic 0x4C47484D ("MHGL"), u32 version 1, u32 V, u32 n_prompt, u32 n_total,
    u32 tokens[n_total]            prompt, then the greedy tokens
    f32 logits[n_total - 1][V]     logits after feeding tokens[p] at position p
The engine feeds tokens[0 .. n_total-1] at positions 0, 1, ...; for p >= n_prompt - 1 the
logits at p predict tokens[p + 1] (argmax, ties to the lowest id).

tests/golden/tokenizer_cases.txt: see its header.
tests/golden/summary.txt: per model the smallest greedy margin (top1 - top2 logit) and the
smallest routing gap (p of the k-th chosen expert - p of the best unchosen one).
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np

from .bpe import Tokenizer
from .gen_test_models import MODELS, SAMPLE_TEXT, Spec
from .reference import Reference, generate

MAGIC = 0x4C47484D
VERSION = 1
N_PROMPT = 6
N_STEPS = 34

# Found by `--search` (first candidate meeting the criteria below); fixed here so that the goldens
# do not depend on the search.
PROMPTS: dict[str, list[int]] = {
    "a_f32_h2_k2_gqa": [296, 114, 234, 171, 268, 14],
    "b_f16_h4_k1_untied": [277, 262, 279, 171, 169, 160],
    "c_bf16_h1_k2_norm": [269, 177, 130, 76, 266, 45],
    "d_q8_0_h2_k2_gqa": [296, 36, 7, 226, 82, 62],
    "e_q4_0_h2_k2_shexp": [71, 176, 262, 205, 166, 80],
    "f_q8_0_h1_k1_allmoe": [198, 91, 196, 33, 8, 236],
    "g_f32_xmoe_h2_k2": [36, 86, 95, 114, 213, 10],
    "h_mixed_h2_k3": [8, 183, 99, 60, 121, 14],
}

# what a prompt must give to be accepted by --search
MIN_MARGIN = 0.1
MIN_ROUTE_GAP = 1e-3
MIN_DISTINCT = 6

TOKENIZER_MODEL = "a_f32_h2_k2_gqa"
TOKENIZER_CASES = [
    "",
    "a",
    " ",
    "  ",
    "hello",
    "Hello world",
    "The little robot woke up in the morning.",
    "the other robots",
    "double  space and   triple",
    " leading space",
    "trailing space ",
    "line one\nline two\n",
    "tab\tseparated\tvalues",
    "caf\u00e9",
    "na\u00efve r\u00e9sum\u00e9",
    "\u65e5\u672c",
    "\u65e5\u672c\u8a9e the sea",
    "emoji \U0001F642 ok",
    "\U0001F916\U0001F916 robots",
    "aaaaaaa",
    "lll llll",
    "thethethe the the",
    "<|eos|>",
    SAMPLE_TEXT.split(".")[0] + ".",
]


def candidate_prompt(spec: Spec, attempt: int, V: int) -> list[int]:
    rng = np.random.default_rng(spec.seed * 1000 + attempt)
    n_regular = V - 2  # the two specials are last
    ids = [int(x) for x in rng.integers(0, n_regular, N_PROMPT)]
    if spec.specials:
        ids[0] = V - 2  # start with <|bos|>
    return ids


def run(model_path: Path, prompt: list[int]):
    ref = Reference(model_path)
    tokens, logits, margins = generate(ref, prompt, N_STEPS)
    return ref, tokens, logits, margins


def acceptable(ref: Reference, tokens: list[int], margins: list[float]) -> bool:
    gen = tokens[N_PROMPT:]
    if min(margins) < MIN_MARGIN:
        return False
    if ref.route_log and min(ref.route_log) < MIN_ROUTE_GAP:
        return False
    if any(t >= ref.V - 2 for t in gen):  # never generate a special token
        return False
    moe_layers = [i for i in range(ref.L) if ref.is_moe(i)]
    if not (ref.expert_hits[moe_layers] > 0).all():  # every expert of every MoE layer is used
        return False
    return len(set(gen)) >= MIN_DISTINCT


def search(models_dir: Path, max_attempts: int = 400) -> dict[str, list[int]]:
    found = {}
    for spec in MODELS:
        path = models_dir / f"{spec.name}.gguf"
        ref = Reference(path)
        for attempt in range(max_attempts):
            prompt = candidate_prompt(spec, attempt, ref.V)
            tokens, _, margins = generate(ref, prompt, N_STEPS)
            if acceptable(ref, tokens, margins):
                found[spec.name] = prompt
                print(f'    "{spec.name}": {prompt},  # attempt {attempt}, margin {min(margins):.3f}')
                break
        else:
            print(f"    # {spec.name}: nothing found in {max_attempts} attempts")
    return found


def golden_bytes(V: int, prompt: list[int], tokens: list[int], logits: np.ndarray) -> bytes:
    n_total = len(tokens)
    assert logits.shape == (n_total - 1, V)
    out = struct.pack("<5I", MAGIC, VERSION, V, len(prompt), n_total)
    out += np.asarray(tokens, dtype="<u4").tobytes()
    out += np.asarray(logits, dtype="<f4").tobytes()
    return out


def read_golden(path: Path):
    """Parse a golden file: returns (V, n_prompt, tokens, logits)."""
    b = Path(path).read_bytes()
    magic, ver, V, n_prompt, n_total = struct.unpack_from("<5I", b, 0)
    if magic != MAGIC or ver != VERSION:
        raise ValueError("not an mhmoe golden file")
    off = 20
    tokens = np.frombuffer(b, dtype="<u4", count=n_total, offset=off).tolist()
    off += 4 * n_total
    logits = np.frombuffer(b, dtype="<f4", count=(n_total - 1) * V, offset=off).reshape(n_total - 1, V)
    if off + logits.nbytes != len(b):
        raise ValueError("trailing bytes in golden file")
    return V, n_prompt, tokens, logits


def tokenizer_cases_text(model_path: Path) -> str:
    ref = Reference(model_path, self_test=False)
    tok = Tokenizer(ref.tokens, ref.merges)
    lines = [
        f"# mhmoe tokenizer cases: ids from tools/mhmoe_tools/bpe.py for tests/models/{model_path.name}",
        "# (every test model has the same tokenizer: 256 byte tokens with id == byte value,",
        "# 40 merges, <|bos|> = 296, <|eos|> = 297; special tokens are never produced by encoding).",
        "# Format: one case per line, fields separated by one space: the input bytes (UTF-8) as",
        "# lowercase hex, or '-' for the empty input, followed by the token ids in decimal.",
        "# Lines starting with '#' and empty lines are comments. decode(ids) == input for every case.",
    ]
    for s in TOKENIZER_CASES:
        data = s.encode("utf-8")
        ids = tok.encode(data)
        assert tok.decode(ids) == data
        lines.append(" ".join([data.hex() if data else "-"] + [str(i) for i in ids]))
    return "\n".join(lines) + "\n"


def make_all(models_dir: Path, out_dir: Path, verbose: bool = True) -> dict[str, tuple[float, float]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = {}
    summary = ["# model  min_greedy_margin  min_routing_gap  generated_tokens"]
    for spec in MODELS:
        path = models_dir / f"{spec.name}.gguf"
        prompt = PROMPTS[spec.name]
        ref, tokens, logits, margins = run(path, prompt)
        (out_dir / f"{spec.name}.golden").write_bytes(golden_bytes(ref.V, prompt, tokens, logits))
        gap = min(ref.route_log) if ref.route_log else float("inf")
        stats[spec.name] = (min(margins), gap)
        summary.append(f"{spec.name} {min(margins):.4f} {gap:.3e} {' '.join(map(str, tokens[N_PROMPT:]))}")
        if verbose:
            print(f"{spec.name}: min margin {min(margins):.4f}, min routing gap {gap:.3e}")
    (out_dir / "summary.txt").write_text("\n".join(summary) + "\n")
    (out_dir / "tokenizer_cases.txt").write_text(tokenizer_cases_text(models_dir / f"{TOKENIZER_MODEL}.gguf"))
    return stats


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description="Write golden outputs of the numpy reference.")
    ap.add_argument("--models", default=str(root / "tests" / "models"))
    ap.add_argument("--out", default=str(root / "tests" / "golden"))
    ap.add_argument("--search", action="store_true", help="search prompts instead of writing goldens")
    args = ap.parse_args(argv)
    if args.search:
        search(Path(args.models))
        return 0
    make_all(Path(args.models), Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
