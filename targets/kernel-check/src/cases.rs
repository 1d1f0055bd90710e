//! Conformance cases: every method of [`Kernels`] for the ISA under test against [`Scalar`], the
//! specification, bit for bit, on fixed-seed inputs: empty, one block, tails, odd sizes, extreme
//! quants (all -128 / +127, Q4_0 nibbles all 0 / 15), extreme scales (f16 max 65504, zero,
//! subnormal, infinities and NaN), unaligned rows, short inputs, and random data.
//!
//! Shared by the firmware (`src/main.rs`) and the host test (`tests/cortex_m.rs`), which runs it
//! with the scalar kernels on the host: both print [`Checker::hash`], a hash of every scalar
//! output, so the test also checks that the scalar kernels on the device compute what they
//! compute on the desktop. `no_std`, no allocation: the caller provides [`Bufs`].

use core::fmt;

use mhmoe::kernels::{Act, Kernels, Scalar};
use mhmoe::model::Matrix;
use mhmoe::quant::{f16_to_f32, GgmlType, QK};

/// Most blocks in one row (65 is past the DSP Q4_0 GEMV's 64-block sum cache).
pub const MAX_NB: usize = 66;
/// Most elements of one vector.
pub const MAX_N: usize = MAX_NB * QK;
/// Bytes of the weight buffer.
pub const W_BYTES: usize = 24 * 1024;

/// Every kernel checked, in report order. A test checks that each one ran.
pub const KERNELS: [&str; 18] = [
    "quantize_q8_0",
    "prepare",
    "dot_q8_0_q8_0",
    "dot_q4_0_q8_0",
    "gemv_q8_0",
    "gemv_q4_0",
    "gemv_f32",
    "gemv_f16",
    "gemv_bf16",
    "dot_f32_row",
    "dot_f16_row",
    "dot_bf16_row",
    "dot_f32",
    "axpy",
    "rmsnorm",
    "softmax",
    "silu_mul",
    "top_k",
];

const QUANTIZE: usize = 0;
const PREPARE: usize = 1;
const DOT_Q8: usize = 2;
const DOT_Q4: usize = 3;
const GEMV_Q8: usize = 4;
const GEMV_Q4: usize = 5;
const GEMV_F32: usize = 6;
const GEMV_F16: usize = 7;
const GEMV_BF16: usize = 8;
const DOT_F32_ROW: usize = 9;
const DOT_F16_ROW: usize = 10;
const DOT_BF16_ROW: usize = 11;
const DOT_F32: usize = 12;
const AXPY: usize = 13;
const RMSNORM: usize = 14;
const SOFTMAX: usize = 15;
const SILU_MUL: usize = 16;
const TOP_K: usize = 17;

/// Input and output buffers (about 90 KB; firmware keeps them in a static).
pub struct Bufs {
    w: [u8; W_BYTES],
    xq: [i8; MAX_N + QK],
    xd: [f32; MAX_NB + 1],
    f: [[f32; MAX_N]; 2],
    a: [f32; MAX_N],
    b: [f32; MAX_N],
    qa: [i8; MAX_N],
    qb: [i8; MAX_N],
    da: [f32; MAX_NB],
    db: [f32; MAX_NB],
    ia: [u32; 8],
    ib: [u32; 8],
}

impl Bufs {
    /// All zeros (const, so that a static lands in .bss).
    pub const ZERO: Bufs = Bufs {
        w: [0; W_BYTES],
        xq: [0; MAX_N + QK],
        xd: [0.0; MAX_NB + 1],
        f: [[0.0; MAX_N]; 2],
        a: [0.0; MAX_N],
        b: [0.0; MAX_N],
        qa: [0; MAX_N],
        qb: [0; MAX_N],
        da: [0.0; MAX_NB],
        db: [0.0; MAX_NB],
        ia: [0; 8],
        ib: [0; 8],
    };
}

/// SplitMix64: small, fixed-seed, the same on every target.
pub struct Rng(u64);

impl Rng {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn below(&mut self, n: u32) -> u32 {
        self.u32() % n
    }

    /// Uniform in [-1, 1) times `scale`.
    fn f32(&mut self, scale: f32) -> f32 {
        ((self.u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0) * scale
    }
}

/// How quantized inputs are filled.
#[derive(Clone, Copy, Debug)]
enum Fill {
    Random,
    /// Weights and activations all at their minimum (-128, Q4_0 nibble 0 = -8).
    AllMin,
    /// All at their maximum (+127, nibble 15 = +7).
    AllMax,
    /// Weights at the minimum, activations at +127.
    MinMax,
    /// Random quants, every scale 65504 (the largest f16).
    MaxScale,
    /// Random quants, weight scales 0 and -0.
    ZeroScale,
    /// Random quants, scales from all finite f16 including subnormals.
    WideScale,
    /// Weight scales include infinities and NaN.
    NonFinite,
    /// Activation scales that are arbitrary f32 (not f16), including f32 subnormals.
    F32Scale,
    /// Weight scales -0, quants and activations at their maximum, activation scales positive:
    /// every block's term is -0.0, and the specification's result +0.0 (its lanes start at
    /// +0.0).
    NegZeroTerms,
}

const FILLS: [Fill; 10] = [
    Fill::Random,
    Fill::AllMin,
    Fill::AllMax,
    Fill::MinMax,
    Fill::MaxScale,
    Fill::ZeroScale,
    Fill::WideScale,
    Fill::NonFinite,
    Fill::F32Scale,
    Fill::NegZeroTerms,
];

fn normal_f16(rng: &mut Rng) -> u16 {
    let sign = (rng.below(2) as u16) << 15;
    let exp = (8 + rng.below(15) as u16) << 10;
    sign | exp | (rng.below(1024) as u16)
}

fn weight_scale(fill: Fill, rng: &mut Rng) -> u16 {
    match fill {
        Fill::MaxScale => 0x7BFF,
        Fill::ZeroScale => [0x0000, 0x8000][rng.below(2) as usize],
        Fill::NegZeroTerms => 0x8000,
        Fill::WideScale => loop {
            let b = rng.u32() as u16;
            if b & 0x7C00 != 0x7C00 {
                break b;
            }
        },
        Fill::NonFinite => match rng.below(6) {
            0 => 0x7C00,
            1 => 0xFC00,
            2 => 0x7E00,
            3 => 0x7D01,
            _ => normal_f16(rng),
        },
        _ => normal_f16(rng),
    }
}

fn act_scale(fill: Fill, rng: &mut Rng) -> f32 {
    match fill {
        Fill::MaxScale => 65504.0,
        Fill::NegZeroTerms => f16_to_f32(normal_f16(rng) & 0x7FFF),
        Fill::WideScale => f16_to_f32(weight_scale(fill, rng)),
        Fill::F32Scale => match rng.below(4) {
            0 => f32::from_bits(1 + rng.below(0x7F_FFFF)),
            1 => f32::from_bits(rng.u32() & 0x7F7F_FFFF),
            _ => rng.f32(1.0),
        },
        _ => f16_to_f32(normal_f16(rng)),
    }
}

/// Fills `nblocks` consecutive blocks of type `ty` (Q8_0 or Q4_0) at the start of `w`.
fn fill_blocks(w: &mut [u8], ty: GgmlType, nblocks: usize, fill: Fill, rng: &mut Rng) {
    let bb = ty.type_size();
    for blk in w[..nblocks * bb].chunks_exact_mut(bb) {
        blk[..2].copy_from_slice(&weight_scale(fill, rng).to_le_bytes());
        let (lo, hi) = if ty == GgmlType::Q8_0 {
            (0x80u8, 0x7Fu8)
        } else {
            (0x00u8, 0xFFu8)
        };
        for q in &mut blk[2..] {
            *q = match fill {
                Fill::AllMin | Fill::MinMax => lo,
                Fill::AllMax | Fill::NegZeroTerms => hi,
                _ => rng.u32() as u8,
            };
        }
    }
}

fn fill_act(xq: &mut [i8], xd: &mut [f32], fill: Fill, rng: &mut Rng) {
    for q in xq.iter_mut() {
        *q = match fill {
            Fill::AllMin => -128,
            Fill::AllMax | Fill::MinMax | Fill::NegZeroTerms => 127,
            _ => rng.u32() as i8,
        };
    }
    for d in xd.iter_mut() {
        *d = act_scale(fill, rng);
    }
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Compares results, counts cases per kernel, hashes the scalar outputs, reports mismatches.
pub struct Checker<'r> {
    /// FNV-1a over the bits of every scalar output, in order.
    pub hash: u64,
    /// Cases and mismatching cases per entry of [`KERNELS`].
    pub counts: [(u32, u32); KERNELS.len()],
    report: &'r mut dyn FnMut(fmt::Arguments<'_>),
    shown: u32,
}

impl<'r> Checker<'r> {
    /// A checker printing through `report`.
    pub fn new(report: &'r mut dyn FnMut(fmt::Arguments<'_>)) -> Self {
        Checker {
            hash: 0xCBF2_9CE4_8422_2325,
            counts: [(0, 0); KERNELS.len()],
            report,
            shown: 0,
        }
    }

    fn mix(&mut self, v: u32) {
        // NaN payloads and signs are not specified (they differ between x86 and ARM).
        let v = if f32::from_bits(v).is_nan() {
            0x7FC0_0000
        } else {
            v
        };
        for byte in v.to_le_bytes() {
            self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3);
        }
    }

    /// Total cases and mismatching cases.
    pub fn totals(&self) -> (u32, u32) {
        self.counts
            .iter()
            .fold((0, 0), |(c, f), &(cc, ff)| (c + cc, f + ff))
    }

    fn case(&mut self, k: usize, case: fmt::Arguments<'_>, mismatch: Option<(usize, u32, u32)>) {
        self.counts[k].0 += 1;
        if let Some((i, got, want)) = mismatch {
            self.counts[k].1 += 1;
            if self.shown < 12 {
                self.shown += 1;
                (self.report)(format_args!(
                    "MISMATCH {} [{}] at {}: got {:#010x} ({:e}), want {:#010x} ({:e})",
                    KERNELS[k],
                    case,
                    i,
                    got,
                    f32::from_bits(got),
                    want,
                    f32::from_bits(want)
                ));
            }
        }
    }

    fn f32s(&mut self, k: usize, case: fmt::Arguments<'_>, got: &[f32], want: &[f32]) {
        let mut bad = None;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            self.mix(w.to_bits());
            if bad.is_none() && !same(g, w) {
                bad = Some((i, g.to_bits(), w.to_bits()));
            }
        }
        if bad.is_none() && got.len() != want.len() {
            bad = Some((got.len().min(want.len()), 0, 0));
        }
        self.case(k, case, bad);
    }

    fn i8s(&mut self, k: usize, case: fmt::Arguments<'_>, got: &[i8], want: &[i8]) {
        let mut bad = None;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            self.mix(w as u8 as u32 | 0x100);
            if bad.is_none() && g != w {
                bad = Some((i, g as u8 as u32, w as u8 as u32));
            }
        }
        self.case(k, case, bad);
    }

    fn u32s(&mut self, k: usize, case: fmt::Arguments<'_>, got: &[u32], want: &[u32]) {
        let mut bad = None;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            self.mix(w & 0xFFFF | 0x1_0000);
            if bad.is_none() && g != w {
                bad = Some((i, g, w));
            }
        }
        self.case(k, case, bad);
    }

    /// Prints one line per kernel and the totals.
    pub fn summary(&mut self, isa: &str) {
        for (name, &(cases, bad)) in KERNELS.iter().zip(&self.counts) {
            (self.report)(format_args!(
                "  {name:<14} {cases:>4} cases, {bad} mismatches"
            ));
        }
        let (cases, bad) = self.totals();
        (self.report)(format_args!("scalar-hash={:#018x}", self.hash));
        (self.report)(format_args!(
            "kernel-check {isa}: {} passed, {bad} failed",
            cases - bad
        ));
    }
}

const DOT_NBS: [usize; 13] = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 64, 65];
const GEMV_ROWS: [usize; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16];
/// Row lengths in blocks for the GEMV cases: every count up to 9 (the Helium GEMV enters its
/// eight-block code at `8 - nb`), 16/17 and the DSP stream's capacity 32/33.
const GEMV_NBS: [usize; 13] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 32, 33];
/// Fills tried on a few GEMV shapes besides random data (`NegZeroTerms` checks the `+ 0.0` that
/// the assembly GEMVs apply after `reduce8`).
const GEMV_FILLS: [Fill; 6] = [
    Fill::AllMin,
    Fill::MaxScale,
    Fill::WideScale,
    Fill::ZeroScale,
    Fill::NegZeroTerms,
    Fill::NonFinite,
];
const FLOAT_NS: [usize; 10] = [0, 1, 7, 8, 9, 17, 33, 100, 257, 2048];

fn dot_q<K: Kernels>(ty: GgmlType, row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    if ty == GgmlType::Q8_0 {
        K::dot_q8_0_q8_0(row, xq, xd)
    } else {
        K::dot_q4_0_q8_0(row, xq, xd)
    }
}

/// Runs every case with `K` against [`Scalar`].
pub fn run<K: Kernels>(bufs: &mut Bufs, ck: &mut Checker<'_>) {
    let mut rng = Rng::new(0x6D68_6D6F_6521);
    quantized::<K>(bufs, ck, &mut rng);
    floats::<K>(bufs, ck, &mut rng);
}

fn quantized<K: Kernels>(bufs: &mut Bufs, ck: &mut Checker<'_>, rng: &mut Rng) {
    for (ty, k) in [(GgmlType::Q8_0, DOT_Q8), (GgmlType::Q4_0, DOT_Q4)] {
        let bb = ty.type_size();
        for &nb in &DOT_NBS {
            for fill in FILLS {
                fill_blocks(&mut bufs.w, ty, nb + 1, fill, rng);
                fill_act(&mut bufs.xq, &mut bufs.xd, fill, rng);
                // Rows at every offset mod 4 (scales at odd addresses included).
                let off = rng.below(4) as usize;
                bufs.w.copy_within(0..(nb + 1) * bb, off);
                let row = &bufs.w[off..off + nb * bb];
                let (xq, xd) = (&bufs.xq[..nb * QK], &bufs.xd[..nb]);
                let got = dot_q::<K>(ty, row, xq, xd);
                let want = dot_q::<Scalar>(ty, row, xq, xd);
                ck.f32s(
                    k,
                    format_args!("nb {nb} {fill:?} offset {off}"),
                    &[got],
                    &[want],
                );
            }
            // Mismatched lengths: the shortest input decides the block count.
            let long = &bufs.w[..(nb + 1) * bb];
            let short = &bufs.w[..nb * bb];
            let xq_long = &bufs.xq[..(nb + 1) * QK];
            let cases: [(&[u8], &[i8], &[f32]); 3] = [
                (long, &bufs.xq[..nb * QK], &bufs.xd[..nb + 1]),
                (short, xq_long, &bufs.xd[..nb + 1]),
                (long, xq_long, &bufs.xd[..nb]),
            ];
            for (i, (row, xq, xd)) in cases.into_iter().enumerate() {
                let got = dot_q::<K>(ty, row, xq, xd);
                let want = dot_q::<Scalar>(ty, row, xq, xd);
                ck.f32s(k, format_args!("nb {nb} short input {i}"), &[got], &[want]);
            }
        }
    }

    for (ty, k) in [(GgmlType::Q8_0, GEMV_Q8), (GgmlType::Q4_0, GEMV_Q4)] {
        let mut shapes = [(0usize, 0usize, Fill::Random, 0usize); 256];
        let mut n = 0;
        for &rows in &GEMV_ROWS {
            for &nb in &GEMV_NBS {
                shapes[n] = (rows, nb, Fill::Random, 0);
                n += 1;
            }
        }
        for rows in [4, 9] {
            for nb in [1, 4, 8, 9, 16, 17] {
                for fill in GEMV_FILLS {
                    shapes[n] = (rows, nb, fill, 0);
                    n += 1;
                }
            }
        }
        // Long rows (past the 64-block sum cache) and odd start addresses. (A matrix whose data
        // ends inside a row cannot be made: `Matrix::new` refuses it.)
        shapes[n] = (5, 65, Fill::Random, 0);
        shapes[n + 1] = (5, 9, Fill::Random, 1);
        shapes[n + 2] = (9, 8, Fill::Random, 2);
        shapes[n + 3] = (6, 9, Fill::Random, 3);
        shapes[n + 4] = (7, 8, Fill::NonFinite, 0);
        shapes[n + 5] = (8, 16, Fill::F32Scale, 0);
        n += 6;
        for &(rows, nb, fill, off) in &shapes[..n] {
            let cols = nb * QK;
            let rb = ty.row_bytes(cols);
            fill_blocks(&mut bufs.w[off..], ty, rows * nb, fill, rng);
            fill_act(&mut bufs.xq[..cols], &mut bufs.xd[..nb], fill, rng);
            let m =
                Matrix::new(ty, rows, cols, &bufs.w[off..off + rows * rb]).expect("a whole matrix");
            let act = Act {
                x: &[],
                q: &bufs.xq[..cols],
                d: &bufs.xd[..nb],
            };
            bufs.a[..rows + 3].fill(7.0);
            bufs.b[..rows + 3].fill(7.0);
            K::gemv(&m, &act, &mut bufs.a[..rows + 3]);
            Scalar::gemv(&m, &act, &mut bufs.b[..rows + 3]);
            ck.f32s(
                k,
                format_args!("{rows}x{cols} {fill:?} offset {off}"),
                &bufs.a[..rows + 3],
                &bufs.b[..rows + 3],
            );
        }
    }
}

fn fill_floats(v: &mut [f32], rng: &mut Rng, scale: f32) {
    for x in v.iter_mut() {
        *x = rng.f32(scale);
    }
}

fn floats<K: Kernels>(bufs: &mut Bufs, ck: &mut Checker<'_>, rng: &mut Rng) {
    // Activation quantization, including zero, tiny and huge blocks.
    for nb in [0usize, 1, 2, 9, 65] {
        for scale in [1.0f32, 1e-30, 3e38, 0.0] {
            let n = nb * QK;
            fill_floats(&mut bufs.f[0][..n], rng, scale);
            if nb > 1 {
                bufs.f[0][QK] = -scale;
            }
            K::quantize_q8_0(&bufs.f[0][..n], &mut bufs.qa[..n], &mut bufs.da[..nb]);
            Scalar::quantize_q8_0(&bufs.f[0][..n], &mut bufs.qb[..n], &mut bufs.db[..nb]);
            ck.i8s(
                QUANTIZE,
                format_args!("n {n} scale {scale:e}"),
                &bufs.qa[..n],
                &bufs.qb[..n],
            );
            ck.f32s(
                QUANTIZE,
                format_args!("n {n} scale {scale:e} scales"),
                &bufs.da[..nb],
                &bufs.db[..nb],
            );
        }
    }
    for types in [
        &[GgmlType::Q8_0][..],
        &[GgmlType::F32][..],
        &[GgmlType::F16, GgmlType::Q4_0][..],
    ] {
        let n = 3 * QK;
        fill_floats(&mut bufs.f[0][..n], rng, 2.0);
        let x = &bufs.f[0][..n];
        let a = K::prepare(x, types, &mut bufs.qa, &mut bufs.da);
        let b = Scalar::prepare(x, types, &mut bufs.qb, &mut bufs.db);
        ck.i8s(PREPARE, format_args!("{} types", types.len()), a.q, b.q);
        ck.f32s(
            PREPARE,
            format_args!("{} types scales", types.len()),
            a.d,
            b.d,
        );
        ck.f32s(PREPARE, format_args!("{} types x", types.len()), a.x, b.x);
    }

    // Float rows: F32, F16 and BF16 GEMV and row dot products.
    for (ty, kg, kd) in [
        (GgmlType::F32, GEMV_F32, DOT_F32_ROW),
        (GgmlType::F16, GEMV_F16, DOT_F16_ROW),
        (GgmlType::BF16, GEMV_BF16, DOT_BF16_ROW),
    ] {
        for &n in &FLOAT_NS {
            let rows = if n > 300 { 1 } else { 5 };
            let bytes = rows * ty.row_bytes(n);
            for c in bufs.w[..bytes].chunks_exact_mut(ty.type_size()) {
                let v = rng.f32(4.0);
                match ty {
                    GgmlType::F32 => c.copy_from_slice(&v.to_le_bytes()),
                    GgmlType::F16 => c.copy_from_slice(&(normal_f16(rng) & 0xBFFF).to_le_bytes()),
                    _ => c.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes()),
                }
            }
            fill_floats(&mut bufs.f[0][..n], rng, 3.0);
            let m = Matrix::new(ty, rows, n, &bufs.w[..bytes]).expect("a whole matrix");
            let act = Act {
                x: &bufs.f[0][..n],
                q: &[],
                d: &[],
            };
            K::gemv(&m, &act, &mut bufs.a[..rows]);
            Scalar::gemv(&m, &act, &mut bufs.b[..rows]);
            ck.f32s(
                kg,
                format_args!("{rows}x{n}"),
                &bufs.a[..rows],
                &bufs.b[..rows],
            );
            let row = m.row(0);
            let x = &bufs.f[0][..n];
            let (got, want) = match ty {
                GgmlType::F32 => (K::dot_f32_row(row, x), Scalar::dot_f32_row(row, x)),
                GgmlType::F16 => (K::dot_f16_row(row, x), Scalar::dot_f16_row(row, x)),
                _ => (K::dot_bf16_row(row, x), Scalar::dot_bf16_row(row, x)),
            };
            ck.f32s(kd, format_args!("n {n}"), &[got], &[want]);
        }
    }

    // Vector kernels.
    for &n in &FLOAT_NS {
        let [f0, f1] = &mut bufs.f;
        fill_floats(&mut f0[..n + 3], rng, 5.0);
        fill_floats(&mut f1[..n + 3], rng, 5.0);
        let (got, want) = (
            K::dot_f32(&f0[..n], &f1[..n + 3]),
            Scalar::dot_f32(&f0[..n], &f1[..n + 3]),
        );
        ck.f32s(DOT_F32, format_args!("n {n}"), &[got], &[want]);

        let s = rng.f32(2.0);
        bufs.a[..n].copy_from_slice(&f1[..n]);
        bufs.b[..n].copy_from_slice(&f1[..n]);
        K::axpy(&mut bufs.a[..n], s, &f0[..n]);
        Scalar::axpy(&mut bufs.b[..n], s, &f0[..n]);
        ck.f32s(AXPY, format_args!("n {n}"), &bufs.a[..n], &bufs.b[..n]);

        if n > 0 {
            let mut wb = [0u8; 4 * 257];
            let m = n.min(257);
            for (c, &v) in wb.chunks_exact_mut(4).zip(&f1[..m]) {
                c.copy_from_slice(&v.to_le_bytes());
            }
            K::rmsnorm(&mut bufs.a[..m], &f0[..m], &wb[..4 * m], 1e-5);
            Scalar::rmsnorm(&mut bufs.b[..m], &f0[..m], &wb[..4 * m], 1e-5);
            ck.f32s(RMSNORM, format_args!("n {m}"), &bufs.a[..m], &bufs.b[..m]);

            fill_floats(&mut f0[..n], rng, 20.0);
            bufs.a[..n].copy_from_slice(&f0[..n]);
            bufs.b[..n].copy_from_slice(&f0[..n]);
            let (sa, sb) = (
                K::softmax(&mut bufs.a[..n]),
                Scalar::softmax(&mut bufs.b[..n]),
            );
            ck.f32s(SOFTMAX, format_args!("n {n}"), &bufs.a[..n], &bufs.b[..n]);
            ck.f32s(SOFTMAX, format_args!("n {n} sum"), &[sa], &[sb]);
        }

        bufs.a[..n].copy_from_slice(&f0[..n]);
        bufs.b[..n].copy_from_slice(&f0[..n]);
        K::silu_mul(&mut bufs.a[..n], &f1[..n]);
        Scalar::silu_mul(&mut bufs.b[..n], &f1[..n]);
        ck.f32s(SILU_MUL, format_args!("n {n}"), &bufs.a[..n], &bufs.b[..n]);
    }

    for n in [1usize, 2, 4, 8, 16, 64] {
        // Values from a small set, so that ties occur.
        for v in bufs.f[0][..n].iter_mut() {
            *v = (rng.below(5) as f32) * 0.25;
        }
        for k in [1usize, 2, 4, 8] {
            let k = k.min(n);
            let mut va = [0.0f32; 8];
            let mut vb = [0.0f32; 8];
            K::top_k(&bufs.f[0][..n], &mut bufs.ia[..k], &mut va[..k]);
            Scalar::top_k(&bufs.f[0][..n], &mut bufs.ib[..k], &mut vb[..k]);
            ck.u32s(
                TOP_K,
                format_args!("n {n} k {k}"),
                &bufs.ia[..k],
                &bufs.ib[..k],
            );
            ck.f32s(
                TOP_K,
                format_args!("n {n} k {k} values"),
                &va[..k],
                &vb[..k],
            );
        }
    }
}
