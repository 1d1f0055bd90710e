//! Whole-token decode speed per ISA: the demo-size model and a synthetic model with about
//! 100 MB of weights read per token. Throughput is in bytes of weights read per token
//! (`State::weight_bytes_read` of the first token), so the large model's figure compares
//! directly with the read bandwidth in `benches/kernels.rs`.
//!
//! The demo model is `models/mhmoe-demo-q8_0.gguf` when it exists, else a random model of the
//! same shape (benches/common/synth.rs). Nothing is written to disk.
//!
//! `cargo bench --bench decode -- --warm-up-time 1 --measurement-time 3` (see BENCHMARKS.md).
//! Under `cargo test --all-targets` criterion runs each benchmark once, on small models.

mod common {
    pub mod synth;
}

use std::hint::black_box;
use std::time::Instant;

use common::synth::{build, Synth};
use criterion::{Criterion, Throughput};
use mhmoe::file::StateBuffer;
use mhmoe::{Isa, Model};

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Decodes tokens one after the other on `isa`, starting over when the context is full.
fn bench_model(c: &mut Criterion, label: &str, bytes: &[u8]) {
    let model: Model<'_> = Model::from_bytes(bytes).expect("synthetic model loads");
    let ctx = model.config().context_length().min(64);
    let mut buf = StateBuffer::for_model(&model, ctx).unwrap();
    let mut state = buf.state(&model).unwrap();
    mhmoe::forward_on(Isa::Scalar, &model, &mut state, 1).unwrap();
    let per_token = state.weight_bytes_read();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(per_token));
    if bench_mode() {
        println!(
            "{label}: {:.1} MB of weights in the file, {:.2} MB read per token",
            bytes.len() as f64 / 1e6,
            per_token as f64 / 1e6
        );
    }
    let vocab = model.config().vocab_size() as u32;
    for isa in mhmoe::kernels::ALL_ISAS
        .into_iter()
        .filter(|i| i.is_available())
    {
        state.reset();
        let mut token = 1u32;
        g.bench_function(format!("{label}/{}", isa.name()), |b| {
            b.iter(|| {
                if state.pos() == ctx {
                    state.reset();
                }
                let logits = mhmoe::forward_on(isa, &model, &mut state, black_box(token)).unwrap();
                token = (token * 7919 + logits.len() as u32) % vocab;
            })
        });
    }
    g.finish();
}

/// Per-token time on every ISA from interleaved runs (one token on each ISA per round, the
/// minimum over rounds), so that a shared machine's load affects all ISAs alike.
fn summary(label: &str, bytes: &[u8], rounds: usize) {
    let model: Model<'_> = Model::from_bytes(bytes).expect("model loads");
    let ctx = model.config().context_length().min(64);
    let isas: Vec<Isa> = mhmoe::kernels::ALL_ISAS
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    let mut bufs: Vec<StateBuffer> = isas
        .iter()
        .map(|_| StateBuffer::for_model(&model, ctx).unwrap())
        .collect();
    let mut states: Vec<_> = bufs.iter_mut().map(|b| b.state(&model).unwrap()).collect();
    let mut best = vec![f64::MAX; isas.len()];
    let mut per_token = 0;
    // A read-bandwidth probe of the same order as the weights, run every few rounds.
    let probe: Vec<u64> = vec![1; bytes.len().max(64 << 20) / 8];
    let mut probe_best = f64::MAX;
    for round in 0..rounds {
        if round % (rounds / 10).max(1) == 0 {
            let t = Instant::now();
            black_box(read_sum(black_box(&probe)));
            probe_best = probe_best.min(t.elapsed().as_secs_f64());
        }
        let token = (round as u32 * 7919 + 1) % model.config().vocab_size() as u32;
        for ((isa, state), b) in isas.iter().zip(states.iter_mut()).zip(best.iter_mut()) {
            if state.pos() == ctx {
                state.reset();
            }
            let t = Instant::now();
            black_box(mhmoe::forward_on(*isa, &model, state, token).unwrap());
            *b = b.min(t.elapsed().as_secs_f64());
            per_token = state.weight_bytes_read();
        }
    }
    let bw = (probe.len() * 8) as f64 / probe_best / 1e9;
    println!(
        "read bandwidth ({} MiB buffer, 8 streams): {bw:.2} GB/s",
        probe.len() >> 17
    );
    for (isa, t) in isas.iter().zip(&best) {
        println!(
            "{label} on {}: {:.3} ms/token ({:.0} tokens/s), {:.2} GB/s of weights ({:.0}% of \
             the read bandwidth), {:.2}x scalar",
            isa.name(),
            t * 1e3,
            1.0 / t,
            per_token as f64 / t / 1e9,
            100.0 * per_token as f64 / t / 1e9 / bw,
            best[0] / t
        );
    }
}

/// Sums a buffer as eight concurrent sequential streams (as `benches/kernels.rs` does).
fn read_sum(buf: &[u64]) -> u64 {
    let part = buf.len() / 8 / 8 * 8;
    let parts: [&[u64]; 8] = core::array::from_fn(|i| &buf[i * part..(i + 1) * part]);
    let mut acc = [[0u64; 2]; 8];
    for i in (0..part).step_by(8) {
        for (a, p) in acc.iter_mut().zip(&parts) {
            let c = &p[i..i + 8];
            a[0] = a[0].wrapping_add(c[0] ^ c[2] ^ c[4] ^ c[6]);
            a[1] = a[1].wrapping_add(c[1] ^ c[3] ^ c[5] ^ c[7]);
        }
    }
    acc.iter().flatten().fold(0, |s, &a| s.wrapping_add(a))
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let demo_path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mhmoe-demo-q8_0.gguf");
    let (label, demo) = match std::fs::read(demo_path) {
        Ok(b) => ("demo_q8_0", b),
        Err(_) => ("demo_shape_synthetic_q8_0", build(&Synth::DEMO, 1)),
    };
    bench_model(&mut c, label, &demo);
    let large = if bench_mode() {
        Synth::LARGE
    } else {
        // A quick stand-in under `cargo test`.
        Synth {
            dim: 256,
            dense_ff: 512,
            expert_ff: 128,
            vocab: 512,
            ..Synth::LARGE
        }
    };
    let bytes = build(&large, 2);
    bench_model(&mut c, "large_synthetic_q8_0", &bytes);
    c.final_summary();
    if bench_mode() {
        println!("\n== summary: minimum of interleaved runs in this process ==");
        summary(label, &demo, 2000);
        summary("large_synthetic_q8_0", &bytes, 60);
    }
}
