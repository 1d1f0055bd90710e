//! Shared helpers for the integration tests: the tolerance table and the golden-file reader.
#![allow(dead_code)]

pub mod builder;
pub mod hostile;

use std::path::{Path, PathBuf};

use mhmoe::quant::GgmlType;

/// Largest allowed `|engine - reference|` of a logit, relative to the largest `|logit|` of that
/// position, by the weight type of the model's matrices. The one place tolerances live.
///
/// Why these numbers: the engine computes in f32 with a fixed summation order, the numpy
/// reference (tools/mhmoe_tools/reference.py) in f64, so float models differ by f32 rounding
/// (about 1e-6 relative per operation, a few hundred operations deep). Quantized models use the
/// same Q8_0 activation quantization on both sides and exact integer block sums, so they differ
/// only when an f32-vs-f64 rounding difference moves an activation across a quantization
/// boundary: one int8 step of one element, which the next layers carry. Measured worst cases
/// are noted next to each entry (`cargo test --test golden -- --nocapture` prints them).
pub fn logit_tolerance(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 => 1e-5,
        GgmlType::F16 | GgmlType::BF16 => 1e-5,
        GgmlType::Q8_0 | GgmlType::Q4_0 => 2e-3,
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// All test models (`tests/models/*.gguf` holding an mhmoe model), sorted by name.
pub fn test_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/models"))
        .expect("tests/models exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("dequant")
        })
        .collect();
    v.sort();
    v
}

/// A golden file written by tools/mhmoe_tools/make_goldens.py.
pub struct Golden {
    pub vocab: usize,
    pub n_prompt: usize,
    pub tokens: Vec<u32>,
    /// `logits[p]` is the reference's output after feeding `tokens[p]` at position `p`.
    pub logits: Vec<Vec<f32>>,
}

fn u32_at(b: &[u8], off: &mut usize) -> u32 {
    let v = u32::from_le_bytes(b[*off..*off + 4].try_into().unwrap());
    *off += 4;
    v
}

impl Golden {
    pub fn read(path: &Path) -> Golden {
        let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut off = 0;
        assert_eq!(u32_at(&b, &mut off), 0x4C47_484D, "golden magic");
        assert_eq!(u32_at(&b, &mut off), 1, "golden version");
        let vocab = u32_at(&b, &mut off) as usize;
        let n_prompt = u32_at(&b, &mut off) as usize;
        let n_total = u32_at(&b, &mut off) as usize;
        let tokens: Vec<u32> = (0..n_total).map(|_| u32_at(&b, &mut off)).collect();
        let logits = (0..n_total - 1)
            .map(|_| {
                (0..vocab)
                    .map(|_| f32::from_bits(u32_at(&b, &mut off)))
                    .collect()
            })
            .collect();
        assert_eq!(off, b.len(), "golden file has trailing bytes");
        Golden {
            vocab,
            n_prompt,
            tokens,
            logits,
        }
    }
}

/// Index of the largest value, ties to the lowest index.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// The path of example `name`, built first (all examples, once per test process) with the
/// profile and target directory of the running test.
pub fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // The test runs from <target dir>/<profile>/deps/.
        let exe = std::env::current_exe().expect("the test's path");
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "--examples"])
            .current_dir(root())
            .env("CARGO_TARGET_DIR", profile.parent().expect("target dir"));
        if profile.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "cargo build --examples failed");
        profile.join("examples")
    });
    dir.join(name)
}

/// Removes from `cmd` the environment of this test run that would change a nested `cargo`
/// build: every `CARGO_*` variable except the home, network and registry settings, the
/// rustflags and rustc wrappers, and the variables named in `extra`.
pub fn clear_build_env(cmd: &mut std::process::Command, extra: &[&str]) {
    const KEEP: [&str; 4] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
    ];
    const DROP: [&str; 4] = [
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ];
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let keep = KEEP.iter().any(|p| k.starts_with(p));
        if (k.starts_with("CARGO_") && !keep)
            || DROP.contains(&k.as_ref())
            || extra.contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
}
