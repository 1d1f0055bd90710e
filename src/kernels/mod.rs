//! Numeric kernels and the choice of instruction set.
//!
//! [`scalar`] is the specification: safe, plain loops, always compiled. An ISA module implements
//! [`Kernels`] and overrides the methods it speeds up; every override must give bit-identical
//! results (the lane layout and reduction order of FORMAT.md). The forward pass picks the ISA
//! once per call ([`Isa::active`]) and is monomorphized for it, so below that point every
//! kernel call is static.

pub mod scalar;

// A feature the target cannot run: one sentence instead of the assembler's errors. `build.rs`
// sets `mhmoe_bad_target` from the target name and `-C target-cpu`/`-C target-feature` (stable
// Rust has no `target_feature` cfg for the DSP extension or Helium). Not in rustdoc builds, so
// `cargo doc --all-features` works on any host.
#[cfg(all(mhmoe_bad_target = "dsp-arch", not(doc)))]
compile_error!("the `cortex-m-dsp` feature selects kernels for Arm Cortex-M cores and does nothing on this architecture: enable it only in firmware built for thumbv7em-none-eabi(hf) or thumbv8m.main-none-eabi(hf)");
#[cfg(all(mhmoe_bad_target = "dsp-profile", not(doc)))]
compile_error!("the `cortex-m-dsp` feature is for Arm Cortex-M targets (thumbv7em-none-eabi(hf), thumbv8m.main-none-eabi(hf)), not for A- or R-profile Arm targets: remove it from this build");
#[cfg(all(mhmoe_bad_target = "dsp-v8m", not(doc)))]
compile_error!("the `cortex-m-dsp` feature on thumbv8m.main needs a core with the DSP extension: add `-C target-cpu=cortex-m33` (or cortex-m35p, cortex-m55, cortex-m85) to the rustflags, e.g. in `.cargo/config.toml`");
#[cfg(all(mhmoe_bad_target = "dsp-core", not(doc)))]
compile_error!("the `cortex-m-dsp` feature needs an Armv7E-M or Armv8-M Mainline core with the DSP extension (Cortex-M4, M7, M33, M35P, M55, M85), which this target and `-C target-cpu` do not give: build for thumbv7em-none-eabi(hf), or thumbv8m.main-none-eabi(hf) with `-C target-cpu=cortex-m33`, or remove the feature");
#[cfg(all(mhmoe_bad_target = "helium-arch", not(doc)))]
compile_error!("the `helium` feature selects kernels for Arm Cortex-M55/M85 cores and does nothing on this architecture: enable it only in firmware built for thumbv8m.main-none-eabihf with `-C target-cpu=cortex-m55`");
#[cfg(all(mhmoe_bad_target = "helium-profile", not(doc)))]
compile_error!("the `helium` feature is for Arm Cortex-M cores with Helium (thumbv8m.main-none-eabihf with `-C target-cpu=cortex-m55`), not for A- or R-profile Arm targets: remove it from this build");
#[cfg(all(mhmoe_bad_target = "helium-core", not(doc)))]
compile_error!("the `helium` feature needs a core with Helium (MVE with floating point): build for thumbv8m.main-none-eabihf with `-C target-cpu=cortex-m55` (or cortex-m52, cortex-m85) in the rustflags, or remove the feature");

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
pub mod arm_dsp;
#[cfg(all(target_arch = "arm", feature = "helium"))]
pub mod arm_mve;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod lanes;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx512;

/// Writes [`Kernels`] methods that call kernel set `$base`'s method of the same name with the
/// same arguments: for the methods an ISA shares with a narrower one (AVX-512 with AVX2, NEON
/// with SDOT with plain NEON).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! same_as {
    ($base:ident; $(fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {
        $(
            #[inline(always)]
            fn $name($($arg: $ty),*) $(-> $ret)? {
                $base::$name($($arg),*)
            }
        )*
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use same_as;

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
    /// x86-64 AVX2 + F16C (no FMA: fusing would change the rounding).
    Avx2 = 1,
    /// x86-64 AVX-512 (F, BW, VL) with VNNI integer dot products, + F16C.
    Avx512 = 2,
    /// aarch64 NEON.
    Neon = 3,
    /// aarch64 NEON with the dot-product extension (SDOT).
    NeonDotprod = 4,
    /// Cortex-M4/M7/M33 DSP extension (SMLAD family).
    CortexMDsp = 5,
    /// Cortex-M55 Helium (MVE).
    Helium = 6,
}

/// Every ISA, in order (the discriminant is the index; [`Isa::detect`] takes the last available).
pub const ALL_ISAS: [Isa; 7] = [
    Isa::Scalar,
    Isa::Avx2,
    Isa::Avx512,
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
            Isa::Avx512 => "avx512",
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
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86_avx512::Avx512::available(),
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

    /// Whether this ISA has its own kernels for tiled matrices ([`crate::tile`]; the others
    /// compute on them with the portable ones).
    pub fn has_tiled_kernels(self) -> bool {
        matches!(self, Isa::Avx512)
    }

    /// Whether this ISA reads matrices of type `ty` faster tiled than row-major, so that
    /// [`crate::file::Layout::Auto`] tiles them: AVX-512 for F16, Q8_0 and Q4_0 (68 MiB GEMVs
    /// from memory, rows of 1024-8192 columns, one thread, medians of fifteen runs: tiled 90-94%
    /// of the read bandwidth, row-major Q8_0 90-93%, Q4_0 71-78%, F16 72-81%; whole models
    /// decode as fast or faster and run prompts 7-50% faster: BENCHMARKS.md, "Panels" and
    /// "Piece lengths on separate buffers").
    pub fn prefers_tiled(self, ty: GgmlType) -> bool {
        self.has_tiled_kernels() && crate::tile::is_tileable(ty)
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
            Some(isa) => return Err(Error::IsaUnavailable { isa }),
        }
        Ok(())
    }
}

/// Evaluates `$body` with the type alias `$K` bound to the kernel set of `$isa`, or `$other`
/// when this build has no kernel set for it. The one place that maps an [`Isa`] to its type:
/// the forward pass, the conformance tests and the benchmarks all go through it.
///
/// The `cfg`s are evaluated in the calling crate, so this is for this package's own code,
/// tests, benches and examples (same target and features), not for other crates.
#[doc(hidden)]
#[macro_export]
macro_rules! with_isa {
    ($isa:expr, $K:ident => $body:expr, _ => $other:expr) => {{
        #[allow(unreachable_patterns, unused_imports)]
        match $isa {
            $crate::kernels::Isa::Scalar => {
                type $K = $crate::kernels::Scalar;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            $crate::kernels::Isa::Avx2 => {
                type $K = $crate::kernels::x86::Avx2;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            $crate::kernels::Isa::Avx512 => {
                type $K = $crate::kernels::x86_avx512::Avx512;
                $body
            }
            #[cfg(target_arch = "aarch64")]
            $crate::kernels::Isa::Neon => {
                type $K = $crate::kernels::aarch64::Neon;
                $body
            }
            #[cfg(target_arch = "aarch64")]
            $crate::kernels::Isa::NeonDotprod => {
                type $K = $crate::kernels::aarch64::NeonDotprod;
                $body
            }
            #[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
            $crate::kernels::Isa::CortexMDsp => {
                type $K = $crate::kernels::arm_dsp::CortexMDsp;
                $body
            }
            #[cfg(all(target_arch = "arm", feature = "helium"))]
            $crate::kernels::Isa::Helium => {
                type $K = $crate::kernels::arm_mve::Helium;
                $body
            }
            _ => $other,
        }
    }};
}

/// Where a matrix product over a range of rows writes: item `p`'s row `r` (counted from the
/// start of the range) goes to `buf[p * stride + start + r]`, for `r < rows`.
///
/// Item-major outputs of different row ranges interleave in memory, so threads that split a
/// product by rows cannot each hold a `&mut [f32]` of their part. An `Out` holds exactly the
/// elements of its row range: [`Out::sub_rows`] narrows one to a range (the thread split in
/// `parallel` gives each thread a disjoint one), and every write is bounds-checked against both
/// the range and the buffer.
#[derive(Debug)]
pub struct Out<'a> {
    ptr: core::ptr::NonNull<f32>,
    len: usize,
    stride: usize,
    start: usize,
    rows: usize,
    _buf: core::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: an `Out` is a unique borrow of the elements of its row range (`sub_rows`' contract
// keeps the ranges of live outputs disjoint), like a `&mut [f32]`, which is `Send` and `Sync`.
unsafe impl Send for Out<'_> {}
// SAFETY: as above; `&Out` allows no writes.
unsafe impl Sync for Out<'_> {}

impl<'a> Out<'a> {
    /// All `stride` rows of `buf`, item `p` at `buf[p * stride..]`.
    pub fn new(buf: &'a mut [f32], stride: usize) -> Out<'a> {
        Out {
            ptr: core::ptr::NonNull::from(&mut *buf).cast(),
            len: buf.len(),
            stride,
            start: 0,
            rows: stride,
            _buf: core::marker::PhantomData,
        }
    }

    /// Number of rows this output covers.
    #[inline(always)]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Rows `r0..r1` of this output (clamped to its rows), as a second output over the same
    /// buffer.
    ///
    /// # Safety
    /// While the result is alive, nothing else may write its elements: `self` and any other
    /// output made from it must not write rows `r0..r1` (give every thread a disjoint range).
    pub unsafe fn sub_rows(&self, r0: usize, r1: usize) -> Out<'a> {
        let r1 = r1.min(self.rows);
        let r0 = r0.min(r1);
        Out {
            start: self.start + r0,
            rows: r1 - r0,
            ..*self
        }
    }

    /// Item `p`'s rows of this output as one slice (they are consecutive in the buffer).
    #[inline]
    pub fn item(&mut self, p: usize) -> &mut [f32] {
        let i = self.index(p, 0, self.rows);
        // SAFETY: `index` checked that the `rows` elements from `i` are inside the buffer and
        // are this output's, which `&mut self` borrows exclusively for the slice's lifetime.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr().add(i), self.rows) }
    }

    /// The index of item `p`'s row `r` in the buffer, if it is this output's.
    #[inline(always)]
    fn index(&self, p: usize, r: usize, n: usize) -> usize {
        let i = p
            .checked_mul(self.stride)
            .and_then(|v| v.checked_add(self.start + r));
        match i {
            Some(i) if r + n <= self.rows && i + n <= self.len => i,
            _ => out_of_range(p, r, n),
        }
    }

    /// Writes item `p`'s row `r`.
    #[inline(always)]
    pub fn set(&mut self, p: usize, r: usize, v: f32) {
        let i = self.index(p, r, 1);
        // SAFETY: `index` checked that element `i` is inside the buffer and in this output's
        // row range, which no other `Out` can write.
        unsafe { self.ptr.as_ptr().add(i).write(v) }
    }

    /// Writes item `p`'s rows `r..r + v.len()`.
    #[inline(always)]
    pub fn set_rows(&mut self, p: usize, r: usize, v: &[f32]) {
        let i = self.index(p, r, v.len());
        // SAFETY: as in `set`, for the `v.len()` elements from `i`, which do not overlap `v`
        // (it is a shared borrow, this output an exclusive one).
        unsafe {
            core::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.as_ptr().add(i), v.len());
        }
    }
}

#[cold]
#[inline(never)]
fn out_of_range(p: usize, r: usize, n: usize) -> ! {
    panic!(
        "matrix product output out of range: item {p}, rows {r}..{}",
        r + n
    )
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

    /// Attention scores of one head: `out[p] = dot_f32(q, keys[p * stride..][..q.len()]) *
    /// scale` for every `p < out.len()` (the keys of consecutive positions, `stride` apart).
    #[inline]
    fn scores(q: &[f32], keys: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        for (p, o) in out.iter_mut().enumerate() {
            *o = Self::dot_f32(q, &keys[p * stride..p * stride + q.len()]) * scale;
        }
    }

    /// Attention output of one head: `out = 0`, then `axpy(out, w[p], values[p * stride..])`
    /// for `p` in order (the weighted sum over positions is sequential, FORMAT.md).
    #[inline]
    fn weighted_rows(w: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
        out.fill(0.0);
        let n = out.len();
        for (p, &wp) in w.iter().enumerate() {
            Self::axpy(out, wp, &values[p * stride..p * stride + n]);
        }
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

    /// `out[r] = row_r(w) . x` for every row of a row-major `w` (a tiled one takes
    /// [`Kernels::gemv_tiled`]).
    #[inline]
    fn gemv(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        for (r, o) in out[..w.rows].iter_mut().enumerate() {
            *o = Self::dot_row(w.ty, w.row(r), a);
        }
    }

    /// [`Kernels::gemv`] for a tiled `w` ([`crate::tile`]; [`Kernels::gemv`] and
    /// [`Kernels::gemv_group`] take row-major matrices). The default is the specification on
    /// the tiled layout ([`scalar::dot_tiled_row`]) for the rows in bands and
    /// [`Kernels::dot_row`] for the rows after them.
    #[inline]
    fn gemv_tiled(w: &Matrix<'_>, a: &Act<'_>, out: &mut [f32]) {
        let tiled = w.tiled_rows();
        for (r, o) in out[..w.rows].iter_mut().enumerate() {
            *o = if r < tiled {
                let (b, rb) = (r / crate::tile::TILE_ROWS, r % crate::tile::TILE_ROWS);
                scalar::dot_tiled_row(w, b, rb, a)
            } else {
                Self::dot_row(w.ty, w.row(r), a)
            };
        }
    }

    /// [`Kernels::gemv_group`] for a tiled `w`; the default runs [`Kernels::gemv_tiled`] once
    /// per member.
    #[inline]
    fn gemv_group_tiled(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        per_member(w, batch, members, in_div, out, Self::gemv_tiled)
    }

    /// Matrix `w` applied to several inputs (a batch of tokens, or the members of one expert
    /// group): member `p` takes item `p / in_div` of `batch` (items `w.cols` wide, see
    /// [`Act::item`]) and writes its row `r` with `out.set(p, r, ..)` for every row
    /// `r < w.rows` (`out` covers exactly `w.rows` rows).
    ///
    /// The default runs [`Kernels::gemv`] once per member: on microcontrollers, which have no
    /// data cache to keep a row in, the ISA's fast GEMV is what matters. The desktop ISAs
    /// override it with kernels that read each weight row once for all members.
    #[inline]
    fn gemv_group(
        w: &Matrix<'_>,
        batch: &Act<'_>,
        members: &[u32],
        in_div: usize,
        out: &mut Out<'_>,
    ) {
        per_member(w, batch, members, in_div, out, Self::gemv)
    }
}

/// A grouped product ([`Kernels::gemv_group`]) as one `gemv` per member: member `p` takes item
/// `p / in_div` of `batch` and writes its rows of `out`.
#[inline(always)]
pub fn per_member(
    w: &Matrix<'_>,
    batch: &Act<'_>,
    members: &[u32],
    in_div: usize,
    out: &mut Out<'_>,
    gemv: impl Fn(&Matrix<'_>, &Act<'_>, &mut [f32]),
) {
    for &p in members {
        let p = p as usize;
        gemv(w, &batch.item(w.cols, p / in_div), out.item(p));
    }
}

/// The scalar kernels.
#[derive(Debug, Clone, Copy)]
pub struct Scalar;

impl Kernels for Scalar {
    const ISA: Isa = Isa::Scalar;
}
