//! Every kernel on every instruction set available here against the scalar specification,
//! bit for bit: empty inputs, one block, tails, odd sizes, extreme values, random inputs from a
//! fixed-seed generator, and the whole-model logits of every test model.
//!
//! An ISA that is not available prints `SKIP <isa>: <reason>` to stderr. The environment
//! variable `MHMOE_REQUIRE_ISAS` (comma-separated [`Isa::name`]s, e.g. `avx2` on x86 CI or
//! `neon,neon-dotprod` under qemu-aarch64) lists ISAs that must run: if one of them belongs to
//! this architecture and is not available, every test here fails. ISAs of other architectures
//! in the list are proved by their own harness (tests/cortex_m.rs for the Cortex-M ones,
//! tools/test-aarch64.sh for aarch64) and only noted here.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Mutex;

use mhmoe::file::{ModelBytes, StateBuffer};
use mhmoe::kernels::{Act, Isa, Kernels, Out, Scalar, ALL_ISAS};
use mhmoe::model::Matrix;
use mhmoe::quant::{GgmlType, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK};

// ---------------------------------------------------------------------------------------------
// ISA selection
// ---------------------------------------------------------------------------------------------

/// Runs `$check::<K>(isa)` with the kernel set `K` of `$isa`; evaluates to false when this
/// test binary has no kernel set for it (which [`every_available_isa_is_exercised`] rejects
/// for an available ISA).
macro_rules! with_kernels {
    ($isa:expr, $check:ident) => {
        mhmoe::with_isa!($isa, K => { $check::<K>($isa); true }, _ => false)
    };
}

/// Runs a check on every available ISA (loudly skipping the others) after enforcing
/// `MHMOE_REQUIRE_ISAS`; returns the ISAs it ran on.
macro_rules! on_every_isa {
    ($check:ident) => {{
        enforce_required_isas();
        let mut ran = Vec::new();
        for isa in ALL_ISAS {
            if !isa.is_available() {
                skip(isa);
                continue;
            }
            assert!(
                with_kernels!(isa, $check),
                "{} is available but this test has no kernels for it",
                isa.name()
            );
            ran.push(isa);
        }
        ran
    }};
}

/// Prints `SKIP <isa>: <reason>` once per ISA and process, straight to the stderr handle so
/// that libtest's output capture does not hide it.
fn skip(isa: Isa) {
    static SKIPPED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    if !SKIPPED.lock().unwrap().insert(isa.name()) {
        return;
    }
    let reason = match isa {
        Isa::Avx2 if cfg!(target_arch = "x86_64") => "the CPU lacks AVX2 or F16C",
        Isa::Avx512 if cfg!(target_arch = "x86_64") => {
            "the CPU lacks AVX-512 F/BW/VL/VNNI (or AVX2/F16C)"
        }
        Isa::NeonDotprod if cfg!(target_arch = "aarch64") => {
            "the CPU lacks the dot-product extension"
        }
        Isa::Neon if cfg!(target_arch = "aarch64") => "the CPU lacks NEON",
        _ => "not this architecture (or its cargo feature is off)",
    };
    let _ = writeln!(std::io::stderr(), "SKIP {}: {reason}", isa.name());
}

/// The ISAs listed in `MHMOE_REQUIRE_ISAS` (comma- or space-separated; an unknown name fails).
fn required_isas() -> Vec<Isa> {
    let list = std::env::var("MHMOE_REQUIRE_ISAS").unwrap_or_default();
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|name| {
            ALL_ISAS
                .into_iter()
                .find(|i| i.name() == name)
                .unwrap_or_else(|| panic!("MHMOE_REQUIRE_ISAS names an unknown ISA {name:?}"))
        })
        .collect()
}

/// Whether this test binary's architecture can run `isa` in-process. The others are proved by
/// their own harness: the Cortex-M ISAs by tests/cortex_m.rs (firmware under
/// qemu-system-arm), the aarch64 ones by tools/test-aarch64.sh (this test under qemu-aarch64).
fn runs_here(isa: Isa) -> bool {
    match isa {
        Isa::Scalar => true,
        Isa::Avx2 | Isa::Avx512 => cfg!(target_arch = "x86_64"),
        Isa::Neon | Isa::NeonDotprod => cfg!(target_arch = "aarch64"),
        Isa::CortexMDsp | Isa::Helium => cfg!(target_arch = "arm"),
    }
}

/// Fails if `MHMOE_REQUIRE_ISAS` lists an ISA of this architecture that is not available.
fn enforce_required_isas() {
    for isa in required_isas() {
        if !runs_here(isa) {
            continue;
        }
        assert!(
            isa.is_available(),
            "MHMOE_REQUIRE_ISAS requires {} but it is not available on this CPU/build",
            isa.name()
        );
    }
}

#[test]
fn every_available_isa_is_exercised() {
    enforce_required_isas();
    fn nothing<K: Kernels>(isa: Isa) {
        assert_eq!(
            K::ISA,
            isa,
            "kernel set for {} reports another ISA",
            isa.name()
        );
    }
    let available: Vec<Isa> = ALL_ISAS.into_iter().filter(|i| i.is_available()).collect();
    let ran = on_every_isa!(nothing);
    assert_eq!(ran, available);
    for isa in required_isas() {
        if runs_here(isa) {
            assert!(
                ran.contains(&isa),
                "{} is required but did not run",
                isa.name()
            );
        } else {
            let _ = writeln!(
                std::io::stderr(),
                "note: MHMOE_REQUIRE_ISAS lists {}, which another harness proves (not this \
                 architecture)",
                isa.name()
            );
        }
    }
    // Isa::force and Isa::active agree with availability.
    for isa in ALL_ISAS {
        assert_eq!(Isa::force(Some(isa)).is_ok(), isa.is_available());
    }
    Isa::force(None).unwrap();
    assert!(Isa::detect().is_available());
    let names: Vec<&str> = ran.iter().map(|i| i.name()).collect();
    let _ = writeln!(std::io::stderr(), "exercised: {}", names.join(", "));
}

// ---------------------------------------------------------------------------------------------
// Helpers: deterministic random numbers, bitwise comparison, block builders
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// A float of widely varying magnitude (2^-20 .. 2^20), either sign.
    fn wide(&mut self) -> f32 {
        let e = self.below(41) as i32 - 20;
        self.unit() * 2f32.powi(e)
    }
    fn i8(&mut self) -> i8 {
        self.u64() as i8
    }
    /// An int8 activation value as quantize_q8_0 produces: -127..=127.
    fn q8(&mut self) -> i8 {
        (self.below(255) as i32 - 127) as i8
    }
    fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
}

fn same(a: f32, b: f32) -> bool {
    // NaN payloads are not specified across instruction sets; every other value must be
    // identical down to the sign of zero.
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[track_caller]
fn assert_same(isa: Isa, what: &str, got: f32, want: f32) {
    assert!(
        same(got, want),
        "{}: {what}: {got:e} ({:#010x}) != scalar {want:e} ({:#010x})",
        isa.name(),
        got.to_bits(),
        want.to_bits()
    );
}

#[track_caller]
fn assert_same_slice(isa: Isa, what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_same(isa, &format!("{what} [{i}]"), g, w);
    }
}

fn f16_bits(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

/// Interesting f16 block scales: ordinary, max finite, zero, smallest subnormal, negative,
/// infinities and NaN.
const SCALE_BITS: [u16; 10] = [
    0x3C00, 0x7BFF, 0x0000, 0x0001, 0xBC00, 0x2E66, 0x03FF, 0x7C00, 0xFC00, 0x7E00,
];

/// `n` Q8_0 blocks: random f16 scales (sometimes extreme) and quants from `q`.
fn q8_row(rng: &mut Rng, n: usize, mut q: impl FnMut(&mut Rng) -> i8) -> Vec<u8> {
    let mut row = Vec::with_capacity(n * Q8_0_BLOCK_BYTES);
    for _ in 0..n {
        let s = if rng.below(4) == 0 {
            SCALE_BITS[rng.below(SCALE_BITS.len())]
        } else {
            f16_bits(rng.unit() * 0.05)
        };
        row.extend(s.to_le_bytes());
        for _ in 0..QK {
            row.push(q(rng) as u8);
        }
    }
    row
}

/// `n` Q4_0 blocks with random scales and nibbles from `b`.
fn q4_row(rng: &mut Rng, n: usize, mut b: impl FnMut(&mut Rng) -> u8) -> Vec<u8> {
    let mut row = Vec::with_capacity(n * Q4_0_BLOCK_BYTES);
    for _ in 0..n {
        let s = if rng.below(4) == 0 {
            SCALE_BITS[rng.below(SCALE_BITS.len())]
        } else {
            f16_bits(rng.unit() * 0.05)
        };
        row.extend(s.to_le_bytes());
        for _ in 0..QK / 2 {
            row.push(b(rng));
        }
    }
    row
}

/// A Q8_0 activation of `n` blocks: quants from `q`, scales (as f32 widened from f16).
fn q8_act(rng: &mut Rng, n: usize, mut q: impl FnMut(&mut Rng) -> i8) -> (Vec<i8>, Vec<f32>) {
    let xq = (0..n * QK).map(|_| q(rng)).collect();
    let xd = (0..n)
        .map(|_| match rng.below(6) {
            0 => 65504.0,
            1 => 0.0,
            _ => half::f16::from_f32(rng.unit()).to_f32(),
        })
        .collect();
    (xq, xd)
}

const BLOCK_COUNTS: [usize; 12] = [0, 1, 2, 3, 7, 8, 9, 13, 16, 17, 24, 33];
const FLOAT_LENS: [usize; 14] = [0, 1, 2, 7, 8, 9, 13, 16, 31, 33, 37, 64, 100, 257];

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Quantized dot products
// ---------------------------------------------------------------------------------------------

fn check_dot_q8_0<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(1);
    for &n in &BLOCK_COUNTS {
        for case in 0..24 {
            let (row, (xq, xd)) = match case {
                // Extremes: -128/+127 everywhere, both signs, max scales.
                0 => (q8_row(&mut rng, n, |_| -128), q8_act(&mut rng, n, |_| 127)),
                1 => (q8_row(&mut rng, n, |_| 127), q8_act(&mut rng, n, |_| 127)),
                2 => (q8_row(&mut rng, n, |_| -128), q8_act(&mut rng, n, |_| -127)),
                // -128 in the activation as well (never produced by quantize_q8_0).
                3 => (q8_row(&mut rng, n, |_| -128), q8_act(&mut rng, n, |_| -128)),
                4 => (
                    q8_row(&mut rng, n, |r| r.i8()),
                    q8_act(&mut rng, n, |r| r.i8()),
                ),
                _ => (
                    q8_row(&mut rng, n, |r| r.i8()),
                    q8_act(&mut rng, n, |r| r.q8()),
                ),
            };
            let mut row = row;
            if case == 5 {
                for b in row.chunks_mut(Q8_0_BLOCK_BYTES) {
                    b[..2].copy_from_slice(&0x7BFFu16.to_le_bytes());
                }
            }
            let got = K::dot_q8_0_q8_0(&row, &xq, &xd);
            let want = Scalar::dot_q8_0_q8_0(&row, &xq, &xd);
            assert_same(isa, &format!("dot_q8_0 n={n} case={case}"), got, want);
        }
    }
    // Mismatched lengths: the shortest of row, quants and scales decides (as in the scalar zip).
    let row = q8_row(&mut rng, 9, |r| r.i8());
    let (xq, xd) = q8_act(&mut rng, 9, |r| r.q8());
    for (rb, qb, db) in [(9, 8, 9), (8, 9, 9), (9, 9, 5), (9, 9, 0)] {
        let got = K::dot_q8_0_q8_0(&row[..rb * 34], &xq[..qb * 32], &xd[..db]);
        let want = Scalar::dot_q8_0_q8_0(&row[..rb * 34], &xq[..qb * 32], &xd[..db]);
        assert_same(isa, "dot_q8_0 mismatched lengths", got, want);
    }
}

#[test]
fn dot_q8_0_q8_0_matches_scalar() {
    on_every_isa!(check_dot_q8_0);
}

fn check_dot_q4_0<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(2);
    for &n in &BLOCK_COUNTS {
        for case in 0..24 {
            let (row, (xq, xd)) = match case {
                0 => (q4_row(&mut rng, n, |_| 0x00), q8_act(&mut rng, n, |_| 127)),
                1 => (q4_row(&mut rng, n, |_| 0x00), q8_act(&mut rng, n, |_| -128)),
                2 => (q4_row(&mut rng, n, |_| 0xFF), q8_act(&mut rng, n, |_| -128)),
                3 => (q4_row(&mut rng, n, |_| 0x0F), q8_act(&mut rng, n, |_| 127)),
                4 => (
                    q4_row(&mut rng, n, |r| r.u64() as u8),
                    q8_act(&mut rng, n, |r| r.i8()),
                ),
                _ => (
                    q4_row(&mut rng, n, |r| r.u64() as u8),
                    q8_act(&mut rng, n, |r| r.q8()),
                ),
            };
            let got = K::dot_q4_0_q8_0(&row, &xq, &xd);
            let want = Scalar::dot_q4_0_q8_0(&row, &xq, &xd);
            assert_same(isa, &format!("dot_q4_0 n={n} case={case}"), got, want);
        }
    }
}

#[test]
fn dot_q4_0_q8_0_matches_scalar() {
    on_every_isa!(check_dot_q4_0);
}

// ---------------------------------------------------------------------------------------------
// Float dot products
// ---------------------------------------------------------------------------------------------

/// Random f16 bit patterns, sometimes special (max, subnormal, zero of either sign, inf).
fn f16_value(rng: &mut Rng) -> u16 {
    match rng.below(12) {
        0 => 0x7BFF,
        1 => 0xFBFF,
        2 => rng.below(0x400) as u16,
        3 => 0x8000,
        4 => 0x7C00,
        _ => f16_bits(rng.unit() * 4.0),
    }
}

fn check_dot_float_rows<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(3);
    for &n in &FLOAT_LENS {
        for case in 0..12 {
            let x: Vec<f32> = match case {
                0 => vec![65504.0; n],
                1 => vec![-0.0; n],
                _ => (0..n).map(|_| rng.wide()).collect(),
            };
            let w32: Vec<f32> = (0..n).map(|_| rng.wide()).collect();
            let r32 = le_bytes(&w32);
            assert_same(
                isa,
                &format!("dot_f32_row n={n} case={case}"),
                K::dot_f32_row(&r32, &x),
                Scalar::dot_f32_row(&r32, &x),
            );
            let r16: Vec<u8> = (0..n)
                .flat_map(|_| f16_value(&mut rng).to_le_bytes())
                .collect();
            assert_same(
                isa,
                &format!("dot_f16_row n={n} case={case}"),
                K::dot_f16_row(&r16, &x),
                Scalar::dot_f16_row(&r16, &x),
            );
            // BF16: any bit pattern, including infinities and NaNs.
            let rb: Vec<u8> = (0..n)
                .flat_map(|_| (rng.u64() as u16).to_le_bytes())
                .collect();
            assert_same(
                isa,
                &format!("dot_bf16_row n={n} case={case}"),
                K::dot_bf16_row(&rb, &x),
                Scalar::dot_bf16_row(&rb, &x),
            );
        }
    }
    // Mismatched lengths fall back to the scalar semantics.
    let x = rng.floats(13, 1.0);
    let r = le_bytes(&rng.floats(20, 1.0));
    assert_same(
        isa,
        "dot_f32_row mismatched",
        K::dot_f32_row(&r, &x),
        Scalar::dot_f32_row(&r, &x),
    );
    assert_same(
        isa,
        "dot_f16_row mismatched",
        K::dot_f16_row(&r[..22], &x),
        Scalar::dot_f16_row(&r[..22], &x),
    );
}

#[test]
fn float_row_dots_match_scalar() {
    on_every_isa!(check_dot_float_rows);
}

fn check_dot_f32<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(4);
    for &n in &FLOAT_LENS {
        for _ in 0..8 {
            let a: Vec<f32> = (0..n).map(|_| rng.wide()).collect();
            let b: Vec<f32> = (0..n + rng.below(3)).map(|_| rng.wide()).collect();
            assert_same(
                isa,
                &format!("dot_f32 n={n}"),
                K::dot_f32(&a, &b),
                Scalar::dot_f32(&a, &b),
            );
            assert_same(
                isa,
                "dot_f32 swapped",
                K::dot_f32(&b, &a),
                Scalar::dot_f32(&b, &a),
            );
        }
    }
    let big = vec![3.0e38f32; 37];
    assert_same(
        isa,
        "dot_f32 overflow",
        K::dot_f32(&big, &big),
        Scalar::dot_f32(&big, &big),
    );
}

#[test]
fn dot_f32_matches_scalar() {
    on_every_isa!(check_dot_f32);
}

// ---------------------------------------------------------------------------------------------
// Element-wise kernels
// ---------------------------------------------------------------------------------------------

fn check_axpy<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(5);
    for &n in &FLOAT_LENS {
        for a in [0.0f32, -0.0, 1.0, 0.37, -1.0e-3, 1.0e30, f32::INFINITY] {
            let v: Vec<f32> = (0..n).map(|_| rng.wide()).collect();
            let base: Vec<f32> = (0..n).map(|_| rng.wide()).collect();
            let (mut got, mut want) = (base.clone(), base);
            K::axpy(&mut got, a, &v);
            Scalar::axpy(&mut want, a, &v);
            assert_same_slice(isa, &format!("axpy n={n} a={a}"), &got, &want);
        }
    }
}

#[test]
fn axpy_matches_scalar() {
    on_every_isa!(check_axpy);
}

fn check_rmsnorm<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(6);
    for &n in &FLOAT_LENS[1..] {
        for case in 0..6 {
            let x: Vec<f32> = match case {
                0 => vec![0.0; n],
                1 => vec![1.0e20; n],
                _ => (0..n).map(|_| rng.wide()).collect(),
            };
            let w = le_bytes(&rng.floats(n, 2.0));
            let mut got = vec![0.0; n];
            let mut want = vec![0.0; n];
            let ss_got = K::rmsnorm(&mut got, &x, &w, 1e-5);
            let ss_want = Scalar::rmsnorm(&mut want, &x, &w, 1e-5);
            assert_same_slice(
                isa,
                &format!("rmsnorm mean of squares n={n} case={case}"),
                &[ss_got],
                &[ss_want],
            );
            assert_same_slice(isa, &format!("rmsnorm n={n} case={case}"), &got, &want);
        }
    }
}

#[test]
fn rmsnorm_matches_scalar() {
    on_every_isa!(check_rmsnorm);
}

fn check_softmax<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(7);
    for &n in &FLOAT_LENS {
        for case in 0..10 {
            let x: Vec<f32> = match case {
                0 => vec![0.0; n],
                1 => (0..n)
                    .map(|i| if i % 2 == 0 { -0.0 } else { 0.0 })
                    .collect(),
                2 => (0..n)
                    .map(|i| {
                        if i % 3 == 0 {
                            f32::NEG_INFINITY
                        } else {
                            rng.unit()
                        }
                    })
                    .collect(),
                3 => (0..n).map(|_| rng.unit() * 200.0).collect(),
                4 if n > 2 => {
                    let mut v = rng.floats(n, 5.0);
                    v[n / 2] = f32::NAN;
                    v
                }
                5 if n > 2 => {
                    let mut v = rng.floats(n, 5.0);
                    v[n - 1] = f32::INFINITY;
                    v
                }
                _ => (0..n).map(|_| rng.unit() * 20.0).collect(),
            };
            let (mut got, mut want) = (x.clone(), x);
            let gs = K::softmax(&mut got);
            let ws = Scalar::softmax(&mut want);
            assert_same(isa, &format!("softmax sum n={n} case={case}"), gs, ws);
            assert_same_slice(isa, &format!("softmax n={n} case={case}"), &got, &want);
        }
    }
}

#[test]
fn softmax_matches_scalar() {
    on_every_isa!(check_softmax);
}

fn check_silu_mul<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(8);
    for &n in &FLOAT_LENS {
        for _ in 0..8 {
            let g: Vec<f32> = (0..n).map(|_| rng.unit() * 120.0).collect();
            let u: Vec<f32> = (0..n).map(|_| rng.wide()).collect();
            let (mut got, mut want) = (g.clone(), g);
            K::silu_mul(&mut got, &u);
            Scalar::silu_mul(&mut want, &u);
            assert_same_slice(isa, &format!("silu_mul n={n}"), &got, &want);
        }
    }
    // A sweep over f32 bit patterns (every branch of expf, including subnormal results,
    // overflow, infinities and NaN).
    let step = 4099u32;
    let mut g: Vec<f32> = (0..=u32::MAX / step)
        .map(|i| f32::from_bits(i * step))
        .collect();
    g.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        88.72,
        -103.97,
        -87.34,
    ]);
    let u = vec![1.0f32; g.len()];
    let (mut got, mut want) = (g.clone(), g);
    K::silu_mul(&mut got, &u);
    Scalar::silu_mul(&mut want, &u);
    assert_same_slice(isa, "silu_mul sweep", &got, &want);
}

#[test]
fn silu_mul_matches_scalar() {
    on_every_isa!(check_silu_mul);
}

fn check_top_k<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(9);
    for e in [1usize, 2, 3, 7, 8, 9, 16, 33, 64] {
        for k in 1..=e.min(8) {
            for case in 0..4 {
                let p: Vec<f32> = match case {
                    0 => vec![0.25; e],
                    1 => (0..e).map(|i| (i % 3) as f32).collect(),
                    _ => (0..e).map(|_| rng.unit().abs()).collect(),
                };
                let (mut gi, mut wi) = (vec![0u32; k], vec![0u32; k]);
                let (mut gv, mut wv) = (vec![0.0f32; k], vec![0.0f32; k]);
                K::top_k(&p, &mut gi, &mut gv);
                Scalar::top_k(&p, &mut wi, &mut wv);
                assert_eq!(gi, wi, "{}: top_k indices e={e} k={k}", isa.name());
                assert_same_slice(isa, "top_k values", &gv, &wv);
            }
        }
    }
}

#[test]
fn top_k_matches_scalar() {
    on_every_isa!(check_top_k);
}

// ---------------------------------------------------------------------------------------------
// Activation quantization
// ---------------------------------------------------------------------------------------------

fn check_quantize<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(10);
    for &blocks in &[0usize, 1, 2, 3, 8, 13] {
        let n = blocks * QK;
        for case in 0..16 {
            let mut x: Vec<f32> = match case {
                0 => vec![0.0; n],
                1 => vec![-0.0; n],
                // x * id lands on .5 exactly: amax 127 gives d = 1, id = 1.
                2 => (0..n)
                    .map(|i| {
                        if i % QK == 0 {
                            127.0
                        } else {
                            (i % 7) as f32 - 3.5
                        }
                    })
                    .collect(),
                3 => (0..n).map(|_| rng.unit() * 1.0e38).collect(),
                // Subnormal amax: id overflows to infinity, the cast saturates.
                4 => (0..n).map(|_| rng.unit() * 1.0e-39).collect(),
                5 => (0..n).map(|_| rng.unit() * 1.0e-30).collect(),
                6 => (0..n).map(|_| rng.wide()).collect(),
                7 => (0..n)
                    .map(|i| {
                        if i % 5 == 0 {
                            65504.0 * 4.0
                        } else {
                            rng.unit()
                        }
                    })
                    .collect(),
                _ => (0..n).map(|_| rng.unit() * 3.0).collect(),
            };
            if n > 0 && case == 8 {
                x[n - 1] = f32::NAN;
            }
            if n > 0 && case == 9 {
                x[n / 2] = f32::INFINITY;
            }
            if n > 0 && case == 10 {
                x[0] = f32::NEG_INFINITY;
            }
            let (mut gq, mut wq) = (vec![0i8; n], vec![0i8; n]);
            let (mut gd, mut wd) = (vec![0.0f32; blocks], vec![0.0f32; blocks]);
            K::quantize_q8_0(&x, &mut gq, &mut gd);
            Scalar::quantize_q8_0(&x, &mut wq, &mut wd);
            assert_eq!(
                gq,
                wq,
                "{}: quantize_q8_0 values, {blocks} blocks, case {case}",
                isa.name()
            );
            assert_same_slice(isa, &format!("quantize_q8_0 scales case {case}"), &gd, &wd);
        }
    }
}

#[test]
fn quantize_q8_0_matches_scalar() {
    on_every_isa!(check_quantize);
}

// ---------------------------------------------------------------------------------------------
// GEMV, grouped GEMV, prepare
// ---------------------------------------------------------------------------------------------

fn random_matrix_bytes(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    match ty {
        GgmlType::F32 => le_bytes(&(0..rows * cols).map(|_| rng.unit()).collect::<Vec<_>>()),
        GgmlType::F16 => (0..rows * cols)
            .flat_map(|_| f16_bits(rng.unit()).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..rows * cols)
            .flat_map(|_| ((rng.unit().to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => q8_row(rng, rows * cols / QK, |r| r.i8()),
        GgmlType::Q4_0 => q4_row(rng, rows * cols / QK, |r| r.u64() as u8),
    }
}

const TYPES: [GgmlType; 5] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
];

fn check_gemv<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(11);
    for ty in TYPES {
        let col_options: &[usize] = if ty.is_quantized() {
            // Up to 9 blocks; then past the AVX-512 Q4_0 split layout (512 blocks) and its
            // precomputed activation data (1024 blocks), with tails of 0, 1 and 7 blocks.
            &[32, 64, 96, 256, 288, 504 * QK, 513 * QK, 1031 * QK]
        } else {
            &[1, 8, 13, 32, 37, 64]
        };
        // Shapes as given, and matrices of at least 64 KiB with short rows (8, 9, 15 and 17
        // blocks): below that size the AVX-512 GEMV hands over to AVX2, so its own short-row
        // paths need matrices this large to run.
        let mut shapes: Vec<(usize, usize)> = col_options
            .iter()
            .flat_map(|&c| [0usize, 1, 3, 4, 5, 9, 17].map(|r| (r, c)))
            .collect();
        if ty == GgmlType::F16 {
            // At least 64 KiB, rows of 16k + 8 + 3 and 16k + 8 elements (the AVX-512 F16 GEMV).
            shapes.extend([(37, 1003), (33, 1000), (41, 1024)]);
        }
        if ty.is_quantized() {
            for blocks in [8usize, 9, 15, 17] {
                let rows = (64usize << 10).div_ceil(ty.row_bytes(blocks * QK));
                shapes.extend([(rows, blocks * QK), (rows + 3, blocks * QK)]);
            }
        }
        for (rows, cols) in shapes {
            let data = random_matrix_bytes(&mut rng, ty, rows, cols);
            let w = Matrix::new(ty, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 2.0).collect();
            let (mut q, mut d) = (vec![0i8; cols], vec![0.0f32; cols.div_ceil(QK)]);
            let (mut q2, mut d2) = (q.clone(), d.clone());
            let a = K::prepare(&x, &[ty], &mut q, &mut d);
            let s = Scalar::prepare(&x, &[ty], &mut q2, &mut d2);
            assert_eq!(a.q, s.q, "{}: prepare", isa.name());
            assert_same_slice(isa, "prepare scales", a.d, s.d);
            let mut got = vec![0.0; rows];
            let mut want = vec![0.0; rows];
            K::gemv(&w, &a, &mut got);
            Scalar::gemv(&w, &s, &mut want);
            assert_same_slice(
                isa,
                &format!("gemv {} {rows}x{cols}", ty.name()),
                &got,
                &want,
            );
            for r in 0..rows {
                assert_same(
                    isa,
                    "dot_row",
                    K::dot_row(ty, w.row(r), &a),
                    Scalar::dot_row(ty, w.row(r), &s),
                );
            }
        }
    }
    // A Q8_0 activation holding -128 (the fallback path).
    let data = random_matrix_bytes(&mut rng, GgmlType::Q8_0, 6, 64);
    let w = Matrix::new(GgmlType::Q8_0, 6, 64, &data).unwrap();
    let x = vec![0.0f32; 64];
    let (q, d) = q8_act(&mut rng, 2, |_| -128);
    let a = Act {
        x: &x,
        q: &q,
        d: &d,
    };
    let (mut got, mut want) = (vec![0.0; 6], vec![0.0; 6]);
    K::gemv(&w, &a, &mut got);
    Scalar::gemv(&w, &a, &mut want);
    assert_same_slice(isa, "gemv q8_0 with -128 activation", &got, &want);
}

#[test]
fn gemv_matches_scalar() {
    on_every_isa!(check_gemv);
}

fn check_gemv_group<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(12);
    for ty in TYPES {
        for (rows, cols, items, in_div) in
            [(5, 32, 3, 1), (9, 64, 4, 2), (1, 32, 1, 1), (17, 96, 2, 3)]
        {
            let pairs = items * in_div;
            let data = random_matrix_bytes(&mut rng, ty, rows, cols);
            let w = Matrix::new(ty, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..items * cols).map(|_| rng.unit()).collect();
            let (mut q, mut d) = (vec![0i8; items * cols], vec![0.0f32; items * cols / QK]);
            let batch = Scalar::prepare(&x, &[ty], &mut q, &mut d);
            // A random subset of the pairs, in increasing order.
            let members: Vec<u32> = (0..pairs as u32).filter(|_| rng.below(3) != 0).collect();
            let mut got = vec![0.0; pairs * rows];
            let mut want = vec![0.0; pairs * rows];
            K::gemv_group(&w, &batch, &members, in_div, &mut Out::new(&mut got, rows));
            Scalar::gemv_group(&w, &batch, &members, in_div, &mut Out::new(&mut want, rows));
            assert_same_slice(
                isa,
                &format!("gemv_group {} {rows}x{cols}", ty.name()),
                &got,
                &want,
            );
        }
    }
}

#[test]
fn gemv_group_matches_scalar() {
    on_every_isa!(check_gemv_group);
}

/// A batch of `items` Q8_0 activations of `cols` elements with a chosen flavour: quantized
/// from random floats, or raw quants (-128 everywhere, random with -128) and extreme scales
/// (inf, NaN, subnormal, 65504, 0).
fn stress_batch(
    rng: &mut Rng,
    items: usize,
    cols: usize,
    flavour: usize,
) -> (Vec<f32>, Vec<i8>, Vec<f32>) {
    let x: Vec<f32> = (0..items * cols).map(|_| rng.unit()).collect();
    let (mut q, mut d) = (vec![0i8; items * cols], vec![0.0f32; items * cols / QK]);
    Scalar::quantize_q8_0(&x, &mut q, &mut d);
    match flavour {
        0 => {}
        1 => q.iter_mut().for_each(|v| *v = -128),
        2 => q
            .iter_mut()
            .for_each(|v| *v = if rng.below(4) == 0 { -128 } else { rng.i8() }),
        _ => {
            q.iter_mut().for_each(|v| *v = rng.i8());
            d.iter_mut().for_each(|v| {
                *v = match rng.below(8) {
                    0 => f32::INFINITY,
                    1 => f32::NAN,
                    2 => half::f16::from_bits(1).to_f32(),
                    3 => 65504.0,
                    4 => 0.0,
                    5 => -0.0,
                    _ => *v,
                }
            });
        }
    }
    (x, q, d)
}

/// Quantized weights with a chosen flavour: random, -128 / nibble 0x00, +127 / nibble 0xFF,
/// or random with f16 scales that are inf, NaN or subnormal on some blocks.
fn stress_weights(
    rng: &mut Rng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    flavour: usize,
) -> Vec<u8> {
    let n = rows * cols / QK;
    let mut data = match (ty, flavour % 3) {
        (GgmlType::Q8_0, 0) => q8_row(rng, n, |r| r.i8()),
        (GgmlType::Q8_0, 1) => q8_row(rng, n, |_| -128),
        (GgmlType::Q8_0, _) => q8_row(rng, n, |_| 127),
        (_, 0) => q4_row(rng, n, |r| r.u64() as u8),
        (_, 1) => q4_row(rng, n, |_| 0x00),
        _ => q4_row(rng, n, |_| 0xFF),
    };
    if flavour >= 3 {
        let bb = ty.type_size();
        for blk in data.chunks_mut(bb) {
            let s: u16 = match rng.below(6) {
                0 => 0x7C00,
                1 => 0x7E00,
                2 => 0x0001,
                _ => continue,
            };
            blk[..2].copy_from_slice(&s.to_le_bytes());
        }
    }
    data
}

/// The grouped GEMV's tiled paths: many members (37, 130; fewer, too), row counts that are not
/// a multiple of any row tile, 1..17 blocks per row, -128 activations, extreme scales, Q4_0
/// nibble extremes; and the GEMV on the same inputs.
fn check_gemv_group_stress<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(13);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        for nb in [1usize, 2, 3, 7, 8, 9, 16, 17] {
            let cols = nb * QK;
            for (case, &(rows, count, in_div)) in [
                (17usize, 130usize, 2usize),
                (33, 37, 1),
                (1, 5, 3),
                (16, 3, 1),
                (31, 2, 2),
                (7, 1, 1),
                (20, 64, 4),
            ]
            .iter()
            .enumerate()
            {
                let items = count.div_ceil(in_div) + 2;
                let pairs = items * in_div;
                let flavour = (case + nb) % 4;
                let (x, q, d) = stress_batch(&mut rng, items, cols, flavour);
                let batch = Act {
                    x: &x,
                    q: &q,
                    d: &d,
                };
                let data = stress_weights(&mut rng, ty, rows, cols, case % 6);
                let w = Matrix::new(ty, rows, cols, &data).unwrap();
                // `count` distinct members in a scrambled order.
                let mut members: Vec<u32> = (0..pairs as u32).collect();
                for i in (1..members.len()).rev() {
                    members.swap(i, rng.below(i + 1));
                }
                members.truncate(count);
                let mut got = vec![0.0; pairs * rows];
                let mut want = vec![0.0; pairs * rows];
                K::gemv_group(&w, &batch, &members, in_div, &mut Out::new(&mut got, rows));
                Scalar::gemv_group(&w, &batch, &members, in_div, &mut Out::new(&mut want, rows));
                let what = format!(
                    "gemv_group {} {rows}x{cols} members={count} in_div={in_div} flavour={flavour}",
                    ty.name()
                );
                assert_same_slice(isa, &what, &got, &want);
                let a = batch.item(cols, items - 1);
                let (mut got, mut want) = (vec![0.0; rows], vec![0.0; rows]);
                K::gemv(&w, &a, &mut got);
                Scalar::gemv(&w, &a, &mut want);
                assert_same_slice(isa, &format!("gemv, {what}"), &got, &want);
            }
        }
    }
}

#[test]
fn gemv_group_stress_matches_scalar() {
    on_every_isa!(check_gemv_group_stress);
}

/// `data` (`rows` row-major rows of `ty`, `cols` wide) in the tiled layout.
fn tiled_copy(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let rb = ty.row_bytes(cols);
    let mut t = data.to_vec();
    let mut scratch = vec![0u8; mhmoe::tile::scratch_bytes(ty, rb)];
    let bands = mhmoe::tile::tile_matrix(ty, rows, rb, &mut t, &mut scratch);
    assert_eq!(bands, rows / 16);
    t
}

/// GEMVs on tiled matrices ([`Kernels::gemv_tiled`], [`Kernels::gemv_group_tiled`]) against
/// the scalar GEMV on the same matrix row-major: F16, Q8_0, Q4_0; row counts below, at and
/// between multiples of 16 (the rows after the last band are row-major); rows of 1..1031
/// blocks (tails of every length modulo 8, past every stack buffer); one, two and many
/// members; -128 activations, extreme scales, nibble extremes; row ranges split as the
/// threads split them.
fn check_gemv_tiled<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(14);
    for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0] {
        let cols_options: &[usize] = if ty.is_quantized() {
            &[
                32,
                96,
                256,
                288,
                544,
                40 * QK,
                100 * QK,
                129 * QK,
                504 * QK,
                1031 * QK,
            ]
        } else {
            &[1, 7, 8, 13, 64, 1003, 4104]
        };
        for (case, &cols) in cols_options.iter().enumerate() {
            // Each row count with a stress flavour, and with flavour 0 (plain random weights
            // and activations) too: the extreme flavours can make every block alike or every
            // sum NaN, which would hide a block read from the wrong place.
            let mut shapes: Vec<(usize, usize)> = [0usize, 5, 16, 17, 40, 64, 150]
                .into_iter()
                .flat_map(|rows| [(rows, (case + rows) % 6), (rows, 0)])
                .collect();
            shapes.dedup();
            for (rows, flavour) in shapes {
                if rows * cols > 700_000 && rows > 17 {
                    continue;
                }
                let data = match ty {
                    GgmlType::F16 => random_matrix_bytes(&mut rng, ty, rows, cols),
                    _ => stress_weights(&mut rng, ty, rows, cols, flavour),
                };
                let tiled = tiled_copy(ty, rows, cols, &data);
                let w = Matrix::new(ty, rows, cols, &data).unwrap();
                let wt = Matrix::new_tiled(ty, rows, cols, &tiled).unwrap();
                let items = 5;
                let (x, q, d) =
                    stress_batch(&mut rng, items, cols.next_multiple_of(QK), flavour % 4);
                let xs: Vec<f32> = x
                    .chunks(cols.next_multiple_of(QK))
                    .flat_map(|c| c[..cols].to_vec())
                    .collect();
                let batch = Act {
                    x: &xs,
                    q: if ty.is_quantized() { &q } else { &[] },
                    d: if ty.is_quantized() { &d } else { &[] },
                };
                let what = format!("{} {rows}x{cols} flavour {flavour}", ty.name());
                for item in [0, items - 1] {
                    let a = batch.item(cols, item);
                    let (mut got, mut want) = (vec![0.0; rows], vec![0.0; rows]);
                    K::gemv_tiled(&wt, &a, &mut got);
                    Scalar::gemv(&w, &a, &mut want);
                    assert_same_slice(isa, &format!("gemv_tiled {what}"), &got, &want);
                    // Split at a band (or panel) boundary, as the threads split rows.
                    let cut = wt.row_align();
                    if rows > cut {
                        let (lo, hi) = (wt.rows_range(0, cut), wt.rows_range(cut, rows));
                        K::gemv_tiled(&lo, &a, &mut got[..cut]);
                        K::gemv_tiled(&hi, &a, &mut got[cut..]);
                        assert_same_slice(isa, &format!("gemv_tiled split {what}"), &got, &want);
                    }
                }
                for count in [1usize, 2, 3, 9] {
                    let mut members: Vec<u32> = (0..items as u32).collect();
                    for i in (1..members.len()).rev() {
                        members.swap(i, rng.below(i + 1));
                    }
                    members.truncate(count.min(items));
                    let mut got = vec![0.0; items * rows];
                    let mut want = vec![0.0; items * rows];
                    K::gemv_group_tiled(&wt, &batch, &members, 1, &mut Out::new(&mut got, rows));
                    Scalar::gemv_group(&w, &batch, &members, 1, &mut Out::new(&mut want, rows));
                    assert_same_slice(
                        isa,
                        &format!("gemv_group_tiled {count} {what}"),
                        &got,
                        &want,
                    );
                }
            }
        }
    }
}

#[test]
fn gemv_tiled_matches_scalar() {
    on_every_isa!(check_gemv_tiled);
}

// ---------------------------------------------------------------------------------------------
// Whole models
// ---------------------------------------------------------------------------------------------

fn check_models<K: Kernels>(isa: Isa) {
    // The forward pass dispatches by ISA itself; `K` only confirms which kernel set that is.
    assert_eq!(K::ISA, isa);
    let models = common::test_models();
    assert!(
        models.len() >= 8,
        "expected the test models, found {}",
        models.len()
    );
    const TOKENS: usize = 12;
    for path in models {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let file = ModelBytes::read(&path).unwrap();
        let model = file.model().unwrap();
        let v = model.config().vocab_size() as u32;
        let mut sb = StateBuffer::for_model(&model, TOKENS).unwrap();
        let mut ib = StateBuffer::for_model(&model, TOKENS).unwrap();
        let mut scalar = sb.state(&model).unwrap();
        let mut other = ib.state(&model).unwrap();
        for p in 0..TOKENS {
            let token = (p as u32 * 7919 + 13) % v;
            let want = mhmoe::forward_on(Isa::Scalar, &model, &mut scalar, token)
                .unwrap()
                .to_vec();
            let got = mhmoe::forward_on(isa, &model, &mut other, token).unwrap();
            assert_same_slice(isa, &format!("{name}: logits at position {p}"), got, &want);
            assert_eq!(other.weight_bytes_read(), scalar.weight_bytes_read());
        }
        for l in 0..model.config().n_layers() {
            assert_eq!(
                other.routing(&model, l),
                scalar.routing(&model, l),
                "{name}: routing"
            );
        }
    }
}

#[test]
fn whole_model_logits_are_bit_identical() {
    let ran: BTreeSet<&str> = on_every_isa!(check_models)
        .iter()
        .map(|i| i.name())
        .collect();
    assert!(ran.contains("scalar"));
}

fn check_attention_kernels<K: Kernels>(isa: Isa) {
    let mut rng = Rng::new(21);
    // Head widths (multiples of 8 and not), positions around the 8-position groups, strides
    // wider than the head (grouped-query caches).
    for hd in [8usize, 16, 24, 32, 64, 100, 128] {
        for len in [1usize, 2, 7, 8, 9, 15, 16, 17, 40] {
            let stride = hd * 3;
            let q: Vec<f32> = (0..hd).map(|_| rng.wide()).collect();
            let kv: Vec<f32> = (0..len * stride).map(|_| rng.wide()).collect();
            let (mut got, mut want) = (vec![0.0; len], vec![0.0; len]);
            K::scores(&q, &kv, stride, 0.125, &mut got);
            Scalar::scores(&q, &kv, stride, 0.125, &mut want);
            assert_same_slice(isa, &format!("scores hd={hd} len={len}"), &got, &want);

            let mut w: Vec<f32> = (0..len).map(|_| rng.unit().abs()).collect();
            if len > 2 {
                w[1] = 0.0; // exact zero weights and -0.0 products
                w[2] = -0.0;
            }
            let (mut got, mut want) = (vec![f32::NAN; hd], vec![f32::NAN; hd]);
            K::weighted_rows(&w, &kv, stride, &mut got);
            Scalar::weighted_rows(&w, &kv, stride, &mut want);
            assert_same_slice(
                isa,
                &format!("weighted_rows hd={hd} len={len}"),
                &got,
                &want,
            );
        }
    }
}

#[test]
fn attention_kernels_match_scalar() {
    on_every_isa!(check_attention_kernels);
}
