//! The SIMD kernels that are the same logic on x86-64 (AVX2) and aarch64 (NEON), written once
//! over "eight f32 lanes" (FORMAT.md's canonical lanes) and instantiated by each ISA module.
//!
//! An ISA module's `imp` defines the vocabulary below on its vector types (`__m256`/`__m256i`
//! on AVX2, pairs of `float32x4_t`/`int32x4_t` on NEON, lanes 0-3 then 4-7), each word a small
//! `#[inline] #[target_feature(enable = ..)]` function, then invokes
//! [`lane_kernels!`]`("its features")`. The macro defines, in that module and compiled with
//! those features: the lane-wise `expf8` (libm's `expf` transcribed), `silu_mul`, `softmax`,
//! `dot_f32`, `axpy`, the quantized row dot `dot_blocks` (`dot_quant` on bytes), the float row
//! drivers (`dot_rows` with `R` rows in flight, `dot_f32_rows`,
//! `dot_f16_rows`, `dot_bf16_rows`) and the float GEMVs (`gemv_float`, `gemv_group_float`).
//! Every float operation is the vocabulary's lane-wise `add`/`sub`/`mul`/`div` (rounded
//! separately, never fused) in the scalar specification's order, so the results are its bits.
//!
//! Why a macro and not a trait with generic functions: the intrinsics are `#[target_feature]`
//! functions, so a trait method (which cannot carry `#[target_feature]` and stay safe, nor be
//! `#[inline(always)]` with it, on Rust 1.95) would need an `unsafe` block around every
//! intrinsic, and on x86 its body is compiled without AVX2, so it only becomes a `vaddps` once
//! inlined into an AVX2 caller. Expanding the shared code inside each `imp` module keeps every
//! function a safe `#[target_feature]` function that calls the vocabulary safely, with no new
//! `unsafe` and the same code generation as the hand-written pair it replaces.
//!
//! Left per ISA: the quantized GEMV drivers (`dot8_rows` on AVX2, `dot4_rows` on NEON, with
//! their `gemv_quant`/`gemv_group_quant` loops). They put *rows* in lanes, eight per `__m256`
//! (one gather for the scales) against four per `float32x4_t` (sixteen accumulator registers
//! would be needed for eight), so sharing them would need a second, row-vector vocabulary for
//! about forty lines each; the block kernels, `transpose_sum` and quantization are ISA-specific.
//!
//! The vocabulary (`F8`: eight f32 lanes; `I8`: eight i32 lanes, also the lane masks, all
//! ones or zero; `FLOAT_ROWS`: float GEMV rows in flight):
//! - `splat(f32) -> F8`, `ld8(&[f32; 8]) -> F8`, `st8(&mut [f32; 8], F8)`;
//! - `add`, `sub`, `mul`, `div` (`F8, F8 -> F8`), `neg(F8)` (sign flipped), `max(a, b)` (`a`
//!   where `a > b`, else `b`: NaN in `a` keeps `b`), `reduce8(F8) -> f32` ([`scalar::reduce8`]);
//! - `isplat(i32) -> I8`, `iadd`, `isub`, `iand`, `iandnot(a, b)` (`!a & b`), `igt` (signed
//!   `a > b` as a mask), `shl23(I8)`, `sel(m, a, b)` and `isel(m, a, b)` (`a` where the mask
//!   is set), `to_bits(F8) -> I8`, `from_bits(I8) -> F8`, `trunc_i32(F8) -> I8` (toward zero),
//!   `to_f32(I8) -> F8`, `lane_mask(t) -> I8` (lanes `< t` set);
//! - `ld8_le(&[u8; 32])`, `ld8_f16(&[u8; 16])`, `ld8_bf16(&[u8; 16])` (`-> F8`: little-endian
//!   f32, f16 and bf16 widened exactly), `prefetch_next_rows(*const i8)` (a hint; may do
//!   nothing);
//! - `Blk` (a block kernel's i32 partial sums), `hsum(Blk) -> i32`, `block_sums8(&[Blk; 8])
//!   -> F8` (lane `i`: the total of `v[i]`, as f32), `scales8(&[[u8; B]; 8]) -> F8` (the eight
//!   blocks' f16 scales), `prefetch_blocks(*const i8)` (a hint for the blocks ahead).
//!
//! [`scalar::reduce8`]: super::scalar::reduce8

/// The f32 at the start of `c` (little-endian).
#[inline(always)]
pub(super) fn le_f32(c: &[u8]) -> f32 {
    f32::from_le_bytes([c[0], c[1], c[2], c[3]])
}

/// The f16 at the start of `c` (little-endian), widened.
#[inline(always)]
pub(super) fn le_f16(c: &[u8]) -> f32 {
    crate::quant::f16_to_f32(u16::from_le_bytes([c[0], c[1]]))
}

/// The bf16 at the start of `c` (little-endian), widened.
#[inline(always)]
pub(super) fn le_bf16(c: &[u8]) -> f32 {
    crate::quant::bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))
}

/// Widened tail of a row: the last `t < 8` elements of `row` (each `size` bytes) as f32,
/// zero-padded to eight.
#[inline(always)]
pub(super) fn tail_f32(row: &[u8], size: usize, widen: impl Fn(&[u8]) -> f32) -> ([f32; 8], usize) {
    let full = row.len() / size / 8 * 8;
    let mut out = [0.0f32; 8];
    let mut t = 0;
    for (o, c) in out.iter_mut().zip(row[full * size..].chunks_exact(size)) {
        *o = widen(c);
        t += 1;
    }
    (out, t)
}

/// Defines the shared kernels in the invoking module, compiled with the target features
/// `$features` (see the module documentation for the vocabulary they are written in).
macro_rules! lane_kernels {
    ($features:literal) => {
        /// libm's `expf` (FreeBSD `e_expf.c`) on eight lanes: the same operations in the same
        /// order, branches turned into selects, so every lane is bit-identical to `libm::expf`.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn expf8(x: F8) -> F8 {
            // libm's constants, by their bits.
            const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
            const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
            const INV_LN2: f32 = f32::from_bits(0x3fb8_aa3b);
            const P1: f32 = f32::from_bits(0x3e2a_aa8f);
            const P2: f32 = f32::from_bits(0xbb35_5215);
            let (f, i) = (splat, isplat);
            let bits = to_bits(x);
            let hx = iand(bits, i(0x7fff_ffff));
            let neg = igt(i(0), bits);
            // |x| (as bits) above a threshold; `hx` is non-negative, so signed is unsigned.
            let gt = |v: i32| igt(hx, i(v));

            // Argument reduction: k and (hi, lo) when |x| > 0.5 ln2, else k = 0, hi = x, lo = 0.
            let half = sel(neg, f(-0.5), f(0.5));
            let k_far = trunc_i32(add(mul(f(INV_LN2), x), half));
            let k_near = isel(neg, i(-1), i(1));
            let k = isel(gt(0x3f85_1592), k_far, k_near);
            let reduce = gt(0x3eb1_7218);
            let k = iand(k, reduce);
            let kf = to_f32(k);
            let hi_r = sub(x, mul(kf, f(LN2_HI)));
            let lo_r = mul(kf, f(LN2_LO));
            let xr = sel(reduce, sub(hi_r, lo_r), x);
            let hi = sel(reduce, hi_r, x);
            let lo = sel(reduce, lo_r, f(0.0));

            let xx = mul(xr, xr);
            let c = sub(xr, mul(xx, add(f(P1), mul(xx, f(P2)))));
            let q = div(mul(xr, c), sub(f(2.0), c));
            let y = add(f(1.0), add(sub(q, lo), hi));

            // scalbnf(y, k): prescale by 2^127 when k > 127, by 2^-102 when k < -126 (as libm).
            let big = igt(k, i(127));
            let small = igt(i(-126), k);
            let pre = sel(big, f(f32::from_bits(0x7f00_0000)), f(1.0));
            let pre = sel(small, f(f32::from_bits(0x0c80_0000)), pre);
            let n = isel(big, isub(k, i(127)), k);
            let n = isel(small, iadd(k, i(102)), n);
            let scale = from_bits(shl23(iadd(n, i(127))));
            let mut r = mul(mul(y, pre), scale);

            // |x| <= 2^-14: 1 + x.
            r = sel(igt(i(0x3900_0001), hx), add(f(1.0), x), r);
            // x >= 88.72: x * 2^127 (overflow to inf); x <= -103.97: 0; NaN: x.
            let over = iandnot(neg, gt(0x42b1_7217));
            r = sel(over, mul(x, f(f32::from_bits(0x7f00_0000))), r);
            r = sel(iand(neg, gt(0x42cf_f1b4)), f(0.0), r);
            sel(gt(0x7f80_0000), x, r)
        }

        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn silu_mul(gate: &mut [f32], up: &[f32]) {
            let n = gate.len().min(up.len());
            let (gate, up) = (&mut gate[..n], &up[..n]);
            let (gc, gt) = gate.as_chunks_mut::<8>();
            let (uc, ut) = up.as_chunks::<8>();
            let one = splat(1.0);
            for (g, u) in gc.iter_mut().zip(uc) {
                let z = ld8(g);
                let s = div(z, add(one, expf8(neg(z))));
                st8(g, mul(s, ld8(u)));
            }
            for (g, &u) in gt.iter_mut().zip(ut) {
                *g = $crate::kernels::scalar::silu(*g) * u;
            }
        }

        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn softmax(x: &mut [f32]) -> f32 {
            // Max: lane-wise with the scalar fold's own step (`v > m`), so NaN is skipped. Only
            // the sign of a zero maximum can depend on the order, and `v - (+0)` and `v - (-0)`
            // have the same exp.
            let (xc, xt) = x.as_chunks_mut::<8>();
            let mut m8 = splat(f32::NEG_INFINITY);
            for c in xc.iter() {
                m8 = max(ld8(c), m8);
            }
            let mut lanes = [0.0f32; 8];
            st8(&mut lanes, m8);
            let mut m = f32::NEG_INFINITY;
            for &v in lanes.iter().chain(xt.iter()) {
                if v > m {
                    m = v;
                }
            }
            let mv = splat(m);
            for c in xc.iter_mut() {
                st8(c, expf8(sub(ld8(c), mv)));
            }
            for v in xt.iter_mut() {
                *v = libm::expf(*v - m);
            }
            // The sum stays sequential in index order (the specification).
            let mut sum = 0.0f32;
            for &v in x.iter() {
                sum += v;
            }
            let sv = splat(sum);
            let (xc, xt) = x.as_chunks_mut::<8>();
            for c in xc.iter_mut() {
                st8(c, div(ld8(c), sv));
            }
            for v in xt.iter_mut() {
                *v /= sum;
            }
            sum
        }

        /// `a . b` in the eight canonical lanes, reduced canonically.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len());
            let (a, b) = (&a[..n], &b[..n]);
            let (ac, at) = a.as_chunks::<8>();
            let mut acc = splat(0.0);
            for (x, y) in ac.iter().zip(b.as_chunks::<8>().0) {
                acc = add(acc, mul(ld8(x), ld8(y)));
            }
            if at.is_empty() {
                return reduce8(acc);
            }
            let mut lanes = [0.0f32; 8];
            st8(&mut lanes, acc);
            for ((l, x), y) in lanes.iter_mut().zip(at).zip(&b[n - at.len()..]) {
                *l += x * y;
            }
            reduce8(ld8(&lanes))
        }

        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn axpy(out: &mut [f32], a: f32, v: &[f32]) {
            let n = out.len().min(v.len());
            let (out, v) = (&mut out[..n], &v[..n]);
            let av = splat(a);
            let (oc, ot) = out.as_chunks_mut::<8>();
            let (vc, vt) = v.as_chunks::<8>();
            for (o, x) in oc.iter_mut().zip(vc) {
                st8(o, add(ld8(o), mul(av, ld8(x))));
            }
            for (o, &x) in ot.iter_mut().zip(vt) {
                *o += a * x;
            }
        }

        /// `R` rows at once (independent accumulators hide the add latency), each row given as
        /// `n / 8` chunks of eight weights plus a tail of `t < 8` weights already widened to
        /// f32 (zero-padded). Lane `l` of row `r` accumulates `w * x` exactly as the scalar
        /// loop does.
        ///
        /// `rows` (chunks of `ch` bytes) are only used for prefetching: while chunk `c` of row
        /// `r` is read, the same chunk of row `r + R` (the next call's rows, `R` rows further in
        /// a contiguous matrix) is prefetched, one cache line per row every `64 / ch` chunks.
        /// Without it every call starts `R` short streams the hardware prefetcher must pick up
        /// afresh, which cost half the bandwidth with 2 KiB rows on x86.
        #[inline]
        #[target_feature(enable = $features)]
        fn dot_rows<const R: usize>(
            rows: [&[u8]; R],
            ch: usize,
            load: impl Fn(usize, usize) -> F8,
            tail: impl Fn(usize) -> (F8, usize),
            x: &[f32],
        ) -> [f32; R] {
            let (xc, xt) = x.as_chunks::<8>();
            let mut acc = [splat(0.0); R];
            let every = (64 / ch).max(1);
            for (c, xv) in xc.iter().enumerate() {
                if c % every == 0 {
                    for row in &rows {
                        let at = row.as_ptr().cast::<i8>();
                        prefetch_next_rows(at.wrapping_add(R * row.len() + c * ch));
                    }
                }
                let xv = ld8(xv);
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = add(*a, mul(load(r, c), xv));
                }
            }
            if !xt.is_empty() {
                let mut xs = [0.0f32; 8];
                xs[..xt.len()].copy_from_slice(xt);
                let xv = ld8(&xs);
                for (r, a) in acc.iter_mut().enumerate() {
                    let (w, t) = tail(r);
                    *a = sel(lane_mask(t), add(*a, mul(w, xv)), *a);
                }
            }
            acc.map(|a| reduce8(a))
        }

        /// F32 rows (`row.len() == 4 * x.len()` each).
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn dot_f32_rows<const R: usize>(
            rows: [&[u8]; R],
            x: &[f32],
        ) -> [f32; R] {
            use $crate::kernels::lanes::{le_f32, tail_f32};
            let rc = rows.map(|r| r.as_chunks::<32>().0);
            dot_rows::<R>(
                rows,
                32,
                |r, c| ld8_le(&rc[r][c]),
                |r| {
                    let (w, t) = tail_f32(rows[r], 4, le_f32);
                    (ld8(&w), t)
                },
                x,
            )
        }

        /// F16 rows (`row.len() == 2 * x.len()` each).
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn dot_f16_rows<const R: usize>(
            rows: [&[u8]; R],
            x: &[f32],
        ) -> [f32; R] {
            use $crate::kernels::lanes::{le_f16, tail_f32};
            let rc = rows.map(|r| r.as_chunks::<16>().0);
            dot_rows::<R>(
                rows,
                16,
                |r, c| ld8_f16(&rc[r][c]),
                |r| {
                    let (w, t) = tail_f32(rows[r], 2, le_f16);
                    (ld8(&w), t)
                },
                x,
            )
        }

        /// BF16 rows (`row.len() == 2 * x.len()` each).
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn dot_bf16_rows<const R: usize>(
            rows: [&[u8]; R],
            x: &[f32],
        ) -> [f32; R] {
            use $crate::kernels::lanes::{le_bf16, tail_f32};
            let rc = rows.map(|r| r.as_chunks::<16>().0);
            dot_rows::<R>(
                rows,
                16,
                |r, c| ld8_bf16(&rc[r][c]),
                |r| {
                    let (w, t) = tail_f32(rows[r], 2, le_bf16);
                    (ld8(&w), t)
                },
                x,
            )
        }

        /// One float row (F32, F16 or BF16 of the activation's length), else the scalar kernel.
        #[inline]
        #[target_feature(enable = $features)]
        fn dot_float_row(
            ty: $crate::quant::GgmlType,
            row: &[u8],
            a: &$crate::kernels::Act<'_>,
        ) -> f32 {
            use $crate::kernels::Kernels;
            use $crate::quant::GgmlType;
            match ty {
                GgmlType::F32 if row.len() == 4 * a.x.len() => dot_f32_rows::<1>([row], a.x)[0],
                GgmlType::F16 if row.len() == 2 * a.x.len() => dot_f16_rows::<1>([row], a.x)[0],
                GgmlType::BF16 if row.len() == 2 * a.x.len() => dot_bf16_rows::<1>([row], a.x)[0],
                _ => $crate::kernels::Scalar::dot_row(ty, row, a),
            }
        }

        /// Float rows [`FLOAT_ROWS`] at a time, then the rest one by one.
        #[inline]
        #[target_feature(enable = $features)]
        fn gemv_float_rows(
            w: &$crate::model::Matrix<'_>,
            a: &$crate::kernels::Act<'_>,
            out: &mut [f32],
            many: impl Fn([&[u8]; FLOAT_ROWS], &[f32]) -> [f32; FLOAT_ROWS],
        ) {
            let rows = w.rows;
            let (groups, _) = out[..rows].as_chunks_mut::<FLOAT_ROWS>();
            let full = groups.len() * FLOAT_ROWS;
            for (g, o) in groups.iter_mut().enumerate() {
                *o = many(core::array::from_fn(|i| w.row(FLOAT_ROWS * g + i)), a.x);
            }
            for (r, o) in out[full..rows].iter_mut().enumerate() {
                *o = dot_float_row(w.ty, w.row(full + r), a);
            }
        }

        /// GEMV of a float (or any non-quantized) matrix: [`FLOAT_ROWS`] rows at a time when
        /// the shapes are consistent, else row by row.
        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn gemv_float(
            w: &$crate::model::Matrix<'_>,
            a: &$crate::kernels::Act<'_>,
            out: &mut [f32],
        ) {
            use $crate::quant::GgmlType;
            let consistent = w.cols == a.x.len() && w.row_bytes() * w.rows == w.data.len();
            match w.ty {
                GgmlType::F32 if consistent => {
                    gemv_float_rows(w, a, out, |r, x| dot_f32_rows(r, x))
                }
                GgmlType::F16 if consistent => {
                    gemv_float_rows(w, a, out, |r, x| dot_f16_rows(r, x))
                }
                GgmlType::BF16 if consistent => {
                    gemv_float_rows(w, a, out, |r, x| dot_bf16_rows(r, x))
                }
                _ => {
                    for (r, o) in out[..w.rows].iter_mut().enumerate() {
                        *o = dot_float_row(w.ty, w.row(r), a);
                    }
                }
            }
        }

        /// Grouped GEMV of a float matrix: the default loops with the row dots inlined.
        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn gemv_group_float(
            w: &$crate::model::Matrix<'_>,
            batch: &$crate::kernels::Act<'_>,
            members: &[u32],
            in_div: usize,
            out: &mut $crate::kernels::Out<'_>,
        ) {
            for r in 0..w.rows {
                let row = w.row(r);
                for &p in members {
                    let p = p as usize;
                    out.set(
                        p,
                        r,
                        dot_float_row(w.ty, row, &batch.item(w.cols, p / in_div)),
                    );
                }
            }
        }
        /// A quantized row times a Q8_0 activation, given a block kernel (one block times an
        /// activation block: `Blk`, i32 partial sums): block `b` scaled into lane `b % 8` as
        /// `sumi as f32 * (dw * dx)`, lanes reduced canonically.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn dot_blocks<const B: usize>(
            blocks: &[[u8; B]],
            xq: &[[i8; $crate::quant::QK]],
            xd: &[f32],
            block: impl Fn(&[u8; B], &[i8; $crate::quant::QK]) -> Blk,
        ) -> f32 {
            let n = blocks.len().min(xq.len()).min(xd.len());
            let (blocks, xq, xd) = (&blocks[..n], &xq[..n], &xd[..n]);
            let (bg, bt) = blocks.as_chunks::<8>();
            let (xg, xt) = xq.as_chunks::<8>();
            let (dg, dt) = xd.as_chunks::<8>();
            let mut acc = splat(0.0);
            for ((b, x), dx) in bg.iter().zip(xg).zip(dg) {
                prefetch_blocks(b.as_ptr().cast::<i8>());
                let v: [Blk; 8] = core::array::from_fn(|i| block(&b[i], &x[i]));
                let scale = mul(scales8(b), ld8(dx));
                acc = add(acc, mul(block_sums8(&v), scale));
            }
            if bt.is_empty() {
                return reduce8(acc);
            }
            let mut lanes = [0.0f32; 8];
            st8(&mut lanes, acc);
            for (((b, x), &dx), l) in bt.iter().zip(xt).zip(dt).zip(lanes.iter_mut()) {
                let dw = $crate::kernels::lanes::le_f16(b);
                *l += hsum(block(b, x)) as f32 * (dw * dx);
            }
            reduce8(ld8(&lanes))
        }

        /// [`dot_blocks`] on byte rows.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::kernels) fn dot_quant<const B: usize>(
            row: &[u8],
            xq: &[i8],
            xd: &[f32],
            block: impl Fn(&[u8; B], &[i8; $crate::quant::QK]) -> Blk,
        ) -> f32 {
            let (blocks, _) = row.as_chunks::<B>();
            let (xq, _) = xq.as_chunks::<{ $crate::quant::QK }>();
            dot_blocks(blocks, xq, xd, block)
        }
    };
}

pub(super) use lane_kernels;
