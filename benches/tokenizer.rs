//! Tokenizer speed on the shipped vocabulary: encoding and decoding `models/heldout-sample.txt`
//! (36 KB of English), and building the tokenizer (`Tokenizer::new`) for each shipped model.
//!
//! `cargo bench --bench tokenizer -- --warm-up-time 1 --measurement-time 3`. Under
//! `cargo test --all-targets` criterion runs each benchmark once. With `--bench`, a summary
//! follows: the fastest of 300 runs of each, which a shared machine's load disturbs least.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, Throughput};
use mhmoe::gguf::Gguf;
use mhmoe::tokenizer::Tokenizer;

const MODELS: [&str; 2] = ["mhmoe-demo-q8_0.gguf", "smoe-twin-q8_0.gguf"];

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The fastest of `runs` calls of `f`, in seconds.
fn fastest(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read(root.join("models/heldout-sample.txt")).expect("held-out sample");
    let mut summary = Vec::new();
    for name in MODELS {
        let bytes = std::fs::read(root.join("models").join(name)).expect("shipped model");
        let g = Gguf::parse(&bytes).unwrap();
        let label = name.trim_end_matches(".gguf");
        let mut ws = vec![0u32; Tokenizer::workspace_len(&g).unwrap()];

        let mut group = c.benchmark_group("tokenizer");
        group.bench_function(format!("{label}/new"), |b| {
            b.iter(|| {
                black_box(Tokenizer::new(black_box(&g), &mut ws).unwrap());
            })
        });
        let tok = Tokenizer::new(&g, &mut ws).unwrap();
        let mut ids = vec![0u32; text.len()];
        let n = tok.encode(&text, &mut ids).unwrap();
        ids.truncate(n);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(format!("{label}/encode_heldout"), |b| {
            let mut out = vec![0u32; text.len()];
            b.iter(|| black_box(tok.encode(black_box(&text), &mut out).unwrap()))
        });
        group.bench_function(format!("{label}/decode_heldout"), |b| {
            let mut out = Vec::with_capacity(text.len());
            b.iter(|| {
                out.clear();
                for &id in &ids {
                    tok.token_bytes(id, &mut |s: &[u8]| out.extend_from_slice(s))
                        .unwrap();
                }
                black_box(out.len())
            })
        });
        group.finish();
        if bench_mode() {
            let mut out = vec![0u32; text.len()];
            let t_new = fastest(300, || {
                black_box(Tokenizer::new(black_box(&g), &mut ws).unwrap());
            });
            let tok = Tokenizer::new(&g, &mut ws).unwrap();
            let t_enc = fastest(300, || {
                black_box(tok.encode(black_box(&text), &mut out).unwrap());
            });
            summary.push(format!(
                "{label}: new {:.1} us, encode {:.3} ms ({:.2} MB/s), workspace {} bytes",
                t_new * 1e6,
                t_enc * 1e3,
                text.len() as f64 / t_enc / 1e6,
                ws.len() * 4
            ));
        }
    }
    c.final_summary();
    for line in summary {
        println!("{line}");
    }
}
