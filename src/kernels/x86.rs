//! x86-64 AVX2 kernels.
//!
//! Every kernel gives the bit pattern of its [`scalar`] twin (FORMAT.md, "Accumulation
//! order"):
//! - float dot products keep the eight canonical lanes in one `__m256` (element `i` in lane
//!   `i % 8`), `vmulps` then `vaddps` (never FMA: fusing changes the rounding, so FMA is neither
//!   used nor required), and reduce them in the canonical order; the GEMV keeps eight rows in
//!   flight because each row's lanes are one sequential add chain by specification;
//! - quantized dot products compute exact integer block sums (`vpsignb`/`vpmaddubsw`/
//!   `vpmaddwd` for Q8_0, `vpmaddubsw(q, x) - vpmaddubsw(8, x)` for Q4_0), gather block sums into
//!   lanes with a `vphaddd` transpose, widen the f16 scales with F16C and accumulate
//!   `sumi * (dw * dx)` per lane. The GEMV puts eight *rows* in the eight lanes and keeps the
//!   eight canonical accumulators (`acc[b % 8]`) as eight vectors, so the final reduction is
//!   vertical adds and short rows (MH-MoE experts: one block when `m = 32`) cost no horizontal
//!   work;
//! - `exp` is a lane-wise transcription of libm's `expf` (same operations, same order; checked
//!   on all 2^32 inputs by an ignored test), so `silu` and `softmax` match; softmax's sum stays
//!   sequential as specified; top-k and RMSNorm keep the scalar kernel (BENCHMARKS.md has the
//!   kernel x ISA table).
//!
//! The kernels that are the same logic on NEON are written once in `kernels/lanes.rs` over the
//! eight-lane vocabulary `imp` defines (one-line `#[target_feature]` wrappers of intrinsics).
//!
//! One input is outside the `vpsignb` trick: a Q8_0 *activation* holding -128 (which
//! `quantize_q8_0` produces only for blocks whose scale underflows); such calls take the scalar
//! kernel, so results stay bit-identical for every input.
//!
//! Safety model: the kernels proper are safe `#[target_feature(enable = "avx2,f16c")]` functions
//! in the private `imp` module. The [`Kernels`] methods of [`Avx2`] check [`Avx2::available`]
//! (a cached CPUID bit under `std`, a compile-time constant without it) before calling them and
//! fall back to the scalar kernel otherwise, so they are sound to call on any x86-64 CPU.

use super::{scalar, Act, Isa, Kernels, Out, Scalar};
use crate::model::Matrix;
use crate::quant::GgmlType;

/// AVX2 kernels (selected at run time under `std`, at build time otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Avx2;

impl Avx2 {
    /// Whether the CPU supports the instructions these kernels use (AVX2 and F16C).
    #[inline(always)]
    pub fn available() -> bool {
        #[cfg(feature = "std")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(feature = "std"))]
        {
            cfg!(all(target_feature = "avx2", target_feature = "f16c"))
        }
    }
}

/// Runs `$fast` (an `imp` call) when AVX2 + F16C are present, else `$slow`.
macro_rules! dispatch {
    ($fast:expr, $slow:expr) => {
        if Avx2::available() {
            // SAFETY: `imp` functions only need AVX2 and F16C, which the CPU has (checked just
            // above); they read and write only through the slices they are given.
            unsafe { $fast }
        } else {
            $slow
        }
    };
}

/// True if the Q8_0 activation holds -128, the one value the `vpsignb` trick cannot negate
/// (activations from `quantize_q8_0` never do, except for subnormal-scale blocks).
#[inline(always)]
fn has_i8_min(q: &[i8]) -> bool {
    q.contains(&i8::MIN)
}

impl Kernels for Avx2 {
    const ISA: Isa = Isa::Avx2;

    #[inline(always)]
    fn quantize_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32]) {
        dispatch!(imp::quantize_q8_0(x, q, d), scalar::quantize_q8_0(x, q, d))
    }

    #[inline(always)]
    fn dot_q8_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        if has_i8_min(xq) {
            return scalar::dot_q8_0_q8_0(row, xq, xd);
        }
        dispatch!(
            imp::dot_q8_0(row, xq, xd),
            scalar::dot_q8_0_q8_0(row, xq, xd)
        )
    }

    #[inline(always)]
    fn dot_q4_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        dispatch!(
            imp::dot_q4_0(row, xq, xd),
            scalar::dot_q4_0_q8_0(row, xq, xd)
        )
    }

    #[inline(always)]
    fn dot_f32_row(row: &[u8], x: &[f32]) -> f32 {
        if row.len() != 4 * x.len() {
            return scalar::dot_f32_row(row, x);
        }
        dispatch!(
            imp::dot_f32_rows::<1>([row], x)[0],
            scalar::dot_f32_row(row, x)
        )
    }

    #[inline(always)]
    fn dot_f16_row(row: &[u8], x: &[f32]) -> f32 {
        if row.len() != 2 * x.len() {
            return scalar::dot_half_row(row, x, crate::quant::f16_to_f32);
        }
        dispatch!(
            imp::dot_f16_rows::<1>([row], x)[0],
            scalar::dot_half_row(row, x, crate::quant::f16_to_f32)
        )
    }

    #[inline(always)]
    fn dot_bf16_row(row: &[u8], x: &[f32]) -> f32 {
        if row.len() != 2 * x.len() {
            return scalar::dot_half_row(row, x, crate::quant::bf16_to_f32);
        }
        dispatch!(
            imp::dot_bf16_rows::<1>([row], x)[0],
            scalar::dot_half_row(row, x, crate::quant::bf16_to_f32)
        )
    }

    #[inline(always)]
    fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        dispatch!(imp::dot_f32(a, b), scalar::dot_f32(a, b))
    }

    #[inline(always)]
    fn axpy(out: &mut [f32], a: f32, v: &[f32]) {
        dispatch!(imp::axpy(out, a, v), scalar::axpy(out, a, v))
    }

    #[inline(always)]
    fn scores(q: &[f32], keys: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        dispatch!(
            imp::scores(q, keys, stride, scale, out),
            Scalar::scores(q, keys, stride, scale, out)
        )
    }

    #[inline(always)]
    fn weighted_rows(w: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
        dispatch!(
            imp::weighted_rows(w, values, stride, out),
            Scalar::weighted_rows(w, values, stride, out)
        )
    }

    // rmsnorm: the scalar default. Its cost is the specification's single sum-of-squares add
    // chain, which SIMD cannot shorten; an AVX2 version measured 0.87-0.96x (BENCHMARKS.md).

    #[inline(always)]
    fn softmax(x: &mut [f32]) -> f32 {
        dispatch!(imp::softmax(x), scalar::softmax(x))
    }

    #[inline(always)]
    fn silu_mul(gate: &mut [f32], up: &[f32]) {
        dispatch!(imp::silu_mul(gate, up), scalar::silu_mul(gate, up))
    }

    fn gemv(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        if w.ty == GgmlType::Q8_0 && has_i8_min(a.q) {
            return Scalar::gemv(w, a, out);
        }
        dispatch!(imp::gemv(w, a, out), Scalar::gemv(w, a, out))
    }

    fn gemv_group(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        if w.ty == GgmlType::Q8_0 && has_i8_min(batch.q) {
            return Scalar::gemv_group(w, batch, members, in_div, out);
        }
        dispatch!(
            imp::gemv_group(w, batch, members, in_div, out),
            Scalar::gemv_group(w, batch, members, in_div, out)
        )
    }
}

/// The AVX2 + F16C kernels. Each is a safe function with `#[target_feature]`: calling one from
/// code compiled without those features is `unsafe` (the caller checks the CPU).
pub(super) mod imp {
    use core::arch::x86_64::*;

    use super::super::{Act, Out};
    use crate::model::Matrix;
    use crate::quant::{round_to_f16, GgmlType, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK};

    // ---- loads and stores on fixed-size arrays (the only raw-pointer accesses) ----

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn ld8(a: &[f32; 8]) -> __m256 {
        // SAFETY: `a` is 8 initialized f32 (32 bytes); `loadu` needs no alignment.
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn st8(a: &mut [f32; 8], v: __m256) {
        // SAFETY: `a` is 8 writable f32; `storeu` needs no alignment.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) }
    }

    /// Eight little-endian f32 from 32 bytes.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn ld8_le(b: &[u8; 32]) -> __m256 {
        // SAFETY: 32 readable bytes; x86 is little-endian, so they are the f32 values.
        unsafe { _mm256_loadu_ps(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn ld16_u8(b: &[u8; 16]) -> __m128i {
        // SAFETY: 16 readable bytes.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn ld32_i8(b: &[i8; 32]) -> __m256i {
        // SAFETY: 32 readable bytes.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn st32_i8(b: &mut [i8; 32], v: __m256i) {
        // SAFETY: 32 writable bytes.
        unsafe { _mm256_storeu_si256(b.as_mut_ptr().cast(), v) }
    }

    /// The 32 int8 quants of a Q8_0 block (bytes 2..34).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn q8_quants(b: &[u8; Q8_0_BLOCK_BYTES]) -> __m256i {
        // SAFETY: bytes 2..34 of the 34-byte block are readable.
        unsafe { _mm256_loadu_si256(b.as_ptr().add(2).cast()) }
    }

    /// The 16 nibble bytes of a Q4_0 block (bytes 2..18).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn q4_nibbles(b: &[u8; Q4_0_BLOCK_BYTES]) -> __m128i {
        // SAFETY: bytes 2..18 of the 18-byte block are readable.
        unsafe { _mm_loadu_si128(b.as_ptr().add(2).cast()) }
    }

    // ---- reductions ----

    /// [`scalar::reduce8`] on a vector: `(l0+l4, ..)`, `(s0+s2, s1+s3)`, `t0+t1`.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn reduce8(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps::<1>(t, t)))
    }

    /// Sum of the eight i32 lanes (exact; integer addition is associative).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0x4E>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0xB1>(s));
        _mm_cvtsi128_si32(s)
    }

    /// Eight vectors of i32 partial sums -> one vector whose lane `i` is the total of `v[i]`
    /// (two levels of `vphaddd`, then the 128-bit halves added).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn transpose_sum(v: &[__m256i; 8]) -> __m256i {
        let h = |a, b| _mm256_hadd_epi32(a, b);
        let e = h(h(v[0], v[1]), h(v[2], v[3]));
        let f = h(h(v[4], v[5]), h(v[6], v[7]));
        let lo_hi = _mm256_blend_epi32::<0xF0>(e, f);
        let hi_lo = _mm256_permute2x128_si256::<0x21>(e, f);
        _mm256_add_epi32(lo_hi, hi_lo)
    }

    // ---- integer block dot products ----

    /// How far ahead of the current block the quantized dot products prefetch weights.
    const PREFETCH: usize = 1024;

    /// Q8_0 block times Q8_0 activation block: eight i32 partial sums. Exact unless the
    /// activation holds -128 where the weight is negative (callers exclude -128).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn block_q8(b: &[u8; Q8_0_BLOCK_BYTES], x: &[i8; QK]) -> __m256i {
        let w = q8_quants(b);
        let x = ld32_i8(x);
        let aw = _mm256_sign_epi8(w, w); // |w| as u8 (|-128| = 128 fits)
        let sx = _mm256_sign_epi8(x, w); // x * sign(w)
        let p = _mm256_maddubs_epi16(aw, sx); // pairs: |p| <= 2 * 128 * 127, no saturation
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }

    /// Q4_0 block times Q8_0 activation block: eight i32 partial sums, exact for every input:
    /// `sum (q - 8) x = sum q x - sum 8 x`, both `vpmaddubsw` terms far from saturation.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn block_q4(b: &[u8; Q4_0_BLOCK_BYTES], x: &[i8; QK]) -> __m256i {
        let raw = q4_nibbles(b);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(raw, m);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(raw), m);
        let q = _mm256_set_m128i(hi, lo); // element j: low nibble j (j < 16), high nibble j-16
        let x = ld32_i8(x);
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(q, x),
            _mm256_maddubs_epi16(_mm256_set1_epi8(8), x),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }

    /// Widens the eight f16 at byte offsets `idx` of `base` to f32 (exact): one gather of
    /// 4-byte words, then their low halves packed.
    ///
    /// # Safety
    /// Every lane's 4-byte word `base[idx[i]..idx[i] + 4]` must be in bounds.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) unsafe fn gather_f16(base: &[u8], idx: __m256i) -> __m256 {
        // SAFETY: the caller guarantees that every gathered word lies inside `base`.
        let words = unsafe { _mm256_i32gather_epi32::<1>(base.as_ptr().cast(), idx) };
        let lo16 = _mm256_setr_epi8(
            0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1,
            -1, -1, -1, -1, -1, -1, -1,
        );
        let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_shuffle_epi8(words, lo16));
        _mm256_cvtph_ps(_mm256_castsi256_si128(packed))
    }

    /// Lane offsets `0, s, 2s, .., 7s`.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn strides(s: usize) -> __m256i {
        let s = s as i32;
        _mm256_setr_epi32(0, s, 2 * s, 3 * s, 4 * s, 5 * s, 6 * s, 7 * s)
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn dot_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        dot_quant::<Q8_0_BLOCK_BYTES>(row, xq, xd, |b, x| block_q8(b, x))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn dot_q4_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        dot_quant::<Q4_0_BLOCK_BYTES>(row, xq, xd, |b, x| block_q4(b, x))
    }

    /// Eight rows at once, one lane per row: `rows` holds eight rows of `stride` blocks one
    /// after the other. `acc[j]` keeps the specification's lane `j` (the blocks `b % 8 == j`)
    /// of all eight rows, so its final reduction is vertical adds and the eight results come
    /// out as one vector. Efficient for any row length, including one-block rows.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn dot8_rows<const B: usize>(
        rows: &[[u8; B]],
        stride: usize,
        xq: &[[i8; QK]],
        xd: &[f32],
        block: impl Fn(&[u8; B], &[i8; QK]) -> __m256i,
    ) -> __m256 {
        let n = stride.min(xq.len()).min(xd.len());
        let rows = &rows[..8 * stride];
        let idx = strides(stride * B);
        let mut acc = [_mm256_setzero_ps(); 8];
        // One block of all eight rows into `$acc` (a macro, not a closure: always inlined).
        macro_rules! step {
            ($b:expr, $acc:expr) => {{
                let b = $b;
                let x = &xq[b];
                let v: [__m256i; 8] = core::array::from_fn(|r| block(&rows[r * stride + b], x));
                let sumi = _mm256_cvtepi32_ps(transpose_sum(&v));
                // SAFETY: lane r reads the first 4 bytes of block b of row r; b < stride, so
                // that word lies inside `rows` (8 * stride blocks of B >= 4 bytes).
                let dw = unsafe { gather_f16(rows[b..].as_flattened(), idx) };
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd[b]));
                $acc = _mm256_add_ps($acc, _mm256_mul_ps(sumi, scale));
            }};
        }
        let mut b = 0;
        let base = rows.as_ptr().cast::<i8>();
        while b + 8 <= n {
            // The same eight blocks of the next eight rows (the next call's), into L2: see
            // `dot_rows` (float GEMV), same reason.
            for r in 0..8 {
                let at = base.wrapping_add(((8 + r) * stride + b) * B);
                for k in 0..(8 * B).div_ceil(64) {
                    _mm_prefetch::<FLOAT_HINT>(at.wrapping_add(64 * k));
                }
            }
            for (j, a) in acc.iter_mut().enumerate() {
                step!(b + j, *a);
            }
            b += 8;
        }
        for (j, a) in acc[..n - b].iter_mut().enumerate() {
            step!(b + j, *a);
        }
        let s0 = _mm256_add_ps(acc[0], acc[4]);
        let s1 = _mm256_add_ps(acc[1], acc[5]);
        let s2 = _mm256_add_ps(acc[2], acc[6]);
        let s3 = _mm256_add_ps(acc[3], acc[7]);
        _mm256_add_ps(_mm256_add_ps(s0, s2), _mm256_add_ps(s1, s3))
    }

    /// Quantized GEMV (or one member of a grouped GEMV): rows eight at a time, the remaining
    /// rows one by one; `out[r]` for `r < w.rows`.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn gemv_quant<const B: usize>(
        w: &Matrix<'_>,
        a: &Act<'_>,
        out: &mut [f32],
        block: impl Fn(&[u8; B], &[i8; QK]) -> __m256i + Copy,
    ) {
        let stride = w.cols / QK;
        let (blocks, _) = w.data.as_chunks::<B>();
        let (xq, _) = a.q.as_chunks::<QK>();
        let out = &mut out[..w.rows];
        let eight = if blocks.len() >= w.rows * stride && stride * B * 8 <= i32::MAX as usize {
            w.rows / 8
        } else {
            0
        };
        let (groups, _) = out.as_chunks_mut::<8>();
        for (g, o) in groups[..eight].iter_mut().enumerate() {
            let v = dot8_rows(&blocks[8 * g * stride..], stride, xq, a.d, block);
            st8(o, v);
        }
        for (r, o) in out.iter_mut().enumerate().skip(8 * eight) {
            let (row, _) = w.row(r).as_chunks::<B>();
            *o = dot_blocks(row, xq, a.d, block);
        }
    }

    // ---- the eight-lane vocabulary of the shared kernels (super::super::lanes) ----

    type F8 = __m256;
    type I8 = __m256i;

    /// Rows in flight in the float GEMV: independent accumulator chains hide the add latency
    /// (each row's lanes are one sequential chain by specification).
    const FLOAT_ROWS: usize = 8;

    /// Cache level the float GEMV prefetches the next rows into (L2: the distance is `R` rows,
    /// up to 128 KiB ahead).
    const FLOAT_HINT: i32 = _MM_HINT_T1;

    /// Declares one-line lane operations: `name(args) -> type = expression;`.
    macro_rules! ops {
        ($(fn $name:ident($($a:ident: $t:ty),*) -> $r:ty = $e:expr;)*) => {$(
            #[inline]
            #[target_feature(enable = "avx2,f16c")]
            fn $name($($a: $t),*) -> $r {
                $e
            }
        )*};
    }

    ops! {
        fn splat(v: f32) -> F8 = _mm256_set1_ps(v);
        fn add(a: F8, b: F8) -> F8 = _mm256_add_ps(a, b);
        fn sub(a: F8, b: F8) -> F8 = _mm256_sub_ps(a, b);
        fn mul(a: F8, b: F8) -> F8 = _mm256_mul_ps(a, b);
        fn div(a: F8, b: F8) -> F8 = _mm256_div_ps(a, b);
        fn neg(a: F8) -> F8 = _mm256_xor_ps(a, _mm256_set1_ps(-0.0));
        // `vmaxps a, b` is `a > b ? a : b`.
        fn max(a: F8, b: F8) -> F8 = _mm256_max_ps(a, b);
        fn sel(m: I8, a: F8, b: F8) -> F8 = _mm256_blendv_ps(b, a, _mm256_castsi256_ps(m));
        fn isplat(v: i32) -> I8 = _mm256_set1_epi32(v);
        fn iadd(a: I8, b: I8) -> I8 = _mm256_add_epi32(a, b);
        fn isub(a: I8, b: I8) -> I8 = _mm256_sub_epi32(a, b);
        fn iand(a: I8, b: I8) -> I8 = _mm256_and_si256(a, b);
        fn iandnot(a: I8, b: I8) -> I8 = _mm256_andnot_si256(a, b);
        fn igt(a: I8, b: I8) -> I8 = _mm256_cmpgt_epi32(a, b);
        fn isel(m: I8, a: I8, b: I8) -> I8 = _mm256_blendv_epi8(b, a, m);
        fn shl23(a: I8) -> I8 = _mm256_slli_epi32::<23>(a);
        fn to_bits(a: F8) -> I8 = _mm256_castps_si256(a);
        fn from_bits(a: I8) -> F8 = _mm256_castsi256_ps(a);
        fn trunc_i32(a: F8) -> I8 = _mm256_cvttps_epi32(a);
        fn to_f32(a: I8) -> F8 = _mm256_cvtepi32_ps(a);
        fn lane_mask(t: usize) -> I8 =
            _mm256_cmpgt_epi32(_mm256_set1_epi32(t as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        // F16C widening is exact; bf16 widening is a 16-bit shift.
        fn ld8_f16(b: &[u8; 16]) -> F8 = _mm256_cvtph_ps(ld16_u8(b));
        fn ld8_bf16(b: &[u8; 16]) -> F8 =
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(ld16_u8(b))));
    }

    type Blk = __m256i;

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn hsum(v: Blk) -> i32 {
        hsum_i32(v)
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn block_sums8(v: &[Blk; 8]) -> F8 {
        _mm256_cvtepi32_ps(transpose_sum(v))
    }

    /// Eight consecutive block scales of one row.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn scales8<const B: usize>(blocks: &[[u8; B]; 8]) -> F8 {
        // SAFETY: the words start at 0, B, .., 7B and end 4 <= B bytes later, inside the
        // eight blocks `blocks` borrows.
        unsafe { gather_f16(blocks.as_flattened(), strides(B)) }
    }

    /// Asks for the weights [`PREFETCH`] bytes ahead of `p` (past the row end this is the next
    /// row of a GEMV; a prefetch never faults).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn prefetch_blocks(p: *const i8) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH))
    }

    /// Prefetches the cache line at `p` into [`FLOAT_HINT`] (a hint: it never faults).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn prefetch_next_rows(p: *const i8) {
        _mm_prefetch::<FLOAT_HINT>(p)
    }

    super::super::lanes::lane_kernels!("avx2,f16c");

    // ---- GEMV ----

    /// `out[r] = row_r(w) . a` (callers exclude -128 in a Q8_0 activation of a Q8_0 matrix).
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn gemv(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        match w.ty {
            GgmlType::Q8_0 => gemv_quant::<Q8_0_BLOCK_BYTES>(w, a, out, |b, x| block_q8(b, x)),
            GgmlType::Q4_0 => gemv_quant::<Q4_0_BLOCK_BYTES>(w, a, out, |b, x| block_q4(b, x)),
            _ => gemv_float(w, a, out),
        }
    }

    /// [`Kernels::gemv_group`] with every row dot inlined (same loops as the default).
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn gemv_group(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        if w.ty.is_quantized() {
            // Eight rows at a time for every member: the eight rows stay in L1 while each
            // member reads them.
            let rows = w.rows;
            for r0 in (0..rows).step_by(8) {
                let n = (rows - r0).min(8);
                let sub = Matrix {
                    rows: n,
                    data: w.data.get(r0 * w.row_bytes()..).unwrap_or(&[]),
                    ..*w
                };
                let mut res = [0.0f32; 8];
                for &p in members {
                    let p = p as usize;
                    let a = batch.item(w.cols, p / in_div);
                    match w.ty {
                        GgmlType::Q8_0 => {
                            gemv_quant::<Q8_0_BLOCK_BYTES>(&sub, &a, &mut res, |b, x| {
                                block_q8(b, x)
                            })
                        }
                        _ => gemv_quant::<Q4_0_BLOCK_BYTES>(&sub, &a, &mut res, |b, x| {
                            block_q4(b, x)
                        }),
                    }
                    out.set_rows(p, r0, &res[..n]);
                }
            }
            return;
        }
        gemv_group_float(w, batch, members, in_div, out);
    }

    /// [`Kernels::scores`]: eight positions at a time, each its own eight-lane chain as in
    /// [`dot_f32`] (so eight independent add chains are in flight), reduced canonically.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn scores(
        q: &[f32],
        keys: &[f32],
        stride: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let hd = q.len();
        let (qc, qt) = q.as_chunks::<8>();
        let row = |p: usize| &keys[p * stride..p * stride + hd];
        let (groups, tail) = out.as_chunks_mut::<8>();
        if !qt.is_empty() {
            // Heads that are not a multiple of 8 wide: one dot product per position.
            for (p, o) in out.iter_mut().enumerate() {
                *o = dot_f32(q, row(p)) * scale;
            }
            return;
        }
        let sc = _mm256_set1_ps(scale);
        for (g, o) in groups.iter_mut().enumerate() {
            let rows: [&[[f32; 8]]; 8] = core::array::from_fn(|i| row(8 * g + i).as_chunks().0);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, x) in qc.iter().enumerate() {
                let x = ld8(x);
                for (a, r) in acc.iter_mut().zip(&rows) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(x, ld8(&r[j])));
                }
            }
            let dots: [f32; 8] = core::array::from_fn(|i| reduce8(acc[i]));
            st8(o, _mm256_mul_ps(ld8(&dots), sc));
        }
        let p0 = 8 * groups.len();
        for (i, o) in tail.iter_mut().enumerate() {
            *o = dot_f32(q, row(p0 + i)) * scale;
        }
    }

    /// [`Kernels::weighted_rows`]: the output kept in registers 64 floats at a time while the
    /// positions stream past (each element's sum stays sequential in position order).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn weighted_rows(
        w: &[f32],
        values: &[f32],
        stride: usize,
        out: &mut [f32],
    ) {
        const V: usize = 8;
        let n = out.len();
        let (oc, ot) = out.as_chunks_mut::<8>();
        for (c, o) in oc.chunks_mut(V).enumerate() {
            let mut acc = [_mm256_setzero_ps(); V];
            for (p, &wp) in w.iter().enumerate() {
                let (v, _) = values[p * stride + 64 * c..p * stride + n].as_chunks::<8>();
                let wv = _mm256_set1_ps(wp);
                for (a, x) in acc[..o.len()].iter_mut().zip(v) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(wv, ld8(x)));
                }
            }
            for (o, a) in o.iter_mut().zip(acc) {
                st8(o, a);
            }
        }
        let t0 = n - ot.len();
        ot.fill(0.0);
        for (p, &wp) in w.iter().enumerate() {
            for (o, &x) in ot.iter_mut().zip(&values[p * stride + t0..p * stride + n]) {
                *o += wp * x;
            }
        }
    }

    /// `roundf` (half away from zero) of each lane: `t = trunc(v)`, plus `copysign(1, v)` when
    /// `|v - t| >= 0.5` (`v - t` is exact). Infinities and NaN pass through.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn round_away(v: __m256) -> __m256 {
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let sign = _mm256_set1_ps(-0.0);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        let one = _mm256_or_ps(_mm256_set1_ps(1.0), _mm256_and_ps(v, sign));
        _mm256_add_ps(t, _mm256_and_ps(up, one))
    }

    /// Rust's saturating `f32 as i32` for integral lanes, clamped to [-128, 127]; NaN -> 0.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn to_i8_range(r: __m256) -> __m256i {
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
        let r = _mm256_min_ps(
            _mm256_max_ps(r, _mm256_set1_ps(-128.0)),
            _mm256_set1_ps(127.0),
        );
        _mm256_cvtps_epi32(r)
    }

    /// [`crate::quant::quantize_q8_0`]: `amax` lane-wise (NaN skipped, order-free), the scale
    /// scalar, `roundf(x * id)` and the saturating cast lane-wise.
    #[target_feature(enable = "avx2,f16c")]
    pub(in crate::kernels) fn quantize_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32]) {
        let (xb, _) = x.as_chunks::<QK>();
        let (qb, _) = q.as_chunks_mut::<QK>();
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for ((xs, qs), dd) in xb.iter().zip(qb.iter_mut()).zip(d.iter_mut()) {
            let (v, _) = xs.as_chunks::<8>();
            let v: [__m256; 4] = core::array::from_fn(|i| ld8(&v[i]));
            let mut m = _mm256_setzero_ps();
            let mut nan = _mm256_setzero_ps();
            for vi in v {
                m = _mm256_max_ps(_mm256_and_ps(vi, abs), m); // keeps m when |v| is NaN
                nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(vi, vi));
            }
            let mut lanes = [0.0f32; 8];
            st8(&mut lanes, m);
            let amax = lanes.iter().fold(0.0f32, |a, &b| a.max(b));
            let dv = amax / 127.0;
            let id = if dv != 0.0 { 1.0 / dv } else { 0.0 };
            let finite = _mm256_movemask_ps(nan) == 0;
            *dd = if finite { round_to_f16(dv) } else { f32::NAN };
            let idv = _mm256_set1_ps(id);
            let i: [__m256i; 4] =
                core::array::from_fn(|k| to_i8_range(round_away(_mm256_mul_ps(v[k], idv))));
            let w = _mm256_packs_epi32(i[0], i[1]);
            let z = _mm256_packs_epi32(i[2], i[3]);
            let b = _mm256_packs_epi16(w, z);
            st32_i8(qs, _mm256_permutevar8x32_epi32(b, order));
        }
    }
}

#[cfg(test)]
mod tests {
    use core::arch::x86_64::*;

    use super::*;

    /// `imp::expf8` on eight inputs.
    #[target_feature(enable = "avx2,f16c")]
    fn exp8(xs: &[f32; 8]) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        // SAFETY: both arrays hold 8 f32; loadu/storeu need no alignment.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), imp::expf8(_mm256_loadu_ps(xs.as_ptr()))) };
        out
    }

    /// Every `step`-th f32 bit pattern (and its 7 successors) through `expf8` against libm.
    fn sweep(step: u32) {
        if !Avx2::available() {
            std::eprintln!("SKIP avx2: not available on this CPU");
            return;
        }
        let mut bits = 0u32;
        loop {
            let xs: [f32; 8] =
                core::array::from_fn(|i| f32::from_bits(bits.wrapping_add(i as u32)));
            // SAFETY: AVX2 and F16C are available (checked above).
            let out = unsafe { exp8(&xs) };
            for (x, o) in xs.iter().zip(out) {
                let want = libm::expf(*x);
                assert!(
                    want.to_bits() == o.to_bits() || (want.is_nan() && o.is_nan()),
                    "expf({x:e} = {:#x}): {o:e} != {want:e}",
                    x.to_bits()
                );
            }
            bits = match bits.checked_add(step) {
                Some(b) => b,
                None => break,
            };
        }
    }

    #[test]
    fn expf8_matches_libm_on_a_sweep() {
        sweep(65_521);
    }

    /// All 2^32 inputs (about a minute in release mode):
    /// `cargo test --release --lib expf8_matches_libm_exhaustively -- --ignored`.
    #[test]
    #[ignore]
    fn expf8_matches_libm_exhaustively() {
        sweep(8);
    }
}
