#!/usr/bin/env python3
"""Train the demo byte-level BPE tokenizer (vocab 2048) and tokenize the corpus.

Pre-tokenizer = FORMAT.md's "mhmoe-space": split before every space byte (0x20), nothing else;
then GPT-2 byte-to-unicode mapping without a prefix space and without the GPT-2 regex. The
initial alphabet is all 256 bytes, so every byte string is encodable; there are no special
tokens, so vocab = 256 byte tokens + 1792 merges.

Outputs (in --out, default /work/data/tokenizer):
  tokenizer.json   the `tokenizers` file (tokens in byte-to-unicode form, merges "a b")
  vocab.json       {"tokens": [...id order...], "merges": ["a b", ...rank order...]}
and, with --corpus, <corpus>/train.u16 and <corpus>/val.u16 (little-endian uint16 token ids).

Checks: the pre-tokenizer splits exactly before spaces; if tools/mhmoe_tools/bpe.py is present,
its merge-rank encoder must give exactly the ids of `tokenizers` on the held-out sample.

Usage:
  python3 tools/train_tokenizer.py --train /work/data/corpus/train.txt \
      --corpus /work/data/corpus --check models/heldout-sample.txt
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

VOCAB = 2048


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="merged_with_next"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def check_pretokenizer(tok):
    """The Split + ByteLevel sequence must cut exactly before each space and nowhere else."""
    from tokenizers import pre_tokenizers
    b2u = pre_tokenizers.ByteLevel.alphabet()  # noqa: F841 (only to make sure it exists)
    samples = ["Hello world", "  two  spaces ", "a\nb\n\n c", "tab\there", " lead", "trail ",
               "don't stop-me now!", "caf\u00e9 \u00a35", "x" * 40 + " y"]
    for s in samples:
        got = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(s)]
        want, cur = [], ""
        for ch in s:
            if ch == " " and cur:
                want.append(cur)
                cur = ""
            cur += ch
        if cur:
            want.append(cur)
        want = [bytes_to_unicode_str(w.encode("utf-8")) for w in want]
        if got != want:
            raise SystemExit("pre-tokenizer mismatch on %r: %r != %r" % (s, got, want))


def _byte_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


B2U = _byte_to_unicode()


def bytes_to_unicode_str(b):
    return "".join(B2U[x] for x in b)


def train(train_files, out_dir):
    from tokenizers import pre_tokenizers, trainers
    tok = build_tokenizer()
    check_pretokenizer(tok)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train(train_files, trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    return tok


def export_vocab(tok_json_path):
    """tokens in id order and merges in rank order from a tokenizer.json."""
    with open(tok_json_path, encoding="utf-8") as f:
        j = json.load(f)
    vocab = j["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    if any(t is None for t in tokens):
        raise SystemExit("vocab ids are not dense")
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    return tokens, merges


def encode_file(tok, path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # one call on the whole text: exactly what encoding the file as one string gives
    ids = tok.encode(text).ids
    return np.asarray(ids, dtype=np.uint16), len(text.encode("utf-8"))


def verify_with_bpe_py(tokens, merges, text, ref_ids):
    try:
        from mhmoe_tools import bpe  # type: ignore
    except Exception as e:  # pragma: no cover
        print("tools/mhmoe_tools/bpe.py not importable (%s); skipping cross-check" % e)
        return None
    enc = None
    for name in ("BPETokenizer", "Tokenizer", "BPE"):
        if hasattr(bpe, name):
            enc = getattr(bpe, name)(tokens, merges)
            break
    if enc is None:
        print("bpe.py has no known tokenizer class; skipping cross-check")
        return None
    ids = list(enc.encode(text))
    ok = ids == list(ref_ids)
    if not ok:
        n = next((i for i, (a, b) in enumerate(zip(ids, ref_ids)) if a != b), min(len(ids), len(ref_ids)))
        print("MISMATCH bpe.py vs tokenizers at token %d (len %d vs %d)" % (n, len(ids), len(ref_ids)))
    dec = enc.decode(ids) if hasattr(enc, "decode") else None
    if dec is not None:
        if isinstance(dec, bytes):
            dec = dec.decode("utf-8")
        if dec != text:
            print("MISMATCH bpe.py decode does not round-trip")
            ok = False
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", nargs="+", default=["/work/data/corpus/train.txt"])
    ap.add_argument("--out", default="/work/data/tokenizer")
    ap.add_argument("--corpus", default="/work/data/corpus",
                    help="write train.u16 / val.u16 for train.txt / val.txt in this folder ('' = skip)")
    ap.add_argument("--check", default=os.path.join(os.path.dirname(HERE), "models", "heldout-sample.txt"))
    ap.add_argument("--reuse", action="store_true", help="load --out/tokenizer.json instead of training")
    args = ap.parse_args(argv)

    from tokenizers import Tokenizer
    tj = os.path.join(args.out, "tokenizer.json")
    if args.reuse:
        tok = Tokenizer.from_file(tj)
    else:
        tok = train(args.train, args.out)
        tok = Tokenizer.from_file(tj)
    check_pretokenizer(tok)
    tokens, merges = export_vocab(tj)
    if len(tokens) != VOCAB or len(merges) != VOCAB - 256:
        raise SystemExit("unexpected sizes: %d tokens, %d merges" % (len(tokens), len(merges)))
    if not all(B2U[b] in set(tokens) for b in range(256)):
        raise SystemExit("byte alphabet incomplete")
    with open(os.path.join(args.out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({"tokens": tokens, "merges": merges}, f, ensure_ascii=False)

    report = {"vocab": len(tokens), "merges": len(merges)}
    if args.corpus:
        for split in ("train", "val"):
            ids, nbytes = encode_file(tok, os.path.join(args.corpus, split + ".txt"))
            ids.astype("<u2").tofile(os.path.join(args.corpus, split + ".u16"))
            report[split + "_tokens"] = int(ids.size)
            report[split + "_bytes_per_token"] = round(nbytes / ids.size, 4)
    if args.check and os.path.exists(args.check):
        with open(args.check, encoding="utf-8") as f:
            text = f.read()
        ref = tok.encode(text).ids
        if tok.decode(ref) != text:
            raise SystemExit("tokenizers decode does not round-trip the held-out sample")
        report["heldout_tokens"] = len(ref)
        report["heldout_bytes_per_token"] = round(len(text.encode("utf-8")) / len(ref), 4)
        report["bpe_py_matches_tokenizers"] = verify_with_bpe_py(tokens, merges, text, ref)
        if report["bpe_py_matches_tokenizers"] is False:
            print(json.dumps(report, indent=1))
            return 1
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
