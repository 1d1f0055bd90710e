//! Perplexity of a model on a text file (by default the shipped held-out sample).
//!
//! ```text
//! cargo run --release --example perplexity -- --model models/mhmoe-demo-q8_0.gguf
//! ```
//!
//! The text is tokenized whole, then cut into non-overlapping windows of the context length;
//! each window starts from an empty state at position 0 and every token after the first in a
//! window is predicted. The result is the mean negative log-likelihood in nats per token and its
//! exponential, the perplexity (the same windowing as tools/perplexity_torch.py). The window
//! length is the model's context, at most 4096 unless `--ctx` says otherwise; stderr says which,
//! and the bytes its state takes, before allocating it.

#[macro_use]
mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::tokenizer::TokenizerBuf;
use mhmoe::{forward, KvType, State, StateOptions};

/// The longest default window: a model's context can be far longer than memory holds.
const DEFAULT_MAX_CTX: usize = 4096;

/// Perplexity of an MH-MoE model on a text file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model file.
    #[arg(short, long, default_value = common::DEMO_MODEL)]
    model: PathBuf,
    /// Text file (UTF-8).
    #[arg(short, long, default_value = common::HELDOUT_TEXT)]
    text: PathBuf,
    /// Window length (default: the model's context length, at most 4096).
    #[arg(long)]
    ctx: Option<usize>,
    /// KV cache storage: f32, f16, q8_0 or q4_0.
    #[arg(long, default_value = "f32", value_parser = common::parse_kv)]
    kv: KvType,
    /// Stop after this many tokens of text (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

/// `-log softmax(logits)[target]`, computed in f64.
fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - logits[target as usize] as f64
}

fn run(args: Args) -> Result<(), String> {
    let file = ModelBytes::read(&args.model)
        .map_err(|e| format!("cannot read model {}: {e}", args.model.display()))?;
    let model = file
        .model()
        .map_err(|e| format!("cannot load model {}: {e}", args.model.display()))?;
    // The tokenizer's errors say "tokenizer" themselves.
    let tok_buf =
        TokenizerBuf::new(model.gguf()).map_err(|e| format!("{}: {e}", args.model.display()))?;
    let tok = tok_buf.tokenizer();
    let text = std::fs::read(&args.text)
        .map_err(|e| format!("cannot read {}: {e}", args.text.display()))?;
    let mut ids = tok
        .encode_to_vec(&text)
        .map_err(|e| format!("tokenizing: {e}"))?;
    if args.limit > 0 {
        ids.truncate(args.limit);
    }
    if ids.len() < 2 {
        return Err("the text has fewer than 2 tokens".into());
    }
    let max = model.config().context_length();
    let (ctx, why) = match args.ctx {
        Some(c) => (c, "--ctx"),
        None => (
            max.min(DEFAULT_MAX_CTX),
            "default: the model's, at most 4096",
        ),
    };
    let opts = StateOptions::new(ctx).kv(args.kv);
    let bytes = State::bytes_needed(&model, opts).map_err(|e| format!("state: {e}"))?;
    errln!(
        "[context {ctx} positions per window ({why}; the model allows {max}; --ctx to \
         change): state {bytes} bytes]"
    )?;
    let mut buf = StateBuffer::for_model(&model, opts).map_err(|e| format!("state: {e}"))?;
    let mut state = buf.state(&model).map_err(|e| format!("state: {e}"))?;

    let windows: Vec<&[u32]> = ids.chunks(ctx).filter(|w| w.len() >= 2).collect();
    let predicted: usize = windows.iter().map(|w| w.len() - 1).sum();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(predicted as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tokens {per_sec} eta {eta}")
            .map_err(|e| e.to_string())?,
    );
    let mut total = 0.0f64;
    for w in &windows {
        state.reset();
        for i in 0..w.len() - 1 {
            let logits = forward(&model, &mut state, w[i]).map_err(|e| format!("forward: {e}"))?;
            total += nll(logits, w[i + 1]);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let mean = total / predicted as f64;
    let mut out = std::io::stdout().lock();
    outln!(
        out,
        "{} (KV cache {}): {} tokens of {} in {} windows of up to {ctx}: {mean:.4} nats/token, perplexity {:.3}",
        args.model.display(),
        args.kv.name(),
        predicted,
        args.text.display(),
        windows.len(),
        mean.exp()
    )
}

fn main() -> ExitCode {
    common::exit(run(Args::parse()))
}
