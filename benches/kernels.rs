//! Kernel benchmarks: every kernel on every available ISA against scalar, with throughput in
//! bytes of weights (GEMVs) or of input (element-wise kernels), plus a memory read-bandwidth
//! probe so that large GEMVs can be reported as a fraction of the roofline.
//!
//! `cargo bench --bench kernels -- --warm-up-time 1 --measurement-time 3` (see BENCHMARKS.md).
//!
//! After criterion's report a summary, measured in the same process, prints
//! - every kernel's speed-up over scalar, from the minimum over interleaved runs (scalar and
//!   SIMD alternate, so a machine shared with other work loads both alike);
//! - the Q8_0 GEMV on 68 MiB of weights (and, when the last-level cache is larger than that,
//!   on 2x the cache size) against the read bandwidth of a buffer of the same order, also
//!   interleaved.
//!
//! - the roofline table: Q8_0, Q4_0 and F16 GEMVs on ~68 MiB matrices with rows of 1024..8192
//!   columns, per ISA, against a streaming read of a buffer of the same size;
//! - the grouped GEMV (a 2816 x 1024 matrix times 1..256 inputs) in GMAC/s per ISA.
//!
//! `MHMOE_BENCH_TABLES=1 cargo bench --bench kernels -- none` prints only the last two tables
//! (`=roofline` or `=gmac` one of them; `=hot` cache-resident GEMV GB/s instead).
//! `MHMOE_BENCH_ISAS=avx512` and `MHMOE_BENCH_TYPES=Q4_0,F16` narrow the tables.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) criterion runs every benchmark once,
//! the buffers are small and there is no summary.

use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use mhmoe::kernels::{Act, Isa, Kernels, Out, Scalar, ALL_ISAS};
use mhmoe::model::Matrix;
use mhmoe::quant::{GgmlType, QK};

/// `$f::<K>($args..)` with the kernel set `K` of `$isa`.
macro_rules! with_kernels {
    ($isa:expr, $f:ident ( $($arg:expr),* )) => {
        mhmoe::with_isa!($isa, K => $f::<K>($($arg),*), _ => $f::<Scalar>($($arg),*))
    };
}

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Scalar and every available SIMD kernel set, or those named in `MHMOE_BENCH_ISAS`
/// (comma-separated, e.g. `avx512,avx2`) for a shorter table run.
fn isas() -> Vec<Isa> {
    let only = std::env::var("MHMOE_BENCH_ISAS").unwrap_or_default();
    ALL_ISAS
        .into_iter()
        .filter(|i| i.is_available())
        .filter(|i| only.is_empty() || only.split(',').any(|n| n == i.name()))
        .collect()
}

/// The weight types of the roofline and hot tables, or those named in `MHMOE_BENCH_TYPES`
/// (comma-separated ggml names, e.g. `Q4_0,F16`).
fn table_types() -> Vec<GgmlType> {
    let only = std::env::var("MHMOE_BENCH_TYPES").unwrap_or_default();
    [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::F16]
        .into_iter()
        .filter(|t| only.is_empty() || only.split(',').any(|n| n.eq_ignore_ascii_case(t.name())))
        .collect()
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }
}

/// `bytes` of memory that asks for huge pages, as models are read (`ModelBytes::read`), so
/// the GEMVs and the read probe stream the same kind of memory.
fn huge(bytes: usize) -> memmap2::MmapMut {
    mhmoe::file::huge_page_memory(bytes).expect("allocating benchmark memory")
}

/// The read probe: `bytes` of huge-page memory holding a count, and its words.
struct Probe(memmap2::MmapMut);

impl Probe {
    fn new(bytes: usize) -> Probe {
        let mut m = huge(bytes);
        for (i, w) in m.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&(i as u64).to_le_bytes());
        }
        Probe(m)
    }

    fn words(&self) -> &[u64] {
        // SAFETY: every bit pattern is a valid u64; `align_to` puts only whole, aligned u64s in
        // the middle part (all of it: the map is page-aligned and a multiple of 8 bytes long).
        unsafe { self.0.align_to::<u64>().1 }
    }
}

/// Random weights of `ty` (any bytes for the quants; scales about 0.01).
fn weights(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> memmap2::MmapMut {
    let n = rows * cols;
    let mut out = huge(ty.row_bytes(cols) * rows);
    let mut at = 0;
    let mut put = |b: &[u8]| {
        out[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    match ty {
        GgmlType::F32 => (0..n).for_each(|_| put(&rng.unit().to_le_bytes())),
        GgmlType::F16 => {
            (0..n).for_each(|_| put(&half::f16::from_f32(rng.unit()).to_bits().to_le_bytes()))
        }
        GgmlType::BF16 => {
            (0..n).for_each(|_| put(&((rng.unit().to_bits() >> 16) as u16).to_le_bytes()))
        }
        GgmlType::Q8_0 | GgmlType::Q4_0 => {
            let qbytes = ty.type_size() - 2;
            let mut quants = [0u8; 32];
            for _ in 0..n / QK {
                let d = half::f16::from_f32(0.01 + 0.001 * rng.unit());
                put(&d.to_bits().to_le_bytes());
                for c in quants.chunks_exact_mut(8) {
                    c.copy_from_slice(&rng.next().to_le_bytes());
                }
                put(&quants[..qbytes]);
            }
        }
    }
    out
}

/// A matrix and an activation prepared for it (quantized by the scalar specification).
struct Gemv {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    w: memmap2::MmapMut,
    /// `w` tiled (`None` for a type without a tiled layout).
    wt: Option<memmap2::MmapMut>,
    x: Vec<f32>,
    q: Vec<i8>,
    d: Vec<f32>,
}

impl Gemv {
    fn new(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize, items: usize) -> Gemv {
        let w = weights(rng, ty, rows, cols);
        let x = rng.floats(items * cols);
        let mut q = vec![0i8; x.len()];
        let mut d = vec![0.0f32; x.len() / QK];
        Scalar::quantize_q8_0(&x, &mut q, &mut d);
        let wt = mhmoe::tile::is_tileable(ty).then(|| {
            let mut wt = huge(w.len());
            wt.copy_from_slice(&w);
            let rb = ty.row_bytes(cols);
            mhmoe::tile::tile_matrix(
                ty,
                rows,
                rb,
                &mut wt,
                &mut vec![0; mhmoe::tile::scratch_bytes(ty, rb)],
            );
            wt
        });
        Gemv {
            ty,
            rows,
            cols,
            w,
            wt,
            x,
            q,
            d,
        }
    }
    fn matrix(&self) -> Matrix<'_> {
        Matrix::new(self.ty, self.rows, self.cols, &self.w).expect("a whole matrix")
    }
    /// The same matrix in the tiled layout (`mhmoe::tile`).
    fn tiled(&self) -> Matrix<'_> {
        let wt = self.wt.as_deref().unwrap_or(&[]);
        Matrix::new_tiled(self.ty, self.rows, self.cols, wt).expect("a tileable matrix")
    }
    fn act(&self) -> Act<'_> {
        Act {
            x: &self.x,
            q: &self.q,
            d: &self.d,
        }
    }
}

type Run = Box<dyn FnMut()>;

/// One benchmark: a kernel on one input, run on every ISA.
struct Case {
    group: &'static str,
    name: String,
    bytes: u64,
    runs: Vec<(Isa, Run)>,
}

impl Case {
    fn new(group: &'static str, name: String, bytes: u64, make: impl Fn(Isa) -> Run) -> Case {
        let runs = isas().into_iter().map(|i| (i, make(i))).collect();
        Case {
            group,
            name,
            bytes,
            runs,
        }
    }
}

fn gemv_run<K: Kernels>(g: Rc<Gemv>) -> Run {
    let mut out = vec![0.0f32; g.rows];
    Box::new(move || K::gemv(black_box(&g.matrix()), black_box(&g.act()), &mut out))
}

fn gemv_tiled_run<K: Kernels>(g: Rc<Gemv>) -> Run {
    let mut out = vec![0.0f32; g.rows];
    Box::new(move || K::gemv_tiled(black_box(&g.tiled()), black_box(&g.act()), &mut out))
}

fn group_tiled_run<K: Kernels>(g: Rc<Gemv>, members: &'static [u32]) -> Run {
    let mut out = vec![0.0f32; g.x.len() / g.cols * g.rows];
    Box::new(move || {
        let (w, a) = (g.tiled(), g.act());
        K::gemv_group_tiled(
            black_box(&w),
            black_box(&a),
            members,
            1,
            &mut Out::new(&mut out, w.rows()),
        )
    })
}

/// The GEMV of `g` on each ISA, and on the tiled layout for the ISAs that have tiled kernels
/// (`<isa> tiled`), with their labels.
fn gemv_runs(g: &Rc<Gemv>, isas: &[Isa]) -> Vec<(String, Run)> {
    let mut runs = Vec::new();
    for &i in isas {
        runs.push((i.name().to_string(), with_kernels!(i, gemv_run(g.clone()))));
        if i.has_tiled_kernels() && g.wt.is_some() {
            let r = with_kernels!(i, gemv_tiled_run(g.clone()));
            runs.push((format!("{} tiled", i.name()), r));
        }
    }
    runs
}

fn group_run<K: Kernels>(g: Rc<Gemv>, members: &'static [u32], in_div: usize) -> Run {
    let mut out = vec![0.0f32; g.x.len() / g.cols * in_div * g.rows];
    Box::new(move || {
        let (w, a) = (g.matrix(), g.act());
        K::gemv_group(
            black_box(&w),
            black_box(&a),
            members,
            in_div,
            &mut Out::new(&mut out, w.rows()),
        )
    })
}

fn quantize_run<K: Kernels>(x: Rc<Vec<f32>>) -> Run {
    let mut q = vec![0i8; x.len()];
    let mut d = vec![0.0f32; x.len() / QK];
    Box::new(move || K::quantize_q8_0(black_box(&x), &mut q, &mut d))
}

fn rmsnorm_run<K: Kernels>(x: Rc<Vec<f32>>) -> Run {
    let w: Vec<u8> = x.iter().flat_map(|v| (1.0 + v).to_le_bytes()).collect();
    let mut out = vec![0.0f32; x.len()];
    Box::new(move || {
        black_box(K::rmsnorm(&mut out, black_box(&x), &w, 1e-5));
    })
}

fn silu_run<K: Kernels>(x: Rc<Vec<f32>>) -> Run {
    let mut g = vec![0.0f32; x.len()];
    Box::new(move || {
        g.copy_from_slice(&x);
        K::silu_mul(black_box(&mut g), &x)
    })
}

fn softmax_run<K: Kernels>(x: Rc<Vec<f32>>) -> Run {
    let mut v = vec![0.0f32; x.len()];
    Box::new(move || {
        v.copy_from_slice(&x);
        black_box(K::softmax(black_box(&mut v)));
    })
}

fn axpy_run<K: Kernels>(x: Rc<Vec<f32>>) -> Run {
    let mut out = vec![0.0f32; x.len()];
    Box::new(move || K::axpy(&mut out, black_box(1e-3), &x))
}

fn dot_run<K: Kernels>(x: Rc<Vec<f32>>) -> Run {
    Box::new(move || {
        black_box(K::dot_f32(black_box(&x), &x));
    })
}

fn top_k_run<K: Kernels>(p: Rc<Vec<f32>>) -> Run {
    let (mut idx, mut val) = ([0u32; 8], [0.0f32; 8]);
    Box::new(move || K::top_k(black_box(&p), &mut idx, &mut val))
}

/// Every kernel on cache-resident inputs.
fn cases() -> Vec<Case> {
    let mut rng = Rng(1);
    let mut v = Vec::new();
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
    ] {
        // 256x1024 weights: 272 KiB as Q8_0 (L2-resident), 1 MiB as F32.
        let g = Rc::new(Gemv::new(&mut rng, ty, 256, 1024, 1));
        let name = format!("{}_256x1024", ty.name().to_lowercase());
        v.push(Case::new("gemv", name, g.w.len() as u64, |i| {
            with_kernels!(i, gemv_run(g.clone()))
        }));
    }
    // Layer-sized Q8_0 matrices of a d = 2048 model (4.3 and 12 MiB: larger than L2).
    for (rows, cols) in [(2048, 2048), (5632, 2048)] {
        let g = Rc::new(Gemv::new(&mut rng, GgmlType::Q8_0, rows, cols, 1));
        v.push(Case::new(
            "gemv",
            format!("q8_0_{rows}x{cols}"),
            g.w.len() as u64,
            |i| with_kernels!(i, gemv_run(g.clone())),
        ));
    }
    // MH-MoE expert groups: 3 of the 8 (h=4, k=2) sub-token pairs chose this expert.
    // m = 256, F = 512 (gate/up); and the demo model's m = 32 (one block per row).
    const MEMBERS: &[u32] = &[0, 3, 6];
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        for (rows, cols) in [(512, 256), (128, 32)] {
            let g = Rc::new(Gemv::new(&mut rng, ty, rows, cols, 4));
            let name = format!("{}_{rows}x{cols}_3of8", ty.name().to_lowercase());
            v.push(Case::new("gemv_group", name, g.w.len() as u64, |i| {
                with_kernels!(i, group_run(g.clone(), MEMBERS, 2))
            }));
        }
    }
    let n = 4096;
    let x = Rc::new(rng.floats(n));
    let bytes = (n * 4) as u64;
    let ew = "elementwise";
    v.push(Case::new(ew, format!("quantize_q8_0_{n}"), bytes, |i| {
        with_kernels!(i, quantize_run(x.clone()))
    }));
    v.push(Case::new(ew, format!("rmsnorm_{n}"), bytes, |i| {
        with_kernels!(i, rmsnorm_run(x.clone()))
    }));
    v.push(Case::new(ew, format!("silu_mul_{n}"), bytes, |i| {
        with_kernels!(i, silu_run(x.clone()))
    }));
    let scores: Rc<Vec<f32>> = Rc::new(rng.floats(1024).iter().map(|v| v * 10.0).collect());
    v.push(Case::new(ew, "softmax_1024".into(), 4096, |i| {
        with_kernels!(i, softmax_run(scores.clone()))
    }));
    // Attention-sized vectors (head width 128).
    let h = Rc::new(rng.floats(128));
    v.push(Case::new(ew, "axpy_128".into(), 512, |i| {
        with_kernels!(i, axpy_run(h.clone()))
    }));
    v.push(Case::new(ew, "dot_f32_128".into(), 512, |i| {
        with_kernels!(i, dot_run(h.clone()))
    }));
    let p: Rc<Vec<f32>> = Rc::new(rng.floats(64).iter().map(|v| v.abs()).collect());
    v.push(Case::new(ew, "top_k_8_of_64".into(), 256, |i| {
        with_kernels!(i, top_k_run(p.clone()))
    }));
    v
}

/// Sums a u64 buffer as eight concurrent sequential streams (its eighths): as many
/// hardware-prefetch streams as the 8-row quantized GEMV reads, so the probe is a fair roofline
/// for it. One core.
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

/// The single-stream version of [`read_sum`] (reported for comparison).
fn read_sum_one_stream(buf: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in buf.chunks_exact(8) {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(v);
        }
    }
    acc.iter().fold(0, |s, &a| s.wrapping_add(a))
}

/// MiB of the bandwidth probe and the large GEMV's shape (small under `cargo test`).
fn large_sizes() -> (usize, (usize, usize)) {
    if bench_mode() {
        (256, (8192, 8192)) // 68 MiB of Q8_0 weights
    } else {
        (4, (64, 1024))
    }
}

fn criterion_benches(c: &mut Criterion, cases: &mut [Case]) {
    let (mb, (rows, cols)) = large_sizes();
    {
        let buf: Vec<u64> = (0..mb * (1 << 20) / 8).map(|i| i as u64).collect();
        let mut g = c.benchmark_group("bandwidth");
        g.throughput(Throughput::Bytes((buf.len() * 8) as u64));
        g.bench_function(format!("read_8_streams_{mb}MiB"), |b| {
            b.iter(|| read_sum(black_box(&buf)))
        });
        g.bench_function(format!("read_1_stream_{mb}MiB"), |b| {
            b.iter(|| read_sum_one_stream(black_box(&buf)))
        });
        g.finish();
    }
    for case in cases.iter_mut() {
        let mut g = c.benchmark_group(case.group);
        g.throughput(Throughput::Bytes(case.bytes));
        for (isa, run) in case.runs.iter_mut() {
            g.bench_function(format!("{}/{}", case.name, isa.name()), |b| {
                b.iter(&mut *run)
            });
        }
        g.finish();
    }
    let large = Rc::new(Gemv::new(&mut Rng(2), GgmlType::Q8_0, rows, cols, 1));
    let mut g = c.benchmark_group("gemv");
    g.throughput(Throughput::Bytes(large.w.len() as u64));
    for isa in isas() {
        let mut run = with_kernels!(isa, gemv_run(large.clone()));
        g.bench_function(format!("q8_0_{rows}x{cols}/{}", isa.name()), |b| {
            b.iter(&mut run)
        });
    }
    g.finish();
}

/// Minimum time of each closure over `rounds` rounds in which all of them run one after the
/// other, so that they all see the same machine load.
fn interleaved(rounds: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<Duration> {
    let mut best = vec![Duration::MAX; fs.len()];
    for f in fs.iter_mut() {
        f(); // warm-up
    }
    // Each round starts one function later, so that every function runs in every position:
    // the run just after a row-major GEMV measured up to 10% slower than the same code later
    // in the round (a fixed order favoured some kernels).
    let n = fs.len();
    for round in 0..rounds {
        for i in (0..n).map(|i| (i + round) % n) {
            let t = Instant::now();
            fs[i]();
            best[i] = best[i].min(t.elapsed());
        }
    }
    best
}

/// [`interleaved`] over boxed runs.
fn interleaved_runs(rounds: usize, runs: &mut [Run]) -> Vec<Duration> {
    let mut fs: Vec<&mut dyn FnMut()> = runs
        .iter_mut()
        .map(|r| &mut **r as &mut dyn FnMut())
        .collect();
    interleaved(rounds, &mut fs)
}

fn fmt_time(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us >= 1.0 {
        format!("{us:.2} us")
    } else {
        format!("{:.1} ns", us * 1000.0)
    }
}

/// Every case: scalar vs each ISA, minimum of interleaved runs (about 0.2 s per case).
fn speedup_table(cases: &mut [Case]) {
    println!("\n| kernel | bytes | ISA | time | GB/s | vs scalar |");
    println!("|---|---|---|---|---|---|");
    for case in cases.iter_mut() {
        let probe = Instant::now();
        for (_, run) in case.runs.iter_mut() {
            run();
        }
        let per_round = probe.elapsed().max(Duration::from_nanos(50));
        let rounds = (0.2 / per_round.as_secs_f64()).clamp(5.0, 20_000.0) as usize;
        let mut fs: Vec<&mut dyn FnMut()> = case
            .runs
            .iter_mut()
            .map(|(_, r)| &mut **r as &mut dyn FnMut())
            .collect();
        let times = interleaved(rounds, &mut fs);
        for ((isa, _), t) in case.runs.iter().zip(&times) {
            println!(
                "| {}/{} | {} | {} | {} | {:.2} | {:.2}x |",
                case.group,
                case.name,
                case.bytes,
                isa.name(),
                fmt_time(*t),
                case.bytes as f64 / t.as_secs_f64() / 1e9,
                times[0].as_secs_f64() / t.as_secs_f64()
            );
        }
    }
}

/// Interleaves one- and eight-stream reads of `probe` with the GEMV of `g` on each ISA; returns
/// GB/s as (one stream, eight streams, per ISA).
fn gemv_vs_probe(
    probe: &Probe,
    g: &Rc<Gemv>,
    runs: &mut [(String, Run)],
    rounds: usize,
) -> (f64, f64, Vec<f64>) {
    let buf = probe.words();
    let mut one = || {
        black_box(read_sum_one_stream(black_box(buf)));
    };
    let mut eight = || {
        black_box(read_sum(black_box(buf)));
    };
    let mut fs: Vec<&mut dyn FnMut()> = vec![&mut one, &mut eight];
    fs.extend(runs.iter_mut().map(|(_, r)| &mut **r as &mut dyn FnMut()));
    let t = interleaved(rounds, &mut fs);
    let gbs = |bytes: usize, t: &Duration| bytes as f64 / t.as_secs_f64() / 1e9;
    let gemv = t[2..].iter().map(|t| gbs(g.w.len(), t)).collect();
    (gbs(buf.len() * 8, &t[0]), gbs(buf.len() * 8, &t[1]), gemv)
}

/// The large Q8_0 GEMV against the read bandwidth of a `probe_mb` MiB buffer, interleaved.
fn roofline(probe_mb: usize, rows: usize, cols: usize, rounds: usize) {
    let probe = Probe::new(probe_mb << 20);
    let g = Rc::new(Gemv::new(&mut Rng(3), GgmlType::Q8_0, rows, cols, 1));
    let mut runs = gemv_runs(&g, &isas());
    let (one, bw, gemv) = gemv_vs_probe(&probe, &g, &mut runs, rounds);
    println!(
        "\nread bandwidth, {probe_mb} MiB buffer: {bw:.2} GB/s with 8 streams, {one:.2} GB/s with one"
    );
    for ((name, _), r) in runs.iter().zip(gemv) {
        println!(
            "Q8_0 GEMV {rows}x{cols} ({} MiB) on {name}: {r:.2} GB/s = {:.0}% of the read bandwidth",
            g.w.len() >> 20,
            100.0 * r / bw
        );
    }
}

/// Bytes of each matrix in the roofline table (>= 64 MB: far larger than the caches here).
const TABLE_BYTES: usize = 68 << 20;

/// The roofline table: for every ISA x type x row length, the GEMV on ~68 MiB of weights
/// against a plain streaming read (one sequential stream, and eight) of a buffer of the same
/// size, all interleaved in one process.
fn roofline_table(rounds: usize) {
    println!("\n| type | cols | rows | MiB | ISA | GB/s | % of read bandwidth |");
    println!("|---|---|---|---|---|---|---|");
    let isas = isas();
    let probe = Probe::new(TABLE_BYTES);
    let mut rng = Rng(4);
    for ty in table_types() {
        for cols in [1024, 2048, 4096, 8192] {
            let rows = TABLE_BYTES / ty.row_bytes(cols);
            let g = Rc::new(Gemv::new(&mut rng, ty, rows, cols, 1));
            let mut runs = gemv_runs(&g, &isas);
            let (one, eight, gemv) = gemv_vs_probe(&probe, &g, &mut runs, rounds);
            let bw = one.max(eight);
            println!(
                "| read probe | | | {} | 1 stream / 8 streams | {one:.2} / {eight:.2} | 100 |",
                TABLE_BYTES >> 20
            );
            for ((name, _), r) in runs.iter().zip(gemv) {
                println!(
                    "| {} | {cols} | {rows} | {} | {name} | {r:.2} | {:.0} |",
                    ty.name(),
                    g.w.len() >> 20,
                    100.0 * r / bw
                );
            }
        }
    }
}

/// Cache-resident GEMVs (the kernels' compute speed): 512 rows of 1024 and 4096 columns, GB/s of
/// weights per ISA, interleaved (`MHMOE_BENCH_TABLES=hot`).
fn hot_table(rounds: usize) {
    println!("\n| type | rows x cols | KiB | ISA | GB/s |");
    println!("|---|---|---|---|---|");
    let isas = isas();
    let mut rng = Rng(6);
    for ty in table_types() {
        for cols in [1024, 4096] {
            let rows = 512;
            let g = Rc::new(Gemv::new(&mut rng, ty, rows, cols, 1));
            let (names, mut runs): (Vec<String>, Vec<Run>) =
                gemv_runs(&g, &isas).into_iter().unzip();
            let t = interleaved_runs(rounds, &mut runs);
            for (name, t) in names.iter().zip(&t) {
                println!(
                    "| {} | {rows}x{cols} | {} | {name} | {:.2} |",
                    ty.name(),
                    g.w.len() >> 10,
                    g.w.len() as f64 / t.as_secs_f64() / 1e9
                );
            }
        }
    }
}

/// The grouped GEMV as a matrix-matrix product: a 2816 x 1024 matrix times 1, 2, 64, 128 and 256
/// members (distinct inputs), in multiply-accumulates per second, interleaved over the ISAs;
/// the plain GEMV of one input for comparison.
fn gmac_table(rounds: usize) {
    println!("\n| type | rows x cols | members | ISA | time | GMAC/s | vs scalar |");
    println!("|---|---|---|---|---|---|---|");
    static MEMBERS: [u32; 256] = {
        let mut m = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            m[i] = i as u32;
            i += 1;
        }
        m
    };
    let isas = isas();
    let (rows, cols) = (2816, 1024);
    let mut rng = Rng(5);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        let g = Rc::new(Gemv::new(&mut rng, ty, rows, cols, 256));
        for count in [0usize, 1, 2, 64, 128, 256] {
            // count 0: `gemv` on one input.
            let mut names = Vec::new();
            let mut runs: Vec<Run> = Vec::new();
            for &i in &isas {
                names.push(i.name().to_string());
                runs.push(match count {
                    0 => with_kernels!(i, gemv_run(g.clone())),
                    n => with_kernels!(i, group_run(g.clone(), &MEMBERS[..n], 1)),
                });
                if i.has_tiled_kernels() {
                    names.push(format!("{} tiled", i.name()));
                    runs.push(match count {
                        0 => with_kernels!(i, gemv_tiled_run(g.clone())),
                        n => with_kernels!(i, group_tiled_run(g.clone(), &MEMBERS[..n])),
                    });
                }
            }
            let t = interleaved_runs(rounds, &mut runs);
            let macs = (rows * cols * count.max(1)) as f64;
            for (name, ti) in names.iter().zip(&t) {
                println!(
                    "| {} | {rows}x{cols} | {} | {name} | {} | {:.1} | {:.2}x |",
                    ty.name(),
                    if count == 0 {
                        "gemv".to_string()
                    } else {
                        count.to_string()
                    },
                    fmt_time(*ti),
                    macs / ti.as_secs_f64() / 1e9,
                    t[0].as_secs_f64() / ti.as_secs_f64()
                );
            }
        }
    }
}

/// The largest cache size Linux reports for CPU 0, in MiB (0 if unknown).
fn last_level_cache_mb() -> usize {
    (0..8)
        .filter_map(|i| {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size"))
                .ok()
        })
        .filter_map(|s| {
            let s = s.trim().to_owned();
            let (num, kib) = match (s.strip_suffix('K'), s.strip_suffix('M')) {
                (Some(n), _) => (n.to_owned(), 1usize),
                (_, Some(n)) => (n.to_owned(), 1024),
                _ => (s.clone(), 0),
            };
            num.parse::<usize>().ok().map(|v| v * kib / 1024)
        })
        .max()
        .unwrap_or(0)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut cases = cases();
    criterion_benches(&mut c, &mut cases);
    c.final_summary();
    if !bench_mode() {
        return;
    }
    println!("\n== summary: minimum of interleaved runs in this process ==");
    // MHMOE_BENCH_TABLES=1: only the roofline and GMAC/s tables (BENCHMARKS.md).
    if std::env::var_os("MHMOE_BENCH_TABLES").is_some() {
        drop(cases);
        let which = std::env::var("MHMOE_BENCH_TABLES").unwrap_or_default();
        if which == "hot" {
            hot_table(200);
            return;
        }
        if which != "gmac" {
            roofline_table(30);
        }
        if which != "roofline" {
            gmac_table(5);
        }
        return;
    }
    speedup_table(&mut cases);
    drop(cases);
    roofline_table(30);
    gmac_table(5);
    let (mb, (rows, cols)) = large_sizes();
    roofline(mb, rows, cols, 10);
    // The same bytes in a d = 2048 model's row length (2 KiB rows): see BENCHMARKS.md.
    roofline(mb, rows * cols / 2048, 2048, 10);
    let llc = last_level_cache_mb();
    if llc * 2 > mb {
        // Both larger than the last-level cache, so that they stream from DRAM.
        let big = (2 * llc).next_power_of_two();
        let cols = 16384;
        let rows = big * (1 << 20) / (cols / QK * 34);
        println!("\n(last-level cache {llc} MiB: repeating with {big} MiB)");
        roofline(big, rows, cols, 4);
    }
}
