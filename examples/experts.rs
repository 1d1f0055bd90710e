//! Expert statistics of an MoE model on a text: how many experts each token reaches and how the
//! load spreads over experts, per MoE layer.
//!
//! ```text
//! cargo run --release --example experts -- --model models/mhmoe-demo-q8_0.gguf
//! cargo run --release --example experts -- --model models/smoe-twin-q8_0.gguf
//! ```
//!
//! "Experts per token" counts the distinct experts that at least one sub-token of a token was
//! routed to (MH-MoE: up to `h * k`; SMoE: `k`); "activation" is that divided by the number of
//! experts, the per-token form of the expert activation the MH-MoE paper reports. The text runs
//! in windows of the model's context, at most 4096 unless `--ctx` says otherwise; stderr says
//! which, and the bytes its state takes, before allocating it.

#[macro_use]
mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::tokenizer::TokenizerBuf;
use mhmoe::{forward, State};

/// Expert routing statistics of an MoE model on a text file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model file.
    #[arg(short, long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mhmoe-demo-q8_0.gguf"))]
    model: PathBuf,
    /// Text file (UTF-8).
    #[arg(short, long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/models/heldout-sample.txt"))]
    text: PathBuf,
    /// Tokens of text to use (0 = all).
    #[arg(long, default_value_t = 4096)]
    limit: usize,
    /// Window length (default: the model's context length, at most 4096).
    #[arg(long)]
    ctx: Option<usize>,
}

/// The longest default window: a model's context can be far longer than memory holds.
const DEFAULT_MAX_CTX: usize = 4096;

fn run(args: Args) -> Result<(), String> {
    let file = ModelBytes::read(&args.model)
        .map_err(|e| format!("cannot read model {}: {e}", args.model.display()))?;
    let model = file
        .model()
        .map_err(|e| format!("cannot load model {}: {e}", args.model.display()))?;
    let c = model.config().clone();
    // The tokenizer's errors say "tokenizer" themselves.
    let tok_buf =
        TokenizerBuf::new(model.gguf()).map_err(|e| format!("{}: {e}", args.model.display()))?;
    let text = std::fs::read(&args.text)
        .map_err(|e| format!("cannot read {}: {e}", args.text.display()))?;
    let mut ids = tok_buf
        .tokenizer()
        .encode_to_vec(&text)
        .map_err(|e| format!("tokenizing: {e}"))?;
    if args.limit > 0 {
        ids.truncate(args.limit);
    }
    let max = c.context_length();
    let (ctx, why) = match args.ctx {
        Some(n) => (n, "--ctx"),
        None => (
            max.min(DEFAULT_MAX_CTX),
            "default: the model's, at most 4096",
        ),
    };
    let bytes = State::bytes_needed(&model, ctx).map_err(|e| format!("context: {e}"))?;
    errln!(
        "[context {ctx} positions per window ({why}; the model allows {max}; --ctx to \
         change): state {bytes} bytes]"
    )?;
    let mut buf = StateBuffer::for_model(&model, ctx).map_err(|e| format!("context: {e}"))?;
    let mut state = buf.state(&model).map_err(|e| format!("state: {e}"))?;

    let moe_layers: Vec<usize> = (0..c.n_layers()).filter(|&l| c.is_moe_layer(l)).collect();
    if moe_layers.is_empty() {
        return Err("the model has no MoE layer".into());
    }
    // [moe layer][expert] assignments, and the sum over tokens of distinct experts reached.
    let mut load = vec![vec![0u64; c.n_experts()]; moe_layers.len()];
    let mut distinct_sum = vec![0u64; moe_layers.len()];
    let mut tokens = 0u64;
    for window in ids.chunks(ctx) {
        state.reset();
        for &t in window {
            forward(&model, &mut state, t).map_err(|e| format!("forward: {e}"))?;
            tokens += 1;
            for (i, &l) in moe_layers.iter().enumerate() {
                let (idx, _) = state.routing(&model, l).ok_or("no routing")?;
                let mut seen = vec![false; c.n_experts()];
                for &e in idx {
                    load[i][e as usize] += 1;
                    seen[e as usize] = true;
                }
                distinct_sum[i] += seen.iter().filter(|&&s| s).count() as u64;
            }
        }
    }
    let mut out = std::io::stdout().lock();
    outln!(
        out,
        "{}: h = {}, E = {}, k = {}, {tokens} tokens of {}",
        args.model.display(),
        c.moe_heads(),
        c.n_experts(),
        c.top_k(),
        args.text.display()
    )?;
    outln!(
        out,
        "layer  experts/token  activation  load share per expert (%)"
    )?;
    for (i, &l) in moe_layers.iter().enumerate() {
        let mean = distinct_sum[i] as f64 / tokens as f64;
        let total: u64 = load[i].iter().sum();
        let shares: Vec<String> = load[i]
            .iter()
            .map(|&n| format!("{:.1}", 100.0 * n as f64 / total as f64))
            .collect();
        outln!(
            out,
            "{l:>5}  {mean:>13.2}  {:>9.1}%  {}",
            100.0 * mean / c.n_experts() as f64,
            shares.join(" ")
        )?;
    }
    Ok(())
}

fn main() -> ExitCode {
    common::exit(run(Args::parse()))
}
