//! Truncation and byte-flip sweeps over every test model (and the shipped models in
//! `models/*.gguf` when present): each damaged file goes through the public API
//! (`tests/common/hostile.rs`: parse and walk, load, size and carve the state, build the
//! tokenizer, a couple of forward steps with sampling) under `catch_unwind`. Everything must end
//! in `Ok` or a typed `Error`: no panic, no abort, no hang (a watchdog aborts a sweep that runs
//! far too long) and no huge allocation (the state a damaged model asks for stays within a
//! small multiple of the original's).
//!
//! The sweeps are deterministic (a seeded PCG32 picks the flips), so a failure names the exact
//! mutation to reproduce.

mod common;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::hostile;
use mhmoe::gguf::Gguf;
use mhmoe::sampler::Pcg32;
use mhmoe::{Model, State};

/// How much of a file a sweep covers.
struct Plan {
    /// Every truncation below this many bytes, then every `header_stride`-th up to the end of
    /// the header region (metadata and tensor infos, at least this many bytes).
    header: usize,
    /// Stride of the truncations through the rest of the header region.
    header_stride: usize,
    /// Stride of the truncations through the tensor data.
    stride: usize,
    /// Byte flips anywhere in the file, each followed by a load and forward steps.
    flips: usize,
    /// Byte flips inside the header region (metadata and tensor infos), where a flip is far more
    /// likely to reach the parser, the configuration and the tokenizer.
    header_flips: usize,
    /// Context of the forward steps (one more step checks `ContextFull`).
    ctx: usize,
}

/// A panic in any of the harness calls becomes a failure naming the mutation.
fn run_case(label: &str, bytes: &[u8], ctx: usize, failures: &mut Vec<String>) -> Duration {
    let t = Instant::now();
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        hostile::gguf(bytes);
        hostile::model(bytes);
        hostile::tokenizer_gguf(bytes);
        hostile::run_steps(bytes, ctx);
    }));
    if let Err(p) = r {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        failures.push(format!("{label}: panicked: {msg}"));
    }
    t.elapsed()
}

/// Aborts the process if `f` takes longer than `limit`: a hang must not stall the test run.
fn with_watchdog<T>(name: &str, limit: Duration, f: impl FnOnce() -> T) -> T {
    let (tx, rx) = mpsc::channel::<()>();
    let name = name.to_string();
    let dog = std::thread::spawn(move || {
        if rx.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
            eprintln!("sweep {name} still running after {limit:?}: treating it as a hang");
            std::process::abort();
        }
    });
    let out = f();
    let _ = tx.send(());
    let _ = dog.join();
    out
}

fn sweep(path: &Path, plan: &Plan) {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let original = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    with_watchdog(&name.clone(), Duration::from_secs(240), || {
        sweep_bytes(&name, &original, plan)
    });
}

fn sweep_bytes(name: &str, original: &[u8], plan: &Plan) {
    let t0 = Instant::now();
    let g = Gguf::parse(original).expect("the original parses");
    let every = plan.header.min(original.len());
    let header = every.max(g.data_offset().min(original.len()));
    // The state the undamaged model needs: damaged ones may differ (a flipped top-k, say) but
    // only by a small factor.
    let base_state = Model::from_bytes(original)
        .ok()
        .and_then(|m| State::bytes_needed(&m, m.config().context_length().min(plan.ctx)).ok());

    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    let mut note = |d: Duration, label: &str| {
        if d > slowest.0 {
            slowest = (d, label.to_string());
        }
    };

    // 1. Truncations: all in the header region, then a stride through the data, plus the
    //    bytes around every tensor's end (where a bounds check could be off by one).
    let data_end = g
        .tensors()
        .map(|t| g.data_offset() + t.offset as usize + t.data.len())
        .max()
        .unwrap_or(0);
    let mut cuts: Vec<usize> = (0..every).collect();
    cuts.extend((every..header).step_by(plan.header_stride.max(1)));
    cuts.extend((header..original.len()).step_by(plan.stride.max(1)));
    for t in g.tensors() {
        let end = g.data_offset() + t.offset as usize + t.data.len();
        cuts.extend([end.saturating_sub(1), end, end + 1]);
    }
    cuts.retain(|&c| c < original.len());
    cuts.sort_unstable();
    cuts.dedup();
    for &len in &cuts {
        let bytes = &original[..len];
        let label = format!("{name} truncated to {len} bytes");
        let t = Instant::now();
        let r = panic::catch_unwind(|| {
            hostile::gguf(bytes);
            if len >= data_end {
                hostile::model(bytes);
                hostile::tokenizer_gguf(bytes);
            } else {
                assert!(Model::from_bytes(bytes).is_err());
            }
        });
        if r.is_err() {
            // (Cutting into a tensor's data must be an error: the assert above.)
            failures.push(format!("{label}: panicked or loaded"));
        }
        note(t.elapsed(), &label);
    }

    // 2. Byte flips: a random position (anywhere, or in the header region), a random other
    //    value; every damaged file is parsed, loaded, sized and run.
    let mut rng = Pcg32::new(0x5eed_0000 ^ original.len() as u64);
    let mut bytes = original.to_vec();
    let mut loaded = 0usize;
    let total = plan.flips + plan.header_flips;
    for i in 0..total {
        let span = if i < plan.header_flips {
            header
        } else {
            original.len()
        };
        let pos = rng.next_u32() as usize % span;
        let old = bytes[pos];
        let new = old ^ (1 + (rng.next_u32() % 255) as u8);
        bytes[pos] = new;
        let label = format!("{name} flip #{i}: byte {pos} {old:#04x} -> {new:#04x}");
        let d = run_case(&label, &bytes, plan.ctx, &mut failures);
        note(d, &label);
        if let Ok(m) = Model::from_bytes(&bytes) {
            loaded += 1;
            if let (Some(base), Ok(need)) = (
                base_state,
                State::bytes_needed(&m, m.config().context_length().min(plan.ctx)),
            ) {
                assert!(
                    need <= 16 * base,
                    "{label}: the state grew from {base} to {need} bytes"
                );
            }
        }
        bytes[pos] = old;
    }

    eprintln!(
        "{name}: {} truncations, {total} flips ({loaded} still loaded) in {:.2?}; slowest case \
         {:.2?} ({})",
        cuts.len(),
        t0.elapsed(),
        slowest.0,
        slowest.1
    );
    assert!(
        failures.is_empty(),
        "{} of the damaged files panicked; first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    // No single damaged file may take long: a slow case is a denial of service waiting to
    // happen (generous: debug builds and a loaded machine).
    assert!(
        slowest.0 < Duration::from_secs(2),
        "slowest case took {:?}: {}",
        slowest.0,
        slowest.1
    );
}

fn test_model(name: &str) -> PathBuf {
    common::root().join("tests/models").join(name)
}

const TEST_PLAN: Plan = Plan {
    header: 8192,
    header_stride: 1,
    stride: 251,
    flips: 1200,
    header_flips: 1200,
    ctx: 2,
};

macro_rules! sweep_tests {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                sweep(&test_model($file), &TEST_PLAN);
            }
        )*

        /// Every test model has a sweep above.
        #[test]
        fn every_test_model_is_swept() {
            let mut swept: Vec<&str> = vec![$($file),*];
            swept.sort_unstable();
            let mut all: Vec<String> = std::fs::read_dir(common::root().join("tests/models"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".gguf"))
                .collect();
            all.sort_unstable();
            assert_eq!(swept, all);
        }
    };
}

sweep_tests! {
    sweep_a_f32 => "a_f32_h2_k2_gqa.gguf",
    sweep_b_f16 => "b_f16_h4_k1_untied.gguf",
    sweep_c_bf16 => "c_bf16_h1_k2_norm.gguf",
    sweep_d_q8_0 => "d_q8_0_h2_k2_gqa.gguf",
    sweep_dequant_vectors => "dequant_vectors.gguf",
    sweep_e_q4_0 => "e_q4_0_h2_k2_shexp.gguf",
    sweep_f_q8_0_allmoe => "f_q8_0_h1_k1_allmoe.gguf",
    sweep_g_xmoe => "g_f32_xmoe_h2_k2.gguf",
    sweep_h_mixed => "h_mixed_h2_k3.gguf",
}

/// The shipped models (`models/*.gguf`, about 1 MB each, if present): the first 4 KiB in
/// full, a stride through the rest of the header region and through the data, and a couple of
/// hundred flips with forward steps.
#[test]
fn sweep_shipped_models() {
    let Ok(dir) = std::fs::read_dir(common::root().join("models")) else {
        return;
    };
    let mut files: Vec<PathBuf> = dir
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    files.sort();
    let plan = Plan {
        header: 4096,
        header_stride: 29,
        stride: 8191,
        flips: 150,
        header_flips: 150,
        ctx: 2,
    };
    for f in files {
        sweep(&f, &plan);
    }
}
