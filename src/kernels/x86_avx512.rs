//! x86-64 AVX-512 kernels (F, BW, VL, VNNI; F16C for the scales).
//!
//! Every kernel gives the bit pattern of its [`super::scalar`] twin (FORMAT.md, "Accumulation
//! order"). What is new here is the quantized work and the F16 GEMV (the AVX2 arithmetic with
//! a sequential prefetch stream: `gemv_f16`); the float row dots, the other float GEMVs and the
//! element-wise kernels are the AVX2 ones ([`Avx2`]'s methods are called directly: AVX-512
//! implies AVX2 + F16C, and the float kernels are bandwidth- or specification-bound).
//!
//! Exact integer block sums with `vpdpbusd` (unsigned x signed bytes): the *weight* is the
//! unsigned operand, `w + 128` (`w ^ 0x80`) for Q8_0 and the raw nibble `q` for Q4_0, so the
//! dot product gives `sum (w + 128) x = sum w x + 128 sum x` (resp. `sum q x = sum (q - 8) x +
//! 8 sum x`), and the activation's block sums `sum x`, computed once per activation, correct it.
//! Every product fits (255 * 128), every sum of a block fits an i32 by far, so this is exact for
//! every input, -128 in the activation included (no scalar fallback as in AVX2).
//!
//! - GEMV (one row at a time, one sequential stream of weights): eight consecutive blocks are
//!   four 512-bit `vpdpbusd`s whose 64 dword partial sums are reduced to the eight block sums
//!   in one vector by a shuffle tree (lane `i` holds block `PERM[i]` of the group); they are
//!   converted, multiplied by the eight `dw * dx` (f16 scales picked without a gather: see
//!   `group_scales`) and added to an eight-lane accumulator kept in the same permuted order,
//!   which is put back in the canonical order for `reduce8` once per row. Q4_0 rows of up to
//!   512 blocks use a split layout (two blocks' nibbles per 256-bit vector, four partial sums per
//!   block: `q4_split_sums`). Weights are prefetched 4 KiB ahead. Blocks past the last full
//!   group go through 256-bit `vpdpbusd` one at a time.
//! - Grouped GEMV (a matrix times many inputs): a tile of 16 rows is repacked once (weights
//!   transposed so that lane `r` of dword vector `k` is row `r`'s bytes `4k..4k+4` of a block,
//!   made unsigned), then for every member eight `vpdpbusd`s with the activation's dwords
//!   broadcast give the block's exact sums for the 16 rows at once: no horizontal work at all.
//!   Several members share each loaded weight vector.
//! - Tiled matrices ([`crate::tile`]): the GEMV runs the grouped GEMV's arithmetic on the bands
//!   as stored (`band_acc`, F16 `band_acc_f16`), eight lane accumulators of 16 rows each and no
//!   horizontal work; where the bands are in pieces, a panel of eight bands at a time, piece by
//!   piece (the eight bands' accumulators kept between pieces). The grouped GEMV repacks its
//!   tile from a band's pieces with a few vector operations. The weight loads are `asm!`
//!   statements, in address order: see `band_scales`.
//!
//! Safety model as in [`super::x86`]: the kernels are safe `#[target_feature]` functions in the
//! private `imp` module, called only after [`Avx512::available`]; raw-pointer loads are confined
//! to small helpers with `// SAFETY:` comments.

use super::x86::Avx2;
use super::{same_as, scalar, Act, Isa, Kernels, Out, Scalar};
use crate::model::Matrix;
use crate::quant::GgmlType;

/// AVX-512 kernels (selected at run time under `std`, at build time otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Avx512;

impl Avx512 {
    /// Whether the CPU supports the instructions these kernels use.
    #[inline(always)]
    pub fn available() -> bool {
        #[cfg(feature = "std")]
        {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni")
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(feature = "std"))]
        {
            cfg!(all(
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512vl",
                target_feature = "avx512vnni",
                target_feature = "avx2",
                target_feature = "f16c"
            ))
        }
    }
}

/// Runs `$fast` (an `imp` call) when the AVX-512 set is present, else `$slow`.
macro_rules! dispatch {
    ($fast:expr, $slow:expr) => {
        if Avx512::available() {
            // SAFETY: `imp` functions need AVX-512 F/BW/VL/VNNI, AVX2 and F16C, which the CPU
            // has (checked just above); they access memory only through the slices given.
            unsafe { $fast }
        } else {
            $slow
        }
    };
}

/// Matrices the AVX2 GEMV computes faster: rows of fewer than 8 blocks (the AVX-512 row step
/// takes 8 blocks at a time; AVX2 keeps 8 rows in flight instead) and matrices under 64 KiB
/// (the AVX-512 GEMV's per-call set-up of the activation data is then a large share). Measured
/// on whole models (best of 5, decode tok/s, 1 thread): the SMoE twin 5.8k -> 18.3k, the demo
/// 4.5k -> 8.1k, the d = 1024 h = 4 model 100 -> 118 (BENCHMARKS.md). The tiled grouped GEMV
/// stays AVX-512 at every size (it was faster on those models' prompts). Both give the same
/// bits, so this is only a choice of speed.
#[inline(always)]
fn small(w: &Matrix<'_>) -> bool {
    w.cols < 8 * crate::quant::QK || w.data.len() < 64 << 10
}

impl Kernels for Avx512 {
    const ISA: Isa = Isa::Avx512;

    // Everything but the quantized products: the AVX2 kernels.
    same_as! { Avx2;
        fn quantize_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32]);
        fn dot_f32_row(row: &[u8], x: &[f32]) -> f32;
        fn dot_f16_row(row: &[u8], x: &[f32]) -> f32;
        fn dot_bf16_row(row: &[u8], x: &[f32]) -> f32;
        fn dot_f32(a: &[f32], b: &[f32]) -> f32;
        fn axpy(out: &mut [f32], a: f32, v: &[f32]);
        fn scores(q: &[f32], keys: &[f32], stride: usize, scale: f32, out: &mut [f32]);
        fn weighted_rows(w: &[f32], values: &[f32], stride: usize, out: &mut [f32]);
        fn softmax(x: &mut [f32]) -> f32;
        fn silu_mul(gate: &mut [f32], up: &[f32]);
    }

    #[inline(always)]
    fn dot_q8_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
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

    fn gemv(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        if w.ty == GgmlType::F16 && w.cols == a.x.len() && w.row_bytes() * w.rows == w.data.len() {
            return dispatch!(imp::gemv_f16(w, a.x, out), Avx2::gemv(w, a, out));
        }
        if !w.ty.is_quantized() || small(w) {
            return Avx2::gemv(w, a, out);
        }
        dispatch!(imp::gemv(w, a, out), Scalar::gemv(w, a, out))
    }

    fn gemv_tiled(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        dispatch!(
            imp::gemv_tiled(w, a, out),
            <Scalar as Kernels>::gemv_tiled(w, a, out)
        )
    }

    fn gemv_group_tiled(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        if !w.ty.is_quantized() {
            return super::per_member(w, batch, members, in_div, out, Self::gemv_tiled);
        }
        dispatch!(
            imp::gemv_group(w, batch, members, in_div, out),
            <Scalar as Kernels>::gemv_group_tiled(w, batch, members, in_div, out)
        )
    }

    fn gemv_group(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        if !w.ty.is_quantized() {
            return Avx2::gemv_group(w, batch, members, in_div, out);
        }
        dispatch!(
            imp::gemv_group(w, batch, members, in_div, out),
            Scalar::gemv_group(w, batch, members, in_div, out)
        )
    }
}

/// The AVX-512 kernels. Each is a safe function with `#[target_feature]`: calling one from code
/// compiled without those features is `unsafe` (the caller checks the CPU).
mod imp {
    use core::arch::x86_64::*;
    use core::mem::MaybeUninit;

    use super::super::x86::imp as avx2;
    use super::super::{Act, Out};
    use crate::model::Matrix;
    use crate::quant::{f16_to_f32, GgmlType, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK};
    use crate::tile::{has_pieces, pieces, PANEL_BANDS};

    // ---- loads (the only raw-pointer accesses) ----

    /// The 32 quants of a Q8_0 block (bytes 2..34).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn q8_quants(b: &[u8; Q8_0_BLOCK_BYTES]) -> __m256i {
        // SAFETY: bytes 2..34 of the 34-byte block are readable.
        unsafe { _mm256_loadu_si256(b.as_ptr().add(2).cast()) }
    }

    /// The 16 nibble bytes of a Q4_0 block (bytes 2..18).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn q4_nibbles(b: &[u8; Q4_0_BLOCK_BYTES]) -> __m128i {
        // SAFETY: bytes 2..18 of the 18-byte block are readable.
        unsafe { _mm_loadu_si128(b.as_ptr().add(2).cast()) }
    }

    /// 32 activation quants.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn ld32_i8(x: &[i8; QK]) -> __m256i {
        // SAFETY: 32 readable bytes.
        unsafe { _mm256_loadu_si256(x.as_ptr().cast()) }
    }

    /// 64 activation quants (two blocks).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn ld64_i8(x: &[[i8; QK]; 2]) -> __m512i {
        // SAFETY: 64 readable bytes.
        unsafe { _mm512_loadu_si512(x.as_ptr().cast()) }
    }

    /// 64 bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn ld64_u8(x: &[u8; 64]) -> __m512i {
        // SAFETY: 64 readable bytes.
        unsafe { _mm512_loadu_si512(x.as_ptr().cast()) }
    }

    /// Eight i32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn ld8_i32(x: &[i32; 8]) -> __m256i {
        // SAFETY: 32 readable bytes.
        unsafe { _mm256_loadu_si256(x.as_ptr().cast()) }
    }

    /// Sixteen f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn ld16(x: &[f32; 16]) -> __m512 {
        // SAFETY: 64 readable bytes.
        unsafe { _mm512_loadu_ps(x.as_ptr()) }
    }

    /// Stores sixteen f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn st16(x: &mut [f32; 16], v: __m512) {
        // SAFETY: 64 writable bytes.
        unsafe { _mm512_storeu_ps(x.as_mut_ptr(), v) }
    }

    /// Stores sixteen u32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn st16_u32(x: &mut [u32; 16], v: __m512i) {
        // SAFETY: 64 writable bytes.
        unsafe { _mm512_storeu_si512(x.as_mut_ptr().cast(), v) }
    }

    /// Sixteen u32 (a repacked weight vector).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn ld16_u32(x: &[u32; 16]) -> __m512i {
        // SAFETY: 64 readable bytes.
        unsafe { _mm512_loadu_si512(x.as_ptr().cast()) }
    }

    // ---- the block kinds ----

    /// Multiplier of the activation block sum that corrects the unsigned weights: Q8_0 uses
    /// `w + 128`, Q4_0 the raw nibble `q = w + 8`.
    const fn bias<const B: usize>() -> i32 {
        if B == Q8_0_BLOCK_BYTES {
            128
        } else {
            8
        }
    }

    /// The unsigned weights of two blocks, element `j` of each 256-bit half pairing with
    /// activation element `j` of its block.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn pair<const B: usize>(a: &[u8; B], b: &[u8; B]) -> __m512i {
        let (a, b) = (a.as_slice(), b.as_slice());
        if B == Q8_0_BLOCK_BYTES {
            let lo = q8_quants(a.try_into().unwrap_or(&[0; Q8_0_BLOCK_BYTES]));
            let hi = q8_quants(b.try_into().unwrap_or(&[0; Q8_0_BLOCK_BYTES]));
            let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            _mm512_xor_si512(v, _mm512_set1_epi8(-128))
        } else {
            let lo = q4_nibbles(a.try_into().unwrap_or(&[0; Q4_0_BLOCK_BYTES]));
            let hi = q4_nibbles(b.try_into().unwrap_or(&[0; Q4_0_BLOCK_BYTES]));
            // [raw a, raw a, raw b, raw b], the 2nd and 4th 128-bit lanes shifted to the high
            // nibbles: low nibbles pair with x[0..16], high nibbles with x[16..32].
            let v = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_broadcastsi128_si256(lo)),
                _mm256_broadcastsi128_si256(hi),
            );
            let v = _mm512_mask_srli_epi16::<4>(v, 0xFF00_FF00, v);
            _mm512_and_si512(v, _mm512_set1_epi8(0x0F))
        }
    }

    /// The unsigned weights of one block (256 bits).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn single<const B: usize>(a: &[u8; B]) -> __m256i {
        let a = a.as_slice();
        if B == Q8_0_BLOCK_BYTES {
            let v = q8_quants(a.try_into().unwrap_or(&[0; Q8_0_BLOCK_BYTES]));
            _mm256_xor_si256(v, _mm256_set1_epi8(-128))
        } else {
            let raw = q4_nibbles(a.try_into().unwrap_or(&[0; Q4_0_BLOCK_BYTES]));
            let m = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(raw, m);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(raw), m);
            _mm256_set_m128i(hi, lo)
        }
    }

    /// Exact `sum x` of one activation block.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn block_sum(x: &[i8; QK]) -> i32 {
        let s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), ld32_i8(x));
        avx2::hsum_i32(s)
    }

    // ---- one row, eight blocks per step ----

    /// How far ahead of the current group the Q4_0 GEMV prefetches weights (past the row end:
    /// the next rows, which are contiguous).
    const Q4_PREFETCH: usize = 4096;

    /// Lane `i` of a group's block-sum vector holds block `PERM[i]` of the group.
    const PERM: [i32; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
    /// Canonical lane `c` is at position `INV[c]`.
    const INV: [i32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn perm_idx() -> __m256i {
        _mm256_setr_epi32(
            PERM[0], PERM[1], PERM[2], PERM[3], PERM[4], PERM[5], PERM[6], PERM[7],
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn inv_idx() -> __m256i {
        _mm256_setr_epi32(
            INV[0], INV[1], INV[2], INV[3], INV[4], INV[5], INV[6], INV[7],
        )
    }

    /// Four vectors of dword partial sums, vector `i` holding blocks `2i` (low 256 bits) and
    /// `2i + 1` (high) of a group, to the eight block totals in `PERM` order. Exact.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn block_sums(p: [__m512i; 4]) -> __m256i {
        // Per 128-bit lane k: [A0+A2, A1+A3, B0+B2, B1+B3].
        let s1 = _mm512_add_epi32(
            _mm512_unpacklo_epi64(p[0], p[1]),
            _mm512_unpackhi_epi64(p[0], p[1]),
        );
        let s2 = _mm512_add_epi32(
            _mm512_unpacklo_epi64(p[2], p[3]),
            _mm512_unpackhi_epi64(p[2], p[3]),
        );
        // Per 128-bit lane k: [A_k, B_k, C_k, D_k] (each the lane's total).
        let (f1, f2) = (_mm512_castsi512_ps(s1), _mm512_castsi512_ps(s2));
        let z = _mm512_add_epi32(
            _mm512_castps_si512(_mm512_shuffle_ps::<0x88>(f1, f2)),
            _mm512_castps_si512(_mm512_shuffle_ps::<0xDD>(f1, f2)),
        );
        // Lanes (0, 2, 1, 3), then low + high 256 bits: block halves added.
        let t = _mm512_shuffle_i64x2::<0xD8>(z, z);
        _mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64::<1>(t))
    }

    /// The eight f16 scales of a group, in `PERM` order. Q4_0: one word permute (`vpermt2w`)
    /// of the group's first 128 bytes (the scales are words `9k`). Q8_0: scalar 16-bit loads
    /// packed into two 64-bit words (the integer ALUs are idle; measured ~5% faster here than
    /// two permutes of 128-byte windows). Both beat a gather, which costs vector uops.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn group_scales<const B: usize>(g: &[[u8; B]; 8]) -> __m256 {
        let h = if B == Q8_0_BLOCK_BYTES {
            let h = |i: usize| {
                let k = PERM[i] as usize;
                u64::from(u16::from_le_bytes([g[k][0], g[k][1]])) << (16 * (i % 4))
            };
            let lo = h(0) | h(1) | h(2) | h(3);
            let hi = h(4) | h(5) | h(6) | h(7);
            _mm_set_epi64x(hi as i64, lo as i64)
        } else {
            let bytes = g.as_flattened();
            let a = ld64_u8(bytes[..64].try_into().unwrap_or(&[0; 64]));
            let b = ld64_u8(bytes[64..128].try_into().unwrap_or(&[0; 64]));
            let w = |i: usize| (PERM[i] as usize * B / 2) as i16;
            let idx = _mm_setr_epi16(w(0), w(1), w(2), w(3), w(4), w(5), w(6), w(7));
            _mm512_castsi512_si128(_mm512_permutex2var_epi16(a, _mm512_castsi128_si512(idx), b))
        };
        _mm256_cvtph_ps(h)
    }

    /// The activation-side data of a group: its quants (in the [`SplitX`] layout where the
    /// GEMV prepared them so) and, in `PERM` order, the corrections `bias * sum x` and the
    /// scales `dx`.
    struct GroupX<'a> {
        x: &'a [[i8; QK]; 8],
        corr: __m256i,
        dx: __m256,
    }

    /// The raw block sums (`sum w' x` with the unsigned weights `w'`) of a group, in `PERM`
    /// order: two blocks per 512-bit `vpdpbusd`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn pair_sums<const B: usize>(g: &[[u8; B]; 8], x: &[[i8; QK]; 8]) -> __m256i {
        let (xp, _) = x.as_chunks::<2>();
        let p: [__m512i; 4] = core::array::from_fn(|i| {
            _mm512_dpbusd_epi32(
                _mm512_setzero_si512(),
                pair::<B>(&g[2 * i], &g[2 * i + 1]),
                ld64_i8(&xp[i]),
            )
        });
        block_sums(p)
    }

    /// The activation of a group in the Q4_0 split layout: for each pair of blocks `a = 2i`,
    /// `b = 2i + 1`, entry `2i` = `a[0..16], b[0..16]` (the low nibbles' partners) and entry
    /// `2i + 1` = `a[16..32], b[16..32]`.
    type SplitX = [[i8; QK]; 8];

    /// The split layout of one group's quants.
    #[inline]
    fn split_group(x: &[[i8; QK]; 8]) -> SplitX {
        let mut s = [[0i8; QK]; 8];
        for i in 0..4 {
            let (a, b) = (&x[2 * i], &x[2 * i + 1]);
            s[2 * i][..16].copy_from_slice(&a[..16]);
            s[2 * i][16..].copy_from_slice(&b[..16]);
            s[2 * i + 1][..16].copy_from_slice(&a[16..]);
            s[2 * i + 1][16..].copy_from_slice(&b[16..]);
        }
        s
    }

    /// [`pair_sums`] for Q4_0 with the activation in the split layout: the nibbles of blocks
    /// `2i` and `2i + 1` side by side in one 256-bit vector, low and high nibbles through two
    /// accumulating `vpdpbusd`, so each block leaves four dword partial sums (not eight) and
    /// the reduction is half as long. Same `PERM` order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn q4_split_sums(g: &[[u8; Q4_0_BLOCK_BYTES]; 8], xs: &SplitX) -> __m256i {
        let m = _mm256_set1_epi8(0x0F);
        let p: [__m256i; 4] = core::array::from_fn(|i| {
            let v = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(q4_nibbles(&g[2 * i])),
                q4_nibbles(&g[2 * i + 1]),
            );
            let lo = _mm256_and_si256(v, m);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m);
            let s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, ld32_i8(&xs[2 * i]));
            _mm256_dpbusd_epi32(s, hi, ld32_i8(&xs[2 * i + 1]))
        });
        // Per 128-bit lane (block 2i, resp. 2i + 1): dwords 0+2 and 1+3 of two blocks.
        let s0 = _mm256_add_epi32(
            _mm256_unpacklo_epi64(p[0], p[1]),
            _mm256_unpackhi_epi64(p[0], p[1]),
        );
        let s1 = _mm256_add_epi32(
            _mm256_unpacklo_epi64(p[2], p[3]),
            _mm256_unpackhi_epi64(p[2], p[3]),
        );
        // Lane 0: blocks 0, 2, 4, 6; lane 1: 1, 3, 5, 7 (= PERM).
        let (f0, f1) = (_mm256_castsi256_ps(s0), _mm256_castsi256_ps(s1));
        _mm256_add_epi32(
            _mm256_castps_si256(_mm256_shuffle_ps::<0x88>(f0, f1)),
            _mm256_castps_si256(_mm256_shuffle_ps::<0xDD>(f0, f1)),
        )
    }

    /// One group of eight blocks of a row into the permuted accumulator, given its raw block
    /// sums in `PERM` order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn group<const B: usize>(
        acc: __m256,
        g: &[[u8; B]; 8],
        x: &GroupX<'_>,
        sums: __m256i,
    ) -> __m256 {
        let sumi = _mm256_sub_epi32(sums, x.corr);
        let scale = _mm256_mul_ps(group_scales(g), x.dx);
        _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), scale))
    }

    /// The activation data of group `g` computed from the quants (when not precomputed).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn group_x<'a, const B: usize>(x: &'a [[i8; QK]; 8], dx: &[f32; 8]) -> GroupX<'a> {
        let (xp, _) = x.as_chunks::<2>();
        let p: [__m512i; 4] = core::array::from_fn(|i| {
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), ld64_i8(&xp[i]))
        });
        let corr = _mm256_mullo_epi32(block_sums(p), _mm256_set1_epi32(bias::<B>()));
        let dx = _mm256_permutevar8x32_ps(avx2::ld8(dx), perm_idx());
        GroupX { x, corr, dx }
    }

    /// A row of `n` blocks (`n` at most the lengths of `xq` and `xd`), given the activation
    /// data of each full group; blocks past the last full group one at a time (`sums[b]` =
    /// `sum x` of block `b`, or computed when `None`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn row_dot<'a, const B: usize>(
        row: &[[u8; B]],
        xq: &'a [[i8; QK]],
        xd: &[f32],
        gx: impl Fn(usize) -> GroupX<'a>,
        tail_sum: impl Fn(usize) -> i32,
        sums: impl Fn(&[[u8; B]; 8], usize, &GroupX<'a>) -> __m256i,
    ) -> f32 {
        let n = row.len();
        let (groups, tail) = row.as_chunks::<8>();
        let mut acc = _mm256_setzero_ps();
        // A row is one sequential stream (rows follow each other). Q8_0: no software prefetch;
        // the hardware prefetchers follow the stream on their own once the weights are in huge
        // pages (`ModelBytes::read`), and prefetching 2-8 KiB ahead into L1 or L2 measured
        // 3-25% slower decode on the d = 1024 model. Q4_0 (compute-bound, half the bytes per
        // block) still gains from an L1 prefetch 4 KiB ahead (BENCHMARKS.md).
        for (g, blocks) in groups.iter().enumerate() {
            if B == Q4_0_BLOCK_BYTES {
                let at = blocks.as_ptr().cast::<i8>().wrapping_add(Q4_PREFETCH);
                for k in 0..(8 * B).div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64 * k));
                }
            }
            let x = gx(g);
            acc = group::<B>(acc, blocks, &x, sums(blocks, g, &x));
        }
        let acc = _mm256_permutevar8x32_ps(acc, inv_idx());
        if tail.is_empty() {
            return avx2::reduce8(acc);
        }
        let mut lanes = [0.0f32; 8];
        avx2::st8(&mut lanes, acc);
        let b0 = n - tail.len();
        for (i, (blk, l)) in tail.iter().zip(lanes.iter_mut()).enumerate() {
            let b = b0 + i;
            let s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), single::<B>(blk), ld32_i8(&xq[b]));
            let sumi = avx2::hsum_i32(s) - bias::<B>() * tail_sum(b);
            let dw = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
            *l += sumi as f32 * (dw * xd[b]);
        }
        avx2::reduce8(avx2::ld8(&lanes))
    }

    /// One quantized row times a Q8_0 activation, everything computed here.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn dot_quant<const B: usize>(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        let (row, _) = row.as_chunks::<B>();
        let (xq, _) = xq.as_chunks::<QK>();
        let n = row.len().min(xq.len()).min(xd.len());
        let (row, xq, xd) = (&row[..n], &xq[..n], &xd[..n]);
        let (xg, _) = xq.as_chunks::<8>();
        let (dg, _) = xd.as_chunks::<8>();
        row_dot::<B>(
            row,
            xq,
            xd,
            |g| group_x::<B>(&xg[g], &dg[g]),
            |b| block_sum(&xq[b]),
            |blocks, _, x| pair_sums::<B>(blocks, x.x),
        )
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    pub(super) fn dot_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        dot_quant::<Q8_0_BLOCK_BYTES>(row, xq, xd)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    pub(super) fn dot_q4_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        dot_quant::<Q4_0_BLOCK_BYTES>(row, xq, xd)
    }

    // ---- GEMV ----

    /// Blocks of activation data the GEMV prepares on the stack (longer rows compute it per row
    /// and group).
    const PREP_BLOCKS: usize = 1024;

    /// Blocks per row up to which the Q4_0 GEMV lays the activation out for
    /// [`q4_split_sums`] (longer rows take [`pair_sums`]).
    const SPLIT_BLOCKS: usize = 512;

    /// Zero Q4_0 blocks (never read: the conversion below cannot fail when `B` is Q4_0's size).
    const Q4_ZERO: [[u8; Q4_0_BLOCK_BYTES]; 8] = [[0; Q4_0_BLOCK_BYTES]; 8];

    /// Room for the activation data of [`PREP_BLOCKS`] blocks, on a 64-byte boundary (256- and
    /// 512-bit loads that straddle two cache lines cost two: left to the stack frame's luck,
    /// the Q4_0 GEMV measured 10-15% slower cache-resident, and a Q8_0 activation 16 bytes off
    /// a 64-byte boundary 6-7% slower) and uninitialized: a GEMV fills only what its row length
    /// needs (zeroing the whole 44 KiB on every call cost more than the copy).
    #[repr(C, align(64))]
    struct PrepBuf {
        /// Per full group: the quants (Q4_0 rows of up to [`SPLIT_BLOCKS`] blocks: in the
        /// split layout).
        x: [MaybeUninit<[[i8; QK]; 8]>; PREP_BLOCKS / 8],
        /// Per full group, in `PERM` order: `bias * sum x`.
        corr: [MaybeUninit<[i32; 8]>; PREP_BLOCKS / 8],
        /// Per full group, in `PERM` order: the scales `dx`.
        dx: [MaybeUninit<[f32; 8]>; PREP_BLOCKS / 8],
        /// Per block: `sum x`.
        sums: [MaybeUninit<i32>; PREP_BLOCKS],
    }

    impl PrepBuf {
        const fn new() -> PrepBuf {
            PrepBuf {
                x: [const { MaybeUninit::uninit() }; PREP_BLOCKS / 8],
                corr: [const { MaybeUninit::uninit() }; PREP_BLOCKS / 8],
                dx: [const { MaybeUninit::uninit() }; PREP_BLOCKS / 8],
                sums: [const { MaybeUninit::uninit() }; PREP_BLOCKS],
            }
        }
    }

    /// Writes `f(i)` into the first `n` (at most all) entries of `buf` and returns them.
    #[inline]
    fn fill<T>(buf: &mut [MaybeUninit<T>], n: usize, mut f: impl FnMut(usize) -> T) -> &[T] {
        let n = n.min(buf.len());
        let buf = &mut buf[..n];
        for (i, slot) in buf.iter_mut().enumerate() {
            slot.write(f(i));
        }
        // SAFETY: every entry of `buf` was written just above, and `MaybeUninit<T>` has the
        // size and alignment of `T`.
        unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<T>(), buf.len()) }
    }

    /// The prepared activation data of `n` blocks (`n <= PREP_BLOCKS`).
    struct Prep<'b> {
        x: &'b [[[i8; QK]; 8]],
        corr: &'b [[i32; 8]],
        dx: &'b [[f32; 8]],
        sums: &'b [i32],
    }

    /// Fills `buf` for `xq`, `xd` (`n` blocks each): the quants of every full group copied (or
    /// laid out split, `split`), their corrections and scales, every block's sum.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn prep<'b, const B: usize>(
        buf: &'b mut PrepBuf,
        xq: &[[i8; QK]],
        xd: &[f32],
        split: bool,
    ) -> Prep<'b> {
        let (xg, _) = xq.as_chunks::<8>();
        let (dg, _) = xd.as_chunks::<8>();
        let groups = xg.len().min(dg.len());
        let sums = fill(&mut buf.sums, xq.len(), |b| block_sum(&xq[b]));
        let (sg, _) = sums.as_chunks::<8>();
        Prep {
            x: fill(&mut buf.x, groups, |g| {
                if split {
                    split_group(&xg[g])
                } else {
                    xg[g]
                }
            }),
            corr: fill(&mut buf.corr, groups, |g| {
                core::array::from_fn(|i| bias::<B>() * sg[g][PERM[i] as usize])
            }),
            dx: fill(&mut buf.dx, groups, |g| {
                core::array::from_fn(|i| dg[g][PERM[i] as usize])
            }),
            sums,
        }
    }

    /// Quantized GEMV (or the rows of one member of a grouped GEMV): one row at a time, so the
    /// weights are one sequential stream.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn gemv_quant<const B: usize>(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        let stride = w.cols / QK;
        let (blocks, _) = w.data.as_chunks::<B>();
        let (xq, _) = a.q.as_chunks::<QK>();
        let n = stride.min(xq.len()).min(a.d.len());
        let (xq, xd) = (&xq[..n], &a.d[..n]);
        let out = &mut out[..w.rows];
        if blocks.len() < w.rows * stride {
            // Inconsistent matrix (rows past the data are empty, as in the specification).
            for (r, o) in out.iter_mut().enumerate() {
                let (row, _) = w.row(r).as_chunks::<B>();
                *o = dot_quant::<B>(row.as_flattened(), a.q, a.d);
            }
            return;
        }
        if n > PREP_BLOCKS {
            for (r, o) in out.iter_mut().enumerate() {
                let row = &blocks[r * stride..r * stride + n];
                *o = dot_quant::<B>(row.as_flattened(), xq.as_flattened(), xd);
            }
            return;
        }
        let split = B == Q4_0_BLOCK_BYTES && n <= SPLIT_BLOCKS;
        let mut buf = PrepBuf::new();
        let p = prep::<B>(&mut buf, xq, xd, split);
        for (r, o) in out.iter_mut().enumerate() {
            let row = &blocks[r * stride..r * stride + n];
            *o = row_dot::<B>(
                row,
                xq,
                xd,
                |g| GroupX {
                    x: &p.x[g],
                    corr: ld8_i32(&p.corr[g]),
                    dx: avx2::ld8(&p.dx[g]),
                },
                |b| p.sums[b],
                |blocks, _, x| {
                    if split {
                        let blocks = blocks.as_flattened().as_chunks().0;
                        q4_split_sums(blocks.try_into().unwrap_or(&Q4_ZERO), x.x)
                    } else {
                        pair_sums::<B>(blocks, x.x)
                    }
                },
            );
        }
    }

    /// `out[r] = row_r(w) . a` for a quantized `w`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    pub(super) fn gemv(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        match w.ty {
            GgmlType::Q8_0 => gemv_quant::<Q8_0_BLOCK_BYTES>(w, a, out),
            _ => gemv_quant::<Q4_0_BLOCK_BYTES>(w, a, out),
        }
    }

    // ---- F16 GEMV ----

    /// Eight f16 widened to f32 (exact).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn ld8_f16(b: &[u8; 16]) -> __m256 {
        // SAFETY: 16 readable bytes.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(b.as_ptr().cast()) })
    }

    /// F16 rows in flight.
    const F16_ROWS: usize = 8;

    /// `R` F16 rows (`2 * x.len()` bytes each) times `x`, in each row's eight canonical lanes
    /// (elements `16c..16c + 8`, then `16c + 8..16c + 16`: every lane's chain is the
    /// specification's, in order). Differs from the AVX2 driver in its steps of sixteen
    /// elements and its prefetch: the next `R` rows as one sequential stream into L2 (the AVX2
    /// driver's per-row prefetch into L1 left 68 MiB F16 GEMVs at ~72-80% of the read
    /// bandwidth with 4-16 KiB rows; 512-bit `vcvtph2ps` was measured ~45% slower here).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn f16_rows<const R: usize>(rows: [&[u8]; R], x: &[f32]) -> [f32; R] {
        let (xc, _) = x.as_chunks::<8>().0.as_chunks::<2>();
        let rc = rows.map(|r| r.as_chunks::<32>().0);
        let next = rows[0]
            .as_ptr()
            .cast::<i8>()
            .wrapping_add(R * rows[0].len());
        let mut acc = [_mm256_setzero_ps(); R];
        for (c, xv) in xc.iter().enumerate() {
            // The next R rows (contiguous after these in a consistent matrix) as one
            // sequential stream: R * 32 bytes of it per step.
            let at = next.wrapping_add(R * 32 * c);
            for k in 0..(R * 32).div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(64 * k));
            }
            let (xlo, xhi) = (avx2::ld8(&xv[0]), avx2::ld8(&xv[1]));
            for (a, r) in acc.iter_mut().zip(&rc) {
                let (w, _) = r[c].as_chunks::<16>();
                *a = _mm256_add_ps(*a, _mm256_mul_ps(ld8_f16(&w[0]), xlo));
                *a = _mm256_add_ps(*a, _mm256_mul_ps(ld8_f16(&w[1]), xhi));
            }
        }
        let done = 16 * xc.len();
        let (x8, xt) = x[done..].as_chunks::<8>();
        if let Some(x8) = x8.first() {
            let xv = avx2::ld8(x8);
            for (a, r) in acc.iter_mut().zip(&rows) {
                let (w, _) = r[2 * done..].as_chunks::<16>();
                *a = _mm256_add_ps(*a, _mm256_mul_ps(ld8_f16(&w[0]), xv));
            }
        }
        if xt.is_empty() {
            return acc.map(|a| avx2::reduce8(a));
        }
        let at = x.len() - xt.len();
        let mut out = [0.0f32; R];
        for ((o, a), r) in out.iter_mut().zip(&acc).zip(&rows) {
            let mut lanes = [0.0f32; 8];
            avx2::st8(&mut lanes, *a);
            for ((l, &xi), c) in lanes.iter_mut().zip(xt).zip(r[2 * at..].chunks_exact(2)) {
                *l += f16_to_f32(u16::from_le_bytes([c[0], c[1]])) * xi;
            }
            *o = avx2::reduce8(avx2::ld8(&lanes));
        }
        out
    }

    /// GEMV of a consistent F16 matrix (`w.cols == x.len()`, `rows * row_bytes` bytes):
    /// [`F16_ROWS`] rows at a time, then the rest one by one.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    pub(super) fn gemv_f16(w: &Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let out = &mut out[..w.rows];
        let (groups, rest) = out.as_chunks_mut::<F16_ROWS>();
        for (g, o) in groups.iter_mut().enumerate() {
            *o = f16_rows(core::array::from_fn(|i| w.row(F16_ROWS * g + i)), x);
        }
        let full = groups.len() * F16_ROWS;
        for (r, o) in rest.iter_mut().enumerate() {
            *o = f16_rows::<1>([w.row(full + r)], x)[0];
        }
    }

    // ---- tiled matrices (`crate::tile`) ----

    /// Four activation quants as one dword, broadcast to every lane.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn bcast4(x: &[i8; QK], k: usize) -> __m512i {
        let (words, _) = x.as_chunks::<4>();
        let w = words.get(k).copied().unwrap_or([0; 4]);
        _mm512_set1_epi32(i32::from_le_bytes(w.map(|v| v as u8)))
    }

    // The tiled GEMVs stream their weights from memory at the read bandwidth only when the
    // loads reach the CPU in address order, 32 bytes at a time: LLVM, left to itself, merges two
    // 32-byte loads into one 64-byte load that straddles two cache lines and reorders the loads
    // of a block, and which it does changes with unrelated edits (the same Q8_0 kernel ran at
    // 12-13 GB/s or 30-33 GB/s from one commit to the next: BENCHMARKS.md, "Tiled GEMVs at the
    // roofline"). So the weight loads are `asm!` statements: LLVM neither merges nor reorders
    // them (each may have side effects, for all it knows), and the arithmetic stays intrinsics.

    /// The 16 f16 scales at the start of a tiled block (or one F16 unit), widened (exact).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn band_scales(b: &[u8; 32]) -> __m512 {
        let v: __m512;
        // SAFETY: reads the 32 bytes of `b` (no alignment needed), writes only `v`.
        unsafe {
            core::arch::asm!(
                "vcvtph2ps {v}, ymmword ptr [{p}]",
                p = in(reg) b.as_ptr(),
                v = lateout(zmm_reg) v,
                options(readonly, nostack, preserves_flags),
            );
        }
        v
    }

    /// One F16 unit of a tiled band (element `i` of 16 rows) widened: rows 0-7, rows 8-15.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn f16_halves(b: &[u8; 32]) -> (__m256, __m256) {
        let (lo, hi): (__m256, __m256);
        // SAFETY: reads the 32 bytes of `b` (no alignment needed), writes only `lo` and `hi`.
        unsafe {
            core::arch::asm!(
                "vcvtph2ps {lo}, xmmword ptr [{p}]",
                "vcvtph2ps {hi}, xmmword ptr [{p} + 16]",
                p = in(reg) b.as_ptr(),
                lo = out(ymm_reg) lo,
                hi = lateout(ymm_reg) hi,
                options(readonly, nostack, preserves_flags),
            );
        }
        (lo, hi)
    }

    /// Quant vector `k` of a tiled block `u` (its 16 scales, then its quants): lane `r` = row
    /// `r`'s quant bytes `4k..4k + 4` (zeros past the end of `u`), as two 32-byte loads (a
    /// tiled block's quants start 32 bytes into it, so one 64-byte load would straddle two
    /// cache lines).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn band_quants(u: &[u8], k: usize) -> __m512i {
        let at = 32 + 64 * k;
        let s: &[u8; 64] = u
            .get(at..at + 64)
            .and_then(|s| s.try_into().ok())
            .unwrap_or(&[0; 64]);
        let v: __m512i;
        // SAFETY: reads the 64 bytes of `s` (no alignment needed), writes only `lo` and `v`.
        unsafe {
            core::arch::asm!(
                "vmovdqu64 {lo}, ymmword ptr [{p}]",
                "vinserti64x4 {v}, {lo:z}, ymmword ptr [{p} + 32], 1",
                p = in(reg) s.as_ptr(),
                lo = out(ymm_reg) _,
                v = lateout(zmm_reg) v,
                options(readonly, nostack, preserves_flags),
            );
        }
        v
    }

    /// One block of a tiled band times activation block `x` (scale `dx`, correction `corr` =
    /// `bias * sum x`): the 16 rows' terms `sumi * (dw * dx)`, with `sumi` exact. Q8_0: eight
    /// `vpdpbusd` of the sign-flipped quants; Q4_0: four loads, each split into low and high
    /// nibbles (which pair with `x[4k..]` and `x[16 + 4k..]`).
    ///
    /// The weight loads go in address order, scales first (their `asm!` keeps them so: see
    /// [`band_scales`]), into two chains of sums (even and odd vectors; low and high nibbles).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn band_term<const B: usize, const U: usize>(
        u: &[u8; U],
        x: &[i8; QK],
        corr: i32,
        dx: f32,
    ) -> __m512 {
        let dw = band_scales(u.first_chunk::<32>().unwrap_or(&[0; 32]));
        // Two chains of four `vpdpbusd` (integer sums: the split is exact), half the latency
        // of one chain of eight.
        let mut s = _mm512_set1_epi32(corr.wrapping_neg());
        let mut t = _mm512_setzero_si512();
        if B == Q8_0_BLOCK_BYTES {
            let flip = _mm512_set1_epi8(-128);
            for k in (0..8).step_by(2) {
                let v = _mm512_xor_si512(band_quants(u, k), flip);
                s = _mm512_dpbusd_epi32(s, v, bcast4(x, k));
                let v = _mm512_xor_si512(band_quants(u, k + 1), flip);
                t = _mm512_dpbusd_epi32(t, v, bcast4(x, k + 1));
            }
        } else {
            let m = _mm512_set1_epi8(0x0F);
            for k in 0..4 {
                let raw = band_quants(u, k);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), m);
                s = _mm512_dpbusd_epi32(s, _mm512_and_si512(raw, m), bcast4(x, k));
                t = _mm512_dpbusd_epi32(t, hi, bcast4(x, 4 + k));
            }
        }
        let s = _mm512_add_epi32(s, t);
        _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(dx)))
    }

    /// `lo` in lanes 0-7, `hi` in lanes 8-15.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn join(lo: __m256, hi: __m256) -> __m512 {
        let lo = _mm512_castpd256_pd512(_mm256_castps_pd(lo));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, _mm256_castps_pd(hi)))
    }

    /// Eight lane accumulators of 16 rows each reduced in the canonical order ([`reduce8`]
    /// lane by lane: `(a0 + a4) + (a2 + a6)`, `(a1 + a5) + (a3 + a7)`, then their sum).
    ///
    /// [`reduce8`]: super::super::scalar::reduce8
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn reduce8_rows(acc: &[__m512; 8]) -> [f32; TR] {
        let s0 = _mm512_add_ps(acc[0], acc[4]);
        let s1 = _mm512_add_ps(acc[1], acc[5]);
        let s2 = _mm512_add_ps(acc[2], acc[6]);
        let s3 = _mm512_add_ps(acc[3], acc[7]);
        let r = _mm512_add_ps(_mm512_add_ps(s0, s2), _mm512_add_ps(s1, s3));
        let mut o = [0.0f32; TR];
        st16(&mut o, r);
        o
    }

    /// `$step(j, &g[j], &h[j], ..)` for lanes `j = 0..8` of the groups of eight `g, h, ..`,
    /// written out (the lane index must be a constant for the accumulators to stay in
    /// registers).
    macro_rules! eight {
        ($step:ident, $($g:ident),+) => {
            $step(0, $(&$g[0]),+);
            $step(1, $(&$g[1]),+);
            $step(2, $(&$g[2]),+);
            $step(3, $(&$g[3]),+);
            $step(4, $(&$g[4]),+);
            $step(5, $(&$g[5]),+);
            $step(6, $(&$g[6]),+);
            $step(7, $(&$g[7]),+);
        };
    }

    /// The 16 rows of one tiled band (`band[b]` = block `b`) times the activation: block `b`
    /// into lane `b % 8`, as the specification.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn band_dot<const B: usize, const U: usize>(
        band: &[[u8; U]],
        xq: &[[i8; QK]],
        xd: &[f32],
        corr: &[i32],
    ) -> [f32; TR] {
        let mut acc = [_mm512_setzero_ps(); 8];
        band_acc::<B, U>(&mut acc, band, xq, xd, corr);
        reduce8_rows(&acc)
    }

    /// Adds `band` (`band[b]` = block `b` of the 16 rows) times the activation to the lane
    /// accumulators `acc`: block `b` into lane `b % 8` (a piece of a band starts at a multiple
    /// of 8 blocks).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn band_acc<const B: usize, const U: usize>(
        acc: &mut [__m512; 8],
        band: &[[u8; U]],
        xq: &[[i8; QK]],
        xd: &[f32],
        corr: &[i32],
    ) {
        let n = band.len().min(xq.len()).min(xd.len()).min(corr.len());
        let (band, xq, xd, corr) = (&band[..n], &xq[..n], &xd[..n], &corr[..n]);
        let mut a = *acc;
        let mut step = |j: usize, u: &[u8; U], x: &[i8; QK], c: &i32, d: &f32| {
            a[j] = _mm512_add_ps(a[j], band_term::<B, U>(u, x, *c, *d));
        };
        // Groups of eight blocks as arrays: no bounds checks inside, and `step`'s lane index a
        // constant, so the accumulators stay in registers. (Indexed block by block instead, with
        // a bounds check each, 68 MiB GEMVs from memory ran at 60-87% of the read bandwidth
        // instead of 86-98%: BENCHMARKS.md, "Tiled GEMVs at the roofline".)
        let (groups, tail) = band.as_chunks::<8>();
        let ((xg, xt), (dg, dt), (cg, ct)) = (
            xq.as_chunks::<8>(),
            xd.as_chunks::<8>(),
            corr.as_chunks::<8>(),
        );
        for (((u, x), d), c) in groups.iter().zip(xg).zip(dg).zip(cg) {
            eight!(step, u, x, c, d);
        }
        for (j, (((u, x), d), c)) in tail.iter().zip(xt).zip(dt).zip(ct).enumerate() {
            step(j, u, x, c, d);
        }
        *acc = a;
    }

    /// The F16 lane accumulators of one band: rows 0-7 and rows 8-15 of lanes 0-7.
    type F16Acc = ([__m256; 8], [__m256; 8]);

    /// Adds `band` (`band[i]` = element `i` of the 16 rows) times `x` to `acc`: element `i`
    /// into lane `i % 8` (a piece of a band starts at a multiple of 8).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn band_acc_f16(acc: &mut F16Acc, band: &[[u8; 32]], x: &[f32]) {
        let n = band.len().min(x.len());
        let (band, x) = (&band[..n], &x[..n]);
        // Rows 0-7 and 8-15 in 256-bit halves (512-bit `vcvtph2ps` is the slower one on Zen 4).
        let (mut lo, mut hi) = *acc;
        let mut step = |j: usize, u: &[u8; 32], v: &f32| {
            let (a, b) = f16_halves(u);
            let v = _mm256_set1_ps(*v);
            lo[j] = _mm256_add_ps(lo[j], _mm256_mul_ps(a, v));
            hi[j] = _mm256_add_ps(hi[j], _mm256_mul_ps(b, v));
        };
        // As `band_dot`: groups of eight as arrays, no bounds checks inside.
        let (groups, tail) = band.as_chunks::<8>();
        let (xg, xt) = x.as_chunks::<8>();
        for (u, v) in groups.iter().zip(xg) {
            eight!(step, u, v);
        }
        for (j, (u, v)) in tail.iter().zip(xt).enumerate() {
            step(j, u, v);
        }
        *acc = (lo, hi);
    }

    /// The 16 rows' sums of F16 accumulators ([`reduce8_rows`]).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn f16_finish(acc: &F16Acc) -> [f32; TR] {
        reduce8_rows(&core::array::from_fn(|j| join(acc.0[j], acc.1[j])))
    }

    /// The 16 rows of one whole tiled F16 band (`band[i]` = element `i` of each row) times `x`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn band_dot_f16(band: &[[u8; 32]], x: &[f32]) -> [f32; TR] {
        let mut acc = ([_mm256_setzero_ps(); 8], [_mm256_setzero_ps(); 8]);
        band_acc_f16(&mut acc, band, x);
        f16_finish(&acc)
    }

    /// The tiled GEMV over bands in panels of pieces ([`crate::tile::unit_offset`]; `units`:
    /// the full bands' units, `n` per row, `out` one result per row of them), panel by panel:
    /// `add(acc, piece, u0, u1)` for units `u0..u1` of each band of the panel, piece after
    /// piece, in storage order (one sequential stream of weights, while the piece's activation
    /// stays in L1), the panel's accumulators kept between pieces; then each band's 16 results,
    /// `finish(acc)`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn panel_walk<T, A: Copy>(
        ty: GgmlType,
        units: &[T],
        n: usize,
        out: &mut [f32],
        zero: A,
        mut add: impl FnMut(&mut A, &[T], usize, usize),
        finish: impl Fn(&A) -> [f32; TR],
    ) {
        let n = n.max(1);
        for (panel, o) in units
            .chunks(PANEL_BANDS * n)
            .zip(out.chunks_mut(PANEL_BANDS * TR))
        {
            let mut acc = [zero; PANEL_BANDS];
            let bands = &mut acc[..panel.len() / n];
            let mut rest = panel;
            for (u0, u1) in pieces(ty, n, n) {
                for a in bands.iter_mut() {
                    let (piece, r) = rest.split_at(u1 - u0);
                    add(a, piece, u0, u1);
                    rest = r;
                }
            }
            for (o, a) in o.chunks_exact_mut(TR).zip(bands.iter()) {
                o.copy_from_slice(&finish(a));
            }
        }
    }

    /// [`super::super::Kernels::gemv_tiled`]: the bands with [`band_dot`] (F16:
    /// [`band_dot_f16`]), the rows after them row-major.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    pub(super) fn gemv_tiled(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        // Bytes of one block of a tiled band: the 16 rows' scales, then their quants.
        const Q8: usize = TR * Q8_0_BLOCK_BYTES;
        const Q4: usize = TR * Q4_0_BLOCK_BYTES;
        match w.ty {
            GgmlType::Q8_0 => tiled_quant::<Q8_0_BLOCK_BYTES, Q8>(w, a, out),
            GgmlType::Q4_0 => tiled_quant::<Q4_0_BLOCK_BYTES, Q4>(w, a, out),
            GgmlType::F16 => tiled_f16(w, a.x, out),
            _ => <super::Scalar as super::Kernels>::gemv_tiled(w, a, out),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn tiled_quant<const B: usize, const U: usize>(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        let stride = w.cols / QK;
        let (xq, _) = a.q.as_chunks::<QK>();
        let n = stride.min(xq.len()).min(a.d.len());
        let tiled = w.tiled_rows();
        let (bands, _) = w
            .data
            .get(..tiled * stride * B)
            .unwrap_or(&[])
            .as_chunks::<U>();
        if n > PREP_BLOCKS || n != stride || bands.len() != tiled / TR * stride {
            // Rows too long for the stack buffer, or an inconsistent matrix or activation.
            return <super::Scalar as super::Kernels>::gemv_tiled(w, a, out);
        }
        let (xq, xd) = (&xq[..n], &a.d[..n]);
        let mut buf = [const { MaybeUninit::uninit() }; PREP_BLOCKS];
        let corr = fill(&mut buf, n, |b| bias::<B>() * block_sum(&xq[b]));
        let out = &mut out[..w.rows];
        if has_pieces(w.ty, n) {
            panel_walk(
                w.ty,
                bands,
                n,
                &mut out[..tiled],
                [_mm512_setzero_ps(); 8],
                |a, piece, u0, u1| {
                    let (x, d, c) = (&xq[u0..u1], &xd[u0..u1], &corr[u0..u1]);
                    band_acc::<B, U>(a, piece, x, d, c)
                },
                |a| reduce8_rows(a),
            );
        } else {
            for (band, o) in bands.chunks_exact(n.max(1)).zip(out.chunks_exact_mut(TR)) {
                o.copy_from_slice(&band_dot::<B, U>(band, xq, xd, corr));
            }
        }
        for (r, o) in out.iter_mut().enumerate().skip(tiled) {
            *o = dot_quant::<B>(w.row(r), a.q, a.d);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn tiled_f16(w: &Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let (tiled, cols) = (w.tiled_rows(), w.cols);
        let (units, _) = w
            .data
            .get(..tiled * cols * 2)
            .unwrap_or(&[])
            .as_chunks::<32>();
        if units.len() != tiled / TR * cols || x.len() < cols {
            return <super::Scalar as super::Kernels>::gemv_tiled(
                w,
                &Act { x, q: &[], d: &[] },
                out,
            );
        }
        let out = &mut out[..w.rows];
        if has_pieces(GgmlType::F16, cols) {
            panel_walk(
                GgmlType::F16,
                units,
                cols,
                &mut out[..tiled],
                ([_mm256_setzero_ps(); 8], [_mm256_setzero_ps(); 8]),
                |a, piece, u0, u1| band_acc_f16(a, piece, &x[u0..u1]),
                |a| f16_finish(a),
            );
        } else {
            for (band, o) in units
                .chunks_exact(cols.max(1))
                .zip(out.chunks_exact_mut(TR))
            {
                o.copy_from_slice(&band_dot_f16(band, x));
            }
        }
        for (r, o) in out.iter_mut().enumerate().skip(tiled) {
            *o = <super::super::x86::Avx2 as super::super::Kernels>::dot_f16_row(w.row(r), x);
        }
    }

    // ---- grouped GEMV ----

    /// Rows per tile (one per lane of a 512-bit vector).
    const TR: usize = 16;
    /// Blocks per row the repacked tile holds (longer rows take the per-member GEMV).
    const TILE_BLOCKS: usize = 128;
    /// Members sharing each loaded weight vector.
    const G: usize = 4;
    /// Members whose activation sums are precomputed at once.
    const MB: usize = 64;

    /// A repacked tile: `w[b][k]` lane `r` = row `r`'s unsigned weight bytes `4k..4k+4` of
    /// block `b`, `d[b]` lane `r` = its scale. On a 64-byte boundary, as [`PrepBuf`] (each
    /// `w[b][k]` is one 512-bit load; +2-10% on the grouped GEMV).
    #[repr(C, align(64))]
    struct Tile<const NB: usize> {
        w: [[[u32; TR]; 8]; NB],
        d: [[f32; TR]; NB],
    }

    /// Repacks rows `r0..r0 + rows` (`rows <= TR`; missing lanes get zero weights and scales).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn repack<const B: usize, const NB: usize>(
        t: &mut Tile<NB>,
        blocks: &[[u8; B]],
        stride: usize,
        r0: usize,
        rows: usize,
        n: usize,
    ) {
        for b in 0..n {
            for r in 0..TR {
                if r < rows {
                    let blk = &blocks[(r0 + r) * stride + b];
                    t.d[b][r] = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
                    let q = &blk[2..];
                    for k in 0..8 {
                        t.w[b][k][r] = if B == Q8_0_BLOCK_BYTES {
                            u32::from_le_bytes([q[4 * k], q[4 * k + 1], q[4 * k + 2], q[4 * k + 3]])
                                ^ 0x8080_8080
                        } else {
                            let j = 4 * (k % 4);
                            let v = u32::from_le_bytes([q[j], q[j + 1], q[j + 2], q[j + 3]]);
                            (v >> (4 * (k / 4))) & 0x0F0F_0F0F
                        };
                    }
                } else {
                    t.d[b][r] = 0.0;
                    for k in 0..8 {
                        t.w[b][k][r] = 0;
                    }
                }
            }
        }
    }

    /// [`repack`] from tiled band `bi` of `w` (16 rows of `n` blocks and more, read piece by
    /// piece): the same tile.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn repack_band<const B: usize, const NB: usize>(
        t: &mut Tile<NB>,
        w: &Matrix<'_>,
        bi: usize,
        n: usize,
    ) {
        let n = n.min(NB);
        for (u0, u1) in pieces(w.ty, w.cols / QK, n) {
            let piece = w.band_units(bi, u0, u1);
            for (b, u) in (u0..u1).zip(piece.chunks_exact(B * TR)) {
                st16(
                    &mut t.d[b],
                    band_scales(u.first_chunk::<32>().unwrap_or(&[0; 32])),
                );
                for k in 0..8 {
                    let v = if B == Q8_0_BLOCK_BYTES {
                        _mm512_xor_si512(band_quants(u, k), _mm512_set1_epi8(-128))
                    } else {
                        let raw = band_quants(u, k % 4);
                        let raw = if k < 4 {
                            raw
                        } else {
                            _mm512_srli_epi16::<4>(raw)
                        };
                        _mm512_and_si512(raw, _mm512_set1_epi8(0x0F))
                    };
                    st16_u32(&mut t.w[b][k], v);
                }
            }
        }
    }

    /// One activation as the tile kernel reads it.
    #[derive(Clone, Copy)]
    struct MemberX<'a> {
        xq: &'a [[i8; QK]],
        xd: &'a [f32],
        corr: &'a [i32],
    }

    /// `G` members times the repacked tile: the 16-row results of each, `n` blocks per row.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn tile_members<const NB: usize>(
        t: &Tile<NB>,
        n: usize,
        m: [MemberX<'_>; G],
    ) -> [[f32; TR]; G] {
        let mut lanes = [[[0.0f32; TR]; 8]; G];
        for j in 0..8.min(n) {
            let mut acc = [_mm512_setzero_ps(); G];
            let mut b = j;
            while b < n {
                let mut s = [_mm512_setzero_si512(); G];
                for k in 0..8 {
                    let wv = ld16_u32(&t.w[b][k]);
                    for (si, mi) in s.iter_mut().zip(&m) {
                        let xb = &mi.xq[b];
                        let xv = i32::from_le_bytes([
                            xb[4 * k] as u8,
                            xb[4 * k + 1] as u8,
                            xb[4 * k + 2] as u8,
                            xb[4 * k + 3] as u8,
                        ]);
                        *si = _mm512_dpbusd_epi32(*si, wv, _mm512_set1_epi32(xv));
                    }
                }
                let dw = ld16(&t.d[b]);
                for ((ai, si), mi) in acc.iter_mut().zip(&s).zip(&m) {
                    let sumi = _mm512_sub_epi32(*si, _mm512_set1_epi32(mi.corr[b]));
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(mi.xd[b]));
                    *ai = _mm512_add_ps(*ai, _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), scale));
                }
                b += 8;
            }
            for (l, a) in lanes.iter_mut().zip(&acc) {
                st16(&mut l[j], *a);
            }
        }
        lanes.map(|l| {
            let v = |i: usize| ld16(&l[i]);
            let s0 = _mm512_add_ps(v(0), v(4));
            let s1 = _mm512_add_ps(v(1), v(5));
            let s2 = _mm512_add_ps(v(2), v(6));
            let s3 = _mm512_add_ps(v(3), v(7));
            let r = _mm512_add_ps(_mm512_add_ps(s0, s2), _mm512_add_ps(s1, s3));
            let mut o = [0.0f32; TR];
            st16(&mut o, r);
            o
        })
    }

    /// Members fewer than this take the per-member GEMV (which streams the weights once per
    /// member at full speed) instead of the tile kernel.
    const TILE_MIN_MEMBERS: usize = 3;

    /// [`super::super::Kernels::gemv_group`] for a quantized `w`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    pub(super) fn gemv_group(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        match w.ty {
            GgmlType::Q8_0 => group_quant::<Q8_0_BLOCK_BYTES>(w, batch, members, in_div, out),
            _ => group_quant::<Q4_0_BLOCK_BYTES>(w, batch, members, in_div, out),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn group_quant<const B: usize>(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        let stride = w.cols / QK;
        let (blocks, _) = w.data.as_chunks::<B>();
        let consistent = w.cols.is_multiple_of(QK)
            && blocks.len() >= w.rows * stride
            && batch.q.len() == batch.x.len()
            && batch.d.len() * QK == batch.q.len();
        if members.len() < TILE_MIN_MEMBERS || stride > TILE_BLOCKS || stride == 0 || !consistent {
            // Rows in chunks per member: each chunk streams once per member from memory and
            // then from the L2 cache (one member: long chunks, as the plain GEMV).
            const CHUNK: usize = 1024;
            let chunk = if members.len() == 1 { CHUNK } else { CHUNK / 4 };
            let rb = w.row_bytes();
            for r0 in (0..w.rows).step_by(chunk) {
                let rows = (w.rows - r0).min(chunk);
                let sub = Matrix {
                    rows,
                    data: w.data.get(r0 * rb..(r0 + rows) * rb).unwrap_or(&[]),
                    ..*w
                };
                let mut res = [0.0f32; CHUNK];
                for &p in members {
                    let p = p as usize;
                    let a = batch.item(w.cols, p / in_div);
                    match w.tiled {
                        false => gemv_quant::<B>(&sub, &a, &mut res),
                        true => gemv_tiled(&sub, &a, &mut res),
                    }
                    out.set_rows(p, r0, &res[..rows]);
                }
            }
            return;
        }
        if stride <= 8 {
            tiled::<B, 8>(w, blocks, batch, members, in_div, out)
        } else if stride <= 32 {
            tiled::<B, 32>(w, blocks, batch, members, in_div, out)
        } else {
            tiled::<B, TILE_BLOCKS>(w, blocks, batch, members, in_div, out)
        }
    }

    /// An activation's quants and scales, by blocks.
    type XRef<'a> = (&'a [[i8; QK]], &'a [f32]);

    /// The tiled grouped GEMV for rows of at most `NB` blocks (the buffers are sized for it).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
    fn tiled<const B: usize, const NB: usize>(
        w: &Matrix<'_>,
        blocks: &[[u8; B]],
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        let stride = w.cols / QK;
        let n = stride;
        let mut tile = Tile::<NB> {
            w: [[[0; TR]; 8]; NB],
            d: [[0.0; TR]; NB],
        };
        let mut corr = [[0i32; NB]; MB];
        for chunk in members.chunks(MB) {
            // The activations of this chunk of members, with their corrections.
            let xs: [Option<XRef<'_>>; MB] = core::array::from_fn(|i| {
                chunk.get(i).map(|&p| {
                    let a = batch.item(w.cols, p as usize / in_div);
                    (a.q.as_chunks::<QK>().0, a.d)
                })
            });
            for (c, x) in corr.iter_mut().zip(&xs) {
                if let Some((xq, _)) = x {
                    for (ci, xb) in c.iter_mut().zip(xq.iter()) {
                        *ci = bias::<B>() * block_sum(xb);
                    }
                }
            }
            for r0 in (0..w.rows).step_by(TR) {
                let rows = (w.rows - r0).min(TR);
                if r0 + TR <= w.tiled_rows() {
                    repack_band::<B, NB>(&mut tile, w, r0 / TR, n)
                } else {
                    repack::<B, NB>(&mut tile, blocks, stride, r0, rows, n)
                }
                let mut i = 0;
                while i < chunk.len() {
                    // G members, the last repeated to fill the group.
                    let idx: [usize; G] = core::array::from_fn(|k| (i + k).min(chunk.len() - 1));
                    let m: [MemberX<'_>; G] = idx.map(|k| {
                        let (xq, xd) = xs[k].unwrap_or((&[], &[]));
                        MemberX {
                            xq,
                            xd,
                            corr: &corr[k],
                        }
                    });
                    let res = tile_members(&tile, n, m);
                    for (k, r) in idx.iter().zip(&res).take(chunk.len() - i) {
                        out.set_rows(chunk[*k] as usize, r0, &r[..rows]);
                    }
                    i += G;
                }
            }
        }
    }
}
