//! Generate text from an mhmoe model: the main job.
//!
//! ```text
//! cargo run --release --example generate -- "It is a truth universally acknowledged"
//! ```
//!
//! Streams the continuation to stdout and reports speed on stderr. With no `--model` it uses the
//! shipped demo model `models/mhmoe-demo-q8_0.gguf`. The context is the prompt plus the tokens
//! asked for (at most the model's) unless `--ctx` says otherwise; stderr says which, and the
//! bytes its state takes, before allocating it. A failed write (a closed pipe, a full disk)
//! ends the run with an error.

#[macro_use]
mod common;

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::parallel::{physical_cores, Parallel, ThreadPool};
use mhmoe::sampler::{Sampler, SamplerParams};
use mhmoe::state::{KvType, State, StateOptions};
use mhmoe::tokenizer::TokenizerBuf;
use mhmoe::{Exec, Isa};

/// Generate text with an MH-MoE model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The prompt to continue.
    #[arg(default_value = "It is a truth universally acknowledged")]
    prompt: String,
    /// Model file (GGUF, architecture "mhmoe").
    #[arg(short, long, default_value = common::DEMO_MODEL)]
    model: PathBuf,
    /// Number of tokens to generate.
    #[arg(short = 'n', long, default_value_t = 200)]
    tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(short, long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Random seed (the output is the same for the same seed, model and options).
    #[arg(short, long, default_value_t = 42)]
    seed: u64,
    /// Greedy decoding (argmax), ignoring temperature, top-k and top-p.
    #[arg(long)]
    greedy: bool,
    /// Context length (default: the prompt plus the tokens asked for, at most the model's).
    #[arg(long)]
    ctx: Option<usize>,
    /// Force an instruction set (scalar, avx2, avx512, neon, neon-dotprod) instead of the
    /// detected one.
    #[arg(long)]
    isa: Option<String>,
    /// Threads (default: one per physical core). The output does not depend on it.
    #[arg(short = 'j', long)]
    threads: Option<usize>,
    /// Most prompt tokens run in one batched forward pass (longer prompts take several).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// KV cache storage: f32, f16, q8_0 or q4_0 (README, "KV cache").
    #[arg(long, default_value = "f32", value_parser = common::parse_kv)]
    kv: KvType,
}

fn run(args: Args) -> Result<(), String> {
    let ctx_err = |what: &str, e: mhmoe::Error| format!("{what}: {e}");
    let token_err = |what: &str, e: mhmoe::TokenError| format!("{what}: {e}");
    if let Some(name) = &args.isa {
        let isa = mhmoe::kernels::ALL_ISAS
            .into_iter()
            .find(|i| i.name() == name)
            .ok_or_else(|| format!("unknown instruction set {name:?}"))?;
        Isa::force(Some(isa)).map_err(|e| ctx_err("--isa", e))?;
    }
    let file = ModelBytes::read(&args.model)
        .map_err(|e| format!("cannot read model {}: {e}", args.model.display()))?;
    let model = file
        .model()
        .map_err(|e| format!("cannot load model {}: {e}", args.model.display()))?;
    // The tokenizer's errors say "tokenizer" themselves.
    let tok_buf =
        TokenizerBuf::new(model.gguf()).map_err(|e| format!("{}: {e}", args.model.display()))?;
    let tok = tok_buf.tokenizer();
    let params = if args.greedy {
        SamplerParams::GREEDY
    } else {
        SamplerParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
        }
    };
    let mut sampler = Sampler::new(params, args.seed).map_err(|e| e.to_string())?;
    let mut scratch = vec![0u32; sampler.scratch_len(model.config().vocab_size())];

    let mut prompt: Vec<u32> = tok.bos().into_iter().collect();
    prompt.extend(
        tok.encode_to_vec(args.prompt.as_bytes())
            .map_err(|e| ctx_err("prompt", e))?,
    );
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    // The model's context may be far longer than this run needs (and than memory holds): by
    // default the state holds the prompt and the tokens asked for.
    let max = model.config().context_length();
    let (ctx, why) = match args.ctx {
        Some(c) => (c, "--ctx".to_string()),
        None => (
            (prompt.len().saturating_add(args.tokens)).min(max),
            format!("prompt {} + {} tokens asked for", prompt.len(), args.tokens),
        ),
    };
    if prompt.len() > ctx {
        return Err(format!(
            "the prompt is {} tokens, longer than the context of {ctx} tokens",
            prompt.len()
        ));
    }
    let batch = args.batch.clamp(1, prompt.len());
    let opts = StateOptions::new(ctx).batch(batch).kv(args.kv);
    let bytes = State::bytes_needed(&model, opts).map_err(|e| ctx_err("context", e))?;
    errln!(
        "[context {ctx} positions ({why}; the model allows {max}; --ctx to change): state {bytes} \
         bytes]"
    )?;
    let mut buf = StateBuffer::for_model(&model, opts).map_err(|e| ctx_err("context", e))?;
    let mut state = buf.state(&model).map_err(|e| ctx_err("state", e))?;
    let pool = ThreadPool::new(args.threads.unwrap_or_else(physical_cores))
        .map_err(|e| ctx_err("--threads", e))?;
    let exec = Exec::new(&pool);

    // Text is written as it comes; the first failed write is kept and ends the run.
    let out = RefCell::new((std::io::stdout().lock(), None::<std::io::Error>));
    let mut emit = |s: &str| {
        let (w, failed) = &mut *out.borrow_mut();
        if failed.is_none() {
            if let Err(e) = w.write_all(s.as_bytes()).and_then(|()| w.flush()) {
                *failed = Some(e);
            }
        }
    };
    let write_error = || {
        out.borrow_mut()
            .1
            .take()
            .map(common::write_failed("stdout"))
    };
    emit(&args.prompt);
    if let Some(e) = write_error() {
        return Err(e);
    }

    let t_prompt = Instant::now();
    let mut logits_ready = false;
    for chunk in prompt.chunks(batch) {
        exec.forward_batch(&model, &mut state, chunk)
            .map_err(|e| token_err("forward", e))?;
        logits_ready = true;
    }
    let prompt_time = t_prompt.elapsed();

    let mut decoder = tok.decoder();
    let t_gen = Instant::now();
    let mut generated = 0usize;
    let mut stop_reason = "token limit";
    while generated < args.tokens && logits_ready {
        let next = sampler
            .sample(state.logits(), &mut scratch)
            .map_err(|e| token_err("sampling", e))?;
        if Some(next) == tok.eos() {
            stop_reason = "end-of-sequence token";
            break;
        }
        decoder
            .push(&tok, next, &mut emit)
            .map_err(|e| ctx_err("decode", e))?;
        if let Some(e) = write_error() {
            return Err(e);
        }
        generated += 1;
        if generated == args.tokens {
            break;
        }
        if state.pos() == ctx {
            stop_reason = "context full";
            break;
        }
        exec.forward(&model, &mut state, next)
            .map_err(|e| token_err("forward", e))?;
    }
    decoder.flush(&mut emit);
    emit("\n");
    if let Some(e) = write_error() {
        return Err(e);
    }
    let gen_time = t_gen.elapsed().as_secs_f64();
    errln!(
        "\n[{} prompt tokens in {:.3} s; {generated} tokens generated in {gen_time:.3} s = {:.1} tokens/s; stopped: {stop_reason}; isa {}; {} threads; model {}]",
        prompt.len(),
        prompt_time.as_secs_f64(),
        generated as f64 / gen_time.max(1e-9),
        Isa::active().name(),
        pool.threads(),
        args.model.display(),
    )
}

fn main() -> ExitCode {
    common::exit(run(Args::parse()))
}
