#!/usr/bin/env python3
"""mhmoe and llama.cpp side by side on the same weights, interleaved, medians.

    python3 tools/llama_compare.py MODEL.gguf [--threads 1,2] [--rounds 5] [--prompt 128]
        [--decode 32] [--json] [--llama-python PY] [--skip-mhmoe | --skip-llama]
    python3 tools/llama_compare.py MODEL.gguf --check       # same greedy tokens and logits?

MODEL is an h = 1 mhmoe model with every layer MoE and renormalized gates (e.g. from
`tools/gen_model.py ... --moe-heads 1`). It is converted once to llama.cpp's `llama`
architecture (`mhmoe_tools/to_llama.py`: blocks byte-identical, Q/K rows permuted for llama's
interleaved RoPE) next to MODEL as MODEL.llama.gguf (or --llama-model).

Each round runs, for each thread count, mhmoe's benchmark example then llama.cpp, each in its own
process, so neither sees the other's threads or caches warm from its own earlier run:
  * mhmoe: `target/release/examples/bench --model MODEL --threads T --prompt P --decode D --json`
    (built once with `cargo build --release --example bench`), one JSON line per thread count
    with `decode_tok_s` and `prompt_tok_s`;
  * llama.cpp through llama-cpp-python's low-level bindings (run with --llama-python, a Python
    that has `llama_cpp`; see BENCHMARKS.md for the install): a context of P + D + 8 tokens with
    n_threads = n_threads_batch = T and n_batch = n_ubatch >= P; a warm-up (an 8-token batch and
    one token), then the P-token prompt as one batch and D single-token greedy decode steps.
    Speeds are llama.cpp's own timings (`llama_perf_context`: t_p_eval / n_p_eval for the
    prompt, t_eval / n_eval for decode); wall-clock figures are reported too.
The table gives the median over the rounds of each figure and the ratio mhmoe / llama.cpp.

`--check` runs the conversion's correctness check instead: the numpy reference
(`mhmoe_tools/reference.py`) and llama.cpp both decode greedily from the same prompt ids, and the
tool prints the tokens and the largest logit difference (llama.cpp's kernels round differently,
so logits agree closely, not bit for bit).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
DEFAULT_LLAMA_PY = os.environ.get("MHMOE_LLAMA_PYTHON", "/root/.cache/mhmoe-bench/venv/bin/python")


def prompt_ids(n: int, vocab: int) -> list[int]:
    """A fixed pseudo-random prompt of token ids (the tokenizer plays no part)."""
    return [(i * 7919 + 13) % vocab for i in range(n)]


# ------------------------------------------------------------------------------------------------
# llama.cpp side (runs inside --llama-python)

def _llama_open(path: str, threads: int, n_ctx: int, n_batch: int):
    import llama_cpp as L

    @L.llama_log_callback
    def _quiet(level, text, user_data):  # noqa: ARG001
        pass

    L.llama_log_set(_quiet, None)
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(path.encode(), mp)
    if not model:
        raise SystemExit(f"llama.cpp could not load {path}")
    cp = L.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = n_batch
    cp.n_ubatch = n_batch
    cp.n_threads = threads
    cp.n_threads_batch = threads
    cp.no_perf = False
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise SystemExit("llama.cpp could not create a context")
    vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    return L, model, ctx, vocab, _quiet


def _decode(L, ctx, toks: list[int]):
    arr = (L.llama_token * len(toks))(*toks)
    rc = L.llama_decode(ctx, L.llama_batch_get_one(arr, len(toks)))
    if rc != 0:
        raise SystemExit(f"llama_decode returned {rc}")


def _logits(L, ctx, vocab: int):
    import numpy as np
    p = L.llama_get_logits_ith(ctx, -1)
    return np.ctypeslib.as_array(p, shape=(vocab,)).copy()


def llama_worker(a) -> int:
    L, model, ctx, vocab, _keep = _llama_open(a.llama_model, a.threads, a.prompt + a.decode + 8,
                                              max(a.prompt, 8))
    mem = L.llama_get_memory(ctx)
    # warm-up: a small batch and one single-token step, then forget them
    _decode(L, ctx, prompt_ids(8, vocab))
    _logits(L, ctx, vocab)
    _decode(L, ctx, [1])
    _logits(L, ctx, vocab)
    L.llama_memory_clear(mem, True)
    L.llama_perf_context_reset(ctx)

    toks = prompt_ids(a.prompt, vocab)
    t0 = time.perf_counter()
    _decode(L, ctx, toks)
    nxt = int(_logits(L, ctx, vocab).argmax())
    t_prompt = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.decode):
        _decode(L, ctx, [nxt])
        nxt = int(_logits(L, ctx, vocab).argmax())
    t_decode = time.perf_counter() - t0
    perf = L.llama_perf_context(ctx)
    out = {
        "threads": a.threads,
        "llama_cpp_python": L.__version__,
        "prompt_tok_s": 1e3 * perf.n_p_eval / perf.t_p_eval_ms,
        "decode_tok_s": 1e3 * perf.n_eval / perf.t_eval_ms,
        "n_p_eval": perf.n_p_eval, "n_eval": perf.n_eval,
        "prompt_tok_s_wall": a.prompt / t_prompt,
        "decode_tok_s_wall": a.decode / t_decode,
    }
    L.llama_free(ctx)
    L.llama_model_free(model)
    print(json.dumps(out))
    return 0


def llama_greedy_worker(a) -> int:
    """Greedy decoding from --ids; prints one JSON object: tokens and the logits of each step."""
    ids = [int(x) for x in a.ids.split(",")]
    L, model, ctx, vocab, _keep = _llama_open(a.llama_model, a.threads, len(ids) + a.decode + 8, 64)
    logits = []
    for i, t in enumerate(ids):  # one token at a time, as the reference does
        _decode(L, ctx, [t])
        logits.append(_logits(L, ctx, vocab).tolist())
    toks = list(ids)
    for _ in range(a.decode):
        nxt = int(max(range(vocab), key=lambda j: logits[-1][j]))
        toks.append(nxt)
        _decode(L, ctx, [nxt])
        logits.append(_logits(L, ctx, vocab).tolist())
    print(json.dumps({"tokens": toks, "logits": logits}))
    return 0


# ------------------------------------------------------------------------------------------------
# driver (any Python with numpy and gguf)

def ensure_llama_model(model: Path, llama_model: Path | None) -> Path:
    from mhmoe_tools.to_llama import convert
    out = llama_model or model.with_suffix(".llama.gguf")
    if not out.exists() or out.stat().st_mtime < model.stat().st_mtime:
        convert(str(model), str(out))
        print(f"converted {model} -> {out}", file=sys.stderr)
    return out


def build_bench() -> Path:
    subprocess.run(["cargo", "build", "--release", "--example", "bench"], cwd=ROOT, check=True)
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                                     cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    return Path(meta["target_directory"]) / "release" / "examples" / "bench"


def run_json(cmd: list[str]) -> list[dict]:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip().startswith("{")]


def run_mhmoe(bench: Path, model: Path, threads: int, a) -> dict:
    rows = run_json([str(bench), "--model", str(model), "--threads", str(threads), "--prompt",
                     str(a.prompt), "--decode", str(a.decode), "--json"])
    row = next(r for r in rows if int(r["threads"]) == threads)
    return row


def run_llama(llama_model: Path, threads: int, a) -> dict:
    return run_json([a.llama_python, str(Path(__file__).resolve()), "--llama-worker",
                     "--llama-model", str(llama_model), "--threads", str(threads),
                     "--prompt", str(a.prompt), "--decode", str(a.decode)])[0]


def median(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def compare(a) -> int:
    model = Path(a.model).resolve()
    threads = [int(t) for t in a.threads.split(",")]
    llama_model = None if a.skip_llama else ensure_llama_model(model, Path(a.llama_model) if a.llama_model else None)
    bench = None if a.skip_mhmoe else (Path(a.bench) if a.bench else build_bench())
    res = {t: {"mhmoe": [], "llama": []} for t in threads}
    load_before = os.getloadavg()[0]
    for r in range(a.rounds):
        for t in threads:
            if bench:
                res[t]["mhmoe"].append(run_mhmoe(bench, model, t, a))
            if llama_model:
                res[t]["llama"].append(run_llama(llama_model, t, a))
            last = {k: v[-1] if v else {} for k, v in res[t].items()}
            print(f"round {r + 1}/{a.rounds} threads {t}: "
                  f"mhmoe decode {fmt(last['mhmoe'].get('decode_tok_s'))} prompt {fmt(last['mhmoe'].get('prompt_tok_s'))} | "
                  f"llama.cpp decode {fmt(last['llama'].get('decode_tok_s'))} prompt {fmt(last['llama'].get('prompt_tok_s'))} tok/s",
                  file=sys.stderr)
    load_after = os.getloadavg()[0]
    try:
        from mhmoe_tools.gen_model import active_bytes, plan_of_file
        bpt = active_bytes(plan_of_file(model))["total"]
    except Exception as e:  # noqa: BLE001  (a fake model path in tests, an unusual type)
        print(f"bytes per token unknown: {e}", file=sys.stderr)
        bpt = None
    summary = []
    for t in threads:
        m, l_ = res[t]["mhmoe"], res[t]["llama"]
        row = {"threads": t, "rounds": a.rounds, "prompt": a.prompt, "decode": a.decode,
               "loadavg_1min_before": load_before, "loadavg_1min_after": load_after,
               "llama_cpp_python": next((r["llama_cpp_python"] for r in l_ if "llama_cpp_python" in r), None)}
        for key in ("decode_tok_s", "prompt_tok_s"):
            row[f"mhmoe_{key}"] = median(m, key)
            row[f"llama_{key}"] = median(l_, key)
            both = row[f"mhmoe_{key}"] is not None and row[f"llama_{key}"]
            row[f"ratio_{key}"] = row[f"mhmoe_{key}"] / row[f"llama_{key}"] if both else None
        for key in ("decode_tok_s_wall", "prompt_tok_s_wall"):
            row[f"llama_{key}"] = median(l_, key)
        for key in ("bytes_per_token", "bandwidth_gb_s", "roofline_pct"):
            row[f"mhmoe_{key}"] = median(m, key)
        # the same weights: the gen_model count of bytes a token reads gives llama.cpp's rate
        row["bytes_per_token"] = bpt
        row["llama_bandwidth_gb_s"] = (row["llama_decode_tok_s"] * bpt / 1e9
                                       if bpt and row["llama_decode_tok_s"] else None)
        # llama.cpp's decode as a share of the read bandwidth mhmoe's bench measured in the
        # same round (the machine's roofline, whichever engine reads)
        bw = row["mhmoe_bandwidth_gb_s"]
        row["llama_roofline_pct"] = (100 * row["llama_bandwidth_gb_s"] / bw
                                     if bw and row["llama_bandwidth_gb_s"] else None)
        summary.append(row)
    if a.json:
        for row in summary:
            print(json.dumps(row))
        return 0
    print(f"Model {model.name}; medians of {a.rounds} interleaved rounds; prompt {a.prompt} tokens "
          f"(one batch), decode {a.decode} tokens; tok/s; 1-minute load average "
          f"{load_before:.1f} before, {load_after:.1f} after (the machine has {os.cpu_count()} CPUs).\n")
    if bpt:
        print(f"Weights read per decoded token (tools/mhmoe_tools/gen_model.py count): {bpt / 1e6:.1f} MB.\n")
    print("| threads | decode mhmoe | decode llama.cpp | ratio | prompt mhmoe | prompt llama.cpp | ratio "
          "| read GB/s (same run) | mhmoe decode % of roofline | llama.cpp decode % of roofline |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        print(f"| {r['threads']} | {fmt(r['mhmoe_decode_tok_s'])} | {fmt(r['llama_decode_tok_s'])} | "
              f"{fmt(r['ratio_decode_tok_s'], 2)} | {fmt(r['mhmoe_prompt_tok_s'])} | "
              f"{fmt(r['llama_prompt_tok_s'])} | {fmt(r['ratio_prompt_tok_s'], 2)} | "
              f"{fmt(r['mhmoe_bandwidth_gb_s'], 1)} | {fmt(r['mhmoe_roofline_pct'], 0)}% | "
              f"{fmt(r['llama_roofline_pct'], 0)}% |")
    return 0


def check(a) -> int:
    import numpy as np
    from mhmoe_tools.reference import Reference
    model = Path(a.model).resolve()
    llama_model = ensure_llama_model(model, Path(a.llama_model) if a.llama_model else None)
    ref = Reference(model)
    ids = prompt_ids(a.check_prompt, ref.V)
    want_toks, want_logits = list(ids), []
    for pos, t in enumerate(ids):
        want_logits.append(ref.forward(t, pos))
    for step in range(a.decode):
        nxt = int(np.argmax(want_logits[-1]))
        want_toks.append(nxt)
        want_logits.append(ref.forward(nxt, len(want_toks) - 1))
    got = run_json([a.llama_python, str(Path(__file__).resolve()), "--llama-greedy",
                    "--llama-model", str(llama_model), "--threads", "1", "--ids",
                    ",".join(map(str, ids)), "--decode", str(a.decode)])[0]
    W, G = np.array(want_logits), np.array(got["logits"])
    err = np.abs(W - G).max(axis=1)
    scale = np.abs(W).max(axis=1)
    print(f"reference tokens: {want_toks}")
    print(f"llama.cpp tokens: {got['tokens']}")
    print(f"max |logit difference| per position: {' '.join(f'{e:.3g}' for e in err)}")
    print(f"largest logit magnitude: {scale.max():.3g}; correlation of logits: "
          f"{np.corrcoef(W.ravel(), G.ravel())[0, 1]:.6f}")
    same = want_toks == got["tokens"]
    print("same greedy tokens" if same else "greedy tokens differ")
    return 0 if same else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--json", action="store_true", help="one JSON object per thread count")
    ap.add_argument("--llama-python", default=DEFAULT_LLAMA_PY,
                    help="Python with llama_cpp installed (default $MHMOE_LLAMA_PYTHON or %(default)s)")
    ap.add_argument("--llama-model", help="converted model (default MODEL.llama.gguf, made if missing)")
    ap.add_argument("--bench", help="mhmoe bench binary to run (default: build this checkout's --example bench)")
    ap.add_argument("--skip-mhmoe", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--check", action="store_true", help="compare greedy tokens/logits with the reference")
    ap.add_argument("--check-prompt", type=int, default=4)
    ap.add_argument("--llama-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--llama-greedy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.llama_worker:
        a.threads = int(a.threads)
        return llama_worker(a)
    if a.llama_greedy:
        a.threads = int(a.threads)
        return llama_greedy_worker(a)
    if not a.model:
        ap.error("MODEL is required")
    if a.check:
        return check(a)
    return compare(a)


if __name__ == "__main__":
    raise SystemExit(main())
