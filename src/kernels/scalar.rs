//! The scalar kernels: the specification every ISA module must match bit for bit.
//!
//! Every function here fixes the order of its floating-point operations (see FORMAT.md,
//! "Accumulation order"), so that a SIMD version that follows the same lane layout gives
//! bit-identical results. Float dot products use eight lanes (element `i` in lane `i % 8`),
//! quantized dot products eight lanes over blocks (block `b` in lane `b % 8`); lanes are reduced
//! by [`reduce8`]. Multiplies and adds are rounded separately (Rust never fuses them).

use super::Act;
use crate::model::Matrix;
use crate::quant::{f16_to_f32, GgmlType, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK};
use crate::tile::{tile_pos, unit_of, TILE_ROWS};

pub use crate::quant::quantize_q8_0;

/// Reduces eight lanes in the canonical order: `(a0+a4, a1+a5, a2+a6, a3+a7)`, then
/// `(s0+s2, s1+s3)`, then `t0+t1`.
#[inline(always)]
pub fn reduce8(a: [f32; 8]) -> f32 {
    let s0 = a[0] + a[4];
    let s1 = a[1] + a[5];
    let s2 = a[2] + a[6];
    let s3 = a[3] + a[7];
    let t0 = s0 + s2;
    let t1 = s1 + s3;
    t0 + t1
}

/// Dot product of two f32 slices (the shorter length is used), eight lanes.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] += x * y;
    }
    reduce8(acc)
}

/// f32 row (little-endian bytes) times f32 vector, eight lanes.
#[inline]
pub fn dot_f32_row(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut cr = row.chunks_exact(32);
    let mut cx = x.chunks_exact(8);
    for (r, xs) in (&mut cr).zip(&mut cx) {
        for l in 0..8 {
            let w = f32::from_le_bytes([r[4 * l], r[4 * l + 1], r[4 * l + 2], r[4 * l + 3]]);
            acc[l] += w * xs[l];
        }
    }
    for (l, (c, xv)) in cr
        .remainder()
        .chunks_exact(4)
        .zip(cx.remainder())
        .enumerate()
    {
        acc[l] += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * xv;
    }
    reduce8(acc)
}

/// 16-bit float row (F16 or BF16, widened by `widen`) times f32 vector, eight lanes.
#[inline]
pub fn dot_half_row(row: &[u8], x: &[f32], widen: fn(u16) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut cr = row.chunks_exact(16);
    let mut cx = x.chunks_exact(8);
    for (r, xs) in (&mut cr).zip(&mut cx) {
        for l in 0..8 {
            acc[l] += widen(u16::from_le_bytes([r[2 * l], r[2 * l + 1]])) * xs[l];
        }
    }
    for (l, (c, xv)) in cr
        .remainder()
        .chunks_exact(2)
        .zip(cx.remainder())
        .enumerate()
    {
        acc[l] += widen(u16::from_le_bytes([c[0], c[1]])) * xv;
    }
    reduce8(acc)
}

/// The loop of a quantized row times a Q8_0 activation, one block at a time (here and in
/// `arm_dsp`): for block `b` of `$row` (`$block_bytes` bytes each, its f16 scale first) with
/// activation block `$xs` and scale `$dx`, the block's term `$term` (`sumi as f32 * (dw * dx)`)
/// is added into lane `b % 8`; the lanes are reduced by [`reduce8`].
macro_rules! dot_blocks {
    (
        $row:expr, $block_bytes:expr, $xq:expr, $xd:expr,
        |$blk:ident, $xs:ident, $dx:ident| $term:block
    ) => {{
        let mut acc = [0.0f32; 8];
        for (b, (($blk, $xs), &$dx)) in $row
            .chunks_exact($block_bytes)
            .zip($xq.chunks_exact($crate::quant::QK))
            .zip($xd)
            .enumerate()
        {
            acc[b % 8] += $term;
        }
        $crate::kernels::scalar::reduce8(acc)
    }};
}
#[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
pub(crate) use dot_blocks;

/// Q8_0 row times Q8_0 activation: exact integer block sums, block `b` scaled into lane `b % 8`.
#[inline]
pub fn dot_q8_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    dot_blocks!(row, Q8_0_BLOCK_BYTES, xq, xd, |blk, xs, dx| {
        q8_0_term(blk, xs, dx)
    })
}

/// One Q8_0 block's term: `sumi as f32 * (dw * dx)`, `sumi` the exact integer dot product.
#[inline(always)]
fn q8_0_term(blk: &[u8], xs: &[i8], dx: f32) -> f32 {
    let dw = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
    let mut sumi = 0i32;
    for (&w, &x) in blk[2..].iter().zip(xs) {
        sumi += i32::from(w as i8) * i32::from(x);
    }
    sumi as f32 * (dw * dx)
}

/// One Q4_0 block's term, as [`q8_0_term`] (low nibbles pair with `xs[..16]`, high nibbles
/// with `xs[16..]`).
#[inline(always)]
fn q4_0_term(blk: &[u8], xs: &[i8], dx: f32) -> f32 {
    let dw = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
    let (lo, hi) = xs.split_at(QK / 2);
    let mut sumi = 0i32;
    for ((&q, &xl), &xh) in blk[2..].iter().zip(lo).zip(hi) {
        sumi += i32::from((q & 0x0F) as i8 - 8) * i32::from(xl);
        sumi += i32::from((q >> 4) as i8 - 8) * i32::from(xh);
    }
    sumi as f32 * (dw * dx)
}

/// Row `r` (`< 16`) of tiled band `b` ([`crate::tile`]) of `w` times the activation: the sums
/// of [`dot_q8_0_q8_0`], [`dot_q4_0_q8_0`] and [`dot_half_row`] (F16) in the same order, the
/// row's units read from where the band holds them. 0 for a type with no tiled layout.
pub fn dot_tiled_row(w: &Matrix<'_>, b: usize, r: usize, a: &Act<'_>) -> f32 {
    let ty = w.ty();
    let units = w.row_bytes() / ty.type_size();
    let mut acc = [0.0f32; 8];
    match ty {
        GgmlType::F16 => {
            for (u0, u1) in crate::tile::pieces(ty, units, units) {
                let piece = w.band_units(b, u0, u1);
                let x = &a.x[u0.min(a.x.len())..u1.min(a.x.len())];
                for (k, &x) in x.iter().enumerate() {
                    let at = tile_pos(ty, r, 2 * k);
                    let Some(c) = piece.get(at..at + 2) else {
                        break;
                    };
                    acc[(u0 + k) % 8] += f16_to_f32(u16::from_le_bytes([c[0], c[1]])) * x;
                }
            }
        }
        GgmlType::Q8_0 | GgmlType::Q4_0 => {
            let n = units.min(a.q.len() / QK).min(a.d.len());
            let unit = ty.type_size() * TILE_ROWS;
            for (u0, u1) in crate::tile::pieces(ty, units, n) {
                let piece = w.band_units(b, u0, u1);
                let xs = a.q[u0 * QK..u1 * QK].chunks_exact(QK).zip(&a.d[u0..u1]);
                for (k, (xs, &dx)) in xs.enumerate() {
                    if (k + 1) * unit > piece.len() {
                        break;
                    }
                    let blk = unit_of(ty, piece, r, k);
                    acc[(u0 + k) % 8] += match ty {
                        GgmlType::Q8_0 => q8_0_term(&blk, xs, dx),
                        _ => q4_0_term(&blk, xs, dx),
                    };
                }
            }
        }
        _ => {}
    }
    reduce8(acc)
}

/// Q4_0 row times Q8_0 activation: exact integer block sums, block `b` scaled into lane `b % 8`.
#[inline]
pub fn dot_q4_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    dot_blocks!(row, Q4_0_BLOCK_BYTES, xq, xd, |blk, xs, dx| {
        q4_0_term(blk, xs, dx)
    })
}

/// Declares the kernel set of a Cortex-M core whose float kernels are the scalar ones: a unit
/// struct (with the given documentation) implementing [`Kernels`](super::Kernels) for the
/// [`Isa`](super::Isa) of the same name, with the calling module's `dot_q8_0_q8_0` and
/// `dot_q4_0_q8_0`, and a GEMV that runs the given match arms on the weight type (`xq` and `xd`
/// name the activation's Q8_0 values and scales) and the default row loop for other types.
#[cfg(all(target_arch = "arm", any(feature = "cortex-m-dsp", feature = "helium")))]
macro_rules! quant_kernels {
    (
        $(#[$attr:meta])*
        $name:ident,
        gemv($w:ident, $xq:ident, $xd:ident, $out:ident) { $($ty:pat => $gemv:expr),+ $(,)? }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl $crate::kernels::Kernels for $name {
            const ISA: $crate::kernels::Isa = $crate::kernels::Isa::$name;

            #[inline]
            fn dot_q8_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
                dot_q8_0_q8_0(row, xq, xd)
            }

            #[inline]
            fn dot_q4_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
                dot_q4_0_q8_0(row, xq, xd)
            }

            fn gemv(
                $w: &$crate::model::Matrix<'_>,
                a: &$crate::kernels::Act<'_>,
                $out: &mut [f32],
            ) {
                match $w.ty {
                    $($ty => {
                        let ($xq, $xd) = (a.q, a.d);
                        $gemv
                    })+
                    _ => {
                        for (r, o) in $out[..$w.rows].iter_mut().enumerate() {
                            *o = <Self as $crate::kernels::Kernels>::dot_row($w.ty, $w.row(r), a);
                        }
                    }
                }
            }
        }
    };
}
#[cfg(all(target_arch = "arm", any(feature = "cortex-m-dsp", feature = "helium")))]
pub(crate) use quant_kernels;

/// `out = rmsnorm(x) * w`: `out[i] = (x[i] * (1 / sqrt(mean(x^2) + eps))) * w[i]`, where the
/// sum of squares is [`dot_f32`] of `x` with itself. `w` is the little-endian f32 weight bytes.
/// Returns the mean of squares (not finite when the sum overflowed or `x` had a NaN or
/// infinity, which callers report).
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[u8], eps: f32) -> f32 {
    let n = x.len();
    let ss = dot_f32(x, x) / n as f32;
    let scale = 1.0 / libm::sqrtf(ss + eps);
    for ((o, &v), c) in out.iter_mut().zip(x).zip(w.chunks_exact(4)) {
        *o = (v * scale) * f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    ss
}

/// In-place softmax: subtract the maximum, `exp`, sequential sum, divide. Returns the sum
/// (not finite when the input had a NaN or infinity, which callers report).
pub fn softmax(x: &mut [f32]) -> f32 {
    let max = x
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
    sum
}

/// `silu(z) = z / (1 + exp(-z))`.
#[inline]
pub fn silu(z: f32) -> f32 {
    z / (1.0 + libm::expf(-z))
}

/// `out[i] = out[i] + a * v[i]` (the attention value sum and the gate-weighted expert sum).
pub fn axpy(out: &mut [f32], a: f32, v: &[f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += a * x;
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// Adds little-endian f32 bias bytes to `x`.
pub fn add_bias(x: &mut [f32], bias: &[u8]) {
    for (v, c) in x.iter_mut().zip(bias.chunks_exact(4)) {
        *v += f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Top-k of `p` by value, ties to the lower index, in descending order; writes indices and
/// values. `idx.len()` is k (at most `p.len()`).
pub fn top_k(p: &[f32], idx: &mut [u32], val: &mut [f32]) {
    for i in 0..idx.len() {
        let mut best: Option<usize> = None;
        for (e, &v) in p.iter().enumerate() {
            if idx[..i].contains(&(e as u32)) {
                continue;
            }
            match best {
                Some(b) if v <= p[b] => {}
                _ => best = Some(e),
            }
        }
        let b = best.unwrap_or(0);
        idx[i] = b as u32;
        val[i] = p[b];
    }
}

/// Rotates every `hd`-wide head of `x` in place with the rotate-half RoPE, given the
/// per-position tables `cos[j]`, `sin[j]` for `j < hd/2`.
pub fn rope(x: &mut [f32], hd: usize, cos: &[f32], sin: &[f32]) {
    let half = hd / 2;
    for head in x.chunks_exact_mut(hd) {
        let (a, b) = head.split_at_mut(half);
        for (((u, w), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
            let (u0, w0) = (*u, *w);
            *u = u0 * c - w0 * s;
            *w = u0 * s + w0 * c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_ties_go_to_lower_index() {
        let p = [0.1, 0.3, 0.3, 0.2, 0.1];
        let mut idx = [0u32; 3];
        let mut val = [0.0f32; 3];
        top_k(&p, &mut idx, &mut val);
        assert_eq!(idx, [1, 2, 3]);
        assert_eq!(val, [0.3, 0.3, 0.2]);
    }

    #[test]
    fn dot_f32_tail_uses_lanes() {
        let a: [f32; 11] = core::array::from_fn(|i| i as f32);
        let b = [1.0f32; 11];
        assert_eq!(dot_f32(&a, &b), 55.0);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0f32, 2.0, 3.0];
        let s = softmax(&mut x);
        assert!(s.is_finite());
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0]);
    }
}
