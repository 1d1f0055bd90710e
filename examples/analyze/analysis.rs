//! The analysis behind `examples/analyze`: runs a model over a text, keeps every MoE layer's
//! routing of every token (the trace) and writes the files described in `main.rs`. Kept apart
//! from the command line so that `tests/analyze.rs` runs exactly this code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Once;

use indicatif::{ProgressBar, ProgressStyle};
use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::parallel::ThreadPool;
use mhmoe::tokenizer::TokenizerBuf;
use mhmoe::{Exec, State, StateOptions};

/// The longest default window: a model's context can be far longer than memory holds.
const DEFAULT_MAX_CTX: usize = 4096;
use plotters::prelude::*;
use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::json;

/// Default activation threshold: an expert counts as activated in a layer when more than this
/// fraction of the tokens reach it (see [`Stats::ratio`]). The paper only says "a threshold
/// (< 1)"; this value is ours.
pub const DEFAULT_THRESHOLD: f64 = 0.1;

/// Thresholds at which `summary.json` also reports the activation, so that no single threshold
/// hides the distribution.
pub const SWEEP: [f64; 8] = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5];

/// What to analyze and where to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// Model file.
    pub model: PathBuf,
    /// Text file (UTF-8).
    pub text: PathBuf,
    /// Output folder (created if missing).
    pub out: PathBuf,
    /// Window length (default: the model's context length).
    pub ctx: Option<usize>,
    /// Tokens per forward pass.
    pub batch: usize,
    /// Threads of the forward pass.
    pub threads: usize,
    /// Stop after this many tokens of text (0 = all).
    pub limit: usize,
    /// First token of the routing picture's passage.
    pub passage_start: usize,
    /// Tokens in the routing picture's passage.
    pub passage_tokens: usize,
    /// Activation threshold on the fraction of tokens reaching an expert.
    pub threshold: f64,
    /// Token strings seen fewer times are left out of the diversity ranking (not of the CSV).
    pub min_count: usize,
    /// How many most and least diverse tokens the summary lists.
    pub top: usize,
    /// Show a progress bar.
    pub progress: bool,
}

impl Options {
    /// The defaults of the command line for a model, a text and an output folder.
    pub fn new(
        model: impl Into<PathBuf>,
        text: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        Options {
            model: model.into(),
            text: text.into(),
            out: out.into(),
            ctx: None,
            batch: 64,
            threads: 1,
            limit: 0,
            passage_start: 0,
            passage_tokens: 64,
            threshold: DEFAULT_THRESHOLD,
            min_count: 5,
            top: 15,
            progress: false,
        }
    }
}

/// Every MoE layer's routing of every token of the text.
#[derive(Debug, Clone)]
pub struct Trace {
    /// MH-MoE heads `h` (sub-tokens per token).
    pub h: usize,
    /// Experts per sub-token `k`.
    pub k: usize,
    /// Experts per MoE layer `E`.
    pub n_experts: usize,
    /// The MoE layers (0-based layer numbers).
    pub moe_layers: Vec<usize>,
    /// Window length: token `t` is at position `t % ctx` of window `t / ctx`.
    pub ctx: usize,
    /// Token ids of the text.
    pub tokens: Vec<u32>,
    /// Chosen experts: `h * k` per token and MoE layer, sub-token-major (as
    /// `State::routing_of`), tokens outermost: index `((t * L + l) * h + j) * k + r`.
    pub experts: Vec<u32>,
    /// The gates of `experts`, same layout.
    pub gates: Vec<f32>,
}

impl Trace {
    /// Entries per token and MoE layer (`h * k`).
    pub fn per_layer(&self) -> usize {
        self.h * self.k
    }

    /// Token `t`'s routing in the `l`-th MoE layer (index into `moe_layers`).
    pub fn route(&self, t: usize, l: usize) -> (&[u32], &[f32]) {
        let n = self.per_layer();
        let start = (t * self.moe_layers.len() + l) * n;
        (
            &self.experts[start..start + n],
            &self.gates[start..start + n],
        )
    }
}

/// Counts per MoE layer and expert.
#[derive(Debug, Clone)]
pub struct LayerStats {
    /// The layer number (0-based).
    pub layer: usize,
    /// (sub-token, choice) pairs routed to each expert.
    pub selections: Vec<u64>,
    /// Tokens at least one of whose sub-tokens chose each expert.
    pub reached: Vec<u64>,
    /// Sub-tokens whose first choice was each expert.
    pub top1: Vec<u64>,
    /// Sum of the gates of each expert's selections.
    pub gate_sum: Vec<f64>,
    /// Sum over tokens of the number of distinct experts the token reached.
    pub distinct_sum: u64,
}

/// Everything the files show, computed from a [`Trace`].
#[derive(Debug, Clone)]
pub struct Stats {
    /// Tokens analyzed.
    pub tokens: usize,
    /// Sub-tokens per token.
    pub h: usize,
    /// Choices per sub-token.
    pub k: usize,
    /// Experts per layer.
    pub n_experts: usize,
    /// One entry per MoE layer.
    pub layers: Vec<LayerStats>,
}

impl Stats {
    /// Counts the trace.
    pub fn from_trace(tr: &Trace) -> Stats {
        let e_n = tr.n_experts;
        let mut layers: Vec<LayerStats> = tr
            .moe_layers
            .iter()
            .map(|&layer| LayerStats {
                layer,
                selections: vec![0; e_n],
                reached: vec![0; e_n],
                top1: vec![0; e_n],
                gate_sum: vec![0.0; e_n],
                distinct_sum: 0,
            })
            .collect();
        let mut seen = vec![false; e_n];
        for t in 0..tr.tokens.len() {
            for (l, ls) in layers.iter_mut().enumerate() {
                let (ex, g) = tr.route(t, l);
                seen.fill(false);
                for (i, (&e, &gate)) in ex.iter().zip(g).enumerate() {
                    let e = e as usize;
                    ls.selections[e] += 1;
                    ls.gate_sum[e] += gate as f64;
                    if i % tr.k == 0 {
                        ls.top1[e] += 1;
                    }
                    if !seen[e] {
                        seen[e] = true;
                        ls.reached[e] += 1;
                        ls.distinct_sum += 1;
                    }
                }
            }
        }
        Stats {
            tokens: tr.tokens.len(),
            h: tr.h,
            k: tr.k,
            n_experts: e_n,
            layers,
        }
    }

    /// The paper's per-expert ratio: the fraction of tokens whose routing in layer `l` (index
    /// into the MoE layers) selects expert `e` (for `h > 1`: at least one of the token's
    /// sub-tokens does). At most 1; `k / E` on average for an SMoE.
    pub fn ratio(&self, l: usize, e: usize) -> f64 {
        self.layers[l].reached[e] as f64 / self.tokens as f64
    }

    /// Expert `e`'s share of layer `l`'s routed (sub-token, choice) pairs: what the heatmap
    /// shows. Sums to 1 over the experts; `1 / E` each under perfect balance.
    pub fn share(&self, l: usize, e: usize) -> f64 {
        self.layers[l].selections[e] as f64 / (self.tokens * self.h * self.k) as f64
    }

    /// Experts of layer `l` whose [`Stats::ratio`] exceeds `threshold`.
    pub fn activated(&self, l: usize, threshold: f64) -> usize {
        (0..self.n_experts)
            .filter(|&e| self.ratio(l, e) > threshold)
            .count()
    }

    /// The activation of layer `l`: activated experts / `E`.
    pub fn activation(&self, l: usize, threshold: f64) -> f64 {
        self.activated(l, threshold) as f64 / self.n_experts as f64
    }

    /// The activation over all MoE layers: activated (layer, expert) pairs / (layers * `E`).
    pub fn overall_activation(&self, threshold: f64) -> f64 {
        let n: usize = (0..self.layers.len())
            .map(|l| self.activated(l, threshold))
            .sum();
        n as f64 / (self.layers.len() * self.n_experts) as f64
    }

    /// The effective number of experts of layer `l`: `exp` of the entropy of the load shares
    /// (E under perfect balance, 1 if one expert takes everything). Needs no threshold.
    pub fn effective_experts(&self, l: usize) -> f64 {
        let h: f64 = (0..self.n_experts)
            .map(|e| self.share(l, e))
            .filter(|&p| p > 0.0)
            .map(|p| -p * p.ln())
            .sum();
        h.exp()
    }

    /// Mean number of distinct experts a token reaches in layer `l`.
    pub fn experts_per_token(&self, l: usize) -> f64 {
        self.layers[l].distinct_sum as f64 / self.tokens as f64
    }
}

/// Diversity of one token string: how many distinct experts its sub-tokens reach.
#[derive(Debug, Clone)]
pub struct Diversity {
    /// Token id.
    pub id: u32,
    /// Occurrences in the text.
    pub count: usize,
    /// Mean over occurrences of the mean over MoE layers of the distinct experts among the
    /// token's `h * k` choices (the paper's "divergence", Section 5.2).
    pub mean_distinct: f64,
    /// The same counting only each sub-token's first choice (1 to `h`).
    pub mean_distinct_top1: f64,
}

/// The diversity of every token id in the text, by id.
pub fn diversity(tr: &Trace) -> Vec<Diversity> {
    let mut acc: BTreeMap<u32, (usize, f64, f64)> = BTreeMap::new();
    let mut seen = vec![false; tr.n_experts];
    let mut seen1 = vec![false; tr.n_experts];
    let layers = tr.moe_layers.len() as f64;
    for (t, &id) in tr.tokens.iter().enumerate() {
        let (mut all, mut first) = (0usize, 0usize);
        for l in 0..tr.moe_layers.len() {
            let (ex, _) = tr.route(t, l);
            seen.fill(false);
            seen1.fill(false);
            for (i, &e) in ex.iter().enumerate() {
                let e = e as usize;
                if !seen[e] {
                    seen[e] = true;
                    all += 1;
                }
                if i % tr.k == 0 && !seen1[e] {
                    seen1[e] = true;
                    first += 1;
                }
            }
        }
        let a = acc.entry(id).or_insert((0, 0.0, 0.0));
        a.0 += 1;
        a.1 += all as f64 / layers;
        a.2 += first as f64 / layers;
    }
    acc.into_iter()
        .map(|(id, (count, all, first))| Diversity {
            id,
            count,
            mean_distinct: all / count as f64,
            mean_distinct_top1: first / count as f64,
        })
        .collect()
}

/// What a run produced.
#[derive(Debug)]
pub struct Report {
    pub trace: Trace,
    pub stats: Stats,
    pub diversity: Vec<Diversity>,
    /// Token strings by id as the files show them (see [`display_token`]).
    pub token_text: BTreeMap<u32, String>,
    /// Windows the text was cut into.
    pub windows: usize,
    /// The passage of the routing picture: token range.
    pub passage: std::ops::Range<usize>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Pixel size of the heatmap.
    pub heatmap_size: (u32, u32),
}

/// A token's bytes as text: UTF-8 (invalid bytes become U+FFFD), with backslash, newline,
/// carriage return, tab and other control characters escaped (`\\`, `\n`, `\r`, `\t`,
/// `\u{..}`), so that every token is one line of visible text.
pub fn display_token(bytes: &[u8]) -> String {
    let mut s = String::new();
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(s, "\\u{{{:x}}}", c as u32);
            }
            c => s.push(c),
        }
    }
    s
}

/// Runs the model over the text and writes every file. Errors are sentences for the user.
pub fn run(o: &Options) -> Result<Report, String> {
    let file = ModelBytes::read(&o.model)
        .map_err(|e| format!("cannot read model {}: {e}", o.model.display()))?;
    let model = file
        .model()
        .map_err(|e| format!("cannot load model {}: {e}", o.model.display()))?;
    let c = model.config().clone();
    let moe_layers: Vec<usize> = (0..c.n_layers()).filter(|&l| c.is_moe_layer(l)).collect();
    if moe_layers.is_empty() {
        return Err(format!(
            "{} has no MoE layer ({} layers, moe.layer_interval = {}): there is no routing to analyze",
            o.model.display(),
            c.n_layers(),
            c.moe_interval()
        ));
    }
    if !(o.threshold >= 0.0 && o.threshold < 1.0) {
        return Err(format!(
            "the activation threshold must be in [0, 1) (got {})",
            o.threshold
        ));
    }
    // The tokenizer's errors say "tokenizer" themselves.
    let tok_buf = TokenizerBuf::new(model.gguf()).map_err(|e| e.to_string())?;
    let tok = tok_buf.tokenizer();
    let text = fs::read(&o.text).map_err(|e| format!("cannot read {}: {e}", o.text.display()))?;
    let mut ids = tok
        .encode_to_vec(&text)
        .map_err(|e| format!("tokenizing {}: {e}", o.text.display()))?;
    if o.limit > 0 {
        ids.truncate(o.limit);
    }
    if ids.is_empty() {
        return Err(format!(
            "{} is empty (0 tokens): there is nothing to analyze",
            o.text.display()
        ));
    }
    if o.passage_start >= ids.len() {
        return Err(format!(
            "the passage starts at token {} but the text has only {} tokens",
            o.passage_start,
            ids.len()
        ));
    }
    let passage = o.passage_start..(o.passage_start + o.passage_tokens.max(1)).min(ids.len());

    let max = c.context_length();
    let (ctx, why) = match o.ctx {
        Some(n) => (n, "--ctx"),
        None => (
            max.min(DEFAULT_MAX_CTX),
            "default: the model's, at most 4096",
        ),
    };
    let batch = o.batch.clamp(1, ctx.max(1));
    let opts = StateOptions::new(ctx).batch(batch);
    let bytes = State::bytes_needed(&model, opts)
        .map_err(|e| format!("state for context {ctx}, batch {batch}: {e}"))?;
    writeln!(
        std::io::stderr(),
        "[context {ctx} positions per window ({why}; the model allows {max}; --ctx to \
         change): state {bytes} bytes]"
    )
    .map_err(|e| format!("cannot write to stderr: {e}"))?;
    let mut buf = StateBuffer::for_model(&model, opts)
        .map_err(|e| format!("state for context {ctx}, batch {batch}: {e}"))?;
    let mut state = buf.state(&model).map_err(|e| format!("state: {e}"))?;
    let pool = ThreadPool::new(o.threads).map_err(|e| format!("threads: {e}"))?;
    let exec = Exec::new(&pool);

    let (h, k) = (c.moe_heads(), c.top_k());
    let per = h * k;
    let mut trace = Trace {
        h,
        k,
        n_experts: c.n_experts(),
        moe_layers: moe_layers.clone(),
        ctx,
        tokens: ids.clone(),
        experts: Vec::with_capacity(ids.len() * moe_layers.len() * per),
        gates: Vec::with_capacity(ids.len() * moe_layers.len() * per),
    };
    let bar = if o.progress {
        ProgressBar::new(ids.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tokens {per_sec} eta {eta}")
            .map_err(|e| e.to_string())?,
    );
    let windows = ids.len().div_ceil(ctx);
    for window in ids.chunks(ctx) {
        state.reset();
        for part in window.chunks(batch) {
            exec.forward_batch(&model, &mut state, part)
                .map_err(|e| format!("forward pass: {}", mhmoe::Error::from(e)))?;
            for t in 0..part.len() {
                for &l in &moe_layers {
                    let (ex, g) = state
                        .routing_of(&model, l, t)
                        .ok_or_else(|| format!("no routing for layer {l}"))?;
                    if ex.len() != per || g.len() != per {
                        return Err(format!(
                            "layer {l} gave {} routing entries, expected h * k = {per}",
                            ex.len()
                        ));
                    }
                    trace.experts.extend_from_slice(ex);
                    trace.gates.extend_from_slice(g);
                }
            }
            bar.inc(part.len() as u64);
        }
    }
    bar.finish_and_clear();

    let stats = Stats::from_trace(&trace);
    let div = diversity(&trace);
    let mut token_text = BTreeMap::new();
    for &id in &trace.tokens {
        if let std::collections::btree_map::Entry::Vacant(v) = token_text.entry(id) {
            let bytes = tok
                .decode_to_bytes(&[id])
                .map_err(|e| format!("token {id}: {e}"))?;
            v.insert(display_token(&bytes));
        }
    }

    fs::create_dir_all(&o.out).map_err(|e| format!("cannot create {}: {e}", o.out.display()))?;
    let model_name = o
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut report = Report {
        trace,
        stats,
        diversity: div,
        token_text,
        windows,
        passage,
        files: Vec::new(),
        heatmap_size: (0, 0),
    };
    write_trace(&o.out.join("trace.csv"), &report)?;
    write_experts(&o.out.join("experts.csv"), &report, o.threshold)?;
    write_diversity(&o.out.join("diversity.csv"), &report)?;
    let title = format!(
        "{model_name}: expert load\nshare of each MoE layer's routed sub-token choices (%); h = {h}, E = {}, k = {k}, {} tokens",
        c.n_experts(),
        report.stats.tokens
    );
    let size = heatmap_size(report.stats.n_experts, report.stats.layers.len());
    let png = o.out.join("heatmap.png");
    let svg = o.out.join("heatmap.svg");
    register_fonts()?;
    draw_heatmap(
        BitMapBackend::new(&png, size).into_drawing_area(),
        &report.stats,
        &title,
        o.threshold,
    )?;
    draw_heatmap(
        SVGBackend::new(&svg, size).into_drawing_area(),
        &report.stats,
        &title,
        o.threshold,
    )?;
    report.heatmap_size = size;
    write_routing(&o.out.join("routing.html"), &report, &model_name)?;
    write_summary(&o.out.join("summary.json"), &report, &model_name, o)?;
    report.files = [
        "trace.csv",
        "experts.csv",
        "diversity.csv",
        "heatmap.png",
        "heatmap.svg",
        "routing.html",
        "summary.json",
    ]
    .iter()
    .map(|f| o.out.join(f))
    .collect();
    Ok(report)
}

fn create(path: &Path) -> Result<BufWriter<fs::File>, String> {
    fs::File::create(path)
        .map(BufWriter::new)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("cannot write {}: {e}", path.display())
}

/// A CSV field: quoted when it holds a comma, a quote or a space at either end.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"']) || s.starts_with(' ') || s.ends_with(' ') || s.is_empty() {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `trace.csv`: one row per token, MoE layer, sub-token and choice.
fn write_trace(path: &Path, r: &Report) -> Result<(), String> {
    let tr = &r.trace;
    let mut w = create(path)?;
    let e = io(path);
    writeln!(
        w,
        "token_index,window,pos,token_id,token,layer,sub,rank,expert,gate"
    )
    .map_err(&e)?;
    for (t, &id) in tr.tokens.iter().enumerate() {
        let text = csv_field(&r.token_text[&id]);
        for (l, &layer) in tr.moe_layers.iter().enumerate() {
            let (ex, g) = tr.route(t, l);
            for (i, (x, gate)) in ex.iter().zip(g).enumerate() {
                writeln!(
                    w,
                    "{t},{},{},{id},{text},{layer},{},{},{x},{gate:?}",
                    t / tr.ctx,
                    t % tr.ctx,
                    i / tr.k,
                    i % tr.k
                )
                .map_err(&e)?;
            }
        }
    }
    w.flush().map_err(&e)
}

/// `experts.csv`: the full per-expert distribution.
fn write_experts(path: &Path, r: &Report, threshold: f64) -> Result<(), String> {
    let s = &r.stats;
    let mut w = create(path)?;
    let err = io(path);
    writeln!(
        w,
        "layer,expert,selections,share,tokens_reached,ratio,activated,top1,mean_gate"
    )
    .map_err(&err)?;
    for (l, ls) in s.layers.iter().enumerate() {
        for e in 0..s.n_experts {
            let mean_gate = if ls.selections[e] > 0 {
                ls.gate_sum[e] / ls.selections[e] as f64
            } else {
                0.0
            };
            writeln!(
                w,
                "{},{e},{},{:.6},{},{:.6},{},{},{:.6}",
                ls.layer,
                ls.selections[e],
                s.share(l, e),
                ls.reached[e],
                s.ratio(l, e),
                u8::from(s.ratio(l, e) > threshold),
                ls.top1[e],
                mean_gate
            )
            .map_err(&err)?;
        }
    }
    w.flush().map_err(&err)
}

/// `diversity.csv`: one row per token id of the text.
fn write_diversity(path: &Path, r: &Report) -> Result<(), String> {
    let mut w = create(path)?;
    let err = io(path);
    writeln!(w, "token_id,token,count,mean_distinct,mean_distinct_top1").map_err(&err)?;
    for d in &r.diversity {
        writeln!(
            w,
            "{},{},{},{:.4},{:.4}",
            d.id,
            csv_field(&r.token_text[&d.id]),
            d.count,
            d.mean_distinct,
            d.mean_distinct_top1
        )
        .map_err(&err)?;
    }
    w.flush().map_err(&err)
}

/// The most and least diverse token strings seen at least `min_count` times: (most, least),
/// each at most `top` long, ties broken by count then id.
pub fn ranked(
    div: &[Diversity],
    min_count: usize,
    top: usize,
) -> (Vec<&Diversity>, Vec<&Diversity>) {
    let mut v: Vec<&Diversity> = div.iter().filter(|d| d.count >= min_count).collect();
    v.sort_by(|a, b| {
        b.mean_distinct
            .total_cmp(&a.mean_distinct)
            .then(b.count.cmp(&a.count))
            .then(a.id.cmp(&b.id))
    });
    let most: Vec<&Diversity> = v.iter().take(top).copied().collect();
    let mut least: Vec<&Diversity> = v.iter().rev().take(top).copied().collect();
    least.sort_by(|a, b| {
        a.mean_distinct
            .total_cmp(&b.mean_distinct)
            .then(b.count.cmp(&a.count))
            .then(a.id.cmp(&b.id))
    });
    (most, least)
}

/// `summary.json`: the numbers of the run (what `main` prints, and more).
fn write_summary(path: &Path, r: &Report, model_name: &str, o: &Options) -> Result<(), String> {
    let s = &r.stats;
    let layers: Vec<_> = s
        .layers
        .iter()
        .enumerate()
        .map(|(l, ls)| {
            json!({
                "layer": ls.layer,
                "activation": s.activation(l, o.threshold),
                "activated": s.activated(l, o.threshold),
                "experts_per_token": s.experts_per_token(l),
                "effective_experts": s.effective_experts(l),
                "share": (0..s.n_experts).map(|e| s.share(l, e)).collect::<Vec<_>>(),
                "ratio": (0..s.n_experts).map(|e| s.ratio(l, e)).collect::<Vec<_>>(),
                "unused": ls.selections.iter().filter(|&&n| n == 0).count(),
                "activation_sweep": SWEEP.iter().map(|&t| json!({"threshold": t, "activation": s.activation(l, t)})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let (most, least) = ranked(&r.diversity, o.min_count, o.top);
    let entry = |d: &&Diversity| {
        json!({"token_id": d.id, "token": r.token_text[&d.id], "count": d.count,
               "mean_distinct": d.mean_distinct, "mean_distinct_top1": d.mean_distinct_top1})
    };
    let total_occ: usize = r.diversity.iter().map(|d| d.count).sum();
    let mean_div = r
        .diversity
        .iter()
        .map(|d| d.mean_distinct * d.count as f64)
        .sum::<f64>()
        / total_occ as f64;
    let v = json!({
        "model": model_name,
        "text": o.text.file_name().map(|n| n.to_string_lossy().into_owned()),
        "h": s.h, "k": s.k, "n_experts": s.n_experts,
        "tokens": s.tokens,
        "windows": r.windows,
        "window_length": r.trace.ctx,
        "threshold": o.threshold,
        "activation": s.overall_activation(o.threshold),
        "activation_sweep": SWEEP.iter().map(|&t| json!({"threshold": t, "activation": s.overall_activation(t)})).collect::<Vec<_>>(),
        "layers": layers,
        "diversity": {
            "min_count": o.min_count,
            "mean_distinct": mean_div,
            "most": most.iter().map(entry).collect::<Vec<_>>(),
            "least": least.iter().map(entry).collect::<Vec<_>>(),
        },
        "passage": [r.passage.start, r.passage.end],
        "heatmap_size": [r.heatmap_size.0, r.heatmap_size.1],
    });
    let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
    fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Heatmap

/// Heatmap geometry: margins and cell sizes in pixels.
const LEFT: u32 = 90;
const RIGHT: u32 = 170;
const TOP: u32 = 84;
const BOTTOM: u32 = 86;
const CELL_H: u32 = 36;

/// Width of one expert's column: 1120 pixels spread over the experts, 12 to 48 each.
pub fn cell_width(n_experts: usize) -> u32 {
    (1120 / n_experts.max(1) as u32).clamp(12, 48)
}

/// Cells get their value written in them when they are at least this wide.
pub const LABEL_MIN_WIDTH: u32 = 28;

/// The grid is at least this wide, so that the title and the notes below fit.
const MIN_GRID_W: u32 = 560;

/// Pixel size of the heatmap for `n_experts` experts and `layers` MoE layers:
/// `(90 + max(E * cell_width(E), 560) + 170, 84 + 36 * layers + 86)`.
pub fn heatmap_size(n_experts: usize, layers: usize) -> (u32, u32) {
    (
        LEFT + (n_experts as u32 * cell_width(n_experts)).max(MIN_GRID_W) + RIGHT,
        TOP + layers as u32 * CELL_H + BOTTOM,
    )
}

/// The text in a heatmap cell: the share in percent, one decimal.
pub fn cell_label(share: f64) -> String {
    format!("{:.1}", 100.0 * share)
}

static FONTS: Once = Once::new();

/// Registers the embedded DejaVu fonts with plotters (no system fonts needed).
fn register_fonts() -> Result<(), String> {
    let mut result = Ok(());
    FONTS.call_once(|| {
        let r = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .and_then(|_| {
            plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold())
        })
        .and_then(|_| {
            plotters::style::register_font(
                "monospace",
                FontStyle::Normal,
                dejavu::sans_mono::regular(),
            )
        });
        if r.is_err() {
            result = Err("cannot load the embedded font".to_owned());
        }
    });
    result
}

/// Draws the layer x expert heatmap: cells colored by share of the layer's routed sub-token
/// choices (viridis, 0 to the largest share, at least 2 / E), the share in percent written in
/// each cell (monospace, the only monospace text) when cells are wide enough, and each row's
/// activation at the right.
fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    s: &Stats,
    title: &str,
    threshold: f64,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| format!("drawing the heatmap: {e}");
    let e_n = s.n_experts;
    let cw = cell_width(e_n) as i32;
    let (left, top, ch) = (LEFT as i32, TOP as i32, CELL_H as i32);
    let max_share = (0..s.layers.len())
        .flat_map(|l| (0..e_n).map(move |e| (l, e)))
        .map(|(l, e)| s.share(l, e))
        .fold(2.0 / e_n as f64, f64::max);
    root.fill(&WHITE).map_err(err)?;
    let sans = |size: f64| TextStyle::from(("sans-serif", size).into_font()).color(&BLACK);
    let centered = |st: TextStyle<'static>| st.pos(Pos::new(HPos::Center, VPos::Center));
    for (i, line) in title.lines().enumerate() {
        root.draw(&Text::new(
            line.to_owned(),
            (left, 10 + 20 * i as i32),
            sans(if i == 0 { 15.0 } else { 13.0 }),
        ))
        .map_err(err)?;
    }
    root.draw(&Text::new(
        "expert".to_owned(),
        (left + cw * e_n as i32 / 2, top - 30),
        centered(sans(12.0)),
    ))
    .map_err(err)?;
    let step = if cw >= 20 {
        1
    } else {
        (20 / cw as usize).next_power_of_two()
    };
    for e in (0..e_n).step_by(step) {
        root.draw(&Text::new(
            e.to_string(),
            (left + cw * e as i32 + cw / 2, top - 12),
            centered(sans(11.0)),
        ))
        .map_err(err)?;
    }
    for (l, ls) in s.layers.iter().enumerate() {
        let y0 = top + ch * l as i32;
        root.draw(&Text::new(
            format!("layer {}", ls.layer),
            (left - 8, y0 + ch / 2),
            sans(12.0).pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(err)?;
        for e in 0..e_n {
            let v = s.share(l, e);
            let color = ViridisRGB.get_color_normalized(v, 0.0, max_share);
            let x0 = left + cw * e as i32;
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cw - 1, y0 + ch - 1)],
                color.filled(),
            ))
            .map_err(err)?;
            if cw as u32 >= LABEL_MIN_WIDTH {
                let luma = 0.299 * color.0 as f64 + 0.587 * color.1 as f64 + 0.114 * color.2 as f64;
                let ink = if luma > 140.0 { BLACK } else { WHITE };
                root.draw(&Text::new(
                    cell_label(v),
                    (x0 + cw / 2, y0 + ch / 2),
                    TextStyle::from(("monospace", 10.0).into_font())
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                ))
                .map_err(err)?;
            }
        }
        root.draw(&Text::new(
            format!(
                "{} / {} activated ({:.1}%)",
                s.activated(l, threshold),
                e_n,
                100.0 * s.activation(l, threshold)
            ),
            (left + cw * e_n as i32 + 8, y0 + ch / 2),
            sans(11.0).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
    }
    // Color bar with ticks, and the definitions.
    let yb = top + ch * s.layers.len() as i32 + 14;
    let bar_w = (cw * e_n as i32).min(480);
    for i in 0..bar_w {
        let color = ViridisRGB.get_color_normalized(i as f64 / bar_w as f64, 0.0, 1.0);
        root.draw(&Rectangle::new(
            [(left + i, yb), (left + i + 1, yb + 11)],
            color.filled(),
        ))
        .map_err(err)?;
    }
    for q in 0..=4 {
        let x = left + bar_w * q / 4;
        root.draw(&Text::new(
            format!("{:.1}%", 100.0 * max_share * q as f64 / 4.0),
            (x, yb + 22),
            centered(sans(10.0)),
        ))
        .map_err(err)?;
    }
    root.draw(&Text::new(
        format!(
            "uniform load = 100/E = {:.3}%; activated: the expert is reached by more than {}% of the tokens (the paper's ratio)",
            100.0 / e_n as f64,
            100.0 * threshold
        ),
        (left, yb + 44),
        sans(11.0),
    ))
    .map_err(err)?;
    root.present().map_err(err)
}

// ---------------------------------------------------------------------------------------------
// Routing picture

/// A distinct color per expert: golden-angle hues, three lightness levels.
pub fn expert_color(e: usize) -> String {
    let hue = (e as f64 * 137.507_764) % 360.0;
    let light = [45, 62, 76][e % 3];
    format!("hsl({hue:.0},70%,{light}%)")
}

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// `routing.html`: a self-contained page (no scripts, no external resources). Each token of
/// the passage is a box (`div.tok`) with its text and, per MoE layer (`div.lay`), its `h`
/// sub-tokens (`span.sub`) as columns of `k` stripes (`i` elements, first choice on top)
/// colored by expert, with `data-e` (expert) and `data-g` (gate) and a tooltip.
fn write_routing(path: &Path, r: &Report, model_name: &str) -> Result<(), String> {
    let tr = &r.trace;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Routing of {name}</title>\n<style>\n\
body{{font-family:sans-serif;margin:16px;color:#222;max-width:1400px}}\n\
h1{{font-size:18px}} p{{font-size:13px;max-width:900px}}\n\
.legend{{display:flex;flex-wrap:wrap;gap:2px;margin:8px 0 14px}}\n\
.legend span{{font:11px monospace;padding:2px 4px;border-radius:2px;color:#000}}\n\
.passage{{display:flex;flex-wrap:wrap;gap:8px 3px;align-items:flex-start}}\n\
.tok{{display:inline-flex;flex-direction:column;align-items:center;border:1px solid #ccc;border-radius:3px;padding:2px 3px;background:#fafafa}}\n\
.txt{{font:13px monospace;white-space:pre;margin-bottom:2px}}\n\
.lay{{display:flex;gap:2px;margin-top:2px;padding-top:3px;border-top:1px solid #aaa}}\n\
.sub{{display:flex;flex-direction:column;gap:0}}\n\
.sub i{{display:block;width:11px;height:9px}}\n\
</style>\n</head>\n<body>\n",
        name = html_escape(model_name)
    );
    let layers: Vec<String> = tr.moe_layers.iter().map(|l| l.to_string()).collect();
    let _ = write!(
        h,
        "<h1>Routing of {name}: tokens {a} to {b} of the text</h1>\n<p>Each box is a token (a space is shown as \u{b7}). \
Under it, one band per MoE layer (layers {layers}, top to bottom, separated by a line); in each band {hh} column(s), one per sub-token, each with \
{k} stripe(s): the experts the sub-token was routed to, first choice on top, colored by expert (legend below). \
Hover a stripe for the expert and its gate. h = {hh}, E = {e}, k = {k}.</p>\n<div class=\"legend\">",
        name = html_escape(model_name),
        a = r.passage.start,
        b = r.passage.end - 1,
        layers = layers.join(", "),
        hh = tr.h,
        k = tr.k,
        e = tr.n_experts
    );
    for e in 0..tr.n_experts {
        let _ = write!(
            h,
            "<span style=\"background:{}\">{e}</span>",
            expert_color(e)
        );
    }
    h.push_str("</div>\n<div class=\"passage\">\n");
    for t in r.passage.clone() {
        let id = tr.tokens[t];
        let shown = r.token_text[&id].replace(' ', "\u{b7}");
        let _ = write!(
            h,
            "<div class=\"tok\" data-t=\"{t}\" data-id=\"{id}\"><div class=\"txt\">{}</div>",
            html_escape(&shown)
        );
        for (l, &layer) in tr.moe_layers.iter().enumerate() {
            let (ex, g) = tr.route(t, l);
            let _ = write!(h, "<div class=\"lay\" data-layer=\"{layer}\">");
            for j in 0..tr.h {
                let _ = write!(h, "<span class=\"sub\" data-sub=\"{j}\">");
                for r_ in 0..tr.k {
                    let (e, gate) = (ex[j * tr.k + r_], g[j * tr.k + r_]);
                    let _ = write!(
                        h,
                        "<i data-e=\"{e}\" data-g=\"{gate:.4}\" style=\"background:{}\" title=\"layer {layer}, sub-token {j}, choice {}: expert {e}, gate {gate:.3}\"></i>",
                        expert_color(e as usize),
                        r_ + 1
                    );
                }
                h.push_str("</span>");
            }
            h.push_str("</div>");
        }
        h.push_str("</div>\n");
    }
    h.push_str("</div>\n</body>\n</html>\n");
    fs::write(path, h).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
