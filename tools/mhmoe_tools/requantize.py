"""Rewrite an mhmoe GGUF with other weight types (same metadata, tokenizer and tensor order).

    python3 tools/requantize.py IN.gguf OUT.gguf --type Q8_0
    python3 tools/requantize.py IN.gguf OUT.gguf --type Q4_0 --override 'blk.*.ffn_gate_inp.weight=F16'
    python3 tools/requantize.py IN.gguf OUT.gguf --type F32 --tokenizer-tables   # add the tables

The input is meant to be F32 (any readable type works, but requantizing an already quantized file
adds error). 1-D tensors stay F32; a matrix whose input width is not a multiple of 32 gets the
--fallback type (default F32) when a block type is requested. The tokenizer's lookup tables
(`tokenizer.mhmoe.*`) are written if the input has them, or as --tokenizer-tables /
--no-tokenizer-tables say; rewriting with the same type changes nothing else (F32, and Q8_0 /
Q4_0 written from the same F32 master, come out byte for byte the same).
"""

from __future__ import annotations

import argparse
import sys

from .writer import QTYPES, read_mhmoe_gguf, write_mhmoe_gguf


def requantize(src, dst, qtype: str, overrides: dict | None = None, fallback: str = "F32",
               tokenizer_tables: bool | None = None) -> dict[str, str]:
    """Rewrite `src` as `dst` with matrices of type `qtype`; `tokenizer_tables` None keeps
    whether `src` has the tokenizer's lookup tables, True / False writes them or not."""
    f = read_mhmoe_gguf(src)
    return write_mhmoe_gguf(
        dst, f.config, f.tensors, f.tokens, f.merges, qtype=qtype, overrides=overrides or None,
        bos_token_id=f.bos_token_id, eos_token_id=f.eos_token_id, fallback=fallback,
        alignment=f.alignment, allow_extra=True, name=f.name,
        tokenizer_tables=f.tokenizer_tables if tokenizer_tables is None else tokenizer_tables,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Requantize an mhmoe GGUF.")
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--type", required=True, type=str.upper, choices=sorted(QTYPES))
    ap.add_argument("--override", action="append", default=[], metavar="PATTERN=TYPE",
                    help="per-tensor type by fnmatch pattern, first match wins (repeatable)")
    ap.add_argument("--fallback", default="F32", type=str.upper, choices=["F32", "F16", "BF16"])
    ap.add_argument("--tokenizer-tables", action=argparse.BooleanOptionalAction, default=None,
                    help="write the tokenizer's lookup tables (tokenizer.mhmoe.*) or not "
                         "(default: as the input)")
    args = ap.parse_args(argv)
    overrides = {}
    for o in args.override:
        pat, _, t = o.rpartition("=")
        if not pat:
            ap.error(f"bad --override {o!r}")
        overrides[pat] = t
    src = read_mhmoe_gguf(args.src)
    not_f32 = sorted(n for n, t in src.types.items() if t != "F32")
    if not_f32:
        print(f"warning: {len(not_f32)} input tensors are not F32 (e.g. {not_f32[0]})", file=sys.stderr)
    written = requantize(args.src, args.dst, args.type, overrides, args.fallback, args.tokenizer_tables)
    counts: dict[str, int] = {}
    for t in written.values():
        counts[t] = counts.get(t, 0) + 1
    print(f"wrote {args.dst}: " + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
