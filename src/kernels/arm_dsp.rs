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
//! them. The Q8_0 GEMV is one threaded assembly block (`gemv_q8_0_x4`): it skips the
//! specification's `+0.0 + term` for the first term of each lane and adds `+ 0.0` to each
//! row's result instead, which gives the same bits (the argument is at `gemv_q8_0_x4`).
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

/// Most activation blocks the Q8_0 GEMV stream holds (longer rows take the per-block path).
#[cfg(target_abi = "eabihf")]
const XCAP: usize = 32;

/// Words of the Q8_0 GEMV stream: per block 16 words of pre-extended activation, `dx`, one or
/// two lane pointers and a code address (19 words for blocks 0-7, 20 after), then one word for
/// the context pointer.
#[cfg(target_abi = "eabihf")]
const XS_WORDS: usize = 19 * 8 + 20 * (XCAP - 8) + 1;

/// State of the whole-GEMV assembly, read and written at fixed offsets (checked below): the
/// lanes `acc[lane][row]` of the current four rows at 0, then the output cursor, the output
/// end, the row-pointer step between groups, the stream, a +0.0 word, and the inputs the
/// assembly's first part reads.
#[cfg(target_abi = "eabihf")]
#[repr(C, align(8))]
struct Ctx {
    acc: [[f32; 4]; 8],
    out: *mut f32,
    out_end: *mut f32,
    delta: usize,
    xs: *mut u32,
    zero: f32,
    xq: *const i8,
    xd: *const f32,
    nb: usize,
    w: *const u8,
    stride: usize,
}

#[cfg(target_abi = "eabihf")]
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(Ctx, out) == 128);
    assert!(offset_of!(Ctx, out_end) == 132);
    assert!(offset_of!(Ctx, delta) == 136);
    assert!(offset_of!(Ctx, xs) == 140);
    assert!(offset_of!(Ctx, zero) == 144);
    assert!(offset_of!(Ctx, xq) == 148);
    assert!(offset_of!(Ctx, xd) == 152);
    assert!(offset_of!(Ctx, nb) == 156);
    assert!(offset_of!(Ctx, w) == 160);
    assert!(offset_of!(Ctx, stride) == 164);
};

/// `q8_word!` with the registers of [`gemv_q8_0_x4`] (weight word r1, temporary r0, activation
/// halves r8/r9): one weight word at `$addr` times the activation word into `$a`.
macro_rules! q8w {
    ($op:ident, $addr:literal, $a:literal) => {
        lines!(
            concat!("ldr r1, ", $addr),
            "sxtb16 r0, r1",
            q8w!(@$op, $a, "r0", "r8"),
            "sxtb16 r1, r1, ror #8",
            q8w!(@smlad, $a, "r1", "r9"),
        )
    };
    (@smuad, $a:literal, $u:literal, $v:literal) => {
        concat!("smuad ", $a, ", ", $u, ", ", $v)
    };
    (@smlad, $a:literal, $u:literal, $v:literal) => {
        concat!("smlad ", $a, ", ", $u, ", ", $v, ", ", $a)
    };
}

/// One activation word (pre-extended, `LDRD` from the stream) against the next weight word of
/// four rows: rows 1 and 3 at `p0 + s` and `p2 + s` (r11 + lr, r12 + lr), then rows 0 and 2,
/// whose pointers advance by 4; sums in r2-r5.
macro_rules! q8w_x4 {
    ($op:ident) => {
        lines!(
            "ldrd r8, r9, [r10], #8",
            q8w!($op, "[r11, lr]", "r3"),
            q8w!($op, "[r12, lr]", "r5"),
            q8w!($op, "[r11], #4", "r2"),
            q8w!($op, "[r12], #4", "r4"),
        )
    };
}

/// One Q8_0 block of four rows in [`gemv_q8_0_x4`], from the scale loads to the terms
/// `sumi as f32 * (dw * dx)`: `first` leaves them in s12-s15 (the block's lane, to be stored),
/// `later` adds them to the block's lane loaded into s12-s15 with `VMLA` (multiply, round, add,
/// round: not fused). Ends by loading the lane pointer (r0) and jumping to the next block's code
/// (or to the end of the group), both taken from the stream.
macro_rules! q8_block4 {
    ($variant:ident) => {
        lines!(
            "ldrh r3, [r11, lr]",
            "ldrh r5, [r12, lr]",
            "ldrh r2, [r11], #2",
            "ldrh r4, [r12], #2",
            "vmov s4, s5, r2, r3",
            "vmov s6, s7, r4, r5",
            q8w_x4!(smuad),
            rept!(7, q8w_x4!(smlad)),
            "vmov s0, s1, r2, r3",
            "vmov s2, s3, r4, r5",
            f32_sums!(),
            f32_scales!(),
            "vldmia r10!, {{s8}}",
            "vmul.f32 s4, s4, s8",
            "vmul.f32 s5, s5, s8",
            "vmul.f32 s6, s6, s8",
            "vmul.f32 s7, s7, s8",
            q8_block4!(@$variant),
            "ldmia r10!, {{r0, pc}}",
        )
    };
    (@first) => {
        lines!(
            "vmul.f32 s12, s0, s4",
            "vmul.f32 s13, s1, s5",
            "vmul.f32 s14, s2, s6",
            "vmul.f32 s15, s3, s7",
        )
    };
    (@later) => {
        lines!(
            "ldr r0, [r10], #4",
            "vldmia r0, {{s12-s15}}",
            "vmla.f32 s12, s0, s4",
            "vmla.f32 s13, s1, s5",
            "vmla.f32 s14, s2, s6",
            "vmla.f32 s15, s3, s7",
        )
    };
}

/// Extends two activation words (at r0, which advances) into the stream (at r3, which
/// advances): `[sxtb16(x), sxtb16(x ror 8)]` for each.
macro_rules! extend2 {
    () => {
        lines!(
            "ldrd r8, r10, [r0], #8",
            "sxtb16 r9, r8, ror #8",
            "sxtb16 r8, r8",
            "sxtb16 r11, r10, ror #8",
            "sxtb16 r10, r10",
            "stmia r3!, {{r8-r11}}",
        )
    };
}

/// The Q8_0 GEMV of `4 * groups` rows in one assembly block, threaded through a stream built at
/// its start.
///
/// The stream holds, per activation block `b`: its 32 values sign-extended in halfword pairs
/// (`[sxtb16(x), sxtb16(x ror 8)]` per word, as the `LDRD` of the inner loop wants them), its
/// scale `dx`, for `b >= 8` the address of lane `b % 8`, the address of lane `b % 8` again, and
/// the address of the code for block `b + 1`: the "first" code for `b + 1 < 8`, the "later"
/// code after, the end of the group after the last block. Each block's code ends with
/// `LDMIA {r0, pc}`, which loads its lane pointer and jumps; the next code starts by storing the
/// block's terms (s12-s15) there. So a block costs no loop counter, compare or lane-pointer
/// arithmetic, and blocks 0-7 (whose lane starts at +0) store their terms without loading the
/// lane or adding. That skips the scalar kernel's `+0.0 + term`, which differs only for a term
/// of -0.0: every lane, and so the `reduce8` result, then equals the specification's up to the
/// sign of a zero, and the specification's result is never -0.0 (its lanes start at +0.0, and
/// a round-to-nearest sum is -0.0 only when both operands are), so one `+ 0.0` per row after
/// `reduce8` gives its exact bits. The rest is the scalar kernel's operations in its order:
/// `dw * dx`, `sumi as f32 * (dw * dx)`, the add into lane `b % 8` (`VMLA`, two roundings), and
/// `reduce8` at the end of each group of four rows.
///
/// Registers in the block code: r0 lane pointer / temporary, r1 weight word, r2-r5 block sums
/// of rows 0-3, r8/r9 activation pair, r10 stream, r11/r12 rows 0 and 2 (rows 1 and 3 at +lr),
/// lr the row stride; s0-s8 and s12-s15 the float part. All core registers but sp are in use,
/// hence fixed registers (and `LDMIA` must not list lr with pc).
///
/// # Safety
/// `ctx` must be filled in as [`Ctx`] describes: `w` is the first row's first block; `4 *
/// groups` rows of `stride` bytes with at least `nb` blocks each must be readable from it
/// (`1 <= nb <= XCAP`), `nb` activation blocks at `xq` and `nb` f32 at `xd`; `xs` must have
/// room for [`XS_WORDS`] words; `out..out_end` (`4 * groups >= 4` f32) must be writable; `acc`
/// must hold +0.0 in lanes `nb..8`; `zero` must be +0.0 and `delta` `4 * stride - 34 * nb`.
#[cfg(target_abi = "eabihf")]
#[inline(always)]
unsafe fn gemv_q8_0_x4(ctx: &mut Ctx) {
    // SAFETY: the caller guarantees the inputs and outputs; the assembly writes only the
    // stream (at most XS_WORDS words: 19 per block for blocks 0-7, 20 after, plus one), the
    // lanes and cursor of `ctx` and `out..out_end`; every lane pointer in the stream points into
    // `ctx.acc`, and every code address to one of the block codes or the group end in this
    // block. s0-s31 are saved and restored (FP registers cannot be declared as clobbers on
    // stable Rust), every core register it uses is declared.
    unsafe {
        asm!(
            "vpush {{d0-d15}}",
            "ldrd r0, r1, [r4, #148]",
            "ldr r2, [r4, #156]",
            "ldr r3, [r4, #140]",
            "mov r12, r4",
            "adr.w lr, 2f",
            "orr lr, lr, #1",
            "cmp r2, #8",
            "ite hi",
            "movhi r5, #8",
            "movls r5, r2",
            "sub r2, r2, r5",
            // Blocks 0..min(nb, 8): activation, dx, lane, "first" code.
            "1:",
            rept!(4, extend2!()),
            "ldr r8, [r1], #4",
            "stmia r3!, {{r8, r12, lr}}",
            "add r12, r12, #16",
            "subs r5, r5, #1",
            "bne 1b",
            "cmp r2, #0",
            "beq 8f",
            // Blocks 8..nb: activation, dx, lane twice, "later" code (block 7 jumps there).
            "mov r12, r4",
            "add r5, r4, #128",
            "adr.w lr, 4f",
            "orr lr, lr, #1",
            "str lr, [r3, #-4]",
            "1:",
            rept!(4, extend2!()),
            "ldr r8, [r1], #4",
            "mov r9, r12",
            "stmia r3!, {{r8, r9, r12, lr}}",
            "add r12, r12, #16",
            "cmp r12, r5",
            "it eq",
            "subeq r12, r12, #128",
            "subs r2, r2, #1",
            "bne 1b",
            // The last block jumps to the group end, which finds the context after it.
            "8:",
            "adr.w r8, 5f",
            "orr r8, r8, #1",
            "str r8, [r3, #-4]",
            "str r4, [r3]",
            "ldrd r11, lr, [r4, #160]",
            "add r12, r11, lr, lsl #1",
            "ldr r10, [r4, #140]",
            "b 3f",
            // Block code for blocks 1-7 (2) and block 0 (3). The code addresses come from
            // `ADR`, which rounds its PC down to a word: the targets are word-aligned (which
            // also makes this section word-aligned, as the offsets `ADR` encodes assume).
            ".p2align 2",
            "2:",
            "vstmia r0, {{s12-s15}}",
            "3:",
            q8_block4!(first),
            // Block code for blocks 8 and after.
            ".p2align 2",
            "4:",
            "vstmia r0, {{s12-s15}}",
            q8_block4!(later),
            // End of a group: store the last lane, reduce8 each row, + 0.0, write four
            // outputs, step to the next four rows.
            ".p2align 2",
            "5:",
            "vstmia r0, {{s12-s15}}",
            "ldr r0, [r10]",
            "vldmia r0, {{s0-s31}}",
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
            "vldr s4, [r0, #144]",
            "vadd.f32 s0, s0, s4",
            "vadd.f32 s1, s1, s4",
            "vadd.f32 s2, s2, s4",
            "vadd.f32 s3, s3, s4",
            "ldrd r1, r2, [r0, #128]",
            "vstmia r1!, {{s0-s3}}",
            "str r1, [r0, #128]",
            "ldrd r3, r10, [r0, #136]",
            "add r11, r11, r3",
            "add r12, r12, r3",
            "cmp r1, r2",
            "bne 3b",
            "vpop {{d0-d15}}",
            inout("r4") core::ptr::from_mut(ctx) => _,
            out("r0") _,
            out("r1") _,
            out("r2") _,
            out("r3") _,
            out("r5") _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
            out("r12") _,
            out("lr") _,
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
        let mut xs = core::mem::MaybeUninit::<[u32; XS_WORDS]>::uninit();
        let o = out.as_mut_ptr();
        let mut ctx = Ctx {
            acc: [[0.0; 4]; 8],
            out: o,
            out_end: o.wrapping_add(4 * groups),
            delta: (4 * rb).wrapping_sub(nb * Q8_0_BLOCK_BYTES),
            xs: xs.as_mut_ptr().cast(),
            zero: 0.0,
            xq: xq.as_ptr(),
            xd: xd.as_ptr(),
            nb,
            w: w.data.as_ptr(),
            stride: rb,
        };
        // SAFETY: 1 <= nb <= XCAP; nb <= xq.len() / 32 and nb <= xd.len() (plan); `w.data`
        // holds every row in full (plan) and nb <= rb / 34; `out` has w.rows >= 4 * groups
        // elements; the lanes start at +0.0, `zero` is +0.0, `delta` as required.
        unsafe { gemv_q8_0_x4(&mut ctx) };
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
