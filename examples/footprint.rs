//! Memory footprint of a model on a device: flash for the model file, RAM for the engine.
//!
//! ```text
//! cargo run --release --example footprint -- models/mhmoe-demo-q8_0.gguf --ctx 64
//! ```
//!
//! The RAM figures are exact: `State::bytes_needed` (activations, scratch, KV cache), the
//! tokenizer workspace (`Tokenizer::workspace_len` words) and the size of the `Model` and
//! `Tokenizer` values themselves for a given layer capacity. Stack use and the firmware's own
//! code come on top (the firmware tests in `targets/` measure those).

#[macro_use]
mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mhmoe::file::ModelBytes;
use mhmoe::quant::GgmlType;
use mhmoe::tokenizer::Tokenizer;
use mhmoe::{KvType, Model, State, StateOptions};

/// Flash and RAM needed to run a model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model file.
    #[arg(default_value = common::DEMO_MODEL)]
    model: PathBuf,
    /// Context length (positions of KV cache).
    #[arg(long, default_value_t = 64)]
    ctx: usize,
    /// KV cache storage: f32, f16, q8_0 or q4_0.
    #[arg(long, default_value = "f32", value_parser = common::parse_kv)]
    kv: KvType,
}

fn run(args: Args) -> Result<(), String> {
    let file = ModelBytes::read(&args.model)
        .map_err(|e| format!("cannot read model {}: {e}", args.model.display()))?;
    let model: Model<'_> = Model::from_bytes(file.bytes())
        .map_err(|e| format!("cannot load model {}: {e}", args.model.display()))?;
    let c = model.config();
    let opts = StateOptions::new(args.ctx).kv(args.kv);
    let state = State::bytes_needed(&model, opts).map_err(|e| e.to_string())?;
    let row = args.kv.row_bytes(c.head_dim()).unwrap_or(0);
    let kv = 2 * c.n_layers() * c.n_kv_heads() * args.ctx * row;
    let tok_words = Tokenizer::workspace_len(model.gguf()).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    outln!(
        out,
        "model {} (context {}):",
        args.model.display(),
        args.ctx
    )?;
    outln!(out, "flash")?;
    outln!(
        out,
        "  model file            {:>10} bytes",
        file.bytes().len()
    )?;
    for t in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
    ] {
        let n: usize = model
            .gguf()
            .tensors()
            .filter(|x| x.ty == t)
            .map(|x| x.data.len())
            .sum();
        if n > 0 {
            outln!(out, "    {:<6} tensors      {:>10} bytes", t.name(), n)?;
        }
    }
    outln!(out, "RAM")?;
    outln!(
        out,
        "  state                 {:>10} bytes (KV cache {kv}, {})",
        state,
        args.kv.name()
    )?;
    outln!(out, "  tokenizer workspace   {:>10} bytes", tok_words * 4)?;
    outln!(
        out,
        "  Model value           {:>10} bytes (target-dependent: pointer width)",
        std::mem::size_of::<Model<'_>>()
    )?;
    outln!(
        out,
        "  Tokenizer value       {:>10} bytes",
        std::mem::size_of::<Tokenizer<'_, '_>>()
    )?;
    outln!(
        out,
        "  total                 {:>10} bytes",
        state
            + tok_words * 4
            + std::mem::size_of::<Model<'_>>()
            + std::mem::size_of::<Tokenizer<'_, '_>>()
    )?;
    Ok(())
}

fn main() -> ExitCode {
    common::exit(run(Args::parse()))
}
