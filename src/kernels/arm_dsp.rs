//! Cortex-M4/M7/M33 DSP-extension kernels (cargo feature `cortex-m-dsp`).
//!
//! The quantized dot products compute each block's exact integer sum in inline assembly with the
//! CMSIS-NN int8 trick: `SXTB16` sign-extends bytes 0 and 2 of a word (rotated by 8: bytes 1 and
//! 3) into two halfword lanes and `SMLAD` multiplies both lane pairs and adds them to an
//! accumulator, so four int8 multiply-accumulates take one load, two extends and two `SMLAD`s.
//! Q4_0 nibbles need no extension: `AND` with `0x000F000F` (after a shift of 0, 4, 8 or 12) puts
//! two nibbles straight into halfword lanes; the `- 8` is applied once per block as
//! `sum(n * x) - 8 * sum(x)`.
//!
//! The float part is the scalar specification's, operation for operation: block `b` adds
//! `sumi as f32 * (dw * dx)` into lane `b % 8`, then [`scalar::reduce8`]. Integer sums are exact,
//! so every result is bit-identical to [`super::scalar`]. The GEMV processes four rows (Q8_0) or
//! two rows (Q4_0) per pass so that each activation word is loaded and extended once for all of
//! them.
//!
//! Float kernels (F32/F16/BF16 rows, RMSNorm, softmax, ...) stay scalar: these cores have a
//! scalar single-precision FPU and no float SIMD, and the scalar code already compiles to it.
//!
//! Build requirements: `thumbv7em-none-eabi[hf]` works as is; on `thumbv8m.main-none-eabi[hf]`
//! pass `-C target-cpu=cortex-m33` (or another core with the DSP extension), or the assembler
//! rejects `SXTB16`/`SMLAD`. Unaligned `LDR` is used on weight rows (Q8_0 blocks are 34 bytes),
//! as compiled Rust code on these targets does too: keep `SCB.CCR.UNALIGN_TRP` clear (its reset
//! value). On hard-float targets the f16 block scales are widened with `VCVTB`.

use core::arch::asm;

use super::scalar;
use crate::model::Matrix;
use crate::quant::{GgmlType, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK};

/// Joins assembly lines into one template string, a newline between two lines (as between
/// separate `asm!` template arguments). A line is a string literal or a macro call that expands
/// to lines (the fragments below).
macro_rules! lines {
    ($first:expr $(, $line:expr)* $(,)?) => {
        concat!($first $(, "\n", $line)*)
    };
}

/// Repeats assembly lines `n` times (1, 2, 4, 7 or 8) as one template string. The text is
/// expanded here rather than with `.rept`, because LLVM sizes an inline-assembly block by its
/// lines when it lays out branches around it.
macro_rules! rept {
    (1, $($line:expr),+ $(,)?) => {
        lines!($($line),+)
    };
    (2, $($line:expr),+ $(,)?) => {
        lines!(rept!(1, $($line),+), rept!(1, $($line),+))
    };
    (4, $($line:expr),+ $(,)?) => {
        lines!(rept!(2, $($line),+), rept!(2, $($line),+))
    };
    (7, $($line:expr),+ $(,)?) => {
        lines!(rept!(4, $($line),+), rept!(2, $($line),+), rept!(1, $($line),+))
    };
    (8, $($line:expr),+ $(,)?) => {
        lines!(rept!(4, $($line),+), rept!(4, $($line),+))
    };
}

/// `{$a} = {$u} * {$v}` summed over both halfword lanes (`smuad`), or that added to `{$a}`
/// (`smlad`). Operands are given by name.
macro_rules! dual_mul {
    (smuad, $a:literal, $u:literal, $v:literal) => {
        concat!("smuad {", $a, "}, {", $u, "}, {", $v, "}")
    };
    (smlad, $a:literal, $u:literal, $v:literal) => {
        concat!("smlad {", $a, "}, {", $u, "}, {", $v, "}, {", $a, "}")
    };
}

/// One weight word of a Q8_0 row against one activation word: loads it from `$addr` into `{w}`
/// and takes the products of its extended halves with `{xa}` (activation bytes 0 and 2) and
/// `{xb}` (bytes 1 and 3) into `{$a}`; `$op` is `smuad` for the block's first word (sets
/// `{$a}`), `smlad` for the others. Clobbers `{w}` and `{t}`.
macro_rules! q8_word {
    ($op:ident, $addr:literal, $a:literal) => {
        lines!(
            concat!("ldr {w}, ", $addr),
            "sxtb16 {t}, {w}",
            dual_mul!($op, $a, "t", "xa"),
            "sxtb16 {w}, {w}, ror #8",
            dual_mul!(smlad, $a, "w", "xb"),
        )
    };
}

/// `q8_word!` for four rows: rows 1 and 3 at `{p0} + {s}` and `{p2} + {s}`, then rows 0 and 2
/// at `{p0}` and `{p2}` (which advance by 4), into `{a0}`-`{a3}`.
macro_rules! q8_x4_word {
    ($op:ident) => {
        lines!(
            q8_word!($op, "[{p0}, {s}]", "a1"),
            q8_word!($op, "[{p2}, {s}]", "a3"),
            q8_word!($op, "[{p0}], #4", "a0"),
            q8_word!($op, "[{p2}], #4", "a2"),
        )
    };
}

/// The activation words of one Q4_0 step: elements `16 + 4i..` (at `{px} + 16`) extended into
/// `{xa}` (bytes 0 and 2) and `{xb}` (1 and 3), elements `4i..` (at `{px}`, which advances by 4)
/// into `{xc}` and `{xd}`.
macro_rules! q4_x_word {
    () => {
        lines!(
            "ldr {xa}, [{px}, #16]",
            "ldr {xc}, [{px}], #4",
            "sxtb16 {xb}, {xa}, ror #8",
            "sxtb16 {xa}, {xa}",
            "sxtb16 {xd}, {xc}, ror #8",
            "sxtb16 {xc}, {xc}",
        )
    };
}

/// One quant word of a Q4_0 row (at `{$p}`, which advances by 4) against the `q4_x_word!`
/// registers: its eight nibbles, unsigned, two at a time (`AND` with `{m}` = `0x000F000F` after
/// a shift), times the matching activation halves, added into `{$a}`. Clobbers `{w}` and `{t}`.
macro_rules! q4_word {
    ($p:literal, $a:literal) => {
        lines!(
            concat!("ldr {w}, [{", $p, "}], #4"),
            "and {t}, {w}, {m}",
            dual_mul!(smlad, $a, "t", "xc"),
            "and {t}, {m}, {w}, lsr #8",
            dual_mul!(smlad, $a, "t", "xd"),
            "and {t}, {m}, {w}, lsr #4",
            dual_mul!(smlad, $a, "t", "xa"),
            "and {t}, {m}, {w}, lsr #12",
            dual_mul!(smlad, $a, "t", "xb"),
        )
    };
}

/// The scalar kernel's float operations for four rows, one per register: s0-s3 hold the block
/// sums (i32) and s4-s7 the rows' f16 scale bits, converted here by `f32_sums!` and
/// `f32_scales!`; with `dx` in s8, `scale_sums!` leaves `sumi as f32 * (dw * dx)` in s0-s3 and
/// `add_lanes!` adds them to the lane loaded into s12-s15.
macro_rules! f32_sums {
    () => {
        lines!(
            "vcvt.f32.s32 s0, s0",
            "vcvt.f32.s32 s1, s1",
            "vcvt.f32.s32 s2, s2",
            "vcvt.f32.s32 s3, s3",
        )
    };
}

/// See `f32_sums!`.
macro_rules! f32_scales {
    () => {
        lines!(
            "vcvtb.f32.f16 s4, s4",
            "vcvtb.f32.f16 s5, s5",
            "vcvtb.f32.f16 s6, s6",
            "vcvtb.f32.f16 s7, s7",
        )
    };
}

/// See `f32_sums!`.
macro_rules! scale_sums {
    () => {
        lines!(
            "vmul.f32 s4, s4, s8",
            "vmul.f32 s5, s5, s8",
            "vmul.f32 s6, s6, s8",
            "vmul.f32 s7, s7, s8",
            "vmul.f32 s0, s0, s4",
            "vmul.f32 s1, s1, s5",
            "vmul.f32 s2, s2, s6",
            "vmul.f32 s3, s3, s7",
        )
    };
}

/// See `f32_sums!`.
macro_rules! add_lanes {
    () => {
        lines!(
            "vadd.f32 s12, s12, s0",
            "vadd.f32 s13, s13, s1",
            "vadd.f32 s14, s14, s2",
            "vadd.f32 s15, s15, s3",
        )
    };
}

scalar::quant_kernels! {
    /// The DSP-extension kernels (selected at build time by the `cortex-m-dsp` feature).
    CortexMDsp,
    gemv(w, xq, xd, out) {
        GgmlType::Q8_0 => gemv_q8_0(w, xq, xd, out),
        GgmlType::Q4_0 => gemv_q4_0(w, xq, xd, out),
    }
}

/// Widens an f16 block scale (given as its bits) with `VCVTB.F32.F16`: exact, like
/// [`crate::quant::f16_to_f32`], including infinities and (quieted) NaN payloads.
#[cfg(target_abi = "eabihf")]
#[inline(always)]
fn f16_to_f32(bits: u16) -> f32 {
    let out: u32;
    // SAFETY: only s0 is used, and it is saved in a core register and restored (FP registers
    // cannot be declared as operands on stable Rust); hard-float targets have the FPv4/FPv5
    // half-precision conversion.
    unsafe {
        asm!(
            "vmov {save}, s0",
            "vmov s0, {b}",
            "vcvtb.f32.f16 s0, s0",
            "vmov {o}, s0",
            "vmov s0, {save}",
            b = in(reg) u32::from(bits),
            save = out(reg) _,
            o = lateout(reg) out,
            options(pure, nomem, nostack),
        );
    }
    f32::from_bits(out)
}

#[cfg(not(target_abi = "eabihf"))]
use crate::quant::f16_to_f32;

/// The f16 scale stored at `p` (little-endian, any alignment).
///
/// # Safety
/// `p` must point to two readable bytes.
#[cfg_attr(target_abi = "eabihf", allow(dead_code))]
#[inline(always)]
unsafe fn scale_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes; `read_unaligned` allows any alignment.
    f16_to_f32(u16::from_le(unsafe { p.cast::<u16>().read_unaligned() }))
}

/// Adds block `b`'s terms of four rows to their lane: `acc[k] += s[k] as f32 * (dw[k] * dx)`,
/// where row `k`'s block starts (f16 scale first) at `blk + k * stride`. Rust version for
/// soft-float targets.
///
/// # Safety
/// `blk + k * stride` (k < 4) must each point to two readable bytes.
#[cfg(not(target_abi = "eabihf"))]
#[inline(always)]
unsafe fn scale_add_x4(acc: &mut [f32; 4], s: [i32; 4], blk: *const u8, stride: usize, dx: f32) {
    for (k, (a, s)) in acc.iter_mut().zip(s).enumerate() {
        // SAFETY: guaranteed by the caller.
        let dw = unsafe { scale_at(blk.wrapping_add(k * stride)) };
        *a += s as f32 * (dw * dx);
    }
}

/// Adds block `b`'s terms of four rows to their lane: `acc[k] += s[k] as f32 * (dw[k] * dx)`,
/// where row `k`'s block starts (f16 scale first) at `blk + k * stride`. The same operations in
/// the same order as the Rust version, with `VCVTB` for the scales and paired moves.
///
/// # Safety
/// `blk + k * stride` (k < 4) must each point to two readable bytes.
#[cfg(target_abi = "eabihf")]
#[inline(always)]
unsafe fn scale_add_x4(acc: &mut [f32; 4], s: [i32; 4], blk: *const u8, stride: usize, dx: f32) {
    // SAFETY: reads the four 2-byte scales the caller vouches for and the 16 bytes of `acc`,
    // writes only `acc`; s0-s15 are saved and restored around their use (FP registers cannot be
    // declared as operands on stable Rust).
    unsafe {
        asm!(
        "vpush {{d0-d7}}",
        "vmov s0, s1, {s0}, {s1}",
        "vmov s2, s3, {s2}, {s3}",
        f32_sums!(),
        "ldrh {s0}, [{p}]",
        "ldrh {s1}, [{p}, {st}]",
        "add {p}, {p}, {st}, lsl #1",
        "ldrh {s2}, [{p}]",
        "ldrh {s3}, [{p}, {st}]",
        "vmov s4, s5, {s0}, {s1}",
        "vmov s6, s7, {s2}, {s3}",
        f32_scales!(),
        "vmov s8, {dx}",
        scale_sums!(),
        "vldmia {acc}, {{s12-s15}}",
        add_lanes!(),
        "vstmia {acc}, {{s12-s15}}",
        "vpop {{d0-d7}}",
        s0 = inout(reg) s[0] => _,
        s1 = inout(reg) s[1] => _,
        s2 = inout(reg) s[2] => _,
        s3 = inout(reg) s[3] => _,
        p = inout(reg) blk => _,
        st = in(reg) stride,
        dx = in(reg) dx.to_bits(),
        acc = in(reg) acc.as_mut_ptr(),
                );
    }
}

/// `sum(w[i] * x[i])` over one block of 32 int8 pairs.
#[inline(always)]
fn block_sum_q8(w: &[u8; QK], x: &[i8; QK]) -> i32 {
    let mut acc = 0i32;
    // SAFETY: reads exactly the 32 bytes of each array (eight post-incremented word loads; LDR
    // allows unaligned addresses on ARMv7-M/ARMv8-M Mainline); writes only the named registers.
    unsafe {
        asm!(
            rept!(
                8,
                "ldr {w}, [{pw}], #4",
                "ldr {x}, [{px}], #4",
                "sxtb16 {t}, {w}",
                "sxtb16 {u}, {x}",
                "smlad {acc}, {t}, {u}, {acc}",
                "sxtb16 {w}, {w}, ror #8",
                "sxtb16 {x}, {x}, ror #8",
                "smlad {acc}, {w}, {x}, {acc}",
            ),
            pw = inout(reg) w.as_ptr() => _,
            px = inout(reg) x.as_ptr() => _,
            w = out(reg) _,
            x = out(reg) _,
            t = out(reg) _,
            u = out(reg) _,
            acc = inout(reg) acc,
            options(pure, readonly, nostack),
        );
    }
    acc
}

/// Block sums of four Q8_0 rows against one activation block: row `k`'s 32 quants start at
/// `w + k * stride`.
///
/// # Safety
/// `w + k * stride` (k < 4) and `x` must each point to 32 readable bytes.
#[inline(always)]
unsafe fn block_sums_q8_x4(w: *const u8, stride: usize, x: *const i8) -> [i32; 4] {
    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
    // SAFETY: the caller guarantees 32 readable bytes at x and at each of the four row
    // addresses; the assembly reads exactly those (eight words from each, rows 1 and 3 through
    // the stride register) and writes only the named registers.
    unsafe {
        asm!(
            rept!(
                8,
                "ldr {xa}, [{xp}], #4",
                "sxtb16 {xb}, {xa}, ror #8",
                "sxtb16 {xa}, {xa}",
                q8_x4_word!(smlad),
            ),
            xp = inout(reg) x => _,
            p0 = inout(reg) w => _,
            p2 = inout(reg) w.wrapping_add(2 * stride) => _,
            s = in(reg) stride,
            xa = out(reg) _,
            xb = out(reg) _,
            w = out(reg) _,
            t = out(reg) _,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            a2 = inout(reg) a2,
            a3 = inout(reg) a3,
            options(pure, readonly, nostack),
        );
    }
    [a0, a1, a2, a3]
}

/// `sum(x[i])` over one activation block.
#[inline(always)]
fn block_sum_i8(x: &[i8; QK]) -> i32 {
    let mut s = 0i32;
    // SAFETY: reads exactly the 32 bytes of the array; writes only the named registers. Each
    // halfword lane sums 16 values of at most 128 in magnitude, so it cannot overflow.
    unsafe {
        asm!(
            rept!(
                8,
                "ldr {v}, [{px}], #4",
                "sxtab16 {s}, {s}, {v}",
                "sxtab16 {s}, {s}, {v}, ror #8",
            ),
            "sxth {v}, {s}",
            "add {s}, {v}, {s}, asr #16",
            px = inout(reg) x.as_ptr() => _,
            v = out(reg) _,
            s = inout(reg) s,
            options(pure, readonly, nostack),
        );
    }
    s
}

/// `sum(n[i] * x[i])` of one Q4_0 block with its nibbles taken unsigned (0..15): element `j`
/// is the low nibble of byte `j`, element `j + 16` the high nibble.
#[inline(always)]
fn block_sum_q4_unsigned(qs: &[u8; QK / 2], x: &[i8; QK]) -> i32 {
    let mut acc = 0i32;
    // SAFETY: reads the 16 bytes of `qs` and the 32 of `x` (words at x + 4k and x + 16 + 4k);
    // writes only the named registers.
    unsafe {
        asm!(
            rept!(4, q4_x_word!(), q4_word!("pw", "acc")),
            pw = inout(reg) qs.as_ptr() => _,
            px = inout(reg) x.as_ptr() => _,
            m = in(reg) 0x000F_000Fu32,
            xa = out(reg) _,
            xb = out(reg) _,
            xc = out(reg) _,
            xd = out(reg) _,
            w = out(reg) _,
            t = out(reg) _,
            acc = inout(reg) acc,
            options(pure, readonly, nostack),
        );
    }
    acc
}

/// Unsigned-nibble block sums of two Q4_0 rows (quants at `w` and `w + stride`) against one
/// activation block.
///
/// # Safety
/// `w` and `w + stride` must each point to 16 readable bytes and `x` to 32.
#[inline(always)]
unsafe fn block_sums_q4_x2(w: *const u8, stride: usize, x: *const i8) -> [i32; 2] {
    let (mut a0, mut a1) = (0i32, 0i32);
    // SAFETY: the caller guarantees the readable bytes; the assembly reads 16 bytes from each
    // row and 32 from x, and writes only the named registers.
    unsafe {
        asm!(
            rept!(
                4,
                q4_x_word!(),
                q4_word!("p0", "a0"),
                q4_word!("p1", "a1"),
            ),
            p0 = inout(reg) w => _,
            p1 = inout(reg) w.wrapping_add(stride) => _,
            px = inout(reg) x => _,
            m = in(reg) 0x000F_000Fu32,
            xa = out(reg) _,
            xb = out(reg) _,
            xc = out(reg) _,
            xd = out(reg) _,
            w = out(reg) _,
            t = out(reg) _,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            options(pure, readonly, nostack),
        );
    }
    [a0, a1]
}

/// Q8_0 row times Q8_0 activation (same block count and result as the scalar kernel).
pub fn dot_q8_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    scalar::dot_blocks!(row, Q8_0_BLOCK_BYTES, xq, xd, |blk, xs, dx| {
        let (d, qs) = blk.split_at(2);
        let (Ok(qs), Ok(xs)) = (<&[u8; QK]>::try_from(qs), <&[i8; QK]>::try_from(xs)) else {
            unreachable!("chunks_exact gives whole blocks")
        };
        let dw = f16_to_f32(u16::from_le_bytes([d[0], d[1]]));
        block_sum_q8(qs, xs) as f32 * (dw * dx)
    })
}

/// Q4_0 row times Q8_0 activation (same block count and result as the scalar kernel).
pub fn dot_q4_0_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    scalar::dot_blocks!(row, Q4_0_BLOCK_BYTES, xq, xd, |blk, xs, dx| {
        let (d, qs) = blk.split_at(2);
        let (Ok(qs), Ok(xs)) = (<&[u8; QK / 2]>::try_from(qs), <&[i8; QK]>::try_from(xs)) else {
            unreachable!("chunks_exact gives whole blocks")
        };
        let dw = f16_to_f32(u16::from_le_bytes([d[0], d[1]]));
        let sumi = block_sum_q4_unsigned(qs, xs) - 8 * block_sum_i8(xs);
        sumi as f32 * (dw * dx)
    })
}

/// The number of blocks the scalar kernel would use for rows of `row_bytes` bytes, and whether
/// the GEMV fast path applies (every row present in full).
#[inline(always)]
fn plan(w: &Matrix<'_>, block_bytes: usize, xq: &[i8], xd: &[f32]) -> Option<(usize, usize)> {
    let rb = w.row_bytes();
    let nb = (rb / block_bytes).min(xq.len() / QK).min(xd.len());
    (w.data.len() >= w.rows * rb).then_some((rb, nb))
}

/// Most activation blocks the pre-extended stream holds (the Q8_0 GEMV takes the per-block
/// path above this).
#[cfg(target_abi = "eabihf")]
const XCAP: usize = 32;

/// Words per block of the pre-extended activation stream: eight pairs `[sxtb16(x),
/// sxtb16(x ror 8)]`, the block scale `dx`, and the number of blocks still to come.
#[cfg(target_abi = "eabihf")]
const XWORDS: usize = 18;

/// Extends `nb >= 1` activation blocks once per GEMV into the stream the four-row loop reads
/// (see [`XWORDS`]).
///
/// # Safety
/// `xq` must have `32 * nb` readable bytes, `xd` `nb` f32, `out` room for `XWORDS * nb` words
/// (4-byte aligned).
#[cfg(target_abi = "eabihf")]
#[inline(always)]
unsafe fn extend_x(xq: *const i8, xd: *const f32, nb: usize, out: *mut u32) {
    // SAFETY: reads exactly the bytes the caller vouches for and writes XWORDS * nb words.
    unsafe {
        asm!(
            "2:",
            rept!(
                8,
                "ldr {r}, [{xq}], #4",
                "sxtb16 {b}, {r}, ror #8",
                "sxtb16 {r}, {r}",
                "strd {r}, {b}, [{out}], #8",
            ),
            "ldr {r}, [{xd}], #4",
            "subs {n}, {n}, #1",
            "strd {r}, {n}, [{out}], #8",
            "bne 2b",
            xq = inout(reg) xq => _,
            xd = inout(reg) xd => _,
            n = inout(reg) nb => _,
            out = inout(reg) out => _,
            r = out(reg) _,
            b = out(reg) _,
            options(nostack),
        );
    }
}

/// State of the whole-GEMV loop, read and written by the assembly at fixed offsets:
/// lanes `acc[lane][row]` at 0, then `out` (128), `groups` (132), `xs` (136), `delta` (140).
/// 256-byte aligned, so that the lane pointer wraps from lane 7 to lane 0 by clearing bit 7.
#[cfg(target_abi = "eabihf")]
#[repr(C, align(256))]
struct Ctx {
    acc: [[f32; 4]; 8],
    out: *mut f32,
    groups: usize,
    xs: *const u32,
    delta: usize,
}

/// The Q8_0 GEMV for `groups >= 1` groups of four rows, all in one assembly loop: per block,
/// the four scales (`LDRH`, `VCVTB`), eight words of four rows against the pre-extended
/// activation (`LDRD` + 4 x (`LDR`, 2 `SXTB16`, 2 `SMLAD`)), then the scalar kernel's float
/// operations for the four rows (`sumi as f32 * (dw * dx)` into lane `b % 8`); per group,
/// `reduce8` of each row into `out`. Core registers are all in use; the lane pointer lives in
/// s25 and the context pointer in s24.
///
/// # Safety
/// `w` is the first row's first block; `4 * groups` rows of `stride` bytes with at least `nb`
/// blocks each must be readable from it; `xs` must hold the [`extend_x`] stream of `nb >= 1`
/// blocks; `out` must have room for `4 * groups` f32.
#[cfg(target_abi = "eabihf")]
#[inline(always)]
unsafe fn gemv_q8_0_x4(
    w: *const u8,
    stride: usize,
    nb: usize,
    xs: *const u32,
    out: *mut f32,
    groups: usize,
) {
    let mut ctx = core::mem::MaybeUninit::<Ctx>::uninit();
    let c = ctx.as_mut_ptr();
    // SAFETY: `c` points to the (uninitialized) context; writing its fields is allowed.
    unsafe {
        (&raw mut (*c).out).write(out);
        (&raw mut (*c).groups).write(groups);
        (&raw mut (*c).xs).write(xs);
        (&raw mut (*c).delta).write((4 * stride).wrapping_sub(nb * Q8_0_BLOCK_BYTES));
    }
    // SAFETY: the caller guarantees the rows, the stream and `out`; the assembly zeroes the lanes
    // before reading them, writes only the context and `out[..4 * groups]`, keeps the lane
    // pointer inside the lanes (256-byte alignment), and saves and restores s0-s31.
    unsafe {
        asm!(
            "vpush {{d0-d15}}",
            "6:",
            "vmov s24, {t}",
            "mov {w}, #0",
            "vmov s16, s17, {w}, {w}",
            "vmov s18, s19, {w}, {w}",
            "vmov s20, s21, {w}, {w}",
            "vmov s22, s23, {w}, {w}",
            "vstmia {t}, {{s16-s23}}",
            "add {w}, {t}, #32",
            "vstmia {w}, {{s16-s23}}",
            "add {w}, {t}, #64",
            "vstmia {w}, {{s16-s23}}",
            "add {w}, {t}, #96",
            "vstmia {w}, {{s16-s23}}",
            "vmov s25, {t}",
            "ldr {xp}, [{t}, #136]",
            "7:",
            "ldrh {a1}, [{p0}, {s}]",
            "ldrh {a3}, [{p2}, {s}]",
            "ldrh {a0}, [{p0}], #2",
            "ldrh {a2}, [{p2}], #2",
            "vmov s4, s5, {a0}, {a1}",
            "vmov s6, s7, {a2}, {a3}",
            "ldrd {xa}, {xb}, [{xp}], #8",
            q8_x4_word!(smuad),
            rept!(7, "ldrd {xa}, {xb}, [{xp}], #8", q8_x4_word!(smlad)),
            "vmov s0, s1, {a0}, {a1}",
            "vmov s2, s3, {a2}, {a3}",
            f32_sums!(),
            f32_scales!(),
            "vldmia {xp}!, {{s8}}",
            scale_sums!(),
            "vmov {t}, s25",
            "vldmia {t}, {{s12-s15}}",
            add_lanes!(),
            "vstmia {t}!, {{s12-s15}}",
            "bic {t}, {t}, #128",
            "vmov s25, {t}",
            "ldr {t}, [{xp}], #4",
            "cmp {t}, #0",
            "bne 7b",
            "vmov {t}, s24",
            "vldmia {t}, {{s0-s31}}",
            "vadd.f32 s0, s0, s16",
            "vadd.f32 s1, s1, s17",
            "vadd.f32 s2, s2, s18",
            "vadd.f32 s3, s3, s19",
            "vadd.f32 s4, s4, s20",
            "vadd.f32 s5, s5, s21",
            "vadd.f32 s6, s6, s22",
            "vadd.f32 s7, s7, s23",
            "vadd.f32 s8, s8, s24",
            "vadd.f32 s9, s9, s25",
            "vadd.f32 s10, s10, s26",
            "vadd.f32 s11, s11, s27",
            "vadd.f32 s12, s12, s28",
            "vadd.f32 s13, s13, s29",
            "vadd.f32 s14, s14, s30",
            "vadd.f32 s15, s15, s31",
            "vadd.f32 s0, s0, s8",
            "vadd.f32 s1, s1, s9",
            "vadd.f32 s2, s2, s10",
            "vadd.f32 s3, s3, s11",
            "vadd.f32 s4, s4, s12",
            "vadd.f32 s5, s5, s13",
            "vadd.f32 s6, s6, s14",
            "vadd.f32 s7, s7, s15",
            "vadd.f32 s0, s0, s4",
            "vadd.f32 s1, s1, s5",
            "vadd.f32 s2, s2, s6",
            "vadd.f32 s3, s3, s7",
            "ldr {w}, [{t}, #128]",
            "vstmia {w}!, {{s0-s3}}",
            "str {w}, [{t}, #128]",
            "ldr {w}, [{t}, #140]",
            "add {p0}, {p0}, {w}",
            "add {p2}, {p2}, {w}",
            "ldr {w}, [{t}, #132]",
            "subs {w}, {w}, #1",
            "str {w}, [{t}, #132]",
            "bne 6b",
            "vpop {{d0-d15}}",
            p0 = inout(reg) w => _,
            p2 = inout(reg) w.wrapping_add(2 * stride) => _,
            s = in(reg) stride,
            t = inout(reg) c => _,
            xp = out(reg) _,
            xa = out(reg) _,
            xb = out(reg) _,
            w = out(reg) _,
            a0 = out(reg) _,
            a1 = out(reg) _,
            a2 = out(reg) _,
            a3 = out(reg) _,
        );
    }
}

/// Q8_0 GEMV: four rows per pass share each activation word.
fn gemv_q8_0(w: &Matrix<'_>, xq: &[i8], xd: &[f32], out: &mut [f32]) {
    let out = &mut out[..w.rows];
    let Some((rb, nb)) = plan(w, Q8_0_BLOCK_BYTES, xq, xd) else {
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot_q8_0_q8_0(w.row(r), xq, xd);
        }
        return;
    };
    #[cfg(target_abi = "eabihf")]
    if (1..=XCAP).contains(&nb) && w.rows >= 4 {
        let groups = w.rows / 4;
        let mut xs = core::mem::MaybeUninit::<[u32; XWORDS * XCAP]>::uninit();
        let xs = xs.as_mut_ptr().cast::<u32>();
        // SAFETY: nb <= XCAP blocks of xq (nb <= xq.len() / 32) and xd (nb <= xd.len()) are
        // read, XWORDS * nb words of `xs` written; `w.data` holds every row in full (plan) and
        // nb <= rb / 34; `out` has w.rows >= 4 * groups elements.
        unsafe {
            extend_x(xq.as_ptr(), xd.as_ptr(), nb, xs);
            gemv_q8_0_x4(w.data.as_ptr(), rb, nb, xs, out.as_mut_ptr(), groups);
        }
        for (r, o) in out.iter_mut().enumerate().skip(4 * groups) {
            *o = dot_q8_0_q8_0(w.row(r), xq, xd);
        }
        return;
    }
    let mut groups = out.chunks_exact_mut(4);
    for (g, o4) in (&mut groups).enumerate() {
        let rows = &w.data[g * 4 * rb..(g * 4 + 4) * rb];
        let base = rows.as_ptr();
        // acc[lane][row]: one lane of the four rows is contiguous.
        let mut acc = [[0.0f32; 4]; 8];
        for (b, (xs, &dx)) in xq.chunks_exact(QK).zip(xd).take(nb).enumerate() {
            // SAFETY: b < nb <= rb / 34, so block b (scale and quants) of each of the four rows
            // lies inside `rows`, which holds 4 * rb bytes; `xs` is a whole activation block.
            unsafe {
                let p = base.add(b * Q8_0_BLOCK_BYTES);
                let s = block_sums_q8_x4(p.add(2), rb, xs.as_ptr());
                scale_add_x4(&mut acc[b % 8], s, p, rb, dx);
            }
        }
        for (k, o) in o4.iter_mut().enumerate() {
            *o = scalar::reduce8(core::array::from_fn(|l| acc[l][k]));
        }
    }
    let done = w.rows - groups.into_remainder().len();
    for (r, o) in out.iter_mut().enumerate().skip(done) {
        *o = dot_q8_0_q8_0(w.row(r), xq, xd);
    }
}

/// Activation block sums kept on the stack for the Q4_0 GEMV (rows up to this many blocks).
const SUM_CACHE: usize = 64;

/// Q4_0 GEMV: two rows per pass share each activation word; the activation block sums for the
/// `- 8` are computed once per call.
fn gemv_q4_0(w: &Matrix<'_>, xq: &[i8], xd: &[f32], out: &mut [f32]) {
    let out = &mut out[..w.rows];
    let Some((rb, nb)) = plan(w, Q4_0_BLOCK_BYTES, xq, xd) else {
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot_q4_0_q8_0(w.row(r), xq, xd);
        }
        return;
    };
    let mut sums = [0i32; SUM_CACHE];
    for (s, xs) in sums.iter_mut().zip(xq.chunks_exact(QK)).take(nb) {
        if let Ok(xs) = <&[i8; QK]>::try_from(xs) {
            *s = block_sum_i8(xs);
        }
    }
    let mut pairs = out.chunks_exact_mut(2);
    for (g, o2) in (&mut pairs).enumerate() {
        let rows = &w.data[g * 2 * rb..(g * 2 + 2) * rb];
        let base = rows.as_ptr();
        let mut acc = [[0.0f32; 8]; 2];
        for (b, (xs, &dx)) in xq.chunks_exact(QK).zip(xd).take(nb).enumerate() {
            let sx = match sums.get(b) {
                Some(&s) => s,
                None => match <&[i8; QK]>::try_from(xs) {
                    Ok(xs) => block_sum_i8(xs),
                    Err(_) => unreachable!("chunks_exact gives whole blocks"),
                },
            };
            // SAFETY: b < nb <= rb / 18, so block b of both rows lies inside `rows` (2 * rb
            // bytes); `xs` is a whole activation block.
            let (s, dw) = unsafe {
                let p = base.add(b * Q4_0_BLOCK_BYTES);
                (
                    block_sums_q4_x2(p.add(2), rb, xs.as_ptr()),
                    [scale_at(p), scale_at(p.add(rb))],
                )
            };
            for k in 0..2 {
                acc[k][b % 8] += (s[k] - 8 * sx) as f32 * (dw[k] * dx);
            }
        }
        for (o, a) in o2.iter_mut().zip(acc) {
            *o = scalar::reduce8(a);
        }
    }
    let done = w.rows - pairs.into_remainder().len();
    for (r, o) in out.iter_mut().enumerate().skip(done) {
        *o = dot_q4_0_q8_0(w.row(r), xq, xd);
    }
}
