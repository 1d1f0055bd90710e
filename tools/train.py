#!/usr/bin/env python3
"""Train a small MH-MoE (or SMoE, h=1) language model on the demo corpus (CPU, PyTorch).

Data: little-endian uint16 token files written by tools/train_tokenizer.py
(/work/data/corpus/train.u16, val.u16). Batches are random windows of context_length + 1 tokens
drawn with a seeded generator. AdamW, linear warm-up then cosine decay to 10 %; the schedule
runs over --max-steps, or, with only --time-limit, over the wall-clock budget.

Outputs in --out: config.json, log.csv (step, tokens, seconds, lr, train loss, aux loss,
val loss), ckpt.pt (latest), final.json (summary), and stdout progress.

Examples (the two shipped models):
  python3 tools/train.py --out /work/data/runs/mhmoe --h 4 --experts 8 --top-k 2 --expert-ff 128 \
      --dense-ff 256 --moe-interval 2 --time-limit 2100 --threads 1
  python3 tools/train.py --out /work/data/runs/smoe --h 1 --experts 3 --top-k 2 --expert-ff 128 \
      --dense-ff 256 --moe-interval 2 --time-limit 2100 --threads 1
"""
import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mhmoe_model import Config, MHMoEModel, estimate_gguf_bytes, param_counts  # noqa: E402

Q8_LIMIT = 1153433  # 1.1 MiB


def load_tokens(path):
    return np.fromfile(path, dtype="<u2").astype(np.int64)


def val_windows(val, T):
    n = (len(val) - 1) // (T + 1)
    return torch.from_numpy(val[: n * (T + 1)].reshape(n, T + 1))


@torch.no_grad()
def evaluate(model, windows, batch, limit=None):
    model.eval()
    w = windows if limit is None else windows[:limit]
    tot, cnt = 0.0, 0
    for i in range(0, len(w), batch):
        b = w[i:i + batch]
        logits, _ = model(b[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1),
                                                 reduction="sum")
        tot += loss.item()
        cnt += b[:, 1:].numel()
    model.train()
    return tot / max(cnt, 1)


def build_config(a):
    return Config(vocab_size=a.vocab, context_length=a.context, d=a.d, n_layers=a.layers,
                  n_heads=a.heads, n_kv_heads=a.kv_heads or a.heads, h=a.h, n_experts=a.experts,
                  top_k=a.top_k, expert_ff=a.expert_ff, dense_ff=a.dense_ff,
                  moe_interval=a.moe_interval, norm_topk=a.norm_topk, aux_coef=a.aux_coef).validate()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/data/corpus")
    ap.add_argument("--tokenizer", default="/work/data/tokenizer/vocab.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=0, help="0 = same as --heads")
    ap.add_argument("--h", type=int, default=4, help="MH-MoE heads; 1 = plain SMoE")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--expert-ff", type=int, default=128)
    ap.add_argument("--dense-ff", type=int, default=256)
    ap.add_argument("--moe-interval", type=int, default=2)
    ap.add_argument("--norm-topk", action="store_true", help="renormalize top-k gates (default: raw)")
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=0, help="0 = until --time-limit")
    ap.add_argument("--time-limit", type=float, default=0, help="wall-clock seconds (0 = none)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=64, help="val windows per periodic eval")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size-limit", type=int, default=Q8_LIMIT, help="Q8_0 GGUF byte budget (0 = off)")
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    if not a.max_steps and not a.time_limit:
        ap.error("give --max-steps and/or --time-limit")

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    cfg = build_config(a)
    tokens = merges = None
    if os.path.exists(a.tokenizer):
        with open(a.tokenizer, encoding="utf-8") as f:
            tj = json.load(f)
        tokens, merges = tj["tokens"], tj["merges"]
        assert len(tokens) == cfg.vocab_size
    total, active = param_counts(cfg)
    est = estimate_gguf_bytes(cfg, "q8_0", tokens, merges)
    print("config", json.dumps(cfg.to_dict()))
    print("params total %d active/token %d; estimated Q8_0 GGUF %d bytes (limit %d)"
          % (total, active, est, a.size_limit), flush=True)
    if a.size_limit and est > a.size_limit:
        raise SystemExit("model too large for the Q8_0 budget")

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump({"model": cfg.to_dict(), "train": vars(a), "params_total": total,
                   "params_active": active, "est_q8_0_bytes": est}, f, indent=1)

    train = load_tokens(os.path.join(a.data, "train.u16"))
    val = load_tokens(os.path.join(a.data, "val.u16"))
    vw = val_windows(val, cfg.context_length)
    T = cfg.context_length

    model = MHMoEModel(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = np.random.default_rng(a.seed)
    step, elapsed_before = 0, 0.0
    ckpt_path = os.path.join(a.out, "ckpt.pt")
    log_path = os.path.join(a.out, "log.csv")
    if a.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed_before = ck["step"], ck["elapsed"]
        gen.bit_generator.state = ck["rng"]
        print("resumed at step", step)
    else:
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(["step", "tokens", "seconds", "lr", "train_loss", "aux_loss", "val_loss"])

    def lr_at(progress, step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        progress = min(max(progress, 0.0), 1.0)
        return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))

    def save(final=False):
        ck = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
              "elapsed": elapsed, "rng": gen.bit_generator.state, "config": cfg.to_dict()}
        tmp = ckpt_path + ".tmp"
        torch.save(ck, tmp)
        os.replace(tmp, ckpt_path)
        if final:
            torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "step": step},
                       os.path.join(a.out, "final.pt"))

    t0 = time.time()
    acc_loss = acc_aux = 0.0
    acc_n = 0
    last_val = float("nan")
    model.train()
    while True:
        elapsed = elapsed_before + time.time() - t0
        if a.max_steps and step >= a.max_steps:
            break
        if a.time_limit and elapsed >= a.time_limit:
            break
        progress = step / a.max_steps if a.max_steps else elapsed / a.time_limit
        lr = lr_at(progress, step)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = gen.integers(0, len(train) - T - 1, size=a.batch)
        b = torch.from_numpy(np.stack([train[s:s + T + 1] for s in starts]))
        logits, aux = model(b[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1))
        total_loss = loss + cfg.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        total_loss.backward()
        if a.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        step += 1
        acc_loss += loss.item()
        acc_aux += float(aux)
        acc_n += 1
        do_eval = step % a.eval_every == 0
        if step % a.log_every == 0 or do_eval:
            elapsed = elapsed_before + time.time() - t0
            if do_eval:
                last_val = evaluate(model, vw, a.batch, a.eval_windows)
            row = [step, step * a.batch * T, round(elapsed, 1), "%.3e" % lr, round(acc_loss / acc_n, 4),
                   round(acc_aux / acc_n, 4), round(last_val, 4) if do_eval else ""]
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow(row)
            print("step %d  %.0fs  lr %.2e  loss %.4f  aux %.3f%s" % (
                step, elapsed, lr, acc_loss / acc_n, acc_aux / acc_n,
                ("  val %.4f" % last_val) if do_eval else ""), flush=True)
            acc_loss = acc_aux = 0.0
            acc_n = 0
            if do_eval:
                save()
    elapsed = elapsed_before + time.time() - t0
    # final: train loss over a fixed sample of train windows and full validation
    final_train = evaluate(model, val_windows(train[: 64 * (T + 1) * 1 + 1], T), a.batch)
    final_val = evaluate(model, vw, a.batch)
    save(final=True)
    summary = {"steps": step, "tokens_seen": step * a.batch * T, "train_seconds": round(elapsed, 1),
               "final_train_loss_64win": round(final_train, 4), "final_val_loss": round(final_val, 4),
               "val_windows": len(vw), "params_total": total, "params_active": active,
               "threads": a.threads}
    with open(log_path, "a", newline="") as f:
        csv.writer(f).writerow([step, step * a.batch * T, round(elapsed, 1), "", round(final_train, 4), "",
                                round(final_val, 4)])
    with open(os.path.join(a.out, "final.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("FINAL", json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
