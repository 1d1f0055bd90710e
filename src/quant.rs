//! Tensor types and ggml's block layouts.
//!
//! The types the engine computes with ([`GgmlType`]):
//!
//! | type | id | block | bytes per block | layout |
//! |---|---|---|---|---|
//! | F32 | 0 | 1 | 4 | little-endian f32 |
//! | F16 | 1 | 1 | 2 | IEEE half |
//! | Q4_0 | 2 | 32 | 18 | f16 scale `d`, 16 bytes: element `j` is `(qs[j] & 15) - 8`, element `j + 16` is `(qs[j] >> 4) - 8`; value `d * q` |
//! | Q8_0 | 8 | 32 | 34 | f16 scale `d`, 32 i8 `q`; value `d * q` |
//! | BF16 | 30 | 1 | 2 | upper half of an f32 |
//!
//! These are byte for byte the layouts of ggml, so the `gguf` Python package's dequantizers give
//! the same values (checked in `tests/dequant.rs`). A file may hold any other ggml type
//! ([`TensorType`], every type gguf-py knows with its block size): the parser reads the tables
//! of such files, only loading them as a model fails.

use half::f16;

/// Elements per Q8_0 / Q4_0 block.
pub const QK: usize = 32;
/// Bytes of one Q8_0 block.
pub const Q8_0_BLOCK_BYTES: usize = 2 + QK;
/// Bytes of one Q4_0 block.
pub const Q4_0_BLOCK_BYTES: usize = 2 + QK / 2;

/// A tensor element type the engine computes with (its kernels, the model loader and the KV
/// cache use only these). A file may hold others: see [`TensorType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit blocks of 32 with an f16 scale.
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale.
    Q4_0,
}

/// Defines [`TensorType`] from one table: variant, ggml type id, elements per block, bytes per
/// block.
macro_rules! tensor_types {
    ($($v:ident = $id:literal, $block:literal, $size:literal;)*) => {
        /// Every tensor type a GGUF file may hold: the ggml types the `gguf` Python package
        /// knows (its `GGMLQuantizationType`), with the block sizes and bytes per block of its
        /// `GGML_QUANT_SIZES`. [`crate::gguf::Gguf::parse`] reads the tables of files of any
        /// of them; the engine computes with five ([`GgmlType`], [`TensorType::computed`]),
        /// and loading a model with any other fails ([`crate::Error::UnsupportedTensorTypes`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        #[allow(non_camel_case_types)] // spelled as ggml and gguf-py spell them
        pub enum TensorType {
            $(
                #[doc = concat!("ggml type ", stringify!($id), ": blocks of ", stringify!($block),
                                " elements in ", stringify!($size), " bytes.")]
                $v,
            )*
        }

        impl TensorType {
            /// Every type, in the order of their ids.
            pub const ALL: [TensorType; [$($id),*].len()] = [$(TensorType::$v),*];

            /// The type of ggml type id `id`, `None` for an id gguf-py does not know.
            pub const fn from_u32(id: u32) -> Option<Self> {
                match id {
                    $($id => Some(TensorType::$v),)*
                    _ => None,
                }
            }

            /// The ggml type id.
            pub const fn id(self) -> u32 {
                match self {
                    $(TensorType::$v => $id,)*
                }
            }

            /// The name as ggml and gguf-py spell it (`"Q4_K"`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(TensorType::$v => stringify!($v),)*
                }
            }

            /// Elements per block.
            pub const fn block_size(self) -> usize {
                match self {
                    $(TensorType::$v => $block,)*
                }
            }

            /// Bytes per block.
            pub const fn type_size(self) -> usize {
                match self {
                    $(TensorType::$v => $size,)*
                }
            }
        }
    };
}

tensor_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 18;
    Q4_1 = 3, 32, 20;
    Q5_0 = 6, 32, 22;
    Q5_1 = 7, 32, 24;
    Q8_0 = 8, 32, 34;
    Q8_1 = 9, 32, 40;
    Q2_K = 10, 256, 84;
    Q3_K = 11, 256, 110;
    Q4_K = 12, 256, 144;
    Q5_K = 13, 256, 176;
    Q6_K = 14, 256, 210;
    Q8_K = 15, 256, 292;
    IQ2_XXS = 16, 256, 66;
    IQ2_XS = 17, 256, 74;
    IQ3_XXS = 18, 256, 98;
    IQ1_S = 19, 256, 50;
    IQ4_NL = 20, 32, 18;
    IQ3_S = 21, 256, 110;
    IQ2_S = 22, 256, 82;
    IQ4_XS = 23, 256, 136;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, 256, 56;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, 256, 54;
    TQ2_0 = 35, 256, 66;
    MXFP4 = 39, 32, 17;
    NVFP4 = 40, 64, 36;
    Q1_0 = 41, 128, 18;
}

// Every id fits in a [`TensorTypes`] bit set.
const _: () = {
    let mut i = 0;
    while i < TensorType::ALL.len() {
        assert!(TensorType::ALL[i].id() < 64);
        i += 1;
    }
};

impl TensorType {
    /// The engine's type for this one, `None` if the engine does not compute with it.
    pub const fn computed(self) -> Option<GgmlType> {
        match self {
            TensorType::F32 => Some(GgmlType::F32),
            TensorType::F16 => Some(GgmlType::F16),
            TensorType::BF16 => Some(GgmlType::BF16),
            TensorType::Q8_0 => Some(GgmlType::Q8_0),
            TensorType::Q4_0 => Some(GgmlType::Q4_0),
            _ => None,
        }
    }

    /// True if the engine computes with this type.
    pub const fn is_computed(self) -> bool {
        self.computed().is_some()
    }

    /// Bytes of a row of `n` elements (whole blocks), `None` when that does not fit in `usize`.
    pub const fn checked_row_bytes(self, n: usize) -> Option<usize> {
        (n / self.block_size()).checked_mul(self.type_size())
    }
}

impl From<GgmlType> for TensorType {
    fn from(t: GgmlType) -> TensorType {
        t.tensor_type()
    }
}

impl PartialEq<GgmlType> for TensorType {
    fn eq(&self, other: &GgmlType) -> bool {
        *self == other.tensor_type()
    }
}

impl core::fmt::Display for TensorType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`TensorType`]s (a bit per type id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TensorTypes(u64);

impl TensorTypes {
    /// The empty set.
    pub const fn new() -> Self {
        TensorTypes(0)
    }

    /// Adds `t`.
    pub fn insert(&mut self, t: TensorType) {
        self.0 |= 1 << t.id();
    }

    /// True if `t` is in the set.
    pub const fn contains(self, t: TensorType) -> bool {
        self.0 & (1 << t.id()) != 0
    }

    /// Number of types in the set.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// True for the empty set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The types in the set, by id.
    pub fn iter(self) -> impl Iterator<Item = TensorType> + Clone {
        TensorType::ALL
            .into_iter()
            .filter(move |&t| self.contains(t))
    }
}

/// The names, separated by `", "`.
impl core::fmt::Display for TensorTypes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, t) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(t.name())?;
        }
        Ok(())
    }
}

impl GgmlType {
    /// Every type the engine computes with.
    pub const ALL: [GgmlType; 5] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
    ];

    /// The same type as a [`TensorType`].
    pub const fn tensor_type(self) -> TensorType {
        match self {
            GgmlType::F32 => TensorType::F32,
            GgmlType::F16 => TensorType::F16,
            GgmlType::BF16 => TensorType::BF16,
            GgmlType::Q8_0 => TensorType::Q8_0,
            GgmlType::Q4_0 => TensorType::Q4_0,
        }
    }

    /// The type for a ggml type id, if the engine computes with it.
    pub fn from_u32(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
        }
    }

    /// Elements per block.
    pub const fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q8_0 | GgmlType::Q4_0 => QK,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q8_0 => Q8_0_BLOCK_BYTES,
            GgmlType::Q4_0 => Q4_0_BLOCK_BYTES,
        }
    }

    /// True for block-quantized types, whose matrix products use Q8_0 activations.
    pub fn is_quantized(self) -> bool {
        matches!(self, GgmlType::Q8_0 | GgmlType::Q4_0)
    }

    /// Bytes of a row of `n` elements (`n` must be a multiple of the block size), saturating
    /// at `usize::MAX` (a size no buffer has) when it does not fit: see
    /// [`GgmlType::checked_row_bytes`].
    pub fn row_bytes(self, n: usize) -> usize {
        self.checked_row_bytes(n).unwrap_or(usize::MAX)
    }

    /// Bytes of a row of `n` elements (whole blocks; a partial block is not counted), `None`
    /// when that does not fit in `usize`.
    pub const fn checked_row_bytes(self, n: usize) -> Option<usize> {
        (n / self.block_size()).checked_mul(self.type_size())
    }

    /// The type's name as ggml spells it.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_0 => "Q4_0",
        }
    }
}

/// Widens an IEEE half (given as its bits) to f32, exactly: bit for bit numpy's conversion
/// (and so the `gguf` Python package's), which keeps a NaN's payload and its signalling bit.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    // The `half` crate (and the F16C/FP16 conversion instructions) set the quiet bit of a
    // signalling NaN; numpy moves the bits as they are.
    if bits & 0x7C00 == 0x7C00 && bits & 0x03FF != 0 {
        let sign = u32::from(bits & 0x8000) << 16;
        return f32::from_bits(sign | 0x7F80_0000 | (u32::from(bits & 0x03FF) << 13));
    }
    f16::from_bits(bits).to_f32()
}

/// Rounds an f32 to the nearest IEEE half (ties to even) and widens it back.
#[inline(always)]
pub fn round_to_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Widens a bfloat16 (given as its bits) to f32, exactly.
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

#[inline(always)]
fn le16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Dequantizes one row of `out.len()` elements of type `ty` from `src` into `out`.
///
/// `src` must hold exactly `ty.row_bytes(out.len())` bytes and `out.len()` must be a multiple of
/// the block size; the model loader guarantees both for rows of validated tensors. Extra bytes
/// or elements are ignored rather than read out of bounds.
pub fn dequantize_row(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out
                .chunks_exact_mut(QK)
                .zip(src.chunks_exact(Q8_0_BLOCK_BYTES))
            {
                let d = f16_to_f32(le16(b, 0));
                for (o, &q) in o.iter_mut().zip(&b[2..]) {
                    *o = d * f32::from(q as i8);
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out
                .chunks_exact_mut(QK)
                .zip(src.chunks_exact(Q4_0_BLOCK_BYTES))
            {
                let d = f16_to_f32(le16(b, 0));
                let (lo, hi) = o.split_at_mut(QK / 2);
                for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..]) {
                    *l = d * f32::from((q & 0x0F) as i8 - 8);
                    *h = d * f32::from((q >> 4) as i8 - 8);
                }
            }
        }
    }
}

/// Quantizes `x` to Q8_0 blocks the way ggml's `quantize_row_q8_0` does, writing the int8
/// values to `q` and each block's scale (rounded to f16, widened back) to `d`.
///
/// Per block of 32: `amax = max |x|`, `d = amax / 127`, `id = 1 / d` (0 when `d == 0`),
/// `q = roundf(x * id)` (half away from zero), the stored scale is `f16(d)`. Non-finite input
/// stays visible: a NaN makes the block's scale NaN, an infinity makes it infinite (ggml leaves
/// this undefined).
/// `x.len()` must be a multiple of 32; `q` and `d` must be at least `x.len()` and
/// `x.len() / 32` long (the caller sizes them from the model).
pub fn quantize_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((xs, qs), dd) in x
        .chunks_exact(QK)
        .zip(q.chunks_exact_mut(QK))
        .zip(d.iter_mut())
    {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let dv = amax / 127.0;
        let id = if dv != 0.0 { 1.0 / dv } else { 0.0 };
        // A NaN input would vanish into q = 0 (f32::max skips NaN); make the block's scale NaN
        // instead so it reaches the logits, where the forward pass reports it.
        let finite = xs.iter().all(|v| !v.is_nan());
        *dd = if finite { round_to_f16(dv) } else { f32::NAN };
        for (q, &v) in qs.iter_mut().zip(xs) {
            // |v * id| <= 127 (plus rounding), so the cast never saturates for finite input.
            *q = libm::roundf(v * id) as i8;
        }
    }
}

/// Quantizes `x` to Q4_0 blocks the way ggml's `quantize_row_q4_0` does, into `out`
/// (`Q4_0_BLOCK_BYTES` per block of 32).
///
/// Per block: `max` is the value of largest magnitude (the first one on ties), `d = max / -8`,
/// `id = 1 / d` (0 when `d == 0`), `q = min(15, trunc(x * id + 8.5))` as an unsigned nibble
/// (element `j` low, element `j + 16` high in byte `j`), the stored scale is `f16(d)`. A NaN in
/// the block makes the scale NaN, as for [`quantize_q8_0`]. `x.len()` must be a multiple of 32
/// and `out` at least `x.len() / 32 * 18` bytes; extra elements or bytes are left alone.
pub fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    for (xs, b) in x
        .chunks_exact(QK)
        .zip(out.chunks_exact_mut(Q4_0_BLOCK_BYTES))
    {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let finite = xs.iter().all(|v| !v.is_nan());
        let stored = if finite { f16::from_f32(d) } else { f16::NAN };
        b[..2].copy_from_slice(&stored.to_bits().to_le_bytes());
        let nibble = |v: f32| ((v * id + 8.5) as u8).min(15);
        for j in 0..QK / 2 {
            b[2 + j] = nibble(xs[j]) | (nibble(xs[j + QK / 2]) << 4);
        }
    }
}

/// Stores the f32 values `x` as one row of type `ty` (F32, F16 rounded to nearest even, or Q8_0
/// and Q4_0 blocks as ggml quantizes them) into `out`, `ty.row_bytes(x.len())` bytes: the inverse
/// of [`dequantize_row`] up to rounding (BF16 also rounds to nearest even). Extra bytes of `out`
/// are left alone.
pub fn store_row(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    match ty {
        GgmlType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            let (mut q, mut d) = ([0i8; QK], [0.0f32; 1]);
            for (xs, b) in x
                .chunks_exact(QK)
                .zip(out.chunks_exact_mut(Q8_0_BLOCK_BYTES))
            {
                quantize_q8_0(xs, &mut q, &mut d);
                // `d` is f16-rounded (or NaN), so the conversion back is exact.
                b[..2].copy_from_slice(&f16::from_f32(d[0]).to_bits().to_le_bytes());
                for (o, &v) in b[2..].iter_mut().zip(&q) {
                    *o = v as u8;
                }
            }
        }
        GgmlType::Q4_0 => quantize_q4_0(x, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_quantize_matches_ggml_rules() {
        let mut x = [0.0f32; 32];
        for (i, v) in x.iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 0.25;
        }
        let mut q = [0i8; 32];
        let mut d = [0.0f32; 1];
        quantize_q8_0(&x, &mut q, &mut d);
        assert_eq!(q[0], -127);
        assert_eq!(d[0], round_to_f16(4.0 / 127.0));
        // x = 0.25 * 127/4 = 7.9375 -> 8
        assert_eq!(q[17], 8);
        let zero = [0.0f32; 32];
        quantize_q8_0(&zero, &mut q, &mut d);
        assert_eq!(d[0], 0.0);
        assert!(q.iter().all(|&v| v == 0));
    }

    #[test]
    fn non_finite_inputs_poison_the_block_scale() {
        let mut x = [1.0f32; 64];
        x[40] = f32::NAN;
        let mut q = [0i8; 64];
        let mut d = [0.0f32; 2];
        quantize_q8_0(&x, &mut q, &mut d);
        assert!(d[0].is_finite() && d[1].is_nan());
        x[40] = f32::INFINITY;
        quantize_q8_0(&x, &mut q, &mut d);
        assert!(d[1].is_infinite());
    }

    #[test]
    fn round_half_away_from_zero() {
        // 2.5 * (127 / 5.0) scaled: choose values so x * id lands on .5 exactly.
        let mut x = [0.0f32; 32];
        x[0] = 127.0; // amax 127 -> d = 1, id = 1
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.5;
        let mut q = [0i8; 32];
        let mut d = [0.0f32; 1];
        quantize_q8_0(&x, &mut q, &mut d);
        assert_eq!((q[1], q[2], q[3]), (3, -3, 1));
    }

    #[test]
    fn q4_0_quantize_matches_ggml_rules() {
        let mut x = [0.0f32; 32];
        for (i, v) in x.iter_mut().enumerate() {
            *v = i as f32 - 20.0; // max magnitude -20 at i = 0: d = 2.5, id = 0.4
        }
        let mut b = [0u8; Q4_0_BLOCK_BYTES];
        quantize_q4_0(&x, &mut b);
        assert_eq!(f16_to_f32(le16(&b, 0)), 2.5);
        let mut back = [0.0f32; 32];
        dequantize_row(GgmlType::Q4_0, &b, &mut back);
        // x = -20 -> trunc(-8 + 8.5) = 0 -> -8 * 2.5; x = 11 -> trunc(4.4 + 8.5) = 12 -> 10.
        assert_eq!(back[0], -20.0);
        assert_eq!(back[31], 10.0);
        for (v, w) in x.iter().zip(back) {
            assert!((v - w).abs() <= 2.5, "{v} -> {w}");
        }
        quantize_q4_0(&[0.0; 32], &mut b);
        assert_eq!(le16(&b, 0), 0x8000, "0 / -8 is -0, as in ggml");
        assert!(b[2..].iter().all(|&q| q == 0x88));
        let mut nan = [1.0f32; 32];
        nan[3] = f32::NAN;
        quantize_q4_0(&nan, &mut b);
        assert!(f16_to_f32(le16(&b, 0)).is_nan());
    }

    #[test]
    fn store_row_round_trips_through_dequantize_row() {
        let x: [f32; 64] = core::array::from_fn(|i| (i as f32 * 0.37).sin() * 3.0);
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
        ] {
            let mut bytes = [0u8; 256];
            store_row(ty, &x, &mut bytes[..ty.row_bytes(64)]);
            let mut back = [0.0f32; 64];
            dequantize_row(ty, &bytes[..ty.row_bytes(64)], &mut back);
            let tol = match ty {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => 2e-3,
                GgmlType::BF16 => 2e-2,
                GgmlType::Q8_0 => 3.0 / 127.0,
                GgmlType::Q4_0 => 3.0 / 8.0,
            };
            for (v, w) in x.iter().zip(back) {
                assert!((v - w).abs() <= tol, "{}: {v} -> {w}", ty.name());
            }
        }
    }

    #[test]
    fn q4_0_dequant_layout() {
        let mut blk = [0u8; Q4_0_BLOCK_BYTES];
        blk[..2].copy_from_slice(&half::f16::from_f32(2.0).to_bits().to_le_bytes());
        blk[2] = 0xF0; // element 0 -> 0 - 8, element 16 -> 15 - 8
        let mut out = [0.0f32; 32];
        dequantize_row(GgmlType::Q4_0, &blk, &mut out);
        assert_eq!(out[0], -16.0);
        assert_eq!(out[16], 14.0);
        assert_eq!(out[1], -16.0);
    }
}
