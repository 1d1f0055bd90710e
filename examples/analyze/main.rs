//! Routing analytics of an MoE model on a text: which experts every token's sub-tokens go to,
//! with pictures.
//!
//! ```text
//! cargo run --release --example analyze -- --model models/mhmoe-demo-q8_0.gguf --out /tmp/analysis
//! ```
//!
//! The text (by default the shipped held-out sample) is tokenized whole and cut into windows of
//! the context length, each starting from an empty state at position 0 (the windowing of the
//! `perplexity` example); every token of every window is routed and recorded. Written to
//! `--out`:
//!
//! - `trace.csv`: the raw trace, one row per token, MoE layer, sub-token and choice:
//!   `token_index, window, pos, token_id, token, layer, sub, rank, expert, gate` (`rank` 0 is the
//!   sub-token's first choice; `token` is the token's text with `\n`, `\t`, `\\` escaped).
//! - `experts.csv`: the full per-expert distribution: per layer and expert the selections
//!   ((sub-token, choice) pairs), their share of the layer, the tokens reaching the expert and
//!   their fraction (the paper's ratio), whether that is above the threshold, first choices and
//!   the mean gate.
//! - `heatmap.png`, `heatmap.svg`: layer x expert, each cell the expert's share of the layer's
//!   routed sub-token choices (in percent), with each layer's activation at the right.
//! - `routing.html`: a self-contained page showing a passage (`--passage-start`,
//!   `--passage-tokens`): every token with, per MoE layer, its `h` sub-tokens colored by the
//!   experts they were routed to.
//! - `diversity.csv`: per token string, how many distinct experts its sub-tokens reach.
//! - `summary.json`: the numbers printed here and more (activation at several thresholds, the
//!   most and least diverse tokens).
//!
//! **Activation** follows the MH-MoE paper (Wu et al. 2024, arXiv 2404.15045v1, caption of
//! Fig. 1): per MoE layer, each expert's selection frequency divided by the number of tokens;
//! experts whose ratio exceeds a threshold (given only as below 1) are activated. Here the
//! ratio of expert `e` in a layer is the fraction of the text's tokens whose routing in that
//! layer selects `e` (for `h > 1`: at least one of the token's sub-tokens does, so the ratio is
//! at most 1, as a threshold below 1 implies); `e` is activated when the ratio is above
//! `--threshold` (default 0.1; the paper does not give its value). A layer's activation is its
//! activated experts over `E`; the overall activation is over all MoE layers. Because the ratio
//! counts tokens, not sub-tokens, a token with `h` sub-tokens reaches up to `h * k` experts
//! against `k` for an SMoE, so the same balance of load gives MH-MoE higher ratios (under
//! uniform routing about `1 - (1 - k/E)^h` against `k/E`). The heatmap shows the
//! threshold-free load share, `experts.csv` every expert's numbers.
//!
//! **Diversity** (the paper's Section 5.2 "divergence"): for each occurrence of a token, the
//! number of distinct experts among its `h * k` choices, averaged over the MoE layers; then
//! averaged over the token string's occurrences. An SMoE gives `k` for every token.
//!
//! A model without MoE layers, an empty text, or a passage start past the end of the text is an
//! error with a message (exit code 1); a text longer than the context is analyzed in windows.

mod analysis;

use std::path::PathBuf;
#[path = "../common/mod.rs"]
#[macro_use]
mod common;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

use analysis::{ranked, Options};

/// Routing analytics of an MoE model on a text file: heatmap, routing picture, activation,
/// diversity and the raw trace.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model file.
    #[arg(short, long, default_value = common::DEMO_MODEL)]
    model: PathBuf,
    /// Text file (UTF-8).
    #[arg(short, long, default_value = common::HELDOUT_TEXT)]
    text: PathBuf,
    /// Output folder (created if missing).
    #[arg(short, long, default_value = "analysis")]
    out: PathBuf,
    /// Window length (default: the model's context length).
    #[arg(long)]
    ctx: Option<usize>,
    /// Tokens per forward pass.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Threads of the forward pass.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// Stop after this many tokens of text (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// First token of the routing picture's passage.
    #[arg(long, default_value_t = 0)]
    passage_start: usize,
    /// Tokens in the routing picture's passage.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    passage_tokens: u32,
    /// Activation threshold: an expert is activated when more than this fraction of the tokens
    /// reach it (0 <= threshold < 1).
    #[arg(long, default_value_t = analysis::DEFAULT_THRESHOLD)]
    threshold: f64,
    /// Diversity ranking: only token strings seen at least this often.
    #[arg(long, default_value_t = 5)]
    min_count: usize,
    /// Diversity ranking: how many most and least diverse tokens to list.
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

fn run(a: Args) -> Result<(), String> {
    let mut o = Options::new(a.model, a.text, a.out);
    o.ctx = a.ctx;
    o.batch = a.batch as usize;
    o.threads = a.threads as usize;
    o.limit = a.limit;
    o.passage_start = a.passage_start;
    o.passage_tokens = a.passage_tokens as usize;
    o.threshold = a.threshold;
    o.min_count = a.min_count;
    o.top = a.top;
    o.progress = !a.quiet;
    let r = analysis::run(&o)?;
    let s = &r.stats;
    let mut out = std::io::stdout().lock();
    outln!(
        out,
        "{}: h = {}, E = {}, k = {}; {} tokens of {} in {} window(s) of up to {}",
        o.model.display(),
        s.h,
        s.n_experts,
        s.k,
        s.tokens,
        o.text.display(),
        r.windows,
        r.trace.ctx
    )?;
    outln!(
        out,
        "layer  experts/token  activation (ratio > {})  load share min..max  unused  effective experts",
        o.threshold
    )?;
    for (l, ls) in s.layers.iter().enumerate() {
        let shares: Vec<f64> = (0..s.n_experts).map(|e| s.share(l, e)).collect();
        let min = shares.iter().copied().fold(f64::INFINITY, f64::min);
        let max = shares.iter().copied().fold(0.0, f64::max);
        outln!(
            out,
            "{:>5}  {:>13.2}  {:>13.1}% ({:>3}/{})  {:>7.2}%..{:.2}%  {:>6}  {:>17.2}",
            ls.layer,
            s.experts_per_token(l),
            100.0 * s.activation(l, o.threshold),
            s.activated(l, o.threshold),
            s.n_experts,
            100.0 * min,
            100.0 * max,
            ls.selections.iter().filter(|&&n| n == 0).count(),
            s.effective_experts(l)
        )?;
    }
    outln!(
        out,
        "overall activation: {:.2}%",
        100.0 * s.overall_activation(o.threshold)
    )?;
    let (most, least) = ranked(&r.diversity, o.min_count, o.top);
    let fmt = |v: &[&analysis::Diversity]| {
        v.iter()
            .map(|d| {
                format!(
                    "\"{}\" {:.2} ({}x)",
                    r.token_text[&d.id], d.mean_distinct, d.count
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    outln!(
        out,
        "most diverse tokens (distinct experts per layer, seen >= {}x): {}",
        o.min_count,
        fmt(&most)
    )?;
    outln!(out, "least diverse tokens: {}", fmt(&least))?;
    for f in &r.files {
        outln!(out, "wrote {}", f.display())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    common::exit(run(Args::parse()))
}
