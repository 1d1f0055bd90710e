//! Numeric kernels and the choice of instruction set.
//!
//! [`scalar`] is the specification: safe, plain loops, always compiled. An ISA module implements
//! [`Kernels`] and overrides the methods it speeds up; every override must give bit-identical
//! results (the lane layout and reduction order of FORMAT.md). The forward pass picks the ISA
//! once per call ([`Isa::active`]) and is monomorphized for it, so below that point every
//! kernel call is static.

pub mod scalar;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
pub mod arm_dsp;
#[cfg(all(target_arch = "arm", feature = "helium"))]
pub mod arm_mve;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use core::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, Result};
use crate::model::Matrix;
use crate::quant::{bf16_to_f32, f16_to_f32, GgmlType, QK};

/// An instruction set the kernels can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Isa {
    /// Portable scalar code (the specification).
    Scalar = 0,
    /// x86-64 AVX2 + FMA-free float paths.
    Avx2 = 1,
    /// aarch64 NEON.
    Neon = 2,
    /// aarch64 NEON with the dot-product extension (SDOT).
    NeonDotprod = 3,
    /// Cortex-M4/M7/M33 DSP extension (SMLAD family).
    CortexMDsp = 4,
    /// Cortex-M55 Helium (MVE).
    Helium = 5,
}

/// Every ISA, in order.
pub const ALL_ISAS: [Isa; 6] = [
    Isa::Scalar,
    Isa::Avx2,
    Isa::Neon,
    Isa::NeonDotprod,
    Isa::CortexMDsp,
    Isa::Helium,
];

/// 0 = automatic, otherwise `Isa as u8 + 1`.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

impl Isa {
    /// The name used in logs, tests and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "neon-dotprod",
            Isa::CortexMDsp => "cortex-m-dsp",
            Isa::Helium => "helium",
        }
    }

    /// Whether this build has kernels for the ISA and the CPU it runs on supports it.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::Avx2::available(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => aarch64::Neon::available(),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => aarch64::NeonDotprod::available(),
            #[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
            Isa::CortexMDsp => true,
            #[cfg(all(target_arch = "arm", feature = "helium"))]
            Isa::Helium => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The best available ISA.
    pub fn detect() -> Isa {
        ALL_ISAS
            .iter()
            .rev()
            .copied()
            .find(|i| i.is_available())
            .unwrap_or(Isa::Scalar)
    }

    /// The ISA the forward pass uses: the override if one is set, else [`Isa::detect`].
    pub fn active() -> Isa {
        match OVERRIDE.load(Ordering::Relaxed) {
            0 => Isa::detect(),
            v => ALL_ISAS
                .get(usize::from(v - 1))
                .copied()
                .unwrap_or(Isa::Scalar),
        }
    }

    /// Forces the forward pass to use `isa` (tests, benchmarks), or clears the override with
    /// `None`. Fails if the ISA is not available here.
    pub fn force(isa: Option<Isa>) -> Result<()> {
        match isa {
            None => OVERRIDE.store(0, Ordering::Relaxed),
            Some(i) if i.is_available() => OVERRIDE.store(i as u8 + 1, Ordering::Relaxed),
            Some(_) => {
                return Err(Error::InvalidConfig {
                    reason: "the requested instruction set is not available on this CPU or build",
                })
            }
        }
        Ok(())
    }
}

/// A prepared matrix-vector input: the f32 activation and, when some consumer is quantized,
/// its Q8_0 form (`q`: int8 values, `d`: per-block scales rounded to f16).
#[derive(Debug, Clone, Copy)]
pub struct Act<'s> {
    /// The activation.
    pub x: &'s [f32],
    /// Q8_0 values (empty when not prepared).
    pub q: &'s [i8],
    /// Q8_0 block scales (empty when not prepared).
    pub d: &'s [f32],
}

impl<'s> Act<'s> {
    /// Item `i` of a batch of equal-width inputs prepared together (`width` elements each; the
    /// Q8_0 parts are empty when the batch was not quantized). `width` must be a multiple of 32
    /// when it was.
    #[inline(always)]
    pub fn item(&self, width: usize, i: usize) -> Act<'s> {
        let quantized = !self.q.is_empty();
        Act {
            x: &self.x[i * width..(i + 1) * width],
            q: if quantized {
                &self.q[i * width..(i + 1) * width]
            } else {
                &[]
            },
            d: if quantized {
                &self.d[i * width / QK..(i + 1) * width / QK]
            } else {
                &[]
            },
        }
    }
}

/// The kernel set of one ISA. Every method has the scalar specification as its default.
pub trait Kernels {
    /// The ISA these kernels run on.
    const ISA: Isa;

    /// Quantizes to Q8_0 (see [`crate::quant::quantize_q8_0`]).
    #[inline(always)]
    fn quantize_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32]) {
        scalar::quantize_q8_0(x, q, d)
    }

    /// Q8_0 row times Q8_0 activation.
    #[inline(always)]
    fn dot_q8_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        scalar::dot_q8_0_q8_0(row, xq, xd)
    }

    /// Q4_0 row times Q8_0 activation.
    #[inline(always)]
    fn dot_q4_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        scalar::dot_q4_0_q8_0(row, xq, xd)
    }

    /// F32 row times f32 vector.
    #[inline(always)]
    fn dot_f32_row(row: &[u8], x: &[f32]) -> f32 {
        scalar::dot_f32_row(row, x)
    }

    /// F16 row times f32 vector.
    #[inline(always)]
    fn dot_f16_row(row: &[u8], x: &[f32]) -> f32 {
        scalar::dot_half_row(row, x, f16_to_f32)
    }

    /// BF16 row times f32 vector.
    #[inline(always)]
    fn dot_bf16_row(row: &[u8], x: &[f32]) -> f32 {
        scalar::dot_half_row(row, x, bf16_to_f32)
    }

    /// f32 dot product (attention scores).
    #[inline(always)]
    fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        scalar::dot_f32(a, b)
    }

    /// `out[i] += a * v[i]`.
    #[inline(always)]
    fn axpy(out: &mut [f32], a: f32, v: &[f32]) {
        scalar::axpy(out, a, v)
    }

    /// RMSNorm with weight.
    #[inline(always)]
    fn rmsnorm(out: &mut [f32], x: &[f32], w: &[u8], eps: f32) -> f32 {
        scalar::rmsnorm(out, x, w, eps)
    }

    /// In-place softmax, returning the sum of exponentials.
    #[inline(always)]
    fn softmax(x: &mut [f32]) -> f32 {
        scalar::softmax(x)
    }

    /// `gate = silu(gate) * up`.
    #[inline(always)]
    fn silu_mul(gate: &mut [f32], up: &[f32]) {
        scalar::silu_mul(gate, up)
    }

    /// Router top-k.
    #[inline(always)]
    fn top_k(p: &[f32], idx: &mut [u32], val: &mut [f32]) {
        scalar::top_k(p, idx, val)
    }

    /// Prepares `x` for matrices of the given types: quantizes it into `qbuf`/`dbuf` when any
    /// of them is block-quantized.
    #[inline(always)]
    fn prepare<'s>(
        x: &'s [f32],
        types: &[GgmlType],
        qbuf: &'s mut [i8],
        dbuf: &'s mut [f32],
    ) -> Act<'s> {
        if types.iter().any(|t| t.is_quantized()) {
            let n = x.len();
            let (q, d) = (&mut qbuf[..n], &mut dbuf[..n / QK]);
            Self::quantize_q8_0(x, q, d);
            Act { x, q, d }
        } else {
            Act { x, q: &[], d: &[] }
        }
    }

    /// One stored row of type `ty` times the activation.
    #[inline(always)]
    fn dot_row(ty: GgmlType, row: &[u8], a: &Act<'_>) -> f32 {
        match ty {
            GgmlType::F32 => Self::dot_f32_row(row, a.x),
            GgmlType::F16 => Self::dot_f16_row(row, a.x),
            GgmlType::BF16 => Self::dot_bf16_row(row, a.x),
            GgmlType::Q8_0 => Self::dot_q8_0_q8_0(row, a.q, a.d),
            GgmlType::Q4_0 => Self::dot_q4_0_q8_0(row, a.q, a.d),
        }
    }

    /// `out[r] = row_r(w) . x` for every row of `w`.
    #[inline]
    fn gemv(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        for (r, o) in out[..w.rows].iter_mut().enumerate() {
            *o = Self::dot_row(w.ty, w.row(r), a);
        }
    }

    /// Matrix `w` applied to the members of one expert group, reading each weight row once:
    /// member `p` takes item `p / in_div` of `batch` (items `w.cols` wide, see [`Act::item`])
    /// and writes `out[p * w.rows + r]` for every row `r`.
    #[inline]
    fn gemv_group(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut [f32],
    ) {
        for r in 0..w.rows {
            let row = w.row(r);
            for &p in members {
                let p = p as usize;
                out[p * w.rows + r] = Self::dot_row(w.ty, row, &batch.item(w.cols, p / in_div));
            }
        }
    }
}

/// The scalar kernels.
#[derive(Debug, Clone, Copy)]
pub struct Scalar;

impl Kernels for Scalar {
    const ISA: Isa = Isa::Scalar;
}
