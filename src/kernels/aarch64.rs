//! aarch64 NEON kernels, with an SDOT path where the dot-product extension is present.
//!
//! Every kernel gives the bit pattern of its [`scalar`] twin (FORMAT.md, "Accumulation
//! order"): the eight canonical float lanes are two `float32x4_t` (lanes 0-3 and 4-7), `fmul`
//! then `fadd` (never `fmla`, which fuses); quantized dot products compute exact integer block
//! sums (`smull`/`sadalp`, or `sdot`), scale them in lane `b % 8` and reduce canonically. The
//! quantized GEMV keeps four rows in the four lanes of a vector instead, with the eight
//! canonical accumulators as eight vectors, so the final reduction is vertical adds. `exp` is a
//! lane-wise transcription of libm's `expf`, so `silu` and `softmax` match too. What is the same
//! logic on AVX2 (`expf8`, `silu_mul`, `softmax`, the float drivers, `dot_blocks`) is written
//! once in `kernels/lanes.rs` over the eight-lane vocabulary `imp` defines on pairs of vectors.
//!
//! NEON is part of the aarch64 baseline: [`Neon`] is available whenever the build enables the
//! `neon` target feature (every aarch64 Linux/macOS target) on a little-endian target; its
//! kernels are ordinary safe functions. SDOT is an extension: [`NeonDotprod`] checks it at run
//! time under `std` (`is_aarch64_feature_detected!("dotprod")`, cached by std) and at build
//! time otherwise (`-C target-feature=+dotprod`), and reaches the instruction through `asm!`
//! (the `vdotq_s32` intrinsic is not stable on Rust 1.95).

use super::{same_as, Isa, Kernels, Out};
#[cfg(all(target_feature = "neon", target_endian = "little"))]
use super::{scalar, Act};
#[cfg(all(target_feature = "neon", target_endian = "little"))]
use crate::model::Matrix;
#[cfg(all(target_feature = "neon", target_endian = "little"))]
use crate::quant::{bf16_to_f32, f16_to_f32};

/// NEON kernels.
#[derive(Debug, Clone, Copy)]
pub struct Neon;

impl Neon {
    /// Whether the CPU supports the instructions these kernels use (NEON is fixed at build
    /// time: it is part of every aarch64 application-processor target).
    #[inline(always)]
    pub fn available() -> bool {
        cfg!(all(target_feature = "neon", target_endian = "little"))
    }
}

/// NEON kernels using SDOT for the int8 dot products.
#[derive(Debug, Clone, Copy)]
pub struct NeonDotprod;

impl NeonDotprod {
    /// Whether the CPU supports the instructions these kernels use (NEON and the dot-product
    /// extension).
    #[inline(always)]
    pub fn available() -> bool {
        #[cfg(feature = "std")]
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        #[cfg(not(feature = "std"))]
        let dotprod = cfg!(target_feature = "dotprod");
        Neon::available() && dotprod
    }
}

#[cfg(not(all(target_feature = "neon", target_endian = "little")))]
impl Kernels for Neon {
    const ISA: Isa = Isa::Neon;
}

#[cfg(not(all(target_feature = "neon", target_endian = "little")))]
impl Kernels for NeonDotprod {
    const ISA: Isa = Isa::NeonDotprod;
}

/// Calls a NEON kernel.
#[cfg(all(target_feature = "neon", target_endian = "little"))]
macro_rules! neon {
    ($e:expr) => {
        // SAFETY: the `imp` functions only need NEON, which this whole build enables (the cfg
        // on this impl); they read and write only through the slices they are given.
        unsafe { $e }
    };
}

#[cfg(all(target_feature = "neon", target_endian = "little"))]
impl Kernels for Neon {
    const ISA: Isa = Isa::Neon;

    #[inline(always)]
    fn quantize_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32]) {
        neon!(imp::quantize_q8_0(x, q, d))
    }

    #[inline(always)]
    fn dot_q8_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        neon!(imp::dot_q8_0(row, xq, xd))
    }

    #[inline(always)]
    fn dot_q4_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        neon!(imp::dot_q4_0(row, xq, xd))
    }

    #[inline(always)]
    fn dot_f32_row(row: &[u8], x: &[f32]) -> f32 {
        if row.len() != 4 * x.len() {
            return scalar::dot_f32_row(row, x);
        }
        neon!(imp::dot_f32_rows::<1>([row], x)[0])
    }

    #[inline(always)]
    fn dot_f16_row(row: &[u8], x: &[f32]) -> f32 {
        if row.len() != 2 * x.len() {
            return scalar::dot_half_row(row, x, f16_to_f32);
        }
        neon!(imp::dot_f16_rows::<1>([row], x)[0])
    }

    #[inline(always)]
    fn dot_bf16_row(row: &[u8], x: &[f32]) -> f32 {
        if row.len() != 2 * x.len() {
            return scalar::dot_half_row(row, x, bf16_to_f32);
        }
        neon!(imp::dot_bf16_rows::<1>([row], x)[0])
    }

    #[inline(always)]
    fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        neon!(imp::dot_f32(a, b))
    }

    #[inline(always)]
    fn axpy(out: &mut [f32], a: f32, v: &[f32]) {
        neon!(imp::axpy(out, a, v))
    }

    #[inline(always)]
    fn rmsnorm(out: &mut [f32], x: &[f32], w: &[u8], eps: f32) -> f32 {
        neon!(imp::rmsnorm(out, x, w, eps))
    }

    #[inline(always)]
    fn softmax(x: &mut [f32]) -> f32 {
        neon!(imp::softmax(x))
    }

    #[inline(always)]
    fn silu_mul(gate: &mut [f32], up: &[f32]) {
        neon!(imp::silu_mul(gate, up))
    }

    fn gemv(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        neon!(imp::gemv(w, a, out))
    }

    fn gemv_group(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        neon!(imp::gemv_group(w, batch, members, in_div, out))
    }
}

/// Runs `$fast` (a `sdot` entry point) when the CPU has the dot-product extension, else the
/// plain NEON kernel `$slow`.
#[cfg(all(target_feature = "neon", target_endian = "little"))]
macro_rules! with_sdot {
    ($fast:expr, $slow:expr) => {
        if NeonDotprod::available() {
            // SAFETY: the `sdot` functions only need NEON (enabled for this whole build) and the
            // dot-product extension, which the CPU has (checked just above).
            unsafe { $fast }
        } else {
            $slow
        }
    };
}

#[cfg(all(target_feature = "neon", target_endian = "little"))]
impl Kernels for NeonDotprod {
    const ISA: Isa = Isa::NeonDotprod;

    // The methods that have no SDOT form: the NEON kernels.
    same_as! { Neon;
        fn quantize_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32]);
        fn dot_f32_row(row: &[u8], x: &[f32]) -> f32;
        fn dot_f16_row(row: &[u8], x: &[f32]) -> f32;
        fn dot_bf16_row(row: &[u8], x: &[f32]) -> f32;
        fn dot_f32(a: &[f32], b: &[f32]) -> f32;
        fn axpy(out: &mut [f32], a: f32, v: &[f32]);
        fn rmsnorm(out: &mut [f32], x: &[f32], w: &[u8], eps: f32) -> f32;
        fn softmax(x: &mut [f32]) -> f32;
        fn silu_mul(gate: &mut [f32], up: &[f32]);
    }

    #[inline(always)]
    fn dot_q8_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        with_sdot!(
            sdot::dot_q8_0(row, xq, xd),
            Neon::dot_q8_0_q8_0(row, xq, xd)
        )
    }

    #[inline(always)]
    fn dot_q4_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        with_sdot!(
            sdot::dot_q4_0(row, xq, xd),
            Neon::dot_q4_0_q8_0(row, xq, xd)
        )
    }

    fn gemv(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        if w.ty.is_quantized() {
            with_sdot!(sdot::gemv(w, a, out), Neon::gemv(w, a, out))
        } else {
            Neon::gemv(w, a, out)
        }
    }

    fn gemv_group(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        if w.ty.is_quantized() {
            with_sdot!(
                sdot::gemv_group(w, batch, members, in_div, out),
                Neon::gemv_group(w, batch, members, in_div, out)
            )
        } else {
            Neon::gemv_group(w, batch, members, in_div, out)
        }
    }
}

/// The quantized entry points of a module of block kernels (`sdot` or `imp`), compiled with the
/// target features `$features`: `block_q8` and `block_q4` (one block times an activation block,
/// four i32 partial sums) from the module's `dot32`, the dot products `dot_q8_0` and `dot_q4_0`,
/// and `gemv` and `gemv_group`, which take other weight types to the NEON float GEMVs.
#[cfg(all(target_feature = "neon", target_endian = "little"))]
macro_rules! quant_entry_points {
    ($features:literal) => {
        /// Q8_0 block times Q8_0 activation block: four i32 partial sums (exact).
        #[inline]
        #[target_feature(enable = $features)]
        fn block_q8(
            b: &[u8; $crate::quant::Q8_0_BLOCK_BYTES],
            x: &[i8; $crate::quant::QK],
        ) -> core::arch::aarch64::int32x4_t {
            let (w0, w1) = super::imp::q8_quants(b);
            let (x0, x1) = super::imp::ld_x(x);
            dot32(w0, w1, x0, x1)
        }

        /// Q4_0 block times Q8_0 activation block: four i32 partial sums (exact).
        #[inline]
        #[target_feature(enable = $features)]
        fn block_q4(
            b: &[u8; $crate::quant::Q4_0_BLOCK_BYTES],
            x: &[i8; $crate::quant::QK],
        ) -> core::arch::aarch64::int32x4_t {
            let (w0, w1) = super::imp::q4_values(b);
            let (x0, x1) = super::imp::ld_x(x);
            dot32(w0, w1, x0, x1)
        }

        #[target_feature(enable = $features)]
        pub(super) fn dot_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
            super::imp::dot_quant(row, xq, xd, |b, x| block_q8(b, x))
        }

        #[target_feature(enable = $features)]
        pub(super) fn dot_q4_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
            super::imp::dot_quant(row, xq, xd, |b, x| block_q4(b, x))
        }

        /// [`Kernels::gemv`](crate::kernels::Kernels::gemv) with these block kernels (floats
        /// four rows at a time).
        #[target_feature(enable = $features)]
        pub(super) fn gemv(
            w: &$crate::model::Matrix<'_>,
            a: &$crate::kernels::Act<'_>,
            out: &mut [f32],
        ) {
            use super::imp::{gemv_float, gemv_quant};
            use $crate::quant::GgmlType;
            match w.ty {
                GgmlType::Q8_0 => gemv_quant(w, a, out, |b, x| block_q8(b, x)),
                GgmlType::Q4_0 => gemv_quant(w, a, out, |b, x| block_q4(b, x)),
                _ => gemv_float(w, a, out),
            }
        }

        /// [`Kernels::gemv_group`](crate::kernels::Kernels::gemv_group) with these block
        /// kernels.
        #[target_feature(enable = $features)]
        pub(super) fn gemv_group(
            w: &$crate::model::Matrix<'_>,
            batch: &$crate::kernels::Act<'_>,
            members: &[u32],
            in_div: usize,
            out: &mut $crate::kernels::Out<'_>,
        ) {
            use super::imp::{gemv_group_float, gemv_group_quant};
            use $crate::quant::GgmlType;
            match w.ty {
                GgmlType::Q8_0 => {
                    gemv_group_quant(w, batch, members, in_div, out, |b, x| block_q8(b, x))
                }
                GgmlType::Q4_0 => {
                    gemv_group_quant(w, batch, members, in_div, out, |b, x| block_q4(b, x))
                }
                _ => gemv_group_float(w, batch, members, in_div, out),
            }
        }
    };
}

/// The SDOT entry points: `#[target_feature(enable = "neon,dotprod")]`, so calling one from code
/// compiled without it is `unsafe` (the caller checks the CPU). They instantiate the generic
/// NEON drivers with the SDOT block kernels, inlined.
#[cfg(all(target_feature = "neon", target_endian = "little"))]
mod sdot {
    use core::arch::aarch64::*;
    use core::arch::asm;

    /// `acc + sdot(a, b)`: each i32 lane adds the four products of its bytes (exact).
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: SDOT reads two vector registers and accumulates into a third; nothing else
        // is touched, and the dot-product extension is enabled for this function.
        unsafe {
            asm!(
                "sdot {d:v}.4s, {a:v}.16b, {b:v}.16b",
                d = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    /// The 32 products of a block pair, summed into four i32 lanes (exact).
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    fn dot32(w0: int8x16_t, w1: int8x16_t, x0: int8x16_t, x1: int8x16_t) -> int32x4_t {
        sdot(sdot(vdupq_n_s32(0), w0, x0), w1, x1)
    }

    quant_entry_points!("neon,dotprod");
}

#[cfg(all(target_feature = "neon", target_endian = "little"))]
/// The NEON kernels: safe `#[target_feature(enable = "neon")]` functions (the intrinsics require
/// the attribute even though the whole build enables NEON). The generic drivers take the block
/// kernel as a closure, so the SDOT entry points instantiate (and inline) them with theirs.
mod imp {
    use core::arch::aarch64::*;
    use core::arch::asm;

    use super::Act;
    use crate::kernels::Out;
    use crate::model::Matrix;
    use crate::quant::{round_to_f16, QK};

    // ---- loads and stores on fixed-size arrays (the only raw-pointer accesses) ----

    #[inline]
    #[target_feature(enable = "neon")]
    fn ld4(a: &[f32; 4]) -> float32x4_t {
        // SAFETY: 4 readable f32.
        unsafe { vld1q_f32(a.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "neon")]
    fn ld8(a: &[f32; 8]) -> F8 {
        // SAFETY: 8 readable f32.
        unsafe { (vld1q_f32(a.as_ptr()), vld1q_f32(a.as_ptr().add(4))) }
    }

    #[inline]
    #[target_feature(enable = "neon")]
    fn st8(a: &mut [f32; 8], v: F8) {
        // SAFETY: 8 writable f32.
        unsafe {
            vst1q_f32(a.as_mut_ptr(), v.0);
            vst1q_f32(a.as_mut_ptr().add(4), v.1);
        }
    }

    #[inline]
    #[target_feature(enable = "neon")]
    fn st4(a: &mut [f32; 4], v: float32x4_t) {
        // SAFETY: 4 writable f32.
        unsafe { vst1q_f32(a.as_mut_ptr(), v) }
    }

    /// Eight little-endian f32 from 32 bytes (aarch64 here is little-endian).
    #[inline]
    #[target_feature(enable = "neon")]
    fn ld8_le(b: &[u8; 32]) -> F8 {
        // SAFETY: 32 readable bytes; vld1q has no alignment requirement beyond the element's,
        // and reading f32 lanes from bytes is allowed for unaligned addresses on aarch64
        // (the pointer cast only changes the element type the intrinsic reads).
        unsafe {
            let p = b.as_ptr();
            (
                vreinterpretq_f32_u8(vld1q_u8(p)),
                vreinterpretq_f32_u8(vld1q_u8(p.add(16))),
            )
        }
    }

    /// Eight u16 from 16 bytes.
    #[inline]
    #[target_feature(enable = "neon")]
    fn ld8_u16(b: &[u8; 16]) -> uint16x8_t {
        // SAFETY: 16 readable bytes.
        unsafe { vreinterpretq_u16_u8(vld1q_u8(b.as_ptr())) }
    }

    /// The 32 int8 quants of a Q8_0 block (bytes 2..34) as two vectors.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn q8_quants(b: &[u8; 34]) -> (int8x16_t, int8x16_t) {
        // SAFETY: bytes 2..34 of the block are readable.
        unsafe {
            let p = b.as_ptr().add(2).cast::<i8>();
            (vld1q_s8(p), vld1q_s8(p.add(16)))
        }
    }

    /// The 32 values `q - 8` of a Q4_0 block: low nibbles are elements 0..16, high 16..32.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn q4_values(b: &[u8; 18]) -> (int8x16_t, int8x16_t) {
        // SAFETY: bytes 2..18 of the block are readable.
        let raw = unsafe { vld1q_u8(b.as_ptr().add(2)) };
        let lo = vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0F)));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(raw));
        (vsubq_s8(lo, vdupq_n_s8(8)), vsubq_s8(hi, vdupq_n_s8(8)))
    }

    /// A Q8_0 activation block as two vectors.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn ld_x(x: &[i8; QK]) -> (int8x16_t, int8x16_t) {
        // SAFETY: 32 readable bytes.
        unsafe { (vld1q_s8(x.as_ptr()), vld1q_s8(x.as_ptr().add(16))) }
    }

    #[inline]
    #[target_feature(enable = "neon")]
    fn le16(b: &[u8]) -> u16 {
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Four IEEE halves widened to f32 (`fcvtl`: exact, the same as `half`'s conversion).
    #[inline]
    #[target_feature(enable = "neon")]
    fn f16x4(h: [u16; 4]) -> float32x4_t {
        // SAFETY: 4 readable u16.
        let h = unsafe { vld1_u16(h.as_ptr()) };
        f16x4_v(h)
    }

    #[inline]
    #[target_feature(enable = "neon")]
    fn f16x4_v(h: uint16x4_t) -> float32x4_t {
        let out: float32x4_t;
        // SAFETY: FCVTL (base ARMv8 FP/SIMD) only reads and writes the named registers.
        unsafe {
            asm!(
                "fcvtl {o:v}.4s, {i:v}.4h",
                o = lateout(vreg) out,
                i = in(vreg) h,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        out
    }

    // ---- reductions ----

    /// [`scalar::reduce8`](crate::kernels::scalar::reduce8): `(l0+l4, ..)`, `(s0+s2, s1+s3)`, `t0+t1`.
    #[inline]
    #[target_feature(enable = "neon")]
    fn reduce8(v: F8) -> f32 {
        let s = vaddq_f32(v.0, v.1);
        let t = vadd_f32(vget_low_f32(s), vget_high_f32(s));
        vget_lane_f32::<0>(t) + vget_lane_f32::<1>(t)
    }

    /// Four vectors of i32 partial sums -> lane `i` is the total of `v[i]` (exact).
    #[inline]
    #[target_feature(enable = "neon")]
    fn transpose_sum(v: &[int32x4_t; 4]) -> int32x4_t {
        vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3]))
    }

    // ---- integer block dot products ----

    /// The 32 products of a block pair with widening multiplies, summed into four i32 lanes
    /// (exact: every i8 x i8 product fits i16 and is accumulated pairwise into i32).
    #[inline]
    #[target_feature(enable = "neon")]
    fn dot32(w0: int8x16_t, w1: int8x16_t, x0: int8x16_t, x1: int8x16_t) -> int32x4_t {
        let acc = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
        let acc = vpadalq_s16(acc, vmull_high_s8(w0, x0));
        let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
        vpadalq_s16(acc, vmull_high_s8(w1, x1))
    }

    quant_entry_points!("neon");

    /// Four rows at once, one lane per row: `rows` holds four rows of `stride` blocks one after
    /// the other. `acc[j]` keeps the specification's lane `j` (blocks `b % 8 == j`) of all four
    /// rows, so the canonical reduction is vertical adds and the results come out as a vector.
    #[inline]
    #[target_feature(enable = "neon")]
    fn dot4_rows<const B: usize>(
        rows: &[[u8; B]],
        stride: usize,
        xq: &[[i8; QK]],
        xd: &[f32],
        block: impl Fn(&[u8; B], &[i8; QK]) -> int32x4_t,
    ) -> float32x4_t {
        let n = stride.min(xq.len()).min(xd.len());
        let rows = &rows[..4 * stride];
        let mut acc = [vdupq_n_f32(0.0); 8];
        // One block of all four rows into `$acc` (a macro, not a closure: always inlined).
        macro_rules! step {
            ($b:expr, $acc:expr) => {{
                let b = $b;
                let x = &xq[b];
                let v: [int32x4_t; 4] = core::array::from_fn(|r| block(&rows[r * stride + b], x));
                let sumi = vcvtq_f32_s32(transpose_sum(&v));
                let dw = f16x4(core::array::from_fn(|r| le16(&rows[r * stride + b])));
                let scale = vmulq_f32(dw, vdupq_n_f32(xd[b]));
                $acc = vaddq_f32($acc, vmulq_f32(sumi, scale));
            }};
        }
        let mut b = 0;
        while b + 8 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                step!(b + j, *a);
            }
            b += 8;
        }
        for (j, a) in acc[..n - b].iter_mut().enumerate() {
            step!(b + j, *a);
        }
        let s0 = vaddq_f32(acc[0], acc[4]);
        let s1 = vaddq_f32(acc[1], acc[5]);
        let s2 = vaddq_f32(acc[2], acc[6]);
        let s3 = vaddq_f32(acc[3], acc[7]);
        vaddq_f32(vaddq_f32(s0, s2), vaddq_f32(s1, s3))
    }

    /// Quantized GEMV: rows four at a time, the remaining rows one by one.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn gemv_quant<const B: usize>(
        w: &Matrix<'_>,
        a: &Act<'_>,
        out: &mut [f32],
        block: impl Fn(&[u8; B], &[i8; QK]) -> int32x4_t + Copy,
    ) {
        let stride = w.cols / QK;
        let (blocks, _) = w.data.as_chunks::<B>();
        let (xq, _) = a.q.as_chunks::<QK>();
        let out = &mut out[..w.rows];
        let four = if blocks.len() >= w.rows * stride {
            w.rows / 4
        } else {
            0
        };
        let (groups, _) = out.as_chunks_mut::<4>();
        for (g, o) in groups[..four].iter_mut().enumerate() {
            st4(
                o,
                dot4_rows(&blocks[4 * g * stride..], stride, xq, a.d, block),
            );
        }
        for (r, o) in out.iter_mut().enumerate().skip(4 * four) {
            let (row, _) = w.row(r).as_chunks::<B>();
            *o = dot_blocks(row, xq, a.d, block);
        }
    }

    /// Grouped quantized GEMV: four rows at a time for every member, so the four rows stay in
    /// L1 while each member reads them.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn gemv_group_quant<const B: usize>(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
        block: impl Fn(&[u8; B], &[i8; QK]) -> int32x4_t + Copy,
    ) {
        let rows = w.rows;
        for r0 in (0..rows).step_by(4) {
            let n = (rows - r0).min(4);
            let sub = Matrix {
                rows: n,
                data: w.data.get(r0 * w.row_bytes()..).unwrap_or(&[]),
                ..*w
            };
            let mut res = [0.0f32; 4];
            for &p in members {
                let p = p as usize;
                gemv_quant(&sub, &batch.item(w.cols, p / in_div), &mut res, block);
                out.set_rows(p, r0, &res[..n]);
            }
        }
    }

    // ---- the eight-lane vocabulary of the shared kernels (super::super::lanes) ----

    /// Eight f32 lanes: lanes 0-3, lanes 4-7.
    type F8 = (float32x4_t, float32x4_t);
    /// Eight i32 lanes (and lane masks): lanes 0-3, lanes 4-7.
    type I8 = (int32x4_t, int32x4_t);

    /// Float GEMV rows in flight.
    const FLOAT_ROWS: usize = 4;

    /// Declares lane operations that apply one NEON operation `$f` to both halves.
    macro_rules! halves {
        ($(fn $name:ident($($a:ident: $t:ty),*) -> $r:ty = $f:expr;)*) => {$(
            #[inline]
            #[target_feature(enable = "neon")]
            fn $name($($a: $t),*) -> $r {
                ($f($($a.0),*), $f($($a.1),*))
            }
        )*};
    }

    halves! {
        fn add(a: F8, b: F8) -> F8 = vaddq_f32;
        fn sub(a: F8, b: F8) -> F8 = vsubq_f32;
        fn mul(a: F8, b: F8) -> F8 = vmulq_f32;
        fn div(a: F8, b: F8) -> F8 = vdivq_f32;
        fn neg(a: F8) -> F8 = vnegq_f32;
        fn max(a: F8, b: F8) -> F8 = |a, b| vbslq_f32(vcgtq_f32(a, b), a, b);
        fn sel(m: I8, a: F8, b: F8) -> F8 = |m, a, b| vbslq_f32(vreinterpretq_u32_s32(m), a, b);
        fn iadd(a: I8, b: I8) -> I8 = vaddq_s32;
        fn isub(a: I8, b: I8) -> I8 = vsubq_s32;
        fn iand(a: I8, b: I8) -> I8 = vandq_s32;
        fn iandnot(a: I8, b: I8) -> I8 = |a, b| vbicq_s32(b, a);
        fn igt(a: I8, b: I8) -> I8 = |a, b| vreinterpretq_s32_u32(vcgtq_s32(a, b));
        fn isel(m: I8, a: I8, b: I8) -> I8 = |m, a, b| vbslq_s32(vreinterpretq_u32_s32(m), a, b);
        fn shl23(a: I8) -> I8 = vshlq_n_s32::<23>;
        fn to_bits(a: F8) -> I8 = vreinterpretq_s32_f32;
        fn from_bits(a: I8) -> F8 = vreinterpretq_f32_s32;
        fn trunc_i32(a: F8) -> I8 = vcvtq_s32_f32;
        fn to_f32(a: I8) -> F8 = vcvtq_f32_s32;
    }

    #[inline]
    #[target_feature(enable = "neon")]
    fn splat(v: f32) -> F8 {
        (vdupq_n_f32(v), vdupq_n_f32(v))
    }

    #[inline]
    #[target_feature(enable = "neon")]
    fn isplat(v: i32) -> I8 {
        (vdupq_n_s32(v), vdupq_n_s32(v))
    }

    /// All-ones in lanes `< t`, zero elsewhere.
    #[inline]
    #[target_feature(enable = "neon")]
    fn lane_mask(t: usize) -> I8 {
        let t = vdupq_n_f32(t as f32);
        let m = |i: &[f32; 4]| vreinterpretq_s32_u32(vcltq_f32(ld4(i), t));
        (m(&[0.0, 1.0, 2.0, 3.0]), m(&[4.0, 5.0, 6.0, 7.0]))
    }

    /// Eight IEEE halves widened to f32 (`fcvtl`: exact).
    #[inline]
    #[target_feature(enable = "neon")]
    fn ld8_f16(b: &[u8; 16]) -> F8 {
        let h = ld8_u16(b);
        (f16x4_v(vget_low_u16(h)), f16x4_v(vget_high_u16(h)))
    }

    /// Eight bfloat16 widened to f32 (a 16-bit shift).
    #[inline]
    #[target_feature(enable = "neon")]
    fn ld8_bf16(b: &[u8; 16]) -> F8 {
        let h = ld8_u16(b);
        let lo = vshll_n_u16::<16>(vget_low_u16(h));
        let hi = vshll_n_u16::<16>(vget_high_u16(h));
        (vreinterpretq_f32_u32(lo), vreinterpretq_f32_u32(hi))
    }

    type Blk = int32x4_t;

    #[inline]
    #[target_feature(enable = "neon")]
    fn hsum(v: Blk) -> i32 {
        vaddvq_s32(v)
    }

    #[inline]
    #[target_feature(enable = "neon")]
    fn block_sums8(v: &[Blk; 8]) -> F8 {
        let s = |v: &[Blk]| vcvtq_f32_s32(transpose_sum(&[v[0], v[1], v[2], v[3]]));
        (s(&v[..4]), s(&v[4..]))
    }

    /// Eight consecutive block scales of one row.
    #[inline]
    #[target_feature(enable = "neon")]
    fn scales8<const B: usize>(b: &[[u8; B]; 8]) -> F8 {
        let h = |i: usize| f16x4(core::array::from_fn(|j| le16(&b[i + j])));
        (h(0), h(4))
    }

    /// The quantized dot products do not prefetch on aarch64.
    #[inline(always)]
    fn prefetch_blocks(_: *const i8) {}

    /// The float GEMV does not prefetch on aarch64.
    #[inline(always)]
    fn prefetch_next_rows(_: *const i8) {}

    super::super::lanes::lane_kernels!("neon");

    /// [`Kernels::rmsnorm`](crate::kernels::Kernels::rmsnorm): the sum of squares is
    /// [`dot_f32`]`(x, x)` (the specification's canonical lanes), then `(x * scale) * w`.
    #[target_feature(enable = "neon")]
    pub(super) fn rmsnorm(out: &mut [f32], x: &[f32], w: &[u8], eps: f32) -> f32 {
        let n = x.len();
        let ss = dot_f32(x, x) / n as f32;
        let scale = 1.0 / libm::sqrtf(ss + eps);
        let m = out.len().min(n).min(w.len() / 4);
        let (out, x, w) = (&mut out[..m], &x[..m], &w[..4 * m]);
        let sv = splat(scale);
        let (oc, ot) = out.as_chunks_mut::<8>();
        let (xc, xt) = x.as_chunks::<8>();
        let (wc, wt) = w.as_chunks::<32>();
        for ((o, xv), wv) in oc.iter_mut().zip(xc).zip(wc) {
            st8(o, mul(mul(ld8(xv), sv), ld8_le(wv)));
        }
        for ((o, &v), wv) in ot.iter_mut().zip(xt).zip(wt.chunks_exact(4)) {
            *o = (v * scale) * super::super::lanes::le_f32(wv);
        }
        ss
    }

    /// [`crate::quant::quantize_q8_0`]: `amax` lane-wise (`fmaxnm`, NaN skipped, as the scalar
    /// `f32::max` on aarch64), the scale scalar, `roundf(x * id) as i8` lane-wise (`fcvtas`
    /// rounds half away from zero and saturates, NaN -> 0; `sqxtn` saturates to i8).
    #[target_feature(enable = "neon")]
    pub(super) fn quantize_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32]) {
        let (xb, _) = x.as_chunks::<QK>();
        let (qb, _) = q.as_chunks_mut::<QK>();
        for ((xs, qs), dd) in xb.iter().zip(qb.iter_mut()).zip(d.iter_mut()) {
            let (v, _) = xs.as_chunks::<4>();
            let v: [float32x4_t; 8] = core::array::from_fn(|i| ld4(&v[i]));
            let mut m = vdupq_n_f32(0.0);
            let mut finite = vdupq_n_u32(u32::MAX);
            for vi in v {
                m = vmaxnmq_f32(m, vabsq_f32(vi));
                finite = vandq_u32(finite, vceqq_f32(vi, vi));
            }
            let amax = vmaxnmvq_f32(m);
            let dv = amax / 127.0;
            let id = if dv != 0.0 { 1.0 / dv } else { 0.0 };
            *dd = if vminvq_u32(finite) == u32::MAX {
                round_to_f16(dv)
            } else {
                f32::NAN
            };
            let idv = vdupq_n_f32(id);
            let i: [int16x4_t; 8] =
                core::array::from_fn(|k| vqmovn_s32(vcvtaq_s32_f32(vmulq_f32(v[k], idv))));
            let b0 = vqmovn_s16(vcombine_s16(i[0], i[1]));
            let b1 = vqmovn_s16(vcombine_s16(i[2], i[3]));
            let b2 = vqmovn_s16(vcombine_s16(i[4], i[5]));
            let b3 = vqmovn_s16(vcombine_s16(i[6], i[7]));
            // SAFETY: `qs` is 32 writable bytes.
            unsafe {
                vst1q_s8(qs.as_mut_ptr(), vcombine_s8(b0, b1));
                vst1q_s8(qs.as_mut_ptr().add(16), vcombine_s8(b2, b3));
            }
        }
    }
}
