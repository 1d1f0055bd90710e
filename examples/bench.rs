//! The benchmark users run: decode and prompt speed at 1..N threads against the memory roofline
//! measured in the same run.
//!
//! ```text
//! cargo run --release --example bench -- --model M [--threads 1,2] [--prompt 128] [--decode 32] [--json]
//! ```
//!
//! For each thread count it measures, in interleaved rounds (medians reported):
//! - `prompt_tok_s`: a prompt of `--prompt` tokens in one [`Exec::forward_batch`] call;
//! - `decode_tok_s`: `--decode` tokens one [`Exec::forward`] call each, after that prompt;
//! - `bytes_per_token`: the weight bytes each decode step read (mean; MoE routing varies it);
//! - `bandwidth_gb_s`: a plain streaming read of a buffer much larger than the caches, on the
//!   same threads, in the same rounds;
//! - `roofline_pct`: decode speed as a share of the speed at which reading `bytes_per_token`
//!   takes all of that bandwidth (weights that stay in cache can beat 100%).
//!
//! Token ids are synthetic (`i * 7919 % vocab`): speed does not depend on the text, and
//! random-weight models (tools/gen_model.py) have no meaningful tokenizer anyway.

#[macro_use]
mod common;

use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use mhmoe::file::{Layout, ModelBytes, StateBuffer};
use mhmoe::parallel::{physical_cores, Parallel, ThreadPool};
use mhmoe::state::StateOptions;
use mhmoe::{Exec, Isa};

/// Decode and prompt tokens/s at 1..N threads, against the memory roofline.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Model file (GGUF, architecture "mhmoe").
    #[arg(short, long, default_value = common::DEMO_MODEL)]
    model: PathBuf,
    /// Thread counts, comma-separated (default: 1 up to the physical cores).
    #[arg(short, long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Prompt length in tokens (one batched forward pass).
    #[arg(short, long, default_value_t = 128)]
    prompt: usize,
    /// Tokens decoded one by one after the prompt.
    #[arg(short, long, default_value_t = 32)]
    decode: usize,
    /// Rounds (each runs every thread count once, interleaved); medians are reported.
    #[arg(short, long, default_value_t = 5)]
    rounds: usize,
    /// Bytes read by the bandwidth measurement (MiB).
    #[arg(long, default_value_t = 512)]
    bandwidth_mib: usize,
    /// Force an instruction set (see `mhmoe::kernels::ALL_ISAS` names) instead of the detected one.
    #[arg(long)]
    isa: Option<String>,
    /// Print one JSON object per thread count instead of a table.
    #[arg(long)]
    json: bool,
    /// Weight layout in memory: `auto` (tiled where this CPU reads a type faster tiled),
    /// `file` (row-major, as in the file) or `tiled` (every F16, Q8_0 and Q4_0 matrix).
    #[arg(long, default_value = "auto", value_parser = parse_layout)]
    layout: Layout,
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    match s {
        "auto" => Ok(Layout::Auto),
        "file" => Ok(Layout::File),
        "tiled" => Ok(Layout::Tiled),
        _ => Err(format!("unknown layout {s:?} (auto, file or tiled)")),
    }
}

/// One round's measurements at one thread count.
#[derive(Default, Clone)]
struct Sample {
    prompt_tok_s: f64,
    decode_tok_s: f64,
    bytes_per_token: f64,
    bandwidth_gb_s: f64,
}

/// A buffer of `bytes` bytes for the bandwidth measurement, in memory like the model's
/// ([`ModelBytes::read`] asks for huge pages, so this does too: the roofline is the read speed
/// the model's memory can have), filled so that no page is left unmapped.
fn read_buffer(bytes: usize) -> Result<memmap2::MmapMut, String> {
    let mut mem = mhmoe::file::huge_page_memory(bytes.max(64)).map_err(|e| e.to_string())?;
    for (i, b) in mem.iter_mut().enumerate() {
        *b = i as u8;
    }
    Ok(mem)
}

/// Reads `buf` once on the pool's threads (each a contiguous share); returns GB/s.
fn read_bandwidth(pool: &ThreadPool, buf: &[u8]) -> f64 {
    // SAFETY: every bit pattern is a valid u64; `align_to` puts only whole, aligned u64s in
    // the middle part.
    let (_, words, _) = unsafe { buf.align_to::<u64>() };
    let parts = pool.threads();
    let per = words.len().div_ceil(parts);
    let sums: Vec<std::sync::atomic::AtomicU64> = (0..parts).map(|_| Default::default()).collect();
    let t = Instant::now();
    pool.run(parts, &|i| {
        let chunk = &words[(i * per).min(words.len())..((i + 1) * per).min(words.len())];
        // Eight independent lanes so the sum is bound by loads, not by an add chain.
        let mut acc = [0u64; 8];
        for c in chunk.chunks_exact(8) {
            for l in 0..8 {
                acc[l] = acc[l].wrapping_add(c[l]);
            }
        }
        let s = acc.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        sums[i].store(s, std::sync::atomic::Ordering::Relaxed);
    });
    let secs = t.elapsed().as_secs_f64();
    black_box(&sums);
    (words.len() * 8) as f64 / secs / 1e9
}

/// Anonymous memory in huge pages in this process (Linux), in MiB.
fn huge_pages_mib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = s.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn run(args: Args) -> Result<(), String> {
    let err = |what: &str, e: mhmoe::Error| format!("{what}: {e}");
    let file = ModelBytes::read_with(&args.model, args.layout)
        .map_err(|e| format!("cannot read model {}: {e}", args.model.display()))?;
    let model = file
        .model()
        .map_err(|e| format!("cannot load model {}: {e}", args.model.display()))?;
    let isa = match &args.isa {
        None => Isa::detect(),
        Some(name) => mhmoe::kernels::ALL_ISAS
            .into_iter()
            .find(|i| i.name() == name)
            .ok_or_else(|| format!("unknown instruction set {name:?}"))?,
    };
    let threads = if args.threads.is_empty() {
        (1..=physical_cores()).collect()
    } else {
        args.threads.clone()
    };
    let (prompt, decode) = (args.prompt.max(1), args.decode);
    let ctx = prompt + decode;
    if ctx > model.config().context_length() {
        return Err(format!(
            "--prompt + --decode = {ctx} exceeds the model's context length {}",
            model.config().context_length()
        ));
    }
    let vocab = model.config().vocab_size();
    let tokens: Vec<u32> = (0..ctx).map(|i| (i * 7919 % vocab) as u32).collect();
    let pools = threads
        .iter()
        .map(|&n| ThreadPool::new(n).map_err(|e| err("--threads", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut buf = StateBuffer::for_model(&model, StateOptions::new(ctx).batch(prompt))
        .map_err(|e| err("state", e))?;
    let mut state = buf.state(&model).map_err(|e| err("state", e))?;
    let big =
        read_buffer(args.bandwidth_mib << 20).map_err(|e| format!("bandwidth buffer: {e}"))?;

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); pools.len()];
    for round in 0..=args.rounds {
        for (pool, out) in pools.iter().zip(samples.iter_mut()) {
            let exec = Exec::new(pool).with_isa(isa).map_err(|e| err("--isa", e))?;
            state.reset();
            let t = Instant::now();
            exec.forward_batch(&model, &mut state, &tokens[..prompt])
                .map_err(|e| err("prompt", e.into()))?;
            let prompt_secs = t.elapsed().as_secs_f64();
            let mut bytes = 0u64;
            let t = Instant::now();
            for &tok in &tokens[prompt..] {
                exec.forward(&model, &mut state, tok)
                    .map_err(|e| err("decode", e.into()))?;
                bytes += state.weight_bytes_read();
            }
            let decode_secs = t.elapsed().as_secs_f64();
            let bandwidth = read_bandwidth(pool, &big);
            // Round 0 warms caches, page tables and the threads up; it is not reported.
            if round > 0 {
                out.push(Sample {
                    prompt_tok_s: prompt as f64 / prompt_secs,
                    decode_tok_s: decode as f64 / decode_secs,
                    bytes_per_token: bytes as f64 / decode.max(1) as f64,
                    bandwidth_gb_s: bandwidth,
                });
            }
        }
    }

    let mut out = std::io::stdout().lock();
    if !args.json {
        outln!(
            out,
            "model {} ({} bytes), isa {}, prompt {prompt}, decode {decode}, {} rounds (medians), \
             huge pages {} MiB",
            args.model.display(),
            file.bytes().len(),
            isa.name(),
            args.rounds,
            huge_pages_mib().map_or("?".into(), |m| m.to_string())
        )?;
        outln!(
            out,
            "| threads | decode tok/s | prompt tok/s | bytes/token | read GB/s | % of roofline |"
        )?;
        outln!(out, "|---|---|---|---|---|---|")?;
    }
    for (&n, s) in threads.iter().zip(&samples) {
        let med = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
        let (dec, pr, bpt, bw) = (
            med(|s| s.decode_tok_s),
            med(|s| s.prompt_tok_s),
            med(|s| s.bytes_per_token),
            med(|s| s.bandwidth_gb_s),
        );
        let roofline = 100.0 * dec * bpt / (bw * 1e9);
        if args.json {
            outln!(
                out,
                "{{\"threads\": {n}, \"decode_tok_s\": {dec:.2}, \"prompt_tok_s\": {pr:.2}, \
                 \"bytes_per_token\": {bpt:.0}, \"bandwidth_gb_s\": {bw:.2}, \
                 \"roofline_pct\": {roofline:.1}, \"isa\": \"{}\"}}",
                isa.name()
            )?;
        } else {
            outln!(
                out,
                "| {n} | {dec:.1} | {pr:.1} | {bpt:.0} | {bw:.1} | {roofline:.0}% |"
            )?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    common::exit(run(Args::parse()))
}
